//! The composition root. [`start`] builds the host from a [`Config`]: the
//! store and its recovery, the venue and its market ([`venue`]), the engine
//! (order manager + routing), the strategies folder watcher, the supervisor
//! that owns every strategy, and the HTTP API; then the [`lifecycle`] loop
//! runs it until the ordered shutdown. Every external trigger — file
//! changes, signals, the API — becomes one [`Control`] message. Every task
//! is spawned through [`tasks`], which reports its failures.
//!
//! Channels and what happens when one backs up:
//! - control (edges → lifecycle): unbounded: its senders are sync callbacks
//!   (the file watcher's thread, signals) that cannot wait, at human or
//!   file-event rate;
//! - engine requests (strategies → engine): bounded ([`ENGINE_QUEUE`]); a
//!   strategy thread that gets ahead of the engine blocks on it (back
//!   pressure on that strategy alone); depth in `/metrics`;
//! - market events (feed → engine): bounded (4,096); the feed waits;
//! - task reports (tasks → lifecycle): unbounded: one per failure or restart;
//! - strategy reports (strategy threads → supervisor): unbounded: sent from
//!   strategy threads that must not block on the loop that stops them, a few
//!   per start, reload or exit;
//! - venue commands and updates (engine ↔ Delta connector): unbounded: the
//!   order manager hands orders on from synchronous code and every update
//!   (a fill) must be applied, never dropped; both are as many as the
//!   strategies' own orders;
//! - the strategy event queue, the activity broadcast and the store writer
//!   queue document their policies in `strategy::live`, `activity` and
//!   `store::writer`.

mod equity;
mod health_file;
pub mod history;
mod lifecycle;
mod models;
mod signals;
mod systemd;
mod tasks;
mod venue;
mod watcher;

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::activity::{ActivityBus, ActivityKind};
use crate::config::{Config, ExchangeKind, FeedKind, Secret};
use crate::control::{Control, ShutdownReason, StrategyStatus};
use crate::execution::{ENGINE_COMPONENT, Engine, FEED_COMPONENT, Runtimes};
use crate::health::{ComponentState, Freshness, Health, Metrics};
use crate::model::AccountView;
use crate::script::ml::{MlOptions, RecordTarget};
use crate::store::{Recovered, Retention, Store, StoreError, StoreWriter};
use crate::supervisor::Supervisor;
use lifecycle::{Lifecycle, PendingFeed};

pub use signals::spawn_signal_handler;

/// Capacity of the engine's request queue (strategies' order commands).
pub const ENGINE_QUEUE: usize = 1_024;

/// Why the host could not start.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The strategies folder is missing.
    #[error("`strategies.dir`: {0} does not exist or is not a folder")]
    StrategiesDir(PathBuf),
    /// The data folder cannot be created.
    #[error("`data_dir`: cannot create {path}: {source}")]
    DataDir {
        /// Folder.
        path: PathBuf,
        /// Reason.
        source: std::io::Error,
    },
    /// The replay file cannot be used.
    #[error("`feed.replay.path`: {0}")]
    Replay(#[from] crate::feed::csv::CsvError),
    /// The store cannot be opened.
    #[error("{0}")]
    Store(#[from] StoreError),
    /// The stored state cannot be restored.
    #[error("recovery failed: {0}")]
    Recovery(String),
    /// The control API address cannot be bound.
    #[error("`http.bind`: cannot listen on {addr}: {message}")]
    Bind {
        /// Address.
        addr: std::net::SocketAddr,
        /// Reason.
        message: String,
    },
    /// The exchange connector could not start.
    #[error("exchange: {0}")]
    Exchange(#[from] crate::delta::ConnectError),
    /// The Telegram bot cannot start (no token).
    #[error("telegram: {0}")]
    Telegram(#[from] crate::telegram::TelegramError),
    /// A model in `[ml.models]` cannot be loaded or watched.
    #[error("bad model:\n{0}")]
    Models(String),
    /// The strategies folder cannot be watched.
    #[error("cannot watch the strategies folder {path}: {message}")]
    Watch {
        /// Folder.
        path: PathBuf,
        /// Reason.
        message: String,
    },
}

impl HostError {
    /// Exit code: 2 for configuration problems, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            HostError::StrategiesDir(_)
            | HostError::Replay(_)
            | HostError::DataDir { .. }
            | HostError::Bind { .. }
            | HostError::Telegram(_)
            | HostError::Models(_) => 2,
            HostError::Store(error) => error.exit_code(),
            HostError::Exchange(crate::delta::ConnectError::Rest(_)) => 1,
            HostError::Exchange(_) => 2,
            HostError::Watch { .. } | HostError::Recovery(_) => 1,
        }
    }
}

/// A cheap handle to a running host.
pub struct HostHandle {
    control: mpsc::UnboundedSender<Control>,
    activity: ActivityBus,
    statuses: Arc<ArcSwap<Vec<StrategyStatus>>>,
    account: Arc<ArcSwap<AccountView>>,
    health: Arc<Health>,
    http_addr: std::net::SocketAddr,
    token: Secret,
    done: JoinHandle<i32>,
}

impl HostHandle {
    /// Sends a control message.
    pub fn control(&self) -> mpsc::UnboundedSender<Control> {
        self.control.clone()
    }

    /// Starts the ordered shutdown.
    pub fn shutdown(&self, reason: ShutdownReason) {
        let _ = self.control.send(Control::Shutdown(reason));
    }

    /// The activity bus.
    pub fn activity(&self) -> &ActivityBus {
        &self.activity
    }

    /// Current status of every strategy.
    pub fn strategies(&self) -> Vec<StrategyStatus> {
        self.statuses.load().as_ref().clone()
    }

    /// Current account snapshot.
    pub fn account(&self) -> Arc<AccountView> {
        self.account.load_full()
    }

    /// Component readiness.
    pub fn health(&self) -> &Health {
        &self.health
    }

    /// The address the control API listens on.
    pub fn http_addr(&self) -> std::net::SocketAddr {
        self.http_addr
    }

    /// The API bearer token.
    pub fn api_token(&self) -> &Secret {
        &self.token
    }

    /// Waits for the host to finish; returns the process exit code.
    pub async fn wait(self) -> i32 {
        self.done.await.unwrap_or(1)
    }
}

/// Starts the host. Must be called inside a tokio runtime.
pub async fn start(config: Config) -> Result<HostHandle, HostError> {
    let config = Arc::new(config);
    let dir = config.strategies.dir.clone();
    if !dir.is_dir() {
        return Err(HostError::StrategiesDir(dir));
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| HostError::DataDir { path: config.data_dir.clone(), source })?;
    let health = Arc::new(Health::default());
    for component in COMPONENTS {
        health.register(component);
    }
    let metrics = Arc::new(Metrics::default());
    let models = models::load(&config.ml, &health).await?;
    let rendered = models.clone();
    metrics.add_section(move |out| rendered.render_metrics(out));
    let store = Store::open(&config.data_dir)?;
    store.claim_account(config.exchange.run_mode())?;
    let listener = tokio::net::TcpListener::bind(config.http.bind)
        .await
        .map_err(|e| HostError::Bind { addr: config.http.bind, message: e.to_string() })?;
    let http_addr =
        listener.local_addr().map_err(|e| HostError::Bind { addr: config.http.bind, message: e.to_string() })?;
    let token = api_token(&config)?;
    let recovered = store.recover()?;
    let (task_reports_tx, task_reports) = mpsc::unbounded_channel();
    let writer = start_writer(&store, &config, &metrics, task_reports_tx.clone());
    health.set("store", ComponentState::Up);
    let activity = ActivityBus::new(10_000, recovered.last_activity_seq);
    activity.attach_store(writer.clone());
    let booted = venue::boot(&config, &store, &recovered, &writer, &activity, &health).await?;
    let hub = Arc::new(Mutex::new(booted.hub));
    let account = booted.oms.view();
    let risk_limits = booted.oms.limits();
    let protections = booted.oms.protections();
    let id_counter = Arc::new(AtomicU64::new(recovered.id_block_start));
    let runtimes: Runtimes = Arc::new(ArcSwap::from_pointee(Default::default()));

    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (engine_tx, engine_rx) = mpsc::channel(ENGINE_QUEUE);
    let (feed_tx, feed_rx) = mpsc::channel(4096);
    watch_queue(&metrics, "engine", &engine_tx);
    watch_queue(&metrics, "market", &feed_tx);
    let debounce = Duration::from_millis(config.supervisor.debounce_ms);
    let watcher = watcher::watch(&config.strategies.dir, debounce, control_tx.clone(), health.clone())?;

    let shutdown = CancellationToken::new();
    let tasks = tasks::Tasks::new(task_reports_tx, shutdown.clone());
    let tasks_cancel = CancellationToken::new();
    let engine_cancel = CancellationToken::new();
    let venue_probe = booted.delta.as_ref().map(|links| venue_probe(links.connector.clone()));
    let venue_updates = booted.delta.map(|links| links.spawn(&tasks, &health, &metrics, &tasks_cancel));
    let engine = Engine {
        oms: booted.oms,
        hub: hub.clone(),
        runtimes: runtimes.clone(),
        activity: activity.clone(),
        store: writer.clone(),
        control: control_tx.clone(),
        id_counter: id_counter.clone(),
        metrics: metrics.clone(),
        health: health.clone(),
        shown: booted.shown.clone(),
        venue_updates,
        pipeline: config.exchange.kind == ExchangeKind::Delta,
        protections_saved: 0,
        startup_events: booted.resolved,
    };
    let engine_run = engine.run(engine_rx, feed_rx, engine_cancel.clone());
    let engine_fault = config.faults.engine_panics;
    tasks.spawn_critical("engine", "engine", async move {
        assert!(!engine_fault, "injected fault: the engine panicked");
        engine_run.await
    });
    health.set("engine", ComponentState::Up);
    expect_activity(&health, &config, &metrics, &writer);

    let statuses = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let plots = Arc::new(crate::strategy::plots::PlotBook::default());
    // On Delta's market, a starting strategy's missing history is fetched first.
    let warm_up = match &booted.market {
        venue::Market::Delta(connector) => Some(history::warm_up_sync(
            connector.rest.clone(),
            store.reader(),
            writer.clone(),
            tokio::runtime::Handle::current(),
            std::time::Duration::from_millis(config.exchange.delta.warmup_timeout_ms),
        )),
        venue::Market::Feed(_) => None,
    };
    let supervisor = Supervisor::new(crate::supervisor::Parts {
        config: config.clone(),
        runtimes: runtimes.clone(),
        statuses: statuses.clone(),
        control: control_tx.clone(),
        engine: engine_tx,
        activity: activity.clone(),
        hub,
        account: account.clone(),
        id_counter,
        store: writer.clone(),
        reader: store.reader(),
        warm_up,
        stored_states: recovered.strategy_states.clone(),
        stopped_by_user: recovered.stopped_strategies.clone(),
        clock: booted.clock.clone(),
        metrics: metrics.clone(),
        cancel: shutdown.clone(),
        ml: MlOptions {
            registry: models.clone(),
            record: config.ml.record_dir.clone().map_or(RecordTarget::Off, RecordTarget::AppendIn),
            record_max_bytes: config.ml.record_max_mb.saturating_mul(1 << 20),
        },
        health: health.clone(),
        plots: plots.clone(),
    });
    let http_cancel = CancellationToken::new();
    let api = Arc::new(crate::http::ApiContext {
        control: control_tx.clone(),
        activity: activity.clone(),
        strategies: statuses.clone(),
        account: account.clone(),
        store: store.reader(),
        health: health.clone(),
        metrics: metrics.clone(),
        token: token.clone(),
        config: config.http.clone(),
        started: std::time::Instant::now(),
        cancel: http_cancel.clone(),
        mode: mode(&config).to_string(),
        clock: booted.clock.clone(),
        shown: booted.shown,
        risk_limits,
        protections,
        models: models.clone(),
        venue: venue_probe,
        faults: config.faults.clone(),
        requests: health.pulse("http"),
        stats: Default::default(),
        plots,
    });
    let models_watcher = models::watch(models.clone(), debounce, health.clone(), activity.clone())?;
    let telegram_cancel = CancellationToken::new();
    if config.telegram.enabled {
        let bot = crate::telegram::Telegram::new(api.clone(), &config.telegram)?;
        let cancel = telegram_cancel.clone();
        tasks.spawn_auxiliary(TELEGRAM_TASK, crate::telegram::COMPONENT, move || bot.clone().run(cancel.clone()));
    }
    spawn_health_events(&tasks, health.clone(), activity.clone(), tasks_cancel.clone());
    systemd::spawn_watchdog(&tasks, health.clone(), http_cancel.clone());
    if let Some(path) = config.health_file() {
        let interval = Duration::from_millis(config.health.interval_ms);
        health_file::spawn(&tasks, path, interval, health.clone(), models, tasks_cancel.clone());
    }
    if config.store.equity_sample_ms > 0 {
        let every = Duration::from_millis(config.store.equity_sample_ms);
        equity::spawn(&tasks, every, account.clone(), booted.clock.clone(), writer.clone(), tasks_cancel.clone());
    }
    let idle_timeout = Duration::from_millis(config.http.idle_timeout_ms);
    let max_connections = crate::http::connection_limit(config.http.max_connections);
    let server =
        crate::http::serve(listener, crate::http::router(api), http_cancel.clone(), idle_timeout, max_connections);
    tasks.spawn_critical("http", "http", server);
    health.set("http", ComponentState::Up);
    tracing::info!(addr = %http_addr, "control API and dashboard at http://{http_addr}/");
    publish_started(&config, &activity, &account, &recovered);
    let feed = PendingFeed {
        market: booted.market,
        tx: feed_tx,
        cancel: tasks_cancel.clone(),
        health: health.clone(),
        metrics: metrics.clone(),
    };
    let lifecycle = Lifecycle {
        config,
        control_rx,
        task_reports,
        watcher,
        tasks,
        shutdown,
        tasks_cancel,
        engine_cancel,
        runtimes,
        activity: activity.clone(),
        feed: Some(feed),
        store,
        writer,
        health: health.clone(),
        telegram_cancel,
        http_cancel,
        _models_watcher: models_watcher,
    };
    let done = tokio::spawn(lifecycle.run(supervisor));
    let _ = control_tx.send(Control::Rescan);
    Ok(HostHandle { control: control_tx, activity, statuses, account, health, http_addr, token, done })
}

/// The Telegram bot's task.
pub(crate) const TELEGRAM_TASK: &str = "telegram bot";

/// How often the freshness rules are applied.
const FRESHNESS_CHECK: Duration = Duration::from_millis(250);

/// Applies the freshness rules every [`FRESHNESS_CHECK`], and publishes
/// components going down or degraded (with the reason) and coming back up as
/// `health` activity events `{component, state, reason}`.
fn spawn_health_events(tasks: &tasks::Tasks, health: Arc<Health>, activity: ActivityBus, stop: CancellationToken) {
    tasks.spawn_auxiliary("health events", "health", move || {
        let (health, activity, stop) = (health.clone(), activity.clone(), stop.clone());
        async move {
            let mut changes = health.changes();
            let mut before = health.components();
            let mut check = tokio::time::interval(FRESHNESS_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = changes.changed() => if changed.is_err() { break },
                    _ = check.tick() => {
                        health.check_freshness();
                        continue;
                    }
                }
                if health.is_shutting_down() {
                    break;
                }
                let (now, reasons) = (health.components(), health.reasons());
                for (component, state) in &now {
                    let was = before.get(component).copied();
                    let impaired = |s: Option<ComponentState>| {
                        matches!(s, Some(ComponentState::Down) | Some(ComponentState::Degraded))
                    };
                    let down = impaired(Some(*state)) && was != Some(*state);
                    let back = *state == ComponentState::Up && impaired(was);
                    if down || back {
                        let reason = reasons.get(component).cloned();
                        activity.publish(
                            ActivityKind::Health,
                            None,
                            json!({ "component": component, "state": state, "reason": reason }),
                        );
                    }
                }
                before = now;
            }
        }
    });
}

/// Reads what Delta holds, for `/api/v1/reconcile`.
fn venue_probe(connector: Arc<crate::delta::DeltaConnector>) -> crate::exchange::reconcile::VenueProbe {
    Arc::new(move || {
        let connector = connector.clone();
        Box::pin(async move { connector.snapshot().await.map_err(|e| e.to_string()) })
    })
}

/// The freshness rules of the engine loop, the store writer and the feed.
fn expect_activity(health: &Health, config: &Config, metrics: &Metrics, writer: &StoreWriter) {
    let limits = &config.health.stale_after_ms;
    let after = Duration::from_millis;
    health.expect_activity(
        ENGINE_COMPONENT,
        Freshness {
            pulse: health.pulse(ENGINE_COMPONENT),
            after: after(limits.engine),
            busy: None,
            what: "made no progress",
        },
    );
    let queued = writer.queue_depth();
    health.expect_activity(
        "store",
        Freshness {
            pulse: metrics.store_commit.pulse(),
            after: after(limits.store),
            busy: Some(Box::new(move || queued.read() > 0)),
            what: "committed nothing while writes waited",
        },
    );
    // A slow synthetic feed is given three of its ticks.
    let synthetic = &config.feed.synthetic;
    let tick_ms = synthetic.tick_interval_ms as f64 / synthetic.speed.max(f64::MIN_POSITIVE);
    let feed = match config.feed.kind {
        FeedKind::Synthetic if config.exchange.kind != ExchangeKind::Delta => limits.feed.max((3.0 * tick_ms) as u64),
        _ => limits.feed,
    };
    health.expect_activity(
        FEED_COMPONENT,
        Freshness {
            pulse: health.pulse(FEED_COMPONENT),
            after: after(feed),
            busy: None,
            what: "delivered no market event",
        },
    );
}

/// Exports the depth of a bounded queue (without keeping it open).
fn watch_queue<T: Send + 'static>(metrics: &Metrics, name: &'static str, tx: &mpsc::Sender<T>) {
    let weak = tx.downgrade();
    metrics.watch_queue(
        name,
        crate::health::QueueDepth::new(move || weak.upgrade().map_or(0, |tx| tx.max_capacity() - tx.capacity())),
    );
}

/// `paper`, `dry-run` or `delta` (live), as the status and the banner say it.
fn mode(config: &Config) -> &'static str {
    match config.exchange.run_mode() {
        crate::model::RunMode::DryRun => "dry-run",
        crate::model::RunMode::Live => "delta",
        crate::model::RunMode::Paper | crate::model::RunMode::Backtest => "paper",
    }
}

/// Starts the store's writer thread with the configured retention; a panic
/// on it is reported like a failed critical task.
fn start_writer(
    store: &Store,
    config: &Config,
    metrics: &Arc<Metrics>,
    reports: mpsc::UnboundedSender<tasks::TaskReport>,
) -> StoreWriter {
    let retention = Retention {
        keep: config.store.activity_keep,
        max_age_ms: config.store.activity_max_age_days as i64 * 86_400_000,
        max_bytes: config.store.activity_max_mb.saturating_mul(1 << 20),
        closed_orders_ms: config.store.closed_order_retention_days as i64 * 86_400_000,
        candles_keep: config.store.candles_keep,
    };
    let observer = {
        let metrics = metrics.clone();
        Box::new(move |elapsed| metrics.store_commit.observe(elapsed))
    };
    let writer = store.observed_writer(retention, observer);
    writer.delay_commits(std::time::Duration::from_millis(config.faults.commit_delay_ms));
    writer.set_on_panic(Box::new(move |message| {
        let _ = reports.send(tasks::TaskReport::Failed {
            task: "store writer".into(),
            component: "store".into(),
            message: format!("task \"store writer\" panicked: {message}"),
            restarting: false,
        });
    }));
    metrics.watch_queue("store", writer.queue_depth());
    writer
}

/// Publishes (and logs) that the host started, with what it recovered.
fn publish_started(config: &Config, activity: &ActivityBus, account: &ArcSwap<AccountView>, recovered: &Recovered) {
    let mode = mode(config);
    activity.publish(
        ActivityKind::System,
        None,
        json!({
            "event": "started",
            "mode": mode,
            "version": env!("CARGO_PKG_VERSION"),
            "recovered": {
                "open_orders": account.load().open_orders.len(),
                "strategy_states": recovered.strategy_states.len(),
                "fills": recovered.last_fill_id,
            },
        }),
    );
    tracing::info!(strategies = %config.strategies.dir.display(), symbols = ?config.feed_symbols(), "host started ({mode} exchange)");
}

/// Components that must be up before the host is ready.
const COMPONENTS: [&str; 5] = ["store", "engine", "feed", "strategies", "http"];

/// The API token: configured (or from the environment), else the one in
/// `<data_dir>/api-token`, generated there (mode 0600) on the first start and
/// reused on every later one; never logged.
fn api_token(config: &Config) -> Result<Secret, HostError> {
    if let Some(token) = &config.http.token {
        return Ok(token.clone());
    }
    std::fs::create_dir_all(&config.data_dir)
        .map_err(|source| HostError::DataDir { path: config.data_dir.clone(), source })?;
    let path = config.data_dir.join("api-token");
    let (token, created) =
        crate::http::load_or_create_token(&path).map_err(|source| HostError::DataDir { path: path.clone(), source })?;
    if created {
        tracing::info!(path = %path.display(), "generated an API token (stored with mode 0600, reused on later starts)");
    }
    Ok(Secret::new(token))
}
