//! Prints how the store grows while the shipped market maker trades (no
//! assertions), for docs/performance.md: the host runs on the synthetic feed
//! at `SPEED`× (one wall second is `SPEED` simulated seconds) with the default
//! retention, and every few seconds the size of `tradehost.redb`, the
//! activity count, fills and the simulated time are sampled. Two simulated
//! weeks show whether the size levels off once the closed-order retention
//! (7 days) and the activity cap start pruning.
//!
//! Run with `cargo bench --bench store_growth` (about four minutes).
//! `STORE_GROWTH_DAYS=N` changes how many simulated days it runs.

use std::time::{Duration, Instant};

use tradehost::config::Config;
use tradehost::control::ShutdownReason;
use tradehost::host;

/// Simulated seconds per wall second.
const SPEED: f64 = 7_200.0;

fn main() {
    let days: f64 = std::env::var("STORE_GROWTH_DAYS").ok().and_then(|d| d.parse().ok()).unwrap_or(14.0);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    runtime.block_on(run(days));
}

async fn run(days: f64) {
    let strategies = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(strategies.path().join("market_maker.rhai"), include_str!("../strategies/market_maker.rhai"))
        .unwrap();
    let mut config = Config::embedded();
    config.strategies.dir = strategies.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.feed.synthetic.speed = SPEED;
    config.feed.synthetic.history_bars = 60;
    let store = config.store.clone();
    let host = host::start(config).await.expect("host starts");
    let file = data.path().join("tradehost.redb");
    let status_url = format!("http://{}/api/v1/status", host.http_addr());
    let client = reqwest::Client::new();
    let token = host.api_token().expose().to_string();
    let sim_now = || async {
        let status: serde_json::Value =
            client.get(&status_url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        chrono::DateTime::parse_from_rfc3339(status["now"].as_str().unwrap()).unwrap().timestamp_millis()
    };
    let start = sim_now().await;
    let wall = Instant::now();
    println!(
        "market maker on the synthetic feed at {SPEED}×; retention: activity_keep {}, closed orders {} days, candles_keep {}",
        store.activity_keep, store.closed_order_retention_days, store.candles_keep
    );
    println!("{:>9} {:>9} {:>11} {:>9} {:>12}", "sim days", "wall s", "store MiB", "fills", "activity seq");
    let mut samples = Vec::new();
    loop {
        tokio::time::sleep(Duration::from_secs(8)).await;
        let sim_days = (sim_now().await - start) as f64 / 86_400_000.0;
        let mib = std::fs::metadata(&file).map_or(0.0, |m| m.len() as f64 / 1_048_576.0);
        let fill_count = host
            .activity()
            .since(host.activity().last_seq().saturating_sub(2_000), 2_000)
            .iter()
            .rev()
            .find_map(|e| (e.kind == tradehost::activity::ActivityKind::Fill).then(|| e.data["id"].as_u64()))
            .flatten()
            .unwrap_or(0);
        let seq = host.activity().last_seq();
        println!("{sim_days:>9.2} {:>9.0} {mib:>11.1} {fill_count:>9} {seq:>12}", wall.elapsed().as_secs_f64());
        samples.push((sim_days, mib));
        if sim_days >= days {
            break;
        }
    }
    host.shutdown(ShutdownReason::Api);
    host.wait().await;
    let per_day = |from: f64, to: f64| -> Option<f64> {
        let a = samples.iter().find(|(d, _)| *d >= from)?;
        let b = samples.iter().rev().find(|(d, _)| *d <= to)?;
        (b.0 > a.0).then(|| (b.1 - a.1) / (b.0 - a.0))
    };
    if let (Some(first), Some(second)) = (per_day(0.5, 7.0), per_day(8.0, days)) {
        println!(
            "growth: {first:.1} MiB per simulated day in week 1, {second:.1} MiB per day after the first retention week"
        );
    }
}
