//! Prints latency figures for docs/performance.md (no assertions):
//! 1. candle event → commands, `strategies/sma_cross.rhai` vs the same logic
//!    as a native Rust strategy, on the same synchronous runtime;
//! 2. the live path: event into a strategy thread → commands out of its sink;
//! 3. hot reload: file write → new version handling events (default debounce);
//! 4. shutdown of a host running 10 strategies.
//!
//! Run with `cargo bench --bench strategy_latency`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tradehost::config::{Config, SandboxConfig};
use tradehost::data::{TimedCandle, Timeframe};
use tradehost::model::{AccountView, Candle};
use tradehost::script::{ScriptOptions, ScriptStrategy};
use tradehost::strategy::live::{self, RuntimeSpec};
use tradehost::strategy::{OrderIds, SharedContext, Strategy, StrategyCommand, StrategyEnv, StrategyEvent};

const SMA_CROSS: &str = include_str!("../strategies/sma_cross.rhai");

#[path = "common/native.rs"]
mod native;
#[path = "common/setup.rs"]
mod setup;
use native::NativeSmaCross;

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration, Duration) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), *samples.last().unwrap())
}

/// A random walk of one-minute candles.
fn candles(n: usize) -> Vec<Candle> {
    let mut price = 60_000.0f64;
    let mut state = 42u64;
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let step = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.004;
            price *= 1.0 + step;
            Candle {
                symbol: "BTCUSD".into(),
                time: i as i64 * 60_000,
                open: price,
                high: price * 1.001,
                low: price * 0.999,
                close: price,
                volume: 1.0,
            }
        })
        .collect()
}

fn measure(strategy: &mut dyn Strategy, ctx: &SharedContext, candles: &[Candle]) -> (Vec<Duration>, usize) {
    let mut samples = Vec::with_capacity(candles.len());
    let mut commands = 0;
    for candle in candles {
        let started = Instant::now();
        ctx.borrow_mut().market.push_candle(candle.clone());
        let event = StrategyEvent::Candle(candle.clone());
        ctx.borrow_mut().begin_event(&event);
        strategy.handle(&event).unwrap();
        commands += ctx.borrow_mut().drain().iter().filter(|c| matches!(c, StrategyCommand::Place(_))).count();
        samples.push(started.elapsed());
    }
    (samples, commands)
}

fn bench_sync() {
    let data = candles(50_000);
    let ctx = setup::unthrottled_context();
    let options = ScriptOptions {
        limits: SandboxConfig::default(),
        param_overrides: Default::default(),
        default_symbols: vec![],
        panicking_function: false,
        ml: Default::default(),
    };
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    let mut script = ScriptStrategy::new("sma_cross.rhai", SMA_CROSS, options, env).unwrap();
    script.handle(&StrategyEvent::Start).unwrap();
    measure(&mut script, &ctx, &data[..1_000]);
    let (samples, commands) = measure(&mut script, &ctx, &data[1_000..]);
    let (median, p99, max) = percentiles(samples);
    println!(
        "candle -> commands, sma_cross.rhai : median {median:>9.2?}  p99 {p99:>9.2?}  max {max:>9.2?}  ({commands} orders over {} candles)",
        data.len() - 1_000
    );

    let ctx = setup::unthrottled_context();
    let mut native = NativeSmaCross::new(ctx.clone(), "bench");
    measure(&mut native, &ctx, &data[..1_000]);
    let (samples, commands) = measure(&mut native, &ctx, &data[1_000..]);
    let (median, p99, max) = percentiles(samples);
    println!(
        "candle -> commands, native Rust    : median {median:>9.2?}  p99 {p99:>9.2?}  max {max:>9.2?}  ({commands} orders)"
    );
}

fn bench_live_thread() {
    let (reports, _keep) = tokio::sync::mpsc::unbounded_channel();
    let (tx, rx) = std::sync::mpsc::channel::<Instant>();
    let always_orders = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_candle(c) {
    let fast = ta::sma(c.symbol, 10);
    let slow = ta::sma(c.symbol, 30);
    if fast != () && slow != () { exchange::market_order(c.symbol, if fast > slow { "buy" } else { "sell" }, 0.01); }
}"#;
    let account = Arc::new(ArcSwap::from_pointee(AccountView::default()));
    let spec = RuntimeSpec {
        mode: tradehost::model::RunMode::Paper,
        clock: tradehost::clock::Clock::wall(),
        replay: None,
        // Orders on every candle, as fast as they come: no order quota.
        quotas: tradehost::strategy::Quotas::new(
            &SandboxConfig { orders_per_second: u32::MAX, ..SandboxConfig::default() },
            Arc::default(),
        ),
        name: "bench".into(),
        generation: 1,
        factory: Box::new(move |env| {
            let options = ScriptOptions {
                limits: SandboxConfig::default(),
                param_overrides: Default::default(),
                default_symbols: vec![],
                panicking_function: false,
                ml: Default::default(),
            };
            ScriptStrategy::new("bench.rhai", always_orders, options, env).map(|s| Box::new(s) as _)
        }),
        history: Box::new(|_| {
            candles(100).into_iter().map(|candle| TimedCandle { timeframe: Timeframe::minute(), candle }).collect()
        }),
        initial_state: None,
        account,
        ids: OrderIds::new("bench", Arc::new(AtomicU64::new(0))),
        sink: Arc::new(move |_, _| {
            let _ = tx.send(Instant::now());
        }),
        reports,
        max_consecutive_errors: 5,
        queue_limit: 1024,
        state_sink: None,
        state_flush_ms: 250,
        callback_latency: None,
    };
    let handle = live::spawn(spec).unwrap();
    while handle.meta().is_none() {
        std::thread::sleep(Duration::from_millis(1));
    }
    let data = candles(20_100);
    let mut samples = Vec::new();
    for (i, candle) in data.into_iter().skip(100).enumerate() {
        let started = Instant::now();
        handle.send_event(StrategyEvent::Candle(candle));
        let done = rx.recv_timeout(Duration::from_secs(5)).expect("commands arrive");
        if i >= 1_000 {
            samples.push(done - started);
        }
    }
    let (median, p99, max) = percentiles(samples);
    println!(
        "candle -> commands, live thread    : median {median:>9.2?}  p99 {p99:>9.2?}  max {max:>9.2?}  (channel hop + callback + sink)"
    );
    handle.stop();
}

fn host_config(dir: &std::path::Path, data: &std::path::Path) -> Config {
    let mut config = Config::embedded();
    config.strategies.dir = dir.to_path_buf();
    config.data_dir = data.to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.feed.synthetic.speed = 6_000.0;
    config
}

fn versioned(tag: usize) -> String {
    format!(
        "fn config() {{ #{{ symbols: [\"BTCUSD\"], timeframe: \"1s\" }} }}\nfn on_tick(t) {{ print(\"v{tag}\"); }}\n"
    )
}

async fn bench_reload() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("r.rhai"), versioned(0)).unwrap();
    let host = tradehost::host::start(host_config(dir.path(), data.path())).await.unwrap();
    let mut samples = Vec::new();
    for round in 1..=20 {
        let mut rx = host.activity().subscribe();
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = Instant::now();
        std::fs::write(dir.path().join("r.rhai"), versioned(round)).unwrap();
        let wanted = format!("v{round}");
        loop {
            let batch = rx.recv().await.unwrap();
            if batch.events().iter().any(|event| event.data["message"].as_str() == Some(wanted.as_str())) {
                samples.push(started.elapsed());
                break;
            }
        }
    }
    let (median, p99, max) = percentiles(samples);
    println!(
        "reload: file write -> new version handling events: median {median:.1?}  max {max:.1?}  (p99 {p99:.1?}; debounce_ms = {})",
        Config::embedded().supervisor.debounce_ms
    );
    host.shutdown(tradehost::control::ShutdownReason::Api);
    host.wait().await;
}

async fn bench_shutdown() {
    let mut samples = Vec::new();
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        let shipped = ["sma_cross", "rsi_reversion", "market_maker"];
        for i in 0..10 {
            let source = std::fs::read_to_string(format!("strategies/{}.rhai", shipped[i % 3])).unwrap();
            std::fs::write(dir.path().join(format!("s{i}.rhai")), source).unwrap();
        }
        let host = tradehost::host::start(host_config(dir.path(), data.path())).await.unwrap();
        while host.strategies().iter().filter(|s| s.state == tradehost::control::StrategyState::Running).count() < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = Instant::now();
        host.shutdown(tradehost::control::ShutdownReason::Api);
        assert_eq!(host.wait().await, 0);
        samples.push(started.elapsed());
    }
    let (median, _, max) = percentiles(samples);
    println!("shutdown with 10 running strategies: median {median:.1?}  max {max:.1?}");
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    bench_sync();
    bench_live_thread();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(bench_reload());
    runtime.block_on(bench_shutdown());
}
