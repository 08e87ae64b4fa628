//! Prints backtest throughput for docs/performance.md (no assertions): a
//! generated 1,000,000-bar one-minute CSV; bars/s for `sma_cross.rhai` on
//! one core and for the same logic as a native Rust strategy on the same
//! engine; sweep throughput on one thread and on all cores; peak memory.
//!
//! Run with `cargo bench --bench backtest`.

use std::io::Write;
use std::time::Instant;

use tradehost::backtest::{self, sweep};
use tradehost::strategy::StrategyFactory;

#[path = "common/native.rs"]
mod native;
#[path = "common/setup.rs"]
mod setup;

const BARS: usize = 1_000_000;

/// A `/proc/self/status` figure in MiB (`VmHWM`: peak RSS, `VmRSS`: now); 0 where there is none.
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}

/// Resets the peak-RSS mark to the current RSS (Linux ≥ 4.0); false where it cannot.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("btc_1m.csv");
    {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        writeln!(out, "timestamp,open,high,low,close,volume").unwrap();
        let (mut price, mut state) = (30_000.0f64, 7u64);
        for i in 0..BARS {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let step = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.004;
            let open = price;
            price *= 1.0 + step;
            let (high, low) = (open.max(price) * 1.0005, open.min(price) * 0.9995);
            writeln!(out, "{},{open:.2},{high:.2},{low:.2},{price:.2},1.5", 1_600_000_000 + 60 * i as i64).unwrap();
        }
    }
    let started = Instant::now();
    let candles = tradehost::feed::csv::read_candles(&path, "BTCUSD").unwrap();
    println!("read {BARS} bars of CSV in {:.2?}", started.elapsed());
    let data = vec![candles];
    let config = setup::backtest_config();
    let source = include_str!("../strategies/sma_cross.rhai");

    let script = backtest::run_script("sma_cross.rhai", source, &data, &config, &mut |_| {}).unwrap();
    println!(
        "sma_cross.rhai, 1 core: {:.0} bars/s ({:.2?}, {} fills, final equity {})",
        script.report.bars_per_second(),
        script.report.elapsed,
        script.fills.len(),
        script.report.final_equity.round_dp(2)
    );
    let factory: StrategyFactory = Box::new(|env| Ok(Box::new(native::NativeSmaCross::new(env.ctx, "native")) as _));
    let native = backtest::run("native", factory, &data, &config, &mut |_| {}).unwrap();
    println!(
        "native Rust sma_cross, same engine: {:.0} bars/s ({:.2?}, {} fills, final equity {})",
        native.report.bars_per_second(),
        native.report.elapsed,
        native.fills.len(),
        native.report.final_equity.round_dp(2)
    );

    let short: Vec<Vec<_>> = vec![data[0][..200_000].to_vec()];
    let axes = vec![sweep::parse_axis("fast=5..20:5").unwrap(), sweep::parse_axis("slow=30,50").unwrap()];
    let runs = sweep::grid(&axes).len();
    let whole_process_peak = status_mib("VmHWM:");
    for threads in [1, rayon::current_num_threads()] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        let measured = reset_peak_rss();
        let before = status_mib("VmRSS:");
        let started = Instant::now();
        let reports = pool.install(|| sweep::run("sma_cross.rhai", source, &short, &config, &axes, "sharpe").unwrap());
        let elapsed = started.elapsed();
        // What the sweep added at its peak, with `threads` runs in flight at once.
        let per_run = if measured {
            format!("peak +{:.1} MiB with {threads} run(s) in flight", status_mib("VmHWM:") - before)
        } else {
            "memory not measurable here".to_string()
        };
        println!(
            "sweep of {runs} runs × 200,000 bars on {threads} thread(s): {elapsed:.2?} = {:.0} bars/s, {per_run} (best: {:?})",
            (runs * 200_000) as f64 / elapsed.as_secs_f64(),
            reports[0].params
        );
    }
    println!("peak memory before the sweeps (RSS high-water mark): {whole_process_peak:.0} MiB");
}
