//! The `sft` kind: plain supervised fine-tuning on reference solutions as first-turn answers.
use rise_data::conversation::{build_training_messages, render_for_training};
use rise_model::trainer::TrainExample;
use rise_stages::kinds::dataset::write_json;
use rise_stages::rise_engine::{StageContext, StageError};
use serde_json::json;

use super::common::{fail, load_dataset, load_model, save_model, set_threads};
use super::training::{fit, train};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let mut loaded = load_model(ctx, "model")?;
    let (_meta, problems) = load_dataset(ctx, "data")?;
    let mut examples = Vec::with_capacity(problems.len());
    for p in &problems {
        let messages =
            build_training_messages(&p.question, &[], &p.solution, 0, &loaded.format.system);
        let (ids, loss_mask) = render_for_training(&loaded.template, &loaded.tokenizer, &messages)
            .map_err(|e| f(&format!("problem {}: {e}", p.id)))?;
        examples.push(TrainExample {
            ids,
            loss_mask,
            weight: 1.0,
        });
    }
    let (examples, dropped) = fit(ctx, loaded.cfg.max_position_embeddings, examples)?;
    let n = examples.len();
    let summary = train(ctx, &mut loaded.model, examples)?;
    save_model(&ctx.out_dir, &loaded)?;
    write_json(
        &ctx.out_dir.join("training.json"),
        &json!({"examples": n, "dropped_too_long": dropped, "training": {"steps": summary.steps, "final_loss": summary.final_loss}}),
    )?;
    Ok(())
}
