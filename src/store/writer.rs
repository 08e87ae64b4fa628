//! The single writer: one thread applies queued writes in group commits.
//! Each submission may carry a callback that runs after its commit returned
//! (or failed), so nothing is reported as durable before it is. Activity
//! retention is enforced here in small chunks, off the hot path.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use redb::{Database, ReadableTable, ReadableTableMetadata};

use super::{
    ACCOUNT, ACTIVITY, CANDLE_COVERAGE, CANDLES, CLOSED_ORDERS, EQUITY, FILLS, ORDERS, POSITIONS, STOPPED,
    STRATEGY_STATE, StoreError, StoredOrder, candle_key, closed_key, coverage_key, position_key, prunable,
};
use crate::model::{Fill, Order, Position};

/// Most submissions folded into one commit.
const MAX_GROUP: usize = 4096;
/// Fewest activity rows a commit may prune; under load a commit prunes
/// twice what it wrote, so retention keeps up with any rate.
const PRUNE_CHUNK: u64 = 512;

/// One write.
#[derive(Debug, Clone)]
pub enum WriteOp {
    /// Insert or replace an order's state.
    Order(Order),
    /// Append a fill (its `id` is the key).
    Fill(Fill),
    /// A strategy's position after a fill.
    Position {
        /// Strategy.
        strategy: String,
        /// The position.
        position: Position,
    },
    /// The paper exchange's account and book.
    PaperAccount(serde_json::Value),
    /// The trading states in force (a halted host comes back halted).
    Trading(crate::model::TradingStates),
    /// Risk limits set through the API (they replace the config file's from then on).
    RiskLimits(serde_json::Value),
    /// What the risk protections watch: daily baselines, peaks, losing exits, what they imposed.
    Protections(serde_json::Value),
    /// A strategy's `this`.
    StrategyState {
        /// Strategy.
        strategy: String,
        /// The state.
        state: serde_json::Value,
    },
    /// A user stopped a strategy (`Some(reason)`: it stays stopped across
    /// restarts) or started it again (`None`).
    StrategyStopped {
        /// Strategy.
        strategy: String,
        /// Why it was stopped; `None` clears it.
        reason: Option<String>,
    },
    /// A closed candle (cache for warm-up and backtests).
    Candle {
        /// Its timeframe, as written in scripts (`1m`).
        timeframe: String,
        /// The candle.
        candle: crate::model::Candle,
    },
    /// Fetched history: candles (kept, whatever `candles_keep` says) and the
    /// range that was asked for, merged into the series' coverage in the same commit.
    History {
        /// Instrument.
        symbol: String,
        /// Timeframe as written in scripts.
        timeframe: String,
        /// The candles (already checked).
        candles: Vec<crate::model::Candle>,
        /// `[from, to)` ms asked for.
        asked: (i64, i64),
    },
    /// A sample of the account's equity history.
    Equity(crate::model::EquitySample),
    /// An activity event envelope under its sequence number.
    Activity {
        /// Sequence number.
        seq: u64,
        /// The envelope as JSON text, stored as it is.
        envelope: String,
    },
}

/// How much of what grows without end the store keeps: the activity log,
/// closed orders that filled nothing, and cached candles.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Retention {
    /// Most activity events kept (0: no limit).
    pub keep: u64,
    /// Activity events this much older than the newest one are pruned (0: no limit).
    pub max_age_ms: i64,
    /// Bytes of activity envelopes kept, oldest pruned first (0: no limit).
    pub max_bytes: u64,
    /// Closed orders that filled nothing (cancelled, rejected, expired) are
    /// pruned once this much older than the newest order written (0: kept).
    /// Orders with fills are kept, as are the fills and positions.
    pub closed_orders_ms: i64,
    /// Most cached candles kept per symbol and timeframe (0: no limit).
    pub candles_keep: u64,
}

/// Observes how long each group commit took.
pub type CommitObserver = Box<dyn Fn(std::time::Duration) + Send>;

/// Runs after a commit with its outcome.
pub type OnCommit = Box<dyn FnOnce(Result<(), Arc<StoreError>>) + Send>;

/// Runs on the writer thread once the callbacks of a group commit have run
/// (to act once per group on what they did, e.g. broadcast a batch).
pub type GroupEnd = Arc<dyn Fn() + Send + Sync>;

struct Submission {
    ops: Vec<WriteOp>,
    on_commit: Option<OnCommit>,
}

enum Message {
    Write(Submission),
    Stop,
}

/// Runs once if the writer thread panics, with the panic's message.
pub type OnPanic = Box<dyn FnOnce(String) + Send>;

/// A cheap handle to the writer thread. Its queue is unbounded: every
/// producer is async (the engine, the activity bus) or a strategy thread
/// that must not block on disk, and the engine waits for the commits that
/// matter (order intents, outcomes), so only fire-and-forget writes (candles,
/// activity, strategy state) can pile up; [`StoreWriter::queue_depth`] exports the depth.
#[derive(Clone)]
pub struct StoreWriter {
    tx: Sender<Message>,
    thread: Arc<std::sync::Mutex<Option<JoinHandle<()>>>>,
    group_end: Arc<std::sync::Mutex<Option<GroupEnd>>>,
    on_panic: Arc<std::sync::Mutex<Option<OnPanic>>>,
    /// Milliseconds each commit waits before it starts (a fault tests inject).
    commit_delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

impl StoreWriter {
    pub(super) fn start(
        db: Arc<Database>,
        path: PathBuf,
        retention: Retention,
        observer: Option<CommitObserver>,
    ) -> StoreWriter {
        let (tx, rx) = crossbeam_channel::unbounded();
        let group_end: Arc<std::sync::Mutex<Option<GroupEnd>>> = Default::default();
        let hook = group_end.clone();
        let on_panic: Arc<std::sync::Mutex<Option<OnPanic>>> = Default::default();
        let panicked = on_panic.clone();
        let commit_delay_ms: Arc<std::sync::atomic::AtomicU64> = Default::default();
        let delay = commit_delay_ms.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    run(&db, &path, &rx, retention, observer, &hook, &delay)
                }));
                if let Err(payload) = outcome {
                    let message = crate::health::panic_message(payload);
                    tracing::error!("the store writer panicked: {message}");
                    if let Some(report) = panicked.lock().unwrap_or_else(|e| e.into_inner()).take() {
                        report(message);
                    }
                }
            })
            .expect("spawn the store writer thread");
        StoreWriter { tx, thread: Arc::new(std::sync::Mutex::new(Some(thread))), group_end, on_panic, commit_delay_ms }
    }

    /// Makes every commit wait `delay` before it starts: a fault tests inject
    /// to widen the window between a change and its commit.
    pub fn delay_commits(&self, delay: std::time::Duration) {
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.commit_delay_ms.store(millis, std::sync::atomic::Ordering::Relaxed);
    }

    /// Sets what runs if the writer thread panics (writes fail from then on).
    pub fn set_on_panic(&self, report: OnPanic) {
        *self.on_panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
    }

    /// Reads how many submissions wait for the writer.
    pub fn queue_depth(&self) -> crate::health::QueueDepth {
        let tx = self.tx.clone();
        crate::health::QueueDepth::new(move || tx.len())
    }

    /// Sets what runs after the callbacks of every group commit.
    pub fn set_group_end(&self, hook: GroupEnd) {
        *self.group_end.lock().unwrap_or_else(|e| e.into_inner()) = Some(hook);
    }

    /// Queues writes; `on_commit` runs on the writer thread once they are durable.
    pub fn submit(&self, ops: Vec<WriteOp>, on_commit: Option<OnCommit>) {
        if let Err(crossbeam_channel::SendError(Message::Write(submission))) =
            self.tx.send(Message::Write(Submission { ops, on_commit }))
            && let Some(on_commit) = submission.on_commit
        {
            on_commit(Err(Arc::new(StoreError::WriterGone)));
        }
    }

    /// Queues writes and waits (asynchronously) until they are committed.
    pub async fn commit(&self, ops: Vec<WriteOp>) -> Result<(), Arc<StoreError>> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.submit(ops, Some(Box::new(move |result| drop(done.send(result)))));
        wait.await.unwrap_or(Err(Arc::new(StoreError::WriterGone)))
    }

    /// Queues writes and blocks the calling (non-async) thread until committed.
    pub fn commit_blocking(&self, ops: Vec<WriteOp>) -> Result<(), Arc<StoreError>> {
        let (done, wait) = std::sync::mpsc::channel();
        self.submit(ops, Some(Box::new(move |result| drop(done.send(result)))));
        wait.recv().unwrap_or(Err(Arc::new(StoreError::WriterGone)))
    }

    /// Waits until everything queued so far is committed.
    pub async fn flush(&self) -> Result<(), Arc<StoreError>> {
        self.commit(Vec::new()).await
    }

    /// Commits what is queued, then stops the thread and waits for it.
    /// Later submissions fail with [`StoreError::WriterGone`].
    pub fn close(self) {
        let _ = self.tx.send(Message::Stop);
        let thread = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(thread) = thread {
            let _ = thread.join();
        }
    }
}

fn run(
    db: &Database,
    path: &Path,
    rx: &Receiver<Message>,
    retention: Retention,
    observer: Option<CommitObserver>,
    group_end: &std::sync::Mutex<Option<GroupEnd>>,
    commit_delay_ms: &std::sync::atomic::AtomicU64,
) {
    let mut activity_bytes = match activity_size(db) {
        Ok(bytes) => bytes,
        Err(error) => {
            tracing::error!("cannot measure the stored activity ({error}): its size limit counts from now");
            0
        }
    };
    let mut stopping = false;
    while !stopping {
        let Ok(Message::Write(first)) = rx.recv() else { break };
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(Message::Write(next)) => group.push(next),
                Ok(Message::Stop) => {
                    stopping = true;
                    break;
                }
                Err(_) => break,
            }
        }
        let delay = commit_delay_ms.load(std::sync::atomic::Ordering::Relaxed);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        let started = std::time::Instant::now();
        let result = apply(db, &group, retention, &mut activity_bytes)
            .map_err(|detail| Arc::new(StoreError::Io { path: path.to_path_buf(), detail }));
        if let Some(observe) = &observer {
            observe(started.elapsed());
        }
        if let Err(error) = &result {
            tracing::error!("store commit failed: {error}");
        }
        for submission in group {
            if let Some(on_commit) = submission.on_commit {
                on_commit(result.clone());
            }
        }
        let hook = group_end.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(hook) = hook {
            hook();
        }
    }
}

/// Bytes of the stored activity envelopes.
fn activity_size(db: &Database) -> Result<u64, String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let txn = redb::ReadableDatabase::begin_read(db).map_err(|x| e(&x))?;
    let activity = match txn.open_table(ACTIVITY) {
        Ok(table) => table,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(0),
        Err(x) => return Err(e(&x)),
    };
    let mut bytes = 0;
    for entry in activity.iter().map_err(|x| e(&x))? {
        bytes += entry.map_err(|x| e(&x))?.1.value().len() as u64;
    }
    Ok(bytes)
}

fn apply(db: &Database, group: &[Submission], retention: Retention, activity_bytes: &mut u64) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Display| e.to_string();
    let txn = db.begin_write().map_err(|x| e(&x))?;
    let mut pending_activity_bytes = None;
    {
        let mut orders = txn.open_table(ORDERS).map_err(|x| e(&x))?;
        let mut fills = txn.open_table(FILLS).map_err(|x| e(&x))?;
        let mut positions = txn.open_table(POSITIONS).map_err(|x| e(&x))?;
        let mut account = txn.open_table(ACCOUNT).map_err(|x| e(&x))?;
        let mut states = txn.open_table(STRATEGY_STATE).map_err(|x| e(&x))?;
        let mut stopped = txn.open_table(STOPPED).map_err(|x| e(&x))?;
        let mut activity = txn.open_table(ACTIVITY).map_err(|x| e(&x))?;
        let mut candles = txn.open_table(CANDLES).map_err(|x| e(&x))?;
        let mut coverage = txn.open_table(CANDLE_COVERAGE).map_err(|x| e(&x))?;
        let mut closed = txn.open_table(CLOSED_ORDERS).map_err(|x| e(&x))?;
        let mut equity = txn.open_table(EQUITY).map_err(|x| e(&x))?;
        let mut activity_written = 0u64;
        let mut activity_bytes_written = 0u64;
        let mut newest_order: Option<i64> = None;
        for op in group.iter().flat_map(|s| &s.ops) {
            match op {
                WriteOp::Order(order) => {
                    let bytes = to_bytes(&StoredOrder { order: order.clone() });
                    orders.insert(order.request.client_id.as_str(), bytes.as_slice()).map_err(|x| e(&x))?;
                    newest_order = Some(newest_order.map_or(order.updated, |t| t.max(order.updated)));
                    if prunable(order) {
                        let key = closed_key(order.updated, &order.request.client_id);
                        closed.insert(key.as_str(), ()).map_err(|x| e(&x))?;
                    }
                }
                WriteOp::Fill(fill) => {
                    fills.insert(fill.id, to_bytes(fill).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::Position { strategy, position } => {
                    let key = position_key(strategy, &position.symbol);
                    positions.insert(key.as_str(), to_bytes(position).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::PaperAccount(value) => {
                    account.insert("paper", to_bytes(value).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::Trading(trading) => {
                    account.insert("trading", to_bytes(trading).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::RiskLimits(limits) => {
                    account.insert("limits", to_bytes(limits).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::Protections(protections) => {
                    account.insert("protections", to_bytes(protections).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::StrategyState { strategy, state } => {
                    states.insert(strategy.as_str(), to_bytes(state).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::StrategyStopped { strategy, reason: Some(reason) } => {
                    stopped.insert(strategy.as_str(), reason.as_str()).map_err(|x| e(&x))?;
                }
                WriteOp::StrategyStopped { strategy, reason: None } => {
                    stopped.remove(strategy.as_str()).map_err(|x| e(&x))?;
                }
                WriteOp::Candle { timeframe, candle } => {
                    let key = candle_key(&candle.symbol, timeframe, candle.time);
                    candles.insert(key.as_str(), to_bytes(candle).as_slice()).map_err(|x| e(&x))?;
                    // Minute and longer candles are history (`data fetch` keeps them too): never pruned.
                    if retention.candles_keep > 0
                        && let Ok(length) = timeframe.parse::<crate::data::Timeframe>()
                        && length < crate::data::Timeframe::minute()
                    {
                        let span = length.ms().saturating_mul((retention.candles_keep - 1).min(i64::MAX as u64) as i64);
                        let (from, to) = (
                            candle_key(&candle.symbol, timeframe, 0),
                            candle_key(&candle.symbol, timeframe, candle.time.saturating_sub(span).max(0)),
                        );
                        let expired: Vec<String> = candles
                            .range(from.as_str()..to.as_str())
                            .map_err(|x| e(&x))?
                            .take(PRUNE_CHUNK as usize)
                            .map(|entry| entry.map(|(key, _)| key.value().to_string()))
                            .collect::<Result<_, _>>()
                            .map_err(|x| e(&x))?;
                        for key in expired {
                            candles.remove(key.as_str()).map_err(|x| e(&x))?;
                        }
                    }
                }
                WriteOp::History { symbol, timeframe, candles: fetched, asked } => {
                    for candle in fetched {
                        let key = candle_key(symbol, timeframe, candle.time);
                        candles.insert(key.as_str(), to_bytes(candle).as_slice()).map_err(|x| e(&x))?;
                    }
                    let key = coverage_key(symbol, timeframe);
                    let known: Vec<(i64, i64)> = match coverage.get(key.as_str()).map_err(|x| e(&x))? {
                        Some(value) => serde_json::from_slice(value.value()).map_err(|x| e(&x))?,
                        None => Vec::new(),
                    };
                    let merged = crate::data::history::cover(&known, *asked);
                    coverage.insert(key.as_str(), to_bytes(&merged).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::Equity(sample) => {
                    equity.insert(sample.time.max(0) as u64, to_bytes(sample).as_slice()).map_err(|x| e(&x))?;
                }
                WriteOp::Activity { seq, envelope } => {
                    activity.insert(*seq, envelope.as_bytes()).map_err(|x| e(&x))?;
                    activity_written += 1;
                    activity_bytes_written += envelope.len() as u64;
                }
            }
        }
        if activity_written > 0 {
            let mut bytes = *activity_bytes + activity_bytes_written;
            prune(&mut activity, retention, activity_written, &mut bytes).map_err(|x| e(&x))?;
            // Counted only once committed (a failed commit leaves the table as it was).
            pending_activity_bytes = Some(bytes);
        }
        if let Some(newest) = newest_order.filter(|_| retention.closed_orders_ms > 0) {
            prune_closed_orders(&mut orders, &mut closed, newest - retention.closed_orders_ms).map_err(|x| e(&x))?;
        }
    }
    txn.commit().map_err(|x| e(&x))?;
    if let Some(bytes) = pending_activity_bytes {
        *activity_bytes = bytes;
    }
    Ok(())
}

/// Drops closed orders that filled nothing and were last updated before
/// `cutoff`, oldest first, at most [`PRUNE_CHUNK`] per commit.
fn prune_closed_orders(
    orders: &mut redb::Table<&str, &[u8]>,
    closed: &mut redb::Table<&str, ()>,
    cutoff: i64,
) -> Result<(), redb::StorageError> {
    let end = closed_key(cutoff.max(0), "");
    let mut expired = Vec::new();
    for entry in closed.range(..end.as_str())?.take(PRUNE_CHUNK as usize) {
        expired.push(entry?.0.value().to_string());
    }
    for key in expired {
        closed.remove(key.as_str())?;
        let Some((_, client_id)) = key.split_once('|') else { continue };
        // Only if it is still closed with nothing filled: a late fill of a
        // cancelled order keeps the order.
        let still_prunable = match orders.get(client_id)? {
            Some(value) => serde_json::from_slice::<StoredOrder>(value.value()).is_ok_and(|s| prunable(&s.order)),
            None => false,
        };
        if still_prunable {
            orders.remove(client_id)?;
        }
    }
    Ok(())
}

/// Drops the oldest activity events beyond the count, age or size limit:
/// at least [`PRUNE_CHUNK`] and twice the `written` rows per commit, so
/// retention keeps up under any load while no commit pauses for long.
/// `bytes` is the table's envelope bytes, updated for what is dropped.
fn prune(
    activity: &mut redb::Table<u64, &[u8]>,
    retention: Retention,
    written: u64,
    bytes: &mut u64,
) -> Result<(), redb::StorageError> {
    let Some(first) = activity.first()?.map(|(k, _)| k.value()) else { return Ok(()) };
    let over_count = match retention.keep {
        0 => 0,
        keep => activity.len()?.saturating_sub(keep),
    };
    // Age on the run's own clock: the newest event's time, not the wall clock.
    let cutoff = match retention.max_age_ms {
        0 => None,
        age => activity.last()?.and_then(|(_, value)| envelope_ms(value.value())).map(|newest| newest - age),
    };
    let chunk = PRUNE_CHUNK.max(written.saturating_mul(2));
    let (mut cut, mut dropped, mut dropped_bytes) = (first, 0u64, 0u64);
    for entry in activity.range(first..)?.take(chunk as usize) {
        let (key, value) = entry?;
        let size = value.value().len() as u64;
        let over_size = retention.max_bytes > 0 && bytes.saturating_sub(dropped_bytes) > retention.max_bytes;
        let too_old = || cutoff.is_some_and(|cutoff| envelope_ms(value.value()).is_none_or(|ts| ts < cutoff));
        if dropped < over_count || over_size || too_old() {
            cut = key.value() + 1;
            dropped += 1;
            dropped_bytes += size;
        } else {
            break;
        }
    }
    if cut > first {
        activity.retain_in(first..cut, |_, _| false)?;
        *bytes = bytes.saturating_sub(dropped_bytes);
    }
    Ok(())
}

/// The time of a stored activity envelope.
fn envelope_ms(envelope: &[u8]) -> Option<i64> {
    let value = serde_json::from_slice::<serde_json::Value>(envelope).ok()?;
    chrono::DateTime::parse_from_rfc3339(value["ts"].as_str()?).ok().map(|t| t.timestamp_millis())
}

fn to_bytes<T: serde::Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("stored values serialize")
}
