//! A JSON-lines writer that keeps file and pipe I/O off the request path: lines go through a
//! bounded queue to a dedicated thread. When the queue is full the line is dropped and counted,
//! so a slow disk or a stalled stdout reader can never stall a request.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;

/// Lines waiting to be written before new ones are dropped.
const QUEUE_LINES: usize = 16 * 1024;

/// Where a sink writes: `stdout`, `stderr`, `off`, or a file path (appended).
#[derive(Clone)]
pub struct LineSink {
    tx: Option<SyncSender<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
}

impl LineSink {
    /// Opens the destination and starts its writer thread.
    pub fn open(dest: &str, thread_name: &str) -> io::Result<LineSink> {
        let out: Box<dyn Write + Send> = match dest {
            "off" => {
                return Ok(LineSink {
                    tx: None,
                    dropped: Arc::default(),
                })
            }
            "stdout" => Box::new(io::stdout()),
            "stderr" => Box::new(io::stderr()),
            path => Box::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE_LINES);
        std::thread::Builder::new()
            .name(thread_name.into())
            .spawn(move || {
                let mut out = io::BufWriter::new(out);
                while let Ok(line) = rx.recv() {
                    let _ = out.write_all(&line);
                    // Flush when the queue is drained, so lines appear promptly without a
                    // syscall per line under load.
                    while let Ok(more) = rx.try_recv() {
                        let _ = out.write_all(&more);
                    }
                    let _ = out.flush();
                }
            })?;
        Ok(LineSink {
            tx: Some(tx),
            dropped: Arc::default(),
        })
    }

    /// Queues one line (a newline is appended). Never blocks.
    pub fn write_json<T: serde::Serialize>(&self, value: &T) {
        let Some(tx) = &self.tx else { return };
        let mut line = match serde_json::to_vec(value) {
            Ok(l) => l,
            Err(_) => return,
        };
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = tx.try_send(line) {
            let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Say so, without flooding the log that is itself backed up.
            if n == 1 || n.is_multiple_of(10_000) {
                tracing::error!(dropped = n, "log queue full: lines dropped");
            }
        }
    }

    /// Lines dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC, e.g. `2026-11-25T21:06:41.123Z`.
pub fn rfc3339_millis(unix_ms: u128) -> String {
    let secs = (unix_ms / 1000) as i64;
    let ms = (unix_ms % 1000) as u32;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
}

/// Now, as RFC 3339 UTC with milliseconds.
pub fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    rfc3339_millis(ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(
            rfc3339_millis(1_795_641_201_123),
            "2026-11-25T21:13:21.123Z"
        );
    }

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
}
