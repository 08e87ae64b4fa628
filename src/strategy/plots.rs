//! What strategies plot with `chart::plot(name, value)`: per strategy,
//! symbol and name, one value per bar (a second value for the same bar
//! replaces the first). The host keeps the newest [`LIVE_POINTS`] of each
//! series in memory for the dashboard's chart overlays; a backtest keeps
//! them all for its report.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;

use crate::model::TimestampMs;

/// Values the host keeps per plotted series.
pub const LIVE_POINTS: usize = 2_000;

/// Distinct (symbol, name) series one strategy may plot.
pub const MAX_SERIES: usize = 16;

/// Longest plot name, in bytes.
pub const MAX_NAME_BYTES: usize = 64;

/// One plotted value.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PlotPoint {
    /// Bar start (ms since the epoch).
    pub time: TimestampMs,
    /// The value.
    pub value: f64,
}

/// One plotted series.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct PlotSeries {
    /// Strategy that plotted it.
    pub strategy: String,
    /// Symbol whose chart it overlays.
    pub symbol: String,
    /// Name given to `chart::plot`.
    pub name: String,
    /// Values, oldest first.
    pub points: Vec<PlotPoint>,
}

/// Plotted values by strategy, symbol and name (nested so that recording
/// into a known series allocates nothing).
type Book = BTreeMap<String, BTreeMap<String, BTreeMap<String, VecDeque<PlotPoint>>>>;

/// Plotted series by (strategy, symbol, name), each holding at most `cap` values.
#[derive(Debug)]
pub struct PlotBook {
    cap: usize,
    series: Mutex<Book>,
}

impl Default for PlotBook {
    fn default() -> Self {
        PlotBook::keeping(LIVE_POINTS)
    }
}

impl PlotBook {
    /// A book keeping the newest `cap` values of each series.
    pub fn keeping(cap: usize) -> Self {
        PlotBook { cap: cap.max(1), series: Mutex::default() }
    }

    /// Adds a value; one for the same bar as the newest replaces it, and an
    /// older bar's value is dropped.
    pub fn record(&self, strategy: &str, symbol: &str, name: &str, point: PlotPoint) {
        fn entry<'a, V: Default>(map: &'a mut BTreeMap<String, V>, key: &str) -> &'a mut V {
            if !map.contains_key(key) {
                map.insert(key.to_string(), V::default());
            }
            map.get_mut(key).expect("just inserted")
        }
        let mut book = self.series.lock().unwrap_or_else(|e| e.into_inner());
        // A series seen before: one lookup a level (the common case, every bar).
        let known = book.get_mut(strategy).and_then(|s| s.get_mut(symbol)).and_then(|n| n.get_mut(name));
        let points = match known {
            Some(points) => points,
            None => entry(entry(entry(&mut book, strategy), symbol), name),
        };
        add_point(points, point, self.cap);
    }

    /// Every series overlaying `symbol` (all with `None`), by strategy and name.
    pub fn series(&self, symbol: Option<&str>) -> Vec<PlotSeries> {
        let book = self.series.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = Vec::new();
        for (strategy, symbols) in book.iter() {
            for (plotted_symbol, names) in symbols.iter().filter(|(s, _)| symbol.is_none_or(|wanted| wanted == *s)) {
                out.extend(names.iter().map(|(name, points)| PlotSeries {
                    strategy: strategy.clone(),
                    symbol: plotted_symbol.clone(),
                    name: name.clone(),
                    points: points.iter().copied().collect(),
                }));
            }
        }
        out
    }
}

/// Adds a value to a series keeping at most `cap`: one for the same bar as
/// the newest replaces it, and an older bar's value is dropped.
fn add_point(points: &mut VecDeque<PlotPoint>, point: PlotPoint, cap: usize) {
    match points.back_mut() {
        Some(last) if last.time == point.time => *last = point,
        Some(last) if last.time > point.time => {}
        _ => {
            if points.len() == cap {
                points.pop_front();
            }
            points.push_back(point);
        }
    }
}

/// One strategy's plotted series, all its values, owned by one thread (a
/// backtest). A series is found by the names the strategy's context shares
/// for it (compared by address first, by text only for a series not seen
/// under those names), so recording a value compares no text.
#[derive(Debug, Default)]
pub struct StrategyPlots(Vec<(Arc<str>, Arc<str>, VecDeque<PlotPoint>)>);

impl StrategyPlots {
    /// Adds a value as [`PlotBook::record`] does, without a cap.
    pub fn record(&mut self, symbol: Arc<str>, name: Arc<str>, point: PlotPoint) {
        let same = |(s, n, _): &(Arc<str>, Arc<str>, _)| Arc::ptr_eq(s, &symbol) && Arc::ptr_eq(n, &name);
        let index = match self.0.iter().position(same) {
            Some(index) => index,
            None => match self.0.iter().position(|(s, n, _)| *s == symbol && *n == name) {
                Some(index) => index,
                None => {
                    self.0.push((symbol, name, VecDeque::new()));
                    self.0.len() - 1
                }
            },
        };
        add_point(&mut self.0[index].2, point, usize::MAX);
    }

    /// The series as [`PlotBook::series`] lists them (by symbol, then name).
    pub fn into_series(self, strategy: &str) -> Vec<PlotSeries> {
        let mut series: Vec<PlotSeries> = self
            .0
            .into_iter()
            .map(|(symbol, name, points)| PlotSeries {
                strategy: strategy.to_string(),
                symbol: symbol.to_string(),
                name: name.to_string(),
                points: points.into(),
            })
            .collect();
        series.sort_by(|a, b| (&a.symbol, &a.name).cmp(&(&b.symbol, &b.name)));
        series
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_bar_the_newest_kept_within_the_cap() {
        let book = PlotBook::keeping(3);
        for (time, value) in [(1, 1.0), (2, 2.0), (2, 2.5), (1, 9.0), (3, 3.0), (4, 4.0)] {
            book.record("s", "BTCUSD", "fast", PlotPoint { time, value });
        }
        book.record("s", "ETHUSD", "fast", PlotPoint { time: 1, value: 7.0 });
        let btc = book.series(Some("BTCUSD"));
        assert_eq!(btc.len(), 1);
        let values: Vec<(i64, f64)> = btc[0].points.iter().map(|p| (p.time, p.value)).collect();
        assert_eq!(values, vec![(2, 2.5), (3, 3.0), (4, 4.0)]);
        assert_eq!(book.series(None).len(), 2);
    }

    #[test]
    fn a_strategys_own_plots_list_what_the_book_lists() {
        let book = PlotBook::keeping(usize::MAX);
        let mut own = StrategyPlots::default();
        let names: Vec<(Arc<str>, Arc<str>)> =
            [("ETHUSD", "slow"), ("BTCUSD", "slow"), ("BTCUSD", "fast")].map(|(s, n)| (s.into(), n.into())).into();
        for (i, time) in [1, 2, 2, 1, 3, 5, 4, 6].into_iter().enumerate() {
            let (symbol, name) = &names[i % names.len()];
            // Every fourth value comes under new names with the same text.
            let (symbol, name) = match i % 4 {
                3 => (Arc::from(&**symbol), Arc::from(&**name)),
                _ => (symbol.clone(), name.clone()),
            };
            let point = PlotPoint { time, value: i as f64 };
            book.record("s", &symbol, &name, point);
            own.record(symbol, name, point);
        }
        let own = own.into_series("s");
        assert_eq!(own.len(), 3, "{own:?}");
        assert_eq!(own, book.series(None));
    }
}
