//! Conversions between Kubernetes quantities and the integers sizing works in (CPU millicores,
//! memory bytes), and the decimal renderings used in sizes and messages.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::resolve::quantity::Amount;

pub(super) const KIB: i64 = 1 << 10;
pub(super) const MIB: i64 = 1 << 20;
pub(super) const GIB: i64 = 1 << 30;

/// A quantity as CPU millicores, rounded up like Kubernetes' `MilliValue()`.
pub(super) fn millis_of(text: &str) -> Result<i64, String> {
    let amount = Amount::parse(text).map_err(|e| e.to_string())?;
    i64::try_from(amount.milli_value()).map_err(|_| format!("quantity {text:?} is too large"))
}

/// A quantity as whole bytes, rounded up like Kubernetes' `Value()` (so `0.2Gi` is 214748365).
pub(super) fn bytes_of(text: &str) -> Result<i64, String> {
    let amount = Amount::parse(text).map_err(|e| e.to_string())?;
    i64::try_from(amount.value()).map_err(|_| format!("quantity {text:?} is too large"))
}

/// CPU written back in the API server's own canonical forms: `2` when whole, else `500m`.
pub fn cpu_quantity(millis: i64) -> Quantity {
    if millis % 1000 == 0 {
        Quantity((millis / 1000).to_string())
    } else {
        Quantity(format!("{millis}m"))
    }
}

/// Memory written back with the largest binary suffix that is exact (`1Gi`, `1792Mi`), else
/// plain bytes, so the value reads like what a user would write and never loses precision.
pub fn memory_quantity(bytes: i64) -> Quantity {
    if bytes != 0 {
        for (suffix, unit) in [("Ti", GIB * 1024), ("Gi", GIB), ("Mi", MIB), ("Ki", KIB)] {
            if bytes % unit == 0 {
                return Quantity(format!("{}{suffix}", bytes / unit));
            }
        }
    }
    Quantity(bytes.to_string())
}

pub(super) fn ceil_div(a: i128, b: i128) -> i128 {
    if b == 0 {
        return a;
    }
    let q = a / b;
    if a % b != 0 && ((a > 0) == (b > 0)) {
        q + 1
    } else {
        q
    }
}

/// `v` rounded up to a multiple of `step` (a step of 0 or less leaves it alone).
pub(super) fn ceil_to(v: i128, step: i128) -> i128 {
    if step <= 0 {
        return v;
    }
    ceil_div(v, step) * step
}

/// Thousandths as a decimal with trailing zeros trimmed: 1500 -> "1.5", 2000 -> "2".
fn thousandths(v: i128) -> String {
    let sign = if v < 0 { "-" } else { "" };
    let v = v.unsigned_abs();
    let (whole, frac) = (v / 1000, v % 1000);
    if frac == 0 {
        format!("{sign}{whole}")
    } else {
        let frac = format!("{frac:03}");
        format!("{sign}{whole}.{}", frac.trim_end_matches('0'))
    }
}

/// Millicores as cores: 250 -> "0.25".
pub(super) fn cores(millis: impl Into<i128>) -> String {
    thousandths(millis.into())
}

/// Bytes as GiB, rounded up to thousandths: 512Mi -> "0.5", 100Mi -> "0.098".
pub(super) fn gib(bytes: impl Into<i128>) -> String {
    thousandths(ceil_div(bytes.into().saturating_mul(1000), i128::from(GIB)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cores_and_gib_render_as_trimmed_decimals() {
        let cores_cases: &[(i64, &str)] = &[
            (0, "0"),
            (250, "0.25"),
            (500, "0.5"),
            (1000, "1"),
            (1500, "1.5"),
            (37_500, "37.5"),
            (1, "0.001"),
            (-250, "-0.25"),
        ];
        for (m, want) in cores_cases {
            assert_eq!(cores(*m), *want, "{m}m");
        }
        let gib_cases: &[(i64, &str)] = &[
            (0, "0"),
            (GIB, "1"),
            (512 * MIB, "0.5"),
            (GIB + GIB / 2, "1.5"),
            // 100Mi = 0.09765625 GiB: rounded up, never down.
            (100 * MIB, "0.098"),
            (GIB + 1, "1.001"),
            (1, "0.001"),
        ];
        for (b, want) in gib_cases {
            assert_eq!(gib(*b), *want, "{b} bytes");
        }
    }

    #[test]
    fn written_quantities_are_exact_and_clean() {
        let cpu: &[(i64, &str)] = &[(500, "500m"), (2000, "2"), (250, "250m"), (0, "0")];
        for (m, want) in cpu {
            assert_eq!(cpu_quantity(*m).0, *want);
        }
        let mem: &[(i64, &str)] = &[
            (GIB, "1Gi"),
            (512 * MIB, "512Mi"),
            (1792 * MIB, "1792Mi"),
            (214_748_365, "214748365"),
            (3 * KIB, "3Ki"),
            (0, "0"),
            (2048 * GIB, "2Ti"),
        ];
        for (b, want) in mem {
            assert_eq!(memory_quantity(*b).0, *want);
        }
        // What is written parses back to the same integers.
        for b in [GIB, 1792 * MIB, 214_748_365, 3 * KIB] {
            assert_eq!(bytes_of(&memory_quantity(b).0), Ok(b));
        }
        for m in [500, 2000, 1] {
            assert_eq!(millis_of(&cpu_quantity(m).0), Ok(m));
        }
    }

    #[test]
    fn parsing_rounds_up_and_rejects_garbage() {
        assert_eq!(bytes_of("0.2Gi"), Ok(214_748_365));
        assert_eq!(millis_of("100n"), Ok(1));
        assert_eq!(millis_of("0.25"), Ok(250));
        assert!(millis_of("abc").is_err());
        assert!(bytes_of("1Qi").is_err());
        assert!(
            millis_of("9e18").is_err(),
            "9e18 cores overflows i64 millicores"
        );
    }

    #[test]
    fn ceil_helpers() {
        assert_eq!(ceil_to(100, 250), 250);
        assert_eq!(ceil_to(250, 250), 250);
        assert_eq!(ceil_to(251, 250), 500);
        assert_eq!(ceil_to(0, 250), 0);
        assert_eq!(ceil_to(7, 0), 7);
        assert_eq!(ceil_div(-1, 1000), 0);
        assert_eq!(ceil_div(5, 0), 5);
    }
}
