//! Options shared by the model commands (`score`, `generate`): where the model is, which
//! device and dtype to run it in, how many CPU threads, and the largest model to accept.
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use rise_model::config::MAX_PARAMS_VAR;
use rise_model::{checkpoint, LlamaConfig, MemoryBudget, Model};
use tch::{Device, Kind};

/// `--model`, `--device`, `--dtype`, `--threads`, `--max-params`.
#[derive(clap::Args, Debug, Clone)]
pub struct ModelOpts {
    /// A Hugging Face model directory: config.json + model.safetensors (or a sharded
    /// model.safetensors.index.json) + tokenizer.json. Pickled .bin/.pt weights are refused.
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,
    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Weights and activations: `f32`, `bf16` or `f16`. Default: f32 on the CPU, bf16 on CUDA.
    #[arg(long)]
    pub dtype: Option<String>,
    /// CPU threads for libtorch (default: libtorch's choice, usually the core count).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Refuse a model with more parameters than this (e.g. 7B, 125M, 7000000000), checked
    /// from config.json before anything is allocated. Whatever this says, a model whose
    /// weights would take more than half of this machine's memory (on the CPU) is refused.
    #[arg(long, value_name = "N", env = MAX_PARAMS_VAR, value_parser = parse_max_params)]
    pub max_params: Option<u64>,
}

fn parse_max_params(text: &str) -> Result<u64, String> {
    rise_model::config::parse_param_count(text)
}

impl ModelOpts {
    /// The parsed device.
    pub fn device(&self) -> Result<Device> {
        let d = self.device.trim();
        let Some(device) = rise_model::parse_device(d) else {
            bail!("--device {d:?}: expected cpu, cuda or cuda:N");
        };
        if let Device::Cuda(i) = device {
            let n = tch::Cuda::device_count() as usize;
            if i >= n {
                bail!("--device {d}: this process sees {n} CUDA device(s) (run `rise doctor`)");
            }
        }
        Ok(device)
    }

    /// The parsed dtype for `device`.
    pub fn kind(&self, device: Device) -> Result<Kind> {
        Ok(match self.dtype.as_deref() {
            None if device.is_cuda() => Kind::BFloat16,
            None => Kind::Float,
            Some("f32" | "fp32" | "float32") => Kind::Float,
            Some("bf16" | "bfloat16") => Kind::BFloat16,
            Some("f16" | "fp16" | "float16") => Kind::Half,
            Some(other) => bail!("--dtype {other:?}: expected f32, bf16 or f16"),
        })
    }

    /// Applies `--threads` and loads the checkpoint.
    pub fn load(&self) -> Result<(LlamaConfig, Model, Device)> {
        if let Some(t) = self.threads {
            if t == 0 {
                bail!("--threads must be at least 1");
            }
            tch::set_num_threads(t as i32);
        }
        let device = self.device()?;
        let kind = self.kind(device)?;
        let (cfg, model) = checkpoint::load_within(&self.model, device, kind, &self.budget())
            .with_context(|| format!("loading model {}", self.model.display()))?;
        Ok((cfg, model, device))
    }

    /// What this process may allocate: half of the machine's memory, and `--max-params`.
    /// Loading checks the weights against it; `generate` and `score` check their batches.
    pub fn budget(&self) -> MemoryBudget {
        MemoryBudget::of_this_machine().with_max_params(self.max_params)
    }

    /// The tokenizer next to the weights.
    pub fn tokenizer(&self) -> Result<rise_model::tokenizer::Tokenizer> {
        rise_model::tokenizer::Tokenizer::from_dir(&self.model)
            .with_context(|| format!("loading the tokenizer of {}", self.model.display()))
    }
}
