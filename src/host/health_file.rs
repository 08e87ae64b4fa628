//! The health file: what `GET /api/v1/health` answers, written to disk (by
//! default `health.json` in the data folder) at every change of a component
//! and at least every `health.interval_ms`, atomically, so supervisors and
//! scripts that cannot reach the API read a whole, recent file. Its last
//! write at shutdown says `shutting_down`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::tasks::Tasks;
use crate::health::{Health, write_file_atomically};
use crate::ml::Registry;

/// The file's content now.
fn snapshot(health: &Health, models: &Registry) -> Vec<u8> {
    let body = json!({
        "status": health.status(),
        "components": health.components(),
        "reasons": health.reasons(),
        "freshness": health.freshness(),
        "models": models.statuses(),
        "written_at": chrono::Utc::now(),
        "pid": std::process::id(),
        "version": env!("CARGO_PKG_VERSION"),
    });
    let mut bytes = serde_json::to_vec_pretty(&body).expect("health serializes");
    bytes.push(b'\n');
    bytes
}

/// Writes off the async workers; a failure is logged once until the next success.
async fn write(path: &Path, bytes: Vec<u8>, failing: &mut bool) {
    let target = path.to_path_buf();
    let result = tokio::task::spawn_blocking(move || write_file_atomically(&target, &bytes)).await;
    match result {
        Ok(Ok(())) => *failing = false,
        Ok(Err(e)) if !*failing => {
            *failing = true;
            tracing::warn!(path = %path.display(), "cannot write the health file: {e}");
        }
        Ok(Err(_)) => {}
        Err(e) => tracing::warn!("the health file writer failed: {e}"),
    }
}

/// Removes temporary files a killed process left beside `path`.
fn remove_leftovers(path: &Path) {
    let (Some(folder), Some(name)) = (path.parent(), path.file_name()) else { return };
    let prefix = format!(".{}.", name.to_string_lossy());
    let folder = if folder.as_os_str().is_empty() { Path::new(".") } else { folder };
    for entry in std::fs::read_dir(folder).into_iter().flatten().flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        if file.starts_with(&prefix) && file.ends_with(".tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Starts the writer; it writes once more and ends when `stop` fires.
pub fn spawn(
    tasks: &Tasks,
    path: PathBuf,
    interval: Duration,
    health: Arc<Health>,
    models: Arc<Registry>,
    stop: CancellationToken,
) {
    tasks.spawn_auxiliary("health file", "health", move || {
        let (path, health, models, stop) = (path.clone(), health.clone(), models.clone(), stop.clone());
        async move {
            let mut changes = health.changes();
            let mut failing = false;
            let leftovers = path.clone();
            let _ = tokio::task::spawn_blocking(move || remove_leftovers(&leftovers)).await;
            loop {
                write(&path, snapshot(&health, &models), &mut failing).await;
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = tokio::time::sleep(interval) => {}
                }
            }
            write(&path, snapshot(&health, &models), &mut failing).await;
        }
    });
}
