//! Watches the strategies folder: every change becomes a
//! [`Control::Rescan`]. The folder itself may be deleted, recreated or moved
//! away and back while the host runs; a guard thread notices (the folder is
//! missing, or is another folder now) and watches it again with backoff, so
//! new files are always seen once it is back. Its state is the `watcher`
//! component of the health registry.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use tokio::sync::mpsc;

use super::HostError;
use crate::control::Control;
use crate::health::{ComponentState, Health};

/// The health component of the watcher.
pub const COMPONENT: &str = "watcher";

/// How often the guard looks at the folder.
const CHECK_EVERY: Duration = Duration::from_millis(250);
/// Longest wait between attempts to watch a folder that keeps failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type FolderDebouncer = Debouncer<notify::RecommendedWatcher, RecommendedCache>;

/// The running watcher; dropping it stops the guard and the watch.
pub struct StrategiesWatcher {
    stop: Arc<AtomicBool>,
    guard: Option<std::thread::JoinHandle<()>>,
}

impl Drop for StrategiesWatcher {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(guard) = self.guard.take() {
            let _ = guard.join();
        }
    }
}

/// What identifies a folder: its device and inode where there are some
/// (a folder recreated under the same name is another folder), else that it exists.
fn folder_identity(dir: &Path) -> Option<(u64, u64)> {
    let metadata = std::fs::metadata(dir).ok().filter(std::fs::Metadata::is_dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        Some((metadata.dev(), metadata.ino()))
    }
    #[cfg(not(unix))]
    {
        let _ = metadata;
        Some((0, 0))
    }
}

/// Starts watching `dir` (it must exist now) with changes debounced by `debounce`.
pub fn watch(
    dir: &Path,
    debounce: Duration,
    control: mpsc::UnboundedSender<Control>,
    health: Arc<Health>,
) -> Result<StrategiesWatcher, HostError> {
    let watch_error = |e: notify::Error| HostError::Watch { path: dir.to_path_buf(), message: e.to_string() };
    let events = control.clone();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| match result {
        // Reads (our own rescans included) raise access events: only changes count.
        Ok(events_seen) if events_seen.iter().any(|e| !matches!(e.event.kind, notify::EventKind::Access(_))) => {
            let _ = events.send(Control::Rescan);
        }
        Ok(_) => {}
        Err(errors) => tracing::warn!(?errors, "strategies folder watcher error"),
    })
    .map_err(watch_error)?;
    debouncer.watch(dir, RecursiveMode::NonRecursive).map_err(watch_error)?;
    health.register(COMPONENT);
    health.set(COMPONENT, ComponentState::Up);
    let stop = Arc::new(AtomicBool::new(false));
    let guard =
        Guard { dir: dir.to_path_buf(), watched: folder_identity(dir), debouncer, control, health, stop: stop.clone() };
    let guard = std::thread::Builder::new()
        .name("strategies-watcher".into())
        .spawn(move || guard.run())
        .map_err(|e| HostError::Watch { path: dir.to_path_buf(), message: e.to_string() })?;
    Ok(StrategiesWatcher { stop, guard: Some(guard) })
}

/// Keeps the watch on the folder that has the strategies folder's path now.
struct Guard {
    dir: PathBuf,
    /// The folder being watched (`None`: none, the folder is missing).
    watched: Option<(u64, u64)>,
    debouncer: FolderDebouncer,
    control: mpsc::UnboundedSender<Control>,
    health: Arc<Health>,
    stop: Arc<AtomicBool>,
}

impl Guard {
    fn run(mut self) {
        let mut backoff = CHECK_EVERY;
        let mut next_try = std::time::Instant::now();
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(CHECK_EVERY);
            let now = folder_identity(&self.dir);
            if now == self.watched || std::time::Instant::now() < next_try {
                continue;
            }
            // What was watched is gone (or is another folder now): the old watch is dead.
            let _ = self.debouncer.unwatch(&self.dir);
            self.watched = None;
            let Some(identity) = now else {
                let reason = format!(
                    "the strategies folder {} is missing: its strategies are stopped, new files are seen once it is back",
                    self.dir.display()
                );
                tracing::error!("{reason}");
                self.health.set_down(COMPONENT, &reason);
                let _ = self.control.send(Control::Rescan);
                continue;
            };
            match self.debouncer.watch(&self.dir, RecursiveMode::NonRecursive) {
                Ok(()) => {
                    tracing::info!(dir = %self.dir.display(), "watching the strategies folder again");
                    self.watched = Some(identity);
                    self.health.set(COMPONENT, ComponentState::Up);
                    backoff = CHECK_EVERY;
                    let _ = self.control.send(Control::Rescan);
                }
                Err(error) => {
                    let reason = format!("cannot watch the strategies folder {}: {error}", self.dir.display());
                    tracing::error!("{reason} (trying again in {backoff:?})");
                    self.health.set_down(COMPONENT, &reason);
                    next_try = std::time::Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }
}
