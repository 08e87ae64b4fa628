//! The market hub: turns the feed's ticks or bars into base bars, keeps a
//! bounded base history per symbol, and builds candles of every timeframe a
//! strategy subscribed to. A candle is emitted as soon as the last base bar
//! of its bucket has arrived.

use std::collections::HashMap;

use super::series::{CandleAggregator, CandleSeries, Timeframe};
use crate::model::{Candle, Tick};

/// A subscription the hub cannot serve.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HubError {
    /// The timeframe is not a whole multiple of the feed's bars.
    #[error("timeframe {wanted} cannot be built from the feed's {base} bars (it must be a whole multiple)")]
    Timeframe {
        /// Requested.
        wanted: Timeframe,
        /// What the feed provides.
        base: Timeframe,
    },
}

/// A closed candle of one timeframe.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedCandle {
    /// Its timeframe.
    pub timeframe: Timeframe,
    /// The candle.
    pub candle: Candle,
}

/// Base bars and derived candles for every symbol.
#[derive(Debug)]
pub struct MarketHub {
    base: Timeframe,
    capacity: usize,
    base_builders: HashMap<String, CandleAggregator>,
    history: HashMap<String, CandleSeries>,
    derived: HashMap<(String, Timeframe), CandleAggregator>,
}

impl MarketHub {
    /// A hub whose base bars are `base` long, keeping `capacity` of them per symbol.
    pub fn new(base: Timeframe, capacity: usize) -> Self {
        MarketHub { base, capacity, base_builders: HashMap::new(), history: HashMap::new(), derived: HashMap::new() }
    }

    /// Adds a trade tick; returns the candles it closed.
    pub fn on_tick(&mut self, tick: &Tick) -> Vec<TimedCandle> {
        use rust_decimal::prelude::ToPrimitive;
        let price = tick.last.to_f64().unwrap_or_default();
        let volume = tick.volume.to_f64().unwrap_or_default();
        let base = self.base;
        let builder = self.base_builders.entry(tick.symbol.clone()).or_insert_with(|| CandleAggregator::new(base));
        let closed = builder.add_trade(&tick.symbol, tick.time, price, volume);
        let mut out = Vec::new();
        if let Some(bar) = closed {
            out.extend(self.on_bar(bar));
        }
        out
    }

    /// Adds a complete base bar; returns the candles it closed.
    pub fn on_bar(&mut self, bar: Candle) -> Vec<TimedCandle> {
        let capacity = self.capacity;
        self.history.entry(bar.symbol.clone()).or_insert_with(|| CandleSeries::new(capacity)).push(bar.clone());
        let mut out = Vec::new();
        let bar_end = bar.time + self.base.ms();
        for ((symbol, timeframe), aggregator) in self.derived.iter_mut() {
            if *symbol != bar.symbol {
                continue;
            }
            if *timeframe == self.base {
                out.push(TimedCandle { timeframe: *timeframe, candle: bar.clone() });
                continue;
            }
            if let Some(candle) = aggregator.add_bar(&bar) {
                out.push(TimedCandle { timeframe: *timeframe, candle });
            }
            if let Some(candle) = aggregator.close_if_due(bar_end) {
                out.push(TimedCandle { timeframe: *timeframe, candle });
            }
        }
        // Longer timeframes first: a strategy reading 1h candles from a 5m
        // strategy sees the hour that closed with its 5m candle before it.
        out.sort_by_key(|c| std::cmp::Reverse(c.timeframe));
        out
    }

    /// A complete base bar from another source (REST polling while a stream
    /// is silent). It replaces a bar in progress of the same or an earlier
    /// bucket (the exchange's bar is complete, ours is not); bars not newer
    /// than the history's last one are ignored.
    pub fn on_polled_bar(&mut self, bar: Candle) -> Vec<TimedCandle> {
        let newest = self.history.get(&bar.symbol).and_then(CandleSeries::last).map(|c| c.time);
        if newest.is_some_and(|t| t >= bar.time) {
            return Vec::new();
        }
        if self.base_builders.get(&bar.symbol).and_then(CandleAggregator::current_start).is_some_and(|t| t <= bar.time)
        {
            self.base_builders.remove(&bar.symbol);
        }
        self.on_bar(bar)
    }

    /// The length of the base bars.
    pub fn base(&self) -> Timeframe {
        self.base
    }

    /// Whether candles of `timeframe` can be built from the base bars.
    fn check_timeframe(&self, timeframe: Timeframe) -> Result<(), HubError> {
        if timeframe.ms() % self.base.ms() != 0 {
            return Err(HubError::Timeframe { wanted: timeframe, base: self.base });
        }
        Ok(())
    }

    /// Starts building `timeframe` candles of `symbol` and returns its completed history.
    pub fn subscribe(&mut self, symbol: &str, timeframe: Timeframe) -> Result<Vec<Candle>, HubError> {
        self.check_timeframe(timeframe)?;
        let mut aggregator = CandleAggregator::new(timeframe);
        let mut history = Vec::new();
        if let Some(series) = self.history.get(symbol) {
            for bar in series.since(0) {
                if timeframe == self.base {
                    history.push(bar.clone());
                    continue;
                }
                history.extend(aggregator.add_bar(bar));
                history.extend(aggregator.close_if_due(bar.time + self.base.ms()));
            }
        }
        self.derived.entry((symbol.to_string(), timeframe)).or_insert(aggregator);
        Ok(history)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Tick;

    fn bar(minute: i64, close: f64) -> Candle {
        Candle { symbol: "X".into(), time: minute * 60_000, open: close, high: close, low: close, close, volume: 1.0 }
    }

    #[test]
    fn derived_candles_close_with_their_last_base_bar() {
        let mut hub = MarketHub::new(Timeframe::minute(), 100);
        for m in 0..7 {
            hub.on_bar(bar(m, m as f64));
        }
        let history = hub.subscribe("X", "5m".parse().unwrap()).unwrap();
        assert_eq!(history.len(), 1, "only the complete 0-4 bucket");
        assert_eq!((history[0].open, history[0].close, history[0].volume), (0.0, 4.0, 5.0));
        assert!(hub.on_bar(bar(7, 7.0)).is_empty());
        assert!(hub.on_bar(bar(8, 8.0)).is_empty());
        let closed = hub.on_bar(bar(9, 9.0));
        assert_eq!(closed.len(), 1);
        assert_eq!((closed[0].candle.time, closed[0].candle.open, closed[0].candle.close), (300_000, 5.0, 9.0));
        assert!(hub.subscribe("X", "90s".parse().unwrap()).is_err());
    }

    #[test]
    fn polled_bars_fill_a_silent_stream_without_reordering_history() {
        let mut hub = MarketHub::new(Timeframe::minute(), 100);
        hub.subscribe("X", Timeframe::minute()).unwrap();
        let tick = |ms: i64, price: i64| Tick {
            symbol: "X".into(),
            time: ms,
            bid: price.into(),
            ask: price.into(),
            last: price.into(),
            volume: 1.into(),
        };
        assert!(hub.on_tick(&tick(10_000, 100)).is_empty(), "minute 0 in progress");
        // The stream goes silent; REST gives the complete minutes 0 and 1.
        let closed = hub.on_polled_bar(bar(0, 101.0));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].candle.close, 101.0, "the exchange's complete bar replaces ours");
        assert_eq!(hub.on_polled_bar(bar(1, 102.0)).len(), 1);
        assert!(hub.on_polled_bar(bar(1, 999.0)).is_empty(), "not newer than the history: ignored");
        // The stream resumes in minute 2; minute 2 closes with the first tick of minute 3.
        assert!(hub.on_tick(&tick(125_000, 103)).is_empty());
        let closed = hub.on_tick(&tick(185_000, 104));
        assert_eq!((closed[0].candle.time, closed[0].candle.close), (120_000, 103.0));
    }
}
