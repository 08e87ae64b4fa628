//! Sandbox isolation, restarts with backoff, quarantine, shutdown policies.

mod common;

use common::TestHost;
use tradehost::activity::ActivityKind;
use tradehost::config::ShutdownPolicy;
use tradehost::control::StrategyState;

const TRADER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let side = if (this.n ?? 0) % 2 == 0 { "buy" } else { "sell" };
    this.n = (this.n ?? 0) + 1;
    exchange::market_order("BTCUSD", side, 0.001);
}
fn on_fill(f) { this.fills = (this.fills ?? 0) + 1; print(`fill ${this.fills}`); }
"#;

fn bad(body: &str) -> String {
    format!("fn config() {{ #{{ symbols: [\"BTCUSD\"], timeframe: \"1s\" }} }}\n{body}")
}

#[tokio::test(flavor = "multi_thread")]
async fn runaway_scripts_fail_their_callbacks_while_others_keep_trading() {
    let looping = bad("fn on_candle(c) { loop { } }");
    let recursive = bad("fn f(n) { f(n + 1) }\nfn on_candle(c) { f(0); }");
    let huge_string = bad("fn on_candle(c) { let s = \"x\"; loop { s += s; } }");
    let huge_array = bad("fn on_candle(c) { this.a = this.a ?? []; for i in 0..600 { this.a.push(i); } }");
    let t = TestHost::start(
        &[
            ("trader", TRADER),
            ("looping", &looping),
            ("recursive", &recursive),
            ("huge_string", &huge_string),
            ("huge_array", &huge_array),
        ],
        |c| {
            c.sandbox.max_array_size = 1_000;
            c.sandbox.callback_budget_ms = 5_000;
            c.sandbox.max_string_size = 100_000;
            c.supervisor.max_consecutive_errors = 1_000;
        },
    )
    .await;
    let expectations = [
        ("looping", "operations per callback"),
        ("recursive", "nested calls"),
        ("huge_string", "exceeds the sandbox limits"),
        ("huge_array", "exceeds the sandbox limits"),
    ];
    for (name, text) in expectations {
        let failed = t.wait_strategy(0, name, "callback_failed").await;
        let error = failed.data["error"].as_str().unwrap();
        assert!(error.contains(text) && error.contains(&format!("{name}.rhai:")), "{name}: {error}");
    }
    let since = t.seq();
    t.wait_log(since, "trader", "fill").await;
    t.wait_log(t.seq(), "trader", "fill").await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_errors_restart_with_backoff_then_quarantine_until_the_file_is_fixed() {
    let failing = bad("fn on_candle(c) { throw \"boom\"; }");
    let t = TestHost::start(&[("flaky", &failing)], |c| {
        c.supervisor.max_consecutive_errors = 2;
        c.supervisor.restart_backoff_initial_ms = 50;
        c.supervisor.restart_backoff_max_ms = 1_000;
        c.supervisor.quarantine_after_restarts = 2;
    })
    .await;
    let quarantined = t.wait_strategy(0, "flaky", "quarantined").await;
    assert!(quarantined.data["error"].as_str().unwrap().contains("boom"));
    let events = t.host.activity().since(0, usize::MAX);
    let delays: Vec<u64> = events
        .iter()
        .filter(|e| common::is_strategy_event(e, "flaky", "failed"))
        .map(|e| e.data["restart_in_ms"].as_u64().unwrap())
        .collect();
    assert_eq!(delays, vec![50, 100], "exponential backoff before quarantine");
    let status = t.wait_status("flaky", |s| s.state == StrategyState::Quarantined).await;
    assert_eq!(status.restarts, 2);

    let since = t.seq();
    std::fs::write(t.file("flaky"), bad("fn on_candle(c) { print(\"fixed\"); }")).unwrap();
    t.wait_strategy(since, "flaky", "started").await;
    t.wait_log(since, "flaky", "fixed").await;
    t.wait_status("flaky", |s| s.state == StrategyState::Running).await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn compile_error_at_start_waits_for_the_file_to_change() {
    let t = TestHost::start(&[("broken", "fn on_candle(c) { let = 1; }")], |_| {}).await;
    let failed = t.wait_strategy(0, "broken", "failed").await;
    assert!(failed.data["error"].as_str().unwrap().contains("broken.rhai:1:"), "{failed:?}");
    t.wait_status("broken", |s| s.state == StrategyState::Failed).await;
    let since = t.seq();
    std::fs::write(t.file("broken"), bad("fn on_candle(c) { print(\"works\"); }")).unwrap();
    t.wait_log(since, "broken", "works").await;
    assert_eq!(t.stop().await, 0);
}

const QUOTER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_start() { this.done = false; }
fn on_tick(t) {
    if this.done { return; }
    this.done = true;
    exchange::market_order("BTCUSD", "buy", 0.01);
    exchange::limit_order("BTCUSD", "buy", 0.01, t.bid * 0.5);
    print("placed");
}
fn on_stop() { print("on_stop ran"); exchange::market_order("BTCUSD", "buy", 1); }
"#;

async fn run_policy(policy: ShutdownPolicy) -> Vec<tradehost::activity::ActivityEvent> {
    let t = TestHost::start(&[("quoter", QUOTER)], |c| c.strategies.shutdown_policy = policy).await;
    t.wait_for(0, "the resting order", |e| e.kind == ActivityKind::Order && e.data["status"] == "open").await;
    t.wait_for(0, "the market fill", |e| e.kind == ActivityKind::Fill).await;
    let activity = t.host.activity().clone();
    assert_eq!(t.stop().await, 0);
    activity.since(0, usize::MAX)
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_policy_cancel_cancels_open_orders_and_gate_refuses_on_stop_orders() {
    let events = run_policy(ShutdownPolicy::Cancel).await;
    assert!(events.iter().any(|e| common::is_log(e, "quoter", "on_stop ran")));
    assert!(events.iter().any(|e| e.kind == ActivityKind::Order
        && e.data["status"] == "rejected"
        && e.data["reason"].as_str().unwrap().contains("shutting down")));
    assert!(events.iter().any(|e| e.kind == ActivityKind::Order && e.data["status"] == "cancelled"));
    let last_position = events.iter().rev().find(|e| e.kind == ActivityKind::Position).unwrap();
    assert_eq!(last_position.data["size"], "0.01", "cancel leaves the position");
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_policy_flatten_closes_positions_with_reduce_only_orders() {
    let events = run_policy(ShutdownPolicy::Flatten).await;
    let last_position = events.iter().rev().find(|e| e.kind == ActivityKind::Position).unwrap();
    assert_eq!(last_position.data["size"], "0", "flat, shown without trailing zeros");
    assert!(events.iter().any(|e| e.kind == ActivityKind::Order
        && e.data["request"]["reduce_only"] == true
        && e.data["status"] == "filled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_policy_leave_keeps_orders_open() {
    let events = run_policy(ShutdownPolicy::Leave).await;
    assert!(!events.iter().any(|e| e.kind == ActivityKind::Order && e.data["status"] == "cancelled"));
}

#[tokio::test(flavor = "multi_thread")]
async fn timers_fire_on_wall_time_and_can_be_cancelled() {
    let script = r#"
fn on_start() { timer::every("beat", "50ms"); timer::after("once", "120ms"); this.beats = 0; }
fn on_timer(name) {
    if name == "beat" {
        this.beats += 1;
        if this.beats == 3 { timer::cancel("beat"); print("beat cancelled"); }
    } else {
        print(`once after ${this.beats} beats`);
    }
}
"#;
    let t = TestHost::start(&[("timed", script)], |_| {}).await;
    t.wait_log(0, "timed", "beat cancelled").await;
    t.wait_log(0, "timed", "once after").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let beats =
        t.host.activity().since(0, usize::MAX).iter().filter(|e| common::is_log(e, "timed", "beat cancelled")).count();
    assert_eq!(beats, 1, "a cancelled timer does not fire again");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn replay_feed_plays_the_csv_in_order_and_strategies_trade_on_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("bars.csv");
    let mut text = String::from(",Open,High,Low,Close,Volume\n");
    for i in 0..6 {
        let close = 100.0 + i as f64;
        text.push_str(&format!("2024-01-01 00:0{i}:00,{close},{},{},{close},5\n", close + 1.0, close - 1.0));
    }
    std::fs::write(&csv, text).unwrap();
    let script = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_candle(c) {
    print(`close ${c.close}`);
    if c.close == 102.0 { exchange::market_order("BTCUSD", "buy", 1); }
}
fn on_fill(f) { print(`filled at ${f.price}`); }
"#;
    let t = TestHost::start(&[("replayer", script)], |c| {
        c.feed.kind = tradehost::config::FeedKind::Replay;
        c.feed.replay.path = csv.clone();
        c.feed.replay.symbol = "BTCUSD".into();
        c.feed.replay.speed = 1200.0;
        c.feed.replay.spread_bps = 0.0;
        c.exchange.paper.slippage_bps = rust_decimal::Decimal::ZERO;
    })
    .await;
    t.wait_for(0, "feed finished", |e| e.kind == ActivityKind::System && e.data["event"] == "feed_finished").await;
    // The last bar is sent just before the end is announced: wait until the strategy has it.
    t.wait_log(0, "replayer", "close 105.0").await;
    let closes: Vec<String> = t
        .host
        .activity()
        .since(0, usize::MAX)
        .iter()
        .filter(|e| common::is_log(e, "replayer", "close "))
        .map(|e| e.data["message"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(closes, vec!["close 100.0", "close 101.0", "close 102.0", "close 103.0", "close 104.0", "close 105.0"]);
    // Live fills happen at the quote current when the order arrives: the 102
    // close, or a later one if the replay already moved on (no spread, no slippage).
    let fill = t.wait_log(0, "replayer", "filled at").await;
    let price: f64 = fill.data["message"].as_str().unwrap().rsplit(' ').next().unwrap().parse().unwrap();
    assert!([102.0, 103.0, 104.0, 105.0].contains(&price), "{price}");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stop_holds_a_strategy_that_waits_for_a_restart() {
    let failing = bad("fn on_candle(c) { throw \"boom\"; }");
    let t = TestHost::start(&[("flaky", &failing)], |c| {
        c.supervisor.max_consecutive_errors = 1;
        c.supervisor.restart_backoff_initial_ms = 1_000; // a wait to stop it in
        c.supervisor.quarantine_after_restarts = 5;
    })
    .await;
    t.wait_strategy(0, "flaky", "failed").await;
    t.wait_status("flaky", |s| s.state == StrategyState::Starting).await;
    let (reply, answer) = tokio::sync::oneshot::channel();
    t.host.control().send(tradehost::control::Control::Stop("flaky".into(), reply)).unwrap();
    answer.await.unwrap().expect("a strategy waiting for its restart can be stopped");
    let status = t.wait_status("flaky", |s| s.state == StrategyState::Stopped).await;
    assert!(status.reason.as_deref().is_some_and(|r| r.contains("stopped by a user")), "{status:?}");
    // The restart that was due (1 s after the failure) does not happen.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let status = t.host.strategies().into_iter().find(|s| s.name == "flaky").unwrap();
    assert_eq!((status.state, status.restarts), (StrategyState::Stopped, 0), "{status:?}");
    assert_eq!(t.stop().await, 0);
}
