//! A JSON-lines writer that keeps file and pipe I/O off the request path: lines go through a
//! bounded queue to a dedicated thread. When the queue is full, or the destination refuses
//! writes (a full disk), the line is refused and counted, so a slow or full disk or a stalled
//! stdout reader can never stall a request, and the audit log's `reject` policy can refuse
//! requests that would go unaudited.

use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

/// Default number of lines waiting to be written before new ones are refused.
pub const QUEUE_LINES: usize = 16 * 1024;

/// Pause between two drains of the queue: lines reach the file at most this late.
const BATCH_PAUSE: Duration = Duration::from_millis(5);
/// Longest idle wait for a line: a reopen request is noticed within it.
const IDLE_WAIT: Duration = Duration::from_millis(500);

/// Where a sink writes: `stdout`, `stderr`, `off`, or a file path (appended, and reopened after
/// `request_reopen`, for log rotation).
#[derive(Clone)]
pub struct LineSink {
    tx: Option<SyncSender<Vec<u8>>>,
    /// Flush requests the writer has carried out (see `flush`).
    flushed: Arc<AtomicU64>,
    lost: Arc<Lost>,
    reopen: Arc<AtomicBool>,
}

/// Called once per dropped line (to feed a metric).
pub type DropHook = Arc<dyn Fn() + Send + Sync>;

/// Lines lost, to a full queue or to a destination that refuses writes, shared by the request
/// side and the writer thread.
#[derive(Default)]
struct Lost {
    count: AtomicU64,
    hook: std::sync::OnceLock<DropHook>,
    /// The last write or flush failed (a full disk, `/dev/full`, a closed pipe) and no later
    /// one succeeded: new lines are refused, as with a full queue, until the writer's retry
    /// of what it holds goes through.
    failing: AtomicBool,
}

impl Lost {
    fn one(&self, why: &str) {
        let n = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some(hook) = self.hook.get() {
            hook();
        }
        // Say so, without flooding the log that is itself backed up.
        if n == 1 || n.is_multiple_of(10_000) {
            tracing::error!(dropped = n, "{why}: lines dropped");
        }
    }

    /// Notes the outcome of a write or flush.
    fn write_result(&self, r: io::Result<()>) {
        match r {
            Ok(()) => {
                if self.failing.swap(false, Ordering::AcqRel) {
                    tracing::warn!("log destination writable again");
                }
            }
            Err(e) => {
                if !self.failing.swap(true, Ordering::AcqRel) {
                    tracing::error!(error = %e, "cannot write to a log destination; its lines are dropped until it takes writes again");
                }
            }
        }
    }
}

/// Why a line was not queued.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

enum Dest {
    Stdout,
    Stderr,
    File(PathBuf),
}

impl Dest {
    fn open(&self) -> io::Result<Box<dyn Write + Send>> {
        Ok(match self {
            Dest::Stdout => Box::new(io::stdout()),
            Dest::Stderr => Box::new(io::stderr()),
            Dest::File(p) => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)?,
            ),
        })
    }
}

impl LineSink {
    /// Opens the destination and starts its writer thread.
    pub fn open(dest: &str, thread_name: &str) -> io::Result<LineSink> {
        Self::open_with_queue(dest, thread_name, QUEUE_LINES)
    }

    /// Like `open`, with a queue of `queue_lines`.
    pub fn open_with_queue(
        dest: &str,
        thread_name: &str,
        queue_lines: usize,
    ) -> io::Result<LineSink> {
        let reopen = Arc::new(AtomicBool::new(false));
        let lost = Arc::new(Lost::default());
        let dest = match dest {
            "off" => {
                return Ok(LineSink {
                    tx: None,
                    flushed: Arc::default(),
                    lost,
                    reopen,
                })
            }
            "stdout" => Dest::Stdout,
            "stderr" => Dest::Stderr,
            path => Dest::File(PathBuf::from(path)),
        };
        let first = dest.open()?;
        let (tx, rx) = sync_channel::<Vec<u8>>(queue_lines.max(1));
        let flag = reopen.clone();
        let flushed = Arc::new(AtomicU64::new(0));
        let done = flushed.clone();
        let losses = lost.clone();
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                let mut out = io::BufWriter::new(first);
                let write = |out: &mut io::BufWriter<Box<dyn Write + Send>>, line: &[u8]| {
                    if let Err(e) = out.write_all(line) {
                        losses.write_result(Err(e));
                        losses.one("cannot write to the log destination");
                    }
                };
                loop {
                    if flag.swap(false, Ordering::AcqRel) {
                        let _ = out.flush();
                        match dest.open() {
                            Ok(w) => out = io::BufWriter::new(w),
                            Err(e) => tracing::error!(error = %e, "cannot reopen log file; writing to the old one"),
                        }
                    }
                    // Drain what is queued, then pause: a writer blocked in `recv` would be woken
                    // (a futex call) by every request's line, a measurable cost at high rates.
                    let mut wrote = false;
                    loop {
                        match rx.try_recv() {
                            // An empty line is a flush request (see `flush`).
                            Ok(line) if line.is_empty() => {
                                losses.write_result(out.flush());
                                done.fetch_add(1, Ordering::AcqRel);
                            }
                            Ok(line) => {
                                write(&mut out, &line);
                                wrote = true;
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                let _ = out.flush();
                                return;
                            }
                        }
                    }
                    if wrote {
                        losses.write_result(out.flush());
                        std::thread::sleep(BATCH_PAUSE);
                        continue;
                    }
                    // Idle: wait for the next line (or a reopen request) without polling. A
                    // failing destination is tried again at each wake: the writer still holds
                    // what it could not write, so the flush is a real attempt.
                    match rx.recv_timeout(IDLE_WAIT) {
                        Ok(line) => {
                            write(&mut out, &line);
                            losses.write_result(out.flush());
                            if line.is_empty() {
                                done.fetch_add(1, Ordering::AcqRel);
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            if losses.failing.load(Ordering::Acquire) {
                                losses.write_result(out.flush());
                            }
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            })?;
        Ok(LineSink {
            tx: Some(tx),
            flushed,
            lost,
            reopen,
        })
    }

    /// Calls `hook` for every dropped line (a full queue, or a destination refusing writes).
    pub fn on_drop(self, hook: DropHook) -> LineSink {
        let _ = self.lost.hook.set(hook);
        self
    }

    /// Queues one line (a newline is appended). Never blocks: when the queue is full, or the
    /// destination refuses writes, the line is dropped and counted.
    pub fn write_json<T: serde::Serialize>(&self, value: &T) {
        let _ = self.try_write_json(value);
    }

    /// Like `write_json`, telling whether the line was queued.
    pub fn try_write_json<T: serde::Serialize>(&self, value: &T) -> Result<(), QueueFull> {
        let Some(tx) = &self.tx else { return Ok(()) };
        if self.lost.failing.load(Ordering::Acquire) {
            self.lost.one("log destination refuses writes");
            return Err(QueueFull);
        }
        let Ok(mut line) = serde_json::to_vec(value) else {
            return Ok(());
        };
        line.push(b'\n');
        match tx.try_send(crate::clip::cap_line(line)) {
            Err(TrySendError::Full(_)) => {
                self.lost.one("log queue full");
                Err(QueueFull)
            }
            _ => Ok(()),
        }
    }

    /// Waits (at most `timeout`) until every line queued so far is written and flushed: before
    /// the process exits, so that the last requests' lines are not lost.
    pub fn flush(&self, timeout: Duration) {
        let Some(tx) = &self.tx else { return };
        let before = self.flushed.load(Ordering::Acquire);
        let deadline = std::time::Instant::now() + timeout;
        let mut queued = false;
        while std::time::Instant::now() < deadline {
            if !queued {
                queued = tx.try_send(Vec::new()).is_ok();
            } else if self.flushed.load(Ordering::Acquire) > before {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asks the writer to reopen its file (after log rotation moved it away).
    pub fn request_reopen(&self) {
        self.reopen.store(true, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_sink_writes_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.log");
        let sink = LineSink::open(path.to_str().unwrap(), "test-sink").unwrap();
        sink.write_json(&serde_json::json!({"a": 1}));
        sink.write_json(&serde_json::json!({"b": 2}));
        drop(sink);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            if text.lines().count() == 2 {
                assert_eq!(text, "{\"a\":1}\n{\"b\":2}\n");
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "lines never arrived: {text:?}"
            );
            std::thread::yield_now();
        }
    }

    #[test]
    fn flush_waits_for_the_queued_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("b.log");
        let sink = LineSink::open(path.to_str().unwrap(), "test-flush").unwrap();
        for i in 0..100 {
            sink.write_json(&serde_json::json!({ "i": i }));
        }
        sink.flush(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text.lines().count(), 100, "all written when flush returns");
    }
}
