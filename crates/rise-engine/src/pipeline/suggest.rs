//! "Did you mean" hints for unknown names (stages, kinds, inputs, fields).

/// ` (did you mean `x`?)` when a known name is within edit distance 2.
pub fn suggest<'a>(target: &str, names: impl Iterator<Item = &'a str>) -> String {
    let mut best: Option<(usize, &str)> = None;
    for name in names {
        let d = edit_distance(target, name);
        if d <= 2 && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, name));
        }
    }
    match best {
        Some((_, name)) => format!(" (did you mean `{name}`?)"),
        None => String::new(),
    }
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggests_the_nearest_name_within_two_edits() {
        let names = ["train", "sample", "evaluate"];
        assert_eq!(
            suggest("trian", names.into_iter()),
            " (did you mean `train`?)"
        );
        assert_eq!(
            suggest("sampel", names.into_iter()),
            " (did you mean `sample`?)"
        );
        assert_eq!(suggest("report", names.into_iter()), "");
        assert_eq!(edit_distance("", "abc"), 3);
    }
}
