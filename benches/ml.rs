//! Prints ML figures for docs/performance.md (no assertions): the latency of
//! one uncached prediction of each example model (p50 / p99 over varied
//! inputs), of a cache hit, and what a prediction costs a script, and the
//! backtest throughput of `ml_signal.rhai` on 1,000,000 one-minute bars
//! with the tree model, against the same script only recording and the
//! `sma_cross.rhai` example, all in one run.
//!
//! `cargo bench --bench ml`

#[path = "common/setup.rs"]
mod setup;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tradehost::backtest;
use tradehost::config::Config;
use tradehost::ml::{Model, PredictionCache, Registry, feature_key};
use tradehost::script::ml::{MlOptions, RecordTarget};

const BARS: usize = 1_000_000;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn models() -> Config {
    let text = std::fs::read_to_string(root().join("examples/models/models.toml")).unwrap();
    let mut config = Config::parse(&text, "models.toml").unwrap();
    for model in config.ml.models.values_mut() {
        model.path = root().join(&model.path);
    }
    config
}

fn percentiles(mut samples: Vec<Duration>) -> (Duration, Duration) {
    samples.sort();
    (samples[samples.len() / 2], samples[samples.len() * 99 / 100])
}

/// Feature rows around the committed inputs, each one different.
fn rows(n: usize) -> Vec<Vec<f64>> {
    let (mut state, mut out) = (11u64, Vec::with_capacity(n));
    for _ in 0..n {
        let row = (0..4)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 1.2
            })
            .collect();
        out.push(row);
    }
    out
}

fn main() {
    let config = models();
    let inputs = rows(20_000);
    println!("predict, uncached (one row of 4 features, on this thread):");
    println!("{:<10} {:>10} {:>10}", "model", "p50", "p99");
    for name in ["logistic", "mlp", "gbt"] {
        let model = Model::load(name, &config.ml.models[name], 1).unwrap();
        for row in inputs.iter().take(1_000) {
            model.predict(row).unwrap();
        }
        let samples = inputs
            .iter()
            .map(|row| {
                let started = Instant::now();
                std::hint::black_box(model.predict(row).unwrap());
                started.elapsed()
            })
            .collect();
        let (p50, p99) = percentiles(samples);
        println!("{name:<10} {:>10.2?} {:>10.2?}", p50, p99);
    }

    let gbt = Model::load("gbt", &config.ml.models["gbt"], 1).unwrap();
    let mut cache = PredictionCache::new(10_000);
    for (i, row) in inputs.iter().take(5_000).enumerate() {
        cache.put("gbt", 1, feature_key(row), i as i64, 60_000, gbt.predict(row).unwrap());
    }
    let samples = inputs
        .iter()
        .take(5_000)
        .cycle()
        .take(50_000)
        .map(|row| {
            let started = Instant::now();
            std::hint::black_box(cache.get("gbt", 1, &feature_key(row), 0).cloned().unwrap());
            started.elapsed()
        })
        .collect();
    let (p50, p99) = percentiles(samples);
    println!("cache hit (key of 4 features, lookup, copy of the answer): p50 {p50:.2?}, p99 {p99:.2?}");

    // What a call costs a script: a backtest asking 0, 1 or 10 times per bar.
    let registry = Arc::new(Registry::load(&config.ml).unwrap());
    let bars = setup::random_walk(100_000, 30_000.0, 0.002);
    let per_bar = |calls: usize, same: bool| -> Duration {
        let features =
            if same { "[0.1, -0.2, 0.3, 0.05]".to_string() } else { "[c.close % 1.0, 0.1 * i, -0.2, 0.05]".into() };
        let script = format!(
            "fn config() {{ #{{ symbols: [\"BTCUSD\"], timeframe: \"1m\" }} }}\nfn on_candle(c) {{ for i in 0..{calls} {{ ml::predict_proba(\"gbt\", {features}); }} }}"
        );
        let mut bt = setup::backtest_config();
        bt.ml = MlOptions { registry: registry.clone(), record: RecordTarget::Off, record_max_bytes: u64::MAX };
        let started = Instant::now();
        backtest::run_script("calls.rhai", &script, std::slice::from_ref(&bars), &bt, &mut |_| {}).unwrap();
        started.elapsed()
    };
    let base = per_bar(0, true);
    let (miss, hit) = (per_bar(10, false), per_bar(10, true));
    let each = |d: Duration| (d.saturating_sub(base)) / (10 * bars.len() as u32);
    println!(
        "from a script (100,000 bars, 10 calls a bar): {:.2?} a call uncached, {:.2?} a call from the cache",
        each(miss),
        each(hit)
    );

    println!("backtest, {BARS} one-minute bars, one core:");
    let bars = setup::random_walk(BARS, 30_000.0, 0.002);
    let source = |path: &str| std::fs::read_to_string(root().join(path)).unwrap();
    let run = |name: &str, file: &str, with_models: bool| {
        let mut bt = setup::backtest_config();
        if with_models {
            bt.ml = MlOptions { registry: registry.clone(), record: RecordTarget::Off, record_max_bytes: u64::MAX };
        }
        let started = Instant::now();
        let result = backtest::run_script(file, &source(file), std::slice::from_ref(&bars), &bt, &mut |_| {}).unwrap();
        let elapsed = started.elapsed();
        println!(
            "{name:<44} {:>10.0} bars/s ({:.2?}, {} fills)",
            BARS as f64 / elapsed.as_secs_f64(),
            elapsed,
            result.fills.len()
        );
    };
    run("ml_signal.rhai with gbt (a prediction a bar)", "examples/strategies/ml_signal.rhai", true);
    run("ml_signal.rhai without models (recording off)", "examples/strategies/ml_signal.rhai", false);
    run("sma_cross.rhai", "strategies/sma_cross.rhai", false);
}
