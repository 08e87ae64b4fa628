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
        overrides.insert(name, StrategyOverride { risk: Some(limits), ..Default::default() });
        config.strategies.overrides = overrides;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_over_a_limit_reaches_the_script_rejected_with_the_limit_named() {
    let limits = RiskLimits { max_order_size: Some("1".parse().unwrap()), ..Default::default() };
    let t = TestHost::start(&[("fat", FAT_FINGER)], |c| c.risk = limits).await;
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
    assert_eq!(t.stop().await, 0);
}
