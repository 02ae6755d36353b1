//! Human sizes and durations on the command line and in tables: `64K`, `256M`, `2G`, `1.5T`.
//! Binary units throughout (K = 1024), because snarf sizes and budgets are powers of two.

use std::fmt;

/// A size string that could not be understood, with the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{input}' is not a size: {why}; write a number with an optional unit K, M, G or T (binary, e.g. 64K, 256M, 2G)")]
pub struct SizeParseError {
    input: String,
    why: &'static str,
}

/// Parses `64K`, `64KiB`, `256m`, `2G`, `1.5T`, or a plain byte count.
pub fn parse_size(input: &str) -> Result<u64, SizeParseError> {
    let err = |why| SizeParseError {
        input: input.to_string(),
        why,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("it is empty"));
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    if num.is_empty() {
        return Err(err("it does not start with a number"));
    }
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        "p" | "pb" | "pib" => 50,
        _ => return Err(err("the unit is unknown")),
    };
    if let Ok(whole) = num.parse::<u64>() {
        return whole
            .checked_mul(1u64 << shift)
            .ok_or_else(|| err("it is too large"));
    }
    let value: f64 = num.parse().map_err(|_| err("the number is malformed"))?;
    let bytes = value * (1u64 << shift) as f64;
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(err("it is too large"));
    }
    Ok(bytes.round() as u64)
}

/// A byte count shown the way people read it: `64.0 KiB`, `1.5 GiB`, `512 B`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        if self.0 < 1024 {
            return write!(f, "{} B", self.0);
        }
        let mut value = self.0 as f64 / 1024.0;
        let mut unit = 0;
        while value >= 1024.0 && unit + 1 < UNITS.len() {
            value /= 1024.0;
            unit += 1;
        }
        write!(f, "{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_plain_numbers() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("256m"), Ok(256 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1.5T"), Ok(3 << 39));
        assert_eq!(parse_size(" 1 M "), Ok(1 << 20));
    }

    #[test]
    fn rejects_with_reason() {
        for bad in ["", "K", "12Q", "1.2.3K", "99999999999999999999T"] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.to_string().contains("is not a size"), "{e}");
        }
        assert!(parse_size("12Q")
            .unwrap_err()
            .to_string()
            .contains("unit is unknown"));
    }

    #[test]
    fn formats_binary_units() {
        assert_eq!(Bytes(512).to_string(), "512 B");
        assert_eq!(Bytes(65536).to_string(), "64.0 KiB");
        assert_eq!(Bytes(3 << 29).to_string(), "1.5 GiB");
    }
}
