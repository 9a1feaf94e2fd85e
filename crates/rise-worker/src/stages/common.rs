//! What every torch stage shares: devices, threads, loading and saving model directories.
use std::path::Path;

use rise_model::tokenizer::{Template, Tokenizer};
use rise_model::{LlamaConfig, Model};
use rise_stages::format::ModelFormat;
use rise_stages::rise_engine::{StageContext, StageError};
use tch::{Device, Kind};

/// `StageError` with the stage name in front, for `map_err`.
pub fn fail(ctx: &StageContext) -> impl Fn(&dyn std::fmt::Display) -> StageError + '_ {
    move |e| StageError::msg(format!("stage {}: {e}", ctx.stage))
}

/// The tch device for `cpu`, `cuda` or `cuda:N`.
pub fn device(ctx: &StageContext) -> Result<Device, StageError> {
    let d = ctx.device.trim();
    let Some(device) = rise_model::parse_device(d) else {
        return Err(fail(ctx)(&format!(
            "unknown device `{d}` (expected cpu, cuda or cuda:N)"
        )));
    };
    if let Device::Cuda(n) = device {
        if !tch::Cuda::is_available() || n as i64 >= tch::Cuda::device_count() {
            return Err(fail(ctx)(&format!(
                "device `{d}` requested but this worker sees {} CUDA device(s)",
                tch::Cuda::device_count()
            )));
        }
    }
    Ok(device)
}

/// Applies the stage's thread budget to libtorch (intra-op), so results on CPU are
/// reproducible for a given thread count.
pub fn set_threads(ctx: &StageContext) {
    tch::set_num_threads(ctx.threads.max(1) as i32);
}

/// A model directory loaded for sampling or training.
pub struct Loaded {
    pub cfg: LlamaConfig,
    pub model: Model,
    pub tokenizer: Tokenizer,
    pub template: Template,
    pub format: ModelFormat,
}

/// Loads config, weights (fp32 master weights; bf16 compute on CUDA), tokenizer and format.
pub fn load_model(ctx: &StageContext, input: &str) -> Result<Loaded, StageError> {
    let dir = ctx.input(input)?;
    load_model_dir(ctx, dir)
        .map_err(|e| fail(ctx)(&format!("input `{input}` ({}): {e}", dir.display())))
}

fn load_model_dir(ctx: &StageContext, dir: &Path) -> Result<Loaded, StageError> {
    let device = device(ctx)?;
    let (cfg, mut model) =
        rise_model::load(dir, device, Kind::Float).map_err(|e| StageError::msg(e.to_string()))?;
    if device.is_cuda() {
        model.llama.set_compute_kind(Kind::BFloat16);
    }
    let tokenizer = Tokenizer::from_dir(dir).map_err(|e| StageError::msg(e.to_string()))?;
    let template = tokenizer
        .chat_template()
        .map_err(|e| StageError::msg(e.to_string()))?;
    let format = ModelFormat::read(dir)?;
    Ok(Loaded {
        cfg,
        model,
        tokenizer,
        template,
        format,
    })
}

/// Saves a model directory: weights + config, tokenizer, and the conversation format.
pub fn save_model(dir: &Path, loaded: &Loaded) -> Result<(), StageError> {
    rise_model::save(dir, &loaded.model, &loaded.cfg)
        .map_err(|e| StageError::msg(e.to_string()))?;
    loaded
        .tokenizer
        .save(dir)
        .map_err(|e| StageError::msg(e.to_string()))?;
    loaded.format.write(dir)
}

/// Loads a dataset input.
pub fn load_dataset(
    ctx: &StageContext,
    input: &str,
) -> Result<
    (
        rise_stages::kinds::dataset::DatasetMeta,
        Vec<rise_data::Problem>,
    ),
    StageError,
> {
    let dir = ctx.input(input)?;
    rise_stages::kinds::dataset::load(dir).map_err(|e| fail(ctx)(&format!("input `{input}`: {e}")))
}
