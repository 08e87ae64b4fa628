//! The paper exchange: market and limit orders (GTC/IOC, post-only,
//! reduce-only) filled against the feed's quotes with fees and slippage,
//! partial fills against traded size, netting positions and a quote-currency
//! account with a margin check; stop orders (stop-loss, take-profit,
//! trailing) held until the watched price reaches their trigger, then worked
//! as market or limit orders. Deterministic: time comes from the ticks.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::watch::PriceWatch;
use super::{ExchangeEvent, RemoteOrder, RemoteState, VenueCommand, VenueFill, VenueUpdate};
use crate::config::PaperConfig;
use crate::model::{
    Fill, Liquidity, Order, OrderKind, OrderRequest, OrderStatus, Position, Product, Side, Tick, TimeInForce,
    TimestampMs, TriggerOn,
};

const BPS: Decimal = Decimal::from_parts(10_000, 0, 0, false, 0);
/// Closed orders remembered for lookups by client id.
const RECENT_ORDERS: usize = 64;

/// Errors of calls that have no order to report on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PaperError {
    /// No open order has this client id.
    #[error("no open order with id {0:?}")]
    UnknownOrder(String),
}

/// One execution to settle.
#[derive(Debug, Clone, Copy)]
pub struct Execution {
    /// Filled size.
    pub size: Decimal,
    /// Price.
    pub price: Decimal,
    /// Maker or taker.
    pub liquidity: Liquidity,
    /// Fee as a fraction of notional.
    pub fee_rate: Decimal,
    /// Time of the fill.
    pub now: TimestampMs,
}

/// Settles an execution: fee (rounded to 8 decimals), netting position,
/// cash (realised PnL − fee), the order's fill state. Returns the fill (id 0).
/// Shared by the paper exchange and the backtest broker.
pub fn settle(
    positions: &mut BTreeMap<String, Position>,
    cash: &mut Decimal,
    order: &mut Order,
    execution: Execution,
) -> Fill {
    let Execution { size, price, liquidity, fee_rate, now } = execution;
    let fee = (price * size * fee_rate).round_dp(8);
    let request = &order.request;
    let position = positions.entry(request.symbol.clone()).or_insert_with(|| Position::flat(&request.symbol));
    let realized = position.apply(request.side, size, price);
    *cash += realized - fee;
    let fill = Fill::of(request, size, price, fee, liquidity, now);
    order.apply_fill(size, price, now);
    fill
}

/// Balances and positions of the paper account.
#[derive(Debug, Clone, Default, Serialize)]
pub struct AccountSnapshot {
    /// Quote currency.
    pub currency: String,
    /// Cash: starting balance + realised PnL − fees.
    pub balance: Decimal,
    /// Balance + unrealised PnL.
    pub equity: Decimal,
    /// Net positions with their unrealised PnL at the last mid.
    pub positions: Vec<(Position, Decimal)>,
}

/// A simulated exchange account.
#[derive(Debug, Clone)]
pub struct PaperExchange {
    currency: String,
    leverage: Decimal,
    taker_fee: Decimal,
    maker_fee: Decimal,
    slippage: Decimal,
    products: HashMap<String, Product>,
    quotes: HashMap<String, Tick>,
    resting: BTreeMap<u64, Order>,
    /// Where each resting order is in `resting`, by client id.
    resting_by_id: HashMap<String, u64>,
    /// Remaining size of the resting orders, by symbol (valued at the mark in margin checks).
    resting_size: HashMap<String, Decimal>,
    /// Stop orders waiting for their trigger, in placement order.
    stops: BTreeMap<u64, Order>,
    /// Where each waiting stop is in `stops`, by client id.
    stops_by_id: HashMap<String, u64>,
    /// Bracket legs still waiting for their entry to close (client ids).
    dormant: HashSet<String>,
    /// Per symbol, what the waiting stops need from a price (rebuilt after
    /// they change): a tick that can fire none of them skips them.
    stop_watch: HashMap<String, PriceWatch>,
    stop_watch_stale: bool,
    next_seq: u64,
    positions: BTreeMap<String, Position>,
    cash: Decimal,
    recent: VecDeque<Order>,
}

/// What the paper exchange persists: enough to continue exactly after a
/// restart. The book is saved as each resting order's place and client id:
/// the orders themselves are in the store's orders table, written in the
/// same commit (so saving stays small however many orders rest).
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SavedAccount {
    cash: Decimal,
    positions: Vec<Position>,
    /// Resting orders in full (written by older hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    resting: Vec<(u64, Order)>,
    /// Resting orders by place in the book and client id.
    #[serde(default)]
    book: Vec<(u64, String)>,
    /// Stop orders waiting for their trigger, in full (a trailing stop's
    /// trigger moves without an order event).
    #[serde(default)]
    stops: Vec<(u64, Order)>,
    /// Bracket legs still waiting for their entry.
    #[serde(default)]
    dormant: Vec<String>,
    next_seq: u64,
    recent: Vec<Order>,
}

impl PaperExchange {
    /// A fresh account as configured.
    pub fn new(config: &PaperConfig) -> Self {
        PaperExchange {
            currency: config.currency.clone(),
            leverage: config.leverage,
            taker_fee: config.taker_fee_bps / BPS,
            maker_fee: config.maker_fee_bps / BPS,
            slippage: config.slippage_bps / BPS,
            products: config.product_list().into_iter().map(|p| (p.symbol.clone(), p)).collect(),
            quotes: HashMap::new(),
            resting: BTreeMap::new(),
            resting_by_id: HashMap::new(),
            resting_size: HashMap::new(),
            stops: BTreeMap::new(),
            stops_by_id: HashMap::new(),
            dormant: HashSet::new(),
            stop_watch: HashMap::new(),
            stop_watch_stale: false,
            next_seq: 0,
            positions: BTreeMap::new(),
            cash: config.balance,
            recent: VecDeque::new(),
        }
    }

    /// The account and book as JSON, for the store.
    pub fn save(&self) -> serde_json::Value {
        let saved = SavedAccount {
            cash: self.cash,
            positions: self.positions.values().cloned().collect(),
            resting: Vec::new(),
            book: self.resting.iter().map(|(k, o)| (*k, o.request.client_id.clone())).collect(),
            stops: self.stops.iter().map(|(k, o)| (*k, o.clone())).collect(),
            dormant: self.dormant.iter().cloned().collect(),
            next_seq: self.next_seq,
            recent: self.recent.iter().cloned().collect(),
        };
        serde_json::to_value(saved).expect("paper account serializes")
    }

    /// Restores what [`save`](Self::save) wrote; `orders` are the stored
    /// orders by client id (the book's resting orders among them).
    pub fn restore(&mut self, saved: &serde_json::Value, orders: &BTreeMap<String, Order>) -> Result<(), String> {
        let saved: SavedAccount = serde_json::from_value(saved.clone()).map_err(|e| format!("paper account: {e}"))?;
        self.cash = saved.cash;
        self.positions = saved.positions.into_iter().map(|p| (p.symbol.clone(), p)).collect();
        self.resting.clear();
        self.resting_by_id.clear();
        self.resting_size.clear();
        for (seq, order) in saved.resting {
            self.rest(seq, order);
        }
        for (seq, client_id) in saved.book {
            match orders.get(&client_id) {
                Some(order) if order.status.is_open() => self.rest(seq, order.clone()),
                _ => tracing::warn!(order = %client_id, "paper book: a resting order is not stored as open; dropped"),
            }
        }
        self.stops.clear();
        self.stops_by_id.clear();
        for (seq, order) in saved.stops {
            match orders.get(&order.request.client_id) {
                Some(stored) if stored.status.is_open() => self.hold_stop(seq, order),
                _ => {
                    tracing::warn!(order = %order.request.client_id, "paper stops: a stop is not stored as open; dropped")
                }
            }
        }
        self.dormant = saved.dormant.into_iter().filter(|id| self.stops_by_id.contains_key(id)).collect();
        self.stop_watch_stale = true;
        self.next_seq = saved.next_seq;
        self.recent = saved.recent.into();
        Ok(())
    }

    /// What the exchange knows of an order by client id (open, or recently closed).
    pub fn lookup(&self, client_id: &str) -> Option<Order> {
        if let Some(seq) = self.resting_by_id.get(client_id) {
            return self.resting.get(seq).cloned();
        }
        if let Some(seq) = self.stops_by_id.get(client_id) {
            return self.stops.get(seq).cloned();
        }
        self.recent.iter().find(|o| o.request.client_id == client_id).cloned()
    }

    /// Holds a stop order until its trigger.
    fn hold_stop(&mut self, seq: u64, order: Order) {
        if !self.dormant.contains(&order.request.client_id) {
            self.watch_add(&order);
        }
        self.stops_by_id.insert(order.request.client_id.clone(), seq);
        self.stops.insert(seq, order);
    }

    /// Counts a stop that now watches the price into its symbol's watch.
    fn watch_add(&mut self, order: &Order) {
        match self.stop_watch.get_mut(&order.request.symbol) {
            Some(watch) => watch.add(order),
            None => self.stop_watch.entry(order.request.symbol.clone()).or_default().add(order),
        }
    }

    /// Takes the stop at `seq` out of the waiting stops.
    fn release_stop(&mut self, seq: u64) -> Option<Order> {
        let order = self.stops.remove(&seq)?;
        if !self.dormant.contains(&order.request.client_id) {
            let kept = self.stop_watch.get_mut(&order.request.symbol).is_some_and(|w| w.remove(&order));
            self.stop_watch_stale |= !kept;
        }
        self.stops_by_id.remove(&order.request.client_id);
        Some(order)
    }

    /// Puts an order in the book at `seq`.
    fn rest(&mut self, seq: u64, order: Order) {
        *self.resting_size.entry(order.request.symbol.clone()).or_default() += order.remaining();
        self.resting_by_id.insert(order.request.client_id.clone(), seq);
        self.resting.insert(seq, order);
    }

    /// Takes the order at `seq` out of the book.
    fn unrest(&mut self, seq: u64) -> Option<Order> {
        let order = self.resting.remove(&seq)?;
        self.resting_by_id.remove(&order.request.client_id);
        if let Some(size) = self.resting_size.get_mut(&order.request.symbol) {
            *size -= order.remaining();
        }
        Some(order)
    }

    fn remember(&mut self, events: &[ExchangeEvent]) {
        for event in events {
            if let ExchangeEvent::Order(order) = event
                && !order.status.is_open()
            {
                if self.recent.len() == RECENT_ORDERS {
                    self.recent.pop_front();
                }
                self.recent.push_back(order.clone());
            }
        }
    }

    /// The trading rules of a symbol.
    pub fn product(&self, symbol: &str) -> Option<&Product> {
        self.products.get(symbol)
    }

    /// The account's net position in a symbol.
    pub fn position(&self, symbol: &str) -> Position {
        self.positions.get(symbol).cloned().unwrap_or_else(|| Position::flat(symbol))
    }

    /// Resting orders, oldest first.
    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.resting.values()
    }

    /// Cash balance and equity marked at the last mids.
    pub fn account(&self) -> AccountSnapshot {
        let positions: Vec<_> = self
            .positions
            .values()
            .filter(|p| !p.size.is_zero())
            .map(|p| (p.clone(), self.mark(&p.symbol).map_or(Decimal::ZERO, |m| p.unrealized_pnl(m))))
            .collect();
        let unrealized: Decimal = positions.iter().map(|(_, u)| *u).sum();
        AccountSnapshot {
            currency: self.currency.clone(),
            balance: self.cash,
            equity: self.cash + unrealized,
            positions,
        }
    }

    /// Carries out a command as a live venue would, and answers at once with
    /// the updates a live venue sends: the order's state (with the size and
    /// price it accepted) before its fills.
    pub fn answer(&mut self, command: VenueCommand) -> Vec<VenueUpdate> {
        match command {
            VenueCommand::Place(request) => {
                let events = self.submit(request);
                let accepted = match (events.first(), events.iter().find_map(order_of)) {
                    (Some(ExchangeEvent::Fill(_)), Some(order)) => {
                        Some(update_of(order, RemoteState::Open, order.request.client_id.clone()))
                    }
                    _ => None,
                };
                accepted.into_iter().chain(updates(events)).collect()
            }
            VenueCommand::PlaceBracket { entry, legs } => {
                entry.into_iter().chain(legs).flat_map(|request| self.answer(VenueCommand::Place(request))).collect()
            }
            VenueCommand::Cancel(order) => self.answer_cancels(std::slice::from_ref(&order)),
            VenueCommand::CancelSymbol { orders, .. } => self.answer_cancels(&orders),
        }
    }

    fn answer_cancels(&mut self, orders: &[Order]) -> Vec<VenueUpdate> {
        let events = orders.iter().map(|order| self.cancel(&order.request.client_id));
        let (cancelled, errors): (Vec<_>, Vec<_>) = events.partition(Result::is_ok);
        let mut answers = updates(cancelled.into_iter().filter_map(Result::ok).flatten().collect());
        answers.extend(
            errors
                .into_iter()
                .filter_map(Result::err)
                .map(|error| VenueUpdate::Difference(format!("paper exchange: cannot cancel: {error}"))),
        );
        answers
    }

    /// A new quote, as a live venue's private stream reports it: the fills of
    /// resting orders it crosses, and orders it closes.
    pub fn on_quote(&mut self, tick: &Tick) -> Vec<VenueUpdate> {
        updates(self.on_tick(tick))
    }

    /// Accepts, fills or rejects an order at the current quote.
    pub fn submit(&mut self, request: OrderRequest) -> Vec<ExchangeEvent> {
        let mut events = self.accept(request);
        self.settle_contingents(&mut events);
        self.remember(&events);
        events
    }

    fn accept(&mut self, mut request: OrderRequest) -> Vec<ExchangeEvent> {
        let now = self.quotes.get(&request.symbol).map_or(0, |q| q.time);
        let reject = |request: OrderRequest, reason: String| {
            let mut order = Order::new(request, now);
            order.status = OrderStatus::Rejected;
            order.reason = Some(reason);
            vec![ExchangeEvent::Order(order)]
        };
        let Some(product) = self.products.get(&request.symbol).cloned() else {
            let reason = format!("unknown symbol {}", request.symbol);
            return reject(request, reason);
        };
        let Some(quote) = self.quotes.get(&request.symbol).cloned() else {
            let reason = format!("no market data for {} yet", request.symbol);
            return reject(request, reason);
        };
        request.size = product.round_size(request.size);
        if request.size <= Decimal::ZERO {
            return reject(request, format!("size is below the lot size {}", product.lot_size));
        }
        if let Some(price) = request.price {
            let price = product.round_price(price);
            if price <= Decimal::ZERO {
                return reject(request, format!("limit price must be positive, got {price}"));
            }
            request.price = Some(price);
        } else if request.kind == OrderKind::Limit {
            return reject(request, "limit order without a price".into());
        }
        let position = self.position(&request.symbol);
        // A bracket leg closes what its entry will open: it is checked when it fires.
        let leg = request.parent.is_some();
        if request.reduce_only && !leg {
            if position.size.is_zero() || Side::closing(position.size) != request.side {
                return reject(request, "reduce-only order would increase the position".into());
            }
            request.size = request.size.min(position.size.abs());
        } else if !request.reduce_only
            && let Err(reason) = self.check_margin(&Self::as_worked(&request), &quote)
        {
            return reject(request, reason);
        }
        if let Some(mut stop) = request.stop.take() {
            let watched = watched_price(stop.on, &quote);
            if stop.distance(watched).is_some() {
                stop.start_trailing(request.side, watched);
            }
            stop.price = product.round_price(stop.price);
            if stop.price <= Decimal::ZERO {
                let reason = format!("stop trigger must be positive, got {}", stop.price);
                request.stop = Some(stop);
                return reject(request, reason);
            }
            if let Some(parent) = request.parent.clone() {
                // A bracket leg: it waits for its entry, or starts now if the entry has closed.
                let entry = self.lookup(&parent);
                let filled = entry.as_ref().filter(|e| !e.status.is_open()).map(|e| e.filled);
                if filled.is_some_and(|f| f.is_zero()) {
                    request.stop = Some(stop);
                    return reject(request, format!("its entry {parent} ended without a fill"));
                }
                request.stop = Some(stop);
                let mut order = Order::new(request, now);
                order.status = OrderStatus::Untriggered;
                match filled {
                    Some(filled) => order.request.size = order.request.size.min(filled),
                    None => drop(self.dormant.insert(order.request.client_id.clone())),
                }
                self.hold_stop(self.next_seq, order.clone());
                self.next_seq += 1;
                return vec![ExchangeEvent::Order(order)];
            }
            if stop.fires(request.side, watched, watched) {
                let reason = format!(
                    "the stop would trigger at once: trigger {} is already reached by the {} price {watched}",
                    stop.price,
                    stop.on.as_str()
                );
                request.stop = Some(stop);
                return reject(request, reason);
            }
            request.stop = Some(stop);
            let mut order = Order::new(request, now);
            order.status = OrderStatus::Untriggered;
            self.hold_stop(self.next_seq, order.clone());
            self.next_seq += 1;
            return vec![ExchangeEvent::Order(order)];
        }
        let touch = match request.side {
            Side::Buy => quote.ask,
            Side::Sell => quote.bid,
        };
        let marketable = match (request.kind, request.price) {
            (OrderKind::Market, _) => true,
            (OrderKind::Limit, Some(price)) => match request.side {
                Side::Buy => price >= touch,
                Side::Sell => price <= touch,
            },
            (OrderKind::Limit, None) => false,
        };
        if marketable && request.post_only {
            let reason = format!(
                "post-only order would take liquidity (limit {} crosses {touch})",
                request.price.unwrap_or_default()
            );
            return reject(request, reason);
        }
        let mut order = Order::new(request, now);
        if marketable {
            let fill = self.take(&mut order, touch, now);
            return vec![ExchangeEvent::Fill(fill), ExchangeEvent::Order(order)];
        }
        if order.request.time_in_force == TimeInForce::Ioc {
            order.status = OrderStatus::Cancelled;
            order.reason = Some("immediate-or-cancel order could not fill at once".into());
            return vec![ExchangeEvent::Order(order)];
        }
        self.rest(self.next_seq, order.clone());
        self.next_seq += 1;
        vec![ExchangeEvent::Order(order)]
    }

    /// Cancels an open order (and the bracket legs waiting for it).
    pub fn cancel(&mut self, client_id: &str) -> Result<Vec<ExchangeEvent>, PaperError> {
        let mut events = vec![ExchangeEvent::Order(self.cancel_because(client_id, "cancelled".into())?)];
        self.settle_contingents(&mut events);
        self.remember(&events);
        Ok(events)
    }

    /// Takes an open order out of the book or the waiting stops, cancelled.
    fn cancel_because(&mut self, client_id: &str, reason: String) -> Result<Order, PaperError> {
        let waiting = self.stops_by_id.get(client_id).copied();
        let mut order = match (waiting, self.resting_by_id.get(client_id).copied()) {
            (Some(seq), _) => self.release_stop(seq).expect("indexed"),
            (None, Some(seq)) => self.unrest(seq).expect("indexed"),
            (None, None) => return Err(PaperError::UnknownOrder(client_id.to_string())),
        };
        order.status = OrderStatus::Cancelled;
        order.reason = Some(reason);
        order.updated = self.quotes.get(&order.request.symbol).map_or(order.updated, |q| q.time);
        self.dormant.remove(client_id);
        Ok(order)
    }

    /// What closing orders and fills in `events` do to contingent orders
    /// (see [`super::contingent`]), appended to `events`.
    fn settle_contingents(&mut self, events: &mut Vec<ExchangeEvent>) {
        let now = events.iter().find_map(order_of).map_or(0, |o| o.updated);
        super::contingent::settle(self, events, now);
    }

    /// Updates the quote of a symbol and fills resting orders it crosses, in
    /// time priority, limited by the tick's traded size when it carries one;
    /// then fires the stops it reaches.
    pub fn on_tick(&mut self, tick: &Tick) -> Vec<ExchangeEvent> {
        self.quotes.insert(tick.symbol.clone(), tick.clone());
        let mut events = Vec::new();
        let mut available = (tick.volume > Decimal::ZERO).then_some(tick.volume);
        let crossed: Vec<u64> = self
            .resting
            .iter()
            .filter(|(_, o)| o.request.symbol == tick.symbol)
            .filter(|(_, o)| {
                let price = o.request.price.unwrap_or_default();
                match o.request.side {
                    Side::Buy => tick.ask <= price || tick.last <= price,
                    Side::Sell => tick.bid >= price || tick.last >= price,
                }
            })
            .map(|(seq, _)| *seq)
            .collect();
        for seq in crossed {
            if available.is_some_and(|a| a <= Decimal::ZERO) {
                break;
            }
            let mut order = self.unrest(seq).expect("listed above");
            let size = available.map_or(order.remaining(), |a| a.min(order.remaining()));
            if let Some(a) = available.as_mut() {
                *a -= size;
            }
            if order.request.reduce_only && self.reducible(&order).is_none() {
                order.status = OrderStatus::Cancelled;
                order.reason = Some("reduce-only order cancelled: the position is already closed".into());
                events.push(ExchangeEvent::Order(order));
                continue;
            }
            let price = order.request.price.unwrap_or(tick.last);
            let fill = self.execute(&mut order, size, price, Liquidity::Maker, tick.time);
            events.push(ExchangeEvent::Fill(fill));
            if order.status.is_open() {
                self.rest(seq, order.clone());
            }
            events.push(ExchangeEvent::Order(order));
        }
        // Then the stops this tick fires (a stop-limit put in the book now
        // waits for the next tick: this one's trade is what fired it).
        events.extend(self.trigger_stops(tick));
        self.settle_contingents(&mut events);
        self.remember(&events);
        events
    }

    /// Moves the trailing stops of the tick's symbol and fires those whose
    /// trigger the watched price reached: a market stop fills at once at the
    /// touch (with slippage), a stop-limit fills if its limit allows or rests
    /// in the book. A reduce-only stop is capped at the position, and
    /// cancelled when there is none left.
    fn trigger_stops(&mut self, tick: &Tick) -> Vec<ExchangeEvent> {
        if self.stop_watch_stale {
            let dormant = &self.dormant;
            self.stop_watch = PriceWatch::of(self.stops.values(), |o| dormant.contains(&o.request.client_id));
            self.stop_watch_stale = false;
        }
        let (last, mark) = (tick.last, tick.mid());
        let quiet = self.stop_watch.get(&tick.symbol).is_none_or(|w| !w.touched(last.min(mark), last.max(mark)));
        if quiet {
            return Vec::new();
        }
        let mut fired = Vec::new();
        let mut events = Vec::new();
        let product = self.products.get(&tick.symbol);
        let dormant = &self.dormant;
        let live = self.stops.iter_mut().filter(|(_, o)| o.request.symbol == tick.symbol);
        for (seq, order) in live.filter(|(_, o)| !dormant.contains(&o.request.client_id)) {
            let side = order.request.side;
            let Some(stop) = order.request.stop.as_mut() else { continue };
            let watched = watched_price(stop.on, tick);
            let before = stop.price;
            if stop.trails() {
                stop.follow(side, watched);
                stop.price = product.map_or(stop.price, |p| p.round_price(stop.price));
            }
            if stop.fires(side, watched, watched) {
                fired.push(*seq);
            } else if stop.price != before {
                // A trailing stop moved: reported (and so stored) like any order change.
                order.updated = tick.time;
                events.push(ExchangeEvent::Order(order.clone()));
            }
        }
        for seq in fired {
            let mut order = self.release_stop(seq).expect("listed above");
            order.status = OrderStatus::Triggered;
            order.updated = tick.time;
            if order.request.reduce_only {
                let Some(reducible) = self.reducible(&order) else {
                    order.status = OrderStatus::Cancelled;
                    order.reason = Some("reduce-only stop cancelled at its trigger: no position to reduce".into());
                    events.push(ExchangeEvent::Order(order));
                    continue;
                };
                order.request.size = order.request.size.min(reducible);
            }
            let touch = match order.request.side {
                Side::Buy => tick.ask,
                Side::Sell => tick.bid,
            };
            let crosses = order.request.price.is_none_or(|limit| match order.request.side {
                Side::Buy => limit >= touch,
                Side::Sell => limit <= touch,
            });
            if crosses {
                let fill = self.take(&mut order, touch, tick.time);
                events.push(ExchangeEvent::Fill(fill));
            } else {
                self.rest(self.next_seq, order.clone());
                self.next_seq += 1;
            }
            events.push(ExchangeEvent::Order(order));
        }
        events
    }

    /// How much of the position an order on its closing side can reduce;
    /// `None` when there is no position on the other side of it.
    fn reducible(&self, order: &Order) -> Option<Decimal> {
        let position = self.position(&order.request.symbol).size;
        (!position.is_zero() && Side::closing(position) == order.request.side).then(|| position.abs())
    }

    /// Fills what remains of an order as a taker at `touch`, moved by
    /// slippage against it, rounded to the tick and never past its limit.
    fn take(&mut self, order: &mut Order, touch: Decimal, now: TimestampMs) -> Fill {
        let slipped = touch * (Decimal::ONE + order.request.side.sign() * self.slippage);
        let mut price = match self.products.get(&order.request.symbol) {
            Some(product) => product.round_price_away(slipped, order.request.side),
            None => slipped,
        };
        if let Some(limit) = order.request.price {
            price = match order.request.side {
                Side::Buy => price.min(limit),
                Side::Sell => price.max(limit),
            };
        }
        let size = order.remaining();
        self.execute(order, size, price, Liquidity::Taker, now)
    }

    /// A stop order as it will work once triggered, for the margin check:
    /// priced at its limit, or at its trigger when it is a market stop.
    fn as_worked(request: &OrderRequest) -> std::borrow::Cow<'_, OrderRequest> {
        match &request.stop {
            Some(stop) if request.price.is_none() && stop.price > Decimal::ZERO => {
                std::borrow::Cow::Owned(OrderRequest { price: Some(stop.price), ..request.clone() })
            }
            _ => std::borrow::Cow::Borrowed(request),
        }
    }

    fn execute(
        &mut self,
        order: &mut Order,
        size: Decimal,
        price: Decimal,
        liquidity: Liquidity,
        now: TimestampMs,
    ) -> Fill {
        let rate = liquidity.pick(self.maker_fee, self.taker_fee);
        settle(&mut self.positions, &mut self.cash, order, Execution { size, price, liquidity, fee_rate: rate, now })
    }

    fn mark(&self, symbol: &str) -> Option<Decimal> {
        self.quotes.get(symbol).map(Tick::mid)
    }

    /// Rejects orders that would take gross exposure (positions at their marks
    /// plus resting orders) above equity × leverage; orders that reduce
    /// exposure always pass.
    fn check_margin(&self, request: &OrderRequest, quote: &Tick) -> Result<(), String> {
        let mark_of = |symbol: &str| self.mark(symbol).unwrap_or_default();
        // Resting orders are valued at their symbol's mark (an order rests only
        // once its symbol is quoted): a far-off order is not exposure.
        let resting = self
            .resting_size
            .iter()
            .map(|(symbol, size)| size.saturating_mul(mark_of(symbol)))
            .fold(Decimal::ZERO, Decimal::saturating_add);
        let exposure_without = self
            .positions
            .values()
            .filter(|p| p.symbol != request.symbol)
            .map(|p| p.size.abs().saturating_mul(mark_of(&p.symbol)))
            .fold(resting, Decimal::saturating_add);
        let mark = quote.mid();
        let current = self.position(&request.symbol).size;
        let after = current + request.side.sign() * request.size;
        let before_total = exposure_without.saturating_add(current.abs().saturating_mul(mark));
        let after_total =
            exposure_without.saturating_add(after.abs().saturating_mul(request.price.unwrap_or(mark).max(mark)));
        let limit = self.account().equity.saturating_mul(self.leverage);
        if after_total > limit && after_total > before_total {
            return Err(format!(
                "insufficient margin: exposure would be {:.2} {cur}, limit is {:.2} {cur} (equity {:.2} × leverage {})",
                after_total,
                limit,
                self.account().equity,
                self.leverage,
                cur = self.currency
            ));
        }
        Ok(())
    }
}

impl super::contingent::ContingentBook for PaperExchange {
    fn legs_waiting_for(&self, entry: &str) -> Vec<String> {
        let waits_for = |id: &&String| self.lookup(id).is_some_and(|l| l.request.parent.as_deref() == Some(entry));
        self.dormant.iter().filter(waits_for).cloned().collect()
    }

    fn start_leg(&mut self, leg: &str, filled: Decimal, now: TimestampMs) -> Option<Order> {
        self.dormant.remove(leg);
        let order = self.stops.get_mut(self.stops_by_id.get(leg)?)?;
        order.request.size = order.request.size.min(filled);
        order.updated = now;
        let order = order.clone();
        self.watch_add(&order);
        Some(order)
    }

    fn group_members(&self, group: &str) -> Vec<String> {
        let orders = self.stops.values().chain(self.resting.values());
        orders.filter(|o| o.request.oco.as_deref() == Some(group)).map(|o| o.request.client_id.clone()).collect()
    }

    fn group_of_closed(&self, client_id: &str) -> Option<String> {
        self.lookup(client_id).and_then(|o| o.request.oco)
    }

    fn cancel_with(&mut self, client_id: &str, reason: String, _now: TimestampMs) -> Option<Order> {
        self.cancel_because(client_id, reason).ok()
    }
}

/// The price a stop watches on a tick.
fn watched_price(on: TriggerOn, tick: &Tick) -> Decimal {
    match on {
        TriggerOn::Last => tick.last,
        TriggerOn::Mark => tick.mid(),
    }
}

fn order_of(event: &ExchangeEvent) -> Option<&Order> {
    match event {
        ExchangeEvent::Order(order) => Some(order),
        ExchangeEvent::Fill(_) => None,
    }
}

/// An order's state in a live venue's words, with the size and price accepted.
fn update_of(order: &Order, state: RemoteState, client_id: String) -> VenueUpdate {
    let remote = RemoteOrder {
        state,
        reason: order.reason.clone(),
        size: Some(order.request.size),
        price: order.request.price,
        trigger: order.request.stop.as_ref().map(|s| s.price),
    };
    VenueUpdate::Order { client_id, remote }
}

/// The paper exchange's own events as the updates a live venue sends.
fn updates(events: Vec<ExchangeEvent>) -> Vec<VenueUpdate> {
    events
        .into_iter()
        .map(|event| match event {
            ExchangeEvent::Fill(fill) => VenueUpdate::Fill(VenueFill {
                exchange_id: None,
                client_id: fill.order_id,
                size: fill.size,
                price: fill.price,
                fee: fill.fee,
                liquidity: fill.liquidity,
                time: fill.time,
            }),
            ExchangeEvent::Order(order) => {
                let state = match order.status {
                    OrderStatus::Filled => RemoteState::Closed,
                    OrderStatus::Cancelled => RemoteState::Cancelled,
                    OrderStatus::Rejected => RemoteState::Rejected,
                    OrderStatus::Pending | OrderStatus::Open | OrderStatus::PartiallyFilled => RemoteState::Open,
                    OrderStatus::Untriggered => RemoteState::Untriggered,
                    OrderStatus::Triggered => RemoteState::Triggered,
                };
                let client_id = order.request.client_id.clone();
                update_of(&order, state, client_id)
            }
        })
        .collect()
}
