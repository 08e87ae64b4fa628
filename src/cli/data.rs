//! `tradehost data`: candle history in the store — `fetch` from Delta's
//! public `/v2/history/candles` (resumable, incremental), `list`, `export`
//! to the backtest CSV format, and `verify` (these three through the API of a
//! host running on the data folder).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tradehost::config::Config;
use tradehost::data::Timeframe;
use tradehost::data::history::{self, DELTA_RESOLUTIONS};
use tradehost::delta::rest::{RestClient, RestError};
use tradehost::feed::csv;
use tradehost::host::history::{Trust, sync};
use tradehost::http::CandleSeriesView;
use tradehost::model::Candle;
use tradehost::store::Store;

/// `tradehost data …`.
#[derive(clap::Subcommand)]
pub enum DataCommand {
    /// Download candles from Delta Exchange into the store (only what is not stored yet).
    Fetch {
        /// Symbol (repeat for several).
        #[arg(long = "symbol", required = true)]
        symbols: Vec<String>,
        /// Candle length: one of Delta's resolutions (1m 3m 5m 15m 30m 1h 2h 4h 6h 1d).
        #[arg(long)]
        timeframe: String,
        /// First candle (unix time, ISO date or date-time, UTC).
        #[arg(long)]
        from: String,
        /// End, exclusive (default: now).
        #[arg(long)]
        to: Option<String>,
        #[command(flatten)]
        place: Place,
    },
    /// List the stored candle series: symbol, timeframe, first, last, count, gaps.
    List {
        #[command(flatten)]
        place: Place,
    },
    /// Write stored candles as a backtest CSV (time,open,high,low,close,volume).
    Export {
        /// Symbol.
        #[arg(long)]
        symbol: String,
        /// Timeframe.
        #[arg(long)]
        timeframe: String,
        /// First candle (default: the first stored).
        #[arg(long)]
        from: Option<String>,
        /// End, exclusive (default: after the last stored).
        #[arg(long)]
        to: Option<String>,
        /// Output file.
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
        #[command(flatten)]
        place: Place,
    },
    /// Check the stored candles: gaps and bad candles, with their times; exit 1 on a bad candle.
    Verify {
        /// Only this symbol.
        #[arg(long)]
        symbol: Option<String>,
        /// Only this timeframe.
        #[arg(long)]
        timeframe: Option<String>,
        #[command(flatten)]
        place: Place,
    },
}

/// Which config and data folder.
#[derive(clap::Args)]
pub struct Place {
    /// Config file (TOML), for `data_dir` and `[exchange.delta]` (network, rest_url).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder (overrides `data_dir`).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// A failed command: exit code and message.
type Failure = (u8, String);

fn usage(message: impl Into<String>) -> Failure {
    (2, message.into())
}

/// Runs a `data` command; returns the exit code.
pub fn run(command: DataCommand) -> u8 {
    let result = match command {
        DataCommand::Fetch { symbols, timeframe, from, to, place } => fetch(&symbols, &timeframe, &from, to, &place),
        DataCommand::List { place } => list(&place),
        DataCommand::Export { symbol, timeframe, from, to, output, place } => {
            export(&symbol, &timeframe, from, to, &output, &place)
        }
        DataCommand::Verify { symbol, timeframe, place } => verify(symbol.as_deref(), timeframe.as_deref(), &place),
    };
    match result {
        Ok(code) => code,
        Err((code, message)) => {
            eprintln!("error: {message}");
            code
        }
    }
}

fn config_of(place: &Place) -> Result<(Config, PathBuf), Failure> {
    let config = super::load_config(place.config.as_deref()).map_err(|code| (code, "see above".to_string()))?;
    let dir = place.data_dir.clone().unwrap_or_else(|| config.data_dir.clone());
    Ok((config, dir))
}

/// Opens the store for a command that reads or writes candles; a running
/// host holds it (and says so).
pub fn open_store(dir: &Path) -> Result<Store, String> {
    if let Some(holder) = tradehost::store::running_host(dir) {
        return Err(format!(
            "the host is running on {} ({holder}) and holds its store; stop it (`tradehost stop`) or use another --data-dir",
            dir.display()
        ));
    }
    Store::open(dir).map_err(|e| format!("cannot open the store in {}: {e}", dir.display()))
}

/// Where the read-only commands read stored candles: the store itself, or —
/// while a host runs on the data folder and holds the store — that host's API.
enum Source {
    Store(Store),
    Host(super::client::Api, tokio::runtime::Runtime),
}

impl Source {
    fn open(place: &Place) -> Result<(Source, PathBuf), Failure> {
        let (config, dir) = config_of(place)?;
        if tradehost::store::running_host(&dir).is_none() {
            return Ok((Source::Store(open_store(&dir).map_err(usage)?), dir));
        }
        let target =
            crate::Target { http: None, token: None, config: place.config.clone(), data_dir: Some(dir.clone()) };
        let api = super::client::resolve(target)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| (1, format!("cannot start the runtime: {e}")))?;
        eprintln!(
            "note: the host is running on {}: reading its store through its API at {}",
            dir.display(),
            config.http.bind
        );
        Ok((Source::Host(api, runtime), dir))
    }

    /// Every stored series.
    fn series(&self) -> Result<Vec<CandleSeriesView>, Failure> {
        match self {
            Source::Store(store) => {
                let sets = store.reader().candle_sets().map_err(|e| (1, e.to_string()))?;
                Ok(sets.iter().map(CandleSeriesView::of).collect())
            }
            Source::Host(api, runtime) => runtime.block_on(api.get_json("/api/v1/candles/series")).map_err(|e| (1, e)),
        }
    }

    /// A series' candles in `[from, to)`, oldest first.
    fn between(&self, symbol: &str, timeframe: &str, from: i64, to: i64) -> Result<Vec<Candle>, Failure> {
        match self {
            Source::Store(store) => {
                store.reader().candles_between(symbol, timeframe, from, to).map_err(|e| (1, e.to_string()))
            }
            Source::Host(api, runtime) => {
                let mut out: Vec<Candle> = Vec::new();
                loop {
                    let start = out.last().map_or(from, |c| c.time + 1);
                    let path = format!(
                        "/api/v1/candles?symbol={symbol}&timeframe={timeframe}&from={start}&to={to}&limit={PAGE}"
                    );
                    let page: Vec<Candle> = runtime.block_on(api.get_json(&path)).map_err(|e| (1, e))?;
                    let full = page.len() == PAGE;
                    out.extend(page);
                    if !full {
                        return Ok(out);
                    }
                }
            }
        }
    }
}

/// Candles per API page.
const PAGE: usize = 10_000;

fn timeframe_arg(text: &str) -> Result<Timeframe, Failure> {
    text.parse::<Timeframe>().map_err(|e| usage(format!("--timeframe: {e}")))
}

fn time_arg(flag: &str, text: &str) -> Result<i64, Failure> {
    csv::parse_timestamp(text).ok_or_else(|| usage(format!("{flag} {text:?}: expected unix time or an ISO date")))
}

/// A time as people read it (UTC).
pub fn shown(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%Y-%m-%d %H:%M").to_string())
}

fn fetch(symbols: &[String], timeframe: &str, from: &str, to: Option<String>, place: &Place) -> Result<u8, Failure> {
    let tf = timeframe_arg(timeframe)?;
    if history::delta_resolution(tf).is_none() {
        return Err(usage(format!(
            "--timeframe {timeframe}: Delta offers candles of {}",
            DELTA_RESOLUTIONS.join(", ")
        )));
    }
    let step = tf.ms();
    let from = time_arg("--from", from)?;
    let now = chrono::Utc::now().timestamp_millis();
    let to = match to {
        Some(to) => time_arg("--to", &to)?,
        None => now,
    };
    if from >= to {
        return Err(usage(format!("--from {} is not before --to {}", shown(from), shown(to))));
    }
    // Whole candles that have closed: the one still forming is not history yet.
    let (from, to) = (from.div_euclid(step) * step, to.min(now).div_euclid(step) * step);
    let (config, dir) = config_of(place)?;
    let store = open_store(&dir).map_err(usage)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| (1, format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let (rest_url, _, _) = config.exchange.delta.urls();
        let timeout = Duration::from_millis(config.exchange.delta.request_timeout_ms);
        let rest = RestClient::new(&rest_url, None, timeout).map_err(|e| (1, e.to_string()))?;
        for symbol in symbols {
            check_symbol(&rest, symbol).await?;
        }
        let writer = store.writer(Default::default());
        let mut code = 0;
        for symbol in symbols {
            code = code.max(fetch_series(&rest, &store, &writer, (symbol, tf), (from, to)).await?);
        }
        writer.close();
        Ok(code)
    })
}

/// Refuses a symbol Delta does not list, naming the close matches.
async fn check_symbol(rest: &RestClient, symbol: &str) -> Result<(), Failure> {
    match rest.product(symbol).await {
        Ok(_) => Ok(()),
        Err(RestError::Rejected { status: 404, .. }) => {
            let products = rest.products().await.map_err(|e| (1, format!("listing products: {e}")))?;
            let wanted = symbol.to_uppercase();
            let mut close: Vec<String> = products
                .into_iter()
                .map(|p| p.symbol)
                .filter(|s| s.contains(&wanted) || wanted.contains(s.as_str()) || edit_distance(s, &wanted) <= 2)
                .collect();
            close.sort();
            close.truncate(8);
            let hint = if close.is_empty() { String::new() } else { format!("; close matches: {}", close.join(", ")) };
            Err(usage(format!("--symbol {symbol}: not a product on this network{hint}")))
        }
        Err(error) => Err((1, format!("looking up {symbol}: {error}"))),
    }
}

/// Levenshtein distance of two short ASCII-ish strings.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// Brings one series up to date, with a progress bar; prints what it did,
/// the gaps of the range and the bad candles the exchange sent (exit code 1).
async fn fetch_series(
    rest: &RestClient,
    store: &Store,
    writer: &tradehost::store::StoreWriter,
    (symbol, tf): (&str, Timeframe),
    (from, to): (i64, i64),
) -> Result<u8, Failure> {
    let started = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} requests, {msg} ({eta} left)")
            .expect("a valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("{symbol} {tf}"));
    let reader = store.reader();
    let progress = |done: usize, total: usize, stored: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
        bar.set_message(format!("{stored} candles"));
    };
    let synced = sync(rest, &reader, writer, (symbol, tf), (from, to), Trust::FetchedRanges, progress)
        .await
        .map_err(|e| (1, e.to_string()))?;
    bar.finish_and_clear();
    let already = if synced.requests == 0 { " (everything was stored already)" } else { "" };
    outln!(
        "{symbol} {tf} {} .. {}: {} candles fetched in {} request(s), {:.1} s{already}",
        shown(from),
        shown(to),
        synced.stored,
        synced.requests,
        started.elapsed().as_secs_f64()
    );
    let stored = reader.candles_between(symbol, &tf.to_string(), from, to).map_err(|e| (1, e.to_string()))?;
    report_gaps(&stored.iter().map(|c| c.time).collect::<Vec<_>>(), tf.ms(), Some((from, to)));
    for (time, problem) in &synced.bad {
        outln!("  bad candle at {} ({time}): {problem} — not stored", shown(*time));
    }
    Ok(u8::from(!synced.bad.is_empty()))
}

/// Prints the gaps of a series (inside `range`, counting its edges, when given).
fn report_gaps(times: &[i64], step: i64, range: Option<(i64, i64)>) -> usize {
    let mut edges = Vec::with_capacity(times.len() + 2);
    if let Some((from, _)) = range {
        edges.push(from - step);
    }
    edges.extend_from_slice(times);
    if let Some((_, to)) = range {
        edges.push(to);
    }
    let gaps = history::gaps(edges, step);
    for gap in gaps.iter().take(20) {
        outln!("  gap: {} .. {} ({} candles missing)", shown(gap.from), shown(gap.to), gap.missing);
    }
    if gaps.len() > 20 {
        outln!("  … and {} more gaps", gaps.len() - 20);
    }
    gaps.len()
}

fn list(place: &Place) -> Result<u8, Failure> {
    let (source, dir) = Source::open(place)?;
    let series = source.series()?;
    if series.is_empty() {
        outln!("no candles stored in {} (fetch some with `tradehost data fetch`)", dir.display());
        return Ok(0);
    }
    outln!("{:<12} {:<6} {:<17} {:<17} {:>10} {:>6}", "symbol", "tf", "first", "last", "count", "gaps");
    for s in series {
        outln!(
            "{:<12} {:<6} {:<17} {:<17} {:>10} {:>6}",
            s.symbol,
            s.timeframe,
            shown(s.first),
            shown(s.last),
            s.count,
            s.gaps
        );
    }
    Ok(0)
}

fn export(
    symbol: &str,
    timeframe: &str,
    from: Option<String>,
    to: Option<String>,
    output: &Path,
    place: &Place,
) -> Result<u8, Failure> {
    let tf = timeframe_arg(timeframe)?;
    let from = from.map(|f| time_arg("--from", &f)).transpose()?.unwrap_or(0);
    let to = to.map(|t| time_arg("--to", &t)).transpose()?.unwrap_or(i64::MAX);
    if from >= to {
        return Err(usage(format!("--from {} is not before --to {}", shown(from), shown(to))));
    }
    let (source, _) = Source::open(place)?;
    let candles = source.between(symbol, &tf.to_string(), from, to)?;
    if candles.is_empty() {
        return Err((1, format!("no stored {symbol} {tf} candles in that range (see `tradehost data list`)")));
    }
    let mut text = String::from("time,open,high,low,close,volume\n");
    for c in &candles {
        text.push_str(&format!("{},{},{},{},{},{}\n", c.time / 1_000, c.open, c.high, c.low, c.close, c.volume));
    }
    std::fs::write(output, text).map_err(|e| usage(format!("cannot write {}: {e}", output.display())))?;
    outln!(
        "wrote {} {symbol} {tf} candles ({} .. {}) to {}",
        candles.len(),
        shown(candles[0].time),
        shown(candles[candles.len() - 1].time),
        output.display()
    );
    Ok(0)
}

fn verify(symbol: Option<&str>, timeframe: Option<&str>, place: &Place) -> Result<u8, Failure> {
    let (source, _) = Source::open(place)?;
    let wanted =
        |s: &CandleSeriesView| symbol.is_none_or(|x| x == s.symbol) && timeframe.is_none_or(|t| t == s.timeframe);
    let (mut checked, mut bad) = (0, 0);
    for set in source.series()?.into_iter().filter(wanted) {
        checked += 1;
        let step = set.timeframe.parse::<Timeframe>().map(|t| t.ms()).unwrap_or(i64::MAX);
        let candles = source.between(&set.symbol, &set.timeframe, 0, i64::MAX)?;
        outln!(
            "{} {}: {} candles, {} .. {}",
            set.symbol,
            set.timeframe,
            candles.len(),
            shown(set.first),
            shown(set.last)
        );
        let mut previous = None;
        for candle in &candles {
            if let Some(problem) = history::check_candle(candle, previous, step) {
                bad += 1;
                outln!("  bad candle at {} ({}): {problem}", shown(candle.time), candle.time);
            }
            previous = Some(candle.time);
        }
        report_gaps(&candles.iter().map(|c| c.time).collect::<Vec<_>>(), step, None);
    }
    if checked == 0 {
        return Err((1, "no stored candles match (see `tradehost data list`)".into()));
    }
    Ok(u8::from(bad > 0))
}
