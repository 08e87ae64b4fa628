//! `tradehost backtest`: reads the data, runs the strategy (or a sweep),
//! prints the report, and writes the trades CSV and the plot.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tradehost::backtest::{self, BacktestConfig, BrokerConfig, sweep};
use tradehost::config::Config;
use tradehost::feed::csv;
use tradehost::ml::Registry;
use tradehost::script::ml::{MlOptions, RecordTarget};

/// The options of `tradehost backtest`.
#[derive(clap::Args)]
pub struct BacktestArgs {
    /// Strategy script.
    #[arg(long)]
    strategy: PathBuf,
    /// CSV file of bars (repeat for several symbols). Without it the bars
    /// come from the store (`tradehost data fetch`): give --symbol and --timeframe.
    #[arg(long = "data")]
    data: Vec<PathBuf>,
    /// Symbol of each --data file, in order (default: the file stem); without
    /// --data, the stored symbols to replay.
    #[arg(long = "symbol")]
    symbols: Vec<String>,
    /// Timeframe of the stored candles to replay (without --data).
    #[arg(long)]
    timeframe: Option<String>,
    /// Data folder holding the store (overrides `data_dir`; without --data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Starting cash.
    #[arg(long, default_value = "100000")]
    cash: Decimal,
    /// Taker fee (market orders), basis points.
    #[arg(long, default_value = "5")]
    fee_bps: Decimal,
    /// Maker fee (limit orders), basis points.
    #[arg(long, default_value = "2")]
    maker_fee_bps: Decimal,
    /// Slippage of market orders, basis points.
    #[arg(long, default_value = "1")]
    slippage_bps: Decimal,
    /// First bar time to use (unix time, ISO date or date-time).
    #[arg(long)]
    from: Option<String>,
    /// Use bars before this time.
    #[arg(long)]
    to: Option<String>,
    /// Override a `config().params` value: key=value (repeatable).
    #[arg(long = "param")]
    params: Vec<String>,
    /// Print the report as JSON (deterministic: no timing).
    #[arg(long)]
    json: bool,
    /// Write every fill to this CSV file.
    #[arg(long)]
    trades: Option<PathBuf>,
    /// Write the rows the script's `ml::record` calls recorded to this CSV
    /// file (bar time, symbol, strategy, label, features), to train a model on.
    #[arg(long)]
    features_out: Option<PathBuf>,
    /// Draw candles with the trades, equity and drawdown to FILE.svg or FILE.png.
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Write an interactive, self-contained HTML report to FILE.html: candles
    /// with entries, exits and plotted overlays, equity and drawdown, the
    /// trades and per-symbol tables; for a sweep, the ranked runs and a heatmap.
    #[arg(long)]
    report: Option<PathBuf>,
    /// No progress bar and no strategy log lines.
    #[arg(long)]
    quiet: bool,
    /// Skip (and count) malformed CSV rows instead of stopping.
    #[arg(long)]
    skip_bad_rows: bool,
    /// Sweep a parameter: name=start..end:step or name=v1,v2 (repeat for a grid).
    #[arg(long = "sweep")]
    sweeps: Vec<String>,
    /// Metric that ranks a sweep.
    #[arg(long, default_value = "sharpe")]
    rank: String,
    /// Config file, for sandbox limits and products (tick and lot sizes).
    #[arg(long)]
    config: Option<PathBuf>,
}

/// The bars of the --data CSV files, one series per file.
fn csv_bars(args: &BacktestArgs) -> Result<Vec<Vec<tradehost::model::Candle>>, (u8, String)> {
    let usage = |m: String| (2u8, m);
    if !args.symbols.is_empty() && args.symbols.len() != args.data.len() {
        return Err(usage(format!(
            "{} --symbol given for {} --data files: give one per file, in order",
            args.symbols.len(),
            args.data.len()
        )));
    }
    let mut data = Vec::new();
    for (i, path) in args.data.iter().enumerate() {
        let symbol = args
            .symbols
            .get(i)
            .cloned()
            .unwrap_or_else(|| path.file_stem().and_then(|s| s.to_str()).unwrap_or("DATA").to_string());
        let (candles, skipped) =
            csv::read_candles_lenient(path, &symbol, args.skip_bad_rows).map_err(|e| usage(e.to_string()))?;
        if skipped > 0 {
            eprintln!("note: {}: skipped {skipped} malformed row(s)", path.display());
        }
        data.push(candles);
    }
    Ok(data)
}

/// The stored candles of each --symbol at --timeframe within --from/--to;
/// says which range it used and how many gaps it had.
fn stored_bars(args: &BacktestArgs, config: &Config) -> Result<Vec<Vec<tradehost::model::Candle>>, String> {
    let Some(timeframe) = &args.timeframe else {
        return Err("give --data FILE.csv, or --symbol and --timeframe to replay stored candles".into());
    };
    let tf = timeframe.parse::<tradehost::data::Timeframe>().map_err(|e| format!("--timeframe: {e}"))?;
    if args.symbols.is_empty() {
        return Err("--timeframe replays stored candles: name them with --symbol".into());
    }
    let dir = args.data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
    let store = super::data::open_store(&dir)?;
    let from = time_arg("--from", &args.from)?.unwrap_or(0);
    let to = time_arg("--to", &args.to)?.unwrap_or(i64::MAX);
    let mut data = Vec::new();
    for symbol in &args.symbols {
        let candles = store.reader().candles_between(symbol, &tf.to_string(), from, to).map_err(|e| e.to_string())?;
        let (Some(first), Some(last)) = (candles.first(), candles.last()) else {
            return Err(format!(
                "no stored {symbol} {tf} candles in that range: fetch them with `tradehost data fetch --symbol {symbol} --timeframe {tf} --from …` (see `tradehost data list`)"
            ));
        };
        let gaps = tradehost::data::history::gaps(candles.iter().map(|c| c.time), tf.ms());
        let missing: i64 = gaps.iter().map(|g| g.missing).sum();
        eprintln!(
            "note: {symbol} {tf}: {} stored candles {} .. {} ({})",
            candles.len(),
            super::data::shown(first.time),
            super::data::shown(last.time),
            if gaps.is_empty() {
                "no gaps".to_string()
            } else {
                format!("{} gaps, {missing} candles missing", gaps.len())
            }
        );
        data.push(candles);
    }
    Ok(data)
}

fn time_arg(flag: &str, value: &Option<String>) -> Result<Option<i64>, String> {
    value
        .as_ref()
        .map(|v| csv::parse_timestamp(v).ok_or_else(|| format!("{flag} {v:?}: expected unix time or an ISO date")))
        .transpose()
}

/// Runs the command; returns the exit code.
pub fn run(args: BacktestArgs) -> u8 {
    match execute(args) {
        Ok(()) => 0,
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

fn execute(args: BacktestArgs) -> Result<(), (u8, String)> {
    let usage = |m: String| (2u8, m);
    let config = Config::load(args.config.as_deref()).map_err(|e| usage(format!("bad config: {e}")))?;
    let source = std::fs::read_to_string(&args.strategy)
        .map_err(|e| usage(format!("cannot read {}: {e}", args.strategy.display())))?;
    let data = if args.data.is_empty() { stored_bars(&args, &config).map_err(usage)? } else { csv_bars(&args)? };
    check_outputs(&args).map_err(usage)?;
    let mut params = std::collections::BTreeMap::new();
    for param in &args.params {
        let (key, value) = backtest::parse_param(param).map_err(usage)?;
        params.insert(key, value);
    }
    let backtest_config = BacktestConfig {
        broker: BrokerConfig {
            cash: args.cash,
            taker_fee_bps: args.fee_bps,
            maker_fee_bps: args.maker_fee_bps,
            slippage_bps: args.slippage_bps,
            products: config.exchange.paper.product_list().into_iter().map(|p| (p.symbol.clone(), p)).collect(),
            leverage: config.exchange.paper.leverage,
        },
        from: time_arg("--from", &args.from).map_err(usage)?,
        to: time_arg("--to", &args.to).map_err(usage)?,
        params,
        sandbox: config.sandbox.clone(),
        risk: tradehost::risk::RiskGate::from_config(&config),
        ml: MlOptions {
            registry: Arc::new(Registry::load(&config.ml).map_err(|e| usage(format!("bad model:\n{e}")))?),
            record: args.features_out.clone().map_or(RecordTarget::Off, RecordTarget::Create),
            record_max_bytes: config.ml.record_max_mb.saturating_mul(1 << 20),
        },
    };
    let file = args.strategy.display().to_string();

    if !args.sweeps.is_empty() {
        let axes = args
            .sweeps
            .iter()
            .map(|s| sweep::parse_axis(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| usage(e.to_string()))?;
        let started = Instant::now();
        let reports = sweep::run(&file, &source, &data, &backtest_config, &axes, &args.rank).map_err(|e| match &e {
            sweep::SweepError::Usage(_) => (2, e.to_string()),
            sweep::SweepError::Run { error, .. } => (exit_code(error), e.to_string()),
        })?;
        if let Some(path) = &args.report {
            let names: Vec<String> = axes.iter().map(|(name, _)| name.clone()).collect();
            backtest::html::write_sweep(path, &reports, &names, &args.rank).map_err(|e| (1, e.to_string()))?;
            eprintln!("report written to {}", path.display());
        }
        if args.json {
            outln!("{}", serde_json::to_string_pretty(&reports).expect("reports serialize"));
        } else {
            outln!(
                "{:<40} {:>9} {:>9} {:>9} {:>7} {:>9} {:>14}",
                "params",
                "sharpe",
                "return",
                "max dd",
                "trades",
                "win rate",
                "final equity"
            );
            for r in &reports {
                let params = r.params.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                outln!(
                    "{params:<40} {:>9.2} {:>8.2}% {:>8.2}% {:>7} {:>8.1}% {:>14}",
                    r.sharpe,
                    r.total_return * 100.0,
                    r.max_drawdown * 100.0,
                    r.trades,
                    r.win_rate * 100.0,
                    r.final_equity.round_dp(2)
                );
            }
            if reports.first().is_some_and(|r| r.short_sample) {
                eprintln!("note: the data spans under a month: Sharpe and returns are extrapolated to a year");
            }
            let bars: usize = reports.iter().map(|r| r.bars).sum();
            eprintln!(
                "{} runs ranked by {} in {:.2?} ({:.0} bars/s on {} threads)",
                reports.len(),
                args.rank,
                started.elapsed(),
                bars as f64 / started.elapsed().as_secs_f64(),
                rayon::current_num_threads()
            );
        }
        return Ok(());
    }

    let total: usize = data.iter().map(Vec::len).sum();
    let progress =
        indicatif::ProgressBar::with_draw_target(Some(total as u64), indicatif::ProgressDrawTarget::hidden());
    let show_progress = !args.quiet && std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut shown = false;
    let mut on_bar = |done: usize| {
        if done.is_multiple_of(4096) {
            if show_progress && !shown && started.elapsed() > Duration::from_secs(1) {
                progress.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                shown = true;
            }
            progress.set_position(done as u64);
        }
    };
    let result = backtest::run_script(&file, &source, &data, &backtest_config, &mut on_bar);
    progress.finish_and_clear();
    let run = result.map_err(|e| (exit_code(&e), e.to_string()))?;
    if !args.quiet {
        for (time, line) in &run.logs {
            let when = chrono::DateTime::from_timestamp_millis(*time)
                .map_or(time.to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string());
            eprintln!("{when} {line}");
        }
        if run.logs_omitted > 0 {
            eprintln!(
                "({} more log lines were written; a backtest keeps the first {})",
                run.logs_omitted,
                backtest::LOG_LINES_KEPT
            );
        }
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&run.report).expect("report serializes"));
    } else {
        outln!("{}", run.report.table());
    }
    if let Some(path) = &args.trades {
        write_trades(path, &run.fills).map_err(|e| (1, format!("cannot write {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.plot {
        backtest::plot::write(path, &run, &data, &backtest_config).map_err(|e| (1, e.to_string()))?;
        eprintln!("plot written to {}", path.display());
    }
    if let Some(path) = &args.report {
        backtest::html::write_run(path, &run, &data, &backtest_config).map_err(|e| (1, e.to_string()))?;
        eprintln!("report written to {}", path.display());
    }
    if let Some(path) = &args.trades {
        eprintln!("{} fill(s) written to {}", run.fills.len(), path.display());
    }
    Ok(())
}

/// Refuses, before anything runs, outputs that cannot be written or would
/// overwrite an input, and options that do not go together.
fn check_outputs(args: &BacktestArgs) -> Result<(), String> {
    if !args.sweeps.is_empty() {
        if args.plot.is_some() || args.trades.is_some() || args.features_out.is_some() {
            return Err(
                "--plot, --trades and --features-out write one run's results; run the chosen parameters without --sweep"
                    .into(),
            );
        }
        for param in &args.params {
            let name = param.split_once('=').map_or(param.as_str(), |(k, _)| k);
            if args.sweeps.iter().any(|s| s.split_once('=').is_some_and(|(k, _)| k == name)) {
                return Err(format!("`{name}` is given by both --param and --sweep: keep one"));
            }
        }
    }
    if let Some(plot) = &args.plot {
        let extension = plot.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if !matches!(extension.as_deref(), Some("svg" | "png")) {
            return Err(format!("--plot {}: the file must end in .svg or .png", plot.display()));
        }
    }
    if let Some(report) = &args.report {
        let extension = report.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if !matches!(extension.as_deref(), Some("html" | "htm")) {
            return Err(format!("--report {}: the file must end in .html", report.display()));
        }
    }
    let inputs: Vec<PathBuf> =
        args.data.iter().chain([&args.strategy]).filter_map(|p| std::fs::canonicalize(p).ok()).collect();
    for (flag, path) in [
        ("--plot", &args.plot),
        ("--report", &args.report),
        ("--trades", &args.trades),
        ("--features-out", &args.features_out),
    ] {
        let Some(path) = path else { continue };
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !parent.is_dir() {
            return Err(format!("{flag} {}: the folder {} does not exist", path.display(), parent.display()));
        }
        if std::fs::canonicalize(path).is_ok_and(|p| inputs.contains(&p)) {
            return Err(format!("{flag} {}: that is an input of this run; write elsewhere", path.display()));
        }
    }
    Ok(())
}

/// Exit code of a failed run: 2 when the data or the strategy's declaration
/// does not fit (usage), 1 when the strategy failed while running.
fn exit_code(error: &backtest::BacktestError) -> u8 {
    match error {
        backtest::BacktestError::Data(_) | backtest::BacktestError::NoData | backtest::BacktestError::Strategy(_) => 2,
        backtest::BacktestError::Callback { .. } => 1,
    }
}

/// Every fill with its exact values (an export for analysis, not a display).
fn write_trades(path: &Path, fills: &[tradehost::model::Fill]) -> std::io::Result<()> {
    let mut out = String::from("id,time,symbol,side,size,price,fee,liquidity,order_id\n");
    for f in fills {
        let time = chrono::DateTime::from_timestamp_millis(f.time)
            .map_or(f.time.to_string(), |t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string());
        let liquidity = if f.liquidity == tradehost::model::Liquidity::Maker { "maker" } else { "taker" };
        out.push_str(&format!(
            "{},{time},{},{},{},{},{},{liquidity},{}\n",
            f.id, f.symbol, f.side, f.size, f.price, f.fee, f.order_id
        ));
    }
    std::fs::write(path, out)
}
