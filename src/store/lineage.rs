//! The store's lineage: which sessions this very copy of the store lived through, each with
//! a random id drawn when it opened (`state/sessions`, one `SESSION ID` line per open).
//!
//! A backup records the session and its id. The next incremental backup trusts the store's
//! changed-snarf stamps from that backup on only if the store lived through that session:
//! a store directory restored from an older copy, or copied and run in two places, reuses
//! session numbers (and so epochs) with other ids, and its stamps say nothing about what
//! the other copy wrote. Such a store is found out here, and its volumes are read in full.

use std::path::Path;

use super::{files, random_u64, Result};

/// Where the lineage is kept, under the store directory.
pub const LINEAGE_FILE: &str = "state/sessions";
/// Sessions remembered; a backup older than the oldest cannot be checked and is not used as
/// a base (the next backup is full).
pub const MAX_SESSIONS: usize = 1024;
/// A lineage file larger than this is damaged.
const MAX_FILE_BYTES: u64 = 1 << 20;

/// The sessions of this store, oldest first, the current one last.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lineage {
    sessions: Vec<(u64, String)>,
}

/// A new random session id: 16 hex digits.
fn new_session_id() -> String {
    format!("{:016x}", random_u64())
}

/// Whether `id` looks like a session id.
pub fn is_session_id(id: &str) -> bool {
    id.len() == 16 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Lineage {
    /// Starts session `session`: reads the sessions before it, adds it with a new id and
    /// writes the file durably before the caller serves anything. Entries at or past
    /// `session` (left by an open that crashed before it counted) are dropped; lines that are
    /// not a session and an id are ignored, so damage only costs full backups.
    pub fn start(root: &Path, session: u64) -> Result<Lineage> {
        let path = root.join(LINEAGE_FILE);
        let mut sessions = Vec::new();
        match std::fs::metadata(&path) {
            Ok(m) if m.len() > MAX_FILE_BYTES => log::warn!(
                "{} is {} bytes, more than any store writes; its sessions are not used",
                path.display(),
                m.len()
            ),
            Ok(_) => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                for line in text.lines() {
                    if line.starts_with('#') || line.trim().is_empty() {
                        continue;
                    }
                    let mut words = line.split_whitespace();
                    let (Some(n), Some(id), None) = (words.next(), words.next(), words.next())
                    else {
                        log::warn!("{}: ignoring the line {line:?}", path.display());
                        continue;
                    };
                    match n.parse::<u64>() {
                        Ok(n)
                            if is_session_id(id)
                                && n < session
                                && sessions.last().is_none_or(|(last, _)| *last < n) =>
                        {
                            sessions.push((n, id.to_string()))
                        }
                        _ => log::warn!("{}: ignoring the line {line:?}", path.display()),
                    }
                }
            }
            Err(_) => {}
        }
        sessions.push((session, new_session_id()));
        if sessions.len() > MAX_SESSIONS {
            sessions.drain(..sessions.len() - MAX_SESSIONS);
        }
        let lineage = Lineage { sessions };
        files::write_atomic(&path, lineage.render().as_bytes())?;
        Ok(lineage)
    }

    fn render(&self) -> String {
        let mut out =
            String::from("# snarf store sessions: SESSION ID, one line per open, newest last\n");
        for (n, id) in &self.sessions {
            out.push_str(&format!("{n} {id}\n"));
        }
        out
    }

    /// The current session's id.
    pub fn current_id(&self) -> &str {
        self.sessions.last().map_or("", |(_, id)| id.as_str())
    }

    /// Whether this store lived through session `session` with id `id`; if not, why not,
    /// in words for a backup's plan.
    pub fn lived_through(&self, session: u64, id: &str) -> Result<(), String> {
        let (current, _) = self.sessions.last().cloned().unwrap_or_default();
        if session > current {
            return Err(format!(
                "that backup was taken in session {session} of this store, and this copy of it has only reached session {current}: it was restored from an older copy"
            ));
        }
        match self.sessions.iter().find(|(n, _)| *n == session) {
            Some((_, mine)) if mine == id => Ok(()),
            Some(_) => Err(format!(
                "that backup was taken in a session {session} of this store that this copy did not live through: it was restored from an older copy, or copied and run elsewhere"
            )),
            None => Err(format!(
                "that backup was taken in session {session}, older than the {} sessions this store remembers",
                self.sessions.len()
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_remembered_checked_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let one = Lineage::start(dir.path(), 1).unwrap();
        let id1 = one.current_id().to_string();
        assert!(is_session_id(&id1));
        let two = Lineage::start(dir.path(), 2).unwrap();
        assert!(two.lived_through(1, &id1).is_ok());
        assert!(two.lived_through(2, two.current_id()).is_ok());
        assert!(two.lived_through(1, "0000000000000000").is_err());
        assert!(two.lived_through(3, "0000000000000000").is_err());
        // An open that crashed before counting its session: its entry is replaced.
        let again = Lineage::start(dir.path(), 2).unwrap();
        assert_ne!(again.current_id(), two.current_id());
        assert!(again.lived_through(2, two.current_id()).is_err());
        // Damage is skipped, never trusted; the file stays bounded.
        let path = dir.path().join(LINEAGE_FILE);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str("zz\n7 ../../etc\n99 0123456789abcdef\n");
        std::fs::write(&path, text).unwrap();
        let three = Lineage::start(dir.path(), 3).unwrap();
        assert_eq!(three.sessions.len(), 3);
        for n in 4..4 + MAX_SESSIONS as u64 {
            Lineage::start(dir.path(), n).unwrap();
        }
        let last = Lineage::start(dir.path(), 5000).unwrap();
        assert_eq!(last.sessions.len(), MAX_SESSIONS);
        let why = last.lived_through(1, &id1).unwrap_err();
        assert!(why.contains("older than"), "{why}");
    }
}
