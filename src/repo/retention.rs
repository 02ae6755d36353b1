//! Retention, borg style: keep the newest N backups, then the newest backup of each of the
//! last N days, ISO weeks and months that have backups (UTC). A backup kept by one rule does
//! not count towards the next. The newest backup (`current`) is always kept. Both formats
//! carry a prune out as a finishing, so an interrupted prune completes forward.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::ids::{civil_from_days, iso_week, BackupId};

/// How many backups to keep.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The newest N backups.
    pub keep_last: u32,
    /// The newest backup of each of the last N days with backups.
    pub keep_daily: u32,
    /// The newest backup of each of the last N ISO weeks with backups.
    pub keep_weekly: u32,
    /// The newest backup of each of the last N months with backups.
    pub keep_monthly: u32,
}

/// The largest count a `keep-*` option takes: more backups than anyone keeps, and the
/// counts' sum stays far from overflowing.
pub const MAX_KEEP: u32 = 1_000_000;

/// The retention options by name, as `control/jobs` and the schedule write them
/// (`snarf prune` and `snarf backup` take the same names as `--keep-…` flags).
pub const KEEP_OPTIONS: [&str; 4] = ["keep-last", "keep-daily", "keep-weekly", "keep-monthly"];

impl Policy {
    /// Sets the count of the option `name` (one of [`KEEP_OPTIONS`]); `false` if there is
    /// no such option.
    pub fn set(&mut self, name: &str, n: u32) -> bool {
        let slot = match name {
            "keep-last" => &mut self.keep_last,
            "keep-daily" => &mut self.keep_daily,
            "keep-weekly" => &mut self.keep_weekly,
            "keep-monthly" => &mut self.keep_monthly,
            _ => return false,
        };
        *slot = n;
        true
    }

    /// The options with a count, by name, in [`KEEP_OPTIONS`] order.
    pub fn options(&self) -> Vec<(&'static str, u32)> {
        let counts = [
            self.keep_last,
            self.keep_daily,
            self.keep_weekly,
            self.keep_monthly,
        ];
        KEEP_OPTIONS
            .into_iter()
            .zip(counts)
            .filter(|(_, n)| *n > 0)
            .collect()
    }

    /// Refuses a policy that would keep nothing.
    pub fn validate(&self) -> Result<()> {
        if self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0 {
            return Err(Error::BadArgument(
                "this retention policy keeps no backup at all; give at least --keep-last 1".into(),
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Policy {
    /// The options as written in `control/jobs`: `keep-daily=14 keep-weekly=4`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let words: Vec<String> = self
            .options()
            .into_iter()
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        f.write_str(&words.join(" "))
    }
}

/// Whether one backup is kept, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// The backup.
    pub id: BackupId,
    /// Its creation time.
    pub created: u64,
    /// Kept or removed.
    pub keep: bool,
    /// The rule that keeps it, e.g. "last #1", "daily #3"; empty if removed.
    pub reason: String,
}

/// Applies `policy` to `backups`; newest first.
/// `backups` are (id, creation time) pairs.
pub fn select(
    backups: &[(BackupId, u64)],
    policy: &Policy,
    current: Option<&BackupId>,
) -> Vec<Decision> {
    let mut list: Vec<(BackupId, u64)> = backups.to_vec();
    // Newest first; ids break ties between equal times and are time-ordered themselves.
    list.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| b.0.cmp(&a.0)));
    let mut kept: HashMap<BackupId, String> = HashMap::new();
    type PeriodFn = fn(u64) -> (i64, u32, u32);
    let rules: [(&str, u32, PeriodFn); 4] = [
        ("last", policy.keep_last, |_| (0, 0, 0)),
        ("daily", policy.keep_daily, |t| {
            civil_from_days((t / 86400) as i64)
        }),
        ("weekly", policy.keep_weekly, |t| {
            let (y, w) = iso_week((t / 86400) as i64);
            (y, w, 0)
        }),
        ("monthly", policy.keep_monthly, |t| {
            let (y, m, _) = civil_from_days((t / 86400) as i64);
            (y, m, 0)
        }),
    ];
    for (name, n, period) in rules {
        if n == 0 {
            continue;
        }
        let mut count = 0;
        let mut last_period = None;
        for (i, (id, t)) in list.iter().enumerate() {
            // "last" keeps every backup in order, the others one per period.
            let p = if name == "last" {
                (i as i64, 0, 0)
            } else {
                period(*t)
            };
            if last_period == Some(p) {
                continue;
            }
            last_period = Some(p);
            if kept.contains_key(id) {
                continue;
            }
            count += 1;
            kept.insert(id.clone(), format!("{name} #{count}"));
            if count == n {
                break;
            }
        }
    }
    if let Some(c) = current {
        kept.entry(c.clone()).or_insert_with(|| "current".into());
    }
    list.into_iter()
        .map(|(id, created)| {
            let reason = kept.get(&id).cloned();
            Decision {
                keep: reason.is_some(),
                reason: reason.unwrap_or_default(),
                id,
                created,
            }
        })
        .collect()
}

/// What a prune decided and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PruneReport {
    /// Every backup, newest first, with the decision.
    pub decisions: Vec<Decision>,
    /// True if nothing was changed.
    pub dry_run: bool,
    /// Packs deleted (or that would be).
    pub packs_removed: u64,
    /// Bytes freed (or that would be).
    pub freed_bytes: u64,
    /// Damaged backups gc went around (never removed by retention), with what it kept.
    pub damaged: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::repo::ids::days_from_civil;

    fn at(y: i64, m: u32, d: u32, h: u64) -> (BackupId, u64) {
        let t = days_from_civil(y, m, d) as u64 * 86400 + h * 3600;
        (BackupId::generate(t), t)
    }

    fn kept(d: &[Decision]) -> Vec<u64> {
        d.iter().filter(|d| d.keep).map(|d| d.created).collect()
    }

    #[test]
    fn keep_last_keeps_the_newest() {
        let b: Vec<(BackupId, u64)> = (1..=5).map(|d| at(2026, 1, d, 0)).collect();
        let d = select(
            &b,
            &Policy {
                keep_last: 2,
                ..Policy::default()
            },
            None,
        );
        assert_eq!(kept(&d), vec![b[4].1, b[3].1]);
        assert_eq!(d[0].reason, "last #1");
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day() {
        // Two backups a day for four days.
        let mut b = Vec::new();
        for d in 1..=4 {
            b.push(at(2026, 3, d, 1));
            b.push(at(2026, 3, d, 13));
        }
        let d = select(
            &b,
            &Policy {
                keep_daily: 3,
                ..Policy::default()
            },
            None,
        );
        let expect: Vec<u64> = [4u32, 3, 2].iter().map(|&d| at(2026, 3, d, 13).1).collect();
        assert_eq!(kept(&d), expect);
    }

    #[test]
    fn rules_combine_and_an_already_kept_backup_does_not_count_twice() {
        // One backup a day through January and February 2026.
        let mut b = Vec::new();
        for d in 1..=31 {
            b.push(at(2026, 1, d, 12));
        }
        for d in 1..=28 {
            b.push(at(2026, 2, d, 12));
        }
        let p = Policy {
            keep_last: 1,
            keep_daily: 2,
            keep_weekly: 2,
            keep_monthly: 2,
        };
        let d = select(&b, &p, None);
        let k = kept(&d);
        let day = |m, d| at(2026, m, d, 12).1;
        // last: Feb 28; daily: Feb 27, 26 (Feb 28's day is used but already kept);
        // weekly: Feb 28 is in week 9 (kept) -> next week 8's newest is Feb 22, then week 7's
        // Feb 15; monthly: February kept already -> January 31, and no third month exists.
        assert_eq!(
            k,
            vec![
                day(2, 28),
                day(2, 27),
                day(2, 26),
                day(2, 22),
                day(2, 15),
                day(1, 31)
            ]
        );
        assert_eq!(
            d.iter().find(|x| x.created == day(1, 31)).unwrap().reason,
            "monthly #1"
        );
    }

    #[test]
    fn current_is_always_kept_and_empty_policy_is_refused() {
        let b: Vec<(BackupId, u64)> = (1..=3).map(|d| at(2026, 5, d, 0)).collect();
        let d = select(
            &b,
            &Policy {
                keep_last: 1,
                ..Policy::default()
            },
            Some(&b[0].0),
        );
        assert_eq!(kept(&d).len(), 2);
        assert!(Policy::default().validate().is_err());
    }
}
