//! Contingent orders, the same on the paper exchange and in backtests: a
//! bracket's legs wait for their entry to close (then they start, sized to
//! what it filled, or are cancelled when it filled nothing), and a fill
//! cancels the other open orders of its one-cancels-other group.

use rust_decimal::Decimal;

use super::ExchangeEvent;
use crate::model::{Order, TimestampMs};

/// The orders a simulated venue holds, as contingent orders need them.
pub trait ContingentBook {
    /// Legs still waiting for the entry `entry` (client ids).
    fn legs_waiting_for(&self, entry: &str) -> Vec<String>;
    /// Starts a waiting leg, sized to at most `filled`; the leg as it is now.
    fn start_leg(&mut self, leg: &str, filled: Decimal, now: TimestampMs) -> Option<Order>;
    /// Open orders of a one-cancels-other group (client ids).
    fn group_members(&self, group: &str) -> Vec<String>;
    /// The group of an order that is no longer among the open ones.
    fn group_of_closed(&self, client_id: &str) -> Option<String>;
    /// Cancels an open order with `reason`; the cancelled order.
    fn cancel_with(&mut self, client_id: &str, reason: String, now: TimestampMs) -> Option<Order>;
    /// Notes an order that closed (for legs placed after their entry closed).
    fn note_closed(&mut self, _order: &Order) {}
}

/// Appends to `events` what their closing orders and fills do to contingent orders.
pub fn settle(book: &mut impl ContingentBook, events: &mut Vec<ExchangeEvent>, now: TimestampMs) {
    let mut i = 0;
    while i < events.len() {
        let mut follow_ups = Vec::new();
        match &events[i] {
            ExchangeEvent::Order(entry) if !entry.status.is_open() => {
                book.note_closed(entry);
                let (entry_id, filled) = (entry.request.client_id.clone(), entry.filled);
                for leg in book.legs_waiting_for(&entry_id) {
                    let settled = if filled.is_zero() {
                        book.cancel_with(&leg, format!("its entry {entry_id} ended without a fill"), now)
                    } else {
                        book.start_leg(&leg, filled, now)
                    };
                    follow_ups.extend(settled.map(ExchangeEvent::Order));
                }
            }
            ExchangeEvent::Fill(fill) => {
                // The filled order is reported among these events (it may be closed already).
                let reported = events.iter().find_map(|e| match e {
                    ExchangeEvent::Order(o) if o.request.client_id == fill.order_id => Some(o.request.oco.clone()),
                    _ => None,
                });
                let group = reported.unwrap_or_else(|| book.group_of_closed(&fill.order_id));
                if let Some(group) = group {
                    let reason = format!("one-cancels-other: {} filled", fill.order_id);
                    for member in book.group_members(&group).into_iter().filter(|m| *m != fill.order_id) {
                        follow_ups.extend(book.cancel_with(&member, reason.clone(), now).map(ExchangeEvent::Order));
                    }
                }
            }
            ExchangeEvent::Order(_) => {}
        }
        events.extend(follow_ups);
        i += 1;
    }
}
