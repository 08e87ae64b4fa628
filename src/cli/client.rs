//! `tradehost status`, `stop`, `kill`, `pause` and `resume`: clients of a
//! running host's API (`doctor --live` is in `live_doctor`).

use std::time::{Duration, Instant};

use serde_json::Value;
use tradehost::config::Config;

use crate::Target;

/// What to ask.
pub enum Action {
    /// Health, strategies and positions.
    Status {
        /// JSON instead of tables.
        json: bool,
    },
    /// Graceful shutdown, then wait for the exit.
    Stop {
        /// Longest wait for the exit.
        wait_s: u64,
    },
    /// The kill switch.
    Kill {
        /// Also close every position.
        flatten: bool,
    },
    /// Set a trading state: the account's, or one strategy's.
    Trading {
        /// `halted`, `reduce_only` or `active`.
        state: &'static str,
        /// A strategy, or none for the account.
        strategy: Option<String>,
    },
}

/// A running host's API, with its token.
pub struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
}

impl Api {
    /// `http://ADDR`.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The bearer token.
    pub fn token(&self) -> &str {
        &self.token
    }

    async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, String> {
        let mut request = self.http.post(format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.map_err(|e| format!("no tradehost answers at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| format!("{path}: unreadable answer: {e}"))?;
        match status {
            200 => Ok(body),
            401 => Err("the API refused the token".into()),
            _ => Err(format!("{path}: {}", body["error"]["message"].as_str().unwrap_or("failed"))),
        }
    }

    /// A GET that must succeed, decoded.
    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, String> {
        match self.get(path).await? {
            (200, body) => serde_json::from_value(body).map_err(|e| format!("{path}: unexpected answer: {e}")),
            (401, _) => Err("the API refused the token".into()),
            (_, body) => Err(format!("{path}: {}", body["error"]["message"].as_str().unwrap_or("failed"))),
        }
    }

    /// A GET with its status code (health answers 503 while not ready).
    pub async fn get(&self, path: &str) -> Result<(u16, Value), String> {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| format!("no tradehost answers at {}: {e}", self.base))?;
        let status = response.status().as_u16();
        let body = response.json().await.map_err(|e| format!("{path}: unreadable answer: {e}"))?;
        Ok((status, body))
    }
}

/// The API of the host a command targets: address and token from the flags,
/// the config or the data folder.
pub fn resolve(target: Target) -> Result<Api, (u8, String)> {
    let config = Config::load(target.config.as_deref()).map_err(|e| (2, format!("bad config: {e}")))?;
    let addr = target.http.unwrap_or(config.http.bind);
    let data_dir = target.data_dir.unwrap_or(config.data_dir);
    let token = match target.token.or_else(|| config.http.token.map(|t| t.expose().to_string())) {
        Some(token) => token,
        None => {
            let path = data_dir.join("api-token");
            std::fs::read_to_string(&path)
                .map(|t| t.trim().to_string())
                .map_err(|e| (2, format!("no API token: pass --token, set TRADEHOST_API_TOKEN, or point --data-dir at the host's data folder ({}: {e})", path.display())))?
        }
    };
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| (1, e.to_string()))?;
    Ok(Api { base: format!("http://{addr}"), token, http })
}

/// `tradehost health`: prints the host's readiness; 0 when ready, 1 when
/// not (or unreachable), 2 on a bad config.
pub fn health(http: Option<std::net::SocketAddr>, config: Option<&std::path::Path>) -> u8 {
    let addr = match http {
        Some(addr) => addr,
        None => match Config::load(config) {
            Ok(config) => config.http.bind,
            Err(error) => {
                eprintln!("error: bad config: {error}");
                return 2;
            }
        },
    };
    let ask = async {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().map_err(|e| e.to_string())?;
        let response = client
            .get(format!("http://{addr}/api/v1/health"))
            .send()
            .await
            .map_err(|e| format!("no tradehost answers at {addr}: {e}"))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.map_err(|e| format!("unreadable answer: {e}"))?;
        Ok::<_, String>((status, body))
    };
    let asked = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(ask),
        Err(error) => Err(error.to_string()),
    };
    match asked {
        Ok((code, body)) => {
            let not_up: Vec<String> = body["components"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, state)| *state != "up")
                .map(|(name, state)| format!("{name} {}", text(state)))
                .collect();
            let detail = if not_up.is_empty() { String::new() } else { format!(" ({})", not_up.join(", ")) };
            outln!("{}{detail}", text(&body["status"]));
            u8::from(code != 200)
        }
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// Resolves the target's API and runs `work` with it on a current-thread
/// runtime; a problem before `work` runs is printed and given back as the
/// exit code (2: bad config or no token, 1: otherwise).
pub fn with_api<F: std::future::Future>(target: Target, work: impl FnOnce(Api) -> F) -> Result<F::Output, u8> {
    let api = resolve(target).map_err(|(code, message)| {
        eprintln!("error: {message}");
        code
    })?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|error| {
        eprintln!("error: {error}");
        1
    })?;
    Ok(runtime.block_on(work(api)))
}

/// Runs a client command; returns the exit code.
pub fn run(target: Target, action: Action) -> u8 {
    let result = with_api(target, |api| async move {
        match action {
            Action::Status { json } => status(&api, json).await,
            Action::Stop { wait_s } => stop(&api, Duration::from_secs(wait_s)).await,
            Action::Kill { flatten } => kill(&api, flatten).await,
            Action::Trading { state, strategy } => trading(&api, state, strategy).await,
        }
    });
    let result = match result {
        Ok(result) => result,
        Err(code) => return code,
    };
    match result {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("error: {message}");
            1
        }
    }
}

/// A JSON value as plain text (`-` for null).
pub fn text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect::<Vec<_>>().join("  ").trim_end().to_string()
    };
    let mut out = vec![line(headers.iter().map(|h| h.to_string()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

async fn status(api: &Api, json: bool) -> Result<(), String> {
    let (_, health) = api.get("/api/v1/health").await?;
    let (code, status) = api.get("/api/v1/status").await?;
    if code == 401 {
        return Err("the API refused the token".into());
    }
    let (_, strategies) = api.get("/api/v1/strategies").await?;
    let (_, positions) = api.get("/api/v1/positions").await?;
    if json {
        let all =
            serde_json::json!({ "health": health, "status": status, "strategies": strategies, "positions": positions });
        outln!("{}", serde_json::to_string_pretty(&all).expect("json"));
        return Ok(());
    }
    outln!(
        "tradehost {} ({}, clock {}) at {}: {}, up {} s, {} strategies ({} running), {} open orders",
        text(&status["version"]),
        text(&status["mode"]),
        text(&status["clock"]),
        api.base,
        text(&health["status"]),
        status["uptime_s"],
        status["strategies"],
        status["running"],
        status["open_orders"]
    );
    let rows = strategies
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let error = s["last_error"].as_object().map_or("-".to_string(), |e| {
                let location = e
                    .get("location")
                    .and_then(|l| l.as_object())
                    .map_or(String::new(), |l| format!("{}:{}:{}: ", text(&l["file"]), l["line"], l["column"]));
                format!("{location}{}", text(&e["message"]))
            });
            vec![
                text(&s["name"]),
                text(&s["state"]),
                text(&s["version"]),
                text(&s["reloads"]),
                text(&s["restarts"]),
                text(&s["reason"]),
                error,
            ]
        })
        .collect();
    outln!("\n{}", table(&["STRATEGY", "STATE", "VERSION", "RELOADS", "RESTARTS", "REASON", "LAST ERROR"], rows));
    let rows: Vec<Vec<String>> = positions
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            ["strategy", "symbol", "size", "entry_price", "unrealized_pnl", "realized_pnl"]
                .iter()
                .map(|k| text(&p[*k]))
                .collect()
        })
        .collect();
    if !rows.is_empty() {
        outln!("\n{}", table(&["STRATEGY", "SYMBOL", "SIZE", "ENTRY", "UNREALIZED", "REALIZED"], rows));
    }
    Ok(())
}

async fn stop(api: &Api, wait: Duration) -> Result<(), String> {
    let response = api
        .http
        .post(format!("{}/api/v1/shutdown", api.base))
        .bearer_auth(&api.token)
        .send()
        .await
        .map_err(|e| format!("no tradehost answers at {}: {e}", api.base))?;
    match response.status().as_u16() {
        202 => {}
        401 => return Err("the API refused the token".into()),
        503 => outln!("the host is already shutting down"),
        other => return Err(format!("shutdown request answered {other}")),
    }
    outln!("shutdown requested; waiting for the host to exit");
    let started = Instant::now();
    while started.elapsed() < wait {
        // The host closes its API as the last step of its shutdown, just before it exits.
        if api.http.get(format!("{}/api/v1/health", api.base)).send().await.is_err() {
            outln!("the host shut down and exited after {:.1} s", started.elapsed().as_secs_f64());
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the host was still running after {} s", wait.as_secs()))
}

async fn kill(api: &Api, flatten: bool) -> Result<(), String> {
    let report = api.post(&format!("/api/v1/kill?flatten={flatten}"), None).await?;
    outln!(
        "account halted; cancels sent for {} open order(s); {} closing order(s) sent",
        text(&report["cancelled"]),
        text(&report["flatten_orders"])
    );
    outln!("`tradehost resume` lets new orders out again");
    Ok(())
}

async fn trading(api: &Api, state: &str, strategy: Option<String>) -> Result<(), String> {
    let body = serde_json::json!({ "state": state, "strategy": strategy });
    let trading = api.post("/api/v1/risk/state", Some(body)).await?;
    outln!("account: {}", text(&trading["account"]));
    if let Some(strategies) = trading["strategies"].as_object() {
        for (name, state) in strategies {
            outln!("strategy {name}: {}", text(state));
        }
    }
    Ok(())
}
