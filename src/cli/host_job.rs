//! `snarf backup --host [user@]host[:port] MOUNT SNAPSHOT`: a backup job run on another
//! host's store, through the system ssh client.
//!
//! The local end runs ssh with an argv built by the ssh backend's own rules (`SNARF_RSH`,
//! `BatchMode=yes`, `--` before the host, every far word shell-quoted, `--remote-path`):
//! `REMOTE_PATH backup --remote-job=LOCALHOST [--repo=R] [options] -- MOUNT SNAPSHOT`. It
//! registers as `sshpipe` in the host-wide registry ([`crate::pids::host`]) with the far
//! host, forwards the far job's standard error (its progress lines and messages) to its own
//! and its standard output (the summary), and exits with the far job's status.
//!
//! The far end is an ordinary `snarf backup` with `--remote-job`: it registers as `remote`
//! in that store's registry with who started it (the ssh client's address from
//! `SSH_CONNECTION`, else the name the local end passed), prints a progress line every
//! second, and watches its standard input, which the local end holds open and never writes:
//! when it ends (the local snarf or its ssh was killed, the connection dropped) the job
//! stops as SIGTERM stops any job, so nothing is half-committed and its entry is removed.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::Arc;

use parking_lot::Mutex;

use super::backup_cmds::BackupArgs;
use super::{CliError, CliResult};
use crate::jobs::spec::{opt, SUBCOMMAND};
use crate::pids::{exit_on_signals, NewEntry, ProcState, ProcType};
use crate::repo::backend::ssh::{remote_argv, SshHost, SshOptions};

/// Lines of the far side's standard error kept for the message when the job fails.
const TAIL_LINES: usize = 20;
/// ssh's exit status when it failed itself, or the far command ended without a status.
const SSH_FAILED: i32 = 255;

/// The far snarf's arguments (after the program) for the job `args` asks for, started from
/// the host named `from`. Options carry their value in the same word (`--repo=R`) and the
/// positional arguments follow `--`, so no value a user gives is read as an option there.
pub(super) fn far_args(args: &BackupArgs, from: &str) -> Result<Vec<String>, CliError> {
    let text = |what: &str, p: &std::path::Path| {
        p.to_str().map(str::to_string).ok_or_else(|| {
            CliError::new(format!(
                "the {what} {} is not valid UTF-8, which cannot be passed to the far host; rename it",
                p.display()
            ))
        })
    };
    let mut words = vec![
        SUBCOMMAND.to_string(),
        format!("--{}={from}", opt::REMOTE_JOB),
    ];
    if let Some(repo) = &args.repo {
        words.push(format!("--{}={}", opt::REPO, text("repository", repo)?));
    }
    for v in &args.volumes {
        words.push(format!("--{}={v}", opt::VOLUME));
    }
    words.push(format!("--{}={}", opt::MODE, args.mode.as_str()));
    if let Some(c) = args.compression {
        words.push(format!("--compression={c}"));
    }
    if let Some(w) = args.lock_wait {
        words.push(format!("--lock-wait={w}"));
    }
    if let Some(t) = args.threads {
        words.push(format!("--threads={t}"));
    }
    if args.converge {
        words.push(format!("--{}", opt::CONVERGE));
    }
    words.push("--".into());
    words.push(text("mount point or store", &args.target)?);
    if let Some(s) = args.snapshot.as_ref().filter(|_| !args.converge) {
        words.push(s.clone());
    }
    Ok(words)
}

/// Who started a remote job, for its registry entry: the ssh client's address (the first
/// word of `SSH_CONNECTION`, which sshd sets and the client cannot choose), else the name
/// the local end passed if it looks like a host name, else `unknown`.
pub(super) fn far_origin(ssh_connection: Option<&str>, name: &str) -> String {
    if let Some(ip) = ssh_connection
        .and_then(|c| c.split_whitespace().next())
        .and_then(|a| a.parse::<IpAddr>().ok())
    {
        return ip.to_string();
    }
    let looks_like_a_host = !name.is_empty()
        && name.len() <= 253
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-_:".contains(c));
    if looks_like_a_host {
        name.to_string()
    } else {
        "unknown".into()
    }
}

/// Stops this job as SIGTERM does (through [`exit_on_signals`]), saying why.
fn stop_self(why: &str) {
    log::warn!("{why}; stopping this remote job");
    if let Err(e) = crate::sys::proc::kill(std::process::id(), crate::sys::proc::Signal::TERM) {
        log::error!("cannot stop this job with SIGTERM ({e}); exiting");
        std::process::exit(SSH_FAILED);
    }
}

/// The far end: stops this job (as SIGTERM does, through [`exit_on_signals`]) once its
/// standard input ends, i.e. once the ssh connection that started it is gone, or when a
/// SIGHUP says so (sshd's hang-up when the session had a terminal).
pub(super) fn stop_when_connection_closes() {
    match signal_hook::iterator::Signals::new([signal_hook::consts::SIGHUP]) {
        Ok(mut hup) => {
            let started = std::thread::Builder::new()
                .name("snarf-remote-hup".into())
                .spawn(move || {
                    if hup.forever().next().is_some() {
                        stop_self("the ssh session of this remote job hung up (SIGHUP)");
                    }
                });
            if let Err(e) = started {
                log::warn!("cannot watch for SIGHUP in this remote job: {e}");
            }
        }
        Err(e) => log::warn!("cannot watch for SIGHUP in this remote job: {e}"),
    }
    let started = std::thread::Builder::new()
        .name("snarf-remote-watch".into())
        .spawn(|| {
            let mut stdin = std::io::stdin().lock();
            let mut buf = [0u8; 256];
            loop {
                match stdin.read(&mut buf) {
                    // The local end never writes; anything it does is ignored.
                    Ok(n) if n > 0 => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    _ => break,
                }
            }
            stop_self("the ssh connection that started this remote job closed");
        });
    if let Err(e) = started {
        log::warn!("cannot watch the ssh connection of this remote job: {e}");
    }
}

/// The local end: runs the job `args` on `host` and returns its outcome.
pub(super) fn run(args: &BackupArgs, host: &str) -> CliResult {
    let h = SshHost::parse(host)?;
    let o = SshOptions::from_env(None)?;
    let far = far_args(args, &crate::repo::lock::hostname())?;
    let words: Vec<&str> = far.iter().map(String::as_str).collect();
    let argv = remote_argv(&h, &o, &words)?;
    let spec = h.spec();
    exit_on_signals()?;
    let registry = crate::pids::host::registry()?;
    let registration = registry.register(
        NewEntry::new(ProcType::Sshpipe)
            .job(args.job_label())
            .repo(
                args.repo
                    .as_ref()
                    .map(|r| r.display().to_string())
                    .unwrap_or_default(),
            )
            .host(spec.clone())
            .state(ProcState::Running),
    )?;
    log::debug!("{spec}: running {argv:?}");
    let mut child = Command::new(&argv[0])
        .args(&argv[1..])
        // Held open and never written: its end tells the far job that this end is gone.
        .stdin(Stdio::piped())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            CliError::new(format!(
                "cannot run {:?} to reach {spec}: {e}; install the OpenSSH client, or name the ssh command in SNARF_RSH",
                argv[0]
            ))
        })?;
    let keep_open = child.stdin.take();
    let tail = Arc::new(Mutex::new(Vec::<String>::new()));
    let forward = child.stderr.take().and_then(|stderr| {
        let tail = tail.clone();
        std::thread::Builder::new()
            .name("snarf-host-stderr".into())
            .spawn(move || forward_lines(stderr, &tail))
            .ok()
    });
    let status = child.wait();
    drop(keep_open);
    if let Some(f) = forward {
        let _ = f.join();
    }
    let _ = registration.set_state(ProcState::Idle);
    drop(registration);
    let status = status.map_err(|e| CliError::new(format!("waiting for ssh to {spec}: {e}")))?;
    let said = tail.lock().clone();
    outcome(&spec, status, &said)
}

/// Copies the far side's standard error to ours line by line (a failed write here must not
/// end the job), keeping the last lines for the message.
fn forward_lines(stderr: impl Read, tail: &Mutex<Vec<String>>) {
    let mut r = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = std::io::stderr().lock().write_all(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut t = tail.lock();
        if t.len() >= TAIL_LINES {
            t.remove(0);
        }
        t.push(text);
    }
}

/// The local end's result from ssh's exit status: the far job's own status, or a message
/// naming the host when the connection or the far job died.
fn outcome(spec: &str, status: ExitStatus, said: &[String]) -> CliResult {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(0), _) => Ok(()),
        (Some(SSH_FAILED), _) => {
            let said: Vec<&str> = said
                .iter()
                .map(String::as_str)
                .filter(|l| !l.trim().is_empty())
                .collect();
            let said = if said.is_empty() {
                String::new()
            } else {
                format!(" (ssh said: {})", said.join(" / "))
            };
            Err(CliError {
                message: format!(
                    "the backup job on {spec} ended without finishing: ssh lost the connection, could not log in, or the far job was killed{said}; nothing half-committed is left there (`snarf pids MOUNT` and `snarf finishing REPO` on {spec} show its state)"
                ),
                code: SSH_FAILED,
            })
        }
        (Some(code), _) => Err(CliError {
            message: format!(
                "the backup job on {spec} failed with exit status {code} (its messages are above)"
            ),
            code,
        }),
        (None, sig) => Err(CliError {
            message: format!(
                "ssh to {spec} was killed (signal {}); the far job stops when it sees the connection close, and leaves nothing half-committed",
                sig.unwrap_or(0)
            ),
            code: 128 + sig.unwrap_or(0),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Cli, Command as Sub};
    use super::*;
    use crate::jobs::Mode;
    use clap::Parser;
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;

    fn parse(argv: &[&str]) -> BackupArgs {
        match Cli::try_parse_from(argv).unwrap().command {
            Sub::Backup(a) => a,
            _ => panic!("not a backup"),
        }
    }

    /// What the far shell makes of the ssh argv's remote words, parsed as snarf there.
    fn far_side(argv: &[String]) -> BackupArgs {
        let dash = argv.iter().position(|a| a == "--").unwrap();
        let line = argv[dash + 2..].join(" ");
        let words = shlex::split(&line).unwrap();
        assert_eq!(words[0], "/opt/snarf");
        let mut as_cli = vec!["snarf".to_string()];
        as_cli.extend(words[1..].iter().cloned());
        match Cli::try_parse_from(&as_cli)
            .unwrap_or_else(|e| panic!("{as_cli:?}: {e}"))
            .command
        {
            Sub::Backup(a) => a,
            _ => panic!("{as_cli:?} is not a backup"),
        }
    }

    #[test]
    fn hostile_names_reach_the_far_snarf_as_the_same_words() {
        let o = SshOptions {
            rsh: vec!["ssh".into()],
            remote_path: "/opt/snarf".into(),
        };
        let h = SshHost::parse("bk@vault:2222").unwrap();
        for (target, snapshot, repo, volume) in [
            (
                "/mnt/a; touch /tmp/canary",
                "$(touch /tmp/canary)",
                "/srv/r`id`",
                "v'\"q",
            ),
            ("-rf", "--help", "--repo=/etc", "--"),
            ("/m\nrm -rf /", "s\n;id", "/r e p o", "-v"),
            ("--", "-", "-", "--mode=full"),
        ] {
            let (repo_opt, volume_opt) = (format!("--repo={repo}"), format!("--volume={volume}"));
            let args = parse(&[
                "snarf",
                "backup",
                "--host",
                "bk@vault:2222",
                &repo_opt,
                &volume_opt,
                "--mode",
                "incremental",
                "--lock-wait",
                "9",
                "--threads",
                "3",
                "--compression",
                "7",
                "--",
                target,
                snapshot,
            ]);
            assert_eq!(args.host.as_deref(), Some("bk@vault:2222"));
            let far = far_args(&args, "here").unwrap();
            let words: Vec<&str> = far.iter().map(String::as_str).collect();
            let argv = remote_argv(&h, &o, &words).unwrap();
            let dash = argv.iter().position(|a| a == "--").unwrap();
            assert_eq!(argv[dash + 1], "vault");
            assert!(argv[..dash]
                .windows(2)
                .any(|w| w == ["-o", "BatchMode=yes"]));
            let back = far_side(&argv);
            assert_eq!(back.target, PathBuf::from(target));
            assert_eq!(back.snapshot.as_deref(), Some(snapshot));
            assert_eq!(back.repo, Some(PathBuf::from(repo)));
            assert_eq!(back.volumes, vec![volume.to_string()]);
            assert_eq!(back.mode, Mode::Incremental);
            assert_eq!(
                (back.lock_wait, back.threads, back.compression),
                (Some(9), Some(3), Some(7))
            );
            assert_eq!(back.remote_job.as_deref(), Some("here"));
            assert_eq!(back.host, None);
        }
    }

    #[test]
    fn a_converge_job_on_another_host_names_no_snapshot_there() {
        let o = SshOptions {
            rsh: vec!["ssh".into()],
            remote_path: "/opt/snarf".into(),
        };
        let h = SshHost::parse("vault").unwrap();
        let args = parse(&[
            "snarf",
            "backup",
            "--host",
            "vault",
            "--converge",
            "--",
            "-m",
        ]);
        let far = far_args(&args, "here").unwrap();
        assert_eq!(
            far,
            [
                "backup",
                "--remote-job=here",
                "--mode=auto",
                "--converge",
                "--",
                "-m"
            ]
        );
        let words: Vec<&str> = far.iter().map(String::as_str).collect();
        let back = far_side(&remote_argv(&h, &o, &words).unwrap());
        assert!(back.converge);
        assert_eq!(back.snapshot, None);
        assert_eq!(back.target, PathBuf::from("-m"));
    }

    #[test]
    fn defaults_pass_no_repo_and_the_far_side_cannot_chain_hosts() {
        let args = parse(&["snarf", "backup", "--host", "h", "/mnt", "s"]);
        let far = far_args(&args, "here").unwrap();
        assert_eq!(
            far,
            [
                "backup",
                "--remote-job=here",
                "--mode=auto",
                "--",
                "/mnt",
                "s"
            ]
        );
        // A far command naming --host as well is refused there.
        assert!(Cli::try_parse_from([
            "snarf",
            "backup",
            "--remote-job=x",
            "--host",
            "h",
            "/m",
            "s"
        ])
        .is_err());
        for conflicting in ["--wait", "--detach"] {
            assert!(
                Cli::try_parse_from(["snarf", "backup", "--host", "h", conflicting, "/m", "s"])
                    .is_err(),
                "{conflicting}"
            );
        }
    }

    #[test]
    fn a_non_utf8_path_is_refused_not_mangled() {
        use std::os::unix::ffi::OsStrExt;
        let mut args = parse(&["snarf", "backup", "--host", "h", "/mnt", "s"]);
        args.target = PathBuf::from(std::ffi::OsStr::from_bytes(b"/mnt/\xff"));
        let e = far_args(&args, "here").unwrap_err().message;
        assert!(e.contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn the_origin_is_the_ssh_client_address_else_a_sane_name() {
        assert_eq!(
            far_origin(Some("192.0.2.7 51234 192.0.2.1 22"), "laptop"),
            "192.0.2.7"
        );
        assert_eq!(far_origin(Some("::1 5 ::1 22"), "x"), "::1");
        assert_eq!(far_origin(None, "laptop.example"), "laptop.example");
        assert_eq!(far_origin(Some("garbage"), "laptop"), "laptop");
        for hostile in ["", "-x", "a b", "a;b", "a\nb", "$(id)"] {
            assert_eq!(far_origin(None, hostile), "unknown", "{hostile:?}");
        }
    }

    #[test]
    fn exit_statuses_map_to_the_far_jobs_status_or_a_message_naming_the_host() {
        let st = |code: i32| ExitStatus::from_raw(code << 8);
        assert!(outcome("h:22", st(0), &[]).is_ok());
        let e = outcome("bk@h:22", st(3), &[]).unwrap_err();
        assert_eq!(e.code, 3);
        assert!(e.message.contains("bk@h:22"), "{}", e.message);
        let e = outcome("h", st(255), &["Connection refused".into()]).unwrap_err();
        assert_eq!(e.code, 255);
        assert!(
            e.message.contains("on h ") && e.message.contains("Connection refused"),
            "{}",
            e.message
        );
        let e = outcome("h", ExitStatus::from_raw(9), &[]).unwrap_err();
        assert_eq!(e.code, 137);
        assert!(e.message.contains("ssh to h was killed"), "{}", e.message);
    }
}
