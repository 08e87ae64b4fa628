//! The supervisor loop: discovers `strategies/*.rhai`, starts each on its own
//! thread, applies hot reloads (the runtime keeps the old version when the
//! new one does not compile), restarts failed strategies with exponential
//! backoff, quarantines crash loops until the file changes, and runs the
//! strategy phases of the ordered shutdown.

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};

use super::engine::{EngineRequest, Runtimes, publish_log};
use super::status::{StrategyState, StrategyStatus};
use super::{Control, ControlError, ControlReply};
use crate::activity::{ActivityBus, ActivityKind};
use crate::config::{Config, ShutdownPolicy};
use crate::data::{MarketHub, TimedCandle, Timeframe};
use crate::model::AccountView;
use crate::script::{ScriptOptions, ScriptStrategy};
use crate::store::{StoreReader, StoreWriter, WriteOp};
use crate::strategy::live::{
    self, CommandSink, ExitReason, RuntimeHandle, RuntimeReport, RuntimeSpec, StateSink, TaggedReport,
};
use crate::strategy::{LogLevel, OrderIds, StrategyCommand, StrategyError, StrategyMeta};

/// How long shutdown waits for a live exchange to confirm cancels and closing fills.
const POLICY_SETTLE: std::time::Duration = std::time::Duration::from_secs(5);
/// A run that lasted this long resets the restart counter.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub(super) struct Slot {
    file: PathBuf,
    hash: u64,
    source: String,
    handle: Option<Arc<RuntimeHandle>>,
    generation: u64,
    state: StrategyState,
    version: u32,
    reloads: u32,
    restarts: u32,
    restarts_in_a_row: u32,
    started_at: Instant,
    last_error: Option<StrategyError>,
    saved_state: Option<serde_json::Value>,
    /// The file is gone; the slot is dropped once the runtime has exited.
    deleted: bool,
    /// API reload requests waiting for the runtime's answer.
    pending_reloads: Vec<ControlReply<u32>>,
    /// Why a user stopped it: it stays stopped (across file changes and
    /// restarts of the host) until a user starts it again.
    stopped_by_user: Option<String>,
    /// What of its market it cannot get (idle when it can never trade).
    gap: Option<MarketGap>,
}

/// Everything the supervisor loop needs.
pub struct Supervisor {
    pub(super) config: Arc<Config>,
    pub(super) dir: PathBuf,
    pub(super) slots: BTreeMap<String, Slot>,
    pub(super) runtimes: Runtimes,
    pub(super) statuses: Arc<ArcSwap<Vec<StrategyStatus>>>,
    pub(super) control: mpsc::UnboundedSender<Control>,
    pub(super) reports_tx: mpsc::UnboundedSender<TaggedReport>,
    pub(super) reports: mpsc::UnboundedReceiver<TaggedReport>,
    pub(super) engine: mpsc::UnboundedSender<EngineRequest>,
    pub(super) activity: ActivityBus,
    pub(super) hub: Arc<Mutex<MarketHub>>,
    pub(super) account: Arc<ArcSwap<AccountView>>,
    pub(super) id_counter: Arc<AtomicU64>,
    pub(super) feed_symbols: Vec<String>,
    pub(super) shutting_down: bool,
    pub(super) scanned: bool,
    pub(super) tasks: super::tasks::Tasks,
    pub(super) store: StoreWriter,
    pub(super) reader: StoreReader,
    pub(super) metrics: Arc<crate::health::Metrics>,
    /// States restored from the store, taken by each strategy's first start.
    pub(super) stored_states: BTreeMap<String, serde_json::Value>,
    /// The run's clock.
    pub(super) clock: crate::clock::Clock,
    /// Strategies a user stopped (from the store), with the reason.
    pub(super) stopped_by_user: BTreeMap<String, String>,
    pub(super) cancel: tokio_util::sync::CancellationToken,
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// Reads the `*.rhai` files of a folder: name → (path, source). Files that are
/// empty right now (an editor mid-save) are left out of this scan.
pub fn scan(dir: &Path) -> std::io::Result<BTreeMap<String, (PathBuf, String)>> {
    let mut found = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let Some(stem) = path.file_stem().and_then(|s| s.to_str()) else { continue };
        if stem.starts_with('.') || path.extension().and_then(|e| e.to_str()) != Some("rhai") || !path.is_file() {
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(source) if source.trim().is_empty() => {
                tracing::debug!(file = %path.display(), "empty file: waiting for the save to finish");
                found.insert(stem.to_string(), (path, String::new()));
            }
            Ok(source) => {
                found.insert(stem.to_string(), (path, source));
            }
            Err(error) => tracing::warn!(file = %path.display(), "cannot read strategy: {error}"),
        }
    }
    Ok(found)
}

impl Supervisor {
    /// Handles a control message; returns false once shutdown was requested.
    pub(super) fn handle_control(&mut self, control: Control) -> bool {
        match control {
            Control::Rescan => self.rescan(),
            Control::RestartDue { name, generation } => {
                let due = self.slots.get(&name).is_some_and(|s| {
                    s.generation == generation
                        && s.handle.is_none()
                        && s.state == StrategyState::Starting
                        && s.stopped_by_user.is_none()
                });
                if due && !self.shutting_down {
                    self.slots.get_mut(&name).expect("checked").restarts += 1;
                    self.start(&name);
                }
            }
            Control::Start(name, reply) => {
                let result = match self.slots.get_mut(&name) {
                    None => Err(ControlError::UnknownStrategy(name.clone())),
                    Some(slot) if slot.handle.is_some() => {
                        Err(ControlError::Conflict(format!("strategy {name} is already running")))
                    }
                    Some(slot) => {
                        slot.restarts_in_a_row = 0;
                        if slot.stopped_by_user.take().is_some() {
                            self.store
                                .submit(vec![WriteOp::StrategyStopped { strategy: name.clone(), reason: None }], None);
                        }
                        self.start(&name);
                        Ok(())
                    }
                };
                let _ = reply.send(result);
            }
            Control::Stop(name, reply) => match self.slots.get_mut(&name) {
                None => drop(reply.send(Err(ControlError::UnknownStrategy(name.clone())))),
                Some(slot) if slot.stopped_by_user.is_some() => {
                    drop(reply.send(Err(ControlError::Conflict(format!("strategy {name} is already stopped")))))
                }
                Some(slot) if slot.handle.is_none() && slot.state == StrategyState::Stopped => {
                    drop(reply.send(Err(ControlError::Conflict(format!("strategy {name} is not running")))))
                }
                Some(slot) => {
                    match &slot.handle {
                        Some(handle) => handle.stop(),
                        // Waiting for a restart, failed or quarantined: it stays down.
                        None => slot.state = StrategyState::Stopped,
                    }
                    let at = self.clock.now().format("%Y-%m-%d %H:%M:%S UTC");
                    let reason = format!("stopped by a user at {at}");
                    tracing::info!(strategy = %name, "{reason}; it stays stopped until started again");
                    slot.stopped_by_user = Some(reason.clone());
                    // Answered once durable: a stop that was acknowledged survives a crash.
                    let op = WriteOp::StrategyStopped { strategy: name.clone(), reason: Some(reason) };
                    self.store.submit(
                        vec![op],
                        Some(Box::new(move |result| {
                            let _ = reply.send(result.map_err(|e| {
                                ControlError::Conflict(format!("stopped, but not recorded durably: {e}"))
                            }));
                        })),
                    );
                }
            },
            Control::Reload(name, reply) => self.reload(&name, reply),
            Control::Shutdown(_) => return false,
        }
        self.publish();
        true
    }

    fn rescan(&mut self) {
        tracing::debug!(dir = %self.dir.display(), "scanning the strategies folder");
        let first = !self.scanned;
        self.scanned = true;
        let found = match scan(&self.dir) {
            Ok(found) => found,
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), "cannot read the strategies folder: {error}");
                return;
            }
        };
        let removed: Vec<String> = self
            .slots
            .iter()
            .filter(|(name, slot)| !slot.deleted && !found.contains_key(*name))
            .map(|(n, _)| n.clone())
            .collect();
        for name in removed {
            tracing::info!(strategy = %name, "strategy file deleted: stopping it");
            let slot = self.slots.get_mut(&name).expect("listed");
            self.activity.publish(
                ActivityKind::Strategy,
                Some(&name),
                json!({ "event": "removed", "file": slot.file }),
            );
            if slot.stopped_by_user.take().is_some() {
                // A stop applies to the strategy's file; a new file of that name starts afresh.
                self.store.submit(vec![WriteOp::StrategyStopped { strategy: name.clone(), reason: None }], None);
            }
            match &slot.handle {
                Some(handle) => {
                    handle.stop();
                    slot.deleted = true;
                }
                None => {
                    self.slots.remove(&name);
                }
            }
        }
        if first {
            for name in self.config.strategies.overrides.keys().filter(|n| !found.contains_key(*n)) {
                tracing::warn!(
                    "`strategies.overrides.{name}` names no strategy in {} (yet): check the spelling; it applies if {name}.rhai appears",
                    self.dir.display()
                );
            }
        }
        for (name, (file, source)) in found {
            if source.is_empty() {
                continue;
            }
            let hash = hash_of(&source);
            if let Some(slot) = self.slots.get_mut(&name) {
                slot.deleted = false;
            }
            match self.slots.get_mut(&name) {
                Some(slot) if slot.hash == hash => {}
                Some(slot) => {
                    slot.hash = hash;
                    slot.source = source.clone();
                    match (&slot.handle, slot.state) {
                        (Some(handle), StrategyState::Running | StrategyState::Idle) => handle.reload(source),
                        (Some(_), _) => {} // still starting: the new source applies at its next start
                        (None, _) if slot.stopped_by_user.is_some() => {
                            tracing::info!(strategy = %name, "file changed; the strategy stays stopped until a user starts it");
                        }
                        (None, _) => {
                            slot.restarts_in_a_row = 0;
                            if slot.state == StrategyState::Quarantined {
                                tracing::info!(strategy = %name, "file changed: leaving quarantine");
                            }
                            self.start(&name);
                        }
                    }
                }
                None => {
                    let slot = Slot {
                        file,
                        hash,
                        source,
                        handle: None,
                        generation: 0,
                        state: StrategyState::Stopped,
                        version: 0,
                        reloads: 0,
                        restarts: 0,
                        restarts_in_a_row: 0,
                        started_at: Instant::now(),
                        last_error: None,
                        saved_state: self.stored_states.remove(&name),
                        deleted: false,
                        pending_reloads: Vec::new(),
                        stopped_by_user: self.stopped_by_user.remove(&name),
                        gap: None,
                    };
                    if let Some(reason) = &slot.stopped_by_user {
                        tracing::info!(strategy = %name, "not starting it: {reason} (start it from the dashboard or the API)");
                        self.slots.insert(name.clone(), slot);
                        continue;
                    }
                    self.slots.insert(name.clone(), slot);
                    if self.config.strategy_override(&name).and_then(|o| o.enabled) == Some(false) {
                        tracing::info!(strategy = %name, "disabled in the config file: not starting it");
                        continue;
                    }
                    self.start(&name);
                }
            }
        }
    }

    /// Re-reads a running strategy's file and hot-reloads it; the reply comes with the runtime's answer.
    fn reload(&mut self, name: &str, reply: ControlReply<u32>) {
        let Some(slot) = self.slots.get_mut(name) else {
            let _ = reply.send(Err(ControlError::UnknownStrategy(name.to_string())));
            return;
        };
        let Some(handle) =
            slot.handle.clone().filter(|_| matches!(slot.state, StrategyState::Running | StrategyState::Idle))
        else {
            let _ = reply.send(Err(ControlError::Conflict(format!("strategy {name} is not running"))));
            return;
        };
        match std::fs::read_to_string(&slot.file) {
            Ok(source) if !source.trim().is_empty() => {
                slot.hash = hash_of(&source);
                slot.source = source.clone();
                slot.pending_reloads.push(reply);
                handle.reload(source);
            }
            Ok(_) => drop(reply.send(Err(ControlError::Rejected(format!("{} is empty", slot.file.display()))))),
            Err(error) => {
                drop(reply.send(Err(ControlError::Rejected(format!("cannot read {}: {error}", slot.file.display())))))
            }
        }
    }

    fn start(&mut self, name: &str) {
        if self.shutting_down {
            return;
        }
        let Some(slot) = self.slots.get_mut(name) else { return };
        slot.generation += 1;
        slot.state = StrategyState::Starting;
        slot.started_at = Instant::now();
        let overrides = self.config.strategy_override(name).map(|o| o.params.clone()).unwrap_or_default();
        let options = ScriptOptions {
            limits: self.config.sandbox.clone(),
            param_overrides: overrides,
            default_symbols: self.feed_symbols.clone(),
        };
        let file = slot.file.display().to_string();
        let source = slot.source.clone();
        let hub = self.hub.clone();
        let reader = self.reader.clone();
        let spec = RuntimeSpec {
            clock: self.clock.clone(),
            name: name.to_string(),
            generation: slot.generation,
            factory: Box::new(move |env| ScriptStrategy::new(&file, &source, options, env).map(|s| Box::new(s) as _)),
            history: Box::new(move |meta: &StrategyMeta| warm_up_history(&hub, &reader, meta)),
            initial_state: slot.saved_state.clone(),
            account: self.account.clone(),
            ids: OrderIds::new(name, self.id_counter.clone()),
            sink: command_sink(self.engine.clone(), self.activity.clone()),
            reports: self.reports_tx.clone(),
            max_consecutive_errors: self.config.supervisor.max_consecutive_errors,
            queue_limit: self.config.supervisor.event_queue,
            state_sink: Some(state_sink(self.store.clone())),
            state_flush_ms: self.config.store.state_flush_ms,
            callback_latency: Some(self.metrics.callback_histogram(name)),
            replay: Some(fill_replay(self.reader.clone(), name)),
        };
        match live::spawn(spec) {
            Ok(handle) => {
                let handle = Arc::new(handle);
                slot.handle = Some(handle.clone());
                let mut map = HashMap::clone(&self.runtimes.load());
                map.insert(name.to_string(), handle.clone());
                self.runtimes.store(Arc::new(map));
                handle.release();
            }
            Err(error) => {
                slot.state = StrategyState::Failed;
                slot.last_error = Some(StrategyError::new(format!("cannot start a thread: {error}")));
            }
        }
    }

    fn unregister(&self, name: &str) {
        let mut map = HashMap::clone(&self.runtimes.load());
        map.remove(name);
        self.runtimes.store(Arc::new(map));
    }

    /// Handles a runtime's report.
    pub(super) fn handle_report(&mut self, tagged: TaggedReport) {
        let TaggedReport { name, generation, report } = tagged;
        let Some(slot) = self.slots.get_mut(&name) else { return };
        if slot.generation != generation {
            return;
        }
        let activity = self.activity.clone();
        let event = |event: &str, extra: serde_json::Value| {
            let mut data = json!({ "event": event });
            if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
                data.extend(extra.clone());
            }
            activity.publish(ActivityKind::Strategy, Some(&name), data);
        };
        match report {
            RuntimeReport::Started => {
                slot.state = StrategyState::Running;
                slot.version = slot.version.max(1);
                slot.gap = gap_of(slot, &self.feed_symbols, &self.hub);
                match &slot.gap {
                    None => {
                        tracing::info!(strategy = %name, version = slot.version, "strategy started");
                        event("started", json!({ "version": slot.version }));
                    }
                    Some(gap) if gap.idle => {
                        slot.state = StrategyState::Idle;
                        tracing::warn!(strategy = %name, version = slot.version, "strategy started but idle: {}", gap.reason);
                        event("idle", json!({ "version": slot.version, "reason": gap.reason }));
                    }
                    Some(gap) => {
                        tracing::warn!(strategy = %name, version = slot.version, "strategy started: {}", gap.reason);
                        event("started", json!({ "version": slot.version, "reason": gap.reason }));
                    }
                }
            }
            RuntimeReport::Reloaded => {
                slot.version += 1;
                slot.reloads += 1;
                slot.last_error = None;
                // Symbols or timeframes the new version added are built from now
                // on (without warm-up history: restart the strategy for that).
                if let Some(meta) = slot.handle.as_ref().and_then(|h| h.meta()) {
                    let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
                    for symbol in &meta.symbols {
                        for timeframe in meta.all_timeframes() {
                            let _ = hub.subscribe(symbol, timeframe); // a timeframe it cannot build shows as idle
                        }
                    }
                }
                slot.gap = gap_of(slot, &self.feed_symbols, &self.hub);
                let idle = slot.gap.as_ref().is_some_and(|g| g.idle);
                slot.state = if idle { StrategyState::Idle } else { StrategyState::Running };
                tracing::info!(strategy = %name, version = slot.version, "strategy reloaded");
                event("reloaded", json!({ "version": slot.version }));
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Ok(slot.version));
                }
            }
            RuntimeReport::ReloadRejected(error) => {
                tracing::error!(strategy = %name, "reload rejected, the previous version keeps running: {error}");
                event("reload_rejected", json!({ "error": error.to_string() }));
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Err(ControlError::Rejected(error.to_string())));
                }
                slot.last_error = Some(error);
            }
            RuntimeReport::CallbackFailed { callback, error } => {
                tracing::warn!(strategy = %name, callback, "callback failed: {error}");
                event("callback_failed", json!({ "callback": callback, "error": error.to_string() }));
                slot.last_error = Some(error);
            }
            RuntimeReport::Exited { reason, state } => {
                if state.is_some() {
                    slot.saved_state = state;
                }
                slot.handle = None;
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Err(ControlError::Conflict(format!(
                        "strategy {name} stopped before the reload was applied"
                    ))));
                }
                match reason {
                    ExitReason::Stopped => {
                        slot.state = StrategyState::Stopped;
                        tracing::info!(strategy = %name, "strategy stopped");
                        event("stopped", json!({}));
                    }
                    ExitReason::StartFailed(error) => {
                        slot.state = StrategyState::Failed;
                        tracing::error!(strategy = %name, "strategy cannot start (waiting for the file to change): {error}");
                        event("failed", json!({ "error": error.to_string() }));
                        slot.last_error = Some(error);
                    }
                    ExitReason::Failed(error) if slot.stopped_by_user.is_some() => {
                        // Stopped by a user while failing: it stays stopped, no restart.
                        slot.state = StrategyState::Stopped;
                        tracing::warn!(strategy = %name, "strategy failed while being stopped: {error}");
                        event("stopped", json!({ "error": error.to_string() }));
                        slot.last_error = Some(error);
                    }
                    ExitReason::Failed(error) => {
                        if slot.started_at.elapsed() >= HEALTHY_RUN {
                            slot.restarts_in_a_row = 0;
                        }
                        slot.restarts_in_a_row += 1;
                        slot.last_error = Some(error.clone());
                        let sup = &self.config.supervisor;
                        if slot.restarts_in_a_row > sup.quarantine_after_restarts {
                            slot.state = StrategyState::Quarantined;
                            tracing::error!(strategy = %name, "strategy quarantined after {} failed runs in a row; fix the file to restart it: {error}", slot.restarts_in_a_row);
                            event("quarantined", json!({ "error": error.to_string() }));
                        } else {
                            let exponent = slot.restarts_in_a_row.saturating_sub(1).min(20);
                            let delay_ms = (sup.restart_backoff_initial_ms.saturating_mul(1 << exponent))
                                .min(sup.restart_backoff_max_ms);
                            slot.state = StrategyState::Starting;
                            tracing::warn!(strategy = %name, delay_ms, "strategy failed, restarting after backoff: {error}");
                            event("failed", json!({ "error": error.to_string(), "restart_in_ms": delay_ms }));
                            let control = self.control.clone();
                            let generation = slot.generation;
                            let restart_name = name.clone();
                            let cancel = self.cancel.clone();
                            self.tasks.spawn(&format!("restart timer for {name}"), async move {
                                tokio::select! {
                                    _ = cancel.cancelled() => {}
                                    _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => {
                                        let _ = control.send(Control::RestartDue { name: restart_name, generation });
                                    }
                                }
                            });
                        }
                    }
                }
                self.unregister(&name);
                if self.slots.get(&name).is_some_and(|s| s.deleted) {
                    self.slots.remove(&name);
                }
            }
        }
        self.publish();
    }

    /// Publishes the strategies' status.
    pub(super) fn publish(&self) {
        let statuses = self
            .slots
            .iter()
            .map(|(name, s)| StrategyStatus {
                name: name.clone(),
                file: s.file.display().to_string(),
                state: s.state,
                reason: match s.state {
                    StrategyState::Idle | StrategyState::Running => s.gap.as_ref().map(|g| g.reason.clone()),
                    StrategyState::Stopped => s.stopped_by_user.clone().or_else(|| {
                        (self.config.strategy_override(name).and_then(|o| o.enabled) == Some(false))
                            .then(|| "disabled in the config file (`enabled = false`)".to_string())
                    }),
                    StrategyState::Quarantined => Some("failed too often; change the file or start it".to_string()),
                    StrategyState::Failed => Some("cannot start; waiting for the file to change".to_string()),
                    _ => None,
                },
                version: s.version,
                reloads: s.reloads,
                restarts: s.restarts,
                last_error: s.last_error.clone(),
            })
            .collect();
        self.statuses.store(Arc::new(statuses));
    }

    /// Strategy phases of the ordered shutdown: `on_stop` for every strategy
    /// (bounded; late ones are aborted), then each strategy's policy.
    pub(super) async fn stop_all(&mut self, on_stop_timeout: Duration, abort_grace: Duration) {
        self.shutting_down = true;
        let running: Vec<String> =
            self.slots.iter().filter(|(_, s)| s.handle.is_some()).map(|(n, _)| n.clone()).collect();
        for name in &running {
            if let Some(handle) = &self.slots[name].handle {
                handle.stop();
            }
        }
        let deadline = tokio::time::Instant::now() + on_stop_timeout;
        self.await_exits(deadline).await;
        let late: Vec<String> = self.slots.iter().filter(|(_, s)| s.handle.is_some()).map(|(n, _)| n.clone()).collect();
        if !late.is_empty() {
            tracing::warn!(strategies = ?late, "on_stop did not finish in time: aborting");
            for name in &late {
                if let Some(handle) = &self.slots[name].handle {
                    handle.abort();
                }
            }
            self.await_exits(tokio::time::Instant::now() + abort_grace).await;
        }
        let default = self.config.strategies.shutdown_policy;
        let policies: Vec<(String, ShutdownPolicy)> = self
            .slots
            .keys()
            .map(|name| {
                (name.clone(), self.config.strategy_override(name).and_then(|o| o.shutdown_policy).unwrap_or(default))
            })
            .collect();
        let (reply, done) = oneshot::channel();
        if self.engine.send(EngineRequest::ApplyPolicies(policies.clone(), reply)).is_ok() {
            let _ = done.await;
        }
        // A live exchange answers later: wait (bounded) until the cancels and
        // closing fills are recorded, so the store and the log show them.
        let settle = tokio::time::Instant::now() + POLICY_SETTLE;
        let settled = |account: &crate::model::AccountView| {
            policies.iter().all(|(name, policy)| match policy {
                ShutdownPolicy::Leave => true,
                ShutdownPolicy::Cancel => account.open_orders_of(name, None).next().is_none(),
                ShutdownPolicy::Flatten => {
                    account.open_orders_of(name, None).next().is_none()
                        && account.positions.get(name).is_none_or(|p| p.values().all(|p| p.size.is_zero()))
                }
            })
        };
        while !settled(&self.account.load()) {
            if tokio::time::Instant::now() >= settle {
                tracing::warn!(
                    "shutdown policies not confirmed by the exchange within {POLICY_SETTLE:?}; the next start reconciles them"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn await_exits(&mut self, deadline: tokio::time::Instant) {
        while self.slots.values().any(|s| s.handle.is_some()) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.handle_report(report),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// True once the first scan is done and no strategy is still starting.
    pub(super) fn initial_start_done(&self) -> bool {
        self.scanned && self.slots.values().all(|s| s.state != StrategyState::Starting)
    }

    /// Names of strategies whose threads are still running.
    pub(super) fn still_running(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.handle.as_ref().is_some_and(|h| !h.is_finished()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Candles a strategy starts with, of every timeframe it reads: what the
/// feed has, preceded by candles stored by earlier runs when the feed's own
/// history is short.
fn warm_up_history(hub: &Mutex<MarketHub>, store: &StoreReader, meta: &StrategyMeta) -> Vec<TimedCandle> {
    let mut out = Vec::new();
    for symbol in &meta.symbols {
        for timeframe in meta.all_timeframes() {
            let subscribed = hub.lock().unwrap_or_else(|e| e.into_inner()).subscribe(symbol, timeframe);
            let live = match subscribed {
                Ok(live) => live,
                Err(error) => {
                    tracing::warn!(symbol, "{error}");
                    continue;
                }
            };
            if live.len() < WARM_UP_CANDLES {
                let first = live.first().map_or(i64::MAX, |c| c.time);
                match store.candles(symbol, &timeframe.to_string(), WARM_UP_CANDLES - live.len()) {
                    Ok(stored) => out.extend(
                        stored.into_iter().filter(|c| c.time < first).map(|candle| TimedCandle { timeframe, candle }),
                    ),
                    Err(error) => tracing::warn!(symbol, "stored candles unavailable for warm-up: {error}"),
                }
            }
            out.extend(live.into_iter().map(|candle| TimedCandle { timeframe, candle }));
        }
    }
    out
}

/// What of its market a strategy cannot get from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketGap {
    /// `no market data for SOLUSD (the market provides BTCUSD, ETHUSD)`.
    pub reason: String,
    /// True when it can never trade (idle); false when it still trades some symbols.
    pub idle: bool,
}

/// What a strategy lacks of the market: symbols the feed does not provide,
/// or a timeframe the feed's `base` bars cannot make (when the base is known).
pub fn market_gap(meta: &StrategyMeta, feed_symbols: &[String], base: Option<Timeframe>) -> Option<MarketGap> {
    if let Some(base) = base
        && let Some(tf) = meta.all_timeframes().find(|tf| tf.ms() % base.ms() != 0)
    {
        // Its own timeframe missing: no on_candle ever; another one: those reads stay empty.
        let reason =
            format!("timeframe {tf} cannot be built from the market's {base} bars (it must be a whole multiple)");
        return Some(MarketGap { reason, idle: tf == meta.timeframe });
    }
    let missing: Vec<&str> = meta.symbols.iter().filter(|s| !feed_symbols.contains(s)).map(String::as_str).collect();
    if missing.is_empty() {
        return None;
    }
    let trades: Vec<&str> = meta.symbols.iter().filter(|s| feed_symbols.contains(s)).map(String::as_str).collect();
    let mut reason =
        format!("no market data for {} (the market provides {})", missing.join(", "), feed_symbols.join(", "));
    if !trades.is_empty() {
        reason.push_str(&format!("; it trades {} only", trades.join(", ")));
    }
    Some(MarketGap { reason, idle: trades.is_empty() })
}

/// What the strategy of a running slot lacks of the market, if anything.
fn gap_of(slot: &Slot, feed_symbols: &[String], hub: &Mutex<MarketHub>) -> Option<MarketGap> {
    let meta = slot.handle.as_ref()?.meta()?;
    let base = hub.lock().unwrap_or_else(|e| e.into_inner()).base();
    market_gap(&meta, feed_symbols, Some(base))
}

/// Candles of history a strategy should start with, per symbol.
const WARM_UP_CANDLES: usize = 500;

/// The stored fills of a strategy after the last one its saved state
/// reflects; without a saved state, nothing (it starts from the newest fill).
fn fill_replay(reader: crate::store::StoreReader, name: &str) -> live::FillReplay {
    let name = name.to_string();
    Box::new(move |through: Option<u64>| {
        let result = match through {
            Some(through) => reader
                .fills_after(through)
                .map(|fills| (through, fills.into_iter().filter(|f| f.strategy == name).collect::<Vec<_>>())),
            None => reader.recent_fills(1).map(|last| (last.first().map_or(0, |f| f.id), Vec::new())),
        };
        result.unwrap_or_else(|error| {
            tracing::error!(strategy = %name, "cannot read fills to replay: {error}");
            (through.unwrap_or(0), Vec::new())
        })
    })
}

/// Writes a strategy's changed state to the store (not awaited: the bounded
/// delay and the final write at stop make it durable; the shutdown flush waits).
fn state_sink(store: StoreWriter) -> StateSink {
    Arc::new(move |strategy: &str, state: serde_json::Value| {
        store.submit(vec![WriteOp::StrategyState { strategy: strategy.to_string(), state }], None);
    })
}

/// Routes a strategy's commands: orders to the engine, logs and
/// notifications to tracing and the activity bus.
fn command_sink(engine: mpsc::UnboundedSender<EngineRequest>, activity: ActivityBus) -> CommandSink {
    Arc::new(move |strategy: &str, commands: Vec<StrategyCommand>| {
        let mut orders = Vec::new();
        for command in commands {
            match command {
                StrategyCommand::Log { level, message } => publish_log(&activity, strategy, level, &message),
                StrategyCommand::Notify(message) => {
                    tracing::info!(strategy = %strategy, "notify: {message}");
                    activity.publish(
                        ActivityKind::Log,
                        Some(strategy),
                        json!({ "level": "notify", "message": message }),
                    );
                }
                StrategyCommand::Heartbeat => {
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "heartbeat": true }));
                }
                StrategyCommand::HealthReport { key, value } => {
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "key": key, "value": value }));
                }
                StrategyCommand::Degraded(reason) => {
                    publish_log(&activity, strategy, LogLevel::Warn, &format!("degraded: {reason}"));
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "degraded": reason }));
                }
                order => orders.push(order),
            }
        }
        if !orders.is_empty() {
            let _ = engine.send(EngineRequest::Commands { strategy: strategy.to_string(), commands: orders });
        }
    })
}
