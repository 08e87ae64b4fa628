//! Reconciliation without side effects: what a live venue holds now (its
//! open orders and net positions, read over REST), compared with what the
//! host believes. `GET /api/v1/reconcile` and `tradehost doctor --live`
//! report the differences; nothing is changed.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use rust_decimal::Decimal;
use serde::Serialize;

use crate::model::{AccountView, OrderStatus, Side};

/// One order resting on the venue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VenueOrder {
    /// The venue's id.
    pub exchange_id: String,
    /// The host's client id, when the order carries one (or is a known bracket leg).
    pub client_id: Option<String>,
    /// Symbol.
    pub symbol: String,
    /// Side.
    pub side: Side,
    /// Size still open, in base units.
    pub remaining: Decimal,
}

/// What a venue holds now.
#[derive(Debug, Clone, Default)]
pub struct VenueSnapshot {
    /// Open orders on the host's symbols.
    pub orders: Vec<VenueOrder>,
    /// Net position per symbol the host trades, in base units (flat ones may be absent).
    pub positions: BTreeMap<String, Decimal>,
    /// The venue's clock minus ours, measured now, ms.
    pub clock_offset_ms: i64,
}

/// Reads a venue's snapshot (an error names what failed: unreachable, key refused).
pub type VenueProbe =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<VenueSnapshot, String>> + Send>> + Send + Sync>;

/// One disagreement between the host and the venue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Difference {
    /// What differs: `order ID`, `exchange order ID` or `position SYMBOL`
    /// (the same subject on two looks is the same difference, whatever the amounts).
    pub subject: String,
    /// The difference as a sentence, with both sides' amounts.
    pub detail: String,
}

/// The differences between the host's view and the venue's; empty when they
/// agree. Orders the host is still sending (pending) are not compared, nor a
/// bracket leg while its entry is still open in the host (the venue creates
/// legs once the entry fills).
pub fn differences(host: &AccountView, venue: &VenueSnapshot) -> Vec<Difference> {
    let mut out = Vec::new();
    let mut add = |subject: String, detail: String| out.push(Difference { subject, detail });
    let resting = |status: OrderStatus| {
        matches!(
            status,
            OrderStatus::Open | OrderStatus::PartiallyFilled | OrderStatus::Untriggered | OrderStatus::Triggered
        )
    };
    let in_flight: BTreeSet<&str> = host
        .open_orders
        .iter()
        .filter(|o| o.status == OrderStatus::Pending)
        .map(|o| o.request.client_id.as_str())
        .collect();
    let ours: BTreeMap<&str, &crate::model::Order> =
        host.open_orders.iter().filter(|o| resting(o.status)).map(|o| (o.request.client_id.as_str(), o)).collect();
    let mut seen = BTreeSet::new();
    for order in &venue.orders {
        let mine = order.client_id.as_deref().and_then(|id| ours.get(id).map(|o| (id, *o)));
        match mine {
            Some((id, host_order)) => {
                seen.insert(id);
                if host_order.remaining() != order.remaining {
                    let detail = format!(
                        "order {id} on {}: {} open on the exchange, {} in the host",
                        order.symbol,
                        order.remaining.normalize(),
                        host_order.remaining().normalize()
                    );
                    add(format!("order {id}"), detail);
                }
            }
            None if order.client_id.as_deref().is_some_and(|id| in_flight.contains(id)) => {}
            None => {
                let detail = format!(
                    "exchange order {}{} on {}: {} {} open on the exchange, unknown to the host",
                    order.exchange_id,
                    order.client_id.as_deref().map_or(String::new(), |id| format!(" (client id {id})")),
                    order.symbol,
                    side_name(order.side),
                    order.remaining.normalize()
                );
                add(format!("exchange order {}", order.exchange_id), detail);
            }
        }
    }
    let open: BTreeSet<&str> = host.open_orders.iter().map(|o| o.request.client_id.as_str()).collect();
    for (id, order) in &ours {
        let waiting_leg = order.request.parent.as_deref().is_some_and(|entry| open.contains(entry));
        if !seen.contains(id) && !waiting_leg {
            let detail = format!(
                "order {id} on {}: open in the host ({} {}), not on the exchange",
                order.request.symbol,
                side_name(order.request.side),
                order.remaining().normalize()
            );
            add(format!("order {id}"), detail);
        }
    }
    let mut net: BTreeMap<&str, Decimal> = BTreeMap::new();
    for positions in host.positions.values() {
        for (symbol, position) in positions {
            let sum = net.entry(symbol.as_str()).or_default();
            *sum = sum.saturating_add(position.size);
        }
    }
    let symbols: BTreeSet<&str> = net.keys().copied().chain(venue.positions.keys().map(String::as_str)).collect();
    for symbol in symbols {
        let (held, theirs) = (net.get(symbol).copied().unwrap_or_default(), venue.positions.get(symbol).copied());
        let theirs = theirs.unwrap_or_default();
        if held != theirs {
            let detail = format!(
                "position {symbol}: {} on the exchange, {} in the host (the strategies' positions summed)",
                theirs.normalize(),
                held.normalize()
            );
            add(format!("position {symbol}"), detail);
        }
    }
    out
}

/// The differences of `latest` whose subject `earlier` also shows: what
/// persisted across two looks (amounts may have moved; the latest are kept).
pub fn persisting(earlier: &[Difference], latest: Vec<Difference>) -> Vec<Difference> {
    latest.into_iter().filter(|d| earlier.iter().any(|e| e.subject == d.subject)).collect()
}

fn side_name(side: Side) -> &'static str {
    match side {
        Side::Buy => "buy",
        Side::Sell => "sell",
    }
}

/// `GET /api/v1/reconcile`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct ReconcileReport {
    /// `paper` (the host is the venue: nothing to compare), `dry-run` (simulated fills) or `delta`.
    pub venue: String,
    /// Whether a venue was asked.
    pub compared: bool,
    /// The venue's clock minus ours, ms (a live venue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_offset_ms: Option<i64>,
    /// Open orders the host holds.
    pub host_orders: usize,
    /// Open orders the venue holds (a live venue).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub venue_orders: Option<usize>,
    /// Where the host and the venue disagree; empty when they agree.
    pub differences: Vec<Difference>,
    /// Why the venue could not be asked (unreachable, key refused).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The store's integrity: positions equal the sum of fills, every fill's order exists, no activity gaps.
    pub store: StoreConsistency,
}

/// What the store check found.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct StoreConsistency {
    /// Orders stored.
    pub orders: usize,
    /// Fills stored.
    pub fills: usize,
    /// Activity events stored.
    pub activity: usize,
    /// Each inconsistency, as a sentence.
    pub problems: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Order, OrderKind, OrderRequest, Position, TimeInForce};

    fn order(id: &str, size: i64, status: OrderStatus) -> Order {
        let mut order = Order::new(
            OrderRequest {
                client_id: id.into(),
                strategy: "s".into(),
                symbol: "BTCUSD".into(),
                side: Side::Buy,
                kind: OrderKind::Limit,
                size: Decimal::from(size),
                price: Some(Decimal::from(100)),
                time_in_force: TimeInForce::Gtc,
                post_only: false,
                reduce_only: false,
                stop: None,
                oco: None,
                parent: None,
            },
            0,
        );
        order.status = status;
        order
    }

    #[test]
    fn differences_name_the_order_or_symbol() {
        let mut host = AccountView {
            open_orders: Arc::new(vec![
                order("a", 2, OrderStatus::Open),
                order("b", 1, OrderStatus::Open),
                order("p", 1, OrderStatus::Pending),
            ]),
            ..AccountView::default()
        };
        let mut position = Position::flat("BTCUSD");
        position.size = Decimal::from(3);
        host.positions.entry("s".into()).or_default().insert("BTCUSD".into(), position);
        let venue_order = |id: &str, client: Option<&str>, remaining: i64| VenueOrder {
            exchange_id: id.into(),
            client_id: client.map(str::to_string),
            symbol: "BTCUSD".into(),
            side: Side::Buy,
            remaining: Decimal::from(remaining),
        };
        let agree = VenueSnapshot {
            orders: vec![
                venue_order("1", Some("a"), 2),
                venue_order("2", Some("b"), 1),
                venue_order("3", Some("p"), 1),
            ],
            positions: [("BTCUSD".to_string(), Decimal::from(3))].into(),
            clock_offset_ms: 0,
        };
        assert_eq!(differences(&host, &agree), Vec::<Difference>::new());
        let venue = VenueSnapshot {
            orders: vec![venue_order("1", Some("a"), 1), venue_order("9", None, 5)],
            positions: [("BTCUSD".to_string(), Decimal::from(2))].into(),
            clock_offset_ms: 0,
        };
        let found = differences(&host, &venue);
        let subjects: Vec<&str> = found.iter().map(|d| d.subject.as_str()).collect();
        assert_eq!(subjects, ["order a", "exchange order 9", "order b", "position BTCUSD"]);
        let details: Vec<&str> = found.iter().map(|d| d.detail.as_str()).collect();
        assert_eq!(
            details,
            vec![
                "order a on BTCUSD: 1 open on the exchange, 2 in the host",
                "exchange order 9 on BTCUSD: buy 5 open on the exchange, unknown to the host",
                "order b on BTCUSD: open in the host (buy 1), not on the exchange",
                "position BTCUSD: 2 on the exchange, 3 in the host (the strategies' positions summed)",
            ]
        );
        // Bracket legs: one whose entry is still open may be missing on the
        // venue; one whose entry is done must be there.
        let leg = |id: &str, entry: &str| {
            let mut leg = order(id, 1, OrderStatus::Untriggered);
            leg.request.parent = Some(entry.into());
            leg
        };
        let with_legs = AccountView {
            open_orders: Arc::new(vec![
                order("a", 2, OrderStatus::Open),
                leg("waiting", "a"),
                leg("lost", "filled-entry"),
            ]),
            ..AccountView::default()
        };
        let venue = VenueSnapshot { orders: vec![venue_order("1", Some("a"), 2)], ..VenueSnapshot::default() };
        let found: Vec<String> = differences(&with_legs, &venue).into_iter().map(|d| d.subject).collect();
        assert_eq!(found, ["order lost"]);
    }

    #[test]
    fn a_difference_persists_by_subject_whatever_its_amounts() {
        let difference = |subject: &str, detail: &str| Difference { subject: subject.into(), detail: detail.into() };
        let earlier = vec![difference("order a", "1 vs 2"), difference("order b", "gone")];
        let latest = vec![difference("order a", "1 vs 3"), difference("position X", "new")];
        assert_eq!(persisting(&earlier, latest), vec![difference("order a", "1 vs 3")]);
    }
}
