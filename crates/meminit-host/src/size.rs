//! Sizes on command lines and in files: `4096`, `0x1000`, `128M`, `2G`, `1T`, `1.5G`,
//! as `String`s for the host's messages (the parsing itself is `meminit_boot`'s).

/// Parses a size or address: decimal, `0x` hex, or a number with a binary suffix
/// K, M, G, T or P (optionally followed by `B` or `iB`).
pub fn parse(text: &str) -> Result<u64, String> {
    meminit_boot::parse_size(text)
        .map_err(|_| format!("'{text}' is not a size (examples: 4096, 0x1000, 128M, 2G, 1T)"))
}

/// Formats a byte count with the largest binary suffix that keeps it readable:
/// `2G`, `128M`, `1.5G`, `512K`, `100`.
pub fn format(bytes: u64) -> String {
    meminit_boot::Size(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_quote_the_text() {
        assert_eq!(parse("128M"), Ok(128 << 20));
        assert_eq!(
            parse("lots").unwrap_err(),
            "'lots' is not a size (examples: 4096, 0x1000, 128M, 2G, 1T)"
        );
        assert_eq!(format(3 << 29), "1.5G");
    }
}
