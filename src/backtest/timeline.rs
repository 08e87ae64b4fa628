//! The timeline of a backtest: the data's bars aggregated into candles of
//! every timeframe the strategy reads — by the live host's [`MarketHub`], so
//! a backtest sees the candles the live host would build — in the order the
//! live host delivers them: by close time, other timeframes before the
//! strategy's own candle that closes with them.

use crate::data::{MarketHub, Timeframe};
use crate::model::{Candle, TimestampMs};
use crate::strategy::StrategyMeta;

/// Data the strategy cannot run on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimelineError {
    /// The strategy trades symbols the data does not have.
    #[error(
        "the strategy trades {} but the data has {}; name each file's symbol with --symbol (e.g. --symbol BTCUSD)",
        wanted.join(", "), if have.is_empty() { "no symbols".to_string() } else { have.join(", ") }
    )]
    Symbols {
        /// What the strategy's `config()` declares.
        wanted: Vec<String>,
        /// What the data has.
        have: Vec<String>,
    },
    /// The data's bars cannot make a timeframe the strategy reads.
    #[error(
        "{symbol}: the data has {data} bars, which cannot make the strategy's {timeframe} candles{}",
        if data.ms() > timeframe.ms() { " (the data is coarser than the timeframe)" } else { " (the timeframe must be a whole multiple of the data's interval)" }
    )]
    Timeframe {
        /// Symbol.
        symbol: String,
        /// The data's interval.
        data: Timeframe,
        /// The timeframe wanted.
        timeframe: Timeframe,
    },
}

/// One step of the timeline: a closed candle, of the strategy's timeframe
/// (`timeframe` is `None`: the broker moves through its prices, then
/// `on_candle` fires) or of another timeframe it reads.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// When the candle closes.
    pub close: TimestampMs,
    /// `None` for the strategy's own timeframe, else the other timeframe.
    pub timeframe: Option<Timeframe>,
    candle: CandleRef,
    /// The symbol's place in alphabetical order (orders steps that close together).
    rank: u32,
}

/// Where a step's candle is: a bar of the data as it is, or one the timeline made.
#[derive(Debug, Clone, Copy)]
enum CandleRef {
    Data { series: u32, index: u32 },
    Made(u32),
}

/// The aggregated data of a backtest.
#[derive(Debug)]
pub struct Timeline<'a> {
    /// Steps in delivery order.
    pub steps: Vec<Step>,
    /// The data's bar interval (the finest over its symbols).
    pub data_interval: Timeframe,
    /// Symbols in the data the strategy does not trade (left out).
    pub unused: Vec<String>,
    data: &'a [Vec<Candle>],
    made: Vec<Candle>,
}

impl Timeline<'_> {
    /// The candle of a step.
    pub fn candle(&self, step: &Step) -> &Candle {
        match step.candle {
            CandleRef::Data { series, index } => &self.data[series as usize][index as usize],
            CandleRef::Made(index) => &self.made[index as usize],
        }
    }

    /// The candles of the strategy's timeframe, in order.
    pub fn own(&self) -> impl DoubleEndedIterator<Item = &Candle> {
        self.steps.iter().filter(|s| s.timeframe.is_none()).map(|s| self.candle(s))
    }
}

/// Builds the timeline of `meta`'s strategy over `data` (one series per
/// symbol, each in time order), keeping bars in `[from, to)`.
pub fn build<'a>(
    data: &'a [Vec<Candle>],
    meta: &StrategyMeta,
    from: Option<TimestampMs>,
    to: Option<TimestampMs>,
) -> Result<Timeline<'a>, TimelineError> {
    let have: Vec<String> = data.iter().filter_map(|s| s.first()).map(|c| c.symbol.clone()).collect();
    let missing: Vec<String> = meta.symbols.iter().filter(|s| !have.contains(s)).cloned().collect();
    if !missing.is_empty() {
        return Err(TimelineError::Symbols { wanted: meta.symbols.clone(), have });
    }
    // Steps of several symbols that close together go in symbol order.
    let mut by_symbol: Vec<usize> = (0..data.len()).collect();
    by_symbol.sort_by(|a, b| data[*a].first().map(|c| &c.symbol).cmp(&data[*b].first().map(|c| &c.symbol)));
    let mut rank = vec![0u32; data.len()];
    for (r, series) in by_symbol.into_iter().enumerate() {
        rank[series] = r as u32;
    }
    let mut steps: Vec<Step> = Vec::new();
    let mut made = Vec::new();
    let mut unused = Vec::new();
    let mut finest: Option<Timeframe> = None;
    for (series_index, series) in data.iter().enumerate() {
        let Some(first) = series.first() else { continue };
        if !meta.symbols.is_empty() && !meta.symbols.contains(&first.symbol) {
            unused.push(first.symbol.clone());
            continue;
        }
        let offset = from.map_or(0, |f| series.partition_point(|c| c.time < f));
        let bars = series_in(series, from, to);
        let interval = crate::feed::csv::interval_ms(bars).filter(|ms| *ms > 0).map(Timeframe::from_ms);
        let interval = interval.unwrap_or(meta.timeframe);
        finest = Some(finest.map_or(interval, |f| f.min(interval)));
        for timeframe in meta.all_timeframes() {
            if timeframe.ms() % interval.ms() != 0 {
                return Err(TimelineError::Timeframe { symbol: first.symbol.clone(), data: interval, timeframe });
            }
        }
        let rank = rank[series_index];
        if meta.all_timeframes().all(|tf| tf == interval) {
            steps.extend(bars.iter().enumerate().map(|(i, bar)| {
                let candle = CandleRef::Data { series: series_index as u32, index: (offset + i) as u32 };
                Step { close: bar.time + interval.ms(), timeframe: None, candle, rank }
            }));
            continue;
        }
        let mut hub = MarketHub::new(interval, 1);
        for timeframe in meta.all_timeframes() {
            // Cannot fail: every timeframe is a multiple of the interval (checked above).
            let _ = hub.subscribe(&first.symbol, timeframe);
        }
        let data_start = bars.first().map_or(0, |b| b.time);
        for bar in bars {
            for timed in hub.on_bar(bar.clone()) {
                if timed.candle.time < data_start {
                    continue; // the data starts inside this candle: it would be partial
                }
                let close = timed.candle.time + timed.timeframe.ms();
                let timeframe = (timed.timeframe != meta.timeframe).then_some(timed.timeframe);
                steps.push(Step { close, timeframe, candle: CandleRef::Made(made.len() as u32), rank });
                made.push(timed.candle);
            }
        }
    }
    // By close; other timeframes before the strategy's own; then by symbol.
    // Stable: the hub's order (longer timeframes first) holds within a key.
    let key = |step: &Step| (step.close, step.timeframe.is_none(), step.rank);
    if !steps.is_sorted_by_key(key) {
        steps.sort_by_key(key);
    }
    Ok(Timeline { steps, data_interval: finest.unwrap_or(meta.timeframe), unused, data, made })
}

/// The bars of a series in `[from, to)`.
fn series_in(series: &[Candle], from: Option<TimestampMs>, to: Option<TimestampMs>) -> &[Candle] {
    let start = from.map_or(0, |f| series.partition_point(|c| c.time < f));
    let end = to.map_or(series.len(), |t| series.partition_point(|c| c.time < t));
    &series[start..end.max(start)]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(minute: i64, close: f64) -> Candle {
        Candle {
            symbol: "X".into(),
            time: minute * 60_000,
            open: close,
            high: close + 1.0,
            low: close - 1.0,
            close,
            volume: 1.0,
        }
    }

    fn meta(tf: &str, others: &[&str]) -> StrategyMeta {
        let mut meta = StrategyMeta::new(vec!["X".into()], tf.parse().unwrap());
        meta.timeframes = others.iter().map(|t| t.parse().unwrap()).collect();
        meta
    }

    #[test]
    fn minutes_make_closed_candles_of_each_timeframe_in_delivery_order() {
        let data = vec![(0..125).map(|m| bar(m, m as f64)).collect::<Vec<_>>()];
        let timeline = build(&data, &meta("5m", &["1h"]), None, None).unwrap();
        assert_eq!(timeline.data_interval.to_string(), "1m");
        let own: Vec<&Candle> = timeline.own().collect();
        assert_eq!(own.len(), 25, "125 minutes = 25 closed 5m candles");
        assert_eq!((own[1].open, own[1].high, own[1].low, own[1].close, own[1].volume), (5.0, 10.0, 4.0, 9.0, 5.0));
        // The hour 0 closes with the 5m candle of 55..59, and comes first.
        let hour = timeline.steps.iter().position(|s| s.timeframe.is_some()).unwrap();
        let (step, candle) = (&timeline.steps[hour], timeline.candle(&timeline.steps[hour]));
        assert_eq!((step.timeframe.unwrap().to_string(), candle.time, candle.close), ("1h".to_string(), 0, 59.0));
        let next = &timeline.steps[hour + 1];
        assert!(next.timeframe.is_none(), "the 5m candle follows the hour");
        let next = timeline.candle(next);
        assert_eq!(next.time, 55 * 60_000);
    }

    #[test]
    fn coarse_data_and_missing_symbols_are_errors_naming_both_sides() {
        let daily: Vec<Candle> = (0..3).map(|d| Candle { time: d * 86_400_000, ..bar(0, 1.0) }).collect();
        let err = build(std::slice::from_ref(&daily), &meta("1m", &[]), None, None).unwrap_err().to_string();
        assert!(err.contains("1d bars") && err.contains("1m candles") && err.contains("coarser"), "{err}");
        let mut wants = meta("1d", &[]);
        wants.symbols = vec!["BTCUSD".into()];
        let err = build(&[daily], &wants, None, None).unwrap_err().to_string();
        assert!(err.contains("trades BTCUSD but the data has X"), "{err}");
    }
}
