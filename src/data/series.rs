//! Timeframes, candle aggregation and bounded candle series.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use std::fmt;
use std::str::FromStr;

use crate::model::{Candle, Tick, TimestampMs};
pub use crate::model::{DurationError, parse_duration_ms};

/// A bar length, e.g. `1m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timeframe {
    ms: i64,
}

/// A timeframe string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid timeframe {0:?}: expected whole seconds with a unit s, m, h or d, e.g. \"1m\" or \"4h\"")]
pub struct TimeframeError(pub String);

impl Timeframe {
    /// A timeframe of the given length in milliseconds.
    pub fn from_ms(ms: i64) -> Timeframe {
        Timeframe { ms: ms.max(1) }
    }
    /// One minute.
    pub fn minute() -> Timeframe {
        Timeframe { ms: 60_000 }
    }
    /// Length in milliseconds.
    pub fn ms(self) -> i64 {
        self.ms
    }
    /// Start of the bar that contains `time`.
    pub fn bucket(self, time: TimestampMs) -> TimestampMs {
        time.div_euclid(self.ms) * self.ms
    }
}

impl FromStr for Timeframe {
    type Err = TimeframeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match parse_duration_ms(s) {
            Ok(ms) if ms % 1_000 == 0 => Ok(Timeframe { ms }),
            _ => Err(TimeframeError(s.to_string())),
        }
    }
}

impl fmt::Display for Timeframe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (unit, ms) in [("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
            if self.ms % ms == 0 {
                return write!(f, "{}{unit}", self.ms / ms);
            }
        }
        write!(f, "{}ms", self.ms)
    }
}

/// Merges ticks or smaller bars into bars of one timeframe.
#[derive(Debug, Clone)]
pub struct CandleAggregator {
    timeframe: Timeframe,
    current: Option<Candle>,
}

impl CandleAggregator {
    /// An empty aggregator.
    pub fn new(timeframe: Timeframe) -> Self {
        CandleAggregator { timeframe, current: None }
    }

    /// Adds a trade (a one-price bar); returns the bar it closed, if any.
    pub fn add_trade(&mut self, symbol: &str, time: TimestampMs, price: f64, volume: f64) -> Option<Candle> {
        self.add_bar(&Candle {
            symbol: symbol.to_string(),
            time,
            open: price,
            high: price,
            low: price,
            close: price,
            volume,
        })
    }

    /// Adds a bar of a smaller (or equal) timeframe; returns the bar it closed, if any.
    pub fn add_bar(&mut self, bar: &Candle) -> Option<Candle> {
        let bucket = self.timeframe.bucket(bar.time);
        match &mut self.current {
            Some(current) if current.time == bucket => {
                current.high = current.high.max(bar.high);
                current.low = current.low.min(bar.low);
                current.close = bar.close;
                current.volume += bar.volume;
                None
            }
            Some(current) if bucket < current.time => None,
            _ => self.current.replace(Candle { time: bucket, ..bar.clone() }),
        }
    }

    /// Start of the bar in progress, if any.
    pub fn current_start(&self) -> Option<TimestampMs> {
        self.current.as_ref().map(|c| c.time)
    }

    /// Closes the bar in progress if the clock has passed its end.
    pub fn close_if_due(&mut self, now: TimestampMs) -> Option<Candle> {
        match &self.current {
            Some(current) if now >= current.time + self.timeframe.ms => self.current.take(),
            _ => None,
        }
    }
}

/// The most recent candles of one symbol and timeframe, bounded.
#[derive(Debug, Clone)]
pub struct CandleSeries {
    candles: VecDeque<Candle>,
    first_index: u64,
    capacity: usize,
}

impl CandleSeries {
    /// An empty series keeping at most `capacity` candles.
    pub fn new(capacity: usize) -> Self {
        CandleSeries { candles: VecDeque::with_capacity(capacity.min(4096)), first_index: 0, capacity: capacity.max(1) }
    }

    /// Appends a closed candle.
    pub fn push(&mut self, candle: Candle) {
        if self.candles.len() == self.capacity {
            self.candles.pop_front();
            self.first_index += 1;
        }
        self.candles.push_back(candle);
    }

    /// Number of candles held.
    pub fn len(&self) -> usize {
        self.candles.len()
    }

    /// True when no candle is held.
    pub fn is_empty(&self) -> bool {
        self.candles.is_empty()
    }

    /// Absolute index of the oldest candle held.
    pub fn first_index(&self) -> u64 {
        self.first_index
    }

    /// Absolute index one past the newest candle.
    pub fn end_index(&self) -> u64 {
        self.first_index + self.candles.len() as u64
    }

    /// Candles from absolute index `from` (clamped to what is held) to the end.
    pub fn since(&self, from: u64) -> impl Iterator<Item = &Candle> {
        let skip = from.saturating_sub(self.first_index) as usize;
        self.candles.iter().skip(skip)
    }

    /// The newest `n` candles, oldest first.
    pub fn last_n(&self, n: usize) -> impl Iterator<Item = &Candle> {
        self.candles.iter().skip(self.candles.len().saturating_sub(n))
    }

    /// The newest candle.
    pub fn last(&self) -> Option<&Candle> {
        self.candles.back()
    }
}

/// The name of a symbol's series of another timeframe than the strategy's:
/// `BTCUSD@1h`, as scripts pass it to `market::candles` and `ta::`.
pub fn series_key(symbol: &str, timeframe: Timeframe) -> String {
    format!("{symbol}@{timeframe}")
}

/// What a strategy knows of the market: candle series and the last tick per symbol.
#[derive(Debug, Clone, Default)]
pub struct MarketState {
    series: FxHashMap<String, CandleSeries>,
    ticks: FxHashMap<String, Tick>,
    capacity: usize,
}

impl MarketState {
    /// Empty state; each series keeps `capacity` candles.
    pub fn new(capacity: usize) -> Self {
        MarketState { series: FxHashMap::default(), ticks: FxHashMap::default(), capacity }
    }

    /// Appends a closed candle of the strategy's own timeframe to its symbol's series.
    pub fn push_candle(&mut self, candle: Candle) {
        // Looked up by reference first: the symbol is copied only for a new series.
        if let Some(series) = self.series.get_mut(&candle.symbol) {
            return series.push(candle);
        }
        let mut series = CandleSeries::new(self.capacity);
        let symbol = candle.symbol.clone();
        series.push(candle);
        self.series.insert(symbol, series);
    }

    /// Appends a closed candle of another timeframe the strategy reads; its
    /// series is named `SYMBOL@TF` (see [`series_key`]).
    pub fn push_other(&mut self, timeframe: Timeframe, candle: Candle) {
        let capacity = self.capacity;
        self.series
            .entry(series_key(&candle.symbol, timeframe))
            .or_insert_with(|| CandleSeries::new(capacity))
            .push(candle);
    }

    /// Records the latest tick of a symbol.
    pub fn push_tick(&mut self, tick: Tick) {
        self.ticks.insert(tick.symbol.clone(), tick);
    }

    /// Forgets a symbol's latest tick: its last price is the latest close again.
    pub fn forget_tick(&mut self, symbol: &str) {
        self.ticks.remove(symbol);
    }

    /// The candle series of a symbol.
    pub fn series(&self, symbol: &str) -> Option<&CandleSeries> {
        self.series.get(symbol)
    }

    /// The latest tick of a symbol.
    pub fn tick(&self, symbol: &str) -> Option<&Tick> {
        self.ticks.get(symbol)
    }

    /// Last traded price: from the latest tick, else the latest close.
    pub fn last_price(&self, symbol: &str) -> Option<f64> {
        use rust_decimal::prelude::ToPrimitive;
        self.ticks
            .get(symbol)
            .and_then(|t| t.last.to_f64())
            .or_else(|| self.series.get(symbol).and_then(|s| s.last()).map(|c| c.close))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::MAX_DURATION_MS;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("1.5m"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert!(parse_duration_ms("0s").is_err());
        assert_eq!(parse_duration_ms("366d"), Ok(MAX_DURATION_MS));
        let huge = "99999999999999999999d";
        assert_eq!(parse_duration_ms(huge), Err(DurationError::TooLong(huge.into())));
        assert!(parse_duration_ms(huge).unwrap_err().to_string().contains("longer than the longest allowed, 366d"));
    }

    #[test]
    fn timeframes_parse_and_print() {
        assert_eq!("1m".parse::<Timeframe>().unwrap().ms(), 60_000);
        assert_eq!("4h".parse::<Timeframe>().unwrap().to_string(), "4h");
        assert!("m1".parse::<Timeframe>().is_err());
        assert!("0m".parse::<Timeframe>().is_err());
        assert!("250ms".parse::<Timeframe>().is_err());
    }

    #[test]
    fn aggregator_closes_bar_when_next_bucket_starts() {
        let mut agg = CandleAggregator::new(Timeframe::minute());
        assert!(agg.add_trade("X", 0, 10.0, 1.0).is_none());
        assert!(agg.add_trade("X", 30_000, 12.0, 1.0).is_none());
        assert!(agg.add_trade("X", 59_000, 9.0, 2.0).is_none());
        let bar = agg.add_trade("X", 60_000, 11.0, 1.0).unwrap();
        assert_eq!((bar.open, bar.high, bar.low, bar.close, bar.volume), (10.0, 12.0, 9.0, 9.0, 4.0));
        assert_eq!(agg.close_if_due(120_000).unwrap().time, 60_000);
    }
}
