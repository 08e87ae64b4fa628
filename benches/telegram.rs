//! Fill → Telegram notification latency under a burst: a paper host whose
//! strategy sends 1,000 market orders within a few candles, its bot pointed
//! at the fake Bot API on loopback (tests/support/fake_telegram.rs). Each
//! fill's latency is from the moment its activity event became visible to
//! the moment the message that counts it arrived at the fake (messages count
//! fills in order). Printed for the default settings (coalesce 1 s, one
//! message per second per chat) and for faster ones.
//!
//! `cargo bench --bench telegram`

#[path = "../tests/support/fake_telegram.rs"]
mod fake_telegram;

use std::time::Duration;

use fake_telegram::{FakeTelegram, TOKEN};
use tokio::time::Instant;
use tradehost::activity::ActivityKind;
use tradehost::config::{Config, Secret};

const CHAT: i64 = 111;
const FILLS: usize = 1_000;

/// 100 market orders on each of its first ten candles.
const BURST: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n <= 10 {
        for i in 0..100 { exchange::market_order("BTCUSD", if i % 2 == 0 { "buy" } else { "sell" }, 0.001); }
    }
}
"#;

/// The fill count a notification's title gives ("<b>N fills</b>…").
fn fills_in(text: &str) -> usize {
    let Some(title) = text.strip_prefix("<b>").and_then(|t| t.split("</b>").next()) else { return 0 };
    match title {
        "1 fill" => 1,
        other => other.strip_suffix(" fills").and_then(|n| n.parse().ok()).unwrap_or(0),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

async fn run(coalesce_ms: u64, chat_interval_ms: u64) {
    let fake = FakeTelegram::start().await;
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("burst.rhai"), BURST).unwrap();
    let mut config = Config::embedded();
    config.strategies.dir = dir.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.sandbox.orders_per_second = 100_000;
    config.sandbox.events_per_second = 100_000;
    let t = &mut config.telegram;
    t.enabled = true;
    t.token = Some(Secret::new(TOKEN));
    t.allowed_chat_ids = vec![CHAT];
    t.api_url = fake.url();
    t.poll_timeout_s = 5;
    t.coalesce_ms = coalesce_ms;
    t.chat_interval_ms = chat_interval_ms;
    t.notify = vec![tradehost::config::NotifyKind::Fills];

    let started = Instant::now();
    let host = tradehost::host::start(config).await.unwrap();
    // When each fill became visible, in order.
    let mut events = host.activity().subscribe();
    let mut visible = Vec::with_capacity(FILLS);
    while visible.len() < FILLS {
        let batch = tokio::time::timeout(Duration::from_secs(60), events.recv()).await.unwrap().unwrap();
        for event in batch.events() {
            if event.kind == ActivityKind::Fill {
                visible.push(Instant::now());
            }
        }
    }
    let burst = visible[FILLS - 1] - visible[0];
    // Wait for every fill to be notified.
    let deadline = Instant::now() + Duration::from_secs(120);
    let arrived = loop {
        let sends: Vec<_> = fake
            .calls("sendMessage")
            .into_iter()
            .filter(|r| fills_in(r.body["text"].as_str().unwrap_or_default()) > 0)
            .collect();
        let notified: usize = sends.iter().map(|r| fills_in(r.body["text"].as_str().unwrap())).sum();
        if notified >= FILLS {
            break sends;
        }
        assert!(Instant::now() < deadline, "only {notified} of {FILLS} fills notified");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut latencies = Vec::with_capacity(FILLS);
    let mut next = 0;
    for message in &arrived {
        for _ in 0..fills_in(message.body["text"].as_str().unwrap()) {
            if next < FILLS {
                latencies.push(message.at.duration_since(visible[next]));
                next += 1;
            }
        }
    }
    latencies.sort();
    println!(
        "coalesce {coalesce_ms:>4} ms, chat interval {chat_interval_ms:>4} ms: {FILLS} fills within {:>6.1} ms -> {:>2} messages; fill -> notification median {:>7.1} ms, p99 {:>7.1} ms, max {:>7.1} ms (host start to last message {:.1} s)",
        burst.as_secs_f64() * 1e3,
        arrived.len(),
        percentile(&latencies, 0.5).as_secs_f64() * 1e3,
        percentile(&latencies, 0.99).as_secs_f64() * 1e3,
        latencies.last().unwrap().as_secs_f64() * 1e3,
        arrived.last().unwrap().at.duration_since(started).as_secs_f64(),
    );
    host.shutdown(tradehost::control::ShutdownReason::Api);
    assert_eq!(host.wait().await, 0);
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        run(1_000, 1_000).await;
        run(200, 200).await;
        run(0, 50).await;
    });
}
