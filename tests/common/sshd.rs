//! A real OpenSSH server for the tests of repositories over ssh: a host key and user keys
//! generated in a temporary folder, its own sshd_config (loopback, its own port,
//! `StrictModes no`, authorized_keys in the folder), started with `sshd -D -f CONFIG` and
//! killed by its PID on every path (Drop). One key logs in unrestricted; the other is
//! forced to `snarf serve --restrict-to DIR`, as an administrator would set up a backup host.

#![allow(dead_code)]

use std::io::Read;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Debian's OpenSSH server.
pub const SSHD: &str = "/usr/sbin/sshd";

/// A running sshd on 127.0.0.1 (see the module documentation).
pub struct Sshd {
    child: Child,
    /// The folder of its keys, config and logs.
    pub dir: tempfile::TempDir,
    /// Its port.
    pub port: u16,
    /// The key that logs in without restriction.
    pub user_key: PathBuf,
    /// The key forced to `snarf serve --restrict-to` the folder given at start.
    pub restricted_key: PathBuf,
}

/// True if sshd and ssh are installed; a test without them says so and skips, unless
/// SNARF_REQUIRE_SSHD=1 (CI installs them through scripts/test.sh) makes that a failure.
pub fn available() -> bool {
    let ok = Path::new(SSHD).exists()
        && Command::new("ssh")
            .arg("-V")
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        && Command::new("ssh-keygen")
            .arg("-?")
            .stderr(Stdio::null())
            .status()
            .is_ok();
    if !ok {
        assert!(
            std::env::var("SNARF_REQUIRE_SSHD").as_deref() != Ok("1"),
            "SNARF_REQUIRE_SSHD=1 but openssh-server or openssh-client is missing"
        );
        eprintln!("skipping: install openssh-server and openssh-client to run the ssh tests");
    }
    ok
}

fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "snarf-test", "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .status()
        .expect("ssh-keygen");
    assert!(st.success(), "ssh-keygen {}", path.display());
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Starts `sshd -D` with the config in `d` and waits until it listens on `port`.
fn spawn(d: &Path, port: u16) -> Option<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.join("sshd.log"))
        .unwrap();
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(d.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("starting sshd");
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            return None;
        }
        // A listening port is not yet a serving sshd: wait for its banner, as the S3 server
        // helper waits for an HTTP answer.
        if answers_with_banner(port) {
            return Some(child);
        }
        if Instant::now() > until {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether something on 127.0.0.1:`port` greets a new connection with an SSH banner.
fn answers_with_banner(port: u16) -> bool {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_secs(2))).is_err() {
        return false;
    }
    let mut banner = [0u8; 4];
    s.read_exact(&mut banner).is_ok() && &banner == b"SSH-"
}

/// The processes descended from `pid` (children first found, then theirs), from /proc.
fn descendants(pid: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
            continue;
        };
        // The parent is the second field after the command, which ends at the last ')'.
        let Some(after) = stat.rsplit_once(')').map(|(_, a)| a.to_string()) else {
            continue;
        };
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|f| f.parse().ok()) {
            parents.push((p, ppid));
        }
    }
    let mut out = vec![];
    let mut frontier = vec![pid];
    while let Some(q) = frontier.pop() {
        for &(p, pp) in &parents {
            if pp == q && !out.contains(&p) {
                out.push(p);
                frontier.push(p);
            }
        }
    }
    out
}

impl Sshd {
    /// Takes the server down as a host that goes away does: every session it forked (and
    /// what runs in them, the far `snarf serve`) is killed, then the listener. Only
    /// processes descended from the sshd this harness started are signalled.
    pub fn stop(&mut self) {
        // Stopped first, so it forks no session while its sessions are found; they are
        // found before it dies (then they would be init's children, beyond our reach).
        unsafe { libc::kill(self.child.id() as i32, libc::SIGSTOP) };
        for p in descendants(self.child.id()) {
            unsafe { libc::kill(p as i32, libc::SIGKILL) };
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port, with the same keys (after [`Sshd::stop`]).
    pub fn restart(&mut self) {
        self.child = spawn(self.dir.path(), self.port).expect("sshd did not start again");
    }

    /// Starts sshd; the restricted key may reach only repositories under `restrict_to`,
    /// through the snarf binary `snarf`.
    pub fn start(snarf: &Path, restrict_to: &Path) -> Sshd {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        let host_key = d.join("host_key");
        let user_key = d.join("user_key");
        let restricted_key = d.join("restricted_key");
        for k in [&host_key, &user_key, &restricted_key] {
            keygen(k);
        }
        let forced = format!(
            "{} serve --restrict-to {}",
            snarf.display(),
            restrict_to.display()
        );
        assert!(!forced.contains('"'), "a quote in {forced}");
        std::fs::write(
            d.join("authorized_keys"),
            format!(
                "{}command=\"{forced}\",no-pty,no-port-forwarding,no-agent-forwarding,no-X11-forwarding {}",
                read(&user_key.with_extension("pub")),
                read(&restricted_key.with_extension("pub")),
            ),
        )
        .unwrap();
        // sshd refuses to start without its privilege separation folder.
        std::fs::create_dir_all("/run/sshd").expect("/run/sshd");
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = {
                let l = TcpListener::bind("127.0.0.1:0").expect("a free port");
                l.local_addr().unwrap().port()
            };
            let config = d.join("sshd_config");
            std::fs::write(
                &config,
                format!(
                    "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nPidFile {}\n\
                     AuthorizedKeysFile {}\nStrictModes no\nUsePAM no\n\
                     PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                     PubkeyAuthentication yes\nPermitRootLogin prohibit-password\n\
                     AllowUsers *\nLogLevel ERROR\nMaxStartups 50\nMaxSessions 50\n",
                    host_key.display(),
                    d.join("sshd.pid").display(),
                    d.join("authorized_keys").display(),
                ),
            )
            .unwrap();
            if let Some(child) = spawn(d, port) {
                let pub_host = read(&host_key.with_extension("pub"));
                std::fs::write(
                    d.join("known_hosts"),
                    format!("[127.0.0.1]:{port} {pub_host}"),
                )
                .unwrap();
                return Sshd {
                    child,
                    dir,
                    port,
                    user_key,
                    restricted_key,
                };
            }
            last_err = read(&d.join("sshd.log"));
        }
        panic!("sshd did not start: {last_err}");
    }

    /// SNARF_RSH's words for logging in with `key`: only this server's host key is
    /// trusted, only `key` is offered.
    pub fn rsh(&self, key: &Path) -> Vec<String> {
        let d = self.dir.path();
        let mut v: Vec<String> = vec!["ssh".into(), "-F".into(), "/dev/null".into()];
        v.push("-i".into());
        v.push(key.display().to_string());
        for o in [
            "IdentitiesOnly=yes".to_string(),
            format!("UserKnownHostsFile={}", d.join("known_hosts").display()),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "StrictHostKeyChecking=yes".to_string(),
            "LogLevel=ERROR".to_string(),
        ] {
            v.push("-o".into());
            v.push(o);
        }
        v
    }

    /// SNARF_RSH as one string.
    pub fn rsh_string(&self, key: &Path) -> String {
        shlex::try_join(self.rsh(key).iter().map(String::as_str)).unwrap()
    }

    /// The URL of `path` on this server.
    pub fn url(&self, path: &str) -> String {
        format!("ssh://root@127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Only the listener we started; the sessions it forked end with their clients.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
