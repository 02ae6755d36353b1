//! The one clock (wall time since the Unix epoch, read once per call) and the UTC calendar
//! over it, from jiff rather than hand-written day arithmetic. Times snarf records (backup
//! ids, manifests, job and lock records, volume times) all come from here. A clock set before
//! 1970 reads as the epoch; a time past what the calendar holds (the year 9999) is shown as
//! its last second, so a damaged record never makes a date panic or overflow.
//!
//! What must be testable against time (the mount daemon's schedule) asks a [`Clock`]
//! instead: [`SystemClock`] in use, [`FakeClock`] in unit tests, and with the
//! `fault-injection` feature only, [`FileClock`], whose time a mount test sets through a
//! file named by [`FAKE_CLOCK_ENV`] (a release build has no such hook).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jiff::civil::{Date, DateTime};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};

/// Time since the Unix epoch now (zero if the clock is set before it).
pub fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
}

/// Whole seconds since the Unix epoch now.
pub fn now_secs() -> u64 {
    now().as_secs()
}

/// Nanoseconds since the Unix epoch now (saturating in the year 2262).
pub fn now_ns() -> i64 {
    i64::try_from(now().as_nanos()).unwrap_or(i64::MAX)
}

/// Where the time comes from, for code that tests drive with a clock of their own.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Whole seconds since the Unix epoch now.
    fn now_secs(&self) -> u64;
}

/// The system's wall clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_secs(&self) -> u64 {
        now_secs()
    }
}

/// A clock that shows what it is set to, for tests.
#[derive(Debug, Default)]
pub struct FakeClock(std::sync::atomic::AtomicU64);

impl FakeClock {
    /// A clock showing `secs`.
    pub fn at(secs: u64) -> FakeClock {
        FakeClock(secs.into())
    }

    /// Sets the time shown.
    pub fn set(&self, secs: u64) {
        self.0.store(secs, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Clock for FakeClock {
    fn now_secs(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// The environment variable naming a [`FileClock`]'s file (builds with `fault-injection`).
#[cfg(feature = "fault-injection")]
pub const FAKE_CLOCK_ENV: &str = "SNARF_FAKE_CLOCK";

/// A clock whose time is the number in a file (a test writes Unix seconds there); the
/// system clock while the file is missing or holds no number.
#[cfg(feature = "fault-injection")]
#[derive(Debug)]
pub struct FileClock(std::path::PathBuf);

#[cfg(feature = "fault-injection")]
impl FileClock {
    /// The clock [`FAKE_CLOCK_ENV`] names, if it is set.
    pub fn from_env() -> Option<FileClock> {
        std::env::var_os(FAKE_CLOCK_ENV).map(|p| FileClock(p.into()))
    }
}

#[cfg(feature = "fault-injection")]
impl Clock for FileClock {
    fn now_secs(&self) -> u64 {
        std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or_else(now_secs)
    }
}

/// The UTC date and time of a Unix time in seconds (the calendar's last second past it).
pub fn utc(unix_secs: u64) -> DateTime {
    let secs = i64::try_from(unix_secs)
        .unwrap_or(i64::MAX)
        .min(Timestamp::MAX.as_second());
    let ts = Timestamp::from_second(secs).unwrap_or(Timestamp::MAX);
    TimeZone::UTC.to_datetime(ts)
}

/// The first day of the Unix calendar, 1970-01-01.
const EPOCH_DAY: Date = Date::constant(1970, 1, 1);

/// More days than lie between 1970-01-01 and either end of the calendar (-9999, 9999).
const DAY_LIMIT: i64 = 12_500 * 366;

/// The date of a day number since 1970-01-01 (clamped to the calendar's range).
pub fn date_of_day(days: i64) -> Date {
    let hours = days.clamp(-DAY_LIMIT, DAY_LIMIT) * 24;
    EPOCH_DAY.saturating_add(SignedDuration::from_hours(hours))
}

/// The day number since 1970-01-01 of a date.
pub fn day_of_date(date: Date) -> i64 {
    date.duration_since(EPOCH_DAY).as_hours().div_euclid(24)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_reads_now() {
        let a = now_secs();
        assert!(a > 1_700_000_000, "{a}");
        assert!(now_ns() / 1_000_000_000 >= a as i64);
    }

    #[test]
    fn fake_clocks_show_what_they_are_set_to() {
        let c = FakeClock::at(5);
        assert_eq!(c.now_secs(), 5);
        c.set(7);
        assert_eq!(c.now_secs(), 7);
        assert!(SystemClock.now_secs() > 1_700_000_000);
    }

    #[cfg(feature = "fault-injection")]
    #[test]
    fn a_file_clock_reads_its_file_or_the_system_clock() {
        let dir = tempfile::tempdir().unwrap();
        let c = FileClock(dir.path().join("clock"));
        assert!(c.now_secs() > 1_700_000_000, "no file: the system clock");
        std::fs::write(&c.0, "42\n").unwrap();
        assert_eq!(c.now_secs(), 42);
        std::fs::write(&c.0, "soon").unwrap();
        assert!(c.now_secs() > 1_700_000_000);
    }

    #[test]
    fn absurd_times_and_days_stay_inside_the_calendar() {
        assert_eq!(utc(u64::MAX), utc(Timestamp::MAX.as_second() as u64));
        assert_eq!(utc(u64::MAX).year(), 9999);
        assert_eq!(date_of_day(i64::MAX).year(), 9999);
        assert_eq!(date_of_day(i64::MIN).year(), -9999);
        for d in [-719_468i64, -1, 0, 1, 19_000, 2_900_000] {
            assert_eq!(day_of_date(date_of_day(d)), d);
        }
    }
}
