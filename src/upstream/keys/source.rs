//! Where a key's value comes from (`value`, or a `file` re-read by the upstream manager when its
//! content changes) and how a new value is installed in its slot: a new value starts afresh,
//! without the old one's cooldown or disabling.

use super::key::ProviderKey;
use super::ring::{digest, KeyRing, KeySlot};
use crate::config::ProviderKind;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// Where a key's secret comes from.
#[derive(Clone, PartialEq)]
pub enum KeySource {
    Value(String),
    File(PathBuf),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Value(_) => f.write_str("Value(<secret>)"),
            KeySource::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

impl KeyRing {
    /// Whether some key comes from a file (the manager re-reads those).
    pub fn has_files(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s.source, KeySource::File(_)))
    }

    /// Re-reads file-backed keys and takes a changed content; returns whether any changed. The
    /// content is compared, not the modification time, which a rewrite within the file
    /// system's time granularity (or a restored mtime) would not change. Blocking file I/O: the
    /// manager calls it off the runtime's workers.
    pub fn refresh_files(&self) -> bool {
        let mut changed = false;
        for slot in &self.slots {
            let KeySource::File(path) = &slot.source else {
                continue;
            };
            let secret = match std::fs::read_to_string(path) {
                Ok(s) => {
                    slot.file_failing.store(false, Ordering::Relaxed);
                    s
                }
                Err(e) => {
                    // The last value read keeps serving.
                    if !slot.file_failing.swap(true, Ordering::Relaxed) {
                        tracing::warn!(key_id = %slot.id, path = %path.display(), error = %e, "provider key file unreadable; keeping the last value");
                    }
                    continue;
                }
            };
            if digest(&secret) == slot.digest.load(Ordering::Acquire) {
                continue;
            }
            changed = true;
            match slot.install(self.kind, &secret) {
                Ok(()) => {
                    tracing::info!(key_id = %slot.id, "provider key file changed; key reloaded")
                }
                Err(e) => {
                    tracing::warn!(key_id = %slot.id, error = %e, "provider key file changed to an unusable value")
                }
            }
        }
        changed
    }
}

impl KeySlot {
    pub(super) fn load(&self, kind: ProviderKind) -> Result<(), String> {
        let secret = match &self.source {
            KeySource::Value(v) => v.clone(),
            KeySource::File(p) => std::fs::read_to_string(p)
                .map_err(|e| format!("cannot read {}: {e}", p.display()))?,
        };
        self.install(kind, &secret)
    }

    fn install(&self, kind: ProviderKind, secret: &str) -> Result<(), String> {
        let new = digest(secret);
        if self.digest.swap(new, Ordering::AcqRel) != new {
            // A new value starts afresh: the old one's rate limits were the old one's.
            let mut st = self.state.lock();
            st.cooling_until = None;
            st.refusals_in_a_row = 0;
        }
        match ProviderKey::new(kind, &self.id, secret) {
            Some(k) => {
                self.key.store(Some(Arc::new(k)));
                Ok(())
            }
            None => {
                self.key.store(None);
                Err("empty, or not a valid header value".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::ring::tests::cool;
    use super::super::KeyPick;
    use super::*;
    use crate::config::KeyAffinity;
    use http::HeaderMap;
    use tokio::time::Instant;

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn disabled_until_the_value_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-old\n").unwrap();
        let (r, problems) = KeyRing::new(
            ProviderKind::Openai,
            KeyAffinity::None,
            vec![("f".into(), KeySource::File(path.clone()))],
            &|_| None,
        );
        assert!(problems.is_empty());
        assert!(r.has_live());
        let old = r.slots[0].key.load_full().unwrap();
        cool(&r, 0, &HeaderMap::new(), Instant::now());
        r.disable(0, &old, "unauthorized");
        assert!(!r.has_live(), "a refused key is not alive");
        assert!(matches!(
            r.pick(None, &[], Instant::now()),
            KeyPick::Exhausted {
                back_in: None,
                refused: true
            }
        ));
        assert!(!r.refresh_files(), "unchanged file");
        // Same length, same modification time: only the content tells.
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        std::fs::write(&path, "sk-new\n").unwrap();
        std::fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        assert!(r.refresh_files());
        assert!(!r.refresh_files(), "taken once");
        match r.pick(None, &[], Instant::now()) {
            KeyPick::Key(0, k) => assert_eq!(k.secret(), "sk-new", "and not cooling either"),
            other => panic!("{other:?}"),
        }
        // Answers to requests sent with the old value do not touch the new one.
        r.disable(0, &old, "unauthorized");
        assert_eq!(
            r.cool_down(0, &old, &HeaderMap::new(), Instant::now()),
            None
        );
        assert_eq!(r.view(Instant::now())[0].state, "active");
    }
}
