//! The `relabel` kind: best-of-N at every wrong state, from the learner or a teacher
//! (RISE.md §4 step 3).
use rise_data::conversation::Role;
use rise_data::grade::{grade, Rewards};
use rise_stages::kinds::dataset::{read_json, write_json};
use rise_stages::params::get;
use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::{self, Attempt, RolloutsMeta, Source, Trajectory, Verdict, META_FILE};
use rise_stages::select::best_of_n;

use super::common::{fail, load_model, set_threads};
use super::gen::{respond, stream, Counts, Request, Sampling};
use super::shards::run_sharded;

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let (input, source) =
        match (
            ctx.inputs.contains_key("policy"),
            ctx.inputs.contains_key("teacher"),
        ) {
            (true, false) => ("policy", Source::SelfDistill),
            (false, true) => ("teacher", Source::Teacher),
            _ => return Err(f(
                &"wire exactly one of `policy` (self-distillation) and `teacher` (distillation)",
            )),
        };
    let loaded = load_model(ctx, input)?;
    let graded_dir = ctx.input("graded")?;
    let meta: RolloutsMeta = read_json(&graded_dir.join(META_FILE)).map_err(|e| f(&e))?;
    let trajectories = rollout::read_trajectories(graded_dir).map_err(|e| f(&e))?;
    if !meta.graded || !trajectories.iter().all(Trajectory::is_graded) {
        return Err(f(
            &"input `graded` has ungraded attempts: wire a grade stage's output",
        ));
    }
    let s = Sampling::from_params(&ctx.params, &loaded)?;
    let n: usize = get(&ctx.params, "n")?;
    let turns: usize = get(&ctx.params, "turns")?;
    let shard_size: usize = get(&ctx.params, "shard_size")?;
    let rewards: Rewards = get(&ctx.params, "rewards")?;
    let mut counts = Counts::default();
    let (mut kept, mut improved) = (0usize, 0usize);
    let start = std::time::Instant::now();
    let all = run_sharded(
        ctx,
        trajectories.len(),
        shard_size,
        "trajectories",
        |_shard, range| {
            let mut trajs: Vec<Trajectory> = trajectories[range].to_vec();
            // Conversations keep the learner's format (its system message from the rollouts),
            // whichever model fills them in.
            let system: Vec<String> = trajs
                .iter()
                .map(|t| {
                    t.attempts
                        .first()
                        .and_then(|a| a.messages.first())
                        .filter(|m| m.role == Role::System)
                        .map(|m| m.content.clone())
                        .unwrap_or_default()
                })
                .collect();
            let mut stalled = vec![false; trajs.len()];
            for turn in 2..=turns {
                let open: Vec<usize> = (0..trajs.len())
                    .filter(|&i| {
                        let t = &trajs[i];
                        !stalled[i]
                            && t.attempts.len() == turn - 1
                            && !t.attempts.iter().any(Attempt::is_correct)
                    })
                    .collect();
                if open.is_empty() {
                    break;
                }
                let requests: Vec<Request> = open
                    .iter()
                    .map(|&i| {
                        Request {
                            messages: trajs[i].next_state(s.window, &system[i]),
                            // Apart from the on-policy sample's streams of the same prompt and turn.
                            stream: stream(&trajs[i].prompt_id, 1_000 + turn as u64),
                        }
                    })
                    .collect();
                let candidates = respond(ctx, &loaded, &requests, n, &s, ctx.seed, &mut counts)?;
                for ((&i, req), cands) in open.iter().zip(requests).zip(candidates) {
                    let messages = req.messages;
                    let verdicts: Vec<_> = cands
                        .iter()
                        .map(|c| grade(meta.task, &trajs[i].gold, c, &rewards))
                        .collect();
                    let Some(best) = best_of_n(
                        cands
                            .iter()
                            .map(String::as_str)
                            .zip(verdicts.iter().map(|v| v.reward)),
                    ) else {
                        // Every candidate was degenerate: nothing worth training on at this state.
                        stalled[i] = true;
                        continue;
                    };
                    let v = &verdicts[best];
                    let previous = trajs[i]
                        .attempts
                        .last()
                        .and_then(|a| a.reward)
                        .unwrap_or(f64::NEG_INFINITY);
                    kept += 1;
                    if v.reward > previous {
                        improved += 1;
                    }
                    let verdict = if v.correct {
                        Verdict::Correct
                    } else if v.is_unparseable() {
                        Verdict::Unparsed
                    } else {
                        Verdict::Wrong
                    };
                    trajs[i].attempts.push(Attempt {
                        turn: turn as u32,
                        messages,
                        response: cands[best].clone(),
                        source,
                        candidates: n as u32,
                        answer: v.pred_answer.clone(),
                        verdict: Some(verdict),
                        reward: Some(v.reward),
                    });
                }
            }
            let secs = start.elapsed().as_secs_f64().max(1e-9);
            ctx.progress.set_message(&format!(
                "{:.1} samples/s, {:.0} tokens/s",
                counts.responses as f64 / secs,
                counts.tokens as f64 / secs
            ));
            Ok(trajs)
        },
    )?;
    write_json(
        &ctx.out_dir.join(META_FILE),
        &RolloutsMeta {
            task: meta.task,
            trajectories: all.len(),
            graded: true,
            window: s.window,
        },
    )?;
    let solved = all.iter().filter(|t| t.first_correct().is_some()).count();
    ctx.metric("solved", solved.into());
    ctx.metric("relabelled_turns", kept.into());
    ctx.log(format!(
        "{} trajectories, {} solved after relabelling; {kept} turns relabelled this run ({improved} improved the reward), \
         {} candidates and {} tokens sampled",
        all.len(),
        solved,
        counts.responses,
        counts.tokens
    ));
    Ok(())
}
