//! Order management: the gate that refuses new orders during shutdown,
//! ownership checks (a strategy may only cancel its own orders), order state,
//! each strategy's own positions from its fills, and the account read model
//! that strategies see. Synchronous and deterministic: the live engine task
//! and a backtest drive it the same way.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rust_decimal::Decimal;

use crate::exchange::{ExchangeEvent, PaperExchange};
use crate::model::{AccountView, Order, OrderKind, OrderRequest, OrderStatus, Position, Side, Tick, TimeInForce};

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
}

/// The order manager.
pub struct Oms {
    exchange: PaperExchange,
    open: BTreeMap<String, Order>,
    positions: HashMap<String, HashMap<String, Position>>,
    marks: HashMap<String, Decimal>,
    gate_open: bool,
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
            view: Arc::new(ArcSwap::from_pointee(AccountView::default())),
        };
        oms.publish();
        oms
    }

    /// The account snapshot strategies read.
    pub fn view(&self) -> Arc<ArcSwap<AccountView>> {
        self.view.clone()
    }

    /// The exchange behind it.
    pub fn exchange(&self) -> &PaperExchange {
        &self.exchange
    }

    /// Refuses every new order from now on (shutdown phase one).
    pub fn close_gate(&mut self) {
        self.gate_open = false;
    }

    /// Sends a strategy's order, unless the gate is closed or the id is reused.
    pub fn submit(&mut self, request: OrderRequest) -> Vec<ExchangeEvent> {
        let refusal = if !self.gate_open {
            Some("the host is shutting down: new orders are refused".to_string())
        } else if self.open.contains_key(&request.client_id) {
            Some(format!("client order id {} is already in use", request.client_id))
        } else {
            None
        };
        if let Some(reason) = refusal {
            let mut order = Order::new(request, 0);
            order.status = OrderStatus::Rejected;
            order.reason = Some(reason);
            return vec![ExchangeEvent::Order(order)];
        }
        let events = self.exchange.submit(request);
        self.apply(&events);
        events
    }

    /// Cancels one of the strategy's open orders.
    pub fn cancel(&mut self, strategy: &str, client_id: &str) -> Result<Vec<ExchangeEvent>, ExecutionError> {
        let own = self.open.get(client_id).is_some_and(|o| o.request.strategy == strategy);
        let not_own = || ExecutionError::NotOwnOrder { strategy: strategy.into(), client_id: client_id.into() };
        if !own {
            return Err(not_own());
        }
        let event = self.exchange.cancel(client_id).map_err(|_| not_own())?;
        let events = vec![event];
        self.apply(&events);
        Ok(events)
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

    /// Closes the strategy's positions with reduce-only market orders (shutdown
    /// policy `flatten`; allowed while the gate is closed).
    pub fn flatten(&mut self, strategy: &str, next_id: &mut dyn FnMut() -> String) -> Vec<ExchangeEvent> {
        let mut events = self.cancel_all(strategy, None);
        let positions: Vec<Position> = self
            .positions
            .get(strategy)
            .map(|p| p.values().filter(|p| !p.size.is_zero()).cloned().collect())
            .unwrap_or_default();
        for position in positions {
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
            let sent = self.exchange.submit(request);
            self.apply(&sent);
            events.extend(sent);
        }
        events
    }

    /// Applies a market tick: resting orders may fill.
    pub fn on_tick(&mut self, tick: &Tick) -> Vec<ExchangeEvent> {
        self.marks.insert(tick.symbol.clone(), tick.mid());
        let events = self.exchange.on_tick(tick);
        self.apply(&events);
        events
    }

    /// A strategy's own position in a symbol.
    pub fn position(&self, strategy: &str, symbol: &str) -> Position {
        self.positions.get(strategy).and_then(|p| p.get(symbol)).cloned().unwrap_or_else(|| Position::flat(symbol))
    }

    /// Open orders, oldest id first.
    pub fn open_orders(&self) -> impl Iterator<Item = &Order> {
        self.open.values()
    }

    fn apply(&mut self, events: &[ExchangeEvent]) {
        for event in events {
            match event {
                ExchangeEvent::Fill(fill) => {
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
