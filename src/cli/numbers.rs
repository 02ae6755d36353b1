//! Range checks for numeric command-line options, as clap value parsers: a number out of its
//! range is refused while parsing, with a message naming the option and what it allows,
//! before anything starts. Integers use clap's own ranged parsers (see the option
//! definitions); this file holds the ones clap has no parser for: fractional seconds and
//! sizes with units.

use crate::store::settings::{self, RangeError};
use crate::units::parse_size;

/// Most FUSE worker or backup threads accepted.
pub const MAX_THREADS: u64 = 256;
/// Longest wait accepted for a lock or a daemon, in seconds: a week.
pub const MAX_WAIT_SECS: u64 = 7 * 86_400;

/// `--break-after SECONDS`: finite, from 0 to a day.
pub fn break_after(input: &str) -> Result<f64, String> {
    let secs: f64 = input
        .trim()
        .parse()
        .map_err(|_| format!("'{input}' is not a number of seconds; write e.g. 30 or 2.5"))?;
    settings::check_break_after("--break-after", secs).map_err(message)
}

/// `--snapshots persistent|volatile`.
pub fn durability(input: &str) -> Result<crate::store::Durability, String> {
    crate::store::Durability::parse(input.trim())
        .ok_or_else(|| format!("'{input}' is neither persistent nor volatile"))
}

/// `--preimage-mem SIZE` and `--preimage-disk SIZE`: a size up to 1 PiB.
pub fn budget(input: &str) -> Result<u64, String> {
    let bytes = parse_size(input).map_err(|e| e.to_string())?;
    settings::check_budget("the budget", bytes).map_err(message)
}

/// `--snarf-size SIZE`: a power of two from 4K to 1M.
pub fn snarf_size(input: &str) -> Result<u64, String> {
    let bytes = parse_size(input).map_err(|e| e.to_string())?;
    settings::check_snarf_size(bytes).map_err(|_| {
        format!(
            "{} is out of range: give a power of two from {} to {}",
            crate::units::Bytes(bytes),
            crate::units::Bytes(settings::MIN_SNARF_SIZE),
            crate::units::Bytes(settings::MAX_SNARF_SIZE)
        )
    })?;
    Ok(bytes)
}

/// A size from `min` to `max` bytes (for `snarf demo --size`).
pub fn size_between(min: u64, max: u64) -> impl Fn(&str) -> Result<u64, String> + Clone {
    move |input: &str| {
        let bytes = parse_size(input).map_err(|e| e.to_string())?;
        if (min..=max).contains(&bytes) {
            return Ok(bytes);
        }
        Err(format!(
            "{} is out of range: give {} to {}",
            crate::units::Bytes(bytes),
            crate::units::Bytes(min),
            crate::units::Bytes(max)
        ))
    }
}

/// clap prints the option's name before this, so only the value and the range are said.
fn message(e: RangeError) -> String {
    format!("{} is out of range: {}", e.value, e.allowed)
}

#[cfg(test)]
mod tests {
    use super::super::Cli;
    use super::*;
    use clap::Parser;

    #[test]
    fn fractional_seconds_and_sizes_are_range_checked() {
        assert_eq!(break_after("30"), Ok(30.0));
        assert_eq!(break_after("0"), Ok(0.0));
        for bad in ["inf", "-inf", "NaN", "1e300", "-1", "86401", "soon", ""] {
            let e = break_after(bad).unwrap_err();
            assert!(
                e.contains("0 to 86400") || e.contains("not a number"),
                "{bad}: {e}"
            );
        }
        assert_eq!(budget("64K"), Ok(64 << 10));
        assert_eq!(budget("0"), Ok(0));
        assert!(budget("2P").unwrap_err().contains("out of range"));
        assert!(budget("16E").is_err());
        let demo = size_between(1 << 20, 16 << 30);
        assert_eq!(demo("1M"), Ok(1 << 20));
        assert!(demo("0").unwrap_err().contains("out of range"));
        assert!(demo("1T").unwrap_err().contains("16.0 GiB"));
    }

    /// Every numeric option of every command refuses what it cannot mean, naming itself.
    /// (`snarf repo init --compression` and `--pack-size` are range-checked by
    /// `Repo::init`, which names the setting and its range.)
    #[test]
    fn every_numeric_option_refuses_absurd_values_by_name() {
        let cases: &[(&[&str], &str)] = &[
            (&["mount", "--break-after=inf", "s", "m"], "--break-after"),
            (&["mount", "--break-after=1e300", "s", "m"], "--break-after"),
            (&["mount", "--break-after=-1", "s", "m"], "--break-after"),
            (&["mount", "--break-after=nan", "s", "m"], "--break-after"),
            (&["mount", "--threads=0", "s", "m"], "--threads"),
            (&["mount", "--threads=100000", "s", "m"], "--threads"),
            (&["mount", "--preimage-mem=2P", "s", "m"], "--preimage-mem"),
            (
                &["mount", "--preimage-disk=2P", "s", "m"],
                "--preimage-disk",
            ),
            (&["mount", "--ready-fd=0", "s", "m"], "--ready-fd"),
            (&["init", "--break-after=inf", "s"], "--break-after"),
            (&["init", "--preimage-mem=2P", "s"], "--preimage-mem"),
            (&["init", "--preimage-disk=2P", "s"], "--preimage-disk"),
            (&["init", "--snarf-size=2M", "s"], "--snarf-size"),
            (&["init", "--snarf-size=3K", "s"], "--snarf-size"),
            (&["umount", "--timeout=0", "m"], "--timeout"),
            (&["umount", "--timeout=99999999999", "m"], "--timeout"),
            (&["backup", "--threads=0", "m", "s"], "--threads"),
            (&["backup", "--threads=100000", "m", "s"], "--threads"),
            (&["backup", "--compression=0", "m", "s"], "--compression"),
            (&["backup", "--compression=99", "m", "s"], "--compression"),
            (
                &["backup", "--lock-wait=18446744073709551615", "m", "s"],
                "--lock-wait",
            ),
            (&["prune", "--keep-last=4294967295", "r"], "--keep-last"),
            (
                &["prune", "--keep-last=1", "--keep-daily=99999999", "r"],
                "--keep-daily",
            ),
            (
                &["prune", "--keep-last=1", "--keep-weekly=99999999", "r"],
                "--keep-weekly",
            ),
            (
                &["prune", "--keep-last=1", "--keep-monthly=99999999", "r"],
                "--keep-monthly",
            ),
            (&["demo", "--size=0"], "--size"),
            (&["demo", "--size=1P"], "--size"),
        ];
        for (args, option) in cases {
            let argv = std::iter::once("snarf").chain(args.iter().copied());
            let e = Cli::try_parse_from(argv)
                .err()
                .unwrap_or_else(|| panic!("{args:?} was accepted"))
                .to_string();
            assert!(
                e.contains(option) && (e.contains("range") || e.contains("not in")),
                "{args:?}: {e}"
            );
        }
        // And sensible values still parse.
        for args in [
            &[
                "mount",
                "--break-after=0.5",
                "--threads=4",
                "--preimage-mem=1G",
                "s",
                "m",
            ][..],
            &[
                "backup",
                "--threads=2",
                "--compression=19",
                "--lock-wait=60",
                "m",
                "s",
            ],
            &["umount", "--timeout=5", "m"],
            &["prune", "--keep-last=7", "--keep-daily=14", "r"],
        ] {
            let argv = std::iter::once("snarf").chain(args.iter().copied());
            assert!(Cli::try_parse_from(argv).is_ok(), "{args:?}");
        }
    }
}
