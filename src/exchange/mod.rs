//! Exchanges: what an order becomes. One vocabulary for every venue: the
//! order manager sends [`VenueCommand`]s and applies the [`VenueUpdate`]s
//! that come back, through one path. `paper` simulates fills against the
//! market feed deterministically and answers at once; a live connector
//! (Delta) answers later, from its REST calls and private stream. Market data
//! sources report [`MarketEvent`]s.

pub mod contingent;
pub mod paper;
pub mod reconcile;
pub mod watch;

use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::model::{Candle, Fill, Liquidity, Order, OrderRequest, Tick, TimestampMs};

pub use paper::{AccountSnapshot, Execution, PaperError, PaperExchange, settle};

/// What a market data source reports (a feed, or a live venue's public stream).
#[derive(Debug, Clone, PartialEq)]
pub enum MarketEvent {
    /// A trade/quote tick to aggregate into bars.
    Tick(Tick),
    /// A complete base bar (replay) and the quote at its close.
    Bar {
        /// The bar.
        bar: Candle,
        /// Quote at the bar's close.
        close: Tick,
    },
    /// A complete base bar fetched over REST while a live stream is silent
    /// (no quote: it only fills the candle history).
    PolledBar(Candle),
    /// The exchange's mark price of a symbol (values positions).
    Mark {
        /// Instrument.
        symbol: String,
        /// Mark price.
        price: Decimal,
    },
    /// A symbol's market data went stale (`true`: new entries on it are
    /// refused) or is fresh again (`false`).
    Stale {
        /// Instrument.
        symbol: String,
        /// Stale now.
        stale: bool,
    },
    /// The feed has no more data.
    Finished,
}

/// What the order manager reports once it applied a venue's updates.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeEvent {
    /// An order changed state (accepted, partially filled, filled, cancelled, rejected).
    Order(Order),
    /// An execution.
    Fill(Fill),
}

/// Where orders go.
pub enum Venue {
    /// The simulated exchange: answers at once.
    Paper(Box<PaperExchange>),
    /// A live connector: answers later with [`VenueUpdate`]s.
    Live(LiveVenue),
}

impl Venue {
    /// Hands a command to the venue and returns what it answers at once:
    /// everything for the paper exchange; nothing for a live connector (its
    /// answers come later), unless it has stopped (a placed order is rejected).
    pub fn command(&mut self, command: VenueCommand) -> Vec<VenueUpdate> {
        match self {
            Venue::Paper(exchange) => exchange.answer(command),
            Venue::Live(live) => match live.commands.send(command) {
                Ok(()) => Vec::new(),
                Err(mpsc::error::SendError(command)) => {
                    let reason = Some("the exchange connector has stopped".to_string());
                    let remote = RemoteOrder::new(RemoteState::Rejected, reason);
                    command
                        .placed()
                        .map(|request| VenueUpdate::Order {
                            client_id: request.client_id.clone(),
                            remote: remote.clone(),
                        })
                        .collect()
                }
            },
        }
    }

    /// A new quote: the paper exchange fills what it crosses; a live venue's
    /// fills come through its own stream.
    pub fn on_quote(&mut self, tick: &Tick) -> Vec<VenueUpdate> {
        match self {
            Venue::Paper(exchange) => exchange.on_quote(tick),
            Venue::Live(_) => Vec::new(),
        }
    }
}

/// The order manager's side of a live connector.
pub struct LiveVenue {
    /// Orders and cancels to execute.
    pub commands: mpsc::UnboundedSender<VenueCommand>,
    /// Settlement currency of the account.
    pub currency: String,
    /// Wallet balance as last reported.
    pub balance: Decimal,
    /// Remote state of the stored orders, looked up before the strategies resume.
    pub known_at_start: std::collections::HashMap<String, RemoteOrder>,
}

/// A request to a live connector.
#[derive(Debug, Clone, PartialEq)]
pub enum VenueCommand {
    /// Send this order (its intent is stored).
    Place(OrderRequest),
    /// Send a bracket's legs as one (a venue that holds brackets itself, as
    /// Delta does, needs them together): with the entry they protect once it
    /// fills, or alone for the open position.
    PlaceBracket {
        /// The entry order, if the legs protect one.
        entry: Option<OrderRequest>,
        /// The stop-loss and/or take-profit legs.
        legs: Vec<OrderRequest>,
    },
    /// Cancel this open order.
    Cancel(Order),
    /// Cancel these open orders: every one the host has on `symbol`. A venue
    /// that can cancels them in one step (Delta's cancel-all for the product),
    /// which also cancels orders placed outside the host on that product.
    CancelSymbol {
        /// The symbol whose orders these are.
        symbol: String,
        /// The orders.
        orders: Vec<Order>,
    },
}

impl VenueCommand {
    /// Orders to send, in order, as commands: a bracket's legs go with the
    /// entry they wait for (when it is among them) or with the other legs of
    /// their one-cancels-other group.
    pub fn placing(requests: Vec<OrderRequest>) -> Vec<VenueCommand> {
        let mut commands: Vec<VenueCommand> = Vec::new();
        for request in requests {
            let joins = |command: &VenueCommand| match (command, &request.parent, &request.oco) {
                (VenueCommand::Place(entry), Some(parent), _) => entry.client_id == *parent,
                (VenueCommand::PlaceBracket { entry: Some(entry), .. }, Some(parent), _) => entry.client_id == *parent,
                (VenueCommand::PlaceBracket { entry: None, legs }, None, Some(group)) => {
                    legs.first().is_some_and(|leg| leg.oco.as_ref() == Some(group))
                }
                _ => false,
            };
            match commands.iter_mut().rfind(|command| joins(command)) {
                Some(command) => {
                    if let VenueCommand::Place(entry) = command {
                        *command = VenueCommand::PlaceBracket { entry: Some(entry.clone()), legs: Vec::new() };
                    }
                    if let VenueCommand::PlaceBracket { legs, .. } = command {
                        legs.push(request);
                    }
                }
                None if request.parent.is_none() && request.oco.is_some() && request.stop.is_some() => {
                    commands.push(VenueCommand::PlaceBracket { entry: None, legs: vec![request] });
                }
                None => commands.push(VenueCommand::Place(request)),
            }
        }
        commands
    }

    /// The orders this command places, entry first.
    pub fn placed(&self) -> impl Iterator<Item = &OrderRequest> {
        let (one, legs): (Option<&OrderRequest>, &[OrderRequest]) = match self {
            VenueCommand::Place(request) => (Some(request), &[]),
            VenueCommand::PlaceBracket { entry, legs } => (entry.as_ref(), legs),
            VenueCommand::Cancel(_) | VenueCommand::CancelSymbol { .. } => (None, &[]),
        };
        one.into_iter().chain(legs)
    }
}

/// An order's state on the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RemoteState {
    /// Resting (or untriggered).
    Open,
    /// Completely filled (the fills report the details).
    Closed,
    /// Cancelled, by us or the exchange (an IOC remainder, say).
    Cancelled,
    /// Refused.
    Rejected,
    /// A stop order waiting for its trigger (Delta's `pending`).
    Untriggered,
    /// A stop order that fired and works as a market or limit order.
    Triggered,
}

/// What the exchange knows about one of our orders.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOrder {
    /// State.
    pub state: RemoteState,
    /// Why (rejections and cancellations).
    pub reason: Option<String>,
    /// The size the venue accepted, when it differs from the request's
    /// (rounded to the lot size, a reduce-only order capped at the position).
    pub size: Option<Decimal>,
    /// The limit price the venue accepted (rounded to the tick size).
    pub price: Option<Decimal>,
    /// A stop order's trigger price as the venue keeps it (rounded; a
    /// trailing stop's current one).
    pub trigger: Option<Decimal>,
}

impl RemoteOrder {
    /// A state (with its reason) that leaves size and price as they are.
    pub fn new(state: RemoteState, reason: Option<String>) -> Self {
        RemoteOrder { state, reason, size: None, price: None, trigger: None }
    }
}

/// One of our fills, in host units.
#[derive(Debug, Clone, PartialEq)]
pub struct VenueFill {
    /// The exchange's fill id: a fill seen before is dropped (none for the
    /// paper exchange, which reports every fill once).
    pub exchange_id: Option<String>,
    /// Client order id of the order that filled.
    pub client_id: String,
    /// Size in base units.
    pub size: Decimal,
    /// Price.
    pub price: Decimal,
    /// Fee in the settlement currency.
    pub fee: Decimal,
    /// Maker or taker.
    pub liquidity: Liquidity,
    /// Exchange time.
    pub time: TimestampMs,
}

/// A live connector's report.
#[derive(Debug, Clone, PartialEq)]
pub enum VenueUpdate {
    /// An order's state changed.
    Order {
        /// Client order id.
        client_id: String,
        /// Its state now.
        remote: RemoteOrder,
    },
    /// One of our fills (possibly seen before: the order manager drops repeats).
    Fill(VenueFill),
    /// The wallet balance changed.
    Balance(Decimal),
    /// The exchange differs from what the host knows (logged as activity).
    Difference(String),
}
