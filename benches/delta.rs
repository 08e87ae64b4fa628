//! Prints Delta connector figures for docs/performance.md (no assertions),
//! against the fake exchange on loopback (tests/support/fake_delta.rs):
//!
//! 1. market message → order request at the exchange, for a strategy that
//!    sends a market order on every tick: measured at the fake, from the
//!    moment it hands a book/trade message to the socket to the moment the
//!    signed `POST /v2/orders` arrives. This is the whole host path (decode,
//!    book, engine, strategy thread, Rhai callback, intent commit with fsync,
//!    signing) plus two loopback hops.
//! 2. REST order round trips per second with 8 in flight (place a resting
//!    post-only order and cancel it), and the rate the weight budget allows
//!    to be sustained.
//!
//! Run with `cargo bench --bench delta`.

#[path = "../tests/support/fake_delta.rs"]
mod fake_delta;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fake_delta::{FakeConfig, FakeDelta};
use tradehost::config::{Config, Secret};
use tradehost::delta::rest::{Credentials, NewOrder, RestClient, WINDOW, WINDOW_UNITS};

const EVERY_TICK: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_start() { this.n = 0; }
fn on_tick(t) {
    this.n += 1;
    exchange::market_order(t.symbol, if this.n % 2 == 0 { "buy" } else { "sell" }, 0.001);
}
"#;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn print_row(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name}: n={} median={:.1?} p99={:.1?} max={:.1?}",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().unwrap()
    );
}

async fn tick_to_order() {
    let fake = FakeDelta::start(FakeConfig { tick_ms: 100, ..FakeConfig::default() }).await;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("every_tick.rhai"), EVERY_TICK).unwrap();
    let mut config = Config::embedded();
    config.strategies.dir = dir.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    fake.configure(&mut config);
    config.exchange.delta.history_bars = 10;
    let host = tradehost::host::start(config).await.unwrap();
    while fake.orders().len() < 20 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fake.clear_timeline();
    tokio::time::sleep(Duration::from_secs(15)).await;
    let samples = fake.tick_to_order();
    host.shutdown(tradehost::control::ShutdownReason::Api);
    host.wait().await;
    print_row("market message -> signed order at the exchange (strategy orders on every tick)", samples);
}

async fn round_trips() {
    let fake = FakeDelta::start(FakeConfig { step_ticks: 0, ..FakeConfig::default() }).await;
    let credentials =
        Credentials { key: Secret::new(fake.config().key.clone()), secret: Secret::new(fake.config().secret.clone()) };
    let rest = Arc::new(RestClient::new(&fake.rest_url(), Some(credentials), Duration::from_secs(5)).unwrap());
    rest.sync_clock().await.unwrap();
    let cycles = 400; // 400 × (5 + 5) units = 4 000 units: within one window's budget
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..8 {
        let (rest, latencies, next) = (rest.clone(), latencies.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= cycles {
                    return;
                }
                let order = NewOrder {
                    product_id: 84,
                    size: 1,
                    side: "buy",
                    limit_price: Some("50000".into()),
                    time_in_force: "gtc",
                    post_only: true,
                    reduce_only: false,
                    client_order_id: format!("bench-{i}"),
                    stop: None,
                    bracket: None,
                };
                let t = Instant::now();
                rest.place_order(&order).await.unwrap();
                latencies.lock().unwrap().push(t.elapsed());
                let t = Instant::now();
                rest.cancel_by_client_id(&order.client_order_id, 84).await.unwrap();
                latencies.lock().unwrap().push(t.elapsed());
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    let elapsed = started.elapsed();
    println!(
        "REST round trips (place + cancel, 8 in flight): {:.0} requests/s over {} requests; budget used {} of {WINDOW_UNITS} units",
        (cycles * 2) as f64 / elapsed.as_secs_f64(),
        cycles * 2,
        rest.budget().used()
    );
    print_row("REST round trip latency", latencies.lock().unwrap().clone());
    println!(
        "sustained within the weight budget: {:.2} orders/s (place, 5 units), {:.2} place+cancel cycles/s",
        WINDOW_UNITS as f64 / 5.0 / WINDOW.as_secs_f64(),
        WINDOW_UNITS as f64 / 10.0 / WINDOW.as_secs_f64()
    );
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        tick_to_order().await;
        round_trips().await;
    });
}
