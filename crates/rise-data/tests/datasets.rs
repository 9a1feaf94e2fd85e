//! Whole-dataset grader checks on the real GSM8K and MATH500 test sets (in `../shared/data`).
//! Where the data is missing, each test prints the path it looked for and passes without
//! checking anything.
use std::path::PathBuf;

use rise_data::grade::{grade, Rewards, TaskKind};
use rise_data::task::{load_gsm8k, load_math};

fn data(rel: &str) -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipping: {} is missing", p.display());
        None
    }
}

/// `2,125` + 1 = `2126`; golds are integers (some negative, some with thousands commas).
fn plus_one(gold: &str) -> String {
    let n: i64 = gold
        .replace(',', "")
        .parse()
        .unwrap_or_else(|e| panic!("gold {gold:?} is not an integer: {e}"));
    (n + 1).to_string()
}

#[test]
fn every_gsm8k_test_gold_grades_right_and_its_successor_wrong() {
    let Some(path) = data("gsm8k/test.jsonl") else {
        return;
    };
    let problems = load_gsm8k(&path).expect("GSM8K test set loads");
    assert_eq!(problems.len(), 1319);
    let r = Rewards::default();
    let mut with_commas = 0;
    let mut failures = Vec::new();
    for p in &problems {
        with_commas += usize::from(p.answer.contains(','));
        let right = format!("Let me think.\nSo the answer is \\boxed{{{}}}", p.answer);
        let wrong = format!(
            "Let me think.\nSo the answer is \\boxed{{{}}}",
            plus_one(&p.answer)
        );
        // The gold both as the full reference solution (`... #### N`) and as the bare answer.
        for gold in [p.solution.as_str(), p.answer.as_str()] {
            let v = grade(TaskKind::Gsm8k, gold, &right, &r);
            if !v.correct || v.reward != 1.0 {
                failures.push(format!("{}: {:?} not correct: {v:?}", p.id, p.answer));
            }
            let v = grade(TaskKind::Gsm8k, gold, &wrong, &r);
            if v.correct || v.reward != 0.0 {
                failures.push(format!("{}: {:?}+1 not wrong: {v:?}", p.id, p.answer));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    // The official release's parser reads `#### 2,125` as 2: these are the golds it mis-grades.
    assert!(
        with_commas >= 14,
        "expected the comma golds, found {with_commas}"
    );
}

#[test]
fn gsm8k_train_set_loads_without_annotations() {
    let Some(path) = data("gsm8k/train.jsonl") else {
        return;
    };
    let problems = load_gsm8k(&path).expect("GSM8K train set loads");
    assert_eq!(problems.len(), 7473);
    for p in &problems {
        assert!(
            !p.solution.contains("<<") && !p.solution.contains(">>"),
            "{}",
            p.id
        );
        assert!(!p.answer.is_empty());
    }
}

/// Equivalent ways to write an answer, generated mechanically.
fn rewrites(a: &str) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    if a.contains("\\frac") {
        out.push(("dfrac", a.replace("\\frac", "\\dfrac")));
    }
    let bare = a.replace("\\left", "").replace("\\right", "");
    if bare.contains(['(', ')', '[', ']']) {
        let lr = bare
            .replace('(', "\\left(")
            .replace('[', "\\left[")
            .replace(')', "\\right)")
            .replace(']', "\\right]");
        out.push(("left-right", lr));
    }
    out.push((
        "spacing",
        format!(
            "  {}  ",
            a.replace(',', ", ").replace('+', " + ").replace('=', " = ")
        ),
    ));
    let short = short_fracs(a);
    if short != a {
        out.push(("frac12", short));
    }
    if !a.is_empty() && a.bytes().all(|c| c.is_ascii_digit()) {
        out.push(("decimal", format!("{a}.0")));
    }
    if let Some(rest) = a.strip_prefix('.') {
        out.push(("leading zero", format!("0.{rest}")));
    }
    out
}

/// `\frac{1}{2}` → `\frac12` wherever both arguments are single digits.
fn short_fracs(a: &str) -> String {
    let b = a.as_bytes();
    let mut out = String::new();
    let mut i = 0;
    while i < b.len() {
        let rest = &a[i..];
        let tb = rest.as_bytes();
        if rest.starts_with("\\frac{")
            && tb.len() >= 12
            && tb[6].is_ascii_digit()
            && tb[7] == b'}'
            && tb[8] == b'{'
            && tb[9].is_ascii_digit()
            && tb[10] == b'}'
        {
            out.push_str("\\frac");
            out.push(tb[6] as char);
            out.push(tb[9] as char);
            i += 11;
            continue;
        }
        let c = rest.chars().next().expect("non-empty");
        out.push(c);
        i += c.len_utf8();
    }
    out
}

/// Adds 1 to the first run of digits (`\frac{\pi}{9}` → `\frac{\pi}{10}`, `43` → `44`), or
/// appends `+1` when there is none: never an equivalent answer. The first run, not the last,
/// so that `15\mbox{ cm}^2` changes its value rather than its unit (units are not graded).
fn perturb(a: &str) -> String {
    let b = a.as_bytes();
    let Some(start) = b.iter().position(u8::is_ascii_digit) else {
        return format!("{a}+1");
    };
    let end = b[start..]
        .iter()
        .position(|c| !c.is_ascii_digit())
        .map_or(b.len(), |i| start + i);
    let mut digits: Vec<u8> = b[start..end].to_vec();
    let mut carry = true;
    for d in digits.iter_mut().rev() {
        if !carry {
            break;
        }
        if *d == b'9' {
            *d = b'0';
        } else {
            *d += 1;
            carry = false;
        }
    }
    let mut s = String::from(&a[..start]);
    if carry {
        s.push('1');
    }
    s.push_str(std::str::from_utf8(&digits).expect("digits"));
    s.push_str(&a[end..]);
    s
}

#[test]
fn every_math500_answer_matches_itself_and_rewrites_but_not_a_perturbation() {
    let Some(path) = data("math500/test.jsonl") else {
        return;
    };
    let problems = load_math(&path).expect("MATH500 loads");
    assert_eq!(problems.len(), 500);
    let r = Rewards::default();
    let mut failures = Vec::new();
    let mut n_rewrites = 0;
    for p in &problems {
        let a = &p.answer;
        let check = |what: &str, pred: &str, want: bool, failures: &mut Vec<String>| {
            let v = grade(TaskKind::Math, a, &format!("Thus $\\boxed{{{pred}}}$."), &r);
            if v.correct != want {
                failures.push(format!(
                    "{}: gold {a:?} vs {what} {pred:?}: correct = {}",
                    p.id, v.correct
                ));
            }
        };
        check("itself", a, true, &mut failures);
        for (what, rw) in rewrites(a) {
            n_rewrites += 1;
            check(what, &rw, true, &mut failures);
        }
        check("perturbed", &perturb(a), false, &mut failures);
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert!(
        n_rewrites > 600,
        "only {n_rewrites} rewrites were generated"
    );
}

#[test]
fn every_math500_reference_solution_grades_correct_against_its_answer() {
    let Some(path) = data("math500/test.jsonl") else {
        return;
    };
    let problems = load_math(&path).expect("MATH500 loads");
    let r = Rewards::default();
    let failures: Vec<String> = problems
        .iter()
        .filter_map(|p| {
            let v = grade(TaskKind::Math, &p.answer, &p.solution, &r);
            (!v.correct).then(|| {
                format!(
                    "{}: answer {:?} vs solution's box {:?}",
                    p.id, p.answer, v.pred_answer
                )
            })
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn test_helpers_do_what_they_say() {
    assert_eq!(
        short_fracs(r"-\frac{3}{8}+\frac{10}{3}"),
        r"-\frac38+\frac{10}{3}"
    );
    assert_eq!(perturb(r"\frac{\pi}{9}"), r"\frac{\pi}{10}");
    assert_eq!(perturb("p - q"), "p - q+1");
    assert_eq!(perturb(r"15\mbox{ cm}^2"), r"16\mbox{ cm}^2");
    assert_eq!(perturb("(1,99)"), "(2,99)");
    assert_eq!(plus_one("2,125"), "2126");
    assert_eq!(plus_one("-3"), "-2");
}
