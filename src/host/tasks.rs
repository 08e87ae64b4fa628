//! Every long-lived task is spawned here: named, tracked and awaited at
//! shutdown, with its name listed while it runs so a late shutdown can say
//! which task holds it up. Nothing dies silently: a task that panics, or a
//! critical one that ends before shutdown, is reported to the lifecycle loop
//! as a [`TaskReport`], which marks its health component down with the panic
//! message, publishes it on the activity stream and then does what the task's
//! [`OnFailure`] says.
//!
//! | task | on failure |
//! |---|---|
//! | market feed (synthetic, replay or the exchange's public stream) | restart: it holds no order state |
//! | exchange private stream | restart: it reconciles over REST after every start |
//! | engine (order manager), exchange orders, http | ordered shutdown, exit code 1 |
//! | store writer (a thread, see `store::writer`) | ordered shutdown, exit code 1 |
//! | Telegram bot, health events | restart, however often: trading never waits for them |

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::health::panic_message;

/// A restartable task fails this often in a row before the host gives up on it.
const MAX_RESTARTS: u32 = 5;
/// Wait before the first restart; doubles with each one in a row.
const FIRST_RESTART_DELAY: Duration = Duration::from_millis(250);
/// A run this long resets the count of restarts in a row.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// What the host does when a task fails (panics, or a critical task ends early).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Start it again after a growing delay; after [`MAX_RESTARTS`] in a row, shut down.
    Restart,
    /// Begin the ordered shutdown; the process exits with code 1.
    Shutdown,
    /// Start it again after a growing delay (capped at [`AUXILIARY_MAX_DELAY`]), however often.
    RestartAlways,
}

/// The longest wait before restarting an auxiliary task.
const AUXILIARY_MAX_DELAY: Duration = Duration::from_secs(60);

/// A task's failure or recovery, for the lifecycle loop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TaskReport {
    /// The task panicked or ended before shutdown; `restarting` says what follows.
    Failed {
        /// Task name.
        task: String,
        /// Health component it stands for.
        component: String,
        /// The panic message, or why its end is a failure.
        message: String,
        /// True when it will be started again; false when the host shuts down.
        restarting: bool,
    },
    /// A failed task runs again.
    Restarted {
        /// Task name.
        task: String,
        /// Health component it stands for.
        component: String,
    },
}

/// Tracked, named tasks that report their failures.
#[derive(Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    running: Arc<Mutex<BTreeSet<String>>>,
    reports: mpsc::UnboundedSender<TaskReport>,
    cancel: CancellationToken,
}

impl Tasks {
    /// No tasks yet. Failures go to `reports`; once `cancel` fires, tasks are
    /// ending for shutdown and neither restarted nor reported.
    pub fn new(reports: mpsc::UnboundedSender<TaskReport>, cancel: CancellationToken) -> Self {
        Tasks { tracker: TaskTracker::new(), running: Default::default(), reports, cancel }
    }

    /// Spawns a task that runs once; a panic, or an end before shutdown, is a
    /// failure that shuts the host down.
    pub fn spawn_critical(&self, name: &str, component: &str, task: impl Future<Output = ()> + Send + 'static) {
        let mut task = Some(task);
        self.spawn_supervised(name, component, OnFailure::Shutdown, move || task.take());
    }

    /// Spawns a task that `make` builds again after a panic (see [`OnFailure::Restart`]).
    /// Its normal end (a replay that finished) is not a failure.
    pub fn spawn_restarting<F>(&self, name: &str, component: &str, mut make: impl FnMut() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_supervised(name, component, OnFailure::Restart, move || Some(make()));
    }

    /// Spawns a task the host can do without (see [`OnFailure::RestartAlways`]);
    /// its normal end is not a failure.
    pub fn spawn_auxiliary<F>(&self, name: &str, component: &str, mut make: impl FnMut() -> F + Send + 'static)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.spawn_supervised(name, component, OnFailure::RestartAlways, move || Some(make()));
    }

    /// True once the task `name` has ended (or never ran).
    pub fn ended(&self, name: &str) -> bool {
        !self.running.lock().unwrap_or_else(|e| e.into_inner()).contains(name)
    }

    fn spawn_supervised<F>(
        &self,
        name: &str,
        component: &str,
        policy: OnFailure,
        mut make: impl FnMut() -> Option<F> + Send + 'static,
    ) where
        F: Future<Output = ()> + Send + 'static,
    {
        let running = self.running.clone();
        running.lock().unwrap_or_else(|e| e.into_inner()).insert(name.to_string());
        let (name, component) = (name.to_string(), component.to_string());
        let (reports, cancel) = (self.reports.clone(), self.cancel.clone());
        self.tracker.spawn(async move {
            let mut in_a_row = 0;
            while let Some(task) = make() {
                let started = tokio::time::Instant::now();
                let message = match tokio::spawn(task).await {
                    Ok(()) if policy != OnFailure::Shutdown || cancel.is_cancelled() => break,
                    Ok(()) => "it ended before shutdown".to_string(),
                    Err(error) if error.is_panic() => format!("panicked: {}", panic_message(error.into_panic())),
                    Err(_) => break,
                };
                if cancel.is_cancelled() {
                    tracing::error!(task = %name, "task failed during shutdown: {message}");
                    break;
                }
                if started.elapsed() >= HEALTHY_RUN {
                    in_a_row = 0;
                }
                in_a_row += 1;
                let restarting = match policy {
                    OnFailure::Restart => in_a_row <= MAX_RESTARTS,
                    OnFailure::RestartAlways => true,
                    OnFailure::Shutdown => false,
                };
                tracing::error!(task = %name, restarting, "task failed: {message}");
                let failed = TaskReport::Failed {
                    task: name.clone(),
                    component: component.clone(),
                    message: format!("task {name:?} {message}"),
                    restarting,
                };
                let _ = reports.send(failed);
                if !restarting {
                    break;
                }
                tokio::select! {
                    _ = cancel.cancelled() => break,
                    _ = tokio::time::sleep((FIRST_RESTART_DELAY * 2u32.pow(in_a_row.min(16) - 1)).min(AUXILIARY_MAX_DELAY)) => {}
                }
                tracing::warn!(task = %name, "task restarted");
                let _ = reports.send(TaskReport::Restarted { task: name.clone(), component: component.clone() });
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_reported_and_restarted_and_a_critical_one_is_not() {
        let (tx, mut reports) = mpsc::unbounded_channel();
        let tasks = Tasks::new(tx, CancellationToken::new());
        let mut attempts = 0;
        tasks.spawn_restarting("feed", "feed", move || {
            attempts += 1;
            let attempt = attempts;
            async move {
                if attempt == 1 {
                    panic!("boom");
                }
            }
        });
        let failed = reports.recv().await.unwrap();
        assert_eq!(
            failed,
            TaskReport::Failed {
                task: "feed".into(),
                component: "feed".into(),
                message: "task \"feed\" panicked: boom".into(),
                restarting: true
            }
        );
        assert_eq!(
            reports.recv().await.unwrap(),
            TaskReport::Restarted { task: "feed".into(), component: "feed".into() }
        );
        tasks.spawn_critical("engine", "engine", async {});
        match reports.recv().await.unwrap() {
            TaskReport::Failed { task, message, restarting: false, .. } => {
                assert_eq!(task, "engine");
                assert!(message.contains("ended before shutdown"), "{message}");
            }
            other => panic!("expected the engine's failure, got {other:?}"),
        }
    }
}
