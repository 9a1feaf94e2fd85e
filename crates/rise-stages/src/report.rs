//! The experiment report: markdown tables, a PNG chart of accuracy against turn, and JSON.
//!
//! Any number of models sit side by side (base, teacher, the iterates of each arm). The report
//! pairs them on the same problems (models share random streams per problem and turn, so the
//! pairing is valid) with McNemar tests, and states plainly, arm by arm, which of the paper's
//! qualitative claims (RISE.md §7) hold, with the test behind each: it never hides an effect
//! that did not show up.
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::metrics::{mcnemar, EvalMetrics, McNemar, Proportion};

/// DejaVu Sans reduced to ASCII (10 KB, license in `assets/`): embedding it makes the chart
/// render identically everywhere, without fontconfig or system fonts.
static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FONT_NAME: &str = "rise-sans";

/// The significance level of every claim's test.
pub const ALPHA: f64 = 0.05;

/// The teacher rule: its m1@t1 at least this many points above the base's, decided from the
/// teacher's own scores only (never from RISE's results).
pub const TEACHER_MARGIN_POINTS: f64 = 10.0;

/// One evaluated model, under the name it has in the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelResult {
    /// The name the report's tables use: the input name the evaluate output is wired under.
    pub name: String,
    /// The evaluate stage that produced the numbers (for the reader to find them).
    #[serde(default)]
    pub source: String,
    /// Everything `evaluate` measured for it.
    pub metrics: EvalMetrics,
}

/// Where an arm's relabelled turns came from, which decides the claims it is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArmKind {
    /// Best-of-N from the learner: the paper's weaker shape (first turn up, m1@t5 modestly
    /// above m1@t1, m1@t5 below m5@t1).
    SelfDistill,
    /// From a more capable teacher: the paper's headline claims.
    Distill,
    /// Not declared: checked against the paper's headline claims, as RISE is published.
    Unspecified,
}

impl ArmKind {
    fn describe(self) -> &'static str {
        match self {
            ArmKind::SelfDistill => {
                "self-distillation (best-of-N from the learner), checked against the paper's \
                 own self-distillation shape: first-turn accuracy up, m1@t5 above m1@t1, \
                 m1@t5 below m5@t1"
            }
            ArmKind::Distill => {
                "distillation from the teacher, checked against the paper's headline claims"
            }
            ArmKind::Unspecified => {
                "relabel source not declared (report params `self_arm` / `distill_arm`), \
                 checked against the paper's headline claims"
            }
        }
    }
}

/// The iterates of one RISE arm, in iteration order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Arm {
    /// The arm's label (`self`, `distill`).
    pub name: String,
    /// Where its relabelled turns came from.
    pub kind: ArmKind,
    /// Its models' names (as in [`Report::models`]), iteration 1 first.
    pub models: Vec<String>,
}

/// A McNemar test between two paired outcomes: two metrics of one model, or one metric of two
/// models, on the same problems.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairedTest {
    /// e.g. `iter1 m1@t5`.
    pub first: String,
    /// e.g. `iter1 m1@t1`.
    pub second: String,
    /// The first outcome's rate over the problems, in [0, 1].
    pub first_value: f64,
    /// The second outcome's rate over the problems, in [0, 1].
    pub second_value: f64,
    #[serde(flatten)]
    /// The test's counts and p-value.
    pub test: McNemar,
}

impl PairedTest {
    fn describe(&self) -> String {
        format!(
            "{} {} vs {} {}; McNemar, {}: {} vs {} discordant of {} problems, {}",
            self.first,
            pct_f(self.first_value),
            self.second,
            pct_f(self.second_value),
            self.test.method.describe(),
            self.test.first_only,
            self.test.second_only,
            self.test.pairs,
            p_text(self.test.p)
        )
    }
}

/// One qualitative claim of the paper, checked on these numbers with a paired test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Effect {
    /// The arm it belongs to ("" for claims about the base or teacher alone).
    #[serde(default)]
    pub arm: String,
    /// The claim, in words.
    pub claim: String,
    /// The test supports the claim at 5% (for "not below" claims: the test does not reject it).
    pub holds: bool,
    /// The point estimates lean the claimed way, significant or not.
    #[serde(default)]
    pub direction: bool,
    /// The numbers behind the verdict: the paired test and its p-value, in words.
    pub detail: String,
}

/// The teacher rule, checked on the teacher's and the base's own scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeacherRule {
    /// The teacher's model name.
    pub teacher: String,
    /// The base model's name.
    pub base: String,
    /// The teacher's m1@t1, in [0, 1].
    pub teacher_m1_t1: f64,
    /// The base's m1@t1, in [0, 1].
    pub base_m1_t1: f64,
    /// How far the teacher must be above the base, in percentage points ([`TEACHER_MARGIN_POINTS`]).
    pub required_points: f64,
    /// The teacher clears the margin.
    pub met: bool,
}

/// The whole report, as written to `report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The report's heading (the `title` param).
    pub title: String,
    /// The base model's name (the model before any RISE iteration), if one was given.
    pub baseline: Option<String>,
    /// The teacher's name, if one was evaluated.
    #[serde(default)]
    pub teacher: Option<String>,
    #[serde(default)]
    /// The RISE arms found among the models (self-distillation, distillation).
    pub arms: Vec<Arm>,
    /// Every evaluated model, in input order.
    pub models: Vec<ModelResult>,
    /// Every paired test the report ran, claims or not.
    #[serde(default)]
    pub tests: Vec<PairedTest>,
    /// The paper's claims, each checked with a paired test.
    pub effects: Vec<Effect>,
    #[serde(default)]
    /// The teacher rule, when both a teacher and a base were evaluated.
    pub teacher_rule: Option<TeacherRule>,
}

/// Errors building or writing the report.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    /// Reading or writing a file failed.
    Io {
        /// The file.
        path: std::path::PathBuf,
        #[source]
        /// The underlying error.
        source: std::io::Error,
    },
    #[error("drawing {path}: {message}")]
    /// A chart could not be drawn.
    Chart {
        /// The chart's file.
        path: std::path::PathBuf,
        /// What the plotting library said.
        message: String,
    },
    #[error("nothing to report: no evaluated models")]
    /// No evaluate output was wired in.
    Empty,
    #[error("{what} `{name}` is not one of the evaluated models ({known})")]
    /// A param names a model that no input provides.
    Unknown {
        /// Which param named it: `baseline`, `teacher` or `arm model`.
        what: &'static str,
        /// The unknown name.
        name: String,
        /// The evaluated models' names, comma-separated.
        known: String,
    },
    #[error(
        "models `{first}` and `{second}` cannot be paired: {detail} (evaluate both on the same \
         test set with the same `limit`)"
    )]
    /// Two models' outcomes cannot be paired (different problems or counts).
    Unpaired {
        /// The first model's name.
        first: String,
        /// The second model's name.
        second: String,
        /// What differs.
        detail: String,
    },
}

fn pct(p: &Proportion) -> String {
    pct_f(p.value)
}

fn pct_f(v: f64) -> String {
    format!("{:.1}", 100.0 * v)
}

fn pct_ci(p: &Proportion) -> String {
    format!(
        "{:.1} [{:.1}, {:.1}]",
        100.0 * p.value,
        100.0 * p.lo,
        100.0 * p.hi
    )
}

/// `p = 0.031`, or `p < 0.001`.
fn p_text(p: f64) -> String {
    let v = p_value(p);
    if v.starts_with('<') {
        format!("p {v}")
    } else {
        format!("p = {v}")
    }
}

fn p_value(p: f64) -> String {
    if p < 0.001 {
        "< 0.001".into()
    } else {
        format!("{p:.3}")
    }
}

/// The four headline keys of a model: m1@t1, m{k}@t1, m1@t{n}, p1@t{n}.
fn keys(m: &ModelResult) -> [String; 4] {
    let h = &m.metrics.headline;
    [
        h[0].key.clone(),
        h[1].key.clone(),
        h[2].key.clone(),
        h[3].key.clone(),
    ]
}

/// One model's outcomes for `key` (a headline or supplementary key).
fn outcomes<'a>(m: &'a ModelResult, key: &str) -> &'a [bool] {
    m.metrics.outcomes.by_key(&m.metrics, key).unwrap_or(&[])
}

fn value(m: &ModelResult, key: &str) -> f64 {
    m.metrics.get(key).map_or(f64::NAN, |p| p.value)
}

/// Two metrics of one model on its own problems.
fn within(m: &ModelResult, first: &str, second: &str) -> Result<PairedTest, ReportError> {
    let test =
        mcnemar(outcomes(m, first), outcomes(m, second)).map_err(|e| ReportError::Unpaired {
            first: m.name.clone(),
            second: m.name.clone(),
            detail: e.to_string(),
        })?;
    Ok(PairedTest {
        first: format!("{} {first}", m.name),
        second: format!("{} {second}", m.name),
        first_value: value(m, first),
        second_value: value(m, second),
        test,
    })
}

/// One metric of two models, paired by problem id.
fn between(a: &ModelResult, b: &ModelResult, key: &str) -> Result<PairedTest, ReportError> {
    let unpaired = |detail: String| ReportError::Unpaired {
        first: a.name.clone(),
        second: b.name.clone(),
        detail,
    };
    let (ia, ib) = (
        &a.metrics.outcomes.prompt_ids,
        &b.metrics.outcomes.prompt_ids,
    );
    if ia.len() != ib.len() {
        return Err(unpaired(format!(
            "{} problems against {}",
            ia.len(),
            ib.len()
        )));
    }
    let at: HashMap<&str, usize> = ib
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let (xa, xb) = (outcomes(a, key), outcomes(b, key));
    let mut second = Vec::with_capacity(ia.len());
    for id in ia {
        let Some(&j) = at.get(id.as_str()) else {
            return Err(unpaired(format!("problem {id:?} is only in `{}`", a.name)));
        };
        second.push(xb.get(j).copied().unwrap_or(false));
    }
    let test = mcnemar(xa, &second).map_err(|e| unpaired(e.to_string()))?;
    Ok(PairedTest {
        first: format!("{} {key}", a.name),
        second: format!("{} {key}", b.name),
        first_value: value(a, key),
        second_value: value(b, key),
        test,
    })
}

/// The claim "first > second": holds when McNemar rejects equality at [`ALPHA`] that way.
fn above(arm: &str, claim: String, t: &PairedTest) -> Effect {
    Effect {
        arm: arm.into(),
        claim,
        holds: t.test.first_better(ALPHA),
        direction: t.test.first_only > t.test.second_only,
        detail: t.describe(),
    }
}

/// The claim "first < second".
fn below(arm: &str, claim: String, t: &PairedTest) -> Effect {
    Effect {
        arm: arm.into(),
        claim,
        holds: t.test.second_better(ALPHA),
        direction: t.test.first_only < t.test.second_only,
        detail: t.describe(),
    }
}

/// The claim "first not below second": holds unless McNemar rejects equality the other way.
fn not_below(arm: &str, claim: String, t: &PairedTest) -> Effect {
    Effect {
        arm: arm.into(),
        claim,
        holds: !t.test.second_better(ALPHA),
        direction: t.test.first_only >= t.test.second_only,
        detail: t.describe(),
    }
}

/// Runs every paired test and checks each arm's claims (RISE.md §7).
fn check(
    models: &[ModelResult],
    baseline: Option<&str>,
    arms: &[Arm],
) -> Result<(Vec<PairedTest>, Vec<Effect>), ReportError> {
    let by_name = |n: &str| models.iter().find(|m| m.name == n);
    let base = baseline.and_then(by_name);
    let mut tests = Vec::new();
    let mut effects = Vec::new();
    // Within each model: the turns against the first turn, and against parallel votes.
    let mut turns_vs_t1 = HashMap::new();
    let mut turns_vs_par = HashMap::new();
    for m in models {
        let [t1, mk, tn, _] = keys(m);
        let a = within(m, &tn, &t1)?;
        let b = within(m, &tn, &mk)?;
        turns_vs_t1.insert(m.name.clone(), a.clone());
        turns_vs_par.insert(m.name.clone(), b.clone());
        tests.push(a);
        tests.push(b);
    }
    // Every model against the base on the first turn.
    let mut vs_base = HashMap::new();
    if let Some(base) = base {
        for m in models.iter().filter(|m| m.name != base.name) {
            let t = between(m, base, "m1@t1")?;
            vs_base.insert(m.name.clone(), t.clone());
            tests.push(t);
        }
    }
    for arm in arms {
        let members: Vec<&ModelResult> = arm.models.iter().filter_map(|n| by_name(n)).collect();
        let a = arm.name.as_str();
        match arm.kind {
            ArmKind::Distill | ArmKind::Unspecified => {
                if let Some(base) = base {
                    let [t1, _, tn, _] = keys(base);
                    let t = &turns_vs_t1[&base.name];
                    effects.push(Effect {
                        arm: a.into(),
                        claim: format!(
                            "{}: {tn} not above {t1} (before RISE the turns do not help)",
                            base.name
                        ),
                        holds: !t.test.first_better(ALPHA),
                        direction: t.test.first_only <= t.test.second_only,
                        detail: t.describe(),
                    });
                }
                for m in &members {
                    let [t1, mk, tn, _] = keys(m);
                    effects.push(above(
                        a,
                        format!(
                            "{}: {tn} > {t1} (accuracy rises with turns after RISE)",
                            m.name
                        ),
                        &turns_vs_t1[&m.name],
                    ));
                    effects.push(above(
                        a,
                        format!(
                            "{}: {tn} > {mk} (sequential beats parallel at equal compute)",
                            m.name
                        ),
                        &turns_vs_par[&m.name],
                    ));
                    if let Some(base) = base {
                        effects.push(not_below(
                            a,
                            format!(
                                "{}: {t1} not below {} (first-turn accuracy does not drop)",
                                m.name, base.name
                            ),
                            &vs_base[&m.name],
                        ));
                    }
                }
            }
            ArmKind::SelfDistill => {
                for m in &members {
                    let [t1, mk, tn, _] = keys(m);
                    if let Some(base) = base {
                        effects.push(above(
                            a,
                            format!("{}: {t1} > {} (first-turn accuracy up)", m.name, base.name),
                            &vs_base[&m.name],
                        ));
                    }
                    effects.push(above(
                        a,
                        format!("{}: {tn} > {t1} (modestly above the first turn)", m.name),
                        &turns_vs_t1[&m.name],
                    ));
                    effects.push(below(
                        a,
                        format!(
                            "{}: {tn} < {mk} (sequential stays below parallel without a teacher)",
                            m.name
                        ),
                        &turns_vs_par[&m.name],
                    ));
                }
            }
        }
        // Each iteration against the one before on the turns' vote; "a second iteration helps
        // further" is a claim of the distillation rows only (RISE.md §7 gives the
        // self-distillation arm no such claim), so there it is a test without a claim.
        for pair in members.windows(2) {
            let (prev, next) = (pair[0], pair[1]);
            let [_, _, tn, _] = keys(next);
            let t = between(next, prev, &tn)?;
            if arm.kind != ArmKind::SelfDistill {
                effects.push(above(
                    a,
                    format!(
                        "{}: {tn} > {} (another iteration helps further)",
                        next.name, prev.name
                    ),
                    &t,
                ));
            }
            tests.push(t);
        }
    }
    Ok((tests, effects))
}

impl Report {
    /// Assembles a report: runs the paired tests and checks each arm's claims. Models named by
    /// `baseline`, `teacher` and `arms` must be among `models`.
    pub fn new(
        title: String,
        baseline: Option<String>,
        teacher: Option<String>,
        arms: Vec<Arm>,
        models: Vec<ModelResult>,
    ) -> Result<Self, ReportError> {
        if models.is_empty() {
            return Err(ReportError::Empty);
        }
        let known = || {
            models
                .iter()
                .map(|m| m.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let named = baseline
            .iter()
            .map(|n| ("baseline", n))
            .chain(teacher.iter().map(|n| ("teacher", n)))
            .chain(
                arms.iter()
                    .flat_map(|a| a.models.iter().map(|n| ("arm model", n))),
            );
        for (what, name) in named {
            if !models.iter().any(|m| &m.name == name) {
                return Err(ReportError::Unknown {
                    what,
                    name: name.clone(),
                    known: known(),
                });
            }
        }
        let (tests, effects) = check(&models, baseline.as_deref(), &arms)?;
        let find = |n: &Option<String>| {
            n.as_ref()
                .and_then(|n| models.iter().find(|m| &m.name == n))
        };
        let teacher_rule = match (find(&teacher), find(&baseline)) {
            (Some(t), Some(b)) => {
                let (tv, bv) = (t.metrics.m1_t1().value, b.metrics.m1_t1().value);
                Some(TeacherRule {
                    teacher: t.name.clone(),
                    base: b.name.clone(),
                    teacher_m1_t1: tv,
                    base_m1_t1: bv,
                    required_points: TEACHER_MARGIN_POINTS,
                    met: 100.0 * (tv - bv) >= TEACHER_MARGIN_POINTS - 1e-9,
                })
            }
            _ => None,
        };
        Ok(Report {
            title,
            baseline,
            teacher,
            arms,
            models,
            tests,
            effects,
            teacher_rule,
        })
    }

    /// A table with one row per model: `cells` gives the row's cells after the name.
    fn table(
        &self,
        s: &mut String,
        header: &[String],
        cells: impl Fn(&ModelResult) -> Vec<String>,
    ) {
        let _ = writeln!(
            s,
            "| model | {} |\n|---|{}",
            header.join(" | "),
            "---|".repeat(header.len())
        );
        for r in &self.models {
            let _ = writeln!(s, "| {} | {} |", r.name, cells(r).join(" | "));
        }
    }

    /// The markdown report (`report.md`).
    pub fn markdown(&self, chart_file: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# {}\n", self.title);
        let Some(first) = self.models.first() else {
            let _ = writeln!(s, "No models were evaluated.");
            return s;
        };
        let m = &first.metrics;
        let _ = writeln!(
            s,
            "Accuracy in % on {} held-out problems, with 95% Wilson intervals. Each problem gets \
             {} parallel first-turn samples and one chain of {} sequential turns whose feedback is \
             always \"incorrect\" (no oracle); the chain's turn 1 is parallel sample 1.\n",
            m.problems, m.parallel, m.turns
        );
        let header: Vec<String> = m.headline.iter().map(|h| h.key.clone()).collect();
        self.table(&mut s, &header, |r| {
            r.metrics
                .headline
                .iter()
                .map(|h| pct_ci(&h.value))
                .collect()
        });
        s.push('\n');
        for h in &m.headline {
            let _ = writeln!(s, "- **{}**: {}.", h.key, h.description);
        }

        let _ = writeln!(
            s,
            "\n## Ties, the tie rule, and the oracles\n\n\
             The vote over turns, its tie rate and the other tie rule; the oracle over turns \
             beside the same oracle over the parallel samples.\n"
        );
        let [_, _, tn, p1] = keys(first);
        let sup: Vec<String> = m.supplementary.iter().map(|h| h.key.clone()).collect();
        let header = vec![
            sup[0].clone(),
            format!("{tn} (most recent)"),
            sup[1].clone(),
            p1.clone(),
            sup[2].clone(),
        ];
        self.table(&mut s, &header, |r| {
            let x = &r.metrics;
            vec![
                pct_ci(&x.supplementary[0].value),
                pct_ci(x.m1_tn()),
                pct_ci(&x.supplementary[1].value),
                pct_ci(x.p1_tn()),
                pct_ci(&x.supplementary[2].value),
            ]
        });
        s.push('\n');
        for h in &m.supplementary {
            let _ = writeln!(s, "- **{}**: {}.", h.key, h.description);
        }

        let _ = writeln!(
            s,
            "\n## Accuracy at each turn\n\n![accuracy against turn]({chart_file})\n"
        );
        let header: Vec<String> = (1..=m.turns).map(|t| format!("t{t}")).collect();
        self.table(&mut s, &header, |r| {
            r.metrics.per_turn.iter().map(pct_ci).collect()
        });

        let _ = writeln!(
            s,
            "\n## Flips between consecutive turns\n\nPercent of all problems that went correct → \
             wrong / wrong → correct from turn t to t+1.\n"
        );
        let header: Vec<String> = m
            .flips
            .iter()
            .map(|f| format!("t{}→t{} c→w / w→c", f.from, f.to))
            .collect();
        self.table(&mut s, &header, |r| {
            r.metrics
                .flips
                .iter()
                .map(|f| {
                    format!(
                        "{} / {}",
                        pct(&f.correct_to_wrong),
                        pct(&f.wrong_to_correct)
                    )
                })
                .collect()
        });

        let _ = writeln!(
            s,
            "\n## After the feedback: sequential turns against parallel samples\n\n\
             Percent of next answers that are right, and that differ from the previous answer, \
             after a right and after a wrong answer: the next sequential turn (after \
             \"incorrect\", always) / the next parallel sample (an independent draw). \
             Sequential beats parallel at equal compute when the model fixes wrong answers more \
             often than a fresh draw does and keeps right ones about as often. A model that \
             tells its right answers from its wrong ones changes the wrong ones more often than \
             the right ones; one that does not changes both alike.\n"
        );
        let header: Vec<String> = [
            "right after right",
            "right after wrong",
            "changed after right",
            "changed after wrong",
        ]
        .iter()
        .map(|h| format!("{h} (seq / par)"))
        .collect();
        self.table(&mut s, &header, |r| {
            let (t, c) = (&r.metrics.transitions, &r.metrics.changes);
            [
                (&t.sequential_after_right, &t.parallel_after_right),
                (&t.sequential_after_wrong, &t.parallel_after_wrong),
                (&c.sequential_after_right, &c.parallel_after_right),
                (&c.sequential_after_wrong, &c.parallel_after_wrong),
            ]
            .iter()
            .map(|(a, b)| format!("{} / {}", pct(a), pct(b)))
            .collect()
        });

        let _ = writeln!(
            s,
            "\n## Paired tests\n\n\
             McNemar's test on the same problems: exact binomial below {} discordant problems, \
             continuity-corrected chi-square from there on; two-sided p. \"first only\" counts \
             the problems where only the first outcome is right.\n\n\
             | first | second | first only | second only | problems | test | p |\n\
             |---|---|---|---|---|---|---|",
            crate::metrics::MCNEMAR_EXACT_BELOW
        );
        for t in &self.tests {
            let _ = writeln!(
                s,
                "| {} {} | {} {} | {} | {} | {} | {} | {} |",
                t.first,
                pct_f(t.first_value),
                t.second,
                pct_f(t.second_value),
                t.test.first_only,
                t.test.second_only,
                t.test.pairs,
                t.test.method.describe(),
                p_value(t.test.p)
            );
        }

        if let Some(rule) = &self.teacher_rule {
            let gap = 100.0 * (rule.teacher_m1_t1 - rule.base_m1_t1);
            let _ = writeln!(
                s,
                "\n## The teacher\n\n\
                 Rule: the teacher's m1@t1 at least {:.0} points above the base's, decided from \
                 the teacher's own scores only. {} m1@t1 {} vs {} {}: {gap:+.1} points: {}.",
                rule.required_points,
                rule.teacher,
                pct_f(rule.teacher_m1_t1),
                rule.base,
                pct_f(rule.base_m1_t1),
                if rule.met {
                    "met"
                } else {
                    "**NOT met**: this teacher is too weak for the distillation arm"
                }
            );
        }

        let _ = writeln!(
            s,
            "\n## The paper's qualitative claims, checked on these numbers\n\n\
             A claim that one figure beats another holds when the paired test rejects equality \
             in that direction at 5%; a \"not below\" claim holds unless the test rejects it the \
             other way.\n"
        );
        if self.effects.is_empty() {
            let _ = writeln!(
                s,
                "No claims to check: the report needs at least one RISE arm (and a baseline for \
                 the first-turn claims)."
            );
        }
        for arm in &self.arms {
            let _ = writeln!(s, "### Arm `{}`: {}\n", arm.name, arm.kind.describe());
            for e in self.effects.iter().filter(|e| e.arm == arm.name) {
                let mark = if e.holds {
                    "holds"
                } else if e.direction {
                    "**not shown** (the right direction, not significant at 5%)"
                } else {
                    "**does NOT hold**"
                };
                let _ = writeln!(s, "- {}: {mark} ({}).", e.claim, e.detail);
            }
            let checked = self.effects.iter().filter(|e| e.arm == arm.name).count();
            let held = self
                .effects
                .iter()
                .filter(|e| e.arm == arm.name && e.holds)
                .count();
            let _ = writeln!(s, "\n{held} of {checked} claims hold for `{}`.\n", arm.name);
        }
        let failed = self.effects.iter().filter(|e| !e.holds).count();
        if failed > 0 {
            let _ = writeln!(
                s,
                "{failed} of {} expected effects did not appear in this run. The numbers above \
                 are reported as measured.",
                self.effects.len()
            );
        }
        if self.models.iter().any(|r| !r.source.is_empty()) {
            let _ = writeln!(s, "\n## Sources\n");
            for r in &self.models {
                if !r.source.is_empty() {
                    let _ = writeln!(s, "- {}: stage `{}`", r.name, r.source);
                }
            }
        }
        s
    }

    /// Writes `report.md`, `report.json` and `accuracy.png` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), ReportError> {
        if self.models.is_empty() {
            return Err(ReportError::Empty);
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| ReportError::Io { path, source }
        };
        let png = dir.join("accuracy.png");
        draw_chart(&self.models, &png)?;
        let md = dir.join("report.md");
        std::fs::write(&md, self.markdown("accuracy.png")).map_err(io(&md))?;
        let json = dir.join("report.json");
        let mut text = serde_json::to_string_pretty(self).map_err(|e| ReportError::Io {
            path: json.clone(),
            source: std::io::Error::other(e),
        })?;
        text.push('\n');
        std::fs::write(&json, text).map_err(io(&json))
    }
}

fn register_font() -> Result<(), String> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = plotters::style::register_font(FONT_NAME, FontStyle::Normal, FONT)
            .map_err(|_| "the embedded font does not parse".to_string());
    });
    result
}

/// Draws accuracy against turn, one line per model with its 95% interval as error bars.
pub fn draw_chart(models: &[ModelResult], path: &Path) -> Result<(), ReportError> {
    let chart_err = |e: &dyn std::fmt::Display| ReportError::Chart {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    register_font().map_err(|e| chart_err(&e))?;
    let turns = models
        .iter()
        .map(|m| m.metrics.turns)
        .max()
        .unwrap_or(1)
        .max(1);
    let root = BitMapBackend::new(path, (800, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| chart_err(&e))?;
    let ymax = models
        .iter()
        .flat_map(|m| m.metrics.per_turn.iter().map(|p| p.hi))
        .fold(0.0_f64, f64::max);
    let ymax = ((ymax * 100.0 / 10.0).ceil() * 10.0).clamp(10.0, 100.0);
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "Accuracy at each turn (feedback always \"incorrect\")",
            (FONT_NAME, 20),
        )
        .margin(16)
        .x_label_area_size(44)
        .y_label_area_size(56)
        .build_cartesian_2d(0.7f64..(f64::from(turns) + 0.3), 0f64..ymax)
        .map_err(|e| chart_err(&e))?;
    chart
        .configure_mesh()
        .x_desc("turn")
        .y_desc("accuracy (%)")
        .x_labels(turns as usize)
        .x_label_formatter(&|x| format!("{x:.0}"))
        .y_label_formatter(&|y| format!("{y:.0}"))
        .label_style((FONT_NAME, 14))
        .axis_desc_style((FONT_NAME, 16))
        .disable_x_mesh()
        .draw()
        .map_err(|e| chart_err(&e))?;
    for (i, m) in models.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        // Offset the models slightly so that their error bars do not overlap.
        let dx = (i as f64 - (models.len() as f64 - 1.0) / 2.0) * 0.04;
        let points: Vec<(f64, f64)> = m
            .metrics
            .per_turn
            .iter()
            .enumerate()
            .map(|(t, p)| (t as f64 + 1.0 + dx, 100.0 * p.value))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| chart_err(&e))?
            .label(m.name.clone())
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
            .map_err(|e| chart_err(&e))?;
        chart
            .draw_series(m.metrics.per_turn.iter().enumerate().map(|(t, p)| {
                let x = t as f64 + 1.0 + dx;
                PathElement::new(
                    vec![(x, 100.0 * p.lo), (x, 100.0 * p.hi)],
                    color.stroke_width(1),
                )
            }))
            .map_err(|e| chart_err(&e))?;
    }
    chart
        .configure_series_labels()
        .label_font((FONT_NAME, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::LowerRight)
        .draw()
        .map_err(|e| chart_err(&e))?;
    root.present().map_err(|e| chart_err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{compute, GradedAnswer, ProblemEval};

    /// A model on `n` problems whose sequential chain gets problem i right at turn t when
    /// i < per_turn[t] (wrong answers all differ), and whose parallel samples 2..5 get problem i
    /// right when i < par (sample 1 is the chain's turn 1; wrong parallel answers agree).
    fn model_n(name: &str, n: usize, per_turn: &[usize], par: usize) -> ModelResult {
        let problems: Vec<ProblemEval> = (0..n)
            .map(|i| ProblemEval {
                prompt_id: format!("p{i}"),
                parallel: (0..5)
                    .map(|j| {
                        let ok = if j == 0 { i < per_turn[0] } else { i < par };
                        let wrong = if j == 0 { "w0" } else { "x" };
                        GradedAnswer {
                            answer: Some(if ok { "1" } else { wrong }.into()),
                            correct: ok,
                        }
                    })
                    .collect(),
                sequential: per_turn
                    .iter()
                    .enumerate()
                    .map(|(t, &k)| {
                        let ok = i < k;
                        let wrong = format!("w{t}");
                        GradedAnswer {
                            answer: Some(if ok { "1".into() } else { wrong }),
                            correct: ok,
                        }
                    })
                    .collect(),
            })
            .collect();
        let metrics = compute(&problems, &|a, b| a == b).unwrap();
        ModelResult {
            name: name.into(),
            source: format!("eval_{name}"),
            metrics,
        }
    }

    fn model(name: &str, per_turn: &[usize], par: usize) -> ModelResult {
        model_n(name, 10, per_turn, par)
    }

    fn arm(name: &str, kind: ArmKind, models: &[&str]) -> Arm {
        Arm {
            name: name.into(),
            kind,
            models: models.iter().map(|m| m.to_string()).collect(),
        }
    }

    /// Six models on 40 problems: base, teacher, one self-distillation iterate and two
    /// distillation iterates.
    fn six() -> Report {
        let models = vec![
            model_n("base", 40, &[10, 8, 8, 6, 6], 12),
            model_n("teacher", 40, &[16, 16, 16, 16, 16], 20),
            model_n("self_iter1", 40, &[14, 14, 14, 14, 14], 20),
            model_n("self_iter2", 40, &[14, 14, 14, 14, 14], 20),
            model_n("distill_iter1", 40, &[10, 20, 30, 30, 30], 12),
            model_n("distill_iter2", 40, &[12, 25, 35, 35, 35], 12),
        ];
        Report::new(
            "t".into(),
            Some("base".into()),
            Some("teacher".into()),
            vec![
                arm("self", ArmKind::SelfDistill, &["self_iter1", "self_iter2"]),
                arm(
                    "distill",
                    ArmKind::Distill,
                    &["distill_iter1", "distill_iter2"],
                ),
            ],
            models,
        )
        .unwrap()
    }

    fn effect<'a>(r: &'a Report, claim: &str) -> &'a Effect {
        r.effects
            .iter()
            .find(|e| e.claim.starts_with(claim))
            .unwrap_or_else(|| panic!("no claim {claim:?} in {:#?}", r.effects))
    }

    #[test]
    fn each_arm_is_checked_against_its_own_claims_with_paired_tests() {
        let r = six();
        // distill_iter1: m1@t5 30/40 against m1@t1 10/40, 20 vs 0 discordant: exact p = 2^-19.
        let e = effect(&r, "distill_iter1: m1@t5 > m1@t1");
        assert!(e.holds && e.direction, "{e:?}");
        assert_eq!(e.arm, "distill");
        assert!(
            e.detail
                .contains("exact binomial: 20 vs 0 discordant of 40 problems, p < 0.001"),
            "{}",
            e.detail
        );
        // ... and against m5@t1 12/40: 18 vs 0.
        assert!(effect(&r, "distill_iter1: m1@t5 > m5@t1").holds);
        // The base gains nothing over turns (8 vs 10).
        let e = effect(&r, "base: m1@t5 not above m1@t1");
        assert!(e.holds && e.direction);
        // First turn: distill_iter1 equals the base (no discordant problem).
        let e = effect(&r, "distill_iter1: m1@t1 not below base");
        assert!(e.holds, "{e:?}");
        assert!(e.detail.contains("0 vs 0 discordant"), "{}", e.detail);
        // Iteration 2 over 1 on m1@t5: 35 vs 30, 5 vs 0 discordant: p = 2/32, not significant.
        let e = effect(&r, "distill_iter2: m1@t5 > distill_iter1");
        assert!(!e.holds && e.direction, "{e:?}");
        assert!(
            e.detail
                .contains("5 vs 0 discordant of 40 problems, p = 0.06"),
            "{}",
            e.detail
        );

        // Self-distillation: the paper's weaker shape.
        let e = effect(&r, "self_iter1: m1@t1 > base");
        assert!(
            !e.holds && e.direction,
            "14 vs 10: 4 vs 0, p = 0.125: {e:?}"
        );
        let e = effect(&r, "self_iter1: m1@t5 > m1@t1");
        assert!(!e.holds && !e.direction, "{e:?}");
        let e = effect(&r, "self_iter1: m1@t5 < m5@t1");
        assert!(e.holds, "14 vs 20: 0 vs 6, p = 2/64: {e:?}");
        assert!(e.detail.contains("p = 0.031"), "{}", e.detail);
        // Self-distillation has no iteration claim (its paired test is still run).
        assert!(!r
            .effects
            .iter()
            .any(|e| e.claim.starts_with("self_iter2: m1@t5 > self_iter1")));
        assert!(r
            .tests
            .iter()
            .any(|t| t.first == "self_iter2 m1@t5" && t.second == "self_iter1 m1@t5"));
        // Self-distillation claims are not the headline ones.
        assert!(!r
            .effects
            .iter()
            .any(|e| e.claim.starts_with("self_iter1: m1@t5 > m5@t1")));
        assert!(r
            .effects
            .iter()
            .all(|e| e.arm == "self" || e.arm == "distill"));

        // Paired tests: 2 within each of 6 models, 5 against the base, 1 per arm's iterations.
        assert_eq!(r.tests.len(), 12 + 5 + 2);
        let rule = r.teacher_rule.as_ref().unwrap();
        assert!(rule.met, "40% vs 25% is 15 points: {rule:?}");

        let md = r.markdown("accuracy.png");
        for text in [
            "### Arm `self`: self-distillation",
            "### Arm `distill`: distillation",
            "**not shown** (the right direction",
            "**does NOT hold**",
            "## Paired tests",
            "## The teacher",
            "+15.0 points: met",
            "changed after wrong (seq / par)",
            "m1@t5 tie rate",
            "m1@t5 earliest-wins",
            "pass@5 parallel",
        ] {
            assert!(md.contains(text), "report.md lacks {text:?}:\n{md}");
        }
        // Every model has a row in every per-model table: headline, ties, turns, flips, feedback.
        for m in &r.models {
            let rows = md
                .lines()
                .filter(|l| l.starts_with(&format!("| {} |", m.name)))
                .count();
            assert_eq!(rows, 5, "{}", m.name);
        }
    }

    #[test]
    fn a_weak_teacher_is_said_to_be_too_weak() {
        let models = vec![
            model_n("base", 40, &[10, 8, 8, 6, 6], 12),
            model_n("teacher", 40, &[13, 13, 13, 13, 13], 12),
        ];
        let r = Report::new(
            "t".into(),
            Some("base".into()),
            Some("teacher".into()),
            vec![],
            models,
        )
        .unwrap();
        assert!(!r.teacher_rule.as_ref().unwrap().met);
        assert!(r.markdown("a.png").contains("+7.5 points: **NOT met**"));
        assert!(r.effects.is_empty());
    }

    #[test]
    fn without_declared_arms_the_iterates_get_the_headline_claims() {
        let models = vec![
            model("base", &[4, 3, 3, 2, 2], 4),
            model("iter1", &[4, 6, 7, 7, 7], 5),
            model("iter2", &[5, 5, 5, 5, 5], 5),
        ];
        let arms = vec![arm("rise", ArmKind::Unspecified, &["iter1", "iter2"])];
        let r = Report::new("t".into(), Some("base".into()), None, arms, models).unwrap();
        // iter1: m1@t5 7 vs m1@t1 4, 3 vs 0 discordant: right direction, p = 0.25.
        let e = effect(&r, "iter1: m1@t5 > m1@t1");
        assert!(e.direction && !e.holds, "{e:?}");
        assert!(!effect(&r, "iter2: m1@t5 > m1@t1").direction);
        assert!(effect(&r, "base: m1@t5 not above").holds);
        let e = effect(&r, "iter2: m1@t5 > iter1");
        assert!(!e.direction && !e.holds);
        let md = r.markdown("accuracy.png");
        assert!(md.contains("relabel source not declared"));
        assert!(md.contains("did not appear in this run"));
        for key in ["m1@t1", "m5@t1", "m1@t5", "p1@t5"] {
            assert!(md.contains(key), "{key}");
        }
    }

    #[test]
    fn models_on_different_problems_are_not_paired() {
        let models = vec![
            model_n("base", 10, &[4, 3, 3, 2, 2], 4),
            model_n("iter1", 12, &[4, 6, 7, 7, 7], 5),
        ];
        let e = Report::new("t".into(), Some("base".into()), None, vec![], models)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("`iter1` and `base` cannot be paired: 12 problems against 10"),
            "{e}"
        );
        let e = Report::new(
            "t".into(),
            Some("bsae".into()),
            None,
            vec![],
            vec![model("base", &[1], 1)],
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("baseline `bsae` is not one of the evaluated models (base)"),
            "{e}"
        );
    }

    #[test]
    fn writes_markdown_json_and_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let r = six();
        r.write(dir.path()).unwrap();
        let png = std::fs::read(dir.path().join("accuracy.png")).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        let back: Report =
            serde_json::from_str(&std::fs::read_to_string(dir.path().join("report.json")).unwrap())
                .unwrap();
        // serde_json parses floats to within an ulp, so compare what the numbers mean.
        assert_eq!(back.effects, r.effects);
        assert_eq!(back.arms, r.arms);
        assert_eq!(back.models.len(), 6);
        assert_eq!(back.models[4].metrics.m1_tn().successes, 30);
        assert_eq!(
            back.models[4].metrics.outcomes,
            r.models[4].metrics.outcomes
        );
        assert_eq!(back.tests.len(), r.tests.len());
        // Same numbers, same bytes: the chart must be reproducible for the store's hashes.
        let dir2 = tempfile::tempdir().unwrap();
        r.write(dir2.path()).unwrap();
        assert_eq!(
            std::fs::read(dir2.path().join("accuracy.png")).unwrap(),
            png
        );
    }

    #[test]
    fn text_is_drawn_with_the_embedded_font() {
        // A chart with labels has more dark pixels than the same chart's lines alone would; we
        // check that glyphs land in the caption band at the top (no text would leave it blank).
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.png");
        draw_chart(&[model("base", &[4, 3, 3, 2, 2], 4)], &path).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        let dark = (0..img.width())
            .flat_map(|x| (0..30).map(move |y| (x, y)))
            .filter(|&(x, y)| img.get_pixel(x, y).0.iter().all(|&c| c < 128))
            .count();
        assert!(dark > 100, "caption band has {dark} dark pixels");
    }
}
