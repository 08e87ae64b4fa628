//! What Delta sends, decoded leniently (shared/delta-exchange.md §3.2):
//! decimals as strings or numbers, times as µs integers, µs strings or
//! ISO-8601, ids as numbers or strings. REST results and every WebSocket
//! message the host uses, in both the compact (public endpoint) and the
//! legacy field names.

use rust_decimal::Decimal;
use serde::de::{self, Deserializer};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The text of a string or number scalar; `None` for null and `""`.
fn scalar<'de, D: Deserializer<'de>>(d: D, what: &str) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => Ok(Some(s)),
        Value::Number(n) => Ok(Some(n.to_string())),
        other => Err(de::Error::custom(format!("expected {what}, got {other}"))),
    }
}

/// Parses the scalar's text, or says what it is not.
fn parse_scalar<'de, D: Deserializer<'de>, T>(
    d: D,
    what: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<Option<T>, D::Error> {
    scalar(d, what)?
        .map(|text| parse(&text).ok_or_else(|| de::Error::custom(format!("bad {what} {text:?}"))))
        .transpose()
}

fn required<E: de::Error, T>(value: Option<T>, what: &str) -> Result<T, E> {
    value.ok_or_else(|| E::custom(format!("expected {what}, got null")))
}

/// Decodes a decimal from a JSON string or number.
pub fn decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
    required(opt_decimal(d)?, "a decimal")
}

/// Decodes an optional decimal (null, `""`, string or number).
pub fn opt_decimal<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
    parse_scalar(d, "decimal", |text| text.parse::<Decimal>().ok().or_else(|| Decimal::from_scientific(text).ok()))
}

/// Decodes an integer from a JSON number or a numeric string.
pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    required(opt_int(d)?, "an integer")
}

/// Decodes an optional integer (whole floats such as `3.0` included).
pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    parse_scalar(d, "integer", |text| {
        text.parse().ok().or_else(|| text.parse::<f64>().ok().filter(|f| f.fract() == 0.0).map(|f| f as i64))
    })
}

/// Decodes an id (number or string) as a string.
pub fn id<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    required(opt_id(d)?, "an id")
}

/// Decodes an optional id.
pub fn opt_id<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    scalar(d, "an id")
}

/// Decodes an optional float from a number or a numeric string.
pub fn opt_f64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
    parse_scalar(d, "number", |text| text.parse().ok())
}

/// Decodes an optional time as epoch microseconds: µs numbers, µs strings
/// or ISO-8601 text (with or without fractional seconds).
pub fn opt_time_us<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    parse_scalar(d, "time", |text| {
        text.parse().ok().or_else(|| chrono::DateTime::parse_from_rfc3339(text).ok().map(|t| t.timestamp_micros()))
    })
}

/// Decodes an optional flag: a JSON bool, `"true"`/`"false"` or null.
pub fn opt_flag<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Value::deserialize(d)? {
        Value::Bool(flag) => Ok(Some(flag)),
        Value::Null => Ok(None),
        Value::String(text) => match text.as_str() {
            "true" => Ok(Some(true)),
            "false" => Ok(Some(false)),
            "" => Ok(None),
            _ => Err(de::Error::custom(format!("bad flag {text:?}"))),
        },
        other => Err(de::Error::custom(format!("expected a flag, got {other}"))),
    }
}

/// A product as Delta describes it (`/v2/products`); the host trades [`crate::model::Product`].
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct DeltaProduct {
    /// Numeric id (environment specific).
    #[serde(deserialize_with = "int")]
    pub id: i64,
    /// Symbol, e.g. `BTCUSD`.
    pub symbol: String,
    /// Base units per contract.
    #[serde(deserialize_with = "decimal")]
    pub contract_value: Decimal,
    /// Smallest price step.
    #[serde(deserialize_with = "decimal")]
    pub tick_size: Decimal,
    /// `perpetual_futures`, `call_options`, ...
    #[serde(default)]
    pub contract_type: Option<String>,
    /// `live`, `expired`, `upcoming`.
    #[serde(default)]
    pub state: Option<String>,
    /// `operational`, `disrupted_cancel_only`, `disrupted_post_only`.
    #[serde(default)]
    pub trading_status: Option<String>,
    /// Maker fee rate (fraction).
    #[serde(default, deserialize_with = "opt_decimal")]
    pub maker_commission_rate: Option<Decimal>,
    /// Taker fee rate (fraction).
    #[serde(default, deserialize_with = "opt_decimal")]
    pub taker_commission_rate: Option<Decimal>,
    /// Largest position in contracts.
    #[serde(default, deserialize_with = "opt_int")]
    pub position_size_limit: Option<i64>,
    /// The asset PnL and fees settle in.
    #[serde(default)]
    pub settling_asset: Option<Asset>,
}

/// An asset reference inside a product.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct Asset {
    /// Symbol, e.g. `USD`.
    pub symbol: String,
}

/// Best quotes inside a ticker.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Quotes {
    /// Best ask.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub best_ask: Option<Decimal>,
    /// Best bid.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub best_bid: Option<Decimal>,
    /// Size at the best ask.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub ask_size: Option<Decimal>,
    /// Size at the best bid.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub bid_size: Option<Decimal>,
}

/// A ticker (`/v2/tickers`, legacy `v2/ticker`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Ticker {
    /// Symbol.
    pub symbol: String,
    /// Product id.
    #[serde(default, deserialize_with = "opt_int")]
    pub product_id: Option<i64>,
    /// Mark price.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub mark_price: Option<Decimal>,
    /// Last price of the 24 h window.
    #[serde(default, deserialize_with = "opt_f64")]
    pub close: Option<f64>,
    /// Best bid and ask.
    #[serde(default)]
    pub quotes: Option<Quotes>,
    /// Publish time, µs.
    #[serde(default, deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
}

/// One REST book level.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BookLevel {
    /// Price.
    #[serde(alias = "limit_price", deserialize_with = "decimal")]
    pub price: Decimal,
    /// Size (contracts, or a decimal for spot).
    #[serde(deserialize_with = "decimal")]
    pub size: Decimal,
}

/// `/v2/l2orderbook/{symbol}` (and the legacy `l2_orderbook` stream).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct L2Book {
    /// Symbol.
    #[serde(default)]
    pub symbol: Option<String>,
    /// Bids, best first.
    pub buy: Vec<BookLevel>,
    /// Asks, best first.
    pub sell: Vec<BookLevel>,
    /// Time of the last change, µs.
    #[serde(default, deserialize_with = "opt_time_us")]
    pub last_updated_at: Option<i64>,
}

/// A REST candle (`time` in seconds; OHLC may be null on an empty candle).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RestCandle {
    /// Open time, seconds.
    #[serde(deserialize_with = "int")]
    pub time: i64,
    /// Open.
    #[serde(default, deserialize_with = "opt_f64")]
    pub open: Option<f64>,
    /// High.
    #[serde(default, deserialize_with = "opt_f64")]
    pub high: Option<f64>,
    /// Low.
    #[serde(default, deserialize_with = "opt_f64")]
    pub low: Option<f64>,
    /// Close.
    #[serde(default, deserialize_with = "opt_f64")]
    pub close: Option<f64>,
    /// Volume (absent on mark candles).
    #[serde(default, deserialize_with = "opt_f64")]
    pub volume: Option<f64>,
}

impl RestCandle {
    /// The host's candle of `symbol` (time in ms), or `None` when a price is missing.
    pub fn candle(&self, symbol: &str) -> Option<crate::model::Candle> {
        Some(crate::model::Candle {
            symbol: symbol.to_string(),
            time: self.time * 1_000,
            open: self.open?,
            high: self.high?,
            low: self.low?,
            close: self.close?,
            volume: self.volume.unwrap_or(0.0),
        })
    }
}

/// An order as REST returns it (and as the `orders` snapshot lists it).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RestOrder {
    /// Exchange order id.
    #[serde(alias = "order_id", deserialize_with = "id")]
    pub id: String,
    /// Our client order id.
    #[serde(default, deserialize_with = "opt_id")]
    pub client_order_id: Option<String>,
    /// Product id.
    #[serde(default, deserialize_with = "opt_int")]
    pub product_id: Option<i64>,
    /// Product symbol.
    #[serde(default)]
    pub product_symbol: Option<String>,
    /// Symbol (stream messages).
    #[serde(default)]
    pub symbol: Option<String>,
    /// `buy` or `sell`.
    pub side: String,
    /// Total size in contracts.
    #[serde(deserialize_with = "decimal")]
    pub size: Decimal,
    /// Contracts still open.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub unfilled_size: Option<Decimal>,
    /// `open`, `pending`, `closed`, `cancelled`.
    pub state: String,
    /// `limit_order` or `market_order`.
    #[serde(default)]
    pub order_type: Option<String>,
    /// Limit price.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub limit_price: Option<Decimal>,
    /// A stop order's trigger price (a trailing stop's current one).
    #[serde(default, deserialize_with = "opt_decimal")]
    pub stop_price: Option<Decimal>,
    /// Average fill price.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub average_fill_price: Option<Decimal>,
    /// Why it was cancelled.
    #[serde(default)]
    pub cancellation_reason: Option<String>,
    /// Creation time, µs.
    #[serde(default, deserialize_with = "opt_time_us")]
    pub created_at: Option<i64>,
    /// `stop_loss_order` or `take_profit_order` for a stop order.
    #[serde(default)]
    pub stop_order_type: Option<String>,
    /// Set on the legs the exchange creates for a position bracket.
    #[serde(default, deserialize_with = "opt_flag")]
    pub bracket_order: Option<bool>,
}

/// A fill as REST returns it (`/v2/fills`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RestFill {
    /// Fill id (number or hex string).
    #[serde(deserialize_with = "id")]
    pub id: String,
    /// Exchange order id.
    #[serde(deserialize_with = "id")]
    pub order_id: String,
    /// Client order id, when the exchange includes it.
    #[serde(default, deserialize_with = "opt_id")]
    pub client_order_id: Option<String>,
    /// Product id.
    #[serde(default, deserialize_with = "opt_int")]
    pub product_id: Option<i64>,
    /// Product symbol.
    #[serde(default)]
    pub product_symbol: Option<String>,
    /// `buy` or `sell`.
    pub side: String,
    /// Contracts (a decimal for spot).
    #[serde(deserialize_with = "decimal")]
    pub size: Decimal,
    /// Price.
    #[serde(deserialize_with = "decimal")]
    pub price: Decimal,
    /// `maker` or `taker`.
    #[serde(default)]
    pub role: Option<String>,
    /// Fee paid (negative: rebate).
    #[serde(default, deserialize_with = "opt_decimal")]
    pub commission: Option<Decimal>,
    /// Time, µs.
    #[serde(default, deserialize_with = "opt_time_us")]
    pub created_at: Option<i64>,
    /// `normal`, `adl`, `liquidation`, `settlement`.
    #[serde(default)]
    pub fill_type: Option<String>,
}

/// A position (`/v2/positions`, `/v2/positions/margined`, the `positions` stream).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RestPosition {
    /// Product id.
    #[serde(default, deserialize_with = "opt_int")]
    pub product_id: Option<i64>,
    /// Product symbol.
    #[serde(default)]
    pub product_symbol: Option<String>,
    /// Symbol (stream messages; snapshots carry both names).
    #[serde(default)]
    pub symbol: Option<String>,
    /// Signed size in contracts.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub size: Option<Decimal>,
    /// Entry price.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub entry_price: Option<Decimal>,
    /// Realised PnL.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub realized_pnl: Option<Decimal>,
}

/// A wallet balance (`/v2/wallet/balances`, the `margins` stream).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Balance {
    /// Asset symbol.
    pub asset_symbol: String,
    /// Balance.
    #[serde(deserialize_with = "decimal")]
    pub balance: Decimal,
    /// Balance minus blocked margin.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub available_balance: Option<Decimal>,
}

/// `/v2/settings` (server time in µs).
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Settings {
    /// Server time, µs.
    #[serde(deserialize_with = "int")]
    pub server_time: i64,
}

/// Pagination cursors.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
pub struct Meta {
    /// Cursor of the next page.
    #[serde(default)]
    pub after: Option<String>,
}

/// A WebSocket book side: `[price, size]` strings kept exactly as received
/// (the checksum is computed over the original text).
pub type WsLevels = Vec<(String, String)>;

/// `ob_updates` / legacy `l2_updates`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct BookMessage {
    /// `snapshot`, `update` or `error`.
    pub action: String,
    /// Symbol.
    #[serde(alias = "sy")]
    pub symbol: String,
    /// Asks changed (ascending in snapshots).
    #[serde(default, alias = "a")]
    pub asks: WsLevels,
    /// Bids changed (descending in snapshots).
    #[serde(default, alias = "b")]
    pub bids: WsLevels,
    /// Sequence number (+1 per message).
    #[serde(default, alias = "seq", deserialize_with = "opt_int")]
    pub sequence_no: Option<i64>,
    /// CRC32 of the top 10 levels after applying this message.
    #[serde(default, deserialize_with = "opt_int")]
    pub cs: Option<i64>,
    /// Publish time, µs.
    #[serde(default, alias = "ts", deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
    /// Error text (`action = error`).
    #[serde(default)]
    pub msg: Option<String>,
}

/// `ob_l1` / legacy `l1_orderbook`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TopOfBook {
    /// Symbol.
    #[serde(alias = "sy")]
    pub symbol: String,
    /// Best ask.
    #[serde(alias = "ap", default, deserialize_with = "opt_decimal")]
    pub best_ask: Option<Decimal>,
    /// Ask size.
    #[serde(alias = "as", default, deserialize_with = "opt_decimal")]
    pub ask_qty: Option<Decimal>,
    /// Best bid.
    #[serde(alias = "bp", default, deserialize_with = "opt_decimal")]
    pub best_bid: Option<Decimal>,
    /// Bid size.
    #[serde(alias = "bs", default, deserialize_with = "opt_decimal")]
    pub bid_qty: Option<Decimal>,
    /// Publish time, µs.
    #[serde(alias = "ts", default, deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
}

/// `trades` / legacy `all_trades`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Trade {
    /// Symbol.
    #[serde(alias = "sy")]
    pub symbol: String,
    /// Price.
    #[serde(alias = "p", deserialize_with = "decimal")]
    pub price: Decimal,
    /// Size (contracts).
    #[serde(alias = "s", deserialize_with = "decimal")]
    pub size: Decimal,
    /// Trade time, µs.
    #[serde(alias = "t", default, deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
}

/// Compact `ticker` message: one entry per product.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompactTicker {
    /// Symbol the subscription used.
    pub sy: String,
    /// Publish time, µs.
    #[serde(default, deserialize_with = "opt_time_us")]
    pub ts: Option<i64>,
    /// Products.
    #[serde(default)]
    pub d: Vec<CompactTickerEntry>,
}

/// One product of a compact ticker.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CompactTickerEntry {
    /// Symbol.
    pub s: String,
    /// Mark price.
    #[serde(default, deserialize_with = "opt_decimal")]
    pub m: Option<Decimal>,
    /// `[best_ask, ask_size, best_bid, bid_size, impact_mid]`.
    #[serde(default)]
    pub q: Vec<Value>,
}

/// `candlestick_<res>` in either naming.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct WsCandle {
    /// Symbol.
    #[serde(alias = "sy")]
    pub symbol: String,
    /// Resolution.
    #[serde(alias = "res")]
    pub resolution: String,
    /// Candle start, µs (legacy only).
    #[serde(default, deserialize_with = "opt_time_us")]
    pub candle_start_time: Option<i64>,
    /// Open.
    #[serde(alias = "o", default, deserialize_with = "opt_f64")]
    pub open: Option<f64>,
    /// High.
    #[serde(alias = "h", default, deserialize_with = "opt_f64")]
    pub high: Option<f64>,
    /// Low.
    #[serde(alias = "l", default, deserialize_with = "opt_f64")]
    pub low: Option<f64>,
    /// Close.
    #[serde(alias = "c", default, deserialize_with = "opt_f64")]
    pub close: Option<f64>,
    /// Volume.
    #[serde(alias = "v", default, deserialize_with = "opt_f64")]
    pub volume: Option<f64>,
    /// Publish time, µs.
    #[serde(alias = "ts", default, deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
}

/// `v2/user_trades` (compact) or legacy `user_trades`: one of our fills.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct UserTrade {
    /// Symbol.
    #[serde(alias = "sy")]
    pub symbol: String,
    /// Fill id.
    #[serde(alias = "f", deserialize_with = "id")]
    pub fill_id: String,
    /// Exchange order id.
    #[serde(alias = "o", deserialize_with = "id")]
    pub order_id: String,
    /// Client order id.
    #[serde(alias = "c", default, deserialize_with = "opt_id")]
    pub client_order_id: Option<String>,
    /// `buy` or `sell`.
    #[serde(alias = "S")]
    pub side: String,
    /// Contracts.
    #[serde(alias = "s", deserialize_with = "decimal")]
    pub size: Decimal,
    /// Price.
    #[serde(alias = "p", deserialize_with = "decimal")]
    pub price: Decimal,
    /// `maker` or `taker`.
    #[serde(alias = "r", default)]
    pub role: Option<String>,
    /// `normal`, `adl`, `liquidation`.
    #[serde(alias = "R", default)]
    pub reason: Option<String>,
    /// Position size after the fill.
    #[serde(alias = "po", default, deserialize_with = "opt_decimal")]
    pub position_after: Option<Decimal>,
    /// Time, µs.
    #[serde(alias = "t", default, deserialize_with = "opt_time_us")]
    pub timestamp: Option<i64>,
    /// Per-symbol sequence.
    #[serde(alias = "se", default, deserialize_with = "opt_int")]
    pub seq_no: Option<i64>,
}

/// `system_status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SystemStatus {
    /// `live`, `maintenance`, `api_fallback`, `degraded_mode`.
    pub status: String,
    /// What happened.
    #[serde(default)]
    pub event: Option<String>,
}

/// A decoded WebSocket message.
#[derive(Debug, Clone, PartialEq)]
pub enum WsMessage {
    /// Subscription set (with per-channel errors).
    Subscriptions(Value),
    /// `key-auth` (or legacy `auth`) reply.
    Auth {
        /// Authenticated.
        success: bool,
        /// Status text.
        status: String,
        /// Message.
        message: Option<String>,
    },
    /// Server heartbeat.
    Heartbeat,
    /// Reply to our ping.
    Pong,
    /// A ticker (mark price and quotes) by symbol.
    Ticker {
        /// Symbol.
        symbol: String,
        /// Mark price.
        mark: Option<Decimal>,
        /// Best bid.
        bid: Option<Decimal>,
        /// Best ask.
        ask: Option<Decimal>,
        /// Publish time, µs.
        time: Option<i64>,
    },
    /// Best bid/ask.
    TopOfBook(TopOfBook),
    /// Book snapshot, update or error.
    Book(BookMessage),
    /// Public trades (a snapshot may carry several).
    Trades(Vec<Trade>),
    /// Current candle.
    Candle(WsCandle),
    /// Order snapshot or change.
    Orders {
        /// `snapshot`, `create`, `update`, `delete`.
        action: String,
        /// The orders.
        orders: Vec<RestOrder>,
    },
    /// Position snapshot or change.
    Positions(Vec<RestPosition>),
    /// One of our fills.
    UserTrade(UserTrade),
    /// Wallet change.
    Margins(Balance),
    /// Exchange status.
    SystemStatus(SystemStatus),
    /// A message type the host does not use.
    Other(String),
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {kind} message: {message}")]
pub struct DecodeError {
    /// Message type (or `frame` when it is not a JSON object).
    pub kind: String,
    /// What is wrong, with the field path.
    pub message: String,
}

/// Decodes a JSON value; the error names what is wrong and the field path.
pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|e| format!("{} at `{}`", e.inner(), e.path()))
}

fn typed<T: serde::de::DeserializeOwned>(kind: &str, value: Value) -> Result<T, DecodeError> {
    from_json(value).map_err(|message| DecodeError { kind: kind.to_string(), message })
}

impl WsMessage {
    /// Decodes one text frame.
    pub fn parse(text: &str) -> Result<WsMessage, DecodeError> {
        let value: Value = serde_json::from_str(text)
            .map_err(|e| DecodeError { kind: "frame".into(), message: format!("not JSON: {e}") })?;
        let kind = value
            .get("type")
            .and_then(Value::as_str)
            .ok_or_else(|| DecodeError { kind: "frame".into(), message: "no \"type\" field".into() })?
            .to_string();
        let k = kind.as_str();
        Ok(match k {
            "subscriptions" => WsMessage::Subscriptions(value),
            "key-auth" | "auth" | "success" => WsMessage::Auth {
                success: value.get("success").and_then(Value::as_bool).unwrap_or(k == "success"),
                status: value.get("status").and_then(Value::as_str).unwrap_or_default().to_string(),
                message: value.get("message").and_then(Value::as_str).map(str::to_string),
            },
            "heartbeat" => WsMessage::Heartbeat,
            "pong" => WsMessage::Pong,
            "ticker" => {
                let t: CompactTicker = typed(k, value)?;
                let entry = t.d.into_iter().next();
                let q = |i: usize| {
                    entry.as_ref().and_then(|e| e.q.get(i)).and_then(|v| match v {
                        Value::String(s) => s.parse().ok(),
                        Value::Number(n) => n.to_string().parse().ok(),
                        _ => None,
                    })
                };
                WsMessage::Ticker {
                    symbol: entry.as_ref().map_or(t.sy.clone(), |e| e.s.clone()),
                    mark: entry.as_ref().and_then(|e| e.m),
                    ask: q(0),
                    bid: q(2),
                    time: t.ts,
                }
            }
            "v2/ticker" => {
                let t: Ticker = typed(k, value)?;
                let quotes = t.quotes.unwrap_or_default();
                WsMessage::Ticker {
                    symbol: t.symbol,
                    mark: t.mark_price,
                    bid: quotes.best_bid,
                    ask: quotes.best_ask,
                    time: t.timestamp,
                }
            }
            "ob_l1" | "l1_orderbook" => WsMessage::TopOfBook(typed(k, value)?),
            "ob_updates" | "l2_updates" => WsMessage::Book(typed(k, value)?),
            "trades" | "all_trades" => WsMessage::Trades(vec![typed(k, value)?]),
            "all_trades_snapshot" => {
                let symbol = value.get("symbol").cloned().unwrap_or(Value::Null);
                let trades = value.get("trades").and_then(Value::as_array).cloned().unwrap_or_default();
                let trades = trades
                    .into_iter()
                    .map(|mut t| {
                        if let Value::Object(map) = &mut t {
                            map.entry("symbol").or_insert(symbol.clone());
                        }
                        typed(k, t)
                    })
                    .collect::<Result<_, _>>()?;
                WsMessage::Trades(trades)
            }
            _ if k.starts_with("candlestick_") => WsMessage::Candle(typed(k, value)?),
            "orders" => {
                let action = value.get("action").and_then(Value::as_str).unwrap_or("update").to_string();
                let orders = if action == "snapshot" {
                    typed(k, value.get("result").cloned().unwrap_or(Value::Array(vec![])))?
                } else {
                    vec![typed(k, value)?]
                };
                WsMessage::Orders { action, orders }
            }
            "positions" => {
                let snapshot = value.get("action").and_then(Value::as_str) == Some("snapshot");
                WsMessage::Positions(if snapshot {
                    typed(k, value.get("result").cloned().unwrap_or(Value::Array(vec![])))?
                } else {
                    vec![typed(k, value)?]
                })
            }
            "v2/user_trades" | "user_trades" => WsMessage::UserTrade(typed(k, value)?),
            "margins" => WsMessage::Margins(typed(k, value)?),
            "system_status" => WsMessage::SystemStatus(typed(k, value)?),
            _ => WsMessage::Other(kind),
        })
    }
}
