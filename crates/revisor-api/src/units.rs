//! Go-style durations (`1m5s`) and Kubernetes quantities (`100m`, `256Mi`), as annotations and resources write them.

use std::time::Duration;

/// Parses a Go duration string: a sequence of decimal numbers with units ns, us, ms, s, m, h.
pub fn parse_go_duration(s: &str) -> Result<Duration, String> {
    let err = || format!("{s:?} is not a duration (examples: \"60s\", \"1m5s\", \"500ms\")");
    let mut rest = s.trim();
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() || rest.starts_with('-') {
        return Err(err());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(err)?;
        if num_len == 0 {
            return Err(err());
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total += value * scale;
    }
    // Go's own limit: a duration is an int64 of nanoseconds (about 292 years); longer does not parse
    // in Go either, and no clock arithmetic downstream has to fear it.
    if !total.is_finite() || total > i64::MAX as f64 / 1e9 {
        return Err(format!("{s:?} is longer than a Go duration can be (about 292 years)"));
    }
    Duration::try_from_secs_f64(total)
        .map_err(|_| format!("{s:?} is longer than a Go duration can be (about 292 years)"))
}

/// Parses a Kubernetes quantity into its value in base units (cores, bytes).
pub fn parse_quantity(s: &str) -> Result<f64, String> {
    let err = || format!("{s:?} is not a quantity (examples: \"100m\", \"1\", \"256Mi\", \"1G\")");
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || matches!(c, '.' | '+' | '-')))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    if num.is_empty() {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        e if e.starts_with(['e', 'E']) => {
            let exp: i32 = e[1..].parse().map_err(|_| err())?;
            10f64.powi(exp)
        }
        _ => return Err(err()),
    };
    if value < 0.0 {
        return Err(format!("{s:?} must not be negative"));
    }
    let q = value * factor;
    // Kubernetes keeps a quantity in 64 bits; beyond that (or infinite, as 1e400 is in f64) no
    // resource means anything.
    if !q.is_finite() || q > i64::MAX as f64 {
        return Err(format!(
            "{s:?} is too large: a quantity is at most {} (64 bits)",
            i64::MAX
        ));
    }
    Ok(q)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let cases = [
            ("60s", 60.0),
            ("1m5s", 65.0),
            ("500ms", 0.5),
            ("1h", 3600.0),
            ("0", 0.0),
            ("1.5s", 1.5),
        ];
        for (text, secs) in cases {
            assert_eq!(parse_go_duration(text).unwrap().as_secs_f64(), secs, "{text}");
        }
        for bad in ["", "10", "s", "-1s", "1x", "1m5"] {
            assert!(parse_go_duration(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn quantities() {
        let cases = [
            ("100m", 0.1),
            ("1", 1.0),
            ("256Mi", 268435456.0),
            ("640M", 640e6),
            ("1e3", 1000.0),
        ];
        for (text, v) in cases {
            assert!((parse_quantity(text).unwrap() - v).abs() < 1e-9, "{text}");
        }
        for bad in ["", "m", "12Q", "-1", "1.2.3"] {
            assert!(parse_quantity(bad).is_err(), "{bad} should be refused");
        }
    }
}
