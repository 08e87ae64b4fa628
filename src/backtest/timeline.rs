//! The timeline of a backtest: the data's bars aggregated into candles of
//! every timeframe the strategy reads — by the live host's [`MarketHub`], so
//! a backtest sees the candles the live host would build — in the order the
//! live host delivers them: by close time, other timeframes before the
//! strategy's own candle that closes with them.

use std::borrow::Cow;

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

/// One step of the timeline.
#[derive(Debug, Clone)]
pub enum Step<'a> {
    /// A closed candle of the strategy's timeframe: the broker moves through
    /// its prices, then `on_candle` fires.
    Own(Cow<'a, Candle>),
    /// A closed candle of another timeframe the strategy reads.
    Other(Timeframe, Candle),
}

impl Step<'_> {
    /// When the candle closes (`timeframe_ms`: the strategy's timeframe).
    pub fn close(&self, timeframe_ms: i64) -> TimestampMs {
        match self {
            Step::Own(candle) => candle.time + timeframe_ms,
            Step::Other(timeframe, candle) => candle.time + timeframe.ms(),
        }
    }

    /// The candle, if it is one of the strategy's timeframe.
    pub fn own(&self) -> Option<&Candle> {
        match self {
            Step::Own(candle) => Some(candle),
            Step::Other(..) => None,
        }
    }
}

/// The aggregated data of a backtest.
#[derive(Debug)]
pub struct Timeline<'a> {
    /// Steps in delivery order.
    pub steps: Vec<Step<'a>>,
    /// The data's bar interval (the finest over its symbols).
    pub data_interval: Timeframe,
    /// Symbols in the data the strategy does not trade (left out).
    pub unused: Vec<String>,
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
    let mut keyed: Vec<(TimestampMs, bool, &str, Step<'a>)> = Vec::new();
    let mut unused = Vec::new();
    let mut finest: Option<Timeframe> = None;
    for series in data {
        let Some(first) = series.first() else { continue };
        if !meta.symbols.is_empty() && !meta.symbols.contains(&first.symbol) {
            unused.push(first.symbol.clone());
            continue;
        }
        let bars = series_in(series, from, to);
        let interval = crate::feed::csv::interval_ms(bars).filter(|ms| *ms > 0).map(Timeframe::from_ms);
        let interval = interval.unwrap_or(meta.timeframe);
        finest = Some(finest.map_or(interval, |f| f.min(interval)));
        for timeframe in meta.all_timeframes() {
            if timeframe.ms() % interval.ms() != 0 {
                return Err(TimelineError::Timeframe { symbol: first.symbol.clone(), data: interval, timeframe });
            }
        }
        if meta.all_timeframes().all(|tf| tf == interval) {
            keyed.extend(
                bars.iter()
                    .map(|bar| (bar.time + interval.ms(), true, bar.symbol.as_str(), Step::Own(Cow::Borrowed(bar)))),
            );
            continue;
        }
        let mut hub = MarketHub::new(interval, 1);
        for timeframe in meta.all_timeframes() {
            hub.subscribe(&first.symbol, timeframe).map_err(|_| TimelineError::Timeframe {
                symbol: first.symbol.clone(),
                data: interval,
                timeframe,
            })?;
        }
        for bar in bars {
            for timed in hub.on_bar(bar.clone()) {
                let close = timed.candle.time + timed.timeframe.ms();
                let own = timed.timeframe == meta.timeframe;
                let step =
                    if own { Step::Own(Cow::Owned(timed.candle)) } else { Step::Other(timed.timeframe, timed.candle) };
                keyed.push((close, own, first.symbol.as_str(), step));
            }
        }
    }
    // Stable: the hub's order (longer timeframes first) holds within a key.
    keyed.sort_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
    Ok(Timeline {
        steps: keyed.into_iter().map(|(_, _, _, step)| step).collect(),
        data_interval: finest.unwrap_or(meta.timeframe),
        unused,
    })
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
        let own: Vec<&Candle> = timeline
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::Own(c) => Some(c.as_ref()),
                _ => None,
            })
            .collect();
        assert_eq!(own.len(), 25, "125 minutes = 25 closed 5m candles");
        assert_eq!((own[1].open, own[1].high, own[1].low, own[1].close, own[1].volume), (5.0, 10.0, 4.0, 9.0, 5.0));
        // The hour 0 closes with the 5m candle of 55..59, and comes first.
        let hour = timeline.steps.iter().position(|s| matches!(s, Step::Other(..))).unwrap();
        let Step::Other(tf, candle) = &timeline.steps[hour] else { unreachable!() };
        assert_eq!((tf.to_string(), candle.time, candle.close), ("1h".to_string(), 0, 59.0));
        let Step::Own(next) = &timeline.steps[hour + 1] else { panic!("the 5m candle follows the hour") };
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
