//! Hostile input never hurts the host: each test runs an abusive script,
//! client or file beside a normal strategy and checks the host keeps its
//! promises (the normal strategy trades, memory and disk stay bounded, the
//! abuse is refused or counted with a reason, shutdown is clean).

#[path = "support/abused.rs"]
mod abused;
mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use abused::{Abused, FEEDBACK, MEGABYTE_LOGS, SPAM};
use common::TestHost;
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
}

/// A trading strategy on one-second candles: the one abuse must not hurt.
/// How long a shutdown under abuse may take: 5 s in a release build (the
/// figures are in docs/performance.md); an unoptimized test build, with the
/// other tests' hosts on the same two cores, is several times slower.
fn shutdown_bound() -> Duration {
    Duration::from_secs(if cfg!(debug_assertions) { 20 } else { 5 })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabyte_log_lines_are_cut_and_rate_limited_and_memory_and_disk_stay_bounded() {
    let mut host = Abused::start(MEGABYTE_LOGS, "");
    let before = host.data_bytes();
    let peak = host.endure(8, 300.0).await;
    let grown = host.data_bytes().saturating_sub(before);
    let hits = host.quota_hits("abusive").await;
    println!("hits: {hits}");
    assert!(hits["log_line_length"].as_u64().unwrap() > 100, "{hits}");
    assert!(hits["log_rate"].as_u64().unwrap() > 1_000, "{hits}");
    // The lines kept are cut to 4 KB with a marker.
    let activity = host.get("/api/v1/activity?limit=10000").await;
    let line =
        activity.as_array().unwrap().iter().rev().find(|e| e["strategy"] == "abusive" && e["type"] == "log").unwrap();
    let message = line["data"]["message"].as_str().unwrap();
    assert!(message.len() < 4_200 && message.ends_with("more bytes cut]"), "{}", &message[message.len() - 40..]);
    let warning =
        activity.as_array().unwrap().iter().find(|e| {
            e["strategy"] == "abusive" && e["data"]["message"].as_str().is_some_and(|m| m.starts_with("quota:"))
        });
    assert!(warning.is_some(), "a quota warning in the activity");
    let (code, took) = host.stop();
    assert_eq!(code, 0);
    assert!(took < shutdown_bound(), "shutdown took {took:?}");
    println!("megabyte logs: peak RSS {peak:.0} MB, data dir +{:.1} MB in 8 s", grown as f64 / 1e6);
    assert!(grown < 60_000_000, "the data dir grew {grown} bytes in 8 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notification_spam_and_health_report_spam_are_dropped_and_counted() {
    let mut host = Abused::start(SPAM, "");
    host.endure(6, 300.0).await;
    let hits = host.quota_hits("abusive").await;
    assert!(hits["notifications"].as_u64().unwrap() > 5_000, "{hits}");
    assert!(hits["health_reports"].as_u64().unwrap() > 5_000, "{hits}");
    let metrics = reqwest::Client::new()
        .get(format!("http://{}/metrics", host.address))
        .bearer_auth(&host.token)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("tradehost_quota_hits_total{strategy=\"abusive\",quota=\"notifications\"}"), "{metrics}");
    let (code, took) = host.stop();
    assert_eq!(code, 0);
    assert!(took < shutdown_bound(), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_timer_names_too_many_timers_and_endless_durations_are_script_errors() {
    let t = TestHost::start(
        &[(
            "timers",
            r#"
fn on_start() {
    let big = "t"; while big.len() < 1000000 { big += big; }
    try { timer::every(big, "1d"); } catch (e) { log::info("long name: " + e); }
    try { timer::every("x", "99999999999999999999d"); } catch (e) { log::info("endless: " + e); }
    try { timer::after("x", "99999999999999999999d"); } catch (e) { log::info("endless once: " + e); }
    try { for i in 0..200 { timer::every("t" + i, "1d"); } } catch (e) { log::info("many: " + e); }
}
"#,
        )],
        |_| {},
    )
    .await;
    let long = t.wait_log(0, "timers", "long name: ").await;
    assert!(
        long.data["message"].as_str().unwrap().contains("over sandbox.max_timer_name_bytes = 128"),
        "{}",
        long.data
    );
    let endless = t.wait_log(0, "timers", "endless: ").await;
    assert!(
        endless.data["message"].as_str().unwrap().contains("longer than the longest allowed, 366d"),
        "{}",
        endless.data
    );
    t.wait_log(0, "timers", "endless once: ").await;
    let many = t.wait_log(0, "timers", "many: ").await;
    assert!(many.data["message"].as_str().unwrap().contains("100 timers are set"), "{}", many.data);
    let hits = t.wait_status("timers", |s| s.quota_hits.get("timers").is_some_and(|n| *n >= 2)).await;
    assert_eq!(hits.quota_hits["timers"], 2, "{hits:?}");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_over_its_quota_is_not_saved_and_the_last_good_state_comes_back() {
    const GROWS: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.n == () { this.n = 0; this.pad = []; }
    log::info("pad before=" + this.pad.len());
    this.n += 1;
    if this.n == 3 { log::info("good state saved at 3"); }
    if this.n >= 10 { for i in 0..2000 { this.pad.push("0123456789"); } }
    log::info("n=" + this.n + " pad=" + this.pad.len());
}
"#;
    let t = TestHost::start(&[("grows", GROWS)], |c| {
        c.sandbox.max_state_bytes = 20_000;
        c.store.state_flush_ms = 20;
    })
    .await;
    let failed = t
        .wait_for(0, "the state refused", |e| {
            e.data["error"].as_str().is_some_and(|m| m.contains("sandbox.max_state_bytes = 20000"))
        })
        .await;
    assert!(failed.data["error"].as_str().unwrap().contains("the last good state is kept"), "{}", failed.data);
    // The strategy goes on from its last good state: the padding is gone.
    t.wait_log(failed.seq, "grows", "pad before=0").await;
    let status = t.wait_status("grows", |s| s.quota_hits.contains_key("state_size")).await;
    assert!(status.quota_hits["state_size"] >= 1);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_open_orders_stop_in_seconds_with_exit_code_zero() {
    const RESTING: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.placed == () { this.placed = 0; }
    if this.placed < 10000 {
        for i in 0..500 { exchange::limit_order("BTCUSD", "buy", 0.001, c.close * 0.5, #{ post_only: true }); }
        this.placed += 500;
    }
}
"#;
    // Leverage enough for 10,000 resting orders valued at the mark.
    let extra =
        "[exchange.paper]\nleverage = \"20\"\n[strategies.overrides.abusive.sandbox]\norders_per_second = 1000000\n";
    let mut host = Abused::start(RESTING, extra);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let open = host.get("/api/v1/orders?limit=10000").await;
        let resting = open.as_array().unwrap().iter().filter(|o| o["request"]["strategy"] == "abusive").count();
        if resting >= 10_000 {
            break;
        }
        if Instant::now() > deadline {
            let activity = host.get("/api/v1/activity?limit=10000").await;
            let theirs: Vec<_> =
                activity.as_array().unwrap().iter().filter(|e| e["strategy"] == "abusive").take(5).collect();
            panic!("only {resting} orders open after 20 s: {theirs:?}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (code, took) = host.stop();
    println!("10,000 open orders: shutdown took {took:?}");
    assert_eq!(code, 0);
    assert!(took < shutdown_bound(), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_feedback_loop_is_held_to_the_order_quota_and_others_keep_trading() {
    let mut host = Abused::start(FEEDBACK, "");
    host.endure(9, 300.0).await;
    let hits = host.quota_hits("abusive").await;
    assert!(hits["orders"].as_u64().unwrap() > 0, "{hits}");
    let (code, took) = host.stop();
    assert_eq!(code, 0);
    assert!(took < shutdown_bound(), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slowloris_connections_are_closed_and_connections_are_capped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let t = TestHost::start(&[], |c| {
        c.http.idle_timeout_ms = 500;
        c.http.max_connections = 20;
    })
    .await;
    let address = t.host.http_addr();
    // An idle connection and a slowloris one (headers never finished) are closed after the timeout.
    let mut idle = tokio::net::TcpStream::connect(address).await.unwrap();
    let mut slow = tokio::net::TcpStream::connect(address).await.unwrap();
    slow.write_all(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    for stream in [&mut idle, &mut slow] {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        match read {
            Ok(Ok(_)) | Ok(Err(_)) => {} // closed (0 bytes, maybe after a 408), or reset
            Err(_) => panic!("a connection that sent no complete request was still open after 5 s"),
        }
    }
    // Over the cap, new connections are closed at once while the API stays reachable for others.
    let mut held = Vec::new();
    for _ in 0..40 {
        held.push(tokio::net::TcpStream::connect(address).await.unwrap());
    }
    drop(held);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let health = reqwest::Client::new().head(format!("http://{address}/api/v1/health")).send().await.unwrap();
    assert_eq!(health.status(), 200, "HEAD /health answers without a token");
    assert_eq!(t.stop().await, 0);
}
