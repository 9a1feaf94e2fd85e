//! The `export` kind: a model as a Hugging Face directory, checked by loading it back.
use rise_stages::rise_engine::{StageContext, StageError};

use super::common::{fail, load_model, set_threads};

/// The files transformers and vLLM need; `rise.json` stays behind (it is rise's own).
const HF_FILES: [&str; 4] = [
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
];

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    // Loading validates every tensor against config.json before anything is written.
    let loaded = load_model(ctx, "model")?;
    let src = ctx.input("model")?;
    for name in HF_FILES {
        let from = src.join(name);
        if from.exists() {
            std::fs::copy(&from, ctx.out_dir.join(name))
                .map_err(|e| f(&format!("{}: {e}", from.display())))?;
        }
    }
    ctx.metric("parameters", loaded.cfg.num_parameters().into());
    ctx.log(format!(
        "exported {} ({} parameters)",
        src.display(),
        loaded.cfg.num_parameters()
    ));
    Ok(())
}
