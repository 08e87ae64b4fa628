//! Store integrity: positions equal the sum of fills, every fill's order
//! exists, and activity sequence numbers have no gaps. Used by `tradehost doctor`.

use std::collections::BTreeMap;

use redb::{ReadableDatabase, ReadableTable};

use super::{ACTIVITY, FILLS, ORDERS, POSITIONS, StoreError, StoreReader, positions_from_fills};
use crate::model::{Fill, Position};

/// What the integrity check found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckReport {
    /// Orders stored.
    pub orders: usize,
    /// Fills stored.
    pub fills: usize,
    /// Activity events stored.
    pub activity: usize,
    /// Every problem found (empty: healthy).
    pub problems: Vec<String>,
}

/// Checks a store's invariants.
pub fn check(store: &StoreReader) -> Result<CheckReport, StoreError> {
    let err = |e: &dyn std::fmt::Display| StoreError::Io { path: store.path().to_path_buf(), detail: e.to_string() };
    let read = store.database().begin_read().map_err(|e| err(&e))?;
    let orders = read.open_table(ORDERS).map_err(|e| err(&e))?;
    let fills = read.open_table(FILLS).map_err(|e| err(&e))?;
    let positions = read.open_table(POSITIONS).map_err(|e| err(&e))?;
    let activity = read.open_table(ACTIVITY).map_err(|e| err(&e))?;
    let mut report = CheckReport { orders: orders.iter().map_err(|e| err(&e))?.count(), ..CheckReport::default() };
    for entry in fills.iter().map_err(|e| err(&e))? {
        let (key, value) = entry.map_err(|e| err(&e))?;
        report.fills += 1;
        let fill: Fill = serde_json::from_slice(value.value()).map_err(|e| err(&e))?;
        if fill.id != key.value() {
            report.problems.push(format!("fill stored under {} says it is fill {}", key.value(), fill.id));
        }
        if orders.get(fill.order_id.as_str()).map_err(|e| err(&e))?.is_none() {
            report.problems.push(format!("fill {} belongs to order {}, which is not stored", fill.id, fill.order_id));
        }
    }
    let expected = positions_from_fills(&fills)?;
    let mut stored: BTreeMap<String, Position> = BTreeMap::new();
    for entry in positions.iter().map_err(|e| err(&e))? {
        let (key, value) = entry.map_err(|e| err(&e))?;
        stored.insert(key.value().to_string(), serde_json::from_slice(value.value()).map_err(|e| err(&e))?);
    }
    for (key, position) in &expected {
        let shown = key.replace('\u{1f}', "/");
        match stored.get(key) {
            Some(s) if s.size == position.size && s.realized_pnl == position.realized_pnl => {}
            Some(s) => report.problems.push(format!(
                "position {shown} is {} (realized {}), but its fills sum to {} (realized {})",
                s.size, s.realized_pnl, position.size, position.realized_pnl
            )),
            None => report.problems.push(format!("position {shown} is missing; its fills sum to {}", position.size)),
        }
    }
    for (key, position) in &stored {
        if !expected.contains_key(key) && !position.size.is_zero() {
            report.problems.push(format!(
                "position {} is {} but has no fills",
                key.replace('\u{1f}', "/"),
                position.size
            ));
        }
    }
    let mut previous: Option<u64> = None;
    for entry in activity.iter().map_err(|e| err(&e))? {
        let (key, _) = entry.map_err(|e| err(&e))?;
        let seq = key.value();
        if let Some(previous) = previous
            && seq != previous + 1
        {
            report.problems.push(format!("activity sequence jumps from {previous} to {seq}"));
        }
        previous = Some(seq);
        report.activity += 1;
    }
    Ok(report)
}
