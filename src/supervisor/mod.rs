//! The supervisor loop: discovers `strategies/*.rhai`, starts each on its own
//! thread, applies hot reloads (the runtime keeps the old version when the
//! new one does not compile), restarts failed strategies with exponential
//! backoff, quarantines crash loops until the file changes, and runs the
//! strategy phases of the ordered shutdown.

mod health;
mod market;
mod reports;
mod shutdown;
mod sinks;

use std::collections::{BTreeMap, HashMap};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::mpsc;

use crate::activity::{ActivityBus, ActivityKind};
use crate::clock::Clock;
use crate::config::Config;
use crate::control::{Control, ControlError, ControlReply, StrategyState, StrategyStatus};
use crate::data::MarketHub;
use crate::execution::{EngineRequest, Runtimes};
use crate::health::Metrics;
use crate::health::QueueDepth;
use crate::model::AccountView;
use crate::script::{ScriptOptions, ScriptStrategy};
use crate::store::{StoreReader, StoreWriter, WriteOp};
use crate::strategy::live::{self, RuntimeHandle, RuntimeSpec, TaggedReport};
use crate::strategy::{OrderIds, StrategyError};

pub use market::{MarketGap, WARM_UP_CANDLES, WarmUpSync, market_gap};

/// A run that lasted this long resets the restart counter.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

pub(crate) struct Slot {
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

/// What the host gives the supervisor.
pub struct Parts {
    /// The host's configuration.
    pub config: Arc<Config>,
    /// The running strategies, as the engine routes to them.
    pub runtimes: Runtimes,
    /// Where the strategies' status is published.
    pub statuses: Arc<ArcSwap<Vec<StrategyStatus>>>,
    /// The host's control channel (restart timers send to it).
    pub control: mpsc::UnboundedSender<Control>,
    /// The engine's request queue.
    pub engine: mpsc::Sender<EngineRequest>,
    /// Activity bus.
    pub activity: ActivityBus,
    /// Market history (warm-up).
    pub hub: Arc<Mutex<MarketHub>>,
    /// The account snapshot (shutdown policies wait on it).
    pub account: Arc<ArcSwap<AccountView>>,
    /// Shared order id counter.
    pub id_counter: Arc<AtomicU64>,
    /// Durable writes.
    pub store: StoreWriter,
    /// Reads of the store (warm-up candles, fills to replay).
    pub reader: StoreReader,
    /// Fetches missing warm-up candles from the exchange (hosts on Delta's market).
    pub warm_up: Option<WarmUpSync>,
    /// States restored from the store, taken by each strategy's first start.
    pub stored_states: BTreeMap<String, serde_json::Value>,
    /// Strategies a user stopped (from the store), with the reason.
    pub stopped_by_user: BTreeMap<String, String>,
    /// The run's clock.
    pub clock: Clock,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Fires when shutdown begins (pending restarts are dropped).
    pub cancel: tokio_util::sync::CancellationToken,
    /// The models scripts call and where their records go.
    pub ml: crate::script::ml::MlOptions,
    /// Where each strategy is shown as a component (`strategy.NAME`).
    pub health: Arc<crate::health::Health>,
    /// Where the strategies' `chart::plot` values are kept.
    pub plots: Arc<crate::strategy::plots::PlotBook>,
}

/// The strategy slots and everything they need.
pub struct Supervisor {
    config: Arc<Config>,
    dir: PathBuf,
    slots: BTreeMap<String, Slot>,
    runtimes: Runtimes,
    statuses: Arc<ArcSwap<Vec<StrategyStatus>>>,
    control: mpsc::UnboundedSender<Control>,
    reports_tx: mpsc::UnboundedSender<TaggedReport>,
    reports: mpsc::UnboundedReceiver<TaggedReport>,
    engine: mpsc::Sender<EngineRequest>,
    activity: ActivityBus,
    hub: Arc<Mutex<MarketHub>>,
    account: Arc<ArcSwap<AccountView>>,
    id_counter: Arc<AtomicU64>,
    feed_symbols: Vec<String>,
    shutting_down: bool,
    scanned: bool,
    /// Files ignored for their names (warned about once each).
    ignored: std::collections::HashSet<PathBuf>,
    store: StoreWriter,
    reader: StoreReader,
    warm_up: Option<WarmUpSync>,
    metrics: Arc<Metrics>,
    stored_states: BTreeMap<String, serde_json::Value>,
    clock: Clock,
    stopped_by_user: BTreeMap<String, String>,
    cancel: tokio_util::sync::CancellationToken,
    ml: crate::script::ml::MlOptions,
    health: Arc<crate::health::Health>,
    plots: Arc<crate::strategy::plots::PlotBook>,
}

impl Supervisor {
    /// A supervisor with no strategies yet (the first [`Control::Rescan`] finds them).
    pub fn new(parts: Parts) -> Self {
        let (reports_tx, reports) = mpsc::unbounded_channel();
        Supervisor {
            dir: parts.config.strategies.dir.clone(),
            feed_symbols: parts.config.feed_symbols(),
            config: parts.config,
            slots: BTreeMap::new(),
            runtimes: parts.runtimes,
            statuses: parts.statuses,
            control: parts.control,
            reports_tx,
            reports,
            engine: parts.engine,
            activity: parts.activity,
            hub: parts.hub,
            account: parts.account,
            id_counter: parts.id_counter,
            shutting_down: false,
            scanned: false,
            ignored: Default::default(),
            store: parts.store,
            reader: parts.reader,
            warm_up: parts.warm_up,
            metrics: parts.metrics,
            stored_states: parts.stored_states,
            clock: parts.clock,
            stopped_by_user: parts.stopped_by_user,
            cancel: parts.cancel,
            ml: parts.ml,
            health: parts.health,
            plots: parts.plots,
        }
    }

    /// Hands a request to the engine and forwards its answer to `reply`
    /// (without waiting: the loop goes on).
    fn ask_engine<T: Send + 'static>(
        &self,
        reply: ControlReply<T>,
        make: impl FnOnce(tokio::sync::oneshot::Sender<T>) -> EngineRequest,
    ) {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (engine, request) = (self.engine.clone(), make(answer));
        tokio::spawn(async move {
            let stopped = || ControlError::Conflict("the order engine has stopped".into());
            let result = match engine.send(request).await {
                Ok(()) => answered.await.map_err(|_| stopped()),
                Err(_) => Err(stopped()),
            };
            let _ = reply.send(result);
        });
    }

    /// The next report of a strategy runtime.
    pub async fn next_report(&mut self) -> Option<TaggedReport> {
        self.reports.recv().await
    }
}

fn hash_of(text: &str) -> u64 {
    let mut hasher = DefaultHasher::new();
    text.hash(&mut hasher);
    hasher.finish()
}

/// A strategy file found by [`scan`].
#[derive(Debug, Clone)]
pub struct ScannedFile {
    /// Where it is.
    pub path: PathBuf,
    /// Its text (empty while an editor is mid-save), or why it cannot be read
    /// (not UTF-8, no permission).
    pub source: Result<String, String>,
}

/// What [`scan`] found in the strategies folder.
#[derive(Debug, Default)]
pub struct Scan {
    /// Strategy files by name (file stem).
    pub files: BTreeMap<String, ScannedFile>,
    /// `*.rhai` files whose names are not strategy names (see [`crate::control::valid_strategy_name`]).
    pub ignored: Vec<PathBuf>,
}

/// Reads the `*.rhai` files of a folder.
pub fn scan(dir: &Path) -> std::io::Result<Scan> {
    let mut found = Scan::default();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("rhai") || !path.is_file() {
            continue;
        }
        let stem = path.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        if stem.starts_with('.') {
            continue; // editor and temp files
        }
        if !crate::control::valid_strategy_name(stem) {
            found.ignored.push(path);
            continue;
        }
        let source = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| {
            String::from_utf8(bytes).map_err(|e| {
                format!("the file is not UTF-8 text (invalid byte at offset {})", e.utf8_error().valid_up_to())
            })
        });
        let source = match source {
            Ok(text) if text.trim().is_empty() => {
                tracing::debug!(file = %path.display(), "empty file: waiting for the save to finish");
                Ok(String::new())
            }
            other => other,
        };
        found.files.insert(stem.to_string(), ScannedFile { path, source });
    }
    Ok(found)
}

impl Supervisor {
    /// Handles a control message; returns false once shutdown was requested.
    pub fn handle_control(&mut self, control: Control) -> bool {
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
            Control::SetTrading { strategy, state, reply } => {
                if let Some(name) = strategy.as_ref().filter(|name| !self.slots.contains_key(*name)) {
                    let _ = reply.send(Err(ControlError::UnknownStrategy(name.clone())));
                } else {
                    self.ask_engine(reply, |answer| EngineRequest::SetTrading { strategy, state, reply: answer });
                }
            }
            Control::SetLimits { limits, reply } => {
                let parsed = serde_json::from_value::<crate::risk::Limits>(limits).map_err(|e| e.to_string());
                let problems = parsed.as_ref().map(|l| l.problems()).unwrap_or_default();
                match parsed {
                    Err(error) => drop(reply.send(Err(ControlError::Rejected(format!("bad limits: {error}"))))),
                    Ok(_) if !problems.is_empty() => {
                        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
                        drop(reply.send(Err(ControlError::Rejected(problems.join("; ")))));
                    }
                    Ok(limits) => self.ask_engine(reply, |answer| EngineRequest::SetLimits {
                        limits: Box::new(limits),
                        reply: answer,
                    }),
                }
            }
            Control::Kill { flatten, reply } => {
                self.ask_engine(reply, |answer| EngineRequest::Kill { flatten, reply: answer });
            }
            Control::Shutdown(_) => return false,
        }
        self.publish();
        true
    }

    fn rescan(&mut self) {
        tracing::debug!(dir = %self.dir.display(), "scanning the strategies folder");
        let first = !self.scanned;
        self.scanned = true;
        let scanned = match scan(&self.dir) {
            Ok(found) => found,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                // The folder is gone (the watcher reports it): its strategies are gone too.
                Scan::default()
            }
            Err(error) => {
                tracing::error!(dir = %self.dir.display(), "cannot read the strategies folder: {error}");
                return;
            }
        };
        for path in &scanned.ignored {
            if self.ignored.insert(path.clone()) {
                tracing::warn!(
                    file = ?path.display().to_string(),
                    "ignored: a strategy file's name must be 1 to 64 letters, digits, `_` or `-` followed by .rhai"
                );
            }
        }
        let mut found = BTreeMap::new();
        for (name, file) in scanned.files {
            match file.source {
                Ok(source) => {
                    found.insert(name, (file.path, source));
                }
                Err(error) => {
                    // Unreadable is not deleted: a running version keeps running.
                    self.unreadable(&name, &file.path, &error);
                    found.insert(name, (file.path, String::new()));
                }
            }
        }
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

    /// A strategy file that cannot be read: a rejected reload (the running
    /// version keeps running), reported once per distinct error.
    fn unreadable(&mut self, name: &str, path: &Path, error: &str) {
        let Some(slot) = self.slots.get_mut(name) else {
            tracing::warn!(file = %path.display(), "cannot read strategy: {error}");
            return;
        };
        let message = format!("cannot read {}: {error}", path.display());
        if slot.last_error.as_ref().is_some_and(|e| e.message == message) {
            return;
        }
        let running = if slot.handle.is_some() { "; the running version keeps running" } else { "" };
        tracing::error!(strategy = %name, "reload rejected: {message}{running}");
        self.activity.publish(
            ActivityKind::Strategy,
            Some(name),
            json!({ "event": "reload_rejected", "error": format!("{message}{running}") }),
        );
        slot.last_error = Some(StrategyError::new(message));
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
        let limits = self.config.sandbox_for(name);
        let quotas = crate::strategy::Quotas::new(&limits, self.metrics.quota_hits(name));
        let options = ScriptOptions {
            limits,
            param_overrides: overrides,
            default_symbols: self.feed_symbols.clone(),
            panicking_function: self.config.faults.panicking_function,
            ml: self.ml.clone(),
        };
        let file = slot.file.display().to_string();
        let source = slot.source.clone();
        let hub = self.hub.clone();
        let reader = self.reader.clone();
        let warm_up = self.warm_up.clone();
        let spec = RuntimeSpec {
            clock: self.clock.clone(),
            mode: self.config.exchange.run_mode(),
            name: name.to_string(),
            generation: slot.generation,
            factory: Box::new(move |env| ScriptStrategy::new(&file, &source, options, env).map(|s| Box::new(s) as _)),
            history: Box::new(move |meta: &crate::strategy::StrategyMeta| {
                market::warm_up_history(&hub, &reader, meta, warm_up.as_ref())
            }),
            initial_state: slot.saved_state.clone(),
            account: self.account.clone(),
            ids: OrderIds::new(name, self.id_counter.clone()),
            sink: sinks::command_sink(self.engine.clone(), self.activity.clone(), self.plots.clone()),
            reports: self.reports_tx.clone(),
            max_consecutive_errors: self.config.supervisor.max_consecutive_errors,
            queue_limit: self.config.supervisor.event_queue,
            state_sink: Some(sinks::state_sink(self.store.clone())),
            state_flush_ms: self.config.store.state_flush_ms,
            callback_latency: Some(self.metrics.callback_histogram(name)),
            replay: Some(sinks::fill_replay(self.reader.clone(), name)),
            quotas,
        };
        match live::spawn(spec) {
            Ok(handle) => {
                let handle = Arc::new(handle);
                let weak = Arc::downgrade(&handle);
                let depth = QueueDepth::new(move || weak.upgrade().map_or(0, |h| h.queue_depth()));
                self.metrics.watch_strategy_queue(name, depth, self.config.supervisor.event_queue);
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

    /// Publishes the strategies' status.
    pub(crate) fn publish(&self) {
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
                quota_hits: self.metrics.quota_hits(name).snapshot(),
                queue_depth: 0,
                lagging: false,
                stats: Default::default(),
            })
            .collect();
        self.statuses.store(Arc::new(statuses));
        self.report_health();
    }

    /// True once the first scan is done and no strategy is still starting.
    pub fn initial_start_done(&self) -> bool {
        self.scanned && self.slots.values().all(|s| s.state != StrategyState::Starting)
    }

    /// Names of strategies whose threads are still running.
    pub fn still_running(&self) -> Vec<String> {
        self.slots
            .iter()
            .filter(|(_, s)| s.handle.as_ref().is_some_and(|h| !h.is_finished()))
            .map(|(n, _)| n.clone())
            .collect()
    }
}
