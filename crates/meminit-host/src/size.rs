//! Sizes on command lines and in files: `4096`, `0x1000`, `128M`, `2G`, `1T`, `1.5G`.

/// Parses a size or address: decimal, `0x` hex, or a number with a binary suffix
/// K, M, G, T or P (optionally followed by `B` or `iB`).
pub fn parse(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let bad = || format!("'{text}' is not a size (examples: 4096, 0x1000, 128M, 2G, 1T)");
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        return u64::from_str_radix(&hex.replace('_', ""), 16).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let trimmed = upper
        .strip_suffix("IB")
        .or_else(|| upper.strip_suffix('B'))
        .unwrap_or(&upper);
    let (digits, shift) = match trimmed.chars().last() {
        Some('K') => (&trimmed[..trimmed.len() - 1], 10),
        Some('M') => (&trimmed[..trimmed.len() - 1], 20),
        Some('G') => (&trimmed[..trimmed.len() - 1], 30),
        Some('T') => (&trimmed[..trimmed.len() - 1], 40),
        Some('P') => (&trimmed[..trimmed.len() - 1], 50),
        _ => (trimmed, 0),
    };
    if let Ok(v) = digits.parse::<u64>() {
        return v.checked_mul(1 << shift).ok_or_else(bad);
    }
    let v: f64 = digits.parse().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || shift == 0 {
        return Err(bad());
    }
    let bytes = v * (1u64 << shift) as f64;
    if bytes >= u64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

/// Formats a byte count with the largest binary suffix that keeps it readable:
/// `2G`, `128M`, `1.5G`, `512K`, `100`.
pub fn format(bytes: u64) -> String {
    const UNITS: [(u32, &str); 5] = [(50, "P"), (40, "T"), (30, "G"), (20, "M"), (10, "K")];
    for (shift, unit) in UNITS {
        let unit_bytes = 1u64 << shift;
        if bytes >= unit_bytes {
            if bytes % unit_bytes == 0 {
                return format!("{}{unit}", bytes >> shift);
            }
            let v = bytes as f64 / unit_bytes as f64;
            return if v >= 100.0 {
                format!("{v:.0}{unit}")
            } else {
                format!("{v:.1}{unit}")
            };
        }
    }
    format!("{bytes}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse("128M"), Ok(128 << 20));
        assert_eq!(parse("2GiB"), Ok(2 << 30));
        assert_eq!(parse("0x1000"), Ok(4096));
        assert_eq!(parse("1.5G"), Ok(3 << 29));
        assert_eq!(parse("100"), Ok(100));
        assert!(parse("lots").is_err());
        assert!(parse("99999999999T").is_err());
        assert_eq!(format(2 << 30), "2G");
        assert_eq!(format(3 << 29), "1.5G");
        assert_eq!(format(32 << 20), "32M");
        assert_eq!(format(1000), "1000");
    }
}
