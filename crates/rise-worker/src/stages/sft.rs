//! The `sft` kind: plain supervised fine-tuning on reference solutions as first-turn answers.
use rise_data::conversation::{render_for_training_every_turn, Message, Role};
use rise_model::trainer::TrainExample;
use rise_stages::kinds::dataset::write_json;
use rise_stages::params::get;
use rise_stages::rise_engine::{StageContext, StageError};
use serde_json::json;

use super::common::{fail, load_dataset, load_model, save_model, set_threads};
use super::training::{fit, train};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let mut loaded = load_model(ctx, "model")?;
    let (_meta, problems) = load_dataset(ctx, "data")?;
    let chat_turns: usize = get(&ctx.params, "chat_turns")?;
    let system = &loaded.format.system;
    let mut examples = Vec::with_capacity(problems.len().div_ceil(chat_turns));
    // Consecutive problems share a conversation (the dataset's order is already shuffled).
    for chat in problems.chunks(chat_turns.max(1)) {
        let mut messages = Vec::with_capacity(1 + 2 * chat.len());
        if !system.is_empty() {
            messages.push(Message::new(Role::System, system.as_str()));
        }
        for p in chat {
            messages.push(Message::new(Role::User, p.question.as_str()));
            messages.push(Message::new(Role::Assistant, p.solution.as_str()));
        }
        let (ids, loss_mask) =
            render_for_training_every_turn(&loaded.template, &loaded.tokenizer, &messages)
                .map_err(|e| f(&format!("problem {}: {e}", chat[0].id)))?;
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
