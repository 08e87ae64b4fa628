//! The language every edge speaks to the host: [`Control`] requests and
//! their replies, [`ControlError`], why the host shuts down, and the
//! strategies' read model ([`StrategyStatus`]). The HTTP API, signals, the
//! file watcher and the supervisor's own timers all send [`Control`]
//! messages down one channel; the host's lifecycle loop answers them.
//! Imports nothing above the model.

use serde::Serialize;
use tokio::sync::oneshot;

use crate::model::{StrategyError, TradingState, TradingStates};

/// Why the host shuts down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShutdownReason {
    /// SIGINT, SIGTERM, Ctrl+C or Ctrl+Break.
    Signal(String),
    /// Asked through the control API.
    Api,
    /// Confirmed in the Telegram chat with this id.
    Telegram(i64),
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
    /// Set the account's trading state (`strategy` none) or a strategy's;
    /// answers with the states now in force (stored before the answer).
    SetTrading {
        /// A strategy, or none for the account.
        strategy: Option<String>,
        /// The new state.
        state: TradingState,
        /// Where the answer goes.
        reply: ControlReply<TradingStates>,
    },
    /// Replace the risk limits in force (a JSON `risk::Limits`, validated by
    /// the sender); stored before the answer, and used from then on, also
    /// after a restart, instead of the config file's.
    SetLimits {
        /// The new limits.
        limits: serde_json::Value,
        /// Where the answer goes.
        reply: ControlReply<()>,
    },
    /// The kill switch: halt the account, cancel every open order and, with
    /// `flatten`, close every position with reduce-only market orders.
    Kill {
        /// Also close every position.
        flatten: bool,
        /// Where the report goes.
        reply: ControlReply<KillReport>,
    },
    /// Begin the ordered shutdown.
    Shutdown(ShutdownReason),
}

/// What the kill switch did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct KillReport {
    /// The trading states now in force (the account is halted).
    pub trading: TradingStates,
    /// Open orders it asked the venue to cancel.
    pub cancelled: usize,
    /// Reduce-only market orders it sent to close positions.
    pub flatten_orders: usize,
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

/// Lifecycle state of a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StrategyState {
    /// Being built or waiting for a restart.
    Starting,
    /// Handling events.
    Running,
    /// Running, but it can never trade: its symbols or timeframe are not in
    /// the market data (the status's `reason` says which).
    Idle,
    /// Stopped by the user, by its config, or at shutdown.
    Stopped,
    /// Failed to start (compile error, bad config()); waits for the file to change.
    Failed,
    /// Crashed too often; waits for the file to change or a user start.
    Quarantined,
}

/// One strategy as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StrategyStatus {
    /// Name (file stem).
    pub name: String,
    /// Script file.
    pub file: String,
    /// Lifecycle state.
    pub state: StrategyState,
    /// Why it is idle, stopped, failed or quarantined.
    pub reason: Option<String>,
    /// Code version: 1 at first start, +1 per applied reload.
    pub version: u32,
    /// Applied hot reloads.
    pub reloads: u32,
    /// Restarts after failures.
    pub restarts: u32,
    /// The last error (compile, reload or callback), with its location.
    pub last_error: Option<StrategyError>,
    /// How often each of its `[sandbox]` quotas was hit (see docs/strategy-api.md), by quota.
    #[serde(default)]
    pub quota_hits: std::collections::BTreeMap<String, u64>,
    /// Events waiting for it now.
    #[serde(default)]
    pub queue_depth: usize,
    /// True while it falls behind (`supervisor.event_queue` events waiting: its ticks are coalesced).
    #[serde(default)]
    pub lagging: bool,
    /// What it earned and how it traded (filled in by the API from the store and the account).
    #[serde(default)]
    pub stats: StrategyStats,
}

/// A strategy's results: from all its stored fills, and its open positions at the mark.
#[derive(Debug, Clone, Default, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StrategyStats {
    /// PnL its fills realised, before fees.
    #[schema(format = "money")]
    pub realized: rust_decimal::Decimal,
    /// Fees of its fills.
    #[schema(format = "money")]
    pub fees: rust_decimal::Decimal,
    /// PnL of its open positions at the mark.
    #[schema(format = "money")]
    pub unrealized: rust_decimal::Decimal,
    /// Realised minus fees plus unrealised.
    #[schema(format = "money")]
    pub net: rust_decimal::Decimal,
    /// Round trips closed: a position of a symbol back to flat, or reversed.
    pub trades: u64,
    /// Closed round trips whose realised PnL net of their fills' fees was positive.
    pub wins: u64,
    /// `wins / trades`; absent before the first closed round trip.
    pub win_rate: Option<f64>,
    /// Its fills.
    pub fills: u64,
}

/// True for a name a strategy file may have (its stem): 1 to 64 ASCII
/// letters, digits, `_` or `-`, so every strategy can be named in the API,
/// on the command line and in a log line.
pub fn valid_strategy_name(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}
