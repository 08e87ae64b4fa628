//! The host's models: loaded once at start (off the async workers; a model
//! that fails its checks stops the start with exit code 2), each a health
//! component `ml.NAME`, and their files watched. A changed file is read,
//! checked and swapped in on the watcher's thread; a refused one leaves the
//! old version serving, and says why in the log, the activity feed and the
//! component's reason.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, Debouncer, RecommendedCache, new_debouncer};
use serde_json::json;

use super::HostError;
use crate::activity::{ActivityBus, ActivityKind};
use crate::health::{ComponentState, Health};
use crate::ml::{Registry, Swap};

/// The health component of a model.
pub fn component(name: &str) -> String {
    format!("ml.{name}")
}

/// Loads every configured model on a blocking thread and registers each as up.
pub async fn load(config: &crate::config::MlConfig, health: &Health) -> Result<Arc<Registry>, HostError> {
    let config = config.clone();
    let registry = tokio::task::spawn_blocking(move || Registry::load(&config))
        .await
        .map_err(|e| HostError::Models(format!("model loading panicked: {e}")))?
        .map_err(|e| HostError::Models(e.to_string()))?;
    for name in registry.names() {
        health.register(&component(name));
        health.set(&component(name), ComponentState::Up);
        if let Some(metrics) = registry.metrics(name) {
            health.track(&component(name), metrics.latency.pulse());
        }
        let model = registry.model(name).expect("a loaded model");
        tracing::info!(model = name, path = %model.config.path.display(), sha256 = %model.sha256, "model loaded");
    }
    Ok(Arc::new(registry))
}

/// Watches the models' files while it lives.
pub struct ModelsWatcher {
    _debouncer: Option<Debouncer<notify::RecommendedWatcher, RecommendedCache>>,
}

/// Starts watching the folders of the models' files (none when there are no models).
pub fn watch(
    registry: Arc<Registry>,
    debounce: Duration,
    health: Arc<Health>,
    activity: ActivityBus,
) -> Result<ModelsWatcher, HostError> {
    if registry.is_empty() {
        return Ok(ModelsWatcher { _debouncer: None });
    }
    // File name → models read from it, by folder (the watch is on folders:
    // editors and `cp` replace files, which would end a per-file watch).
    let mut folders: BTreeMap<PathBuf, Vec<(std::ffi::OsString, String)>> = BTreeMap::new();
    for (name, path) in registry.paths() {
        let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
        let folder = absolute.parent().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
        let file = absolute.file_name().map(|f| f.to_os_string()).unwrap_or_default();
        folders.entry(folder).or_default().push((file, name.to_string()));
    }
    let watched = folders.clone();
    let mut debouncer = new_debouncer(debounce, None, move |result: DebounceEventResult| {
        let Ok(events) = result else { return };
        let mut changed: Vec<&str> = Vec::new();
        for event in events.iter().filter(|e| !matches!(e.event.kind, notify::EventKind::Access(_))) {
            for path in &event.event.paths {
                let (Some(folder), Some(file)) = (path.parent(), path.file_name()) else { continue };
                let models = watched.iter().filter(|(f, _)| same_folder(f, folder)).flat_map(|(_, m)| m);
                for (_, name) in models.filter(|(f, _)| f == file) {
                    if !changed.contains(&name.as_str()) {
                        changed.push(name);
                    }
                }
            }
        }
        for name in changed {
            swap(&registry, name, &health, &activity);
        }
    })
    .map_err(|e| HostError::Models(format!("cannot watch the model files: {e}")))?;
    for folder in folders.keys() {
        debouncer
            .watch(folder, RecursiveMode::NonRecursive)
            .map_err(|e| HostError::Models(format!("cannot watch {}: {e}", folder.display())))?;
    }
    Ok(ModelsWatcher { _debouncer: Some(debouncer) })
}

fn same_folder(a: &std::path::Path, b: &std::path::Path) -> bool {
    a == b || matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
}

/// Reads a changed model file and reports what became of it.
fn swap(registry: &Registry, name: &str, health: &Health, activity: &ActivityBus) {
    let component = component(name);
    match registry.reload(name) {
        None => {}
        // The serving file is back after a refused one: its reason goes.
        Some(Swap::Unchanged) => health.set(&component, ComponentState::Up),
        Some(Swap::Swapped { version }) => {
            let sha256 = registry.model(name).map(|m| m.sha256.clone()).unwrap_or_default();
            tracing::info!(model = name, version, sha256 = %sha256, "model file changed: new version serving");
            health.set(&component, ComponentState::Up);
            activity.publish(
                ActivityKind::Health,
                None,
                json!({ "component": component, "state": "up", "version": version,
                        "reason": format!("model {name} v{version} loaded") }),
            );
        }
        Some(Swap::Refused { serving, error }) => {
            let reason = format!("new file refused: {error}; v{serving} keeps serving");
            tracing::warn!(model = name, "model {name}: {reason}");
            health.note(&component, &reason);
            activity.publish(
                ActivityKind::Health,
                None,
                json!({ "component": component, "state": "up", "version": serving, "reason": reason }),
            );
        }
    }
}
