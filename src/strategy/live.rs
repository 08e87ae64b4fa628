//! A strategy on its own OS thread: events in through a channel, commands out
//! through a sink, lifecycle reports to the supervisor. Timers run on the
//! run's clock. Nothing here touches the tokio runtime's workers.
//!
//! The event queue is bounded by policy rather than by the channel: candles,
//! orders, fills and timers must all arrive (the engine cannot wait on a
//! strategy), so they are always queued; with `queue_limit` events queued the
//! strategy is lagging and its ticks are coalesced to the latest per symbol;
//! a strategy [`OVERFLOW_FACTOR`] times over the limit cannot keep up and
//! fails (its restart replays the fills it missed from the store). A stop
//! goes ahead of everything queued. The report channel is unbounded because
//! the thread must never block on the loop that is stopping it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use tokio::sync::mpsc::UnboundedSender;

use super::{
    OrderIds, Strategy, StrategyCommand, StrategyContext, StrategyEnv, StrategyError, StrategyEvent, StrategyFactory,
};
use crate::model::AccountView;

/// Stack of a strategy thread: room for deep (but limited) script recursion.
const STACK_BYTES: usize = 32 * 1024 * 1024;

/// A strategy with this many times `queue_limit` events queued fails as
/// unable to keep up.
pub const OVERFLOW_FACTOR: usize = 16;

/// Input to a running strategy.
#[derive(Debug)]
pub enum RuntimeInput {
    /// A market or order event.
    Event(Box<StrategyEvent>),
    /// The latest tick of a symbol, kept aside while the strategy lags.
    LatestTick(String),
    /// New source for a hot reload.
    Reload(String),
    /// Run `on_stop` and exit.
    Stop,
}

/// Why a runtime ended.
#[derive(Debug, Clone, PartialEq)]
pub enum ExitReason {
    /// Asked to stop.
    Stopped,
    /// Could not be built (compile error, bad `config()`).
    StartFailed(StrategyError),
    /// Too many callbacks failed in a row.
    Failed(StrategyError),
}

/// What a runtime tells the supervisor.
#[derive(Debug)]
pub enum RuntimeReport {
    /// Built, history loaded, `on_start` called.
    Started,
    /// A callback failed (the strategy keeps running).
    CallbackFailed {
        /// Callback name.
        callback: &'static str,
        /// The error.
        error: StrategyError,
    },
    /// A hot reload was applied.
    Reloaded,
    /// A hot reload was refused; the old version keeps running.
    ReloadRejected(StrategyError),
    /// The thread ended; `state` is the last `this`.
    Exited {
        /// Why.
        reason: ExitReason,
        /// Exported state, if it could be exported.
        state: Option<serde_json::Value>,
    },
}

/// A report tagged with the runtime that sent it.
#[derive(Debug)]
pub struct TaggedReport {
    /// Strategy name.
    pub name: String,
    /// Which start of the strategy (stale reports are ignored).
    pub generation: u64,
    /// The report.
    pub report: RuntimeReport,
}

/// Gives a starting strategy its warm-up candles of every timeframe it
/// reads, once its symbols and timeframes are known.
pub type HistoryLoader = Box<dyn FnOnce(&super::StrategyMeta) -> Vec<crate::data::TimedCandle> + Send>;

/// Receives a strategy's state (`this`) when it changed, for the store.
pub type StateSink = Arc<dyn Fn(&str, serde_json::Value) + Send + Sync>;

/// Receives the commands a strategy produced after each callback.
pub type CommandSink = Arc<dyn Fn(&str, Vec<StrategyCommand>) + Send + Sync>;

/// How to start one strategy thread.
pub struct RuntimeSpec {
    /// The run's clock: `now()`, timers.
    pub clock: crate::clock::Clock,
    /// How the run trades (`exchange::mode()`).
    pub mode: crate::model::RunMode,
    /// Strategy name.
    pub name: String,
    /// Start counter.
    pub generation: u64,
    /// Builds the strategy.
    pub factory: StrategyFactory,
    /// Candles to preload per symbol, for indicator warm-up.
    pub history: HistoryLoader,
    /// State from a previous run.
    pub initial_state: Option<serde_json::Value>,
    /// Account snapshot.
    pub account: Arc<ArcSwap<AccountView>>,
    /// Order id generator.
    pub ids: OrderIds,
    /// Commands go here.
    pub sink: CommandSink,
    /// Reports go here.
    pub reports: UnboundedSender<TaggedReport>,
    /// Consecutive failures before the runtime gives up.
    pub max_consecutive_errors: u32,
    /// Events queued before ticks are dropped.
    pub queue_limit: usize,
    /// Where changed state goes (none: state is not persisted).
    pub state_sink: Option<StateSink>,
    /// Longest delay before changed state is handed to the sink.
    pub state_flush_ms: u64,
    /// Records each callback's duration.
    pub callback_latency: Option<Arc<crate::health::Histogram>>,
    /// Stored fills the saved state has not seen, delivered after `on_start`
    /// (none: no replay and no de-duplication of fills).
    pub replay: Option<FillReplay>,
    /// What the strategy may make the host keep (`[sandbox]` quotas).
    pub quotas: super::Quotas,
}

/// Given the last fill id a saved state reflects (`None`: no saved state),
/// returns the id to continue from and the strategy's stored fills after it.
pub type FillReplay = Box<dyn FnOnce(Option<u64>) -> (u64, Vec<crate::model::Fill>) + Send>;

/// A cheap controller of a running strategy thread.
pub struct RuntimeHandle {
    name: String,
    tx: Sender<RuntimeInput>,
    release: Sender<()>,
    abort: Arc<AtomicBool>,
    queue_limit: usize,
    coalesced_ticks: AtomicU64,
    flow: Arc<Flow>,
    meta: Arc<ArcSwap<Option<super::StrategyMeta>>>,
    thread: Option<JoinHandle<()>>,
}

impl RuntimeHandle {
    /// Tells the runtime it is registered for events: it may now read the
    /// fills to replay (a fill stored later reaches it as an event).
    pub fn release(&self) {
        let _ = self.release.try_send(());
    }

    /// Delivers an event. While the strategy lags (`queue_limit` events
    /// queued) ticks are coalesced to the latest per symbol; everything else
    /// is always delivered, until the strategy is [`OVERFLOW_FACTOR`] times
    /// over the limit and fails (nothing more is queued for it).
    pub fn send_event(&self, event: StrategyEvent) {
        if self.flow.overflowed.load(Ordering::Relaxed) {
            return;
        }
        let depth = self.tx.len();
        if depth >= self.queue_limit.saturating_mul(OVERFLOW_FACTOR) {
            self.flow.overflowed.store(true, Ordering::SeqCst);
            tracing::error!(strategy = %self.name, depth, "the strategy cannot keep up: it fails and restarts");
            let _ = self.tx.send(RuntimeInput::Stop);
            return;
        }
        if let StrategyEvent::Tick(tick) = event {
            if depth >= self.queue_limit {
                let coalesced = self.coalesced_ticks.fetch_add(1, Ordering::Relaxed) + 1;
                if coalesced == 1 || coalesced.is_multiple_of(10_000) {
                    tracing::warn!(strategy = %self.name, depth, coalesced, "the strategy lags behind the market: ticks coalesced to the latest (candles, orders and fills never are)");
                }
                let symbol = tick.symbol.clone();
                let fresh = self.flow.latest.lock().unwrap_or_else(|e| e.into_inner()).insert(symbol.clone(), tick);
                if fresh.is_none() {
                    let _ = self.tx.send(RuntimeInput::LatestTick(symbol));
                }
                return;
            }
            let _ = self.tx.send(RuntimeInput::Event(Box::new(StrategyEvent::Tick(tick))));
            return;
        }
        let _ = self.tx.send(RuntimeInput::Event(Box::new(event)));
    }

    /// Events waiting for the strategy.
    pub fn queue_depth(&self) -> usize {
        self.tx.len()
    }

    /// True while the strategy lags: `queue_limit` or more events wait.
    pub fn lagging(&self) -> bool {
        self.tx.len() >= self.queue_limit
    }

    /// Asks for a hot reload.
    pub fn reload(&self, source: String) {
        let _ = self.tx.send(RuntimeInput::Reload(source));
    }

    /// Asks the strategy to run `on_stop` and exit, ahead of the events it
    /// has queued (the fills among them are replayed at its next start).
    pub fn stop(&self) {
        self.flow.stopping.store(true, Ordering::SeqCst);
        let _ = self.tx.send(RuntimeInput::Stop);
    }

    /// Stops the current callback at its next operation and ends the thread.
    pub fn abort(&self) {
        self.abort.store(true, Ordering::SeqCst);
        let _ = self.tx.send(RuntimeInput::Stop);
    }

    /// Symbols and timeframe, once the strategy is built.
    pub fn meta(&self) -> Option<super::StrategyMeta> {
        self.meta.load().as_ref().clone()
    }

    /// True if the strategy trades `symbol` (and, for candles, reads `timeframe`).
    pub fn wants(&self, symbol: &str, timeframe: Option<crate::data::Timeframe>) -> bool {
        match self.meta.load().as_ref() {
            Some(meta) => {
                (meta.symbols.is_empty() || meta.symbols.iter().any(|s| s == symbol))
                    && timeframe.is_none_or(|tf| tf == meta.timeframe || meta.timeframes.contains(&tf))
            }
            None => false,
        }
    }

    /// The event that delivers a closed candle to this strategy: its own
    /// timeframe's candle, or a candle of another timeframe it reads.
    pub fn candle_event(&self, timed: &crate::data::TimedCandle) -> Option<StrategyEvent> {
        if !self.wants(&timed.candle.symbol, Some(timed.timeframe)) {
            return None;
        }
        let own = self.meta.load().as_ref().as_ref().is_some_and(|m| m.timeframe == timed.timeframe);
        Some(if own {
            StrategyEvent::Candle(timed.candle.clone())
        } else {
            StrategyEvent::OtherCandle(timed.timeframe, timed.candle.clone())
        })
    }

    /// True once the thread has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(|t| t.is_finished())
    }

    /// Strategy name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for RuntimeHandle {
    fn drop(&mut self) {
        if let Some(thread) = self.thread.take()
            && !thread.is_finished()
        {
            self.abort.store(true, Ordering::SeqCst);
            let _ = self.tx.send(RuntimeInput::Stop);
        }
    }
}

/// Starts a strategy on its own thread.
pub fn spawn(spec: RuntimeSpec) -> std::io::Result<RuntimeHandle> {
    let (tx, rx) = crossbeam_channel::unbounded();
    let (release, released) = crossbeam_channel::bounded(1);
    let abort = Arc::new(AtomicBool::new(false));
    let meta = Arc::new(ArcSwap::from_pointee(None));
    let flow = Arc::new(Flow::default());
    let name = spec.name.clone();
    let queue_limit = spec.queue_limit;
    let thread = {
        let abort = abort.clone();
        let meta = meta.clone();
        let flow = flow.clone();
        let (reports, generation) = (spec.reports.clone(), spec.generation);
        let tag = name.clone();
        std::thread::Builder::new().name(format!("strategy-{name}")).stack_size(STACK_BYTES).spawn(move || {
            // A panic (a bug in a host function, not a script error) ends the
            // thread as a failure: the supervisor restarts it with backoff and
            // quarantines it like any other failing strategy.
            let outcome =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(spec, rx, released, abort, meta, flow)));
            if let Err(payload) = outcome {
                let message = crate::health::panic_message(payload);
                let error = StrategyError::new(format!("the strategy's thread panicked: {message}"));
                let report = RuntimeReport::Exited { reason: ExitReason::Failed(error), state: None };
                let _ = reports.send(TaggedReport { name: tag, generation, report });
            }
        })?
    };
    Ok(RuntimeHandle {
        name,
        tx,
        release,
        abort,
        queue_limit,
        coalesced_ticks: AtomicU64::new(0),
        flow,
        meta,
        thread: Some(thread),
    })
}

/// What a running strategy watches besides its queue: the abort flag, where
/// its metadata is published, and the event flow it shares with its handle.
#[derive(Clone, Copy)]
struct Signals<'a> {
    abort: &'a AtomicBool,
    meta_out: &'a ArcSwap<Option<super::StrategyMeta>>,
    flow: &'a Flow,
}

/// What the handle and the runtime thread share about the event flow.
#[derive(Debug, Default)]
struct Flow {
    /// A stop was asked for: it goes ahead of queued events.
    stopping: AtomicBool,
    /// The queue overflowed: the strategy fails as unable to keep up.
    overflowed: AtomicBool,
    /// The latest tick per symbol, while ticks are coalesced.
    latest: std::sync::Mutex<std::collections::HashMap<String, crate::model::Tick>>,
}

/// Hands changed state to the sink, at most every `flush` and always at exit.
struct StatePersistence {
    sink: Option<StateSink>,
    flush: Duration,
    saved: Option<serde_json::Value>,
    dirty_since: Option<Instant>,
    last_error: Option<String>,
}

impl StatePersistence {
    fn touch(&mut self) {
        if self.sink.is_some() {
            self.dirty_since.get_or_insert_with(Instant::now);
        }
    }

    fn due(&self) -> Option<Instant> {
        self.dirty_since.map(|since| since + self.flush)
    }

    /// Exports and hands on the state (with the last fill it reflects) if it
    /// changed and fits in `max_bytes` as JSON; an export error is returned
    /// once per distinct message.
    fn flush(
        &mut self,
        name: &str,
        strategy: &dyn Strategy,
        fills_through: Option<u64>,
        quotas: &mut super::Quotas,
    ) -> Flushed {
        self.dirty_since = None;
        let Some(sink) = self.sink.as_ref() else { return Flushed::Unchanged };
        match strategy.export_state().map(|this| super::SavedState { this, fills_through }.encode()) {
            Ok(state) if self.saved.as_ref() != Some(&state) => {
                if let Err(message) = quotas.state(json_size(&state)) {
                    return Flushed::TooLarge(StrategyError::new(message));
                }
                sink(name, state.clone());
                self.saved = Some(state);
                self.last_error = None;
                Flushed::Saved
            }
            Ok(_) => Flushed::Unchanged,
            Err(error) if self.last_error.as_deref() != Some(error.message.as_str()) => {
                self.last_error = Some(error.message.clone());
                Flushed::Failed(StrategyError::new(format!("state not saved: {}", error.message)))
            }
            Err(_) => Flushed::Unchanged,
        }
    }

    /// The last `this` that was saved (or restored at start).
    fn last_good(&self) -> serde_json::Value {
        let saved = self.saved.clone().map(super::SavedState::decode);
        saved.map_or_else(|| serde_json::json!({}), |s| s.this)
    }
}

/// What a state flush did.
enum Flushed {
    /// Handed to the sink.
    Saved,
    /// Nothing to save (or an export error already reported).
    Unchanged,
    /// The state could not be exported.
    Failed(StrategyError),
    /// The state is over `sandbox.max_state_bytes`.
    TooLarge(StrategyError),
}

/// Bytes of `value` as compact JSON, counted without building the text.
fn json_size(value: &serde_json::Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

fn run(
    spec: RuntimeSpec,
    rx: Receiver<RuntimeInput>,
    released: Receiver<()>,
    abort: Arc<AtomicBool>,
    meta_out: Arc<ArcSwap<Option<super::StrategyMeta>>>,
    flow: Arc<Flow>,
) {
    let queue_limit = spec.queue_limit;
    let RuntimeSpec {
        clock,
        mode,
        name,
        generation,
        factory,
        history,
        initial_state,
        account,
        ids,
        sink,
        reports,
        max_consecutive_errors,
        state_sink,
        state_flush_ms,
        callback_latency,
        replay,
        quotas,
        ..
    } = spec;
    let saved = initial_state.clone().map(super::SavedState::decode);
    let mut ctx = StrategyContext::new(&name, account, ids, 5_000);
    ctx.quotas = quotas;
    ctx.mode = mode;
    let ctx = ctx.shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: abort.clone(), initial_state: saved.clone().map(|s| s.this) };
    let strategy = match factory(env) {
        Ok(strategy) => strategy,
        Err(error) => {
            let report = RuntimeReport::Exited { reason: ExitReason::StartFailed(error), state: None };
            let _ = reports.send(TaggedReport { name, generation, report });
            return;
        }
    };
    let meta = strategy.meta();
    meta_out.store(Arc::new(Some(meta.clone())));
    for timed in history(&meta) {
        let mut c = ctx.borrow_mut();
        if timed.timeframe == meta.timeframe {
            c.market.push_candle(timed.candle);
        } else {
            c.market.push_other(timed.timeframe, timed.candle);
        }
    }
    let mut runner = Runner {
        persistence: StatePersistence {
            sink: state_sink,
            flush: Duration::from_millis(state_flush_ms),
            saved: initial_state,
            dirty_since: None,
            last_error: None,
        },
        name,
        generation,
        strategy,
        ctx,
        clock,
        sink,
        reports,
        callback_latency,
        max_consecutive_errors,
        failures: 0,
        fills_through: None,
    };
    let signals = Signals { abort: &abort, meta_out: &meta_out, flow: &flow };
    let reason = runner.run(&rx, &released, replay, saved.and_then(|s| s.fills_through), signals);
    let reason = if flow.overflowed.load(Ordering::SeqCst) {
        ExitReason::Failed(StrategyError::new(format!(
            "cannot keep up: {} events queued ({OVERFLOW_FACTOR} × supervisor.event_queue = {queue_limit}); restarted to catch up",
            rx.len()
        )))
    } else {
        reason
    };
    runner.finish(reason);
}

/// A strategy on its own thread: delivers events and timers to it, counts
/// its failures in a row, and keeps its saved state current.
struct Runner {
    name: String,
    generation: u64,
    strategy: Box<dyn Strategy>,
    ctx: super::SharedContext,
    clock: crate::clock::Clock,
    sink: CommandSink,
    reports: UnboundedSender<TaggedReport>,
    callback_latency: Option<Arc<crate::health::Histogram>>,
    max_consecutive_errors: u32,
    failures: u32,
    persistence: StatePersistence,
    /// The last fill `this` reflects: fills up to it are never delivered again.
    fills_through: Option<u64>,
}

impl Runner {
    fn report(&self, report: RuntimeReport) {
        let _ = self.reports.send(TaggedReport { name: self.name.clone(), generation: self.generation, report });
    }

    /// `on_start`, the fills missed while it was down, then events and timers
    /// until it is stopped or fails; returns why it ended.
    fn run(
        &mut self,
        rx: &Receiver<RuntimeInput>,
        released: &Receiver<()>,
        replay: Option<FillReplay>,
        saved_through: Option<u64>,
        signals: Signals<'_>,
    ) -> ExitReason {
        let Signals { abort, meta_out, flow } = signals;
        if let Some(error) = self.deliver(StrategyEvent::Start) {
            return ExitReason::Failed(error);
        }
        self.persistence.touch();
        self.report(RuntimeReport::Started);
        if let Some(replay) = replay {
            // Read the stored fills only once registered for live ones: none falls in between.
            let _ = released.recv_timeout(Duration::from_secs(10));
            let (from, missed) = replay(saved_through);
            self.fills_through = Some(from);
            for fill in missed {
                if let Some(error) = self.deliver(StrategyEvent::Fill(fill)) {
                    return ExitReason::Failed(error);
                }
            }
        }
        loop {
            if abort.load(Ordering::SeqCst) || flow.overflowed.load(Ordering::SeqCst) {
                return ExitReason::Stopped;
            }
            if flow.stopping.load(Ordering::SeqCst) {
                self.deliver(StrategyEvent::Stop);
                return ExitReason::Stopped;
            }
            let input = match self.wake_at() {
                Some(deadline) => match rx.recv_deadline(deadline) {
                    Ok(input) => Some(input),
                    Err(RecvTimeoutError::Timeout) => None,
                    Err(RecvTimeoutError::Disconnected) => return ExitReason::Stopped,
                },
                None => match rx.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return ExitReason::Stopped,
                },
            };
            let failed = match input {
                Some(RuntimeInput::Event(event)) => {
                    self.persistence.touch();
                    self.deliver(*event)
                }
                Some(RuntimeInput::LatestTick(symbol)) => {
                    let tick = flow.latest.lock().unwrap_or_else(|e| e.into_inner()).remove(&symbol);
                    self.persistence.touch();
                    tick.and_then(|tick| self.deliver(StrategyEvent::Tick(tick)))
                }
                Some(RuntimeInput::Reload(source)) => {
                    self.reload(&source, meta_out);
                    None
                }
                Some(RuntimeInput::Stop) => {
                    if !abort.load(Ordering::SeqCst) {
                        self.deliver(StrategyEvent::Stop);
                    }
                    return ExitReason::Stopped;
                }
                None => None,
            };
            if let Some(error) = failed.or_else(|| self.fire_timers()) {
                return ExitReason::Failed(error);
            }
            if self.persistence.due().is_some_and(|due| due <= Instant::now())
                && let Some(error) = self.save_state()
            {
                return ExitReason::Failed(error);
            }
        }
    }

    /// When to stop waiting for input: the next timer or state save, if any.
    fn wake_at(&self) -> Option<Instant> {
        let timer_due = self.ctx.borrow().timers.next_due().map(|due| Instant::now() + self.clock.wall_until(due));
        [timer_due, self.persistence.due()].into_iter().flatten().min()
    }

    /// Delivers one event; returns the error that ends the run (too many failures in a row).
    fn deliver(&mut self, event: StrategyEvent) -> Option<StrategyError> {
        if let StrategyEvent::Fill(fill) = &event {
            if self.fills_through.is_some_and(|through| fill.id <= through) {
                return None;
            }
            if self.fills_through.is_some() {
                self.fills_through = Some(fill.id);
            }
        }
        let callback = event.callback();
        {
            let mut c = self.ctx.borrow_mut();
            c.now = self.clock.now_ms();
            c.begin_event(&event);
            match &event {
                StrategyEvent::Candle(candle) => c.market.push_candle(candle.clone()),
                StrategyEvent::OtherCandle(timeframe, candle) => c.market.push_other(*timeframe, candle.clone()),
                StrategyEvent::Tick(tick) => c.market.push_tick(tick.clone()),
                _ => {}
            }
        }
        let started = Instant::now();
        let mut result = self.strategy.handle(&event);
        if let (Some(histogram), Ok(true)) = (&self.callback_latency, &result) {
            histogram.observe(started.elapsed());
        }
        let quota_failure = self.ctx.borrow_mut().end_callback();
        if let (Some(message), Ok(_)) = (quota_failure, &result) {
            result = Err(StrategyError::new(format!("{callback}: {message}")));
        }
        let commands = self.ctx.borrow_mut().drain();
        if !commands.is_empty() {
            (self.sink)(&self.name, commands);
        }
        match result {
            Ok(ran) => {
                if ran {
                    self.failures = 0;
                }
                None
            }
            Err(error) => {
                self.failures += 1;
                self.report(RuntimeReport::CallbackFailed { callback, error: error.clone() });
                (self.failures >= self.max_consecutive_errors).then_some(error)
            }
        }
    }

    /// Delivers the timers due by the clock, earliest first.
    fn fire_timers(&mut self) -> Option<StrategyError> {
        let due = self.ctx.borrow_mut().timers.take_due(self.clock.now_ms());
        for timer in due {
            self.persistence.touch();
            if let Some(error) = self.deliver(StrategyEvent::Timer(timer)) {
                return Some(error);
            }
        }
        None
    }

    /// Swaps in a new version, or keeps the running one and reports why not.
    fn reload(&mut self, source: &str, meta_out: &ArcSwap<Option<super::StrategyMeta>>) {
        match self.strategy.reload(source) {
            Ok(()) => {
                meta_out.store(Arc::new(Some(self.strategy.meta())));
                self.persistence.touch();
                self.report(RuntimeReport::Reloaded)
            }
            Err(error) => self.report(RuntimeReport::ReloadRejected(error)),
        }
    }

    /// Hands changed state to the sink; an export error is reported. A
    /// state over its quota is not saved: the strategy gets its last good
    /// state back and the callback counts as failed (the error that ends the
    /// run, after too many in a row, is returned).
    fn save_state(&mut self) -> Option<StrategyError> {
        let flushed = {
            let quotas = &mut self.ctx.borrow_mut().quotas;
            self.persistence.flush(&self.name, self.strategy.as_ref(), self.fills_through, quotas)
        };
        match flushed {
            Flushed::Saved | Flushed::Unchanged => None,
            Flushed::Failed(error) => {
                self.report(RuntimeReport::CallbackFailed { callback: "state", error });
                None
            }
            Flushed::TooLarge(error) => {
                self.strategy.restore_state(self.persistence.last_good());
                self.failures += 1;
                self.report(RuntimeReport::CallbackFailed { callback: "state", error: error.clone() });
                (self.failures >= self.max_consecutive_errors).then_some(error)
            }
        }
    }

    /// Saves the final state and reports the exit.
    fn finish(mut self, reason: ExitReason) {
        self.persistence.touch();
        self.save_state();
        let state = self
            .strategy
            .export_state()
            .ok()
            .map(|this| super::SavedState { this, fills_through: self.fills_through }.encode());
        self.report(RuntimeReport::Exited { reason, state });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Candle;
    use crate::strategy::{Strategy, StrategyMeta};

    /// A runtime for `factory` with the usual limits and no persistence.
    fn test_spec(
        name: &str,
        clock: crate::clock::Clock,
        factory: StrategyFactory,
        sink: CommandSink,
        reports: UnboundedSender<TaggedReport>,
    ) -> RuntimeSpec {
        RuntimeSpec {
            mode: crate::model::RunMode::Paper,
            clock,
            name: name.into(),
            generation: 7,
            factory,
            history: Box::new(|_| Vec::new()),
            initial_state: None,
            account: Default::default(),
            ids: crate::strategy::OrderIds::new(name, Default::default()),
            sink,
            reports,
            max_consecutive_errors: 5,
            queue_limit: 16,
            state_sink: None,
            state_flush_ms: 250,
            callback_latency: None,
            replay: None,
            quotas: Default::default(),
        }
    }

    /// A strategy whose `on_candle` hits a bug in the host (a panic).
    struct Buggy;

    impl Strategy for Buggy {
        fn handle(&mut self, event: &StrategyEvent) -> Result<bool, StrategyError> {
            match event {
                StrategyEvent::Candle(_) => panic!("index out of bounds in a host function"),
                _ => Ok(true),
            }
        }
        fn meta(&self) -> StrategyMeta {
            StrategyMeta::new(vec!["X".into()], crate::data::Timeframe::minute())
        }
    }

    #[test]
    fn a_panicking_strategy_thread_reports_a_failure_instead_of_dying_silently() {
        let (reports, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let spec = test_spec(
            "buggy",
            crate::clock::Clock::wall(),
            Box::new(|_| Ok(Box::new(Buggy) as _)),
            Arc::new(|_, _| {}),
            reports,
        );
        let handle = spawn(spec).unwrap();
        handle.release();
        let candle = Candle { symbol: "X".into(), time: 0, open: 1.0, high: 1.0, low: 1.0, close: 1.0, volume: 1.0 };
        handle.send_event(StrategyEvent::Candle(candle));
        let deadline = Instant::now() + Duration::from_secs(10);
        let exit = loop {
            match rx.try_recv() {
                Ok(TaggedReport { report: RuntimeReport::Exited { reason, .. }, generation, .. }) => {
                    break (reason, generation);
                }
                Ok(_) => {}
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Err(e) => panic!("no exit report: {e}"),
            }
        };
        match exit {
            (ExitReason::Failed(error), 7) => {
                assert!(error.message.contains("panicked: index out of bounds in a host function"), "{error}")
            }
            (other, generation) => panic!("expected a failure of generation 7, got {other:?} of {generation}"),
        }
    }

    /// Sets an hourly timer at start and logs what wakes it.
    struct Hourly(crate::strategy::SharedContext);

    impl Strategy for Hourly {
        fn handle(&mut self, event: &StrategyEvent) -> Result<bool, StrategyError> {
            let mut c = self.0.borrow_mut();
            let message = match event {
                StrategyEvent::Start => {
                    let now = c.now;
                    c.timers.every("hourly", now, 3_600_000);
                    return Ok(true);
                }
                StrategyEvent::Timer(name) => format!("{name} at {}", c.now),
                StrategyEvent::Tick(tick) => format!("tick at {}", tick.time),
                _ => return Ok(true),
            };
            c.commands.push(StrategyCommand::Log { level: crate::strategy::LogLevel::Info, message });
            Ok(true)
        }
        fn meta(&self) -> StrategyMeta {
            StrategyMeta::new(vec!["X".into()], crate::data::Timeframe::minute())
        }
    }

    fn tick_at(time: i64) -> StrategyEvent {
        let one = rust_decimal::Decimal::ONE;
        StrategyEvent::Tick(crate::model::Tick { symbol: "X".into(), time, bid: one, ask: one, last: one, volume: one })
    }

    #[test]
    fn timers_fire_when_the_injected_clock_is_moved_not_when_wall_time_passes() {
        let clock = crate::clock::Clock::manual(0);
        let (logs_tx, logs) = crossbeam_channel::unbounded();
        let (reports, mut started) = tokio::sync::mpsc::unbounded_channel();
        let sink: CommandSink = Arc::new(move |_, commands| {
            for command in commands {
                if let StrategyCommand::Log { message, .. } = command {
                    let _ = logs_tx.send(message);
                }
            }
        });
        let spec =
            test_spec("hourly", clock.clone(), Box::new(|env| Ok(Box::new(Hourly(env.ctx)) as _)), sink, reports);
        let handle = spawn(spec).unwrap();
        handle.release();
        // `on_start` sets the timer at the clock's time: wait until it has run.
        assert!(matches!(started.blocking_recv(), Some(TaggedReport { report: RuntimeReport::Started, .. })));
        let next = || logs.recv_timeout(Duration::from_secs(10)).expect("a log line");
        // A minute short of the hour: an event is handled, the timer is not due.
        clock.advance(3_540_000);
        handle.send_event(tick_at(3_540_000));
        assert_eq!(next(), "tick at 3540000", "no timer before its time");
        // The hour: the timer fires at once, at the clock's time.
        clock.advance(60_000);
        assert_eq!(next(), "hourly at 3600000");
        // Three hours later in one move: a late repeating timer fires once, not three times.
        clock.advance(3 * 3_600_000);
        assert_eq!(next(), "hourly at 14400000");
        handle.send_event(tick_at(14_400_000));
        assert_eq!(next(), "tick at 14400000");
        handle.stop();
    }
}
