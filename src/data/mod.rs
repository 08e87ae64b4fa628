//! Market data the strategies read: timeframes, candle aggregation, per-symbol
//! candle series with last tick, native incremental indicators, and the
//! pure part of candle history sync ([`history`]).
//! Pure and synchronous; owned by whoever feeds it (a strategy runtime keeps
//! its own copy, so reads never take a lock).

mod cache;
pub mod history;
mod hub;
mod indicators;
mod series;

pub use cache::{IndicatorCache, IndicatorValue};
pub use hub::{HubError, MarketHub, TimedCandle};
pub use indicators::{Atr, BBands, BBandsValue, Ema, Highest, Lowest, Macd, MacdValue, Rsi, Sma, Vwap};
pub use series::{
    CandleAggregator, CandleSeries, DurationError, MarketState, Timeframe, TimeframeError, parse_duration_ms,
    series_key,
};
