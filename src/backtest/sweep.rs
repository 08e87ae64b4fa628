//! Parameter sweeps: `--sweep fast=5..20:5 --sweep slow=20,30,50` expands to
//! a grid; every combination runs isolated (its own engine and broker) on all
//! cores, and the results are ranked by a chosen metric.

use std::collections::BTreeMap;

use rayon::prelude::*;

use super::{BacktestConfig, BacktestError, Report};
use crate::model::Candle;

/// Why a sweep did not run.
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// A malformed `--sweep` or `--rank`.
    #[error("{0}")]
    Usage(String),
    /// A run of the grid failed.
    #[error("the run with {params}: {error}")]
    Run {
        /// The parameters of the run, `fast=5 slow=0`.
        params: String,
        /// What went wrong.
        error: BacktestError,
    },
}

/// Parses `name=a..b:step` or `name=v1,v2,...` into the values to try.
pub fn parse_axis(text: &str) -> Result<(String, Vec<serde_json::Value>), SweepError> {
    let err = |why: &str| SweepError::Usage(format!("--sweep {text:?}: {why} (use name=5..20:5 or name=10,20,30)"));
    let (name, spec) = text.split_once('=').ok_or_else(|| err("missing `=`"))?;
    if name.is_empty() {
        return Err(err("the parameter name is empty"));
    }
    let values = if let Some((range, step)) = spec.split_once(':').filter(|_| spec.contains("..")) {
        let (start, end) = range.split_once("..").ok_or_else(|| err("a range needs `..`"))?;
        let parse = |s: &str| s.trim().parse::<f64>().map_err(|_| err(&format!("{s:?} is not a number")));
        let (start, end, step) = (parse(start)?, parse(end)?, parse(step)?);
        if step <= 0.0 || end < start {
            return Err(err("the step must be positive and the end not below the start"));
        }
        let count = ((end - start) / step + 1e-9).floor() as usize + 1;
        if count > 10_000 {
            return Err(err("more than 10000 values"));
        }
        let integral = [start, end, step].iter().all(|v| v.fract() == 0.0);
        (0..count)
            .map(|i| {
                let v = start + step * i as f64;
                if integral { serde_json::Value::from(v as i64) } else { serde_json::Value::from(v) }
            })
            .collect()
    } else {
        spec.split(',').filter(|v| !v.is_empty()).map(super::parse_value).collect::<Vec<_>>()
    };
    if values.is_empty() {
        return Err(err("no values"));
    }
    Ok((name.to_string(), values))
}

/// Every combination of the axes' values.
pub fn grid(axes: &[(String, Vec<serde_json::Value>)]) -> Vec<BTreeMap<String, serde_json::Value>> {
    let mut out = vec![BTreeMap::new()];
    for (name, values) in axes {
        out = out
            .into_iter()
            .flat_map(|combo| {
                values.iter().map(move |v| {
                    let mut next = combo.clone();
                    next.insert(name.clone(), v.clone());
                    next
                })
            })
            .collect();
    }
    out
}

/// Metrics a sweep can rank by; true when higher is better.
pub const RANKABLE: [(&str, bool); 7] = [
    ("sharpe", true),
    ("sortino", true),
    ("total_return", true),
    ("profit_factor", true),
    ("win_rate", true),
    ("final_equity", true),
    ("max_drawdown", false),
];

/// A report's value of a rankable metric (0 for an unknown name).
pub fn metric(report: &Report, name: &str) -> f64 {
    use rust_decimal::prelude::ToPrimitive;
    match name {
        "sharpe" => report.sharpe,
        "sortino" => report.sortino,
        "total_return" => report.total_return,
        "profit_factor" => report.profit_factor,
        "win_rate" => report.win_rate,
        "final_equity" => report.final_equity.to_f64().unwrap_or(0.0),
        _ => report.max_drawdown,
    }
}

/// Runs every combination in parallel and ranks the reports, best first.
pub fn run(
    file: &str,
    source: &str,
    data: &[Vec<Candle>],
    base: &BacktestConfig,
    axes: &[(String, Vec<serde_json::Value>)],
    rank: &str,
) -> Result<Vec<Report>, SweepError> {
    let higher_is_better =
        RANKABLE.iter().find(|(name, _)| *name == rank).map(|(_, h)| *h).ok_or_else(|| {
            SweepError::Usage(format!("--rank {rank:?}: one of {}", RANKABLE.map(|r| r.0).join(", ")))
        })?;
    let combos = grid(axes);
    let results: Vec<Result<Report, SweepError>> = combos
        .into_par_iter()
        .map(|params| {
            let shown = params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
            let mut config = base.clone();
            config.params.extend(params);
            super::run_script(file, source, data, &config, &mut |_| {})
                .map(|run| run.report)
                .map_err(|error| SweepError::Run { params: shown, error })
        })
        .collect();
    let mut reports = Vec::with_capacity(results.len());
    for result in results {
        reports.push(result?);
    }
    reports.sort_by(|a, b| {
        let (x, y) = (metric(a, rank), metric(b, rank));
        let order = if higher_is_better { y.total_cmp(&x) } else { x.total_cmp(&y) };
        order.then_with(|| format!("{:?}", a.params).cmp(&format!("{:?}", b.params)))
    });
    Ok(reports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_parse_ranges_and_lists() {
        assert_eq!(
            parse_axis("fast=5..20:5").unwrap().1,
            vec![5, 10, 15, 20].into_iter().map(serde_json::Value::from).collect::<Vec<_>>()
        );
        assert_eq!(parse_axis("k=1.5,2").unwrap().1, vec![serde_json::json!(1.5), serde_json::json!(2)]);
        assert!(parse_axis("fast=20..5:5").is_err());
        assert!(parse_axis("fast").is_err());
        let axes = vec![parse_axis("a=1,2").unwrap(), parse_axis("b=3,4,5").unwrap()];
        assert_eq!(grid(&axes).len(), 6);
    }
}
