//! The composition root. [`start`] builds the host from a [`Config`]: the
//! market feed, the engine (order manager + routing), the strategies folder
//! watcher and the supervisor loop that owns every strategy. Every external
//! trigger — file changes, signals, later the API — becomes one [`Control`]
//! message. Shutdown is one ordered sequence with a deadline:
//! gate → `on_stop` → shutdown policies → flush → close feed → done.

mod engine;
mod status;
mod strategies;
mod tasks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::activity::{ActivityBus, ActivityKind};
use crate::clock::Clock;
use crate::config::{Config, ExchangeKind, FeedKind, Secret};
use crate::data::{MarketHub, Timeframe};
use crate::delta::DeltaConnector;
use crate::exchange::ExchangeEvent;
use crate::exchange::{LiveVenue, PaperExchange, Venue, VenueCommand, VenueUpdate};
use crate::execution::Oms;
use crate::feed::{self, FeedSource, Replay, SyntheticFeed};
use crate::health::{ComponentState, Health, Metrics};
use crate::model::{AccountView, TimestampMs};
use crate::store::{Retention, Store, StoreError, StoreWriter};

pub use engine::{EngineRequest, Runtimes};
pub use status::{StrategyState, StrategyStatus};
pub use strategies::{MarketGap, market_gap, scan};
use tasks::Tasks;

/// Why the host shuts down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGINT, SIGTERM, Ctrl+C or Ctrl+Break.
    Signal(String),
    /// Asked through the control API.
    Api,
    /// A component failed.
    Fatal(String),
}

/// One message type for every trigger that steers the host.
#[derive(Debug)]
pub enum Control {
    /// The strategies folder changed: rescan it.
    Rescan,
    /// A restart delay has passed.
    RestartDue {
        /// Strategy.
        name: String,
        /// The start it belongs to (stale ones are ignored).
        generation: u64,
    },
    /// Start a stopped, failed or quarantined strategy.
    Start(String, ControlReply<()>),
    /// Stop a running strategy (runs `on_stop`).
    Stop(String, ControlReply<()>),
    /// Reload a running strategy from its file; answers with the new version
    /// or the compile error.
    Reload(String, ControlReply<u32>),
    /// Begin the ordered shutdown.
    Shutdown(ShutdownReason),
}

/// Why a control request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ControlError {
    /// No such strategy.
    #[error("no strategy named {0:?}")]
    UnknownStrategy(String),
    /// The strategy is not in a state that allows it.
    #[error("{0}")]
    Conflict(String),
    /// The new version was refused (compile error with file:line:col).
    #[error("{0}")]
    Rejected(String),
}

/// Where the answer to a control request goes.
pub type ControlReply<T> = oneshot::Sender<Result<T, ControlError>>;

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
            HostError::StrategiesDir(_) | HostError::Replay(_) | HostError::DataDir { .. } | HostError::Bind { .. } => {
                2
            }
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

/// Builds the feed source, a hub preloaded with its history, and the run's
/// simulated clock.
fn build_feed(
    config: &Config,
    oms: &mut Oms,
    store: &crate::store::StoreReader,
    last_activity: Option<TimestampMs>,
) -> Result<(MarketHub, FeedSource, Clock), HostError> {
    let products = config.exchange.paper.product_list();
    match config.feed.kind {
        FeedKind::Synthetic => {
            let syn = &config.feed.synthetic;
            let base = Timeframe::from_ms(syn.tick_interval_ms as i64);
            let history_ms = syn.history_bars as i64 * 60_000;
            let capacity = (history_ms / base.ms()) as usize + 20_000;
            let mut hub = MarketHub::new(base, capacity);
            let resume = synthetic_resume(store, syn, last_activity)?;
            let feed = match resume {
                Some((time, prices)) => {
                    // Continue where the last run stopped: times never go
                    // backwards, prices do not jump; warm-up candles come from the store.
                    // The next whole minute: candles continue without a gap or an overlap.
                    let start = Timeframe::minute().bucket(time - 1) + Timeframe::minute().ms();
                    tracing::info!(
                        resume_at = %chrono::DateTime::from_timestamp_millis(start).map_or(start.to_string(), |t| t.to_rfc3339()),
                        "the synthetic market continues from the last run's time and prices"
                    );
                    SyntheticFeed::new(syn, &products, start).resume(&prices)
                }
                None => {
                    let now = Timeframe::minute().bucket(chrono::Utc::now().timestamp_millis());
                    let mut feed = SyntheticFeed::new(syn, &products, now - history_ms);
                    while feed.time() < now {
                        for tick in feed.step() {
                            hub.on_tick(&tick);
                            oms.on_tick(&tick);
                        }
                    }
                    feed
                }
            };
            let clock = Clock::simulated(feed.time(), syn.speed);
            Ok((hub, FeedSource::Synthetic { feed: Box::new(feed), clock: clock.clone() }, clock))
        }
        FeedKind::Replay => {
            let r = &config.feed.replay;
            let candles = feed::csv::read_candles(&r.path, &r.symbol)?;
            let interval_ms = feed::csv::interval_ms(&candles).unwrap_or(60_000);
            let product =
                products.into_iter().find(|p| p.symbol == r.symbol).expect("validated: replay symbol has a product");
            let hub = MarketHub::new(Timeframe::from_ms(interval_ms), 20_000);
            let clock = Clock::simulated(candles.first().map_or(0, |c| c.time + interval_ms), r.speed);
            let replay = Replay {
                clock: clock.clone(),
                candles,
                interval_ms,
                repeat: r.repeat,
                half_spread: r.spread_bps / 20_000.0,
                product,
            };
            Ok((hub, FeedSource::Replay(replay), clock))
        }
    }
}

/// Where market data comes from.
enum Market {
    /// The synthetic or replay feed.
    Feed(FeedSource),
    /// Delta's public stream.
    Delta(Arc<DeltaConnector>),
}

/// The running Delta connector's channels.
struct DeltaLinks {
    connector: Arc<DeltaConnector>,
    commands: mpsc::UnboundedReceiver<VenueCommand>,
    updates_tx: mpsc::UnboundedSender<VenueUpdate>,
    updates: mpsc::UnboundedReceiver<VenueUpdate>,
}

/// Connects to Delta, loads warm-up history, and reconciles the store with
/// the exchange before any strategy resumes: stored open and pending orders
/// are looked up by client id, missed fills are applied, and differences
/// (foreign orders or fills, positions that do not add up) are logged.
async fn start_delta(
    config: &Config,
    store: &Store,
    recovered: &crate::store::Recovered,
    activity: &ActivityBus,
) -> Result<(Oms, MarketHub, Vec<ExchangeEvent>, DeltaLinks), HostError> {
    let delta = &config.exchange.delta;
    let connector = Arc::new(DeltaConnector::connect(delta).await?);
    let mut hub = MarketHub::new(Timeframe::minute(), 20_000);
    match connector.history(delta.history_bars).await {
        Ok(candles) => candles.into_iter().for_each(|c| drop(hub.on_bar(c))),
        Err(error) => tracing::warn!("delta: no warm-up history: {error}"),
    }
    let stored_fills = store.reader().recent_fills(10_000)?;
    let startup = connector.startup(recovered, &stored_fills).await.map_err(crate::delta::ConnectError::Rest)?;
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let mut oms = Oms::new(Venue::Live(LiveVenue {
        commands: commands_tx,
        currency: connector.currency.clone(),
        balance: startup.balance,
        known_at_start: startup.known_at_start,
    }));
    oms.remember_fills(stored_fills.into_iter().filter_map(|f| f.exchange_id));
    let mut resolved = oms.restore(recovered).map_err(|e| HostError::Recovery(e.to_string()))?;
    for update in startup.updates {
        match oms.apply_venue(update) {
            Ok(events) => resolved.extend(events),
            Err(difference) => engine::publish_difference(activity, &difference),
        }
    }
    let ours = oms.net_positions();
    for (symbol, exchange) in &startup.positions {
        let host = ours.get(symbol).copied().unwrap_or_default();
        if host != *exchange {
            engine::publish_difference(
                activity,
                &format!("position {symbol}: the exchange holds {exchange}, the strategies' fills add up to {host}"),
            );
        }
    }
    tracing::info!(
        currency = %connector.currency,
        balance = %startup.balance,
        reconciled = resolved.len(),
        "delta: reconciled with the store"
    );
    Ok((oms, hub, resolved, DeltaLinks { connector, commands, updates_tx, updates }))
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
    let store = Store::open(&config.data_dir)?;
    let listener = tokio::net::TcpListener::bind(config.http.bind)
        .await
        .map_err(|e| HostError::Bind { addr: config.http.bind, message: e.to_string() })?;
    let http_addr =
        listener.local_addr().map_err(|e| HostError::Bind { addr: config.http.bind, message: e.to_string() })?;
    let token = api_token(&config)?;
    let recovered = store.recover()?;
    let retention = Retention {
        keep: config.store.activity_keep,
        max_age_ms: config.store.activity_max_age_days as i64 * 86_400_000,
        closed_orders_ms: config.store.closed_order_retention_days as i64 * 86_400_000,
        candles_keep: config.store.candles_keep,
    };
    let writer = {
        let metrics = metrics.clone();
        store.observed_writer(retention, Box::new(move |elapsed| metrics.store_commit.observe(elapsed)))
    };
    health.set("store", ComponentState::Up);
    let activity = ActivityBus::new(10_000, recovered.last_activity_seq);
    activity.attach_store(writer.clone());
    let (oms, hub, market, resolved, delta, clock, shown) = match config.exchange.kind {
        ExchangeKind::Paper => {
            let mut oms = Oms::new(Venue::Paper(PaperExchange::new(&config.exchange.paper)));
            // Warm-up history first, on an empty book: it must not fill restored orders.
            let last_activity = last_activity_time(&store, recovered.last_activity_seq);
            let (hub, source, clock) = build_feed(&config, &mut oms, &store, last_activity)?;
            oms.set_clock(clock.clone());
            activity.set_clock(clock.clone());
            let resolved = oms.restore(&recovered).map_err(|e| HostError::Recovery(e.to_string()))?;
            let shown = crate::model::Shown::new(&config.exchange.paper.product_list());
            (oms, hub, Market::Feed(source), resolved, None, clock, shown)
        }
        ExchangeKind::Delta => {
            use crate::delta::connector::{MARKET_COMPONENT, ORDERS_COMPONENT, REST_COMPONENT};
            for component in [MARKET_COMPONENT, ORDERS_COMPONENT, REST_COMPONENT] {
                health.register(component);
            }
            let (oms, hub, resolved, links) = start_delta(&config, &store, &recovered, &activity).await?;
            let connector = links.connector.clone();
            let shown = connector.products.shown();
            (oms, hub, Market::Delta(connector), resolved, Some(links), Clock::wall(), shown)
        }
    };
    if !resolved.is_empty() {
        writer.commit(oms.write_ops(&resolved)).await.map_err(|e| HostError::Recovery(e.to_string()))?;
        for event in &resolved {
            match event {
                ExchangeEvent::Order(order) => {
                    tracing::warn!(order = %order.request.client_id, status = ?order.status, "order outcome resolved at start: {}", order.reason.as_deref().unwrap_or("known to the exchange"));
                    activity.publish(
                        ActivityKind::Order,
                        Some(&order.request.strategy),
                        json!({ "recovered": true, "order": shown.order(order) }),
                    );
                }
                ExchangeEvent::Fill(fill) => {
                    let shown_fill = shown.fill(fill);
                    tracing::warn!(order = %fill.order_id, size = %shown_fill.size, price = %shown_fill.price, "fill found at start");
                    activity.publish(ActivityKind::Fill, Some(&fill.strategy), json!(shown_fill));
                }
            }
        }
    }
    let hub = Arc::new(Mutex::new(hub));
    let account = oms.view();
    let id_counter = Arc::new(AtomicU64::new(recovered.id_block_start));
    let runtimes: Runtimes = Arc::new(ArcSwap::from_pointee(Default::default()));

    let (control_tx, control_rx) = mpsc::unbounded_channel();
    let (engine_tx, engine_rx) = mpsc::unbounded_channel();
    let (feed_tx, feed_rx) = mpsc::channel(4096);
    let (reports_tx, reports_rx) = mpsc::unbounded_channel();

    let watcher = {
        let control = control_tx.clone();
        let mut debouncer = notify_debouncer_full::new_debouncer(
            Duration::from_millis(config.supervisor.debounce_ms),
            None,
            move |result: notify_debouncer_full::DebounceEventResult| match result {
                // Reads (our own rescans included) raise access events: only changes count.
                Ok(events) if events.iter().any(|e| !matches!(e.event.kind, notify::EventKind::Access(_))) => {
                    let _ = control.send(Control::Rescan);
                }
                Ok(_) => {}
                Err(errors) => tracing::warn!(?errors, "strategies folder watcher error"),
            },
        )
        .map_err(|e| HostError::Watch { path: dir.clone(), message: e.to_string() })?;
        debouncer
            .watch(&dir, notify::RecursiveMode::NonRecursive)
            .map_err(|e| HostError::Watch { path: dir.clone(), message: e.to_string() })?;
        debouncer
    };

    let tasks = Tasks::new();
    let tasks_cancel = CancellationToken::new();
    let engine_cancel = CancellationToken::new();
    let (feed_go, go) = oneshot::channel::<()>();
    let venue_updates = match delta {
        Some(links) => {
            let connector = links.connector.clone();
            tasks.spawn(
                "exchange orders",
                connector.clone().run_orders(links.commands, links.updates_tx.clone(), tasks_cancel.clone()),
            );
            tasks.spawn(
                "exchange private stream",
                connector.run_private(links.updates_tx, health.clone(), metrics.clone(), tasks_cancel.clone()),
            );
            Some(links.updates)
        }
        None => None,
    };
    {
        let cancel = tasks_cancel.clone();
        let stale = oms.stale_symbols();
        let (health, metrics) = (health.clone(), metrics.clone());
        tasks.spawn("market feed", async move {
            // The live feed starts once the strategies found at start are running.
            tokio::select! {
                _ = cancel.cancelled() => {}
                _ = go => match market {
                    Market::Feed(source) => feed::run(source, feed_tx, cancel).await,
                    Market::Delta(connector) => connector.run_market(feed_tx, stale, health, metrics, cancel).await,
                },
            }
        });
    }
    let engine = engine::Engine {
        oms,
        hub: hub.clone(),
        runtimes: runtimes.clone(),
        activity: activity.clone(),
        store: writer.clone(),
        control: control_tx.clone(),
        id_counter: id_counter.clone(),
        metrics: metrics.clone(),
        shown: shown.clone(),
        venue_updates,
        pipeline: config.exchange.kind == ExchangeKind::Delta,
        startup_events: resolved,
    };
    tasks.spawn("engine", engine.run(engine_rx, feed_rx, engine_cancel.clone()));
    health.set("engine", ComponentState::Up);

    let statuses = Arc::new(ArcSwap::from_pointee(Vec::new()));
    let supervisor = strategies::Supervisor {
        config: config.clone(),
        dir,
        slots: Default::default(),
        runtimes: runtimes.clone(),
        statuses: statuses.clone(),
        control: control_tx.clone(),
        reports_tx,
        reports: reports_rx,
        engine: engine_tx,
        activity: activity.clone(),
        hub,
        account: account.clone(),
        id_counter,
        feed_symbols: config.feed_symbols(),
        shutting_down: false,
        scanned: false,
        tasks: tasks.clone(),
        cancel: tasks_cancel.clone(),
        store: writer.clone(),
        reader: store.reader(),
        stored_states: recovered.strategy_states.clone(),
        stopped_by_user: recovered.stopped_strategies.clone(),
        clock: clock.clone(),
        metrics: metrics.clone(),
    };
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
        mode: match config.exchange.kind {
            ExchangeKind::Paper => "paper".to_string(),
            ExchangeKind::Delta => "delta".to_string(),
        },
        clock: clock.clone(),
        shown,
    });
    tasks.spawn("http", crate::http::serve(listener, crate::http::router(api), http_cancel.clone()));
    health.set("http", ComponentState::Up);
    tracing::info!(addr = %http_addr, "control API and dashboard at http://{http_addr}/");
    let mode = match config.exchange.kind {
        ExchangeKind::Paper => "paper",
        ExchangeKind::Delta => "delta",
    };
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
    let lifecycle = Lifecycle {
        config,
        control_rx,
        watcher,
        tasks,
        tasks_cancel,
        engine_cancel,
        runtimes,
        activity: activity.clone(),
        feed_go: Some(feed_go),
        store,
        writer,
        health: health.clone(),
        http_cancel,
    };
    let done = tokio::spawn(lifecycle.run(supervisor));
    let _ = control_tx.send(Control::Rescan);
    Ok(HostHandle { control: control_tx, activity, statuses, account, health, http_addr, token, done })
}

struct Lifecycle {
    config: Arc<Config>,
    control_rx: mpsc::UnboundedReceiver<Control>,
    watcher: notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>,
    tasks: Tasks,
    tasks_cancel: CancellationToken,
    engine_cancel: CancellationToken,
    runtimes: Runtimes,
    activity: ActivityBus,
    feed_go: Option<oneshot::Sender<()>>,
    store: Store,
    writer: StoreWriter,
    health: Arc<Health>,
    http_cancel: CancellationToken,
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

/// The time of the newest activity event: the last moment the previous run's clock recorded.
fn last_activity_time(store: &Store, last_seq: u64) -> Option<TimestampMs> {
    let newest = store.activity_since(last_seq.checked_sub(1)?, 1).ok()?.pop()?;
    chrono::DateTime::parse_from_rfc3339(newest["ts"].as_str()?).ok().map(|t| t.timestamp_millis())
}

/// Where and at which prices (by symbol) a synthetic market resumes.
type Resume = (TimestampMs, BTreeMap<String, f64>);

/// Where a synthetic market resumes after an earlier run on the same data
/// folder: the later of the newest stored candle's close and the newest
/// activity event, at each symbol's newest stored close (symbols without a
/// stored candle start again at their configured price). `None` on a fresh store.
fn synthetic_resume(
    store: &crate::store::StoreReader,
    config: &crate::config::SyntheticConfig,
    last_activity: Option<TimestampMs>,
) -> Result<Option<Resume>, HostError> {
    let mut prices = BTreeMap::new();
    let mut time = last_activity;
    for symbol in config.start_prices.keys() {
        if let Some((candle, length)) = store.last_candle(symbol)? {
            time = Some(time.map_or(candle.time + length, |t| t.max(candle.time + length)));
            prices.insert(symbol.clone(), candle.close);
        }
    }
    Ok(time.map(|t| (t, prices)))
}

/// How long the live feed waits for the first strategies to start.
const FEED_START_WAIT: Duration = Duration::from_secs(10);

impl Lifecycle {
    fn start_feed(&mut self) {
        if let Some(go) = self.feed_go.take() {
            let _ = go.send(());
            self.health.set("strategies", ComponentState::Up);
            self.health.set("feed", ComponentState::Up);
        }
    }

    /// The supervisor loop, then the ordered shutdown; returns the exit code.
    async fn run(mut self, mut supervisor: strategies::Supervisor) -> i32 {
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
                Some(report) = supervisor.reports.recv() => supervisor.handle_report(report),
                _ = &mut feed_wait, if self.feed_go.is_some() => {
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
            if awaiting_ready && self.health.is_ready() {
                awaiting_ready = false;
                tracing::info!("ready");
            }
            if self.feed_go.is_some() && supervisor.initial_start_done() {
                self.start_feed();
            }
        };
        tracing::info!(?reason, "shutdown started");
        self.health.begin_shutdown();
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
            tracing::info!("shutdown: order gate closed");
            let (reply, closed) = oneshot::channel();
            if supervisor.engine.send(EngineRequest::CloseGate(reply)).is_ok() {
                let _ = closed.await;
            }
            supervisor.stop_all(on_stop, abort_grace).await;
            tracing::info!("shutdown: strategies stopped and shutdown policies applied");
            match self.writer.flush().await {
                Ok(()) => tracing::info!("shutdown: store flushed"),
                Err(error) => tracing::error!("shutdown: store flush failed: {error}"),
            }
            self.tasks_cancel.cancel();
            self.engine_cancel.cancel();
            tracing::info!("shutdown: market feed closed");
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

/// Waits for SIGINT/SIGTERM (Ctrl+C/Ctrl+Break on Windows) and starts the
/// ordered shutdown; a second signal exits the process at once with 130.
pub fn spawn_signal_handler(control: mpsc::UnboundedSender<Control>) {
    tokio::spawn(async move {
        let first = next_signal().await;
        tracing::info!(signal = %first, "signal received: shutting down (send it again to exit at once)");
        let _ = control.send(Control::Shutdown(ShutdownReason::Signal(first.to_string())));
        let second = next_signal().await;
        eprintln!("second {second}: exiting at once");
        std::process::exit(130);
    });
}

#[cfg(unix)]
async fn next_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
    let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = interrupt.recv() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}

#[cfg(windows)]
async fn next_signal() -> &'static str {
    let mut ctrl_break = tokio::signal::windows::ctrl_break().expect("Ctrl+Break handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl+C",
        _ = ctrl_break.recv() => "Ctrl+Break",
    }
}
