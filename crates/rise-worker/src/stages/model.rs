//! The `model` kind: a fresh Llama-architecture model from a size config, or an imported
//! Hugging Face checkpoint directory.
use std::path::Path;

use rise_data::conversation::DEFAULT_SYSTEM;
use rise_model::tokenizer::Tokenizer;
use rise_model::{LlamaConfig, MemoryBudget};
use rise_stages::format::{read_size_config, ModelFormat};
use rise_stages::params::get;
use rise_stages::rise_engine::{StageContext, StageError};
use serde_json::Value;
use tch::{Device, Kind};

use super::common::{fail, set_threads};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let system: Option<String> = get(&ctx.params, "system")?;
    let system = system.unwrap_or_else(|| DEFAULT_SYSTEM.to_string());
    let config: Option<String> = get(&ctx.params, "config")?;
    let hf_dir: Option<String> = get(&ctx.params, "hf_dir")?;
    match (config, hf_dir) {
        (Some(config), None) => init(ctx, Path::new(&config), system),
        (None, Some(dir)) => import(ctx, Path::new(&dir), system),
        _ => Err(f(&"params: give exactly one of `config` and `hf_dir`")),
    }
}

fn init(ctx: &StageContext, config: &Path, system: String) -> Result<(), StageError> {
    let f = fail(ctx);
    let tok_dir = ctx.inputs.get("tokenizer").ok_or_else(|| {
        f(&"a fresh model (params.config) needs input `tokenizer` for its vocabulary")
    })?;
    let tokenizer =
        Tokenizer::from_dir(tok_dir).map_err(|e| f(&format!("input `tokenizer`: {e}")))?;
    let mut hf = read_size_config(config).map_err(|e| f(&e))?;
    hf.insert("vocab_size".into(), tokenizer.vocab_size().into());
    if let Some(id) = tokenizer.eos_token_id() {
        hf.insert("eos_token_id".into(), id.into());
    }
    if let Some(id) = tokenizer.pad_token_id() {
        hf.insert("pad_token_id".into(), id.into());
    }
    if let Some(id) = tokenizer.bos_token_id() {
        hf.insert("bos_token_id".into(), id.into());
    }
    let text = Value::Object(hf).to_string();
    let cfg = LlamaConfig::from_json_str(&text, config).map_err(|e| f(&e))?;
    // Checked against this machine's memory and RISE_MAX_PARAMS before anything is allocated.
    let budget = MemoryBudget::from_env().map_err(|e| f(&e))?;
    let model = rise_model::init_random_within(&cfg, config, ctx.seed, &budget)
        .map_err(|e| f(&format!("params.config: {e}")))?;
    rise_model::save(&ctx.out_dir, &model, &cfg).map_err(|e| f(&e))?;
    tokenizer.save(&ctx.out_dir).map_err(|e| f(&e))?;
    ModelFormat {
        system,
        template: "plain".into(),
    }
    .write(&ctx.out_dir)?;
    ctx.metric("parameters", cfg.num_parameters().into());
    ctx.log(format!(
        "initialised a {}-layer, {}-wide Llama ({} parameters, vocabulary {}) with seed {}",
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_parameters(),
        cfg.vocab_size,
        ctx.seed
    ));
    Ok(())
}

fn import(ctx: &StageContext, dir: &Path, system: String) -> Result<(), StageError> {
    let f = fail(ctx);
    if !dir.is_dir() {
        return Err(f(&format!(
            "params.hf_dir: {} is not a directory",
            dir.display()
        )));
    }
    // Load once on the CPU to check every tensor against config.json (and refuse pickles)
    // before anything is copied; bf16 halves the memory of that check.
    let (cfg, _model) = rise_model::load(dir, Device::Cpu, Kind::BFloat16)
        .map_err(|e| f(&format!("params.hf_dir {}: {e}", dir.display())))?;
    let tokenizer = Tokenizer::from_dir(dir).map_err(|e| f(&format!("params.hf_dir: {e}")))?;
    let template = if tokenizer.chat_template_source().is_some() {
        "chat"
    } else {
        "plain"
    };
    let mut copied = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| f(&format!("{}: {e}", dir.display())))?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for name in names {
        let keep = name == "config.json"
            || name == "generation_config.json"
            || name.starts_with("tokenizer")
            || name == "special_tokens_map.json"
            || name.ends_with(".safetensors")
            || name == "model.safetensors.index.json";
        if keep {
            let from = dir.join(&name);
            std::fs::copy(&from, ctx.out_dir.join(&name))
                .map_err(|e| f(&format!("{}: {e}", from.display())))?;
            copied.push(name);
        }
    }
    ModelFormat {
        system,
        template: template.into(),
    }
    .write(&ctx.out_dir)?;
    ctx.metric("parameters", cfg.num_parameters().into());
    ctx.log(format!(
        "imported {} ({} parameters, {} template): {}",
        dir.display(),
        cfg.num_parameters(),
        template,
        copied.join(", ")
    ));
    Ok(())
}
