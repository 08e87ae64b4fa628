//! Per-strategy quotas on what a script makes the host keep across callbacks:
//! log lines (length and rate), notifications, activity events, orders,
//! timers, health reports and the size of `this`. The sandbox bounds one
//! callback; these bound a strategy over time. Limits come from `[sandbox]`
//! (overridable per strategy). Rates count in wall time where they protect
//! the host (live and paper runs, whatever the feed's speed), and in
//! simulated time in a backtest. Excess is dropped (logs, notifications,
//! reports) or refused with a script error (orders, timers), counted per
//! strategy, and announced by at most one warning line per second.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::sync::Arc;

use crate::config::SandboxConfig;
use crate::health::QuotaHits;
use crate::model::TimestampMs;

/// One quota (its name is what the API, `/metrics` and warnings show).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaKind {
    /// Log lines longer than `max_log_line_bytes` (truncated).
    LogLength,
    /// Log lines over `log_lines_per_second` (dropped).
    LogRate,
    /// Notifications over `notifications_per_minute` (dropped).
    Notifications,
    /// Activity events over `events_per_second` (dropped).
    Events,
    /// Orders over `orders_per_second` (refused).
    Orders,
    /// Timers over `max_timers`, or names over `max_timer_name_bytes` (refused).
    Timers,
    /// Health report keys over `max_report_keys` (dropped) or values over `max_report_value_bytes` (truncated).
    Reports,
    /// `this` over `max_state_bytes` (not saved; the last good state is restored).
    State,
    /// `ml::record` rows beyond `ml.record_max_mb` (dropped).
    MlRecord,
}

impl QuotaKind {
    /// Every quota, in a fixed order.
    pub const ALL: [QuotaKind; 9] = [
        QuotaKind::LogLength,
        QuotaKind::LogRate,
        QuotaKind::Notifications,
        QuotaKind::Events,
        QuotaKind::Orders,
        QuotaKind::Timers,
        QuotaKind::Reports,
        QuotaKind::State,
        QuotaKind::MlRecord,
    ];

    /// The quota's name.
    pub fn name(self) -> &'static str {
        match self {
            QuotaKind::LogLength => "log_line_length",
            QuotaKind::LogRate => "log_rate",
            QuotaKind::Notifications => "notifications",
            QuotaKind::Events => "events",
            QuotaKind::Orders => "orders",
            QuotaKind::Timers => "timers",
            QuotaKind::Reports => "health_reports",
            QuotaKind::State => "state_size",
            QuotaKind::MlRecord => "ml_record",
        }
    }

    /// What the excess became and which `[sandbox]` key sets the quota.
    fn explain(self, limits: &SandboxConfig) -> String {
        match self {
            QuotaKind::LogLength => format!("truncated to sandbox.max_log_line_bytes = {}", limits.max_log_line_bytes),
            QuotaKind::LogRate => format!(
                "dropped over sandbox.log_lines_per_second = {} (burst {})",
                limits.log_lines_per_second, limits.log_burst
            ),
            QuotaKind::Notifications => {
                format!("dropped over sandbox.notifications_per_minute = {}", limits.notifications_per_minute)
            }
            QuotaKind::Events => format!("dropped over sandbox.events_per_second = {}", limits.events_per_second),
            QuotaKind::Orders => format!("refused over sandbox.orders_per_second = {}", limits.orders_per_second),
            QuotaKind::Timers => format!(
                "refused over sandbox.max_timers = {} or sandbox.max_timer_name_bytes = {}",
                limits.max_timers, limits.max_timer_name_bytes
            ),
            QuotaKind::Reports => format!(
                "dropped over sandbox.max_report_keys = {} or truncated to sandbox.max_report_value_bytes = {}",
                limits.max_report_keys, limits.max_report_value_bytes
            ),
            QuotaKind::State => format!("not saved over sandbox.max_state_bytes = {}", limits.max_state_bytes),
            QuotaKind::MlRecord => "dropped: the feature record file reached ml.record_max_mb".to_string(),
        }
    }
}

/// A token bucket on the run's clock.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    capacity: f64,
    per_ms: f64,
    last: Option<TimestampMs>,
}

impl Bucket {
    fn new(per_second: f64, burst: f64) -> Self {
        let capacity = burst.max(1.0);
        Bucket { tokens: capacity, capacity, per_ms: per_second / 1_000.0, last: None }
    }

    /// Takes one token if there is one.
    fn take(&mut self, now: TimestampMs) -> bool {
        let elapsed = self.last.map_or(0, |last| now.saturating_sub(last).max(0));
        self.last = Some(now);
        self.tokens = (self.tokens + elapsed as f64 * self.per_ms).min(self.capacity);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Warnings about quota hits are written at most this often (run clock).
const WARNING_INTERVAL_MS: i64 = 1_000;

/// The quotas of one strategy and what it has used of them.
#[derive(Debug)]
pub struct Quotas {
    limits: SandboxConfig,
    logs: Bucket,
    notifications: Bucket,
    events: Bucket,
    orders: Bucket,
    report_keys: HashSet<String>,
    hits: Arc<QuotaHits>,
    /// Hits of the current callback, per kind (counted in `hits` at its end).
    in_callback: [u64; QuotaKind::ALL.len()],
    /// Hits not yet announced by a warning, per kind.
    unannounced: [u64; QuotaKind::ALL.len()],
    last_warning: Option<TimestampMs>,
    /// The first quota the current callback hit.
    hit_in_callback: Option<QuotaKind>,
    /// Rates count in wall time since this instant; `None`: on the run's clock.
    wall: Option<std::time::Instant>,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::new(&SandboxConfig::default(), Arc::default())
    }
}

impl Quotas {
    /// Quotas set by `limits`, with rates in wall time, counting hits into `hits`.
    pub fn new(limits: &SandboxConfig, hits: Arc<QuotaHits>) -> Self {
        Quotas { wall: Some(std::time::Instant::now()), ..Quotas::on_run_clock(limits, hits) }
    }

    /// Quotas whose rates count on the run's clock (a backtest's simulated time).
    pub fn on_run_clock(limits: &SandboxConfig, hits: Arc<QuotaHits>) -> Self {
        let rate = |n: u32| f64::from(n);
        Quotas {
            logs: Bucket::new(rate(limits.log_lines_per_second), rate(limits.log_burst)),
            notifications: Bucket::new(
                rate(limits.notifications_per_minute) / 60.0,
                rate(limits.notifications_per_minute),
            ),
            events: Bucket::new(rate(limits.events_per_second), rate(limits.events_per_second) * 5.0),
            orders: Bucket::new(rate(limits.orders_per_second), rate(limits.orders_per_second) * 4.0),
            report_keys: HashSet::new(),
            hits,
            in_callback: [0; QuotaKind::ALL.len()],
            unannounced: [0; QuotaKind::ALL.len()],
            last_warning: None,
            hit_in_callback: None,
            wall: None,
            limits: limits.clone(),
        }
    }

    /// The time rates count at, given the run clock's `run_now`.
    pub fn time(&self, run_now: TimestampMs) -> TimestampMs {
        self.wall.map_or(run_now, |start| start.elapsed().as_millis() as TimestampMs)
    }

    /// The limits in force.
    pub fn limits(&self) -> &SandboxConfig {
        &self.limits
    }

    /// Records a hit of `kind`.
    pub fn hit(&mut self, kind: QuotaKind) {
        self.in_callback[kind as usize] += 1;
        self.hit_in_callback.get_or_insert(kind);
    }

    /// A log line as it may be kept: `None` if over the rate (dropped),
    /// else the line, cut if too long (nothing is copied for a dropped line).
    pub fn log_line(&mut self, now: TimestampMs, message: &str) -> Option<String> {
        if !self.logs.take(now) {
            self.hit(QuotaKind::LogRate);
            return None;
        }
        self.event(now)?;
        Some(self.cut(message, self.limits.max_log_line_bytes, QuotaKind::LogLength))
    }

    /// A notification as it may be kept (`None`: over the rate, dropped).
    pub fn notification(&mut self, now: TimestampMs, message: &str) -> Option<String> {
        if !self.notifications.take(now) {
            self.hit(QuotaKind::Notifications);
            return None;
        }
        self.event(now)?;
        Some(self.cut(message, self.limits.max_log_line_bytes, QuotaKind::LogLength))
    }

    /// A health report as it may be kept (`None`: a new key over the key
    /// quota, or over the event rate).
    pub fn report(&mut self, now: TimestampMs, key: &str, value: &str) -> Option<(String, String)> {
        let max = self.limits.max_report_value_bytes;
        let key = self.cut(key, max, QuotaKind::Reports);
        if !self.report_keys.contains(&key) {
            if self.report_keys.len() >= self.limits.max_report_keys {
                self.hit(QuotaKind::Reports);
                return None;
            }
            self.report_keys.insert(key.clone());
        }
        self.event(now)?;
        Some((key, self.cut(value, max, QuotaKind::Reports)))
    }

    /// A health reason or other short text, truncated to the report value size.
    pub fn short_text(&mut self, now: TimestampMs, text: &str) -> Option<String> {
        self.event(now)?;
        Some(self.cut(text, self.limits.max_report_value_bytes, QuotaKind::Reports))
    }

    /// One activity event, if the event rate allows it.
    pub fn event(&mut self, now: TimestampMs) -> Option<()> {
        if self.events.take(now) {
            Some(())
        } else {
            self.hit(QuotaKind::Events);
            None
        }
    }

    /// `text` cut to at most `max` bytes (on a character boundary), with a
    /// marker saying how much was cut (a hit of `kind`).
    fn cut(&mut self, text: &str, max: usize, kind: QuotaKind) -> String {
        if text.len() <= max {
            return text.to_string();
        }
        self.hit(kind);
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}… [{} more bytes cut]", &text[..end], text.len() - end)
    }

    /// Allows one order, or says why not.
    pub fn order(&mut self, now: TimestampMs) -> Result<(), String> {
        if self.orders.take(now) {
            return Ok(());
        }
        self.hit(QuotaKind::Orders);
        Err(format!(
            "more than {} orders per second (sandbox.orders_per_second): order refused",
            self.limits.orders_per_second
        ))
    }

    /// Allows a timer named `name` when `existing` timers are set (and
    /// whether one of that name is among them), or says why not.
    pub fn timer(&mut self, name: &str, existing: usize, replaces: bool) -> Result<(), String> {
        if name.len() > self.limits.max_timer_name_bytes {
            self.hit(QuotaKind::Timers);
            return Err(format!(
                "timer name is {} bytes, over sandbox.max_timer_name_bytes = {}",
                name.len(),
                self.limits.max_timer_name_bytes
            ));
        }
        if !replaces && existing >= self.limits.max_timers {
            self.hit(QuotaKind::Timers);
            return Err(format!("{existing} timers are set, the most allowed (sandbox.max_timers); cancel one first"));
        }
        Ok(())
    }

    /// Checks the size of `this` serialized as JSON; over the quota, says so.
    pub fn state(&mut self, bytes: usize) -> Result<(), String> {
        if bytes <= self.limits.max_state_bytes {
            return Ok(());
        }
        self.hit(QuotaKind::State);
        Err(format!(
            "`this` is {bytes} bytes as JSON, over sandbox.max_state_bytes = {}: not saved; the last good state is kept",
            self.limits.max_state_bytes
        ))
    }

    /// Ends a callback: counts its hits, and returns the quota it hit when
    /// hits count as failures (`sandbox.quota_failures`).
    pub fn end_callback(&mut self) -> Option<String> {
        let hit = self.hit_in_callback.take()?;
        for kind in QuotaKind::ALL {
            let n = std::mem::take(&mut self.in_callback[kind as usize]);
            if n > 0 {
                self.hits.add(kind.name(), n);
                self.unannounced[kind as usize] += n;
            }
        }
        self.limits.quota_failures.then(|| format!("quota `{}` exceeded: {}", hit.name(), hit.explain(&self.limits)))
    }

    /// The warning line to write now about hits since the last one, at
    /// most once per second of the run's clock.
    pub fn warning(&mut self, now: TimestampMs) -> Option<String> {
        if self.unannounced.iter().all(|n| *n == 0)
            || self.last_warning.is_some_and(|last| now.saturating_sub(last) < WARNING_INTERVAL_MS)
        {
            return None;
        }
        self.last_warning = Some(now);
        let mut line = String::from("quota:");
        for kind in QuotaKind::ALL {
            let n = std::mem::take(&mut self.unannounced[kind as usize]);
            if n > 0 {
                let _ = write!(line, " {n} × {} ({});", kind.name(), kind.explain(&self.limits));
            }
        }
        line.pop();
        Some(line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SandboxConfig {
        SandboxConfig { log_lines_per_second: 10, log_burst: 20, max_log_line_bytes: 8, ..SandboxConfig::default() }
    }

    #[test]
    fn log_lines_over_the_burst_are_dropped_until_the_rate_refills_them() {
        let hits = Arc::new(QuotaHits::default());
        let mut q = Quotas::on_run_clock(&limits(), hits.clone());
        let kept = (0..100).filter(|_| q.log_line(0, "x").is_some()).count();
        assert_eq!(kept, 20, "the burst");
        assert_eq!(q.log_line(50, "x"), None, "half a token after 50 ms");
        assert!(q.log_line(100, "x").is_some(), "one token after 100 ms");
        assert_eq!(q.end_callback(), None, "hits are no failures by default");
        let warning = q.warning(100).unwrap();
        assert!(
            warning.contains("81 × log_rate") && warning.contains("sandbox.log_lines_per_second = 10"),
            "{warning}"
        );
        assert_eq!(hits.snapshot()["log_rate"], 81);
        assert_eq!(q.log_line(100, "x"), None);
        q.end_callback();
        assert_eq!(q.warning(500), None, "at most one warning a second");
        assert!(q.warning(1_100).is_some());
    }

    #[test]
    fn long_lines_are_cut_on_a_character_boundary_with_a_marker() {
        let mut q = Quotas::new(&limits(), Arc::default());
        assert_eq!(q.log_line(0, "short").unwrap(), "short");
        let cut = q.log_line(0, "ééééé").unwrap();
        assert_eq!(cut, "éééé… [2 more bytes cut]");
    }

    #[test]
    fn timers_orders_reports_and_state_have_their_quotas() {
        let limits = SandboxConfig {
            max_timers: 2,
            max_timer_name_bytes: 4,
            orders_per_second: 1,
            max_report_keys: 1,
            max_state_bytes: 10,
            quota_failures: true,
            ..SandboxConfig::default()
        };
        let mut q = Quotas::on_run_clock(&limits, Arc::default());
        assert!(q.timer("abcde", 0, false).unwrap_err().contains("max_timer_name_bytes"));
        assert!(q.timer("a", 2, true).is_ok(), "replacing one is not a new timer");
        assert!(q.timer("a", 2, false).unwrap_err().contains("max_timers"));
        assert!((0..4).all(|_| q.order(0).is_ok()), "a burst of four");
        assert!(q.order(0).unwrap_err().contains("orders_per_second"));
        assert!(q.report(0, "k", "v").is_some());
        assert!(q.report(0, "k", "w").is_some(), "the same key again");
        assert!(q.report(0, "other", "v").is_none());
        assert!(q.state(11).unwrap_err().contains("max_state_bytes = 10"));
        let failure = q.end_callback().unwrap();
        assert!(failure.contains("quota `timers` exceeded"), "the first hit: {failure}");
        assert_eq!(q.end_callback(), None);
    }
}
