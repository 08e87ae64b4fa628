//! The host's own sections: strategies and their overrides, the sandbox,
//! the supervisor, shutdown, the store and the HTTP API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::Secret;

/// `[store]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Activity events kept in the store; older ones are pruned (0 keeps all).
    pub activity_keep: u64,
    /// Activity events older than this many days are pruned (0: no age limit).
    pub activity_max_age_days: u64,
    /// Megabytes of activity events kept, the oldest pruned first (0: no size limit).
    pub activity_max_mb: u64,
    /// Longest delay before a changed strategy state (`this`) is stored.
    pub state_flush_ms: u64,
    /// Closed orders that filled nothing are pruned after this many days (0 keeps them).
    pub closed_order_retention_days: u64,
    /// Sub-minute candles kept per symbol and timeframe (0 keeps all); minute
    /// and longer candles are history and always kept.
    pub candles_keep: u64,
    /// Milliseconds between two samples of the account's equity kept in the
    /// store (the dashboard's equity curve, `GET /api/v1/equity`); 0: none.
    pub equity_sample_ms: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            activity_keep: 200_000,
            activity_max_age_days: 90,
            activity_max_mb: 256,
            state_flush_ms: 250,
            closed_order_retention_days: 7,
            candles_keep: 10_000,
            equity_sample_ms: 60_000,
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
    /// Pre-trade limits of this strategy's own orders and positions.
    pub risk: Option<super::RiskLimits>,
    /// `[sandbox]` keys set differently for this strategy (limits and quotas).
    pub sandbox: toml::Table,
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
    /// Values all `series` of a strategy hold together.
    pub max_series_values: usize,
    /// Bytes a callback may allocate beyond what it started with (and not free).
    pub max_callback_memory: usize,
    /// Wall-clock budget per callback.
    pub callback_budget_ms: u64,
    /// Longest log line or notification, in bytes (longer: truncated with a marker).
    pub max_log_line_bytes: usize,
    /// Log lines a strategy may write per second, sustained (excess dropped and counted).
    pub log_lines_per_second: u32,
    /// Log lines a strategy may write at once above the sustained rate.
    pub log_burst: u32,
    /// Notifications (`notify`) per minute, also the burst.
    pub notifications_per_minute: u32,
    /// Activity events (log lines, notifications, health reports) per second; five seconds' worth at once.
    pub events_per_second: u32,
    /// Orders per second; four seconds' worth at once (excess refused with a script error).
    pub orders_per_second: u32,
    /// Timers a strategy may have set at once.
    pub max_timers: usize,
    /// Longest timer name, in bytes.
    pub max_timer_name_bytes: usize,
    /// Largest `this` as JSON, in bytes (over it: not saved, the last good state is restored).
    pub max_state_bytes: usize,
    /// Distinct `health::report` keys a strategy may use.
    pub max_report_keys: usize,
    /// Longest `health::report` key or value or `health::degraded` reason, in bytes.
    pub max_report_value_bytes: usize,
    /// A callback that hits a quota fails (and counts towards restarts and quarantine).
    pub quota_failures: bool,
}

/// A `[strategies.overrides.NAME.sandbox]` key that does not fit.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxOverrideError {
    /// The key (within the section).
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl SandboxConfig {
    /// These limits with the keys of `overrides` set instead.
    pub fn merged(&self, overrides: &toml::Table) -> Result<SandboxConfig, SandboxOverrideError> {
        if overrides.is_empty() {
            return Ok(self.clone());
        }
        let mut table = toml::Table::try_from(self)
            .map_err(|e| SandboxOverrideError { key: String::new(), message: e.to_string() })?;
        for (key, value) in overrides {
            table.insert(key.clone(), value.clone());
        }
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| SandboxOverrideError {
            key: e.path().to_string(),
            message: e.inner().to_string().trim_end().to_string(),
        })
    }
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
            max_series_values: 1_000_000,
            max_callback_memory: 64 << 20,
            callback_budget_ms: 1_000,
            max_log_line_bytes: 4_096,
            log_lines_per_second: 50,
            log_burst: 500,
            notifications_per_minute: 30,
            events_per_second: 200,
            orders_per_second: 50,
            max_timers: 100,
            max_timer_name_bytes: 128,
            max_state_bytes: 4 << 20,
            max_report_keys: 64,
            max_report_value_bytes: 1_024,
            quota_failures: false,
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

/// `[health]`: the health file operators and supervisors read, and the
/// freshness thresholds.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HealthConfig {
    /// Write the health file.
    pub write_file: bool,
    /// Where (default: `health.json` in the data folder).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    /// Rewritten at least this often, and at every change of a component.
    pub interval_ms: u64,
    /// How long each component may stay silent while it has work before it
    /// is degraded.
    pub stale_after_ms: StaleAfter,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig { write_file: true, file: None, interval_ms: 5_000, stale_after_ms: StaleAfter::default() }
    }
}

/// `[health.stale_after_ms]`: freshness thresholds (the market stream's is
/// `exchange.delta.stale_after_ms`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StaleAfter {
    /// The engine loop (it turns at least every second).
    pub engine: u64,
    /// The store writer, while writes wait.
    pub store: u64,
    /// The market feed (no market event reaching the engine).
    pub feed: u64,
    /// Each strategy, while events wait for it (no callback finished).
    pub strategy: u64,
}

impl Default for StaleAfter {
    fn default() -> Self {
        StaleAfter { engine: 10_000, store: 10_000, feed: 10_000, strategy: 30_000 }
    }
}

impl StaleAfter {
    /// Each threshold with its config key.
    pub fn keys(&self) -> [(&'static str, u64); 4] {
        [
            ("health.stale_after_ms.engine", self.engine),
            ("health.stale_after_ms.store", self.store),
            ("health.stale_after_ms.feed", self.feed),
            ("health.stale_after_ms.strategy", self.strategy),
        ]
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
    /// A client must send a request's headers within this time, on a new
    /// connection and between requests on a kept-alive one, or is closed.
    pub idle_timeout_ms: u64,
    /// Most API connections open at once (kept below the open-file limit).
    pub max_connections: usize,
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
            idle_timeout_ms: 30_000,
            max_connections: 512,
        }
    }
}
