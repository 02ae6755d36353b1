//! Showing a job: a progress bar on a terminal (bytes, rate, ETA), plain lines every few
//! seconds otherwise (cron logs stay short), both on stderr; and the summary printed at the
//! end on stdout.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::pipeline::{Progress, Summary};
use super::plan::VolumeKind;
use crate::units::Bytes;

/// How often plain progress lines are printed.
pub const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// A job's progress on stderr.
pub struct ProgressDisplay {
    label: String,
    tty: bool,
    bar: Option<ProgressBar>,
    last_line: Option<Instant>,
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
        }
    }

    /// Shows `p`.
    pub fn update(&mut self, p: &Progress) {
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
        if self.last_line.is_some_and(|t| t.elapsed() < PLAIN_EVERY) {
            return;
        }
        self.last_line = Some(Instant::now());
        eprintln!("{}", plain_line(&self.label, p));
    }

    /// Clears the bar (the summary follows on stdout).
    pub fn finish(&mut self) {
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

fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) => format!("{r:.2}"),
        None => "- (nothing new stored)".into(),
    }
}

/// The summary printed when a job is done.
pub fn format_summary(s: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "backup {} of snapshot {}", s.backup, s.snapshot);
    for v in &s.volumes {
        let how = match &v.kind {
            VolumeKind::Full { reason } if v.reused > 0 => format!(
                "full ({reason}): read {} snarfs, {} holes recorded without reading",
                v.read, v.reused
            ),
            VolumeKind::Full { reason } => format!("full ({reason}): read {} snarfs", v.read),
            VolumeKind::Incremental { base, old_size } => {
                let resized = match old_size {
                    Some(old) => format!(", size changed from {}", Bytes(*old)),
                    None => String::new(),
                };
                format!(
                    "incremental from {base}: read {} of {} snarfs, reused {}{resized}",
                    v.read, v.snarfs, v.reused
                )
            }
        };
        let _ = writeln!(out, "  volume {} ({}): {how}", v.name, Bytes(v.size));
    }
    let rate = if s.seconds > 0.0 {
        s.bytes_read as f64 / s.seconds
    } else {
        0.0
    };
    let _ = writeln!(
        out,
        "read {} ({} of it zeros), stored {} new ({} chunks, {} before compression)",
        Bytes(s.bytes_read),
        Bytes(s.zero_bytes_read),
        Bytes(s.new_stored_bytes),
        s.new_chunks,
        Bytes(s.new_raw_bytes)
    );
    let _ = writeln!(
        out,
        "dedup ratio {} (non-zero bytes read per new byte), compression ratio {}",
        ratio(s.dedup_ratio()),
        ratio(s.compression_ratio())
    );
    let _ = writeln!(out, "time {:.1} s ({}/s)", s.seconds, Bytes(rate as u64));
    out
}
