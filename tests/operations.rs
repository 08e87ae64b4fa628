//! Operating the host for months: freshness-aware health (a component that
//! goes silent while it has work turns degraded with its reason and age,
//! and up again), `GET /api/v1/reconcile`, and `tradehost doctor --live`
//! — all OK on a healthy paper host, and the expected FAIL for each fault
//! made on purpose. (The exchange order added behind the host's back is in
//! tests/delta_live.rs, next to the fake exchange.)

mod common;

use std::time::Duration;

use common::TestHost;
use serde_json::Value;
use tradehost::health::ComponentState;

/// Trades on every candle, so the activity log moves.
const TRADER: &str = r#"
fn config() { #{ symbols: ["ETHUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n % 2 == 0 { exchange::market_order("ETHUSD", "sell", 0.01); }
    else { exchange::market_order("ETHUSD", "buy", 0.01); }
}
"#;

/// Spins for 1.5 s in its 30th callback while candles keep arriving.
const STALLER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n == 30 { let t = timestamp(); while t.elapsed < 1.5 { } }
}
"#;

/// Waits until `done` holds, polling.
async fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_that_stops_finishing_callbacks_turns_degraded_with_reason_and_age_then_recovers() {
    let t = TestHost::start(&[("staller", STALLER)], |c| {
        c.sandbox.callback_budget_ms = 5_000;
        c.sandbox.max_operations = u64::MAX;
        c.health.stale_after_ms.strategy = 400;
    })
    .await;
    let health = t.host.health();
    let component = "strategy.staller";
    wait_until("the strategy's component up", Duration::from_secs(10), || {
        health.components().get(component) == Some(&ComponentState::Up)
    })
    .await;
    wait_until("degraded while stuck", Duration::from_secs(15), || {
        health.components().get(component) == Some(&ComponentState::Degraded)
    })
    .await;
    let reason = health.reasons()[component].clone();
    assert!(
        reason.contains("finished no callback while events waited") && reason.contains("threshold 0.4 s"),
        "{reason}"
    );
    let api = t.api_get("/api/v1/health").await;
    assert_eq!(api["components"][component], "degraded", "{api}");
    assert!(api["freshness"][component]["age_ms"].as_u64().unwrap() >= 400, "{api}");
    assert_eq!(api["freshness"][component]["stale_after_ms"], 400, "{api}");
    assert_eq!(api["status"], "ready", "a strategy never holds the host's readiness: {api}");
    let metrics = t.metrics().await;
    assert!(
        metrics.contains(&format!("tradehost_component_up{{component=\"{component}\",state=\"degraded\"}} 0")),
        "{metrics}"
    );
    assert!(metrics.contains(&format!("tradehost_component_activity_age_seconds{{component=\"{component}\"}}")));
    wait_until("up again once callbacks finish", Duration::from_secs(10), || {
        health.components().get(component) == Some(&ComponentState::Up)
    })
    .await;
    assert!(!health.reasons().contains_key(component), "the reason goes with the degradation");
    for state in ["degraded", "up"] {
        t.wait_for(0, &format!("a health event: {component} {state}"), |e| {
            e.kind == tradehost::activity::ActivityKind::Health
                && e.data["component"] == component
                && e.data["state"] == state
        })
        .await;
    }
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_writer_that_stops_committing_makes_the_host_degraded() {
    // Logs on every candle: activity to store, folded into each (delayed) commit.
    let logger = "fn on_candle(c) { log::info(`close ${c.close}`); }";
    let t = TestHost::start(&[("logger", logger)], |c| {
        c.faults.commit_delay_ms = 700;
        c.health.stale_after_ms.store = 200;
    })
    .await;
    // One answer of /api/v1/health while the store is degraded, checked whole.
    let url = format!("http://{}/api/v1/health", t.host.http_addr());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let (code, body) = loop {
        let response = reqwest::get(&url).await.unwrap();
        let code = response.status();
        let body: Value = response.json().await.unwrap();
        if body["components"]["store"] == "degraded" {
            break (code, body);
        }
        assert!(tokio::time::Instant::now() < deadline, "the store never degraded: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(code, 503, "degraded is not ready: {body}");
    assert_eq!(body["status"], "degraded", "{body}");
    let reason = body["reasons"]["store"].as_str().unwrap();
    assert!(reason.starts_with("committed nothing while writes waited "), "{reason}");
    assert_eq!(t.stop().await, 0);
}

/// Runs `tradehost doctor --live --json` against the host; returns the exit code and the report.
async fn doctor(t: &TestHost, wait_s: u64) -> (i32, Value) {
    let (addr, token) = (t.host.http_addr().to_string(), t.host.api_token().expose().to_string());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tradehost"))
            .args([
                "doctor",
                "--live",
                "--json",
                "--event-wait",
                &wait_s.to_string(),
                "--http",
                &addr,
                "--token",
                &token,
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let report: Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
    });
    (output.status.code().unwrap(), report)
}

/// The checks of `report` with `result`, as "validation / check: detail".
fn with_result(report: &Value, result: &str) -> Vec<String> {
    report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == result)
        .map(|c| {
            format!(
                "{} / {}: {}",
                c["validation"].as_str().unwrap(),
                c["check"].as_str().unwrap(),
                c["detail"].as_str().unwrap()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_live_is_all_ok_on_a_healthy_host_and_fails_each_fault_with_its_reason() {
    let silent = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let faults = silent.clone();
    let t = TestHost::start(&[("trader", TRADER)], move |c| c.faults.ws_silent = faults).await;
    t.wait_for(0, "a fill", |e| e.kind == tradehost::activity::ActivityKind::Fill).await;
    let (code, report) = doctor(&t, 10).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["result"], "OK");
    let validations: std::collections::BTreeSet<&str> =
        report["checks"].as_array().unwrap().iter().map(|c| c["validation"].as_str().unwrap()).collect();
    assert_eq!(validations, ["data consistency", "integrations", "real-time", "synchronization"].into());
    let oks = with_result(&report, "OK").join("\n");
    for expected in [
        "integrations / component engine: up",
        "integrations / strategy trader: running",
        "synchronization / orders and positions (paper)",
        "real-time / WebSocket stream: a live event",
        "real-time / market data (feed): last market event",
        "data consistency / store:",
    ] {
        assert!(oks.contains(expected), "missing {expected:?} in\n{oks}");
    }

    // A strategy that cannot start: FAIL in integrations, naming it and the error.
    std::fs::write(t.file("broken"), "fn on_candle(c) { let = ; }").unwrap();
    t.wait_status("broken", |s| s.state == tradehost::control::StrategyState::Failed).await;
    // The stream connected but silent: FAIL in real-time.
    silent.store(true, std::sync::atomic::Ordering::SeqCst);
    let (code, report) = doctor(&t, 3).await;
    assert_eq!(code, 2, "{report:#}");
    assert_eq!(report["result"], "FAIL");
    let fails = with_result(&report, "FAIL").join("\n");
    assert!(fails.contains("integrations / strategy broken: failed"), "{fails}");
    assert!(fails.contains("integrations / component strategy.broken: down"), "{fails}");
    assert!(
        fails.contains("real-time / WebSocket stream: no live event in 3 s while the activity log went from seq"),
        "{fails}"
    );
    silent.store(false, std::sync::atomic::Ordering::SeqCst);
    std::fs::remove_file(t.file("broken")).unwrap();

    // A position edited in the store while the host was down: FAIL in data consistency.
    let (dir, data) = t.stop_keep().await;
    edit_a_stored_position(data.path());
    let t = TestHost::start_in(dir, data, |_| {}).await;
    let (code, report) = doctor(&t, 10).await;
    assert_eq!(code, 2, "{report:#}");
    let fails = with_result(&report, "FAIL").join("\n");
    assert!(
        fails.contains("data consistency / store: position trader/ETHUSD is") && fails.contains("its fills sum to"),
        "{fails}"
    );
    assert_eq!(t.stop().await, 0);
}

/// Adds 7 to the size of the first stored position, behind the host's back.
fn edit_a_stored_position(data: &std::path::Path) {
    use redb::{ReadableTable, TableDefinition};
    let positions: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");
    let db = redb::Database::open(data.join(tradehost::store::DB_FILE)).unwrap();
    let txn = db.begin_write().unwrap();
    {
        let mut table = txn.open_table(positions).unwrap();
        let (key, mut position) = {
            let (key, value) = table.iter().unwrap().next().expect("a stored position").unwrap();
            (key.value().to_string(), serde_json::from_slice::<Value>(value.value()).unwrap())
        };
        let size: rust_decimal::Decimal = match &position["size"] {
            Value::String(text) => text.parse().unwrap(),
            other => other.to_string().parse().unwrap(),
        };
        position["size"] = Value::String((size + rust_decimal::Decimal::from(7)).to_string());
        table.insert(key.as_str(), serde_json::to_vec(&position).unwrap().as_slice()).unwrap();
    }
    txn.commit().unwrap();
}
