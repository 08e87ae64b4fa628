//! Typed configuration: TOML parsed into immutable structs with
//! `deny_unknown_fields`, then validated with every problem reported at once
//! under its key path. Secrets may also come from the environment and are
//! redacted in `Debug` output.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::model::Product;

/// The configuration embedded in the binary (also `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// One problem found in a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `feed.synthetic.speed`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{origin}:{}", problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Invalid {
        /// File path or `embedded default`.
        origin: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole host configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the host keeps its state.
    pub data_dir: PathBuf,
    /// Strategy discovery and per-strategy overrides.
    pub strategies: StrategiesConfig,
    /// Script sandbox limits.
    pub sandbox: SandboxConfig,
    /// Restart, backoff and quarantine rules.
    pub supervisor: SupervisorConfig,
    /// Ordered shutdown deadlines.
    pub shutdown: ShutdownConfig,
    /// Which exchange to trade on.
    pub exchange: ExchangeConfig,
    /// Where market data comes from.
    pub feed: FeedConfig,
    /// Control API.
    pub http: HttpConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Faults injected by tests; never read from a file.
    #[serde(skip)]
    pub faults: Faults,
}

/// Faults a test injects on purpose to check that the host survives a
/// failing task; never read from a config file (tests set them in code).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// How many more times the market feed task panics as it starts (shared by its restarts).
    pub feed_panics: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The engine task panics as it starts.
    pub engine_panics: bool,
    /// Scripts get `test::panic(message)`, a host function that panics.
    pub panicking_function: bool,
}

impl Faults {
    /// Panics if a feed panic is still due (the market feed task calls it as it starts).
    pub fn feed_step(&self) {
        use std::sync::atomic::Ordering;
        let due = self.feed_panics.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        assert!(!due, "injected fault: the market feed panicked");
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            strategies: StrategiesConfig::default(),
            sandbox: SandboxConfig::default(),
            supervisor: SupervisorConfig::default(),
            shutdown: ShutdownConfig::default(),
            exchange: ExchangeConfig::default(),
            feed: FeedConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            faults: Faults::default(),
        }
    }
}

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Activity events kept in the store; older ones are pruned (0 keeps all).
    pub activity_keep: u64,
    /// Activity events older than this many days are pruned (0: no age limit).
    pub activity_max_age_days: u64,
    /// Longest delay before a changed strategy state (`this`) is stored.
    pub state_flush_ms: u64,
    /// Closed orders that filled nothing are pruned after this many days (0 keeps them).
    pub closed_order_retention_days: u64,
    /// Cached candles kept per symbol and timeframe (0 keeps all).
    pub candles_keep: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            activity_keep: 200_000,
            activity_max_age_days: 90,
            state_flush_ms: 250,
            closed_order_retention_days: 7,
            candles_keep: 10_000,
        }
    }
}

/// What a strategy does with its orders and positions at shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShutdownPolicy {
    /// Leave orders and positions as they are.
    Leave,
    /// Cancel the strategy's open orders (default).
    #[default]
    Cancel,
    /// Cancel open orders and close positions with reduce-only market orders.
    Flatten,
}

/// `[strategies]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategiesConfig {
    /// Folder watched for `*.rhai` files.
    pub dir: PathBuf,
    /// Default shutdown policy.
    pub shutdown_policy: ShutdownPolicy,
    /// Per-strategy settings, keyed by file stem.
    pub overrides: BTreeMap<String, StrategyOverride>,
}

impl Default for StrategiesConfig {
    fn default() -> Self {
        StrategiesConfig {
            dir: PathBuf::from("strategies"),
            shutdown_policy: ShutdownPolicy::Cancel,
            overrides: BTreeMap::new(),
        }
    }
}

/// `[strategies.overrides.NAME]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StrategyOverride {
    /// Set false to keep the strategy from starting.
    pub enabled: Option<bool>,
    /// Overrides of the script's `config().params`.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Overrides `strategies.shutdown_policy`.
    pub shutdown_policy: Option<ShutdownPolicy>,
}

/// `[sandbox]`: limits applied to every script callback.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SandboxConfig {
    /// Rhai operations per callback.
    pub max_operations: u64,
    /// Nested function calls.
    pub max_call_depth: usize,
    /// Expression nesting depth.
    pub max_expr_depth: usize,
    /// Bytes in one string.
    pub max_string_size: usize,
    /// Elements in one array.
    pub max_array_size: usize,
    /// Entries in one map.
    pub max_map_size: usize,
    /// Wall-clock budget per callback.
    pub callback_budget_ms: u64,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            max_operations: 5_000_000,
            max_call_depth: 64,
            max_expr_depth: 64,
            max_string_size: 1 << 20,
            max_array_size: 100_000,
            max_map_size: 10_000,
            callback_budget_ms: 1_000,
        }
    }
}

/// `[supervisor]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SupervisorConfig {
    /// Quiet time after the last file event before a change is applied.
    pub debounce_ms: u64,
    /// Consecutive callback errors that make a strategy restart.
    pub max_consecutive_errors: u32,
    /// First restart delay; doubles on each restart.
    pub restart_backoff_initial_ms: u64,
    /// Upper bound of the restart delay.
    pub restart_backoff_max_ms: u64,
    /// Restarts (without a healthy minute between them) before quarantine.
    pub quarantine_after_restarts: u32,
    /// Events a strategy may have queued before ticks are coalesced.
    pub event_queue: usize,
}

impl Default for SupervisorConfig {
    fn default() -> Self {
        SupervisorConfig {
            debounce_ms: 150,
            max_consecutive_errors: 5,
            restart_backoff_initial_ms: 500,
            restart_backoff_max_ms: 30_000,
            quarantine_after_restarts: 3,
            event_queue: 1024,
        }
    }
}

/// `[shutdown]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Bound on the whole shutdown sequence.
    pub timeout_ms: u64,
    /// Bound on the `on_stop` phase.
    pub on_stop_timeout_ms: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { timeout_ms: 30_000, on_stop_timeout_ms: 5_000 }
    }
}

/// Exchange kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Simulated fills against the feed.
    #[default]
    Paper,
    /// Delta Exchange (India or Global, production or testnet).
    Delta,
}

/// `[exchange]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Which exchange.
    pub kind: ExchangeKind,
    /// Paper exchange settings.
    pub paper: PaperConfig,
    /// Delta Exchange settings.
    pub delta: DeltaConfig,
}

/// Delta Exchange environments (shared/delta-exchange.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaNetwork {
    /// India production.
    India,
    /// Global production.
    Global,
    /// India testnet ("Demo").
    #[default]
    IndiaTestnet,
    /// Global testnet.
    GlobalTestnet,
}

impl DeltaNetwork {
    /// REST base, private (legacy) WebSocket and public WebSocket URLs.
    pub fn urls(self) -> (&'static str, &'static str, &'static str) {
        match self {
            DeltaNetwork::India => (
                "https://api.india.delta.exchange",
                "wss://socket.india.delta.exchange",
                "wss://public-socket.india.delta.exchange",
            ),
            DeltaNetwork::IndiaTestnet => (
                "https://cdn-ind.testnet.deltaex.org",
                "wss://socket-ind.testnet.deltaex.org",
                "wss://socket-ind-pub.testnet.deltaex.org",
            ),
            // No public endpoint is documented for Global: the legacy endpoint serves every channel.
            DeltaNetwork::Global => {
                ("https://api.delta.exchange", "wss://socket.delta.exchange", "wss://socket.delta.exchange")
            }
            DeltaNetwork::GlobalTestnet => (
                "https://testnet-api.delta.exchange",
                "wss://testnet-socket.delta.exchange",
                "wss://testnet-socket.delta.exchange",
            ),
        }
    }

    /// True for the networks that trade real money.
    pub fn is_production(self) -> bool {
        matches!(self, DeltaNetwork::India | DeltaNetwork::Global)
    }
}

/// `[exchange.delta]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaConfig {
    /// Which environment.
    pub network: DeltaNetwork,
    /// REST base URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_url: Option<String>,
    /// Private (legacy) WebSocket URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
    /// Public WebSocket URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_public_url: Option<String>,
    /// API key (or `TRADEHOST_DELTA_API_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// API secret (or `TRADEHOST_DELTA_API_SECRET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_secret: Option<Secret>,
    /// Products to trade and stream.
    pub symbols: Vec<String>,
    /// Use the legacy public channel names on the private endpoint (always on
    /// Global networks unless `ws_public_url` is set).
    pub legacy_channels: bool,
    /// Longest time one REST request may take.
    pub request_timeout_ms: u64,
    /// Reconnect when no heartbeat arrived for this long.
    pub heartbeat_timeout_ms: u64,
    /// Interval of our pings.
    pub ping_interval_ms: u64,
    /// First reconnect delay.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
    /// A symbol whose market stream is silent this long is stale: new entries are refused.
    pub stale_after_ms: u64,
    /// One-minute bars loaded over REST at start, for indicator warm-up.
    pub history_bars: usize,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            network: DeltaNetwork::default(),
            rest_url: None,
            ws_url: None,
            ws_public_url: None,
            api_key: None,
            api_secret: None,
            symbols: vec!["BTCUSD".into()],
            legacy_channels: false,
            request_timeout_ms: 5_000,
            heartbeat_timeout_ms: 35_000,
            ping_interval_ms: 30_000,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            stale_after_ms: 15_000,
            history_bars: 200,
        }
    }
}

impl DeltaConfig {
    /// True when market data uses the legacy channel names on the private
    /// endpoint: when asked, or on Global networks without a public endpoint.
    pub fn uses_legacy_channels(&self) -> bool {
        self.legacy_channels
            || (self.ws_public_url.is_none()
                && matches!(self.network, DeltaNetwork::Global | DeltaNetwork::GlobalTestnet))
    }

    /// REST, private WebSocket and public WebSocket URLs (overrides first).
    pub fn urls(&self) -> (String, String, String) {
        let (rest, ws, public) = self.network.urls();
        (
            self.rest_url.clone().unwrap_or_else(|| rest.into()),
            self.ws_url.clone().unwrap_or_else(|| ws.into()),
            self.ws_public_url.clone().unwrap_or_else(|| public.into()),
        )
    }
}

/// `[exchange.paper]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaperConfig {
    /// Quote currency of the account.
    pub currency: String,
    /// Starting balance in the quote currency.
    pub balance: Decimal,
    /// Gross exposure allowed per unit of equity.
    pub leverage: Decimal,
    /// Fee for taking liquidity, basis points of notional.
    pub taker_fee_bps: Decimal,
    /// Fee for resting orders that fill, basis points of notional.
    pub maker_fee_bps: Decimal,
    /// Price slippage on taker fills, basis points.
    pub slippage_bps: Decimal,
    /// Tick and lot sizes by symbol.
    pub products: BTreeMap<String, ProductConfig>,
}

impl Default for PaperConfig {
    fn default() -> Self {
        PaperConfig {
            currency: "USD".into(),
            balance: Decimal::from(100_000),
            leverage: Decimal::from(5),
            taker_fee_bps: Decimal::from(5),
            maker_fee_bps: Decimal::from(2),
            slippage_bps: Decimal::from(1),
            products: BTreeMap::from([
                ("BTCUSD".into(), ProductConfig { tick_size: Decimal::new(5, 1), lot_size: Decimal::new(1, 3) }),
                ("ETHUSD".into(), ProductConfig { tick_size: Decimal::new(5, 2), lot_size: Decimal::new(1, 2) }),
            ]),
        }
    }
}

impl PaperConfig {
    /// The configured products.
    pub fn product_list(&self) -> Vec<Product> {
        self.products
            .iter()
            .map(|(symbol, p)| Product { symbol: symbol.clone(), tick_size: p.tick_size, lot_size: p.lot_size })
            .collect()
    }
}

/// `[exchange.paper.products.SYMBOL]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProductConfig {
    /// Smallest price increment.
    pub tick_size: Decimal,
    /// Smallest size increment.
    pub lot_size: Decimal,
}

/// Feed kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// Seeded random walk.
    #[default]
    Synthetic,
    /// CSV replay.
    Replay,
}

/// `[feed]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Which feed.
    pub kind: FeedKind,
    /// Synthetic feed settings.
    pub synthetic: SyntheticConfig,
    /// Replay feed settings.
    pub replay: ReplayConfig,
}

/// `[feed.synthetic]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Starting price by symbol; the keys are the symbols generated.
    pub start_prices: BTreeMap<String, f64>,
    /// Random seed: the same seed gives the same prices.
    pub seed: u64,
    /// Simulated time between two ticks.
    pub tick_interval_ms: u64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Standard deviation of the log return per tick.
    pub volatility: f64,
    /// Bid/ask spread in basis points.
    pub spread_bps: f64,
    /// Largest size traded in one tick.
    pub max_tick_volume: f64,
    /// One-minute bars generated before the live start, for indicator warm-up.
    pub history_bars: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            start_prices: BTreeMap::from([("BTCUSD".into(), 60_000.0), ("ETHUSD".into(), 3_000.0)]),
            seed: 42,
            tick_interval_ms: 1_000,
            speed: 60.0,
            volatility: 0.0008,
            spread_bps: 2.0,
            max_tick_volume: 2.0,
            history_bars: 200,
        }
    }
}

/// `[feed.replay]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// CSV file (design.md §4.6 format).
    pub path: PathBuf,
    /// Symbol the file holds.
    pub symbol: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Start again from the first row at the end.
    #[serde(rename = "loop")]
    pub repeat: bool,
    /// Bid/ask spread in basis points around each close.
    pub spread_bps: f64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig { path: PathBuf::new(), symbol: String::new(), speed: 60.0, repeat: false, spread_bps: 2.0 }
    }
}

/// `[http]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// Listen address.
    pub bind: SocketAddr,
    /// Bearer token (or `TRADEHOST_API_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// Browser origins allowed to call the API (CORS); empty: none.
    pub cors_origins: Vec<String>,
    /// Longest time a REST request may take.
    pub request_timeout_ms: u64,
    /// Largest request body accepted.
    pub body_limit_bytes: usize,
    /// Most WebSocket clients at once.
    pub ws_max_clients: usize,
    /// Interval between pings to each WebSocket client.
    pub ws_ping_interval_ms: u64,
    /// A client that sends nothing (not even a pong) this long is dropped.
    pub ws_idle_timeout_ms: u64,
    /// A client that takes longer than this to accept one message is dropped.
    pub ws_send_timeout_ms: u64,
    /// Startup fails if a component is not ready within this time.
    pub ready_timeout_ms: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            token: None,
            cors_origins: Vec::new(),
            request_timeout_ms: 10_000,
            body_limit_bytes: 64 * 1024,
            ws_max_clients: 1_000,
            ws_ping_interval_ms: 15_000,
            ws_idle_timeout_ms: 45_000,
            ws_send_timeout_ms: 5_000,
            ready_timeout_ms: 30_000,
        }
    }
}

impl Config {
    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::parse(DEFAULT_TOML, "embedded default").expect("embedded default config is valid")
    }

    /// Loads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_TOML, "embedded default"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Config::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid { origin: origin.to_string(), problems };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| invalid(vec![ConfigProblem { key: "(document)".into(), message: toml_message(&e, text) }]))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            invalid(vec![ConfigProblem { key, message: toml_message(e.inner(), text) }])
        })?;
        let problems = config.problems();
        if problems.is_empty() { Ok(config) } else { Err(invalid(problems)) }
    }

    /// Applies secrets from the environment (`TRADEHOST_API_TOKEN`).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(token) = env("TRADEHOST_API_TOKEN").filter(|t| !t.is_empty()) {
            self.http.token = Some(Secret::new(token));
        }
        if let Some(key) = env("TRADEHOST_DELTA_API_KEY").filter(|t| !t.is_empty()) {
            self.exchange.delta.api_key = Some(Secret::new(key));
        }
        if let Some(secret) = env("TRADEHOST_DELTA_API_SECRET").filter(|t| !t.is_empty()) {
            self.exchange.delta.api_secret = Some(Secret::new(secret));
        }
    }

    /// Every semantic problem, each with its key path.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        let mut bad = |key: &str, message: String| out.push(ConfigProblem { key: key.to_string(), message });
        let s = &self.sandbox;
        for (key, value) in [
            ("sandbox.max_operations", s.max_operations as usize),
            ("sandbox.max_call_depth", s.max_call_depth),
            ("sandbox.max_expr_depth", s.max_expr_depth),
            ("sandbox.max_string_size", s.max_string_size),
            ("sandbox.max_array_size", s.max_array_size),
            ("sandbox.max_map_size", s.max_map_size),
            ("sandbox.callback_budget_ms", s.callback_budget_ms as usize),
            ("supervisor.max_consecutive_errors", self.supervisor.max_consecutive_errors as usize),
            ("supervisor.event_queue", self.supervisor.event_queue),
            ("shutdown.timeout_ms", self.shutdown.timeout_ms as usize),
            ("store.state_flush_ms", self.store.state_flush_ms as usize),
            ("http.request_timeout_ms", self.http.request_timeout_ms as usize),
            ("http.body_limit_bytes", self.http.body_limit_bytes),
            ("http.ws_max_clients", self.http.ws_max_clients),
            ("http.ws_ping_interval_ms", self.http.ws_ping_interval_ms as usize),
            ("http.ws_idle_timeout_ms", self.http.ws_idle_timeout_ms as usize),
            ("http.ws_send_timeout_ms", self.http.ws_send_timeout_ms as usize),
            ("http.ready_timeout_ms", self.http.ready_timeout_ms as usize),
            ("exchange.delta.request_timeout_ms", self.exchange.delta.request_timeout_ms as usize),
            ("exchange.delta.heartbeat_timeout_ms", self.exchange.delta.heartbeat_timeout_ms as usize),
            ("exchange.delta.ping_interval_ms", self.exchange.delta.ping_interval_ms as usize),
            ("exchange.delta.reconnect_initial_ms", self.exchange.delta.reconnect_initial_ms as usize),
            ("exchange.delta.stale_after_ms", self.exchange.delta.stale_after_ms as usize),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if let Some(token) = &self.http.token
            && token.expose().len() < 16
        {
            bad("http.token", "must be at least 16 characters".into());
        }
        if !self.http.bind.ip().is_loopback() && self.http.token.is_none() {
            bad(
                "http.bind",
                format!(
                    "{} is not a loopback address: set http.token or TRADEHOST_API_TOKEN before exposing the API",
                    self.http.bind
                ),
            );
        }
        if self.supervisor.restart_backoff_max_ms < self.supervisor.restart_backoff_initial_ms {
            bad("supervisor.restart_backoff_max_ms", "must be at least supervisor.restart_backoff_initial_ms".into());
        }
        let delta = &self.exchange.delta;
        if delta.reconnect_max_ms < delta.reconnect_initial_ms {
            bad("exchange.delta.reconnect_max_ms", "must be at least exchange.delta.reconnect_initial_ms".into());
        }
        if self.exchange.kind == ExchangeKind::Delta && delta.symbols.is_empty() {
            bad("exchange.delta.symbols", "must name at least one product".into());
        }
        for (key, url, schemes) in [
            ("exchange.delta.rest_url", &delta.rest_url, ["http://", "https://"]),
            ("exchange.delta.ws_url", &delta.ws_url, ["ws://", "wss://"]),
            ("exchange.delta.ws_public_url", &delta.ws_public_url, ["ws://", "wss://"]),
        ] {
            if let Some(url) = url
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                bad(key, format!("must start with {} or {}, got {url:?}", schemes[0], schemes[1]));
            }
        }
        let p = &self.exchange.paper;
        if p.balance < Decimal::ZERO {
            bad("exchange.paper.balance", format!("must not be negative, got {}", p.balance));
        }
        if p.leverage <= Decimal::ZERO {
            bad("exchange.paper.leverage", format!("must be greater than 0, got {}", p.leverage));
        }
        for (key, value) in [
            ("exchange.paper.taker_fee_bps", p.taker_fee_bps),
            ("exchange.paper.maker_fee_bps", p.maker_fee_bps),
            ("exchange.paper.slippage_bps", p.slippage_bps),
        ] {
            if value < Decimal::ZERO || value > Decimal::from(1000) {
                bad(key, format!("must be between 0 and 1000 basis points, got {value}"));
            }
        }
        for (symbol, product) in &p.products {
            if product.tick_size <= Decimal::ZERO {
                bad(&format!("exchange.paper.products.{symbol}.tick_size"), "must be greater than 0".into());
            }
            if product.lot_size <= Decimal::ZERO {
                bad(&format!("exchange.paper.products.{symbol}.lot_size"), "must be greater than 0".into());
            }
        }
        let paper = self.exchange.kind == ExchangeKind::Paper;
        let need_product =
            |key: &str, symbol: &str| (paper && !p.products.contains_key(symbol)).then(|| missing_product(key, symbol));
        let mut missing = Vec::new();
        match self.feed.kind {
            FeedKind::Synthetic => {
                let syn = &self.feed.synthetic;
                if syn.start_prices.is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.synthetic.start_prices".into(),
                        message: "must name at least one symbol with its starting price".into(),
                    });
                }
                for (symbol, price) in &syn.start_prices {
                    let key = format!("feed.synthetic.start_prices.{symbol}");
                    if !(price.is_finite() && *price > 0.0) {
                        missing.push(ConfigProblem {
                            key: key.clone(),
                            message: format!("must be a positive price, got {price}"),
                        });
                    }
                    missing.extend(need_product(&key, symbol));
                }
                for (key, value) in [
                    ("feed.synthetic.speed", syn.speed),
                    ("feed.synthetic.max_tick_volume", syn.max_tick_volume),
                    ("feed.synthetic.tick_interval_ms", syn.tick_interval_ms as f64),
                ] {
                    if !(value.is_finite() && value > 0.0) {
                        missing.push(ConfigProblem {
                            key: key.into(),
                            message: format!("must be greater than 0, got {value}"),
                        });
                    }
                }
                for (key, value) in
                    [("feed.synthetic.volatility", syn.volatility), ("feed.synthetic.spread_bps", syn.spread_bps)]
                {
                    if !(value.is_finite() && value >= 0.0) {
                        missing.push(ConfigProblem {
                            key: key.into(),
                            message: format!("must be 0 or more, got {value}"),
                        });
                    }
                }
            }
            FeedKind::Replay => {
                let r = &self.feed.replay;
                if r.path.as_os_str().is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.replay.path".into(),
                        message: "is required when feed.kind = \"replay\"".into(),
                    });
                }
                if r.symbol.is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.replay.symbol".into(),
                        message: "is required when feed.kind = \"replay\"".into(),
                    });
                } else {
                    missing.extend(need_product("feed.replay.symbol", &r.symbol));
                }
                if !(r.speed.is_finite() && r.speed > 0.0) {
                    missing.push(ConfigProblem {
                        key: "feed.replay.speed".into(),
                        message: format!("must be greater than 0, got {}", r.speed),
                    });
                }
            }
        }
        out.extend(missing);
        out
    }

    /// Symbols the configured feed produces.
    pub fn feed_symbols(&self) -> Vec<String> {
        if self.exchange.kind == ExchangeKind::Delta {
            return self.exchange.delta.symbols.clone();
        }
        match self.feed.kind {
            FeedKind::Synthetic => self.feed.synthetic.start_prices.keys().cloned().collect(),
            FeedKind::Replay => vec![self.feed.replay.symbol.clone()],
        }
    }

    /// The override section for a strategy, if any.
    pub fn strategy_override(&self, name: &str) -> Option<&StrategyOverride> {
        self.strategies.overrides.get(name)
    }
}

fn missing_product(key: &str, symbol: &str) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        message: format!("symbol {symbol} has no [exchange.paper.products.{symbol}] entry (tick_size, lot_size)"),
    }
}

fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded();
        assert!(!config.feed_symbols().is_empty());
    }

    #[test]
    fn default_toml_matches_the_built_in_defaults() {
        assert_eq!(format!("{:?}", Config::embedded()), format!("{:?}", Config::default()));
    }

    /// Every key of the configuration appears in config/default.toml, set or
    /// commented out, with a comment line right above it.
    #[test]
    fn default_toml_documents_every_key() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        collect_leaf_keys(&value, &mut keys);
        keys.push("token".into());
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for key in keys {
            let found = lines.iter().enumerate().find(|(_, line)| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{key} =")) || line.starts_with(&format!("{key}="))
            });
            let (index, _) = found.unwrap_or_else(|| panic!("key `{key}` is not in config/default.toml"));
            assert!(index > 0 && lines[index - 1].trim_start().starts_with('#'), "key `{key}` has no comment above it");
        }
    }

    fn collect_leaf_keys(value: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, child) in table {
                if child.is_table() {
                    collect_leaf_keys(child, out);
                } else {
                    out.push(key.clone());
                }
            }
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = Config::embedded();
        config.apply_env(|k| (k == "TRADEHOST_API_TOKEN").then(|| "hunter2".to_string()));
        assert_eq!(config.http.token.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn delta_networks_choose_urls_and_channel_names() {
        let text = "[exchange]\nkind = \"delta\"\n[exchange.delta]\nnetwork = \"global\"\nsymbols = [\"BTCUSDT\"]\n";
        let mut config = Config::parse(text, "t.toml").unwrap();
        let delta = &config.exchange.delta;
        assert_eq!(delta.urls().0, "https://api.delta.exchange");
        assert!(delta.network.is_production() && delta.uses_legacy_channels());
        assert_eq!(config.feed_symbols(), ["BTCUSDT"]);
        config.apply_env(|k| match k {
            "TRADEHOST_DELTA_API_KEY" => Some("key-1".into()),
            "TRADEHOST_DELTA_API_SECRET" => Some("secret-1".into()),
            _ => None,
        });
        assert_eq!(config.exchange.delta.api_secret.as_ref().unwrap().expose(), "secret-1");
        assert!(!format!("{config:?}").contains("secret-1"), "secrets never print");
        let india = Config::parse("[exchange.delta]\nnetwork = \"india-testnet\"\n", "t.toml").unwrap();
        assert!(!india.exchange.delta.uses_legacy_channels() && !india.exchange.delta.network.is_production());
        let err = Config::parse("[exchange]\nkind = \"delta\"\n[exchange.delta]\nnetwork = \"mars\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exchange.delta.network"), "{err}");
        let err = Config::parse(
            "[exchange]\nkind = \"delta\"\n[exchange.delta]\nsymbols = []\nrest_url = \"ftp://x\"\nreconnect_max_ms = 1\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        for key in ["exchange.delta.symbols", "exchange.delta.rest_url", "exchange.delta.reconnect_max_ms"] {
            assert!(err.contains(key), "{key} in {err}");
        }
    }

    #[test]
    fn all_semantic_problems_are_reported_at_once() {
        let text = "[exchange.paper]\nleverage = 0\n[sandbox]\nmax_operations = 0\n";
        let err = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("exchange.paper.leverage"), "{err}");
        assert!(err.contains("sandbox.max_operations"), "{err}");
    }
}
