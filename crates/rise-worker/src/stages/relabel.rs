//! The `relabel` kind: at every wrong state, best-of-N from the learner (self-distillation) or
//! one teacher sample kept whatever its reward (distillation, as the release does; best-of-N from
//! the teacher with an explicit `n`). RISE.md §4 step 3; the rules live in
//! `rise_stages::select::relabel`, this file supplies the sampler.
use rise_stages::kinds::dataset::{read_json, write_json};
use rise_stages::kinds::RelabelParams;
use rise_stages::params::TypedParams;
use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::{self, RolloutsMeta, Source, Trajectory, META_FILE};
use rise_stages::select::{default_n, relabel, RelabelCounts, RelabelOptions};

use super::common::{fail, load_model, set_threads};
use super::gen::{respond, stream, Counts, Request, Sampling};
use super::shards::run_sharded;

pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    set_threads(ctx);
    let f = fail(ctx);
    let p: RelabelParams = ctx.params()?;
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
    let s = Sampling::new(&p.sampling, &loaded);
    if s.window != meta.window && trajectories.iter().any(|t| t.attempts.len() > 1) {
        // Every turn of a trajectory must be built by the same rule, or train refuses it (a
        // turn-1 state is the same whatever the window).
        return Err(f(&format!(
            "params.window = {} but input `graded` was sampled with window {}: use the same window",
            s.window, meta.window
        )));
    }
    let opts = RelabelOptions {
        n: p.n.unwrap_or(default_n(source)),
        turns: p.turns,
        window: s.window,
        source,
        task: meta.task,
        rewards: p.rewards,
    };
    let shard_size = p.shard_size;
    let mut counts = Counts::default();
    let mut total = RelabelCounts::default();
    let start = std::time::Instant::now();
    let all = run_sharded(
        ctx,
        trajectories.len(),
        shard_size,
        p.shard,
        "trajectories",
        |_shard, range| {
            let mut trajs: Vec<Trajectory> = trajectories[range].to_vec();
            let done = relabel(&mut trajs, &opts, &mut |states, n| {
                let requests: Vec<Request> = states
                    .iter()
                    .map(|st| Request {
                        messages: st.messages.clone(),
                        // Apart from the on-policy sample's streams of the same prompt and turn.
                        stream: stream(&st.prompt_id, 1_000 + u64::from(st.turn)),
                    })
                    .collect();
                respond(ctx, &loaded, &requests, n, &s, ctx.seed, &mut counts)
            })?;
            total.kept += done.kept;
            total.improved += done.improved;
            total.stalled += done.stalled;
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
    ctx.metric("relabelled_turns", total.kept.into());
    let from = match source {
        Source::Teacher if opts.n == 1 => {
            "one teacher sample per wrong state, kept whatever its reward".to_string()
        }
        Source::Teacher => format!("best of {} teacher samples", opts.n),
        _ => format!("best of {} learner samples", opts.n),
    };
    ctx.log(format!(
        "{} trajectories, {} solved after relabelling ({from}); {} turns relabelled this run \
         ({} improved the reward, {} states had only degenerate candidates), {} candidates and \
         {} tokens sampled",
        all.len(),
        solved,
        total.kept,
        total.improved,
        total.stalled,
        counts.responses,
        counts.tokens
    ));
    Ok(())
}
