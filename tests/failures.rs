//! Nothing dies silently: a host function that panics inside a strategy, a
//! market feed task and the engine task that panic, each reported with the
//! panic's message and handled as documented in `host::tasks`.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{TestHost, is_log};
use tradehost::activity::ActivityKind;
use tradehost::control::StrategyState;

const PANICS_ON_THIRD_CANDLE: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n == 3 { test::panic("index out of bounds in a host function"); }
}
"#;

const KEEPS_TRADING: &str = r#"
fn on_candle(c) {
    if exchange::position(c.symbol).size == 0.0 { exchange::market_order(c.symbol, "buy", 0.01); }
    else { exchange::market_order(c.symbol, "sell", 0.01); }
    log::info("traded at " + c.close);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_function_that_panics_fails_the_strategy_which_restarts_then_is_quarantined_while_others_trade() {
    let t = TestHost::start(&[("buggy", PANICS_ON_THIRD_CANDLE), ("steady", KEEPS_TRADING)], |c| {
        c.faults.panicking_function = true;
        c.supervisor.restart_backoff_initial_ms = 20;
        c.supervisor.restart_backoff_max_ms = 40;
        c.supervisor.quarantine_after_restarts = 2;
    })
    .await;
    let failed = t.wait_strategy(0, "buggy", "failed").await;
    let error = failed.data["error"].as_str().unwrap();
    assert!(error.contains("panicked: index out of bounds in a host function"), "{error}");
    assert!(failed.data["restart_in_ms"].as_u64().is_some(), "restarted with backoff: {}", failed.data);
    let quarantined = t.wait_strategy(failed.seq, "buggy", "quarantined").await;
    assert!(quarantined.data["error"].as_str().unwrap().contains("panicked"), "{}", quarantined.data);
    let status = t.wait_status("buggy", |s| s.state == StrategyState::Quarantined).await;
    assert!(status.restarts >= 2, "{status:?}");
    // The other strategy kept trading through all of it.
    let seq = t.seq();
    t.wait_for(seq, "a fill of steady", |e| e.kind == ActivityKind::Fill && e.strategy.as_deref() == Some("steady"))
        .await;
    t.wait_for(seq, "steady logging", |e| is_log(e, "steady", "traded at")).await;
    assert_eq!(t.wait_status("steady", |_| true).await.state, StrategyState::Running);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_feed_task_that_panics_is_reported_down_with_its_message_and_restarted() {
    let t = TestHost::start(&[("steady", KEEPS_TRADING)], |c| {
        c.faults.feed_panics.store(1, Ordering::SeqCst);
    })
    .await;
    let failed = t
        .wait_for(0, "the feed's failure", |e| e.kind == ActivityKind::System && e.data["event"] == "task_failed")
        .await;
    assert_eq!(failed.data["task"], "market feed");
    assert_eq!(failed.data["component"], "feed");
    assert_eq!(failed.data["action"], "restart");
    let message = failed.data["message"].as_str().unwrap();
    assert!(message.contains("panicked: injected fault: the market feed panicked"), "{message}");
    t.wait_for(failed.seq, "the feed's restart", |e| {
        e.data["event"] == "task_restarted" && e.data["task"] == "market feed"
    })
    .await;
    // Trading goes on with the restarted feed, and the host is ready again.
    let seq = t.seq();
    t.wait_for(seq, "a fill after the restart", |e| e.kind == ActivityKind::Fill).await;
    let health = t.api_get("/api/v1/health").await;
    assert_eq!(health["components"]["feed"], "up", "{health}");
    assert!(health.get("reasons").is_none(), "reasons clear once up again: {health}");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_task_that_panics_shuts_the_host_down_in_order_with_exit_code_1() {
    let t = TestHost::start(&[("steady", KEEPS_TRADING)], |c| c.faults.engine_panics = true).await;
    let failed = t
        .wait_for(0, "the engine's failure", |e| e.kind == ActivityKind::System && e.data["event"] == "task_failed")
        .await;
    assert_eq!(failed.data["task"], "engine");
    assert_eq!(failed.data["action"], "shutdown");
    assert!(failed.data["message"].as_str().unwrap().contains("injected fault: the engine panicked"));
    t.wait_for(failed.seq, "the ordered shutdown", |e| e.data["event"] == "shutdown_started").await;
    assert_eq!(t.host.health().reasons()["engine"], failed.data["message"].as_str().unwrap());
    let code = tokio::time::timeout(Duration::from_secs(20), t.host.wait()).await.expect("the host exits");
    assert_eq!(code, 1);
}
