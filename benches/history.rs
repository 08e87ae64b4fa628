//! Prints candle history figures for docs/performance.md (no assertions):
//!
//! 1. candles fetched per second from the fake Delta on loopback with
//!    `host::history::sync` (the code `tradehost data fetch` runs: requests,
//!    checks, one store commit per 2,000-candle chunk), beside the rate the
//!    client's REST weight budget sustains;
//! 2. the store's write rate for fetched candles (2,000 per commit) and for
//!    live candles (one per commit, as the engine writes a closed candle);
//! 3. backtest bars/s for `sma_cross.rhai` over the same bars read from the
//!    store and from a CSV file, reading included.
//!
//! Run with `cargo bench --bench history`.

#[path = "../tests/support/fake_delta.rs"]
mod fake_delta;
#[path = "common/setup.rs"]
mod setup;

use std::time::Instant;

use fake_delta::{FakeConfig, FakeDelta};
use tradehost::backtest;
use tradehost::data::Timeframe;
use tradehost::delta::rest::{RestClient, WINDOW, WINDOW_UNITS};
use tradehost::host::history::Trust;
use tradehost::store::{Store, WriteOp};

/// Weight of one `/v2/history/candles` request (shared/delta-exchange.md §3.6).
const CANDLES_WEIGHT: u32 = 3;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(fetch());
    write_rates();
    backtests();
}

async fn fetch() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.writer(Default::default());
    let rest = RestClient::new(&fake.rest_url(), None, std::time::Duration::from_secs(5)).unwrap();
    let days = 60;
    let to = chrono::Utc::now().timestamp_millis() / 60_000 * 60_000;
    let from = to - days * 86_400_000;
    let started = Instant::now();
    let series = ("BTCUSD", Timeframe::minute());
    let reader = store.reader();
    let fetch = || {
        tradehost::host::history::sync(&rest, &reader, &writer, series, (from, to), Trust::FetchedRanges, |_, _, _| {})
    };
    let synced = fetch().await.unwrap();
    let elapsed = started.elapsed();
    println!(
        "fetch {days} days of 1m BTCUSD from the fake: {} candles in {} requests, {elapsed:.2?}: {:.0} candles/s",
        synced.stored,
        synced.requests,
        synced.stored as f64 / elapsed.as_secs_f64()
    );
    let requests_per_s = f64::from(WINDOW_UNITS / CANDLES_WEIGHT) / WINDOW.as_secs_f64();
    println!(
        "the REST budget ({WINDOW_UNITS} units per {:?}, {CANDLES_WEIGHT} per request) sustains {requests_per_s:.1} requests/s = {:.0} candles/s; its first {} requests go at once",
        WINDOW,
        requests_per_s * 2_000.0,
        WINDOW_UNITS / CANDLES_WEIGHT
    );
    let again = Instant::now();
    let synced = fetch().await.unwrap();
    println!("the same fetch again: {} requests, {:.2?}", synced.requests, again.elapsed());
    writer.close();
}

fn write_rates() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.writer(Default::default());
    let bars = setup::random_walk(200_000, 30_000.0, 0.004);
    let started = Instant::now();
    for chunk in bars.chunks(2_000) {
        let asked = (chunk[0].time, chunk[chunk.len() - 1].time + 60_000);
        let op = WriteOp::History { symbol: "BTCUSD".into(), timeframe: "1m".into(), candles: chunk.to_vec(), asked };
        writer.commit_blocking(vec![op]).unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "store: {} fetched candles, 2,000 per commit: {elapsed:.2?}, {:.0} candles/s",
        bars.len(),
        bars.len() as f64 / elapsed.as_secs_f64()
    );
    let live = &bars[..5_000];
    let started = Instant::now();
    for candle in live {
        writer.commit_blocking(vec![WriteOp::Candle { timeframe: "5m".into(), candle: candle.clone() }]).unwrap();
    }
    let elapsed = started.elapsed();
    println!(
        "store: {} live candles, one per commit: {elapsed:.2?}, {:.0} candles/s",
        live.len(),
        live.len() as f64 / elapsed.as_secs_f64()
    );
    writer.close();
}

fn backtests() {
    let n = 200_000;
    let dir = tempfile::tempdir().unwrap();
    let bars = setup::random_walk(n, 30_000.0, 0.004);
    let csv = dir.path().join("btc.csv");
    let mut text = String::from("time,open,high,low,close,volume\n");
    for c in &bars {
        text.push_str(&format!("{},{},{},{},{},{}\n", c.time / 1_000, c.open, c.high, c.low, c.close, c.volume));
    }
    std::fs::write(&csv, text).unwrap();
    {
        let store = Store::open(&dir.path().join("data")).unwrap();
        let writer = store.writer(Default::default());
        for chunk in bars.chunks(2_000) {
            let asked = (chunk[0].time, chunk[chunk.len() - 1].time + 60_000);
            let op =
                WriteOp::History { symbol: "BTCUSD".into(), timeframe: "1m".into(), candles: chunk.to_vec(), asked };
            writer.commit_blocking(vec![op]).unwrap();
        }
        writer.close();
    }
    let config = setup::backtest_config();
    let source = include_str!("../strategies/sma_cross.rhai");
    let mut fills = Vec::new();
    for (name, read) in [("CSV", 0), ("store", 1), ("CSV", 0), ("store", 1)] {
        let started = Instant::now();
        let data = if read == 0 {
            tradehost::feed::csv::read_candles(&csv, "BTCUSD").unwrap()
        } else {
            let store = Store::open(&dir.path().join("data")).unwrap();
            store.reader().candles_between("BTCUSD", "1m", 0, i64::MAX).unwrap()
        };
        let read_time = started.elapsed();
        let run = backtest::run_script("sma_cross.rhai", source, &[data], &config, &mut |_| {}).unwrap();
        let elapsed = started.elapsed();
        fills.push(run.report.fills);
        println!(
            "backtest from {name}: {n} bars in {elapsed:.2?} (reading {read_time:.2?}): {:.0} bars/s, {} fills",
            n as f64 / elapsed.as_secs_f64(),
            run.report.fills
        );
    }
    assert!(fills.windows(2).all(|w| w[0] == w[1]), "the same bars trade the same: {fills:?}");
}
