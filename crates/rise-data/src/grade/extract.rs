//! Answer extraction: the last `\boxed{…}`, the GSM8K `#### N` line, and the optional
//! "The answer is X" fallback. Every function here is a single left-to-right pass.

/// Returns the length of `\boxed` / `\fbox` when `b` starts with one as a whole control word.
fn box_keyword(b: &[u8]) -> Option<usize> {
    for kw in [&b"\\boxed"[..], &b"\\fbox"[..]] {
        if b.starts_with(kw) && !b.get(kw.len()).is_some_and(|c| c.is_ascii_alphabetic()) {
            return Some(kw.len());
        }
    }
    None
}

/// The content of the last complete `\boxed{…}` or `\fbox{…}` in `text`, trimmed.
///
/// Braces nest (`\boxed{\frac{1}{2}}` gives `\frac{1}{2}`); escaped braces `\{`, `\}` do not
/// count as grouping. "Last" means the box whose command starts last among those whose brace
/// closes, so `\boxed{3} … \boxed{4` (a truncated generation) still yields `3`, and nested
/// `\boxed{a \boxed{b}}` yields `b`. The space form `\boxed 5` (content up to whitespace or
/// `$`) is accepted as well. Runs in one pass, linear in `text.len()`, and never panics.
///
/// ```
/// use rise_data::extract_boxed;
/// assert_eq!(extract_boxed(r"so \boxed{\frac{1}{2}}."), Some(r"\frac{1}{2}".to_string()));
/// assert_eq!(extract_boxed("no box"), None);
/// ```
pub fn extract_boxed(text: &str) -> Option<String> {
    let b = text.as_bytes();
    // Each open brace remembers the start of the box command it opens, if any.
    let mut stack: Vec<Option<usize>> = Vec::new();
    // (command start, content start, content end) of the best box so far.
    let mut best: Option<(usize, usize, usize)> = None;
    let mut pending_box: Option<usize> = None;
    let consider = |best: &mut Option<(usize, usize, usize)>, cand: (usize, usize, usize)| {
        if best.is_none_or(|(s, _, _)| cand.0 > s) {
            *best = Some(cand);
        }
    };
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => {
                if matches!(b.get(i + 1), Some(b'{' | b'}' | b'\\')) {
                    pending_box = None;
                    i += 2;
                    continue;
                }
                if let Some(len) = box_keyword(&b[i..]) {
                    let start = i;
                    let mut j = i + len;
                    while j < b.len() && (b[j] == b' ' || b[j] == b'\t') {
                        j += 1;
                    }
                    if b.get(j) == Some(&b'{') {
                        pending_box = Some(start);
                        i = j;
                    } else if j > i + len && j < b.len() && !b[j].is_ascii_whitespace() {
                        let mut e = j;
                        while e < b.len() && !b[e].is_ascii_whitespace() && b[e] != b'$' {
                            e += 1;
                        }
                        consider(&mut best, (start, j, e));
                        pending_box = None;
                        i = e;
                    } else {
                        pending_box = None;
                        i = j;
                    }
                    continue;
                }
                pending_box = None;
                i += 1;
            }
            b'{' => {
                stack.push(pending_box.take());
                i += 1;
            }
            b'}' => {
                if let Some(Some(start)) = stack.pop() {
                    // The '{' sits right after the command (and spaces); content begins after it.
                    let open = find_open(b, start);
                    consider(&mut best, (start, open + 1, i));
                }
                i += 1;
            }
            _ => i += 1,
        }
    }
    best.map(|(_, s, e)| text[s..e].trim().to_string())
}

/// The index of the `{` that follows a box command starting at `start`.
fn find_open(b: &[u8], start: usize) -> usize {
    let mut j = start + box_keyword(&b[start..]).unwrap_or(0);
    while j < b.len() && b[j] != b'{' {
        j += 1;
    }
    j
}

/// The text after the last `####` marker (GSM8K's answer line), up to the end of that line.
pub(crate) fn after_hashes(text: &str) -> Option<&str> {
    let at = text.rfind("####")?;
    let rest = &text[at + 4..];
    let line = rest.split('\n').next().unwrap_or("");
    Some(line.trim())
}

/// The fallback answer: what follows the last "the answer is" (any case) on its line, without
/// a leading colon, surrounding `$`, or a trailing period.
pub(crate) fn answer_is(text: &str) -> Option<String> {
    const NEEDLE: &[u8] = b"the answer is";
    let b = text.as_bytes();
    if b.len() < NEEDLE.len() {
        return None;
    }
    let at = (0..=b.len() - NEEDLE.len())
        .rev()
        .find(|&i| b[i..i + NEEDLE.len()].eq_ignore_ascii_case(NEEDLE))?;
    let rest = &text[at + NEEDLE.len()..];
    let line = rest.split('\n').next().unwrap_or("").trim();
    let line = line.strip_prefix(':').unwrap_or(line).trim();
    let line = line.trim_end_matches('.').trim().trim_matches('$').trim();
    (!line.is_empty()).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_and_last() {
        assert_eq!(
            extract_boxed(r"\boxed{1} then \boxed{\frac{2}{3}}").as_deref(),
            Some(r"\frac{2}{3}")
        );
        assert_eq!(extract_boxed(r"\fbox{7}").as_deref(), Some("7"));
        assert_eq!(
            extract_boxed(r"\boxed{3} and \boxed{4").as_deref(),
            Some("3")
        );
        assert_eq!(extract_boxed(r"\boxed{a \boxed{b}}").as_deref(), Some("b"));
        assert_eq!(
            extract_boxed(r"\boxed{\{1,2\}}").as_deref(),
            Some(r"\{1,2\}")
        );
        assert_eq!(extract_boxed(r"$\boxed 5$").as_deref(), Some("5"));
        assert_eq!(extract_boxed(r"\boxedx{5}"), None);
        assert_eq!(extract_boxed(r"\boxed {12}").as_deref(), Some("12"));
        assert_eq!(extract_boxed("}}}{{{\\boxed"), None);
    }

    #[test]
    fn hashes_and_answer_is() {
        assert_eq!(after_hashes("a\n#### 2,125\n"), Some("2,125"));
        assert_eq!(answer_is("So The answer is: $18.").as_deref(), Some("18"));
        assert_eq!(answer_is("the answer is"), None);
    }
}
