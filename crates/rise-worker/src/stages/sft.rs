//! The `sft` kind: plain supervised fine-tuning on reference solutions, one question per
//! conversation or several (`chat_turns`).
use rise_data::conversation::{render_for_training_every_turn, Message, Role};
use rise_model::trainer::TrainExample;
use rise_stages::kinds::dataset::write_json;
use rise_stages::kinds::SftParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use serde_json::json;

use super::common::{fail, load_dataset, load_model, save_model, set_threads};
use super::gen::mix;
use super::training::{fit, train};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let p: SftParams = ctx.params()?;
    let mut loaded = load_model(ctx, "model")?;
    let (_meta, problems) = load_dataset(ctx, "data")?;
    let chat_turns = p.chat_turns;
    let system = &loaded.format.system;
    let mut examples = Vec::with_capacity(problems.len().div_ceil(chat_turns));
    // Consecutive problems share a conversation (the dataset's order is already shuffled).
    let repeat = p.repeat_questions;
    let preambles = &p.preambles;
    for (c, chat) in problems.chunks(chat_turns.max(1)).enumerate() {
        let mut messages = Vec::with_capacity(1 + 4 * chat.len());
        if !system.is_empty() {
            messages.push(Message::new(Role::System, system.as_str()));
        }
        // Every choice is drawn from the seed and the position only, so the examples depend on
        // nothing else.
        let ask = |question: &str, draw: u64| {
            let pick = mix(draw, 2) % (preambles.len() as u64 + 1);
            match preambles.get(pick as usize) {
                Some(opening) => Message::new(Role::User, format!("{opening} {question}")),
                None => Message::new(Role::User, question),
            }
        };
        for (j, problem) in chat.iter().enumerate() {
            let draw = mix(ctx.seed, ((c as u64) << 20) | j as u64);
            messages.push(ask(&problem.question, draw));
            messages.push(Message::new(Role::Assistant, problem.solution.as_str()));
            // A user asking again something already answered gets the same answer.
            let uniform = (draw >> 11) as f64 / (1u64 << 53) as f64;
            if uniform < repeat {
                let again = &chat[(mix(draw, 1) % (j as u64 + 1)) as usize];
                messages.push(ask(&again.question, mix(draw, 3)));
                messages.push(Message::new(Role::Assistant, again.solution.as_str()));
            }
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
    let (examples, dropped) = fit(
        ctx,
        &p.training,
        loaded.cfg.max_position_embeddings,
        examples,
    )?;
    let n = examples.len();
    let summary = train(ctx, &p.training, &mut loaded.model, examples)?;
    save_model(&ctx.out_dir, &loaded)?;
    write_json(
        &ctx.out_dir.join("training.json"),
        &json!({"examples": n, "dropped_too_long": dropped, "training": {"steps": summary.steps, "final_loss": summary.final_loss}}),
    )?;
    Ok(())
}
