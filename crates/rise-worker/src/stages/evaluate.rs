//! The `evaluate` kind: every metric of RISE.md §6 for one model on a held-out set. States are
//! built by rise-data's one window rule (`build_messages`), as in collection and training.
use rise_data::conversation::build_messages;
use rise_data::grade::{answers_equivalent, grade, Rewards};
use rise_stages::kinds::dataset::write_json;
use rise_stages::kinds::EvaluateParams;
use rise_stages::metrics::{compute, GradedAnswer, ProblemEval};
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::write_jsonl;
use rise_stages::sharding::write_evaluate_part;
use serde_json::{json, Value};

use super::common::{fail, load_dataset, load_model, set_threads};
use super::gen::{respond, stream, Counts, Request, Sampling};

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let p: EvaluateParams = ctx.params()?;
    let loaded = load_model(ctx, "model")?;
    let (meta, mut problems) = load_dataset(ctx, "data")?;
    if let Some(limit) = p.limit {
        problems.truncate(limit);
    }
    let s = Sampling::new(&p.sampling, &loaded);
    if let Some(part) = p.shard {
        // Whole sampler batches, so each batch is the one the unsharded stage forms.
        problems = problems[part.items(problems.len(), s.batch_size)].to_vec();
    }
    let (turns, parallel) = (p.turns, p.parallel);
    let system = loaded.format.system.clone();
    let rewards = Rewards::default();
    let mut counts = Counts::default();
    let start = std::time::Instant::now();
    ctx.progress.start(
        Some((problems.len() * (parallel + turns - 1)) as u64),
        "responses",
    );

    // Turn 1: k parallel samples per problem; sample 1 also opens the sequential chain.
    let first: Vec<Request> = problems
        .iter()
        .map(|p| Request {
            messages: build_messages(&p.question, &[], s.window, &system),
            stream: stream(&p.id, 1),
        })
        .collect();
    let par = respond(ctx, &loaded, &first, parallel, &s, ctx.seed, &mut counts)?;
    ctx.progress.advance((problems.len() * parallel) as u64);
    let mut chains: Vec<Vec<String>> = par.iter().map(|r| vec![r[0].clone()]).collect();
    // Turns 2..n: feedback is always "incorrect" (no oracle), for every problem.
    for turn in 2..=turns {
        let convs: Vec<Request> = problems
            .iter()
            .zip(&chains)
            .map(|(p, chain)| Request {
                messages: build_messages(&p.question, chain, s.window, &system),
                stream: stream(&p.id, turn as u64),
            })
            .collect();
        let next = respond(ctx, &loaded, &convs, 1, &s, ctx.seed, &mut counts)?;
        for (chain, mut r) in chains.iter_mut().zip(next) {
            chain.push(r.pop().unwrap_or_default());
        }
        ctx.progress.advance(problems.len() as u64);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        ctx.progress.set_message(&format!(
            "turn {turn}/{turns}, {:.0} tokens/s",
            counts.tokens as f64 / secs
        ));
    }
    let graded = |gold: &str, r: &str| {
        let v = grade(meta.task, gold, r, &rewards);
        GradedAnswer {
            answer: v.pred_answer,
            correct: v.correct,
        }
    };
    let mut evals = Vec::with_capacity(problems.len());
    let mut samples: Vec<Value> = Vec::with_capacity(problems.len());
    for ((p, par), chain) in problems.iter().zip(&par).zip(&chains) {
        let pe = ProblemEval {
            prompt_id: p.id.clone(),
            parallel: par.iter().map(|r| graded(&p.answer, r)).collect(),
            sequential: chain.iter().map(|r| graded(&p.answer, r)).collect(),
        };
        samples.push(json!({
            "prompt_id": p.id, "question": p.question, "gold": p.answer,
            "parallel": par.iter().zip(&pe.parallel).map(|(r, g)| json!({"response": r, "answer": g.answer, "correct": g.correct})).collect::<Vec<_>>(),
            "sequential": chain.iter().zip(&pe.sequential).map(|(r, g)| json!({"response": r, "answer": g.answer, "correct": g.correct})).collect::<Vec<_>>(),
        }));
        evals.push(pe);
    }
    let task = meta.task;
    if p.shard.is_some() {
        // The metrics are computed by the merge step, over every shard's problems.
        write_evaluate_part(&ctx.out_dir, task, &samples, &evals)?;
        ctx.log(format!("{} problems evaluated (one shard)", evals.len()));
        return Ok(());
    }
    let metrics = compute(&evals, &|a, b| answers_equivalent(task, a, b)).map_err(|e| f(&e))?;
    write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
    write_jsonl(&ctx.out_dir.join("samples.jsonl"), &samples).map_err(|e| f(&e))?;
    let mut line = Vec::new();
    for h in metrics.headline.iter().chain(&metrics.supplementary) {
        ctx.metric(&h.key, h.value.value.into());
        line.push(format!("{} {:.1}%", h.key, 100.0 * h.value.value));
    }
    let c = &metrics.changes;
    line.push(format!(
        "answer changed after right / wrong: {:.1}% / {:.1}% over turns, {:.1}% / {:.1}% between \
         parallel samples",
        100.0 * c.sequential_after_right.value,
        100.0 * c.sequential_after_wrong.value,
        100.0 * c.parallel_after_right.value,
        100.0 * c.parallel_after_wrong.value
    ));
    for (t, p) in metrics.per_turn.iter().enumerate() {
        ctx.metric(&format!("acc@t{}", t + 1), p.value.into());
    }
    ctx.log(format!(
        "{} problems: {}",
        metrics.problems,
        line.join(", ")
    ));
    Ok(())
}
