//! Prints WebSocket fan-out figures for docs/performance.md (no assertions):
//! 500 connected clients; p99 delivery latency (publish → client) at 5,000
//! events/s with every client receiving every event; the highest rate
//! sustained to all clients; memory per idle client; and what a stalled
//! client costs. Events go through the real host: stored, then broadcast.
//!
//! Run with `cargo bench --bench ws_fanout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tradehost::activity::ActivityKind;
use tradehost::config::Config;

const CLIENTS: usize = 500;

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

fn number_after(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let digits: &str = &text[start..];
    let end = digits.find(|c: char| !c.is_ascii_digit()).unwrap_or(digits.len());
    digits[..end].parse().ok()
}

struct Shared {
    base: Instant,
    received: AtomicU64,
    latencies: std::sync::Mutex<Vec<u64>>,
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.strategies.dir = dir.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.http.ws_send_timeout_ms = 1_000;
    let host = tradehost::supervisor::start(config).await.unwrap();
    while !host.health().is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let url = format!("ws://{}/api/v1/ws?types=system&token={}", host.http_addr(), host.api_token().expose());
    let shared = Arc::new(Shared { base: Instant::now(), received: AtomicU64::new(0), latencies: Default::default() });

    let before = rss_kib();
    let mut readers = Vec::new();
    for _ in 0..CLIENTS {
        let (mut client, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
        let shared = shared.clone();
        readers.push(tokio::spawn(async move {
            while let Some(Ok(message)) = client.next().await {
                if let Message::Text(text) = message {
                    // Clients do as little as possible: they share the CPU with the host here.
                    let now = shared.base.elapsed().as_nanos() as u64;
                    if let Some(sent) = number_after(&text, "\"sent_ns\":") {
                        if text.contains("\"measure\":true") {
                            shared.latencies.lock().unwrap().push(now.saturating_sub(sent));
                        }
                        shared.received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = rss_kib();
    println!(
        "{CLIENTS} idle clients: {:.1} KiB per client (server and client side together, in one process)",
        (after.saturating_sub(before)) as f64 / CLIENTS as f64
    );

    // Publishes at `rate` for `seconds`, then reports delivery and latency.
    let phase = |rate: u64, seconds: u64, label: &'static str| {
        let shared = shared.clone();
        let bus = host.activity().clone();
        async move {
            shared.received.store(0, Ordering::Relaxed);
            shared.latencies.lock().unwrap().clear();
            let total = rate * seconds;
            let start = Instant::now();
            for i in 0..total {
                let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    tokio::time::sleep(wait).await;
                }
                bus.publish(
                    ActivityKind::System,
                    None,
                    json!({ "sent_ns": shared.base.elapsed().as_nanos() as u64, "measure": true }),
                );
            }
            let expected = total * CLIENTS as u64;
            let deadline = Instant::now() + Duration::from_secs(30);
            while shared.received.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let got = shared.received.load(Ordering::Relaxed);
            let mut latencies = std::mem::take(&mut *shared.latencies.lock().unwrap());
            latencies.sort_unstable();
            let at = |q: f64| {
                Duration::from_nanos(
                    latencies.get(((latencies.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0),
                )
            };
            println!(
                "{rate:>6} events/s to {CLIENTS} clients for {seconds} s{label}: delivered {got}/{expected} ({:.1}%); latency median {:.2?}  p99 {:.2?}  max {:.2?}",
                got as f64 * 100.0 / expected as f64,
                at(0.5),
                at(0.99),
                at(1.0)
            );
        }
    };
    phase(1_000, 3, "").await;
    phase(5_000, 3, "").await;

    // A stalled client during a busy stretch: it is dropped, memory stays bounded.
    let (_stalled, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let rss_before = rss_kib();
    phase(5_000, 4, " + 1 stalled client").await;
    let status: serde_json::Value = reqwest::Client::new()
        .get(format!("http://{}/api/v1/status", host.http_addr()))
        .bearer_auth(host.api_token().expose())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    println!(
        "stalled client: RSS {rss_before} KiB before, {} KiB after 20,000 events; clients still connected: {} of {} (a stalled client is dropped once its socket buffers are full and a send outlasts ws_send_timeout_ms)",
        rss_kib(),
        status["ws_clients"],
        CLIENTS + 1
    );
    phase(10_000, 2, "").await;
    phase(20_000, 2, "").await;
    host.shutdown(tradehost::supervisor::ShutdownReason::Api);
    host.wait().await;
    for reader in readers {
        reader.abort();
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    tokio::runtime::Runtime::new().unwrap().block_on(run());
}
