//! Restarts: strategy state, positions, open orders and activity numbering
//! continue exactly; orders of unknown outcome are resolved, never resent.

mod common;

use common::TestHost;
use tradehost::activity::ActivityKind;
use tradehost::config::ShutdownPolicy;
use tradehost::model::{Order, OrderKind, OrderRequest, OrderStatus, Side, TimeInForce};
use tradehost::store::{Store, WriteOp};

const KEEPER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_start() {
    this.starts = (this.starts ?? 0) + 1;
    let p = exchange::position("BTCUSD");
    print(`start ${this.starts} count ${this.count ?? 0} position ${p.size} open ${exchange::open_orders("BTCUSD").len()}`);
}
fn on_tick(t) {
    if this.placed != true {
        this.placed = true;
        exchange::market_order("BTCUSD", "buy", 0.01);
        exchange::limit_order("BTCUSD", "buy", 0.01, t.bid * 0.5);
    }
}
fn on_candle(c) { this.count = (this.count ?? 0) + 1; }
fn on_fill(f) { print(`filled ${f.size}`); }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn state_positions_open_orders_and_activity_numbers_survive_a_restart() {
    let leave = |c: &mut tradehost::config::Config| c.strategies.shutdown_policy = ShutdownPolicy::Leave;
    let t = TestHost::start(&[("keeper", KEEPER)], leave).await;
    t.wait_log(0, "keeper", "start 1 count 0 position 0.0 open 0").await;
    t.wait_log(0, "keeper", "filled 0.01").await;
    t.wait_for(0, "the resting order", |e| e.kind == ActivityKind::Order && e.data["status"] == "open").await;
    t.wait_status("keeper", |_| true).await;
    // Let a few candles count and the state flush (state_flush_ms = 250).
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let last_seq = t.seq();
    let (dir, data) = t.stop_keep().await;

    let t = TestHost::start_in(dir, data, leave).await;
    let started = t.wait_log(0, "keeper", "start 2 count ").await;
    let message = started.data["message"].as_str().unwrap();
    let count: u64 = message.split_whitespace().nth(3).unwrap().parse().unwrap();
    assert!(count >= 3, "state restored: {message}");
    assert!(message.ends_with("position 0.01 open 1"), "positions and open orders restored: {message}");
    let first = t.host.activity().since(0, 1).into_iter().next().unwrap();
    assert!(first.seq > last_seq, "activity numbering continues: {} after {last_seq}", first.seq);
    assert!(
        !t.host.activity().since(0, usize::MAX).iter().any(|e| common::is_log(e, "keeper", "filled")),
        "no order was resent"
    );
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_order_of_unknown_outcome_is_resolved_by_asking_the_exchange_not_resent() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("idle.rhai"), "fn on_start() { print(\"up\"); }").unwrap();
    {
        let store = Store::open(data.path()).unwrap();
        let writer = store.writer(Default::default());
        let mut pending = Order::new(
            OrderRequest {
                client_id: "idle-lost1".into(),
                strategy: "idle".into(),
                symbol: "BTCUSD".into(),
                side: Side::Buy,
                kind: OrderKind::Market,
                size: "0.01".parse().unwrap(),
                price: None,
                time_in_force: TimeInForce::Gtc,
                post_only: false,
                reduce_only: false,
                stop: None,
                oco: None,
                parent: None,
            },
            0,
        );
        pending.status = OrderStatus::Pending;
        writer.commit_blocking(vec![WriteOp::Order(pending)]).unwrap();
        writer.close();
    }
    let t = TestHost::start_in(dir, data, |_| {}).await;
    let resolved =
        t.wait_for(0, "the resolved order", |e| e.kind == ActivityKind::Order && e.data["recovered"] == true).await;
    assert_eq!(resolved.data["order"]["status"], "rejected");
    assert!(resolved.data["order"]["reason"].as_str().unwrap().contains("never reached the exchange"));
    t.wait_log(0, "idle", "up").await;
    let (dir, data) = t.stop_keep().await;
    let store = Store::open(data.path()).unwrap();
    assert!(store.fills().unwrap().is_empty(), "the lost order was not sent again");
    let report = tradehost::store::check(&store).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    drop(dir);
}

fn write_csv(path: &std::path::Path, first_minute: u32, bars: u32) {
    let mut text = String::from("time,open,high,low,close,volume\n");
    for m in first_minute..first_minute + bars {
        let close = 100.0 + m as f64;
        text.push_str(&format!(
            "2024-01-01 {:02}:{:02}:00,{close},{},{},{close},1\n",
            m / 60,
            m % 60,
            close + 1.0,
            close - 1.0
        ));
    }
    std::fs::write(path, text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn closed_candles_are_stored_and_warm_up_a_later_run() {
    let counter = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_start() { print(`history ${market::candles("BTCUSD", 1000).len()}`); }
fn on_candle(c) { print(`close ${c.close}`); }
"#;
    let csv_dir = tempfile::tempdir().unwrap();
    let first = csv_dir.path().join("first.csv");
    let second = csv_dir.path().join("second.csv");
    write_csv(&first, 0, 8);
    write_csv(&second, 8, 3);
    let replay = |path: std::path::PathBuf| {
        move |c: &mut tradehost::config::Config| {
            c.feed.kind = tradehost::config::FeedKind::Replay;
            c.feed.replay.path = path;
            c.feed.replay.symbol = "BTCUSD".into();
            c.feed.replay.speed = 6_000.0;
        }
    };
    let t = TestHost::start(&[("counter", counter)], replay(first)).await;
    t.wait_log(0, "counter", "history 0").await;
    t.wait_for(0, "the end of the replay", |e| e.data["event"] == "feed_finished").await;
    t.wait_log(0, "counter", "close 107.0").await;
    let (dir, data) = t.stop_keep().await;
    {
        let store = Store::open(data.path()).unwrap();
        let candles = store.candles("BTCUSD", "1m", 100).unwrap();
        assert_eq!(candles.len(), 8);
        assert_eq!((candles[0].close, candles[7].close), (100.0, 107.0));
    }
    let t = TestHost::start_in(dir, data, replay(second)).await;
    t.wait_log(0, "counter", "history 8").await;
    assert_eq!(t.stop().await, 0);
}

const FLIPPER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    let side = if this.n % 2 == 0 { "sell" } else { "buy" };
    exchange::market_order("BTCUSD", side, 0.001);
    print(`candle ${c.time} ${c.close} now ${now()}`);
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_synthetic_market_continues_its_time_and_prices() {
    let t = TestHost::start(&[("flip", FLIPPER)], |_| {}).await;
    let status = t.api_get("/api/v1/status").await;
    assert_eq!(status["clock"], "simulated ×60", "{status}");
    for n in 1..=4 {
        t.wait_for(0, &format!("fill {n}"), |e| e.kind == ActivityKind::Fill && e.data["id"] == n).await;
    }
    let (dir, data) = t.stop_keep().await;
    let before = Store::open(data.path()).unwrap().fills().unwrap();
    let last_close = {
        let store = Store::open(data.path()).unwrap();
        store.last_candle("BTCUSD").unwrap().unwrap().0.close
    };

    let t = TestHost::start_in(dir, data, |_| {}).await;
    let first_new = before.len() as u64 + 1;
    for n in first_new..first_new + 3 {
        t.wait_for(0, &format!("fill {n}"), |e| e.kind == ActivityKind::Fill && e.data["id"] == n).await;
    }
    let log = t.wait_log(0, "flip", "candle ").await;
    let (dir, data) = t.stop_keep().await;
    drop(dir);
    let store = Store::open(data.path()).unwrap();
    let fills = store.fills().unwrap();
    assert!(fills.len() > before.len());
    for pair in fills.windows(2) {
        assert!(
            pair[1].time >= pair[0].time,
            "fill {} at {} before fill {} at {}",
            pair[1].id,
            pair[1].time,
            pair[0].id,
            pair[0].time
        );
    }
    // The first new price continues from the last close (the walk moves ~0.1 % a tick), not from the seed's start.
    let resumed: f64 = log.data["message"].as_str().unwrap().split_whitespace().nth(2).unwrap().parse().unwrap();
    assert!((resumed / last_close - 1.0).abs() < 0.02, "resumed at {resumed}, the last run closed at {last_close}");
    // Every record of both runs carries the same clock: activity times never go backwards.
    let events = store.activity_since(0, usize::MAX).unwrap();
    let ms = |e: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(e["ts"].as_str().unwrap()).unwrap().timestamp_millis()
    };
    for pair in events.windows(2) {
        assert!(ms(&pair[1]) >= ms(&pair[0]), "activity time went back from {} to {}", pair[0]["ts"], pair[1]["ts"]);
    }
    // A fill's time and its activity event's time come from the same clock.
    let fill_event = events.iter().rev().find(|e| e["type"] == "fill").unwrap();
    let fill_ms = fill_event["data"]["time"].as_i64().unwrap();
    let event_ms = chrono::DateTime::parse_from_rfc3339(fill_event["ts"].as_str().unwrap()).unwrap().timestamp_millis();
    assert!((event_ms - fill_ms).abs() < 60_000, "activity at {event_ms}, fill at {fill_ms}: one clock");
}
