//! Plain domain types shared by every layer: sides, orders, fills, candles,
//! ticks, positions and products. Money and sizes are exact decimals.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use rust_decimal::Decimal;
use rust_decimal::prelude::*;
use serde::{Deserialize, Serialize};

/// Milliseconds since the unix epoch (UTC).
pub type TimestampMs = i64;

/// The longest symbol a strategy may name (in `config()` or `chart::plot`), in bytes.
pub const MAX_SYMBOL_BYTES: usize = 64;

/// Buy or sell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Side {
    /// Increase a long / reduce a short.
    Buy,
    /// Increase a short / reduce a long.
    Sell,
}

impl Side {
    /// `+1` for buys, `-1` for sells.
    pub fn sign(self) -> Decimal {
        match self {
            Side::Buy => Decimal::ONE,
            Side::Sell => Decimal::NEGATIVE_ONE,
        }
    }

    /// The side that reduces a position of the given signed size.
    pub fn closing(position_size: Decimal) -> Side {
        if position_size > Decimal::ZERO { Side::Sell } else { Side::Buy }
    }

    /// Lowercase name as used by scripts and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Buy => "buy",
            Side::Sell => "sell",
        }
    }
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Side {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "buy" | "long" => Ok(Side::Buy),
            "sell" | "short" => Ok(Side::Sell),
            other => Err(format!("side must be \"buy\" or \"sell\", got {other:?}")),
        }
    }
}

/// Market or limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum OrderKind {
    /// Fill at once at the best available price.
    Market,
    /// Fill at the limit price or better.
    Limit,
}

/// How long an order stays open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TimeInForce {
    /// Good till cancelled.
    #[default]
    Gtc,
    /// Immediate or cancel: what cannot fill at once is cancelled.
    Ioc,
}

/// What a strategy asks the order manager to send.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct OrderRequest {
    /// Client order id, unique per data dir.
    pub client_id: String,
    /// Strategy that placed it.
    pub strategy: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Market or limit.
    pub kind: OrderKind,
    /// Size in base units (contracts for derivatives), positive.
    #[schema(format = "size")]
    pub size: Decimal,
    /// Limit price; `None` for market orders.
    #[schema(format = "price")]
    pub price: Option<Decimal>,
    /// Good-till-cancelled or immediate-or-cancel.
    pub time_in_force: TimeInForce,
    /// Rejected instead of taking liquidity.
    pub post_only: bool,
    /// May only reduce the position.
    pub reduce_only: bool,
    /// A stop order's trigger: the order waits with the venue until the
    /// price reaches it, then works as a market order (`kind` market) or a
    /// limit order at `price`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Box<StopTrigger>>,
    /// One-cancels-other group: when an order of the group fills, the venue
    /// cancels the group's other open orders (a bracket's legs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oco: Option<String>,
    /// The entry this order protects (client id): it waits, untriggered,
    /// until the entry fills, is sized to what filled, and is cancelled if
    /// the entry ends without a fill.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
}

/// Which way a stop fires: a stop-loss when the price moves against the
/// position it closes (a sell stop falls to its trigger, a buy stop rises to
/// it), a take-profit when it moves in favour (a sell rises, a buy falls).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StopKind {
    /// Fires when the price moves against the order's side's position.
    StopLoss,
    /// Fires when the price moves in favour.
    TakeProfit,
}

/// The price a stop watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TriggerOn {
    /// The last traded price.
    #[default]
    Last,
    /// The mark price (the mid of bid and ask on the paper exchange).
    Mark,
}

impl TriggerOn {
    /// The name as it is serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            TriggerOn::Last => "last",
            TriggerOn::Mark => "mark",
        }
    }
}

/// When a stop order fires; a trailing stop's trigger follows the best
/// price seen by its distance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StopTrigger {
    /// Stop-loss or take-profit.
    pub kind: StopKind,
    /// The trigger price (a trailing stop's current one).
    #[schema(format = "price")]
    pub price: Decimal,
    /// Trailing distance in price units.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(format = "price")]
    pub trail: Option<Decimal>,
    /// Trailing distance as a percentage of the best price.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trail_pct: Option<Decimal>,
    /// The price it watches.
    #[serde(default)]
    pub on: TriggerOn,
}

impl StopTrigger {
    /// Whether a stop on `side` fires when the watched price moves anywhere
    /// between `low` and `high`.
    pub fn fires(&self, side: Side, low: Decimal, high: Decimal) -> bool {
        if self.fires_falling(side) { low <= self.price } else { high >= self.price }
    }

    /// Whether it fires when the price falls to it (a sell stop-loss or a buy
    /// take-profit), rather than when it rises to it.
    pub fn fires_falling(&self, side: Side) -> bool {
        (self.kind == StopKind::StopLoss) == (side == Side::Sell)
    }

    /// Whether it is a trailing stop.
    pub fn trails(&self) -> bool {
        self.trail.is_some() || self.trail_pct.is_some()
    }

    /// The trailing distance at `price`, if it trails.
    pub fn distance(&self, price: Decimal) -> Option<Decimal> {
        let percent = self.trail_pct.map(|pct| price.saturating_mul(pct) / Decimal::ONE_HUNDRED);
        self.trail.or(percent)
    }

    /// Moves a trailing stop's trigger after the price reached `best` (the
    /// most favourable price since the last move): never away from the price.
    pub fn follow(&mut self, side: Side, best: Decimal) {
        let Some(distance) = self.distance(best) else { return };
        if self.fires_falling(side) {
            self.price = self.price.max(best.saturating_sub(distance));
        } else {
            self.price = self.price.min(best.saturating_add(distance));
        }
    }

    /// Where a new trailing stop starts, at the current price.
    pub fn start_trailing(&mut self, side: Side, price: Decimal) {
        if let Some(distance) = self.distance(price) {
            self.price =
                if self.fires_falling(side) { price.saturating_sub(distance) } else { price.saturating_add(distance) };
        }
    }
}

/// Life cycle of an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum OrderStatus {
    /// Recorded as an intent, not yet acknowledged by the exchange.
    Pending,
    /// Resting on the book, nothing filled yet.
    Open,
    /// Resting with part of its size filled.
    PartiallyFilled,
    /// Completely filled.
    Filled,
    /// Cancelled (by the user, IOC remainder, or shutdown policy).
    Cancelled,
    /// Refused; `reason` says why.
    Rejected,
    /// A stop order accepted by the venue, waiting for its trigger (Delta
    /// calls this state `pending`).
    Untriggered,
    /// A stop order that fired and now works as a market or limit order.
    Triggered,
}

impl OrderStatus {
    /// The status as it is serialized (`partially_filled`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Open => "open",
            OrderStatus::PartiallyFilled => "partially_filled",
            OrderStatus::Filled => "filled",
            OrderStatus::Cancelled => "cancelled",
            OrderStatus::Rejected => "rejected",
            OrderStatus::Untriggered => "untriggered",
            OrderStatus::Triggered => "triggered",
        }
    }

    /// True while the order can still fill.
    pub fn is_open(self) -> bool {
        matches!(
            self,
            OrderStatus::Open | OrderStatus::PartiallyFilled | OrderStatus::Untriggered | OrderStatus::Triggered
        )
    }
}

/// The state of one order as the order manager knows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Order {
    /// What was asked for.
    pub request: OrderRequest,
    /// Current status.
    pub status: OrderStatus,
    /// Size filled so far.
    #[schema(format = "size")]
    pub filled: Decimal,
    /// Size-weighted average fill price, if anything filled.
    #[schema(format = "price")]
    pub avg_fill_price: Option<Decimal>,
    /// Why it was rejected or cancelled.
    pub reason: Option<String>,
    /// Last change.
    pub updated: TimestampMs,
}

impl Order {
    /// A freshly accepted order.
    pub fn new(request: OrderRequest, now: TimestampMs) -> Self {
        Order {
            request,
            status: OrderStatus::Open,
            filled: Decimal::ZERO,
            avg_fill_price: None,
            reason: None,
            updated: now,
        }
    }

    /// Size still to fill.
    pub fn remaining(&self) -> Decimal {
        self.request.size - self.filled
    }

    /// Records a fill on this order and updates the status.
    pub fn apply_fill(&mut self, size: Decimal, price: Decimal, now: TimestampMs) {
        let notional = self
            .avg_fill_price
            .unwrap_or_default()
            .saturating_mul(self.filled)
            .saturating_add(price.saturating_mul(size));
        self.filled = self.filled.saturating_add(size);
        self.avg_fill_price = notional.checked_div(self.filled).or(self.avg_fill_price);
        self.status =
            if self.remaining() <= Decimal::ZERO { OrderStatus::Filled } else { OrderStatus::PartiallyFilled };
        self.updated = now;
    }
}

/// Whether a fill added liquidity or took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Liquidity {
    /// Rested on the book.
    Maker,
    /// Crossed the spread.
    Taker,
}

impl Liquidity {
    /// The maker or the taker value (fee rates, say), whichever applies.
    pub fn pick<T>(self, maker: T, taker: T) -> T {
        match self {
            Liquidity::Maker => maker,
            Liquidity::Taker => taker,
        }
    }
}

/// One execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Fill {
    /// Sequence number given by the order manager (unique per data dir; 0 until assigned).
    #[serde(default)]
    pub id: u64,
    /// Client order id of the order that filled.
    pub order_id: String,
    /// Strategy that owns the order.
    pub strategy: String,
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Filled size (positive).
    #[schema(format = "size")]
    pub size: Decimal,
    /// Execution price.
    #[schema(format = "price")]
    pub price: Decimal,
    /// Fee paid in the quote currency (negative would be a rebate).
    #[schema(format = "money")]
    pub fee: Decimal,
    /// Maker or taker.
    pub liquidity: Liquidity,
    /// Exchange time of the fill.
    pub time: TimestampMs,
    /// The exchange's own fill id (live exchanges only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exchange_id: Option<String>,
}

impl Fill {
    /// A fill of an order (id 0 until the order manager numbers it).
    pub fn of(
        request: &OrderRequest,
        size: Decimal,
        price: Decimal,
        fee: Decimal,
        liquidity: Liquidity,
        time: TimestampMs,
    ) -> Fill {
        Fill {
            id: 0,
            order_id: request.client_id.clone(),
            strategy: request.strategy.clone(),
            symbol: request.symbol.clone(),
            side: request.side,
            size,
            price,
            fee,
            liquidity,
            time,
            exchange_id: None,
        }
    }
}

/// One point of the account's equity history, sampled by the host at a
/// bounded rate (`store.equity_sample_ms`) and kept in the store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EquitySample {
    /// When it was taken (ms since the epoch, on the run's clock).
    pub time: TimestampMs,
    /// Balance plus unrealised PnL.
    #[schema(format = "money")]
    pub equity: Decimal,
    /// Cash balance.
    #[schema(format = "money")]
    pub balance: Decimal,
}

/// An OHLCV bar.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Candle {
    /// Instrument.
    pub symbol: String,
    /// Bar start time.
    pub time: TimestampMs,
    /// First price.
    pub open: f64,
    /// Highest price.
    pub high: f64,
    /// Lowest price.
    pub low: f64,
    /// Last price.
    pub close: f64,
    /// Traded size.
    pub volume: f64,
}

/// How a run trades: the one thing about the venue a script may ask (`exchange::mode()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunMode {
    /// Historical bars, simulated fills.
    Backtest,
    /// The paper exchange on the built-in or replayed market.
    #[default]
    Paper,
    /// The paper exchange on Delta's real market: no order is sent.
    DryRun,
    /// Orders go to Delta Exchange.
    Live,
}

impl RunMode {
    /// `backtest`, `paper`, `dry_run` or `live`, as scripts see it.
    pub fn as_str(self) -> &'static str {
        match self {
            RunMode::Backtest => "backtest",
            RunMode::Paper => "paper",
            RunMode::DryRun => "dry_run",
            RunMode::Live => "live",
        }
    }
}

/// Top of book and last trade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Instrument.
    pub symbol: String,
    /// Exchange time.
    pub time: TimestampMs,
    /// Best bid.
    pub bid: Decimal,
    /// Best ask.
    pub ask: Decimal,
    /// Last traded price.
    pub last: Decimal,
    /// Size traded at `last` (zero when the feed carries no size).
    pub volume: Decimal,
}

impl Tick {
    /// Mid price.
    pub fn mid(&self) -> Decimal {
        (self.bid + self.ask) / Decimal::TWO
    }
}

/// A net position in one symbol.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Position {
    /// Instrument.
    pub symbol: String,
    /// Signed size: positive long, negative short, zero flat.
    #[schema(format = "size")]
    pub size: Decimal,
    /// Average entry price of the open size (zero when flat).
    #[schema(format = "price")]
    pub entry_price: Decimal,
    /// Profit realised by reducing the position, before fees.
    #[schema(format = "money")]
    pub realized_pnl: Decimal,
}

impl Position {
    /// A flat position.
    pub fn flat(symbol: &str) -> Self {
        Position { symbol: symbol.to_string(), ..Default::default() }
    }

    /// Applies a fill with netting and returns the PnL it realised.
    pub fn apply(&mut self, side: Side, size: Decimal, price: Decimal) -> Decimal {
        let delta = side.sign() * size;
        let mut realized = Decimal::ZERO;
        if self.size.is_zero() || self.size.signum() == delta.signum() {
            let new_size = self.size.saturating_add(delta);
            let cost = self.entry_price.saturating_mul(self.size.abs()).saturating_add(price.saturating_mul(size));
            self.entry_price = cost.checked_div(new_size.abs()).unwrap_or(self.entry_price);
            self.size = new_size;
        } else {
            let closing = size.min(self.size.abs());
            realized = price.saturating_sub(self.entry_price).saturating_mul(closing) * self.size.signum();
            let new_size = self.size.saturating_add(delta);
            if new_size.is_zero() {
                self.entry_price = Decimal::ZERO;
            } else if new_size.signum() != self.size.signum() {
                self.entry_price = price;
            }
            self.size = new_size;
        }
        self.realized_pnl = self.realized_pnl.saturating_add(realized);
        realized
    }

    /// Unrealised PnL at the given mark price.
    pub fn unrealized_pnl(&self, mark: Decimal) -> Decimal {
        mark.saturating_sub(self.entry_price).saturating_mul(self.size)
    }
}

/// Whether new orders may go out. For an order the stricter of the
/// account's state and its strategy's applies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TradingState {
    /// Every order the limits allow.
    #[default]
    Active,
    /// Only orders that reduce a position (cancels always work).
    ReduceOnly,
    /// No new order at all (cancels always work).
    Halted,
}

impl TradingState {
    /// `active`, `reduce_only` or `halted`.
    pub fn as_str(self) -> &'static str {
        match self {
            TradingState::Active => "active",
            TradingState::ReduceOnly => "reduce_only",
            TradingState::Halted => "halted",
        }
    }
}

/// The trading states in force: the account's and those of strategies that
/// have their own (a strategy not listed is `active`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TradingStates {
    /// The account's state.
    pub account: TradingState,
    /// Strategies whose own state is not `active`.
    pub strategies: BTreeMap<String, TradingState>,
}

impl TradingStates {
    /// The state that applies to a strategy's orders: the stricter one.
    pub fn of(&self, strategy: &str) -> TradingState {
        self.account.max(self.strategies.get(strategy).copied().unwrap_or_default())
    }

    /// Sets the account's state (`strategy` none) or a strategy's.
    pub fn set(&mut self, strategy: Option<&str>, state: TradingState) {
        match (strategy, state) {
            (None, state) => self.account = state,
            (Some(name), TradingState::Active) => drop(self.strategies.remove(name)),
            (Some(name), state) => drop(self.strategies.insert(name.to_string(), state)),
        }
    }
}

/// The read model of the account that strategies see: published by the
/// order manager after every change, read without locks.
#[derive(Debug, Clone, Default)]
pub struct AccountView {
    /// Quote currency.
    pub currency: String,
    /// Cash balance in the quote currency.
    pub balance: Decimal,
    /// Balance plus unrealised PnL.
    pub equity: Decimal,
    /// Each strategy's own net positions (from its own fills), by symbol.
    pub positions: HashMap<String, HashMap<String, Position>>,
    /// Mark price (mid) per symbol.
    pub marks: rustc_hash::FxHashMap<String, Decimal>,
    /// Open orders of every strategy (shared between views while they do not change).
    pub open_orders: std::sync::Arc<Vec<Order>>,
    /// Whether new orders may go out.
    pub trading: TradingStates,
    /// The risk limits in force, as JSON `{account, strategies: {name: …}}` (for scripts).
    pub risk_limits: Arc<serde_json::Value>,
}

impl AccountView {
    /// A strategy's position in a symbol (flat when it has none).
    pub fn position(&self, strategy: &str, symbol: &str) -> Position {
        self.positions.get(strategy).and_then(|p| p.get(symbol)).cloned().unwrap_or_else(|| Position::flat(symbol))
    }

    /// A strategy's open orders, optionally for one symbol.
    pub fn open_orders_of<'a>(
        &'a self,
        strategy: &'a str,
        symbol: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Order> + 'a {
        self.open_orders
            .iter()
            .filter(move |o| o.request.strategy == strategy && symbol.is_none_or(|s| o.request.symbol == s))
    }
}

/// The largest order size or price the host accepts, from a script or any
/// other source (10^12: far beyond any market, small enough that every sum of
/// sizes times prices stays exact in a `Decimal`).
pub const ORDER_NUMBER_MAX: Decimal = Decimal::from_parts(3_567_587_328, 232, 0, false, 0);

/// Checks an order's size or price: positive and at most [`ORDER_NUMBER_MAX`].
pub fn check_order_number(what: &str, value: Decimal) -> Result<Decimal, String> {
    if value <= Decimal::ZERO {
        Err(format!("{what} must be positive, got {value}"))
    } else if value > ORDER_NUMBER_MAX {
        Err(format!("{what} {value} is over the largest the host accepts ({ORDER_NUMBER_MAX})"))
    } else {
        Ok(value)
    }
}

/// Trading rules of an instrument.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    /// Instrument.
    pub symbol: String,
    /// Smallest price increment.
    pub tick_size: Decimal,
    /// Smallest size increment.
    pub lot_size: Decimal,
}

impl Product {
    /// Rounds a price to the nearest tick.
    pub fn round_price(&self, price: Decimal) -> Decimal {
        round_to_step(price, self.tick_size, RoundingStrategy::MidpointNearestEven)
    }

    /// Rounds a price to a tick in the given direction (up for buys paying slippage).
    pub fn round_price_away(&self, price: Decimal, side: Side) -> Decimal {
        let strategy = match side {
            Side::Buy => RoundingStrategy::ToPositiveInfinity,
            Side::Sell => RoundingStrategy::ToNegativeInfinity,
        };
        round_to_step(price, self.tick_size, strategy)
    }

    /// Rounds a size down to whole lots (never sends more than asked).
    pub fn round_size(&self, size: Decimal) -> Decimal {
        round_to_step(size, self.lot_size, RoundingStrategy::ToZero)
    }
}

/// `value` in whole steps; unchanged when the step is not positive or the
/// number of steps is not representable (orders that large are refused
/// before they are rounded: see [`ORDER_NUMBER_MAX`]).
fn round_to_step(value: Decimal, step: Decimal, strategy: RoundingStrategy) -> Decimal {
    if step <= Decimal::ZERO {
        return value;
    }
    value
        .checked_div(step)
        .and_then(|steps| steps.round_dp_with_strategy(0, strategy).checked_mul(step))
        .map_or(value, |rounded| rounded.normalize())
}

/// Converts a script number to an exact decimal (shortest round-trip form).
pub fn decimal_from_f64(value: f64) -> Option<Decimal> {
    if !value.is_finite() {
        return None;
    }
    short_decimal(value).or_else(|| Decimal::from_str(&format!("{value}")).ok()).or_else(|| Decimal::from_f64(value))
}

/// The fast path of [`decimal_from_f64`] for numbers with at most 8
/// decimals below 10^7 (every price and size in practice): there, a multiple
/// of 10^-8 that reads back as `value` is unique, so it is the shortest
/// round-trip form too. `None` for anything else.
fn short_decimal(value: f64) -> Option<Decimal> {
    const SCALE: f64 = 1e8;
    if value.abs() >= 1e7 {
        return None;
    }
    let scaled = (value * SCALE).round();
    if scaled / SCALE != value {
        return None;
    }
    // Trailing zeros dropped as `Decimal::normalize` would, on the integer.
    let (mut mantissa, mut scale) = (scaled as i64, 8);
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    Some(Decimal::new(mantissa, scale))
}

/// Converts a decimal to a script number.
pub fn decimal_to_f64(value: Decimal) -> f64 {
    value.to_f64().unwrap_or(f64::NAN)
}

/// Where in a script something went wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Location {
    /// Script file.
    pub file: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}:{}", self.file, self.line, self.column)
    }
}

/// A strategy failed to compile or a callback failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error, utoipa::ToSchema)]
pub struct StrategyError {
    /// Where, when known.
    pub location: Option<Location>,
    /// What went wrong.
    pub message: String,
}

impl StrategyError {
    /// An error with no location.
    pub fn new(message: impl Into<String>) -> Self {
        StrategyError { location: None, message: message.into() }
    }
}

impl std::fmt::Display for StrategyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.location {
            Some(location) => write!(f, "{location}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

/// The longest duration a timer or timeframe may have (366 days): longer
/// ones are refused rather than overflowing the clock.
pub const MAX_DURATION_MS: i64 = 366 * 86_400_000;

/// A duration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Not a number and a unit.
    #[error("invalid duration {0:?}: expected a number and a unit ms, s, m, h or d, e.g. \"500ms\" or \"5s\"")]
    Malformed(String),
    /// Longer than [`MAX_DURATION_MS`].
    #[error("duration {0:?} is longer than the longest allowed, 366d")]
    TooLong(String),
}

/// Parses `"500ms"`, `"5s"`, `"1.5m"`, `"2h"`, `"1d"` into milliseconds
/// (positive, at most [`MAX_DURATION_MS`]).
pub fn parse_duration_ms(text: &str) -> Result<i64, DurationError> {
    let err = || DurationError::Malformed(text.chars().take(64).collect());
    let trimmed = text.trim();
    let split = trimmed.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(err)?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let unit_ms = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(err()),
    };
    let ms = (number * unit_ms).round();
    if ms > MAX_DURATION_MS as f64 {
        Err(DurationError::TooLong(text.chars().take(64).collect()))
    } else if ms < 1.0 {
        Err(err())
    } else {
        Ok(ms as i64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn order_status_names_are_their_serialized_form() {
        for status in [
            OrderStatus::Pending,
            OrderStatus::Open,
            OrderStatus::PartiallyFilled,
            OrderStatus::Filled,
            OrderStatus::Cancelled,
            OrderStatus::Rejected,
        ] {
            assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        }
    }

    #[test]
    fn fast_decimal_conversion_equals_the_shortest_round_trip_form() {
        let mut state = 42u64;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 11) as f64 / (1u64 << 53) as f64
        };
        for _ in 0..200_000 {
            let magnitude = 10f64.powi((next() * 14.0) as i32 - 6);
            let digits = 10f64.powi((next() * 10.0) as i32);
            for value in [next() * magnitude, (next() * magnitude * digits).round() / digits, -next() * magnitude] {
                let slow = Decimal::from_str(&format!("{value}")).unwrap();
                let fast = decimal_from_f64(value).unwrap();
                // Equal, and written the same: the same scale too.
                assert_eq!((fast, fast.scale()), (slow, slow.scale()), "{value}");
            }
        }
        assert_eq!(decimal_from_f64(30000.12), Some(Decimal::from_str("30000.12").unwrap()));
        assert_eq!(decimal_from_f64(0.1 + 0.2), Some(Decimal::from_str("0.30000000000000004").unwrap()));
        assert_eq!(decimal_from_f64(-0.0), Some(Decimal::ZERO));
        assert_eq!(decimal_from_f64(f64::NAN), None);
    }

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn netting_realizes_pnl_and_flips() {
        let mut p = Position::flat("BTCUSD");
        p.apply(Side::Buy, d("2"), d("100"));
        p.apply(Side::Buy, d("2"), d("110"));
        assert_eq!(p.entry_price, d("105"));
        let r = p.apply(Side::Sell, d("5"), d("120"));
        assert_eq!(r, d("60"));
        assert_eq!(p.size, d("-1"));
        assert_eq!(p.entry_price, d("120"));
        assert_eq!(p.unrealized_pnl(d("100")), d("20"));
    }

    #[test]
    fn product_rounding_is_directional() {
        let p = Product { symbol: "X".into(), tick_size: d("0.5"), lot_size: d("0.001") };
        assert_eq!(p.round_price_away(d("100.1"), Side::Buy), d("100.5"));
        assert_eq!(p.round_price_away(d("100.9"), Side::Sell), d("100.5"));
        assert_eq!(p.round_size(d("0.0019")), d("0.001"));
        assert_eq!(decimal_from_f64(0.1), Some(d("0.1")));
    }
}

/// Decimals of quote-currency amounts (fees, PnL, balances, equity) wherever
/// money is shown: the API, the CLI, the dashboard, logs and reports. The
/// store keeps exact values.
pub const MONEY_DECIMALS: u32 = 4;

/// Decimals of prices and sizes of symbols without a known product.
const UNKNOWN_DECIMALS: u32 = 8;

/// How money is shown above the script API: prices at the product's tick
/// decimals, sizes at its lot decimals, quote-currency amounts at
/// [`MONEY_DECIMALS`]; trailing zeros dropped.
#[derive(Debug, Clone, Default)]
pub struct Shown {
    decimals: HashMap<String, (u32, u32)>,
}

impl Shown {
    /// Rules for these products.
    pub fn new<'a>(products: impl IntoIterator<Item = &'a Product>) -> Self {
        let decimals = products
            .into_iter()
            .map(|p| (p.symbol.clone(), (p.tick_size.normalize().scale(), p.lot_size.normalize().scale())))
            .collect();
        Shown { decimals }
    }

    /// Decimals of a symbol's prices and sizes.
    pub fn decimals(&self, symbol: &str) -> (u32, u32) {
        self.decimals.get(symbol).copied().unwrap_or((UNKNOWN_DECIMALS, UNKNOWN_DECIMALS))
    }

    /// A price of `symbol` as shown.
    pub fn price(&self, symbol: &str, price: Decimal) -> Decimal {
        price.round_dp(self.decimals(symbol).0).normalize()
    }

    /// A size of `symbol` as shown.
    pub fn size(&self, symbol: &str, size: Decimal) -> Decimal {
        size.round_dp(self.decimals(symbol).1).normalize()
    }

    /// A quote-currency amount as shown.
    pub fn money(amount: Decimal) -> Decimal {
        amount.round_dp(MONEY_DECIMALS).normalize()
    }

    /// A fill as shown.
    pub fn fill(&self, fill: &Fill) -> Fill {
        Fill {
            size: self.size(&fill.symbol, fill.size),
            price: self.price(&fill.symbol, fill.price),
            fee: Shown::money(fill.fee),
            ..fill.clone()
        }
    }

    /// An order as shown.
    pub fn order(&self, order: &Order) -> Order {
        let symbol = &order.request.symbol;
        let mut shown = order.clone();
        shown.request.size = self.size(symbol, order.request.size);
        shown.request.price = order.request.price.map(|p| self.price(symbol, p));
        shown.filled = self.size(symbol, order.filled);
        shown.avg_fill_price = order.avg_fill_price.map(|p| self.price(symbol, p));
        shown
    }

    /// A position as shown.
    pub fn position(&self, position: &Position) -> Position {
        Position {
            symbol: position.symbol.clone(),
            size: self.size(&position.symbol, position.size),
            entry_price: self.price(&position.symbol, position.entry_price),
            realized_pnl: Shown::money(position.realized_pnl),
        }
    }
}
