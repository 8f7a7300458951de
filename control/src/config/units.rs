//! Quantities with units in the config: byte rates such as `"20Mbps"`, `"2.5MB"` or `"1MiB"`.

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

fn parse_rate_str(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return None;
    }
    let number: f64 = number.parse().ok()?;
    let unit = unit.trim_start();
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
}
