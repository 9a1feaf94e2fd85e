//! `rise-model`: the Llama-family decoder rise trains and samples from, in tch (libtorch).
//!
//! - [`config::LlamaConfig`]: Hugging Face `config.json`, read and written.
//! - [`llama::Llama`]: one readable decoder covering Llama 2/3, Mistral, Qwen2, SmolLM.
//! - [`checkpoint`]: safetensors checkpoints in HF names (pickles refused).
//!
//! Only the `rise-worker` binary links this crate (and so libtorch); the `rise` engine
//! never does, which keeps it starting in milliseconds.

pub mod batch;
pub mod checkpoint;
pub mod config;
pub mod llama;
pub mod sampler;
pub mod score;
pub mod tokenizer;
pub mod trainer;

pub use checkpoint::{init_random, init_random_within, load, load_within, save, CheckpointError};
pub use config::{ConfigError, LlamaConfig, MemoryBudget, RopeScaling};
pub use llama::{KvCache, Llama, Model};
/// The collectives data-parallel training runs on (re-exported so that `rise-worker` forms
/// groups with the same build).
pub use rise_dist as dist;

/// The tch device named `cpu`, `cuda` (device 0) or `cuda:N`; `None` for any other name.
/// Whether that device exists is the caller's check.
pub fn parse_device(name: &str) -> Option<tch::Device> {
    match name {
        "cpu" => Some(tch::Device::Cpu),
        "cuda" => Some(tch::Device::Cuda(0)),
        _ => name
            .strip_prefix("cuda:")
            .and_then(|n| n.parse::<usize>().ok())
            .map(tch::Device::Cuda),
    }
}
