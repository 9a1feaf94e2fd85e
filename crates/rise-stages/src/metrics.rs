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
//!   `m1@t{n}` beat `m{k}@t1`;
//! - beside them (RISE.md §6–7), what tells the mechanisms apart: the tie rate of the vote over
//!   turns and `m1@t{n}` with earliest-wins ties, parallel pass@k beside `p1@t{n}`, and how
//!   often the answer CHANGES after a right / a wrong one (sequential against parallel);
//! - each problem's outcomes, so that the report can pair models on the same problems
//!   ([`mcnemar`]): models share random streams per problem and turn.
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
    /// Whether the grader judged the response right.
    pub correct: bool,
}

/// The graded samples of one test problem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProblemEval {
    /// The problem's id (from the dataset).
    pub prompt_id: String,
    /// k parallel first-turn samples; `parallel[0]` is also the sequential chain's turn 1.
    pub parallel: Vec<GradedAnswer>,
    /// The sequential turns 1..=n, feedback always "incorrect".
    pub sequential: Vec<GradedAnswer>,
}

/// A proportion with its 95% Wilson interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Proportion {
    /// Problems (or pairs) counted as successes.
    pub successes: u64,
    /// Problems (or pairs) counted in all.
    pub n: u64,
    /// successes / n (0 when n = 0).
    pub value: f64,
    /// Lower end of the 95% Wilson interval, in [0, 1].
    pub lo: f64,
    /// Upper end of the 95% Wilson interval, in [0, 1].
    pub hi: f64,
}

impl Proportion {
    /// `successes` out of `n`, with its 95% Wilson interval.
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
    /// One sentence for the report: what the metric measures.
    pub description: String,
    /// The metric over all problems.
    pub value: Proportion,
}

/// Flips between turn `from` and turn `from + 1`, as fractions of all problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Flip {
    /// The earlier turn, 1-based.
    pub from: u32,
    /// The later turn (`from + 1`).
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
    /// Right at the next sequential turn, of the pairs whose earlier turn was right.
    pub sequential_after_right: Proportion,
    /// Right at the next sequential turn, of the pairs whose earlier turn was wrong.
    pub sequential_after_wrong: Proportion,
    /// Right at the next parallel sample, of the pairs whose earlier sample was right.
    pub parallel_after_right: Proportion,
    /// Right at the next parallel sample, of the pairs whose earlier sample was wrong.
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

/// How often the next answer differs from the previous one, after a right and after a wrong
/// answer: between consecutive sequential turns (after the always-"incorrect" feedback) and
/// between consecutive parallel samples. Two answers are the same when both parse and are
/// equivalent, or neither parses. A model that tells right from wrong changes wrong answers
/// and keeps right ones; one that does not changes both alike.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Changes {
    /// Answer changed at the next sequential turn, of the pairs whose earlier turn was right.
    pub sequential_after_right: Proportion,
    /// Answer changed at the next sequential turn, of the pairs whose earlier turn was wrong.
    pub sequential_after_wrong: Proportion,
    /// Answer changed at the next parallel sample, of the pairs whose earlier sample was right.
    pub parallel_after_right: Proportion,
    /// Answer changed at the next parallel sample, of the pairs whose earlier sample was wrong.
    pub parallel_after_wrong: Proportion,
}

impl Changes {
    fn compute(problems: &[ProblemEval], equiv: &dyn Fn(&str, &str) -> bool) -> Changes {
        let same = |a: &GradedAnswer, b: &GradedAnswer| match (&a.answer, &b.answer) {
            (Some(x), Some(y)) => equiv(x, y),
            (None, None) => true,
            _ => false,
        };
        let rate = |chains: &dyn Fn(&ProblemEval) -> &[GradedAnswer], after_right: bool| {
            let (mut changed, mut pairs) = (0, 0);
            for p in problems {
                for pair in chains(p).windows(2) {
                    if pair[0].correct == after_right {
                        pairs += 1;
                        changed += u64::from(!same(&pair[0], &pair[1]));
                    }
                }
            }
            Proportion::new(changed, pairs)
        };
        Changes {
            sequential_after_right: rate(&|p| &p.sequential, true),
            sequential_after_wrong: rate(&|p| &p.sequential, false),
            parallel_after_right: rate(&|p| &p.parallel, true),
            parallel_after_wrong: rate(&|p| &p.parallel, false),
        }
    }
}

/// Each problem's outcomes, in evaluation order, for paired tests between models and between
/// metrics of one model. Each list is written as a string of `0`/`1`, one character per
/// problem, so that a 1000-problem evaluation stays a few kilobytes of JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Outcomes {
    /// The problems' ids, in the order of every list below.
    pub prompt_ids: Vec<String>,
    /// Parallel sample 1 (= sequential turn 1) correct.
    #[serde(with = "bits")]
    pub m1_t1: Vec<bool>,
    /// The majority of the k parallel samples correct.
    #[serde(with = "bits")]
    pub mk_t1: Vec<bool>,
    /// The majority over the n turns correct, ties to the most recent.
    #[serde(with = "bits")]
    pub m1_tn: Vec<bool>,
    /// The same vote, ties to the earliest.
    #[serde(with = "bits")]
    pub m1_tn_earliest: Vec<bool>,
    /// Some turn correct (oracle).
    #[serde(with = "bits")]
    pub p1_tn: Vec<bool>,
    /// Some parallel sample correct.
    #[serde(with = "bits")]
    pub pass_k: Vec<bool>,
    /// The vote over the turns tied (two or more answers share the top count).
    #[serde(with = "bits")]
    pub tie: Vec<bool>,
}

impl Outcomes {
    /// The outcome list named by a headline key of `m` (`m1@t1`, `m{k}@t1`, `m1@t{n}`,
    /// `p1@t{n}`) or a supplementary one.
    pub fn by_key(&self, m: &EvalMetrics, key: &str) -> Option<&[bool]> {
        let (k, n) = (m.parallel, m.turns);
        let list = if key == "m1@t1" {
            &self.m1_t1
        } else if key == format!("m{k}@t1") {
            &self.mk_t1
        } else if key == format!("m1@t{n}") {
            &self.m1_tn
        } else if key == format!("p1@t{n}") {
            &self.p1_tn
        } else if key == tie_key(n) {
            &self.tie
        } else if key == earliest_key(n) {
            &self.m1_tn_earliest
        } else if key == pass_key(k) {
            &self.pass_k
        } else {
            return None;
        };
        Some(list)
    }
}

/// `Vec<bool>` as a `0`/`1` string.
mod bits {
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &[bool], s: S) -> Result<S::Ok, S::Error> {
        let text: String = v.iter().map(|&b| if b { '1' } else { '0' }).collect();
        s.serialize_str(&text)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<bool>, D::Error> {
        let text = String::deserialize(d)?;
        text.chars()
            .enumerate()
            .map(|(i, c)| match c {
                '0' => Ok(false),
                '1' => Ok(true),
                other => Err(D::Error::custom(format!(
                    "outcome {i} is {other:?}; expected a string of 0 and 1"
                ))),
            })
            .collect()
    }
}

/// The key of the tie rate of the vote over `n` turns.
pub fn tie_key(n: u32) -> String {
    format!("m1@t{n} tie rate")
}

/// The key of the vote over `n` turns with earliest-wins ties.
pub fn earliest_key(n: u32) -> String {
    format!("m1@t{n} earliest-wins")
}

/// The key of parallel pass@k.
pub fn pass_key(k: u32) -> String {
    format!("pass@{k} parallel")
}

/// Everything `evaluate` reports for one model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalMetrics {
    /// Test problems evaluated.
    pub problems: u64,
    /// k: parallel first-turn samples.
    pub parallel: u32,
    /// n: sequential turns.
    pub turns: u32,
    /// In order: m1@t1, m{k}@t1, m1@t{n}, p1@t{n}.
    pub headline: Vec<Headline>,
    /// Accuracy at turn 1..=n of the sequential chain.
    pub per_turn: Vec<Proportion>,
    /// Flips between each pair of consecutive sequential turns (n - 1 entries).
    pub flips: Vec<Flip>,
    /// Whether a right answer follows a right or a wrong one, sequential vs parallel.
    pub transitions: Transitions,
    /// In order: the tie rate of the vote over turns, `m1@t{n}` with earliest-wins ties,
    /// parallel pass@k (beside `p1@t{n}`, the same oracle over parallel samples).
    pub supplementary: Vec<Headline>,
    /// How often the answer changes after a right and after a wrong one.
    pub changes: Changes,
    /// Each problem's outcomes, for paired tests (McNemar) between models and metrics.
    pub outcomes: Outcomes,
}

impl EvalMetrics {
    /// A headline metric by key (e.g. `"m1@t5"`).
    pub fn get(&self, key: &str) -> Option<&Proportion> {
        self.headline
            .iter()
            .chain(&self.supplementary)
            .find(|h| h.key == key)
            .map(|h| &h.value)
    }
    /// m1@t1: the first sample correct.
    pub fn m1_t1(&self) -> &Proportion {
        &self.headline[0].value
    }
    /// m{k}@t1: the majority of the k parallel first-turn samples correct.
    pub fn mk_t1(&self) -> &Proportion {
        &self.headline[1].value
    }
    /// m1@t{n}: the majority over the n sequential turns correct (ties to the most recent).
    pub fn m1_tn(&self) -> &Proportion {
        &self.headline[2].value
    }
    /// p1@t{n}: some turn among the n correct (the oracle that stops at the first right answer).
    pub fn p1_tn(&self) -> &Proportion {
        &self.headline[3].value
    }
}

/// Why metrics could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum MetricsError {
    #[error("no problems to evaluate")]
    /// The evaluation had no problem.
    Empty,
    #[error(
        "problem {prompt_id:?} has {parallel} parallel samples and {turns} turns; \
         expected {want_parallel} and {want_turns} (every problem must have the same budget)"
    )]
    /// A problem's sample budget differs from the first problem's, or is empty.
    Shape {
        /// The offending problem.
        prompt_id: String,
        /// Its parallel samples.
        parallel: usize,
        /// Its sequential turns.
        turns: usize,
        /// The parallel samples every problem must have (the first problem's, at least 1).
        want_parallel: usize,
        /// The sequential turns every problem must have (the first problem's, at least 1).
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
    let outcomes = Outcomes {
        prompt_ids: problems.iter().map(|p| p.prompt_id.clone()).collect(),
        m1_t1: problems.iter().map(|p| p.parallel[0].correct).collect(),
        mk_t1: problems
            .iter()
            .map(|p| {
                majority(&p.parallel, equiv, TieBreak::Earliest)
                    .is_some_and(|i| p.parallel[i].correct)
            })
            .collect(),
        m1_tn: problems
            .iter()
            .map(|p| {
                majority(&p.sequential, equiv, TieBreak::MostRecent)
                    .is_some_and(|i| p.sequential[i].correct)
            })
            .collect(),
        m1_tn_earliest: problems
            .iter()
            .map(|p| {
                majority(&p.sequential, equiv, TieBreak::Earliest)
                    .is_some_and(|i| p.sequential[i].correct)
            })
            .collect(),
        p1_tn: problems
            .iter()
            .map(|p| p.sequential.iter().any(|a| a.correct))
            .collect(),
        pass_k: problems
            .iter()
            .map(|p| p.parallel.iter().any(|a| a.correct))
            .collect(),
        tie: problems
            .iter()
            .map(|p| vote_tied(&p.sequential, equiv))
            .collect(),
    };
    let ones = |v: &[bool]| v.iter().filter(|&&b| b).count() as u64;
    debug_assert_eq!(ones(&outcomes.m1_tn), m1_tn);
    let (k32, n32) = (k as u32, n as u32);
    let supplementary = vec![
        Headline {
            key: tie_key(n32),
            description: format!(
                "problems whose vote over the {n} turns tied (two or more answers share the top \
                 count; the tie rule then decides m1@t{n})"
            ),
            value: Proportion::new(ones(&outcomes.tie), total),
        },
        Headline {
            key: earliest_key(n32),
            description: format!(
                "m1@t{n} with ties to the earliest of the tied answers instead of the most recent"
            ),
            value: Proportion::new(ones(&outcomes.m1_tn_earliest), total),
        },
        Headline {
            key: pass_key(k32),
            description: format!(
                "oracle over the {k} parallel samples: any correct (beside p1@t{n}, the oracle \
                 over turns)"
            ),
            value: Proportion::new(ones(&outcomes.pass_k), total),
        },
    ];

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
        supplementary,
        changes: Changes::compute(problems, equiv),
        outcomes,
    })
}

/// True when two or more answers share the top count of the vote (unparsed answers do not
/// vote), grouping answers with `equiv` as [`majority`] does.
pub fn vote_tied(answers: &[GradedAnswer], equiv: &dyn Fn(&str, &str) -> bool) -> bool {
    let mut groups: Vec<(&str, usize)> = Vec::new();
    for a in answers {
        let Some(ans) = a.answer.as_deref() else {
            continue;
        };
        match groups.iter_mut().find(|g| equiv(g.0, ans)) {
            Some(g) => g.1 += 1,
            None => groups.push((ans, 1)),
        }
    }
    let Some(top) = groups.iter().map(|g| g.1).max() else {
        return false;
    };
    groups.iter().filter(|g| g.1 == top).count() > 1
}

/// Below this many discordant pairs [`mcnemar`] uses the exact binomial test; from it on, the
/// continuity-corrected chi-square (the usual rule: the normal approximation is poor below ~25).
pub const MCNEMAR_EXACT_BELOW: u64 = 25;

/// Which form of McNemar's test gave the p-value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum McNemarMethod {
    /// Two-sided exact binomial on the discordant pairs (p = 1/2 under the null).
    ExactBinomial,
    /// (|b − c| − 1)² / (b + c) against chi-square with 1 degree of freedom.
    ChiSquareCorrected,
}

impl McNemarMethod {
    /// The method's name as the report prints it.
    pub fn describe(self) -> &'static str {
        match self {
            McNemarMethod::ExactBinomial => "exact binomial",
            McNemarMethod::ChiSquareCorrected => "chi-square, continuity-corrected",
        }
    }
}

/// McNemar's test of two paired binary outcomes on the same problems.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct McNemar {
    /// Pairs (problems).
    pub pairs: u64,
    /// Problems where only the first outcome is a success.
    pub first_only: u64,
    /// Problems where only the second outcome is a success.
    pub second_only: u64,
    /// Which test gave `p`.
    pub method: McNemarMethod,
    /// Two-sided p-value.
    pub p: f64,
}

impl McNemar {
    /// The first outcome succeeds significantly more often than the second, at level `alpha`.
    pub fn first_better(&self, alpha: f64) -> bool {
        self.first_only > self.second_only && self.p < alpha
    }
    /// The second outcome succeeds significantly more often than the first, at level `alpha`.
    pub fn second_better(&self, alpha: f64) -> bool {
        self.second_only > self.first_only && self.p < alpha
    }
}

/// Why a paired test could not be computed.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("paired outcomes of different lengths: {first} and {second}")]
pub struct UnpairedError {
    /// Length of the first outcome list.
    pub first: usize,
    /// Length of the second outcome list.
    pub second: usize,
}

/// McNemar's test on paired outcomes `first[i]`, `second[i]` of the same problem `i`: exact
/// binomial below [`MCNEMAR_EXACT_BELOW`] discordant pairs, continuity-corrected chi-square
/// from there on. With no discordant pair, p = 1.
pub fn mcnemar(first: &[bool], second: &[bool]) -> Result<McNemar, UnpairedError> {
    if first.len() != second.len() {
        return Err(UnpairedError {
            first: first.len(),
            second: second.len(),
        });
    }
    let first_only = first
        .iter()
        .zip(second)
        .filter(|(a, b)| **a && !**b)
        .count() as u64;
    let second_only = first
        .iter()
        .zip(second)
        .filter(|(a, b)| !**a && **b)
        .count() as u64;
    let n = first_only + second_only;
    let (method, p) = if n < MCNEMAR_EXACT_BELOW {
        let k = first_only.min(second_only);
        // P(X <= k) for X ~ Binomial(n, 1/2), doubled; n < 25 keeps every term exact in f64.
        let mut c = 1.0_f64;
        let mut tail = 0.0;
        for i in 0..=k {
            if i > 0 {
                c = c * (n - i + 1) as f64 / i as f64;
            }
            tail += c;
        }
        let p = (2.0 * tail / 2f64.powi(n as i32)).min(1.0);
        (McNemarMethod::ExactBinomial, p)
    } else {
        let d = first_only.abs_diff(second_only) as f64 - 1.0;
        let x = d.max(0.0).powi(2) / n as f64;
        (McNemarMethod::ChiSquareCorrected, chi2_1_sf(x))
    };
    Ok(McNemar {
        pairs: first.len() as u64,
        first_only,
        second_only,
        method,
        p,
    })
}

/// P(X > x) for X ~ chi-square with 1 degree of freedom: erfc(sqrt(x / 2)).
pub fn chi2_1_sf(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    erfc((x / 2.0).sqrt())
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, fractional error below
/// 1.2e-7 everywhere: ample for p-values).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
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
        // Changes (answers; None = unparsed, the same as another None):
        // sequential a 1→1 1→1, b 5→1 1→1, c 3→1 1→3, d None→None twice;
        // parallel   a 1→2 2→1, b 5→5 5→1, c 3→None None→None, d None→None twice.
        let c = &m.changes;
        assert_eq!(pair(c.sequential_after_right), (1, 4)); // c's 1→3
        assert_eq!(pair(c.sequential_after_wrong), (2, 4)); // b's 5→1, c's 3→1
        assert_eq!(pair(c.parallel_after_right), (1, 1)); // a's 1→2
        assert_eq!(pair(c.parallel_after_wrong), (3, 7)); // a's 2→1, b's 5→1, c's 3→None
        let o = &m.outcomes;
        assert_eq!(o.prompt_ids, ["a", "b", "c", "d"]);
        assert_eq!(o.m1_t1, [true, false, false, false]);
        assert_eq!(o.mk_t1, [true, false, false, false]);
        assert_eq!(o.m1_tn, [true, true, false, false]);
        assert_eq!(o.p1_tn, [true, true, true, false]);
        assert_eq!(o.pass_k, [true, true, false, false]);
        assert_eq!(o.tie, [false; 4]);
    }

    #[test]
    fn ties_the_earliest_rule_and_parallel_pass_at_k() {
        let ps = vec![
            // A tie 1-2 over the turns: the most recent (2) is wrong, the earliest (1) right.
            problem(
                "e",
                "1",
                &[Some("2"), Some("2"), Some("2"), Some("1")],
                &[Some("1"), Some("2"), Some("1"), Some("2")],
            ),
            // The reverse tie: the most recent (1) is right, the earliest (2) wrong.
            problem(
                "f",
                "1",
                &[Some("2"), Some("2"), Some("2"), Some("2")],
                &[Some("2"), Some("1"), Some("2"), Some("1")],
            ),
            // No tie.
            problem(
                "g",
                "1",
                &[Some("1"), Some("1"), Some("1"), Some("1")],
                &[Some("1"), Some("1"), Some("1"), Some("2")],
            ),
        ];
        let m = compute(&ps, &eq).unwrap();
        let keys: Vec<_> = m.supplementary.iter().map(|h| h.key.as_str()).collect();
        assert_eq!(
            keys,
            ["m1@t4 tie rate", "m1@t4 earliest-wins", "pass@4 parallel"]
        );
        let got = |k: &str| m.get(k).unwrap().successes;
        assert_eq!(got("m1@t4 tie rate"), 2); // e, f
        assert_eq!(got("m1@t4"), 2); // f, g
        assert_eq!(got("m1@t4 earliest-wins"), 2); // e, g
        assert_eq!(got("pass@4 parallel"), 2); // e (its 4th sample), g
        assert_eq!(got("p1@t4"), 3);
        assert_eq!(m.outcomes.m1_tn, [false, true, true]);
        assert_eq!(m.outcomes.m1_tn_earliest, [true, false, true]);
        assert_eq!(m.outcomes.tie, [true, true, false]);
        assert_eq!(
            m.outcomes.by_key(&m, "m1@t4 earliest-wins"),
            Some(&[true, false, true][..])
        );
        assert_eq!(
            m.outcomes.by_key(&m, "m4@t1"),
            Some(&[false, false, true][..])
        );
        assert_eq!(m.outcomes.by_key(&m, "m5@t1"), None);
        assert!(!vote_tied(&[g(None, "1"), g(None, "1")], &eq));
        assert!(vote_tied(
            &[g(Some("3"), "1"), g(None, "1"), g(Some("1"), "1")],
            &eq
        ));
    }

    #[test]
    fn outcomes_travel_as_bit_strings() {
        let ps = vec![
            problem("a", "1", &[Some("1")], &[Some("1"), Some("2")]),
            problem("b", "1", &[Some("2")], &[Some("2"), Some("1")]),
        ];
        let m = compute(&ps, &eq).unwrap();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["outcomes"]["m1_t1"], "10");
        assert_eq!(json["outcomes"]["p1_tn"], "11");
        let back: EvalMetrics = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back.outcomes, m.outcomes);
        let mut bad = json;
        bad["outcomes"]["tie"] = "0x".into();
        let e = serde_json::from_value::<EvalMetrics>(bad)
            .unwrap_err()
            .to_string();
        assert!(e.contains("outcome 1 is 'x'"), "{e}");
    }

    #[test]
    fn mcnemar_exact_on_hand_computed_cases() {
        // first_only / second_only discordant pairs, plus concordant ones that do not count.
        let pairs = |first_only: usize, second_only: usize, both: usize, neither: usize| {
            let mut a = Vec::new();
            let mut b = Vec::new();
            for (x, y, k) in [
                (true, false, first_only),
                (false, true, second_only),
                (true, true, both),
                (false, false, neither),
            ] {
                a.extend(std::iter::repeat_n(x, k));
                b.extend(std::iter::repeat_n(y, k));
            }
            mcnemar(&a, &b).unwrap()
        };
        // 1 vs 6: P(X <= 1 | n = 7) = (1 + 7) / 128; two-sided 16 / 128.
        let t = pairs(1, 6, 10, 3);
        assert_eq!((t.pairs, t.first_only, t.second_only), (20, 1, 6));
        assert_eq!(t.method, McNemarMethod::ExactBinomial);
        assert!((t.p - 0.125).abs() < 1e-12, "{}", t.p);
        assert!(!t.second_better(0.05));
        // 0 vs 5: 2 / 32.
        assert!((pairs(0, 5, 0, 0).p - 0.0625).abs() < 1e-12);
        // 2 vs 10: 2 * (1 + 12 + 66) / 4096.
        let t = pairs(2, 10, 0, 0);
        assert!((t.p - 158.0 / 4096.0).abs() < 1e-12, "{}", t.p);
        assert!(t.second_better(0.05) && !t.first_better(0.05));
        // Balanced, and no discordant pair at all: p = 1.
        assert_eq!(pairs(3, 3, 1, 1).p, 1.0);
        assert_eq!(pairs(0, 0, 4, 4).p, 1.0);
        assert!(mcnemar(&[true], &[true, false]).is_err());
    }

    #[test]
    fn mcnemar_chi_square_from_25_discordant_pairs() {
        // 10 vs 25: (|10 - 25| - 1)^2 / 35 = 5.6; P(chi2_1 > 5.6) = erfc(sqrt(2.8))
        // = 0.0179604775 (Python's math.erfc).
        let a: Vec<bool> = (0..35).map(|i| i < 10).collect();
        let b: Vec<bool> = a.iter().map(|x| !x).collect();
        let t = mcnemar(&a, &b).unwrap();
        assert_eq!(t.method, McNemarMethod::ChiSquareCorrected);
        assert!((t.p - 0.017_960_477_5).abs() < 1e-7, "{}", t.p);
        assert!(t.second_better(0.05));
        // 24 discordant pairs are still exact.
        let a: Vec<bool> = (0..24).map(|i| i < 12).collect();
        let b: Vec<bool> = a.iter().map(|x| !x).collect();
        assert_eq!(
            mcnemar(&a, &b).unwrap().method,
            McNemarMethod::ExactBinomial
        );
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
        assert_eq!(chi2_1_sf(0.0), 1.0);
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
