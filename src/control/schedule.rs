//! The schedule file (`STORE/schedule`, read and replaced through `control/schedule`): one
//! job per line, crontab style, and the table `control/schedule-status` shows of it.
//!
//! ```text
//! # minute hour day-of-month month day-of-week  job (a control/jobs command)
//! 0 2 * * *     backup snapshot=auto repo=/srv/repo mode=auto
//! @hourly       backup snapshot=auto volumes=db.img
//! 30 3 * * sun  backup weekly-frozen mode=full
//! ```
//!
//! A line is the time fields ([`super::cron`], UTC) and then a `backup` command of
//! `control/jobs` with the same words and options (`repo=`, `volumes=`, `mode=`), except
//! that its snapshot may be `snapshot=auto`: the daemon then takes a snapshot for the run and
//! releases it when the job ends. `type=` is not taken: scheduled jobs always run as `cron`.
//! `#` starts a comment line; blank lines are ignored. A line is known by its text (spaces
//! at its ends aside), so editing one line keeps the run history of the others; the same
//! line twice is refused for that reason.

use super::cron::{CronError, CronExpr};
use super::file::ControlFile;
use super::grammar::{self, Command, Rejection, MAX_COMMAND_BYTES};
use super::table::{time, Table};
use super::words::{quote_word, split_words};
use crate::jobs::BackupRequest;

/// Largest schedule accepted, in bytes.
pub const MAX_SCHEDULE_BYTES: usize = 64 << 10;

/// The word that asks for a snapshot taken for each run.
pub const AUTO_SNAPSHOT: &str = "snapshot=auto";

/// One job line of the schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduleLine {
    /// Line number in the file, from 1.
    pub number: usize,
    /// The line's text without the spaces at its ends: what identifies it.
    pub text: String,
    /// When it runs.
    pub when: CronExpr,
    /// What it runs.
    pub job: ScheduledJob,
}

/// The job of a schedule line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScheduledJob {
    /// The backup; its snapshot is a placeholder when `auto_snapshot` is set.
    pub request: BackupRequest,
    /// Whether the daemon takes (and afterwards releases) a snapshot for each run.
    pub auto_snapshot: bool,
}

/// Why a line of the schedule is not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LineProblem {
    /// The time fields are wrong.
    #[error(transparent)]
    When(#[from] CronError),
    /// The job is not a command of control/jobs.
    #[error("{}", .0.reason)]
    Job(Rejection),
    /// Time fields and nothing after them.
    #[error("the job is missing: after the time fields comes a backup command, as in `0 2 * * * backup snapshot=auto`")]
    NoJob,
    /// A command other than backup.
    #[error("\"{0}\" cannot be scheduled; a schedule line runs a backup, as in `0 2 * * * backup snapshot=auto`")]
    NotBackup(String),
    /// A `type=` option.
    #[error("type= is not taken in a schedule: scheduled jobs always run as type cron")]
    Type,
    /// Not UTF-8.
    #[error("the line is not UTF-8 text; the schedule is plain text")]
    NotUtf8,
    /// A line too long to be meant.
    #[error("the line is {0} bytes long; a line is at most {MAX_COMMAND_BYTES} bytes")]
    TooLong(usize),
    /// The file is too large.
    #[error("the schedule is {0} bytes long, more than the {MAX_SCHEDULE_BYTES} bytes accepted; this line is past the limit")]
    FileTooLarge(usize),
    /// A `snapshot=` other than `snapshot=auto`.
    #[error("\"{0}\" is not taken: write snapshot=auto for a snapshot taken for each run, or the name of an existing snapshot without snapshot=")]
    SnapshotWord(String),
    /// The same line again.
    #[error("the line repeats line {0}; lines are told apart by their text, so give each once")]
    Duplicate(usize),
}

/// A bad line: its number and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {problem}")]
pub struct LineError {
    /// Line number, from 1.
    pub line: usize,
    /// What is wrong.
    pub problem: LineProblem,
}

/// A schedule as read: its good lines and its bad ones.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Schedule {
    /// The lines that run.
    pub lines: Vec<ScheduleLine>,
    /// The lines that do not, with why.
    pub errors: Vec<LineError>,
}

/// Parses a schedule file, keeping the good lines beside the bad ones.
pub fn parse_schedule(input: &[u8]) -> Schedule {
    let mut out = Schedule::default();
    let mut offset = 0usize;
    for (i, raw) in input.split(|b| *b == b'\n').enumerate() {
        let number = i + 1;
        let start = offset;
        offset += raw.len() + 1;
        if start >= MAX_SCHEDULE_BYTES {
            out.errors.push(LineError {
                line: number,
                problem: LineProblem::FileTooLarge(input.len()),
            });
            break;
        }
        let bad = |problem| LineError {
            line: number,
            problem,
        };
        if raw.len() > MAX_COMMAND_BYTES {
            out.errors.push(bad(LineProblem::TooLong(raw.len())));
            continue;
        }
        let Ok(text) = std::str::from_utf8(raw) else {
            out.errors.push(bad(LineProblem::NotUtf8));
            continue;
        };
        let text = text.trim_matches([' ', '\t', '\r']);
        if text.is_empty() || text.starts_with('#') {
            continue;
        }
        if let Some(first) = out.lines.iter().find(|l| l.text == text) {
            out.errors.push(bad(LineProblem::Duplicate(first.number)));
            continue;
        }
        match parse_line(text) {
            Ok((when, job)) => out.lines.push(ScheduleLine {
                number,
                text: text.to_string(),
                when,
                job,
            }),
            Err(problem) => out.errors.push(bad(problem)),
        }
    }
    out
}

/// Parses a schedule that must be wholly good (a replacement written to control/schedule).
pub fn parse_strict(input: &[u8]) -> Result<Vec<ScheduleLine>, Vec<LineError>> {
    let s = parse_schedule(input);
    if s.errors.is_empty() {
        Ok(s.lines)
    } else {
        Err(s.errors)
    }
}

/// One non-comment line: its time fields, then its job.
fn parse_line(text: &str) -> Result<(CronExpr, ScheduledJob), LineProblem> {
    let count = if text.starts_with('@') { 1 } else { 5 };
    let mut rest = text;
    let mut fields = Vec::with_capacity(count);
    while fields.len() < count {
        rest = rest.trim_start_matches([' ', '\t']);
        if rest.is_empty() {
            break;
        }
        let end = rest.find([' ', '\t']).unwrap_or(rest.len());
        fields.push(&rest[..end]);
        rest = &rest[end..];
    }
    if fields.len() < count {
        return Err(CronError::FieldCount(fields.len()).into());
    }
    let when = CronExpr::parse(&fields)?;
    let job = rest.trim_matches([' ', '\t']);
    if job.is_empty() {
        return Err(LineProblem::NoJob);
    }
    Ok((when, parse_job(job)?))
}

/// The job of a line: a `backup` command of control/jobs, whose snapshot may be
/// `snapshot=auto`.
fn parse_job(job: &str) -> Result<ScheduledJob, LineProblem> {
    let words = split_words(job).ok();
    let words = words.as_deref().unwrap_or_default();
    let args = words.get(1..).unwrap_or_default();
    if args.iter().any(|w| w.starts_with("type=")) {
        return Err(LineProblem::Type);
    }
    if let Some(w) = args
        .iter()
        .find(|w| w.starts_with("snapshot=") && *w != AUTO_SNAPSHOT)
    {
        return Err(LineProblem::SnapshotWord(w.chars().take(60).collect()));
    }
    let auto_snapshot = args.iter().any(|w| w == AUTO_SNAPSHOT);
    // The grammar wants a snapshot name first where `snapshot=auto` stands anywhere; any
    // valid name does, since each run names its own snapshot.
    let command = if auto_snapshot {
        let mut w: Vec<String> = vec![words[0].clone(), "auto".into()];
        w.extend(
            args.iter()
                .filter(|a| *a != AUTO_SNAPSHOT)
                .map(|a| quote_word(a)),
        );
        w.join(" ")
    } else {
        job.to_string()
    };
    match grammar::parse(ControlFile::Jobs, command.as_bytes()) {
        Ok(Command::Backup(mut request)) => {
            request.kind = crate::pids::ProcType::Cron;
            Ok(ScheduledJob {
                request,
                auto_snapshot,
            })
        }
        Ok(other) => Err(LineProblem::NotBackup(
            other
                .to_string()
                .split(' ')
                .next()
                .unwrap_or_default()
                .into(),
        )),
        Err(r) => Err(LineProblem::Job(r)),
    }
}

/// One row of `control/schedule-status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ScheduleRow {
    /// Line number in the schedule file.
    pub line: usize,
    /// The next run, Unix seconds (none if the calendar holds none).
    pub next: Option<u64>,
    /// The last run's start, Unix seconds.
    pub last: Option<u64>,
    /// How the last run went (`running`, `done: backup ID`, `failed: ...`), and ticks
    /// skipped because it was still running.
    pub result: String,
    /// The line's text.
    pub text: String,
}

/// `control/schedule-status`: each line with its next run, last run and result; then each
/// line's text (free text, so in a table of its own); then the lines of the file on disk
/// that do not run, with why.
pub fn render_schedule(rows: &[ScheduleRow], errors: &[LineError]) -> String {
    let mut t = Table::new(&["LINE", "NEXT", "LAST", "RESULT"]);
    let mut jobs = Table::new(&["LINE", "JOB"]);
    for r in rows {
        t.push(vec![
            r.line.to_string(),
            time(r.next),
            time(r.last),
            r.result.clone(),
        ]);
        jobs.push(vec![r.line.to_string(), r.text.clone()]);
    }
    let mut out = t.render();
    if !rows.is_empty() {
        out.push('\n');
        out.push_str(&jobs.render());
    }
    if !errors.is_empty() {
        let mut e = Table::new(&["BAD-LINE", "ERROR"]);
        for err in errors {
            e.push(vec![err.line.to_string(), err.problem.to_string()]);
        }
        out.push('\n');
        out.push_str(&e.render());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jobs::Mode;
    use crate::pids::ProcType;

    #[test]
    fn good_lines_comments_and_blank_lines() {
        let s = parse_schedule(
            b"# nightly\n\n  0 2 * * *  backup snapshot=auto repo=/srv/repo mode=full \n@hourly\tbackup frozen volumes=a.img,b.img\r\n",
        );
        assert_eq!(s.errors, []);
        assert_eq!(s.lines.len(), 2);
        let a = &s.lines[0];
        assert_eq!(a.number, 3);
        assert_eq!(
            a.text,
            "0 2 * * *  backup snapshot=auto repo=/srv/repo mode=full"
        );
        assert!(a.job.auto_snapshot);
        assert_eq!(a.job.request.kind, ProcType::Cron);
        assert_eq!(a.job.request.mode, Mode::Full);
        assert_eq!(
            a.job.request.repo.as_deref(),
            Some(std::path::Path::new("/srv/repo"))
        );
        let b = &s.lines[1];
        assert_eq!(b.number, 4);
        assert!(!b.job.auto_snapshot);
        assert_eq!(b.job.request.snapshot, "frozen");
        assert_eq!(b.when.to_string(), "0 * * * *");
        assert_eq!(parse_schedule(b"").lines, []);
        assert_eq!(parse_strict(b"# only a comment\n"), Ok(vec![]));
    }

    #[test]
    fn a_line_may_run_a_converge_backup() {
        let s = parse_schedule(b"30 1 * * * converge volumes=vm.img repo=/srv/repo keep-daily=7\n");
        assert_eq!(s.errors, []);
        let r = &s.lines[0].job.request;
        assert!(r.converge, "{r:?}");
        assert_eq!(r.kind, ProcType::Cron);
        assert_eq!(r.volumes, Some(vec!["vm.img".to_string()]));
        assert!(!s.lines[0].job.auto_snapshot);
        // It names no snapshot, so snapshot=auto has nothing to stand for.
        assert!(matches!(
            problem("0 2 * * * converge snapshot=auto"),
            LineProblem::Job(_)
        ));
    }

    fn problem(text: &str) -> LineProblem {
        let s = parse_schedule(text.as_bytes());
        assert_eq!(s.lines, [], "{text}");
        assert_eq!(s.errors.len(), 1, "{text}");
        s.errors[0].problem.clone()
    }

    #[test]
    fn bad_lines_are_named_by_number_and_the_good_ones_kept() {
        let s = parse_schedule(b"0 2 * * * backup snapshot=auto\n61 2 * * * backup snapshot=auto\n\n0 3 * * * backup snapshot=auto\n0 4 * * * destroy\n");
        assert_eq!(s.lines.iter().map(|l| l.number).collect::<Vec<_>>(), [1, 4]);
        let lines: Vec<usize> = s.errors.iter().map(|e| e.line).collect();
        assert_eq!(lines, [2, 5]);
        assert!(
            s.errors[0]
                .to_string()
                .starts_with("line 2: 61 is out of range for the minute field"),
            "{}",
            s.errors[0]
        );
        assert_eq!(
            parse_strict(b"0 2 * * * backup snapshot=auto\nx\n")
                .unwrap_err()
                .len(),
            1
        );
    }

    #[test]
    fn retention_options_ride_on_a_line_and_a_bad_count_names_its_line() {
        let s = parse_schedule(
            b"0 2 * * * backup snapshot=auto repo=ssh://bk@vault/srv/repo keep-daily=14\n@weekly backup snapshot=auto keep-last=3 keep-monthly=6\n@daily backup snapshot=auto keep-daily=fourteen\n",
        );
        assert_eq!(s.lines.len(), 2, "{:?}", s.errors);
        let first = &s.lines[0].job.request;
        assert_eq!(
            first.repo.as_deref(),
            Some(std::path::Path::new("ssh://bk@vault/srv/repo"))
        );
        let keep = first.keep.expect("keep-daily=14 is the line's retention");
        assert_eq!((keep.keep_daily, keep.keep_last), (14, 0));
        let keep = s.lines[1].job.request.keep.unwrap();
        assert_eq!((keep.keep_last, keep.keep_monthly), (3, 6));
        assert_eq!(s.errors.len(), 1);
        assert_eq!(s.errors[0].line, 3);
        let shown = s.errors[0].to_string();
        assert!(
            shown.starts_with("line 3: ") && shown.contains("keep-daily="),
            "{shown}"
        );
    }

    #[test]
    fn every_kind_of_bad_line() {
        assert_eq!(problem("0 2 * *"), CronError::FieldCount(4).into());
        assert_eq!(problem("@daily"), LineProblem::NoJob);
        assert_eq!(problem("0 2 * * *   "), LineProblem::NoJob);
        assert_eq!(
            problem("*/0 2 * * * backup snapshot=auto"),
            CronError::BadStep {
                field: "minute",
                step: 0,
                max: 60
            }
            .into()
        );
        assert_eq!(
            problem("0 2 * * * cancel 1-1"),
            LineProblem::NotBackup("cancel".into())
        );
        assert_eq!(
            problem("0 2 * * * backup snapshot=auto type=user"),
            LineProblem::Type
        );
        assert_eq!(problem("0 2 * * * backup s type=cron"), LineProblem::Type);
        assert!(matches!(
            problem("0 2 * * * backup snapshot=auto repo=relative"),
            LineProblem::Job(_)
        ));
        // Retention is taken (see below); a bad count is a bad line.
        for bad in [
            "keep-daily=x",
            "keep-daily=-1",
            "keep-weekly=1000001",
            "keep-last=0",
            "keep-daily=1 keep-daily=2",
            "keep-hourly=3",
        ] {
            assert!(
                matches!(
                    problem(&format!("0 2 * * * backup snapshot=auto {bad}")),
                    LineProblem::Job(_)
                ),
                "{bad}"
            );
        }
        assert!(matches!(
            problem("0 2 * * * backup ../x"),
            LineProblem::Job(_)
        ));
        assert!(matches!(
            problem("0 2 * * * backup \"open"),
            LineProblem::Job(_)
        ));
        assert!(matches!(
            problem("0 2 * * * backup a\u{7}b"),
            LineProblem::Job(_)
        ));
        assert_eq!(
            problem("0 2 * * * backup snapshot=manual"),
            LineProblem::SnapshotWord("snapshot=manual".into())
        );
        assert!(matches!(
            problem("0 2 * * * backup \u{0}"),
            LineProblem::Job(_)
        ));
        // snapshot=auto may stand anywhere among the options.
        let s = parse_schedule(b"0 2 * * * backup mode=full snapshot=auto");
        assert!(s.lines[0].job.auto_snapshot && s.lines[0].job.request.mode == Mode::Full);
        let mut bytes = b"0 2 * * * backup s".to_vec();
        bytes.push(0xff);
        assert_eq!(
            parse_schedule(&bytes).errors[0].problem,
            LineProblem::NotUtf8
        );
        let long = format!("0 2 * * * backup {}", "a".repeat(5000));
        assert_eq!(problem(&long), LineProblem::TooLong(long.len()));
        let s = parse_schedule(b"@daily backup snapshot=auto\n  @daily backup snapshot=auto\n");
        assert_eq!(
            s.errors[0],
            LineError {
                line: 2,
                problem: LineProblem::Duplicate(1)
            }
        );
        // A schedule past the size limit: the lines past it are refused, not silently cut.
        let mut big = Vec::new();
        for i in 0..3000 {
            big.extend_from_slice(
                format!(
                    "{} {} * * * backup snapshot=auto volumes=v{i}.img\n",
                    i % 60,
                    i % 24
                )
                .as_bytes(),
            );
        }
        let s = parse_schedule(&big);
        assert!(matches!(
            s.errors.last().unwrap().problem,
            LineProblem::FileTooLarge(_)
        ));
        assert!(!s.lines.is_empty());
    }

    #[test]
    fn the_table_shows_each_line_and_the_bad_ones() {
        let rows = [ScheduleRow {
            line: 3,
            next: Some(86_400),
            last: None,
            result: String::new(),
            text: "@daily backup snapshot=auto".into(),
        }];
        let errors = [LineError {
            line: 5,
            problem: LineProblem::NoJob,
        }];
        let out = render_schedule(&rows, &errors);
        let mut lines = out.lines();
        assert!(lines.next().unwrap().starts_with("LINE"));
        let row = lines.next().unwrap();
        assert!(row.starts_with("3 "), "{row}");
        assert!(row.contains("1970-01-02T00:00:00Z"), "{row}");
        assert!(row.ends_with(" -"), "no result yet: {row}");
        assert!(
            out.contains("\nLINE  JOB\n3     @daily backup snapshot=auto\n"),
            "{out}"
        );
        assert!(out.contains("BAD-LINE"), "{out}");
        let bad = out.lines().last().unwrap();
        assert!(
            bad.starts_with("5 ") && bad.contains("the job is missing"),
            "{out}"
        );
    }
}
