//! The simulated broker of a backtest. Prices move along each bar's path
//! (open, then the extremes, then the close; see [`super::bar_path`]): a
//! market order fills at the next price (± slippage); a limit order fills
//! when the path reaches its price, at the limit price — or at the open when
//! the bar gaps through it; a stop fires when the path reaches its trigger
//! and then works as a market order filled at the trigger (at the open when
//! the bar gaps through it) or as a limit order; a trailing stop's trigger
//! follows each point of the path; fees on every fill; no partial fills (bar
//! volume is not modelled).

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::exchange::watch::PriceWatch;
use crate::exchange::{ExchangeEvent, Execution, settle};
use crate::model::{
    Fill, Liquidity, Order, OrderKind, OrderRequest, OrderStatus, Position, Product, Side, TimestampMs,
    decimal_from_f64,
};

const BPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);

/// Fees, slippage and trading rules of a backtest.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Starting cash.
    pub cash: Decimal,
    /// Taker fee (market orders), basis points.
    pub taker_fee_bps: Decimal,
    /// Maker fee (limit orders), basis points.
    pub maker_fee_bps: Decimal,
    /// Slippage on market orders, basis points.
    pub slippage_bps: Decimal,
    /// Tick and lot sizes of known symbols (others are not rounded).
    pub products: BTreeMap<String, Product>,
    /// Most exposure (positions and resting limits at their prices) as a
    /// multiple of equity, as on the paper exchange (`exchange.paper.leverage`).
    pub leverage: Decimal,
}

/// The broker's state.
pub struct Broker {
    config: BrokerConfig,
    /// Cash: starting cash + realised PnL − fees.
    pub cash: Decimal,
    /// Net positions by symbol.
    pub positions: BTreeMap<String, Position>,
    /// Orders waiting: market orders for the next open, limits until they fill.
    pub open: Vec<Order>,
    /// Every fill so far.
    pub fills: Vec<Fill>,
    /// Fees paid so far.
    pub fees: Decimal,
    marks: BTreeMap<String, Decimal>,
    /// Limit orders that crossed the price when placed: they take liquidity
    /// at the next price (capped at their limit), as the live paper exchange does.
    marketable: std::collections::HashSet<String>,
    /// Bracket legs waiting for their entry to close.
    dormant: std::collections::HashSet<String>,
    /// What each closed order filled, for legs placed after their entry closed.
    closed: std::collections::HashMap<String, Decimal>,
    /// Per symbol, what its open orders need from a price move (rebuilt after
    /// the open orders change): lets a bar skip orders no price can touch.
    watch: std::collections::HashMap<String, PriceWatch>,
    watch_stale: bool,
}

fn dec(value: f64) -> Decimal {
    decimal_from_f64(value).unwrap_or_default()
}

impl Broker {
    /// A broker with the starting cash.
    pub fn new(config: BrokerConfig) -> Self {
        Broker {
            cash: config.cash,
            config,
            positions: BTreeMap::new(),
            open: Vec::new(),
            fills: Vec::new(),
            fees: Decimal::ZERO,
            marks: BTreeMap::new(),
            marketable: Default::default(),
            dormant: Default::default(),
            closed: Default::default(),
            watch: Default::default(),
            watch_stale: false,
        }
    }

    /// The net position in a symbol.
    pub fn position(&self, symbol: &str) -> Position {
        self.positions.get(symbol).cloned().unwrap_or_else(|| Position::flat(symbol))
    }

    /// Mark prices (last closes).
    pub fn marks(&self) -> &BTreeMap<String, Decimal> {
        &self.marks
    }

    /// Cash plus unrealised PnL at the last closes.
    pub fn equity(&self) -> Decimal {
        // The positions' sum first, then the cash: the same order (and so the
        // same rounding and scale) as every equity figure before.
        self.cash
            + self
                .positions
                .values()
                .map(|p| self.marks.get(&p.symbol).map_or(Decimal::ZERO, |m| p.unrealized_pnl(*m)))
                .sum::<Decimal>()
    }

    /// Accepts an order placed while handling a bar at `now`.
    pub fn submit(&mut self, mut request: OrderRequest, now: TimestampMs) -> Vec<ExchangeEvent> {
        let mut order = Order::new(request.clone(), now);
        let reject = |mut order: Order, reason: String| {
            order.status = OrderStatus::Rejected;
            order.reason = Some(reason);
            vec![ExchangeEvent::Order(order)]
        };
        if let Some(product) = self.config.products.get(&request.symbol) {
            request.size = product.round_size(request.size);
            request.price = request.price.map(|p| product.round_price(p));
            order.request = request.clone();
        }
        if request.size <= Decimal::ZERO {
            return reject(order, "size is below the lot size".into());
        }
        if let Some(mut stop) = request.stop.clone() {
            let Some(mark) = self.marks.get(&request.symbol).copied() else {
                return reject(order, "a stop needs a price to start from: place it after the first bar".into());
            };
            if stop.distance(mark).is_some() {
                stop.start_trailing(request.side, mark);
            }
            if let Some(product) = self.config.products.get(&request.symbol) {
                stop.price = product.round_price(stop.price);
            }
            match request.parent.as_deref() {
                // A bracket leg: it waits for its entry, or starts sized to what it filled.
                Some(parent) if self.open.iter().any(|o| o.request.client_id == parent) => {
                    self.dormant.insert(request.client_id.clone());
                }
                Some(parent) => match self.closed.get(parent).copied() {
                    Some(filled) if !filled.is_zero() => {
                        request.size = request.size.min(filled);
                        order.request.size = request.size;
                    }
                    _ => return reject(order, format!("its entry {parent} ended without a fill")),
                },
                None if stop.fires(request.side, mark, mark) => {
                    let reason = format!(
                        "the stop would trigger at once: trigger {} is already reached by the price {mark}",
                        stop.price
                    );
                    return reject(order, reason);
                }
                None => {}
            }
            order.request.stop = Some(stop.clone());
            request.stop = Some(stop);
            order.status = OrderStatus::Untriggered;
        }
        if request.kind == OrderKind::Limit {
            let Some(price) = request.price.filter(|p| *p > Decimal::ZERO) else {
                return reject(order, "limit order without a positive price".into());
            };
            if request.stop.is_some() {
                // A stop-limit's limit is checked when it fires.
                if let Err(reason) = self.check_margin(&request) {
                    return reject(order, reason);
                }
                self.open.push(order.clone());
                self.watch_stale = true;
                return vec![ExchangeEvent::Order(order)];
            }
            let mark = self.marks.get(&request.symbol).copied();
            let crosses = mark.is_some_and(|m| match request.side {
                Side::Buy => price >= m,
                Side::Sell => price <= m,
            });
            if request.post_only && crosses {
                return reject(
                    order,
                    format!("post-only order would take liquidity (limit {price} crosses the last price)"),
                );
            }
            if crosses {
                self.marketable.insert(request.client_id.clone());
            }
        }
        if let Err(reason) = self.check_margin(&request) {
            return reject(order, reason);
        }
        self.open.push(order.clone());
        self.watch_stale = true;
        vec![ExchangeEvent::Order(order)]
    }

    /// Refuses an order that would take exposure past equity × leverage, as
    /// the paper exchange does (reduce-only orders and orders that lower the
    /// exposure always pass; before the first price nothing can be checked).
    fn check_margin(&self, request: &OrderRequest) -> Result<(), String> {
        let Some(mark) = self.marks.get(&request.symbol).copied().filter(|_| !request.reduce_only) else {
            return Ok(());
        };
        let resting: Decimal = self
            .open
            .iter()
            .filter(|o| o.request.kind == OrderKind::Limit && o.status != OrderStatus::Untriggered)
            .map(|o| o.remaining() * o.request.price.unwrap_or_default())
            .sum();
        let others: Decimal = self
            .positions
            .values()
            .filter(|p| p.symbol != request.symbol)
            .map(|p| p.size.abs() * self.marks.get(&p.symbol).copied().unwrap_or_default())
            .sum();
        let current = self.position(&request.symbol).size;
        let after = current + request.side.sign() * request.size;
        let before_total = others + resting + current.abs() * mark;
        let worked_at = request.price.or(request.stop.as_ref().map(|s| s.price)).unwrap_or(mark);
        let after_total = others + resting + after.abs() * worked_at.max(mark);
        let limit = self.equity() * self.config.leverage;
        if after_total > limit && after_total > before_total {
            return Err(format!(
                "insufficient margin: exposure would be {:.2}, limit is {:.2} (equity {:.2} × leverage {})",
                after_total,
                limit,
                self.equity(),
                self.config.leverage
            ));
        }
        Ok(())
    }

    /// Cancels an open order.
    pub fn cancel(&mut self, client_id: &str, now: TimestampMs) -> Vec<ExchangeEvent> {
        let Some(order) = self.cancel_because(client_id, "cancelled".into(), now) else { return Vec::new() };
        let mut events = vec![ExchangeEvent::Order(order)];
        self.settle_contingents(&mut events, now);
        events
    }

    fn cancel_because(&mut self, client_id: &str, reason: String, now: TimestampMs) -> Option<Order> {
        let index = self.open.iter().position(|o| o.request.client_id == client_id)?;
        let mut order = self.open.remove(index);
        self.watch_stale = true;
        self.marketable.remove(client_id);
        self.dormant.remove(client_id);
        order.status = OrderStatus::Cancelled;
        order.reason = Some(reason);
        order.updated = now;
        Some(order)
    }

    /// What closing orders and fills in `events` do to contingent orders
    /// (see [`crate::exchange::contingent`]), appended to `events`.
    fn settle_contingents(&mut self, events: &mut Vec<ExchangeEvent>, now: TimestampMs) {
        crate::exchange::contingent::settle(self, events, now);
    }

    /// What the open orders of `symbol` need from a price move.
    fn watch(&mut self, symbol: &str) -> PriceWatch {
        if self.watch_stale {
            self.watch = PriceWatch::of(self.open.iter(), |o| self.dormant.contains(&o.request.client_id));
            self.watch_stale = false;
        }
        self.watch.get(symbol).copied().unwrap_or_default()
    }

    /// Whether a bar of `symbol` moving from the last mark through `low` and
    /// `high` can fill or fire any of its open orders (if not, the bar's path
    /// need not be walked).
    pub fn may_act(&mut self, symbol: &str, low: f64, high: f64) -> bool {
        if !self.has_open(symbol) {
            return false;
        }
        let (low, high) = (dec(low), dec(high));
        let last = self.marks.get(symbol).copied();
        let (low, high) = last.map_or((low, high), |m| (low.min(m), high.max(m)));
        self.watch(symbol).touched(low, high)
    }

    /// True when an order on `symbol` is open.
    pub fn has_open(&self, symbol: &str) -> bool {
        self.open.iter().any(|o| o.request.symbol == symbol)
    }

    /// Sets the mark of `symbol` without filling anything (a bar no order
    /// could fill on).
    pub fn set_mark(&mut self, symbol: &str, price: f64) {
        match self.marks.get_mut(symbol) {
            Some(mark) => *mark = dec(price),
            None => {
                self.marks.insert(symbol.to_string(), dec(price));
            }
        }
    }

    /// Moves the price of `symbol` to `price` at `now` and fills what the
    /// move reaches, in order of placement. At a bar's open (`gap`) the price
    /// jumped there: market orders and limits at or through it fill at it.
    /// Within a bar the price moved continuously from the previous mark:
    /// market orders fill at the new price, limits the path reached fill at
    /// their limit price. Market fills are moved by slippage against the order.
    pub fn on_price(&mut self, symbol: &str, price: f64, now: TimestampMs, gap: bool) -> Vec<ExchangeEvent> {
        let mut events = Vec::new();
        let previous = self.marks.get(symbol).copied();
        self.set_mark(symbol, price);
        let price = self.marks[symbol];
        let previous = previous.unwrap_or(price);
        let (low, high) = if gap { (price, price) } else { (previous.min(price), previous.max(price)) };
        if !self.watch(symbol).touched(low, high) {
            return events; // nothing to fill or fire
        }
        let mut i = 0;
        while i < self.open.len() {
            if self.open[i].request.symbol != symbol {
                i += 1;
                continue;
            }
            // The price a market or taking order fills at: this point of the path,
            // or the trigger of a stop that fires on it.
            let mut reference = price;
            if !self.dormant.is_empty() && self.dormant.contains(&self.open[i].request.client_id) {
                i += 1;
                continue;
            }
            if self.open[i].status == OrderStatus::Untriggered {
                let order = &mut self.open[i];
                let side = order.request.side;
                let stop = order.request.stop.as_mut().expect("an untriggered order is a stop");
                if !stop.fires(side, low, high) {
                    if stop.trails() {
                        stop.follow(side, price);
                    }
                    i += 1;
                    continue;
                }
                // Fired: it works from its trigger (from the open when the bar
                // gapped through it); a stop-limit whose limit is not reached
                // there rests as a limit order.
                reference = if gap { price } else { stop.price };
                order.status = OrderStatus::Triggered;
                self.watch_stale = true;
                order.updated = now;
                if let Some(limit) = order.request.price {
                    if side.sign() * (limit - reference) < Decimal::ZERO {
                        events.push(ExchangeEvent::Order(order.clone()));
                        i += 1;
                        continue;
                    }
                    self.marketable.insert(order.request.client_id.clone());
                }
            }
            let request = self.open[i].request.clone();
            let taking = self.marketable.remove(&request.client_id);
            let slipped = || {
                let slipped = reference * (Decimal::ONE + request.side.sign() * self.config.slippage_bps / BPS);
                self.config.products.get(&request.symbol).map_or(slipped, |p| p.round_price_away(slipped, request.side))
            };
            let fill_at = match (request.kind, request.price) {
                (OrderKind::Market, _) => Some((slipped(), Liquidity::Taker)),
                // A limit that crossed when placed takes at the next price, never beyond its limit.
                (OrderKind::Limit, Some(limit))
                    if taking && (!gap || request.side.sign() * (limit - price) >= Decimal::ZERO) =>
                {
                    let capped = match request.side {
                        Side::Buy => slipped().min(limit),
                        Side::Sell => slipped().max(limit),
                    };
                    Some((capped, Liquidity::Taker))
                }
                (OrderKind::Limit, Some(limit)) => match request.side {
                    Side::Buy if gap && price <= limit => Some((price, Liquidity::Maker)),
                    Side::Buy if low <= limit => Some((limit, Liquidity::Maker)),
                    Side::Sell if gap && price >= limit => Some((price, Liquidity::Maker)),
                    Side::Sell if high >= limit => Some((limit, Liquidity::Maker)),
                    _ => None,
                },
                (OrderKind::Limit, None) => None,
            };
            let Some((price, liquidity)) = fill_at else {
                if request.time_in_force == crate::model::TimeInForce::Ioc {
                    let mut order = self.open.remove(i);
                    self.watch_stale = true;
                    order.status = OrderStatus::Cancelled;
                    order.reason = Some("immediate-or-cancel order could not fill at the next price".into());
                    order.updated = now;
                    events.push(ExchangeEvent::Order(order));
                } else {
                    i += 1;
                }
                continue;
            };
            let mut order = self.open.remove(i);
            self.watch_stale = true;
            let mut size = request.size;
            if request.reduce_only {
                let position = self.position(&request.symbol).size;
                if position.is_zero() || Side::closing(position) != request.side {
                    order.status = OrderStatus::Cancelled;
                    order.reason = Some("reduce-only order cancelled: no position to reduce".into());
                    order.updated = now;
                    events.push(ExchangeEvent::Order(order));
                    continue;
                }
                size = size.min(position.abs());
            }
            events.push(ExchangeEvent::Fill(self.execute(&mut order, size, price, liquidity, now)));
            events.push(ExchangeEvent::Order(order));
        }
        self.settle_contingents(&mut events, now);
        events
    }

    /// Closes a position at a price as a taker (end of the backtest).
    pub fn close_position(
        &mut self,
        symbol: &str,
        price: Decimal,
        now: TimestampMs,
        strategy: &str,
        client_id: String,
    ) -> Option<Fill> {
        let position = self.position(symbol);
        if position.size.is_zero() {
            return None;
        }
        let request = OrderRequest {
            client_id,
            strategy: strategy.to_string(),
            symbol: symbol.to_string(),
            side: Side::closing(position.size),
            kind: OrderKind::Market,
            size: position.size.abs(),
            price: None,
            time_in_force: crate::model::TimeInForce::Ioc,
            post_only: false,
            reduce_only: true,
            stop: None,
            oco: None,
            parent: None,
        };
        let mut order = Order::new(request, now);
        Some(self.execute(&mut order, position.size.abs(), price, Liquidity::Taker, now))
    }

    fn execute(
        &mut self,
        order: &mut Order,
        size: Decimal,
        price: Decimal,
        liquidity: Liquidity,
        now: TimestampMs,
    ) -> Fill {
        let fee_rate = liquidity.pick(self.config.maker_fee_bps, self.config.taker_fee_bps) / BPS;
        let mut fill =
            settle(&mut self.positions, &mut self.cash, order, Execution { size, price, liquidity, fee_rate, now });
        fill.id = self.fills.len() as u64 + 1;
        self.fees += fill.fee;
        self.fills.push(fill.clone());
        fill
    }
}

impl crate::exchange::contingent::ContingentBook for Broker {
    fn legs_waiting_for(&self, entry: &str) -> Vec<String> {
        let waits =
            |o: &&Order| o.request.parent.as_deref() == Some(entry) && self.dormant.contains(&o.request.client_id);
        self.open.iter().filter(waits).map(|o| o.request.client_id.clone()).collect()
    }

    fn start_leg(&mut self, leg: &str, filled: Decimal, now: TimestampMs) -> Option<Order> {
        self.dormant.remove(leg);
        self.watch_stale = true;
        let order = self.open.iter_mut().find(|o| o.request.client_id == leg)?;
        order.request.size = order.request.size.min(filled);
        order.updated = now;
        Some(order.clone())
    }

    fn group_members(&self, group: &str) -> Vec<String> {
        let members = self.open.iter().filter(|o| o.request.oco.as_deref() == Some(group));
        members.map(|o| o.request.client_id.clone()).collect()
    }

    fn group_of_closed(&self, _client_id: &str) -> Option<String> {
        None // a backtest's fills always come with their order
    }

    fn cancel_with(&mut self, client_id: &str, reason: String, now: TimestampMs) -> Option<Order> {
        self.cancel_because(client_id, reason, now)
    }

    fn note_closed(&mut self, order: &Order) {
        self.closed.insert(order.request.client_id.clone(), order.filled);
    }
}
