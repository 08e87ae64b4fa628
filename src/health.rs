//! Host health: a registry of components — their state, why they are not
//! up, and how long ago each last did real work (freshness: a component that
//! should be busy and stays silent past its threshold turns degraded) — the
//! aggregate the `/health` endpoint serves, and the counters and histograms
//! behind `/metrics` (Prometheus text format). Everything here is lock-light
//! and updated from any thread; stamping activity on the hot path is one
//! clock read and one atomic store.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde::Serialize;

/// State of one component.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ComponentState {
    /// Not ready yet.
    Starting,
    /// Ready.
    Up,
    /// Serving but impaired: silent past its freshness threshold while work
    /// waits, or stale market data (new entries refused).
    Degraded,
    /// Was up and is lost for now (an exchange stream reconnecting, a task that failed).
    Down,
    /// Stopping.
    Stopping,
}

impl ComponentState {
    /// The lowercase name the API uses.
    pub fn name(self) -> &'static str {
        match self {
            ComponentState::Starting => "starting",
            ComponentState::Up => "up",
            ComponentState::Degraded => "degraded",
            ComponentState::Down => "down",
            ComponentState::Stopping => "stopping",
        }
    }
}

/// Milliseconds on the process's monotonic clock.
fn monotonic_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a component last did real work (a message read, a loop turn, a
/// callback finished, a commit). Cloning shares it; `beat` is cheap enough
/// for every event.
#[derive(Debug, Clone, Default)]
pub struct Pulse(Arc<AtomicU64>);

impl Pulse {
    /// Records activity now.
    pub fn beat(&self) {
        // Stored plus one: zero means never.
        self.0.store(monotonic_ms() + 1, Ordering::Relaxed);
    }

    /// Time since the last beat; `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            stamp => Some(Duration::from_millis(monotonic_ms().saturating_sub(stamp - 1))),
        }
    }
}

/// Whether a component has work waiting (a silent component with nothing to
/// do is idle, not stale).
pub type Busy = Box<dyn Fn() -> bool + Send + Sync>;

/// A component's freshness rule: silent longer than `after` while `busy`
/// (always, when absent) turns it degraded.
pub struct Freshness {
    /// Its activity.
    pub pulse: Pulse,
    /// Longest silence that is still fresh.
    pub after: Duration,
    /// Whether it should be active now.
    pub busy: Option<Busy>,
    /// What it does, for the reason (`"made no progress"`, `"committed nothing"`).
    pub what: &'static str,
}

impl std::fmt::Debug for Freshness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Freshness").field("pulse", &self.pulse).field("after", &self.after).finish()
    }
}

/// How fresh a component is, as `/health` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FreshnessView {
    /// Milliseconds since its last real activity (absent: none yet).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub age_ms: Option<u64>,
    /// Its threshold, where it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_after_ms: Option<u64>,
}

#[derive(Debug)]
struct Component {
    state: ComponentState,
    reason: Option<String>,
    /// Shown but not counted for readiness (the Telegram bot, a strategy).
    auxiliary: bool,
    pulse: Pulse,
    freshness: Option<Freshness>,
    /// Degraded by its freshness rule (not by its owner): fresh again lifts it.
    stale: bool,
    /// When it last came up (or its rule was set): silence counts from then,
    /// so activity from before a restart or a long stop is not held against it.
    armed_ms: u64,
    /// Since when its rule's `busy` has held without a break.
    busy_since_ms: Option<u64>,
    /// When its rule degraded it (it stays degraded at least [`dwell`]).
    degraded_at_ms: u64,
}

/// How long a component degraded by its freshness rule stays degraded at
/// least: half its threshold, at most 5 s, so a slow component cannot flap
/// (and notify) on every beat.
fn dwell(after: Duration) -> Duration {
    (after / 2).min(Duration::from_secs(5))
}

impl Component {
    fn new(auxiliary: bool) -> Self {
        Component {
            state: ComponentState::Starting,
            reason: None,
            auxiliary,
            pulse: Pulse::default(),
            freshness: None,
            stale: false,
            armed_ms: 0,
            busy_since_ms: None,
            degraded_at_ms: 0,
        }
    }
}

/// Which components exist, their state and freshness, and whether the host is shutting down.
#[derive(Debug, Default)]
pub struct Health {
    components: Mutex<BTreeMap<String, Component>>,
    shutting_down: AtomicBool,
    /// Bumped whenever a component's state or reason changes.
    changes: tokio::sync::watch::Sender<u64>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Component>> {
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n += 1);
    }

    /// Registers a component as starting.
    pub fn register(&self, name: &str) {
        self.insert(name, false);
    }

    /// Registers a component that is shown (state, reason, freshness) but
    /// never keeps the host from being ready.
    pub fn register_auxiliary(&self, name: &str) {
        self.insert(name, true);
    }

    fn insert(&self, name: &str, auxiliary: bool) {
        let mut components = self.lock();
        match components.get_mut(name) {
            Some(component) => {
                component.state = ComponentState::Starting;
                component.reason = None;
                component.stale = false;
                component.auxiliary = auxiliary;
            }
            None => {
                components.insert(name.to_string(), Component::new(auxiliary));
            }
        }
        drop(components);
        self.changed();
    }

    /// Removes a component (a strategy deleted or stopped).
    pub fn unregister(&self, name: &str) {
        if self.lock().remove(name).is_some() {
            self.changed();
        }
    }

    /// The activity stamp of a component (registered or not: an unknown
    /// name gets a pulse nobody reads).
    pub fn pulse(&self, name: &str) -> Pulse {
        self.lock().get(name).map(|c| c.pulse.clone()).unwrap_or_default()
    }

    /// Shows the age of `pulse` as a component's last activity (no threshold).
    pub fn track(&self, name: &str, pulse: Pulse) {
        if let Some(component) = self.lock().get_mut(name) {
            component.pulse = pulse;
        }
    }

    /// Gives a component a freshness rule (its pulse becomes the rule's).
    pub fn expect_activity(&self, name: &str, freshness: Freshness) {
        if let Some(component) = self.lock().get_mut(name) {
            component.pulse = freshness.pulse.clone();
            component.freshness = Some(freshness);
            component.armed_ms = monotonic_ms();
        }
    }

    /// Drops a component's freshness rule (nothing more is expected of it:
    /// a replay feed that reached its end); lifts a degradation it caused.
    pub fn expect_nothing(&self, name: &str) {
        let mut components = self.lock();
        let Some(component) = components.get_mut(name) else { return };
        component.freshness = None;
        if std::mem::take(&mut component.stale) {
            component.state = ComponentState::Up;
            component.reason = None;
            drop(components);
            self.changed();
        }
    }

    /// Sets a component's state and reason (ignored once shutdown began:
    /// everything is stopping); publishes a change only when there is one.
    /// A component its freshness rule degraded stays degraded when its owner
    /// says up, until it is fresh again.
    pub fn report(&self, name: &str, state: ComponentState, reason: Option<&str>) {
        if self.is_shutting_down() {
            return;
        }
        let mut components = self.lock();
        let Some(component) = components.get_mut(name) else { return };
        if component.stale && state == ComponentState::Up {
            return;
        }
        if state == ComponentState::Up && component.state != ComponentState::Up {
            component.armed_ms = monotonic_ms();
        }
        component.stale = false;
        let reason = reason.map(str::to_string);
        let changed = component.state != state || component.reason != reason;
        component.state = state;
        component.reason = reason;
        drop(components);
        if changed {
            self.changed();
        }
    }

    /// Sets a component's state; up clears the reason a failure left.
    pub fn set(&self, name: &str, state: ComponentState) {
        let kept = if state == ComponentState::Up { None } else { self.reason(name) };
        self.report(name, state, kept.as_deref());
    }

    /// Marks a component down and says why (a task that panicked, say); the
    /// reason stays until the component is up again, through shutdown.
    pub fn set_down(&self, name: &str, reason: &str) {
        if self.is_shutting_down() {
            if let Some(component) = self.lock().get_mut(name) {
                component.reason = Some(reason.to_string());
            }
            self.changed();
            return;
        }
        self.report(name, ComponentState::Down, Some(reason));
    }

    /// Marks a component degraded (serving, impaired) and says why.
    pub fn degrade(&self, name: &str, reason: &str) {
        self.report(name, ComponentState::Degraded, Some(reason));
    }

    /// Gives a component a reason without changing its state: something is
    /// wrong while it still serves (a model file refused, the old version
    /// serving). The reason stays until the component is set up again.
    pub fn note(&self, name: &str, reason: &str) {
        let mut components = self.lock();
        let Some(component) = components.get_mut(name) else { return };
        if component.reason.as_deref() != Some(reason) {
            component.reason = Some(reason.to_string());
            drop(components);
            self.changed();
        }
    }

    fn reason(&self, name: &str) -> Option<String> {
        self.lock().get(name).and_then(|c| c.reason.clone())
    }

    /// Applies every freshness rule: a component up, busy without a break
    /// for longer than its threshold and silent all that time (counted from
    /// its last activity, from when it came up, and from when it became busy,
    /// whichever is latest) turns degraded with the reason; once it is active
    /// or idle again, and has been degraded for [`dwell`], it turns up.
    /// Returns whether a state changed. Called every 250 ms by the host.
    pub fn check_freshness(&self) -> bool {
        if self.is_shutting_down() {
            return false;
        }
        let now = monotonic_ms();
        let mut changed = false;
        for component in self.lock().values_mut() {
            let Some(rule) = &component.freshness else { continue };
            let busy = rule.busy.as_ref().is_none_or(|busy| busy());
            component.busy_since_ms = if busy { Some(component.busy_since_ms.unwrap_or(now)) } else { None };
            let since = |ms: u64| Duration::from_millis(now.saturating_sub(ms));
            let mut quiet = since(component.armed_ms);
            if let Some(busy_since) = component.busy_since_ms {
                quiet = quiet.min(since(busy_since));
            }
            if let Some(age) = rule.pulse.age() {
                quiet = quiet.min(age);
            }
            let stale = busy && quiet > rule.after;
            if stale && component.state == ComponentState::Up {
                let (quiet, after) = (quiet.as_secs_f64(), rule.after.as_secs_f64());
                component.reason = Some(format!("{} for {quiet:.1} s (threshold {after:.1} s)", rule.what));
                component.state = ComponentState::Degraded;
                component.stale = true;
                component.degraded_at_ms = now;
                changed = true;
            } else if !stale && component.stale && since(component.degraded_at_ms) >= dwell(rule.after) {
                component.stale = false;
                component.state = ComponentState::Up;
                component.reason = None;
                changed = true;
            }
        }
        if changed {
            self.changed();
        }
        changed
    }

    /// Wakes on every change of a component's state or reason.
    pub fn changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// Why components are not up, where a reason was given (or what is
    /// wrong while one still serves).
    pub fn reasons(&self) -> BTreeMap<String, String> {
        self.lock().iter().filter_map(|(n, c)| Some((n.clone(), c.reason.clone()?))).collect()
    }

    /// Each component's age of last activity and threshold.
    pub fn freshness(&self) -> BTreeMap<String, FreshnessView> {
        self.lock()
            .iter()
            .map(|(name, c)| {
                let view = FreshnessView {
                    age_ms: c.pulse.age().map(|a| a.as_millis() as u64),
                    stale_after_ms: c.freshness.as_ref().map(|f| f.after.as_millis() as u64),
                };
                (name.clone(), view)
            })
            .collect()
    }

    /// Marks the start of shutdown: every component is stopping.
    pub fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::SeqCst);
        for component in self.lock().values_mut() {
            component.state = ComponentState::Stopping;
        }
        self.changed();
    }

    /// True once shutdown began.
    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::SeqCst)
    }

    /// Every component's state.
    pub fn components(&self) -> BTreeMap<String, ComponentState> {
        self.lock().iter().map(|(n, c)| (n.clone(), c.state)).collect()
    }

    /// `ready` (every component readiness counts is up), `degraded` (they
    /// all serve, one or more impaired), `starting` (one is not up yet, or
    /// is down) or `shutting_down`.
    pub fn status(&self) -> &'static str {
        if self.is_shutting_down() {
            return "shutting_down";
        }
        let components = self.lock();
        let counted = components.values().filter(|c| !c.auxiliary);
        let mut degraded = false;
        for component in counted {
            match component.state {
                ComponentState::Up => {}
                ComponentState::Degraded => degraded = true,
                _ => return "starting",
            }
        }
        if degraded { "degraded" } else { "ready" }
    }

    /// True when every component readiness counts is up and shutdown has not begun.
    pub fn is_ready(&self) -> bool {
        self.status() == "ready"
    }

    /// True when every component readiness counts serves (up or degraded)
    /// and shutdown has not begun: the host has started.
    pub fn is_serving(&self) -> bool {
        matches!(self.status(), "ready" | "degraded")
    }

    /// Components readiness counts that do not serve yet (starting or down).
    pub fn not_ready(&self) -> Vec<String> {
        self.lock()
            .iter()
            .filter(|(_, c)| !matches!(c.state, ComponentState::Up | ComponentState::Degraded) && !c.auxiliary)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Prometheus text: each component's state and the age of its last activity.
    pub fn render_metrics(&self, out: &mut String) {
        out.push_str("# HELP tradehost_component_up 1 when a component is up, 0 otherwise (see its state label).\n# TYPE tradehost_component_up gauge\n");
        let components = self.lock();
        for (name, component) in components.iter() {
            let up = u8::from(component.state == ComponentState::Up);
            let state = component.state.name();
            let _ = writeln!(out, "tradehost_component_up{{component=\"{name}\",state=\"{state}\"}} {up}");
        }
        out.push_str("# HELP tradehost_component_activity_age_seconds Seconds since a component's last real activity.\n# TYPE tradehost_component_activity_age_seconds gauge\n");
        for (name, component) in components.iter() {
            if let Some(age) = component.pulse.age() {
                let _ = writeln!(
                    out,
                    "tradehost_component_activity_age_seconds{{component=\"{name}\"}} {}",
                    age.as_secs_f64()
                );
            }
        }
    }
}

/// Replaces `path` with `bytes` so that a reader sees the old file or the
/// new one, never a part: the bytes go to a temporary file in the same
/// folder, are synced, and the file is renamed over `path` (a replace on
/// every platform the standard library supports), then the folder is synced.
pub fn write_file_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let temporary = folder.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result?;
    #[cfg(unix)]
    if let Ok(dir) = std::fs::File::open(folder) {
        let _ = dir.sync_all();
    }
    Ok(())
}

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] =
    [0.000_01, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05, 0.25, 1.0];

/// A fixed-bucket latency histogram with atomic counters.
#[derive(Debug, Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_ns: AtomicU64,
    last: Pulse,
}

impl Histogram {
    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(i) = BUCKETS.iter().position(|b| seconds <= *b) {
            self.counts[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(elapsed.as_nanos() as u64, Ordering::Relaxed);
        self.last.beat();
    }

    /// Beats at every observation: when the measured work last finished.
    pub fn pulse(&self) -> Pulse {
        self.last.clone()
    }

    /// Writes the histogram in Prometheus text format under `name` with `labels` (`k="v",…`).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, bound) in BUCKETS.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9);
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Counters and histograms of one host (not global: several hosts may share a process).
#[derive(Debug, Default)]
pub struct Metrics {
    /// Activity events published.
    pub events: AtomicU64,
    /// Fills.
    pub fills: AtomicU64,
    /// Exchange stream reconnects.
    pub reconnects: AtomicU64,
    /// Connected WebSocket clients.
    pub ws_clients: AtomicU64,
    /// Store commit latency.
    pub store_commit: Histogram,
    /// The Telegram bot's counters.
    pub telegram: Arc<BotCounters>,
    orders: Mutex<BTreeMap<&'static str, u64>>,
    callbacks: Mutex<BTreeMap<String, Arc<Histogram>>>,
    quota_hits: Mutex<BTreeMap<String, Arc<QuotaHits>>>,
    strategy_queues: Mutex<BTreeMap<String, (QueueDepth, usize)>>,
    queues: Mutex<BTreeMap<&'static str, QueueDepth>>,
    risk_rejections: Mutex<BTreeMap<&'static str, u64>>,
    sections: Mutex<Vec<Section>>,
}

/// Metrics another module renders itself (the models' counters and latencies).
pub struct Section(Box<dyn Fn(&mut String) + Send + Sync>);

impl std::fmt::Debug for Section {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Section")
    }
}

/// What the Telegram bot did (all zero while it is off).
#[derive(Debug, Default)]
pub struct BotCounters {
    /// `getUpdates` long polls made.
    pub polls: AtomicU64,
    /// Updates received (commands and button presses).
    pub updates: AtomicU64,
    /// Updates from chats not on the allowlist (ignored).
    pub strangers: AtomicU64,
    /// Messages sent.
    pub sent: AtomicU64,
    /// Messages that could not be sent.
    pub send_failures: AtomicU64,
    /// 429 answers waited out.
    pub retry_after: AtomicU64,
    /// Notifications dropped because the queue to the bot was full.
    pub dropped: AtomicU64,
    /// When the last poll succeeded (ms since the epoch; 0: never).
    pub last_poll_ms: std::sync::atomic::AtomicI64,
}

impl BotCounters {
    fn render(&self, out: &mut String) {
        for (name, help, value) in [
            ("polls", "getUpdates long polls made.", &self.polls),
            ("updates", "Updates received.", &self.updates),
            ("strangers", "Updates from chats not on the allowlist (ignored).", &self.strangers),
            ("messages_sent", "Messages sent.", &self.sent),
            ("send_failures", "Messages that could not be sent.", &self.send_failures),
            ("retry_after", "429 answers waited out.", &self.retry_after),
            ("notifications_dropped", "Notifications dropped on a full queue.", &self.dropped),
        ] {
            let _ = writeln!(
                out,
                "# HELP tradehost_telegram_{name}_total {help}\n# TYPE tradehost_telegram_{name}_total counter\ntradehost_telegram_{name}_total {}",
                value.load(Ordering::Relaxed)
            );
        }
        let last = self.last_poll_ms.load(Ordering::Relaxed);
        if last > 0 {
            let age = (chrono::Utc::now().timestamp_millis() - last).max(0) as f64 / 1e3;
            let _ = writeln!(
                out,
                "# HELP tradehost_telegram_last_poll_age_seconds Seconds since the bot's last successful poll.\n# TYPE tradehost_telegram_last_poll_age_seconds gauge\ntradehost_telegram_last_poll_age_seconds {age}"
            );
        }
    }
}

/// How often each quota of one strategy was hit (see `strategy::quota`).
#[derive(Debug, Default)]
pub struct QuotaHits(Mutex<BTreeMap<&'static str, u64>>);

impl QuotaHits {
    /// Adds `n` hits of the quota `name`.
    pub fn add(&self, name: &'static str, n: u64) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()).entry(name).or_default() += n;
    }

    /// Hits so far, by quota name.
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }
}

/// Reads how many items wait in a queue now.
pub struct QueueDepth(Box<dyn Fn() -> usize + Send + Sync>);

impl QueueDepth {
    /// A depth read by `read`.
    pub fn new(read: impl Fn() -> usize + Send + Sync + 'static) -> Self {
        QueueDepth(Box::new(read))
    }

    /// Items waiting now.
    pub fn read(&self) -> usize {
        (self.0)()
    }
}

impl std::fmt::Debug for QueueDepth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QueueDepth({})", (self.0)())
    }
}

/// The text of a panic's payload, for failure reports.
pub fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_string())
}

impl Metrics {
    /// Counts an order state change by its status (`filled`, `rejected`, …).
    pub fn order(&self, status: &'static str) {
        *self.orders.lock().unwrap_or_else(|e| e.into_inner()).entry(status).or_default() += 1;
    }

    /// Counts an order refused by a risk limit (`max_order_size`, `trading_state`, …).
    pub fn risk_rejection(&self, limit: &'static str) {
        *self.risk_rejections.lock().unwrap_or_else(|e| e.into_inner()).entry(limit).or_default() += 1;
    }

    /// Orders refused so far, by risk limit.
    pub fn risk_rejections(&self) -> BTreeMap<String, u64> {
        let counts = self.risk_rejections.lock().unwrap_or_else(|e| e.into_inner());
        counts.iter().map(|(limit, n)| (limit.to_string(), *n)).collect()
    }

    /// Exports a queue's depth as `tradehost_queue_depth{queue="NAME"}`.
    pub fn watch_queue(&self, name: &'static str, depth: QueueDepth) {
        self.queues.lock().unwrap_or_else(|e| e.into_inner()).insert(name, depth);
    }

    /// The callback latency histogram of a strategy.
    pub fn callback_histogram(&self, strategy: &str) -> Arc<Histogram> {
        self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).entry(strategy.to_string()).or_default().clone()
    }

    /// The quota hit counters of a strategy (kept across its restarts).
    pub fn quota_hits(&self, strategy: &str) -> Arc<QuotaHits> {
        self.quota_hits.lock().unwrap_or_else(|e| e.into_inner()).entry(strategy.to_string()).or_default().clone()
    }

    /// Exports a strategy's event queue as `tradehost_strategy_queue_depth`;
    /// at `lagging_at` events or more the strategy lags.
    pub fn watch_strategy_queue(&self, strategy: &str, depth: QueueDepth, lagging_at: usize) {
        self.strategy_queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(strategy.to_string(), (depth, lagging_at));
    }

    /// A strategy's queued events now, and whether that makes it lag.
    pub fn strategy_queue(&self, strategy: &str) -> Option<(usize, bool)> {
        let queues = self.strategy_queues.lock().unwrap_or_else(|e| e.into_inner());
        queues.get(strategy).map(|(depth, lagging_at)| {
            let depth = (depth.0)();
            (depth, depth >= *lagging_at)
        })
    }

    /// Adds metrics that `render` writes in Prometheus text format after the host's own.
    pub fn add_section(&self, render: impl Fn(&mut String) + Send + Sync + 'static) {
        self.sections.lock().unwrap_or_else(|e| e.into_inner()).push(Section(Box::new(render)));
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, value: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}");
        };
        counter(&mut out, "tradehost_events_total", "Activity events published.", self.events.load(Ordering::Relaxed));
        counter(&mut out, "tradehost_fills_total", "Fills.", self.fills.load(Ordering::Relaxed));
        counter(
            &mut out,
            "tradehost_reconnects_total",
            "Exchange stream reconnects.",
            self.reconnects.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP tradehost_ws_clients Connected WebSocket clients.\n# TYPE tradehost_ws_clients gauge"
        );
        let _ = writeln!(out, "tradehost_ws_clients {}", self.ws_clients.load(Ordering::Relaxed));
        let _ = writeln!(
            out,
            "# HELP tradehost_orders_total Order state changes by outcome.\n# TYPE tradehost_orders_total counter"
        );
        for (status, n) in self.orders.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "tradehost_orders_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP tradehost_callback_seconds Strategy callback latency.\n# TYPE tradehost_callback_seconds histogram"
        );
        for (strategy, histogram) in self.callbacks.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            histogram.render(&mut out, "tradehost_callback_seconds", &format!("strategy=\"{strategy}\""));
        }
        let _ = writeln!(
            out,
            "# HELP tradehost_store_commit_seconds Store commit latency.\n# TYPE tradehost_store_commit_seconds histogram"
        );
        self.store_commit.render(&mut out, "tradehost_store_commit_seconds", "");
        let rejections = self.risk_rejections.lock().unwrap_or_else(|e| e.into_inner());
        if !rejections.is_empty() {
            out.push_str("# HELP tradehost_risk_rejections_total Orders refused by a risk limit.\n# TYPE tradehost_risk_rejections_total counter\n");
            for (limit, count) in rejections.iter() {
                let _ = writeln!(out, "tradehost_risk_rejections_total{{limit=\"{limit}\"}} {count}");
            }
        }
        drop(rejections);
        let quota_hits = self.quota_hits.lock().unwrap_or_else(|e| e.into_inner());
        out.push_str("# HELP tradehost_quota_hits_total Times a strategy met one of its quotas.\n# TYPE tradehost_quota_hits_total counter\n");
        for (strategy, hits) in quota_hits.iter() {
            for (quota, count) in hits.snapshot() {
                let _ =
                    writeln!(out, "tradehost_quota_hits_total{{strategy=\"{strategy}\",quota=\"{quota}\"}} {count}");
            }
        }
        drop(quota_hits);
        out.push_str("# HELP tradehost_strategy_queue_depth Events waiting for a strategy.\n# TYPE tradehost_strategy_queue_depth gauge\n");
        for (strategy, (depth, _)) in self.strategy_queues.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(out, "tradehost_strategy_queue_depth{{strategy=\"{strategy}\"}} {}", (depth.0)());
        }
        self.telegram.render(&mut out);
        let queues = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if !queues.is_empty() {
            out.push_str(
                "# HELP tradehost_queue_depth Items waiting in a queue.\n# TYPE tradehost_queue_depth gauge\n",
            );
            for (name, depth) in queues.iter() {
                let _ = writeln!(out, "tradehost_queue_depth{{queue=\"{name}\"}} {}", (depth.0)());
            }
        }
        drop(queues);
        for section in self.sections.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            (section.0)(&mut out);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reader_never_sees_a_partial_health_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("health.json");
        write_file_atomically(&path, b"{\"n\": 0}").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (path, stop) = (path.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut reads = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = std::fs::read_to_string(&path).unwrap();
                    let value: serde_json::Value =
                        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text:?}"));
                    assert!(value["n"].is_u64());
                    reads += 1;
                }
                reads
            })
        };
        // Files of very different sizes, so a torn read would not parse.
        for n in 1..2_000u64 {
            let padding = "x".repeat((n % 7) as usize * 4_000);
            write_file_atomically(&path, format!("{{\"n\": {n}, \"pad\": \"{padding}\"}}").as_bytes()).unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        let reads = reader.join().unwrap();
        assert!(reads > 100, "the reader ran alongside: {reads} reads");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(leftovers, vec![std::ffi::OsString::from("health.json")], "no temporary files left");
    }

    #[test]
    fn readiness_follows_components_and_shutdown() {
        let health = Health::default();
        health.register("store");
        health.register("feed");
        assert!(!health.is_ready());
        health.set("store", ComponentState::Up);
        assert_eq!(health.not_ready(), vec!["feed"]);
        health.set("feed", ComponentState::Up);
        assert!(health.is_ready());
        health.register_auxiliary("telegram");
        health.set_down("telegram", "409 Conflict");
        assert!(health.is_ready(), "an auxiliary component does not hold readiness");
        let changes = health.changes();
        health.set("feed", ComponentState::Up);
        assert!(!changes.has_changed().unwrap(), "setting the same state is no change");
        health.set("telegram", ComponentState::Up);
        assert!(changes.has_changed().unwrap());
        health.begin_shutdown();
        assert!(!health.is_ready());
    }

    #[test]
    fn a_silent_component_turns_degraded_with_reason_and_age_and_up_when_active_again() {
        let health = Health::default();
        health.register("engine");
        health.set("engine", ComponentState::Up);
        let pulse = Pulse::default();
        let busy = Arc::new(AtomicBool::new(false));
        let work = busy.clone();
        health.expect_activity(
            "engine",
            Freshness {
                pulse: pulse.clone(),
                after: Duration::from_millis(100),
                busy: Some(Box::new(move || work.load(Ordering::Relaxed))),
                what: "made no progress",
            },
        );
        pulse.beat();
        assert!(!health.check_freshness());
        std::thread::sleep(Duration::from_millis(150));
        assert!(!health.check_freshness(), "silent but idle is not stale");
        assert_eq!(health.status(), "ready");
        busy.store(true, Ordering::Relaxed);
        assert!(!health.check_freshness(), "just busy: silence counts from now");
        std::thread::sleep(Duration::from_millis(120));
        let changes = health.changes();
        assert!(health.check_freshness(), "busy and silent past the threshold");
        assert!(changes.has_changed().unwrap(), "the change is published");
        assert_eq!(health.components()["engine"], ComponentState::Degraded);
        assert_eq!(health.status(), "degraded");
        assert!(!health.is_ready() && health.is_serving() && health.not_ready().is_empty());
        let reason = &health.reasons()["engine"];
        assert!(reason.starts_with("made no progress for 0.") && reason.ends_with("(threshold 0.1 s)"), "{reason}");
        let freshness = &health.freshness()["engine"];
        assert!(freshness.age_ms.unwrap() >= 270 && freshness.stale_after_ms == Some(100), "{freshness:?}");
        health.set("engine", ComponentState::Up);
        assert_eq!(health.components()["engine"], ComponentState::Degraded, "its owner saying up does not lift it");
        // Active again: up once it has been degraded for its dwell (half the threshold).
        std::thread::sleep(Duration::from_millis(60));
        pulse.beat();
        assert!(health.check_freshness());
        assert_eq!(health.components()["engine"], ComponentState::Up);
        assert!(health.reasons().is_empty() && health.is_ready());
        // A component that never did anything is silent from when its rule was set.
        health.register("store");
        health.set("store", ComponentState::Up);
        health.expect_activity(
            "store",
            Freshness {
                pulse: Pulse::default(),
                after: Duration::from_millis(30),
                busy: None,
                what: "committed nothing",
            },
        );
        assert!(!health.check_freshness(), "the threshold runs from when the rule was set");
        std::thread::sleep(Duration::from_millis(40));
        health.check_freshness();
        assert!(health.reasons()["store"].starts_with("committed nothing for 0.0"), "{:?}", health.reasons());
        health.expect_nothing("store");
        assert_eq!(health.components()["store"], ComponentState::Up, "nothing expected: the degradation goes");
        let mut text = String::new();
        health.render_metrics(&mut text);
        assert!(text.contains("tradehost_component_up{component=\"engine\",state=\"up\"} 1"), "{text}");
        assert!(text.contains("tradehost_component_activity_age_seconds{component=\"engine\"} "), "{text}");
    }

    #[test]
    fn metrics_render_prometheus_text() {
        let metrics = Metrics::default();
        metrics.order("filled");
        metrics.callback_histogram("s").observe(Duration::from_micros(30));
        metrics.quota_hits("s").add("log_rate", 3);
        let text = metrics.render();
        assert!(text.contains("tradehost_quota_hits_total{strategy=\"s\",quota=\"log_rate\"} 3"), "{text}");
        assert!(text.contains("tradehost_orders_total{status=\"filled\"} 1"), "{text}");
        assert!(text.contains("tradehost_callback_seconds_bucket{strategy=\"s\",le=\"0.00005\"} 1"), "{text}");
        assert!(text.contains("tradehost_callback_seconds_count{strategy=\"s\"} 1"), "{text}");
    }
}
