//! `server.state_file`: what a process hands to the next one (after a restart or a binary
//! upgrade), so that open breakers, resting keys and keys the provider refused stay so. Written
//! on a graceful exit and when an upgrade hands the listeners over; read at start. Times are
//! saved as what was left of them and count on from when they are read, so a stale file
//! expires by itself. A key's state is taken over only when its value is the same (by a
//! SHA-256 fingerprint; the file never holds a key). A file that cannot be read or parsed is
//! logged and ignored.

use crate::state::BackendKey;
use crate::upstream::backend::BackendState;
use crate::upstream::breaker::BreakerSnapshot;
use crate::upstream::keys::KeySnapshot;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

const VERSION: u32 = 1;

/// The file's content.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u32,
    /// When it was written (Unix milliseconds): a snapshot older than its entries' times has
    /// little left to say.
    pub written_at_ms: u64,
    pub backends: Vec<BackendEntry>,
    pub keys: Vec<KeyEntry>,
    /// The memory quota store's counters of the day (and callers' spending), so that a restart
    /// does not hand every caller a fresh daily budget.
    #[serde(default)]
    pub quotas: Vec<crate::quota::memory::SavedCounts>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendEntry {
    pub provider: String,
    pub endpoint_url: String,
    pub addr: SocketAddr,
    pub checked: bool,
    pub breaker: BreakerSnapshot,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct KeyEntry {
    pub provider: String,
    pub id: String,
    #[serde(flatten)]
    pub state: KeySnapshot,
}

impl Snapshot {
    pub fn new(backends: Vec<BackendEntry>, keys: Vec<KeyEntry>) -> Snapshot {
        Snapshot {
            version: VERSION,
            written_at_ms: unix_ms(),
            backends,
            keys,
            quotas: Vec::new(),
        }
    }

    /// Writes the file atomically (a temporary file renamed over it), readable by its owner
    /// only.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec(self).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    }

    /// Reads the file; `None` (and a log line saying why) when it is missing, unreadable,
    /// corrupt or of another version.
    pub fn read(path: &Path) -> Option<Snapshot> {
        let text = match std::fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the state file; starting without it");
                return None;
            }
        };
        match serde_json::from_slice::<Snapshot>(&text) {
            Ok(s) if s.version == VERSION => Some(s),
            Ok(s) => {
                tracing::warn!(path = %path.display(), version = s.version, "state file of another version; starting without it");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "corrupt state file; starting without it");
                None
            }
        }
    }

    /// How old it is.
    pub fn age_ms(&self) -> u64 {
        unix_ms().saturating_sub(self.written_at_ms)
    }
}

/// A snapshot's entries by stable id, waiting for their entries to be created.
#[derive(Debug, Default)]
pub struct Seeds {
    pub backends: HashMap<BackendKey, BackendSeed>,
    pub keys: HashMap<(Arc<str>, Arc<str>), KeySnapshot>,
}

#[derive(Debug, Clone)]
pub struct BackendSeed {
    checked: bool,
    breaker: BreakerSnapshot,
}

impl BackendSeed {
    pub fn apply(&self, b: &BackendState, now: tokio::time::Instant) {
        if self.checked {
            b.mark_checked();
        }
        b.breaker.restore(&self.breaker, now);
    }
}

impl From<Snapshot> for Seeds {
    fn from(mut s: Snapshot) -> Seeds {
        // Time passed since it was written counts against what was left.
        let age = s.age_ms();
        let less = |ms: Option<u64>| ms.and_then(|m| m.checked_sub(age)).filter(|m| *m > 0);
        let backends = s
            .backends
            .drain(..)
            .map(|b| {
                let mut breaker = b.breaker;
                if breaker.open_for_ms.is_some() {
                    breaker.open_for_ms = less(breaker.open_for_ms);
                    // Its time is up: half-open, waiting for a probe.
                    breaker.half_open |= breaker.open_for_ms.is_none();
                }
                let key = BackendKey {
                    provider: Arc::from(b.provider),
                    endpoint_url: Arc::from(b.endpoint_url),
                    addr: b.addr,
                };
                let seed = BackendSeed {
                    checked: b.checked,
                    breaker,
                };
                (key, seed)
            })
            .collect();
        let keys = s
            .keys
            .drain(..)
            .map(|k| {
                let mut state = k.state;
                state.cooling_for_ms = less(state.cooling_for_ms);
                ((Arc::from(k.provider), Arc::from(k.id)), state)
            })
            .collect();
        Seeds { backends, keys }
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(open_for: u64, cooling_for: u64) -> Snapshot {
        Snapshot::new(
            vec![BackendEntry {
                provider: "p".into(),
                endpoint_url: "http://127.0.0.1:9".into(),
                addr: "127.0.0.1:9".parse().unwrap(),
                checked: true,
                breaker: BreakerSnapshot {
                    open_for_ms: Some(open_for),
                    half_open: false,
                    consecutive_failures: 0,
                    reopenings: 2,
                },
            }],
            vec![KeyEntry {
                provider: "p".into(),
                id: "k".into(),
                state: KeySnapshot {
                    fingerprint: "00".into(),
                    cooling_for_ms: Some(cooling_for),
                    disabled: None,
                    refusals_in_a_row: 1,
                    requests: 5,
                    last_status: Some(429),
                },
            }],
        )
    }

    #[test]
    fn written_atomically_read_back_and_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        snapshot(1000, 1000).write(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner only");
        let back = Snapshot::read(&path).unwrap();
        assert_eq!(back.backends[0].breaker.reopenings, 2);
        assert_eq!(back.keys[0].state.requests, 5);
        assert!(!dir.path().join("state.tmp").exists());
    }

    #[test]
    fn a_missing_or_corrupt_file_is_no_state() {
        let dir = tempfile::tempdir().unwrap();
        assert!(Snapshot::read(&dir.path().join("none.json")).is_none());
        let bad = dir.path().join("bad.json");
        std::fs::write(&bad, "{not json").unwrap();
        assert!(Snapshot::read(&bad).is_none());
        std::fs::write(
            &bad,
            r#"{"version":99,"written_at_ms":0,"backends":[],"keys":[]}"#,
        )
        .unwrap();
        assert!(Snapshot::read(&bad).is_none(), "another version");
    }

    #[test]
    fn time_passed_since_the_write_counts() {
        let mut s = snapshot(60_000, 1_000);
        s.written_at_ms -= 5_000;
        let seeds = Seeds::from(s);
        let b = seeds.backends.values().next().unwrap();
        let left = b.breaker.open_for_ms.unwrap();
        assert!((54_000..=55_000).contains(&left), "{left}");
        let k = seeds.keys.values().next().unwrap();
        assert_eq!(k.cooling_for_ms, None, "its second was over long ago");
        let mut expired = snapshot(1_000, 0);
        expired.written_at_ms -= 5_000;
        let b = Seeds::from(expired).backends.into_values().next().unwrap();
        assert!(
            b.breaker.half_open,
            "open time over: half-open, waiting for a probe"
        );
    }
}
