//! The access log's writer: lines queued by requests, written in batches by
//! one OS thread of its own.
//!
//! A request appends its formatted line to a shared buffer under a mutex
//! held for a `memcpy` (the writer never holds it while writing), and
//! returns. The writer thread sleeps until a line arrives, gathers lines for
//! up to [`FLUSH_INTERVAL`] or until [`BATCH`] bytes are waiting, swaps the
//! buffer for an empty one and writes the batch with one `write(2)`.
//!
//! A request never waits for the disk or the reader of a pipe: when the
//! writer is behind (a stalled pipe, a slow disk) and [`MAX_PENDING`] bytes
//! are already waiting, a line is dropped and counted
//! ([`dropped`], `portico_access_log_dropped_total`), and the writer says so
//! in the log at most once per [`WARN_INTERVAL`].
//!
//! An OS thread, not a task: a `write(2)` to a slow disk blocks, and the
//! runtime's workers are the request path.

use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError, mpsc};
use std::thread::{self, Thread};
use std::time::{Duration, Instant};

use super::format::Format;

/// A batch is written once this many bytes are waiting.
pub const BATCH: usize = 64 * 1024;
/// Lines wait at most this long to be written when few arrive.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);
/// Bytes waiting beyond which lines are dropped, not queued: what a writer
/// may fall behind by (about 4,000 typical lines).
pub const MAX_PENDING: usize = 1024 * 1024;
/// At most one warning about dropped lines per this interval.
pub const WARN_INTERVAL: Duration = Duration::from_secs(10);

/// Lines dropped since the process started (queue full, or a failed write).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// The installed log, if any; `'static` so requests reach it without an
/// `Arc` and the writer thread borrows it for its whole life.
static SINK: OnceLock<Sink> = OnceLock::new();

/// Access-log lines dropped rather than making a request wait: the
/// `portico_access_log_dropped_total` counter.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

/// Where batches go: stderr by default, or an appended file.
pub type Destination = Box<dyn Write + Send>;

/// The shared side of the log: the waiting lines and how to wake the writer.
#[derive(Debug)]
pub struct Sink {
    /// How lines are formatted.
    pub(super) format: Format,
    pending: Mutex<Pending>,
    /// The writer thread, woken when the first line of a batch or a full
    /// batch arrives (not per line: an unpark of a running thread is cheap,
    /// but not free).
    writer: OnceLock<Thread>,
    closing: AtomicBool,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    lines: u64,
}

/// The installed log's sink, if one was installed.
pub(super) fn sink() -> Option<&'static Sink> {
    SINK.get()
}

/// Installs the process's access log and starts its writer thread; from
/// then on [`super::emit`] queues lines for it instead of sending them to
/// `tracing`. `None` if a log was installed already.
pub fn install(format: Format, out: Destination) -> Option<AccessLog> {
    let mut fresh = false;
    let sink = SINK.get_or_init(|| {
        fresh = true;
        Sink {
            format,
            pending: Mutex::new(Pending {
                bytes: Vec::with_capacity(BATCH),
                lines: 0,
            }),
            writer: OnceLock::new(),
            closing: AtomicBool::new(false),
        }
    });
    if !fresh {
        return None;
    }
    let (done_tx, done) = mpsc::channel();
    thread::Builder::new()
        .name("access-log".into())
        .spawn(move || {
            // Set before the writer first looks for lines, under the lock
            // a request takes: a line is either seen or wakes the writer.
            let _ = sink.writer.set(thread::current());
            write_batches(sink, out);
            let _ = done_tx.send(());
        })
        .expect("spawning the access-log writer thread");
    Some(AccessLog { sink, done })
}

/// The installed log, to flush it at shutdown.
#[derive(Debug)]
pub struct AccessLog {
    sink: &'static Sink,
    done: mpsc::Receiver<()>,
}

impl AccessLog {
    /// Writes what is waiting and stops the writer; waits at most `limit`
    /// (a writer stuck on a pipe nobody reads must not hold the process).
    /// Returns whether everything was written.
    pub fn close(self, limit: Duration) -> bool {
        self.sink.closing.store(true, Ordering::Release);
        self.sink.wake();
        self.done.recv_timeout(limit).is_ok()
    }
}

impl Sink {
    /// Queues one formatted line, or drops and counts it when the writer is
    /// [`MAX_PENDING`] bytes behind. Never waits for the writer's I/O.
    pub(super) fn push(&self, line: &[u8]) {
        let mut pending = self.lock();
        let before = pending.bytes.len();
        if before + line.len() > MAX_PENDING {
            drop(pending);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        pending.bytes.extend_from_slice(line);
        pending.lines += 1;
        let after = pending.bytes.len();
        drop(pending);
        if before == 0 || (before < BATCH && after >= BATCH) {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(writer) = self.writer.get() {
            writer.unpark();
        }
    }

    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while holding the lock leaves whole lines behind: usable.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn waiting(&self) -> usize {
        self.lock().bytes.len()
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Sleeps until a batch is due: the first line plus [`FLUSH_INTERVAL`],
    /// [`BATCH`] bytes, or closing. Returns whether the log is closing.
    fn wait_for_batch(&self) -> bool {
        while self.waiting() == 0 && !self.closing() {
            thread::park();
        }
        let deadline = Instant::now() + FLUSH_INTERVAL;
        while !self.closing() && self.waiting() < BATCH {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            thread::park_timeout(deadline - now);
        }
        self.closing()
    }

    /// Swaps the waiting lines into `batch` (empty), leaving it an empty
    /// buffer; returns how many lines `batch` holds.
    fn take(&self, batch: &mut Vec<u8>) -> u64 {
        let mut pending = self.lock();
        std::mem::swap(&mut pending.bytes, batch);
        std::mem::take(&mut pending.lines)
    }
}

/// The writer thread's loop, until the log closes and nothing is waiting.
fn write_batches(sink: &Sink, mut out: Destination) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut warning = DropWarning::default();
    loop {
        let closing = sink.wait_for_batch();
        let lines = sink.take(&mut batch);
        if !batch.is_empty() && out.write_all(&batch).and_then(|()| out.flush()).is_err() {
            DROPPED.fetch_add(lines, Ordering::Relaxed);
        }
        batch.clear();
        // A burst grew the buffer: give the memory back.
        batch.shrink_to(2 * BATCH);
        warning.check();
        if closing && sink.waiting() == 0 {
            return;
        }
    }
}

/// One warning per [`WARN_INTERVAL`] at most while lines are being dropped.
#[derive(Debug, Default)]
struct DropWarning {
    reported: u64,
    last: Option<Instant>,
}

impl DropWarning {
    fn check(&mut self) {
        let total = dropped();
        if total == self.reported || self.last.is_some_and(|t| t.elapsed() < WARN_INTERVAL) {
            return;
        }
        tracing::warn!(
            dropped = total - self.reported,
            total,
            "access-log lines dropped: the log's disk or pipe reader is behind \
             (portico_access_log_dropped_total)"
        );
        self.reported = total;
        self.last = Some(Instant::now());
    }
}
