//! Durations (`500ms`, `30s`, `1m`, `1h`, `1d`) and sizes (`10Mi`, `512Ki`, `1G`, `100`).

use thiserror::Error;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid duration {0:?}: use a number with ms, s, m, h or d (e.g. 30s)")]
    Duration(String),
    #[error("invalid size {0:?}: use a number with an optional Ki, Mi, Gi, K, M or G suffix")]
    Size(String),
}

/// Parses a duration into milliseconds. Compound forms like `1m30s` are accepted.
pub fn parse_duration_ms(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Duration(text.to_string());
    let s = text.trim();
    if s.is_empty() {
        return Err(err());
    }
    let mut total: u64 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return Err(err());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| err())?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(|b| b.is_ascii_alphabetic()).count();
        let factor = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(err()),
        };
        rest = &rest[unit_len..];
        total = value
            .checked_mul(factor)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(err)?;
    }
    Ok(total)
}

/// Parses a Kubernetes-style quantity of bytes.
pub fn parse_size_bytes(text: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(text.to_string());
    let s = text.trim();
    let digits = s.bytes().take_while(|b| b.is_ascii_digit()).count();
    if digits == 0 {
        return Err(err());
    }
    let value: u64 = s[..digits].parse().map_err(|_| err())?;
    let factor: u64 = match &s[digits..] {
        "" => 1,
        "K" | "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        _ => return Err(err()),
    };
    value.checked_mul(factor).ok_or_else(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("1m30s"), Ok(90_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        for bad in ["", "5", "s", "1x", "-1s", "1.5s", "99999999999999999999s"] {
            assert!(parse_duration_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size_bytes("10Mi"), Ok(10 << 20));
        assert_eq!(parse_size_bytes("128Ki"), Ok(128 << 10));
        assert_eq!(parse_size_bytes("100"), Ok(100));
        assert_eq!(parse_size_bytes("1K"), Ok(1000));
        for bad in ["", "Mi", "10MB", "-1", "1.5Mi", "99999999999999999999Gi"] {
            assert!(parse_size_bytes(bad).is_err(), "{bad}");
        }
    }
}
