//! kill -9 of the real binary in the middle of a burst of fills on the fake
//! Delta Exchange (the fake keeps running and keeps filling the orders left
//! open). After each restart the host reconciles before strategies resume:
//! fills made while it was down reach the store once and the strategy's
//! `on_fill`; in the end the store and the fake's account agree and no
//! order was ever posted twice.
#![cfg(unix)]

#[path = "support/fake_delta.rs"]
mod fake_delta;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fake_delta::{FakeConfig, FakeDelta, assert_consistent};

fn write_config(root: &Path, fake: &FakeDelta) -> std::path::PathBuf {
    let strategies = root.join("strategies");
    std::fs::create_dir_all(&strategies).unwrap();
    // The shipped market maker, with a line per fill its on_fill sees.
    let source = include_str!("../strategies/market_maker.rhai");
    let counted = source.replace("this.fills += 1;", "this.fills += 1; log::info(`fill #${this.fills}`);");
    assert_ne!(counted, source, "the market maker counts its fills");
    std::fs::write(strategies.join("market_maker.rhai"), counted).unwrap();
    let config = root.join("config.toml");
    let text = format!(
        r#"data_dir = {data:?}
[strategies]
dir = {strategies:?}
[strategies.overrides.market_maker.params]
spread_bps = 3.0
requote_bps = 2.0
[store]
state_flush_ms = 50
[http]
bind = "127.0.0.1:0"
[exchange]
kind = "delta"
[exchange.delta]
rest_url = "{rest}"
ws_url = "{ws}"
ws_public_url = "{public}"
api_key = "{key}"
api_secret = "{secret}"
request_timeout_ms = 1000
heartbeat_timeout_ms = 1500
ping_interval_ms = 1000
reconnect_initial_ms = 100
reconnect_max_ms = 800
stale_after_ms = 1000
history_bars = 60
"#,
        data = root.join("data"),
        rest = fake.rest_url(),
        ws = fake.ws_url(),
        public = fake.ws_public_url(),
        key = fake.config().key,
        secret = fake.config().secret,
    );
    std::fs::write(&config, text).unwrap();
    config
}

fn spawn(config: &Path) -> (Child, Arc<Mutex<Vec<String>>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .args(["run", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = child.stdout.take().unwrap();
    let sink = lines.clone();
    let pid = child.id();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("WARN") || line.contains("ERROR") {
                eprintln!("[{pid}] {line}");
            }
            sink.lock().unwrap().push(line);
        }
    });
    (child, lines)
}

/// Polls the host's `/api/v1/orders` (its address from the log, its token
/// from the data dir) until `done` holds for the orders.
async fn wait_for_orders(
    lines: &Mutex<Vec<String>>,
    data: &Path,
    what: &str,
    done: impl Fn(&[serde_json::Value]) -> bool,
) {
    let address = || {
        lines
            .lock()
            .unwrap()
            .iter()
            .find_map(|l| Some(l.split("dashboard at http://").nth(1)?.split('/').next()?.to_string()))
    };
    wait("the API address", Duration::from_secs(20), || address().is_some()).await;
    let token = std::fs::read_to_string(data.join("api-token")).unwrap().trim().to_string();
    let url = format!("http://{}/api/v1/orders", address().unwrap());
    let client = reqwest::Client::new();
    let start = tokio::time::Instant::now();
    loop {
        let orders: serde_json::Value =
            client.get(&url).bearer_auth(&token).send().await.unwrap().json().await.unwrap();
        if done(orders.as_array().unwrap()) {
            return;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "timed out waiting for {what}: {orders:#}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait(what: &str, limit: Duration, done: impl Fn() -> bool) {
    let start = tokio::time::Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_then_restart_agrees_with_the_exchange() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let mut delivered_after_restart = 0;
    for round in 0..3 {
        let (mut child, lines) = spawn(&config);
        let fills_at_start = fake.fills().len();
        wait("a burst of fills", Duration::from_secs(30), || fake.fills().len() >= fills_at_start + 3 + round).await;
        // Kill while quotes rest on the book, so the market can fill them while the host is down.
        wait("resting quotes", Duration::from_secs(10), || fake.orders().iter().any(|o| o.state == "open")).await;
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        // The market keeps moving while the host is down and sweeps through the quotes it left.
        let before_downtime = fake.fills().len();
        // (A requote can cancel the last resting quote just before the kill lands:
        // then this round has nothing to sweep; the last assertion needs one round that had.)
        let swept = fake.sweep();
        let during_downtime = fake.fills().len() - before_downtime;
        assert_eq!(during_downtime >= 1, swept >= 1, "the sweep filled the resting quotes it found");
        let (child, lines_after) = spawn(&config);
        let orders_before = fake.orders().len();
        wait("the restarted host trading", Duration::from_secs(20), || fake.orders().len() > orders_before).await;
        // Fills made while the host was down reach the strategy's on_fill after the restart.
        if during_downtime > 0 {
            wait("missed fills delivered to on_fill", Duration::from_secs(10), || {
                lines_after.lock().unwrap().iter().filter(|l| l.contains("fill #")).count() >= during_downtime
            })
            .await;
            delivered_after_restart += during_downtime;
        }
        drop(lines);
        let mut child = child;
        child.kill().unwrap();
        child.wait().unwrap();
    }
    // A last, graceful run: reconcile, then freeze the market and stop.
    let (mut child, lines) = spawn(&config);
    let orders_before = fake.orders().len();
    wait("final run trading", Duration::from_secs(20), || fake.orders().len() > orders_before).await;
    fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(
        status.success(),
        "graceful exit; log tail: {:?}",
        lines.lock().unwrap().iter().rev().take(5).collect::<Vec<_>>()
    );
    let (fills, orders) = assert_consistent(&fake, &root.path().join("data"));
    // The strategy's own count of on_fill calls, as its saved state holds it,
    // equals the fills in the store: each reached on_fill exactly once in the
    // state that survived (fills after the saved state are delivered again).
    let store = tradehost::store::Store::open(&root.path().join("data")).unwrap();
    let state = store.recover().unwrap().strategy_states.remove("market_maker").expect("state saved");
    let saved = tradehost::strategy::SavedState::decode(state);
    assert_eq!(saved.this["fills"].as_u64(), Some(fills as u64), "on_fill count in the saved state: {saved:?}");
    assert_eq!(saved.fills_through, store.reader().recent_fills(1).unwrap().first().map(|f| f.id));
    eprintln!("{fills} fills over {orders} orders; {delivered_after_restart} fills happened while the host was down");
    assert!(fills >= 9, "{fills} fills");
    assert!(
        delivered_after_restart >= 1,
        "some fills happened while the host was down and were delivered after restart"
    );
}

/// A strategy that buys once and, two seconds after the fill, runs `protect`
/// (with `entry`, the position's entry price, in scope).
fn guard(protect: &str) -> String {
    format!(
        r#"
fn config() {{ #{{ symbols: ["BTCUSD"], timeframe: "1m" }} }}
fn on_tick(t) {{ if this.sent != true {{ this.sent = true; exchange::market_order("BTCUSD", "buy", 0.002); }} }}
fn on_fill(f) {{ if f.side == "buy" {{ timer::after("guard", "2s"); }} }}
fn on_timer(name) {{
    if this.guarded != true {{
        this.guarded = true;
        let entry = exchange::position("BTCUSD").entry_price;
        {protect}
    }}
}}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_the_exchange_answers_a_stop_resolves_it_by_client_id() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let strategies = root.path().join("strategies");
    std::fs::remove_file(strategies.join("market_maker.rhai")).unwrap();
    let protect = r#"exchange::stop_order("BTCUSD", "sell", 0.002, entry * 0.5, #{ reduce_only: true });"#;
    std::fs::write(strategies.join("guard.rhai"), guard(protect)).unwrap();
    let (mut child, _lines) = spawn(&config);
    wait("the entry filled", Duration::from_secs(20), || fake.position("BTCUSD").0 == 2).await;
    // The exchange takes the stop at once but answers only after 5 s: the host dies in between.
    fake.faults().slow_orders_ms.store(5_000, std::sync::atomic::Ordering::SeqCst);
    let stop_placed = || fake.orders().iter().any(|o| o.stop_order_type.is_some());
    wait("the stop on the exchange", Duration::from_secs(20), stop_placed).await;
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    fake.faults().slow_orders_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let stop = fake.orders().into_iter().find(|o| o.stop_order_type.is_some()).unwrap();
    let data = root.path().join("data");
    let stored = tradehost::store::Store::open(&data).unwrap().recover().unwrap().orders
        [stop.client_order_id.as_ref().unwrap()]
    .clone();
    // Stored as an intent before it was sent (and, if the exchange's stream beat
    // the kill, as waiting): never lost, whichever reached the store.
    assert!(
        matches!(stored.status, tradehost::model::OrderStatus::Pending | tradehost::model::OrderStatus::Untriggered),
        "{stored:?}"
    );
    // Restarted, the host looks the stop up by its client id: it waits on the exchange, once.
    let (mut child, lines) = spawn(&config);
    wait_for_orders(&lines, &data, "the stop waiting", |orders| {
        orders.iter().any(|o| {
            o["request"]["client_id"] == stop.client_order_id.as_deref().unwrap() && o["status"] == "untriggered"
        })
    })
    .await;
    assert_eq!(fake.orders().iter().filter(|o| o.stop_order_type.is_some()).count(), 1, "no second stop was sent");
    fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    // The default shutdown policy cancelled it on the exchange; the store and the exchange agree.
    assert_consistent(&fake, &data);
}

/// Buys once with a bracket far from the market (it never fires).
const ENTRY_BRACKET: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_tick(t) {
    if this.sent != true {
        this.sent = true;
        exchange::market_order("BTCUSD", "buy", 0.002, #{ stop_loss: t.last * 0.5, take_profit: t.last * 2.0 });
    }
}
"#;

/// Runs `source` until the exchange holds a bracket that it has not
/// answered for yet (it answers after 5 s), kills the host (-9), restarts
/// it: the host finds the bracket (the entry by its client id, the legs the
/// exchange created by adoption), shows the legs waiting, never sends a
/// second order or bracket, and agrees with the exchange after a clean stop.
async fn kill_9_before_a_bracket_is_answered(source: &str, slow_from_start: bool) {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let strategies = root.path().join("strategies");
    std::fs::remove_file(strategies.join("market_maker.rhai")).unwrap();
    std::fs::write(strategies.join("bracketed.rhai"), source).unwrap();
    let slow =
        |on: bool| fake.faults().slow_orders_ms.store(if on { 5_000 } else { 0 }, std::sync::atomic::Ordering::SeqCst);
    slow(slow_from_start);
    let (mut child, _lines) = spawn(&config);
    wait("the entry filled", Duration::from_secs(20), || fake.position("BTCUSD").0 == 2).await;
    slow(true);
    let legs_on_exchange = || fake.orders().iter().filter(|o| o.bracket_order && o.state == "pending").count();
    wait("the bracket on the exchange", Duration::from_secs(20), || legs_on_exchange() == 2).await;
    child.kill().unwrap(); // SIGKILL, before the exchange's answer
    child.wait().unwrap();
    slow(false);
    let data = root.path().join("data");
    let (child, lines) = spawn(&config);
    let mut child = child;
    wait_for_orders(&lines, &data, "both legs waiting", |orders| {
        let legs = orders.iter().filter(|o| o["request"]["oco"].is_string() && o["status"] == "untriggered");
        let mut kinds: Vec<&str> = legs.filter_map(|o| o["request"]["stop"]["kind"].as_str()).collect();
        kinds.sort_unstable();
        kinds == ["stop_loss", "take_profit"]
    })
    .await;
    assert_eq!(fake.calls("POST /v2/orders"), 1, "the entry was sent once");
    assert_eq!(fake.calls("POST /v2/orders/bracket"), u64::from(!slow_from_start), "the bracket was sent at most once");
    assert_eq!(legs_on_exchange(), 2, "one bracket on the exchange");
    fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(child.wait().unwrap().success());
    // The default shutdown policy cancelled the bracket on the exchange; the store and the exchange agree.
    assert_eq!(legs_on_exchange(), 0, "the shutdown policy cancelled the bracket");
    assert_consistent(&fake, &data);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_an_entry_with_a_bracket_is_answered_finds_both_once() {
    kill_9_before_a_bracket_is_answered(ENTRY_BRACKET, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_before_a_position_bracket_is_answered_adopts_its_legs_once() {
    let protect = r#"exchange::bracket("BTCUSD", #{ stop_loss: entry * 0.5, take_profit: entry * 2.0 });"#;
    kill_9_before_a_bracket_is_answered(&guard(protect), false).await;
}
