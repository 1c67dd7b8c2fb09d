//! Kubernetes resource quantities (`500m`, `1.5Gi`, `2e3`): parsing and comparison.

use std::cmp::Ordering;

/// A parsed quantity, exact: `nanos / 10^9` units (cores or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}` is not a Kubernetes quantity")]
pub struct QuantityError {
    /// The text as written.
    pub text: String,
}

/// What a quantity looks like, for the `expected` part of a diagnostic.
pub const QUANTITY_EXPECTED: &str =
    "a number with an optional suffix: m (milli), k, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024), e.g. `500m`, `512Mi`, `1.5Gi`";

impl Quantity {
    /// Parses Kubernetes' quantity grammar: sign, decimal number, then a binary-SI, decimal-SI or
    /// exponent suffix.
    pub fn parse(text: &str) -> Result<Self, QuantityError> {
        let err = || QuantityError {
            text: text.to_string(),
        };
        let s = text.trim();
        if s.is_empty() || s != text {
            return Err(err());
        }
        let (negative, s) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        let num_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (num, suffix) = s.split_at(num_end);
        if num.is_empty() || num == "." || num.matches('.').count() > 1 {
            return Err(err());
        }
        let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
        // nanos = number * 10^9 * multiplier; the fraction is kept exactly up to 9 digits.
        let (mul_num, mul_den): (i128, i128) = match suffix {
            "" => (1, 1),
            "n" => (1, 1_000_000_000),
            "u" => (1, 1_000_000),
            "m" => (1, 1000),
            "k" => (1000, 1),
            "M" => (1_000_000, 1),
            "G" => (1_000_000_000, 1),
            "T" => (1_000_000_000_000, 1),
            "P" => (1_000_000_000_000_000, 1),
            "E" => (1_000_000_000_000_000_000, 1),
            "Ki" => (1 << 10, 1),
            "Mi" => (1 << 20, 1),
            "Gi" => (1 << 30, 1),
            "Ti" => (1 << 40, 1),
            "Pi" => (1 << 50, 1),
            "Ei" => (1 << 60, 1),
            e if e.starts_with(['e', 'E']) => {
                let exp: i32 = e[1..].parse().map_err(|_| err())?;
                if !(-9..=18).contains(&exp) {
                    return Err(err());
                }
                if exp >= 0 {
                    (10i128.pow(exp as u32), 1)
                } else {
                    (1, 10i128.pow((-exp) as u32))
                }
            }
            _ => return Err(err()),
        };
        if frac_part.len() > 9 || int_part.len() > 19 {
            return Err(err());
        }
        let int: i128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| err())?
        };
        let frac: i128 = if frac_part.is_empty() {
            0
        } else {
            let padded = format!("{frac_part:0<9}");
            padded.parse().map_err(|_| err())?
        };
        let base = int
            .checked_mul(1_000_000_000)
            .and_then(|v| v.checked_add(frac))
            .ok_or_else(err)?;
        let nanos = base.checked_mul(mul_num).ok_or_else(err)? / mul_den;
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    /// Whether the quantity is below zero.
    pub fn is_negative(&self) -> bool {
        self.nanos < 0
    }

    /// Whether the quantity is exactly zero.
    pub fn is_zero(&self) -> bool {
        self.nanos == 0
    }

    /// The value as a float in base units (cores or bytes), for display and arithmetic.
    pub fn as_f64(&self) -> f64 {
        self.nanos as f64 / 1e9
    }

    /// Compares two quantities exactly.
    pub fn compare(&self, other: &Self) -> Ordering {
        self.nanos.cmp(&other.nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity::parse(s).unwrap()
    }

    #[test]
    fn accepts_kubernetes_forms() {
        assert_eq!(q("500m"), q("0.5"));
        assert_eq!(q("1Gi"), q("1024Mi"));
        assert_eq!(q("1k"), q("1e3"));
        assert_eq!(q("1.5Gi").as_f64(), 1.5 * 1024.0 * 1024.0 * 1024.0);
        assert_eq!(q(".5"), q("500m"));
        assert!(q("-1").is_negative());
        assert!(q("0").is_zero());
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        for bad in [
            "512MB", "0.5cores", "", " 1", "1 Gi", "Gi", "1.2.3", "1mi", "1GB", "abc", "1e99",
        ] {
            assert!(Quantity::parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn orders_across_suffixes() {
        assert!(q("600m") > q("0.5"));
        assert!(q("256Mi") < q("512Mi"));
        assert!(q("1G") < q("1Gi"));
    }
}
