//! [`S3Backend`]: a repository in an S3 bucket (`s3://bucket/prefix`), through the Apache
//! Arrow project's `object_store` client (which retries with backoff and signs requests).
//!
//! Each key is the object `<prefix>/<key name>`. The [`Backend`] trait is synchronous and the
//! client is async: the backend owns a private current-thread tokio runtime driven by one
//! thread of its own (`snarf-s3`), and every call waits on it with `Handle::block_on`, so
//! uploads in flight make progress while their writer compresses the next part.
//!
//! - `write` is a plain PutObject (atomic on S3: readers see the old object or the new one);
//! - `create` is a PutObject with `If-None-Match: *`: exactly one of two creators wins. A
//!   server that ignores the header would let both win, so before the first `create` or
//!   `lock` the backend probes that a second create of one probe object is refused, and
//!   refuses to work with a server that does not ([`Error::NoConditionalWrites`]);
//! - `read_range` is a ranged GET, so restores and `backups/` never fetch whole packs;
//! - `upload` buffers up to one part ([`PART`]) and sends a small pack as one PutObject, a
//!   larger one as a multipart upload with [`IN_FLIGHT`] parts in flight, visible only when
//!   completed;
//! - `list` lists the kind's prefix, and a name becomes a [`Key`] only through
//!   [`Key::parse`]; anything else in the bucket is skipped and logged;
//! - `lock` is a lease object (see [`lease`](self::lease) and DESIGN.md).

mod lease;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as ObjPath;
use object_store::{
    ObjectStore, PutMode, PutOptions, PutPayload, RetryConfig, UpdateVersion, WriteMultipart,
};
use parking_lot::Mutex;

use super::super::error::{Error, Fix, Result, S3Fix};
use super::s3conf::S3Settings;
use super::{Backend, Created, Key, Kind, LockGuard, Upload};

/// Size of one part of a multipart upload; packs smaller than this go up in one request.
pub const PART: usize = 8 << 20;
/// Parts of one upload in flight at once.
pub const IN_FLIGHT: usize = 2;
/// Longest a bucket name may be (S3's rule).
const MAX_BUCKET: usize = 63;
/// Longest prefix accepted.
const MAX_PREFIX: usize = 512;

/// A parsed `s3://bucket[/prefix]` location.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The prefix inside it, without leading or trailing `/` (empty: the bucket's root).
    pub prefix: String,
}

impl S3Url {
    /// Parses `s3://bucket[/prefix]`. The bucket must follow S3's naming rules, and every
    /// component of the prefix must be letters, digits, `.`, `_` or `-` (never `.` or `..`
    /// alone), so the location is unambiguous and no key leaves it.
    pub fn parse(text: &str) -> Result<S3Url> {
        let bad = |why: &str| {
            Error::BadArgument(format!(
                "repository location {text:?}: {why}; give s3://BUCKET or s3://BUCKET/PREFIX"
            ))
        };
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("it does not start with s3://"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=MAX_BUCKET).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
            && bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
            && bucket.ends_with(|c: char| c.is_ascii_alphanumeric())
            && !bucket.contains("..");
        if !bucket_ok {
            return Err(bad(
                "the bucket name must be 3 to 63 lowercase letters, digits, dots or hyphens, starting and ending with a letter or digit",
            ));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.len() > MAX_PREFIX {
            return Err(bad("the prefix is longer than 512 bytes"));
        }
        if !prefix.is_empty() {
            for part in prefix.split('/') {
                let ok = !part.is_empty()
                    && part != "."
                    && part != ".."
                    && part
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
                if !ok {
                    return Err(bad(
                        "each part of the prefix must be letters, digits, '.', '_' or '-' (not empty, '.' or '..')",
                    ));
                }
            }
        }
        Ok(S3Url {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The URL as the user writes it.
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// The runtime's driver thread, stopped and joined when the backend is dropped.
struct Driver {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Driver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// What the backend and its lease thread share.
struct Inner {
    target: S3Url,
    store: Arc<AmazonS3>,
    handle: tokio::runtime::Handle,
    /// Set when this process's lock lease was lost: every write is refused from then on.
    lease_lost: AtomicBool,
    /// Whether the server was seen to refuse a second create (probed once).
    conditional_ok: OnceLock<()>,
    _driver: Mutex<Driver>,
}

impl Inner {
    fn url(&self) -> String {
        self.target.url()
    }

    /// The object path of `name` (a key's name, or `lock`).
    fn path(&self, name: &str) -> ObjPath {
        if self.target.prefix.is_empty() {
            ObjPath::from(name)
        } else {
            ObjPath::from(format!("{}/{name}", self.target.prefix))
        }
    }

    /// Runs a request on the runtime, waiting for it.
    fn run<F: std::future::Future>(&self, f: F) -> F::Output {
        self.handle.block_on(f)
    }

    /// The repository-layer error of a failed request.
    fn error(&self, op: &'static str, path: &ObjPath, e: object_store::Error) -> Error {
        let fix = match &e {
            object_store::Error::PermissionDenied { .. }
            | object_store::Error::Unauthenticated { .. } => S3Fix::Credentials,
            object_store::Error::NotImplemented | object_store::Error::NotSupported { .. } => {
                S3Fix::Feature
            }
            other if mentions_no_such_bucket(other) => S3Fix::Bucket,
            _ => S3Fix::Endpoint,
        };
        Error::S3 {
            repo: self.url(),
            op,
            key: format!("s3://{}/{path}", self.target.bucket),
            fix,
            source: Box::new(e),
        }
    }

    /// Refuses writes once the lease is lost.
    fn check_lease(&self) -> Result<()> {
        if self.lease_lost.load(Ordering::SeqCst) {
            return Err(Error::LeaseLost {
                repo: self.url(),
                why: "it could not be renewed in time, so another process may hold the lock",
            });
        }
        Ok(())
    }

    /// A PutObject of `data` at `path` in `mode`.
    fn put(
        &self,
        path: &ObjPath,
        data: Vec<u8>,
        mode: PutMode,
    ) -> object_store::Result<object_store::PutResult> {
        let opts = PutOptions {
            mode,
            ..PutOptions::default()
        };
        self.run(self.store.put_opts(path, PutPayload::from(data), opts))
    }

    /// Checks once that the server refuses a second If-None-Match create of one object.
    fn probe_conditional(&self) -> Result<()> {
        if self.conditional_ok.get().is_some() {
            return Ok(());
        }
        let name = format!(".probe-{}", super::ObjectId::generate());
        let path = self.path(&name);
        self.put(&path, b"probe".to_vec(), PutMode::Create)
            .map_err(|e| self.error("probing conditional writes with", &path, e))?;
        let second = self.put(&path, b"probe".to_vec(), PutMode::Create);
        let _ = self.run(self.store.delete(&path));
        match second {
            Err(object_store::Error::AlreadyExists { .. }) => {
                let _ = self.conditional_ok.set(());
                Ok(())
            }
            Ok(_) => Err(Error::NoConditionalWrites { repo: self.url() }),
            Err(e) => Err(self.error("probing conditional writes with", &path, e)),
        }
    }
}

/// True if the error is S3's NoSuchBucket.
fn mentions_no_such_bucket(e: &object_store::Error) -> bool {
    let mut cur: Option<&dyn std::error::Error> = Some(e);
    while let Some(err) = cur {
        if err.to_string().contains("NoSuchBucket") {
            return true;
        }
        cur = err.source();
    }
    false
}

/// A repository in an S3 bucket (see the module documentation).
pub struct S3Backend {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for S3Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "S3Backend({})", self.inner.url())
    }
}

impl S3Backend {
    /// The repository at `target` on the service `settings` describe. Nothing is sent yet.
    pub fn connect(target: &S3Url, settings: &S3Settings) -> Result<S3Backend> {
        let mut builder = AmazonS3Builder::new()
            .with_bucket_name(&target.bucket)
            .with_region(&settings.region)
            .with_access_key_id(&settings.access_key_id)
            .with_secret_access_key(&settings.secret_access_key)
            .with_allow_http(settings.allow_http)
            .with_retry(RetryConfig {
                max_retries: 5,
                retry_timeout: Duration::from_secs(60),
                ..RetryConfig::default()
            });
        if let Some(token) = &settings.session_token {
            builder = builder.with_token(token);
        }
        if let Some(endpoint) = &settings.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        let store = builder.build().map_err(|e| Error::S3 {
            repo: target.url(),
            op: "configuring the client for",
            key: target.url(),
            fix: S3Fix::Endpoint,
            source: Box::new(e),
        })?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::io("starting the S3 client's runtime", e))?;
        let handle = rt.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("snarf-s3".into())
            .spawn(move || {
                // This thread drives the runtime's I/O and timers; callers wait on it.
                let _ = rt.block_on(stopped);
            })
            .map_err(|e| Error::io("starting the S3 client's thread", e))?;
        Ok(S3Backend {
            inner: Arc::new(Inner {
                target: target.clone(),
                store: Arc::new(store),
                handle,
                lease_lost: AtomicBool::new(false),
                conditional_ok: OnceLock::new(),
                _driver: Mutex::new(Driver {
                    stop: Some(stop),
                    thread: Some(thread),
                }),
            }),
        })
    }

    /// The repository at `target`, with settings from the environment and `~/.aws`.
    pub fn from_env(target: &S3Url) -> Result<S3Backend> {
        S3Backend::connect(target, &S3Settings::from_env()?)
    }
}

impl Backend for S3Backend {
    fn location(&self) -> String {
        self.inner.url()
    }

    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
        let inner = &self.inner;
        let path = inner.path(&key.name());
        let got = match inner.run(inner.store.get(&path)) {
            Ok(g) => g,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(inner.error("reading", &path, e)),
        };
        if got.meta.size > cap {
            return Err(Error::Damaged {
                repo: inner.url().into(),
                path: format!("s3://{}/{path}", inner.target.bucket).into(),
                why: format!("it is larger than {cap} bytes, which no such object is"),
                fix: Fix::Check,
            });
        }
        let data = inner
            .run(got.bytes())
            .map_err(|e| inner.error("reading", &path, e))?;
        Ok(Some(data.to_vec()))
    }

    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let inner = &self.inner;
        let path = inner.path(&key.name());
        let end = offset.checked_add(len).ok_or_else(|| {
            Error::BadArgument(format!("a read of {len} bytes at {offset} of {key}"))
        })?;
        let data = inner
            .run(inner.store.get_range(&path, offset..end))
            .map_err(|e| inner.error("reading a range of", &path, e))?;
        if data.len() as u64 != len {
            return Err(Error::Damaged {
                repo: inner.url().into(),
                path: format!("s3://{}/{path}", inner.target.bucket).into(),
                why: format!(
                    "a read of {len} bytes at offset {offset} returned {} (the object is shorter)",
                    data.len()
                ),
                fix: Fix::Check,
            });
        }
        Ok(data.to_vec())
    }

    fn size(&self, key: &Key) -> Result<Option<u64>> {
        let inner = &self.inner;
        let path = inner.path(&key.name());
        match inner.run(inner.store.head(&path)) {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(inner.error("looking up", &path, e)),
        }
    }

    fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
        let inner = &self.inner;
        inner.check_lease()?;
        let path = inner.path(&key.name());
        inner
            .put(&path, data.to_vec(), PutMode::Overwrite)
            .map_err(|e| inner.error("writing", &path, e))?;
        Ok(())
    }

    fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
        let inner = &self.inner;
        inner.check_lease()?;
        inner.probe_conditional()?;
        let path = inner.path(&key.name());
        match inner.put(&path, data.to_vec(), PutMode::Create) {
            Ok(_) => Ok(Created::Created),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(Created::AlreadyExists),
            Err(e) => Err(inner.error("creating", &path, e)),
        }
    }

    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
        self.inner.check_lease()?;
        Ok(Box::new(S3Upload {
            inner: self.inner.clone(),
            path: self.inner.path(&key.name()),
            buf: Vec::new(),
            multipart: None,
            len: 0,
        }))
    }

    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
        if kind == Kind::Config {
            return Ok(self
                .size(&Key::Config)?
                .map(|n| (Key::Config, n))
                .into_iter()
                .collect());
        }
        let inner = &self.inner;
        let folder = inner.path(kind.folder());
        let metas: Vec<object_store::ObjectMeta> = inner
            .run(inner.store.list(Some(&folder)).try_collect())
            .map_err(|e| inner.error("listing", &folder, e))?;
        let lead = format!("{folder}/");
        let mut out = Vec::with_capacity(metas.len());
        for meta in metas {
            let name = meta.location.as_ref();
            match name
                .strip_prefix(&lead)
                .and_then(|rest| Key::parse(kind, rest))
            {
                Some(key) => out.push((key, meta.size)),
                None => log::warn!(
                    "{}: ignoring object {name:?}, which is not a name snarf makes",
                    inner.url()
                ),
            }
        }
        Ok(out)
    }

    fn delete(&self, key: &Key) -> Result<bool> {
        let inner = &self.inner;
        inner.check_lease()?;
        if self.size(key)?.is_none() {
            return Ok(false);
        }
        let path = inner.path(&key.name());
        match inner.run(inner.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(true),
            Err(e) => Err(inner.error("deleting", &path, e)),
        }
    }

    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
        self.inner.probe_conditional()?;
        Ok(Box::new(lease::take(self.inner.clone(), holder, wait)?))
    }

    fn connection_lost(&self) -> Option<Error> {
        // A backend whose lease was lost refuses every write: a long-lived holder (the
        // mount) opens a new one.
        self.inner.check_lease().err()
    }

    fn sweep_leftovers(&self) -> Result<u64> {
        // An upload cut off leaves only parts of an unfinished multipart upload, which no
        // listing shows and no reader sees; a bucket lifecycle rule
        // (AbortIncompleteMultipartUpload) frees their space (see README).
        Ok(0)
    }
}

/// A pack on its way up: buffered until it is one part, then a multipart upload.
struct S3Upload {
    inner: Arc<Inner>,
    path: ObjPath,
    buf: Vec<u8>,
    multipart: Option<WriteMultipart>,
    len: u64,
}

impl S3Upload {
    fn start_multipart(&mut self) -> Result<()> {
        let inner = self.inner.clone();
        let upload = inner
            .run(inner.store.put_multipart(&self.path))
            .map_err(|e| inner.error("starting the upload of", &self.path, e))?;
        let mut w = WriteMultipart::new_with_chunk_size(upload, PART);
        {
            // Part uploads are spawned onto the backend's runtime.
            let _in_rt = inner.handle.enter();
            w.write(&std::mem::take(&mut self.buf));
        }
        self.multipart = Some(w);
        Ok(())
    }
}

impl Upload for S3Upload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.inner.check_lease()?;
        self.len += data.len() as u64;
        match &mut self.multipart {
            Some(w) => {
                let inner = self.inner.clone();
                {
                    let _in_rt = inner.handle.enter();
                    w.write(data);
                }
                inner
                    .run(w.wait_for_capacity(IN_FLIGHT))
                    .map_err(|e| inner.error("uploading a part of", &self.path, e))?;
            }
            None => {
                self.buf.extend_from_slice(data);
                if self.buf.len() >= PART {
                    self.start_multipart()?;
                }
            }
        }
        Ok(())
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.inner.check_lease()?;
        let inner = self.inner.clone();
        match self.multipart.take() {
            Some(w) => {
                inner
                    .run(w.finish())
                    .map_err(|e| inner.error("completing the upload of", &self.path, e))?;
            }
            None => {
                let data = std::mem::take(&mut self.buf);
                inner
                    .put(&self.path, data, PutMode::Overwrite)
                    .map_err(|e| inner.error("uploading", &self.path, e))?;
            }
        }
        Ok(())
    }
}

impl Drop for S3Upload {
    fn drop(&mut self) {
        // Dropped unfinished: abort the multipart upload so its parts are freed.
        if let Some(w) = self.multipart.take() {
            if let Err(e) = self.inner.run(w.abort()) {
                log::warn!(
                    "{}: could not abort the unfinished upload of {}: {e}",
                    self.inner.url(),
                    self.path
                );
            }
        }
    }
}

/// The If-Match condition of a replace of the object last seen with `e_tag`.
fn update_of(e_tag: Option<String>) -> PutMode {
    PutMode::Update(UpdateVersion {
        e_tag,
        version: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_hostile_ones_are_refused() {
        let u = S3Url::parse("s3://my-bucket.1/hosts/web-1/").unwrap();
        assert_eq!(u.bucket, "my-bucket.1");
        assert_eq!(u.prefix, "hosts/web-1");
        assert_eq!(u.url(), "s3://my-bucket.1/hosts/web-1");
        let u = S3Url::parse("s3://bkt").unwrap();
        assert_eq!((u.prefix.as_str(), u.url().as_str()), ("", "s3://bkt"));
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Upper",
            "s3://-bkt",
            "s3://bkt-",
            "s3://a..b",
            "s3://bkt/../x",
            "s3://bkt/a//b",
            "s3://bkt/./x",
            "s3://bkt/a b",
            "s3://bkt/a%2f",
            "s3://bkt/\u{e9}",
            "s3://bkt_underscore",
            "s3:/bkt",
        ] {
            let e = S3Url::parse(bad).unwrap_err().to_string();
            assert!(e.contains("s3://BUCKET"), "{bad}: {e}");
        }
        let long = format!("s3://bkt/{}", "a".repeat(600));
        assert!(S3Url::parse(&long).is_err());
    }
}
