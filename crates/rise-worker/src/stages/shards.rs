//! Resumable sharded work for `sample` and `relabel`: each finished shard is committed to the
//! stage's scratch directory (atomically); a re-run after a kill skips the shards already
//! there and says so in the log. A stage shard (`shards = N` in the pipeline, the `shard`
//! param) does only its run of these files, under the names they have in the whole, so that
//! the merge step puts them side by side (`rise_stages::sharding`).
use std::ops::Range;
use std::time::Instant;

use rise_stages::rise_engine::{StageContext, StageError};
use rise_stages::rollout::{self, Trajectory};
use rise_stages::sharding::Shard;

/// Runs `work` for each shard of `0..total` not yet in scratch (of this stage shard's files
/// only, with `part`), then writes those shards to the output directory in order. Returns
/// their trajectories.
pub fn run_sharded(
    ctx: &StageContext,
    total: usize,
    shard_size: usize,
    part: Option<Shard>,
    unit: &str,
    mut work: impl FnMut(usize, Range<usize>) -> Result<Vec<Trajectory>, StageError>,
) -> Result<Vec<Trajectory>, StageError> {
    let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    let size = shard_size.max(1);
    let all_shards = total.div_ceil(size).max(1);
    let mine = part.map_or(0..all_shards, |p| p.units(all_shards));
    let shards = mine.len();
    let items_of = |s: usize| (s * size)..((s + 1) * size).min(total);
    let my_items: usize = mine.clone().map(|s| items_of(s).len()).sum();
    let dir = ctx.scratch_dir.join("shards");
    std::fs::create_dir_all(&dir).map_err(|e| fail(&format!("{}: {e}", dir.display())))?;
    let mut resumed = 0usize;
    ctx.progress.start(Some(my_items as u64), unit);
    let start = Instant::now();
    let mut done_items = 0usize;
    for s in mine.clone() {
        let range = items_of(s);
        let path = dir.join(rollout::shard_name(s));
        if path.exists() {
            resumed += 1;
            ctx.progress.advance(range.len() as u64);
            continue;
        }
        let items = work(s, range.clone())?;
        rollout::write_jsonl(&path, &items).map_err(|e| fail(&e))?;
        done_items += range.len();
        ctx.progress.advance(range.len() as u64);
        let secs = start.elapsed().as_secs_f64().max(1e-9);
        ctx.progress
            .set_message(&format!("{:.1} {unit}/s", done_items as f64 / secs));
    }
    if resumed > 0 {
        ctx.log(format!(
            "resumed: {resumed} of {shards} shards were already finished in scratch"
        ));
    }
    let mut all = Vec::with_capacity(my_items);
    for s in mine {
        let from = dir.join(rollout::shard_name(s));
        let items: Vec<Trajectory> = rollout::read_jsonl(&from).map_err(|e| fail(&e))?;
        rollout::write_jsonl(&ctx.out_dir.join(rollout::shard_name(s)), &items)
            .map_err(|e| fail(&e))?;
        all.extend(items);
    }
    Ok(all)
}
