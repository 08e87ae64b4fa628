//! Prints WebSocket fan-out figures for docs/performance.md (no assertions):
//! 500 connected clients; delivery latency (publish → client) at 1,000,
//! 5,000, 10,000 and 20,000 events/s with every client receiving every event; memory
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

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tradehost::activity::ActivityKind;
use tradehost::config::Config;

/// Connected clients (`WS_FANOUT_CLIENTS` overrides, to find the floor).
fn clients_count() -> usize {
    std::env::var("WS_FANOUT_CLIENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(500)
}

fn wall_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64
}

/// CPU time this process has used (user + system), from /proc/self/stat
/// (in USER_HZ ticks, 100 per second on Linux).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
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

/// One benchmark client: a raw WebSocket reader. It does the RFC 6455
/// handshake itself and then only splits frames, answers pings and reads
/// each text frame's send time, so the 500 clients, which share the host's
/// cores, take as little CPU from the host as a client can.
struct RawClient {
    stream: tokio::net::TcpStream,
    buffer: Vec<u8>,
    filled: usize,
}

/// A server frame's opcode and payload range within the read buffer.
struct Frame {
    opcode: u8,
    payload: std::ops::Range<usize>,
}

impl RawClient {
    async fn connect(url: &str) -> RawClient {
        let rest = url.strip_prefix("ws://").unwrap();
        let (authority, path) = rest.split_at(rest.find('/').unwrap());
        let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let mut client = RawClient { stream, buffer: vec![0; 64 * 1024], filled: 0 };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        client.stream.write_all(request.as_bytes()).await.unwrap();
        let head_end = loop {
            client.fill().await.unwrap();
            if let Some(at) = client.buffer[..client.filled].windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
        };
        let head = std::str::from_utf8(&client.buffer[..head_end]).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "handshake refused: {head}");
        client.consume(head_end);
        client
    }

    /// Reads more bytes; `None` at the end of the stream.
    async fn fill(&mut self) -> Option<()> {
        if self.filled == self.buffer.len() {
            self.buffer.resize(self.buffer.len() * 2, 0);
        }
        match self.stream.read(&mut self.buffer[self.filled..]).await {
            Ok(0) | Err(_) => None,
            Ok(n) => {
                self.filled += n;
                Some(())
            }
        }
    }

    fn consume(&mut self, bytes: usize) {
        self.buffer.copy_within(bytes..self.filled, 0);
        self.filled -= bytes;
    }

    /// The next complete (unmasked, unfragmented) server frame at `at`.
    fn frame_at(&self, at: usize) -> Option<Frame> {
        let bytes = &self.buffer[at..self.filled];
        let (&[first, second], rest) = bytes.split_first_chunk::<2>()?;
        assert!(first & 0x80 != 0 && second & 0x80 == 0, "fragmented or masked server frame");
        let (length, header) = match second & 0x7f {
            126 => (u16::from_be_bytes(*rest.first_chunk::<2>()?) as usize, 4),
            127 => (u64::from_be_bytes(*rest.first_chunk::<8>()?) as usize, 10),
            short => (short as usize, 2),
        };
        (bytes.len() >= header + length)
            .then(|| Frame { opcode: first & 0x0f, payload: at + header..at + header + length })
    }
}

/// Child process: connects the clients, then for each phase reports how many
/// events arrived and their latency once every client saw the phase's end marker.
async fn clients(url: String) {
    let latencies: Arc<std::sync::Mutex<Vec<u64>>> = Default::default();
    let received = Arc::new(AtomicU64::new(0));
    let markers = Arc::new(AtomicU64::new(0));
    for _ in 0..clients_count() {
        let mut client = RawClient::connect(&url).await;
        let (latencies, received, markers) = (latencies.clone(), received.clone(), markers.clone());
        tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let mut at = 0;
                let now = wall_ns();
                let mut pongs = Vec::new();
                while let Some(frame) = client.frame_at(at) {
                    at = frame.payload.end;
                    let payload = &client.buffer[frame.payload];
                    match frame.opcode {
                        0x1 if payload.ends_with(b"{\"marker\":true}}") => {
                            received.fetch_add(mine.len() as u64, Ordering::SeqCst);
                            latencies.lock().unwrap().append(&mut mine);
                            markers.fetch_add(1, Ordering::SeqCst);
                        }
                        0x1 => {
                            let sent = sent_ns(std::str::from_utf8(payload).unwrap()).unwrap();
                            mine.push(now.saturating_sub(sent));
                        }
                        // A pong, masked with a zero key, echoing the ping.
                        0x9 => pongs.extend([&[0x8a, 0x80 | payload.len() as u8, 0, 0, 0, 0][..], payload].concat()),
                        0x8 => return,
                        _ => {}
                    }
                }
                client.consume(at);
                if !pongs.is_empty() && client.stream.write_all(&pongs).await.is_err() {
                    return;
                }
                if client.fill().await.is_none() {
                    return;
                }
            }
        });
    }
    println!("ready");
    // The phases are driven from stdin on a blocking thread: the clients'
    // runtime only runs clients.
    tokio::task::spawn_blocking(move || {
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
                "{phase} {} {} {} {} {} {}",
                received.swap(0, Ordering::SeqCst),
                markers.swap(0, Ordering::SeqCst),
                at(0.5),
                at(0.99),
                at(1.0),
                (cpu_seconds() * 1e3) as u64
            );
            std::io::stdout().flush().unwrap();
        }
    })
    .await
    .unwrap();
}

async fn host() {
    let dir = tempfile::tempdir().unwrap();
    let data = tempfile::tempdir().unwrap();
    let mut config = Config::embedded();
    config.strategies.dir = dir.path().to_path_buf();
    config.data_dir = data.path().to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.http.ws_send_timeout_ms = 1_000;
    let host = tradehost::host::start(config).await.unwrap();
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
    let mut clients_cpu_ms = 0;
    let mut phase = |rate: u64, seconds: u64, label: &str| {
        let total = rate * seconds;
        let host_cpu = cpu_seconds();
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
        let (host_cpu, elapsed) = (cpu_seconds() - host_cpu, start.elapsed().as_secs_f64());
        let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap()).collect();
        let clients_cpu = (fields[5] - std::mem::replace(&mut clients_cpu_ms, fields[5])) as f64 / 1e3;
        let expected = total * clients_count() as u64;
        println!(
            "{rate:>6} events/s to {} clients for {seconds} s{label}: delivered {}/{expected} ({:.1}%), {} clients to the end; latency median {:.2?}  p99 {:.2?}  max {:.2?}; CPU: host {:.2} cores ({:.0} ns per message), clients {:.2} cores",
            clients_count(),
            fields[0],
            fields[0] as f64 * 100.0 / expected as f64,
            fields[1],
            Duration::from_nanos(fields[2]),
            Duration::from_nanos(fields[3]),
            Duration::from_nanos(fields[4]),
            host_cpu / elapsed,
            host_cpu * 1e9 / fields[0].max(1) as f64,
            clients_cpu / elapsed,
        );
    };
    tokio::task::block_in_place(|| {
        phase(1_000, 1, " (warm-up: the store file grows)");
        phase(1_000, 3, "");
        phase(5_000, 3, "");
        phase(10_000, 2, "");
        phase(20_000, 2, "");
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
    host.shutdown(tradehost::control::ShutdownReason::Api);
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
