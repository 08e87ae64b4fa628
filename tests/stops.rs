//! Stop orders are kept by the host, not the script: a stop a script placed
//! survives the script's reload, its quarantine, a host restart and kill -9,
//! and still fires. Each test runs a real host process on a replayed market
//! that stays at 100 for a few seconds, then drops to 80.
#![cfg(unix)]

#[path = "support/abused.rs"]
mod abused;
mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use abused::spawn_host;
use common::TestHost;
use serde_json::Value;
use tradehost::model::OrderStatus;

/// Buys once, then protects the position with a stop-loss at 90.
const GUARD: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_candle(c) {
    if this.entered != true { this.entered = true; exchange::market_order("BTCUSD", "buy", 0.01); }
}
fn on_fill(f) {
    if f.side == "buy" && this.stop == () {
        this.stop = exchange::stop_order("BTCUSD", "sell", 0.01, 90, #{ reduce_only: true });
    }
}
"#;

/// Bars flat at 100 for `flat` minutes, then at 80.
fn market_csv(path: &Path, flat: usize) {
    let mut text = String::from("timestamp,open,high,low,close,volume\n");
    for i in 0..flat + 200 {
        let price = if i < flat { 100 } else { 80 };
        text.push_str(&format!("{},{price},{price},{price},{price},1\n", 1_704_067_200 + 60 * i));
    }
    std::fs::write(path, text).unwrap();
}

struct Run {
    root: tempfile::TempDir,
    config: PathBuf,
    child: std::process::Child,
    address: String,
}

impl Run {
    /// A host on a replayed market (10 bars a second) with `GUARD` as `guard.rhai`.
    fn start(flat_minutes: usize) -> Run {
        let root = tempfile::tempdir().unwrap();
        let (strategies, data) = (root.path().join("strategies"), root.path().join("data"));
        std::fs::create_dir(&strategies).unwrap();
        std::fs::write(strategies.join("guard.rhai"), GUARD).unwrap();
        let csv = root.path().join("market.csv");
        market_csv(&csv, flat_minutes);
        let config = root.path().join("config.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n[strategies]\ndir = {strategies:?}\n[http]\nbind = \"127.0.0.1:0\"\n\
                 [feed]\nkind = \"replay\"\n[feed.replay]\npath = {csv:?}\nsymbol = \"BTCUSD\"\nspeed = 600.0\n\
                 [supervisor]\ndebounce_ms = 50\nmax_consecutive_errors = 1\nrestart_backoff_initial_ms = 50\nquarantine_after_restarts = 1\n"
            ),
        )
        .unwrap();
        let (child, address) = spawn_host(&config);
        Run { root, config, child, address }
    }

    fn restart(&mut self) {
        let (child, address) = spawn_host(&self.config);
        (self.child, self.address) = (child, address);
    }

    fn token(&self) -> String {
        std::fs::read_to_string(self.root.path().join("data/api-token")).unwrap().trim().to_string()
    }

    async fn get(&self, path: &str) -> Value {
        let url = format!("http://{}{path}", self.address);
        reqwest::Client::new().get(url).bearer_auth(self.token()).send().await.unwrap().json().await.unwrap()
    }

    /// Polls `path` until `done` holds for its answer (30 s at most).
    async fn wait(&self, what: &str, path: &str, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let answer = self.get(path).await;
            if done(&answer) {
                return answer;
            }
            assert!(started.elapsed() < Duration::from_secs(30), "timed out waiting for {what}: {answer:#}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The guard's stop order, once the host shows it waiting for its trigger.
    async fn waiting_stop(&self) -> Value {
        let orders = self
            .wait("the stop waiting for its trigger", "/api/v1/orders", |orders| {
                orders.as_array().unwrap().iter().any(|o| o["status"] == "untriggered")
            })
            .await;
        orders.as_array().unwrap().iter().find(|o| o["status"] == "untriggered").unwrap().clone()
    }

    /// Waits for the stop's fill and checks the account ends flat with one entry and one exit.
    async fn stop_fired(&self, stop_id: &str) {
        let fills = self
            .wait("the stop's fill", "/api/v1/fills?limit=100", |fills| {
                fills.as_array().unwrap().iter().any(|f| f["order_id"] == stop_id)
            })
            .await;
        let sides: Vec<&str> = fills.as_array().unwrap().iter().map(|f| f["side"].as_str().unwrap()).collect();
        assert_eq!(sides, ["buy", "sell"], "one entry, one exit by the stop: {fills:#}");
        let exit = &fills[1];
        // The market gapped from 100 to 80: the stop sells at the bid there, not at 90.
        let price: f64 = exit["price"].as_str().unwrap().parse().unwrap();
        assert!((78.0..=80.0).contains(&price), "{exit}");
        let positions = self.get("/api/v1/positions").await;
        assert!(positions.as_array().unwrap().is_empty(), "flat after the stop: {positions}");
        let all = self.get("/api/v1/orders?all=true").await;
        let stop = all.as_array().unwrap().iter().find(|o| o["request"]["client_id"] == stop_id).unwrap();
        assert_eq!(stop["status"], "filled", "{stop}");
    }

    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_survives_its_scripts_reload_and_quarantine_and_still_fires() {
    let run = Run::start(100);
    let stop = run.waiting_stop().await;
    let stop_id = stop["request"]["client_id"].as_str().unwrap().to_string();
    assert_eq!(stop["request"]["stop"]["price"], "90", "{stop}");
    // Reload: the new version runs, the stop stays.
    let file = run.root.path().join("strategies/guard.rhai");
    std::fs::write(&file, format!("// v2\n{GUARD}")).unwrap();
    run.wait("version 2", "/api/v1/strategies", |s| s[0]["version"] == 2).await;
    // Quarantine: a version that fails on every candle is stopped for good.
    std::fs::write(&file, "fn on_candle(c) { throw \"broken\"; }").unwrap();
    run.wait("the quarantine", "/api/v1/strategies", |s| s[0]["state"] == "quarantined").await;
    assert_eq!(run.waiting_stop().await["request"]["client_id"], stop_id.as_str(), "the same stop still waits");
    // The market drops through 90 while no script runs: the stop fires.
    run.stop_fired(&stop_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_survives_kill_9_and_a_restart_and_still_fires() {
    let mut run = Run::start(60);
    let stop_id = run.waiting_stop().await["request"]["client_id"].as_str().unwrap().to_string();
    // The strategy's `this` (which says it has entered) is saved every
    // store.state_flush_ms (250 ms); the stop itself was stored before it was shown.
    tokio::time::sleep(Duration::from_millis(600)).await;
    run.kill_9();
    // The replay starts again at 100; the strategy's state says it has entered.
    run.restart();
    let restored = run.waiting_stop().await;
    assert_eq!(restored["request"]["client_id"], stop_id.as_str(), "the stored stop is back: {restored}");
    run.stop_fired(&stop_id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_entry_with_a_bracket_gets_both_legs_once_it_fills() {
    let script = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.sent != true {
        this.sent = true;
        exchange::market_order("BTCUSD", "buy", 0.01, #{ stop_loss: t.bid * 0.5, take_profit: t.ask * 2.0 });
    }
}
"#;
    let t = TestHost::start(&[("entry", script)], |_| {}).await;
    t.wait_for(0, "the entry's fill", |e| e.kind == tradehost::activity::ActivityKind::Fill).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let legs = loop {
        let account = t.host.account();
        let legs: Vec<_> =
            account.open_orders.iter().filter(|o| o.status == OrderStatus::Untriggered).cloned().collect();
        if legs.len() == 2 {
            break legs;
        }
        assert!(Instant::now() < deadline, "the legs never waited: {:?}", account.open_orders);
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let kinds: Vec<_> = legs.iter().map(|o| o.request.stop.as_ref().unwrap().kind).collect();
    assert_eq!(kinds, [tradehost::model::StopKind::StopLoss, tradehost::model::StopKind::TakeProfit]);
    for leg in &legs {
        assert_eq!(leg.request.size.to_string(), "0.01");
        assert!(leg.request.reduce_only && leg.request.parent.is_some());
        assert_eq!(leg.request.oco, Some(legs[0].request.client_id.clone()), "one group");
    }
    assert_eq!(t.stop().await, 0);
}

/// Places one far-away stop-loss on its first tick.
const FAR_STOP: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) { if this.placed != true { this.placed = true; exchange::stop_order("BTCUSD", "sell", 0.01, t.bid * 0.5); } }
"#;

/// The client ids of the host's waiting stops.
async fn waiting_stops(t: &TestHost) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let account = t.host.account();
        let waiting: Vec<String> = account
            .open_orders
            .iter()
            .filter(|o| o.status == OrderStatus::Untriggered)
            .map(|o| o.request.client_id.clone())
            .collect();
        if !waiting.is_empty() || Instant::now() > deadline {
            return waiting;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_policies_keep_or_cancel_stops_and_the_kill_switch_cancels_them() {
    // `leave`: the stop outlives the host and is there after the restart.
    let t = TestHost::start(&[("far", FAR_STOP)], |c| {
        c.strategies.shutdown_policy = tradehost::config::ShutdownPolicy::Leave
    })
    .await;
    let placed = waiting_stops(&t).await;
    assert_eq!(placed.len(), 1);
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, |_| {}).await;
    assert_eq!(waiting_stops(&t).await, placed, "kept through a clean restart with `leave`");
    // `cancel` (the default): the shutdown cancels it.
    let (dir, data) = t.stop_keep().await;
    let store = tradehost::store::Store::open(data.path()).unwrap();
    let stored = store.recover().unwrap().orders[&placed[0]].clone();
    assert_eq!(stored.status, OrderStatus::Cancelled, "{stored:?}");
    drop(store);
    // The kill switch cancels a waiting stop.
    let t = TestHost::start_in(dir, data, |_| {}).await;
    std::fs::write(t.file("far2"), FAR_STOP).unwrap();
    let waiting = waiting_stops(&t).await;
    assert_eq!(waiting.len(), 1);
    let (reply, answer) = tokio::sync::oneshot::channel();
    t.host.control().send(tradehost::control::Control::Kill { flatten: false, reply }).unwrap();
    let report = answer.await.unwrap().unwrap();
    assert_eq!(report.cancelled, 1);
    let deadline = Instant::now() + Duration::from_secs(10);
    while t.host.account().open_orders.iter().any(|o| o.request.client_id == waiting[0]) {
        assert!(Instant::now() < deadline, "the stop is still open after the kill switch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.stop().await, 0);
}
