//! MATH answer normalization and equivalence, in the spirit of Hendrycks et al.'s `is_equiv`
//! (see RISE.md §3), extended with exact numeric equality and element-wise tuples, intervals,
//! unions and matrices.
//!
//! Every pass is linear in the input; structural comparison recurses at most
//! [`MAX_DEPTH`] levels, so a hostile 1 MB answer costs a few linear passes.
use crate::number::parse_number;

/// How deep tuples/intervals/matrices are compared element-wise before falling back to text.
const MAX_DEPTH: usize = 4;

const NO_MATCH: usize = usize::MAX;

/// For each `{` in `b`, the index of its matching `}` (or `NO_MATCH`); escaped `\{` `\}` are
/// literal characters, not groups.
fn brace_matches(b: &[u8]) -> Vec<usize> {
    let mut m = vec![NO_MATCH; b.len()];
    let mut stack = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' if matches!(b.get(i + 1), Some(b'{' | b'}' | b'\\')) => {
                i += 2;
                continue;
            }
            b'{' => stack.push(i),
            b'}' => {
                if let Some(o) = stack.pop() {
                    m[o] = i;
                }
            }
            _ => {}
        }
        i += 1;
    }
    m
}

/// Whether `b[i..]` starts with the control word `word` (not a prefix of a longer one).
pub(crate) fn control_word_at(b: &[u8], i: usize, word: &[u8]) -> bool {
    b[i..].starts_with(word)
        && !b
            .get(i + word.len())
            .is_some_and(|c| c.is_ascii_alphabetic())
}

/// Removes every occurrence of the control words in `words` (e.g. `\left`), keeping longer
/// words such as `\leftarrow` intact.
fn remove_control_words(s: &str, words: &[&str]) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    'outer: while i < b.len() {
        if b[i] == b'\\' {
            for w in words {
                if control_word_at(b, i, w.as_bytes()) {
                    i += w.len();
                    continue 'outer;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Replaces `\text{X}`-like wrappers by `X` (also `\mbox`, `\textbf`, `\mathrm`, ...).
pub(crate) fn unwrap_text_commands(s: &str) -> String {
    const WRAPPERS: [&str; 8] = [
        "\\text", "\\textbf", "\\textit", "\\textrm", "\\mathrm", "\\mathbf", "\\mbox", "\\mathit",
    ];
    let b = s.as_bytes();
    let m = brace_matches(b);
    let mut drop_at = vec![false; b.len()];
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    'outer: while i < b.len() {
        if drop_at[i] {
            i += 1;
            continue;
        }
        if b[i] == b'\\' {
            for w in WRAPPERS {
                let after = i + w.len();
                if control_word_at(b, i, w.as_bytes())
                    && b.get(after) == Some(&b'{')
                    && m[after] != NO_MATCH
                {
                    drop_at[m[after]] = true;
                    i = after + 1;
                    continue 'outer;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Drops a trailing unit such as `5.4 \text{ cents}` or `864 \mbox{ inches}^2`: a final
/// `\text{…}`/`\mbox{…}` of letters, after a non-empty value.
fn drop_trailing_units(s: &str) -> String {
    let b = s.as_bytes();
    let m = brace_matches(b);
    let mut cut = None;
    for w in ["\\text{", "\\mbox{"] {
        if let Some(at) = s.rfind(w) {
            let open = at + w.len() - 1;
            let close = m[open];
            if close == NO_MATCH {
                continue;
            }
            let inner = &s[open + 1..close];
            let tail = s[close + 1..].trim();
            let tail_ok = matches!(tail, "" | "." | "^2" | "^3" | "^{2}" | "^{3}");
            let unit_like = !inner.trim().is_empty()
                && inner
                    .chars()
                    .all(|c| c.is_alphabetic() || c == ' ' || c == '.');
            if tail_ok && unit_like && !s[..at].trim().is_empty() {
                cut = Some(cut.map_or(at, |c: usize| c.min(at)));
            }
        }
    }
    match cut {
        Some(at) => s[..at].trim_end().to_string(),
        None => s.to_string(),
    }
}

/// Wraps single-token arguments of `\frac` and `\sqrt` in braces: `\frac12` → `\frac{1}{2}`,
/// `\frac\pi2` → `\frac{\pi}{2}`, `\sqrt3` → `\sqrt{3}`. Input has no spaces.
fn brace_arguments(s: &str) -> String {
    const FIRST: u8 = 1; // the first argument of \frac starts here
    const PLAIN: u8 = 2; // the last argument of \frac or \sqrt starts here
    let b = s.as_bytes();
    let m = brace_matches(b);
    let mut state = vec![0u8; b.len() + 1];
    let mut out = Vec::with_capacity(b.len() + 8);
    let mut i = 0;
    while i < b.len() {
        let st = std::mem::take(&mut state[i]);
        if st != 0 && b[i] == b'{' {
            // A braced argument is kept; the scan continues inside it so nested
            // `\frac12` get fixed too. The second argument of `\frac` follows its close.
            if st == FIRST && m[i] != NO_MATCH {
                state[m[i] + 1] = PLAIN;
            }
        } else if st != 0 && b[i] != b'}' {
            let end = token_end(s, i);
            out.push(b'{');
            out.extend_from_slice(&b[i..end]);
            out.push(b'}');
            if st == FIRST {
                state[end] = PLAIN;
            }
            i = end;
            continue;
        }
        if b[i] == b'\\' && control_word_at(b, i, b"\\frac") {
            out.extend_from_slice(b"\\frac");
            i += 5;
            state[i] = FIRST;
            continue;
        }
        if b[i] == b'\\' && control_word_at(b, i, b"\\sqrt") && !matches!(b.get(i + 5), Some(b'['))
        {
            out.extend_from_slice(b"\\sqrt");
            i += 5;
            state[i] = PLAIN;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// End of one token at `i`: a control word (`\pi`), a control symbol (`\{`), or one character.
fn token_end(s: &str, i: usize) -> usize {
    let b = s.as_bytes();
    if b[i] == b'\\' {
        let mut j = i + 1;
        while j < b.len() && b[j].is_ascii_alphabetic() {
            j += 1;
        }
        if j == i + 1 {
            // A control symbol (`\{`, `\,`, or `\é` in garbage input): one whole character.
            j += s[j..].chars().next().map_or(0, char::len_utf8);
        }
        j
    } else {
        i + s[i..].chars().next().map_or(1, char::len_utf8)
    }
}

/// `x^{2}` → `x^2` and `a_{n}` → `a_n` for one-character groups.
fn unbrace_single_scripts(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if (b[i] == b'^' || b[i] == b'_')
            && b.get(i + 1) == Some(&b'{')
            && b.get(i + 3) == Some(&b'}')
            && b.get(i + 2).is_some_and(|c| c.is_ascii_alphanumeric())
        {
            out.push(b[i]);
            out.push(b[i + 2]);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalizes a MATH answer string for comparison (see the module docs for the rules).
pub(crate) fn normalize(s: &str) -> String {
    let mut s = s.trim().replace('\u{2212}', "-");
    for (from, to) in [
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
        ("\\cfrac", "\\frac"),
        ("^{\\circ}", ""),
        ("^\\circ", ""),
        ("\u{00b0}", ""),
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("{,}", ","),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    s = remove_control_words(
        &s,
        &["\\left", "\\right", "\\displaystyle", "\\circ", "\\degree"],
    );
    s = drop_trailing_units(&s);
    s = unwrap_text_commands(&s);
    s = remove_spacing_commands(&s);
    s.retain(|c| !c.is_whitespace() && c != '~');
    s = strip_variable_prefix(&s);
    s = brace_arguments(&s);
    s = unbrace_single_scripts(&s);
    while s.ends_with('.') {
        s.pop();
    }
    if s.starts_with('.') {
        s.insert(0, '0');
    }
    for (from, to) in [
        ("{.", "{0."),
        (",.", ",0."),
        ("(.", "(0."),
        ("[.", "[0."),
        ("-.", "-0."),
    ] {
        if s.contains(from) {
            s = s.replace(from, to);
        }
    }
    // Multiple choice: `(C)`, `\text{(C)}` and `C` are the same answer.
    let b = s.as_bytes();
    if b.len() == 3 && b[0] == b'(' && b[2] == b')' && b[1].is_ascii_uppercase() {
        s = (b[1] as char).to_string();
    }
    s
}

/// Removes LaTeX spacing commands `\ `, `\,`, `\!`, `\;`, `\:` but not the `\\` row break
/// (a plain `replace("\\ ", "")` would eat half of `\\ ` in a matrix).
fn remove_spacing_commands(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            match b.get(i + 1) {
                Some(b'\\') => {
                    out.extend_from_slice(b"\\\\");
                    i += 2;
                    continue;
                }
                Some(b' ' | b',' | b'!' | b';' | b':') => {
                    i += 2;
                    continue;
                }
                _ => {}
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `x=5` → `5`, `y=2x+3` → `2x+3`, `x\in[-2,7]` → `[-2,7]`: a short variable on the left is
/// naming, not content. Longer left sides (`5x-7y+11z+4=0`) are kept.
fn strip_variable_prefix(s: &str) -> String {
    if let Some((lhs, rhs)) = s.split_once('=') {
        if !rhs.contains('=') && !lhs.is_empty() && lhs.chars().count() <= 2 && !rhs.is_empty() {
            return rhs.to_string();
        }
    }
    if let Some(pos) = s.find("\\in") {
        let lhs = &s[..pos];
        let after = &s[pos + 3..];
        let is_word = after
            .as_bytes()
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic());
        if !is_word
            && !lhs.is_empty()
            && lhs.len() <= 2
            && lhs.chars().all(|c| c.is_ascii_alphabetic())
        {
            return after.to_string();
        }
    }
    s.to_string()
}

/// Splits at `sep` where no bracket of any kind is open.
fn split_top<'a>(s: &'a str, sep: &str) -> Vec<&'a str> {
    let b = s.as_bytes();
    let sb = sep.as_bytes();
    let mut parts = Vec::new();
    let mut depth: i64 = 0;
    let mut start = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            _ => {}
        }
        if depth == 0 && b[i..].starts_with(sb) {
            parts.push(&s[start..i]);
            i += sb.len();
            start = i;
            continue;
        }
        i += 1;
    }
    parts.push(&s[start..]);
    parts
}

/// A tuple, interval or set: (opening bracket, items, closing bracket), when the first bracket
/// closes exactly at the end (`(a+5)(b+2)` is not one).
fn bracketed(s: &str) -> Option<(&str, Vec<&str>, &str)> {
    let (open, body_start) = if s.starts_with("\\{") {
        ("\\{", 2)
    } else if s.starts_with('(') || s.starts_with('[') {
        (&s[..1], 1)
    } else {
        return None;
    };
    let (close, body_end) = if s.ends_with("\\}") && s.len() >= body_start + 2 {
        ("\\}", s.len() - 2)
    } else if (s.ends_with(')') || s.ends_with(']')) && s.len() > body_start {
        (&s[s.len() - 1..], s.len() - 1)
    } else {
        return None;
    };
    let body = &s[body_start..body_end];
    // The body must be balanced on its own, never closing the outer bracket early.
    let mut depth: i64 = 0;
    for c in body.bytes() {
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                depth -= 1;
                if depth < 0 {
                    return None;
                }
            }
            _ => {}
        }
    }
    if depth != 0 {
        return None;
    }
    Some((open, split_top(body, ","), close))
}

/// `\begin{pmatrix}a\\b\end{pmatrix}` → ("pmatrix", rows of cells).
fn matrix(s: &str) -> Option<(&str, Vec<Vec<&str>>)> {
    let rest = s.strip_prefix("\\begin{")?;
    let (env, body) = rest.split_once('}')?;
    if !env.ends_with("matrix") {
        return None;
    }
    let body = body.strip_suffix(&format!("\\end{{{env}}}"))?;
    let rows = split_top(body, "\\\\")
        .into_iter()
        .filter(|r| !r.is_empty())
        .map(|r| split_top(r, "&"))
        .collect();
    Some((env, rows))
}

/// Whether two normalized answers are equivalent.
pub(crate) fn equivalent_normalized(a: &str, b: &str, depth: usize) -> bool {
    if a == b {
        return true;
    }
    if let (Some(x), Some(y)) = (parse_number(a), parse_number(b)) {
        return x == y;
    }
    if depth >= MAX_DEPTH {
        return false;
    }
    let all_equiv = |xs: &[&str], ys: &[&str]| {
        xs.len() == ys.len()
            && xs
                .iter()
                .zip(ys)
                .all(|(x, y)| equivalent_normalized(x, y, depth + 1))
    };
    let (ua, ub) = (split_top(a, "\\cup"), split_top(b, "\\cup"));
    if ua.len() > 1 || ub.len() > 1 {
        return all_equiv(&ua, &ub);
    }
    if let (Some((oa, ia, ca)), Some((ob, ib, cb))) = (bracketed(a), bracketed(b)) {
        return oa == ob && ca == cb && all_equiv(&ia, &ib);
    }
    if let (Some((ea, ra)), Some((eb, rb))) = (matrix(a), matrix(b)) {
        return ea == eb
            && ra.len() == rb.len()
            && ra.iter().zip(&rb).all(|(x, y)| all_equiv(x, y));
    }
    let (la, lb) = (split_top(a, ","), split_top(b, ","));
    if la.len() > 1 && lb.len() > 1 {
        return all_equiv(&la, &lb);
    }
    false
}

/// Whether two raw MATH answers are equivalent after normalization.
pub(crate) fn equivalent(a: &str, b: &str) -> bool {
    a.trim() == b.trim() || equivalent_normalized(&normalize(a), &normalize(b), 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalization_rules() {
        assert_eq!(
            normalize(r"\left( 3, \frac{\pi}{2} \right)"),
            r"(3,\frac{\pi}{2})"
        );
        assert_eq!(normalize(r"\dfrac{17}{50}"), r"\frac{17}{50}");
        assert_eq!(normalize(r"\frac 59"), r"\frac{5}{9}");
        assert_eq!(normalize(r"\frac{270}7\text{ degrees}"), r"\frac{270}{7}");
        assert_eq!(normalize(r"864 \mbox{ inches}^2"), "864");
        assert_eq!(normalize(r"\text{(C)}"), "C");
        assert_eq!(normalize(r"x \in [-2,7]"), "[-2,7]");
        assert_eq!(normalize(r"10,\!080"), "10,080");
        assert_eq!(normalize(r"\$32,\!348"), "32,348");
        assert_eq!(normalize(r"145^\circ"), "145");
        assert_eq!(normalize(r"11\sqrt2"), r"11\sqrt{2}");
        assert_eq!(normalize(r"\frac{\frac12}3"), r"\frac{\frac{1}{2}}{3}");
        assert_eq!(normalize(r"\text{Evelyn}"), "Evelyn");
        assert_eq!(normalize(r"x^{2}+1"), "x^2+1");
    }

    #[test]
    fn garbage_control_symbols_stay_on_char_boundaries() {
        // Found by the property test: `\é` once sliced through the middle of `é`.
        assert_eq!(normalize("\\frac\\é9"), "\\frac{\\é}{9}");
    }

    #[test]
    fn structures() {
        assert!(equivalent(
            r"\left[ \frac{\pi^2}{8}, \frac{5 \pi^2}{4} \right]",
            r"[\frac{\pi^2}8,\frac{5\pi^2}{4}]"
        ));
        assert!(!equivalent("(3,4]", "(3,4)"));
        assert!(!equivalent("(1,2)", "(2,1)"));
        assert!(equivalent("(0,9) \\cup (9,36)", "(0,9)\\cup(9,36.0)"));
        assert!(equivalent(
            r"\begin{pmatrix} -1/3 \\ 2/3 \\ 5/3 \end{pmatrix}",
            r"\begin{pmatrix} -\frac{1}{3} \\ \frac{2}{3} \\ \frac53 \end{pmatrix}"
        ));
        assert!(!equivalent("(a+5)(b+2)", "(a+5)(b+3)"));
        assert!(equivalent("1,-2", "1, -2"));
    }
}
