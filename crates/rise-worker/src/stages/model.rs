//! The `model` kind: a fresh Llama-architecture model from a size config, an imported
//! Hugging Face checkpoint directory, or an imported llama.cpp GGUF file.
use std::path::Path;

use rise_data::conversation::DEFAULT_SYSTEM;
use rise_model::tokenizer::{Template, Tokenizer};
use rise_model::{LlamaConfig, MemoryBudget};
use rise_stages::format::{read_size_config, ModelFormat};
use rise_stages::kinds::ModelParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use serde_json::Value;
use tch::{Device, Kind};

use super::common::{fail, set_threads};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let ModelParams {
        config,
        hf_dir,
        gguf,
        chat_template,
        system,
    } = ctx.params()?;
    let system = system.unwrap_or_else(|| DEFAULT_SYSTEM.to_string());
    match (config, hf_dir, gguf) {
        (Some(config), None, None) => init(ctx, Path::new(&config), system),
        (None, Some(dir), None) => import(ctx, Path::new(&dir), system, chat_template),
        (None, None, Some(file)) => import_gguf(ctx, Path::new(&file), system, chat_template),
        _ => Err(f(
            &"params: give exactly one of `config`, `hf_dir` and `gguf`",
        )),
    }
}

/// The conversation format of an imported model: its chat template (the named one, else the
/// default) when it has one, else the plain markers, and an error, never the plain markers,
/// for a vocabulary with chat tokens but no template. When the template came from anywhere
/// but the copied tokenizer_config.json (chat_template.jinja, a named choice), it is written
/// into the output's tokenizer_config.json, so that every later stage and `rise export`
/// see exactly this one.
fn settle_template(
    ctx: &StageContext,
    source: &Path,
    what: &str,
    chat_template: Option<&str>,
) -> Result<&'static str, StageError> {
    let f = fail(ctx);
    let tokenizer = Tokenizer::from_dir_with_template(source, chat_template)
        .map_err(|e| f(&format!("{what}: {e}")))?;
    let template = tokenizer
        .chat_template()
        .map_err(|e| f(&format!("{what}: {e}")))?;
    let from_config = tokenizer
        .chat_template_origin()
        .is_none_or(|o| o.ends_with("tokenizer_config.json"));
    if chat_template.is_some() || !from_config {
        tokenizer
            .save_config(&ctx.out_dir)
            .map_err(|e| f(&format!("writing the chat template: {e}")))?;
    }
    Ok(match template {
        Template::Jinja(_) => "chat",
        Template::Plain(_) => "plain",
    })
}

fn import_gguf(
    ctx: &StageContext,
    file: &Path,
    system: String,
    chat_template: Option<String>,
) -> Result<(), StageError> {
    let f = fail(ctx);
    let options = rise_gguf::ImportOptions::default();
    let summary = rise_gguf::write_hf_dir(file, &ctx.out_dir, &options)
        .map_err(|e| f(&format!("params.gguf: {e}")))?;
    // Load what was written, as every later stage will: config against tensors, tokenizer.
    let (cfg, _model) =
        rise_model::load(&ctx.out_dir, Device::Cpu, Kind::BFloat16).map_err(|e| {
            f(&format!(
                "params.gguf {}: the imported model: {e}",
                file.display()
            ))
        })?;
    let template = settle_template(
        ctx,
        &ctx.out_dir,
        &format!("params.gguf {}", file.display()),
        chat_template.as_deref(),
    )?;
    ModelFormat {
        system,
        template: template.into(),
    }
    .write(&ctx.out_dir)?;
    ctx.metric("parameters", cfg.num_parameters().into());
    let types: Vec<String> = summary
        .tensor_types
        .iter()
        .map(|(t, n)| format!("{n} {t}"))
        .collect();
    ctx.log(format!(
        "imported {} ({}; {} parameters, tensors {}, {} template)",
        file.display(),
        summary.name.as_deref().unwrap_or("unnamed"),
        cfg.num_parameters(),
        types.join(", "),
        template
    ));
    Ok(())
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

fn import(
    ctx: &StageContext,
    dir: &Path,
    system: String,
    chat_template: Option<String>,
) -> Result<(), StageError> {
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
    let template = settle_template(ctx, dir, "params.hf_dir", chat_template.as_deref())?;
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
