//! Names of things in a repository: chunk ids (blake3 of the uncompressed data), pack ids
//! (random 128-bit), backup ids (`YYYYMMDD-HHMMSS-xxxx`, UTC, so they sort by time), and the
//! UTC calendar that backup ids and retention need (jiff's, through [`crate::sys::clock`]).

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use jiff::civil::Date;

use crate::sys::clock;

/// Writes bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Parses lowercase or uppercase hex of exactly `N` bytes.
fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// A chunk's id: the blake3 hash of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkId(pub [u8; 32]);

impl ChunkId {
    /// The id of `data`.
    pub fn of(data: &[u8]) -> ChunkId {
        ChunkId(*blake3::hash(data).as_bytes())
    }

    /// The first 8 hex digits, for messages.
    pub fn short(&self) -> String {
        hex(&self.0[..4])
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkId({})", self.short())
    }
}

/// A pack's id: 128 random bits, also its file name (`packs/<hex>.pack`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct PackId(pub [u8; 16]);

impl PackId {
    /// A fresh id, unique with overwhelming probability.
    pub fn generate() -> PackId {
        let mut id = [0u8; 16];
        id.copy_from_slice(&unique_bytes()[..16]);
        PackId(id)
    }

    /// Parses the 32-digit hex form.
    pub fn parse(s: &str) -> Option<PackId> {
        unhex::<16>(s).map(PackId)
    }

    /// True for the all-zero id, which marks "no pack" in records.
    pub fn is_none(&self) -> bool {
        self.0 == [0; 16]
    }
}

impl fmt::Display for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex(&self.0))
    }
}

impl fmt::Debug for PackId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PackId({})", hex(&self.0[..4]))
    }
}

/// 32 bytes that differ between calls and processes: blake3 of time, pid and a counter.
/// Ids need uniqueness, not secrecy, so no random number generator is needed.
pub fn unique_bytes() -> [u8; 32] {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = clock::now().as_nanos();
    let mut h = blake3::Hasher::new();
    h.update(&nanos.to_le_bytes());
    h.update(&std::process::id().to_le_bytes());
    h.update(&COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let local = 0u8;
    h.update(&(&local as *const u8 as usize).to_le_bytes());
    *h.finalize().as_bytes()
}

/// A backup's id: `YYYYMMDD-HHMMSS-xxxx` in UTC with 4 random hex digits, so ids sort by time.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct BackupId(String);

impl BackupId {
    /// A new id for a backup created at `unix_secs`.
    pub fn generate(unix_secs: u64) -> BackupId {
        let (date, time) = utc_parts(unix_secs);
        BackupId(format!(
            "{:04}{:02}{:02}-{:02}{:02}{:02}-{}",
            date.0,
            date.1,
            date.2,
            time.0,
            time.1,
            time.2,
            &hex(&unique_bytes()[..2])
        ))
    }

    /// A new id that sorts after `last` (the newest existing id), even if created in the same
    /// second or after the clock stepped back: then it takes `last`'s time and the next
    /// suffix. Called under the repository lock, so ids are unique.
    pub fn generate_after(unix_secs: u64, last: Option<&BackupId>) -> BackupId {
        let id = BackupId::generate(unix_secs);
        let Some(last) = last else { return id };
        if id > *last && id.0[..15] != last.0[..15] {
            return id;
        }
        let suffix = u16::from_str_radix(&last.0[16..], 16).unwrap_or(0);
        match suffix.checked_add(1) {
            Some(next) => BackupId(format!("{}{next:04x}", &last.0[..16])),
            // 65536 backups in one second: take the next second.
            None => BackupId::generate_after(unix_secs + 1, None),
        }
    }

    /// Parses and validates an id.
    pub fn parse(s: &str) -> Option<BackupId> {
        let b = s.as_bytes();
        let ok = b.len() == 20
            && b[8] == b'-'
            && b[15] == b'-'
            && b[..8].iter().all(u8::is_ascii_digit)
            && b[9..15].iter().all(u8::is_ascii_digit)
            && b[16..].iter().all(|c| c.is_ascii_hexdigit());
        ok.then(|| BackupId(s.to_string()))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for BackupId {
    type Error = String;
    fn try_from(s: String) -> Result<BackupId, String> {
        BackupId::parse(&s).ok_or_else(|| format!("\"{s}\" is not a backup id"))
    }
}

impl From<BackupId> for String {
    fn from(id: BackupId) -> String {
        id.0
    }
}

impl fmt::Display for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for BackupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BackupId({})", self.0)
    }
}

/// Seconds since the Unix epoch now (the one clock, [`crate::sys::clock`]).
pub fn now_secs() -> u64 {
    clock::now_secs()
}

/// Days since 1970-01-01 of a proleptic Gregorian date; a day past the end of its month
/// counts on into the next, a month or year the calendar cannot hold is clamped to it.
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = y.clamp(-9999, 9999) as i16;
    let m = m.clamp(1, 12) as i8;
    // Always a real date after the clamps.
    Date::new(y, m, 1).map_or(0, clock::day_of_date) + i64::from(d) - 1
}

/// The date (year, month, day) of a day number since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    ymd(clock::date_of_day(z))
}

fn ymd(date: Date) -> (i64, u32, u32) {
    (
        date.year().into(),
        date.month().unsigned_abs().into(),
        date.day().unsigned_abs().into(),
    )
}

/// ((year, month, day), (hour, minute, second)) of a Unix time, in UTC.
pub fn utc_parts(unix_secs: u64) -> ((i64, u32, u32), (u32, u32, u32)) {
    let t = clock::utc(unix_secs);
    (
        ymd(t.date()),
        (
            t.hour().unsigned_abs().into(),
            t.minute().unsigned_abs().into(),
            t.second().unsigned_abs().into(),
        ),
    )
}

/// A Unix time as `YYYY-MM-DD HH:MM:SS` UTC.
pub fn format_utc(unix_secs: u64) -> String {
    let ((y, mo, d), (h, mi, s)) = utc_parts(unix_secs);
    format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}")
}

/// The ISO 8601 (year, week) of a day number since 1970-01-01.
pub fn iso_week(days: i64) -> (i64, u32) {
    let week = clock::date_of_day(days).iso_week_date();
    (week.year().into(), week.week().unsigned_abs().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_round_trips_and_known_dates() {
        for z in [-1000i64, 0, 59, 365, 11016, 20000, 30000] {
            let (y, m, d) = civil_from_days(z);
            assert_eq!(days_from_civil(y, m, d), z);
        }
        assert_eq!(format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(format_utc(1_700_000_000), "2023-11-14 22:13:20");
    }

    #[test]
    fn iso_weeks_at_year_edges() {
        assert_eq!(iso_week(days_from_civil(2021, 1, 3)), (2020, 53));
        assert_eq!(iso_week(days_from_civil(2021, 1, 4)), (2021, 1));
        assert_eq!(iso_week(days_from_civil(2024, 12, 30)), (2025, 1));
        assert_eq!(iso_week(days_from_civil(2026, 11, 23)), (2026, 48));
    }

    #[test]
    fn backup_ids_sort_by_time_and_parse() {
        let a = BackupId::generate(1_700_000_000);
        let b = BackupId::generate(1_700_000_001);
        assert!(a < b);
        assert!(a.as_str().starts_with("20231114-221320-"));
        assert_eq!(BackupId::parse(a.as_str()), Some(a));
        assert!(BackupId::parse("2023-11-14").is_none());
        assert!(BackupId::parse("../../etc/passwd....").is_none());
        let c = BackupId::generate_after(1_700_000_001, Some(&b));
        assert!(c > b && c.as_str()[..15] == b.as_str()[..15]);
        let d = BackupId::generate_after(1_600_000_000, Some(&c));
        assert!(d > c);
        assert_eq!(BackupId::parse(d.as_str()), Some(d.clone()));
        let e = BackupId::generate_after(1_700_000_100, Some(&d));
        assert!(e.as_str().starts_with("20231114-221500-"));
    }

    #[test]
    fn a_time_past_the_calendar_still_makes_a_valid_id_and_date() {
        // A clock or a damaged record far in the future: the calendar's last second, not a
        // year of twelve digits that no id parser takes back.
        let id = BackupId::generate(u64::MAX);
        assert_eq!(BackupId::parse(id.as_str()), Some(id.clone()), "{id}");
        assert!(id.as_str().starts_with("9999"), "{id}");
        assert!(format_utc(u64::MAX).starts_with("9999-12-"));
        assert_eq!(civil_from_days(i64::MAX).0, 9999);
        assert_eq!(iso_week(i64::MIN).0, -9999);
    }

    #[test]
    fn pack_ids_are_distinct_and_parse() {
        let a = PackId::generate();
        let b = PackId::generate();
        assert_ne!(a, b);
        assert_eq!(PackId::parse(&a.to_string()), Some(a));
    }
}
