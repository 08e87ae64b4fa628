//! Per-strategy indicator cache: each (indicator, symbol, parameters) keeps
//! its incremental state and is fed only the candles it has not seen yet, so
//! a call costs O(new candles), not O(period).

use rustc_hash::FxHashMap;

use super::indicators::{Atr, BBands, BBandsValue, Ema, Highest, Lowest, Macd, MacdValue, Rsi, Sma, Vwap};
use super::series::CandleSeries;

/// Which indicator with which parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Sma(usize),
    Ema(usize),
    Rsi(usize),
    Atr(usize),
    Macd(usize, usize, usize),
    BBands(usize, u64),
    Highest(usize),
    Lowest(usize),
    Vwap,
}

#[derive(Debug, Clone)]
enum State {
    Sma(Sma),
    Ema(Ema),
    Rsi(Rsi),
    Atr(Atr),
    Macd(Macd),
    BBands(BBands),
    Highest(Highest),
    Lowest(Lowest),
    Vwap(Vwap),
}

/// The latest output of an indicator.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum IndicatorValue {
    /// Not warm yet.
    Warming,
    /// A single number.
    Number(f64),
    /// MACD triple.
    Macd(MacdValue),
    /// Bollinger bands.
    Bands(BBandsValue),
}

#[derive(Debug, Clone)]
struct Slot {
    state: State,
    next_index: u64,
    value: IndicatorValue,
}

/// Indicator states of one strategy, keyed by symbol, then parameters (a
/// lookup allocates nothing once the indicator exists).
#[derive(Debug, Clone, Default)]
pub struct IndicatorCache {
    slots: FxHashMap<String, FxHashMap<Key, Slot>>,
}

macro_rules! accessor {
    ($(#[$doc:meta])* $name:ident ($($arg:ident: $ty:ty),*) => $key:expr, $state:expr) => {
        $(#[$doc])*
        pub fn $name(&mut self, symbol: &str, series: &CandleSeries, $($arg: $ty),*) -> IndicatorValue {
            self.value(symbol, series, $key, || $state)
        }
    };
}

impl IndicatorCache {
    accessor!(/// SMA of closes.
        sma(n: usize) => Key::Sma(n), State::Sma(Sma::new(n)));
    accessor!(/// EMA of closes.
        ema(n: usize) => Key::Ema(n), State::Ema(Ema::new(n)));
    accessor!(/// Wilder RSI of closes.
        rsi(n: usize) => Key::Rsi(n), State::Rsi(Rsi::new(n)));
    accessor!(/// Average true range.
        atr(n: usize) => Key::Atr(n), State::Atr(Atr::new(n)));
    accessor!(/// MACD of closes.
        macd(fast: usize, slow: usize, signal: usize) => Key::Macd(fast, slow, signal), State::Macd(Macd::new(fast, slow, signal)));
    accessor!(/// Bollinger bands of closes.
        bbands(n: usize, k: f64) => Key::BBands(n, k.to_bits()), State::BBands(BBands::new(n, k)));
    accessor!(/// Highest high.
        highest(n: usize) => Key::Highest(n), State::Highest(Highest::new(n)));
    accessor!(/// Lowest low.
        lowest(n: usize) => Key::Lowest(n), State::Lowest(Lowest::new(n)));
    accessor!(/// Daily-anchored VWAP.
        vwap() => Key::Vwap, State::Vwap(Vwap::new()));

    fn value(&mut self, symbol: &str, series: &CandleSeries, key: Key, make: impl FnOnce() -> State) -> IndicatorValue {
        let by_key = match self.slots.get_mut(symbol) {
            Some(by_key) => by_key,
            None => self.slots.entry(symbol.to_string()).or_default(),
        };
        let slot = by_key.entry(key).or_insert_with(|| Slot {
            state: make(),
            next_index: series.first_index(),
            value: IndicatorValue::Warming,
        });
        for candle in series.since(slot.next_index) {
            let number = |v: Option<f64>| v.map_or(IndicatorValue::Warming, IndicatorValue::Number);
            slot.value = match &mut slot.state {
                State::Sma(i) => number(i.update(candle.close)),
                State::Ema(i) => number(i.update(candle.close)),
                State::Rsi(i) => number(i.update(candle.close)),
                State::Atr(i) => number(i.update(candle)),
                State::Highest(i) => number(i.update(candle.high)),
                State::Lowest(i) => number(i.update(candle.low)),
                State::Vwap(i) => number(i.update(candle)),
                State::Macd(i) => i.update(candle.close).map_or(IndicatorValue::Warming, IndicatorValue::Macd),
                State::BBands(i) => i.update(candle.close).map_or(IndicatorValue::Warming, IndicatorValue::Bands),
            };
        }
        slot.next_index = series.end_index();
        slot.value
    }
}
