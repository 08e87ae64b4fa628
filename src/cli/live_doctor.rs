//! `tradehost doctor --live`: four validations against a running host,
//! through its API only, each check OK, WARN or FAIL with the reason:
//!
//! - **integrations**: every component up and fresh; the exchange reachable
//!   with the key accepted and the clock close; every strategy running, or why not;
//! - **synchronization**: the host's open orders and positions equal the
//!   exchange's (`GET /api/v1/reconcile`, asked twice before a difference counts);
//! - **real-time**: a WebSocket client gets a live event within the wait and
//!   the sequence numbers have no gap; the market data is fresh;
//! - **data consistency**: positions equal the sum of fills, every fill's
//!   order exists, the activity log has no gaps, stored candles have no gaps.
//!
//! Exit code by the worst result: 0 all OK, 1 a WARN, 2 a FAIL.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;

use super::client::{Api, text, with_api};
use crate::Target;

/// One check's result, worst last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
enum Verdict {
    Ok,
    Warn,
    Fail,
}

impl Verdict {
    fn mark(self) -> &'static str {
        match self {
            Verdict::Ok => "OK  ",
            Verdict::Warn => "WARN",
            Verdict::Fail => "FAIL",
        }
    }
}

/// One line of the report.
#[derive(Debug, Serialize)]
struct Check {
    validation: &'static str,
    result: Verdict,
    check: String,
    detail: String,
}

/// Every check so far.
#[derive(Debug, Default, Serialize)]
struct Report {
    checks: Vec<Check>,
}

impl Report {
    fn add(&mut self, validation: &'static str, result: Verdict, check: impl Into<String>, detail: impl Into<String>) {
        self.checks.push(Check { validation, result, check: check.into(), detail: detail.into() });
    }

    fn worst(&self) -> Verdict {
        self.checks.iter().map(|c| c.result).max().unwrap_or(Verdict::Ok)
    }
}

const INTEGRATIONS: &str = "integrations";
const SYNCHRONIZATION: &str = "synchronization";
const REAL_TIME: &str = "real-time";
const CONSISTENCY: &str = "data consistency";

/// A clock this far off the exchange's is worth a warning (Delta refuses
/// signatures older than 5 s).
const CLOCK_WARN_MS: i64 = 1_000;
const CLOCK_FAIL_MS: i64 = 4_000;

/// Runs the validations and prints them; returns the exit code.
pub fn run(target: Target, json: bool, event_wait: Duration) -> u8 {
    let started = Instant::now();
    let ran = with_api(target, |api| async move {
        let report = validate(&api, event_wait).await;
        (api, report)
    });
    let (api, report) = match ran {
        Ok(ran) => ran,
        Err(code) => return code,
    };
    let worst = report.worst();
    if json {
        let body = serde_json::json!({
            "host": api.base(),
            "result": worst,
            "seconds": started.elapsed().as_secs_f64(),
            "checks": report.checks,
        });
        outln!("{}", serde_json::to_string_pretty(&body).expect("serializable"));
    } else {
        let mut section = "";
        for check in &report.checks {
            if check.validation != section {
                section = check.validation;
                outln!("{section}");
            }
            outln!("{}  {}: {}", check.result.mark(), check.check, check.detail);
        }
        outln!("{}: worst result {} in {:.1} s", api.base(), worst.mark().trim(), started.elapsed().as_secs_f64());
    }
    match worst {
        Verdict::Ok => 0,
        Verdict::Warn => 1,
        Verdict::Fail => 2,
    }
}

async fn validate(api: &Api, event_wait: Duration) -> Report {
    let mut report = Report::default();
    let health = match api.get("/api/v1/health").await {
        Ok((_, health)) => health,
        Err(error) => {
            report.add(INTEGRATIONS, Verdict::Fail, format!("host at {}", api.base()), error);
            return report;
        }
    };
    let status = match api.get_json::<Value>("/api/v1/status").await {
        Ok(status) => status,
        Err(error) => {
            report.add(INTEGRATIONS, Verdict::Fail, format!("host at {}", api.base()), error);
            return report;
        }
    };
    let reconcile = api.get_json::<Value>("/api/v1/reconcile").await;
    integrations(api, &mut report, &health, &status, &reconcile).await;
    synchronization(api, &mut report, &reconcile).await;
    real_time(api, &mut report, &health, event_wait).await;
    consistency(api, &mut report, &reconcile).await;
    report
}

async fn integrations(
    api: &Api,
    report: &mut Report,
    health: &Value,
    status: &Value,
    reconcile: &Result<Value, String>,
) {
    let ready = health["status"] == "ready";
    report.add(
        INTEGRATIONS,
        if ready { Verdict::Ok } else { Verdict::Warn },
        format!("host at {}", api.base()),
        format!(
            "{} (tradehost {}, {}, clock {}, up {} s)",
            text(&health["status"]),
            text(&status["version"]),
            text(&status["mode"]),
            text(&status["clock"]),
            status["uptime_s"]
        ),
    );
    for (name, state) in health["components"].as_object().into_iter().flatten() {
        let reason = health["reasons"][name].as_str().map(|r| format!(": {r}")).unwrap_or_default();
        let freshness = &health["freshness"][name];
        let age = freshness["age_ms"]
            .as_u64()
            .map(|ms| format!(", last activity {:.1} s ago", ms as f64 / 1e3))
            .unwrap_or_default();
        let verdict = match state.as_str() {
            Some("up") if reason.is_empty() => Verdict::Ok,
            Some("up") | Some("starting") | Some("stopping") => Verdict::Warn,
            _ => Verdict::Fail,
        };
        report.add(INTEGRATIONS, verdict, format!("component {name}"), format!("{}{reason}{age}", text(state)));
    }
    match reconcile {
        Ok(answer) if answer["compared"] == true => {
            let offset = answer["clock_offset_ms"].as_i64().unwrap_or_default();
            let verdict = match offset.abs() {
                ms if ms >= CLOCK_FAIL_MS => Verdict::Fail,
                ms if ms >= CLOCK_WARN_MS => Verdict::Warn,
                _ => Verdict::Ok,
            };
            report.add(
                INTEGRATIONS,
                verdict,
                format!("exchange {}", text(&answer["venue"])),
                format!("REST reachable, API key accepted, clock offset {offset} ms"),
            );
        }
        Ok(answer) if answer["error"].is_string() => report.add(
            INTEGRATIONS,
            Verdict::Fail,
            format!("exchange {}", text(&answer["venue"])),
            format!("cannot ask it: {}", text(&answer["error"])),
        ),
        Ok(answer) => report.add(
            INTEGRATIONS,
            Verdict::Ok,
            format!("exchange {}", text(&answer["venue"])),
            "no remote account to reach (simulated fills)",
        ),
        Err(error) => report.add(INTEGRATIONS, Verdict::Fail, "exchange", format!("/api/v1/reconcile: {error}")),
    }
    match api.get_json::<Value>("/api/v1/strategies").await {
        Ok(strategies) => {
            for strategy in strategies.as_array().into_iter().flatten() {
                let state = text(&strategy["state"]);
                let reason = strategy["reason"].as_str().map_or(String::new(), |r| format!(": {r}"));
                let error = strategy["last_error"]["message"].as_str().map_or(String::new(), |e| format!(" ({e})"));
                let verdict = match state.as_str() {
                    "running" if !strategy["lagging"].as_bool().unwrap_or(false) => Verdict::Ok,
                    "failed" | "quarantined" => Verdict::Fail,
                    _ => Verdict::Warn,
                };
                let lag = if strategy["lagging"] == true {
                    format!(", lagging with {} events queued", strategy["queue_depth"])
                } else {
                    String::new()
                };
                let error = if verdict == Verdict::Ok { String::new() } else { error };
                report.add(
                    INTEGRATIONS,
                    verdict,
                    format!("strategy {}", text(&strategy["name"])),
                    format!("{state}{reason}{lag}{error}"),
                );
            }
        }
        Err(error) => report.add(INTEGRATIONS, Verdict::Fail, "strategies", error),
    }
}

async fn synchronization(api: &Api, report: &mut Report, reconcile: &Result<Value, String>) {
    let Ok(first) = reconcile else {
        report.add(SYNCHRONIZATION, Verdict::Fail, "reconciliation", "the host could not be asked");
        return;
    };
    if first["compared"] != true {
        let (verdict, detail) = match first["error"].as_str() {
            Some(error) => (Verdict::Fail, format!("the exchange could not be asked: {error}")),
            None => {
                (Verdict::Ok, "no remote orders or positions to compare: the host's own books are the venue".into())
            }
        };
        report.add(SYNCHRONIZATION, verdict, format!("orders and positions ({})", text(&first["venue"])), detail);
        return;
    }
    let listed = |answer: &Value| -> Vec<(String, String)> {
        let all = answer["differences"].as_array().cloned().unwrap_or_default();
        all.iter().map(|d| (text(&d["subject"]), text(&d["detail"]))).collect()
    };
    let mut differences = listed(first);
    if !differences.is_empty() {
        // Ask again: what an order in flight caused is gone a moment later;
        // what persists (by subject) is reported with its latest amounts.
        tokio::time::sleep(Duration::from_secs(1)).await;
        match api.get_json::<Value>("/api/v1/reconcile").await {
            Ok(second) => {
                let earlier: Vec<String> = differences.into_iter().map(|(subject, _)| subject).collect();
                differences = listed(&second).into_iter().filter(|(subject, _)| earlier.contains(subject)).collect();
            }
            Err(error) => report.add(SYNCHRONIZATION, Verdict::Warn, "second look", error),
        }
    }
    if differences.is_empty() {
        report.add(
            SYNCHRONIZATION,
            Verdict::Ok,
            "orders and positions",
            format!(
                "the host's {} open orders and its positions equal the exchange's ({} open orders)",
                first["host_orders"], first["venue_orders"]
            ),
        );
    }
    for (_, detail) in differences {
        report.add(SYNCHRONIZATION, Verdict::Fail, "difference", detail);
    }
}

async fn real_time(api: &Api, report: &mut Report, health: &Value, wait: Duration) {
    match live_events(api, wait).await {
        Ok(outcome) => {
            let (verdict, detail) = outcome.judge(wait);
            report.add(REAL_TIME, verdict, "WebSocket stream", detail);
        }
        Err(error) => report.add(REAL_TIME, Verdict::Fail, "WebSocket stream", error),
    }
    let market = ["exchange.market", "feed"].into_iter().find(|c| health["components"][*c].is_string());
    if let Some(component) = market {
        let freshness = &health["freshness"][component];
        let (age, limit) = (freshness["age_ms"].as_u64(), freshness["stale_after_ms"].as_u64());
        let state = text(&health["components"][component]);
        let (verdict, detail) = match (age, limit) {
            (_, _) if state != "up" => {
                let reason = health["reasons"][component].as_str().unwrap_or("");
                (Verdict::Fail, format!("{state}: {reason}"))
            }
            (Some(age), Some(limit)) if age <= limit => (
                Verdict::Ok,
                format!("last market event {:.1} s ago (fresh within {:.1} s)", age as f64 / 1e3, limit as f64 / 1e3),
            ),
            (Some(age), Some(limit)) => (
                Verdict::Fail,
                format!("last market event {:.1} s ago, past {:.1} s", age as f64 / 1e3, limit as f64 / 1e3),
            ),
            (Some(age), None) if component != "feed" => {
                (Verdict::Ok, format!("last market event {:.1} s ago", age as f64 / 1e3))
            }
            (Some(age), None) => (
                Verdict::Warn,
                format!("last market event {:.1} s ago; no more are expected (the replay ended)", age as f64 / 1e3),
            ),
            (None, _) => (Verdict::Warn, "no market event yet".to_string()),
        };
        report.add(REAL_TIME, verdict, format!("market data ({component})"), detail);
    }
}

/// What the WebSocket client saw.
struct LiveOutcome {
    /// The log's last sequence number when the client had connected.
    connected_at: u64,
    /// Sequence numbers received, in order.
    received: Vec<u64>,
    /// The first event numbered after `connected_at`, and how long it took.
    live_after: Option<Duration>,
    /// The log's last sequence number after the wait.
    log_end: u64,
}

impl LiveOutcome {
    fn judge(&self, wait: Duration) -> (Verdict, String) {
        let gaps: Vec<String> =
            self.received.windows(2).filter(|w| w[1] != w[0] + 1).map(|w| format!("{} → {}", w[0], w[1])).collect();
        if !gaps.is_empty() {
            return (Verdict::Fail, format!("sequence numbers jump: {}", gaps.join(", ")));
        }
        match self.live_after {
            Some(after) => (
                Verdict::Ok,
                format!(
                    "a live event (seq {}) {:.0} ms after connecting; sequence numbers without a gap over {} events",
                    self.received.iter().find(|s| **s > self.connected_at).copied().unwrap_or_default(),
                    after.as_secs_f64() * 1e3,
                    self.received.len()
                ),
            ),
            None if self.log_end > self.connected_at => (
                Verdict::Fail,
                format!(
                    "no live event in {} s while the activity log went from seq {} to {}: the stream is connected but delivers nothing",
                    wait.as_secs(),
                    self.connected_at,
                    self.log_end
                ),
            ),
            None => (
                Verdict::Warn,
                format!(
                    "no event in {} s: the host published none (quiet, or its strategies do not trade)",
                    wait.as_secs()
                ),
            ),
        }
    }
}

/// Events the gap check wants to see, at most [`GAP_WINDOW`] after the first live one.
const GAP_SAMPLE: usize = 50;
const GAP_WINDOW: Duration = Duration::from_secs(1);

async fn last_seq(api: &Api) -> Result<u64, String> {
    let status: Value = api.get_json("/api/v1/status").await?;
    status["last_seq"].as_u64().ok_or_else(|| "/api/v1/status has no last_seq".to_string())
}

/// Subscribes to the live stream only (no replay from the store: what
/// arrives proves live delivery), then waits for an event published after the
/// subscription was in place, checking the numbers that arrive for gaps.
async fn live_events(api: &Api, wait: Duration) -> Result<LiveOutcome, String> {
    let endpoint = format!("ws{}/api/v1/ws", &api.base()["http".len()..]);
    let url = reqwest::Url::parse_with_params(&endpoint, &[("token", api.token())])
        .map_err(|e| format!("{endpoint}: {e}"))?;
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url.as_str()))
        .await
        .map_err(|_| "no WebSocket handshake within 10 s".to_string())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let connected_at = last_seq(api).await?;
    let start = Instant::now();
    let mut outcome = LiveOutcome { connected_at, received: Vec::new(), live_after: None, log_end: connected_at };
    let mut deadline = tokio::time::Instant::now() + wait;
    // After the first live event, keep reading briefly so the gap check sees a run of events.
    while outcome.live_after.is_none() || outcome.received.len() < GAP_SAMPLE {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => break,
            Ok(None) => return Err("the host closed the stream".into()),
            Ok(Some(Err(e))) => return Err(format!("the stream failed: {e}")),
            Ok(Some(Ok(message))) => message,
        };
        let tokio_tungstenite::tungstenite::Message::Text(body) = message else { continue };
        let event: Value = serde_json::from_str(&body).map_err(|e| format!("an unreadable event: {e}"))?;
        let Some(seq) = event["seq"].as_u64() else { continue };
        outcome.received.push(seq);
        if seq > connected_at && outcome.live_after.is_none() {
            outcome.live_after = Some(start.elapsed());
            deadline = deadline.min(tokio::time::Instant::now() + GAP_WINDOW);
        }
    }
    let _ = socket.close(None).await;
    outcome.log_end = last_seq(api).await?;
    Ok(outcome)
}

async fn consistency(api: &Api, report: &mut Report, reconcile: &Result<Value, String>) {
    match reconcile {
        Ok(answer) => {
            let store = &answer["store"];
            let problems = store["problems"].as_array().cloned().unwrap_or_default();
            if problems.is_empty() {
                report.add(
                    CONSISTENCY,
                    Verdict::Ok,
                    "store",
                    format!(
                        "{} orders, {} fills, {} activity events: positions equal the sum of fills, every fill's order exists, activity numbering has no gaps",
                        store["orders"], store["fills"], store["activity"]
                    ),
                );
            }
            for problem in problems {
                report.add(CONSISTENCY, Verdict::Fail, "store", text(&problem));
            }
        }
        Err(error) => report.add(CONSISTENCY, Verdict::Fail, "store", error.clone()),
    }
    match api.get_json::<Value>("/api/v1/candles/series").await {
        Ok(series) => {
            let all = series.as_array().cloned().unwrap_or_default();
            let gapped: Vec<&Value> = all.iter().filter(|s| s["gaps"].as_u64().unwrap_or(0) > 0).collect();
            if gapped.is_empty() {
                report.add(
                    CONSISTENCY,
                    Verdict::Ok,
                    "candles",
                    format!("{} stored series, none with a gap", all.len()),
                );
            }
            for series in gapped {
                report.add(
                    CONSISTENCY,
                    Verdict::Warn,
                    format!("candles {} {}", text(&series["symbol"]), text(&series["timeframe"])),
                    format!(
                        "{} gaps between the first and the last stored candle (`tradehost data verify` lists them; `tradehost data fetch` fills them)",
                        series["gaps"]
                    ),
                );
            }
        }
        Err(error) => report.add(CONSISTENCY, Verdict::Fail, "candles", error),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(connected_at: u64, received: &[u64], live: bool, log_end: u64) -> LiveOutcome {
        LiveOutcome {
            connected_at,
            received: received.to_vec(),
            live_after: live.then_some(Duration::from_millis(40)),
            log_end,
        }
    }

    #[test]
    fn the_stream_is_judged_by_live_delivery_and_gaps() {
        let wait = Duration::from_secs(3);
        let (verdict, detail) = outcome(5, &[5, 6, 7], true, 7).judge(wait);
        assert_eq!(verdict, Verdict::Ok, "{detail}");
        assert!(detail.starts_with("a live event (seq 6) 40 ms after connecting"), "{detail}");
        let (verdict, detail) = outcome(5, &[5, 6, 8, 9, 11], true, 11).judge(wait);
        assert_eq!((verdict, detail.as_str()), (Verdict::Fail, "sequence numbers jump: 6 → 8, 9 → 11"));
        let (verdict, detail) = outcome(5, &[4, 5], false, 9).judge(wait);
        assert_eq!(verdict, Verdict::Fail);
        assert!(detail.contains("went from seq 5 to 9"), "{detail}");
        let (verdict, _) = outcome(5, &[], false, 5).judge(wait);
        assert_eq!(verdict, Verdict::Warn, "a quiet host is a warning, not a failure");
    }

    #[test]
    fn the_worst_result_decides() {
        let mut report = Report::default();
        assert_eq!(report.worst(), Verdict::Ok);
        report.add(INTEGRATIONS, Verdict::Ok, "a", "");
        report.add(REAL_TIME, Verdict::Warn, "b", "");
        assert_eq!(report.worst(), Verdict::Warn);
        report.add(CONSISTENCY, Verdict::Fail, "c", "");
        report.add(SYNCHRONIZATION, Verdict::Ok, "d", "");
        assert_eq!(report.worst(), Verdict::Fail);
    }
}
