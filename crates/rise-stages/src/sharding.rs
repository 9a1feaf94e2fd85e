//! Sharded stages (`shards = N` in a pipeline; the engine expands them, see
//! `rise_engine::pipeline::shards`): what shard K of N of `sample`, `relabel` and `evaluate`
//! does, and the merge kinds that put their outputs back together.
//!
//! The merged artifact is byte-identical to the unsharded stage's, because a shard does
//! exactly the unsharded stage's work on a contiguous run of its *units*, and nothing a unit
//! computes depends on another unit:
//! - `sample` and `relabel` work in files of `shard_size` prompts (the resume unit). Within
//!   one, every sampler batch is formed from that file's prompts only, so a shard that takes
//!   whole files forms the same batches (the same padding: batch composition changes numerics
//!   at the ulp level) and writes the same files under the same names;
//! - `evaluate` batches all problems, `batch_size` at a time, once per turn: a shard that
//!   takes whole batches forms the same ones.
//!
//! Random streams are per prompt and turn, never per position (`rise-worker`'s `gen::stream`),
//! so a prompt draws the same numbers in any shard. Units are split as evenly as they go, in
//! order ([`Shard::units`]); a shard may get none (more shards than units) and then writes an
//! empty part.
use std::ops::Range;
use std::path::Path;

use rise_data::grade::{answers_equivalent, TaskKind};
use rise_engine::{Execution, StageContext, StageError};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::kinds::dataset::{read_json, write_json};
use crate::kinds::KindSchema;
use crate::metrics::{compute, ProblemEval};
use crate::rollout::{self, RolloutsMeta, META_FILE};
use crate::stage_params;

/// The `shard` param the engine gives shard `index` (from 0) of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shard {
    /// This shard's position, from 0.
    pub index: usize,
    /// How many shards the stage is split into (`shards = N`).
    pub count: usize,
}

impl Shard {
    /// The units (of `total`, in order) this shard does: `total` split into `count` contiguous
    /// runs whose lengths differ by at most one, the longer ones last.
    pub fn units(&self, total: usize) -> Range<usize> {
        (self.index * total / self.count)..((self.index + 1) * total / self.count)
    }

    /// The items (of `total`, in order) this shard does when the work goes in units of `unit`
    /// items (the last unit may be short): whole units only, so every boundary between two
    /// shards is a unit boundary of the unsharded stage, whose batches never cross one.
    pub fn items(&self, total: usize, unit: usize) -> Range<usize> {
        let unit = unit.max(1);
        let units = self.units(total.div_ceil(unit));
        (units.start * unit).min(total)..(units.end * unit).min(total)
    }
}

/// Checks a `shard` param (the engine writes it; a hand-written one is checked the same way).
pub fn check_shard(v: &Value) -> Result<Value, String> {
    let s: Shard = serde_json::from_value(v.clone()).map_err(|e| e.to_string())?;
    if s.count == 0 || s.index >= s.count {
        return Err(format!(
            "shard index {} of {} is out of range (0 <= index < count)",
            s.index, s.count
        ));
    }
    serde_json::to_value(s).map_err(|e| e.to_string())
}

/// The doc of every `shard` param (a macro, so that it can be an attribute's value).
#[macro_export]
#[doc(hidden)]
macro_rules! shard_doc {
    () => {
        "set by the engine for each shard of a stage with `shards = N`: { index = K, count = N } \
         (K from 0); never written by hand"
    };
}

/// Files in the output of an `evaluate` shard besides `samples.jsonl`: each problem's graded
/// outcomes (one [`ProblemEval`] per line) and the task, which the merge needs to compute the
/// metrics over all problems.
pub const EVALS_FILE: &str = "evals.jsonl";
/// See [`EVALS_FILE`].
pub const TASK_FILE: &str = "task.json";

#[derive(Serialize, Deserialize)]
struct TaskOf {
    task: TaskKind,
}

/// What an `evaluate` shard writes: its problems' samples, their graded outcomes, the task.
pub fn write_evaluate_part(
    out: &Path,
    task: TaskKind,
    samples: &[Value],
    evals: &[ProblemEval],
) -> Result<(), StageError> {
    let err = |e: rollout::RolloutError| StageError::msg(e.to_string());
    rollout::write_jsonl(&out.join("samples.jsonl"), samples).map_err(err)?;
    rollout::write_jsonl(&out.join(EVALS_FILE), evals).map_err(err)?;
    write_json(&out.join(TASK_FILE), &TaskOf { task })
}

stage_params! {
    /// A merge kind takes no params: everything is in its inputs.
    pub struct MergeParams {}
}

/// The `sample/merge` kind the engine adds after a sharded `sample` stage.
pub static SAMPLE_MERGE: KindSchema = merge_schema(
    "sample/merge",
    &["rollouts.json"],
    "Merges the shards of a `sample` stage with `shards = N` (inputs `shard_0001`, ... in \
     order): their rollout files side by side, `rollouts.json` over all of them. Byte-identical \
     to the unsharded stage's output.",
);

/// The `relabel/merge` kind the engine adds after a sharded `relabel` stage.
pub static RELABEL_MERGE: KindSchema = merge_schema(
    "relabel/merge",
    &["rollouts.json"],
    "Merges the shards of a `relabel` stage with `shards = N`, as `sample/merge` does.",
);

/// The `evaluate/merge` kind the engine adds after a sharded `evaluate` stage.
pub static EVALUATE_MERGE: KindSchema = merge_schema(
    "evaluate/merge",
    &["metrics.json", "samples.jsonl"],
    "Merges the shards of an `evaluate` stage with `shards = N`: their samples in order, and \
     every metric computed over all problems. Byte-identical to the unsharded stage's output.",
);

const fn merge_schema(
    kind: &'static str,
    outputs: &'static [&'static str],
    about: &'static str,
) -> KindSchema {
    KindSchema {
        kind,
        version: 1,
        execution: Execution::InProcess,
        required_inputs: &[],
        optional_inputs: &[],
        any_inputs: true,
        fields: MergeParams::FIELDS,
        outputs,
        about,
        validate: None,
        omit_when_absent: &[],
    }
}

fn fail(ctx: &StageContext) -> impl Fn(&dyn std::fmt::Display) -> StageError + '_ {
    move |e| StageError::msg(format!("stage {}: {e}", ctx.stage))
}

/// `sample/merge` and `relabel/merge`: every input's rollout files, copied under their own
/// names (a shard names its files by their place in the whole), which must together be
/// `shard-00000.jsonl` ... without gap or repeat; `rollouts.json` counts them all.
pub fn run_rollouts_merge(ctx: &StageContext) -> Result<(), StageError> {
    let f = fail(ctx);
    let mut meta: Option<RolloutsMeta> = None;
    let mut next = 0usize;
    for (name, dir) in &ctx.inputs {
        let part: RolloutsMeta = read_json(&dir.join(META_FILE))?;
        let files = rollout::shard_paths(dir).map_err(|e| f(&e))?;
        for file in &files {
            let expected = rollout::shard_name(next);
            if file.file_name().and_then(|n| n.to_str()) != Some(expected.as_str()) {
                return Err(f(&format!(
                    "input `{name}`: {} where {expected} was expected: the inputs are not \
                     consecutive shards of one stage",
                    file.display()
                )));
            }
            std::fs::copy(file, ctx.out_dir.join(&expected))
                .map_err(|e| f(&format!("{}: {e}", file.display())))?;
            next += 1;
        }
        meta = Some(match meta {
            None => part,
            Some(m) if (m.task, m.window) == (part.task, part.window) => RolloutsMeta {
                trajectories: m.trajectories + part.trajectories,
                graded: m.graded && part.graded,
                ..m
            },
            Some(_) => {
                return Err(f(&format!(
                    "input `{name}` has another task or window than the shards before it"
                )))
            }
        });
    }
    let meta = meta.ok_or_else(|| f(&"no shards to merge"))?;
    if next == 0 {
        // As the unsharded stage writes it for no prompts at all.
        rollout::write_jsonl::<Value>(&ctx.out_dir.join(rollout::shard_name(0)), &[])
            .map_err(|e| f(&e))?;
    }
    write_json(&ctx.out_dir.join(META_FILE), &meta)?;
    ctx.log(format!(
        "merged {} shards: {} trajectories in {} files",
        ctx.inputs.len(),
        meta.trajectories,
        next.max(1)
    ));
    Ok(())
}

/// `evaluate/merge`: the shards' `samples.jsonl` concatenated in order, `metrics.json` computed
/// over every problem's outcomes, and the same metrics reported as the unsharded stage reports
/// them.
pub fn run_evaluate_merge(ctx: &StageContext) -> Result<(), StageError> {
    let f = fail(ctx);
    let mut task: Option<TaskKind> = None;
    let mut samples = Vec::new();
    let mut evals: Vec<ProblemEval> = Vec::new();
    for (name, dir) in &ctx.inputs {
        let part: TaskOf = read_json(&dir.join(TASK_FILE))?;
        if task.is_some_and(|t| t != part.task) {
            return Err(f(&format!(
                "input `{name}` has another task than the shards before it"
            )));
        }
        task = Some(part.task);
        let path = dir.join("samples.jsonl");
        let bytes = std::fs::read(&path).map_err(|e| f(&format!("{}: {e}", path.display())))?;
        samples.extend_from_slice(&bytes);
        evals.extend(rollout::read_jsonl::<ProblemEval>(&dir.join(EVALS_FILE)).map_err(|e| f(&e))?);
    }
    let task = task.ok_or_else(|| f(&"no shards to merge"))?;
    let metrics = compute(&evals, &|a, b| answers_equivalent(task, a, b)).map_err(|e| f(&e))?;
    write_json(&ctx.out_dir.join("metrics.json"), &metrics)?;
    let path = ctx.out_dir.join("samples.jsonl");
    std::fs::write(&path, samples).map_err(|e| f(&format!("{}: {e}", path.display())))?;
    for h in metrics.headline.iter().chain(&metrics.supplementary) {
        ctx.metric(&h.key, h.value.value.into());
    }
    for (t, p) in metrics.per_turn.iter().enumerate() {
        ctx.metric(&format!("acc@t{}", t + 1), p.value.into());
    }
    ctx.log(format!(
        "merged {} shards: {} problems",
        ctx.inputs.len(),
        metrics.problems
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_split_evenly_in_order_and_cover_everything() {
        for total in 0..40 {
            for count in 1..9 {
                let parts: Vec<_> = (0..count)
                    .map(|index| Shard { index, count }.units(total))
                    .collect();
                assert_eq!(parts[0].start, 0);
                assert_eq!(parts[count - 1].end, total);
                for w in parts.windows(2) {
                    assert_eq!(w[0].end, w[1].start, "{total} in {count}: {parts:?}");
                }
                let lens: Vec<_> = parts.iter().map(|r| r.len()).collect();
                let (lo, hi) = (lens.iter().min().unwrap(), lens.iter().max().unwrap());
                assert!(hi - lo <= 1, "{total} in {count}: {lens:?}");
            }
        }
        assert_eq!(Shard { index: 2, count: 3 }.units(4), 2..4);
    }

    #[test]
    fn items_are_whole_units_in_order_and_cover_everything() {
        for total in 0..30 {
            for unit in 1..7 {
                for count in 1..6 {
                    let parts: Vec<_> = (0..count)
                        .map(|index| Shard { index, count }.items(total, unit))
                        .collect();
                    assert_eq!(parts[0].start, 0);
                    assert_eq!(parts[count - 1].end, total);
                    for w in parts.windows(2) {
                        assert_eq!(w[0].end, w[1].start);
                    }
                    // A shard's batches are the unsharded stage's: every shard starts on a
                    // unit boundary (and so ends on one, or at the end).
                    for r in &parts {
                        assert!(
                            r.start.is_multiple_of(unit) || r.start == total,
                            "{total} items in units of {unit}, {count} shards: {parts:?}"
                        );
                    }
                }
            }
        }
        assert_eq!(Shard { index: 1, count: 3 }.items(10, 3), 3..6);
        assert_eq!(Shard { index: 2, count: 3 }.items(10, 3), 6..10);
    }

    #[test]
    fn shard_params_are_checked() {
        assert!(check_shard(&serde_json::json!({"index": 1, "count": 3})).is_ok());
        assert!(check_shard(&serde_json::json!({"index": 3, "count": 3})).is_err());
        assert!(check_shard(&serde_json::json!({"index": 0, "count": 0})).is_err());
        assert!(check_shard(&serde_json::json!({"index": 0})).is_err());
        assert!(check_shard(&serde_json::json!({"index": 0, "count": 1, "x": 1})).is_err());
    }

    use crate::kinds::dataset::tests::ctx;
    use crate::metrics::GradedAnswer;
    use crate::rollout::Trajectory;

    fn trajectory(i: usize) -> Trajectory {
        Trajectory {
            prompt_id: format!("p{i}"),
            question: format!("question {i}"),
            gold: i.to_string(),
            attempts: Vec::new(),
        }
    }

    fn meta(trajectories: usize, window: usize) -> RolloutsMeta {
        RolloutsMeta {
            task: TaskKind::Synthetic,
            trajectories,
            graded: true,
            window,
        }
    }

    /// What the unsharded stage writes for `n` trajectories in files of `size`, and what `count`
    /// shards of it write (each its whole files, under their names in the whole).
    fn whole_and_parts(
        n: usize,
        size: usize,
        count: usize,
    ) -> (tempfile::TempDir, Vec<tempfile::TempDir>) {
        let all: Vec<Trajectory> = (0..n).map(trajectory).collect();
        let whole = tempfile::tempdir().unwrap();
        rollout::write_trajectories(whole.path(), &all, size).unwrap();
        write_json(&whole.path().join(META_FILE), &meta(n, 2)).unwrap();
        let files = n.div_ceil(size).max(1);
        let parts = (0..count)
            .map(|index| {
                let dir = tempfile::tempdir().unwrap();
                let mine = Shard { index, count }.units(files);
                let mut k = 0;
                for f in mine {
                    let items = &all[(f * size).min(n)..((f + 1) * size).min(n)];
                    rollout::write_jsonl(&dir.path().join(rollout::shard_name(f)), items).unwrap();
                    k += items.len();
                }
                write_json(&dir.path().join(META_FILE), &meta(k, 2)).unwrap();
                dir
            })
            .collect();
        (whole, parts)
    }

    fn merge_ctx(out: &Path, parts: &[&Path]) -> StageContext {
        let mut c = ctx(serde_json::json!({}), out);
        for (i, p) in parts.iter().enumerate() {
            c.inputs.insert(
                rise_engine::pipeline::shard_input(i as u32),
                p.to_path_buf(),
            );
        }
        c
    }

    fn same_files(a: &Path, b: &Path) {
        let names = |d: &Path| {
            let mut v: Vec<_> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(a), names(b));
        for n in names(a) {
            assert_eq!(
                std::fs::read(a.join(&n)).unwrap(),
                std::fs::read(b.join(&n)).unwrap(),
                "{n:?}"
            );
        }
    }

    #[test]
    fn rollout_shards_merge_into_the_unsharded_bytes() {
        for (n, size, count) in [(20, 4, 3), (7, 2, 2), (3, 4, 3), (0, 4, 2), (9, 1, 9)] {
            let (whole, parts) = whole_and_parts(n, size, count);
            let out = tempfile::tempdir().unwrap();
            let paths: Vec<&Path> = parts.iter().map(|d| d.path()).collect();
            run_rollouts_merge(&merge_ctx(out.path(), &paths)).unwrap();
            same_files(whole.path(), out.path());
        }
    }

    #[test]
    fn rollout_merge_refuses_what_is_not_one_stage_s_shards() {
        let (_, parts) = whole_and_parts(20, 4, 3);
        let out = tempfile::tempdir().unwrap();
        // A shard missing: its files leave a gap.
        let e = run_rollouts_merge(&merge_ctx(out.path(), &[parts[0].path(), parts[2].path()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not consecutive shards"), "{e}");
        // Shards out of order.
        let e = run_rollouts_merge(&merge_ctx(out.path(), &[parts[1].path(), parts[0].path()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not consecutive shards"), "{e}");
        // Another window.
        write_json(&parts[1].path().join(META_FILE), &meta(8, 3)).unwrap();
        let paths: Vec<&Path> = parts.iter().map(|d| d.path()).collect();
        let e = run_rollouts_merge(&merge_ctx(out.path(), &paths))
            .unwrap_err()
            .to_string();
        assert!(e.contains("another task or window"), "{e}");
    }

    #[test]
    fn evaluate_shards_merge_into_the_unsharded_metrics_and_samples() {
        let answer = |i: usize, t: usize| GradedAnswer {
            answer: Some(((i * 7 + t) % 3).to_string()),
            correct: (i + t).is_multiple_of(3),
        };
        let evals: Vec<ProblemEval> = (0..7)
            .map(|i| ProblemEval {
                prompt_id: format!("p{i}"),
                parallel: (0..2).map(|t| answer(i, t)).collect(),
                sequential: (0..3).map(|t| answer(i, t)).collect(),
            })
            .collect();
        let samples: Vec<Value> = evals
            .iter()
            .map(|e| serde_json::json!({ "prompt_id": e.prompt_id, "text": "é\n" }))
            .collect();
        let task = TaskKind::Synthetic;
        // The unsharded stage: metrics.json over all problems, samples.jsonl.
        let whole = tempfile::tempdir().unwrap();
        let metrics = compute(&evals, &|a, b| answers_equivalent(task, a, b)).unwrap();
        write_json(&whole.path().join("metrics.json"), &metrics).unwrap();
        rollout::write_jsonl(&whole.path().join("samples.jsonl"), &samples).unwrap();
        // Three shards in batches of 2 (4 batches): 2, 2 and 3 problems.
        let parts: Vec<_> = (0..3)
            .map(|index| {
                let dir = tempfile::tempdir().unwrap();
                let r = Shard { index, count: 3 }.items(evals.len(), 2);
                write_evaluate_part(dir.path(), task, &samples[r.clone()], &evals[r]).unwrap();
                dir
            })
            .collect();
        let out = tempfile::tempdir().unwrap();
        let paths: Vec<&Path> = parts.iter().map(|d| d.path()).collect();
        run_evaluate_merge(&merge_ctx(out.path(), &paths)).unwrap();
        same_files(whole.path(), out.path());
    }

    #[test]
    fn merge_kinds_are_named_as_the_engine_expects() {
        for (kind, merge) in [
            (&crate::kinds::SAMPLE, &SAMPLE_MERGE),
            (&crate::kinds::RELABEL, &RELABEL_MERGE),
            (&crate::kinds::EVALUATE, &EVALUATE_MERGE),
        ] {
            assert_eq!(rise_engine::pipeline::merge_kind(kind.kind), merge.kind);
            assert!(
                kind.fields.iter().any(|f| f.name == "shard"),
                "{}",
                kind.kind
            );
            assert_eq!(kind.outputs, merge.outputs);
        }
    }
}
