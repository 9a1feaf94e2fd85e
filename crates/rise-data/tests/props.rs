//! Property tests: the extractor and graders never panic, on any input, and agree with simple
//! models of what they should do. Large adversarial inputs run here for robustness; their speed is
//! measured by `benches/grade.sh`, not asserted.
use proptest::prelude::*;
use rise_data::conversation::is_degenerate;
use rise_data::grade::{
    canonical_answer, extract_boxed, grade, grade_with, GradeOptions, Rewards, TaskKind,
};

/// Strings over the characters that matter to the parsers, so shrinking finds real edge cases.
fn latexish() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        "\\boxed{",
        "\\fbox{",
        "\\boxed ",
        "{",
        "}",
        "\\{",
        "\\}",
        "\\\\",
        "\\",
        "\\frac",
        "\\dfrac",
        "\\sqrt",
        "\\left(",
        "\\right)",
        "\\text{",
        "\\mbox{ cm}",
        "(",
        ")",
        "[",
        "]",
        ",",
        "=",
        "-",
        "+",
        "/",
        ".",
        "$",
        "\\$",
        "%",
        "\\%",
        "^\\circ",
        "^{",
        "_",
        "0",
        "1",
        "9",
        "12",
        "2,125",
        " ",
        "\n",
        "####",
        "x",
        "\\pi",
        "\\cup",
        "&",
        "\\begin{pmatrix}",
        "\\end{pmatrix}",
        "é",
        "\u{2212}",
        "The answer is",
    ]);
    prop::collection::vec(atoms, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn nothing_panics_on_latexish_input(gold in latexish(), resp in latexish()) {
        let _ = extract_boxed(&resp);
        let opts = GradeOptions { answer_is_fallback: true, ..Default::default() };
        for task in TaskKind::ALL {
            let v = grade_with(task, &gold, &resp, &opts);
            // The reward is always one of the three configured values, matching the outcome.
            let r = Rewards::default();
            let want = if v.correct { r.correct } else if v.pred_answer.is_none() { r.unparseable } else { r.wrong };
            prop_assert_eq!(v.reward, want);
            let _ = canonical_answer(task, &gold);
        }
    }

    #[test]
    fn nothing_panics_on_arbitrary_unicode(gold in any::<String>(), resp in any::<String>()) {
        let _ = extract_boxed(&resp);
        for task in TaskKind::ALL {
            let _ = grade(task, &gold, &resp, &Rewards::default());
        }
        let _ = is_degenerate(&resp);
    }

    #[test]
    fn a_response_always_matches_itself(ans in latexish()) {
        // Whatever the answer text, boxing it and grading against the same text as a bare gold
        // is correct unless it is not extractable as-is (braces/`####` change its meaning).
        let resp = format!("\\boxed{{{ans}}}");
        if extract_boxed(&resp).as_deref() == Some(ans.trim()) && !ans.trim().is_empty() && !ans.contains("####")
            && extract_boxed(&ans).is_none()
        {
            prop_assert!(grade(TaskKind::Math, &ans, &resp, &Rewards::default()).correct, "{:?}", ans);
        }
    }

    #[test]
    fn integers_grade_by_value(n in -1_000_000_000i64..1_000_000_000, noise in "[a-zA-Z .:!?]{0,40}", commas in any::<bool>()) {
        let shown = if commas { group(n) } else { n.to_string() };
        let gold = format!("work\n#### {n}");
        let right = format!("{noise}\\boxed{{{shown}}}{noise}");
        let wrong = format!("{noise}\\boxed{{{}}}", n + 1);
        for task in [TaskKind::Gsm8k, TaskKind::Synthetic, TaskKind::Math] {
            prop_assert!(grade(task, &gold, &right, &Rewards::default()).correct, "{} {}", task, right);
            prop_assert!(!grade(task, &gold, &wrong, &Rewards::default()).correct, "{} {}", task, wrong);
        }
    }

    #[test]
    fn fractions_grade_by_value(a in -500i64..500, b in 1i64..500, k in 1i64..7) {
        let gold = format!("\\frac{{{a}}}{{{b}}}");
        let scaled = format!("\\boxed{{\\dfrac{{{}}}{{{}}}}}", a * k, b * k);
        prop_assert!(grade(TaskKind::Math, &gold, &scaled, &Rewards::default()).correct);
        let off = format!("\\boxed{{\\frac{{{}}}{{{}}}}}", a * k + 1, b * k);
        prop_assert!(!grade(TaskKind::Math, &gold, &off, &Rewards::default()).correct);
    }
}

/// `-1234567` → `-1,234,567`.
fn group(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// One-megabyte adversarial responses: deep nesting, thousands of unclosed boxes, huge numbers.
/// They must grade without panicking or overflowing the stack and give the expected outcome.
#[test]
fn megabyte_adversarial_inputs() {
    const MB: usize = 1 << 20;
    let r = Rewards::default();
    let cases: Vec<(&str, String, Option<&str>)> = vec![
        ("unclosed boxes", "\\boxed{".repeat(MB / 7), None),
        (
            "deep nesting then a box",
            format!("{}\\boxed{{7}}{}", "{".repeat(MB / 2), "}".repeat(MB / 2)),
            Some("7"),
        ),
        ("closing braces", "}".repeat(MB), None),
        (
            "long text, box at the end",
            format!("{}\\boxed{{7}}", "word ".repeat(MB / 5)),
            Some("7"),
        ),
        (
            "many boxes",
            "\\boxed{1}".repeat(MB / 9) + "\\boxed{7}",
            Some("7"),
        ),
        (
            "a megabyte of digits in a box",
            format!("\\boxed{{{}}}", "9".repeat(MB)),
            None,
        ),
        (
            "nested fractions in a box",
            format!(
                "\\boxed{{{}1{}}}",
                "\\frac{".repeat(MB / 16),
                "}{2}".repeat(MB / 16)
            ),
            None,
        ),
        ("backslashes", "\\".repeat(MB), None),
    ];
    for (name, resp, want_seven) in cases {
        for task in TaskKind::ALL {
            let v = grade(task, "7", &resp, &r);
            match want_seven {
                Some(_) => assert!(
                    v.correct,
                    "{name} ({task}): {:?}",
                    v.pred_answer.map(|p| p.len())
                ),
                None => assert!(!v.correct, "{name} ({task})"),
            }
        }
        // The huge answer as the gold, too.
        let _ = grade(TaskKind::Math, &resp, &resp, &r);
    }
}

#[test]
fn group_helper() {
    assert_eq!(group(-1234567), "-1,234,567");
    assert_eq!(group(999), "999");
    assert_eq!(group(1000), "1,000");
}
