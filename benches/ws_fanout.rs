//! Prints WebSocket fan-out figures for docs/performance.md (no assertions):
//! 500 connected clients; delivery latency (publish → client) at 1,000,
//! 5,000 and 10,000 events/s with every client receiving every event; memory
//! per idle client on the host; and what a stalled client costs. Events go
//! through the real host (stored, then broadcast). The clients run in a
//! child process (this binary with `--clients`), so the host's figures are
//! its own — though both processes share this machine's cores.
//!
//! Run with `cargo bench --bench ws_fanout`.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tradehost::activity::ActivityKind;
use tradehost::config::Config;

/// Connected clients (`WS_FANOUT_CLIENTS` overrides, to find the floor).
fn clients_count() -> usize {
    std::env::var("WS_FANOUT_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// The send time in an envelope whose data is `{"sent_ns":N}`: the digits
/// after the last `:` (scanned from the end: the clients share the host's
/// cores, so they read as little as they can).
fn sent_ns(text: &str) -> Option<u64> {
    let tail = &text[text.rfind(':')? + 1..];
    tail[..tail.find('}')?].parse().ok()
}

/// Child process: connects the clients, then for each phase reports how many
/// events arrived and their latency once every client saw the phase's end marker.
async fn clients(url: String) {
    let latencies: Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
    let received = Arc::new(AtomicU64::new(0));
    let markers = Arc::new(AtomicU64::new(0));
    for _ in 0..clients_count() {
        // A small read buffer: tungstenite clears the whole buffer (128 KiB
        // by default) on every read, which would cost these clients, sharing
        // the host's cores, more than the host's own work.
        let config = WebSocketConfig::default().read_buffer_size(16 * 1024);
        let (mut client, _) = tokio_tungstenite::connect_async_with_config(&url, Some(config), true).await.unwrap();
        let (latencies, received, markers) = (latencies.clone(), received.clone(), markers.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(Ok(message)) = client.next().await {
                let Message::Text(text) = message else { continue };
                if text.ends_with("{\"marker\":true}}") {
                    latencies.lock().unwrap().append(&mut mine);
                    markers.fetch_add(1, Ordering::SeqCst);
                } else if let Some(sent) = sent_ns(&text) {
                    mine.push(wall_ns().saturating_sub(sent));
                    received.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    println!("ready");
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let Some(phase) = line.strip_prefix("await ") else { continue };
        let deadline = Instant::now() + Duration::from_secs(60);
        while markers.load(Ordering::SeqCst) < clients_count() as u64 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut all = std::mem::take(&mut *latencies.lock().unwrap());
        all.sort_unstable();
        let at = |q: f64| all.get(((all.len().max(1) - 1) as f64 * q) as usize).copied().unwrap_or(0);
        println!(
            "{phase} {} {} {} {} {}",
            received.swap(0, Ordering::SeqCst),
            markers.swap(0, Ordering::SeqCst),
            at(0.5),
            at(0.99),
            at(1.0)
        );
        std::io::stdout().flush().unwrap();
    }
}

async fn host() {
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
    let rss_before = rss_kib();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--clients", &url])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut to_child = child.stdin.take().unwrap();
    let mut from_child = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(from_child.next().unwrap().unwrap(), "ready");
    tokio::time::sleep(Duration::from_millis(500)).await;
    println!(
        "{} idle clients: {:.1} KiB of host memory per client",
        clients_count(),
        rss_kib().saturating_sub(rss_before) as f64 / clients_count() as f64
    );

    let bus = host.activity().clone();
    let mut phase = |rate: u64, seconds: u64, label: &str| {
        let total = rate * seconds;
        let start = Instant::now();
        for i in 0..total {
            let due = start + Duration::from_nanos(i * 1_000_000_000 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            bus.publish(ActivityKind::System, None, json!({ "sent_ns": wall_ns() }));
        }
        bus.publish(ActivityKind::System, None, json!({ "marker": true }));
        writeln!(to_child, "await {rate}").unwrap();
        let line = from_child.next().unwrap().unwrap();
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
        let expected = total * clients_count() as u64;
        println!(
            "{rate:>6} events/s to {} clients for {seconds} s{label}: delivered {}/{expected} ({:.1}%), {} clients to the end; latency median {:.2?}  p99 {:.2?}  max {:.2?}",
            clients_count(),
            fields[0],
            fields[0] as f64 * 100.0 / expected as f64,
            fields[1],
            Duration::from_nanos(fields[2]),
            Duration::from_nanos(fields[3]),
            Duration::from_nanos(fields[4]),
        );
    };
    tokio::task::block_in_place(|| {
        phase(1_000, 1, " (warm-up: the store file grows)");
        phase(1_000, 3, "");
        phase(5_000, 3, "");
        phase(10_000, 2, "");
    });

    // A stalled client (connected, never reading) during a busy stretch.
    let (_stalled, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let rss_stalled = rss_kib();
    let bus = host.activity().clone();
    for i in 0..20_000u64 {
        bus.publish(ActivityKind::System, None, json!({ "sent_ns": wall_ns(), "pad": "x".repeat(512) }));
        if i % 1_000 == 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
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
        "stalled client: host RSS {rss_stalled} KiB before and {} KiB after 20,000 events of 0.5 KiB; clients connected: {} of {} (dropped once its socket buffers fill and a send outlasts ws_send_timeout_ms)",
        rss_kib(),
        status["ws_clients"],
        clients_count() + 1
    );
    drop(to_child);
    let _ = child.kill();
    let _ = child.wait();
    host.shutdown(tradehost::supervisor::ShutdownReason::Api);
    host.wait().await;
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--clients") {
        return tokio::runtime::Runtime::new().unwrap().block_on(clients(args[i + 1].clone()));
    }
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap().block_on(host());
}
