//! `--plot FILE.svg|png`: a static picture of a run in three panes sharing
//! the time axis — candles with the fills (buys green up, sells red down,
//! merged per drawn candle), the equity curve, and the drawdown in percent —
//! with legends and dated axes. Bars are merged so that at most
//! [`MAX_CANDLES`] candles are drawn: a month of one-minute bars stays readable.

use std::path::Path;

use plotters::coord::Shift;
use plotters::prelude::*;

use super::chart_data::{ChartData, SymbolChart};
use super::{BacktestConfig, BacktestRun};
use crate::model::Candle;

const FONT: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");
/// Candles drawn at most (about 4 px each at the picture's width).
pub const MAX_CANDLES: usize = 300;
const MAX_POINTS: usize = 2_000;
const SIZE: (u32, u32) = (1400, 900);

/// Why a plot could not be written.
#[derive(Debug, thiserror::Error)]
#[error("cannot write the plot {path}: {message}")]
pub struct PlotError {
    /// File.
    pub path: String,
    /// Reason.
    pub message: String,
}

/// Writes the plot of `run` over `data`; the format comes from the extension (`.svg` or `.png`).
pub fn write(path: &Path, run: &BacktestRun, data: &[Vec<Candle>], config: &BacktestConfig) -> Result<(), PlotError> {
    let err = |message: String| PlotError { path: path.display().to_string(), message };
    static FONT_ONCE: std::sync::Once = std::sync::Once::new();
    FONT_ONCE.call_once(|| {
        // Text is laid out with the embedded font: no system fonts needed.
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
    let chart = ChartData::build(run, &run.bars(data, config), MAX_CANDLES, MAX_POINTS);
    let title = format!("{} — {} {}", run.report.strategy, run.report.symbols.join(", "), run.report.timeframe);
    let extension = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    // The drawing library asserts on some inputs: a panic there is an error, not a crash.
    let drawn = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match extension.as_deref() {
        Some("svg") => draw(SVGBackend::new(path, SIZE).into_drawing_area(), &title, &chart),
        Some("png") => draw(BitMapBackend::new(path, SIZE).into_drawing_area(), &title, &chart),
        _ => Err("the file name must end in .svg or .png".into()),
    }));
    drawn.unwrap_or_else(|panic| Err(format!("drawing failed: {}", crate::health::panic_message(panic)))).map_err(err)
}

/// A date label fitting the span shown.
fn date_formatter(span_ms: i64) -> impl Fn(&i64) -> String {
    let format = if span_ms > 3 * 86_400_000 { "%Y-%m-%d" } else { "%m-%d %H:%M" };
    move |t| chrono::DateTime::from_timestamp_millis(*t).map_or(String::new(), |d| d.format(format).to_string())
}

fn range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (low, high) = values.fold((f64::MAX, f64::MIN), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if low > high {
        return (0.0, 1.0);
    }
    let pad = ((high - low) * 0.05).max(high.abs() * 1e-6).max(1e-9);
    (low - pad, high + pad)
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, title: &str, chart: &ChartData) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    root.fill(&WHITE).map_err(|x| e(&x))?;
    let root = root.titled(title, ("sans-serif", 24)).map_err(|x| e(&x))?;
    let (Some(first), Some(last)) = (chart.equity.first(), chart.equity.last()) else {
        return Err("no equity points".into());
    };
    let x_range = first.0..last.0.max(first.0 + 1);
    let span = x_range.end - x_range.start;
    let (price_area, rest) = root.split_vertically(SIZE.1 * 52 / 100);
    let (equity_area, drawdown_area) = rest.split_vertically(SIZE.1 * 22 / 100);
    if let Some(symbol) = chart.symbols.first() {
        draw_price(&price_area, symbol, chart.symbols.len(), x_range.clone())?;
    }

    let (low, high) = range(chart.equity.iter().map(|p| p.1));
    let mut equity = ChartBuilder::on(&equity_area)
        .margin(8)
        .x_label_area_size(0)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range.clone(), low..high)
        .map_err(|x| e(&x))?;
    equity
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|_| String::new())
        .y_desc("equity")
        .draw()
        .map_err(|x| e(&x))?;
    equity
        .draw_series(LineSeries::new(chart.equity.iter().copied(), BLUE.stroke_width(2)))
        .map_err(|x| e(&x))?
        .label("equity")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], BLUE.stroke_width(2)));
    equity
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|x| e(&x))?;

    let deepest = chart.drawdown.iter().map(|p| p.1 * 100.0).fold(0.0, f64::min);
    let mut drawdown = ChartBuilder::on(&drawdown_area)
        .margin(8)
        .x_label_area_size(36)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range, (deepest * 1.08 - 0.01)..(-deepest * 0.02 + 0.001))
        .map_err(|x| e(&x))?;
    drawdown
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&date_formatter(span))
        .y_label_formatter(&|v| format!("{v:.1} %"))
        .y_desc("drawdown")
        .draw()
        .map_err(|x| e(&x))?;
    drawdown
        .draw_series(
            AreaSeries::new(chart.drawdown.iter().map(|p| (p.0, p.1 * 100.0)), 0.0, RED.mix(0.3)).border_style(RED),
        )
        .map_err(|x| e(&x))?
        .label("drawdown below the running peak")
        .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], RED.mix(0.3).filled()));
    drawdown
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|x| e(&x))?;
    root.present().map_err(|x| e(&x))
}

fn draw_price<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    symbol: &SymbolChart,
    symbols: usize,
    x_range: std::ops::Range<i64>,
) -> Result<(), String> {
    let e = |x: &dyn std::fmt::Display| x.to_string();
    let (low, high) = range(symbol.bars.iter().flat_map(|b| [b.2, b.3]));
    let mut caption = symbol.symbol.clone();
    if symbol.merged > 1 {
        caption.push_str(&format!(" ({} bars per candle)", symbol.merged));
    }
    if symbols > 1 {
        caption.push_str(&format!(" — the first of {symbols} symbols; --report shows each"));
    }
    let mut price = ChartBuilder::on(area)
        .caption(caption, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(0)
        .y_label_area_size(90)
        .build_cartesian_2d(x_range.clone(), low..high)
        .map_err(|x| e(&x))?;
    price
        .configure_mesh()
        .x_labels(8)
        .x_label_formatter(&|_| String::new())
        .y_desc("price")
        .draw()
        .map_err(|x| e(&x))?;
    let plot_width = f64::from(SIZE.0.saturating_sub(110));
    let step = symbol.bars.windows(2).map(|w| w[1].0 - w[0].0).min().unwrap_or(1).max(1) as f64;
    let width = ((plot_width * step / (x_range.end - x_range.start).max(1) as f64) * 0.7).clamp(1.0, 12.0) as u32;
    let (up, down) = (RGBColor(38, 166, 91), RGBColor(214, 69, 65));
    price
        .draw_series(
            symbol
                .bars
                .iter()
                .map(|&(t, o, h, l, c)| CandleStick::new(t, o, h, l, c, up.filled(), down.filled(), width)),
        )
        .map_err(|x| e(&x))?
        .label("candles")
        .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], up.filled()));
    let pad = (high - low) * 0.02;
    let bar_range = |time: i64| symbol.bars.iter().find(|b| b.0 == time).map_or((low, high), |b| (b.3, b.2));
    let buys: Vec<_> = symbol.markers.iter().filter(|m| m.side == "buy").collect();
    let sells: Vec<_> = symbol.markers.iter().filter(|m| m.side == "sell").collect();
    price
        .draw_series(buys.iter().map(|m| {
            EmptyElement::at((m.time, bar_range(m.time).0 - pad))
                + Polygon::new(vec![(0, -6), (-6, 6), (6, 6)], GREEN.mix(0.9).filled())
        }))
        .map_err(|x| e(&x))?
        .label(format!("buys ({} fills)", buys.iter().map(|m| m.fills).sum::<usize>()))
        .legend(|(x, y)| Polygon::new(vec![(x + 5, y - 5), (x, y + 5), (x + 10, y + 5)], GREEN.filled()));
    price
        .draw_series(sells.iter().map(|m| {
            EmptyElement::at((m.time, bar_range(m.time).1 + pad))
                + Polygon::new(vec![(0, 6), (-6, -6), (6, -6)], RED.mix(0.9).filled())
        }))
        .map_err(|x| e(&x))?
        .label(format!("sells ({} fills)", sells.iter().map(|m| m.fills).sum::<usize>()))
        .legend(|(x, y)| Polygon::new(vec![(x + 5, y + 5), (x, y - 5), (x + 10, y - 5)], RED.filled()));
    let colors = [RGBColor(230, 145, 30), RGBColor(150, 80, 200), RGBColor(40, 150, 160), RGBColor(120, 120, 120)];
    for (i, (name, points)) in symbol.plots.iter().enumerate() {
        let color = colors[i % colors.len()];
        price
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(|x| e(&x))?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
    }
    price
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK.mix(0.3))
        .draw()
        .map_err(|x| e(&x))
}
