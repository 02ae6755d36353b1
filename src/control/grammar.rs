//! The command grammar of the writable control files. A write carries exactly one command
//! on one line; [`parse`] turns it into a [`Command`] or a [`Rejection`] that says what was
//! wrong and shows the accepted form, so `echo bad > control/jobs` fails with EINVAL and a
//! reader of the same descriptor learns why.
//!
//! ```text
//! control/snapshot   create NAME [volatile | persistent] | release NAME
//! control/jobs       backup SNAPSHOT [repo=/ABSOLUTE/PATH|ssh://[USER@]HOST[:PORT]/PATH] [volumes=A,B] [mode=full|incremental|auto] [type=user|cron]
//!                    [keep-last=N] [keep-daily=N] [keep-weekly=N] [keep-monthly=N]
//!                    converge [repo=...] [volumes=A,B] [mode=...] [type=...] [keep-*=N]
//!                    cancel JOB-ID
//!                    restore BACKUP volume=NAME live [as=NEWNAME] [repo=...]
//! ```
//!
//! Words are separated by spaces or tabs; a name with spaces is quoted (`create "my snap"`,
//! see [`super::words`]). Verbs and option keys are lowercase.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};

use super::file::ControlFile;
use super::words::{quote_word, split_words};
use crate::jobs::{BackupRequest, Mode};
use crate::pids::ProcType;
use crate::repo::retention::{Policy, KEEP_OPTIONS, MAX_KEEP};
use crate::store::validate_name;

/// Longest command accepted, in bytes, newline included.
pub const MAX_COMMAND_BYTES: usize = 4096;
/// Longest job id accepted, in bytes.
pub const MAX_JOB_ID_BYTES: usize = 64;

/// A command accepted from a control file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `create NAME [volatile | persistent]` on control/snapshot.
    CreateSnapshot {
        /// Snapshot name.
        name: String,
        /// Persistent or volatile, if said (else the mount's default).
        durability: Option<crate::store::Durability>,
    },
    /// `release NAME` on control/snapshot.
    ReleaseSnapshot {
        /// Snapshot name.
        name: String,
    },
    /// `backup SNAPSHOT ...` on control/jobs.
    Backup(BackupRequest),
    /// `cancel ID` on control/jobs.
    Cancel {
        /// Job id.
        job: String,
    },
    /// `restore BACKUP volume=NAME live [as=NEWNAME] [repo=...]` on control/jobs.
    Restore(RestoreRequest),
}

/// A live restore asked for: backup `backup`'s volume `volume` served at once as
/// `live/NAME`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoreRequest {
    /// The backup's id.
    pub backup: String,
    /// The volume's name in the backup.
    pub volume: String,
    /// The new volume's name (default: the backup's name for it).
    pub name: Option<String>,
    /// The repository (default: the mount's).
    pub repo: Option<PathBuf>,
}

impl RestoreRequest {
    /// The name of the volume it creates.
    pub fn new_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.volume)
    }
}

impl fmt::Display for Command {
    /// The command in the grammar's own form: parsing it gives the same command back.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::CreateSnapshot { name, durability } => {
                write!(f, "create {}", quote_word(name))?;
                match durability {
                    Some(d) => write!(f, " {}", d.as_str()),
                    None => Ok(()),
                }
            }
            Command::ReleaseSnapshot { name } => write!(f, "release {}", quote_word(name)),
            Command::Cancel { job } => write!(f, "cancel {}", quote_word(job)),
            Command::Restore(r) => {
                write!(f, "restore {}", quote_word(&r.backup))?;
                write!(f, " {} live", quote_word(&format!("volume={}", r.volume)))?;
                if let Some(name) = &r.name {
                    write!(f, " {}", quote_word(&format!("as={name}")))?;
                }
                if let Some(repo) = &r.repo {
                    write!(f, " {}", quote_word(&format!("repo={}", repo.display())))?;
                }
                Ok(())
            }
            Command::Backup(b) => {
                if b.converge {
                    write!(f, "converge")?;
                } else {
                    write!(f, "backup {}", quote_word(&b.snapshot))?;
                }
                if let Some(repo) = &b.repo {
                    let word = format!("repo={}", repo.display());
                    write!(f, " {}", quote_word(&word))?;
                }
                if let Some(vols) = &b.volumes {
                    write!(f, " {}", quote_word(&format!("volumes={}", vols.join(","))))?;
                }
                if b.mode != Mode::Auto {
                    write!(f, " mode={}", b.mode.as_str())?;
                }
                if b.kind != ProcType::User {
                    write!(f, " type={}", b.kind.as_str())?;
                }
                if let Some(policy) = &b.keep {
                    write!(f, " {policy}")?;
                }
                Ok(())
            }
        }
    }
}

/// The kind of mistake a rejected write made; tests and the FUSE layer match on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RejectKind {
    /// The file is a read-only table.
    ReadOnly,
    /// Nothing but whitespace.
    Empty,
    /// Longer than [`MAX_COMMAND_BYTES`].
    TooLong,
    /// Not valid UTF-8.
    NotUtf8,
    /// A NUL byte.
    Nul,
    /// Another control character.
    ControlCharacter,
    /// More than one line in one write.
    MultipleLines,
    /// A quote opened and not closed.
    UnclosedQuote,
    /// The first word is not a command of this file.
    UnknownVerb,
    /// A required argument is missing.
    MissingArgument,
    /// A word the command does not take.
    ExtraArgument,
    /// A volume or snapshot name breaks a naming rule.
    BadName,
    /// An option key the command does not know.
    UnknownKey,
    /// An option given twice.
    DuplicateKey,
    /// The repository path is not absolute.
    RelativeRepo,
    /// An option value or job id of the wrong form.
    BadValue,
}

/// A write that was not accepted: which file, what kind of mistake, why in words, and
/// (through [`ControlFile::usage`]) the accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.message())]
pub struct Rejection {
    /// The file written to.
    pub file: ControlFile,
    /// What kind of mistake.
    pub kind: RejectKind,
    /// What was wrong and how to fix it, in one sentence.
    pub reason: String,
}

impl Rejection {
    fn new(file: ControlFile, kind: RejectKind, reason: impl Into<String>) -> Rejection {
        Rejection {
            file,
            kind,
            reason: reason.into(),
        }
    }

    /// The accepted form of a write to the file.
    pub fn usage(&self) -> &'static str {
        self.file.usage()
    }

    /// The message read back after a rejected write: the reason, then the accepted form,
    /// ending in a newline.
    pub fn message(&self) -> String {
        let mut out = format!("{}: command rejected: {}\n", self.file, self.reason);
        if self.file.takes_commands() {
            out.push_str("accepted commands (one per write):\n");
            for line in self.usage().lines() {
                out.push_str("  ");
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// Parses one write to `file` (see the module comment for the grammar). `control/schedule`
/// takes no commands (a write replaces the schedule, see [`super::schedule`]), so it is
/// refused here as the tables are.
pub fn parse(file: ControlFile, input: &[u8]) -> Result<Command, Rejection> {
    let reject = |kind, reason: String| Err(Rejection::new(file, kind, reason));
    if !file.takes_commands() {
        return reject(
            RejectKind::ReadOnly,
            format!(
                "{file} is read-only: read it with `cat {file}`; commands go to control/snapshot and control/jobs"
            ),
        );
    }
    if input.len() > MAX_COMMAND_BYTES {
        return reject(
            RejectKind::TooLong,
            format!(
                "the write is {} bytes long; a command is one line of at most {MAX_COMMAND_BYTES} bytes",
                input.len()
            ),
        );
    }
    let line = input.strip_suffix(b"\n").unwrap_or(input);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(at) = line.iter().position(|b| *b == b'\n') {
        return reject(
            RejectKind::MultipleLines,
            format!(
                "the write holds more than one line (a newline at byte {at}); write one command per write, e.g. one echo per command"
            ),
        );
    }
    if let Some(at) = line.iter().position(|b| *b == 0) {
        return reject(
            RejectKind::Nul,
            format!("the write contains a NUL byte at byte {at}; commands are plain text"),
        );
    }
    let text = match std::str::from_utf8(line) {
        Ok(t) => t,
        Err(e) => {
            let at = e.valid_up_to();
            return reject(
                RejectKind::NotUtf8,
                format!(
                    "the write is not UTF-8 text (byte {at} is 0x{:02x}); commands are plain UTF-8 text",
                    line[at]
                ),
            );
        }
    };
    if let Some((at, c)) = text
        .char_indices()
        .find(|(_, c)| c.is_control() && *c != '\t')
    {
        return reject(
            RejectKind::ControlCharacter,
            format!(
                "the write contains the control character U+{:04X} at byte {at}; commands are plain text on one line",
                c as u32
            ),
        );
    }
    let words = match split_words(text.trim_matches([' ', '\t'])) {
        Ok(w) => w,
        Err(q) => {
            return reject(
                RejectKind::UnclosedQuote,
                format!(
                    "the quote {} opened at byte {} is never closed; close it, as in create \"my snap\"",
                    q.quote, q.at
                ),
            )
        }
    };
    let Some((verb, args)) = words.split_first() else {
        return reject(
            RejectKind::Empty,
            "the write is empty; write one command".to_string(),
        );
    };
    let p = Parser { file, args };
    match (file, verb.as_str()) {
        (ControlFile::Snapshot, "create") => p.create(),
        (ControlFile::Snapshot, "release") => Ok(Command::ReleaseSnapshot {
            name: p.only_name("release", "snapshot")?,
        }),
        (ControlFile::Jobs, "backup") => p.backup().map(Command::Backup),
        (ControlFile::Jobs, "converge") => p.converge().map(Command::Backup),
        (ControlFile::Jobs, "cancel") => Ok(Command::Cancel { job: p.job_id()? }),
        (ControlFile::Jobs, "restore") => p.restore().map(Command::Restore),
        _ => Err(unknown_verb(file, verb)),
    }
}

fn unknown_verb(file: ControlFile, verb: &str) -> Rejection {
    let known: &[&str] = match file {
        ControlFile::Snapshot => &["create", "release"],
        _ => &["backup", "converge", "cancel", "restore"],
    };
    let lower = verb.to_lowercase();
    let hint = if known.contains(&lower.as_str()) {
        format!("; commands are lowercase: {lower}")
    } else if ["create", "release"].contains(&lower.as_str()) {
        "; snapshot commands go to control/snapshot".to_string()
    } else if ["backup", "converge", "cancel", "restore"].contains(&lower.as_str()) {
        "; job commands go to control/jobs".to_string()
    } else {
        String::new()
    };
    Rejection::new(
        file,
        RejectKind::UnknownVerb,
        format!(
            "\"{}\" is not a command of {file}, which accepts {}{hint}",
            shown(verb),
            known.join(" and ")
        ),
    )
}

/// A word as shown inside a message: escaped, and cut short if long.
fn shown(word: &str) -> String {
    const MAX: usize = 60;
    let escaped = word.escape_debug().to_string();
    if escaped.chars().count() <= MAX {
        escaped
    } else {
        let cut: String = escaped.chars().take(MAX).collect();
        format!("{cut}...")
    }
}

/// The arguments after the verb, and the file (for rejections).
struct Parser<'a> {
    file: ControlFile,
    args: &'a [String],
}

impl Parser<'_> {
    fn reject(&self, kind: RejectKind, reason: String) -> Rejection {
        Rejection::new(self.file, kind, reason)
    }

    /// Exactly one argument, a valid `kind` name, for `verb`.
    /// `create NAME [volatile | persistent]`.
    fn create(&self) -> Result<Command, Rejection> {
        if let [name, word] = self.args {
            if let Some(d) = crate::store::Durability::parse(word) {
                return Ok(Command::CreateSnapshot {
                    name: self.name("snapshot", name)?,
                    durability: Some(d),
                });
            }
        }
        Ok(Command::CreateSnapshot {
            name: self.only_name("create", "snapshot")?,
            durability: None,
        })
    }

    fn only_name(&self, verb: &str, kind: &'static str) -> Result<String, Rejection> {
        match self.args {
            [] => Err(self.reject(
                RejectKind::MissingArgument,
                format!("{verb} needs a {kind} name: {verb} NAME"),
            )),
            [name] => self.name(kind, name),
            [_, extra, ..] => Err(self.reject(
                RejectKind::ExtraArgument,
                format!(
                    "{verb} takes one {kind} name, but \"{}\" follows it; quote a name with spaces: {verb} \"my {kind}\"",
                    shown(extra)
                ),
            )),
        }
    }

    fn name(&self, kind: &'static str, name: &str) -> Result<String, Rejection> {
        validate_name(kind, name)
            .map(|()| name.to_string())
            .map_err(|e| self.reject(RejectKind::BadName, e.to_string()))
    }

    fn job_id(&self) -> Result<String, Rejection> {
        let id = match self.args {
            [] => {
                return Err(self.reject(
                    RejectKind::MissingArgument,
                    "cancel needs a job id, as listed by `cat control/jobs`: cancel JOB-ID"
                        .to_string(),
                ))
            }
            [id] => id,
            [_, extra, ..] => {
                return Err(self.reject(
                    RejectKind::ExtraArgument,
                    format!(
                        "cancel takes one job id, but \"{}\" follows it; cancel one job per write",
                        shown(extra)
                    ),
                ))
            }
        };
        let ok_char = |c: char| c.is_ascii_alphanumeric() || "-_.:".contains(c);
        if id.is_empty() || id.len() > MAX_JOB_ID_BYTES || !id.chars().all(ok_char) {
            return Err(self.reject(
                RejectKind::BadValue,
                format!(
                    "\"{}\" is not a job id: ids are 1 to {MAX_JOB_ID_BYTES} letters, digits, '-', '_', '.' or ':', as listed by `cat control/jobs`",
                    shown(id)
                ),
            ));
        }
        Ok(id.clone())
    }

    fn backup(&self) -> Result<BackupRequest, Rejection> {
        let Some((snapshot, options)) = self.args.split_first() else {
            return Err(self.reject(
                RejectKind::MissingArgument,
                "backup needs the name of a snapshot: backup SNAPSHOT [repo=...] [volumes=...] [mode=...]"
                    .to_string(),
            ));
        };
        let req = BackupRequest::new(&self.name("snapshot", snapshot)?);
        self.backup_options(req, options)
    }

    /// `converge [repo=...] [volumes=...] [mode=...]`: a backup of the live volumes.
    fn converge(&self) -> Result<BackupRequest, Rejection> {
        self.backup_options(BackupRequest::converge(), self.args)
    }

    /// The options of `backup` and `converge`, onto `req`.
    fn backup_options(
        &self,
        mut req: BackupRequest,
        options: &[String],
    ) -> Result<BackupRequest, Rejection> {
        let verb = if req.converge { "converge" } else { "backup" };
        let mut seen = BTreeSet::new();
        for word in options {
            let Some((key, value)) = word.split_once('=') else {
                let (after, quoting) = if req.converge {
                    (
                        "is given to converge, which names no snapshot (it backs up the live volumes), and",
                        "",
                    )
                } else {
                    (
                        "follows the snapshot name but",
                        ", and a snapshot name with spaces is quoted",
                    )
                };
                return Err(self.reject(
                    RejectKind::ExtraArgument,
                    format!(
                        "\"{}\" {after} is not an option; options are written key=value (repo=, volumes=, mode=, type=, keep-last= and the other keep-*=){quoting}",
                        shown(word)
                    ),
                ));
            };
            let keep = KEEP_OPTIONS.contains(&key);
            if !keep && !["repo", "volumes", "mode", "type"].contains(&key) {
                return Err(self.reject(
                    RejectKind::UnknownKey,
                    format!(
                        "{verb} has no option \"{}\"; it accepts repo=, volumes=, mode=, type= and the retention of snarf prune, keep-last=, keep-daily=, keep-weekly=, keep-monthly=",
                        shown(key)
                    ),
                ));
            }
            if !seen.insert(key) {
                return Err(self.reject(
                    RejectKind::DuplicateKey,
                    format!("the option {key}= is given twice; give each option once"),
                ));
            }
            if keep {
                let n = self.keep_count(key, value)?;
                req.keep.get_or_insert_with(Policy::default).set(key, n);
                continue;
            }
            match key {
                "repo" => req.repo = Some(self.repo(value)?),
                "volumes" => req.volumes = Some(self.volumes(value)?),
                "type" => req.kind = self.kind(value)?,
                _ => req.mode = self.mode(value)?,
            }
        }
        // The policy `snarf prune` would refuse (one that keeps nothing) is refused here.
        if let Some(policy) = &req.keep {
            if let Err(e) = policy.validate() {
                return Err(self.reject(RejectKind::BadValue, e.to_string()));
            }
        }
        Ok(req)
    }

    /// `restore BACKUP volume=NAME live [as=NEWNAME] [repo=...]`.
    fn restore(&self) -> Result<RestoreRequest, Rejection> {
        const FORM: &str = "restore BACKUP volume=NAME live [as=NEWNAME] [repo=...]";
        let Some((backup, options)) = self.args.split_first() else {
            return Err(self.reject(
                RejectKind::MissingArgument,
                format!("restore needs a backup id, as snarf backups lists them: {FORM}"),
            ));
        };
        if crate::repo::BackupId::parse(backup).is_none() {
            return Err(self.reject(
                RejectKind::BadValue,
                format!(
                    "\"{}\" is not a backup id: ids look like 20261201-170003-ab12, as snarf backups lists them",
                    shown(backup)
                ),
            ));
        }
        let mut req = RestoreRequest {
            backup: backup.clone(),
            volume: String::new(),
            name: None,
            repo: None,
        };
        let mut live = false;
        let mut seen = BTreeSet::new();
        for word in options {
            if word == "live" {
                live = true;
                continue;
            }
            let Some((key, value)) = word.split_once('=') else {
                return Err(self.reject(
                    RejectKind::ExtraArgument,
                    format!(
                        "\"{}\" is not an option of restore; write {FORM}",
                        shown(word)
                    ),
                ));
            };
            if !["volume", "as", "repo"].contains(&key) {
                return Err(self.reject(
                    RejectKind::UnknownKey,
                    format!(
                        "restore has no option \"{}\"; it accepts volume=, as= and repo=",
                        shown(key)
                    ),
                ));
            }
            if !seen.insert(key) {
                return Err(self.reject(
                    RejectKind::DuplicateKey,
                    format!("the option {key}= is given twice; give each option once"),
                ));
            }
            match key {
                "volume" => req.volume = self.name("volume", value)?,
                "as" => req.name = Some(self.name("volume", value)?),
                _ => req.repo = Some(self.repo(value)?),
            }
        }
        if req.volume.is_empty() {
            return Err(self.reject(
                RejectKind::MissingArgument,
                format!("restore needs the volume to restore, volume=NAME: {FORM}"),
            ));
        }
        if !live {
            return Err(self.reject(
                RejectKind::MissingArgument,
                format!(
                    "restore through the mount is a live restore and says so with the word live (a plain restore is snarf restore REPO BACKUP DEST): {FORM}"
                ),
            ));
        }
        Ok(req)
    }

    /// The count of a `keep-*=` option: 0 to [`MAX_KEEP`], as `snarf prune` takes.
    fn keep_count(&self, key: &str, value: &str) -> Result<u32, Rejection> {
        value
            .parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_KEEP && value.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| {
                self.reject(
                    RejectKind::BadValue,
                    format!(
                        "{key}=\"{}\" is not a count of backups to keep; give a whole number from 0 to {MAX_KEEP}, as in {key}=14",
                        shown(value)
                    ),
                )
            })
    }

    fn repo(&self, value: &str) -> Result<PathBuf, Rejection> {
        if value.is_empty() {
            return Err(self.reject(
                RejectKind::BadValue,
                "repo= is empty; give the repository's absolute path, as in repo=/srv/backups"
                    .to_string(),
            ));
        }
        // A URL (`ssh://[user@]host[:port]/path`) is checked as every command checks one;
        // it travels on as the job's `--repo` word, which reads it the same way.
        if value.contains("://") {
            return match crate::repo::Location::parse(value) {
                Ok(_) => Ok(PathBuf::from(value)),
                Err(e) => Err(self.reject(RejectKind::BadValue, e.to_string())),
            };
        }
        let path = Path::new(value);
        if !path.is_absolute() {
            return Err(self.reject(
                RejectKind::RelativeRepo,
                format!(
                    "the repository path \"{}\" is relative, but the mount has no working directory; give an absolute path, as in repo=/srv/backups",
                    shown(value)
                ),
            ));
        }
        Ok(path.to_path_buf())
    }

    fn volumes(&self, value: &str) -> Result<Vec<String>, Rejection> {
        let mut out: Vec<String> = Vec::new();
        for (i, name) in value.split(',').enumerate() {
            if name.is_empty() {
                return Err(self.reject(
                    RejectKind::BadValue,
                    format!(
                        "volume {} in volumes= is empty; list names separated by single commas, as in volumes=vm1.img,db.img",
                        i + 1
                    ),
                ));
            }
            let name = self.name("volume", name)?;
            if out.contains(&name) {
                return Err(self.reject(
                    RejectKind::BadValue,
                    format!(
                        "volume \"{}\" is listed twice in volumes=; list each volume once",
                        shown(&name)
                    ),
                ));
            }
            out.push(name);
        }
        Ok(out)
    }

    fn kind(&self, value: &str) -> Result<ProcType, Rejection> {
        ProcType::from_word(value).ok_or_else(|| {
            self.reject(
                RejectKind::BadValue,
                format!(
                    "type=\"{}\" is not a process type; write type=user (the default), type=cron, type=remote or type=sshpipe",
                    shown(value)
                ),
            )
        })
    }

    fn mode(&self, value: &str) -> Result<Mode, Rejection> {
        Mode::from_word(value).ok_or_else(|| {
            self.reject(
                RejectKind::BadValue,
                format!(
                    "mode=\"{}\" is not a backup mode; write mode=full, mode=incremental or mode=auto",
                    shown(value)
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControlFile::{Jobs, Snapshot};

    #[test]
    fn restore_parses_round_trips_and_refuses_what_is_not_a_live_restore() {
        let c = ok(
            Jobs,
            "restore 20261201-170003-ab12 volume=vm1.img live as=\"new vm\" repo=/srv/r",
        );
        let Command::Restore(r) = &c else {
            panic!("{c:?}")
        };
        assert_eq!(r.backup, "20261201-170003-ab12");
        assert_eq!(r.volume, "vm1.img");
        assert_eq!(r.new_name(), "new vm");
        assert_eq!(r.repo.as_deref(), Some(Path::new("/srv/r")));
        assert_eq!(ok(Jobs, &c.to_string()), c);
        let plain = ok(Jobs, "restore 20261201-170003-ab12 live volume=a");
        assert_eq!(ok(Jobs, &plain.to_string()), plain);
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 volume=a",
            RejectKind::MissingArgument,
            &["live"],
        );
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 live",
            RejectKind::MissingArgument,
            &["volume="],
        );
        rejected(
            Jobs,
            b"restore ../x volume=a live",
            RejectKind::BadValue,
            &["backup id"],
        );
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 volume=../a live",
            RejectKind::BadName,
            &[],
        );
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 volume=a live as=a/b",
            RejectKind::BadName,
            &[],
        );
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 volume=a live repo=rel",
            RejectKind::RelativeRepo,
            &[],
        );
        rejected(
            Jobs,
            b"restore 20261201-170003-ab12 volume=a live x=1",
            RejectKind::UnknownKey,
            &[],
        );
    }

    fn ok(file: ControlFile, input: &str) -> Command {
        parse(file, input.as_bytes()).unwrap_or_else(|r| panic!("{input:?}: {r}"))
    }

    /// Asserts a rejection of `kind` whose reason mentions every word in `says`.
    fn rejected(file: ControlFile, input: &[u8], kind: RejectKind, says: &[&str]) -> Rejection {
        let r = parse(file, input).expect_err(&format!("{input:?} was accepted"));
        assert_eq!(r.kind, kind, "{input:?}: {}", r.reason);
        for s in says {
            assert!(
                r.reason.contains(s),
                "{input:?}: {:?} lacks {s:?}",
                r.reason
            );
        }
        r
    }

    fn backup(snapshot: &str) -> BackupRequest {
        BackupRequest {
            snapshot: snapshot.into(),
            converge: false,
            repo: None,
            volumes: None,
            mode: Mode::Auto,
            kind: ProcType::User,
            keep: None,
        }
    }

    #[test]
    fn backup_takes_retention_and_ssh_repositories() {
        let Command::Backup(b) = ok(
            Jobs,
            "backup s repo=ssh://bk@vault:2222/srv/r keep-daily=14 keep-last=1",
        ) else {
            panic!()
        };
        assert_eq!(
            b.repo.as_deref(),
            Some(Path::new("ssh://bk@vault:2222/srv/r"))
        );
        let keep = b.keep.unwrap();
        assert_eq!(
            (keep.keep_last, keep.keep_daily, keep.keep_weekly),
            (1, 14, 0)
        );
        // What the grammar writes parses back to the same request.
        let c = Command::Backup(b);
        assert_eq!(ok(Jobs, &c.to_string()), c);
        use RejectKind::{BadValue, DuplicateKey, UnknownKey};
        for (bad, kind, why) in [
            ("backup s keep-daily=", BadValue, "whole number"),
            ("backup s keep-daily=1e3", BadValue, "whole number"),
            ("backup s keep-daily=+3", BadValue, "whole number"),
            ("backup s keep-daily=99999999999", BadValue, "whole number"),
            ("backup s keep-daily=1000001", BadValue, "whole number"),
            (
                "backup s keep-last=0 keep-daily=0",
                BadValue,
                "keeps no backup",
            ),
            ("backup s keep-daily=1 keep-daily=2", DuplicateKey, "twice"),
            ("backup s keep-yearly=1", UnknownKey, "keep-monthly="),
            ("backup s repo=ssh://-oProxyCommand=x/r", BadValue, "ssh://"),
            ("backup s repo=ssh://h", BadValue, "path"),
            ("backup s repo=ftp://h/r", BadValue, "ftp://"),
        ] {
            rejected(Jobs, bad.as_bytes(), kind, &[why]);
        }
    }

    #[test]
    fn create_and_release() {
        assert_eq!(
            ok(Snapshot, "create nightly\n"),
            Command::CreateSnapshot {
                durability: None,
                name: "nightly".into()
            }
        );
        assert_eq!(
            ok(Snapshot, "  release\tnightly  \r\n"),
            Command::ReleaseSnapshot {
                name: "nightly".into()
            }
        );
        assert_eq!(
            ok(Snapshot, "create \"my snap\""),
            Command::CreateSnapshot {
                durability: None,
                name: "my snap".into()
            }
        );
    }

    #[test]
    fn backup_with_and_without_options() {
        assert_eq!(
            ok(Jobs, "backup nightly"),
            Command::Backup(backup("nightly"))
        );
        let full = ok(
            Jobs,
            "backup nightly repo=/srv/backups volumes=vm1.img,db mode=incremental\n",
        );
        assert_eq!(
            full,
            Command::Backup(BackupRequest {
                repo: Some("/srv/backups".into()),
                volumes: Some(vec!["vm1.img".into(), "db".into()]),
                mode: Mode::Incremental,
                ..backup("nightly")
            })
        );
        // Options in any order; a snapshot name may contain '='.
        let Command::Backup(b) = ok(Jobs, "backup a=b mode=full repo=/r") else {
            panic!()
        };
        assert_eq!(b.snapshot, "a=b");
        assert_eq!(b.mode, Mode::Full);
        assert_eq!(
            ok(Jobs, "backup s \"repo=/with space\""),
            Command::Backup(BackupRequest {
                repo: Some("/with space".into()),
                ..backup("s")
            })
        );
    }

    #[test]
    fn converge_names_no_snapshot_and_takes_the_backup_options() {
        assert_eq!(
            ok(Jobs, "converge"),
            Command::Backup(BackupRequest::converge())
        );
        let c = ok(
            Jobs,
            "converge volumes=vm1.img repo=/srv/r mode=full keep-last=3",
        );
        let Command::Backup(b) = &c else { panic!() };
        assert!(b.converge);
        assert_eq!(b.volumes, Some(vec!["vm1.img".to_string()]));
        assert_eq!(b.mode, Mode::Full);
        // Its rendering parses back to itself, and never as a backup of a snapshot.
        assert_eq!(ok(Jobs, &c.to_string()), c);
        assert!(c.to_string().starts_with("converge "));
        rejected(
            Jobs,
            b"converge nightly",
            RejectKind::ExtraArgument,
            &["names no snapshot"],
        );
        rejected(
            Jobs,
            b"converge as=x",
            RejectKind::UnknownKey,
            &["converge has no option"],
        );
        rejected(Jobs, b"Converge", RejectKind::UnknownVerb, &["lowercase"]);
        // A snapshot called converge is still backed up as one.
        let Command::Backup(b) = ok(Jobs, "backup converge") else {
            panic!()
        };
        assert!(!b.converge);
    }

    #[test]
    fn cancel() {
        assert_eq!(
            ok(Jobs, "cancel 20240501-0007\n"),
            Command::Cancel {
                job: "20240501-0007".into()
            }
        );
    }

    #[test]
    fn read_only_tables_reject_every_write() {
        for f in ControlFile::ALL.into_iter().filter(|f| !f.is_writable()) {
            for input in [&b"create x\n"[..], b"", b"\xff"] {
                let r = rejected(f, input, RejectKind::ReadOnly, &["read-only", f.name()]);
                assert!(r.message().contains("read-only"));
            }
        }
    }

    #[test]
    fn unknown_verb_names_the_accepted_ones() {
        rejected(
            Snapshot,
            b"destroy x",
            RejectKind::UnknownVerb,
            &["destroy", "create and release"],
        );
        rejected(Jobs, b"Backup x", RejectKind::UnknownVerb, &["lowercase"]);
        rejected(
            Jobs,
            b"create x",
            RejectKind::UnknownVerb,
            &["control/snapshot"],
        );
        rejected(
            Snapshot,
            b"backup x",
            RejectKind::UnknownVerb,
            &["control/jobs"],
        );
    }

    #[test]
    fn missing_arguments() {
        rejected(
            Snapshot,
            b"create",
            RejectKind::MissingArgument,
            &["create NAME"],
        );
        rejected(
            Snapshot,
            b"release\n",
            RejectKind::MissingArgument,
            &["release NAME"],
        );
        rejected(Jobs, b"backup", RejectKind::MissingArgument, &["SNAPSHOT"]);
        rejected(Jobs, b"cancel", RejectKind::MissingArgument, &["JOB-ID"]);
    }

    #[test]
    fn extra_arguments() {
        rejected(
            Snapshot,
            b"create my snap",
            RejectKind::ExtraArgument,
            &["\"snap\"", "quote"],
        );
        rejected(Jobs, b"cancel 1 2", RejectKind::ExtraArgument, &["\"2\""]);
        rejected(
            Jobs,
            b"backup s full",
            RejectKind::ExtraArgument,
            &["key=value"],
        );
    }

    #[test]
    fn bad_names() {
        rejected(Snapshot, b"create ..", RejectKind::BadName, &["reserved"]);
        rejected(Snapshot, b"create a/b", RejectKind::BadName, &["'/'"]);
        let long = format!("create {}", "x".repeat(256));
        rejected(
            Snapshot,
            long.as_bytes(),
            RejectKind::BadName,
            &["255 bytes"],
        );
        rejected(Snapshot, b"create \"\"", RejectKind::BadName, &["empty"]);
        rejected(Jobs, b"backup .snarf-x", RejectKind::BadName, &["reserved"]);
        rejected(
            Jobs,
            b"backup s volumes=a,../b",
            RejectKind::BadName,
            &["volume name", "'/'"],
        );
        rejected(Jobs, b"cancel a/b", RejectKind::BadValue, &["not a job id"]);
        let long_id = format!("cancel {}", "7".repeat(65));
        rejected(Jobs, long_id.as_bytes(), RejectKind::BadValue, &["1 to 64"]);
    }

    #[test]
    fn bad_and_duplicate_keys() {
        rejected(
            Jobs,
            b"backup s rep=/x",
            RejectKind::UnknownKey,
            &["\"rep\"", "repo="],
        );
        rejected(Jobs, b"backup s =x", RejectKind::UnknownKey, &["repo="]);
        rejected(
            Jobs,
            b"backup s repo=/a repo=/b",
            RejectKind::DuplicateKey,
            &["repo=", "twice"],
        );
        rejected(
            Jobs,
            b"backup s mode=full mode=full",
            RejectKind::DuplicateKey,
            &["mode="],
        );
    }

    #[test]
    fn bad_values() {
        rejected(
            Jobs,
            b"backup s repo=backups",
            RejectKind::RelativeRepo,
            &["\"backups\"", "absolute"],
        );
        rejected(
            Jobs,
            b"backup s repo=./r",
            RejectKind::RelativeRepo,
            &["absolute"],
        );
        rejected(Jobs, b"backup s repo=", RejectKind::BadValue, &["empty"]);
        rejected(
            Jobs,
            b"backup s volumes=",
            RejectKind::BadValue,
            &["volume 1", "empty"],
        );
        rejected(
            Jobs,
            b"backup s volumes=a,,b",
            RejectKind::BadValue,
            &["volume 2"],
        );
        rejected(
            Jobs,
            b"backup s volumes=a,a",
            RejectKind::BadValue,
            &["twice"],
        );
        rejected(
            Jobs,
            b"backup s mode=fast",
            RejectKind::BadValue,
            &["\"fast\"", "mode=full"],
        );
    }

    #[test]
    fn line_level_rejections() {
        let long = format!("create {}\n", "x".repeat(MAX_COMMAND_BYTES));
        rejected(Snapshot, long.as_bytes(), RejectKind::TooLong, &["4096"]);
        rejected(
            Snapshot,
            b"create \xff\xfe",
            RejectKind::NotUtf8,
            &["byte 7", "0xff"],
        );
        rejected(
            Snapshot,
            b"create a\0b",
            RejectKind::Nul,
            &["NUL", "byte 8"],
        );
        rejected(
            Snapshot,
            b"create a\n\n",
            RejectKind::MultipleLines,
            &["one command per write"],
        );
        rejected(
            Snapshot,
            b"create a\ncreate b\n",
            RejectKind::MultipleLines,
            &["byte 8"],
        );
        rejected(
            Snapshot,
            b"create a\x1b[1m",
            RejectKind::ControlCharacter,
            &["U+001B"],
        );
        rejected(
            Snapshot,
            b"create a\rb",
            RejectKind::ControlCharacter,
            &["U+000D"],
        );
        rejected(Snapshot, b"", RejectKind::Empty, &["empty"]);
        rejected(Jobs, b" \t \r\n", RejectKind::Empty, &["empty"]);
        rejected(
            Snapshot,
            b"create \"oops",
            RejectKind::UnclosedQuote,
            &["never closed"],
        );
    }

    #[test]
    fn every_reject_kind_is_reachable() {
        use RejectKind::*;
        let cases: [(ControlFile, &[u8], RejectKind); 16] = [
            (ControlFile::Status, b"x", ReadOnly),
            (Jobs, b"  ", Empty),
            (Jobs, &[b'x'; MAX_COMMAND_BYTES + 1], TooLong),
            (Jobs, b"\xc3\x28", NotUtf8),
            (Jobs, b"\0", Nul),
            (Jobs, b"\x07", ControlCharacter),
            (Jobs, b"a\nb", MultipleLines),
            (Jobs, b"'", UnclosedQuote),
            (Jobs, b"x", UnknownVerb),
            (Jobs, b"cancel", MissingArgument),
            (Jobs, b"cancel a b", ExtraArgument),
            (Jobs, b"backup .", BadName),
            (Jobs, b"backup s k=v", UnknownKey),
            (Jobs, b"backup s mode=full mode=auto", DuplicateKey),
            (Jobs, b"backup s repo=r", RelativeRepo),
            (Jobs, b"backup s mode=x", BadValue),
        ];
        for (file, input, kind) in cases {
            // The match makes a new kind fail to compile until it is added above.
            match kind {
                ReadOnly | Empty | TooLong | NotUtf8 | Nul | ControlCharacter | MultipleLines
                | UnclosedQuote | UnknownVerb | MissingArgument | ExtraArgument | BadName
                | UnknownKey | DuplicateKey | RelativeRepo | BadValue => {}
            }
            let r = rejected(file, input, kind, &[]);
            assert!(!r.reason.is_empty());
        }
    }

    #[test]
    fn exactly_the_limit_is_accepted() {
        let name_len = MAX_COMMAND_BYTES - "create \n".len();
        // Names are capped at 255 bytes, so pad with spaces to reach the limit.
        let input = format!("create x{}\n", " ".repeat(name_len - 1));
        assert_eq!(input.len(), MAX_COMMAND_BYTES);
        ok(Snapshot, &input);
    }

    #[test]
    fn message_shows_reason_and_usage_on_separate_lines() {
        let r = parse(Jobs, b"backup s repo=rel").unwrap_err();
        let m = r.message();
        let lines: Vec<&str> = m.lines().collect();
        assert!(
            lines[0].starts_with("control/jobs: command rejected: "),
            "{m}"
        );
        assert!(lines[1].starts_with("accepted commands"), "{m}");
        assert!(lines[2].trim_start().starts_with("backup SNAPSHOT"), "{m}");
        assert!(lines[3].trim_start().starts_with("cancel JOB-ID"), "{m}");
        assert!(m.ends_with('\n'));
        assert_eq!(r.to_string(), m);
    }

    #[test]
    fn long_bad_words_are_cut_in_messages() {
        let input = format!("{} x", "v".repeat(1000));
        let r = parse(Snapshot, input.as_bytes()).unwrap_err();
        assert!(r.reason.len() < 200, "{}", r.reason);
        assert!(r.reason.contains("..."));
    }

    #[test]
    fn display_is_parseable() {
        let cmds = [
            Command::CreateSnapshot {
                name: "my \"odd\" snap".into(),
                durability: None,
            },
            Command::CreateSnapshot {
                name: "v".into(),
                durability: Some(crate::store::Durability::Volatile),
            },
            Command::Cancel { job: "j-1".into() },
            Command::Backup(BackupRequest {
                repo: Some("/a b".into()),
                volumes: Some(vec!["v 1".into(), "v2".into()]),
                mode: Mode::Full,
                ..backup("s")
            }),
        ];
        for c in cmds {
            let file = if matches!(c, Command::CreateSnapshot { .. }) {
                Snapshot
            } else {
                Jobs
            };
            assert_eq!(ok(file, &c.to_string()), c, "{c}");
        }
    }
}
