//! Order management: the gate that refuses new orders during shutdown,
//! ownership checks (a strategy may only cancel its own orders), order state,
//! fill numbering, each strategy's own positions from its fills, the account
//! read model that strategies see, and what must be written to the store
//! (intents before sending, outcomes before anyone hears of them).
//! Synchronous and deterministic: the live engine task and a backtest drive
//! it the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rust_decimal::Decimal;

use crate::exchange::{ExchangeEvent, PaperExchange};
use crate::model::{AccountView, Order, OrderKind, OrderRequest, OrderStatus, Position, Side, Tick, TimeInForce};
use crate::store::{Recovered, WriteOp};

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
    exchange: PaperExchange,
    open: BTreeMap<String, Order>,
    positions: HashMap<String, HashMap<String, Position>>,
    marks: HashMap<String, Decimal>,
    gate_open: bool,
    next_fill_id: u64,
    view: Arc<ArcSwap<AccountView>>,
}

impl Oms {
    /// An order manager over a paper account.
    pub fn new(exchange: PaperExchange) -> Self {
        let oms = Oms {
            exchange,
            open: BTreeMap::new(),
            positions: HashMap::new(),
            marks: HashMap::new(),
            gate_open: true,
            next_fill_id: 1,
            view: Arc::new(ArcSwap::from_pointee(AccountView::default())),
        };
        oms.publish();
        oms
    }

    /// Restores the stored state. Orders whose outcome is unknown (intent
    /// recorded, no answer stored) are resolved by asking the exchange by
    /// client id — never resent. Returns the resolved orders' events.
    pub fn restore(&mut self, recovered: &Recovered) -> Result<Vec<ExchangeEvent>, ExecutionError> {
        if let Some(account) = &recovered.paper_account {
            self.exchange.restore(account).map_err(ExecutionError::Restore)?;
        }
        self.positions = recovered
            .positions
            .iter()
            .map(|(strategy, p)| (strategy.clone(), p.iter().map(|(s, p)| (s.clone(), p.clone())).collect()))
            .collect();
        self.next_fill_id = recovered.last_fill_id + 1;
        let mut resolved = Vec::new();
        for (client_id, order) in &recovered.orders {
            match order.status {
                OrderStatus::Open | OrderStatus::PartiallyFilled => {
                    // The exchange's own record wins: it may have moved on before the crash.
                    let current = self.exchange.lookup(client_id).unwrap_or_else(|| order.clone());
                    if current.status.is_open() {
                        self.open.insert(client_id.clone(), current);
                    } else {
                        resolved.push(ExchangeEvent::Order(current));
                    }
                }
                OrderStatus::Pending => match self.exchange.lookup(client_id) {
                    Some(known) => {
                        if known.status.is_open() {
                            self.open.insert(client_id.clone(), known.clone());
                        }
                        resolved.push(ExchangeEvent::Order(known));
                    }
                    None => {
                        let mut lost = order.clone();
                        lost.status = OrderStatus::Rejected;
                        lost.reason = Some("never reached the exchange: the host stopped before sending it".into());
                        resolved.push(ExchangeEvent::Order(lost));
                    }
                },
                _ => {}
            }
        }
        self.publish();
        Ok(resolved)
    }

    /// The account snapshot strategies read.
    pub fn view(&self) -> Arc<ArcSwap<AccountView>> {
        self.view.clone()
    }

    /// Refuses every new order from now on (shutdown phase one).
    pub fn close_gate(&mut self) {
        self.gate_open = false;
    }

    /// Checks a strategy's order before anything is sent. The result is
    /// `Pending` (record it as an intent, then send it) or `Rejected` with the reason.
    pub fn prepare(&mut self, request: OrderRequest) -> Order {
        let refusal = if !self.gate_open {
            Some("the host is shutting down: new orders are refused".to_string())
        } else if self.open.contains_key(&request.client_id) {
            Some(format!("client order id {} is already in use", request.client_id))
        } else {
            None
        };
        let mut order = Order::new(request, self.now());
        match refusal {
            Some(reason) => {
                order.status = OrderStatus::Rejected;
                order.reason = Some(reason);
            }
            None => order.status = OrderStatus::Pending,
        }
        order
    }

    /// Sends a prepared order (its intent must be stored first).
    pub fn send(&mut self, request: OrderRequest) -> Vec<ExchangeEvent> {
        let events = self.exchange.submit(request);
        self.record(events)
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
        let own = self.open.get(client_id).is_some_and(|o| o.request.strategy == strategy);
        let not_own = || ExecutionError::NotOwnOrder { strategy: strategy.into(), client_id: client_id.into() };
        if !own {
            return Err(not_own());
        }
        let event = self.exchange.cancel(client_id).map_err(|_| not_own())?;
        Ok(self.record(vec![event]))
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
                };
                let mut order = Order::new(request, self.now());
                order.status = OrderStatus::Pending;
                order
            })
            .collect()
    }

    /// Applies a market tick: resting orders may fill.
    pub fn on_tick(&mut self, tick: &Tick) -> Vec<ExchangeEvent> {
        self.marks.insert(tick.symbol.clone(), tick.mid());
        let events = self.exchange.on_tick(tick);
        if events.is_empty() {
            self.publish();
            return events;
        }
        self.record(events)
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
        if !events.is_empty() {
            ops.push(WriteOp::PaperAccount(self.exchange.save()));
        }
        ops
    }

    fn now(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Numbers fills, applies the events to orders and positions, publishes the view.
    fn record(&mut self, mut events: Vec<ExchangeEvent>) -> Vec<ExchangeEvent> {
        for event in &mut events {
            match event {
                ExchangeEvent::Fill(fill) => {
                    fill.id = self.next_fill_id;
                    self.next_fill_id += 1;
                    self.positions
                        .entry(fill.strategy.clone())
                        .or_default()
                        .entry(fill.symbol.clone())
                        .or_insert_with(|| Position::flat(&fill.symbol))
                        .apply(fill.side, fill.size, fill.price);
                }
                ExchangeEvent::Order(order) if order.status.is_open() => {
                    self.open.insert(order.request.client_id.clone(), order.clone());
                }
                ExchangeEvent::Order(order) => {
                    self.open.remove(&order.request.client_id);
                }
            }
        }
        self.publish();
        events
    }

    fn publish(&self) {
        let account = self.exchange.account();
        self.view.store(Arc::new(AccountView {
            currency: account.currency,
            balance: account.balance,
            equity: account.equity,
            positions: self.positions.clone(),
            marks: self.marks.clone(),
            open_orders: self.open.values().cloned().collect(),
        }));
    }
}
