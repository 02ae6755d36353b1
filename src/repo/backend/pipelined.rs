//! [`Pipelined`]: a decorator that streams uploads from a thread of its own. A backup's
//! writer hands each sealed frame over and goes back to compressing; the thread writes it
//! into the inner backend's upload (for ssh: into the pipe) and, at a pack's end, only
//! requests the finish ([`Upload::finish_later`]), so it streams the next pack while the far
//! side fsyncs the last. What waits is bounded: at most the queue's bytes (16 MiB by
//! default) of data for the thread (a write blocks beyond that), and the caller decides how
//! many finishes it leaves pending (the backup writer: two packs).
//!
//! Errors reach the caller unchanged: the upload's next write, its finish, or the wait of
//! its finishing returns the inner backend's error (a dead ssh pipe says so, as it does
//! without the thread). Every other operation goes straight to the inner backend.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::{
    check_deferred_len, Backend, Created, Deferred, Finishing, Key, Kind, LockGuard, Upload,
};
use crate::repo::error::{Error, Result};

/// Bytes of upload data that may wait for the thread before a write blocks.
pub const QUEUE_BYTES: usize = 16 << 20;

/// What the thread is asked to do, in order.
enum Item {
    Start(Arc<Slot>),
    Data(u64, Payload),
    Finish(u64),
    Abort(u64),
}

/// An upload's bytes: given, or made by the thread ([`Upload::write_later`]).
enum Payload {
    Ready(Vec<u8>),
    Later(usize, Deferred),
}

impl Payload {
    /// Bytes it stands for (what the queue's cap counts).
    fn len(&self) -> usize {
        match self {
            Payload::Ready(d) => d.len(),
            Payload::Later(n, _) => *n,
        }
    }

    /// The bytes, made now if they were deferred.
    fn into_bytes(self) -> Result<Vec<u8>> {
        match self {
            Payload::Ready(d) => Ok(d),
            Payload::Later(n, make) => {
                let d = make()?;
                check_deferred_len(n, &d)?;
                Ok(d)
            }
        }
    }
}

/// The items waiting for the thread.
struct Queue {
    st: Mutex<QueueState>,
    changed: Condvar,
    cap: usize,
}

struct QueueState {
    items: VecDeque<Item>,
    /// Bytes of the `Data` items waiting.
    bytes: usize,
    /// The owner is gone: the thread ends once the items are done.
    closed: bool,
    /// The thread is gone (it panicked): nothing is taken any more.
    dead: bool,
}

impl Queue {
    /// Adds an item, waiting while the data waiting would pass the cap (an item larger than
    /// the cap goes alone).
    fn push(&self, item: Item) -> Result<()> {
        let n = match &item {
            Item::Data(_, d) => d.len(),
            _ => 0,
        };
        let mut st = self.st.lock();
        while n > 0 && !st.dead && st.bytes > 0 && st.bytes + n > self.cap {
            self.changed.wait(&mut st);
        }
        if st.dead {
            return Err(Error::io(
                "handing an upload to its thread",
                std::io::Error::other("the upload thread ended (a bug: see the log)"),
            ));
        }
        st.bytes += n;
        st.items.push_back(item);
        self.changed.notify_all();
        Ok(())
    }

    /// The next item; `None` once closed and empty.
    fn pop(&self) -> Option<Item> {
        let mut st = self.st.lock();
        loop {
            if let Some(item) = st.items.pop_front() {
                if let Item::Data(_, d) = &item {
                    st.bytes -= d.len();
                }
                self.changed.notify_all();
                return Some(item);
            }
            if st.closed {
                return None;
            }
            self.changed.wait(&mut st);
        }
    }
}

/// Marks the queue dead when the thread ends, however it ends, so no writer waits for it.
struct DeadOnExit(Arc<Queue>);

impl Drop for DeadOnExit {
    fn drop(&mut self) {
        let mut st = self.0.st.lock();
        st.dead = true;
        self.0.changed.notify_all();
    }
}

/// Where one upload stands, as the thread tells its owner.
enum Outcome {
    /// Being written.
    Open,
    /// Failed with this error (not yet returned).
    Failed(Error),
    /// Failed, and the error was returned already.
    Reported,
    /// Its finish was requested; this waits for it.
    Finishing(Box<dyn Finishing>),
    /// The finishing was taken by its waiter.
    Taken,
}

/// One upload's shared state.
struct Slot {
    id: u64,
    key: Key,
    st: Mutex<Outcome>,
    changed: Condvar,
}

impl Slot {
    fn set(&self, o: Outcome) {
        *self.st.lock() = o;
        self.changed.notify_all();
    }

    /// The error, if the upload failed: the inner backend's the first time.
    fn failure(&self) -> Option<Error> {
        let mut st = self.st.lock();
        match std::mem::replace(&mut *st, Outcome::Reported) {
            Outcome::Failed(e) => Some(e),
            Outcome::Reported => Some(self.failed_before()),
            other => {
                *st = other;
                None
            }
        }
    }

    fn failed_before(&self) -> Error {
        Error::io(
            format!("uploading {}", self.key),
            std::io::Error::other("the upload failed earlier (the first error says why)"),
        )
    }
}

/// A backend whose uploads stream from a thread of their own (see the module docs).
pub struct Pipelined {
    inner: Arc<dyn Backend>,
    queue: Arc<Queue>,
    next: AtomicU64,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Pipelined {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pipelined({:?})", self.inner)
    }
}

impl Pipelined {
    /// Starts the upload thread for `inner`, with the default queue.
    pub fn new(inner: Arc<dyn Backend>) -> Result<Pipelined> {
        Pipelined::with_queue(inner, QUEUE_BYTES)
    }

    /// Starts the upload thread for `inner`, letting at most `cap` bytes wait for it.
    pub fn with_queue(inner: Arc<dyn Backend>, cap: usize) -> Result<Pipelined> {
        let queue = Arc::new(Queue {
            st: Mutex::new(QueueState {
                items: VecDeque::new(),
                bytes: 0,
                closed: false,
                dead: false,
            }),
            changed: Condvar::new(),
            cap: cap.max(1),
        });
        let thread = {
            let inner = inner.clone();
            let queue = queue.clone();
            std::thread::Builder::new()
                .name("snarf-upload".into())
                .spawn(move || run(inner.as_ref(), queue))
                .map_err(|e| Error::io("starting the upload thread", e))?
        };
        Ok(Pipelined {
            inner,
            queue,
            next: AtomicU64::new(1),
            thread: Some(thread),
        })
    }
}

/// The thread: does the items in order until the owner is gone.
fn run(inner: &dyn Backend, queue: Arc<Queue>) {
    let _dead = DeadOnExit(queue.clone());
    let mut open: HashMap<u64, (Arc<Slot>, Box<dyn Upload>)> = HashMap::new();
    while let Some(item) = queue.pop() {
        match item {
            Item::Start(slot) => match inner.upload(&slot.key) {
                Ok(u) => {
                    open.insert(slot.id, (slot, u));
                }
                Err(e) => slot.set(Outcome::Failed(e)),
            },
            Item::Data(id, data) => {
                // Data of an upload that failed already is dropped.
                if let Some((_, u)) = open.get_mut(&id) {
                    if let Err(e) = data.into_bytes().and_then(|d| u.write_owned(d)) {
                        if let Some((slot, u)) = open.remove(&id) {
                            // Dropped unfinished: nothing of it becomes visible.
                            drop(u);
                            slot.set(Outcome::Failed(e));
                        }
                    }
                }
            }
            Item::Finish(id) => {
                if let Some((slot, u)) = open.remove(&id) {
                    slot.set(match u.finish_later() {
                        Ok(f) => Outcome::Finishing(f),
                        Err(e) => Outcome::Failed(e),
                    });
                }
            }
            Item::Abort(id) => {
                open.remove(&id);
            }
        }
    }
}

impl Drop for Pipelined {
    fn drop(&mut self) {
        {
            let mut st = self.queue.st.lock();
            st.closed = true;
            self.queue.changed.notify_all();
        }
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                log::error!("{}: the upload thread panicked", self.inner.location());
            }
        }
    }
}

/// An upload handed to the thread.
struct PipelinedUpload {
    queue: Arc<Queue>,
    slot: Arc<Slot>,
    len: u64,
    /// FINISH or ABORT was queued.
    done: bool,
}

impl PipelinedUpload {
    /// Queues bytes for the thread, unless the upload is finished or failed.
    fn push_data(&mut self, data: Payload) -> Result<()> {
        if self.done {
            return Err(Error::BadArgument(format!(
                "the upload of {} is finished",
                self.slot.key
            )));
        }
        if let Some(e) = self.slot.failure() {
            return Err(e);
        }
        self.len += data.len() as u64;
        self.queue.push(Item::Data(self.slot.id, data))
    }
}

impl Upload for PipelinedUpload {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.write_owned(data.to_vec())
    }

    fn write_owned(&mut self, data: Vec<u8>) -> Result<()> {
        self.push_data(Payload::Ready(data))
    }

    fn write_later(&mut self, len: usize, make: Deferred) -> Result<()> {
        self.push_data(Payload::Later(len, make))
    }

    fn len(&self) -> u64 {
        self.len
    }

    fn finish(self: Box<Self>) -> Result<()> {
        self.finish_later()?.wait()
    }

    fn finish_later(mut self: Box<Self>) -> Result<Box<dyn Finishing>> {
        if let Some(e) = self.slot.failure() {
            return Err(e);
        }
        self.done = true;
        self.queue.push(Item::Finish(self.slot.id))?;
        Ok(Box::new(PipelinedFinishing {
            queue: self.queue.clone(),
            slot: self.slot.clone(),
        }))
    }
}

impl Drop for PipelinedUpload {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.queue.push(Item::Abort(self.slot.id));
        }
    }
}

/// The finish of an upload handed to the thread.
struct PipelinedFinishing {
    queue: Arc<Queue>,
    slot: Arc<Slot>,
}

impl Finishing for PipelinedFinishing {
    fn ready(&mut self) -> bool {
        match &mut *self.slot.st.lock() {
            Outcome::Open => false,
            Outcome::Finishing(f) => f.ready(),
            _ => true,
        }
    }

    fn wait(self: Box<Self>) -> Result<()> {
        let mut st = self.slot.st.lock();
        while matches!(*st, Outcome::Open) {
            // The thread reaches every queued FINISH (it ends only once the queue is
            // empty), or dies, which the timeout notices.
            if self
                .slot
                .changed
                .wait_for(&mut st, Duration::from_secs(1))
                .timed_out()
                && self.queue.st.lock().dead
            {
                return Err(self.slot.failed_before());
            }
        }
        match std::mem::replace(&mut *st, Outcome::Taken) {
            Outcome::Failed(e) => Err(e),
            Outcome::Finishing(f) => {
                drop(st);
                f.wait()
            }
            _ => Err(self.slot.failed_before()),
        }
    }
}

impl Backend for Pipelined {
    fn location(&self) -> String {
        self.inner.location()
    }
    fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
        self.inner.read(key, cap)
    }
    fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
        self.inner.read_range(key, offset, len)
    }
    fn size(&self, key: &Key) -> Result<Option<u64>> {
        self.inner.size(key)
    }
    fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
        self.inner.write(key, data)
    }
    fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
        self.inner.create(key, data)
    }
    fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
        let slot = Arc::new(Slot {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            key: key.clone(),
            st: Mutex::new(Outcome::Open),
            changed: Condvar::new(),
        });
        self.queue.push(Item::Start(slot.clone()))?;
        Ok(Box::new(PipelinedUpload {
            queue: self.queue.clone(),
            slot,
            len: 0,
            done: false,
        }))
    }
    fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
        self.inner.list(kind)
    }
    fn delete(&self, key: &Key) -> Result<bool> {
        self.inner.delete(key)
    }
    fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
        self.inner.lock(holder, wait)
    }
    fn sweep_leftovers(&self) -> Result<u64> {
        self.inner.sweep_leftovers()
    }
    fn local_root(&self) -> Option<&std::path::Path> {
        self.inner.local_root()
    }
    fn connection_lost(&self) -> Option<Error> {
        self.inner.connection_lost()
    }
}

/// A folder for tests whose uploads finish only when a gate is open, whose writes can be
/// held at another gate, and which can fail an upload past a number of bytes.
#[cfg(test)]
pub(crate) mod gated {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use parking_lot::{Condvar, Mutex};

    use crate::repo::backend::{
        Backend, Created, Finishing, Key, Kind, LocalDir, LockGuard, Upload,
    };
    use crate::repo::error::{Error, Result};

    /// Open or shut; passing a shut gate waits until it opens.
    #[derive(Debug, Default)]
    pub struct Gate {
        open: Mutex<bool>,
        changed: Condvar,
    }

    impl Gate {
        pub fn new(open: bool) -> Arc<Gate> {
            Arc::new(Gate {
                open: Mutex::new(open),
                changed: Condvar::new(),
            })
        }
        pub fn set(&self, open: bool) {
            *self.open.lock() = open;
            self.changed.notify_all();
        }
        fn is_open(&self) -> bool {
            *self.open.lock()
        }
        fn pass(&self) {
            let mut o = self.open.lock();
            while !*o {
                self.changed.wait(&mut o);
            }
        }
    }

    /// The folder and its gates (see the module docs).
    #[derive(Debug)]
    pub struct Gated {
        pub inner: LocalDir,
        pub finish: Arc<Gate>,
        pub writes: Arc<Gate>,
        /// Uploads fail once the bytes written into all of them would pass this.
        pub fail_after: Arc<AtomicU64>,
        /// Finishes requested.
        pub requested: Arc<AtomicU64>,
        /// Objects finished, in order.
        pub finished: Arc<Mutex<Vec<Key>>>,
        /// Bytes written into uploads.
        pub written: Arc<AtomicU64>,
    }

    impl Gated {
        pub fn new(dir: &std::path::Path) -> Gated {
            let inner = LocalDir::new(dir);
            inner.create_layout().unwrap();
            Gated {
                inner,
                finish: Gate::new(true),
                writes: Gate::new(true),
                fail_after: Arc::new(AtomicU64::new(u64::MAX)),
                requested: Default::default(),
                finished: Default::default(),
                written: Default::default(),
            }
        }

        /// Waits up to 10 s for `f` to hold.
        pub fn eventually(what: &str, mut f: impl FnMut() -> bool) {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(std::time::Instant::now() < until, "never: {what}");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
    }

    struct GatedUpload {
        key: Key,
        inner: Box<dyn Upload>,
        finish: Arc<Gate>,
        writes: Arc<Gate>,
        fail_after: Arc<AtomicU64>,
        requested: Arc<AtomicU64>,
        finished: Arc<Mutex<Vec<Key>>>,
        written: Arc<AtomicU64>,
    }

    impl Upload for GatedUpload {
        fn write(&mut self, data: &[u8]) -> Result<()> {
            self.writes.pass();
            let total = self.written.load(Ordering::SeqCst) + data.len() as u64;
            if total > self.fail_after.load(Ordering::SeqCst) {
                return Err(Error::io(
                    format!("writing {}", self.key),
                    std::io::Error::other("the far disk is on fire"),
                ));
            }
            self.written.fetch_add(data.len() as u64, Ordering::SeqCst);
            self.inner.write(data)
        }
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn finish(self: Box<Self>) -> Result<()> {
            self.finish_later()?.wait()
        }
        fn finish_later(self: Box<Self>) -> Result<Box<dyn Finishing>> {
            self.requested.fetch_add(1, Ordering::SeqCst);
            Ok(Box::new(GatedFinishing(*self)))
        }
    }

    struct GatedFinishing(GatedUpload);

    impl Finishing for GatedFinishing {
        fn ready(&mut self) -> bool {
            self.0.finish.is_open()
        }
        fn wait(self: Box<Self>) -> Result<()> {
            let u = self.0;
            u.finish.pass();
            u.inner.finish()?;
            u.finished.lock().push(u.key);
            Ok(())
        }
    }

    impl Backend for Gated {
        fn location(&self) -> String {
            self.inner.location()
        }
        fn read(&self, key: &Key, cap: u64) -> Result<Option<Vec<u8>>> {
            self.inner.read(key, cap)
        }
        fn read_range(&self, key: &Key, offset: u64, len: u64) -> Result<Vec<u8>> {
            self.inner.read_range(key, offset, len)
        }
        fn size(&self, key: &Key) -> Result<Option<u64>> {
            self.inner.size(key)
        }
        fn write(&self, key: &Key, data: &[u8]) -> Result<()> {
            self.inner.write(key, data)
        }
        fn create(&self, key: &Key, data: &[u8]) -> Result<Created> {
            self.inner.create(key, data)
        }
        fn upload(&self, key: &Key) -> Result<Box<dyn Upload>> {
            Ok(Box::new(GatedUpload {
                key: key.clone(),
                inner: self.inner.upload(key)?,
                finish: self.finish.clone(),
                writes: self.writes.clone(),
                fail_after: self.fail_after.clone(),
                requested: self.requested.clone(),
                finished: self.finished.clone(),
                written: self.written.clone(),
            }))
        }
        fn list(&self, kind: Kind) -> Result<Vec<(Key, u64)>> {
            self.inner.list(kind)
        }
        fn delete(&self, key: &Key) -> Result<bool> {
            self.inner.delete(key)
        }
        fn lock(&self, holder: &str, wait: Option<Duration>) -> Result<Box<dyn LockGuard>> {
            self.inner.lock(holder, wait)
        }
        fn sweep_leftovers(&self) -> Result<u64> {
            self.inner.sweep_leftovers()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::gated::Gated;
    use super::*;
    use crate::chain::ErrorChain;
    use crate::repo::ids::PackId;

    fn pack() -> Key {
        Key::Pack(PackId::generate())
    }

    /// The error of an upload that must fail: from its finish request or its finishing.
    fn finish_error(u: Box<dyn Upload>) -> Error {
        match u.finish_later() {
            Ok(f) => f.wait().unwrap_err(),
            Err(e) => e,
        }
    }

    #[test]
    fn uploads_stream_on_and_finish_in_order_only_once_the_backend_has_them_durable() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        g.finish.set(false);
        let p = Pipelined::new(g.clone()).unwrap();
        let (a, b) = (pack(), pack());
        let mut ua = p.upload(&a).unwrap();
        ua.write(b"first ").unwrap();
        ua.write_owned(b"pack".to_vec()).unwrap();
        let mut fa = ua.finish_later().unwrap();
        // The next pack streams while the first is still finishing.
        let mut ub = p.upload(&b).unwrap();
        ub.write(&[7u8; 100_000]).unwrap();
        let mut fb = ub.finish_later().unwrap();
        Gated::eventually("both finishes requested", || {
            g.requested.load(Ordering::SeqCst) == 2
        });
        assert_eq!(g.written.load(Ordering::SeqCst), 100_010);
        assert!(
            !fa.ready() && !fb.ready(),
            "ready before the backend finished"
        );
        assert_eq!(p.size(&a).unwrap(), None, "visible before its finish");
        g.finish.set(true);
        assert!(fa.ready() && fb.ready());
        fa.wait().unwrap();
        fb.wait().unwrap();
        assert_eq!(*g.finished.lock(), vec![a.clone(), b.clone()]);
        assert_eq!(p.read(&a, 100).unwrap().unwrap(), b"first pack");
        assert_eq!(p.read(&b, 1 << 20).unwrap().unwrap(), vec![7u8; 100_000]);
        // finish() is finish_later() and its wait.
        let c = pack();
        let mut uc = p.upload(&c).unwrap();
        uc.write(b"c").unwrap();
        uc.finish().unwrap();
        assert_eq!(p.read(&c, 10).unwrap().unwrap(), b"c");
    }

    #[test]
    fn an_upload_failing_midway_returns_the_backends_error_and_leaves_nothing_visible() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        g.fail_after.store(1000, Ordering::SeqCst);
        let p = Pipelined::new(g.clone()).unwrap();
        let k = pack();
        let mut u = p.upload(&k).unwrap();
        u.write(&[1; 600]).unwrap();
        // The failing write is the thread's; the caller hears of it at its next call.
        let mut err = None;
        for _ in 0..1000 {
            if let Err(e) = u.write(&[2; 600]) {
                err = Some(e);
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let e = err.expect("the failure never reached the writer");
        assert!(
            e.chain().to_string().contains("the far disk is on fire"),
            "{}",
            e.chain()
        );
        assert!(u.finish_later().is_err(), "a failed upload finished");
        assert_eq!(p.size(&k).unwrap(), None);
        // The failure stays with its upload: the next one works.
        g.fail_after.store(u64::MAX, Ordering::SeqCst);
        let k2 = pack();
        let mut u2 = p.upload(&k2).unwrap();
        u2.write(b"ok").unwrap();
        u2.finish().unwrap();
        assert_eq!(p.read(&k2, 10).unwrap().unwrap(), b"ok");
        drop(p);
        assert_eq!(
            g.inner.sweep_leftovers().unwrap(),
            0,
            "a part file was left"
        );
    }

    #[test]
    fn a_failure_after_the_last_write_comes_back_from_the_finishing() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        g.fail_after.store(10, Ordering::SeqCst);
        let p = Pipelined::new(g.clone()).unwrap();
        let k = pack();
        let mut u = p.upload(&k).unwrap();
        u.write(&[1; 11]).unwrap();
        let e = finish_error(u);
        assert!(
            e.chain().to_string().contains("the far disk is on fire"),
            "{}",
            e.chain()
        );
        assert_eq!(p.size(&k).unwrap(), None);
    }

    #[test]
    fn data_waiting_for_the_thread_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        g.writes.set(false);
        let p = Arc::new(Pipelined::with_queue(g.clone(), 4096).unwrap());
        let handed = Arc::new(AtomicUsize::new(0));
        let k = pack();
        let writer = {
            let (p, handed, k) = (p.clone(), handed.clone(), k.clone());
            std::thread::spawn(move || {
                let mut u = p.upload(&k).unwrap();
                for i in 0..100u8 {
                    u.write(&[i; 1024]).unwrap();
                    handed.fetch_add(1, Ordering::SeqCst);
                }
                u.finish().unwrap();
            })
        };
        Gated::eventually("the queue fills", || handed.load(Ordering::SeqCst) >= 4);
        std::thread::sleep(Duration::from_millis(200));
        // One piece in the held write, four in the queue, the writer blocked on the sixth.
        let n = handed.load(Ordering::SeqCst);
        assert!(n <= 5, "{n} KiB handed over while the backend took none");
        g.writes.set(true);
        writer.join().unwrap();
        let want: Vec<u8> = (0..100u8).flat_map(|i| [i; 1024]).collect();
        assert_eq!(p.read(&k, 1 << 20).unwrap().unwrap(), want);
    }

    #[test]
    fn a_dropped_unfinished_upload_leaves_nothing_and_dropping_the_backend_waits_for_its_thread() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        let p = Pipelined::new(g.clone()).unwrap();
        let k = pack();
        let mut u = p.upload(&k).unwrap();
        u.write(&[3; 5000]).unwrap();
        drop(u);
        let k2 = pack();
        let mut u2 = p.upload(&k2).unwrap();
        u2.write(&[4; 5000]).unwrap();
        let f = u2.finish_later().unwrap();
        drop(p);
        f.wait().unwrap();
        assert_eq!(g.inner.size(&k).unwrap(), None);
        assert_eq!(g.inner.size(&k2).unwrap(), Some(5000));
        assert_eq!(g.inner.sweep_leftovers().unwrap(), 0);
    }

    #[test]
    fn deferred_bytes_are_made_on_the_thread_in_order_and_a_wrong_length_fails_the_upload() {
        let dir = tempfile::tempdir().unwrap();
        let g = Arc::new(Gated::new(dir.path()));
        let p = Pipelined::new(g.clone()).unwrap();
        let caller = std::thread::current().id();
        let k = pack();
        let mut u = p.upload(&k).unwrap();
        u.write(b"head ").unwrap();
        u.write_later(
            6,
            Box::new(move || {
                assert_ne!(
                    std::thread::current().id(),
                    caller,
                    "made on the caller's thread"
                );
                Ok(b"sealed".to_vec())
            }),
        )
        .unwrap();
        assert_eq!(u.len(), 11, "deferred bytes count at once");
        u.write(b" tail").unwrap();
        u.finish().unwrap();
        assert_eq!(p.read(&k, 100).unwrap().unwrap(), b"head sealed tail");

        let bad = pack();
        let mut u = p.upload(&bad).unwrap();
        u.write_later(4, Box::new(|| Ok(b"five!".to_vec())))
            .unwrap();
        let e = finish_error(u);
        assert!(
            e.chain().to_string().contains("not the 4 announced"),
            "{}",
            e.chain()
        );
        assert_eq!(
            p.size(&bad).unwrap(),
            None,
            "a pack with wrong offsets became visible"
        );
    }
}
