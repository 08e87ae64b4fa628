//! Backtest metrics: returns, drawdown, Sharpe and Sortino (annualised from
//! the bar interval), round-trip trades with win rate and profit factor,
//! exposure and fees. Serialized deterministically for `--json` (timing is
//! kept out of the JSON so two runs compare byte for byte).

use std::collections::BTreeMap;
use std::time::Duration;

use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use serde::Serialize;

use crate::data::Timeframe;
use crate::model::{Fill, Position, Shown, TimestampMs};

/// Equity after the bars of one time.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EquityPoint {
    /// Bar time.
    pub time: TimestampMs,
    /// Cash + unrealised PnL.
    pub equity: Decimal,
}

/// What the metrics are computed from.
pub struct Inputs<'a> {
    /// Strategy name.
    pub strategy: &'a str,
    /// Symbols traded.
    pub symbols: Vec<String>,
    /// Bars processed.
    pub bars: usize,
    /// The strategy's timeframe: the length of a bar.
    pub timeframe: Timeframe,
    /// The interval of the data the bars were made from.
    pub data_interval: Timeframe,
    /// Starting cash.
    pub initial_cash: Decimal,
    /// Equity curve.
    pub equity: &'a [EquityPoint],
    /// Fills.
    pub fills: &'a [Fill],
    /// Fees paid.
    pub fees: Decimal,
    /// Bar times with a position open.
    pub exposure_bars: usize,
    /// Parameter overrides.
    pub params: &'a BTreeMap<String, serde_json::Value>,
    /// What happened at the end.
    pub notes: Vec<String>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// The backtest report.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Fill conventions in force.
    pub conventions: Vec<&'static str>,
    /// Strategy name.
    pub strategy: String,
    /// Symbols.
    pub symbols: Vec<String>,
    /// Parameter overrides.
    pub params: BTreeMap<String, serde_json::Value>,
    /// First bar time (ISO 8601).
    pub from: String,
    /// Last bar time (ISO 8601).
    pub to: String,
    /// Bars processed: candles of the strategy's timeframe.
    pub bars: usize,
    /// The strategy's timeframe.
    pub timeframe: String,
    /// The interval of the data, detected from its timestamps.
    pub data_interval: String,
    /// True when the data spans less than 30 days: annualised figures
    /// (annualized_return, sharpe, sortino) are extrapolated from a short sample.
    pub short_sample: bool,
    /// Starting cash.
    pub initial_cash: Decimal,
    /// Final equity.
    pub final_equity: Decimal,
    /// Total return (fraction).
    pub total_return: f64,
    /// Annualised return (fraction).
    pub annualized_return: f64,
    /// Largest peak-to-trough fall (fraction of the peak).
    pub max_drawdown: f64,
    /// Largest peak-to-trough fall in money.
    pub max_drawdown_value: Decimal,
    /// Longest time below a previous peak, in bars.
    pub max_drawdown_bars: usize,
    /// Annualised Sharpe ratio of bar returns (no risk-free rate).
    pub sharpe: f64,
    /// Annualised Sortino ratio of bar returns.
    pub sortino: f64,
    /// Fraction of bar times with a position open.
    pub exposure: f64,
    /// Round-trip trades (flat → position → flat or flip).
    pub trades: usize,
    /// Fraction of trades with positive PnL after fees.
    pub win_rate: f64,
    /// Gross profit / gross loss of trades: `"inf"` with wins and no losses,
    /// 0 without trades.
    #[serde(serialize_with = "finite_or_inf")]
    pub profit_factor: f64,
    /// Fills.
    pub fills: usize,
    /// Fees paid.
    pub fees: Decimal,
    /// What happened at the end of the data.
    pub notes: Vec<String>,
    /// Wall time (not in the JSON output).
    #[serde(skip)]
    pub elapsed: Duration,
}

/// A number, or `"inf"` for an infinite one (JSON has no infinity).
fn finite_or_inf<S: serde::Serializer>(value: &f64, serializer: S) -> Result<S::Ok, S::Error> {
    if value.is_infinite() { serializer.serialize_str("inf") } else { serializer.serialize_f64(*value) }
}

fn iso(time: TimestampMs) -> String {
    chrono::DateTime::from_timestamp_millis(time)
        .map_or(time.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
}

fn f(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(0.0)
}

/// The deepest fall of an equity curve from its running peak (the peak
/// starts at the initial cash).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Drawdown {
    /// The largest `fall / peak`.
    fraction: f64,
    /// The largest `peak - equity`.
    value: Decimal,
    /// The most bars spent below a peak.
    bars: usize,
}

impl Drawdown {
    fn of(initial: Decimal, equity: &[EquityPoint]) -> Drawdown {
        let (mut peak, mut peak_index) = (initial, 0usize);
        let mut worst = Drawdown { fraction: 0.0, value: Decimal::ZERO, bars: 0 };
        // Only a fall from a positive peak is a fraction that counts, and
        // peaks only rise: a fall no deeper than the deepest from a positive
        // peak so far is no larger a fraction of its (higher) peak either,
        // so the exact division (this loop's cost) runs only at a new deepest.
        let mut deepest_from_positive = Decimal::ZERO;
        for (i, point) in equity.iter().enumerate() {
            if point.equity >= peak {
                peak = point.equity;
                peak_index = i;
                continue;
            }
            worst.bars = worst.bars.max(i - peak_index);
            let fall = peak - point.equity;
            worst.value = worst.value.max(fall);
            if peak > Decimal::ZERO && fall > deepest_from_positive {
                deepest_from_positive = fall;
                worst.fraction = worst.fraction.max(f(fall / peak));
            }
        }
        worst
    }
}

/// One round trip: a symbol's position from flat back to flat (or reversed).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Trade {
    /// Instrument.
    pub symbol: String,
    /// `long` or `short`.
    pub side: &'static str,
    /// Time of the fill that opened it.
    pub entry_time: TimestampMs,
    /// Time of the fill that closed it.
    pub exit_time: TimestampMs,
    /// Largest size held (positive).
    pub size: Decimal,
    /// Average entry price at that size.
    pub entry_price: Decimal,
    /// Average price of the fills that reduced it.
    pub exit_price: Decimal,
    /// Realised PnL after the fees of its fills.
    pub pnl: Decimal,
    /// `pnl` as a fraction of the entry value (size × entry price).
    pub return_pct: f64,
    /// `exit_time - entry_time`, ms.
    pub duration_ms: i64,
    /// What closed it: the closing order's kind (`market`, `limit`, `stop
    /// loss`, `take profit`, `trailing stop`) or `end of data`.
    pub exit_reason: String,
}

/// The round trip of one symbol in progress.
struct OpenTrade {
    position: Position,
    pnl: Decimal,
    entry_time: TimestampMs,
    size: Decimal,
    entry_price: Decimal,
    exit_value: Decimal,
    exit_size: Decimal,
}

impl OpenTrade {
    fn flat(symbol: &str) -> Self {
        OpenTrade {
            position: Position::flat(symbol),
            pnl: Decimal::ZERO,
            entry_time: 0,
            size: Decimal::ZERO,
            entry_price: Decimal::ZERO,
            exit_value: Decimal::ZERO,
            exit_size: Decimal::ZERO,
        }
    }
}

/// Every round trip of the fills, per symbol, in the order they closed;
/// `kinds` names each order (its client id) as an exit reason, and the
/// closes at the end of a backtest (ids with `-end-`) are `end of data`.
pub fn trades(fills: &[Fill], kinds: &std::collections::HashMap<String, &'static str>) -> Vec<Trade> {
    let mut open: BTreeMap<&str, OpenTrade> = BTreeMap::new();
    let mut trades = Vec::new();
    for fill in fills {
        let trade = open.entry(fill.symbol.as_str()).or_insert_with(|| OpenTrade::flat(&fill.symbol));
        let before = trade.position.size;
        if before.is_zero() {
            trade.entry_time = fill.time;
        }
        let realized = trade.position.apply(fill.side, fill.size, fill.price);
        trade.pnl += realized - fill.fee;
        let after = trade.position.size;
        let reducing = !before.is_zero() && before.is_sign_positive() != (fill.side == crate::model::Side::Buy);
        if reducing {
            let reduced = fill.size.min(before.abs());
            trade.exit_value += reduced * fill.price;
            trade.exit_size += reduced;
        }
        if after.abs() > trade.size && (before.is_zero() || after.is_sign_positive() == before.is_sign_positive()) {
            trade.size = after.abs();
            trade.entry_price = trade.position.entry_price;
        }
        let closed = !before.is_zero() && (after.is_zero() || after.is_sign_positive() != before.is_sign_positive());
        if closed {
            let entry_value = trade.size * trade.entry_price;
            let exit_reason = if fill.order_id.contains("-end-") {
                "end of data".to_string()
            } else {
                kinds.get(&fill.order_id).map_or("market", |k| k).to_string()
            };
            trades.push(Trade {
                symbol: fill.symbol.clone(),
                side: if before.is_sign_positive() { "long" } else { "short" },
                entry_time: trade.entry_time,
                exit_time: fill.time,
                size: trade.size,
                entry_price: trade.entry_price,
                exit_price: if trade.exit_size.is_zero() { fill.price } else { trade.exit_value / trade.exit_size },
                pnl: trade.pnl,
                return_pct: if entry_value.is_zero() { 0.0 } else { f(trade.pnl / entry_value) },
                duration_ms: fill.time - trade.entry_time,
                exit_reason,
            });
            // A flip opens the next trade at the fill price, without extra fees.
            let position = std::mem::replace(&mut trade.position, Position::flat(&fill.symbol));
            *trade = OpenTrade::flat(&fill.symbol);
            if !after.is_zero() {
                trade.entry_time = fill.time;
                trade.size = after.abs();
                trade.entry_price = position.entry_price;
                trade.position = position;
            }
        }
    }
    trades
}

/// PnL after fees of each round trip, per symbol, in order.
pub fn round_trips(fills: &[Fill]) -> Vec<f64> {
    trades(fills, &Default::default()).iter().map(|t| f(t.pnl)).collect()
}

/// One symbol's share of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SymbolSummary {
    /// Instrument.
    pub symbol: String,
    /// Round trips closed.
    pub trades: usize,
    /// Of them, with positive PnL after fees.
    pub wins: usize,
    /// Sum of their PnL after fees.
    pub pnl: Decimal,
    /// Fees of the symbol's fills.
    pub fees: Decimal,
    /// Fills.
    pub fills: usize,
}

/// The per-symbol breakdown of a run's trades and fills.
pub fn by_symbol(trades: &[Trade], fills: &[Fill]) -> Vec<SymbolSummary> {
    let mut out: BTreeMap<&str, SymbolSummary> = BTreeMap::new();
    let empty = |symbol: &str| SymbolSummary {
        symbol: symbol.to_string(),
        trades: 0,
        wins: 0,
        pnl: Decimal::ZERO,
        fees: Decimal::ZERO,
        fills: 0,
    };
    for fill in fills {
        let row = out.entry(fill.symbol.as_str()).or_insert_with(|| empty(&fill.symbol));
        row.fees += fill.fee;
        row.fills += 1;
    }
    for trade in trades {
        let row = out.entry(trade.symbol.as_str()).or_insert_with(|| empty(&trade.symbol));
        row.trades += 1;
        row.wins += usize::from(trade.pnl > Decimal::ZERO);
        row.pnl += trade.pnl;
    }
    out.into_values().collect()
}

impl Report {
    /// Computes every metric.
    pub fn compute(inputs: &Inputs<'_>) -> Report {
        let initial = inputs.initial_cash;
        let final_equity = inputs.equity.last().map_or(initial, |p| p.equity);
        let total_return = if initial.is_zero() { 0.0 } else { f(final_equity / initial) - 1.0 };
        let span_ms = inputs.equity.last().map_or(0, |p| p.time) - inputs.equity.first().map_or(0, |p| p.time)
            + inputs.timeframe.ms();
        let years = span_ms as f64 / (365.25 * 86_400_000.0);
        let annualized_return =
            if years > 0.0 && total_return > -1.0 { (1.0 + total_return).powf(1.0 / years) - 1.0 } else { 0.0 };

        let Drawdown { fraction: max_drawdown, value: max_drawdown_value, bars: max_drawdown_bars } =
            Drawdown::of(initial, inputs.equity);

        let mut previous = f(initial);
        let returns: Vec<f64> = inputs
            .equity
            .iter()
            .map(|p| {
                let equity = f(p.equity);
                let r = if previous == 0.0 { 0.0 } else { equity / previous - 1.0 };
                previous = equity;
                r
            })
            .collect();
        let bars_per_year = 365.25 * 86_400_000.0 / inputs.timeframe.ms() as f64;
        let n = returns.len() as f64;
        let mean = if n > 0.0 { returns.iter().sum::<f64>() / n } else { 0.0 };
        let std =
            if n > 1.0 { (returns.iter().map(|r| (r - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        let downside =
            if n > 1.0 { (returns.iter().map(|r| r.min(0.0).powi(2)).sum::<f64>() / (n - 1.0)).sqrt() } else { 0.0 };
        let sharpe = if std > 0.0 { mean / std * bars_per_year.sqrt() } else { 0.0 };
        let sortino = if downside > 0.0 { mean / downside * bars_per_year.sqrt() } else { 0.0 };

        let trades = round_trips(inputs.fills);
        let wins = trades.iter().filter(|p| **p > 0.0).count();
        let gross_profit: f64 = trades.iter().filter(|p| **p > 0.0).sum();
        let gross_loss: f64 = -trades.iter().filter(|p| **p < 0.0).sum::<f64>();
        // `+ 0.0` turns a negative zero (an empty f64 sum is -0.0) into 0.
        let round = |x: f64| if x.is_finite() { (x * 1e10).round() / 1e10 + 0.0 } else { 0.0 };
        let profit_factor = match (gross_profit > 0.0, gross_loss > 0.0) {
            (_, true) => round(gross_profit / gross_loss),
            (true, false) => f64::INFINITY,
            (false, false) => 0.0,
        };
        let short_sample = span_ms < 30 * 86_400_000;
        let mut notes = inputs.notes.clone();
        if short_sample {
            notes.push(format!(
                "the data spans {:.1} days: annualised return, Sharpe and Sortino are extrapolated from under a month",
                span_ms as f64 / 86_400_000.0
            ));
        }
        Report {
            conventions: super::CONVENTIONS.to_vec(),
            strategy: inputs.strategy.to_string(),
            symbols: inputs.symbols.clone(),
            params: inputs.params.clone(),
            from: inputs.equity.first().map_or_else(String::new, |p| iso(p.time)),
            to: inputs.equity.last().map_or_else(String::new, |p| iso(p.time)),
            bars: inputs.bars,
            timeframe: inputs.timeframe.to_string(),
            data_interval: inputs.data_interval.to_string(),
            short_sample,
            initial_cash: initial,
            final_equity: Shown::money(final_equity),
            total_return: round(total_return),
            annualized_return: round(annualized_return),
            max_drawdown: round(max_drawdown),
            max_drawdown_value: Shown::money(max_drawdown_value),
            max_drawdown_bars,
            sharpe: round(sharpe),
            sortino: round(sortino),
            exposure: round(if inputs.equity.is_empty() {
                0.0
            } else {
                inputs.exposure_bars as f64 / inputs.equity.len() as f64
            }),
            trades: trades.len(),
            win_rate: round(if trades.is_empty() { 0.0 } else { wins as f64 / trades.len() as f64 }),
            profit_factor,
            fills: inputs.fills.len(),
            fees: Shown::money(inputs.fees),
            notes,
            elapsed: inputs.elapsed,
        }
    }

    /// Bars per second of wall time.
    pub fn bars_per_second(&self) -> f64 {
        self.bars as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The human-readable table.
    pub fn table(&self) -> String {
        let pct = |x: f64| format!("{:.2} %", x * 100.0);
        let short = if self.short_sample { " (from under a month of data)" } else { "" };
        let rows: Vec<(&str, String)> = vec![
            ("strategy", self.strategy.clone()),
            ("symbols", self.symbols.join(", ")),
            ("period", format!("{} .. {}", self.from, self.to)),
            ("bars", format!("{} of {} (data: {} bars)", self.bars, self.timeframe, self.data_interval)),
            ("trades", self.trades.to_string()),
            ("win rate", pct(self.win_rate)),
            (
                "profit factor",
                if self.profit_factor.is_infinite() {
                    "inf (no losing trades)".to_string()
                } else {
                    format!("{:.2}", self.profit_factor)
                },
            ),
            ("total return", pct(self.total_return)),
            ("annualized return", format!("{}{short}", pct(self.annualized_return))),
            (
                "max drawdown",
                format!(
                    "{} ({}, {} bars)",
                    pct(self.max_drawdown),
                    self.max_drawdown_value.round_dp(2),
                    self.max_drawdown_bars
                ),
            ),
            ("sharpe", format!("{:.2}{short}", self.sharpe)),
            ("sortino", format!("{:.2}{short}", self.sortino)),
            ("exposure", pct(self.exposure)),
            ("fees paid", self.fees.round_dp(2).to_string()),
            ("final equity", self.final_equity.round_dp(2).to_string()),
            ("elapsed", format!("{:.3} s ({:.0} bars/s)", self.elapsed.as_secs_f64(), self.bars_per_second())),
        ];
        let mut out: Vec<String> = rows.iter().map(|(k, v)| format!("{k:<18} {v}")).collect();
        out.extend(self.notes.iter().map(|n| format!("note: {n}")));
        out.join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The drawdown as first written: a division at every bar below the peak.
    fn every_bar(initial: Decimal, equity: &[EquityPoint]) -> Drawdown {
        let (mut peak, mut peak_index) = (initial, 0usize);
        let mut worst = Drawdown { fraction: 0.0, value: Decimal::ZERO, bars: 0 };
        for (i, point) in equity.iter().enumerate() {
            if point.equity >= peak {
                peak = point.equity;
                peak_index = i;
            } else {
                worst.bars = worst.bars.max(i - peak_index);
                let fall = peak - point.equity;
                worst.value = worst.value.max(fall);
                if !peak.is_zero() {
                    worst.fraction = worst.fraction.max(f(fall / peak));
                }
            }
        }
        worst
    }

    proptest! {
        #[test]
        fn drawdown_divides_only_at_new_depths_and_equals_dividing_every_bar(
            initial in -100_000i64..100_000,
            steps in prop::collection::vec(-500_000i64..500_000, 0..300),
        ) {
            // A random walk in cents from the initial cash, through zero and below at times.
            let initial = Decimal::new(initial, 0);
            let mut cents = initial.mantissa() as i64 * 100;
            let equity: Vec<EquityPoint> = steps
                .iter()
                .enumerate()
                .map(|(i, step)| {
                    cents += step;
                    EquityPoint { time: i as i64 * 60_000, equity: Decimal::new(cents, 2) }
                })
                .collect();
            prop_assert_eq!(Drawdown::of(initial, &equity), every_bar(initial, &equity));
        }
    }
}
