//! Hand-written hard cases for extraction and grading. Each row says why it is there.
use rise_data::grade::{grade, grade_with, GradeOptions, Rewards, TaskKind};

use Outcome::*;
use TaskKind::{Gsm8k as G, Math as M, Synthetic as S};

#[derive(Debug, Clone, Copy, PartialEq)]
enum Outcome {
    Correct,
    Wrong,
    Unparseable,
}

/// (task, gold, response, expected).
const CASES: &[(TaskKind, &str, &str, Outcome)] = &[
    // --- extraction ---
    // The LAST box is the answer, not the first.
    (G, "18", r"\boxed{17} no wait \boxed{18}", Correct),
    // ... and a later wrong box overrides an earlier right one.
    (G, "18", r"\boxed{18} hmm, actually \boxed{17}", Wrong),
    // \fbox is accepted like \boxed.
    (G, "18", r"\fbox{18}", Correct),
    // No box at all: unparseable, even if the number is in the text.
    (G, "18", "The total is 18.", Unparseable),
    // An empty box is no answer.
    (G, "18", r"\boxed{}", Unparseable),
    // A box of spaces is no answer either.
    (G, "18", r"\boxed{   }", Unparseable),
    // A truncated final box (generation hit max tokens) does not hide an earlier complete one.
    (G, "3", r"\boxed{3} and then \boxed{4", Correct),
    // Only an unclosed box: unparseable.
    (G, "4", r"so \boxed{4", Unparseable),
    // Nested braces inside the box.
    (M, r"\frac{1}{2}", r"$\boxed{\frac{1}{2}}$", Correct),
    // Escaped braces are set delimiters, not grouping.
    (M, r"\{1,2\}", r"\boxed{\{1,2\}}", Correct),
    // A longer control word that merely starts with "boxed" is not a box.
    (G, "5", r"\boxedfoo{5}", Unparseable),
    // The space form `\boxed 5` (TeX allows it) ends at whitespace or `$`.
    (G, "5", r"$\boxed 5$", Correct),
    // Space between \boxed and its brace.
    (G, "12", r"\boxed {12}", Correct),
    // Nested boxes: the inner (last-starting) one.
    (G, "2", r"\boxed{1 + \boxed{2}}", Correct),
    // Text after the box does not matter.
    (G, "7", r"\boxed{7}. I hope this helps! 8 9 10", Correct),
    // --- GSM8K numbers ---
    // The official parser reads `#### 2,125` as 2; we read 2125.
    (
        G,
        "Total: 2,000 + 125\n#### 2,125",
        r"\boxed{2125}",
        Correct,
    ),
    // And a response that writes the comma too.
    (G, "#### 2125", r"\boxed{2,125}", Correct),
    // 2 is not 2,125 (the official parser's mistake, inverted).
    (G, "#### 2,125", r"\boxed{2}", Wrong),
    // Dollar sign before the number.
    (G, "#### 18", r"\boxed{\$18}", Correct),
    // Plain `$` too.
    (G, "#### 18", r"\boxed{$18}", Correct),
    // Trailing unit words.
    (G, "#### 18", r"\boxed{18 dollars}", Correct),
    // Trailing period.
    (G, "#### 18", r"\boxed{18.}", Correct),
    // 18.0 == 18.
    (G, "#### 18", r"\boxed{18.0}", Correct),
    // 18.00 == 18 as well.
    (G, "#### 18", r"\boxed{18.00}", Correct),
    // 18.5 is not 18 (no rounding, no truncation).
    (G, "#### 18", r"\boxed{18.5}", Wrong),
    // Percent sign.
    (G, "#### 25", r"\boxed{25\%}", Correct),
    // \text{} wrapping number and unit.
    (G, "#### 12", r"\boxed{\text{12 apples}}", Correct),
    // A variable assignment: the value after `=`.
    (G, "#### 7", r"\boxed{x = 7}", Correct),
    // Negative golds exist in GSM8K (e.g. `#### -3`).
    (G, "#### -3", r"\boxed{-3}", Correct),
    // ... and the sign matters.
    (G, "#### -3", r"\boxed{3}", Wrong),
    // Unicode minus sign.
    (G, "#### -3", "\\boxed{\u{2212}3}", Correct),
    // Leading-dot decimal.
    (G, "#### 0.5", r"\boxed{.5}", Correct),
    // A fraction that equals the integer.
    (G, "#### 18", r"\boxed{\frac{36}{2}}", Correct),
    // Commas that are not thousands groups are ambiguous: never correct.
    (G, "#### 12", r"\boxed{1,2}", Wrong),
    // Two numbers: ambiguous, wrong.
    (G, "#### 18", r"\boxed{18 dollars and 50 cents}", Wrong),
    // A word instead of a digit string: an answer, but wrong.
    (G, "#### 18", r"\boxed{eighteen}", Wrong),
    // A unit with an exponent is still one number.
    (G, "#### 40", r"\boxed{40 m^2}", Correct),
    // A large number with several thousands groups.
    (G, "#### 1,450,000", r"\boxed{1450000}", Correct),
    // One digit off in a large number.
    (G, "#### 1,450,000", r"\boxed{1,450,001}", Wrong),
    // Exact arithmetic: 0.1 + 0.2-style float error cannot flip a grade.
    (G, "#### 0.3", r"\boxed{0.30000000000000004}", Wrong),
    // The gold as a bare answer (no ####).
    (G, "70000", r"\boxed{70,000}", Correct),
    // Thin-space thousands separator from LaTeX.
    (G, "#### 1000", r"\boxed{1\,000}", Correct),
    // Synthetic uses the same numeric rules; its gold is a boxed solution.
    (S, "3 + 4 = 7\n\\boxed{7}", r"3 + 4 = 7 \boxed{7}", Correct),
    // ... and a wrong step result is wrong.
    (S, "3 + 4 = 7\n\\boxed{7}", r"3 + 4 = 8 \boxed{8}", Wrong),
    // --- MATH normalization ---
    // \dfrac and \frac are the same.
    (M, r"\frac{3}{4}", r"\boxed{\dfrac{3}{4}}", Correct),
    // \tfrac too.
    (M, r"\frac{3}{4}", r"\boxed{\tfrac34}", Correct),
    // Unbraced \frac12 shorthand.
    (M, r"\frac{1}{2}", r"\boxed{\frac12}", Correct),
    // A fraction equals its decimal.
    (M, r"\frac{1}{2}", r"\boxed{0.5}", Correct),
    // ... with or without the leading zero.
    (M, r"\frac{1}{2}", r"\boxed{.5}", Correct),
    // a/b for integers equals \frac{a}{b}.
    (M, r"\frac{9}{19}", r"\boxed{9/19}", Correct),
    // Unreduced fractions are the same number.
    (M, r"\frac{1}{2}", r"\boxed{\frac{2}{4}}", Correct),
    // A close decimal is not the fraction.
    (M, r"\frac{1}{3}", r"\boxed{0.333}", Wrong),
    // Sign placement on fractions.
    (M, r"-\frac{3}{8}", r"\boxed{\frac{-3}{8}}", Correct),
    // Degrees.
    (M, r"30^\circ", r"\boxed{30}", Correct),
    // ... braced degree form.
    (M, "30", r"\boxed{30^{\circ}}", Correct),
    // Percent.
    (M, r"50\%", r"\boxed{50}", Correct),
    // Dollars with LaTeX thousands separator `,\!`.
    (M, r"\$32,\!348", r"\boxed{32348}", Correct),
    // Text units after the value are dropped.
    (M, r"5.4 \text{ cents}", r"\boxed{5.4}", Correct),
    // \mbox units with an exponent.
    (M, r"15\mbox{ cm}^2", r"\boxed{15}", Correct),
    // A text answer, wrapped or not.
    (M, r"\text{Evelyn}", r"\boxed{Evelyn}", Correct),
    // Multiple choice: `(C)`, `\text{(C)}` and `C`.
    (M, r"\text{(C)}", r"\boxed{C}", Correct),
    // ... a different letter is wrong.
    (M, r"\text{(C)}", r"\boxed{(D)}", Wrong),
    // `x = 5` names the value.
    (M, "x=5", r"\boxed{5}", Correct),
    // Equation of a line: the right-hand side after a short variable.
    (M, "y = 2x + 3", r"\boxed{2x+3}", Correct),
    // A long left-hand side is content, not a name.
    (
        M,
        "5x - 7y + 11z + 4 = 0",
        r"\boxed{5x-7y+11z+4=0}",
        Correct,
    ),
    // `\sqrt2` shorthand.
    (M, r"11\sqrt{2}", r"\boxed{11\sqrt2}", Correct),
    // Inverse spaces `\!` and thin spaces `\,` vanish.
    (M, r"10,\!080", r"\boxed{10\,080}", Correct),
    // Mixed numbers: 137 1/2 = 275/2.
    (M, r"137 \frac{1}{2}", r"\boxed{\frac{275}{2}}", Correct),
    // Symbolic answers are compared as normalized text; a different expression is wrong.
    (M, "p - q", r"\boxed{q - p}", Wrong),
    // Symbolic equality beyond normalization is NOT attempted (documented limitation).
    (
        M,
        r"\frac{\sqrt{3}}{3}",
        r"\boxed{\frac{1}{\sqrt{3}}}",
        Wrong,
    ),
    // --- MATH structures ---
    // Tuples with \left( \right) and spacing.
    (
        M,
        r"\left( 3, \frac{\pi}{2} \right)",
        r"\boxed{(3,\frac{\pi}{2})}",
        Correct,
    ),
    // Order inside a tuple matters.
    (M, "(1,2)", r"\boxed{(2,1)}", Wrong),
    // Interval brackets matter: half-open is not open.
    (M, "(3,4]", r"\boxed{(3,4)}", Wrong),
    // Interval endpoints compared by value.
    (
        M,
        r"\left[ \frac{1}{2}, 3 \right)",
        r"\boxed{[0.5, 3)}",
        Correct,
    ),
    // Unions of intervals, element-wise.
    (
        M,
        r"(-\infty, 2) \cup (3, \infty)",
        r"\boxed{(-\infty,2)\cup(3,\infty)}",
        Correct,
    ),
    // A missing union part is wrong.
    (
        M,
        r"(-\infty, 2) \cup (3, \infty)",
        r"\boxed{(-\infty,2)}",
        Wrong,
    ),
    // Unbracketed lists compared element-wise (order significant).
    (M, "1,-2", r"\boxed{1, -2}", Correct),
    // Matrices element-wise, entries by value.
    (
        M,
        r"\begin{pmatrix} -1/3 \\ 2/3 \end{pmatrix}",
        r"\boxed{\begin{pmatrix} -\frac{1}{3} \\ \frac23 \end{pmatrix}}",
        Correct,
    ),
    // A matrix with one entry changed.
    (
        M,
        r"\begin{pmatrix} 1 \\ 2 \end{pmatrix}",
        r"\boxed{\begin{pmatrix} 1 \\ 3 \end{pmatrix}}",
        Wrong,
    ),
    // A product of factors is not a tuple.
    (M, "(a+5)(b+2)", r"\boxed{(a+5)(b+2)}", Correct),
    // The gold can be a full MATH solution: its last box.
    (
        M,
        r"We get $x = \boxed{\frac{14}{3}}$.",
        r"\boxed{\frac{14}{3}}",
        Correct,
    ),
    // Base subscripts are kept: 52_8 is not 52.
    (M, "52_8", r"\boxed{52}", Wrong),
    // Thousands commas in MATH numbers.
    (M, "58,500", r"\boxed{58500}", Correct),
];

#[test]
fn tricky_cases() {
    assert!(CASES.len() >= 60, "only {} cases", CASES.len());
    let r = Rewards::default();
    let mut failures = Vec::new();
    for (i, &(task, gold, response, want)) in CASES.iter().enumerate() {
        let v = grade(task, gold, response, &r);
        let got = if v.correct {
            Correct
        } else if v.pred_answer.is_none() {
            Unparseable
        } else {
            Wrong
        };
        let reward = match got {
            Correct => r.correct,
            Wrong => r.wrong,
            Unparseable => r.unparseable,
        };
        if got != want || v.reward != reward {
            failures.push(format!("case {i} ({task}): gold {gold:?} response {response:?}: want {want:?}, got {got:?} {v:?}"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} failed:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n")
    );
}

#[test]
fn answer_is_fallback_and_custom_rewards() {
    let opts = GradeOptions {
        rewards: Rewards {
            correct: 2.0,
            wrong: -0.5,
            unparseable: -3.0,
        },
        answer_is_fallback: true,
    };
    // Used only when there is no box.
    let v = grade_with(G, "#### 18", "So the answer is: $18.", &opts);
    assert!(v.correct);
    assert_eq!(v.reward, 2.0);
    // A box wins over the phrase.
    let v = grade_with(G, "#### 18", r"The answer is 18. \boxed{17}", &opts);
    assert!(!v.correct);
    assert_eq!(v.reward, -0.5);
    // Neither: unparseable.
    let v = grade_with(G, "#### 18", "I do not know", &opts);
    assert_eq!(v.reward, -3.0);
    assert_eq!(v.pred_answer, None);
}
