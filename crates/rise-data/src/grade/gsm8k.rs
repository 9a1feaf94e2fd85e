//! GSM8K-style numeric answers: one number, possibly dressed with `$`, `%`, thousands commas,
//! `\text{…}`, a trailing unit or period, or a `x = ` prefix.
use num_rational::BigRational;
use num_traits::Zero;

use super::math::{control_word_at, unwrap_text_commands};
use crate::number::{latex_frac, signed_decimal, unsigned_decimal, MAX_NUMBER_LEN};

/// Parses the single number in a GSM8K-style answer, or `None` when there is none or more than
/// one (`18 dollars and 50 cents` is ambiguous, so it never matches).
///
/// `#### 2,125` is 2125, not 2 (the official release's parser gets this wrong on 14 test
/// problems); commas must form thousands groups (`1,2` is rejected).
pub(crate) fn parse_numeric_answer(s: &str) -> Option<BigRational> {
    // Dressing is short; a huge "answer" is not one number, and this bounds the work.
    if s.len() > 8 * MAX_NUMBER_LEN {
        return None;
    }
    let mut t = unwrap_text_commands(s).replace('\u{2212}', "-");
    for (from, to) in [
        ("\\$", ""),
        ("$", ""),
        ("\\%", ""),
        ("%", ""),
        ("\\!", ""),
        ("\\,", ""),
        ("{,}", ","),
        ("\\dfrac", "\\frac"),
        ("\\tfrac", "\\frac"),
    ] {
        if t.contains(from) {
            t = t.replace(from, to);
        }
    }
    let t = match t.rsplit_once('=') {
        Some((_, rhs)) => rhs,
        None => t.as_str(),
    };
    let b = t.as_bytes();
    let start = (0..b.len()).find(|&i| {
        b[i].is_ascii_digit()
            || (b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit))
            || (b[i] == b'\\' && control_word_at(b, i, b"\\frac"))
    })?;
    let mut k = start;
    while k > 0 && b[k - 1] == b' ' {
        k -= 1;
    }
    let negative = k > 0 && b[k - 1] == b'-';
    let (value, end) = if b[start] == b'\\' {
        latex_frac(b, start)?
    } else {
        let (whole, j) = unsigned_decimal(b, start)?;
        if b.get(j) == Some(&b'/') {
            let (den, k) = signed_decimal(b, j + 1)?;
            if den.is_zero() {
                return None;
            }
            (whole / den, k)
        } else {
            (whole, j)
        }
    };
    // What follows may be a unit (`dollars`, `cm^2`, `.`), never another number.
    let rest = &b[end..];
    for (i, c) in rest.iter().enumerate() {
        if c.is_ascii_digit() {
            let exponent = i > 0
                && (rest[i - 1] == b'^' || (rest[i - 1] == b'{' && i > 1 && rest[i - 2] == b'^'));
            if !exponent {
                return None;
            }
        }
    }
    Some(if negative { -value } else { value })
}

#[cfg(test)]
mod tests {
    use super::*;
    use num_bigint::BigInt;

    fn n(v: i64) -> Option<BigRational> {
        Some(BigRational::from_integer(BigInt::from(v)))
    }

    #[test]
    fn dressed_numbers() {
        assert_eq!(parse_numeric_answer("2,125"), n(2125));
        assert_eq!(parse_numeric_answer("$18.00"), n(18));
        assert_eq!(parse_numeric_answer("\\$18"), n(18));
        assert_eq!(parse_numeric_answer("18 dollars."), n(18));
        assert_eq!(parse_numeric_answer("-$5"), n(-5));
        assert_eq!(parse_numeric_answer("x = 7"), n(7));
        assert_eq!(parse_numeric_answer("\\text{12 apples}"), n(12));
        assert_eq!(parse_numeric_answer("\\frac{36}{2}"), n(18));
        assert_eq!(parse_numeric_answer("40 m^2"), n(40));
        assert_eq!(parse_numeric_answer("18 dollars and 50 cents"), None);
        assert_eq!(parse_numeric_answer("1,2"), None);
        assert_eq!(parse_numeric_answer("eighteen"), None);
    }
}
