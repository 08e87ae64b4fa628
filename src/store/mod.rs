//! Durable state in one redb file in the data dir: order intents and states,
//! fills (append-only), each strategy's positions, the paper account, each
//! strategy's `this`, the activity log and counters. One writer thread
//! applies writes in group commits; a write is reported done only after its
//! commit returned. Reads use their own read transactions.
//!
//! A lock file keeps a second host off the same data dir. A file written by
//! a newer schema is refused; an older one is migrated. A damaged file is
//! reported and left untouched — the host never starts empty over data.

mod check;
mod writer;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::model::{Candle, EquitySample, Fill, Order, Position, RunMode};

pub use check::{CheckReport, check};
pub use writer::{CommitObserver, GroupEnd, Retention, StoreWriter, WriteOp};

/// The schema this build writes. Version 1 had no `positions` table.
pub const SCHEMA_VERSION: u64 = 2;

/// Memory redb may use to cache pages. Its default (1 GiB) let the host's
/// resident memory grow with the file under heavy writes; the working set
/// (recent activity, open orders, positions, state) is far smaller.
const CACHE_BYTES: usize = 64 << 20;

pub(crate) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
pub(crate) const ORDERS: TableDefinition<&str, &[u8]> = TableDefinition::new("orders");
pub(crate) const FILLS: TableDefinition<u64, &[u8]> = TableDefinition::new("fills");
pub(crate) const POSITIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("positions");
pub(crate) const ACCOUNT: TableDefinition<&str, &[u8]> = TableDefinition::new("account");
pub(crate) const STRATEGY_STATE: TableDefinition<&str, &[u8]> = TableDefinition::new("strategy_state");
pub(crate) const ACTIVITY: TableDefinition<u64, &[u8]> = TableDefinition::new("activity");
/// Closed orders that filled nothing, by `update time|client id`: what the
/// closed-order retention prunes, oldest first.
pub(crate) const CLOSED_ORDERS: TableDefinition<&str, ()> = TableDefinition::new("closed_orders");
/// Strategies a user stopped, by name: why (kept until a user starts them again).
pub(crate) const STOPPED: TableDefinition<&str, &str> = TableDefinition::new("stopped_strategies");
/// Closed candles by `SYMBOL|timeframe|time` (time zero-padded so keys sort by time).
pub(crate) const CANDLES: TableDefinition<&str, &[u8]> = TableDefinition::new("candles");
/// The time ranges `data fetch` has asked the exchange for, by `SYMBOL|timeframe`
/// (JSON `[[from, to], …]`, ms, merged): a range asked for is not asked again, even where it had no candles.
pub(crate) const CANDLE_COVERAGE: TableDefinition<&str, &[u8]> = TableDefinition::new("candle_coverage");
/// The account's equity history: sample time (ms) → [`EquitySample`] JSON.
pub(crate) const EQUITY: TableDefinition<u64, &[u8]> = TableDefinition::new("equity");

/// Meta keys.
pub(crate) const SCHEMA_KEY: &str = "schema_version";
pub(crate) const ID_BLOCK_KEY: &str = "next_id_block";
/// Set once the closed-order index holds every closed order of older stores.
pub(crate) const CLOSED_INDEX_KEY: &str = "closed_orders_indexed";
/// Which account the store's orders and fills belong to (a [`RunMode`] code).
pub(crate) const ACCOUNT_KIND_KEY: &str = "account_kind";

/// Client order ids handed out per start; the next start begins after the block.
pub const ID_BLOCK: u64 = 1 << 32;

/// File names inside the data dir.
pub const DB_FILE: &str = "tradehost.redb";

/// Most bytes of stored activity envelopes one read returns (an API page, a
/// WebSocket replay page).
pub const ACTIVITY_PAGE_BYTES: usize = 2 << 20;
const LOCK_FILE: &str = "tradehost.lock";
/// Tries (50 ms apart) before a held lock is reported.
const LOCK_ATTEMPTS: u32 = 20;

/// Why the store cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process holds the data dir.
    #[error("another tradehost instance holds the data dir {dir} ({holder}); stop it first or use another --data-dir")]
    Locked {
        /// Data dir.
        dir: PathBuf,
        /// What the lock file says about the holder.
        holder: String,
    },
    /// The store holds another kind of account's orders and fills.
    #[error(
        "the data dir {dir} holds a {} account's orders and fills; a {} run keeps its own records: use another --data-dir (or data_dir)",
        held.as_str(), wanted.as_str()
    )]
    OtherAccount {
        /// Data dir.
        dir: PathBuf,
        /// The kind it holds.
        held: RunMode,
        /// The kind asked for.
        wanted: RunMode,
    },
    /// The file was written by a newer tradehost.
    #[error(
        "{path} was written by a newer tradehost (schema {found}; this build reads up to {supported}); upgrade tradehost"
    )]
    NewerSchema {
        /// File.
        path: PathBuf,
        /// Version in the file.
        found: u64,
        /// Newest version this build knows.
        supported: u64,
    },
    /// The file is damaged and could not be repaired.
    #[error(
        "the store {path} is damaged and was left untouched: {detail}. Restore a backup, or move the file away to start with an empty store"
    )]
    Damaged {
        /// File.
        path: PathBuf,
        /// What redb reported.
        detail: String,
    },
    /// An I/O or database error.
    #[error("store {path}: {detail}")]
    Io {
        /// File or folder.
        path: PathBuf,
        /// What failed.
        detail: String,
    },
    /// A stored record could not be decoded.
    #[error("store: cannot decode {what}: {detail}")]
    Decode {
        /// Which record.
        what: String,
        /// Reason.
        detail: String,
    },
    /// The writer thread is gone.
    #[error("store writer stopped")]
    WriterGone,
}

impl StoreError {
    /// Exit code for `tradehost run`: 2 for a held data dir (bad usage), 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            StoreError::Locked { .. } | StoreError::OtherAccount { .. } => 2,
            _ => 1,
        }
    }
}

/// An order as stored: the order manager's state of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredOrder {
    /// The order.
    pub order: Order,
}

/// Everything loaded at start.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Orders by client id.
    pub orders: BTreeMap<String, Order>,
    /// Each strategy's positions by symbol.
    pub positions: BTreeMap<String, BTreeMap<String, Position>>,
    /// The paper account, as the exchange saved it.
    pub paper_account: Option<serde_json::Value>,
    /// The trading states last set.
    pub trading: Option<crate::model::TradingStates>,
    /// Risk limits last set through the API.
    pub risk_limits: Option<serde_json::Value>,
    /// What the risk protections watched.
    pub protections: Option<serde_json::Value>,
    /// Strategy states by name.
    pub strategy_states: BTreeMap<String, serde_json::Value>,
    /// Strategies a user stopped, with the reason: they stay stopped.
    pub stopped_strategies: BTreeMap<String, String>,
    /// Highest fill id.
    pub last_fill_id: u64,
    /// Highest activity sequence number.
    pub last_activity_seq: u64,
    /// First client order id number of this start.
    pub id_block_start: u64,
}

/// The open store: holds the instance lock; reads through [`StoreReader`].
pub struct Store {
    reader: StoreReader,
    _lock: File,
}

/// Cheap, clonable read access to the store (read transactions only).
#[derive(Clone)]
pub struct StoreReader {
    db: std::sync::Arc<Database>,
    path: PathBuf,
}

impl std::ops::Deref for Store {
    type Target = StoreReader;
    fn deref(&self) -> &StoreReader {
        &self.reader
    }
}

/// Key of the closed-order index: update time, then the client id.
pub(crate) fn closed_key(updated: i64, client_id: &str) -> String {
    format!("{updated:020}|{client_id}")
}

/// True for an order the closed-order retention may prune: closed, nothing filled.
pub(crate) fn prunable(order: &Order) -> bool {
    !order.status.is_open() && order.status != crate::model::OrderStatus::Pending && order.filled.is_zero()
}

/// Key of a stored candle.
pub fn candle_key(symbol: &str, timeframe: &str, time: i64) -> String {
    format!("{symbol}|{timeframe}|{time:020}")
}

/// Key of a candle series' fetched ranges.
pub fn coverage_key(symbol: &str, timeframe: &str) -> String {
    format!("{symbol}|{timeframe}")
}

/// One stored candle series.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandleSet {
    /// Instrument.
    pub symbol: String,
    /// Timeframe as written in scripts.
    pub timeframe: String,
    /// Candle start times, ascending.
    pub times: Vec<i64>,
}

/// Key of a strategy's position.
pub fn position_key(strategy: &str, symbol: &str) -> String {
    format!("{strategy}\u{1f}{symbol}")
}

fn io(path: &Path) -> impl Fn(String) -> StoreError + '_ {
    move |detail| StoreError::Io { path: path.to_path_buf(), detail }
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8], what: impl Fn() -> String) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Decode { what: what(), detail: e.to_string() })
}

/// The host holding a data dir's lock right now (`"pid 1234"`), if any;
/// creates nothing and takes no lock it does not release at once.
pub fn running_host(dir: &Path) -> Option<String> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&path).ok()?;
    match file.try_lock() {
        Ok(()) => {
            let _ = file.unlock();
            None
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            Some(if holder.trim().is_empty() { "pid unknown".to_string() } else { holder.trim().to_string() })
        }
        Err(std::fs::TryLockError::Error(_)) => None,
    }
}

/// Takes the data dir's lock file (exclusive, released when the process ends).
fn lock(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| io(&path)(e.to_string()))?;
    // A lock held a moment longer (a previous host still exiting, a forked
    // child not yet exec'd) is waited for briefly; never forever.
    let mut attempts = 0;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if attempts < LOCK_ATTEMPTS => {
                attempts += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder =
                    if holder.trim().is_empty() { "pid unknown".to_string() } else { holder.trim().to_string() };
                return Err(StoreError::Locked { dir: dir.to_path_buf(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(&path)(e.to_string())),
        }
    }
    file.set_len(0)
        .and_then(|_| file.write_all(format!("pid {}", std::process::id()).as_bytes()))
        .map_err(|e| io(&path)(e.to_string()))?;
    Ok(file)
}

fn classify(path: &Path, error: redb::DatabaseError) -> StoreError {
    match error {
        redb::DatabaseError::Storage(redb::StorageError::Corrupted(detail)) => {
            StoreError::Damaged { path: path.into(), detail }
        }
        redb::DatabaseError::Storage(redb::StorageError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            StoreError::Damaged { path: path.into(), detail: e.to_string() }
        }
        redb::DatabaseError::RepairAborted => StoreError::Damaged { path: path.into(), detail: "repair failed".into() },
        redb::DatabaseError::UpgradeRequired(v) => StoreError::Damaged {
            path: path.into(),
            detail: format!("not a redb file this build can read (format {v})"),
        },
        other => StoreError::Io { path: path.into(), detail: other.to_string() },
    }
}

/// Makes a file or folder the host created readable by its owner only (unix).
fn owner_only(path: &Path, mode: u32) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)) {
            tracing::warn!(path = %path.display(), "cannot make it private to its owner: {error}");
        }
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
}

/// Reads every entry of every table of an existing store file through a
/// read-only handle, so not a byte is written: a file redb cannot read back
/// (or panics on), or an entry that is not the JSON it should be, is
/// damage, refused with the file named. A file that was not closed cleanly
/// needs redb's repair first, which writes: it is checked by the repair.
pub fn verify_read_only(path: &Path) -> Result<(), StoreError> {
    let damaged = |detail: String| StoreError::Damaged { path: path.to_path_buf(), detail };
    let outcome = std::panic::catch_unwind(|| -> Result<(), StoreError> {
        let db = match Database::builder().set_cache_size(CACHE_BYTES).open_read_only(path) {
            Ok(db) => db,
            Err(redb::DatabaseError::RepairAborted) => return Ok(()), // unclean shutdown: the repair checks it
            Err(error) => return Err(classify(path, error)),
        };
        verify_tables(&db).map_err(damaged)
    });
    match outcome {
        Ok(result) => result,
        Err(payload) => Err(damaged(format!("reading it failed: {}", crate::health::panic_message(payload)))),
    }
}

/// Reads every table entry and checks each stored JSON value parses.
fn verify_tables(db: &impl ReadableDatabase) -> Result<(), String> {
    fn json_table<K: redb::Key + 'static>(
        read: &redb::ReadTransaction,
        table: TableDefinition<K, &[u8]>,
    ) -> Result<(), String> {
        let name = table.to_string();
        let table = match read.open_table(table) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(()),
            Err(e) => return Err(format!("table {name}: {e}")),
        };
        for (i, entry) in table.iter().map_err(|e| format!("table {name}: {e}"))?.enumerate() {
            let (_, value) = entry.map_err(|e| format!("table {name}, entry {i}: {e}"))?;
            serde_json::from_slice::<serde::de::IgnoredAny>(value.value())
                .map_err(|e| format!("table {name}, entry {i}: not a stored value ({e})"))?;
        }
        Ok(())
    }
    let read = db.begin_read().map_err(|e| e.to_string())?;
    json_table(&read, ORDERS)?;
    json_table(&read, FILLS)?;
    json_table(&read, POSITIONS)?;
    json_table(&read, ACCOUNT)?;
    json_table(&read, STRATEGY_STATE)?;
    json_table(&read, ACTIVITY)?;
    json_table(&read, CANDLES)?;
    json_table(&read, CANDLE_COVERAGE)?;
    json_table(&read, EQUITY)?;
    for (name, result) in [
        ("meta", read.open_table(META).map(|t| t.iter().map(|i| i.count()))),
        ("stopped_strategies", read.open_table(STOPPED).map(|t| t.iter().map(|i| i.count()))),
        ("closed_orders", read.open_table(CLOSED_ORDERS).map(|t| t.iter().map(|i| i.count()))),
    ] {
        match result {
            Ok(Ok(_)) | Err(redb::TableError::TableDoesNotExist(_)) => {}
            Ok(Err(e)) => return Err(format!("table {name}: {e}")),
            Err(e) => return Err(format!("table {name}: {e}")),
        }
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the store in `dir`, taking the instance lock,
    /// checking the schema and migrating older files.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let new_dir = !dir.exists();
        std::fs::create_dir_all(dir).map_err(|e| io(dir)(e.to_string()))?;
        if new_dir {
            owner_only(dir, 0o700);
        }
        let lock = lock(dir)?;
        let path = dir.join(DB_FILE);
        let existed = path.exists();
        if existed {
            let len = std::fs::metadata(&path).map_err(|e| io(&path)(e.to_string()))?.len();
            if len == 0 {
                return Err(StoreError::Damaged { path, detail: "the file is empty".into() });
            }
        }
        if existed {
            verify_read_only(&path)?;
        }
        let mut builder = Database::builder();
        builder.set_cache_size(CACHE_BYTES);
        builder.set_repair_callback(|session| {
            tracing::warn!("the store was not closed cleanly: repairing ({:.0}%)", session.progress() * 100.0);
        });
        let db = if existed { builder.open(&path) } else { builder.create(&path) }.map_err(|e| classify(&path, e))?;
        if !existed {
            owner_only(&path, 0o600);
        }
        let store = Store { reader: StoreReader { db: std::sync::Arc::new(db), path }, _lock: lock };
        store.prepare_schema(existed)?;
        Ok(store)
    }

    /// Read access that outlives nothing: clone it freely.
    pub fn reader(&self) -> StoreReader {
        self.reader.clone()
    }

    fn prepare_schema(&self, existed: bool) -> Result<(), StoreError> {
        let err = io(&self.path);
        let found = {
            let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
            match read.open_table(META) {
                Ok(meta) => meta.get(SCHEMA_KEY).map_err(|e| err(e.to_string()))?.map(|v| v.value()),
                Err(redb::TableError::TableDoesNotExist(_)) => None,
                Err(e) => return Err(err(e.to_string())),
            }
        };
        let found = match (found, existed) {
            (Some(v), _) => v,
            (None, false) => 0,
            (None, true) => {
                return Err(StoreError::Damaged {
                    path: self.path.clone(),
                    detail: "no schema version: not a tradehost store".into(),
                });
            }
        };
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema { path: self.path.clone(), found, supported: SCHEMA_VERSION });
        }
        let write = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            // Create every table so reads never meet a missing one.
            write.open_table(ORDERS).map_err(|e| err(e.to_string()))?;
            write.open_table(FILLS).map_err(|e| err(e.to_string()))?;
            write.open_table(ACCOUNT).map_err(|e| err(e.to_string()))?;
            write.open_table(STRATEGY_STATE).map_err(|e| err(e.to_string()))?;
            write.open_table(STOPPED).map_err(|e| err(e.to_string()))?;
            write.open_table(CLOSED_ORDERS).map_err(|e| err(e.to_string()))?;
            write.open_table(ACTIVITY).map_err(|e| err(e.to_string()))?;
            write.open_table(CANDLES).map_err(|e| err(e.to_string()))?;
            write.open_table(CANDLE_COVERAGE).map_err(|e| err(e.to_string()))?;
            write.open_table(EQUITY).map_err(|e| err(e.to_string()))?;
            let mut positions = write.open_table(POSITIONS).map_err(|e| err(e.to_string()))?;
            if found == 1 {
                tracing::info!(path = %self.path.display(), "migrating the store from schema 1 to 2: building positions from fills");
                let fills = write.open_table(FILLS).map_err(|e| err(e.to_string()))?;
                for (key, position) in positions_from_fills(&fills)? {
                    let bytes = serde_json::to_vec(&position).expect("position serializes");
                    positions.insert(key.as_str(), bytes.as_slice()).map_err(|e| err(e.to_string()))?;
                }
            }
            let mut meta = write.open_table(META).map_err(|e| err(e.to_string()))?;
            meta.insert(SCHEMA_KEY, SCHEMA_VERSION).map_err(|e| err(e.to_string()))?;
            if meta.get(CLOSED_INDEX_KEY).map_err(|e| err(e.to_string()))?.is_none() {
                // Stores from before the closed-order retention: index their closed orders once.
                let orders = write.open_table(ORDERS).map_err(|e| err(e.to_string()))?;
                let mut closed = write.open_table(CLOSED_ORDERS).map_err(|e| err(e.to_string()))?;
                for entry in orders.iter().map_err(|e| err(e.to_string()))? {
                    let (key, value) = entry.map_err(|e| err(e.to_string()))?;
                    let stored: StoredOrder = decode(value.value(), || format!("order {}", key.value()))?;
                    if prunable(&stored.order) {
                        let index = closed_key(stored.order.updated, key.value());
                        closed.insert(index.as_str(), ()).map_err(|e| err(e.to_string()))?;
                    }
                }
                meta.insert(CLOSED_INDEX_KEY, 1).map_err(|e| err(e.to_string()))?;
            }
        }
        write.commit().map_err(|e| err(e.to_string()))
    }

    /// Loads everything the host needs at start and reserves this start's block
    /// of client order ids (committed before any id is used).
    pub fn recover(&self) -> Result<Recovered, StoreError> {
        let err = io(&self.path);
        let mut out = Recovered::default();
        {
            let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
            let orders = read.open_table(ORDERS).map_err(|e| err(e.to_string()))?;
            for entry in orders.iter().map_err(|e| err(e.to_string()))? {
                let (key, value) = entry.map_err(|e| err(e.to_string()))?;
                let stored: StoredOrder = decode(value.value(), || format!("order {}", key.value()))?;
                out.orders.insert(key.value().to_string(), stored.order);
            }
            let positions = read.open_table(POSITIONS).map_err(|e| err(e.to_string()))?;
            for entry in positions.iter().map_err(|e| err(e.to_string()))? {
                let (key, value) = entry.map_err(|e| err(e.to_string()))?;
                let position: Position = decode(value.value(), || format!("position {}", key.value()))?;
                let strategy = key.value().split('\u{1f}').next().unwrap_or_default().to_string();
                out.positions.entry(strategy).or_default().insert(position.symbol.clone(), position);
            }
            let account = read.open_table(ACCOUNT).map_err(|e| err(e.to_string()))?;
            if let Some(value) = account.get("paper").map_err(|e| err(e.to_string()))? {
                out.paper_account = Some(decode(value.value(), || "paper account".into())?);
            }
            if let Some(value) = account.get("trading").map_err(|e| err(e.to_string()))? {
                out.trading = Some(decode(value.value(), || "trading states".into())?);
            }
            if let Some(value) = account.get("limits").map_err(|e| err(e.to_string()))? {
                out.risk_limits = Some(decode(value.value(), || "risk limits".into())?);
            }
            if let Some(value) = account.get("protections").map_err(|e| err(e.to_string()))? {
                out.protections = Some(decode(value.value(), || "protections".into())?);
            }
            let states = read.open_table(STRATEGY_STATE).map_err(|e| err(e.to_string()))?;
            for entry in states.iter().map_err(|e| err(e.to_string()))? {
                let (key, value) = entry.map_err(|e| err(e.to_string()))?;
                out.strategy_states
                    .insert(key.value().to_string(), decode(value.value(), || format!("state of {}", key.value()))?);
            }
            let stopped = read.open_table(STOPPED).map_err(|e| err(e.to_string()))?;
            for entry in stopped.iter().map_err(|e| err(e.to_string()))? {
                let (key, value) = entry.map_err(|e| err(e.to_string()))?;
                out.stopped_strategies.insert(key.value().to_string(), value.value().to_string());
            }
            let fills = read.open_table(FILLS).map_err(|e| err(e.to_string()))?;
            out.last_fill_id = fills.last().map_err(|e| err(e.to_string()))?.map_or(0, |(k, _)| k.value());
            let activity = read.open_table(ACTIVITY).map_err(|e| err(e.to_string()))?;
            out.last_activity_seq = activity.last().map_err(|e| err(e.to_string()))?.map_or(0, |(k, _)| k.value());
        }
        let write = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let mut meta = write.open_table(META).map_err(|e| err(e.to_string()))?;
            let block = meta.get(ID_BLOCK_KEY).map_err(|e| err(e.to_string()))?.map_or(1, |v| v.value());
            meta.insert(ID_BLOCK_KEY, block + ID_BLOCK).map_err(|e| err(e.to_string()))?;
            out.id_block_start = block;
        }
        write.commit().map_err(|e| err(e.to_string()))?;
        Ok(out)
    }

    /// Claims the store for one kind of account (paper, dry-run, live):
    /// orders and fills of another kind are never mixed in. A store holding
    /// another kind's orders or fills is refused; one without any is claimed anew.
    pub fn claim_account(&self, mode: RunMode) -> Result<(), StoreError> {
        let err = io(&self.path);
        let code = |mode: RunMode| match mode {
            RunMode::Backtest => 0,
            RunMode::Paper => 1,
            RunMode::DryRun => 2,
            RunMode::Live => 3,
        };
        let write = self.db.begin_write().map_err(|e| err(e.to_string()))?;
        {
            let mut meta = write.open_table(META).map_err(|e| err(e.to_string()))?;
            let held = meta.get(ACCOUNT_KIND_KEY).map_err(|e| err(e.to_string()))?.map(|v| v.value());
            let held = [RunMode::Paper, RunMode::DryRun, RunMode::Live].into_iter().find(|m| Some(code(*m)) == held);
            let orders =
                write.open_table(ORDERS).map_err(|e| err(e.to_string()))?.len().map_err(|e| err(e.to_string()))?;
            let fills = write.open_table(FILLS).map_err(|e| err(e.to_string()))?;
            // A store from before the label: its newest fill says (live fills carry the exchange's id).
            let held = match (held, fills.last().map_err(|e| err(e.to_string()))?) {
                (Some(held), _) => Some(held),
                (None, Some((key, value))) => {
                    let fill: Fill = decode(value.value(), || format!("fill {}", key.value()))?;
                    Some(if fill.exchange_id.is_some() { RunMode::Live } else { RunMode::Paper })
                }
                (None, None) => None,
            };
            let records = orders + fills.len().map_err(|e| err(e.to_string()))?;
            if let Some(held) = held.filter(|held| *held != mode && records > 0) {
                let dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
                return Err(StoreError::OtherAccount { dir, held, wanted: mode });
            }
            meta.insert(ACCOUNT_KIND_KEY, code(mode)).map_err(|e| err(e.to_string()))?;
        }
        write.commit().map_err(|e| err(e.to_string()))
    }

    /// Starts the writer thread.
    pub fn writer(&self, retention: Retention) -> StoreWriter {
        StoreWriter::start(self.db.clone(), self.path.clone(), retention, None)
    }

    /// Starts the writer thread, reporting each commit's duration.
    pub fn observed_writer(&self, retention: Retention, observer: CommitObserver) -> StoreWriter {
        StoreWriter::start(self.db.clone(), self.path.clone(), retention, Some(observer))
    }
}

impl StoreReader {
    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The newest `limit` fills, oldest first.
    pub fn recent_fills(&self, limit: usize) -> Result<Vec<Fill>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(FILLS).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.to_string()))?.rev().take(limit) {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("fill {}", key.value()))?);
        }
        out.reverse();
        Ok(out)
    }

    /// The newest `limit` stored candles of a symbol and timeframe, oldest first.
    pub fn candles(&self, symbol: &str, timeframe: &str, limit: usize) -> Result<Vec<Candle>, StoreError> {
        self.candles_before(symbol, timeframe, i64::MAX, limit)
    }

    /// The newest `limit` stored candles of a symbol and timeframe starting
    /// before `to` (ms), oldest first.
    pub fn candles_before(
        &self,
        symbol: &str,
        timeframe: &str,
        to: i64,
        limit: usize,
    ) -> Result<Vec<Candle>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(CANDLES).map_err(|e| err(e.to_string()))?;
        let (from, to) = (candle_key(symbol, timeframe, 0), candle_key(symbol, timeframe, to.max(0)));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(|e| err(e.to_string()))?.rev().take(limit) {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("candle {}", key.value()))?);
        }
        out.reverse();
        Ok(out)
    }

    /// The equity samples taken in `[from, to)`, oldest first, thinned to at
    /// most `points` evenly spread ones (the newest always kept) when there are more.
    pub fn equity_between(&self, from: i64, to: i64, points: usize) -> Result<Vec<EquitySample>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(EQUITY).map_err(|e| err(e.to_string()))?;
        let (from, to) = (from.max(0) as u64, to.max(0) as u64);
        if from >= to || points == 0 {
            return Ok(Vec::new());
        }
        let range = table.range(from..to).map_err(|e| err(e.to_string()))?;
        let total = table.range(from..to).map_err(|e| err(e.to_string()))?.count();
        // Every `stride`-th sample counted back from the newest.
        let stride = total.div_ceil(points).max(1);
        let mut out = Vec::with_capacity(total.min(points));
        for (i, entry) in range.enumerate() {
            if (total - 1 - i) % stride != 0 {
                continue;
            }
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("equity sample {}", key.value()))?);
        }
        Ok(out)
    }

    /// Stored candles of a symbol and timeframe starting in `[from, to)`, oldest first.
    pub fn candles_between(
        &self,
        symbol: &str,
        timeframe: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<Candle>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(CANDLES).map_err(|e| err(e.to_string()))?;
        let (from, to) = (candle_key(symbol, timeframe, from.max(0)), candle_key(symbol, timeframe, to.max(0)));
        let mut out = Vec::new();
        for entry in table.range(from.as_str()..to.as_str()).map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("candle {}", key.value()))?);
        }
        Ok(out)
    }

    /// Every stored candle series: symbol, timeframe and the start times of
    /// its candles (ascending).
    pub fn candle_sets(&self) -> Result<Vec<CandleSet>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(CANDLES).map_err(|e| err(e.to_string()))?;
        let mut out: Vec<CandleSet> = Vec::new();
        for entry in table.iter().map_err(|e| err(e.to_string()))? {
            let (key, _) = entry.map_err(|e| err(e.to_string()))?;
            let mut parts = key.value().rsplitn(3, '|');
            let (Some(time), Some(timeframe), Some(symbol)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let Ok(time) = time.parse::<i64>() else { continue };
            match out.last_mut() {
                Some(set) if set.symbol == symbol && set.timeframe == timeframe => set.times.push(time),
                _ => out.push(CandleSet { symbol: symbol.into(), timeframe: timeframe.into(), times: vec![time] }),
            }
        }
        Ok(out)
    }

    /// The ranges `data fetch` has asked the exchange for (ms, merged, ascending).
    pub fn candle_coverage(&self, symbol: &str, timeframe: &str) -> Result<Vec<(i64, i64)>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(CANDLE_COVERAGE).map_err(|e| err(e.to_string()))?;
        let key = coverage_key(symbol, timeframe);
        match table.get(key.as_str()).map_err(|e| err(e.to_string()))? {
            Some(value) => decode(value.value(), || format!("candle coverage {key}")),
            None => Ok(Vec::new()),
        }
    }

    /// The newest stored candle of a symbol over every timeframe (by close
    /// time), with its timeframe's length in milliseconds.
    pub fn last_candle(&self, symbol: &str) -> Result<Option<(Candle, i64)>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(CANDLES).map_err(|e| err(e.to_string()))?;
        let (from, to) = (format!("{symbol}|"), format!("{symbol}}}"));
        let mut newest: Option<(Candle, i64)> = None;
        let mut timeframe = String::new();
        // Keys sort by timeframe, then time: the last key of each timeframe is its newest candle.
        for entry in table.range(from.as_str()..to.as_str()).map_err(|e| err(e.to_string()))?.rev() {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            let Some(tf) = key.value().split('|').nth(1) else { continue };
            if tf == timeframe {
                continue;
            }
            timeframe = tf.to_string();
            let Ok(length) = tf.parse::<crate::data::Timeframe>() else { continue };
            let candle: Candle = decode(value.value(), || format!("candle {}", key.value()))?;
            if newest.as_ref().is_none_or(|(c, ms)| candle.time + length.ms() > c.time + ms) {
                newest = Some((candle, length.ms()));
            }
        }
        Ok(newest)
    }

    /// Every stored order (open and closed), by client id.
    pub fn orders(&self) -> Result<Vec<Order>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(ORDERS).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            let stored: StoredOrder = decode(value.value(), || format!("order {}", key.value()))?;
            out.push(stored.order);
        }
        Ok(out)
    }

    /// Fills with an id greater than `id`, oldest first.
    pub fn fills_after(&self, id: u64) -> Result<Vec<Fill>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(FILLS).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for entry in table.range(id.saturating_add(1)..).map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("fill {}", key.value()))?);
        }
        Ok(out)
    }

    /// Every fill, oldest first.
    pub fn fills(&self) -> Result<Vec<Fill>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(FILLS).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        for entry in table.iter().map_err(|e| err(e.to_string()))? {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            out.push(decode(value.value(), || format!("fill {}", key.value()))?);
        }
        Ok(out)
    }

    /// Activity events after `since` (raw JSON envelopes), at most `limit`.
    ///
    /// A page holds at most [`ACTIVITY_PAGE_BYTES`] of envelopes (always at
    /// least one event), however large `limit`: read on with the last `seq`.
    pub fn activity_since(&self, since: u64, limit: usize) -> Result<Vec<serde_json::Value>, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        let table = read.open_table(ACTIVITY).map_err(|e| err(e.to_string()))?;
        let mut out = Vec::new();
        let mut bytes = 0;
        for entry in table.range(since.saturating_add(1)..).map_err(|e| err(e.to_string()))?.take(limit) {
            let (key, value) = entry.map_err(|e| err(e.to_string()))?;
            bytes += value.value().len();
            if bytes > ACTIVITY_PAGE_BYTES && !out.is_empty() {
                break;
            }
            out.push(decode(value.value(), || format!("activity {}", key.value()))?);
        }
        Ok(out)
    }

    /// Number of stored activity events.
    pub fn activity_len(&self) -> Result<u64, StoreError> {
        let err = io(&self.path);
        let read = self.db.begin_read().map_err(|e| err(e.to_string()))?;
        read.open_table(ACTIVITY).map_err(|e| err(e.to_string()))?.len().map_err(|e| err(e.to_string()))
    }

    pub(crate) fn database(&self) -> &Database {
        &self.db
    }
}

/// Net positions per strategy and symbol, recomputed from a fills table.
pub(crate) fn positions_from_fills(
    fills: &impl ReadableTable<u64, &'static [u8]>,
) -> Result<BTreeMap<String, Position>, StoreError> {
    let mut positions: BTreeMap<String, Position> = BTreeMap::new();
    for entry in fills.iter().map_err(|e| StoreError::Io { path: PathBuf::new(), detail: e.to_string() })? {
        let (key, value) = entry.map_err(|e| StoreError::Io { path: PathBuf::new(), detail: e.to_string() })?;
        let fill: Fill = decode(value.value(), || format!("fill {}", key.value()))?;
        positions
            .entry(position_key(&fill.strategy, &fill.symbol))
            .or_insert_with(|| Position::flat(&fill.symbol))
            .apply(fill.side, fill.size, fill.price);
    }
    Ok(positions)
}
