//! Every long-lived task is spawned here: named, tracked and awaited at
//! shutdown, with its name listed while it runs so a late shutdown can say
//! which task holds it up. A task that panics is reported.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio_util::task::TaskTracker;

/// Tracked, named tasks.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeSet<String>>>,
}

impl Tasks {
    /// No tasks yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Spawns a named task.
    pub fn spawn(&self, name: &str, task: impl Future<Output = ()> + Send + 'static) {
        let running = self.running.clone();
        running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        let name = name.to_string();
        let inner = tokio::spawn(task);
        self.tracker.spawn(async move {
            if let Err(error) = inner.await
                && error.is_panic()
            {
                tracing::error!(task = %name, "task panicked: {error}");
            }
            running.lock().unwrap_or_else(|e| e.into_inner()).remove(&name);
        });
    }

    /// Names of the tasks still running.
    pub fn names(&self) -> Arc<Mutex<BTreeSet<String>>> {
        self.running.clone()
    }

    /// No more tasks will be spawned.
    pub fn close(&self) {
        self.tracker.close();
    }

    /// Waits for every task to end (after `close`).
    pub async fn wait(&self) {
        self.tracker.wait().await;
    }
}
