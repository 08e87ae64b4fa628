//! Exchanges: what an order becomes. `paper` simulates fills against the
//! market feed deterministically; a live connector (Delta) reports the same
//! outcomes asynchronously as [`VenueUpdate`]s, which the order manager maps
//! onto its orders.

pub mod paper;

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

/// What an exchange reports back.
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
    Paper(PaperExchange),
    /// A live connector: answers later with [`VenueUpdate`]s.
    Live(LiveVenue),
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
    /// Cancel this open order.
    Cancel(Order),
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
}

/// What the exchange knows about one of our orders.
#[derive(Debug, Clone, PartialEq)]
pub struct RemoteOrder {
    /// State.
    pub state: RemoteState,
    /// Why (rejections and cancellations).
    pub reason: Option<String>,
}

/// One of our fills, in host units.
#[derive(Debug, Clone, PartialEq)]
pub struct VenueFill {
    /// The exchange's fill id (duplicates are dropped by it).
    pub exchange_id: String,
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
