//! The engine-agnostic strategy runtime: a synchronous state machine that
//! takes a [`StrategyEvent`] and produces [`StrategyCommand`]s. Live mode runs
//! it on its own thread ([`live`]); a backtest calls it in a loop with a
//! simulated clock. Scripts (the `script` module) and native Rust strategies
//! implement the same [`Strategy`] trait, so both see the same host.

mod context;
pub mod live;
pub mod plots;
pub mod quota;
mod timers;

use serde::Serialize;

use crate::model::{Candle, Fill, Order, OrderRequest, Tick};

pub use crate::model::{Location, StrategyError};
pub use context::{OrderIds, OrderSpec, SharedContext, StrategyContext, base36};
pub use quota::{QuotaKind, Quotas};
pub use timers::Timers;

/// Something that happened, delivered to one strategy.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategyEvent {
    /// The strategy starts (after history is loaded).
    Start,
    /// A closed candle of the strategy's timeframe.
    Candle(Candle),
    /// A closed candle of another timeframe the strategy reads (declared in
    /// its `timeframes`): stored in the `SYMBOL@TF` series, no callback.
    /// Delivered before the strategy's own candle that closes with it.
    OtherCandle(crate::data::Timeframe, Candle),
    /// A quote / trade update.
    Tick(Tick),
    /// One of the strategy's orders changed state.
    Order(Order),
    /// One of the strategy's orders filled (already applied to positions).
    Fill(Fill),
    /// A timer the strategy set is due.
    Timer(String),
    /// The strategy stops.
    Stop,
}

impl StrategyEvent {
    /// Name of the script callback that handles this event.
    pub fn callback(&self) -> &'static str {
        match self {
            StrategyEvent::Start => "on_start",
            StrategyEvent::Candle(_) | StrategyEvent::OtherCandle(..) => "on_candle",
            StrategyEvent::Tick(_) => "on_tick",
            StrategyEvent::Order(_) => "on_order",
            StrategyEvent::Fill(_) => "on_fill",
            StrategyEvent::Timer(_) => "on_timer",
            StrategyEvent::Stop => "on_stop",
        }
    }
}

/// Log levels a strategy can write at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// `debug(..)`.
    Debug,
    /// `log::info`, `print`.
    Info,
    /// `log::warn`.
    Warn,
    /// `log::error`.
    Error,
}

/// What a strategy asks the host to do.
#[derive(Debug, Clone, PartialEq)]
pub enum StrategyCommand {
    /// Place an order (the id was already returned to the script).
    Place(OrderRequest),
    /// Cancel one of the strategy's orders.
    Cancel {
        /// Client order id.
        client_id: String,
    },
    /// Cancel the strategy's open orders, for one symbol or all.
    CancelAll {
        /// Symbol, or every symbol.
        symbol: Option<String>,
    },
    /// A log line.
    Log {
        /// Severity.
        level: LogLevel,
        /// Text.
        message: String,
    },
    /// A message for the user (activity feed, Telegram).
    Notify(String),
    /// The strategy says it is alive.
    Heartbeat,
    /// A named health value.
    HealthReport {
        /// Key.
        key: String,
        /// Value as text.
        value: String,
    },
    /// The strategy declares itself degraded (empty reason: recovered).
    Degraded(String),
    /// A value for a chart overlay (`chart::plot`).
    Plot {
        /// Symbol whose chart it overlays.
        symbol: std::sync::Arc<str>,
        /// Series name.
        name: std::sync::Arc<str>,
        /// The bar and the value.
        point: plots::PlotPoint,
    },
}

/// What a strategy declares about itself (`fn config()` for scripts).
#[derive(Debug, Clone, PartialEq)]
pub struct StrategyMeta {
    /// Symbols it trades; empty means every symbol of the feed.
    pub symbols: Vec<String>,
    /// Candle timeframe: `on_candle` fires once per closed candle of it.
    pub timeframe: crate::data::Timeframe,
    /// Other timeframes it reads as `SYMBOL@TF` series (`timeframes` in a script's `config()`).
    pub timeframes: Vec<crate::data::Timeframe>,
    /// Candles of history it needs per series before it starts (`warmup` in `config()`).
    pub warmup: Option<usize>,
}

impl StrategyMeta {
    /// Symbols and one timeframe, reading no other.
    pub fn new(symbols: Vec<String>, timeframe: crate::data::Timeframe) -> Self {
        StrategyMeta { symbols, timeframe, timeframes: Vec::new(), warmup: None }
    }

    /// Every timeframe the strategy needs built: its own, then the others.
    pub fn all_timeframes(&self) -> impl Iterator<Item = crate::data::Timeframe> + '_ {
        std::iter::once(self.timeframe).chain(self.timeframes.iter().copied().filter(|tf| *tf != self.timeframe))
    }
}

/// A strategy implementation: reads and writes through its [`StrategyContext`].
pub trait Strategy {
    /// Handles one event; `Ok(false)` when the strategy has no callback for it.
    fn handle(&mut self, event: &StrategyEvent) -> Result<bool, StrategyError>;
    /// Symbols and timeframe.
    fn meta(&self) -> StrategyMeta;
    /// Replaces the code with a new version, keeping the state; on error the
    /// old version stays in place.
    fn reload(&mut self, _source: &str) -> Result<(), StrategyError> {
        Err(StrategyError::new("this strategy cannot be reloaded"))
    }
    /// The persistent state (`this`), as JSON.
    fn export_state(&self) -> Result<serde_json::Value, StrategyError> {
        Ok(serde_json::Value::Null)
    }
    /// Replaces the persistent state with an earlier one (a state over its quota is rolled back).
    fn restore_state(&mut self, _this: serde_json::Value) {}
}

/// Everything a strategy implementation is built with on its own thread.
pub struct StrategyEnv {
    /// The shared context its host functions use.
    pub ctx: SharedContext,
    /// Set when the host wants the current callback stopped at once.
    pub abort: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// State to restore (`this` from a previous run), if any.
    pub initial_state: Option<serde_json::Value>,
}

/// A strategy's persisted state: its `this` and the id of the last fill its
/// `on_fill` had seen when `this` was taken. Saved together, so after a crash
/// the fills after that id are delivered again and `this` reflects every
/// fill exactly once.
#[derive(Debug, Clone, PartialEq)]
pub struct SavedState {
    /// The strategy's `this`.
    pub this: serde_json::Value,
    /// Last fill id `this` reflects (`None`: unknown, from an older host).
    pub fills_through: Option<u64>,
}

/// Marks the stored envelope (a plain `this` was stored by older hosts).
const SAVED_STATE_KEY: &str = "tradehost_saved_state";

impl SavedState {
    /// Reads a stored value: the envelope, or a plain `this` of an older host.
    pub fn decode(stored: serde_json::Value) -> SavedState {
        match stored {
            serde_json::Value::Object(mut map) if map.get(SAVED_STATE_KEY) == Some(&serde_json::json!(1)) => {
                SavedState {
                    this: map.remove("this").unwrap_or_default(),
                    fills_through: map.get("fills_through").and_then(serde_json::Value::as_u64),
                }
            }
            this => SavedState { this, fills_through: None },
        }
    }

    /// The value to store.
    pub fn encode(&self) -> serde_json::Value {
        serde_json::json!({ SAVED_STATE_KEY: 1, "this": self.this, "fills_through": self.fills_through })
    }
}

/// Builds a strategy on its own thread.
pub type StrategyFactory = Box<dyn FnOnce(StrategyEnv) -> Result<Box<dyn Strategy>, StrategyError> + Send>;
