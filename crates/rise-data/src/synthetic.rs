//! A deterministic, GSM8K-shaped arithmetic word-problem task for from-scratch tiny models
//! (RISE.md §8).
//!
//! ```text
//! question: Ann has 12 pens. She buys 5 more. She gives away 3. How many pens does Ann have now?
//! solution: 12 + 5 = 17
//!           17 - 3 = 14
//!           \boxed{14}
//! ```
//! Text is short and regular (a small vocabulary, 60–200 characters per question) so a tiny
//! model learns the format in minutes; the knobs (steps, operand sizes, operations) set how
//! often it still gets the arithmetic wrong, which is what self-correction needs.
//!
//! Same config, same bytes: the random stream is ChaCha8 (value-stable across platforms and
//! versions) and the sampling below uses only its raw `u64` output. The test split uses its own
//! stream, so it does not change when `n_train` does.
use std::collections::{BTreeMap, HashSet};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::grade::{extract_boxed, grade, Rewards, TaskKind};
use crate::{DataError, Problem};

/// An arithmetic operation a step may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    /// `a + b`.
    Add,
    /// `a - b` (results stay at least 1).
    Sub,
    /// `a * b` with `b` in `2..=max_factor`.
    Mul,
    /// `a / b`, exact only: `b` divides `a`.
    Div,
}

impl Op {
    fn symbol(self) -> &'static str {
        match self {
            Op::Add => "+",
            Op::Sub => "-",
            Op::Mul => "*",
            Op::Div => "/",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Add => "add",
            Op::Sub => "sub",
            Op::Mul => "mul",
            Op::Div => "div",
        }
    }
}

/// The generator's knobs. Every field has a default, so a config may set only what it changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Seed of the random stream.
    pub seed: u64,
    /// Problems in the train split.
    pub n_train: usize,
    /// Problems in the test split.
    pub n_test: usize,
    /// Fewest operations per problem (at least 1).
    pub min_steps: usize,
    /// Most operations per problem (at most 12).
    pub max_steps: usize,
    /// Largest starting amount and largest `+`/`-` operand.
    pub max_operand: u64,
    /// Largest `*`/`/` operand (they start at 2).
    pub max_factor: u64,
    /// No amount, start or intermediate, ever exceeds this.
    pub max_value: u64,
    /// The operations steps draw from.
    pub ops: Vec<Op>,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            seed: 0,
            n_train: 2000,
            n_test: 200,
            min_steps: 1,
            max_steps: 4,
            max_operand: 20,
            max_factor: 5,
            max_value: 999,
            ops: vec![Op::Add, Op::Sub, Op::Mul, Op::Div],
        }
    }
}

impl SyntheticConfig {
    /// Checks ranges and consistency; errors name the field.
    pub fn validate(&self) -> Result<(), DataError> {
        let bad = |field: &str, message: String| {
            Err(DataError::Config {
                field: field.into(),
                message,
            })
        };
        if self.n_train + self.n_test == 0 {
            return bad(
                "n_train",
                "n_train and n_test are both 0: nothing to generate".into(),
            );
        }
        if self.min_steps == 0 {
            return bad("min_steps", "must be at least 1".into());
        }
        if self.max_steps < self.min_steps {
            return bad(
                "max_steps",
                format!("{} is below min_steps = {}", self.max_steps, self.min_steps),
            );
        }
        if self.max_steps > MAX_STEPS {
            return bad(
                "max_steps",
                format!(
                    "{} is above {MAX_STEPS} (questions would stop being short)",
                    self.max_steps
                ),
            );
        }
        if self.max_operand == 0 {
            return bad("max_operand", "must be at least 1".into());
        }
        if self.max_value < self.max_operand {
            return bad(
                "max_value",
                format!(
                    "{} is below max_operand = {}",
                    self.max_value, self.max_operand
                ),
            );
        }
        if self.max_value > 1_000_000_000 {
            return bad("max_value", "must be at most 1000000000".into());
        }
        if self.ops.is_empty() {
            return bad("ops", "needs at least one of add, sub, mul, div".into());
        }
        if self.ops.iter().any(|o| matches!(o, Op::Mul | Op::Div)) && self.max_factor < 2 {
            return bad(
                "max_factor",
                format!("{} is below 2, so mul/div are impossible", self.max_factor),
            );
        }
        Ok(())
    }
}

const MAX_STEPS: usize = 12;

/// Train and test problems; no question appears twice across both.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Split {
    /// Problems to learn from.
    pub train: Vec<Problem>,
    /// Held-out problems.
    pub test: Vec<Problem>,
}

/// Generates the train and test splits for `cfg`, deterministically from `cfg.seed`.
///
/// Every problem is re-checked before it is returned ([`verify`]): the question's numbers, each
/// solution line's arithmetic, the chain of results and the boxed answer.
pub fn generate(cfg: &SyntheticConfig) -> Result<Split, DataError> {
    cfg.validate()?;
    let mut seen = HashSet::new();
    // Test first, from its own stream, so the test split depends only on the seed and knobs.
    let test = generate_split(cfg, "test", 1, cfg.n_test, &mut seen)?;
    let train = generate_split(cfg, "train", 0, cfg.n_train, &mut seen)?;
    Ok(Split { train, test })
}

/// How many consecutive failed draws (infeasible or duplicate) before giving up.
const MAX_RETRIES: usize = 10_000;

fn generate_split(
    cfg: &SyntheticConfig,
    split: &str,
    stream: u64,
    n: usize,
    seen: &mut HashSet<String>,
) -> Result<Vec<Problem>, DataError> {
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
    rng.set_stream(stream);
    let mut out = Vec::with_capacity(n);
    let mut failures = 0;
    while out.len() < n {
        let drawn = draw(cfg, &mut rng);
        match drawn {
            Some(d) if !seen.contains(&d.question) => {
                failures = 0;
                seen.insert(d.question.clone());
                let problem = d.into_problem(format!("synthetic:{split}:{}", out.len()), split);
                verify(&problem).map_err(|e| {
                    DataError::Generation(format!("internal check failed for {}: {e}", problem.id))
                })?;
                out.push(problem);
            }
            _ => {
                failures += 1;
                if failures >= MAX_RETRIES {
                    return Err(DataError::Generation(format!(
                        "made only {} of {n} distinct {split} questions after {MAX_RETRIES} draws in a row \
                         were impossible or repeats; raise max_operand, max_value or max_steps, \
                         allow more ops, or ask for fewer problems",
                        out.len()
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// A uniform integer in `0..n` (n > 0) by rejection, so no modulo bias and no dependence on
/// `rand`'s distribution code, whose output may change between versions.
fn below(rng: &mut ChaCha8Rng, n: u64) -> u64 {
    let zone = u64::MAX - (u64::MAX % n);
    loop {
        let x = rng.next_u64();
        if x < zone {
            return x % n;
        }
    }
}

fn range(rng: &mut ChaCha8Rng, lo: u64, hi: u64) -> u64 {
    lo + below(rng, hi - lo + 1)
}

fn pick<'a, T>(rng: &mut ChaCha8Rng, xs: &'a [T]) -> &'a T {
    &xs[below(rng, xs.len() as u64) as usize]
}

#[derive(Clone, Copy)]
enum Scene {
    /// A person holding items: "Ann has 12 pens."
    Person,
    /// A container: "A box has 12 shells."
    Container,
    /// A person's money: "Ann has 12 dollars."
    Money,
}

const NAMES: [(&str, &str); 12] = [
    ("Ann", "She"),
    ("Bob", "He"),
    ("Cal", "He"),
    ("Dee", "She"),
    ("Eve", "She"),
    ("Finn", "He"),
    ("Gus", "He"),
    ("Ivy", "She"),
    ("Jo", "She"),
    ("Max", "He"),
    ("Sam", "He"),
    ("Zoe", "She"),
];
const ITEMS: [&str; 8] = [
    "apples", "pens", "cards", "eggs", "coins", "books", "shells", "stamps",
];
const CONTAINERS: [&str; 4] = ["box", "bag", "jar", "basket"];

/// Sentence templates per scene and operation; `{P}` is the pronoun (or "They"), `{b}` the operand.
fn phrases(scene: Scene, op: Op) -> &'static [&'static str] {
    match (scene, op) {
        (Scene::Person, Op::Add) => &[
            "{P} gets {b} more.",
            "{P} buys {b} more.",
            "{P} finds {b} more.",
        ],
        (Scene::Person, Op::Sub) => &["{P} gives away {b}.", "{P} loses {b}.", "{P} sells {b}."],
        (Scene::Person, Op::Mul) => &[
            "{P} now has {b} times as many.",
            "The amount grows {b} times.",
        ],
        (Scene::Person, Op::Div) => &[
            "{P} keeps one of {b} equal parts.",
            "{P} splits them {b} ways and keeps one part.",
        ],
        (Scene::Container, Op::Add) => &["{b} more are put in.", "{b} more are added."],
        (Scene::Container, Op::Sub) => &["{b} are taken out.", "{b} are removed."],
        (Scene::Container, Op::Mul) => &[
            "Then there are {b} times as many.",
            "The amount grows {b} times.",
        ],
        (Scene::Container, Op::Div) => &[
            "Only one of {b} equal parts stays.",
            "They are split {b} ways and one part stays.",
        ],
        (Scene::Money, Op::Add) => &["{P} earns {b} more.", "{P} is paid {b} more."],
        (Scene::Money, Op::Sub) => &["{P} spends {b}.", "{P} pays {b} for lunch."],
        (Scene::Money, Op::Mul) => &[
            "{P} now has {b} times as much.",
            "The money grows {b} times.",
        ],
        (Scene::Money, Op::Div) => &[
            "{P} keeps one of {b} equal parts.",
            "{P} splits it {b} ways and keeps one part.",
        ],
    }
}

struct Drawn {
    question: String,
    solution: String,
    answer: u64,
    steps: Vec<(Op, u64)>,
}

impl Drawn {
    fn into_problem(self, id: String, split: &str) -> Problem {
        let mut ops: Vec<&str> = self.steps.iter().map(|(o, _)| o.name()).collect();
        ops.sort_unstable();
        ops.dedup();
        let meta = BTreeMap::from([
            ("split".to_string(), split.to_string()),
            ("steps".to_string(), self.steps.len().to_string()),
            ("ops".to_string(), ops.join(",")),
        ]);
        Problem {
            id,
            question: self.question,
            solution: self.solution,
            answer: self.answer.to_string(),
            meta,
        }
    }
}

/// Draws one problem, or `None` when the random choices hit a dead end (no allowed operation
/// fits the current amount); the caller simply draws again.
fn draw(cfg: &SyntheticConfig, rng: &mut ChaCha8Rng) -> Option<Drawn> {
    let n_steps = range(rng, cfg.min_steps as u64, cfg.max_steps as u64) as usize;
    let scene = *pick(rng, &[Scene::Person, Scene::Container, Scene::Money]);
    let (name, pronoun) = *pick(rng, &NAMES);
    let item = *pick(rng, &ITEMS);
    let container = *pick(rng, &CONTAINERS);
    let start = range(rng, 1, cfg.max_operand);

    let mut question = match scene {
        Scene::Person => format!("{name} has {start} {item}."),
        Scene::Container => format!("A {container} has {start} {item}."),
        Scene::Money => format!("{name} has {start} dollars."),
    };
    let mut solution = String::new();
    let mut value = start;
    let mut steps = Vec::with_capacity(n_steps);
    for _ in 0..n_steps {
        let (op, b) = choose_step(cfg, rng, value)?;
        let next = match op {
            Op::Add => value.checked_add(b)?,
            Op::Sub => value.checked_sub(b)?,
            Op::Mul => value.checked_mul(b)?,
            Op::Div => value.checked_div(b)?,
        };
        let sentence = pick(rng, phrases(scene, op))
            .replace("{P}", pronoun)
            .replace("{b}", &b.to_string());
        question.push(' ');
        question.push_str(&sentence);
        solution.push_str(&format!("{value} {} {b} = {next}\n", op.symbol()));
        steps.push((op, b));
        value = next;
    }
    question.push(' ');
    question.push_str(&match scene {
        Scene::Person => format!("How many {item} does {name} have now?"),
        Scene::Container => format!("How many {item} are in the {container} now?"),
        Scene::Money => format!("How many dollars does {name} have now?"),
    });
    solution.push_str(&format!("\\boxed{{{value}}}"));
    Some(Drawn {
        question,
        solution,
        answer: value,
        steps,
    })
}

/// Picks an allowed operation that keeps the amount in `1..=max_value`, and its operand.
fn choose_step(cfg: &SyntheticConfig, rng: &mut ChaCha8Rng, value: u64) -> Option<(Op, u64)> {
    let divisors: Vec<u64> = (2..=cfg.max_factor.min(value))
        .filter(|&d| value.is_multiple_of(d))
        .collect();
    let feasible: Vec<Op> = cfg
        .ops
        .iter()
        .copied()
        .filter(|op| match op {
            Op::Add => value < cfg.max_value,
            Op::Sub => value >= 2,
            Op::Mul => cfg.max_factor >= 2 && value.saturating_mul(2) <= cfg.max_value,
            Op::Div => !divisors.is_empty(),
        })
        .collect();
    if feasible.is_empty() {
        return None;
    }
    let op = *pick(rng, &feasible);
    let b = match op {
        Op::Add => range(rng, 1, cfg.max_operand.min(cfg.max_value - value)),
        Op::Sub => range(rng, 1, cfg.max_operand.min(value - 1)),
        Op::Mul => range(rng, 2, cfg.max_factor.min(cfg.max_value / value)),
        Op::Div => *pick(rng, &divisors),
    };
    Some((op, b))
}

/// Re-checks a synthetic problem from its text alone: the question's numbers are the start and
/// the operands in order, every solution line `a op b = c` is true arithmetic, each line starts
/// from the previous result, the last line is `\boxed{c}` with the final result, `answer` equals
/// it, and the grader accepts the solution. Returns the answer.
pub fn verify(problem: &Problem) -> Result<u64, String> {
    let numbers: Vec<u64> = problem
        .question
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| format!("question number {s:?}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let lines: Vec<&str> = problem.solution.lines().collect();
    let (boxed_line, step_lines) = lines.split_last().ok_or("empty solution")?;
    if step_lines.is_empty() {
        return Err("no step lines".into());
    }
    let mut expected_numbers = Vec::new();
    let mut current: Option<u64> = None;
    for (i, line) in step_lines.iter().enumerate() {
        let t: Vec<&str> = line.split(' ').collect();
        let [a, op, b, eq, c] = t[..] else {
            return Err(format!("step {} is not `a op b = c`: {line:?}", i + 1));
        };
        let num = |s: &str| {
            s.parse::<u64>()
                .map_err(|e| format!("step {}: {s:?}: {e}", i + 1))
        };
        let (a, b, c) = (num(a)?, num(b)?, num(c)?);
        if eq != "=" {
            return Err(format!("step {}: expected `=`, found {eq:?}", i + 1));
        }
        let got = match op {
            "+" => a.checked_add(b),
            "-" => a.checked_sub(b),
            "*" => a.checked_mul(b),
            "/" if b != 0 && a % b == 0 => Some(a / b),
            _ => None,
        };
        if got != Some(c) {
            return Err(format!("step {}: {line:?} is false", i + 1));
        }
        match current {
            None => expected_numbers.push(a),
            Some(prev) if prev != a => {
                return Err(format!(
                    "step {} starts from {a}, not the previous result {prev}",
                    i + 1
                ))
            }
            Some(_) => {}
        }
        expected_numbers.push(b);
        current = Some(c);
    }
    let result = current.ok_or("no steps")?;
    if numbers != expected_numbers {
        return Err(format!(
            "question numbers {numbers:?} are not the steps' operands {expected_numbers:?}"
        ));
    }
    if extract_boxed(boxed_line).as_deref() != Some(result.to_string().as_str())
        || !boxed_line.starts_with("\\boxed{")
    {
        return Err(format!(
            "last line {boxed_line:?} is not \\boxed{{{result}}}"
        ));
    }
    if problem.answer != result.to_string() {
        return Err(format!(
            "answer {:?} is not the result {result}",
            problem.answer
        ));
    }
    if !grade(
        TaskKind::Synthetic,
        &problem.answer,
        &problem.solution,
        &Rewards::default(),
    )
    .correct
    {
        return Err("the grader rejects the reference solution".into());
    }
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_default_run_verifies() {
        let cfg = SyntheticConfig {
            n_train: 50,
            n_test: 20,
            ..Default::default()
        };
        let s = generate(&cfg).expect("generates");
        assert_eq!((s.train.len(), s.test.len()), (50, 20));
        for p in s.train.iter().chain(&s.test) {
            verify(p).expect("verifies");
        }
    }

    #[test]
    fn verify_catches_a_wrong_line() {
        let cfg = SyntheticConfig {
            n_train: 1,
            n_test: 0,
            ..Default::default()
        };
        let mut p = generate(&cfg).expect("generates").train.remove(0);
        let first = p.solution.lines().next().expect("a line").to_string();
        let broken = first.replace(" = ", " = 1");
        p.solution = p.solution.replacen(&first, &broken, 1);
        assert!(verify(&p).is_err());
    }

    #[test]
    fn config_errors_name_the_field() {
        let cfg = SyntheticConfig {
            min_steps: 3,
            max_steps: 2,
            ..Default::default()
        };
        assert!(generate(&cfg)
            .unwrap_err()
            .to_string()
            .contains("`max_steps`"));
        let cfg = SyntheticConfig {
            ops: vec![],
            ..Default::default()
        };
        assert!(generate(&cfg).unwrap_err().to_string().contains("`ops`"));
    }
}
