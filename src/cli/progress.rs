//! Showing a job on the terminal: a progress bar on a terminal (bytes, rate, ETA), plain
//! lines every few seconds otherwise (cron logs stay short), both on stderr. It is the
//! command line's [`ProgressSink`]; the jobs layer only reports to it.

use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::jobs::{Progress, ProgressSink};
use crate::units::Bytes;

/// How often plain progress lines are printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A job's progress on stderr.
pub struct ProgressDisplay {
    label: String,
    tty: bool,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
    every: Duration,
}

impl ProgressDisplay {
    /// A display for the job `label`; a bar when `tty`, lines otherwise.
    pub fn new(label: &str, tty: bool) -> ProgressDisplay {
        // Made at the first update, once the total is known, so it never shows 0 of 0.
        let bar = None;
        ProgressDisplay {
            label: label.to_string(),
            tty,
            bar,
            last_line: None,
            every: PLAIN_EVERY,
        }
    }

    /// The same, printing plain lines every `every` instead of [`PLAIN_EVERY`].
    pub fn every(mut self, every: Duration) -> ProgressDisplay {
        self.every = every;
        self
    }
}

impl ProgressSink for ProgressDisplay {
    /// Shows `p`.
    fn report(&mut self, p: &Progress) {
        if self.tty && self.bar.is_none() {
            let b =
                ProgressBar::with_draw_target(Some(p.total_bytes), ProgressDrawTarget::stderr());
            // The bar takes what is left of the terminal's width, so the line never wraps.
            let style = ProgressStyle::with_template(
                "{msg} {percent:>3}% {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} [{wide_bar}]",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("#>-");
            b.set_style(style);
            b.set_message(self.label.clone());
            self.bar = Some(b);
        }
        if let Some(b) = &self.bar {
            b.set_length(p.total_bytes);
            b.set_position(p.done_bytes.min(p.total_bytes));
            return;
        }
        if self.last_line.is_some_and(|t| t.elapsed() < self.every) {
            return;
        }
        self.last_line = Some(Instant::now());
        // A closed standard error (the ssh connection of a remote job gone) must not end
        // the job with a panic; the job is stopped in order instead.
        let _ = writeln!(std::io::stderr().lock(), "{}", plain_line(&self.label, p));
    }

    /// Clears the bar (the summary follows on stdout).
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

impl Drop for ProgressDisplay {
    fn drop(&mut self) {
        self.finish();
    }
}

/// One plain progress line: percentage, bytes, rate and ETA.
pub fn plain_line(label: &str, p: &Progress) -> String {
    let pct = if p.total_bytes == 0 {
        100.0
    } else {
        p.done_bytes as f64 * 100.0 / p.total_bytes as f64
    };
    let rate = if p.elapsed > 0.0 {
        p.done_bytes as f64 / p.elapsed
    } else {
        0.0
    };
    let eta = if rate > 0.0 && p.total_bytes > p.done_bytes {
        format!("{:.0} s", (p.total_bytes - p.done_bytes) as f64 / rate)
    } else {
        "-".into()
    };
    format!(
        "{label}: {pct:.0}% ({} of {}), {}/s, ETA {eta}",
        Bytes(p.done_bytes),
        Bytes(p.total_bytes),
        Bytes(rate as u64)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_shows_percent_bytes_rate_and_eta() {
        let p = Progress {
            done_bytes: 1 << 20,
            total_bytes: 4 << 20,
            done_snarfs: 16,
            total_snarfs: 64,
            elapsed: 2.0,
        };
        let line = plain_line("backup s", &p);
        assert!(line.starts_with("backup s: 25% ("), "{line}");
        assert!(line.ends_with("ETA 6 s"), "{line}");
        // Nothing to do, or no time measured yet: no division by zero, no ETA.
        let none = plain_line("b", &Progress::default());
        assert!(
            none.starts_with("b: 100% (") && none.ends_with("ETA -"),
            "{none}"
        );
    }
}
