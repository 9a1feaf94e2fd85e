//! Evaluation metrics of RISE.md §6, computed from graded answers.
//!
//! For each test problem the `evaluate` stage draws `k` parallel first-turn samples and runs one
//! sequential chain of `n` turns whose feedback is always "incorrect" (no oracle). The chain's turn 1
//! is parallel sample 1, so the budget is `k + n − 1` responses per problem. From these:
//! - `m1@t1`: parallel sample 1 is correct;
//! - `m{k}@t1`: the majority answer of the k parallel samples is correct (self-consistency, the
//!   equal-compute baseline);
//! - `m1@t{n}`: the majority answer over the n sequential turns is correct, ties broken by the most
//!   recent turn among the tied answers (the headline number);
//! - `p1@t{n}`: some turn among the n is correct (what an oracle that stops at the first correct
//!   answer would score; pass@k over turns, never to be read as a majority vote);
//! - accuracy at each turn, and the flips between consecutive turns;
//! - transitions: how often the next sequential turn is right after a right / a wrong one, next
//!   to how often the next parallel sample is. A model that uses the feedback well beats the
//!   parallel rate after a wrong answer without losing it after a right one; that is what makes
//!   `m1@t{n}` beat `m{k}@t1`.
//!
//! Every proportion carries a 95% Wilson score interval.
use serde::{Deserialize, Serialize};

/// z for a two-sided 95% interval.
pub const Z95: f64 = 1.959_963_984_540_054;

/// One graded response, as far as the metrics care.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GradedAnswer {
    /// The extracted final answer; `None` when none could be parsed (it never wins a vote).
    pub answer: Option<String>,
    pub correct: bool,
}

/// The graded samples of one test problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemEval {
    pub prompt_id: String,
    /// k parallel first-turn samples; `parallel[0]` is also the sequential chain's turn 1.
    pub parallel: Vec<GradedAnswer>,
    /// The sequential turns 1..=n, feedback always "incorrect".
    pub sequential: Vec<GradedAnswer>,
}

/// A proportion with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    pub successes: u64,
    pub n: u64,
    /// successes / n (0 when n = 0).
    pub value: f64,
    pub lo: f64,
    pub hi: f64,
}

impl Proportion {
    pub fn new(successes: u64, n: u64) -> Self {
        let (lo, hi) = wilson(successes, n, Z95);
        let value = if n == 0 {
            0.0
        } else {
            successes as f64 / n as f64
        };
        Proportion {
            successes,
            n,
            value,
            lo,
            hi,
        }
    }

    /// True when `self` is below `other` by more than sampling noise: a two-proportion z test at
    /// 95% (unpaired, hence conservative for the paired test sets we use).
    pub fn significantly_below(&self, other: &Proportion) -> bool {
        if self.n == 0 || other.n == 0 {
            return false;
        }
        let se = (self.value * (1.0 - self.value) / self.n as f64
            + other.value * (1.0 - other.value) / other.n as f64)
            .sqrt();
        // With both proportions at 0 or 1 the standard error vanishes: any gap is then real.
        other.value - self.value > Z95 * se && other.value > self.value
    }
}

/// The Wilson score interval for `successes` out of `n` (`(0, 1)` when n = 0).
pub fn wilson(successes: u64, n: u64, z: f64) -> (f64, f64) {
    if n == 0 {
        return (0.0, 1.0);
    }
    let n = n as f64;
    let p = successes as f64 / n;
    let z2 = z * z;
    let denom = 1.0 + z2 / n;
    let center = (p + z2 / (2.0 * n)) / denom;
    let half = z / denom * (p * (1.0 - p) / n + z2 / (4.0 * n * n)).sqrt();
    // The bounds are exactly 0 and 1 at the extremes; rounding would leave 1e-17 there.
    let lo = if successes == 0 {
        0.0
    } else {
        (center - half).max(0.0)
    };
    let hi = if successes as f64 >= n {
        1.0
    } else {
        (center + half).min(1.0)
    };
    (lo, hi)
}

/// How to break a tie between equally frequent answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TieBreak {
    /// The tied answer seen earliest wins (used for parallel samples, whose order is arbitrary).
    Earliest,
    /// The tied answer seen most recently wins (RISE.md §6 for sequential turns).
    MostRecent,
}

/// The majority answer among `answers` (unparsed answers do not vote), grouping answers with
/// `equiv`; returns the index of the representative occurrence (the latest occurrence under
/// [`TieBreak::MostRecent`], the earliest under [`TieBreak::Earliest`]), or `None` when no answer
/// parsed.
pub fn majority(
    answers: &[GradedAnswer],
    equiv: &dyn Fn(&str, &str) -> bool,
    tie: TieBreak,
) -> Option<usize> {
    // (representative answer, count, first index, last index)
    let mut groups: Vec<(&str, usize, usize, usize)> = Vec::new();
    for (i, a) in answers.iter().enumerate() {
        let Some(ans) = a.answer.as_deref() else {
            continue;
        };
        match groups.iter_mut().find(|g| equiv(g.0, ans)) {
            Some(g) => {
                g.1 += 1;
                g.3 = i;
            }
            None => groups.push((ans, 1, i, i)),
        }
    }
    let top = groups.iter().map(|g| g.1).max()?;
    let tied = groups.iter().filter(|g| g.1 == top);
    match tie {
        TieBreak::Earliest => tied.map(|g| g.2).min(),
        TieBreak::MostRecent => tied.map(|g| g.3).max(),
    }
}

/// One headline metric.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Headline {
    /// `m1@t1`, `m5@t1`, `m1@t5` or `p1@t5` (with the actual k and n).
    pub key: String,
    pub description: String,
    pub value: Proportion,
}

/// Flips between turn `from` and turn `from + 1`, as fractions of all problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    pub from: u32,
    pub to: u32,
    /// Correct at `from`, wrong at `to`.
    pub correct_to_wrong: Proportion,
    /// Wrong at `from`, correct at `to`.
    pub wrong_to_correct: Proportion,
}

/// How often a right answer follows a right / a wrong one: between consecutive sequential turns
/// (after the always-"incorrect" feedback) and, for comparison, between consecutive parallel
/// samples (independent draws of turn 1). Pooled over all consecutive pairs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transitions {
    pub sequential_after_right: Proportion,
    pub sequential_after_wrong: Proportion,
    pub parallel_after_right: Proportion,
    pub parallel_after_wrong: Proportion,
}

impl Transitions {
    fn compute(problems: &[ProblemEval]) -> Transitions {
        let rate = |chains: &dyn Fn(&ProblemEval) -> &[GradedAnswer], after_right: bool| {
            let (mut right_next, mut pairs) = (0, 0);
            for p in problems {
                for pair in chains(p).windows(2) {
                    if pair[0].correct == after_right {
                        pairs += 1;
                        right_next += u64::from(pair[1].correct);
                    }
                }
            }
            Proportion::new(right_next, pairs)
        };
        Transitions {
            sequential_after_right: rate(&|p| &p.sequential, true),
            sequential_after_wrong: rate(&|p| &p.sequential, false),
            parallel_after_right: rate(&|p| &p.parallel, true),
            parallel_after_wrong: rate(&|p| &p.parallel, false),
        }
    }
}

/// Everything `evaluate` reports for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    pub problems: u64,
    /// k: parallel first-turn samples.
    pub parallel: u32,
    /// n: sequential turns.
    pub turns: u32,
    /// In order: m1@t1, m{k}@t1, m1@t{n}, p1@t{n}.
    pub headline: Vec<Headline>,
    /// Accuracy at turn 1..=n of the sequential chain.
    pub per_turn: Vec<Proportion>,
    pub flips: Vec<Flip>,
    pub transitions: Transitions,
}

impl EvalMetrics {
    /// A headline metric by key (e.g. `"m1@t5"`).
    pub fn get(&self, key: &str) -> Option<&Proportion> {
        self.headline
            .iter()
            .find(|h| h.key == key)
            .map(|h| &h.value)
    }
    pub fn m1_t1(&self) -> &Proportion {
        &self.headline[0].value
    }
    pub fn mk_t1(&self) -> &Proportion {
        &self.headline[1].value
    }
    pub fn m1_tn(&self) -> &Proportion {
        &self.headline[2].value
    }
    pub fn p1_tn(&self) -> &Proportion {
        &self.headline[3].value
    }
}

/// Why metrics could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("no problems to evaluate")]
    Empty,
    #[error(
        "problem {prompt_id:?} has {parallel} parallel samples and {turns} turns; \
         expected {want_parallel} and {want_turns} (every problem must have the same budget)"
    )]
    Shape {
        prompt_id: String,
        parallel: usize,
        turns: usize,
        want_parallel: usize,
        want_turns: usize,
    },
}

/// Computes every metric of RISE.md §6. `equiv` decides whether two extracted answers are the same
/// answer for voting (the task's grader equivalence).
pub fn compute(
    problems: &[ProblemEval],
    equiv: &dyn Fn(&str, &str) -> bool,
) -> Result<EvalMetrics, MetricsError> {
    let first = problems.first().ok_or(MetricsError::Empty)?;
    let k = first.parallel.len();
    let n = first.sequential.len();
    for p in problems {
        if p.parallel.len() != k || p.sequential.len() != n || k == 0 || n == 0 {
            return Err(MetricsError::Shape {
                prompt_id: p.prompt_id.clone(),
                parallel: p.parallel.len(),
                turns: p.sequential.len(),
                want_parallel: k.max(1),
                want_turns: n.max(1),
            });
        }
    }
    let total = problems.len() as u64;
    let count = |f: &dyn Fn(&ProblemEval) -> bool| problems.iter().filter(|p| f(p)).count() as u64;

    let m1_t1 = count(&|p| p.parallel[0].correct);
    let mk_t1 = count(&|p| {
        majority(&p.parallel, equiv, TieBreak::Earliest).is_some_and(|i| p.parallel[i].correct)
    });
    let m1_tn = count(&|p| {
        majority(&p.sequential, equiv, TieBreak::MostRecent)
            .is_some_and(|i| p.sequential[i].correct)
    });
    let p1_tn = count(&|p| p.sequential.iter().any(|a| a.correct));

    let headline = vec![
        Headline {
            key: "m1@t1".into(),
            description: "one sample, first turn".into(),
            value: Proportion::new(m1_t1, total),
        },
        Headline {
            key: format!("m{k}@t1"),
            description: format!("majority of {k} parallel first-turn samples (equal compute)"),
            value: Proportion::new(mk_t1, total),
        },
        Headline {
            key: format!("m1@t{n}"),
            description: format!(
                "majority over {n} sequential turns, feedback always \"incorrect\", \
                 ties to the most recent"
            ),
            value: Proportion::new(m1_tn, total),
        },
        Headline {
            key: format!("p1@t{n}"),
            description: format!("oracle: any of the first {n} turns correct (not a majority)"),
            value: Proportion::new(p1_tn, total),
        },
    ];
    let per_turn = (0..n)
        .map(|t| Proportion::new(count(&|p| p.sequential[t].correct), total))
        .collect();
    let flips = (0..n.saturating_sub(1))
        .map(|t| Flip {
            from: t as u32 + 1,
            to: t as u32 + 2,
            correct_to_wrong: Proportion::new(
                count(&|p| p.sequential[t].correct && !p.sequential[t + 1].correct),
                total,
            ),
            wrong_to_correct: Proportion::new(
                count(&|p| !p.sequential[t].correct && p.sequential[t + 1].correct),
                total,
            ),
        })
        .collect();
    Ok(EvalMetrics {
        problems: total,
        parallel: k as u32,
        turns: n as u32,
        headline,
        per_turn,
        flips,
        transitions: Transitions::compute(problems),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(answer: Option<&str>, gold: &str) -> GradedAnswer {
        GradedAnswer {
            answer: answer.map(str::to_string),
            correct: answer == Some(gold),
        }
    }

    fn eq(a: &str, b: &str) -> bool {
        a == b
    }

    fn problem(id: &str, gold: &str, par: &[Option<&str>], seq: &[Option<&str>]) -> ProblemEval {
        ProblemEval {
            prompt_id: id.into(),
            parallel: par.iter().map(|a| g(*a, gold)).collect(),
            sequential: seq.iter().map(|a| g(*a, gold)).collect(),
        }
    }

    #[test]
    fn wilson_matches_reference_values() {
        // Reference: statsmodels proportion_confint(8, 10, method="wilson").
        let (lo, hi) = wilson(8, 10, Z95);
        assert!((lo - 0.490_162).abs() < 1e-5, "{lo}");
        assert!((hi - 0.943_318).abs() < 1e-5, "{hi}");
        let (lo, hi) = wilson(0, 20, Z95);
        assert_eq!(lo, 0.0);
        assert!((hi - 0.161_125).abs() < 1e-5, "{hi}");
        assert_eq!(wilson(0, 0, Z95), (0.0, 1.0));
    }

    #[test]
    fn majority_ties_go_to_the_most_recent_for_turns() {
        let a: Vec<_> = ["1", "2", "2", "1", "3"]
            .iter()
            .map(|s| g(Some(s), "1"))
            .collect();
        assert_eq!(majority(&a, &eq, TieBreak::MostRecent), Some(3));
        assert_eq!(majority(&a, &eq, TieBreak::Earliest), Some(0));
        let b = vec![g(None, "1"), g(Some("4"), "1"), g(None, "1")];
        assert_eq!(majority(&b, &eq, TieBreak::MostRecent), Some(1));
        assert_eq!(majority(&[g(None, "1")], &eq, TieBreak::MostRecent), None);
    }

    #[test]
    fn majority_groups_with_the_equivalence() {
        let a: Vec<_> = ["18", "18.0", "7"]
            .iter()
            .map(|s| g(Some(s), "18"))
            .collect();
        let num = |x: &str, y: &str| x.parse::<f64>().ok() == y.parse::<f64>().ok();
        assert_eq!(majority(&a, &num, TieBreak::MostRecent), Some(1));
    }

    #[test]
    fn metrics_on_a_hand_computed_case() {
        let ps = vec![
            // Correct at once and stays: every metric succeeds.
            problem(
                "a",
                "1",
                &[Some("1"), Some("2"), Some("1")],
                &[Some("1"), Some("1"), Some("1")],
            ),
            // Wrong first, fixed at turns 2 and 3: majority over turns is "1" (2 votes).
            problem(
                "b",
                "1",
                &[Some("5"), Some("5"), Some("1")],
                &[Some("5"), Some("1"), Some("1")],
            ),
            // Correct only at turn 2, then flips back: p1 counts it, the majority does not.
            problem(
                "c",
                "1",
                &[Some("3"), None, None],
                &[Some("3"), Some("1"), Some("3")],
            ),
            // Never parsed.
            problem("d", "1", &[None, None, None], &[None, None, None]),
        ];
        let m = compute(&ps, &eq).unwrap();
        let keys: Vec<_> = m.headline.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(keys, ["m1@t1", "m3@t1", "m1@t3", "p1@t3"]);
        assert_eq!(m.m1_t1().successes, 1);
        assert_eq!(m.mk_t1().successes, 1); // a only: b's parallel majority is 5
        assert_eq!(m.m1_tn().successes, 2); // a, b
        assert_eq!(m.p1_tn().successes, 3); // a, b, c
        let per_turn: Vec<_> = m.per_turn.iter().map(|p| p.successes).collect();
        assert_eq!(per_turn, [1, 3, 2]);
        assert_eq!(m.flips[0].wrong_to_correct.successes, 2);
        assert_eq!(m.flips[0].correct_to_wrong.successes, 0);
        assert_eq!(m.flips[1].correct_to_wrong.successes, 1);
        assert_eq!(m.flips[1].wrong_to_correct.successes, 0);
        assert_eq!(m.get("m1@t3").unwrap().n, 4);
        // Sequential pairs: a RR RR, b WR RR, c WR RW, d WW WW.
        // Parallel pairs:   a RW WR, b WW WR, c WW WW, d WW WW.
        let t = m.transitions;
        let pair = |p: Proportion| (p.successes, p.n);
        assert_eq!(pair(t.sequential_after_right), (3, 4));
        assert_eq!(pair(t.sequential_after_wrong), (2, 4));
        assert_eq!(pair(t.parallel_after_right), (0, 1));
        assert_eq!(pair(t.parallel_after_wrong), (2, 7));
    }

    #[test]
    fn ragged_or_empty_input_is_rejected() {
        assert_eq!(compute(&[], &eq), Err(MetricsError::Empty));
        let ps = vec![
            problem("a", "1", &[Some("1")], &[Some("1"), Some("1")]),
            problem("b", "1", &[Some("1")], &[Some("1")]),
        ];
        assert!(matches!(compute(&ps, &eq), Err(MetricsError::Shape { .. })));
    }

    #[test]
    fn significance_needs_a_real_gap() {
        let base = Proportion::new(50, 100);
        assert!(!Proportion::new(45, 100).significantly_below(&base));
        assert!(Proportion::new(30, 100).significantly_below(&base));
        assert!(!Proportion::new(60, 100).significantly_below(&base));
    }
}
