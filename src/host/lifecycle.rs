//! The lifecycle loop: answers control messages through the supervisor,
//! hears strategy and task reports, starts the market feed once the first
//! strategies run, watches readiness, and runs the ordered shutdown with a
//! deadline: gate → `on_stop` → shutdown policies → flush → close feed → done.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tasks::{TaskReport, Tasks};
use super::venue::Market;
use crate::activity::{ActivityBus, ActivityKind};
use crate::config::Config;
use crate::control::{Control, ShutdownReason};
use crate::exchange::MarketEvent;
use crate::execution::Runtimes;
use crate::feed;
use crate::health::{ComponentState, Health, Metrics};
use crate::store::{Store, StoreWriter};
use crate::supervisor::Supervisor;

/// How long the live feed waits for the first strategies to start.
const FEED_START_WAIT: Duration = Duration::from_secs(10);

/// The market feed, until it starts.
pub(super) struct PendingFeed {
    /// Where market data comes from.
    pub market: Market,
    /// Where it goes (the engine).
    pub tx: mpsc::Sender<MarketEvent>,
    /// Ends it at shutdown.
    pub cancel: CancellationToken,
    /// Health of the exchange's market stream.
    pub health: Arc<Health>,
    /// Reconnect counters.
    pub metrics: Arc<Metrics>,
}

impl PendingFeed {
    /// Spawns the feed task, restarted after a panic (it holds no order state;
    /// a synthetic or replay feed continues where it was).
    fn spawn(self, tasks: &Tasks, faults: &crate::config::Faults) {
        let PendingFeed { market, tx, cancel, health, metrics } = self;
        let faults = faults.clone();
        match market {
            Market::Feed(source) => {
                let source = Arc::new(tokio::sync::Mutex::new(source));
                tasks.spawn_restarting("market feed", "feed", move || {
                    let (source, tx, cancel, faults) = (source.clone(), tx.clone(), cancel.clone(), faults.clone());
                    async move {
                        let mut source = source.lock().await;
                        faults.feed_step();
                        feed::run(&mut source, tx, cancel).await
                    }
                });
            }
            Market::Delta(connector) => {
                tasks.spawn_restarting("market feed", "feed", move || {
                    faults.feed_step();
                    connector.clone().run_market(tx.clone(), health.clone(), metrics.clone(), cancel.clone())
                });
            }
        }
    }
}

/// What the lifecycle loop owns.
pub(super) struct Lifecycle {
    pub config: Arc<Config>,
    pub control_rx: mpsc::UnboundedReceiver<Control>,
    pub task_reports: mpsc::UnboundedReceiver<TaskReport>,
    pub watcher: super::watcher::StrategiesWatcher,
    pub tasks: Tasks,
    /// Fires when shutdown begins: failing tasks are no longer restarted.
    pub shutdown: CancellationToken,
    pub tasks_cancel: CancellationToken,
    pub engine_cancel: CancellationToken,
    pub runtimes: Runtimes,
    pub activity: ActivityBus,
    pub feed: Option<PendingFeed>,
    pub store: Store,
    pub writer: StoreWriter,
    pub health: Arc<Health>,
    /// Stops the Telegram bot (after the feed, before HTTP).
    pub telegram_cancel: CancellationToken,
    pub http_cancel: CancellationToken,
    /// Watches the model files while the host runs.
    pub _models_watcher: super::models::ModelsWatcher,
}

impl Lifecycle {
    fn start_feed(&mut self) {
        if let Some(feed) = self.feed.take() {
            feed.spawn(&self.tasks, &self.config.faults);
            self.health.set("strategies", ComponentState::Up);
            self.health.set("feed", ComponentState::Up);
        }
    }

    /// Marks a failed task's component down (or up again once restarted),
    /// logs and publishes it; a failure that is not restarted shuts the host down.
    fn handle_task_report(&self, report: TaskReport) -> Option<ShutdownReason> {
        match report {
            TaskReport::Failed { task, component, message, restarting } => {
                self.health.set_down(&component, &message);
                let action = if restarting { "restart" } else { "shutdown" };
                self.activity.publish(
                    ActivityKind::System,
                    None,
                    json!({ "event": "task_failed", "task": task, "component": component, "message": message, "action": action }),
                );
                (!restarting).then_some(ShutdownReason::Fatal(message))
            }
            TaskReport::Restarted { task, component } => {
                self.health.set(&component, ComponentState::Up);
                self.activity.publish(
                    ActivityKind::System,
                    None,
                    json!({ "event": "task_restarted", "task": task, "component": component }),
                );
                None
            }
        }
    }

    /// The supervisor loop, then the ordered shutdown; returns the exit code.
    pub async fn run(mut self, mut supervisor: Supervisor) -> i32 {
        let feed_wait = tokio::time::sleep(FEED_START_WAIT);
        tokio::pin!(feed_wait);
        let ready_deadline = tokio::time::sleep(Duration::from_millis(self.config.http.ready_timeout_ms));
        tokio::pin!(ready_deadline);
        let mut awaiting_ready = true;
        // Readiness can change without a message (exchange streams coming up): look often until ready.
        let mut ready_poll = tokio::time::interval(Duration::from_millis(50));
        let reason = loop {
            tokio::select! {
                _ = ready_poll.tick(), if awaiting_ready => {}
                control = self.control_rx.recv() => match control {
                    Some(Control::Shutdown(reason)) => break reason,
                    Some(control) => { supervisor.handle_control(control); }
                    None => break ShutdownReason::Fatal("control channel closed".into()),
                },
                Some(report) = self.task_reports.recv() => {
                    if let Some(reason) = self.handle_task_report(report) {
                        break reason;
                    }
                }
                Some(report) = supervisor.next_report() => supervisor.handle_report(report),
                _ = &mut feed_wait, if self.feed.is_some() => {
                    tracing::warn!("strategies still starting after {FEED_START_WAIT:?}: starting the market feed anyway");
                    self.start_feed();
                }
                _ = &mut ready_deadline, if awaiting_ready => {
                    awaiting_ready = false;
                    let late = self.health.not_ready();
                    if !late.is_empty() {
                        let message = format!("not ready after {} ms: {}", self.config.http.ready_timeout_ms, late.join(", "));
                        tracing::error!("startup failed: {message}");
                        break ShutdownReason::Fatal(message);
                    }
                }
            }
            if awaiting_ready && self.health.is_serving() {
                awaiting_ready = false;
                tracing::info!("ready");
                super::systemd::ready();
            }
            if self.feed.is_some() && supervisor.initial_start_done() {
                self.start_feed();
            }
        };
        self.shut_down(supervisor, reason).await
    }

    /// The ordered shutdown; returns the exit code.
    async fn shut_down(self, mut supervisor: Supervisor, reason: ShutdownReason) -> i32 {
        tracing::info!(?reason, "shutdown started");
        self.shutdown.cancel();
        self.health.begin_shutdown();
        super::systemd::stopping();
        self.activity.publish(
            ActivityKind::System,
            None,
            json!({ "event": "shutdown_started", "reason": format!("{reason:?}") }),
        );
        let timeout = Duration::from_millis(self.config.shutdown.timeout_ms);
        let deadline = tokio::time::Instant::now() + timeout;
        let watchdog = {
            let runtimes = self.runtimes.clone();
            let names = self.tasks.names();
            tokio::spawn(async move {
                tokio::time::sleep_until(deadline - timeout / 5).await;
                let strategies: Vec<String> = runtimes.load().keys().cloned().collect();
                tracing::warn!(tasks = ?names.lock().unwrap_or_else(|e| e.into_inner()), strategies = ?strategies, "shutdown deadline nears; still running");
            })
        };
        let on_stop = Duration::from_millis(self.config.shutdown.on_stop_timeout_ms);
        let abort_grace = Duration::from_millis(self.config.sandbox.callback_budget_ms + 1_000);
        let sequence = async {
            supervisor.close_gate().await;
            tracing::info!("shutdown: order gate closed");
            supervisor.stop_all(on_stop, abort_grace).await;
            tracing::info!("shutdown: strategies stopped and shutdown policies applied");
            match self.writer.flush().await {
                Ok(()) => tracing::info!("shutdown: store flushed"),
                Err(error) => tracing::error!("shutdown: store flush failed: {error}"),
            }
            self.tasks_cancel.cancel();
            self.engine_cancel.cancel();
            tracing::info!("shutdown: market feed closed");
            self.telegram_cancel.cancel();
            while !self.tasks.ended(super::TELEGRAM_TASK) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            self.http_cancel.cancel();
            self.tasks.close();
            self.tasks.wait().await;
            tracing::info!("shutdown: control API closed");
        };
        let fatal = matches!(reason, ShutdownReason::Fatal(_));
        let code = match tokio::time::timeout_at(deadline, sequence).await {
            Ok(()) if fatal => {
                tracing::info!("shutdown complete after a fatal error");
                1
            }
            Ok(()) => {
                tracing::info!("shutdown complete");
                0
            }
            Err(_) => {
                let names = self.tasks.names();
                let tasks = names.lock().unwrap_or_else(|e| e.into_inner()).clone();
                tracing::error!(?tasks, strategies = ?supervisor.still_running(), "shutdown deadline of {} ms passed", timeout.as_millis());
                1
            }
        };
        watchdog.abort();
        drop(self.watcher);
        self.activity.detach_store();
        let writer = self.writer;
        let _ = tokio::task::spawn_blocking(move || writer.close()).await;
        drop(self.store);
        code
    }
}
