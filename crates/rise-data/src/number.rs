//! Exact number parsing shared by the graders.
//!
//! Answers are compared as exact rationals: `18.0`, `18`, `2,125` vs `2125`, `\frac{1}{2}` vs
//! `0.5` must agree exactly, and no float rounding may ever flip a reward.
use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{One, Zero};

/// Longer strings are never treated as numbers: it bounds big-integer work on adversarial
/// model output (a 1 MB run of digits is not an answer anyone means).
pub(crate) const MAX_NUMBER_LEN: usize = 400;

/// Parses an unsigned decimal at `i`: `123`, `1,234,567` (strict 3-digit groups), `12.5`,
/// `.5`, `5.` (the trailing period is left unconsumed). Returns the value and the end index.
///
/// A digit run with commas that are not thousands groups (`1,2`) is ambiguous and yields `None`.
pub(crate) fn unsigned_decimal(b: &[u8], i: usize) -> Option<(BigRational, usize)> {
    let mut j = i;
    while j < b.len() && (b[j].is_ascii_digit() || b[j] == b',') {
        j += 1;
    }
    // A comma that ends the run separates list items (`1, 2`); it is not part of the number.
    while j > i && b[j - 1] == b',' {
        j -= 1;
    }
    let int_run = &b[i..j];
    if !int_run.is_empty() && int_run[0] == b',' {
        return None;
    }
    let mut digits: Vec<u8> = Vec::with_capacity(int_run.len());
    if int_run.contains(&b',') {
        let mut groups = int_run.split(|&c| c == b',');
        let first = groups.next()?;
        if first.is_empty() || first.len() > 3 {
            return None;
        }
        digits.extend_from_slice(first);
        for g in groups {
            if g.len() != 3 {
                return None;
            }
            digits.extend_from_slice(g);
        }
    } else {
        digits.extend_from_slice(int_run);
    }
    let mut frac_len = 0usize;
    if j + 1 < b.len() && b[j] == b'.' && b[j + 1].is_ascii_digit() {
        j += 1;
        while j < b.len() && b[j].is_ascii_digit() {
            digits.push(b[j]);
            frac_len += 1;
            j += 1;
        }
    }
    if digits.is_empty() || digits.len() > MAX_NUMBER_LEN {
        return None;
    }
    // Safe: `digits` holds ASCII digits only.
    let n = BigInt::parse_bytes(&digits, 10)?;
    let d = num_traits::pow(BigInt::from(10u32), frac_len);
    Some((BigRational::new(n, d), j))
}

/// Parses an optional sign (`-`, `+`) followed by an unsigned decimal.
pub(crate) fn signed_decimal(b: &[u8], i: usize) -> Option<(BigRational, usize)> {
    match b.get(i) {
        Some(b'-') => unsigned_decimal(b, i + 1).map(|(v, j)| (-v, j)),
        Some(b'+') => unsigned_decimal(b, i + 1),
        _ => unsigned_decimal(b, i),
    }
}

/// Parses `\frac{A}{B}` (also `\dfrac`, `\tfrac`, and single-digit `\frac12`) at `i`, where A and
/// B are signed decimals. Returns `None` for a zero denominator.
pub(crate) fn latex_frac(b: &[u8], i: usize) -> Option<(BigRational, usize)> {
    let rest = &b[i..];
    let skip = if rest.starts_with(b"\\frac") {
        5
    } else if rest.starts_with(b"\\dfrac") || rest.starts_with(b"\\tfrac") {
        6
    } else {
        return None;
    };
    let (num, j) = frac_arg(b, i + skip)?;
    let (den, k) = frac_arg(b, j)?;
    if den.is_zero() {
        return None;
    }
    Some((num / den, k))
}

/// One `\frac` argument: `{signed decimal}` or a single digit.
fn frac_arg(b: &[u8], mut i: usize) -> Option<(BigRational, usize)> {
    while i < b.len() && b[i] == b' ' {
        i += 1;
    }
    match b.get(i) {
        Some(b'{') => {
            let mut j = i + 1;
            while j < b.len() && b[j] == b' ' {
                j += 1;
            }
            let (v, mut k) = signed_decimal(b, j)?;
            while k < b.len() && b[k] == b' ' {
                k += 1;
            }
            (b.get(k) == Some(&b'}')).then_some((v, k + 1))
        }
        Some(c) if c.is_ascii_digit() => {
            Some((BigRational::from_integer(BigInt::from(c - b'0')), i + 1))
        }
        _ => None,
    }
}

/// Parses a whole (already space-free) string as a number: a signed decimal, `A/B`,
/// `\frac{A}{B}`, `-\frac{A}{B}`, or a mixed number `2\frac{1}{4}` (= 9/4).
///
/// Anything else (a trailing unit, a second number, a variable) yields `None`.
pub(crate) fn parse_number(s: &str) -> Option<BigRational> {
    if s.is_empty() || s.len() > MAX_NUMBER_LEN {
        return None;
    }
    let b = s.as_bytes();
    let (neg, i) = match b[0] {
        b'-' => (true, 1),
        b'+' => (false, 1),
        _ => (false, 0),
    };
    let (v, j) = if let Some(f) = latex_frac(b, i) {
        f
    } else {
        let (whole, j) = unsigned_decimal(b, i)?;
        if j == b.len() {
            (whole, j)
        } else if b[j] == b'/' {
            let (den, k) = signed_decimal(b, j + 1)?;
            if den.is_zero() {
                return None;
            }
            (whole / den, k)
        } else if whole.is_integer() && b[j] == b'\\' {
            // Mixed number: only a non-negative proper-looking fraction directly after an integer.
            let (frac, k) = latex_frac(b, j)?;
            if frac < BigRational::zero() || frac >= BigRational::one() {
                return None;
            }
            (whole + frac, k)
        } else {
            return None;
        }
    };
    if j != b.len() {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// Writes a rational as the shortest exact text: `2125`, `-0.5`, `1/3`.
pub(crate) fn canonical(r: &BigRational) -> String {
    if r.is_integer() {
        return r.to_integer().to_string();
    }
    // A terminating decimal iff the reduced denominator is 2^a 5^b.
    let mut d = r.denom().clone();
    let two = BigInt::from(2u32);
    let five = BigInt::from(5u32);
    let (mut a, mut c) = (0usize, 0usize);
    while (&d % &two).is_zero() {
        d /= &two;
        a += 1;
    }
    while (&d % &five).is_zero() {
        d /= &five;
        c += 1;
    }
    if !d.is_one() {
        return format!("{}/{}", r.numer(), r.denom());
    }
    let places = a.max(c);
    let scaled = r * BigRational::from_integer(num_traits::pow(BigInt::from(10u32), places));
    let n = scaled.to_integer();
    let neg = n < BigInt::zero();
    let digits = if neg { (-n).to_string() } else { n.to_string() };
    let padded = format!("{digits:0>width$}", width = places + 1);
    let (int, frac) = padded.split_at(padded.len() - places);
    format!("{}{int}.{frac}", if neg { "-" } else { "" })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(n: i64, d: i64) -> BigRational {
        BigRational::new(BigInt::from(n), BigInt::from(d))
    }

    #[test]
    fn parses_the_forms_answers_take() {
        assert_eq!(parse_number("2,125"), Some(q(2125, 1)));
        assert_eq!(parse_number("18.0"), Some(q(18, 1)));
        assert_eq!(parse_number(".5"), Some(q(1, 2)));
        assert_eq!(parse_number("-\\frac{3}{8}"), Some(q(-3, 8)));
        assert_eq!(parse_number("\\frac{-3}{8}"), Some(q(-3, 8)));
        assert_eq!(parse_number("\\frac43"), Some(q(4, 3)));
        assert_eq!(parse_number("9/19"), Some(q(9, 19)));
        assert_eq!(parse_number("137\\frac{1}{2}"), Some(q(275, 2)));
        assert_eq!(parse_number("10,080"), Some(q(10080, 1)));
    }

    #[test]
    fn rejects_what_is_not_one_number() {
        for s in [
            "1,2",
            "3,5,7",
            "1/0",
            "\\frac{1}{0}",
            "5x",
            "",
            "-",
            ".",
            "2\\frac{5}{4}",
            "1,-2",
        ] {
            assert_eq!(parse_number(s), None, "{s:?}");
        }
    }

    #[test]
    fn canonical_text_is_exact() {
        assert_eq!(canonical(&q(2125, 1)), "2125");
        assert_eq!(canonical(&q(-1, 2)), "-0.5");
        assert_eq!(canonical(&q(1, 3)), "1/3");
        assert_eq!(canonical(&q(3, 40)), "0.075");
        assert_eq!(canonical(&q(-3, 40)), "-0.075");
    }
}
