//! `snarf metrics MOUNT`: prints `control/metrics` (for node_exporter's textfile collector),
//! and with `--listen ADDR` serves it to Prometheus over HTTP: `GET /metrics` only, one
//! request at a time on one thread, requests bounded in size and time, a loopback address
//! unless `--allow-remote` says otherwise (the figures name volumes and snapshots).

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;

use super::control_cmds::control_dir;
use super::{CliError, CliResult};
use crate::control::{ControlFile, METRICS_CONTENT_TYPE};

/// Longest request head accepted, in bytes; a scrape sends a few hundred.
pub const MAX_REQUEST_BYTES: usize = 8192;
/// How long a client may take to send its request or read the answer.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Arguments of `snarf metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Where the store is mounted.
    mountpoint: PathBuf,
    /// Serve the metrics over HTTP at this address (e.g. 127.0.0.1:9477) instead of
    /// printing them once; Prometheus scrapes http://ADDR/metrics.
    #[arg(long, value_name = "ADDR:PORT")]
    listen: Option<SocketAddr>,
    /// Allow --listen on an address other than loopback (anyone who reaches it sees the
    /// volume and snapshot names).
    #[arg(long, requires = "listen")]
    allow_remote: bool,
}

/// `snarf metrics`.
pub fn metrics(args: MetricsArgs) -> CliResult {
    let file = control_dir(&args.mountpoint)?.join(ControlFile::Metrics.name());
    let Some(addr) = args.listen else {
        let text = read_metrics(&file)?;
        return std::io::stdout()
            .write_all(text.as_bytes())
            .map_err(|e| CliError::new(format!("cannot print the metrics: {e}")));
    };
    if !addr.ip().is_loopback() && !args.allow_remote {
        return Err(CliError::new(format!(
            "{addr} is not a loopback address; the metrics name every volume and snapshot, so give --allow-remote to serve them beyond this machine (or listen on 127.0.0.1)"
        )));
    }
    let listener = TcpListener::bind(addr)
        .map_err(|e| CliError::new(format!("cannot listen on {addr}: {e}")))?;
    let bound = listener.local_addr().unwrap_or(addr);
    // Printed (and flushed) once the socket is bound, so a script knows when to scrape.
    println!("serving http://{bound}/metrics from {}", file.display());
    let _ = std::io::stdout().flush();
    serve(&listener, &file);
    Ok(())
}

fn read_metrics(file: &Path) -> Result<String, CliError> {
    std::fs::read_to_string(file).map_err(|e| {
        CliError::new(format!(
            "cannot read {}: {e}; is the store still mounted?",
            file.display()
        ))
    })
}

/// Answers requests one at a time, for as long as the process runs.
fn serve(listener: &TcpListener, file: &Path) {
    for stream in listener.incoming() {
        match stream {
            Ok(stream) => {
                if let Err(e) = answer(stream, file) {
                    log::debug!("metrics client: {e}");
                }
            }
            Err(e) => log::warn!("accepting a metrics client: {e}"),
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `GET /metrics` (a query string is ignored).
    Metrics,
    /// Any other path.
    NotFound,
    /// Any other method.
    BadMethod,
    /// Not an HTTP request line, or a head over [`MAX_REQUEST_BYTES`].
    Bad,
}

/// Reads the request head (up to the blank line) within the size bound; `read` reads
/// more of it (failing once the client's time is up).
fn read_head(
    mut read: impl FnMut(&mut [u8]) -> std::io::Result<usize>,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = read(&mut buf)?;
        if n == 0 {
            return Ok(Some(head));
        }
        head.extend_from_slice(&buf[..n]);
        if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
            return Ok(Some(head));
        }
        if head.len() > MAX_REQUEST_BYTES {
            return Ok(None);
        }
    }
}

fn parse_request(head: &[u8]) -> Request {
    let line_end = head.iter().position(|&b| b == b'\n').unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Request::Bad;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    if method != "GET" {
        return Request::BadMethod;
    }
    let path = target.split('?').next().unwrap_or(target);
    if path == "/metrics" {
        Request::Metrics
    } else {
        Request::NotFound
    }
}

fn respond(stream: &mut TcpStream, status: &str, kind: &str, body: &[u8]) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(body)?;
    stream.flush()
}

fn answer(mut stream: TcpStream, file: &Path) -> std::io::Result<()> {
    stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
    // One deadline for the whole request, so a client trickling bytes cannot hold the
    // only thread longer than CLIENT_TIMEOUT.
    let deadline = Instant::now() + CLIENT_TIMEOUT;
    let read = |buf: &mut [u8]| {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::Error::from(std::io::ErrorKind::TimedOut));
        }
        stream.set_read_timeout(Some(left))?;
        (&stream).read(buf)
    };
    let text = "text/plain; charset=utf-8";
    let request = match read_head(read)? {
        Some(head) => parse_request(&head),
        None => {
            respond(
                &mut stream,
                "431 Request Header Fields Too Large",
                text,
                b"request too large\n",
            )?;
            // Let the client read the answer: closing with its unread bytes still queued
            // would reset the connection first. Drain a bounded amount, within the deadline.
            stream.shutdown(Shutdown::Write)?;
            let mut sink = [0u8; 4096];
            for _ in 0..64 {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                stream.set_read_timeout(Some(left.min(Duration::from_secs(1))))?;
                match (&stream).read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
            return Ok(());
        }
    };
    match request {
        Request::Metrics => match read_metrics(file) {
            Ok(body) => respond(&mut stream, "200 OK", METRICS_CONTENT_TYPE, body.as_bytes()),
            Err(e) => respond(
                &mut stream,
                "503 Service Unavailable",
                text,
                format!("{}\n", e.message).as_bytes(),
            ),
        },
        Request::NotFound => respond(
            &mut stream,
            "404 Not Found",
            text,
            b"snarf serves /metrics only\n",
        ),
        Request::BadMethod => respond(
            &mut stream,
            "405 Method Not Allowed",
            text,
            b"GET /metrics only\n",
        ),
        Request::Bad => respond(&mut stream, "400 Bad Request", text, b"bad request\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"GET /metrics/../etc HTTP/1.1\r\n\r\n"),
            Request::NotFound
        );
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::BadMethod
        );
        for bad in [
            &b""[..],
            b"GET /metrics\r\n\r\n",
            b"GET  /metrics HTTP/1.1\r\n\r\n",
            b"GET /metrics SMTP\r\n\r\n",
            b"\xff\xfe /metrics HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(parse_request(bad), Request::Bad, "{bad:?}");
        }
    }

    #[test]
    fn a_request_head_is_bounded() {
        let mut endless = std::io::repeat(b'a');
        assert_eq!(read_head(|b| endless.read(b)).unwrap(), None);
        let mut short = &b"GET /metrics HTTP/1.1\r\n\r\nbody"[..];
        assert!(read_head(|b| short.read(b)).unwrap().is_some());
    }
}
