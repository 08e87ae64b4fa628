//! Shared helpers for host tests: a host on a temporary strategies folder and
//! waits on activity events (conditions, never fixed sleeps).

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use tradehost::activity::{ActivityEvent, ActivityKind};
use tradehost::config::Config;
use tradehost::control::{ShutdownReason, StrategyStatus};
use tradehost::host::{self, HostHandle};

/// A host running on temporary folders.
pub struct TestHost {
    pub host: HostHandle,
    pub dir: tempfile::TempDir,
    pub data: tempfile::TempDir,
}

/// A config for fast tests: 60 one-second candles per second, short debounce.
pub fn fast_config(dir: &Path, data: &Path) -> Config {
    let mut config = Config::embedded();
    config.strategies.dir = dir.to_path_buf();
    config.data_dir = data.to_path_buf();
    config.http.bind = "127.0.0.1:0".parse().unwrap();
    config.feed.synthetic.history_bars = 5;
    config.supervisor.debounce_ms = 50;
    config.sandbox.callback_budget_ms = 300;
    config.sandbox.max_operations = 200_000;
    config.shutdown.on_stop_timeout_ms = 2_000;
    config
}

impl TestHost {
    /// Starts a host with the given strategy files.
    pub async fn start(files: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> TestHost {
        let dir = tempfile::tempdir().unwrap();
        for (name, source) in files {
            std::fs::write(dir.path().join(format!("{name}.rhai")), source).unwrap();
        }
        Self::start_in(dir, tempfile::tempdir().unwrap(), tweak).await
    }

    /// Starts a host on existing folders (a restart).
    pub async fn start_in(
        dir: tempfile::TempDir,
        data: tempfile::TempDir,
        tweak: impl FnOnce(&mut Config),
    ) -> TestHost {
        let mut config = fast_config(dir.path(), data.path());
        tweak(&mut config);
        let host = host::start(config).await.unwrap();
        TestHost { host, dir, data }
    }

    /// Shuts down and gives back the folders for a restart.
    pub async fn stop_keep(self) -> (tempfile::TempDir, tempfile::TempDir) {
        self.host.shutdown(ShutdownReason::Api);
        let code =
            tokio::time::timeout(Duration::from_secs(20), self.host.wait()).await.expect("shutdown finished in time");
        assert_eq!(code, 0);
        (self.dir, self.data)
    }

    /// Path of a strategy file.
    pub fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.rhai"))
    }

    /// Waits for an activity event matching `predicate` published after `since`.
    pub async fn wait_for(&self, since: u64, what: &str, predicate: impl Fn(&ActivityEvent) -> bool) -> ActivityEvent {
        let mut rx = self.host.activity().subscribe();
        if let Some(found) = self.host.activity().since(since, usize::MAX).into_iter().find(|e| predicate(e)) {
            return found;
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Ok(batch)) => {
                    if let Some(found) = batch.events().iter().find(|event| event.seq > since && predicate(event)) {
                        return found.clone();
                    }
                }
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {
                    if let Some(found) =
                        self.host.activity().since(since, usize::MAX).into_iter().find(|e| predicate(e))
                    {
                        return found;
                    }
                }
                Ok(Err(e)) => panic!("activity closed while waiting for {what}: {e}"),
                Err(_) => {
                    let recent = self.host.activity().since(since, usize::MAX);
                    let last: Vec<String> = recent
                        .iter()
                        .rev()
                        .take(12)
                        .rev()
                        .map(|e| format!("{} {:?} {}", e.seq, e.strategy, e.data))
                        .collect();
                    panic!("timed out waiting for {what}; the last events:\n{}", last.join("\n"))
                }
            }
        }
    }

    /// Waits for a strategy lifecycle event (`started`, `reloaded`, ...).
    pub async fn wait_strategy(&self, since: u64, name: &str, event: &str) -> ActivityEvent {
        self.wait_for(since, &format!("{name} {event}"), |e| is_strategy_event(e, name, event)).await
    }

    /// Waits for a log line of a strategy that contains `text`.
    pub async fn wait_log(&self, since: u64, name: &str, text: &str) -> ActivityEvent {
        self.wait_for(since, &format!("{name} log {text:?}"), |e| is_log(e, name, text)).await
    }

    /// Waits until a strategy's published status satisfies `predicate`.
    pub async fn wait_status(&self, name: &str, predicate: impl Fn(&StrategyStatus) -> bool) -> StrategyStatus {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let status = self.host.strategies().into_iter().find(|s| s.name == name);
            match status {
                Some(status) if predicate(&status) => return status,
                other if tokio::time::Instant::now() > deadline => panic!("status of {name} never matched: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// GETs an API path with the host's token and decodes the JSON answer.
    pub async fn api_get(&self, path: &str) -> serde_json::Value {
        let url = format!("http://{}{path}", self.host.http_addr());
        let response =
            reqwest::Client::new().get(url).bearer_auth(self.host.api_token().expose()).send().await.unwrap();
        response.json().await.unwrap()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.host.http_addr());
        let response =
            reqwest::Client::new().get(url).bearer_auth(self.host.api_token().expose()).send().await.unwrap();
        response.text().await.unwrap()
    }

    /// The last sequence number so far.
    pub fn seq(&self) -> u64 {
        self.host.activity().last_seq()
    }

    /// Shuts down and returns the exit code.
    pub async fn stop(self) -> i32 {
        self.host.shutdown(ShutdownReason::Api);
        tokio::time::timeout(Duration::from_secs(20), self.host.wait()).await.expect("shutdown finished in time")
    }
}

pub fn is_strategy_event(e: &ActivityEvent, name: &str, event: &str) -> bool {
    e.kind == ActivityKind::Strategy && e.strategy.as_deref() == Some(name) && e.data["event"] == event
}

pub fn is_log(e: &ActivityEvent, name: &str, text: &str) -> bool {
    e.kind == ActivityKind::Log
        && e.strategy.as_deref() == Some(name)
        && e.data["message"].as_str().is_some_and(|m| m.contains(text))
}

/// The candles of the TA-Lib reference fixture, as symbol `X`.
pub fn fixture_candles(fx: &serde_json::Value) -> Vec<tradehost::model::Candle> {
    fx["candles"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| tradehost::model::Candle {
            symbol: "X".into(),
            time: c["time"].as_i64().unwrap(),
            open: c["open"].as_f64().unwrap(),
            high: c["high"].as_f64().unwrap(),
            low: c["low"].as_f64().unwrap(),
            close: c["close"].as_f64().unwrap(),
            volume: c["volume"].as_f64().unwrap(),
        })
        .collect()
}

/// Writes a file the way editors that replace files do: temp file, then rename.
pub fn save_by_rename(path: &Path, source: &str) {
    let temp = path.with_extension("rhai.tmp~");
    std::fs::write(&temp, source).unwrap();
    std::fs::rename(&temp, path).unwrap();
}
