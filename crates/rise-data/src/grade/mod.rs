//! Answer extraction and grading (RISE.md §3).
//!
//! A wrong grade is a wrong reward: RISE trains on what this module says, so every rule here is
//! exact (rational arithmetic, no floats), total (never panics, any input) and linear-time.
//!
//! - The model's answer is the content of the last `\boxed{…}` / `\fbox{…}` ([`extract_boxed`]),
//!   optionally falling back to "The answer is X" ([`GradeOptions::answer_is_fallback`]).
//! - The gold may be a full reference solution (`#### N` for GSM8K, a `\boxed{}` for MATH and the
//!   synthetic task) or a bare answer.
//! - GSM8K and the synthetic task compare one number exactly; MATH compares normalized LaTeX,
//!   numbers and fractions by value, and tuples, intervals, unions and matrices element-wise.
use std::fmt;
use std::str::FromStr;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

mod extract;
mod gsm8k;
mod math;

pub use extract::extract_boxed;

/// Which grading rules apply.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    /// Grade-school math: one number, compared exactly.
    Gsm8k,
    /// Competition math: LaTeX answers, normalized and compared structurally.
    Math,
    /// rise's generated arithmetic task: one integer, compared like GSM8K.
    Synthetic,
}

impl TaskKind {
    /// Every kind, in the order `--help` lists them.
    pub const ALL: [TaskKind; 3] = [TaskKind::Gsm8k, TaskKind::Math, TaskKind::Synthetic];
    /// Their names, in the same order (the choices of a `task` param).
    pub const NAMES: [&'static str; 3] = ["gsm8k", "math", "synthetic"];

    /// The lowercase name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            TaskKind::Gsm8k => "gsm8k",
            TaskKind::Math => "math",
            TaskKind::Synthetic => "synthetic",
        }
    }
}

impl fmt::Display for TaskKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The error for an unknown task name.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown task `{0}` (expected one of: gsm8k, math, synthetic)")]
pub struct UnknownTask(pub String);

impl FromStr for TaskKind {
    type Err = UnknownTask;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        TaskKind::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownTask(s.to_string()))
    }
}

/// The reward for each outcome. RISE's release uses +1 / 0 / −1.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Rewards {
    /// The final answer matches the gold.
    pub correct: f64,
    /// An answer was found and it is wrong.
    pub wrong: f64,
    /// No answer could be extracted (no `\boxed{}`, or an empty one).
    pub unparseable: f64,
}

impl Default for Rewards {
    fn default() -> Self {
        Rewards {
            correct: 1.0,
            wrong: 0.0,
            unparseable: -1.0,
        }
    }
}

/// Rewards plus extraction options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GradeOptions {
    /// Rewards per outcome.
    pub rewards: Rewards,
    /// When a response has no `\boxed{}`, read the answer after the last "The answer is"
    /// (off by default, as in RISE's release: a model must learn the boxed format).
    pub answer_is_fallback: bool,
}

/// The outcome of grading one response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GradeOutcome {
    /// The predicted answer is equivalent to the gold answer.
    pub correct: bool,
    /// The reward for this outcome (see [`Rewards`]).
    pub reward: f64,
    /// The answer extracted from the response; `None` when there is none (unparseable).
    pub pred_answer: Option<String>,
    /// The answer extracted from the gold (a reference solution or a bare answer).
    pub gold_answer: String,
}

impl GradeOutcome {
    /// No answer could be extracted from the response.
    pub fn is_unparseable(&self) -> bool {
        self.pred_answer.is_none()
    }

    /// The verdict: what rollouts record for an attempt and `rise grade` prints.
    pub fn verdict(&self) -> Verdict {
        if self.correct {
            Verdict::Correct
        } else if self.is_unparseable() {
            Verdict::Unparsed
        } else {
            Verdict::Wrong
        }
    }
}

/// The grader's verdict on one response (stored in rollouts as `correct`, `wrong` or
/// `unparsed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// The answer is equivalent to the gold.
    Correct,
    /// An answer was found and it is wrong.
    Wrong,
    /// No final answer could be extracted (reward −1 by default).
    Unparsed,
}

impl Verdict {
    /// Whether the answer was right.
    pub fn is_correct(self) -> bool {
        self == Verdict::Correct
    }
}

/// The gold's final answer: after the last `####` if present (GSM8K), else the last
/// `\boxed{}` (MATH, synthetic), else the whole trimmed text (a bare answer).
pub fn gold_answer(gold: &str) -> String {
    if let Some(a) = extract::after_hashes(gold) {
        return a.to_string();
    }
    extract_boxed(gold).unwrap_or_else(|| gold.trim().to_string())
}

/// The model's final answer: the last `\boxed{}`, else (if enabled) "The answer is X".
/// Empty answers count as none.
pub fn pred_answer(response: &str, answer_is_fallback: bool) -> Option<String> {
    let boxed = extract_boxed(response).filter(|a| !a.is_empty());
    match boxed {
        Some(a) => Some(a),
        None if answer_is_fallback => extract::answer_is(response),
        None => None,
    }
}

/// Whether two extracted answers are the same answer under `task`'s rules.
pub fn answers_equivalent(task: TaskKind, gold: &str, pred: &str) -> bool {
    match task {
        TaskKind::Gsm8k | TaskKind::Synthetic => {
            match (
                gsm8k::parse_numeric_answer(gold),
                gsm8k::parse_numeric_answer(pred),
            ) {
                (Some(g), Some(p)) => g == p,
                (Some(_), None) => false,
                // A non-numeric gold (rare in custom data): fall back to MATH's text rules.
                (None, _) => math::equivalent(gold, pred),
            }
        }
        TaskKind::Math => math::equivalent(gold, pred),
    }
}

/// A canonical text for an extracted answer, so equivalent answers can be counted together
/// (majority voting for m5@t1 and m1@t5): numbers become their exact shortest form (`2,125` and
/// `2125.0` → `2125`), other MATH answers their normalized LaTeX.
pub fn canonical_answer(task: TaskKind, answer: &str) -> String {
    let number = match task {
        TaskKind::Gsm8k | TaskKind::Synthetic => gsm8k::parse_numeric_answer(answer),
        TaskKind::Math => None,
    };
    if let Some(n) = number {
        return crate::number::canonical(&n);
    }
    let norm = math::normalize(answer);
    match crate::number::parse_number(&norm) {
        Some(n) => crate::number::canonical(&n),
        None => norm,
    }
}

/// Grades `response` against `gold` with the given rewards (no "The answer is" fallback).
///
/// `gold` may be a full reference solution or a bare answer (see [`gold_answer`]).
///
/// ```
/// use rise_data::grade::{grade, Rewards, TaskKind};
/// let v = grade(TaskKind::Gsm8k, "so 2,000 + 125\n#### 2,125", r"The total is \boxed{2125}.", &Rewards::default());
/// assert!(v.correct);
/// assert_eq!(v.gold_answer, "2,125");
/// ```
pub fn grade(task: TaskKind, gold: &str, response: &str, rewards: &Rewards) -> GradeOutcome {
    grade_with(
        task,
        gold,
        response,
        &GradeOptions {
            rewards: *rewards,
            answer_is_fallback: false,
        },
    )
}

/// Grades `response` against `gold` with full options.
pub fn grade_with(task: TaskKind, gold: &str, response: &str, opts: &GradeOptions) -> GradeOutcome {
    let gold_answer = gold_answer(gold);
    let pred = pred_answer(response, opts.answer_is_fallback);
    let correct = pred
        .as_deref()
        .is_some_and(|p| answers_equivalent(task, &gold_answer, p));
    let reward = match (&pred, correct) {
        (None, _) => opts.rewards.unparseable,
        (Some(_), true) => opts.rewards.correct,
        (Some(_), false) => opts.rewards.wrong,
    };
    GradeOutcome {
        correct,
        reward,
        pred_answer: pred,
        gold_answer,
    }
}

/// Grades many `(gold, response)` pairs in parallel; the output is in input order.
pub fn grade_many<G, R>(task: TaskKind, pairs: &[(G, R)], opts: &GradeOptions) -> Vec<GradeOutcome>
where
    G: AsRef<str> + Sync,
    R: AsRef<str> + Sync,
{
    pairs
        .par_iter()
        .map(|(g, r)| grade_with(task, g.as_ref(), r.as_ref(), opts))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reward_per_outcome() {
        let r = Rewards::default();
        assert_eq!(
            grade(TaskKind::Gsm8k, "#### 18", r"\boxed{18}", &r).reward,
            1.0
        );
        assert_eq!(
            grade(TaskKind::Gsm8k, "#### 18", r"\boxed{19}", &r).reward,
            0.0
        );
        assert_eq!(grade(TaskKind::Gsm8k, "#### 18", "18", &r).reward, -1.0);
        assert_eq!(
            grade(TaskKind::Gsm8k, "#### 18", r"\boxed{}", &r).reward,
            -1.0
        );
    }

    #[test]
    fn verdicts() {
        let r = Rewards::default();
        let v = |response| grade(TaskKind::Gsm8k, "#### 18", response, &r).verdict();
        assert_eq!(v(r"\boxed{18}"), Verdict::Correct);
        assert_eq!(v(r"\boxed{19}"), Verdict::Wrong);
        assert_eq!(v("18"), Verdict::Unparsed);
        assert_eq!(
            serde_json::to_value([Verdict::Correct, Verdict::Wrong, Verdict::Unparsed]).unwrap(),
            serde_json::json!(["correct", "wrong", "unparsed"])
        );
    }

    #[test]
    fn fallback_only_when_enabled() {
        let on = GradeOptions {
            answer_is_fallback: true,
            ..Default::default()
        };
        assert!(grade_with(TaskKind::Gsm8k, "18", "The answer is 18.", &on).correct);
        assert!(
            !grade_with(
                TaskKind::Gsm8k,
                "18",
                "The answer is 18.",
                &GradeOptions::default()
            )
            .correct
        );
    }

    #[test]
    fn task_names_round_trip() {
        for (k, name) in TaskKind::ALL.into_iter().zip(TaskKind::NAMES) {
            assert_eq!(k.name(), name);
            assert_eq!(k.name().parse::<TaskKind>().ok(), Some(k));
            assert_eq!(
                serde_json::from_value::<TaskKind>(name.into()).ok(),
                Some(k)
            );
        }
        assert!("gsm9k".parse::<TaskKind>().is_err());
    }

    #[test]
    fn canonical_groups_equivalents() {
        assert_eq!(
            canonical_answer(TaskKind::Gsm8k, "2,125"),
            canonical_answer(TaskKind::Gsm8k, "$2125.0")
        );
        assert_eq!(
            canonical_answer(TaskKind::Math, r"\dfrac12"),
            canonical_answer(TaskKind::Math, "0.5")
        );
    }
}
