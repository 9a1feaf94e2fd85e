//! `rise grade`: grade model responses against gold answers, with exactly the rules the
//! `grade` stage uses to compute RISE rewards.
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use rise_data::grade::{
    grade_many, grade_with, GradeOptions, GradeOutcome, Rewards, TaskKind, Verdict,
};
use serde::Serialize;
use serde_json::Value;

use super::Global;

#[derive(clap::Subcommand)]
pub enum Command {
    /// Grade a response against a gold answer (one pair, or a JSONL file of pairs).
    #[command(
        long_about = "Grade model responses against gold answers with the same rules the `grade` \
stage uses for RISE rewards.\n\n\
The response's answer is the content of its LAST \\boxed{...} (or \\fbox{...}); nested braces are \
fine. The gold may be a full reference solution (GSM8K `... #### 18`, or a MATH solution with \
\\boxed{}) or a bare answer (`18`, `\\frac{1}{2}`).\n\n\
Rules per task:\n  \
gsm8k, synthetic: one number, compared exactly: `2,125` = `2125` = `$2,125.00` = `2125 dollars`.\n  \
math: LaTeX normalized (\\left/\\right, \\dfrac, \\frac12, spaces, \\text{units}, ^\\circ, \\%, \
`x=`), numbers and fractions compared by value, tuples and intervals element by element \
(order and brackets count).\n\n\
Rewards: correct, wrong (an answer that does not match), unparseable (no answer found).",
        after_help = "Examples:\n  \
rise grade --task gsm8k --gold '#### 2,125' --pred 'So the total is \\boxed{2125}.'\n  \
rise grade --task math --gold '\\frac{1}{2}' --pred '\\boxed{0.5}' --json\n  \
rise grade --task math --jsonl pairs.jsonl > verdicts.jsonl\n\n\
JSONL mode reads one object per line, {\"gold\": ..., \"pred\": ...} (other fields are \
ignored), and writes one line per input line, in order:\n  \
{\"correct\": true, \"pred_answer\": \"18\", \"gold_answer\": \"18\"}\n\
pred_answer is null when the response has no answer. A summary goes to stderr. A malformed \
line stops the run with an error naming FILE:LINE and nothing is written."
    )]
    Grade(Args),
}

#[derive(clap::Args)]
pub struct Args {
    /// Grading rules: gsm8k, math or synthetic.
    #[arg(long, value_parser = parse_task, value_name = "TASK")]
    task: TaskKind,

    /// The gold: a reference solution or a bare answer.
    #[arg(
        long,
        value_name = "G",
        conflicts_with = "jsonl",
        allow_hyphen_values = true
    )]
    gold: Option<String>,

    /// The model's full response.
    #[arg(long, value_name = "P", conflicts_with_all = ["jsonl", "pred_file"], allow_hyphen_values = true)]
    pred: Option<String>,

    /// Read the response from FILE instead (`-` for stdin): for long generations.
    #[arg(long, value_name = "FILE", conflicts_with = "jsonl")]
    pred_file: Option<PathBuf>,

    /// Grade every `{"gold": ..., "pred": ...}` line of FILE (`-` for stdin).
    #[arg(long, value_name = "FILE")]
    jsonl: Option<PathBuf>,

    /// Print the single verdict as one JSON object.
    #[arg(long, conflicts_with = "jsonl")]
    json: bool,

    /// When a response has no \boxed{}, take the answer after "The answer is".
    #[arg(long)]
    answer_is_fallback: bool,

    /// Reward for a correct answer.
    #[arg(long, default_value_t = Rewards::default().correct, allow_negative_numbers = true)]
    reward_correct: f64,

    /// Reward for a wrong answer.
    #[arg(long, default_value_t = Rewards::default().wrong, allow_negative_numbers = true)]
    reward_wrong: f64,

    /// Reward when no answer can be extracted.
    #[arg(long, default_value_t = Rewards::default().unparseable, allow_negative_numbers = true)]
    reward_unparseable: f64,
}

/// `--json` output; fields in this order on purpose (people read it).
#[derive(Serialize)]
struct SingleJson<'a> {
    task: &'a str,
    correct: bool,
    reward: f64,
    pred_answer: Option<&'a str>,
    gold_answer: &'a str,
}

/// One `--jsonl` output line (the documented contract: exactly these three fields).
#[derive(Serialize)]
struct LineJson<'a> {
    correct: bool,
    pred_answer: Option<&'a str>,
    gold_answer: &'a str,
}

fn parse_task(s: &str) -> Result<TaskKind, String> {
    s.parse::<TaskKind>().map_err(|e| e.to_string())
}

pub fn run(cmd: Command, _global: &Global) -> Result<ExitCode> {
    match cmd {
        Command::Grade(args) => grade(args),
    }
}

fn grade(args: Args) -> Result<ExitCode> {
    let opts = GradeOptions {
        rewards: Rewards {
            correct: args.reward_correct,
            wrong: args.reward_wrong,
            unparseable: args.reward_unparseable,
        },
        answer_is_fallback: args.answer_is_fallback,
    };
    if let Some(path) = &args.jsonl {
        return grade_jsonl(args.task, path, &opts);
    }
    let Some(gold) = &args.gold else {
        bail!("--gold is required (or use --jsonl FILE to grade many pairs)");
    };
    let pred = match (&args.pred, &args.pred_file) {
        (Some(p), _) => p.clone(),
        (None, Some(path)) => read_input(path)?,
        (None, None) => {
            bail!("--pred or --pred-file is required (or use --jsonl FILE to grade many pairs)")
        }
    };
    let v = grade_with(args.task, gold, &pred, &opts);
    if args.json {
        let obj = SingleJson {
            task: args.task.name(),
            correct: v.correct,
            reward: v.reward,
            pred_answer: v.pred_answer.as_deref(),
            gold_answer: &v.gold_answer,
        };
        println!("{}", serde_json::to_string(&obj)?);
    } else {
        print_human(&v);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_human(v: &GradeOutcome) {
    let outcome = match v.verdict() {
        Verdict::Correct => "correct",
        Verdict::Unparsed => "unparseable (no \\boxed{} answer in the response)",
        Verdict::Wrong => "wrong",
    };
    println!("verdict:     {outcome}");
    println!("reward:      {}", v.reward);
    println!("gold answer: {}", v.gold_answer);
    match &v.pred_answer {
        Some(p) => println!("pred answer: {p}"),
        None => println!("pred answer: (none)"),
    }
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

/// One field of a JSONL row as text: a string, or a number written as JSON wrote it.
fn field(row: &serde_json::Map<String, Value>, name: &str, loc: &str) -> Result<String> {
    match row.get(name) {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(other) => bail!("{loc}: field `{name}` must be a string (or a number), found {other}"),
        None => bail!(
            "{loc}: missing field `{name}` (each line must be {{\"gold\": ..., \"pred\": ...}})"
        ),
    }
}

fn grade_jsonl(task: TaskKind, path: &Path, opts: &GradeOptions) -> Result<ExitCode> {
    let text = read_input(path)?;
    let name = if path == Path::new("-") {
        "<stdin>".to_string()
    } else {
        path.display().to_string()
    };
    // Parse everything first: a bad line must not leave a half-written verdict file behind.
    let mut pairs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let loc = format!("{name}:{}", i + 1);
        if line.trim().is_empty() {
            bail!("{loc}: empty line (each line must be {{\"gold\": ..., \"pred\": ...}})");
        }
        let value: Value =
            serde_json::from_str(line).with_context(|| format!("{loc}: invalid JSON"))?;
        let Value::Object(row) = value else {
            bail!("{loc}: expected a JSON object {{\"gold\": ..., \"pred\": ...}}, found {value}");
        };
        pairs.push((field(&row, "gold", &loc)?, field(&row, "pred", &loc)?));
    }
    if pairs.is_empty() {
        bail!("{name}: no lines to grade");
    }
    let verdicts = grade_many(task, &pairs, opts);
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for v in &verdicts {
        let line = LineJson {
            correct: v.correct,
            pred_answer: v.pred_answer.as_deref(),
            gold_answer: &v.gold_answer,
        };
        writeln!(out, "{}", serde_json::to_string(&line)?).context("writing to stdout")?;
    }
    out.flush().context("writing to stdout")?;
    let count = |verdict| verdicts.iter().filter(|v| v.verdict() == verdict).count();
    let (correct, unparseable) = (count(Verdict::Correct), count(Verdict::Unparsed));
    let n = verdicts.len();
    eprintln!(
        "graded {n} ({task}): {correct} correct, {} wrong, {unparseable} unparseable; accuracy {:.2}%",
        n - correct - unparseable,
        100.0 * correct as f64 / n as f64
    );
    Ok(ExitCode::SUCCESS)
}
