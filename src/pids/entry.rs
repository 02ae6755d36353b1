//! One registry entry and the registry file's text format: JSON lines, one object per
//! process, so an administrator can `cat` or `jq` it and a newer snarf can add fields an
//! older one ignores.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Who started a registered process; the idle policy treats each type differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcType {
    /// Started by a person from a shell.
    User,
    /// Started by the schedule.
    Cron,
    /// A job started from another host.
    Remote,
    /// The local end of the ssh pipe of a remote job.
    Sshpipe,
}

impl ProcType {
    /// Every type, in the order tables list them.
    pub const ALL: [ProcType; 4] = [
        ProcType::User,
        ProcType::Cron,
        ProcType::Remote,
        ProcType::Sshpipe,
    ];

    /// The lowercase word used in the registry file and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcType::User => "user",
            ProcType::Cron => "cron",
            ProcType::Remote => "remote",
            ProcType::Sshpipe => "sshpipe",
        }
    }

    /// Parses the lowercase word; `None` for anything else.
    pub fn from_word(word: &str) -> Option<ProcType> {
        ProcType::ALL.into_iter().find(|t| t.as_str() == word)
    }
}

impl fmt::Display for ProcType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a registered process is doing, as its owner last said.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProcState {
    /// Registered but not (or no longer) doing work; a newer user job may stop it.
    Idle,
    /// Transferring data.
    Running,
    /// Committing a backup; must be left to complete.
    Finishing,
}

impl ProcState {
    /// The lowercase word used in the registry file and in tables.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcState::Idle => "idle",
            ProcState::Running => "running",
            ProcState::Finishing => "finishing",
        }
    }
}

impl fmt::Display for ProcState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One registered process. `(pid, start_time, boot_id)` identify it: a pid alone may have
/// been reused by an unrelated process since the entry was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Process id.
    pub pid: u32,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat).
    pub start_time: u64,
    /// The kernel's boot id when the entry was written.
    pub boot_id: String,
    /// Who started the process.
    #[serde(rename = "type")]
    pub kind: ProcType,
    /// What the process is doing.
    pub state: ProcState,
    /// Job id or description; may be empty.
    #[serde(default)]
    pub job: String,
    /// Repository path the job works on; may be empty.
    #[serde(default)]
    pub repo: String,
    /// Registration time, seconds since the Unix epoch.
    pub registered: u64,
    /// The process's command line, one element per argument.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// The PID namespace `pid` is a pid in (inode of /proc/PID/ns/pid); missing in entries
    /// of older snarf versions, which are never stopped for that reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid_ns: Option<u64>,
    /// The other host of a job over ssh: who started a `remote` job (the ssh client's
    /// address), or where an `sshpipe` job runs (`[user@]host[:port]`); empty otherwise.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

impl Entry {
    /// Whether this entry and `other` name the same process incarnation.
    pub fn same_process(&self, other: &Entry) -> bool {
        self.pid == other.pid
            && self.start_time == other.start_time
            && self.boot_id == other.boot_id
            && self.pid_ns == other.pid_ns
    }

    /// Whether the entry works on `repo`. Paths compare component-wise so `/r/` matches
    /// `/r`; an empty path matches nothing, because "no repository" is not a repository.
    pub fn works_on(&self, repo: &str) -> bool {
        !self.repo.is_empty() && !repo.is_empty() && Path::new(&self.repo) == Path::new(repo)
    }
}

/// A line of the registry file that is not an entry, kept so callers can report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    /// 1-based line number.
    pub line: usize,
    /// Why it could not be read.
    pub why: String,
}

/// Reads registry text: one JSON object per line; blank lines are skipped, unreadable
/// lines are returned apart so one damaged line never hides the others.
pub fn parse_registry(text: &str) -> (Vec<Entry>, Vec<BadLine>) {
    let mut entries = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str::<Entry>(line) {
            Ok(e) => entries.push(e),
            Err(e) => bad.push(BadLine {
                line: i + 1,
                why: e.to_string(),
            }),
        }
    }
    (entries, bad)
}

/// Writes registry text: one JSON object per line, each ending in a newline.
pub fn format_registry(entries: &[Entry]) -> String {
    let mut out = String::new();
    for e in entries {
        // Serialising a struct of strings and integers cannot fail; an empty line would
        // only drop this entry, never corrupt the file.
        out.push_str(&serde_json::to_string(e).unwrap_or_default());
        out.push('\n');
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample(pid: u32) -> Entry {
        Entry {
            pid,
            start_time: 1000 + pid as u64,
            boot_id: "b00t".into(),
            kind: ProcType::User,
            state: ProcState::Idle,
            job: String::new(),
            repo: "/srv/repo".into(),
            registered: 1_700_000_000,
            cmdline: vec!["snarf".into(), "backup".into(), "night ly".into()],
            pid_ns: Some(4026531836),
            host: String::new(),
        }
    }

    #[test]
    fn round_trips_every_type_and_awkward_text() {
        let mut entries = Vec::new();
        for (i, kind) in ProcType::ALL.into_iter().enumerate() {
            let mut e = sample(i as u32 + 1);
            e.kind = kind;
            e.job = "job with\nnewline \"quotes\" and \t tab".into();
            entries.push(e);
        }
        let text = format_registry(&entries);
        assert_eq!(text.lines().count(), entries.len());
        let (back, bad) = parse_registry(&text);
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(back, entries);
    }

    #[test]
    fn format_is_readable_json_lines() {
        let text = format_registry(&[sample(7)]);
        assert!(text.starts_with("{\"pid\":7,"), "{text}");
        assert!(text.contains("\"type\":\"user\""), "{text}");
        assert!(text.contains("\"state\":\"idle\""), "{text}");
    }

    #[test]
    fn damaged_line_is_reported_not_fatal() {
        let good = format_registry(&[sample(1), sample(2)]);
        let mut lines: Vec<&str> = good.lines().collect();
        lines.insert(1, "{\"pid\":3,\"start_ti");
        let (entries, bad) = parse_registry(&lines.join("\n"));
        assert_eq!(entries.len(), 2);
        assert_eq!(bad.len(), 1);
        assert_eq!(bad[0].line, 2);
    }

    #[test]
    fn unknown_type_is_rejected_and_missing_optional_fields_default() {
        let (_, bad) = parse_registry(
            r#"{"pid":1,"start_time":2,"boot_id":"b","type":"daemon","state":"idle","registered":0}"#,
        );
        assert_eq!(bad.len(), 1);
        let (ok, bad) = parse_registry(
            r#"{"pid":1,"start_time":2,"boot_id":"b","type":"sshpipe","state":"running","registered":0,"future":1}"#,
        );
        assert!(bad.is_empty(), "{bad:?}");
        assert_eq!(ok[0].kind, ProcType::Sshpipe);
        assert!(ok[0].job.is_empty() && ok[0].cmdline.is_empty());
    }

    #[test]
    fn repository_match_is_by_path() {
        let e = sample(1);
        assert!(e.works_on("/srv/repo/"));
        assert!(e.works_on("/srv//repo"));
        assert!(!e.works_on("/srv/other"));
        assert!(!e.works_on(""));
        let mut none = sample(2);
        none.repo.clear();
        assert!(!none.works_on(""));
    }

    #[test]
    fn type_words_round_trip() {
        for t in ProcType::ALL {
            assert_eq!(ProcType::from_word(t.as_str()), Some(t));
        }
        assert_eq!(ProcType::from_word("daemon"), None);
    }
}
