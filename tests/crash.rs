//! kill -9 at random moments, 20 times, with a strategy trading fast. After
//! each crash: every fill the host reported is in the store, positions equal
//! the sum of fills, activity numbering has no gaps, the strategy's persisted
//! counter never goes backwards and is restored; across all runs no client
//! order id was ever sent twice. And a host halted just before a kill -9 comes
//! back halted.
#![cfg(unix)]

#[path = "support/abused.rs"]
mod abused;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use abused::spawn_host;
use tradehost::store::{self, Store};

const CRASHER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_start() {
    this.counter = this.counter ?? 0;
    print(`restored counter ${this.counter}`);
}
fn on_tick(t) {
    this.counter += 1;
    let size = exchange::position("BTCUSD").size;
    let side = if size > 0.02 { "sell" } else if size < -0.02 { "buy" } else if this.counter % 2 == 0 { "buy" } else { "sell" };
    exchange::market_order("BTCUSD", side, 0.01);
    if this.counter % 5 == 0 { exchange::limit_order("BTCUSD", "buy", 0.01, t.bid - 0.5); }
    if this.counter % 7 == 0 { exchange::cancel_all("BTCUSD"); }
}
"#;

fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let start = line.find(&format!(" {name}="))? + name.len() + 2;
    line[start..].split_whitespace().next()
}

/// A folder with the crasher strategy; returns it with its strategies and data folders.
fn crash_folder() -> (tempfile::TempDir, std::path::PathBuf, std::path::PathBuf) {
    let root = tempfile::tempdir().unwrap();
    let strategies = root.path().join("strategies");
    let data = root.path().join("data");
    std::fs::create_dir(&strategies).unwrap();
    std::fs::write(strategies.join("crasher.rhai"), CRASHER).unwrap();
    (root, strategies, data)
}

#[test]
fn kill_9_at_random_moments_loses_nothing_and_never_sends_twice() {
    let (root, strategies, data) = crash_folder();
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {data:?}\n[strategies]\ndir = {strategies:?}\n[feed.synthetic]\nhistory_bars = 5\nspeed = 300.0\n[store]\nstate_flush_ms = 50\n[http]\nbind = \"127.0.0.1:0\"\n"
        ),
    )
    .unwrap();

    let mut sent_ever: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_counter = 0u64;
    let mut total_fills = 0usize;
    let mut restores_seen = 0usize;
    let mut seed = 0x2545F4914F6CDD1Du64;
    for round in 0..20 {
        let mut child = Command::new(env!("CARGO_BIN_EXE_tradehost"))
            .args(["run", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info,tradehost::execution::engine=debug")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(150 + seed % 1_200);
        std::thread::sleep(delay);
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        reader.join().unwrap();
        let lines = lines.lock().unwrap().clone();

        let mut reported: BTreeMap<u64, String> = BTreeMap::new();
        for line in &lines {
            if line.contains("engine: fill")
                && let (Some(id), Some(order)) = (field(line, "id"), field(line, "order"))
            {
                reported.insert(id.parse().unwrap(), order.to_string());
            }
            if line.contains("order sent")
                && let Some(order) = field(line, "order")
            {
                *sent_ever.entry(order.to_string()).or_default() += 1;
            }
            if let Some(rest) = line.split("restored counter ").nth(1) {
                let restored: u64 = rest.split_whitespace().next().unwrap().parse().unwrap();
                restores_seen += 1;
                assert!(
                    restored >= last_counter,
                    "round {round}: counter restored as {restored}, but {last_counter} was stored before"
                );
            }
        }

        let store = Store::open(&data).unwrap_or_else(|e| panic!("round {round}: store unusable after kill -9: {e}"));
        let stored: BTreeMap<u64, String> = store.fills().unwrap().into_iter().map(|f| (f.id, f.order_id)).collect();
        for (id, order) in &reported {
            assert_eq!(stored.get(id), Some(order), "round {round}: reported fill {id} of {order} is not in the store");
        }
        let report = store::check(&store).unwrap();
        assert!(report.problems.is_empty(), "round {round}: {:?}", report.problems);
        let recovered = store.recover().unwrap();
        let counter = recovered
            .strategy_states
            .get("crasher")
            .map(|s| tradehost::strategy::SavedState::decode(s.clone()))
            .and_then(|s| s.this["counter"].as_u64())
            .unwrap_or(0);
        assert!(counter >= last_counter, "round {round}: stored counter went back from {last_counter} to {counter}");
        last_counter = counter;
        total_fills = stored.len();
        eprintln!(
            "round {round}: killed after {delay:?}; {} fills reported, {} stored, counter {counter}",
            reported.len(),
            stored.len()
        );
    }
    let twice: Vec<_> = sent_ever.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "client order ids sent more than once: {twice:?}");
    assert!(sent_ever.len() > 100, "the sends were observed ({} ids)", sent_ever.len());
    assert!(restores_seen >= 10, "restarts restored the counter ({restores_seen} seen)");
    assert!(total_fills > 20, "the strategy traded ({total_fills} fills)");
    assert!(last_counter > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_9_while_halted_comes_back_halted() {
    let (root, strategies, data) = crash_folder();
    let config = root.path().join("config.toml");
    let text = format!(
        "data_dir = {data:?}\n[strategies]\ndir = {strategies:?}\n[feed.synthetic]\nhistory_bars = 5\n[http]\nbind = \"127.0.0.1:0\"\n"
    );
    std::fs::write(&config, text).unwrap();
    let (mut child, address) = spawn_host(&config);
    let token = std::fs::read_to_string(data.join("api-token")).unwrap();
    let http = reqwest::Client::new();
    let halted = http
        .post(format!("http://{address}/api/v1/risk/state"))
        .bearer_auth(token.trim())
        .json(&serde_json::json!({ "state": "halted" }))
        .send()
        .await
        .unwrap();
    let code = halted.status().as_u16();
    assert_eq!(code, 200, "halted, and stored before the answer: {}", halted.text().await.unwrap());
    child.kill().unwrap(); // SIGKILL, right after the answer
    child.wait().unwrap();
    let recovered = Store::open(&data).unwrap().recover().unwrap();
    assert_eq!(recovered.trading.map(|t| t.account), Some(tradehost::model::TradingState::Halted));
    let (mut child, address) = spawn_host(&config);
    let risk: serde_json::Value = http
        .get(format!("http://{address}/api/v1/risk"))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(risk["trading"]["account"], "halted", "{risk}");
    child.kill().unwrap();
    child.wait().unwrap();
}
