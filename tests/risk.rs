//! Pre-trade limits on the host's one order path (paper venue): a rejected
//! order reaches the script with the limit in its reason, a runaway loop is
//! held to its order rate while the host and other strategies go on.

mod common;

use std::collections::BTreeMap;

use common::{TestHost, is_log};
use tradehost::activity::ActivityKind;
use tradehost::config::{RiskLimits, StrategyOverride};
use tradehost::control::StrategyState;

const FAT_FINGER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.sent == () {
        this.sent = true;
        let limits = risk::limits();
        log::info("limits: order size " + limits.account.max_order_size + ", own " + limits.own.len() + ", state " + risk::state());
        exchange::market_order("BTCUSD", "buy", 0.01);
        exchange::market_order("BTCUSD", "buy", 50.0);
    }
}
fn on_order(o) { log::info(o.status + " " + o.size + " " + (o.reason ?? "")); }
"#;

const RUNAWAY: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.sent == () {
        this.sent = true;
        for i in 0..1000 { exchange::limit_order("BTCUSD", "buy", 0.001, c.close * 0.5); }
    }
}
fn on_order(o) {
    if o.status == "open" { this.open = (this.open ?? 0) + 1; }
    if o.status == "rejected" {
        this.rejected = (this.rejected ?? 0) + 1;
        this.reason = o.reason;
    }
    if (this.open ?? 0) + (this.rejected ?? 0) == 1000 {
        log::info("open " + this.open + " rejected " + this.rejected + ": " + this.reason);
    }
}
"#;

const STEADY: &str = r#"
fn config() { #{ symbols: ["ETHUSD"], timeframe: "1s" } }
fn on_candle(c) { log::info("steady " + c.close); }
"#;

fn strategy_limits(name: &str, limits: RiskLimits) -> impl FnOnce(&mut tradehost::config::Config) {
    let name = name.to_string();
    move |config| {
        let mut overrides = BTreeMap::new();
        // No sandbox order quota: these tests are about the risk limits behind it.
        let sandbox = toml::toml! { orders_per_second = 1_000_000 };
        overrides.insert(name, StrategyOverride { risk: Some(limits), sandbox, ..Default::default() });
        config.strategies.overrides = overrides;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_a_limit_reaches_the_script_rejected_with_the_limit_named() {
    let limits = RiskLimits { max_order_size: Some("1".parse().unwrap()), ..Default::default() };
    let t = TestHost::start(&[("fat", FAT_FINGER)], |c| c.risk = limits).await;
    t.wait_log(0, "fat", "limits: order size 1.0, own 0, state active").await;
    let rejected = t.wait_log(0, "fat", "rejected").await;
    let message = rejected.data["message"].as_str().unwrap();
    assert!(
        message.contains("risk limit max_order_size (account): order size 50") && message.contains("over the limit 1"),
        "{message}"
    );
    let order = t
        .wait_for(0, "the rejected order in the activity", |e| {
            e.kind == ActivityKind::Order && e.data["status"] == "rejected"
        })
        .await;
    assert!(order.data["reason"].as_str().unwrap().contains("max_order_size"), "{}", order.data);
    // The order under the limit went through.
    t.wait_log(0, "fat", "filled 0.01").await;
    let orders = t.api_get("/api/v1/orders?all=true").await;
    assert!(orders.to_string().contains("max_order_size"), "the API's orders list shows it: {orders}");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_orders_in_one_callback_are_held_to_the_order_rate_and_the_host_goes_on() {
    let limits = RiskLimits { max_orders_per_minute: Some(25), ..Default::default() };
    let t = TestHost::start(&[("runaway", RUNAWAY), ("steady", STEADY)], strategy_limits("runaway", limits)).await;
    let summary = t.wait_log(0, "runaway", "rejected").await;
    let message = summary.data["message"].as_str().unwrap();
    assert!(message.starts_with("open 25 rejected 975: "), "{message}");
    assert!(message.contains("risk limit max_orders_per_minute (strategy runaway): 25 orders per minute"), "{message}");
    // Everything else goes on.
    let seq = t.seq();
    t.wait_for(seq, "the other strategy's next candle", |e| is_log(e, "steady", "steady")).await;
    assert_eq!(t.wait_status("runaway", |_| true).await.state, StrategyState::Running);
    assert_eq!(t.api_get("/api/v1/health").await["status"], "ready");
    let url = format!("http://{}/metrics", t.host.http_addr());
    let metrics = reqwest::Client::new().get(url).bearer_auth(t.host.api_token().expose()).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("tradehost_risk_rejections_total{limit=\"max_orders_per_minute\"} 975"), "{metrics}");
    assert_eq!(t.api_get("/api/v1/risk").await["rejections"]["max_orders_per_minute"], 975);
    assert_eq!(t.stop().await, 0);
}

const OBEYS: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let state = risk::state();
    if this.step == () {
        this.step = "bought";
        exchange::market_order("BTCUSD", "buy", 0.02);
        this.resting = exchange::limit_order("BTCUSD", "buy", 0.01, c.close * 0.5);
    } else if state == "reduce_only" && this.step == "bought" {
        this.step = "reduced";
        exchange::market_order("BTCUSD", "buy", 0.01);
        exchange::market_order("BTCUSD", "sell", 0.01);
    } else if state == "halted" && this.step == "reduced" {
        this.step = "halted";
        exchange::market_order("BTCUSD", "sell", 0.01);
        exchange::cancel(this.resting);
    }
}
fn on_order(o) { log::info(o.status + " " + o.side + " " + o.size + " " + (o.reason ?? "")); }
"#;

async fn post(t: &TestHost, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", t.host.http_addr());
    let mut request = reqwest::Client::new().post(url).bearer_auth(t.host.api_token().expose());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reduce_only_lets_only_reductions_out_and_halted_only_cancels() {
    let t = TestHost::start(&[("s", OBEYS)], |_| {}).await;
    t.wait_log(0, "s", "filled buy 0.02").await;
    t.wait_log(0, "s", "open buy 0.01").await;
    let seq = t.seq();
    let (code, trading) =
        post(&t, "/api/v1/risk/state", Some(serde_json::json!({"strategy": "s", "state": "reduce_only"}))).await;
    assert_eq!((code, trading["strategies"]["s"].as_str()), (200, Some("reduce_only")), "{trading}");
    let rejected = t.wait_log(seq, "s", "rejected buy 0.01").await;
    assert!(
        rejected.data["message"].as_str().unwrap().contains("risk limit trading_state (strategy s): reduce_only"),
        "{}",
        rejected.data
    );
    t.wait_log(seq, "s", "filled sell 0.01").await;
    let seq = t.seq();
    let (code, _) = post(&t, "/api/v1/risk/state", Some(serde_json::json!({"state": "halted"}))).await;
    assert_eq!(code, 200);
    let rejected = t.wait_log(seq, "s", "rejected sell 0.01").await;
    assert!(rejected.data["message"].as_str().unwrap().contains("(account): halted"), "{}", rejected.data);
    t.wait_log(seq, "s", "cancelled buy 0.01").await;
    let risk = t.api_get("/api/v1/risk").await;
    assert_eq!(risk["trading"]["account"], "halted", "{risk}");
    let event = t.wait_for(0, "the risk event", |e| e.kind == ActivityKind::Risk && e.data["state"] == "halted").await;
    assert_eq!(event.data["scope"], "account");
    // Bad input: an unknown state or strategy is refused in the API's error shape.
    let (code, body) = post(&t, "/api/v1/risk/state", Some(serde_json::json!({"state": "paused"}))).await;
    assert_eq!((code, body["error"]["code"].as_str()), (400, Some("bad_request")), "{body}");
    let (code, body) =
        post(&t, "/api/v1/risk/state", Some(serde_json::json!({"state": "halted", "strategy": "nobody"}))).await;
    assert_eq!(code, 404, "{body}");
    let (code, trading) = post(&t, "/api/v1/risk/state", Some(serde_json::json!({"state": "resume"}))).await;
    assert_eq!((code, trading["account"].as_str()), (200, Some("active")));
    assert_eq!(t.stop().await, 0);
}

const HOLDS_AND_QUOTES: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if this.started == () {
        this.started = true;
        exchange::market_order("BTCUSD", "buy", 0.02);
        exchange::limit_order("BTCUSD", "buy", 0.01, c.close * 0.5);
        exchange::limit_order("BTCUSD", "sell", 0.01, c.close * 2.0);
    } else if exchange::position("BTCUSD").size == 0.0 && exchange::open_orders().len() == 0 {
        exchange::market_order("BTCUSD", "buy", 0.01);
    }
}
fn on_order(o) { log::info(o.status + " " + o.side + " " + o.size + " " + (o.reason ?? "")); }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_kill_switch_halts_cancels_everything_flattens_and_survives_a_restart() {
    let leave =
        |c: &mut tradehost::config::Config| c.strategies.shutdown_policy = tradehost::config::ShutdownPolicy::Leave;
    let t = TestHost::start(&[("holder", HOLDS_AND_QUOTES)], leave).await;
    t.wait_log(0, "holder", "filled buy 0.02").await;
    t.wait_log(0, "holder", "open sell 0.01").await;
    t.wait_log(0, "holder", "open buy 0.01").await;
    let seq = t.seq();
    let (code, report) = post(&t, "/api/v1/kill?flatten=true", None).await;
    assert_eq!(code, 200, "{report}");
    assert_eq!((report["cancelled"].as_u64(), report["flatten_orders"].as_u64()), (Some(2), Some(1)), "{report}");
    assert_eq!(report["trading"]["account"], "halted");
    t.wait_log(seq, "holder", "filled sell 0.02").await;
    let account = t.host.account();
    assert!(account.open_orders.is_empty(), "{:?}", account.open_orders);
    assert!(account.positions.values().flat_map(|p| p.values()).all(|p| p.size.is_zero()));
    // Flat and halted: its next entry is refused.
    let refused = t.wait_log(seq, "holder", "rejected buy 0.01").await;
    assert!(refused.data["message"].as_str().unwrap().contains("halted"), "{}", refused.data);
    // A halted host comes back halted.
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, leave).await;
    assert_eq!(t.api_get("/api/v1/risk").await["trading"]["account"], "halted");
    assert_eq!(t.stop().await, 0);
}

const EVERY_CANDLE: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) { exchange::market_order("BTCUSD", if exchange::position("BTCUSD").size > 0.0 { "sell" } else { "buy" }, 0.02); }
fn on_order(o) { if o.status == "rejected" { log::info("rejected: " + o.reason); } }
"#;

async fn put(t: &TestHost, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
    let url = format!("http://{}{path}", t.host.http_addr());
    let response =
        reqwest::Client::new().put(url).bearer_auth(t.host.api_token().expose()).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_change_at_runtime_are_validated_stored_and_kept_across_a_restart() {
    let t = TestHost::start(&[("trader", EVERY_CANDLE)], |_| {}).await;
    t.wait_for(0, "a fill", |e| e.kind == ActivityKind::Fill).await;
    // Bad input: an unknown limit and a negative one are refused, naming them.
    let (code, body) = put(&t, "/api/v1/risk/limits", serde_json::json!({"account": {"max_order_sise": "1"}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("max_order_sise"), "{body}");
    let (code, body) =
        put(&t, "/api/v1/risk/limits", serde_json::json!({"strategies": {"trader": {"max_order_size": "-1"}}})).await;
    assert_eq!(code, 400, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("strategies.trader.max_order_size"), "{body}");
    // A valid change applies to the next order.
    let seq = t.seq();
    let limits = serde_json::json!({"strategies": {"trader": {"max_order_size": "0.01"}}});
    let (code, body) = put(&t, "/api/v1/risk/limits", limits).await;
    assert_eq!(code, 200, "{body}");
    let rejected = t.wait_log(seq, "trader", "rejected: risk limit max_order_size (strategy trader)").await;
    assert!(rejected.data["message"].as_str().unwrap().contains("order size 0.02 is over the limit 0.01"));
    t.wait_for(seq, "the change as an activity event", |e| e.kind == ActivityKind::Risk && e.data["event"] == "limits")
        .await;
    assert_eq!(t.api_get("/api/v1/risk").await["limits"]["strategies"]["trader"]["max_order_size"], "0.01");
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, |_| {}).await;
    assert_eq!(t.api_get("/api/v1/risk").await["limits"]["strategies"]["trader"]["max_order_size"], "0.01");
    t.wait_log(0, "trader", "rejected: risk limit max_order_size").await;
    assert_eq!(t.stop().await, 0);
}

const CHURN: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    if exchange::position("BTCUSD").size == 0.0 { exchange::market_order("BTCUSD", "buy", 0.01); }
}
fn on_order(o) { if o.status == "rejected" { log::info("rejected: " + o.reason); } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protection_triggers_live_is_published_and_stays_armed_across_a_restart() {
    // Bought at the ask, marked at the mid: the strategy is a little down at once.
    let limits = RiskLimits { max_daily_loss: Some("0.0001".parse().unwrap()), ..Default::default() };
    let t = TestHost::start(&[("churn", CHURN)], strategy_limits("churn", limits.clone())).await;
    let event =
        t.wait_for(0, "the protection", |e| e.kind == ActivityKind::Risk && e.data["event"] == "protection").await;
    let protection = &event.data["protection"];
    assert_eq!(
        (protection["protection"].as_str(), protection["event"].as_str(), protection["state"].as_str()),
        (Some("max_daily_loss"), Some("triggered"), Some("reduce_only")),
        "{protection}"
    );
    assert_eq!(event.strategy.as_deref(), Some("churn"));
    assert_eq!(t.api_get("/api/v1/risk").await["trading"]["strategies"]["churn"], "reduce_only");
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, strategy_limits("churn", limits)).await;
    let risk = t.api_get("/api/v1/risk").await;
    assert_eq!(risk["trading"]["strategies"]["churn"], "reduce_only", "still reduce-only: {risk}");
    let watched = risk["protections"].as_array().unwrap().iter().find(|p| p["scope"] == "churn").cloned();
    let imposed = watched.map(|w| w["imposed"].clone()).unwrap_or_default();
    assert_eq!(imposed["protection"], "max_daily_loss", "still armed: {risk}");
    assert!(imposed["until"].as_i64().is_some(), "until the next trading day: {risk}");
    assert_eq!(t.stop().await, 0);
}
