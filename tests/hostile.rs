//! Hostile input never hurts the host: each test runs an abusive script,
//! client or file beside a normal strategy and checks the host keeps its
//! promises (the normal strategy trades, memory and disk stay bounded, the
//! abuse is refused or counted with a reason, shutdown is clean).

mod common;

use std::process::Command;

use common::{TestHost, is_log};
use tradehost::activity::ActivityKind;

const KEEPS_TRADING: &str = r#"
fn on_candle(c) {
    if exchange::position(c.symbol).size == 0.0 { exchange::market_order(c.symbol, "buy", 0.01); }
    else { exchange::market_order(c.symbol, "sell", 0.01); }
}
"#;

/// Waits for a fill of `strategy` after `since`.
async fn a_fill_of(t: &TestHost, since: u64, strategy: &str) {
    t.wait_for(since, &format!("a fill of {strategy}"), |e| {
        e.kind == ActivityKind::Fill && e.strategy.as_deref() == Some(strategy)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_too_large_to_round_is_refused_with_a_reason_and_trading_goes_on() {
    const HUGE: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.tried == () { this.tried = 0; }
    this.tried += 1;
    if this.tried % 2 == 0 { exchange::limit_order("BTCUSD", "buy", 0.01, 7e28); }
    else { exchange::market_order("BTCUSD", "buy", 1.0e28); }
}
"#;
    let t = TestHost::start(&[("huge", HUGE), ("steady", KEEPS_TRADING)], |c| {
        c.supervisor.max_consecutive_errors = 1_000;
    })
    .await;
    let size =
        t.wait_for(0, "the size refused", |e| e.data["error"].as_str().is_some_and(|m| m.contains("`size`"))).await;
    let message = size.data["error"].as_str().unwrap();
    assert!(message.contains("exchange::market_order") && message.contains("over the largest"), "{message}");
    assert!(message.contains("huge.rhai:"), "names file:line:col: {message}");
    let price =
        t.wait_for(0, "the price refused", |e| e.data["error"].as_str().is_some_and(|m| m.contains("`price`"))).await;
    assert!(price.data["error"].as_str().unwrap().contains("over the largest"), "{}", price.data);
    // The engine is up, the host ready, and the other strategy keeps filling.
    a_fill_of(&t, t.seq(), "steady").await;
    let health = t.api_get("/api/v1/health").await;
    assert_eq!(health["status"], "ready", "{health}");
    assert_eq!(health["components"]["engine"], "up", "{health}");
    assert_eq!(t.stop().await, 0);
}

#[test]
fn a_backtest_with_an_order_too_large_reports_the_script_error_and_does_not_crash() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("huge.rhai");
    std::fs::write(&script, "fn on_candle(c) { exchange::market_order(c.symbol, \"buy\", 1.0e28); }").unwrap();
    let data = dir.path().join("bars.csv");
    let mut csv = String::from("time,open,high,low,close,volume\n");
    for i in 0..50 {
        csv.push_str(&format!("{},100,101,99,100,1\n", 1_700_000_000 + i * 60));
    }
    std::fs::write(&data, csv).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .args(["backtest", "--strategy"])
        .arg(&script)
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_ne!(out.status.code(), Some(101), "no panic: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let all = format!("{stdout}{stderr}");
    assert!(all.contains("over the largest"), "the reason is shown: {all}");
}

#[test]
fn a_synthetic_volatility_that_would_overflow_prices_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wild.toml");
    std::fs::write(&path, "[feed.synthetic]\nvolatility = 0.5\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tradehost")).args(["run", "--config"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("feed.synthetic.volatility") && stderr.contains("from 0 to 0.1"), "{stderr}");
    let _ = is_log;
}
