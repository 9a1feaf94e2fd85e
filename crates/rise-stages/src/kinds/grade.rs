//! The `grade` kind: verdicts and rewards for every attempt of a rollouts artifact.
//!
//! Pure Rust and deterministic, so `rise audit --rerun iter1/grade` can check it byte for byte.
use rise_data::grade::{grade_with, GradeOptions, Rewards, TaskKind};
use rise_engine::{Execution, StageContext, StageError};
use serde_json::{json, Value};

use crate::kinds::dataset::{read_json, write_json};
use crate::kinds::{check_rewards, KindSchema};
use crate::params::{Ty, TypedParams};
use crate::rollout::{self, RolloutsMeta, Trajectory, Verdict};
use crate::stage_params;

stage_params! {
    /// The `grade` kind's params.
    pub struct GradeParams {
        rewards: Rewards = Ty::Table(check_rewards), default {}, crate::rewards_doc!();
        answer_is_fallback: bool = Ty::Bool, default false,
            "read \"The answer is X\" when a response has no \\boxed{}";
    }
}

impl From<&GradeParams> for GradeOptions {
    fn from(p: &GradeParams) -> Self {
        GradeOptions {
            rewards: p.rewards,
            answer_is_fallback: p.answer_is_fallback,
        }
    }
}

/// The `grade` kind.
pub static SCHEMA: KindSchema = KindSchema {
    kind: "grade",
    version: 1,
    execution: Execution::InProcess,
    required_inputs: &["rollouts"],
    optional_inputs: &[],
    any_inputs: false,
    fields: GradeParams::FIELDS,
    outputs: &[rollout::META_FILE, "grades.json"],
    about: "Grades every attempt of a rollouts artifact (from `sample` or `relabel`) with the \
            task's grader (RISE.md §3): the extracted answer, the verdict and the reward. \
            Writes the graded trajectories and `grades.json` (accuracy per turn).",
    validate: None,
    omit_when_absent: &[],
};

/// Grades every attempt in place.
pub fn grade_all(trajectories: &mut [Trajectory], task: TaskKind, opts: &GradeOptions) {
    for t in trajectories.iter_mut() {
        for a in &mut t.attempts {
            let v = grade_with(task, &t.gold, &a.response, opts);
            a.verdict = Some(v.verdict());
            a.reward = Some(v.reward);
            a.answer = v.pred_answer;
        }
    }
}

/// Accuracy at each turn among the trajectories that reached it, and overall counts.
pub fn summarize(trajectories: &[Trajectory]) -> Value {
    let max_turns = trajectories
        .iter()
        .map(|t| t.attempts.len())
        .max()
        .unwrap_or(0);
    let per_turn: Vec<Value> = (0..max_turns)
        .map(|i| {
            let reached: Vec<_> = trajectories.iter().filter_map(|t| t.attempts.get(i)).collect();
            let correct = reached.iter().filter(|a| a.is_correct()).count();
            let unparsed = reached.iter().filter(|a| a.verdict == Some(Verdict::Unparsed)).count();
            json!({"turn": i + 1, "attempts": reached.len(), "correct": correct, "unparsed": unparsed,
                   "accuracy": correct as f64 / reached.len().max(1) as f64})
        })
        .collect();
    let solved = trajectories
        .iter()
        .filter(|t| t.first_correct().is_some())
        .count();
    json!({"trajectories": trajectories.len(), "solved": solved, "per_turn": per_turn})
}

/// Runs a `grade` stage.
pub fn run(ctx: &StageContext) -> Result<(), StageError> {
    let dir = ctx.input("rollouts")?;
    let fail = |e: &dyn std::fmt::Display| StageError::msg(format!("stage {}: {e}", ctx.stage));
    let mut meta: RolloutsMeta = read_json(&dir.join(rollout::META_FILE)).map_err(|e| fail(&e))?;
    let mut trajectories = rollout::read_trajectories(dir).map_err(|e| fail(&e))?;
    let p: GradeParams = ctx.params()?;
    let opts = GradeOptions::from(&p);
    grade_all(&mut trajectories, meta.task, &opts);
    let summary = summarize(&trajectories);
    // Keep the input's sharding so shard boundaries stay meaningful downstream.
    let shard_size = rollout::shard_paths(dir)
        .ok()
        .and_then(|p| {
            p.first()
                .map(|f| rollout::read_jsonl::<Trajectory>(f).map(|v| v.len()))
        })
        .and_then(Result::ok)
        .filter(|&n| n > 0)
        .unwrap_or(256);
    rollout::write_trajectories(&ctx.out_dir, &trajectories, shard_size).map_err(|e| fail(&e))?;
    meta.graded = true;
    meta.trajectories = trajectories.len();
    write_json(&ctx.out_dir.join(rollout::META_FILE), &meta)?;
    write_json(&ctx.out_dir.join("grades.json"), &summary)?;
    if let Some(first) = summary["per_turn"].get(0) {
        ctx.metric("accuracy_t1", first["accuracy"].clone());
    }
    ctx.metric("solved", summary["solved"].clone());
    ctx.log(format!(
        "graded {} trajectories as {}",
        trajectories.len(),
        meta.task
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rollout::{Attempt, Message, Role, Source};

    fn attempt(turn: u32, response: &str) -> Attempt {
        Attempt {
            turn,
            messages: vec![Message::new(Role::User, "q")],
            response: response.into(),
            source: Source::Policy,
            candidates: 1,
            answer: None,
            verdict: None,
            reward: None,
        }
    }

    #[test]
    fn grades_every_attempt_and_writes_a_summary() {
        let input = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let ts = vec![
            Trajectory {
                prompt_id: "a".into(),
                question: "q".into(),
                gold: "12".into(),
                attempts: vec![
                    attempt(1, "so \\boxed{11}"),
                    attempt(2, "fixed: \\boxed{12}"),
                ],
            },
            Trajectory {
                prompt_id: "b".into(),
                question: "q".into(),
                gold: "5".into(),
                attempts: vec![attempt(1, "no box")],
            },
        ];
        rollout::write_trajectories(input.path(), &ts, 1).unwrap();
        let meta = RolloutsMeta {
            task: TaskKind::Synthetic,
            trajectories: 2,
            graded: false,
            window: 2,
        };
        write_json(&input.path().join(rollout::META_FILE), &meta).unwrap();
        let params = SCHEMA.resolve(&json!({})).unwrap();
        let mut ctx = crate::kinds::dataset::tests::ctx(params, out.path());
        ctx.inputs
            .insert("rollouts".into(), input.path().to_path_buf());
        run(&ctx).unwrap();
        let graded = rollout::read_trajectories(out.path()).unwrap();
        let a = &graded[0].attempts;
        assert_eq!(
            (a[0].verdict, a[0].reward, a[0].answer.as_deref()),
            (Some(Verdict::Wrong), Some(0.0), Some("11"))
        );
        assert_eq!(
            (a[1].verdict, a[1].reward),
            (Some(Verdict::Correct), Some(1.0))
        );
        assert_eq!(graded[1].attempts[0].verdict, Some(Verdict::Unparsed));
        assert_eq!(graded[1].attempts[0].reward, Some(-1.0));
        let back: RolloutsMeta = read_json(&out.path().join(rollout::META_FILE)).unwrap();
        assert!(back.graded);
        let summary: Value = read_json(&out.path().join("grades.json")).unwrap();
        assert_eq!(summary["solved"], 1);
        assert_eq!(summary["per_turn"][0]["unparsed"], 1);
        // Deterministic: a second run writes the same bytes.
        let out2 = tempfile::tempdir().unwrap();
        ctx.out_dir = out2.path().to_path_buf();
        run(&ctx).unwrap();
        for f in [
            "shard-00000.jsonl",
            "shard-00001.jsonl",
            "grades.json",
            "rollouts.json",
        ] {
            assert_eq!(
                std::fs::read(out.path().join(f)).unwrap(),
                std::fs::read(out2.path().join(f)).unwrap(),
                "{f}"
            );
        }
    }

    #[test]
    fn a_missing_input_names_the_stage() {
        let out = tempfile::tempdir().unwrap();
        let params = SCHEMA.resolve(&json!({})).unwrap();
        let mut ctx = crate::kinds::dataset::tests::ctx(params, out.path());
        ctx.inputs
            .insert("rollouts".into(), out.path().join("nope"));
        let e = run(&ctx).unwrap_err().to_string();
        assert!(
            e.contains("stage data") && e.contains("rollouts.json"),
            "{e}"
        );
    }
}
