//! Cron time expressions, written here rather than taken from a crate so that the accepted
//! syntax, its errors and the time zone rule are snarf's own and tested here: five fields
//! (minute hour day-of-month month day-of-week), each `*`, a number, a range `A-B`, a step
//! `*/N`, `A-B/N` or `A/N` (from A to the field's end), or a comma list of those; month and
//! weekday names (`jan`..`dec`, `sun`..`sat`, any case); weekday 7 is Sunday, as 0 is. The
//! shorthands `@hourly`, `@daily` (`@midnight`), `@weekly`, `@monthly` and `@yearly`
//! (`@annually`) stand for their five fields.
//!
//! Times are UTC: a schedule means the same instants whatever the machine's time zone, and
//! no time is skipped or repeated by a daylight-saving change. As in cron, when both the day
//! of the month and the day of the week are restricted (neither is `*`), a day matches if
//! either does; otherwise both must.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

/// The most years [`CronExpr::next_after`] looks ahead: `0 0 29 2 1` (a leap day, or any
/// Monday) matches within days, and `0 0 29 2 *` within eight years (1896 to 1904 had no
/// leap day), so nothing that can match lies further away.
const LOOKAHEAD_YEARS: i16 = 9;

/// Longest field accepted, in bytes: no sensible field is longer.
const MAX_FIELD_BYTES: usize = 256;

/// What is wrong with a cron expression, in words that name the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CronError {
    /// Not five fields.
    #[error("a schedule needs five time fields (minute hour day-of-month month day-of-week) or one of @hourly, @daily, @weekly, @monthly, @yearly, but {0} were given")]
    FieldCount(usize),
    /// An `@` word that is not a known shorthand.
    #[error("\"{0}\" is not a schedule shorthand; use @hourly, @daily, @midnight, @weekly, @monthly, @yearly or @annually (@reboot is not supported: the daemon runs no job at mount)")]
    UnknownShorthand(String),
    /// A field too long to be meant.
    #[error("the {field} field is {len} bytes long; a field is at most {MAX_FIELD_BYTES} bytes")]
    TooLong {
        /// Which field.
        field: &'static str,
        /// Its length.
        len: usize,
    },
    /// An empty element of a comma list.
    #[error("the {field} field \"{text}\" has an empty list element; separate values with single commas, as in 1,15,30")]
    EmptyElement {
        /// Which field.
        field: &'static str,
        /// The field's text.
        text: String,
    },
    /// A word that is neither a number nor a name of the field.
    #[error("the {field} field has \"{word}\", which is not a number{names}")]
    NotANumber {
        /// Which field.
        field: &'static str,
        /// The word.
        word: String,
        /// The names the field takes, if any, as a hint.
        names: &'static str,
    },
    /// A value outside the field's range.
    #[error("{value} is out of range for the {field} field, which takes {min} to {max}")]
    OutOfRange {
        /// Which field.
        field: &'static str,
        /// The value.
        value: u64,
        /// Smallest allowed.
        min: u32,
        /// Largest allowed.
        max: u32,
    },
    /// A range whose end comes before its start.
    #[error("the {field} range {from}-{to} runs backwards; write the smaller value first")]
    Backwards {
        /// Which field.
        field: &'static str,
        /// Start.
        from: u32,
        /// End.
        to: u32,
    },
    /// A step of zero or past the field's span.
    #[error("the step /{step} in the {field} field is not allowed; a step is 1 to {max}")]
    BadStep {
        /// Which field.
        field: &'static str,
        /// The step.
        step: u64,
        /// Largest step.
        max: u32,
    },
    /// A day of the month that none of the months has.
    #[error("the schedule never runs: no month it names has the day of the month it names (February has 29 days at most, April, June, September and November 30)")]
    Never,
}

/// One field's definition.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    hint: &'static str,
}

const MINUTE: Field = Field {
    name: "minute",
    min: 0,
    max: 59,
    names: &[],
    hint: "",
};
const HOUR: Field = Field {
    name: "hour",
    min: 0,
    max: 23,
    names: &[],
    hint: "",
};
const DOM: Field = Field {
    name: "day-of-month",
    min: 1,
    max: 31,
    names: &[],
    hint: "",
};
const MONTH: Field = Field {
    name: "month",
    min: 1,
    max: 12,
    names: &[
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ],
    hint: " or a month name (jan to dec)",
};
// Weekday 7 is Sunday too; it is folded onto 0 after parsing.
const DOW: Field = Field {
    name: "day-of-week",
    min: 0,
    max: 7,
    names: &["sun", "mon", "tue", "wed", "thu", "fri", "sat"],
    hint: " or a weekday name (sun to sat)",
};

/// A parsed cron time expression: the set of minutes, hours, days, months and weekdays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CronExpr {
    minutes: u64,
    hours: u32,
    days: u32,
    months: u16,
    weekdays: u8,
    days_star: bool,
    weekdays_star: bool,
    text: String,
}

impl fmt::Display for CronExpr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl Field {
    /// One value: a number or (for months and weekdays) a name.
    fn value(&self, word: &str) -> Result<u32, CronError> {
        let lower = word.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(i as u32 + self.min);
        }
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_digit()) {
            return Err(CronError::NotANumber {
                field: self.name,
                word: word.chars().take(40).collect(),
                names: self.hint,
            });
        }
        // All digits: only its size can fail, which is out of range anyway.
        let v = word.parse::<u64>().unwrap_or(u64::MAX);
        if v < u64::from(self.min) || v > u64::from(self.max) {
            return Err(CronError::OutOfRange {
                field: self.name,
                value: v,
                min: self.min,
                max: self.max,
            });
        }
        Ok(v as u32)
    }

    /// The set a field's text names, as bits (bit n = value n); whether it was `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        if text.len() > MAX_FIELD_BYTES {
            return Err(CronError::TooLong {
                field: self.name,
                len: text.len(),
            });
        }
        let mut bits = 0u64;
        for element in text.split(',') {
            if element.is_empty() {
                return Err(CronError::EmptyElement {
                    field: self.name,
                    text: text.chars().take(60).collect(),
                });
            }
            let (range, step) = match element.split_once('/') {
                Some((r, s)) => {
                    let span = self.max - self.min + 1;
                    let step = if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
                        s.parse::<u64>().unwrap_or(u64::MAX)
                    } else {
                        return Err(CronError::NotANumber {
                            field: self.name,
                            word: s.chars().take(40).collect(),
                            names: "",
                        });
                    };
                    if step == 0 || step > u64::from(span) {
                        return Err(CronError::BadStep {
                            field: self.name,
                            step,
                            max: span,
                        });
                    }
                    (r, Some(step as u32))
                }
                None => (element, None),
            };
            let (from, to) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                let (a, b) = (self.value(a)?, self.value(b)?);
                if b < a {
                    return Err(CronError::Backwards {
                        field: self.name,
                        from: a,
                        to: b,
                    });
                }
                (a, b)
            } else {
                let a = self.value(range)?;
                // `A/N` runs from A to the field's end, as in Vixie cron.
                (a, if step.is_some() { self.max } else { a })
            };
            let step = step.unwrap_or(1);
            let mut v = from;
            while v <= to {
                bits |= 1 << v;
                v += step;
            }
        }
        Ok((bits, text == "*"))
    }
}

impl CronExpr {
    /// Parses the five fields (or one `@` shorthand) given as words.
    pub fn parse(fields: &[&str]) -> Result<CronExpr, CronError> {
        let expanded: Vec<&str>;
        let fields = match fields {
            [one] if one.starts_with('@') => {
                let five = match one.to_ascii_lowercase().as_str() {
                    "@hourly" => "0 * * * *",
                    "@daily" | "@midnight" => "0 0 * * *",
                    "@weekly" => "0 0 * * 0",
                    "@monthly" => "0 0 1 * *",
                    "@yearly" | "@annually" => "0 0 1 1 *",
                    _ => return Err(CronError::UnknownShorthand(one.chars().take(40).collect())),
                };
                expanded = five.split(' ').collect();
                &expanded[..]
            }
            f if f.len() == 5 => f,
            f => return Err(CronError::FieldCount(f.len())),
        };
        let (minutes, _) = MINUTE.parse(fields[0])?;
        let (hours, _) = HOUR.parse(fields[1])?;
        let (days, days_star) = DOM.parse(fields[2])?;
        let (months, _) = MONTH.parse(fields[3])?;
        let (mut weekdays, weekdays_star) = DOW.parse(fields[4])?;
        if weekdays & (1 << 7) != 0 {
            weekdays = (weekdays | 1) & 0x7f;
        }
        let expr = CronExpr {
            minutes,
            hours: hours as u32,
            days: days as u32,
            months: months as u16,
            weekdays: weekdays as u8,
            days_star,
            weekdays_star,
            text: fields.join(" "),
        };
        // With the weekday unrestricted only the day of the month decides, and a day no
        // named month has would never come.
        if expr.weekdays_star {
            let longest = (1..=12u32)
                .filter(|m| expr.months & (1 << m) != 0)
                .map(|m| match m {
                    2 => 29,
                    4 | 6 | 9 | 11 => 30,
                    _ => 31,
                })
                .max()
                .unwrap_or(0);
            if (1..=longest).all(|d| expr.days & (1 << d) == 0) {
                return Err(CronError::Never);
            }
        }
        Ok(expr)
    }

    /// Whether the expression's day rule matches `date` (cron's OR when both day fields
    /// are restricted).
    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days & (1 << date.day()) != 0;
        let dow = self.weekdays & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        match (self.days_star, self.weekdays_star) {
            (false, false) => dom || dow,
            _ => dom && dow,
        }
    }

    /// The first whole minute strictly after `after` (Unix seconds, UTC) that the
    /// expression matches; `None` if none comes within the calendar (the year 9999).
    pub fn next_after(&self, after: u64) -> Option<u64> {
        let secs = i64::try_from(after).ok()?;
        let start = Timestamp::from_second(secs.checked_add(60)? - secs.rem_euclid(60)).ok()?;
        let dt = TimeZone::UTC.to_datetime(start);
        let end_year = dt.year().saturating_add(LOOKAHEAD_YEARS);
        let mut date = dt.date();
        let mut first_day = true;
        loop {
            if date.year() > end_year {
                return None;
            }
            if self.months & (1 << date.month()) == 0 {
                date = date.first_of_month().checked_add(1.month()).ok()?;
                first_day = false;
                continue;
            }
            if self.day_matches(date) {
                let from = if first_day {
                    dt.time()
                } else {
                    Time::midnight()
                };
                if let Some(t) = self.first_time_from(from) {
                    let at = DateTime::from_parts(date, t);
                    let ts = TimeZone::UTC.to_timestamp(at).ok()?;
                    return u64::try_from(ts.as_second()).ok();
                }
            }
            date = date.tomorrow().ok()?;
            first_day = false;
        }
    }

    /// The first matching hour and minute of a day at or after `from`.
    fn first_time_from(&self, from: Time) -> Option<Time> {
        for h in from.hour()..24 {
            if self.hours & (1 << h) == 0 {
                continue;
            }
            let m0 = if h == from.hour() { from.minute() } else { 0 };
            for m in m0..60 {
                if self.minutes & (1 << m) != 0 {
                    return Time::new(h, m, 0, 0).ok();
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expr(s: &str) -> CronExpr {
        let words: Vec<&str> = s.split_whitespace().collect();
        CronExpr::parse(&words).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn err(s: &str) -> CronError {
        let words: Vec<&str> = s.split_whitespace().collect();
        CronExpr::parse(&words).expect_err(s)
    }

    /// Unix seconds of a UTC time written `2026-12-02T03:04`.
    fn at(s: &str) -> u64 {
        let dt: DateTime = s.parse().unwrap();
        TimeZone::UTC.to_timestamp(dt).unwrap().as_second() as u64
    }

    fn show(secs: u64) -> String {
        let dt = crate::sys::clock::utc(secs);
        dt.strftime("%Y-%m-%dT%H:%M %a").to_string()
    }

    fn next(e: &str, after: &str) -> String {
        show(expr(e).next_after(at(after)).expect("a next run"))
    }

    #[test]
    fn fields_lists_ranges_and_steps() {
        let e = expr("*/15 1,3-5 * * *");
        assert_eq!(e.minutes, 1 | 1 << 15 | 1 << 30 | 1 << 45);
        assert_eq!(e.hours, 1 << 1 | 1 << 3 | 1 << 4 | 1 << 5);
        let e = expr("10-20/5 5/6 1 1 *");
        assert_eq!(e.minutes, 1 << 10 | 1 << 15 | 1 << 20);
        assert_eq!(e.hours, 1 << 5 | 1 << 11 | 1 << 17 | 1 << 23);
        assert_eq!(expr("0 0 * * *").minutes, 1);
        assert_eq!(expr("59 23 31 12 6").minutes, 1 << 59);
        assert_eq!(expr("* * * * *").to_string(), "* * * * *");
    }

    #[test]
    fn names_any_case_and_sunday_as_seven() {
        let e = expr("0 0 * JAN,mar-May Mon-fri");
        assert_eq!(e.months, 1 << 1 | 1 << 3 | 1 << 4 | 1 << 5);
        assert_eq!(e.weekdays, 0b0011_1110);
        assert_eq!(expr("0 0 * * 7").weekdays, 1);
        assert_eq!(expr("0 0 * * 5-7").weekdays, 1 | 1 << 5 | 1 << 6);
        assert_eq!(expr("0 0 * * sun").weekdays, 1);
    }

    #[test]
    fn shorthands_stand_for_their_fields() {
        assert_eq!(expr("@daily"), expr("0 0 * * *"));
        assert_eq!(expr("@midnight"), expr("0 0 * * *"));
        assert_eq!(expr("@HOURLY"), expr("0 * * * *"));
        assert_eq!(expr("@weekly"), expr("0 0 * * 0"));
        assert_eq!(expr("@monthly"), expr("0 0 1 * *"));
        assert_eq!(expr("@yearly"), expr("@annually"));
        assert!(matches!(err("@reboot"), CronError::UnknownShorthand(_)));
        assert!(matches!(err("@sometimes"), CronError::UnknownShorthand(_)));
    }

    #[test]
    fn bad_fields_are_refused_with_the_field_named() {
        assert_eq!(err("* * * *"), CronError::FieldCount(4));
        assert_eq!(err("* * * * * *"), CronError::FieldCount(6));
        assert_eq!(err(""), CronError::FieldCount(0));
        let range = |field, value, min, max| CronError::OutOfRange {
            field,
            value,
            min,
            max,
        };
        assert_eq!(err("60 * * * *"), range("minute", 60, 0, 59));
        assert_eq!(err("* 24 * * *"), range("hour", 24, 0, 23));
        assert_eq!(err("* * 0 * *"), range("day-of-month", 0, 1, 31));
        assert_eq!(err("* * 32 * *"), range("day-of-month", 32, 1, 31));
        assert_eq!(err("* * * 13 *"), range("month", 13, 1, 12));
        assert_eq!(err("* * * 0 *"), range("month", 0, 1, 12));
        assert_eq!(err("* * * * 8"), range("day-of-week", 8, 0, 7));
        assert_eq!(
            err("99999999999999999999999 * * * *"),
            range("minute", u64::MAX, 0, 59)
        );
        assert!(matches!(
            err("1,,2 * * * *"),
            CronError::EmptyElement {
                field: "minute",
                ..
            }
        ));
        assert!(matches!(err(", * * * *"), CronError::EmptyElement { .. }));
        assert!(matches!(
            err("*/0 * * * *"),
            CronError::BadStep { step: 0, .. }
        ));
        assert!(matches!(
            err("* */25 * * *"),
            CronError::BadStep {
                step: 25,
                max: 24,
                ..
            }
        ));
        assert!(matches!(err("*/ * * * *"), CronError::NotANumber { .. }));
        assert!(matches!(err("*/-1 * * * *"), CronError::NotANumber { .. }));
        assert!(matches!(
            err("5-1 * * * *"),
            CronError::Backwards { from: 5, to: 1, .. }
        ));
        assert!(matches!(err("- * * * *"), CronError::NotANumber { .. }));
        assert!(matches!(err("1-2-3 * * * *"), CronError::NotANumber { .. }));
        assert!(matches!(
            err("x * * * *"),
            CronError::NotANumber { names: "", .. }
        ));
        assert!(matches!(
            err("* * * foo *"),
            CronError::NotANumber { field: "month", .. }
        ));
        assert!(matches!(
            err("* * * * monday"),
            CronError::NotANumber { .. }
        ));
        let long = format!("{} * * * *", "1,".repeat(200) + "1");
        assert!(matches!(
            err(&long),
            CronError::TooLong {
                field: "minute",
                ..
            }
        ));
        assert_eq!(err("0 0 30 2 *"), CronError::Never);
        assert_eq!(err("0 0 31 4,6,9,11 *"), CronError::Never);
        // A weekday makes such a day-of-month harmless (cron's OR).
        expr("0 0 30 2 mon");
        expr("0 0 29 2 *");
        // Every error says what to do in words.
        for e in [
            err("61 * * * *"),
            err("*/0 * * * *"),
            err("0 0 30 2 *"),
            err("* *"),
        ] {
            assert!(e.to_string().len() > 30, "{e}");
        }
    }

    #[test]
    fn next_run_within_a_day_and_across_month_and_year_ends() {
        assert_eq!(
            next("*/15 * * * *", "2026-12-02T03:04"),
            "2026-12-02T03:15 Wed"
        );
        // Strictly after: a time that is itself due gives the next one.
        assert_eq!(
            next("0 2 * * *", "2026-12-02T02:00"),
            "2026-12-03T02:00 Thu"
        );
        assert_eq!(
            next("0 2 * * *", "2026-12-02T01:59"),
            "2026-12-02T02:00 Wed"
        );
        assert_eq!(
            next("30 23 * * *", "2026-12-31T23:30"),
            "2027-01-01T23:30 Fri"
        );
        assert_eq!(
            next("0 0 1 * *", "2026-01-31T12:00"),
            "2026-02-01T00:00 Sun"
        );
        assert_eq!(
            next("0 0 31 * *", "2026-04-01T00:00"),
            "2026-05-31T00:00 Sun"
        );
        assert_eq!(
            next("0 0 * feb *", "2026-03-01T00:00"),
            "2027-02-01T00:00 Mon"
        );
        assert_eq!(next("@yearly", "2026-06-15T00:00"), "2027-01-01T00:00 Fri");
        // Seconds within the minute count as that minute.
        let t = at("2026-12-02T03:04") + 59;
        assert_eq!(
            show(expr("* * * * *").next_after(t).unwrap()),
            "2026-12-02T03:05 Wed"
        );
    }

    #[test]
    fn leap_years() {
        assert_eq!(
            next("0 0 29 2 *", "2026-01-01T00:00"),
            "2028-02-29T00:00 Tue"
        );
        assert_eq!(
            next("0 0 29 2 *", "2028-02-29T00:00"),
            "2032-02-29T00:00 Sun"
        );
        // 2100 is not a leap year: eight years between leap days.
        assert_eq!(
            next("0 0 29 2 *", "2096-03-01T00:00"),
            "2104-02-29T00:00 Fri"
        );
        assert_eq!(
            next("0 12 28-29 2 *", "2027-02-28T12:00"),
            "2028-02-28T12:00 Mon"
        );
    }

    #[test]
    fn day_of_month_or_day_of_week_when_both_are_restricted() {
        // The 13th or any Friday.
        let e = "0 0 13 * fri";
        assert_eq!(next(e, "2026-12-01T00:00"), "2026-12-04T00:00 Fri");
        assert_eq!(next(e, "2026-12-11T00:00"), "2026-12-13T00:00 Sun");
        // One restricted: both must match (only weekdays, any day of the month).
        assert_eq!(
            next("0 9 * * mon-fri", "2026-12-04T09:00"),
            "2026-12-07T09:00 Mon"
        );
        assert_eq!(
            next("0 9 1-7 * *", "2026-12-07T09:00"),
            "2027-01-01T09:00 Fri"
        );
        // A day-of-month step with a star weekday.
        assert_eq!(
            next("0 0 */10 * *", "2026-12-02T00:00"),
            "2026-12-11T00:00 Fri"
        );
    }

    #[test]
    fn the_end_of_the_calendar_has_no_next_run() {
        assert_eq!(expr("* * * * *").next_after(u64::MAX), None);
        assert_eq!(expr("0 0 1 1 *").next_after(at("9999-06-01T00:00")), None);
        assert!(expr("* * * * *").next_after(0).is_some());
    }
}
