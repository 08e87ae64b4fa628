//! What the backtest's pictures draw — the HTML report and `--plot` — made
//! drawable at a chosen resolution: bars merged in groups of consecutive
//! bars (never more than `max_bars` per symbol), fills merged into one marker
//! per group and side, the equity and drawdown curves thinned the same way
//! (a group keeps its last equity and its deepest drawdown) and the plotted
//! series reduced to their last value per group. A month of one-minute bars
//! stays readable and small.

use std::collections::BTreeMap;

use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

use super::BacktestRun;
use crate::model::{Candle, Side, TimestampMs};

/// A drawn bar: `[time, open, high, low, close]`.
pub type Bar = (TimestampMs, f64, f64, f64, f64);

/// One marker: the fills of one side in one drawn bar.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Marker {
    /// The drawn bar's time.
    pub time: TimestampMs,
    /// `buy` or `sell`.
    pub side: &'static str,
    /// Fills merged into it.
    pub fills: usize,
    /// Their total size.
    pub size: f64,
    /// Their size-weighted average price.
    pub price: f64,
}

/// One symbol's drawable chart.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SymbolChart {
    /// Instrument.
    pub symbol: String,
    /// Bars of the run merged per drawn bar.
    pub merged: usize,
    /// The drawn bars.
    pub bars: Vec<Bar>,
    /// Fill markers.
    pub markers: Vec<Marker>,
    /// The plotted series (`chart::plot`) by name: `[time, value]` per drawn bar.
    pub plots: BTreeMap<String, Vec<(TimestampMs, f64)>>,
}

/// The drawable pictures of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ChartData {
    /// Per symbol.
    pub symbols: Vec<SymbolChart>,
    /// Equity `[time, value]`, thinned.
    pub equity: Vec<(TimestampMs, f64)>,
    /// Drawdown below the running peak `[time, fraction ≤ 0]`, thinned.
    pub drawdown: Vec<(TimestampMs, f64)>,
}

/// Groups of at most `max` consecutive items: the group length.
fn group_len(count: usize, max: usize) -> usize {
    count.div_ceil(max.max(1)).max(1)
}

/// Bars merged `k` at a time (open of the first, close of the last).
fn merge_bars(bars: &[Candle], k: usize) -> Vec<Bar> {
    bars.chunks(k)
        .map(|group| {
            let (first, last) = (&group[0], &group[group.len() - 1]);
            let high = group.iter().map(|b| b.high).fold(f64::MIN, f64::max);
            let low = group.iter().map(|b| b.low).fold(f64::MAX, f64::min);
            (first.time, first.open, high, low, last.close)
        })
        .collect()
}

/// The drawn bar a time falls in (the last one starting at or before it).
fn bar_at(bars: &[Bar], time: TimestampMs) -> Option<TimestampMs> {
    let i = bars.partition_point(|b| b.0 <= time);
    (i > 0).then(|| bars[i - 1].0)
}

impl ChartData {
    /// The pictures of `run` over its `bars` (per symbol, as
    /// [`BacktestRun::bars`] gives them), at most `max_bars` drawn bars per
    /// symbol and `max_points` equity points.
    pub fn build(run: &BacktestRun, bars: &[Vec<Candle>], max_bars: usize, max_points: usize) -> ChartData {
        let symbols = bars
            .iter()
            .filter(|series| !series.is_empty())
            .map(|series| {
                let symbol = series[0].symbol.clone();
                let merged = group_len(series.len(), max_bars);
                let drawn = merge_bars(series, merged);
                let mut markers: BTreeMap<(TimestampMs, &'static str), Marker> = BTreeMap::new();
                for fill in run.fills.iter().filter(|f| f.symbol == symbol) {
                    let Some(time) = bar_at(&drawn, fill.time) else { continue };
                    let side = if fill.side == Side::Buy { "buy" } else { "sell" };
                    let (size, price) = (fill.size.to_f64().unwrap_or(0.0), fill.price.to_f64().unwrap_or(0.0));
                    let marker =
                        markers.entry((time, side)).or_insert(Marker { time, side, fills: 0, size: 0.0, price: 0.0 });
                    marker.price =
                        (marker.price * marker.size + price * size) / (marker.size + size).max(f64::MIN_POSITIVE);
                    marker.size += size;
                    marker.fills += 1;
                }
                let mut plots: BTreeMap<String, Vec<(TimestampMs, f64)>> = BTreeMap::new();
                for plotted in run.plots.iter().filter(|p| p.symbol == symbol) {
                    let points = plots.entry(plotted.name.clone()).or_default();
                    for point in &plotted.points {
                        let Some(time) = bar_at(&drawn, point.time) else { continue };
                        match points.last_mut() {
                            Some(last) if last.0 == time => last.1 = point.value,
                            _ => points.push((time, point.value)),
                        }
                    }
                }
                SymbolChart { symbol, merged, bars: drawn, markers: markers.into_values().collect(), plots }
            })
            .collect();
        let mut peak = f64::MIN;
        let full: Vec<(TimestampMs, f64, f64)> = run
            .equity
            .iter()
            .map(|p| {
                let equity = p.equity.to_f64().unwrap_or(0.0);
                peak = peak.max(equity);
                let drawdown = if peak > 0.0 { equity / peak - 1.0 } else { 0.0 };
                (p.time, equity, drawdown)
            })
            .collect();
        let k = group_len(full.len(), max_points);
        let equity = full.chunks(k).map(|g| (g[0].0, g[g.len() - 1].1)).collect();
        let drawdown = full.chunks(k).map(|g| (g[0].0, g.iter().map(|p| p.2).fold(0.0, f64::min))).collect();
        ChartData { symbols, equity, drawdown }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bar(time: i64, open: f64, high: f64, low: f64, close: f64) -> Candle {
        Candle { symbol: "X".into(), time, open, high, low, close, volume: 1.0 }
    }

    #[test]
    fn bars_merge_into_groups_keeping_the_range() {
        let bars = [bar(0, 1.0, 2.0, 0.5, 1.5), bar(60, 1.5, 3.0, 1.0, 2.5), bar(120, 2.5, 2.6, 2.0, 2.1)];
        assert_eq!(merge_bars(&bars, 2), vec![(0, 1.0, 3.0, 0.5, 2.5), (120, 2.5, 2.6, 2.0, 2.1)]);
        assert_eq!(group_len(43_200, 20_000), 3);
        assert_eq!(group_len(10, 20_000), 1);
        let drawn = merge_bars(&bars, 2);
        assert_eq!(bar_at(&drawn, 90), Some(0));
        assert_eq!(bar_at(&drawn, 120), Some(120));
        assert_eq!(bar_at(&drawn, -1), None);
    }
}
