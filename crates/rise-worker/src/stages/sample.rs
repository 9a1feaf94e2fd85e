//! The `sample` kind: on-policy rollouts from the learner (RISE.md §4 step 1).
use rise_data::grade::grade;
use rise_stages::kinds::dataset::write_json;
use rise_stages::kinds::SampleParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::{Attempt, RolloutsMeta, Source, Trajectory, META_FILE};

use super::common::{load_dataset, load_model, set_threads};
use super::gen::{respond, stream, Counts, Request, Sampling};
use super::shards::run_sharded;

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let p: SampleParams = ctx.params()?;
    let loaded = load_model(ctx, "policy")?;
    let (meta, mut problems) = load_dataset(ctx, "prompts")?;
    if let Some(limit) = p.limit {
        problems.truncate(limit);
    }
    let s = Sampling::new(&p.sampling, &loaded);
    let (turns, shard_size, rewards) = (p.turns, p.shard_size, p.rewards);
    let system = loaded.format.system.clone();
    let mut counts = Counts::default();
    let start = std::time::Instant::now();
    let all = run_sharded(
        ctx,
        problems.len(),
        shard_size,
        p.shard,
        "prompts",
        |_shard, range| {
            let mut trajs: Vec<Trajectory> = problems[range]
                .iter()
                .map(|p| Trajectory {
                    prompt_id: p.id.clone(),
                    question: p.question.clone(),
                    gold: p.answer.clone(),
                    attempts: Vec::new(),
                })
                .collect();
            for turn in 1..=turns {
                // The episode goes on only while wrong.
                let open: Vec<usize> = (0..trajs.len())
                    .filter(|&i| !trajs[i].attempts.iter().any(Attempt::is_correct))
                    .collect();
                if open.is_empty() {
                    break;
                }
                let requests: Vec<Request> = open
                    .iter()
                    .map(|&i| Request {
                        messages: trajs[i].next_state(s.window, &system),
                        stream: stream(&trajs[i].prompt_id, turn as u64),
                    })
                    .collect();
                let responses = respond(ctx, &loaded, &requests, 1, &s, ctx.seed, &mut counts)?;
                for ((&i, req), mut rs) in open.iter().zip(requests).zip(responses) {
                    let messages = req.messages;
                    let response = rs.pop().unwrap_or_default();
                    let v = grade(meta.task, &trajs[i].gold, &response, &rewards);
                    let verdict = v.verdict();
                    trajs[i].attempts.push(Attempt {
                        turn: turn as u32,
                        messages,
                        response,
                        source: Source::Policy,
                        candidates: 1,
                        answer: v.pred_answer,
                        verdict: Some(verdict),
                        reward: Some(v.reward),
                    });
                }
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            ctx.progress.set_message(&format!(
                "{:.1} rollouts/s, {:.0} tokens/s",
                counts.responses as f64 / secs,
                counts.tokens as f64 / secs
            ));
            Ok(trajs)
        },
    )?;
    let correct = all
        .iter()
        .filter(|t| t.attempts.first().is_some_and(Attempt::is_correct))
        .count();
    write_json(
        &ctx.out_dir.join(META_FILE),
        &RolloutsMeta {
            task: meta.task,
            trajectories: all.len(),
            graded: true,
            window: s.window,
        },
    )?;
    let acc = correct as f64 / all.len().max(1) as f64;
    ctx.metric("accuracy_t1", acc.into());
    ctx.log(format!(
        "{} rollouts, first-turn accuracy {:.1}%, {} responses and {} tokens sampled this run",
        all.len(),
        100.0 * acc,
        counts.responses,
        counts.tokens
    ));
    Ok(())
}
