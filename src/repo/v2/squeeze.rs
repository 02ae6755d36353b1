//! Parallel frame compression for the writer: a few threads compress frames handed to them
//! while the writer's thread hashes and gathers the next ones, and the finished frames come
//! back in the order they were handed in, so the writer appends them to its pack in order
//! (sealing needs the frame's offset, so it stays with the writer). At most `max_in_flight`
//! frames are handed in and not yet taken back, which bounds memory. A failed frame is
//! returned as its error; a panic of a compressing thread is resumed on the writer's thread,
//! so it is the job's panic.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::repo::error::{Error, Result};

/// What a compressing thread does with a frame's raw bytes.
pub type Work = Arc<dyn Fn(&[u8]) -> Result<Vec<u8>> + Send + Sync>;

/// A frame back from the pool: the caller's tag, its raw bytes (for reuse) and the result.
pub struct Done<T> {
    /// What the caller handed in with it.
    pub tag: T,
    /// The raw bytes handed in.
    pub raw: Vec<u8>,
    /// The compressed bytes.
    pub out: Vec<u8>,
}

enum Outcome {
    Ok(Vec<u8>),
    Failed(Error),
    Panicked(Box<dyn Any + Send>),
}

type Job<T> = (u64, T, Vec<u8>);
type Finished<T> = (u64, T, Vec<u8>, Outcome);

/// Compressing threads and the frames in flight between them and the writer.
pub struct Pool<T> {
    jobs: Option<SyncSender<Job<T>>>,
    done: Receiver<Finished<T>>,
    threads: Vec<JoinHandle<()>>,
    submitted: u64,
    handed: u64,
    ready: BTreeMap<u64, (T, Vec<u8>, Outcome)>,
    max_in_flight: usize,
}

/// Threads a pool has by default: one per core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl<T: Send + 'static> Pool<T> {
    /// Starts `threads` threads (at least one) doing `work`, with at most `max_in_flight`
    /// frames (at least `threads`) handed in and not taken back.
    pub fn new(threads: usize, max_in_flight: usize, work: Work) -> Result<Pool<T>> {
        let threads = threads.max(1);
        let max_in_flight = max_in_flight.max(threads);
        let (jobs, jobs_rx) = sync_channel::<Job<T>>(max_in_flight);
        let jobs_rx = Arc::new(Mutex::new(jobs_rx));
        let (done_tx, done) = channel::<Finished<T>>();
        let mut handles = Vec::with_capacity(threads);
        for i in 0..threads {
            let rx = Arc::clone(&jobs_rx);
            let tx = done_tx.clone();
            let work = Arc::clone(&work);
            let h = std::thread::Builder::new()
                .name(format!("snarf-compress-{i}"))
                .spawn(move || loop {
                    // The lock is held only while waiting for the next frame.
                    let next = rx.lock().recv();
                    let Ok((seq, tag, raw)) = next else { break };
                    let outcome = match catch_unwind(AssertUnwindSafe(|| work(&raw))) {
                        Ok(Ok(out)) => Outcome::Ok(out),
                        Ok(Err(e)) => Outcome::Failed(e),
                        Err(p) => Outcome::Panicked(p),
                    };
                    if tx.send((seq, tag, raw, outcome)).is_err() {
                        break;
                    }
                })
                .map_err(|e| Error::io("starting a frame compression thread", e))?;
            handles.push(h);
        }
        Ok(Pool {
            jobs: Some(jobs),
            done,
            threads: handles,
            submitted: 0,
            handed: 0,
            ready: BTreeMap::new(),
            max_in_flight,
        })
    }

    /// Frames handed in and not taken back yet.
    pub fn in_flight(&self) -> usize {
        (self.submitted - self.handed) as usize
    }

    /// Hands a frame's raw bytes in (waiting first while the pool is full) and returns the
    /// frames finished so far, in the order they were handed in.
    pub fn submit(&mut self, tag: T, raw: Vec<u8>) -> Result<Vec<Done<T>>> {
        let mut out = Vec::new();
        while self.in_flight() >= self.max_in_flight {
            out.push(self.next()?);
        }
        let jobs = self.jobs.as_ref().ok_or_else(stopped)?;
        jobs.send((self.submitted, tag, raw))
            .map_err(|_| stopped())?;
        self.submitted += 1;
        while let Ok((seq, tag, raw, o)) = self.done.try_recv() {
            self.ready.insert(seq, (tag, raw, o));
        }
        while self.ready.contains_key(&self.handed) {
            out.push(self.next()?);
        }
        Ok(out)
    }

    /// Waits for every frame in flight and returns them in order.
    pub fn drain(&mut self) -> Result<Vec<Done<T>>> {
        let mut out = Vec::with_capacity(self.in_flight());
        while self.in_flight() > 0 {
            out.push(self.next()?);
        }
        Ok(out)
    }

    /// The next frame in order, waiting for it.
    fn next(&mut self) -> Result<Done<T>> {
        loop {
            if let Some((tag, raw, o)) = self.ready.remove(&self.handed) {
                self.handed += 1;
                return match o {
                    Outcome::Ok(out) => Ok(Done { tag, raw, out }),
                    Outcome::Failed(e) => Err(e),
                    Outcome::Panicked(p) => std::panic::resume_unwind(p),
                };
            }
            let (seq, tag, raw, o) = self.done.recv().map_err(|_| stopped())?;
            self.ready.insert(seq, (tag, raw, o));
        }
    }
}

fn stopped() -> Error {
    Error::io(
        "compressing frames",
        std::io::Error::other("every frame compression thread has stopped"),
    )
}

impl<T> Drop for Pool<T> {
    fn drop(&mut self) {
        // Closing the queue ends each thread after its current frame.
        self.jobs.take();
        for h in self.threads.drain(..) {
            // A panic there was handed back as its frame's outcome already.
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn upper() -> Work {
        Arc::new(|raw: &[u8]| {
            // Later frames finish first, so order comes from the pool, not from timing.
            std::thread::sleep(std::time::Duration::from_millis(u64::from(raw[0] % 3)));
            Ok(raw.to_ascii_uppercase())
        })
    }

    #[test]
    fn frames_come_back_in_the_order_handed_in_with_their_tags() {
        let mut p = Pool::new(3, 4, upper()).unwrap();
        let mut got = Vec::new();
        for i in 0..50u8 {
            let raw = vec![b'a' + (i % 26), b'x'];
            got.extend(p.submit(i, raw).unwrap());
            assert!(p.in_flight() <= 4);
        }
        got.extend(p.drain().unwrap());
        assert_eq!(p.in_flight(), 0);
        assert_eq!(got.len(), 50);
        for (i, d) in got.iter().enumerate() {
            assert_eq!(d.tag as usize, i);
            assert_eq!(d.out, vec![b'A' + (i as u8 % 26), b'X']);
            assert_eq!(d.raw, vec![b'a' + (i as u8 % 26), b'x']);
        }
    }

    #[test]
    fn no_more_than_max_in_flight_frames_are_ever_held() {
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (h, pk) = (Arc::clone(&held), Arc::clone(&peak));
        let work: Work = Arc::new(move |raw: &[u8]| {
            let now = h.fetch_add(1, Ordering::SeqCst) + 1;
            pk.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(2));
            h.fetch_sub(1, Ordering::SeqCst);
            Ok(raw.to_vec())
        });
        let mut p = Pool::new(2, 3, work).unwrap();
        let mut n = 0;
        for i in 0..40u32 {
            n += p.submit(i, vec![1]).unwrap().len();
            assert!(p.in_flight() <= 3, "{} in flight", p.in_flight());
        }
        n += p.drain().unwrap().len();
        assert_eq!(n, 40);
        assert!(
            peak.load(Ordering::SeqCst) <= 2,
            "more working than threads"
        );
    }

    #[test]
    fn an_error_of_a_compressing_thread_reaches_the_caller_in_its_place() {
        let work: Work = Arc::new(|raw: &[u8]| {
            if raw == b"bad" {
                Err(Error::BadArgument("frame refused".into()))
            } else {
                Ok(raw.to_vec())
            }
        });
        let mut p = Pool::new(2, 2, work).unwrap();
        let mut ok = 0;
        let mut failed = None;
        for (i, raw) in [&b"a"[..], b"b", b"bad", b"c", b"d"].iter().enumerate() {
            match p.submit(i, raw.to_vec()) {
                Ok(d) => ok += d.len(),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        let e = match failed {
            Some(e) => e,
            None => p.drain().map(|_| ()).unwrap_err(),
        };
        assert!(e.to_string().contains("frame refused"), "{e}");
        assert!(ok <= 2, "only frames before the bad one are handed back");
    }

    #[test]
    fn a_panic_of_a_compressing_thread_is_the_callers() {
        let work: Work = Arc::new(|raw: &[u8]| {
            assert!(raw != b"boom", "compressor exploded");
            Ok(raw.to_vec())
        });
        let r = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let mut p = Pool::new(2, 2, work).unwrap();
            p.submit(0u8, b"boom".to_vec()).unwrap();
            p.drain().unwrap();
        }));
        let p = r.expect_err("the panic must reach the caller");
        let msg = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        assert!(msg.contains("compressor exploded"), "{msg}");
    }
}
