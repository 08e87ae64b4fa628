//! Delta's position brackets as the host keeps them. The exchange creates a
//! bracket's stop-loss and take-profit orders itself — for an entry once it
//! fills, or at once for the open position — and they carry no client order
//! id. The host adopts them under its legs' ids by product and kind: Delta
//! holds one bracket per position, so the kind names the leg.

use crate::model::{Order, OrderRequest, StopKind};

/// How long before its registration an exchange order may have been created
/// and still be adopted as a leg (clock differences between host and exchange).
const CLOCK_SLACK_US: i64 = 5_000_000;

/// One of the host's bracket legs on Delta.
#[derive(Debug, Clone, PartialEq)]
struct Leg {
    client_id: String,
    symbol: String,
    kind: StopKind,
    /// The entry it waits for (`None`: a bracket on the open position).
    entry: Option<String>,
    /// Exchange orders created before this (µs) belong to an earlier bracket.
    since_us: i64,
    /// The exchange order it was adopted as.
    exchange_id: Option<String>,
}

/// The host's live bracket legs on Delta, by product.
#[derive(Debug, Default)]
pub struct Brackets {
    legs: Vec<Leg>,
}

impl Brackets {
    /// Registers a bracket's legs (sent now, at `now_us`, or restored from the store).
    pub fn register<'a>(&mut self, legs: impl IntoIterator<Item = &'a OrderRequest>, now_us: i64) {
        for leg in legs {
            let Some(stop) = leg.stop.as_deref() else { continue };
            self.legs.retain(|known| known.client_id != leg.client_id);
            self.legs.push(Leg {
                client_id: leg.client_id.clone(),
                symbol: leg.symbol.clone(),
                kind: stop.kind,
                entry: leg.parent.clone(),
                since_us: now_us - CLOCK_SLACK_US,
                exchange_id: None,
            });
        }
    }

    /// Registers the stored orders that are bracket legs still open. Any
    /// exchange order of their kind on their product may be theirs (the
    /// reconciliation offers the open ones first, then the newest).
    pub fn restore<'a>(&mut self, orders: impl IntoIterator<Item = &'a Order>) {
        for order in orders {
            if is_leg(&order.request) && (order.status.is_open() || order.status == crate::model::OrderStatus::Pending)
            {
                self.register([&order.request], i64::MIN + CLOCK_SLACK_US);
            }
        }
    }

    /// A leg of a bracket already held on `symbol` (Delta holds one per position).
    pub fn held_on(&self, symbol: &str) -> Option<&str> {
        self.legs.iter().find(|leg| leg.symbol == symbol).map(|leg| leg.client_id.as_str())
    }

    /// The leg an exchange order without a client id is, if it is one of ours:
    /// a `kind` order on `symbol` created after the leg was sent. Adopts it.
    pub fn adopt(
        &mut self,
        symbol: &str,
        kind: StopKind,
        exchange_id: &str,
        created_us: Option<i64>,
    ) -> Option<String> {
        if let Some(leg) = self.legs.iter().find(|leg| leg.exchange_id.as_deref() == Some(exchange_id)) {
            return Some(leg.client_id.clone());
        }
        let leg = self.legs.iter_mut().find(|leg| {
            leg.symbol == symbol
                && leg.kind == kind
                && leg.exchange_id.is_none()
                && created_us.is_none_or(|created| created >= leg.since_us)
        })?;
        leg.exchange_id = Some(exchange_id.to_string());
        Some(leg.client_id.clone())
    }

    /// The exchange order a leg was adopted as.
    pub fn exchange_id(&self, client_id: &str) -> Option<&str> {
        self.legs.iter().find(|leg| leg.client_id == client_id)?.exchange_id.as_deref()
    }

    /// Whether `client_id` is a registered leg.
    pub fn contains(&self, client_id: &str) -> bool {
        self.legs.iter().any(|leg| leg.client_id == client_id)
    }

    /// Legs still waiting for `entry` (not created by the exchange yet).
    pub fn waiting_for(&self, entry: &str) -> Vec<String> {
        let waits = |leg: &&Leg| leg.entry.as_deref() == Some(entry) && leg.exchange_id.is_none();
        self.legs.iter().filter(waits).map(|leg| leg.client_id.clone()).collect()
    }

    /// Forgets a leg that reached a final state.
    pub fn forget(&mut self, client_id: &str) {
        self.legs.retain(|leg| leg.client_id != client_id);
    }
}

/// Whether a request is a bracket leg (a stop with an entry or a one-cancels-other group).
pub fn is_leg(request: &OrderRequest) -> bool {
    request.stop.is_some() && (request.parent.is_some() || request.oco.is_some())
}

/// The stop kind of a Delta `stop_order_type`.
pub fn kind_of(stop_order_type: Option<&str>) -> Option<StopKind> {
    match stop_order_type? {
        "stop_loss_order" => Some(StopKind::StopLoss),
        "take_profit_order" => Some(StopKind::TakeProfit),
        _ => None,
    }
}
