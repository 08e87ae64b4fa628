//! The equity curve as SVG or PNG: equity line, drawdown shaded between the
//! running peak and the curve, and a marker at every fill (buys green up,
//! sells red down). Long runs are thinned to at most 2 000 points.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;
use rust_decimal::prelude::ToPrimitive;

use super::report::EquityPoint;
use crate::model::{Fill, Side};

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
const MAX_POINTS: usize = 2_000;

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the plot {path}: {message}")]
pub struct PlotError {
    /// File.
    pub path: String,
    /// Reason.
    pub message: String,
}

/// Writes the plot; the format comes from the extension (`.svg` or `.png`).
pub fn write(path: &Path, title: &str, equity: &[EquityPoint], fills: &[Fill]) -> Result<(), PlotError> {
    let err = |message: String| PlotError { path: path.display().to_string(), message };
    static FONT_ONCE: std::sync::Once = std::sync::Once::new();
    FONT_ONCE.call_once(|| {
        // Text is laid out with the embedded font: no system fonts needed.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("svg") => draw(SVGBackend::new(path, (1200, 600)).into_drawing_area(), title, equity, fills).map_err(err),
        Some("png") => {
            draw(BitMapBackend::new(path, (1200, 600)).into_drawing_area(), title, equity, fills).map_err(err)
        }
        _ => Err(err("the file name must end in .svg or .png".into())),
    }
}

fn draw<DB: DrawingBackend>(
    root: DrawingArea<DB, Shift>,
    title: &str,
    equity: &[EquityPoint],
    fills: &[Fill],
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let step = equity.len().div_ceil(MAX_POINTS).max(1);
    let points: Vec<(i64, f64)> =
        equity.iter().step_by(step).chain(equity.last()).map(|p| (p.time, p.equity.to_f64().unwrap_or(0.0))).collect();
    let (Some(first), Some(last)) = (points.first(), points.last()) else { return Err("no equity points".into()) };
    let (low, high) = points.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, v)| (lo.min(*v), hi.max(*v)));
    let pad = ((high - low) * 0.05).max(1e-6);
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(32)
        .y_label_area_size(80)
        .build_cartesian_2d(first.0..last.0.max(first.0 + 1), (low - pad)..(high + pad))
        .map_err(|x| e(&x))?;
    chart
        .configure_mesh()
        .x_labels(6)
        .x_label_formatter(&|t| {
            chrono::DateTime::from_timestamp_millis(*t)
                .map_or(String::new(), |d| d.format("%Y-%m-%d %H:%M").to_string())
        })
        .y_desc("equity")
        .draw()
        .map_err(|x| e(&x))?;
    let mut peak = f64::MIN;
    let shading: Vec<Polygon<(i64, f64)>> = points
        .windows(2)
        .filter_map(|w| {
            peak = peak.max(w[0].1);
            let next_peak = peak.max(w[1].1);
            (w[0].1 < peak || w[1].1 < next_peak).then(|| {
                Polygon::new(
                    vec![(w[0].0, peak), (w[1].0, next_peak), (w[1].0, w[1].1), (w[0].0, w[0].1)],
                    RED.mix(0.18).filled(),
                )
            })
        })
        .collect();
    chart.draw_series(shading).map_err(|x| e(&x))?;
    chart
        .draw_series(LineSeries::new(points.iter().copied(), BLUE.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label("equity");
    let at = |time: i64| {
        let i = equity.partition_point(|p| p.time < time).min(equity.len().saturating_sub(1));
        equity.get(i).map_or(0.0, |p| p.equity.to_f64().unwrap_or(0.0))
    };
    let markers: Vec<_> = fills.iter().step_by(fills.len().div_ceil(MAX_POINTS).max(1)).collect();
    chart
        .draw_series(
            markers
                .iter()
                .filter(|f| f.side == Side::Buy)
                .map(|f| TriangleMarker::new((f.time, at(f.time)), 6, GREEN.filled())),
        )
        .map_err(|x| e(&x))?;
    chart
        .draw_series(
            markers
                .iter()
                .filter(|f| f.side == Side::Sell)
                .map(|f| Cross::new((f.time, at(f.time)), 5, RED.stroke_width(2))),
        )
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}
