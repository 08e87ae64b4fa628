//! What a symbol's open orders need from a price move, so that a simulated
//! venue can skip the orders no price in a range can fill or fire: fixed
//! stops are summed up by their nearest triggers; everything else (market,
//! limit, trailing and triggered orders) is checked at every price.

use std::collections::HashMap;

use rust_decimal::Decimal;

use crate::model::{Order, OrderStatus};

/// One symbol's open orders, as a price move sees them.
#[derive(Debug, Default, Clone, Copy)]
pub struct PriceWatch {
    /// Orders checked at every price.
    active: usize,
    /// The highest trigger of the fixed stops that fire when the price falls to it.
    falling: Option<Decimal>,
    /// The lowest trigger of the fixed stops that fire when the price rises to it.
    rising: Option<Decimal>,
}

impl PriceWatch {
    /// Whether a move through `low..=high` can fill or fire anything.
    pub fn touched(&self, low: Decimal, high: Decimal) -> bool {
        self.active > 0 || self.falling.is_some_and(|f| low <= f) || self.rising.is_some_and(|r| high >= r)
    }

    /// The watch of every symbol of `orders`; orders `waiting` says wait for
    /// something other than the price (a bracket leg's entry) are left out.
    pub fn of<'a>(orders: impl Iterator<Item = &'a Order>, waiting: impl Fn(&Order) -> bool) -> HashMap<String, Self> {
        let mut watches: HashMap<String, PriceWatch> = HashMap::new();
        for order in orders.filter(|o| !waiting(o)) {
            match watches.get_mut(&order.request.symbol) {
                Some(watch) => watch.add(order),
                None => watches.entry(order.request.symbol.clone()).or_default().add(order),
            }
        }
        watches
    }

    /// Counts in one more open order.
    pub fn add(&mut self, order: &Order) {
        match fixed_stop(order) {
            Some((true, price)) => self.falling = Some(self.falling.map_or(price, |f| f.max(price))),
            Some((false, price)) => self.rising = Some(self.rising.map_or(price, |r| r.min(price))),
            None => self.active += 1,
        }
    }

    /// Counts out an order that left; false when it held a bound (the watch
    /// must then be built again from the orders left).
    pub fn remove(&mut self, order: &Order) -> bool {
        match fixed_stop(order) {
            Some((true, price)) => self.falling != Some(price),
            Some((false, price)) => self.rising != Some(price),
            None => {
                self.active = self.active.saturating_sub(1);
                true
            }
        }
    }
}

/// A fixed stop waiting for its trigger: whether it fires on a fall, and its trigger.
fn fixed_stop(order: &Order) -> Option<(bool, Decimal)> {
    let stop = order.request.stop.as_deref()?;
    (order.status == OrderStatus::Untriggered && !stop.trails())
        .then(|| (stop.fires_falling(order.request.side), stop.price))
}
