//! Token counts as upstreams report them: JSON numbers (OpenAI, GigaChat)
//! or int64s written as strings (YandexGPT).
//!
//! Design choice: a count is read saturating, never refused and never
//! wrapped. An upstream that reports `usize::MAX`, a number past 64 bits or
//! a negative count is wrong or hostile, but its text is still the answer the
//! client asked for: failing the answer over a bookkeeping field would hand
//! the upstream a way to break every request, and wrapping would bill
//! nonsense. The largest count saturates to `usize::MAX`, so sums downstream
//! (`total_tokens`, costs) must saturate too.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// `deserialize_with` for a token count: a number or a decimal string,
/// saturated into `0..=usize::MAX`; `null` is 0.
pub(super) fn saturating_count<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    d.deserialize_any(CountVisitor)
}

struct CountVisitor;

impl Visitor<'_> for CountVisitor {
    type Value = usize;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a token count (a number or a string of digits)")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<usize, E> {
        Ok(usize::try_from(v).unwrap_or(usize::MAX))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<usize, E> {
        Ok(usize::try_from(v).unwrap_or(usize::MAX))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<usize, E> {
        Ok(usize::try_from(v.max(0)).unwrap_or(usize::MAX))
    }

    fn visit_i128<E: de::Error>(self, v: i128) -> Result<usize, E> {
        Ok(usize::try_from(v.max(0)).unwrap_or(usize::MAX))
    }

    /// serde_json reads an integer past 64 bits as a float.
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<usize, E> {
        // `as` saturates, and maps NaN to 0.
        Ok(v.max(0.0) as usize)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<usize, E> {
        let digits = v.trim();
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(E::custom(format!("token count `{v}` is not a number")));
        }
        Ok(digits.bytes().fold(0usize, |n, b| {
            n.saturating_mul(10).saturating_add(usize::from(b - b'0'))
        }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<usize, E> {
        Ok(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<usize, E> {
        Ok(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Counted {
        #[serde(default, deserialize_with = "saturating_count")]
        n: usize,
    }

    fn read(json: &str) -> usize {
        serde_json::from_str::<Counted>(json).unwrap().n
    }

    #[test]
    fn ordinary_counts_read_as_given() {
        assert_eq!(read(r#"{"n": 42}"#), 42);
        assert_eq!(read(r#"{"n": "42"}"#), 42);
        assert_eq!(read(r#"{}"#), 0);
        assert_eq!(read(r#"{"n": null}"#), 0);
    }

    #[test]
    fn huge_counts_saturate_instead_of_failing_or_wrapping() {
        let max = usize::MAX;
        assert_eq!(read(&format!(r#"{{"n": {max}}}"#)), max);
        assert_eq!(
            read(r#"{"n": 340282366920938463463374607431768211455}"#),
            max
        );
        assert_eq!(read(r#"{"n": 1e300}"#), max);
        assert_eq!(
            read(r#"{"n": "99999999999999999999999999999999999999999"}"#),
            max
        );
        assert_eq!(read(r#"{"n": -5}"#), 0);
    }

    #[test]
    fn a_count_that_is_not_a_number_is_refused() {
        assert!(serde_json::from_str::<Counted>(r#"{"n": "12 tokens"}"#).is_err());
        assert!(serde_json::from_str::<Counted>(r#"{"n": "-3"}"#).is_err());
    }
}
