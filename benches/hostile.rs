//! Prints what each abusive script costs the host with the default quotas
//! (no assertions), for docs/performance.md:
//!
//! 1. the cost of the quota checks themselves: a kept and a dropped log
//!    line, a notification, an event and a timer check, in ns per call;
//! 2. for each abusive script from issue 21, a real host process (the release
//!    binary, market sped up 60×) running it beside the shipped strategies and
//!    a strategy trading 30 times a second for `HOSTILE_SECONDS` (30): peak
//!    RSS, data-folder growth per minute, that strategy's fills, the quota
//!    hits counted and how long the shutdown took.
//!
//! Run with `cargo bench --bench hostile` (about five minutes);
//! `HOSTILE_ONLY=timers` runs the scripts whose description contains "timers".

#[path = "../tests/support/abused.rs"]
mod abused;

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use abused::{Abused, FEEDBACK, MEGABYTE_LOGS, SPAM};
use tradehost::config::SandboxConfig;
use tradehost::strategy::Quotas;

const CALLS: u32 = 2_000_000;

/// Nanoseconds per call of `f` over `CALLS` calls (`i` is the call's number).
fn per_call(mut f: impl FnMut(u32)) -> f64 {
    let started = Instant::now();
    for i in 0..CALLS {
        f(i);
    }
    started.elapsed().as_nanos() as f64 / f64::from(CALLS)
}

fn quota_costs() {
    let limits = SandboxConfig::default();
    let line = "close 60123.5 above the slow average 60010.2: buying 0.01";
    println!("quota checks, default [sandbox], {CALLS} calls each:");
    let copy = per_call(|_| drop(black_box(line.to_string())));
    println!("  {:<44} {copy:>6.1} ns", "baseline: copying the line (no quota)");
    // Rates count on the run clock here, so the time can be chosen: one call
    // a second keeps every line; one instant drops all after the burst.
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let kept = per_call(|i| drop(black_box(quotas.log_line(i64::from(i) * 1_000, black_box(line)))));
    println!("  {:<44} {kept:>6.1} ns", "log line kept (two token buckets + copy)");
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let dropped = per_call(|_| drop(black_box(quotas.log_line(0, black_box(line)))));
    println!("  {:<44} {dropped:>6.1} ns", "log line dropped (one bucket, no copy)");
    let huge = "x".repeat(1 << 20);
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let cut = per_call(|i| drop(black_box(quotas.log_line(i64::from(i) * 1_000, black_box(&huge)))));
    println!("  {:<44} {cut:>6.1} ns", "1 MB log line kept, cut to 4 KB");
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let notified = per_call(|i| drop(black_box(quotas.notification(i64::from(i) * 60_000, black_box(line)))));
    println!("  {:<44} {notified:>6.1} ns", "notification kept");
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let timer = per_call(|i| drop(black_box(quotas.timer(black_box("rebalance"), (i % 50) as usize, false))));
    println!("  {:<44} {timer:>6.1} ns", "timer allowed (name length + count)");
    let mut quotas = Quotas::on_run_clock(&limits, Arc::default());
    let refused = per_call(|_| drop(black_box(quotas.timer(black_box(&huge), 0, false))));
    println!("  {:<44} {refused:>6.1} ns", "timer with a 1 MB name refused");
}

/// One abusive script and what it is.
struct Abuse {
    what: &'static str,
    script: &'static str,
}

/// The shipped example strategies, run beside every abusive script.
const SHIPPED: &[(&str, &str)] = &[
    ("market_maker", include_str!("../strategies/market_maker.rhai")),
    ("rsi_reversion", include_str!("../strategies/rsi_reversion.rhai")),
    ("sma_cross", include_str!("../strategies/sma_cross.rhai")),
];

const NOTHING: &str = "fn on_candle(c) {}";

const LOG_FLOOD: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) { for i in 0..100000 { log::info("spam " + i); } }
"#;

const NOTIFY_FLOOD: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) { for i in 0..100000 { notify("spam " + i); } }
"#;

const HUGE_TIMERS: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let big = "t"; while big.len() < 1000000 { big += big; }
    for i in 0..20 { try { timer::every(i.to_string() + big.sub_string(0, 1000000), "1d"); } catch (e) { } }
    try { timer::every("x", "99999999999999999999d"); } catch (e) { }
}
"#;

const GROWING_STATE: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.pad == () { this.pad = []; }
    for i in 0..2000 { this.pad.push("0123456789"); }
}
"#;

const DOUBLING: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) { let s = "x"; loop { s += s; } }
"#;

const PRINTED_COPIES: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let s = "x"; s.pad(1000000, 'x');
    let a = []; a.pad(1000000, s);
    log::info(`${a}`);
}
"#;

async fn endure(abuse: &Abuse, seconds: u64) {
    let mut host = Abused::start_with(abuse.script, "", SHIPPED);
    // Wait for the first fill, so every run starts trading.
    let ready = Instant::now();
    while host.fills_of("steady").await == 0 && ready.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (bytes_before, fills_before) = (host.data_bytes(), host.fills_of("steady").await);
    let started = Instant::now();
    let mut peak: f64 = 0.0;
    while started.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        peak = peak.max(host.rss_mb());
    }
    let minutes = started.elapsed().as_secs_f64() / 60.0;
    let growth = host.data_bytes().saturating_sub(bytes_before) as f64 / 1_048_576.0 / minutes;
    let fills = host.fills_of("steady").await - fills_before;
    let hits = host.quota_hits("abusive").await;
    let hits: u64 = hits.as_object().map_or(0, |h| h.values().filter_map(|v| v.as_u64()).sum());
    let steady_hits = host.quota_hits("steady").await;
    let (code, took) = host.stop();
    println!(
        "{:<44} {peak:>9.0} {growth:>12.1} {:>13.0} {hits:>12} {:>10.2} {code:>5}",
        abuse.what,
        fills as f64 / minutes,
        took.as_secs_f64()
    );
    if steady_hits.as_object().is_some_and(|h| !h.is_empty()) {
        println!("  (the normal strategy hit quotas too: {steady_hits})");
    }
}

fn main() {
    quota_costs();
    let seconds: u64 = std::env::var("HOSTILE_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let abuses = [
        Abuse { what: "none (the normal strategy alone)", script: NOTHING },
        Abuse { what: "50 log lines of 1 MB a candle", script: MEGABYTE_LOGS },
        Abuse { what: "100,000 log lines a candle", script: LOG_FLOOD },
        Abuse { what: "100,000 notifications a candle", script: NOTIFY_FLOOD },
        Abuse { what: "5,000 notifications + report keys a candle", script: SPAM },
        Abuse { what: "20 timers named by 1 MB strings a candle", script: HUGE_TIMERS },
        Abuse { what: "order feedback loop (20 per on_order)", script: FEEDBACK },
        Abuse { what: "`this` grown by 2,000 strings a candle", script: GROWING_STATE },
        Abuse { what: "a string doubled without end in a callback", script: DOUBLING },
        Abuse { what: "a 1 MB string a million times, printed", script: PRINTED_COPIES },
    ];
    println!();
    println!(
        "each abusive script beside the shipped strategies and one trading 30 times a second, for {seconds} s; release host, default quotas, market at 60x:"
    );
    println!(
        "{:<44} {:>9} {:>12} {:>13} {:>12} {:>10} {:>5}",
        "abuse", "peak RSS", "data MB/min", "fills/min", "quota hits", "stop s", "exit"
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    let only = std::env::var("HOSTILE_ONLY").unwrap_or_default();
    for abuse in abuses.iter().filter(|a| a.what.contains(&only)) {
        runtime.block_on(endure(abuse, seconds));
    }
}
