//! Grading throughput and worst-case latency, in process (no CLI start-up in the figures).
//!
//! `cargo run --release -p rise-data --example grade_bench -- [--data DIR] [--jsonl-out FILE]`
//!
//! Prints a Markdown table. With `--jsonl-out`, also writes the GSM8K `{"gold", "pred"}` pairs
//! it graded, for timing `rise grade --jsonl` on the same work.
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rise_data::grade::{grade, grade_many, GradeOptions, Rewards, TaskKind};
use rise_data::task::{load_gsm8k, load_math};

/// The median of `runs` timings of `f`.
fn median(runs: usize, mut f: impl FnMut()) -> Duration {
    let mut t: Vec<Duration> = (0..runs)
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed()
        })
        .collect();
    t.sort();
    t[runs / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut data = PathBuf::from("../shared/data");
    let mut jsonl_out: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--data" => data = args.next().ok_or("--data needs a directory")?.into(),
            "--jsonl-out" => {
                jsonl_out = Some(args.next().ok_or("--jsonl-out needs a file")?.into())
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    let r = Rewards::default();
    println!("| case | input | median time | throughput |");
    println!("|---|---|---|---|");

    const MB: usize = 1 << 20;
    let adversarial: Vec<(&str, String)> = vec![
        (
            "1 MB: unclosed `\\boxed{` x 150k",
            "\\boxed{".repeat(MB / 7),
        ),
        (
            "1 MB: 512k-deep braces, then a box",
            format!("{}\\boxed{{7}}{}", "{".repeat(MB / 2), "}".repeat(MB / 2)),
        ),
        (
            "1 MB: prose, box at the end",
            format!("{}\\boxed{{7}}", "word ".repeat(MB / 5)),
        ),
        (
            "1 MB: 116k boxes",
            "\\boxed{1}".repeat(MB / 9) + "\\boxed{7}",
        ),
        (
            "1 MB: one box of 1 MB of digits",
            format!("\\boxed{{{}}}", "9".repeat(MB)),
        ),
        (
            "0.6 MB: 65k nested `\\frac` in a box",
            format!(
                "\\boxed{{{}1{}}}",
                "\\frac{".repeat(MB / 16),
                "}{2}".repeat(MB / 16)
            ),
        ),
    ];
    for (name, resp) in &adversarial {
        for task in [TaskKind::Gsm8k, TaskKind::Math] {
            let t = median(5, || {
                std::hint::black_box(grade(task, "7", resp, &r));
            });
            let mbps = resp.len() as f64 / MB as f64 / t.as_secs_f64();
            println!(
                "| {name} ({task}) | {} bytes | {:.2} ms | {mbps:.0} MB/s |",
                resp.len(),
                t.as_secs_f64() * 1e3
            );
        }
    }

    let gsm = data.join("gsm8k/test.jsonl");
    if gsm.exists() {
        let problems = load_gsm8k(&gsm)?;
        let mut pairs = Vec::new();
        for p in &problems {
            let n: i64 = p.answer.replace(',', "").parse()?;
            pairs.push((
                p.solution.clone(),
                format!("Step by step.\nSo \\boxed{{{}}}.", p.answer),
            ));
            pairs.push((
                p.solution.clone(),
                format!("Step by step.\nSo \\boxed{{{}}}.", n + 1),
            ));
        }
        let opts = GradeOptions::default();
        let seq = median(5, || {
            for (g, p) in &pairs {
                std::hint::black_box(grade(TaskKind::Gsm8k, g, p, &r));
            }
        });
        let par = median(5, || {
            std::hint::black_box(grade_many(TaskKind::Gsm8k, &pairs, &opts));
        });
        let n = pairs.len() as f64;
        println!(
            "| GSM8K test, gold = full solution, 1 thread | {} pairs | {:.2} ms | {:.0} pairs/s |",
            pairs.len(),
            seq.as_secs_f64() * 1e3,
            n / seq.as_secs_f64()
        );
        println!("| GSM8K test, `grade_many` (rayon, {} threads) | {} pairs | {:.2} ms | {:.0} pairs/s |", rayon::current_num_threads(), pairs.len(), par.as_secs_f64() * 1e3, n / par.as_secs_f64());
        if let Some(out) = &jsonl_out {
            let mut s = String::new();
            for (g, p) in &pairs {
                s.push_str(&serde_json::json!({"gold": g, "pred": p}).to_string());
                s.push('\n');
            }
            std::fs::write(out, s)?;
        }
    } else {
        eprintln!("skipping GSM8K: {} is missing", gsm.display());
    }

    let math = data.join("math500/test.jsonl");
    if math.exists() {
        let problems = load_math(&math)?;
        let t = median(5, || {
            for p in &problems {
                std::hint::black_box(grade(TaskKind::Math, &p.answer, &p.solution, &r));
            }
        });
        println!("| MATH500, answer vs full reference solution, 1 thread | {} pairs | {:.2} ms | {:.0} pairs/s |", problems.len(), t.as_secs_f64() * 1e3, problems.len() as f64 / t.as_secs_f64());
    } else {
        eprintln!("skipping MATH500: {} is missing", math.display());
    }
    Ok(())
}
