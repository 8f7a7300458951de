//! Quantities with units in the config: byte rates such as `"20Mbps"`, `"2.5MB"` or `"1MiB"`
//! (levels), and byte counts such as `"50GiB"` (quotas; also the CLI's `--quota`).

use serde_json::Value;

/// What a rate may look like, for messages.
const RATE_FORMS: &str = "a number of bytes per second, or a string such as \"20Mbps\" (bits), \"2.5MB\" or \"1MiB\"";

/// Bytes per second from a number (bytes per second) or a string with a unit: a decimal
/// number, optional space, then an optional SI (`k`, `M`, `G`, `T`: powers of 1000) or binary
/// (`Ki`, `Mi`, `Gi`, `Ti`: powers of 1024) prefix, then `B` for bytes or `b`/`bit` for bits,
/// then an optional `ps` or `/s`. `"20Mbps"` is 20·10⁶ bits (2.5·10⁶ bytes) per second,
/// `"2.5MB"` 2.5·10⁶ bytes, `"1MiB"` 2²⁰ bytes. 0 means unlimited.
pub(crate) fn parse_rate(value: &Value) -> Result<u64, String> {
    let bytes = match value {
        Value::Number(n) => n.as_f64().ok_or_else(|| format!("expected {RATE_FORMS}"))?,
        Value::String(s) => parse_rate_str(s).ok_or_else(|| format!("{s:?} is not a rate: expected {RATE_FORMS}"))?,
        _ => return Err(format!("expected {RATE_FORMS}")),
    };
    if !bytes.is_finite() || bytes < 0.0 {
        return Err(format!("{value} is not a rate: it must not be negative"));
    }
    if bytes >= u64::MAX as f64 {
        return Err(format!("{value} is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A quantity's decimal number and its unit (trimmed; empty when there is none).
fn split_quantity(s: &str) -> Option<(f64, &str)> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    Some((number.parse().ok()?, unit.trim_start()))
}

fn parse_rate_str(s: &str) -> Option<f64> {
    let (number, unit) = split_quantity(s)?;
    let unit = unit.strip_suffix("ps").or_else(|| unit.strip_suffix("/s")).unwrap_or(unit);
    if unit.is_empty() {
        return Some(number);
    }
    let (prefix, rest) = match unit.chars().next()? {
        'k' | 'K' => (1u32, &unit[1..]),
        'm' | 'M' => (2, &unit[1..]),
        'g' | 'G' => (3, &unit[1..]),
        't' | 'T' => (4, &unit[1..]),
        _ => (0, unit),
    };
    let (base, rest) = match rest.strip_prefix('i') {
        Some(rest) if prefix > 0 => (1024f64, rest),
        _ => (1000f64, rest),
    };
    let per_unit = match rest {
        "B" => 1.0,
        "b" | "bit" => 0.125,
        _ => return None,
    };
    Some(number * base.powi(prefix as i32) * per_unit)
}

/// Bytes from a number or a string with an optional unit: `1048576`, `"10MiB"`, `"2.5GB"`,
/// `"50GiB"` (`B`, `KB`/`MB`/`GB`/`TB` in powers of 1000, `KiB`/`MiB`/`GiB`/`TiB` in powers of
/// 1024; `K`, `M`, `G`, `T` alone are binary).
pub fn parse_bytes(v: &serde_json::Value) -> Result<u64, String> {
    match v {
        serde_json::Value::Number(n) => {
            n.as_u64().ok_or_else(|| format!("{n} is not a whole number of bytes of 0 or more"))
        }
        serde_json::Value::String(s) => parse_bytes_str(s),
        other => Err(format!("expected a number of bytes or a string such as \"50GiB\", found {other}")),
    }
}

/// `parse_bytes` for a string.
pub fn parse_bytes_str(s: &str) -> Result<u64, String> {
    let (value, unit) =
        split_quantity(s).ok_or_else(|| format!("{s:?}: expected a number with a unit such as \"50GiB\""))?;
    let scale: f64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024.0 * 1024.0,
        "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
        "t" | "tib" => 1024.0f64.powi(4),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)")),
    };
    let bytes = value * scale;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{s:?}: too large"));
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn rates_in_every_form() {
        let cases = [
            (json!(0), 0),
            (json!(1048576), 1 << 20),
            (json!("1048576"), 1 << 20),
            (json!("20Mbps"), 2_500_000),
            (json!("20 Mbit/s"), 2_500_000),
            (json!("8kbps"), 1000),
            (json!("1Gbps"), 125_000_000),
            (json!("2.5MB"), 2_500_000),
            (json!("2.5MB/s"), 2_500_000),
            (json!("2.5MBps"), 2_500_000),
            (json!("1MiB"), 1 << 20),
            (json!("1.5KiB"), 1536),
            (json!("1GiB/s"), 1 << 30),
            (json!("100B"), 100),
            (json!("100 Bps"), 100),
            (json!("1Mibps"), (1 << 20) / 8),
            (json!(" 3kB "), 3000),
        ];
        for (value, expected) in cases {
            assert_eq!(parse_rate(&value), Ok(expected), "{value}");
        }
    }

    #[test]
    fn what_is_not_a_rate() {
        for value in [
            json!(-1),
            json!("fast"),
            json!("1 MX"),
            json!("MiB"),
            json!("1.2.3MB"),
            json!("-5MB"),
            json!(true),
            json!(null),
            json!("1e30TB"),
            json!(1e30),
        ] {
            assert!(parse_rate(&value).is_err(), "{value} passed as {:?}", parse_rate(&value));
        }
        assert!(parse_rate(&json!("fast")).unwrap_err().contains("\"fast\" is not a rate"));
    }

    #[test]
    fn bytes_with_units() {
        assert_eq!(parse_bytes(&json!(1048576)), Ok(1 << 20));
        assert_eq!(parse_bytes(&json!("10MiB")), Ok(10 << 20));
        assert_eq!(parse_bytes(&json!("50GiB")), Ok(50 << 30));
        assert_eq!(parse_bytes(&json!("2.5GB")), Ok(2_500_000_000));
        assert_eq!(parse_bytes(&json!("1 KB")), Ok(1000));
        assert_eq!(parse_bytes(&json!("7")), Ok(7));
        assert!(parse_bytes(&json!("5 parsecs")).unwrap_err().contains("unknown unit"));
        assert!(parse_bytes(&json!("GiB")).is_err());
        assert!(parse_bytes(&json!(-1)).is_err());
        assert!(parse_bytes(&json!(true)).is_err());
        assert!(parse_bytes(&json!("99999999999TiB")).unwrap_err().contains("too large"));
    }
}
