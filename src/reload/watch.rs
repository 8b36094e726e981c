//! Watching the configuration's files for changes (`reload.watch`): the main file, the models
//! file and the env files. Polling their metadata rather than subscribing to inotify: an editor's
//! write-then-rename, a Kubernetes ConfigMap's symlink swap and a file that does not exist yet
//! all show up as a changed fingerprint, with no watch to re-arm. A handful of `stat` calls a
//! few times a second costs nothing next to the traffic.
//!
//! A change triggers a reload only once the files have been quiet for `debounce`, so a tool
//! that writes a file in several steps causes one reload, of the finished file.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;

/// What identifies a file's content without reading it: follows symlinks, so a swapped link
/// target counts as a change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Missing,
    Present {
        len: u64,
        modified: Option<SystemTime>,
        inode: u64,
    },
}

impl Fingerprint {
    pub fn of(path: &std::path::Path) -> Fingerprint {
        use std::os::unix::fs::MetadataExt;
        match std::fs::metadata(path) {
            Ok(m) => Fingerprint::Present {
                len: m.len(),
                modified: m.modified().ok(),
                inode: m.ino(),
            },
            Err(_) => Fingerprint::Missing,
        }
    }
}

/// The files of one configuration and what they looked like when it was loaded.
#[derive(Debug)]
pub struct Watch {
    files: Vec<(PathBuf, Fingerprint)>,
    debounce: Duration,
    /// When a change was last seen and not yet acted on.
    pending_since: Option<Instant>,
}

impl Watch {
    /// Starts watching `files` as they are now.
    pub fn new(files: Vec<PathBuf>, debounce: Duration) -> Watch {
        let files = files
            .into_iter()
            .map(|p| {
                let f = Fingerprint::of(&p);
                (p, f)
            })
            .collect();
        Watch {
            files,
            debounce,
            pending_since: None,
        }
    }

    /// How often `poll` should run: often enough to honour the debounce, at most 4 times a
    /// second.
    pub fn interval(&self) -> Duration {
        (self.debounce / 2).clamp(Duration::from_millis(50), Duration::from_millis(250))
    }

    /// Looks at the files now; `true` when they changed and have been quiet for the debounce
    /// since (the caller reloads, then starts a new `Watch` for the new configuration's files).
    pub fn poll(&mut self, now: Instant) -> bool {
        self.observe(now, Fingerprint::of)
    }

    fn observe(&mut self, now: Instant, look: impl Fn(&std::path::Path) -> Fingerprint) -> bool {
        let mut changed = false;
        for (path, seen) in &mut self.files {
            let current = look(path);
            if current != *seen {
                *seen = current;
                changed = true;
            }
        }
        if changed {
            // Still being written: wait for quiet from now.
            self.pending_since = Some(now);
            return false;
        }
        match self.pending_since {
            Some(since) if now.duration_since(since) >= self.debounce => {
                self.pending_since = None;
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    fn present(len: u64) -> Fingerprint {
        Fingerprint::Present {
            len,
            modified: None,
            inode: 1,
        }
    }

    struct Disk(RefCell<HashMap<PathBuf, Fingerprint>>);

    impl Disk {
        fn look(&self) -> impl Fn(&std::path::Path) -> Fingerprint + '_ {
            |p| {
                self.0
                    .borrow()
                    .get(p)
                    .cloned()
                    .unwrap_or(Fingerprint::Missing)
            }
        }
        fn write(&self, p: &str, len: u64) {
            self.0.borrow_mut().insert(p.into(), present(len));
        }
    }

    fn watch(disk: &Disk, files: &[&str]) -> Watch {
        let mut w = Watch::new(vec![], Duration::from_millis(500));
        w.files = files
            .iter()
            .map(|f| (PathBuf::from(f), disk.look()(std::path::Path::new(f))))
            .collect();
        w
    }

    #[tokio::test(start_paused = true)]
    async fn a_change_fires_once_after_the_files_are_quiet() {
        let disk = Disk(RefCell::new(HashMap::new()));
        disk.write("a.yaml", 10);
        let mut w = watch(&disk, &["a.yaml", "models.yaml"]);
        let t0 = Instant::now();
        assert!(!w.observe(t0, disk.look()), "nothing changed");
        disk.write("a.yaml", 11);
        assert!(!w.observe(t0, disk.look()), "just changed: wait");
        let ms = |n| t0 + Duration::from_millis(n);
        disk.write("a.yaml", 12);
        assert!(
            !w.observe(ms(300), disk.look()),
            "written again: the wait starts over"
        );
        assert!(
            !w.observe(ms(700), disk.look()),
            "400 ms of quiet is not enough"
        );
        assert!(w.observe(ms(800), disk.look()), "500 ms of quiet");
        assert!(!w.observe(ms(2000), disk.look()), "once");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_appears_or_disappears_is_a_change() {
        let disk = Disk(RefCell::new(HashMap::new()));
        let mut w = watch(&disk, &[".env"]);
        let t0 = Instant::now();
        disk.write(".env", 3);
        assert!(!w.observe(t0, disk.look()));
        assert!(w.observe(t0 + Duration::from_secs(1), disk.look()));
        disk.0.borrow_mut().clear();
        assert!(!w.observe(t0 + Duration::from_secs(2), disk.look()));
        assert!(w.observe(t0 + Duration::from_secs(3), disk.look()));
    }

    #[test]
    fn a_renamed_over_file_changes_its_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ultra.yaml");
        std::fs::write(&path, "a: 1\n").unwrap();
        let before = Fingerprint::of(&path);
        // An editor's save: write a new file, rename it over the old one (same length).
        let tmp = dir.path().join(".ultra.yaml.swp");
        std::fs::write(&tmp, "a: 2\n").unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_ne!(Fingerprint::of(&path), before, "another inode");
        assert_eq!(
            Fingerprint::of(&dir.path().join("nope")),
            Fingerprint::Missing
        );
    }

    #[test]
    fn polling_is_frequent_enough_for_the_debounce() {
        let w = Watch::new(vec![], Duration::from_millis(500));
        assert_eq!(w.interval(), Duration::from_millis(250));
        let w = Watch::new(vec![], Duration::from_millis(0));
        assert_eq!(w.interval(), Duration::from_millis(50));
    }
}
