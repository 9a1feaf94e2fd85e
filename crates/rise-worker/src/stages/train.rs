//! The `train` kind: reward-weighted regression on relabelled trajectories (RISE.md §5).
use std::collections::BTreeMap;

use rise_data::conversation::{render_for_training, Message, Role};
use rise_stages::examples::{build_examples, ExampleOptions};
use rise_stages::kinds::dataset::{read_json, write_json};
use rise_stages::kinds::TrainParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::{self, RolloutsMeta, Source, META_FILE};
use serde_json::json;

use super::common::{fail, load_model, save_model, set_threads};
use super::training::{fit, train};
use rise_model::trainer::TrainExample;

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let p: TrainParams = ctx.params()?;
    let start = if p.restart_from_base {
        if !ctx.inputs.contains_key("base") {
            return Err(f(
                &"params.restart_from_base = true needs input `base` (the model to restart from)",
            ));
        }
        "base"
    } else {
        "model"
    };
    let mut loaded = load_model(ctx, start)?;
    let data = ctx.input("data")?;
    let trajectories =
        rollout::read_trajectories(data).map_err(|e| f(&format!("input `data`: {e}")))?;
    let meta: RolloutsMeta =
        read_json(&data.join(META_FILE)).map_err(|e| f(&format!("input `data`: {e}")))?;
    let opts = ExampleOptions {
        criterion: p.criterion,
        tau: p.tau,
        dedup: p.dedup,
        shuffle: p.shuffle,
        seed: ctx.seed,
        window: meta.window,
    };
    let built =
        build_examples(&trajectories, &opts).map_err(|e| f(&format!("input `data`: {e}")))?;
    let mut examples = Vec::with_capacity(built.len());
    let mut by_turn: BTreeMap<u32, (usize, f64)> = BTreeMap::new();
    // Per source: examples, summed weight, summed reward.
    let mut by_source: BTreeMap<&'static str, (usize, f64, f64)> = BTreeMap::new();
    for e in &built {
        let mut messages: Vec<Message> = e.messages.clone();
        messages.push(Message::new(Role::Assistant, e.response.clone()));
        let (ids, mask) = render_for_training(&loaded.template, &loaded.tokenizer, &messages)
            .map_err(|err| f(&format!("example {} turn {}: {err}", e.prompt_id, e.turn)))?;
        let entry = by_turn.entry(e.turn).or_insert((0, 0.0));
        entry.0 += 1;
        entry.1 += e.weight;
        let entry = by_source
            .entry(source_name(e.source))
            .or_insert((0, 0.0, 0.0));
        entry.0 += 1;
        entry.1 += e.weight;
        entry.2 += e.reward;
        examples.push(TrainExample {
            ids,
            loss_mask: mask,
            weight: e.weight as f32,
        });
    }
    if examples.is_empty() {
        return Err(f(&format!(
            "no training examples: {} trajectories gave none under criterion `{}`",
            trajectories.len(),
            opts.criterion
        )));
    }
    let (examples, too_long) = fit(
        ctx,
        &p.training,
        loaded.cfg.max_position_embeddings,
        examples,
    )?;
    let turns: Vec<_> = by_turn
        .iter()
        .map(|(t, (n, w))| json!({"turn": t, "examples": n, "mean_weight": w / *n as f64}))
        .collect();
    let sources: Vec<_> = by_source
        .iter()
        .map(|(s, (n, w, r))| {
            json!({"source": s, "examples": n, "mean_weight": w / *n as f64, "mean_reward": r / *n as f64})
        })
        .collect();
    ctx.log(format!(
        "{} examples from {} trajectories ({} criterion, tau {})",
        examples.len(),
        trajectories.len(),
        opts.criterion,
        opts.tau
    ));
    let n_examples = examples.len();
    let summary = train(ctx, &p.training, &mut loaded.model, examples)?;
    save_model(&ctx.out_dir, &loaded)?;
    write_json(
        &ctx.out_dir.join("examples.json"),
        &json!({"examples": n_examples, "dropped_too_long": too_long, "per_turn": turns, "per_source": sources,
                "started_from": start, "training": {"steps": summary.steps, "final_loss": summary.final_loss}}),
    )?;
    Ok(())
}

/// The name `examples.json` gives a source (as in the rollouts).
fn source_name(s: Source) -> &'static str {
    match s {
        Source::Policy => "policy",
        Source::SelfDistill => "self_distill",
        Source::Teacher => "teacher",
    }
}
