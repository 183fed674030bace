//! Parsers of command-line values shared by several commands (and the config file's sizes).

use anyhow::{anyhow, bail, Result};
use clap::builder::TypedValueParser;
use naiad_fs::mode::Mode;

/// Parses sizes such as `4096`, `4K`, `4KiB`, `1M`, `16MiB`, `20G`, `1T` (binary units).
pub fn parse_size_u64(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, unit) = t.split_at(t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len()));
    let n: u64 = num.parse().map_err(|_| anyhow!("bad size {s:?}"))?;
    let mul: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => bail!("bad size unit in {s:?} (use K, M, G or T)"),
    };
    n.checked_mul(mul).ok_or_else(|| anyhow!("size {s:?} is too large"))
}

/// [`parse_size_u64`], for values that must fit 32 bits (chunk sizes, rates).
pub fn parse_size(s: &str) -> Result<u32> {
    u32::try_from(parse_size_u64(s)?).map_err(|_| anyhow!("size {s:?} is too large"))
}

/// `--mode`: one of `modes`, by name.
pub fn mode_parser(modes: &'static [Mode]) -> impl clap::builder::TypedValueParser<Value = Mode> {
    clap::builder::PossibleValuesParser::new(modes.iter().map(|m| m.name()))
        .map(|s| s.parse::<Mode>().expect("one of the listed modes"))
}

/// The modes a mount through the daemon (or the snapshotter) can ask for.
pub const LAZY_MODES: &[Mode] = &[Mode::Auto, Mode::Fanotify, Mode::Kernel, Mode::Fuse];

/// The modes of `naiad mount`: local too.
pub const MOUNT_MODES: &[Mode] =
    &[Mode::Local, Mode::Auto, Mode::Fanotify, Mode::Kernel, Mode::Fuse];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_errors() {
        assert_eq!(parse_size_u64("4096").unwrap(), 4096);
        assert_eq!(parse_size_u64("4K").unwrap(), 4096);
        assert_eq!(parse_size_u64("16MiB").unwrap(), 16 << 20);
        assert_eq!(parse_size_u64("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("1G").unwrap(), 1 << 30);
        assert!(parse_size("4G").unwrap_err().to_string().contains("too large"));
        assert!(parse_size_u64("20000000T").unwrap_err().to_string().contains("too large"));
        assert!(parse_size_u64("4X").unwrap_err().to_string().contains("bad size unit"));
        assert!(parse_size_u64("M").is_err() && parse_size_u64("").is_err());
    }
}
