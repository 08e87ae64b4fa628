//! A real host process for tests and benchmarks: spawned on a config file
//! with its API address read from its log, and the hostile-input harness
//! (an abusive script beside a normal strategy, on a market sped up 60×).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A host process on `config`, with its API address (read from its log; the
/// rest of the log is drained so the host never blocks on it).
pub fn spawn_host(config: &Path) -> (Child, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .args(["run", "--config"])
        .arg(config)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let address = lines
        .by_ref()
        .map_while(Result::ok)
        .find_map(|line| Some(line.split("dashboard at http://").nth(1)?.split('/').next()?.to_string()))
        .expect("the host prints its API address");
    std::thread::spawn(move || lines.for_each(drop));
    (child, address)
}

/// Fifty log lines of 1 MB a candle.
pub const MEGABYTE_LOGS: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let s = "x";
    while s.len() < 1000000 { s += s; }
    for i in 0..50 { log::info(s); }
}
"#;

/// 5,000 notifications and 5,000 health report keys a candle.
pub const SPAM: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    for i in 0..5000 { notify("n" + i); health::report("k" + i, i); }
}
"#;

/// An order feedback loop: every order update places 20 more.
pub const FEEDBACK: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_start() { exchange::limit_order("BTCUSD", "buy", 0.001, 1000.0, #{ post_only: true }); }
fn on_order(o) {
    for i in 0..20 { exchange::limit_order("BTCUSD", "buy", 0.001, 1000.0, #{ post_only: true }); }
}
"#;

/// A normal strategy trading beside the abusive one: 30 orders a second on
/// the test market (60× speed), within the default quota of 50.
pub const STEADY: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "2s" } }
fn on_candle(c) {
    if exchange::position(c.symbol).size == 0.0 { exchange::market_order(c.symbol, "buy", 0.01); }
    else { exchange::market_order(c.symbol, "sell", 0.01); }
}
"#;

/// A real host process running `abusive.rhai` beside `steady.rhai`, on a
/// market sped up 60 times.
pub struct Abused {
    /// The host process.
    pub child: Child,
    /// Its API address.
    pub address: String,
    /// Its API token.
    pub token: String,
    /// Its data folder.
    pub data: PathBuf,
    _root: tempfile::TempDir,
}

impl Abused {
    /// Starts the host with `abusive.rhai` and `steady.rhai`, `extra_toml` appended to its config.
    pub fn start(abusive: &str, extra_toml: &str) -> Abused {
        Abused::start_with(abusive, extra_toml, &[])
    }

    /// [`Abused::start`] with more strategies beside (name, source).
    pub fn start_with(abusive: &str, extra_toml: &str, others: &[(&str, &str)]) -> Abused {
        let root = tempfile::tempdir().unwrap();
        let strategies = root.path().join("strategies");
        let data = root.path().join("data");
        std::fs::create_dir(&strategies).unwrap();
        std::fs::write(strategies.join("abusive.rhai"), abusive).unwrap();
        for (name, source) in [("steady", STEADY)].iter().chain(others) {
            std::fs::write(strategies.join(format!("{name}.rhai")), source).unwrap();
        }
        let config = root.path().join("config.toml");
        let text = format!(
            "data_dir = {data:?}\n[strategies]\ndir = {strategies:?}\n[feed.synthetic]\nhistory_bars = 5\n[http]\nbind = \"127.0.0.1:0\"\n{extra_toml}"
        );
        std::fs::write(&config, text).unwrap();
        let (child, address) = spawn_host(&config);
        let token = std::fs::read_to_string(data.join("api-token")).unwrap().trim().to_string();
        Abused { child, address, token, data, _root: root }
    }

    /// GETs an API path and decodes the JSON answer.
    pub async fn get(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.address);
        let response = reqwest::Client::new().get(url).bearer_auth(&self.token).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// Resident memory of the host process, in MB.
    pub fn rss_mb(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb / 1024.0
    }

    /// Bytes in the data folder.
    pub fn data_bytes(&self) -> u64 {
        dir_bytes(&self.data)
    }

    /// Fills of a strategy (the newest 10,000).
    pub async fn fills_of(&self, strategy: &str) -> usize {
        let fills = self.get("/api/v1/fills?limit=10000").await;
        fills.as_array().unwrap().iter().filter(|f| f["strategy"] == strategy).count()
    }

    /// A strategy's quota hits as the API shows them.
    pub async fn quota_hits(&self, strategy: &str) -> serde_json::Value {
        let list = self.get("/api/v1/strategies").await;
        list.as_array().unwrap().iter().find(|s| s["name"] == strategy).unwrap()["quota_hits"].clone()
    }

    /// Runs the abuse for `seconds`, checking every second that the host
    /// stays within `max_rss_mb` and the steady strategy keeps filling;
    /// returns the largest RSS seen.
    pub async fn endure(&self, seconds: u64, max_rss_mb: f64) -> f64 {
        let mut peak: f64 = 0.0;
        let mut fills = self.fills_of("steady").await;
        for second in 0..seconds {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = self.rss_mb();
            peak = peak.max(rss);
            assert!(rss < max_rss_mb, "RSS {rss:.0} MB after {second} s is over {max_rss_mb} MB");
            if second % 3 == 2 {
                let now = self.fills_of("steady").await;
                assert!(now > fills, "the steady strategy filled nothing in 3 s ({fills} fills)");
                fills = now;
            }
        }
        peak
    }

    /// SIGTERM; the exit code and how long the shutdown took.
    pub fn stop(&mut self) -> (i32, Duration) {
        let started = Instant::now();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = self.child.wait().unwrap();
        (status.code().unwrap_or(-1), started.elapsed())
    }
}

/// A test that fails mid-way must not leave its host running.
impl Drop for Abused {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Bytes in a folder and everything under it.
pub fn dir_bytes(path: &Path) -> u64 {
    std::fs::read_dir(path)
        .map(|entries| {
            entries
                .flatten()
                .map(|e| match e.metadata() {
                    Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                    Ok(m) => m.len(),
                    Err(_) => 0,
                })
                .sum()
        })
        .unwrap_or(0)
}
