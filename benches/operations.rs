//! What operating support costs (no assertions; figures for
//! docs/performance.md):
//!
//! 1. the health bookkeeping on the hot path, per event: stamping a
//!    component's activity (`Pulse::beat`: a monotonic clock read and one
//!    atomic store) beside the atomic store alone, a latency histogram
//!    observation with and without its stamp, and one freshness check of
//!    every rule of a host with 10 strategies (done every 250 ms);
//! 2. `tradehost doctor --live` against a paper host running 10 trading
//!    strategies: wall time of the whole command (four validations, the
//!    real-time one waiting for a live event), five runs.
//!
//! `cargo bench --bench operations`

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tradehost::config::Config;
use tradehost::health::{ComponentState, Freshness, Health, Histogram, Pulse};

const CALLS: u32 = 10_000_000;

/// Nanoseconds per call of `f` over `calls` calls.
fn per_call(calls: u32, mut f: impl FnMut(u32)) -> f64 {
    let started = Instant::now();
    for i in 0..calls {
        f(i);
    }
    started.elapsed().as_nanos() as f64 / calls as f64
}

fn bookkeeping() {
    let pulse = Pulse::default();
    let plain = AtomicU64::new(0);
    let histogram = Histogram::default();
    let stamp = per_call(CALLS, |_| pulse.beat());
    let store = per_call(CALLS, |i| plain.store(black_box(i as u64), Ordering::Relaxed));
    let observe = per_call(CALLS, |i| histogram.observe(Duration::from_nanos(black_box(i as u64 % 50_000))));
    let clock = per_call(CALLS, |_| {
        black_box(Instant::now());
    });
    println!("health bookkeeping per event ({CALLS} calls each):");
    println!("  activity stamp (Pulse::beat)           {stamp:6.1} ns");
    println!("  plain atomic store, for comparison     {store:6.1} ns");
    println!("  monotonic clock read alone             {clock:6.1} ns");
    println!("  histogram observation incl. its stamp  {observe:6.1} ns");

    let health = Health::default();
    for name in ["store", "engine", "feed", "strategies", "http"] {
        health.register(name);
        health.set(name, ComponentState::Up);
    }
    for n in 0..10 {
        let name = format!("strategy.s{n}");
        health.register_auxiliary(&name);
        health.set(&name, ComponentState::Up);
        let waiting = AtomicU64::new(0);
        health.expect_activity(
            &name,
            Freshness {
                pulse: Pulse::default(),
                after: Duration::from_secs(30),
                busy: Some(Box::new(move || waiting.load(Ordering::Relaxed) > 0)),
                what: "finished no callback while events waited",
            },
        );
    }
    for name in ["engine", "feed", "store"] {
        let pulse = health.pulse(name);
        pulse.beat();
        health.expect_activity(
            name,
            Freshness { pulse, after: Duration::from_secs(10), busy: None, what: "made no progress" },
        );
    }
    let check = per_call(100_000, |_| {
        black_box(health.check_freshness());
    });
    println!("  freshness check, 15 components, 13 rules {:6.0} ns per check (every 250 ms)", check);
}

/// Buys and sells 0.001 on every candle, so activity flows.
fn trader(symbol: &str) -> String {
    format!(
        r#"fn config() {{ #{{ symbols: ["{symbol}"], timeframe: "1s" }} }}
fn on_candle(c) {{
    this.n = (this.n ?? 0) + 1;
    exchange::market_order("{symbol}", if this.n % 2 == 0 {{ "sell" }} else {{ "buy" }}, 0.001);
}}"#
    )
}

async fn doctor_live() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    for n in 0..10 {
        let symbol = if n % 2 == 0 { "BTCUSD" } else { "ETHUSD" };
        std::fs::write(dir.path().join(format!("trader{n}.rhai")), trader(symbol)).unwrap();
    }
    let mut config = Config::embedded();
    config.strategies.dir = dir.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    let host = tradehost::host::start(config).await.unwrap();
    while !host.health().is_ready() {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (addr, token) = (host.http_addr().to_string(), host.api_token().expose().to_string());
    println!("doctor --live against a paper host with 10 trading strategies:");
    for run in 1..=5 {
        let (addr, token) = (addr.clone(), token.clone());
        let started = Instant::now();
        let output = tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_tradehost"))
                .args(["doctor", "--live", "--json", "--http", &addr, "--token", &token])
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let wall = started.elapsed();
        let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
        let checks = report["checks"].as_array().map_or(0, Vec::len);
        println!(
            "  run {run}: {:5.0} ms wall, result {}, {checks} checks, exit {:?}",
            wall.as_secs_f64() * 1e3,
            report["result"],
            output.status.code()
        );
    }
    host.shutdown(tradehost::control::ShutdownReason::Api);
    host.wait().await;
}

fn main() {
    bookkeeping();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(doctor_live());
}
