//! File-system events for the pod tasks: a shim records its container's start (`shim.json`) and
//! exit (`exit.json`) by renaming a finished file into the container's directory, and an
//! inotify watch on that directory wakes the pod's task the moment it does, instead of the task
//! looking every so often.
//!
//! One inotify instance serves every pod of a provider (the kernel allows a user only a few
//! instances, 128 by default, but many watches): a task reads its events and wakes the pod that
//! registered the directory. Only renames onto the names a pod asked for wake it, so the
//! container's own log writes and the runner's own records cost nothing.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::Path;
use std::sync::{Arc, Weak};

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use parking_lot::Mutex;
use tokio::io::unix::AsyncFd;

use crate::readiness::{self, Owned};
use tokio::sync::Notify;
use tracing::{debug, warn};

/// What one watched directory wakes.
struct Target {
    names: &'static [&'static str],
    wake: Weak<Notify>,
}

struct Inner {
    inotify: AsyncFd<Owned<Inotify>>,
    targets: Mutex<HashMap<WatchDescriptor, Target>>,
}

/// A provider's directory watcher (cheap to clone; the reading task ends with the last clone).
#[derive(Clone)]
pub struct DirWatcher {
    inner: Arc<Inner>,
    _task: Arc<AbortOnDrop>,
}

struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl DirWatcher {
    /// A new inotify instance and the task that reads it (needs a Tokio runtime).
    pub fn new() -> std::io::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        let inner = Arc::new(Inner {
            inotify: readiness::register(inotify, tokio::io::Interest::READABLE)?,
            targets: Mutex::new(HashMap::new()),
        });
        let task = tokio::spawn(read_events(inner.clone())).abort_handle();
        Ok(Self {
            inner,
            _task: Arc::new(AbortOnDrop(task)),
        })
    }

    /// Wake `wake` whenever a file named one of `names` is renamed into `dir`, until the
    /// returned guard is dropped (or `dir` is removed).
    pub fn watch(
        &self,
        dir: &Path,
        names: &'static [&'static str],
        wake: &Arc<Notify>,
    ) -> std::io::Result<Watch> {
        // Registered under the lock, so the reader cannot see an event of this watch before
        // it knows whom to wake.
        let mut targets = self.inner.targets.lock();
        let wd = self
            .inner
            .inotify
            .get_ref()
            .get()
            .add_watch(dir, AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_ONLYDIR)?;
        targets.insert(
            wd,
            Target {
                names,
                wake: Arc::downgrade(wake),
            },
        );
        Ok(Watch {
            inner: Arc::downgrade(&self.inner),
            wd,
        })
    }
}

/// One watched directory; dropping it removes the watch.
pub struct Watch {
    inner: Weak<Inner>,
    wd: WatchDescriptor,
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(inner) = self.inner.upgrade()
            && inner.targets.lock().remove(&self.wd).is_some()
        {
            // Fails harmlessly when the directory is gone (the kernel dropped the watch).
            let _ = inner.inotify.get_ref().get().rm_watch(self.wd);
        }
    }
}

/// Runs until the last [`DirWatcher`] is dropped (which aborts it).
async fn read_events(inner: Arc<Inner>) {
    loop {
        let events = match inner.inotify.readable().await {
            Ok(mut guard) => {
                match guard.try_io(|fd| fd.get_ref().get().read_events().map_err(Into::into)) {
                    Ok(Ok(events)) => events,
                    Ok(Err(e)) => {
                        warn!(error = %e, "reading inotify events; pods are woken by their exits only");
                        return;
                    }
                    // Spurious readiness: cleared, wait again.
                    Err(_would_block) => continue,
                }
            }
            Err(e) => {
                warn!(error = %e, "waiting for inotify events");
                return;
            }
        };
        let mut targets = inner.targets.lock();
        for event in events {
            if event.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                debug!("inotify queue overflowed; waking every pod");
                for t in targets.values() {
                    if let Some(w) = t.wake.upgrade() {
                        w.notify_one();
                    }
                }
                continue;
            }
            if event.mask.contains(AddWatchFlags::IN_IGNORED) {
                // The directory was removed: the kernel dropped the watch.
                targets.remove(&event.wd);
                continue;
            }
            let Some(t) = targets.get(&event.wd) else {
                continue;
            };
            let named = event
                .name
                .as_deref()
                .is_some_and(|n| t.names.iter().any(|w| OsStr::new(w) == n));
            if named && let Some(w) = t.wake.upgrade() {
                w.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_file_renamed_into_a_watched_directory_wakes_its_watcher() {
        let dir = std::env::temp_dir().join(format!("vk-watch-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let watcher = DirWatcher::new().unwrap();
        let wake = Arc::new(Notify::new());
        let guard = watcher.watch(&dir, &["exit.json"], &wake).unwrap();
        let woken = || tokio::time::timeout(Duration::from_millis(300), wake.notified());

        // Other names, and writes that are not renames, do not wake it.
        std::fs::write(dir.join(".tmp"), "x").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("state.json")).unwrap();
        std::fs::write(dir.join("exit.json.partial"), "x").unwrap();
        assert!(woken().await.is_err());

        std::fs::write(dir.join(".tmp"), "x").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("exit.json")).unwrap();
        woken().await.unwrap();

        // After the guard is dropped, nothing wakes it.
        drop(guard);
        std::fs::write(dir.join(".tmp"), "y").unwrap();
        std::fs::rename(dir.join(".tmp"), dir.join("exit.json")).unwrap();
        assert!(woken().await.is_err());
        assert!(watcher.inner.targets.lock().is_empty());

        // A removed directory drops its watch by itself.
        let sub = dir.join("sub");
        std::fs::create_dir(&sub).unwrap();
        let _guard = watcher.watch(&sub, &["exit.json"], &wake).unwrap();
        std::fs::remove_dir(&sub).unwrap();
        for _ in 0..100 {
            if watcher.inner.targets.lock().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(watcher.inner.targets.lock().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
