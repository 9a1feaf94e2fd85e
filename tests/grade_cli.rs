//! `rise grade` end to end: the real binary, single pairs and JSONL files.
mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};

use serde_json::{json, Value};
use support::run as rise;

/// `rise ARGS` with `input` on its stdin.
fn rise_stdin(args: &[&str], input: &str) -> Output {
    let mut child = support::rise()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rise runs");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write stdin");
    child.wait_with_output().expect("rise finishes")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, content).expect("write fixture");
    p
}

#[test]
fn single_pair_prints_verdict_and_both_answers() {
    let out = rise(&[
        "grade",
        "--task",
        "gsm8k",
        "--gold",
        "48 + 77 = 125\n#### 2,125",
        "--pred",
        r"So \boxed{2125}.",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    assert!(s.contains("verdict:     correct"), "{s}");
    assert!(s.contains("gold answer: 2,125"), "{s}");
    assert!(s.contains("pred answer: 2125"), "{s}");

    // A wrong answer is still a successful grading: exit 0.
    let out = rise(&[
        "grade",
        "--task",
        "gsm8k",
        "--gold",
        "#### 2,125",
        "--pred",
        r"\boxed{2}",
    ]);
    assert!(out.status.success());
    assert!(text(&out.stdout).contains("verdict:     wrong"));
}

#[test]
fn json_verdict() {
    let out = rise(&[
        "grade",
        "--task",
        "math",
        "--gold",
        r"\frac{1}{2}",
        "--pred",
        r"\boxed{0.5}",
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(
        v,
        json!({"task": "math", "correct": true, "reward": 1.0, "pred_answer": "0.5", "gold_answer": "\\frac{1}{2}"})
    );

    let out = rise(&[
        "grade",
        "--task",
        "math",
        "--gold",
        "-1",
        "--pred",
        "no box here",
        "--json",
        "--reward-unparseable",
        "-2.5",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    assert_eq!(v["pred_answer"], Value::Null);
    assert_eq!(v["reward"], json!(-2.5));
    assert_eq!(v["gold_answer"], json!("-1"));
}

#[test]
fn answer_is_fallback_flag() {
    let args = [
        "grade",
        "--task",
        "gsm8k",
        "--gold",
        "18",
        "--pred",
        "The answer is 18.",
        "--json",
    ];
    let off: Value = serde_json::from_slice(&rise(&args).stdout).expect("json");
    assert_eq!(off["correct"], json!(false));
    let mut with = args.to_vec();
    with.push("--answer-is-fallback");
    let on: Value = serde_json::from_slice(&rise(&with).stdout).expect("json");
    assert_eq!(on["correct"], json!(true));
}

#[test]
fn jsonl_lines_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let input = [
        json!({"gold": "#### 18", "pred": "so \\boxed{18}", "id": 1}),
        json!({"gold": "\\boxed{7}", "pred": "\\boxed{8}"}),
        json!({"gold": 5, "pred": "I give up"}),
    ]
    .iter()
    .map(|v| v.to_string() + "\n")
    .collect::<String>();
    let path = write(dir.path(), "pairs.jsonl", &input);
    let out = rise(&[
        "grade",
        "--task",
        "gsm8k",
        "--jsonl",
        path.to_str().expect("utf-8 path"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        vec![
            r#"{"correct":true,"pred_answer":"18","gold_answer":"18"}"#,
            r#"{"correct":false,"pred_answer":"8","gold_answer":"7"}"#,
            r#"{"correct":false,"pred_answer":null,"gold_answer":"5"}"#,
        ]
    );
    let err = text(&out.stderr);
    assert!(
        err.contains("graded 3 (gsm8k): 1 correct, 1 wrong, 1 unparseable"),
        "{err}"
    );

    // The same through stdin.
    let out = rise_stdin(&["grade", "--task", "gsm8k", "--jsonl", "-"], &input);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), stdout);
}

#[test]
fn malformed_jsonl_names_file_and_line_and_writes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = r#"{"gold": "1", "pred": "\\boxed{1}"}"#;
    let cases = [
        (
            "bad json",
            format!("{good}\n{{\"gold\": \"1\", \"pred\": \n"),
            ":2: invalid JSON",
        ),
        (
            "missing pred",
            format!("{good}\n{good}\n{{\"gold\": \"1\"}}\n"),
            ":3: missing field `pred`",
        ),
        (
            "wrong type",
            "{\"gold\": [1], \"pred\": \"x\"}\n".to_string(),
            ":1: field `gold` must be a string",
        ),
        (
            "not an object",
            format!("{good}\n[1, 2]\n"),
            ":2: expected a JSON object",
        ),
        (
            "empty line",
            format!("{good}\n\n{good}\n"),
            ":2: empty line",
        ),
        ("empty file", String::new(), "no lines to grade"),
    ];
    for (what, content, want) in cases {
        let path = write(dir.path(), "bad.jsonl", &content);
        let p = path.to_str().expect("utf-8 path");
        let out = rise(&["grade", "--task", "math", "--jsonl", p]);
        assert!(!out.status.success(), "{what}: should fail");
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!("{p}{want}"))
                || (want == "no lines to grade" && err.contains(want)),
            "{what}: {err}"
        );
        assert!(
            out.stdout.is_empty(),
            "{what}: wrote {:?}",
            text(&out.stdout)
        );
    }
    let out = rise(&[
        "grade",
        "--task",
        "math",
        "--jsonl",
        "/nonexistent/pairs.jsonl",
    ]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("/nonexistent/pairs.jsonl"));
}

#[test]
fn usage_errors_teach() {
    let out = rise(&["grade", "--task", "gsm9k", "--gold", "1", "--pred", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("expected one of: gsm8k, math, synthetic"),
        "{}",
        text(&out.stderr)
    );

    let out = rise(&["grade", "--task", "gsm8k", "--pred", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--gold is required"),
        "{}",
        text(&out.stderr)
    );

    let out = rise(&["grade", "--task", "gsm8k", "--gold", "1"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--pred or --pred-file"),
        "{}",
        text(&out.stderr)
    );

    let out = rise(&["grade", "--help"]);
    let help = text(&out.stdout);
    assert!(
        help.contains("LAST \\boxed") && help.contains("Examples:"),
        "{help}"
    );
}

#[test]
fn a_megabyte_response_from_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let response = format!("{}\\boxed{{42}}", "{\\boxed{".repeat(1 << 17));
    let path = write(dir.path(), "long.txt", &response);
    let out = rise(&[
        "grade",
        "--task",
        "math",
        "--gold",
        "42",
        "--pred-file",
        path.to_str().expect("utf-8"),
        "--json",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["correct"], json!(true));
}

#[test]
fn whole_gsm8k_test_set_through_jsonl() {
    let data = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/gsm8k/test.jsonl");
    let Ok(raw) = std::fs::read_to_string(&data) else {
        eprintln!("skipping: {} is missing", data.display());
        return;
    };
    let mut input = String::new();
    let mut expected = Vec::new();
    for line in raw.lines() {
        let row: Value = serde_json::from_str(line).expect("GSM8K row");
        let solution = row["answer"].as_str().expect("answer field");
        let gold = solution
            .rsplit("####")
            .next()
            .expect("####")
            .trim()
            .to_string();
        let plus_one =
            (gold.replace(',', "").parse::<i64>().expect("integer gold") + 1).to_string();
        // Gold as the full reference solution, with the official calculator annotations.
        input
            .push_str(&json!({"gold": solution, "pred": format!("\\boxed{{{gold}}}")}).to_string());
        input.push('\n');
        input.push_str(
            &json!({"gold": solution, "pred": format!("\\boxed{{{plus_one}}}")}).to_string(),
        );
        input.push('\n');
        expected.push((true, gold.clone()));
        expected.push((false, plus_one));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write(dir.path(), "gsm8k_pairs.jsonl", &input);
    let out = rise(&[
        "grade",
        "--task",
        "gsm8k",
        "--jsonl",
        path.to_str().expect("utf-8"),
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let got: Vec<Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(got.len(), 2 * 1319);
    for (i, (v, (correct, pred))) in got.iter().zip(&expected).enumerate() {
        assert_eq!(v["correct"], json!(correct), "line {}: {v}", i + 1);
        assert_eq!(v["pred_answer"], json!(pred), "line {}: {v}", i + 1);
    }
}
