//! Relabel selection (RISE.md §4): best-of-N by reward, and the degenerate-sample filter.
/// The release's degenerate-sample filter (rise-data's): any word repeated more than 150 times,
/// or any whitespace-separated "word" longer than 300 characters.
pub use rise_data::conversation::is_degenerate;

#[cfg(test)]
const MAX_WORD_REPEATS: usize = 150;
#[cfg(test)]
const MAX_WORD_CHARS: usize = 300;

/// Picks the best candidate by reward: the highest reward wins, ties go to the earliest candidate,
/// and degenerate responses are skipped. Returns `None` when there is no non-degenerate candidate.
///
/// `candidates` yields `(response, reward)`; NaN rewards never win.
pub fn best_of_n<'a, I>(candidates: I) -> Option<usize>
where
    I: IntoIterator<Item = (&'a str, f64)>,
{
    let mut best: Option<(usize, f64)> = None;
    for (i, (response, reward)) in candidates.into_iter().enumerate() {
        if reward.is_nan() || is_degenerate(response) {
            continue;
        }
        // Strictly greater: the first of equal rewards stays.
        if best.is_none_or(|(_, r)| reward > r) {
            best = Some((i, reward));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn highest_reward_wins_and_ties_go_to_the_first() {
        let c = [("a", 0.0), ("b", 1.0), ("c", 1.0), ("d", -1.0)];
        assert_eq!(best_of_n(c.iter().map(|(s, r)| (*s, *r))), Some(1));
        let all_wrong = [("a", 0.0), ("b", 0.0)];
        assert_eq!(best_of_n(all_wrong.iter().map(|(s, r)| (*s, *r))), Some(0));
    }

    #[test]
    fn degenerate_and_nan_candidates_are_skipped() {
        let looped = "the ".repeat(MAX_WORD_REPEATS + 1);
        let c = [(looped.as_str(), 1.0), ("ok", f64::NAN), ("fine", 0.0)];
        assert_eq!(best_of_n(c.iter().map(|(s, r)| (*s, *r))), Some(2));
        let only_bad = [(looped.as_str(), 1.0)];
        assert_eq!(best_of_n(only_bad.iter().map(|(s, r)| (*s, *r))), None);
        assert_eq!(best_of_n(std::iter::empty()), None);
    }

    #[test]
    fn degenerate_thresholds_are_exclusive() {
        assert!(!is_degenerate(&"x ".repeat(MAX_WORD_REPEATS)));
        assert!(is_degenerate(&"x ".repeat(MAX_WORD_REPEATS + 1)));
        assert!(!is_degenerate(&"y".repeat(MAX_WORD_CHARS)));
        assert!(is_degenerate(&"y".repeat(MAX_WORD_CHARS + 1)));
        assert!(!is_degenerate("step 1: 3 + 4 = 7. \\boxed{7}"));
    }
}
