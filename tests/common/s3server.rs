//! A real S3-compatible server for the tests of S3 repositories: moto's server (PyPI
//! `moto[server]`, which implements conditional PutObject with If-None-Match and If-Match,
//! ranged GETs and multipart uploads), installed by scripts/test.sh into
//! `target/s3-test-server/venv` (or found through SNARF_TEST_MOTO_SERVER), started per test
//! on a free loopback port and killed by its PID on every path (Drop). [`Proxy`] is a
//! loopback TCP relay in front of it that a test cuts to make the server vanish mid-backup.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use snarf::repo::backend::S3Settings;

/// Access key the tests use (moto accepts any).
pub const ACCESS_KEY: &str = "snarf-test-key";
/// Secret key the tests use.
pub const SECRET_KEY: &str = "snarf-test-secret";

/// Where the server's executable is, if it is installed.
pub fn server_bin() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SNARF_TEST_MOTO_SERVER") {
        return Some(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/s3-test-server/venv/bin/moto_server");
    p.is_file().then_some(p)
}

/// True if the server is installed; a test without it says so and skips, unless
/// SNARF_REQUIRE_S3=1 (scripts/test.sh installs it and sets that) makes it a failure.
pub fn available() -> bool {
    let ok = server_bin().is_some();
    if !ok {
        assert!(
            std::env::var("SNARF_REQUIRE_S3").as_deref() != Ok("1"),
            "SNARF_REQUIRE_S3=1 but the S3 test server is not installed (scripts/test.sh installs it)"
        );
        eprintln!("skipping: run scripts/test.sh once to install the S3 test server (moto)");
    }
    ok
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A running S3 server on 127.0.0.1 (see the module documentation).
pub struct S3Server {
    child: Child,
    /// Its port.
    pub port: u16,
    /// Its log.
    pub dir: tempfile::TempDir,
}

impl S3Server {
    /// Starts a server and waits until it answers.
    pub fn start() -> S3Server {
        // Another test of this binary may take the free port between its pick and moto's
        // bind; moto then exits, and a new port is tried.
        for _ in 0..3 {
            if let Some(server) = S3Server::try_start() {
                return server;
            }
        }
        panic!("the S3 test server exited three times before answering (see its log above)");
    }

    /// One start on a fresh free port: the server once it answers HTTP, or None if it
    /// exited first.
    fn try_start() -> Option<S3Server> {
        let bin = server_bin().expect("the S3 test server is installed");
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log");
        let child = Command::new(&bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start the S3 test server");
        let mut server = S3Server { child, port, dir };
        // A listening port is not a serving server: under load CI saw a connection accepted
        // and closed without a reply ("HTTP 0" on the first request), so wait for an HTTP
        // answer from our own child.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                eprintln!(
                    "the S3 test server on port {port} exited ({status}): {}",
                    server.log()
                );
                return None;
            }
            if http(port, "GET", "/") != 0 {
                return Some(server);
            }
            assert!(
                Instant::now() < deadline,
                "the S3 test server did not answer HTTP on port {port}: {}",
                server.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// Its endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name` (moto takes unsigned requests).
    pub fn create_bucket(&self, name: &str) {
        let mut status = 0;
        for _ in 0..5 {
            status = http(self.port, "PUT", &format!("/{name}"));
            if status != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(status == 200, "creating bucket {name}: HTTP {status}");
    }

    /// Client settings for an endpoint on `port` (the server's, or a proxy's).
    pub fn settings_at(port: u16) -> S3Settings {
        S3Settings {
            endpoint: Some(format!("http://127.0.0.1:{port}")),
            allow_http: true,
            region: "us-east-1".into(),
            access_key_id: ACCESS_KEY.into(),
            secret_access_key: SECRET_KEY.into(),
            session_token: None,
        }
    }

    /// Client settings for this server.
    pub fn settings(&self) -> S3Settings {
        S3Server::settings_at(self.port)
    }

    /// The environment a snarf process needs to reach this server (and nothing of the
    /// user's own AWS files).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
            (
                "AWS_CONFIG_FILE",
                "/nonexistent/snarf-test-aws-config".into(),
            ),
            (
                "AWS_SHARED_CREDENTIALS_FILE",
                "/nonexistent/snarf-test-aws-credentials".into(),
            ),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One bodiless HTTP/1.1 request to 127.0.0.1:`port`; its status code, or 0 if there was
/// no answer.
fn http(port: u16, method: &str, path: &str) -> u16 {
    let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
        return 0;
    };
    if write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .is_err()
    {
        return 0;
    }
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// A loopback TCP relay to a server, cut on demand (connections reset, new ones refused) or
/// paused (bytes held, connections kept: a client of it stalls mid-request).
pub struct Proxy {
    /// The port it listens on.
    pub port: u16,
    upstream: u16,
    cut: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Proxy {
    /// A relay to 127.0.0.1:`upstream` on a free port.
    pub fn start(upstream: u16) -> Proxy {
        Proxy::on(free_port(), upstream)
    }

    /// A relay on `port` (again, after a cut).
    pub fn on(port: u16, upstream: u16) -> Proxy {
        Proxy::relay(port, upstream, false)
    }

    /// A relay that renames the `If-None-Match` header of every request on its way, so
    /// the server behind it looks like one without conditional writes.
    pub fn without_conditional_writes(upstream: u16) -> Proxy {
        Proxy::relay(free_port(), upstream, true)
    }

    fn relay(port: u16, upstream: u16, strip: bool) -> Proxy {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind the proxy");
        listener.set_nonblocking(true).expect("nonblocking");
        let cut = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let (c, cs, ps) = (cut.clone(), conns.clone(), paused.clone());
        let thread = std::thread::spawn(move || {
            while !c.load(Ordering::SeqCst) {
                match listener.accept() {
                    Ok((down, _)) => {
                        let _ = down.set_nonblocking(false);
                        let Ok(up) = TcpStream::connect(("127.0.0.1", upstream)) else {
                            continue;
                        };
                        let mut list = cs.lock().unwrap();
                        for (from, to, rewrite) in [(&down, &up, strip), (&up, &down, false)] {
                            let (mut from, mut to) =
                                (from.try_clone().unwrap(), to.try_clone().unwrap());
                            let paused = ps.clone();
                            std::thread::spawn(move || {
                                let mut buf = vec![0u8; 1 << 16];
                                while let Ok(n) = from.read(&mut buf) {
                                    if n == 0 {
                                        break;
                                    }
                                    while paused.load(Ordering::SeqCst) {
                                        std::thread::sleep(Duration::from_millis(5));
                                    }
                                    if rewrite {
                                        rename_header(&mut buf[..n]);
                                    }
                                    if to.write_all(&buf[..n]).is_err() {
                                        break;
                                    }
                                }
                                let _ = to.shutdown(Shutdown::Write);
                            });
                        }
                        list.push(down);
                        list.push(up);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        Proxy {
            port,
            upstream,
            cut,
            paused,
            conns,
            thread: Some(thread),
        }
    }

    /// Holds every byte relayed from now on (`true`) or lets them through again (`false`).
    pub fn pause(&self, on: bool) {
        self.paused.store(on, Ordering::SeqCst);
    }

    /// Cuts it: every connection is shut down and the port stops listening.
    pub fn cut(&mut self) {
        self.cut.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
    }
}

/// Renames every `if-none-match` header in `buf` to a header of the same length that
/// servers ignore.
fn rename_header(buf: &mut [u8]) {
    const FROM: &[u8] = b"if-none-match";
    const TO: &[u8] = b"x-ignored-hdr";
    let mut i = 0;
    while i + FROM.len() <= buf.len() {
        if buf[i..i + FROM.len()].eq_ignore_ascii_case(FROM) {
            buf[i..i + FROM.len()].copy_from_slice(TO);
            i += FROM.len();
        } else {
            i += 1;
        }
    }
}
