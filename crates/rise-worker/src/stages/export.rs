//! The `export` kind: a model as a Hugging Face directory, checked by loading it back.
use rise_stages::rise_engine::{StageContext, StageError};

use super::common::{fail, load_model, set_threads};

use rise_stages::format::HF_MODEL_FILES;

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    // Loading validates every tensor against config.json before anything is written.
    let loaded = load_model(ctx, "model")?;
    let src = ctx.input("model")?;
    for name in HF_MODEL_FILES {
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
