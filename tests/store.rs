//! The store: group commit under concurrent writers and a real crash, schema
//! checks and migration, the single-instance lock, damaged files, integrity.

use std::collections::BTreeSet;
use std::process::Command;
use std::sync::Arc;

use redb::{Database, TableDefinition};
use rust_decimal::Decimal;
use tradehost::model::{Fill, Liquidity, Order, OrderKind, OrderRequest, Side, TimeInForce};
use tradehost::store::{self, Store, StoreError, WriteOp};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn order(id: &str) -> Order {
    Order::new(
        OrderRequest {
            client_id: id.into(),
            strategy: "s".into(),
            symbol: "BTCUSD".into(),
            side: Side::Buy,
            kind: OrderKind::Market,
            size: d("1"),
            price: None,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only: false,
            stop: None,
            oco: None,
            parent: None,
        },
        0,
    )
}

fn fill(id: u64, order_id: &str, side: Side, size: &str, price: &str) -> Fill {
    Fill {
        id,
        order_id: order_id.into(),
        strategy: "s".into(),
        symbol: "BTCUSD".into(),
        side,
        size: d(size),
        price: d(price),
        fee: Decimal::ZERO,
        liquidity: Liquidity::Taker,
        time: 0,
        exchange_id: None,
    }
}

const CHILD_ENV: &str = "TRADEHOST_STORE_CRASH_CHILD";

/// Child half of the crash test: concurrent writers print every fill id whose
/// commit returned, then the process aborts without any cleanup.
#[test]
fn crash_child_writes_then_aborts() {
    let Ok(dir) = std::env::var(CHILD_ENV) else { return };
    let store = Store::open(std::path::Path::new(&dir)).unwrap();
    let writer = store.writer(Default::default());
    writer.commit_blocking(vec![WriteOp::Order(order("o"))]).unwrap();
    let acked = Arc::new(std::sync::Mutex::new(0u64));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let writer = writer.clone();
            let acked = acked.clone();
            std::thread::spawn(move || {
                for i in 0..10_000u64 {
                    let id = t * 100_000 + i + 1;
                    writer.commit_blocking(vec![WriteOp::Fill(fill(id, "o", Side::Buy, "0.001", "100"))]).unwrap();
                    println!("acked {id}");
                    let mut n = acked.lock().unwrap();
                    *n += 1;
                    if *n == 3_000 {
                        std::process::abort();
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

#[test]
fn group_commit_loses_nothing_acknowledged_when_the_process_crashes() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "crash_child_writes_then_aborts", "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success(), "the child must crash");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let acked: BTreeSet<u64> =
        stdout.lines().filter_map(|l| l.strip_prefix("acked ")).map(|n| n.parse().unwrap()).collect();
    // Lines printed just before the abort may be lost with stdout's buffer; every printed one was acknowledged.
    assert!(acked.len() >= 2_000, "only {} acked", acked.len());
    let store = Store::open(dir.path()).unwrap();
    let stored: BTreeSet<u64> = store.fills().unwrap().into_iter().map(|f| f.id).collect();
    let missing: Vec<_> = acked.difference(&stored).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged fills missing after the crash, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(5)]
    );
}

#[test]
fn a_newer_schema_is_refused_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    drop(Store::open(dir.path()).unwrap());
    {
        let db = Database::open(dir.path().join(store::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("meta")).unwrap().insert("schema_version", 99).unwrap();
        txn.commit().unwrap();
    }
    let error = Store::open(dir.path()).err().expect("refused");
    assert!(matches!(error, StoreError::NewerSchema { found: 99, .. }));
    let message = error.to_string();
    assert!(
        message.contains("newer tradehost") && message.contains("schema 99") && message.contains("up to 2"),
        "{message}"
    );
}

#[test]
fn a_schema_1_store_is_migrated_and_positions_are_built_from_fills() {
    let dir = tempfile::tempdir().unwrap();
    {
        let db = Database::create(dir.path().join(store::DB_FILE)).unwrap();
        let txn = db.begin_write().unwrap();
        txn.open_table(TableDefinition::<&str, u64>::new("meta")).unwrap().insert("schema_version", 1).unwrap();
        {
            let mut orders = txn.open_table(TableDefinition::<&str, &[u8]>::new("orders")).unwrap();
            let bytes = serde_json::to_vec(&serde_json::json!({ "order": order("a") })).unwrap();
            orders.insert("a", bytes.as_slice()).unwrap();
            let mut fills = txn.open_table(TableDefinition::<u64, &[u8]>::new("fills")).unwrap();
            for f in [fill(1, "a", Side::Buy, "2", "100"), fill(2, "a", Side::Sell, "0.5", "110")] {
                fills.insert(f.id, serde_json::to_vec(&f).unwrap().as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }
    let store = Store::open(dir.path()).unwrap();
    let recovered = store.recover().unwrap();
    let position = &recovered.positions["s"]["BTCUSD"];
    assert_eq!((position.size, position.entry_price, position.realized_pnl), (d("1.5"), d("100"), d("5")));
    let report = store::check(&store).unwrap();
    assert!(report.problems.is_empty(), "{:?}", report.problems);
    assert_eq!(report.fills, 2);
}

#[test]
fn a_second_open_of_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _first = Store::open(dir.path()).unwrap();
    let error = Store::open(dir.path()).err().expect("refused");
    assert!(matches!(error, StoreError::Locked { .. }));
    assert!(error.to_string().contains("another tradehost instance holds the data dir"), "{error}");
    assert_eq!(error.exit_code(), 2);
}

fn file_bytes(dir: &std::path::Path) -> Vec<u8> {
    std::fs::read(dir.join(store::DB_FILE)).unwrap()
}

#[test]
fn a_corrupted_file_is_reported_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(store::DB_FILE), vec![0xAB; 64 * 1024]).unwrap();
    let before = file_bytes(dir.path());
    let error = Store::open(dir.path()).err().expect("refused");
    assert!(matches!(error, StoreError::Damaged { .. }), "{error:?}");
    assert!(error.to_string().contains("damaged and was left untouched"), "{error}");
    assert_eq!(file_bytes(dir.path()), before, "the damaged file was modified");
}

#[test]
fn a_truncated_file_is_reported_and_never_replaced_by_an_empty_store() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let writer = store.writer(Default::default());
        let ops: Vec<WriteOp> = (1..=500).map(|i| WriteOp::Fill(fill(i, "a", Side::Buy, "1", "100"))).collect();
        writer.commit_blocking(ops).unwrap();
        writer.close();
    }
    let path = dir.path().join(store::DB_FILE);
    let len = std::fs::metadata(&path).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 3).unwrap();
    let before = file_bytes(dir.path());
    match Store::open(dir.path()) {
        Err(error) => {
            assert!(matches!(error, StoreError::Damaged { .. } | StoreError::Io { .. }), "{error:?}");
            assert_eq!(file_bytes(dir.path()), before, "a file that could not be opened was modified");
        }
        Ok(store) => {
            // If redb could repair it, the data that survived must still be there: never silently empty.
            assert!(!store.fills().unwrap().is_empty(), "the store came back empty");
        }
    }
    std::fs::write(&path, b"").unwrap();
    let error = Store::open(dir.path()).err().expect("an empty file is not a store");
    assert!(error.to_string().contains("damaged"), "{error}");
}

#[test]
fn check_finds_positions_that_do_not_match_fills_and_orphan_fills() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.writer(Default::default());
    let mut wrong = tradehost::model::Position::flat("BTCUSD");
    wrong.size = d("5");
    writer
        .commit_blocking(vec![
            WriteOp::Order(order("a")),
            WriteOp::Fill(fill(1, "a", Side::Buy, "1", "100")),
            WriteOp::Fill(fill(2, "ghost", Side::Buy, "1", "100")),
            WriteOp::Position { strategy: "s".into(), position: wrong },
            WriteOp::Activity { seq: 1, envelope: "{}".into() },
            WriteOp::Activity { seq: 3, envelope: "{}".into() },
        ])
        .unwrap();
    let report = store::check(&store).unwrap();
    let text = report.problems.join("\n");
    assert!(text.contains("order ghost, which is not stored"), "{text}");
    assert!(text.contains("position s/BTCUSD is 5"), "{text}");
    assert!(text.contains("activity sequence jumps from 1 to 3"), "{text}");
}

#[test]
fn client_order_id_blocks_never_overlap_across_starts() {
    let dir = tempfile::tempdir().unwrap();
    let first = Store::open(dir.path()).unwrap().recover().unwrap().id_block_start;
    let second = Store::open(dir.path()).unwrap().recover().unwrap().id_block_start;
    assert!(second >= first + store::ID_BLOCK);
}

#[test]
fn activity_retention_prunes_by_count_and_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let event = |seq: u64, days_ago: i64| {
        WriteOp::Activity {
        seq,
        envelope: serde_json::json!({ "seq": seq, "ts": (chrono::Utc::now() - chrono::Duration::days(days_ago)).to_rfc3339() })
            .to_string(),
    }
    };
    let writer = store.writer(store::Retention { max_age_ms: 7 * 86_400_000, ..Default::default() });
    let old: Vec<WriteOp> = (1..=10).map(|seq| event(seq, 30)).collect();
    writer.commit_blocking(old).unwrap();
    writer.commit_blocking((11..=15).map(|seq| event(seq, 0)).collect()).unwrap();
    let kept: Vec<u64> = store.activity_since(0, 100).unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(kept, (11..=15).collect::<Vec<_>>(), "events older than a week are pruned");
    writer.close();

    let writer = store.writer(store::Retention { keep: 3, ..Default::default() });
    writer.commit_blocking(vec![event(16, 0)]).unwrap();
    let kept: Vec<u64> = store.activity_since(0, 100).unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(kept, vec![14, 15, 16], "only the newest 3 are kept");
    assert_eq!(store.activity_len().unwrap(), 3);
    writer.close();

    // Under load (commits far larger than the usual prune chunk) the count limit holds after every commit.
    let writer = store.writer(store::Retention { keep: 1_000, ..Default::default() });
    for batch in 0..5u64 {
        let first = 17 + batch * 3_000;
        writer.commit_blocking((first..first + 3_000).map(|seq| event(seq, 0)).collect()).unwrap();
        assert!(store.activity_len().unwrap() <= 1_000, "{} rows after commit {batch}", store.activity_len().unwrap());
    }
    writer.close();

    // The size limit: about 1 MB of 1 KB envelopes, the newest kept, also across a reopen.
    let padded = |seq: u64| WriteOp::Activity {
        seq,
        envelope: serde_json::json!({ "seq": seq, "ts": chrono::Utc::now().to_rfc3339(), "pad": "p".repeat(1_000) })
            .to_string(),
    };
    let writer = store.writer(store::Retention { max_bytes: 1 << 20, ..Default::default() });
    writer.commit_blocking((20_000..22_000).map(padded).collect()).unwrap();
    let rows = store.activity_len().unwrap();
    assert!((900..=1_050).contains(&rows), "about 1 MB of 1 KB events kept: {rows}");
    writer.close();
    let writer = store.writer(store::Retention { max_bytes: 1 << 19, ..Default::default() });
    writer.commit_blocking(vec![padded(22_000)]).unwrap();
    let rows = store.activity_len().unwrap();
    assert!((450..=530).contains(&rows), "the size already stored counts after a reopen: {rows}");
    let newest = store.activity_since(21_990, 100).unwrap();
    assert_eq!(newest.last().unwrap()["seq"], 22_000, "the newest are the ones kept");
    writer.close();
}

#[test]
fn closed_orders_that_filled_nothing_and_old_candles_are_pruned_the_rest_is_kept() {
    use tradehost::model::{Candle, Order, OrderKind, OrderRequest, OrderStatus, Side, TimeInForce};
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let day = 86_400_000;
    let order = |id: &str, status: OrderStatus, filled: &str, updated: i64| {
        let request = OrderRequest {
            client_id: id.into(),
            strategy: "mm".into(),
            symbol: "BTCUSD".into(),
            side: Side::Buy,
            kind: OrderKind::Limit,
            size: "1".parse().unwrap(),
            price: Some("100".parse().unwrap()),
            time_in_force: TimeInForce::Gtc,
            post_only: true,
            reduce_only: false,
            stop: None,
            oco: None,
            parent: None,
        };
        let mut order = Order::new(request, updated);
        order.status = status;
        order.filled = filled.parse().unwrap();
        order.updated = updated;
        WriteOp::Order(order)
    };
    let writer = store.writer(store::Retention { closed_orders_ms: 7 * day, candles_keep: 5, ..Default::default() });
    writer
        .commit_blocking(vec![
            order("old-cancelled", OrderStatus::Cancelled, "0", day),
            order("old-rejected", OrderStatus::Rejected, "0", day),
            order("old-filled", OrderStatus::Filled, "1", day),
            order("old-partly", OrderStatus::Cancelled, "0.5", day),
            order("old-open", OrderStatus::Open, "0", day),
            order("late-fill", OrderStatus::Cancelled, "0", day),
        ])
        .unwrap();
    // A fill the exchange reports after the cancel: the order has a fill now and is kept.
    writer.commit_blocking(vec![order("late-fill", OrderStatus::Cancelled, "0.5", day)]).unwrap();
    let ids =
        || store.orders().unwrap().into_iter().map(|o| o.request.client_id).collect::<std::collections::BTreeSet<_>>();
    assert_eq!(ids().len(), 6, "nothing is old yet");
    writer.commit_blocking(vec![order("new-cancelled", OrderStatus::Cancelled, "0", 10 * day)]).unwrap();
    let kept = ids();
    assert!(!kept.contains("old-cancelled") && !kept.contains("old-rejected"), "{kept:?}");
    for id in ["old-filled", "old-partly", "old-open", "late-fill", "new-cancelled"] {
        assert!(kept.contains(id), "{id} is kept: {kept:?}");
    }

    let candle = |timeframe: &str, second: i64| WriteOp::Candle {
        timeframe: timeframe.into(),
        candle: Candle {
            symbol: "BTCUSD".into(),
            time: second * 1_000,
            open: 1.0,
            high: 1.0,
            low: 1.0,
            close: 1.0,
            volume: 1.0,
        },
    };
    writer.commit_blocking((0..20).map(|s| candle("1s", s)).collect()).unwrap();
    let times: Vec<i64> = store.candles("BTCUSD", "1s", 100).unwrap().iter().map(|c| c.time / 1_000).collect();
    assert_eq!(times, (15..20).collect::<Vec<_>>(), "the newest 5 sub-minute candles are kept");
    // Minute and longer candles are history, as `data fetch` stores it: all kept.
    writer.commit_blocking((0..20).map(|m| candle("1m", m * 60)).collect()).unwrap();
    assert_eq!(store.candles("BTCUSD", "1m", 100).unwrap().len(), 20, "minute candles are never pruned");
    writer.close();
}

/// 16 bit flips at one offset of a store with data, at offsets across the
/// whole file: start either refuses it (naming the file, not a byte written)
/// or opens it and everything reads back without a panic; the flips in the
/// data are caught.
#[test]
fn bit_flipped_stores_are_refused_with_the_file_named_and_left_untouched_or_read_without_panics() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = Store::open(dir.path()).unwrap();
        let writer = store.writer(Default::default());
        let ops: Vec<WriteOp> = (1..=2_000).map(|i| WriteOp::Fill(fill(i, "a", Side::Buy, "1", "100"))).collect();
        writer.commit_blocking(ops).unwrap();
        writer.close();
    }
    let path = dir.path().join(store::DB_FILE);
    let pristine = std::fs::read(&path).unwrap();
    let (mut refused, mut opened) = (0, 0);
    for step in 1..40 {
        let offset = pristine.len() * step / 40;
        let mut damaged = pristine.clone();
        for byte in &mut damaged[offset..(offset + 2).min(pristine.len())] {
            *byte ^= 0xFF;
        }
        std::fs::write(&path, &damaged).unwrap();
        let outcome = std::panic::catch_unwind(|| match Store::open(dir.path()) {
            Err(error) => {
                assert!(error.to_string().contains(&path.display().to_string()), "the file is named: {error}");
                assert_eq!(std::fs::read(&path).unwrap(), damaged, "a refused file was modified (offset {offset})");
                false
            }
            Ok(store) => {
                let _ = store.recover();
                let _ = store::check(&store);
                true
            }
        });
        match outcome {
            Ok(true) => opened += 1,
            Ok(false) => refused += 1,
            Err(_) => panic!("a panic opening or reading a store flipped at offset {offset}"),
        }
    }
    assert!(refused > 0, "no flip was detected ({opened} opened)");
}

#[cfg(unix)]
#[test]
fn a_new_store_is_private_to_its_owner() {
    use std::os::unix::fs::PermissionsExt;
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("data");
    drop(Store::open(&dir).unwrap());
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join(store::DB_FILE)), 0o600);
}
