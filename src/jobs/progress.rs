//! A job's progress: what it reports ([`Progress`]), whom it reports to ([`ProgressSink`],
//! modelled on rustic_core's progress traits, so this library holds no terminal code; the
//! command line's bar and lines implement it), and the words of the summary of a finished
//! job ([`format_summary`]).

use std::fmt::Write as _;

use super::pipeline::Summary;
use super::plan::VolumeKind;
use crate::units::Bytes;

/// Where a job is, for progress displays.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Progress {
    /// Bytes of snarfs read and stored so far.
    pub done_bytes: u64,
    /// Bytes of snarfs to read in all.
    pub total_bytes: u64,
    /// Snarfs stored so far (read or reused).
    pub done_snarfs: u64,
    /// Snarfs in all.
    pub total_snarfs: u64,
    /// Seconds since the transfer started.
    pub elapsed: f64,
}

/// What a job reports its progress to: a terminal, a report file, a test, nothing.
pub trait ProgressSink {
    /// The job is at `p`; called now and then from the job's calling thread.
    fn report(&mut self, p: &Progress);

    /// The job has ended, committed or not: clear whatever `report` drew.
    fn finish(&mut self) {}
}

/// Progress reported nowhere (rustic_core's `NoProgressBars`).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl ProgressSink for NoProgress {
    fn report(&mut self, _p: &Progress) {}
}

/// A closure takes each report, and has nothing to clear.
impl<F: FnMut(&Progress)> ProgressSink for F {
    fn report(&mut self, p: &Progress) {
        self(p)
    }
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
    match &s.converge {
        Some(c) => {
            let _ = writeln!(
                out,
                "backup {} of the live volumes, as of its final freeze (converge)",
                s.backup
            );
            let _ = writeln!(
                out,
                "converged in {} live passes: {} copied first, {} copied again; the final freeze held {} snarfs for {:.1} ms",
                c.passes,
                Bytes(c.first_bytes),
                Bytes(c.recopied_bytes),
                c.frozen_snarfs,
                c.freeze_us as f64 / 1000.0
            );
        }
        None => {
            let _ = writeln!(out, "backup {} of snapshot {}", s.backup, s.snapshot);
        }
    }
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
    let t = &s.sent;
    // A converge backup reads live, then from its freeze: the feed's tiers say nothing.
    if t.total() > 0 && s.converge.is_none() {
        let _ = writeln!(
            out,
            "sent {} snarfs: {} already in memory (page cache), {} held pre-images, {} captured \
             during the backup, {} read from disk",
            t.total(),
            t.cached,
            t.held,
            t.urgent,
            t.cold
        );
    }
    let _ = writeln!(
        out,
        "dedup ratio {} (non-zero bytes read per new byte), compression ratio {}",
        ratio(s.dedup_ratio()),
        ratio(s.compression_ratio())
    );
    let _ = writeln!(out, "time {:.1} s ({}/s)", s.seconds, Bytes(rate as u64));
    out
}
