//! The order manager: the gate that refuses new orders during shutdown,
//! ownership checks (a strategy may only cancel its own orders), order state,
//! fill numbering, each strategy's own positions from its fills, the account
//! read model that strategies see, and what must be written to the store
//! (intents before sending, outcomes before anyone hears of them).
//! Synchronous and deterministic: the live engine task and a backtest drive
//! it the same way. Every venue gets the same commands and answers with the
//! same updates, applied through [`Oms::apply_venue`]: the paper exchange
//! at once, a live connector later.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rust_decimal::Decimal;

use crate::bounded::BoundedMap;
use crate::exchange::{ExchangeEvent, RemoteOrder, RemoteState, Venue, VenueCommand, VenueFill, VenueUpdate};
use crate::model::{AccountView, Fill, Order, OrderKind, OrderRequest, OrderStatus, Position, Side, Tick, TimeInForce};
use crate::store::{Recovered, WriteOp};

/// Closed orders remembered so late fills can still be attributed.
const REMEMBERED_CLOSED: usize = 4_096;
/// Exchange fill ids remembered to drop repeats (reconciliations look back minutes, not days).
const REMEMBERED_FILLS: usize = 100_000;

/// Why a cancel could not be done.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExecutionError {
    /// No open order with that id belongs to the strategy.
    #[error("no open order {client_id:?} belongs to strategy {strategy}")]
    NotOwnOrder {
        /// Strategy asking.
        strategy: String,
        /// Client order id.
        client_id: String,
    },
    /// The stored state could not be restored.
    #[error("cannot restore the stored account: {0}")]
    Restore(String),
}

/// The order manager.
pub struct Oms {
    venue: Venue,
    open: BTreeMap<String, Order>,
    closed: BoundedMap<String, Order>,
    positions: HashMap<String, HashMap<String, Position>>,
    marks: rustc_hash::FxHashMap<String, Decimal>,
    exchange_marks: HashSet<String>,
    gate_open: bool,
    next_fill_id: u64,
    seen_fills: BoundedMap<String, ()>,
    /// Symbols whose market data is stale: new entries on them are refused.
    stale: HashSet<String>,
    view: Arc<ArcSwap<AccountView>>,
    clock: crate::clock::Clock,
    risk: crate::risk::RiskGate,
    /// Limits that refused orders since the last [`Oms::take_refusals`].
    refusals: Vec<&'static str>,
    /// Orders checked and accepted but not sent yet (their intents are being stored).
    preparing: BTreeMap<String, Order>,
    /// The limits in force, for readers (the API).
    limits: Arc<ArcSwap<crate::risk::Limits>>,
    /// The same as JSON, for scripts (in the account view).
    limits_json: Arc<serde_json::Value>,
    /// What the protections watch, for readers (the API).
    protections: Arc<ArcSwap<Vec<crate::risk::ProtectionStatus>>>,
    /// Trading rules by symbol (orders are rounded to them before checks).
    products: HashMap<String, crate::model::Product>,
    /// Changes wait for [`Oms::release_view`] before readers see them.
    hold_view: bool,
    /// The view changed while held.
    view_dirty: std::cell::Cell<bool>,
    /// The open orders as last published (rebuilt only when `open` changed).
    published_orders: std::cell::RefCell<Arc<Vec<Order>>>,
    /// `open` changed since the last publication.
    open_changed: std::cell::Cell<bool>,
}

impl Oms {
    /// An order manager over a venue.
    pub fn new(venue: Venue) -> Self {
        let oms = Oms {
            venue,
            open: BTreeMap::new(),
            closed: BoundedMap::new(REMEMBERED_CLOSED),
            positions: HashMap::new(),
            marks: Default::default(),
            exchange_marks: HashSet::new(),
            gate_open: true,
            next_fill_id: 1,
            seen_fills: BoundedMap::new(REMEMBERED_FILLS),
            stale: HashSet::new(),
            view: Arc::new(ArcSwap::from_pointee(AccountView::default())),
            clock: crate::clock::Clock::wall(),
            risk: crate::risk::RiskGate::default(),
            refusals: Vec::new(),
            preparing: BTreeMap::new(),
            limits: Default::default(),
            limits_json: Default::default(),
            protections: Default::default(),
            products: HashMap::new(),
            hold_view: false,
            view_dirty: std::cell::Cell::new(false),
            published_orders: Default::default(),
            open_changed: std::cell::Cell::new(true),
        };
        oms.publish();
        oms
    }

    /// Marks a symbol's market data stale (new entries on it are refused) or fresh again.
    pub fn set_stale(&mut self, symbol: &str, stale: bool) {
        if stale {
            self.stale.insert(symbol.to_string());
        } else {
            self.stale.remove(symbol);
        }
    }

    /// Exchange fill ids already recorded (from the store): repeats are dropped.
    pub fn remember_fills(&mut self, ids: impl IntoIterator<Item = String>) {
        for id in ids {
            self.seen_fills.insert(id, ());
        }
    }

    /// Restores the stored state. Orders whose outcome is unknown (intent
    /// recorded, no answer stored) are resolved by asking the exchange by
    /// client id — never resent. Returns the resolved orders' events.
    pub fn restore(&mut self, recovered: &Recovered) -> Result<Vec<ExchangeEvent>, ExecutionError> {
        if let (Some(account), Venue::Paper(exchange)) = (&recovered.paper_account, &mut self.venue) {
            exchange.restore(account, &recovered.orders).map_err(ExecutionError::Restore)?;
        }
        self.positions = recovered
            .positions
            .iter()
            .map(|(strategy, p)| (strategy.clone(), p.iter().map(|(s, p)| (s.clone(), p.clone())).collect()))
            .collect();
        self.next_fill_id = recovered.last_fill_id + 1;
        if let Some(trading) = &recovered.trading {
            self.risk.restore_trading(trading.clone());
        }
        if let Some(protections) = &recovered.protections {
            let protections = serde_json::from_value(protections.clone())
                .map_err(|e| ExecutionError::Restore(format!("protections: {e}")))?;
            self.risk.restore_protections(protections);
        }
        let mut resolved = Vec::new();
        for (client_id, order) in &recovered.orders {
            if !(order.status.is_open() || order.status == OrderStatus::Pending) {
                self.remember_closed(order.clone());
                continue;
            }
            let (current, changed) = self.resolve_at_start(order);
            if current.status.is_open() || current.status == OrderStatus::Pending {
                self.open.insert(client_id.clone(), current.clone());
                self.open_changed.set(true);
            } else {
                self.remember_closed(current.clone());
            }
            if changed {
                resolved.push(ExchangeEvent::Order(current));
            }
        }
        self.publish();
        Ok(resolved)
    }

    /// The exchange's word on a stored open or pending order, and whether it changed.
    fn resolve_at_start(&self, order: &Order) -> (Order, bool) {
        let client_id = &order.request.client_id;
        let never_sent = || {
            let mut lost = order.clone();
            lost.status = OrderStatus::Rejected;
            lost.reason = Some("never reached the exchange: the host stopped before sending it".into());
            (lost, true)
        };
        match &self.venue {
            Venue::Paper(exchange) => match (exchange.lookup(client_id), order.status) {
                (Some(known), OrderStatus::Pending) => (known, true),
                (Some(known), _) => {
                    let changed = !known.status.is_open();
                    (known, changed)
                }
                (None, OrderStatus::Pending) => never_sent(),
                (None, _) => (order.clone(), false),
            },
            Venue::Live(live) => match live.known_at_start.get(client_id) {
                None if order.status == OrderStatus::Pending => never_sent(),
                None => {
                    let mut gone = order.clone();
                    gone.status = OrderStatus::Cancelled;
                    gone.reason = Some("the exchange no longer knows this order".into());
                    (gone, true)
                }
                Some(remote) => {
                    let mut current = order.clone();
                    apply_remote(&mut current, remote, order.updated);
                    let changed = current != *order;
                    (current, changed)
                }
            },
        }
    }

    /// The account snapshot strategies read.
    pub fn view(&self) -> Arc<ArcSwap<AccountView>> {
        self.view.clone()
    }

    /// Refuses every new order from now on (shutdown phase one).
    pub fn close_gate(&mut self) {
        self.gate_open = false;
    }

    /// Checks every new order against these limits from now on.
    /// The trading states in force stay as they are.
    pub fn set_risk(&mut self, mut risk: crate::risk::RiskGate) {
        risk.take_state(&mut self.risk);
        self.limits.store(Arc::new(risk.limits()));
        self.limits_json = Arc::new(serde_json::to_value(risk.limits()).unwrap_or_default());
        self.protections.store(Arc::new(risk.protections().status()));
        self.risk = risk;
        self.publish();
    }

    /// Lets the protections look at the account now; returns what they
    /// triggered or lifted (the trading states are changed already).
    pub fn watch_protections(&mut self) -> Vec<crate::risk::ProtectionEvent> {
        if !self.risk.protects() {
            return Vec::new();
        }
        let now = self.now();
        let events = self.risk.watch(&self.view.load(), now);
        if !events.is_empty() {
            self.publish();
        }
        events
    }

    /// What the protections watch, as published for readers.
    pub fn protections(&self) -> Arc<ArcSwap<Vec<crate::risk::ProtectionStatus>>> {
        self.protections.clone()
    }

    /// The trading states and what the protections watch, for the store
    /// (publishing the protections' status for readers as it goes).
    pub fn risk_state_ops(&self) -> Vec<WriteOp> {
        self.protections.store(Arc::new(self.risk.protections().status()));
        let protections = serde_json::to_value(self.risk.protections()).unwrap_or_default();
        vec![WriteOp::Trading(self.risk.trading().clone()), WriteOp::Protections(protections)]
    }

    /// The limits in force, as published for readers.
    pub fn limits(&self) -> Arc<ArcSwap<crate::risk::Limits>> {
        self.limits.clone()
    }

    /// Sets the account's trading state (`strategy` none) or a strategy's;
    /// returns the states now in force.
    pub fn set_trading(
        &mut self,
        strategy: Option<&str>,
        state: crate::model::TradingState,
    ) -> crate::model::TradingStates {
        self.risk.set_trading(strategy, state);
        self.publish();
        self.risk.trading().clone()
    }

    /// Every open order, for a kill switch: cancels of all of them.
    pub fn cancel_everything(&mut self) -> Vec<ExchangeEvent> {
        let strategies: BTreeSet<String> = self.open.values().map(|o| o.request.strategy.clone()).collect();
        self.cancel_strategies(&strategies)
    }

    /// Cancels every open order of these strategies (at shutdown and for the
    /// kill switch). Where they hold every open order of a symbol, the symbol's
    /// acknowledged orders go to the venue as one cancel
    /// ([`VenueCommand::CancelSymbol`]); the rest are cancelled one by one:
    /// other strategies' orders are left be, and an order still pending (its
    /// send may arrive after a cancel-all) is looked up by its own cancel.
    pub fn cancel_strategies(&mut self, strategies: &BTreeSet<String>) -> Vec<ExchangeEvent> {
        #[derive(Default)]
        struct Symbol {
            acknowledged: Vec<Order>,
            one_by_one: Vec<Order>,
            others_hold_orders: bool,
        }
        let mut by_symbol: BTreeMap<&str, Symbol> = BTreeMap::new();
        for order in self.open.values() {
            let symbol = by_symbol.entry(order.request.symbol.as_str()).or_default();
            if !strategies.contains(&order.request.strategy) {
                symbol.others_hold_orders = true;
            } else if order.status == OrderStatus::Pending {
                symbol.one_by_one.push(order.clone());
            } else {
                symbol.acknowledged.push(order.clone());
            }
        }
        let mut commands = Vec::new();
        for (name, mut symbol) in by_symbol {
            if symbol.others_hold_orders || symbol.acknowledged.len() < 2 {
                symbol.one_by_one.append(&mut symbol.acknowledged);
            } else {
                commands.push(VenueCommand::CancelSymbol { symbol: name.to_string(), orders: symbol.acknowledged });
            }
            commands.extend(symbol.one_by_one.into_iter().map(VenueCommand::Cancel));
        }
        commands.into_iter().flat_map(|command| self.command(command)).collect()
    }

    /// Strategies holding a position.
    pub fn strategies_with_positions(&self) -> Vec<String> {
        self.positions.iter().filter(|(_, p)| p.values().any(|p| !p.size.is_zero())).map(|(s, _)| s.clone()).collect()
    }

    /// Checks a strategy's order before anything is sent: the shutdown gate,
    /// stale market data, its client id, then the risk limits. The result is
    /// `Pending` (record it as an intent, then send it) or `Rejected` with the reason.
    pub fn prepare(&mut self, mut request: OrderRequest) -> Order {
        let stale = !request.reduce_only && self.stale.contains(&request.symbol);
        let refusal = if let Err(invalid) = self.round_to_product(&mut request) {
            Some(invalid)
        } else if !self.gate_open {
            Some("the host is shutting down: new orders are refused".to_string())
        } else if stale {
            Some(format!("market data for {} is stale: new entries are refused until it is fresh", request.symbol))
        } else if self.open.contains_key(&request.client_id) || self.preparing.contains_key(&request.client_id) {
            Some(format!("client order id {} is already in use", request.client_id))
        } else {
            let now = self.now();
            let mut view = self.view.load_full();
            if !self.preparing.is_empty() && self.risk.reads_open_orders() {
                Arc::make_mut(&mut Arc::make_mut(&mut view).open_orders).extend(self.preparing.values().cloned());
            }
            self.risk.check(&request, &view, now).err().map(|refusal| {
                self.refusals.push(refusal.limit);
                refusal.to_string()
            })
        };
        let mut order = Order::new(request, self.now());
        match refusal {
            Some(reason) => {
                order.status = OrderStatus::Rejected;
                order.reason = Some(reason);
            }
            None => {
                // Not sent yet (strategies do not see it), but the next order's checks count it.
                order.status = OrderStatus::Pending;
                self.preparing.insert(order.request.client_id.clone(), order.clone());
            }
        }
        order
    }

    /// Checks an order's size and price and rounds them to its product's lot
    /// and tick as the venue will, so the order shows what is sent.
    fn round_to_product(&self, request: &mut OrderRequest) -> Result<(), String> {
        crate::model::check_order_number("size", request.size)?;
        if let Some(price) = request.price {
            crate::model::check_order_number("price", price)?;
        }
        if let Some(stop) = &request.stop {
            match (stop.trail, stop.trail_pct) {
                (Some(trail), _) => drop(crate::model::check_order_number("trail", trail)?),
                (None, Some(pct)) if pct <= Decimal::ZERO || pct >= Decimal::ONE_HUNDRED => {
                    return Err(format!("trail_pct must be between 0 and 100, got {pct}"));
                }
                (None, Some(_)) => {}
                (None, None) => drop(crate::model::check_order_number("trigger", stop.price)?),
            }
        }
        let Some(product) = self.products.get(&request.symbol) else {
            return Ok(());
        };
        if let Some(stop) = request.stop.as_mut().filter(|s| s.price > Decimal::ZERO) {
            stop.price = product.round_price(stop.price);
            if stop.price <= Decimal::ZERO {
                return Err(format!("trigger is below the tick size {} of {}", product.tick_size, product.symbol));
            }
        }
        let size = product.round_size(request.size);
        if size <= Decimal::ZERO {
            return Err(format!(
                "size {} is below the lot size {} of {}",
                request.size, product.lot_size, product.symbol
            ));
        }
        request.size = size;
        if let Some(price) = request.price {
            let rounded = product.round_price(price);
            if rounded <= Decimal::ZERO {
                return Err(format!(
                    "price {price} is below the tick size {} of {}",
                    product.tick_size, product.symbol
                ));
            }
            request.price = Some(rounded);
        }
        Ok(())
    }

    /// The trading rules orders are rounded to before they are checked and sent.
    pub fn set_products(&mut self, products: impl IntoIterator<Item = crate::model::Product>) {
        self.products = products.into_iter().map(|p| (p.symbol.clone(), p)).collect();
    }

    /// The limits that refused orders since the last call, one entry per order.
    pub fn take_refusals(&mut self) -> Vec<&'static str> {
        std::mem::take(&mut self.refusals)
    }

    /// Rejects prepared orders that will not be sent (their intents could
    /// not be stored), with the reason; returns their events.
    pub fn reject_unsent(&mut self, orders: Vec<Order>, reason: &str) -> Vec<ExchangeEvent> {
        let events = orders
            .into_iter()
            .map(|mut order| {
                self.preparing.remove(&order.request.client_id);
                order.status = OrderStatus::Rejected;
                order.reason = Some(reason.to_string());
                ExchangeEvent::Order(order)
            })
            .collect();
        self.record(events)
    }

    /// Sends a prepared order (its intent must be stored first); it is
    /// pending until the venue answers (the paper exchange at once, a live
    /// venue later through [`Oms::apply_venue`]).
    pub fn send(&mut self, request: OrderRequest) -> Vec<ExchangeEvent> {
        self.send_all(vec![request])
    }

    /// Sends prepared orders in order, as [`Oms::send`]; a bracket's legs go
    /// to the venue together with their entry ([`VenueCommand::placing`]).
    pub fn send_all(&mut self, requests: Vec<OrderRequest>) -> Vec<ExchangeEvent> {
        if requests.is_empty() {
            return Vec::new();
        }
        let mut events = Vec::new();
        for command in VenueCommand::placing(requests) {
            for request in command.placed() {
                self.preparing.remove(&request.client_id);
                let mut order = Order::new(request.clone(), self.clock.now_ms());
                order.status = OrderStatus::Pending;
                self.open.insert(order.request.client_id.clone(), order);
            }
            self.open_changed.set(true);
            events.extend(self.command(command));
        }
        if events.is_empty() {
            self.publish();
        }
        events
    }

    /// Hands a command to the venue and applies what it answers now.
    fn command(&mut self, command: VenueCommand) -> Vec<ExchangeEvent> {
        let answers = self.venue.command(command);
        self.apply_answers(answers)
    }

    /// Applies a batch of a venue's updates. An order reported more than once
    /// in it is reported once, in its last state (a paper order accepted and
    /// filled at once reads as its fill, then the filled order).
    fn apply_answers(&mut self, answers: Vec<VenueUpdate>) -> Vec<ExchangeEvent> {
        let mut events: Vec<Option<ExchangeEvent>> = Vec::new();
        let mut order_at: HashMap<String, usize> = HashMap::new();
        for answer in answers {
            match self.apply_venue(answer) {
                Ok(applied) => {
                    for event in applied {
                        if let ExchangeEvent::Order(order) = &event
                            && let Some(earlier) = order_at.insert(order.request.client_id.clone(), events.len())
                        {
                            events[earlier] = None;
                        }
                        events.push(Some(event));
                    }
                }
                Err(difference) => tracing::warn!("exchange difference: {difference}"),
            }
        }
        events.into_iter().flatten().collect()
    }

    /// Prepares and sends at once (no store in between: backtests, tests).
    pub fn submit(&mut self, request: OrderRequest) -> Vec<ExchangeEvent> {
        let order = self.prepare(request);
        match order.status {
            OrderStatus::Pending => self.send(order.request),
            _ => vec![ExchangeEvent::Order(order)],
        }
    }

    /// Cancels one of the strategy's open orders.
    pub fn cancel(&mut self, strategy: &str, client_id: &str) -> Result<Vec<ExchangeEvent>, ExecutionError> {
        let order = self.open.get(client_id).filter(|o| o.request.strategy == strategy).cloned();
        let order = order
            .ok_or_else(|| ExecutionError::NotOwnOrder { strategy: strategy.into(), client_id: client_id.into() })?;
        Ok(self.command(VenueCommand::Cancel(order)))
    }

    /// Cancels the strategy's open orders (for one symbol, or all).
    pub fn cancel_all(&mut self, strategy: &str, symbol: Option<&str>) -> Vec<ExchangeEvent> {
        let ids: Vec<String> = self
            .open
            .values()
            .filter(|o| o.request.strategy == strategy && symbol.is_none_or(|s| o.request.symbol == s))
            .map(|o| o.request.client_id.clone())
            .collect();
        ids.iter().filter_map(|id| self.cancel(strategy, id).ok()).flatten().collect()
    }

    /// Reduce-only market orders that would close the strategy's positions
    /// (shutdown policy `flatten`; allowed while the gate is closed).
    pub fn flatten_orders(&self, strategy: &str, next_id: &mut dyn FnMut() -> String) -> Vec<Order> {
        let positions: Vec<Position> = self
            .positions
            .get(strategy)
            .map(|p| p.values().filter(|p| !p.size.is_zero()).cloned().collect())
            .unwrap_or_default();
        positions
            .into_iter()
            .map(|position| {
                let request = OrderRequest {
                    client_id: next_id(),
                    strategy: strategy.to_string(),
                    symbol: position.symbol.clone(),
                    side: Side::closing(position.size),
                    kind: OrderKind::Market,
                    size: position.size.abs(),
                    price: None,
                    time_in_force: TimeInForce::Ioc,
                    post_only: false,
                    reduce_only: true,
                    stop: None,
                    oco: None,
                    parent: None,
                };
                let mut order = Order::new(request, self.now());
                order.status = OrderStatus::Pending;
                order
            })
            .collect()
    }

    /// Applies a market tick: resting orders may fill.
    pub fn on_tick(&mut self, tick: &Tick) -> Vec<ExchangeEvent> {
        if !self.exchange_marks.contains(&tick.symbol) {
            self.marks.insert(tick.symbol.clone(), tick.mid());
        }
        let answers = self.venue.on_quote(tick);
        let events = self.apply_answers(answers);
        if events.is_empty() {
            self.publish();
        }
        events
    }

    /// The exchange's mark price of a symbol: from now on it values positions
    /// instead of the quote's mid.
    pub fn set_mark(&mut self, symbol: &str, price: Decimal) {
        self.exchange_marks.insert(symbol.to_string());
        self.marks.insert(symbol.to_string(), price);
        self.publish();
    }

    /// A strategy's own position in a symbol.
    pub fn position(&self, strategy: &str, symbol: &str) -> Position {
        self.positions.get(strategy).and_then(|p| p.get(symbol)).cloned().unwrap_or_else(|| Position::flat(symbol))
    }

    /// Open orders, oldest id first.
    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.open.values()
    }

    /// What the store must hold before these events may be reported: order
    /// states, fills, the positions they moved, and the exchange's account.
    pub fn write_ops(&self, events: &[ExchangeEvent]) -> Vec<WriteOp> {
        let mut ops = Vec::with_capacity(events.len() + 2);
        let mut moved: Vec<(String, String)> = Vec::new();
        for event in events {
            match event {
                ExchangeEvent::Order(order) => ops.push(WriteOp::Order(order.clone())),
                ExchangeEvent::Fill(fill) => {
                    ops.push(WriteOp::Fill(fill.clone()));
                    let key = (fill.strategy.clone(), fill.symbol.clone());
                    if !moved.contains(&key) {
                        moved.push(key);
                    }
                }
            }
        }
        for (strategy, symbol) in moved {
            ops.push(WriteOp::Position { position: self.position(&strategy, &symbol), strategy });
        }
        if let (false, Venue::Paper(exchange)) = (events.is_empty(), &self.venue) {
            ops.push(WriteOp::PaperAccount(exchange.save()));
        }
        ops
    }

    /// A strategy's declared symbols: its only symbols unless its limits say otherwise.
    pub fn declare_symbols(&mut self, strategy: &str, symbols: Vec<String>) {
        self.risk.declare(strategy, symbols);
    }

    /// The order manager's clock, now.
    pub fn now(&self) -> i64 {
        self.clock.now_ms()
    }

    /// True when a protection is set anywhere.
    pub fn protects(&self) -> bool {
        self.risk.protects()
    }

    /// Times orders and updates with `clock` from now on (the wall clock until set).
    pub fn set_clock(&mut self, clock: crate::clock::Clock) {
        self.clock = clock;
    }

    /// Numbers fills, applies the events to orders and positions, publishes the view.
    fn record(&mut self, mut events: Vec<ExchangeEvent>) -> Vec<ExchangeEvent> {
        for event in &mut events {
            match event {
                ExchangeEvent::Fill(fill) => {
                    fill.id = self.next_fill_id;
                    self.next_fill_id += 1;
                    let realized = self
                        .positions
                        .entry(fill.strategy.clone())
                        .or_default()
                        .entry(fill.symbol.clone())
                        .or_insert_with(|| Position::flat(&fill.symbol))
                        .apply(fill.side, fill.size, fill.price);
                    if !realized.is_zero() {
                        self.risk.on_exit(&fill.strategy, realized - fill.fee, fill.time);
                    }
                }
                ExchangeEvent::Order(order) if order.status.is_open() || order.status == OrderStatus::Pending => {
                    self.open.insert(order.request.client_id.clone(), order.clone());
                    self.open_changed.set(true);
                }
                ExchangeEvent::Order(order) => {
                    self.open.remove(&order.request.client_id);
                    self.open_changed.set(true);
                    self.remember_closed(order.clone());
                }
            }
        }
        self.publish();
        events
    }

    fn remember_closed(&mut self, order: Order) {
        self.closed.insert(order.request.client_id.clone(), order);
    }

    /// Applies a venue's report (the one path for every venue); returns the
    /// events to store and report, or a description of what did not match
    /// any known order.
    pub fn apply_venue(&mut self, update: VenueUpdate) -> Result<Vec<ExchangeEvent>, String> {
        let now = self.now();
        match update {
            VenueUpdate::Order { client_id, remote } => {
                let Some(order) = self.open.get(&client_id) else {
                    return if self.closed.contains(&client_id) {
                        Ok(Vec::new())
                    } else {
                        Err(format!(
                            "the exchange reports order {client_id} ({:?}) that the host never placed",
                            remote.state
                        ))
                    };
                };
                let mut order = order.clone();
                let before = order.clone();
                apply_remote(&mut order, &remote, now);
                if order == before {
                    return Ok(Vec::new());
                }
                Ok(self.record(vec![ExchangeEvent::Order(order)]))
            }
            VenueUpdate::Fill(fill) => {
                if let Some(id) = &fill.exchange_id
                    && !self.seen_fills.insert(id.clone(), ())
                {
                    return Ok(Vec::new());
                }
                let order = self.open.get(&fill.client_id).or_else(|| self.closed.get(&fill.client_id)).cloned();
                let Some(mut order) = order else {
                    return Err(format!(
                        "the exchange reports fill {} of order {} that the host never placed",
                        fill.exchange_id.as_deref().unwrap_or("(no id)"),
                        fill.client_id
                    ));
                };
                let VenueFill { exchange_id, size, price, fee, liquidity, time, .. } = fill;
                let was_final = !(order.status.is_open() || order.status == OrderStatus::Pending);
                let status_before = order.status;
                order.apply_fill(size, price, time);
                if was_final && order.status != OrderStatus::Filled {
                    // A late fill of a cancelled order keeps its final status,
                    // unless it fills the order (it filled before the cancel).
                    order.status = status_before;
                } else if was_final {
                    order.reason = None;
                }
                let fill = Fill { exchange_id, ..Fill::of(&order.request, size, price, fee, liquidity, time) };
                if was_final {
                    self.closed.insert(order.request.client_id.clone(), order.clone());
                }
                Ok(self.record(vec![ExchangeEvent::Fill(fill), ExchangeEvent::Order(order)]))
            }
            VenueUpdate::Balance(balance) => {
                if let Venue::Live(live) = &mut self.venue {
                    live.balance = balance;
                }
                self.publish();
                Ok(Vec::new())
            }
            VenueUpdate::Difference(text) => Err(text),
        }
    }

    /// Every strategy's net position per symbol, summed (what the exchange should hold).
    pub fn net_positions(&self) -> BTreeMap<String, Decimal> {
        let mut out = BTreeMap::new();
        for positions in self.positions.values() {
            for (symbol, position) in positions {
                *out.entry(symbol.clone()).or_insert(Decimal::ZERO) += position.size;
            }
        }
        out
    }

    /// Publishes the account view now, or marks it changed while held.
    fn publish(&self) {
        if self.hold_view {
            self.view_dirty.set(true);
        } else {
            self.publish_now();
        }
    }

    /// From now on changes reach readers only at [`Oms::release_view`]: the
    /// engine releases them once what changed is stored, so the account
    /// shown is never ahead of the store (and is rebuilt once per batch of
    /// changes, not once per order).
    pub fn hold_view(&mut self) {
        self.hold_view = true;
    }

    /// Publishes the account view if it changed since it was last published.
    pub fn release_view(&self) {
        if self.view_dirty.replace(false) {
            self.publish_now();
        }
    }

    /// The open orders for a view: the last published list while `open` has not changed.
    fn open_orders_shared(&self) -> Arc<Vec<Order>> {
        if self.open_changed.replace(false) {
            *self.published_orders.borrow_mut() = Arc::new(self.open.values().cloned().collect());
        }
        self.published_orders.borrow().clone()
    }

    fn publish_now(&self) {
        let (currency, balance, equity) = match &self.venue {
            Venue::Paper(exchange) => {
                let account = exchange.account();
                (account.currency, account.balance, account.equity)
            }
            Venue::Live(live) => {
                let unrealized: Decimal = self
                    .positions
                    .values()
                    .flat_map(|p| p.values())
                    .filter_map(|p| self.marks.get(&p.symbol).map(|mark| p.unrealized_pnl(*mark)))
                    .sum();
                (live.currency.clone(), live.balance, live.balance + unrealized)
            }
        };
        self.view.store(Arc::new(AccountView {
            currency,
            balance,
            equity,
            positions: self.positions.clone(),
            marks: self.marks.clone(),
            open_orders: self.open_orders_shared(),
            trading: self.risk.trading().clone(),
            risk_limits: self.limits_json.clone(),
        }));
    }
}

/// Applies the exchange's state to an order, with the size and price it
/// accepted. `Closed` leaves the status to the fills (they complete it); a
/// pending order becomes open.
fn apply_remote(order: &mut Order, remote: &RemoteOrder, now: i64) {
    if let Some(size) = remote.size {
        order.request.size = size;
    }
    if remote.price.is_some() {
        order.request.price = remote.price;
    }
    if let (Some(trigger), Some(stop)) = (remote.trigger, order.request.stop.as_mut()) {
        stop.price = trigger;
    }
    let was_pending = order.status == OrderStatus::Pending;
    match remote.state {
        RemoteState::Open | RemoteState::Closed if was_pending => {
            order.status = if order.filled.is_zero() { OrderStatus::Open } else { OrderStatus::PartiallyFilled };
        }
        // A stop's fills arrive with it already triggered; its state moves on only forward.
        RemoteState::Untriggered if was_pending => order.status = OrderStatus::Untriggered,
        RemoteState::Triggered | RemoteState::Open if order.status == OrderStatus::Untriggered => {
            order.status = if order.filled.is_zero() { OrderStatus::Triggered } else { OrderStatus::PartiallyFilled };
        }
        RemoteState::Triggered if was_pending => order.status = OrderStatus::Triggered,
        RemoteState::Open | RemoteState::Closed | RemoteState::Untriggered | RemoteState::Triggered => return,
        RemoteState::Cancelled => {
            order.status = OrderStatus::Cancelled;
            order.reason = remote.reason.clone().or_else(|| Some("cancelled".into()));
        }
        RemoteState::Rejected => {
            order.status = OrderStatus::Rejected;
            order.reason = remote.reason.clone();
        }
    }
    order.updated = now;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PaperConfig;
    use crate::exchange::{LiveVenue, PaperExchange, VenueUpdate};
    use crate::model::Liquidity;

    fn request(id: &str, symbol: &str, reduce_only: bool) -> OrderRequest {
        OrderRequest {
            client_id: id.into(),
            strategy: "s".into(),
            symbol: symbol.into(),
            side: Side::Buy,
            kind: OrderKind::Limit,
            size: Decimal::new(2, 2),
            price: Some(Decimal::from(100)),
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only,
            stop: None,
            oco: None,
            parent: None,
        }
    }

    #[test]
    fn stale_symbols_refuse_new_entries_but_not_exits() {
        let mut oms = Oms::new(Venue::Paper(Box::new(PaperExchange::new(&PaperConfig::default()))));
        oms.set_stale("BTCUSD", true);
        let refused = oms.prepare(request("a", "BTCUSD", false));
        assert_eq!(refused.status, OrderStatus::Rejected);
        assert!(refused.reason.unwrap().contains("stale"));
        assert_eq!(oms.prepare(request("b", "BTCUSD", true)).status, OrderStatus::Pending);
        assert_eq!(oms.prepare(request("c", "ETHUSD", false)).status, OrderStatus::Pending);
        oms.set_stale("BTCUSD", false);
        assert_eq!(oms.prepare(request("d", "BTCUSD", false)).status, OrderStatus::Pending);
    }

    fn fill(exchange_id: &str, client_id: &str, size: i64) -> VenueUpdate {
        VenueUpdate::Fill(VenueFill {
            exchange_id: Some(exchange_id.into()),
            client_id: client_id.into(),
            size: Decimal::new(size, 2),
            price: Decimal::from(100),
            fee: Decimal::new(1, 2),
            liquidity: Liquidity::Maker,
            time: 1,
        })
    }

    /// An order manager on a live venue, and what it sends the venue.
    fn live_oms() -> (Oms, tokio::sync::mpsc::UnboundedReceiver<VenueCommand>) {
        let (commands, sent) = tokio::sync::mpsc::unbounded_channel();
        let live = LiveVenue {
            commands,
            currency: "USD".into(),
            balance: Decimal::from(1_000),
            known_at_start: Default::default(),
        };
        (Oms::new(Venue::Live(live)), sent)
    }

    #[test]
    fn live_reports_map_onto_orders_once_each() {
        let (mut oms, mut sent) = live_oms();
        assert!(oms.send(request("a", "BTCUSD", false)).is_empty(), "answers come later");
        assert!(matches!(sent.try_recv(), Ok(VenueCommand::Place(r)) if r.client_id == "a"));
        assert_eq!(oms.open_orders().next().unwrap().status, OrderStatus::Pending);
        let open = RemoteOrder::new(RemoteState::Open, None);
        let events = oms.apply_venue(VenueUpdate::Order { client_id: "a".into(), remote: open.clone() }).unwrap();
        assert!(matches!(&events[..], [ExchangeEvent::Order(o)] if o.status == OrderStatus::Open));
        assert!(oms.apply_venue(VenueUpdate::Order { client_id: "a".into(), remote: open }).unwrap().is_empty());
        let events = oms.apply_venue(fill("f1", "a", 1)).unwrap();
        assert!(matches!(&events[..], [ExchangeEvent::Fill(f), ExchangeEvent::Order(o)]
            if f.id == 1 && f.exchange_id.as_deref() == Some("f1") && o.status == OrderStatus::PartiallyFilled));
        assert!(oms.apply_venue(fill("f1", "a", 1)).unwrap().is_empty(), "the same fill again is dropped");
        let cancelled = RemoteOrder::new(RemoteState::Cancelled, Some("cancelled_by_user".into()));
        oms.apply_venue(VenueUpdate::Order { client_id: "a".into(), remote: cancelled }).unwrap();
        // A fill that raced the cancel still counts; it fills the order, so the
        // order filled before the cancel (a cancel-all reports every order cancelled).
        let events = oms.apply_venue(fill("f2", "a", 1)).unwrap();
        assert!(matches!(&events[1], ExchangeEvent::Order(o)
            if o.status == OrderStatus::Filled && o.filled == Decimal::new(2, 2) && o.reason.is_none()));
        assert_eq!(oms.position("s", "BTCUSD").size, Decimal::new(2, 2));
        assert_eq!(oms.net_positions()["BTCUSD"], Decimal::new(2, 2));
        assert!(oms.apply_venue(fill("f3", "stranger", 1)).unwrap_err().contains("never placed"));
        oms.apply_venue(VenueUpdate::Balance(Decimal::from(990))).unwrap();
        assert_eq!(oms.view().load().balance, Decimal::from(990));
    }

    #[test]
    fn shutdown_cancels_by_symbol_only_where_the_strategies_hold_every_order() {
        let (mut oms, mut sent) = live_oms();
        let open = RemoteOrder::new(RemoteState::Open, None);
        for (id, strategy, symbol) in [
            ("a1", "a", "BTCUSD"),
            ("a2", "a", "BTCUSD"),
            ("a3", "a", "ETHUSD"),
            ("b1", "b", "ETHUSD"),
            ("a4", "a", "ETHUSD"),
            ("a5", "a", "BTCUSD"),
        ] {
            oms.send(OrderRequest { strategy: strategy.into(), ..request(id, symbol, false) });
            if id != "a5" {
                oms.apply_venue(VenueUpdate::Order { client_id: id.into(), remote: open.clone() }).unwrap();
            }
        }
        while sent.try_recv().is_ok() {}
        oms.cancel_strategies(&BTreeSet::from(["a".to_string()]));
        let mut commands = Vec::new();
        while let Ok(command) = sent.try_recv() {
            commands.push(match command {
                VenueCommand::CancelSymbol { symbol, orders } => {
                    format!(
                        "all {symbol}: {}",
                        orders.iter().map(|o| o.request.client_id.as_str()).collect::<Vec<_>>().join(",")
                    )
                }
                VenueCommand::Cancel(order) => format!("one {}", order.request.client_id),
                VenueCommand::Place(_) | VenueCommand::PlaceBracket { .. } => "place".into(),
            });
        }
        // BTCUSD is all a's: one step for the acknowledged, the pending a5 alone.
        // ETHUSD holds b's order too: a's one by one.
        assert_eq!(commands, ["all BTCUSD: a1,a2", "one a5", "one a3", "one a4"]);
    }

    #[test]
    fn paper_answers_take_the_live_venues_path_with_the_accepted_size() {
        let mut oms = Oms::new(Venue::Paper(Box::new(PaperExchange::new(&PaperConfig::default()))));
        let quote = Tick {
            symbol: "BTCUSD".into(),
            time: 1_000,
            bid: Decimal::from(100),
            ask: Decimal::from(101),
            last: Decimal::from(100),
            volume: Decimal::ZERO,
        };
        assert!(oms.on_tick(&quote).is_empty());
        // 0.0123 is rounded to the lot size 0.001 by the venue; accepted and filled at once.
        let mut market = request("m", "BTCUSD", false);
        (market.kind, market.price, market.size) = (OrderKind::Market, None, Decimal::new(123, 4));
        let events = oms.submit(market);
        assert!(
            matches!(&events[..], [ExchangeEvent::Fill(f), ExchangeEvent::Order(o)]
                if f.size == Decimal::new(12, 3) && f.exchange_id.is_none() && f.id == 1
                    && o.status == OrderStatus::Filled && o.request.size == Decimal::new(12, 3)),
            "one fill, then the filled order: {events:?}"
        );
        // A resting limit order: open; the next quote through it fills it.
        let events = oms.submit(request("l", "BTCUSD", false));
        assert!(matches!(&events[..], [ExchangeEvent::Order(o)] if o.status == OrderStatus::Open), "{events:?}");
        let through = Tick { bid: Decimal::from(99), ask: Decimal::new(995, 1), last: Decimal::from(99), ..quote };
        let events = oms.on_tick(&through);
        assert!(
            matches!(&events[..], [ExchangeEvent::Fill(f), ExchangeEvent::Order(o)]
            if f.id == 2 && o.status == OrderStatus::Filled),
            "{events:?}"
        );
        assert_eq!(oms.position("s", "BTCUSD").size, Decimal::new(32, 3));
        // Cancelling an order that is not open is refused before the venue is asked.
        assert!(oms.cancel("s", "l").is_err());
    }
}
