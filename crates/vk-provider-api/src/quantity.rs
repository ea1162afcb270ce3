//! Kubernetes resource quantities (`250m`, `1.5Gi`, `2e3`) as exact integers, and the
//! downward-API conversions a kubelet applies to them (`resourceFieldRef` with a divisor).
//!
//! Values are kept in nano-units in an `i128`, which holds every quantity the API server accepts
//! (at most 2^63 - 1 units) without rounding.

use std::fmt;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

const NANO: i128 = 1_000_000_000;

/// A parsed quantity, in nano-units (`1` = 1_000_000_000, `1m` = 1_000_000).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Amount {
    nanos: i128,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid quantity {input:?}: {why}")]
pub struct QuantityError {
    input: String,
    why: &'static str,
}

impl Amount {
    pub const ZERO: Amount = Amount { nanos: 0 };

    pub fn from_units(units: i64) -> Self {
        Self {
            nanos: i128::from(units) * NANO,
        }
    }

    pub fn parse(input: &str) -> Result<Self, QuantityError> {
        let err = |why| QuantityError {
            input: input.to_string(),
            why,
        };
        let s = input.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let number_end = s
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(s.len());
        let (number, suffix) = s.split_at(number_end);
        if number.is_empty() || number == "." {
            return Err(err("no number"));
        }
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if frac_part.contains('.') {
            return Err(err("more than one decimal point"));
        }
        // mantissa = digits / 10^frac_len
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 30 {
            return Err(err("too many digits"));
        }
        let mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| err("bad digits"))?
        };
        let frac_len = i32::try_from(frac_part.len()).map_err(|_| err("too many digits"))?;
        // scale = multiplier of the suffix, as (numerator, power of ten)
        let (factor, exp10): (i128, i32) = match suffix {
            "" => (1, 0),
            "n" => (1, -9),
            "u" => (1, -6),
            "m" => (1, -3),
            "k" => (1, 3),
            "M" => (1, 6),
            "G" => (1, 9),
            "T" => (1, 12),
            "P" => (1, 15),
            "E" => (1, 18),
            "Ki" => (1 << 10, 0),
            "Mi" => (1 << 20, 0),
            "Gi" => (1 << 30, 0),
            "Ti" => (1 << 40, 0),
            "Pi" => (1 << 50, 0),
            "Ei" => (1 << 60, 0),
            other => {
                let exp = other
                    .strip_prefix(['e', 'E'])
                    .ok_or_else(|| err("unknown suffix"))?;
                let exp: i32 = exp.parse().map_err(|_| err("bad exponent"))?;
                if !(-30..=30).contains(&exp) {
                    return Err(err("exponent out of range"));
                }
                (1, exp)
            }
        };
        // nanos = mantissa * factor * 10^(exp10 - frac_len + 9), rounded up (as the API server
        // rounds sub-nano precision up).
        let shift = exp10 - frac_len + 9;
        let base = mantissa
            .checked_mul(factor)
            .ok_or_else(|| err("too large"))?;
        let nanos = if shift >= 0 {
            let p = 10i128
                .checked_pow(shift.unsigned_abs())
                .ok_or_else(|| err("too large"))?;
            base.checked_mul(p).ok_or_else(|| err("too large"))?
        } else {
            let p = 10i128
                .checked_pow(shift.unsigned_abs())
                .ok_or_else(|| err("too small"))?;
            ceil_div(base, p)
        };
        if nanos > i128::from(i64::MAX) * NANO {
            return Err(err("too large"));
        }
        Ok(Self {
            nanos: if negative { -nanos } else { nanos },
        })
    }

    pub fn of(q: &Quantity) -> Result<Self, QuantityError> {
        Self::parse(&q.0)
    }

    /// `self - other`, at least zero (what is left of a quota).
    pub fn saturating_sub(self, other: Amount) -> Amount {
        Amount {
            nanos: (self.nanos - other.nanos).max(0),
        }
    }

    pub fn is_zero(self) -> bool {
        self.nanos == 0
    }

    /// Whole units, rounded up (Kubernetes' `Quantity.Value()`).
    pub fn value(self) -> i128 {
        ceil_div(self.nanos, NANO)
    }

    /// Thousandths, rounded up (Kubernetes' `Quantity.MilliValue()`).
    pub fn milli_value(self) -> i128 {
        ceil_div(self.nanos, NANO / 1000)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            write!(f, "{}", self.nanos / NANO)
        } else if self.nanos % (NANO / 1000) == 0 {
            write!(f, "{}m", self.nanos / (NANO / 1000))
        } else {
            write!(f, "{}n", self.nanos)
        }
    }
}

fn ceil_div(a: i128, b: i128) -> i128 {
    let q = a / b;
    if a % b != 0 && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

/// CPU as the downward API renders it: `ceil(cpu.milli / divisor.milli)`, at least 1 when the
/// quantity is not zero (the kubelet's `convertResourceCPUToString`).
pub fn cpu_in_divisor(cpu: Amount, divisor: Amount) -> Result<String, &'static str> {
    let d = divisor.milli_value();
    if d <= 0 {
        return Err("divisor must be positive");
    }
    Ok(ceil_div(cpu.milli_value(), d).to_string())
}

/// Memory, ephemeral storage and hugepages: `ceil(value / divisor)` in whole units.
pub fn bytes_in_divisor(amount: Amount, divisor: Amount) -> Result<String, &'static str> {
    let d = divisor.value();
    if d <= 0 {
        return Err("divisor must be positive");
    }
    Ok(ceil_div(amount.value(), d).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> i128 {
        Amount::parse(s).map(|a| a.nanos).unwrap_or(i128::MIN)
    }

    #[test]
    fn saturating_sub_stops_at_zero() {
        let a = |s| Amount::parse(s).unwrap_or(Amount::ZERO);
        assert_eq!(a("2").saturating_sub(a("500m")), a("1500m"));
        assert_eq!(a("1").saturating_sub(a("2")), Amount::ZERO);
    }

    #[test]
    fn parses_every_suffix_family() {
        let cases: &[(&str, i128)] = &[
            ("1", NANO),
            ("0", 0),
            ("250m", 250_000_000),
            ("1.5", 1_500_000_000),
            ("0.1", 100_000_000),
            (".5", 500_000_000),
            ("100n", 100),
            ("3u", 3000),
            ("2k", 2000 * NANO),
            ("1M", 1_000_000 * NANO),
            ("1Ki", 1024 * NANO),
            ("1.5Gi", 1_610_612_736 * NANO),
            ("128Mi", 134_217_728 * NANO),
            ("1e3", 1000 * NANO),
            ("1E-3", 1_000_000),
            ("-2", -2 * NANO),
            ("+7", 7 * NANO),
        ];
        for (input, want) in cases {
            assert_eq!(n(input), *want, "{input}");
        }
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "m", "1.2.3", "1Qi", "1e", "1e99", "abc", "."] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn sub_nano_precision_rounds_up() {
        assert_eq!(n("0.1n"), 1);
        assert_eq!(n("1e-10"), 1);
    }

    #[test]
    fn value_and_milli_value_round_up() {
        let a = Amount::parse("1500m").unwrap_or_default();
        assert_eq!(a.value(), 2);
        assert_eq!(a.milli_value(), 1500);
        let tiny = Amount::parse("1n").unwrap_or_default();
        assert_eq!(tiny.milli_value(), 1);
        assert_eq!(tiny.value(), 1);
    }

    #[test]
    fn downward_api_conversions_match_the_kubelet() {
        let p = |s: &str| Amount::parse(s).unwrap_or_default();
        // (quantity, divisor, cpu result)
        let cpu: &[(&str, &str, &str)] = &[
            ("250m", "1", "1"),
            ("250m", "1m", "250"),
            ("2", "1", "2"),
            ("1500m", "1", "2"),
            ("0", "1", "0"),
            ("1", "1m", "1000"),
        ];
        for (q, d, want) in cpu {
            assert_eq!(cpu_in_divisor(p(q), p(d)).as_deref(), Ok(*want), "{q}/{d}");
        }
        let mem: &[(&str, &str, &str)] = &[
            ("128Mi", "1", "134217728"),
            ("128Mi", "1Mi", "128"),
            ("128Mi", "1Gi", "1"),
            ("1G", "1Mi", "954"),
            ("1Gi", "1k", "1073742"),
            ("0", "1Mi", "0"),
        ];
        for (q, d, want) in mem {
            assert_eq!(
                bytes_in_divisor(p(q), p(d)).as_deref(),
                Ok(*want),
                "{q}/{d}"
            );
        }
        assert!(cpu_in_divisor(p("1"), p("0")).is_err());
        assert!(bytes_in_divisor(p("1"), p("0")).is_err());
    }

    #[test]
    fn display_is_canonical_enough_for_messages() {
        assert_eq!(Amount::parse("2").unwrap_or_default().to_string(), "2");
        assert_eq!(
            Amount::parse("250m").unwrap_or_default().to_string(),
            "250m"
        );
        assert_eq!(Amount::parse("5n").unwrap_or_default().to_string(), "5n");
    }
}

/// The parser against arbitrary text and against quantities made from their parts.
#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    const SUFFIXES: [(&str, i128); 12] = [
        ("", 1_000_000_000),
        ("m", 1_000_000),
        ("k", 1_000_000_000_000),
        ("M", 1_000_000_000_000_000),
        ("G", 1_000_000_000_000_000_000),
        ("Ki", 1024 * 1_000_000_000),
        ("Mi", 1024 * 1024 * 1_000_000_000),
        ("Gi", 1024 * 1024 * 1024 * 1_000_000_000),
        ("Ti", 1024 * 1024 * 1024 * 1024 * 1_000_000_000),
        ("n", 1),
        ("u", 1000),
        ("e3", 1_000_000_000_000),
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn never_panics(input in "\\PC{0,64}") {
            let _ = Amount::parse(&input).map(|a| (a.value(), a.milli_value(), a.to_string()));
        }

        #[test]
        fn integer_quantities_are_exact(n in 0i64..1_000_000, s in 0usize..SUFFIXES.len()) {
            let (suffix, nanos) = SUFFIXES[s];
            let a = Amount::parse(&format!("{n}{suffix}")).map_err(|e| TestCaseError::fail(e.to_string()))?;
            prop_assert_eq!(a.nanos, i128::from(n) * nanos);
            // What it prints parses back to the same amount.
            prop_assert_eq!(Amount::parse(&a.to_string()).ok(), Some(a));
        }

        #[test]
        fn order_and_subtraction_agree(a in 0i64..1_000_000, b in 0i64..1_000_000) {
            let (x, y) = (Amount::from_units(a), Amount::from_units(b));
            prop_assert_eq!(x < y, a < b);
            prop_assert_eq!(x.saturating_sub(y), Amount::from_units((a - b).max(0)));
        }
    }
}
