//! `--report FILE.html`: one self-contained page (the chart library inlined,
//! the run's data embedded as JSON, no network) with the summary metrics,
//! candles with entries and exits and the script's plotted overlays, equity
//! and drawdown panes, the per-symbol breakdown and the trades table; for a
//! sweep, the ranked runs and a heatmap of the ranking metric over two
//! swept parameters.

use std::path::Path;

use serde::Serialize;
use serde_json::json;

use super::chart_data::ChartData;
use super::report::{Report, SymbolSummary, Trade, by_symbol, trades};
use super::sweep::{RANKABLE, metric};
use super::{BacktestConfig, BacktestRun};
use crate::model::{Candle, Shown};

const TEMPLATE: &str = include_str!("report.html");
const LIBRARY: &str = include_str!("../../assets/lightweight-charts/lightweight-charts.standalone.production.js");
/// Drawn candles per symbol and equity points: enough for any screen, small
/// enough for a month of one-minute bars.
const MAX_BARS: usize = 20_000;
const MAX_POINTS: usize = 10_000;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the report {path}: {message}")]
pub struct HtmlError {
    /// File.
    pub path: String,
    /// Reason.
    pub message: String,
}

/// What one run's report embeds (`window.reportData` in the page).
#[derive(Serialize)]
struct RunData<'a> {
    report: &'a Report,
    trades: Vec<Trade>,
    per_symbol: Vec<SymbolSummary>,
    chart: ChartData,
}

/// Writes the report of one run over `data`.
pub fn write_run(
    path: &Path,
    run: &BacktestRun,
    data: &[Vec<Candle>],
    config: &BacktestConfig,
) -> Result<(), HtmlError> {
    let bars = run.bars(data, config);
    let mut trades = trades(&run.fills, &run.order_kinds);
    for trade in &mut trades {
        trade.pnl = Shown::money(trade.pnl);
        trade.entry_price = trade.entry_price.round_dp(8).normalize();
        trade.exit_price = trade.exit_price.round_dp(8).normalize();
    }
    let per_symbol = by_symbol(&trades, &run.fills)
        .into_iter()
        .map(|s| SymbolSummary { pnl: Shown::money(s.pnl), fees: Shown::money(s.fees), ..s })
        .collect();
    let embedded =
        RunData { report: &run.report, per_symbol, trades, chart: ChartData::build(run, &bars, MAX_BARS, MAX_POINTS) };
    let title = format!("{} — backtest", run.report.strategy);
    write(path, &title, &serde_json::to_value(&embedded).map_err(|e| error(path, e))?)
}

/// Writes the report of a sweep: `reports` ranked best first by `rank`,
/// `axes` the swept parameter names in the order given.
pub fn write_sweep(path: &Path, reports: &[Report], axes: &[String], rank: &str) -> Result<(), HtmlError> {
    let heatmap = (axes.len() >= 2).then(|| heatmap(reports, &axes[0], &axes[1], rank));
    let title = format!("{} — sweep", reports.first().map_or("", |r| r.strategy.as_str()));
    write(path, &title, &json!({ "sweep": { "runs": reports, "axes": axes, "rank": rank, "heatmap": heatmap } }))
}

/// The metric over two parameters: per cell the best run (over any other
/// swept parameter), `null` where no run had those values.
fn heatmap(reports: &[Report], x: &str, y: &str, rank: &str) -> serde_json::Value {
    let higher_is_better = RANKABLE.iter().find(|(name, _)| *name == rank).is_none_or(|(_, higher)| *higher);
    let values = |axis: &str| {
        let mut seen: Vec<&serde_json::Value> = Vec::new();
        for r in reports {
            if let Some(v) = r.params.get(axis).filter(|v| !seen.contains(v)) {
                seen.push(v);
            }
        }
        seen.sort_by(|a, b| match (a.as_f64(), b.as_f64()) {
            (Some(a), Some(b)) => a.total_cmp(&b),
            _ => a.to_string().cmp(&b.to_string()),
        });
        seen
    };
    let (xs, ys) = (values(x), values(y));
    let cells: Vec<Vec<Option<f64>>> = ys
        .iter()
        .map(|yv| {
            xs.iter()
                .map(|xv| {
                    reports
                        .iter()
                        .filter(|r| r.params.get(x) == Some(xv) && r.params.get(y) == Some(yv))
                        .map(|r| metric(r, rank))
                        .filter(|v| v.is_finite())
                        .reduce(|a, b| if (a > b) == higher_is_better { a } else { b })
                })
                .collect()
        })
        .collect();
    json!({ "x": x, "y": y, "xs": xs, "ys": ys, "cells": cells, "higher_is_better": higher_is_better })
}

fn error(path: &Path, message: impl std::fmt::Display) -> HtmlError {
    HtmlError { path: path.display().to_string(), message: message.to_string() }
}

/// Fills the template: the data as JSON that cannot end its script element.
fn write(path: &Path, title: &str, data: &serde_json::Value) -> Result<(), HtmlError> {
    let json = serde_json::to_string(data).map_err(|e| error(path, e))?.replace("</", "<\\/");
    let escaped_title = title.replace('&', "&amp;").replace('<', "&lt;");
    // Each marker once, in order; what is put in is never searched again.
    let mut page = String::with_capacity(TEMPLATE.len() + LIBRARY.len() + json.len());
    let mut rest = TEMPLATE;
    for (marker, value) in [("__TITLE__", escaped_title.as_str()), ("__DATA__", &json), ("__LIBRARY__", LIBRARY)] {
        let (before, after) = rest.split_once(marker).expect("the template holds each marker once, in order");
        page.push_str(before);
        page.push_str(value);
        rest = after;
    }
    page.push_str(rest);
    std::fs::write(path, page).map_err(|e| error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_library_cannot_end_its_script_element() {
        assert!(!LIBRARY.contains("</script"), "the inlined library would end its <script> early");
        assert!(LIBRARY.contains("createChart"));
    }
}
