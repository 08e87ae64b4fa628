//! Delta's position brackets as the host keeps them. The exchange creates a
//! bracket's stop-loss and take-profit orders itself — for an entry once it
//! fills, or at once for the open position — and they carry no client order
//! id. The host adopts them under its legs' ids by product and kind: Delta
//! holds one bracket per position, so the kind names the leg.

use crate::model::{Order, OrderRequest, StopKind};

/// How long before its registration an exchange order may have been created
/// and still be adopted as a leg (clock differences between host and exchange).
const CLOCK_SLACK_US: i64 = 5_000_000;

/// How long after its entry filled a leg may take to appear on the exchange.
const LEG_GRACE_US: i64 = 30_000_000;

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
    /// Since when (µs) the exchange should have created it: its entry
    /// filled, or (a bracket on the open position) it was sent.
    entry_filled_us: Option<i64>,
    /// Its entry's cancel is in flight: it does not hold the symbol.
    entry_cancelling: bool,
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
                entry_filled_us: leg.parent.is_none().then_some(now_us),
                entry_cancelling: false,
            });
        }
    }

    /// Registers the stored orders that are bracket legs still open. Any
    /// exchange order of their kind on their product may be theirs (the
    /// reconciliation offers the open ones first, then the newest) until
    /// [`Brackets::not_before`] says from when.
    pub fn restore<'a>(&mut self, orders: impl IntoIterator<Item = &'a Order>) {
        for order in orders {
            if is_leg(&order.request) && (order.status.is_open() || order.status == crate::model::OrderStatus::Pending)
            {
                self.register([&order.request], i64::MIN + CLOCK_SLACK_US);
            }
        }
    }

    /// Exchange orders created before `since_us` are not `leg`'s (a restored
    /// leg whose entry's creation time is known).
    pub fn not_before(&mut self, leg: &str, since_us: i64) {
        for known in self.legs.iter_mut().filter(|known| known.client_id == leg) {
            known.since_us = since_us - CLOCK_SLACK_US;
        }
    }

    /// A leg of a bracket already held on `symbol` (Delta holds one per position).
    pub fn held_on(&self, symbol: &str) -> Option<&str> {
        self.legs.iter().find(|leg| leg.symbol == symbol && !leg.entry_cancelling).map(|leg| leg.client_id.as_str())
    }

    /// Marks (or unmarks) the legs waiting for `entry` while its cancel is in flight.
    pub fn entry_cancelling(&mut self, entry: &str, cancelling: bool) {
        for leg in self.legs.iter_mut().filter(|leg| leg.entry.as_deref() == Some(entry)) {
            leg.entry_cancelling = cancelling;
        }
    }

    /// Forgets every leg on `symbol`: one of them filled, which closed the
    /// position, and the exchange cancels the rest of its bracket.
    pub fn forget_symbol(&mut self, symbol: &str) {
        self.legs.retain(|leg| leg.symbol != symbol);
    }

    /// Notes that `entry` filled at `now_us`: the exchange creates its legs now.
    pub fn entry_filled(&mut self, entry: &str, now_us: i64) {
        for leg in self.legs.iter_mut().filter(|leg| leg.entry.as_deref() == Some(entry) && leg.exchange_id.is_none()) {
            leg.entry_filled_us.get_or_insert(now_us);
        }
    }

    /// Takes out the legs on `symbol` the exchange has still not created
    /// `LEG_GRACE_US` after their entry filled (it never will); their ids.
    pub fn take_uncreated(&mut self, symbol: &str, now_us: i64) -> Vec<String> {
        let stale = |leg: &Leg| {
            leg.symbol == symbol
                && leg.exchange_id.is_none()
                && leg.entry_filled_us.is_some_and(|t| now_us - t > LEG_GRACE_US)
        };
        let ids = self.legs.iter().filter(|leg| stale(leg)).map(|leg| leg.client_id.clone()).collect();
        self.legs.retain(|leg| !stale(leg));
        ids
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OrderKind, Side, StopTrigger, TimeInForce, TriggerOn};

    fn leg(id: &str, kind: StopKind, entry: Option<&str>) -> OrderRequest {
        OrderRequest {
            client_id: id.into(),
            strategy: "s".into(),
            symbol: "BTCUSD".into(),
            side: Side::Sell,
            kind: OrderKind::Market,
            size: 1.into(),
            price: None,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only: true,
            stop: Some(Box::new(StopTrigger {
                kind,
                price: 1.into(),
                trail: None,
                trail_pct: None,
                on: TriggerOn::Last,
            })),
            oco: Some("g".into()),
            parent: entry.map(str::to_string),
        }
    }

    #[test]
    fn legs_are_adopted_by_kind_once_and_uncreated_ones_expire() {
        let mut brackets = Brackets::default();
        let now = 1_000_000_000_000;
        brackets.register(&[leg("sl", StopKind::StopLoss, Some("e")), leg("tp", StopKind::TakeProfit, Some("e"))], now);
        assert_eq!(brackets.held_on("BTCUSD"), Some("sl"));
        // An order created before the bracket was sent belongs to an earlier one.
        assert_eq!(brackets.adopt("BTCUSD", StopKind::StopLoss, "1", Some(now - 60_000_000)), None);
        assert_eq!(brackets.adopt("BTCUSD", StopKind::StopLoss, "2", Some(now + 1)).as_deref(), Some("sl"));
        assert_eq!(brackets.adopt("BTCUSD", StopKind::StopLoss, "3", None), None, "one exchange order per leg");
        assert_eq!(brackets.adopt("BTCUSD", StopKind::StopLoss, "2", None).as_deref(), Some("sl"), "the same again");
        assert_eq!(brackets.exchange_id("sl"), Some("2"));
        assert_eq!(brackets.waiting_for("e"), vec!["tp".to_string()]);
        // The entry filled; the take-profit never appears: after the grace it is taken out.
        brackets.entry_filled("e", now);
        assert!(brackets.take_uncreated("BTCUSD", now + LEG_GRACE_US).is_empty(), "still within the grace");
        assert_eq!(brackets.take_uncreated("BTCUSD", now + LEG_GRACE_US + 1), vec!["tp".to_string()]);
        brackets.forget("sl");
        assert_eq!(brackets.held_on("BTCUSD"), None, "the symbol is free for a new bracket");
    }
}
