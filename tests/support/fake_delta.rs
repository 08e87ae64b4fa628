//! A fake Delta Exchange on loopback that speaks the real protocol
//! (shared/delta-exchange.md): `/v2` REST with signature verification over
//! the raw request, the 5-second window, rate-limit weights with 429 +
//! `X-RATE-LIMIT-RESET`, the real envelopes and error shapes; a private
//! (legacy) WebSocket with `key-auth`, `orders`, `positions`,
//! `v2/user_trades`, `margins` and the legacy public channel names; a public
//! WebSocket with `ob_updates` (snapshot + deltas with `seq` and the CRC-32
//! `cs`) and `trades`; heartbeats and pongs; a small matching engine; and
//! fault switches (drop sockets, stop heartbeats, sequence gap, bad checksum,
//! malformed frame, 429 burst, maintenance, slow order responses, clock skew,
//! frozen market).

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use hmac::{Hmac, KeyInit, Mac};
use rand::{Rng, SeedableRng};
use rust_decimal::Decimal;
use serde_json::{Value, json};
use sha2::Sha256;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tradehost::store::Store;

/// How the fake behaves.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    pub key: String,
    pub secret: String,
    pub heartbeat_ms: u64,
    pub tick_ms: u64,
    /// Largest mid move per tick, in ticks of the product.
    pub step_ticks: i64,
    pub window_units: u32,
    pub window_ms: u64,
    pub balance: Decimal,
    pub seed: u64,
    /// `[from, to)` second ranges with no candles (no trades there).
    pub candle_gaps: Vec<(i64, i64)>,
    /// Open times (seconds) of candles served broken (high below low).
    pub bad_candles: Vec<i64>,
}

impl Default for FakeConfig {
    fn default() -> Self {
        FakeConfig {
            key: "fake-key-0001".into(),
            secret: "fake-secret-0001".into(),
            heartbeat_ms: 300,
            tick_ms: 100,
            step_ticks: 16,
            window_units: 10_000,
            window_ms: 300_000,
            balance: Decimal::from(100_000),
            seed: 7,
            candle_gaps: Vec::new(),
            bad_candles: Vec::new(),
        }
    }
}

/// Fault switches.
#[derive(Default)]
pub struct Faults {
    pub stop_heartbeats: AtomicBool,
    pub unavailable: AtomicBool,
    pub slow_orders_ms: AtomicU64,
    /// Milliseconds each `/v2/history/candles` answer is held back.
    pub slow_candles_ms: AtomicU64,
    pub clock_skew_ms: AtomicI64,
    pub burst_429: AtomicU32,
    pub freeze_market: AtomicBool,
    sequence_gap: AtomicBool,
    bad_checksum: AtomicBool,
}

#[derive(Clone, Debug)]
struct ProductDef {
    id: i64,
    symbol: &'static str,
    contract_value: Decimal,
    tick: Decimal,
    decimals: u32,
    start: Decimal,
}

/// An order as the fake keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeOrder {
    pub id: i64,
    pub client_order_id: Option<String>,
    pub product_id: i64,
    pub symbol: String,
    pub side: String,
    pub size: i64,
    pub unfilled: i64,
    pub limit_price: Option<Decimal>,
    pub order_type: String,
    pub time_in_force: String,
    pub post_only: bool,
    pub reduce_only: bool,
    pub state: String,
    pub avg_fill_price: Option<Decimal>,
    pub cancellation_reason: Option<String>,
    pub created_at: i64,
    /// `stop_loss_order` or `take_profit_order` for a stop order.
    pub stop_order_type: Option<String>,
    /// A stop's trigger (a trailing stop's current one).
    pub stop_price: Option<Decimal>,
    /// A trailing stop's distance, as sent (negative for sells).
    pub trail_amount: Option<Decimal>,
    /// `last_traded_price` or `mark_price`.
    pub stop_trigger_method: String,
    /// A leg the exchange created for a position bracket (no client id).
    pub bracket_order: bool,
    /// The bracket an entry attaches to its position once it fills.
    pub bracket: Option<FakeBracket>,
}

/// A position bracket as requested (§4.16): each leg's trigger (or trail) and limit.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct FakeBracket {
    /// Stop-loss: (trigger, trail amount, limit).
    pub stop_loss: Option<(Option<Decimal>, Option<Decimal>, Option<Decimal>)>,
    /// Take-profit: (trigger, limit).
    pub take_profit: Option<(Decimal, Option<Decimal>)>,
    /// `last_traded_price` or `mark_price`.
    pub trigger_method: String,
}

/// A fill as the fake keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct FakeFill {
    pub id: String,
    pub order_id: i64,
    pub client_order_id: Option<String>,
    pub product_id: i64,
    pub symbol: String,
    pub side: String,
    pub size: i64,
    pub price: Decimal,
    pub role: &'static str,
    pub commission: Decimal,
    pub created_at: i64,
}

#[derive(Default)]
struct Book {
    mid: Decimal,
    seq: i64,
    asks: BTreeMap<Decimal, i64>,
    bids: BTreeMap<Decimal, i64>,
}

struct Exchange {
    products: Vec<ProductDef>,
    books: HashMap<i64, Book>,
    orders: Vec<FakeOrder>,
    fills: Vec<FakeFill>,
    positions: HashMap<i64, (i64, Decimal)>,
    balance: Decimal,
    next_id: i64,
    window: (std::time::Instant, u32),
    rng: rand_chacha::ChaCha8Rng,
    posts_by_client_id: HashMap<String, u32>,
}

#[derive(Clone, Debug)]
enum Event {
    /// A public book or trade message: (symbol, book seq or 0, new-endpoint JSON, legacy JSON).
    Public { symbol: String, seq: i64, new: String, legacy: String, channel: &'static str },
    /// A private message for a channel.
    Private { channel: &'static str, text: String },
    /// Raw text to every public connection.
    Raw(String),
}

struct Shared {
    config: FakeConfig,
    faults: Faults,
    exchange: Mutex<Exchange>,
    events: broadcast::Sender<Event>,
    drop_sockets: broadcast::Sender<()>,
    requests: AtomicU64,
    /// Requests served, by "METHOD /path".
    calls: Mutex<HashMap<String, u64>>,
    signature_failures: AtomicU64,
    connections: AtomicU64,
    /// Signed REST calls and connections to the private (legacy) socket.
    private_uses: AtomicU64,
    snapshots: AtomicU64,
    /// When each public message was handed to the sockets, and when each
    /// order request arrived (for the tick-to-order benchmark).
    timeline: Mutex<(Vec<std::time::Instant>, Vec<std::time::Instant>)>,
}

/// The running fake.
pub struct FakeDelta {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    cancel: CancellationToken,
}

impl Drop for FakeDelta {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

impl FakeDelta {
    /// Starts the fake on 127.0.0.1 with a random port.
    pub async fn start(config: FakeConfig) -> FakeDelta {
        let products = vec![
            ProductDef {
                id: 84,
                symbol: "BTCUSD",
                contract_value: d("0.001"),
                tick: d("0.5"),
                decimals: 1,
                start: d("60000"),
            },
            ProductDef {
                id: 85,
                symbol: "ETHUSD",
                contract_value: d("0.01"),
                tick: d("0.05"),
                decimals: 2,
                start: d("3000"),
            },
        ];
        let mut books = HashMap::new();
        for p in &products {
            let mut book = Book { mid: p.start, seq: 1, ..Default::default() };
            rebuild(&mut book, p);
            books.insert(p.id, book);
        }
        let exchange = Exchange {
            products,
            books,
            orders: Vec::new(),
            fills: Vec::new(),
            positions: HashMap::new(),
            balance: config.balance,
            next_id: 1_000,
            window: (std::time::Instant::now(), 0),
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(config.seed),
            posts_by_client_id: HashMap::new(),
        };
        let (events, _) = broadcast::channel(65_536);
        let (drop_sockets, _) = broadcast::channel(16);
        let shared = Arc::new(Shared {
            config,
            faults: Faults::default(),
            exchange: Mutex::new(exchange),
            events,
            drop_sockets,
            requests: AtomicU64::new(0),
            calls: Mutex::new(HashMap::new()),
            signature_failures: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            private_uses: AtomicU64::new(0),
            snapshots: AtomicU64::new(0),
            timeline: Mutex::new((Vec::new(), Vec::new())),
        });
        let app = Router::new()
            .route("/ws", get(ws_private))
            .route("/ws-public", get(ws_public))
            .fallback(rest)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let cancel = CancellationToken::new();
        {
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let _ = axum::serve(listener, app).with_graceful_shutdown(cancel.cancelled_owned()).await;
            });
        }
        {
            let (shared, cancel) = (shared.clone(), cancel.clone());
            tokio::spawn(async move {
                let mut interval = tokio::time::interval(Duration::from_millis(shared.config.tick_ms));
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = interval.tick() => market_tick(&shared),
                    }
                }
            });
        }
        FakeDelta { addr, shared, cancel }
    }

    /// Points a host's config at this fake: Delta, its URLs, its key and secret.
    pub fn configure(&self, config: &mut tradehost::config::Config) {
        config.exchange.kind = tradehost::config::ExchangeKind::Delta;
        let delta = &mut config.exchange.delta;
        delta.rest_url = Some(self.rest_url());
        delta.ws_url = Some(self.ws_url());
        delta.ws_public_url = Some(self.ws_public_url());
        delta.api_key = Some(tradehost::config::Secret::new(self.config().key.clone()));
        delta.api_secret = Some(tradehost::config::Secret::new(self.config().secret.clone()));
    }
    pub fn rest_url(&self) -> String {
        format!("http://{}", self.addr)
    }
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }
    pub fn ws_public_url(&self) -> String {
        format!("ws://{}/ws-public", self.addr)
    }
    pub fn config(&self) -> &FakeConfig {
        &self.shared.config
    }
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }
    /// Closes every WebSocket at once.
    pub fn drop_sockets(&self) {
        let _ = self.shared.drop_sockets.send(());
    }
    /// The next book update skips a sequence number.
    pub fn sequence_gap(&self) {
        self.shared.faults.sequence_gap.store(true, Ordering::SeqCst);
    }
    /// The next book update carries a wrong checksum.
    pub fn bad_checksum(&self) {
        self.shared.faults.bad_checksum.store(true, Ordering::SeqCst);
    }
    /// Sends a frame that is not JSON to every public connection.
    pub fn malformed_frame(&self) {
        let _ = self.shared.events.send(Event::Raw("{\"type\":\"ob_updates\",\"sy\":".into()));
    }
    /// The market sweeps through every resting order: each fills at its limit (maker).
    pub fn sweep(&self) -> usize {
        let ts = now_us(&self.shared);
        let mut ex = self.shared.exchange.lock().unwrap();
        let resting: Vec<usize> = ex
            .orders
            .iter()
            .enumerate()
            .filter(|(_, o)| o.state == "open" && o.limit_price.is_some())
            .map(|(i, _)| i)
            .collect();
        let mut events = Vec::new();
        for &i in &resting {
            let (size, price) = (ex.orders[i].unfilled, ex.orders[i].limit_price.unwrap());
            events.extend(execute(&mut ex, i, size, price, "maker", ts));
        }
        drop(ex);
        for event in events {
            let _ = self.shared.events.send(event);
        }
        resting.len()
    }
    pub fn orders(&self) -> Vec<FakeOrder> {
        self.shared.exchange.lock().unwrap().orders.clone()
    }
    /// The open and pending orders as [`open_label`] names them, sorted.
    pub fn open_labels(&self) -> Vec<String> {
        let mut labels: Vec<String> = self
            .orders()
            .into_iter()
            .filter(|o| o.state == "open" || o.state == "pending")
            .map(|o| match (&o.client_order_id, o.bracket_order) {
                (_, true) => format!("bracket {}", o.stop_order_type.unwrap_or_default()),
                (Some(id), false) => id.clone(),
                (None, false) => format!("order {} without a client id", o.id),
            })
            .collect();
        labels.sort();
        labels
    }

    /// The candles the fake serves for `[start, end)` seconds at `resolution`, oldest first.
    pub fn history(&self, symbol: &str, resolution: &str, start: i64, end: i64) -> Vec<tradehost::model::Candle> {
        let ex = self.shared.exchange.lock().unwrap();
        let p = ex.products.iter().find(|p| p.symbol == symbol).expect("a fake product");
        let step = fake_resolution_seconds(resolution).expect("a Delta resolution");
        fake_history(&self.shared.config, p, step, start, end, now_us(&self.shared) / 1_000_000)
    }

    pub fn fills(&self) -> Vec<FakeFill> {
        self.shared.exchange.lock().unwrap().fills.clone()
    }
    /// Net position (contracts) and entry price of a symbol.
    pub fn position(&self, symbol: &str) -> (i64, Decimal) {
        let ex = self.shared.exchange.lock().unwrap();
        let id = ex.products.iter().find(|p| p.symbol == symbol).unwrap().id;
        ex.positions.get(&id).copied().unwrap_or((0, Decimal::ZERO))
    }
    pub fn balance(&self) -> Decimal {
        self.shared.exchange.lock().unwrap().balance
    }
    /// Client order ids posted more than once (a host must never do this).
    pub fn duplicate_posts(&self) -> Vec<String> {
        let ex = self.shared.exchange.lock().unwrap();
        ex.posts_by_client_id.iter().filter(|(_, n)| **n > 1).map(|(id, _)| id.clone()).collect()
    }
    pub fn requests(&self) -> u64 {
        self.shared.requests.load(Ordering::Relaxed)
    }
    /// How many requests "METHOD /path" the fake has received.
    pub fn calls(&self, route: &str) -> u64 {
        self.shared.calls.lock().unwrap().get(route).copied().unwrap_or(0)
    }
    pub fn signature_failures(&self) -> u64 {
        self.shared.signature_failures.load(Ordering::Relaxed)
    }
    /// For each order request: time since the last public market message
    /// was sent before it arrived (market message → order at the exchange).
    pub fn tick_to_order(&self) -> Vec<Duration> {
        let timeline = self.shared.timeline.lock().unwrap();
        let (sent, posts) = &*timeline;
        posts
            .iter()
            .filter_map(|post| {
                let i = sent.partition_point(|s| s <= post);
                (i > 0).then(|| *post - sent[i - 1])
            })
            .collect()
    }
    /// Forgets the recorded timeline.
    pub fn clear_timeline(&self) {
        let mut timeline = self.shared.timeline.lock().unwrap();
        timeline.0.clear();
        timeline.1.clear();
    }
    /// Book snapshots sent (one per book subscription).
    pub fn snapshots(&self) -> u64 {
        self.shared.snapshots.load(Ordering::Relaxed)
    }
    /// WebSocket connections accepted so far.
    /// Signed REST calls and private-socket connections so far.
    pub fn private_uses(&self) -> u64 {
        self.shared.private_uses.load(Ordering::Relaxed)
    }

    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::Relaxed)
    }
}

fn now_us(shared: &Shared) -> i64 {
    chrono::Utc::now().timestamp_micros() + shared.faults.clock_skew_ms.load(Ordering::Relaxed) * 1_000
}

fn fmt_price(price: Decimal, p: &ProductDef) -> String {
    format!("{:.*}", p.decimals as usize, price)
}

/// Five levels a side around the mid, one tick apart from the touch.
fn rebuild(book: &mut Book, p: &ProductDef) {
    book.asks.clear();
    book.bids.clear();
    for k in 1..=5i64 {
        let offset = p.tick * Decimal::from(k);
        book.asks.insert(book.mid + offset, 100 * k);
        book.bids.insert(book.mid - offset, 100 * k);
    }
}

fn levels(side: &BTreeMap<Decimal, i64>, p: &ProductDef, ascending: bool) -> Vec<(String, String)> {
    let render = |(price, size): (&Decimal, &i64)| (fmt_price(*price, p), size.to_string());
    if ascending { side.iter().map(render).collect() } else { side.iter().rev().map(render).collect() }
}

fn checksum(book: &Book, p: &ProductDef) -> u32 {
    let join = |v: Vec<(String, String)>| {
        v.into_iter().take(10).map(|(a, b)| format!("{a}:{b}")).collect::<Vec<_>>().join(",")
    };
    let text = format!("{}|{}", join(levels(&book.asks, p, true)), join(levels(&book.bids, p, false)));
    crc32fast::hash(text.as_bytes())
}

fn book_messages(
    action: &str,
    symbol: &str,
    seq: i64,
    cs: u32,
    asks: &[(String, String)],
    bids: &[(String, String)],
    ts: i64,
) -> (String, String) {
    let new = json!({"type": "ob_updates", "action": action, "sy": symbol, "a": asks, "b": bids, "seq": seq, "ts": ts, "cs": cs});
    let legacy = json!({"type": "l2_updates", "action": action, "symbol": symbol, "asks": asks, "bids": bids, "sequence_no": seq, "timestamp": ts, "cs": cs});
    (new.to_string(), legacy.to_string())
}

/// Moves every mid, publishes the book deltas and a trade, fills crossed resting orders.
fn market_tick(shared: &Shared) {
    if shared.faults.freeze_market.load(Ordering::Relaxed) {
        return;
    }
    let ts = now_us(shared);
    let mut out = Vec::new();
    let mut ex = shared.exchange.lock().unwrap();
    let products = ex.products.clone();
    for p in &products {
        let step = ex.rng.random_range(-shared.config.step_ticks..=shared.config.step_ticks);
        let book = ex.books.get_mut(&p.id).unwrap();
        let before_asks = book.asks.clone();
        let before_bids = book.bids.clone();
        book.mid = (book.mid + p.tick * Decimal::from(step)).max(p.tick * Decimal::from(100));
        rebuild(book, p);
        let diff = |before: &BTreeMap<Decimal, i64>, after: &BTreeMap<Decimal, i64>, ascending: bool| {
            let mut changed: Vec<(Decimal, String)> = Vec::new();
            for (price, size) in after {
                if before.get(price) != Some(size) {
                    changed.push((*price, size.to_string()));
                }
            }
            for price in before.keys() {
                if !after.contains_key(price) {
                    changed.push((*price, "0".into()));
                }
            }
            changed.sort_by(|a, b| if ascending { a.0.cmp(&b.0) } else { b.0.cmp(&a.0) });
            changed.into_iter().map(|(price, size)| (fmt_price(price, p), size)).collect::<Vec<_>>()
        };
        let asks = diff(&before_asks, &book.asks, true);
        let bids = diff(&before_bids, &book.bids, false);
        book.seq += if shared.faults.sequence_gap.swap(false, Ordering::SeqCst) { 2 } else { 1 };
        let mut cs = checksum(book, p);
        if shared.faults.bad_checksum.swap(false, Ordering::SeqCst) {
            cs ^= 0xdead_beef;
        }
        let (new, legacy) = book_messages("update", p.symbol, book.seq, cs, &asks, &bids, ts);
        out.push(Event::Public { symbol: p.symbol.into(), seq: book.seq, new, legacy, channel: "book" });
        let trade_price = fmt_price(book.mid, p);
        out.push(Event::Public {
            symbol: p.symbol.into(),
            seq: 0,
            new: json!({"type": "trades", "sy": p.symbol, "p": trade_price, "s": 1.0, "r": "t", "t": ts, "ts": ts}).to_string(),
            legacy: json!({"type": "all_trades", "symbol": p.symbol, "product_id": p.id, "price": trade_price, "size": 1, "buyer_role": "taker", "seller_role": "maker", "timestamp": ts}).to_string(),
            channel: "trades",
        });
        // The mark price sits a quarter tick above the mid (as real marks differ from mids).
        let mark = book.mid + p.tick / Decimal::from(4);
        let (ask, bid) =
            (fmt_price(*book.asks.keys().next().unwrap(), p), fmt_price(*book.bids.keys().next_back().unwrap(), p));
        out.push(Event::Public {
            symbol: p.symbol.into(),
            seq: 0,
            new: json!({"type": "ticker", "sy": p.symbol, "ts": ts, "d": [{"s": p.symbol, "i": p.id, "m": mark.to_string(), "q": [ask, "100", bid, "100", null]}]}).to_string(),
            legacy: json!({"type": "v2/ticker", "symbol": p.symbol, "product_id": p.id, "mark_price": mark.to_string(), "timestamp": ts,
                "quotes": {"best_ask": ask, "ask_size": "100", "best_bid": bid, "bid_size": "100"}}).to_string(),
            channel: "ticker",
        });
        let (best_bid, best_ask) = (*book.bids.keys().next_back().unwrap(), *book.asks.keys().next().unwrap());
        let mid = book.mid;
        // Pending stops: trailing ones follow the watched price; those it reaches
        // fire — a market stop takes at the touch, a stop-limit then rests as a limit.
        let stops: Vec<usize> = (0..ex.orders.len())
            .filter(|&i| ex.orders[i].product_id == p.id && ex.orders[i].state == "pending")
            .collect();
        for i in stops {
            let watched = trigger_price(mid, p, &ex.orders[i].stop_trigger_method);
            let order = &mut ex.orders[i];
            let sell = order.side == "sell";
            if let (Some(trail), Some(stop)) = (order.trail_amount, order.stop_price) {
                let follow = if sell { watched - trail.abs() } else { watched + trail.abs() };
                order.stop_price = Some(if sell { stop.max(follow) } else { stop.min(follow) });
            }
            let stop = order.stop_price.unwrap();
            let falling = (order.stop_order_type.as_deref() == Some("stop_loss_order")) == sell;
            if !(if falling { watched <= stop } else { watched >= stop }) {
                continue;
            }
            order.state = "open".into();
            out.push(order_event(order, "update", Some("stop_trigger"), ts));
            let touch = if sell { best_bid } else { best_ask };
            let takes = order.limit_price.is_none_or(|l| if sell { l <= touch } else { l >= touch });
            if takes {
                let mut size = order.unfilled;
                if order.bracket_order {
                    // A bracket leg closes what is left of the position.
                    size = size.min(ex.positions.get(&p.id).map_or(0, |(pos, _)| pos.abs()));
                }
                if size > 0 {
                    out.extend(execute(&mut ex, i, size, touch, "taker", ts));
                }
            }
        }
        // Resting orders the new touch crosses fill at their limit (maker).
        let crossed: Vec<usize> = ex
            .orders
            .iter()
            .enumerate()
            .filter(|(_, o)| o.product_id == p.id && o.state == "open")
            .filter(|(_, o)| match (o.side.as_str(), o.limit_price) {
                ("buy", Some(limit)) => best_ask <= limit,
                ("sell", Some(limit)) => best_bid >= limit,
                _ => false,
            })
            .map(|(i, _)| i)
            .collect();
        for i in crossed {
            let price = ex.orders[i].limit_price.unwrap();
            let size = ex.orders[i].unfilled;
            out.extend(execute(&mut ex, i, size, price, "maker", ts));
        }
    }
    drop(ex);
    let mut timeline = shared.timeline.lock().unwrap();
    for event in out {
        let public = matches!(event, Event::Public { .. });
        let _ = shared.events.send(event);
        if public {
            timeline.0.push(std::time::Instant::now());
        }
    }
}

/// The price a stop watches: the last trade (the mid here) or the mark.
fn trigger_price(mid: Decimal, p: &ProductDef, method: &str) -> Decimal {
    if method == "last_traded_price" { mid } else { mid + p.tick / Decimal::from(4) }
}

fn order_json(o: &FakeOrder) -> Value {
    json!({
        "id": o.id, "client_order_id": o.client_order_id, "product_id": o.product_id, "product_symbol": o.symbol,
        "side": o.side, "size": o.size, "unfilled_size": o.unfilled, "state": o.state, "order_type": o.order_type,
        "limit_price": o.limit_price.map(|p| p.to_string()), "average_fill_price": o.avg_fill_price.map(|p| p.to_string()),
        "time_in_force": o.time_in_force, "post_only": o.post_only, "reduce_only": o.reduce_only,
        "cancellation_reason": o.cancellation_reason, "created_at": o.created_at.to_string(),
        "stop_order_type": o.stop_order_type, "stop_price": o.stop_price.map(|p| p.to_string()),
        "trail_amount": o.trail_amount.map(|p| p.to_string()), "stop_trigger_method": o.stop_trigger_method, "paid_commission": "0", "commission": "0", "user_id": 1,
        "bracket_order": o.bracket_order,
    })
}

fn order_event(o: &FakeOrder, action: &str, reason: Option<&str>, ts: i64) -> Event {
    let mut message = json!({
        "type": "orders", "action": action, "reason": reason, "symbol": o.symbol, "product_id": o.product_id,
        "order_id": o.id, "client_order_id": o.client_order_id, "size": o.size, "unfilled_size": o.unfilled,
        "average_fill_price": o.avg_fill_price.map(|p| p.to_string()), "limit_price": o.limit_price.map(|p| p.to_string()),
        "side": o.side, "state": o.state, "cancellation_reason": o.cancellation_reason, "seq_no": 1, "timestamp": ts,
        "stop_order_type": o.stop_order_type, "stop_price": o.stop_price.map(|p| p.to_string()),
        "bracket_order": o.bracket_order,
    });
    if o.order_type == "market_order" {
        message["limit_price"] = Value::Null;
    }
    Event::Private { channel: "orders", text: message.to_string() }
}

/// Fills `size` contracts of order `i` at `price`; returns the stream messages.
fn execute(ex: &mut Exchange, i: usize, size: i64, price: Decimal, role: &'static str, ts: i64) -> Vec<Event> {
    let product = ex.products.iter().find(|p| p.id == ex.orders[i].product_id).unwrap().clone();
    let rate = if role == "maker" { d("0.0002") } else { d("0.0005") };
    let notional = price * Decimal::from(size) * product.contract_value;
    let commission = (notional * rate).round_dp(8);
    let sign = if ex.orders[i].side == "buy" { 1 } else { -1 };
    let (pos, entry) = ex.positions.get(&product.id).copied().unwrap_or((0, Decimal::ZERO));
    let delta = sign * size;
    let mut realized = Decimal::ZERO;
    let (new_pos, new_entry) = if pos == 0 || pos.signum() == delta.signum() {
        let total = pos + delta;
        let e = (entry * Decimal::from(pos.abs()) + price * Decimal::from(size)) / Decimal::from(total.abs());
        (total, e)
    } else {
        let closing = size.min(pos.abs());
        realized = (price - entry) * Decimal::from(closing) * product.contract_value * Decimal::from(pos.signum());
        let total = pos + delta;
        let e = if total == 0 {
            Decimal::ZERO
        } else if total.signum() != pos.signum() {
            price
        } else {
            entry
        };
        (total, e)
    };
    ex.positions.insert(product.id, (new_pos, new_entry));
    ex.balance += realized - commission;
    let order = &mut ex.orders[i];
    let filled_before = order.size - order.unfilled;
    let avg = order.avg_fill_price.unwrap_or_default();
    order.unfilled -= size;
    order.avg_fill_price = Some(
        (avg * Decimal::from(filled_before) + price * Decimal::from(size)) / Decimal::from(order.size - order.unfilled),
    );
    if order.unfilled == 0 {
        order.state = "closed".into();
    }
    let order = order.clone();
    ex.next_id += 1;
    let fill = FakeFill {
        id: format!("{:032x}", ex.next_id as u128 * 0x9e37_79b9),
        order_id: order.id,
        client_order_id: order.client_order_id.clone(),
        product_id: product.id,
        symbol: product.symbol.into(),
        side: order.side.clone(),
        size,
        price,
        role,
        commission,
        created_at: ts,
    };
    ex.fills.push(fill.clone());
    let balance = ex.balance;
    let mut follow_ups = Vec::new();
    if new_pos == 0 {
        // A position bracket ends with its position.
        follow_ups.extend(cancel_brackets(ex, product.id, "position_closed", ts));
    } else if order.state == "closed"
        && let Some(bracket) = &order.bracket
    {
        follow_ups.extend(attach_bracket(ex, product.id, bracket, ts));
    }
    let mut events = vec![
        Event::Private {
            channel: "v2/user_trades",
            text: json!({"type": "v2/user_trades", "sy": fill.symbol, "f": fill.id, "R": "normal", "u": 1, "o": fill.order_id,
                "S": fill.side, "s": fill.size, "p": fill.price.to_string(), "po": new_pos, "r": role,
                "c": fill.client_order_id, "t": ts, "se": ex.fills.len()}).to_string(),
        },
        order_event(&order, "update", Some("fill"), ts),
        Event::Private {
            channel: "positions",
            text: json!({"type": "positions", "action": "update", "reason": null, "symbol": product.symbol, "product_id": product.id,
                "size": new_pos, "entry_price": new_entry.to_string(), "margin": "0"}).to_string(),
        },
        Event::Private {
            channel: "margins",
            text: json!({"type": "margins", "action": "update", "asset_id": 3, "asset_symbol": "USD", "balance": balance.to_string(),
                "available_balance": balance.to_string(), "blocked_margin": "0", "timestamp": ts, "user_id": 1}).to_string(),
        },
    ];
    events.extend(follow_ups);
    events
}

/// Cancels the pending legs of a product's position bracket.
fn cancel_brackets(ex: &mut Exchange, product_id: i64, reason: &str, ts: i64) -> Vec<Event> {
    let mut events = Vec::new();
    for order in ex.orders.iter_mut().filter(|o| o.product_id == product_id && o.bracket_order && o.state == "pending")
    {
        order.state = "cancelled".into();
        order.cancellation_reason = Some(reason.into());
        events.push(order_event(order, "delete", Some("stop_cancel"), ts));
    }
    events
}

/// Creates a position bracket's legs (replacing the product's earlier one):
/// reduce-only stop orders closing the whole position, without client ids.
fn attach_bracket(ex: &mut Exchange, product_id: i64, bracket: &FakeBracket, ts: i64) -> Vec<Event> {
    let (position, _) = ex.positions.get(&product_id).copied().unwrap_or((0, Decimal::ZERO));
    if position == 0 {
        return Vec::new();
    }
    let mut events = cancel_brackets(ex, product_id, "bracket_replaced", ts);
    let product = ex.products.iter().find(|p| p.id == product_id).unwrap().clone();
    let side = if position > 0 { "sell" } else { "buy" };
    let watched = trigger_price(ex.books[&product_id].mid, &product, &bracket.trigger_method);
    let legs = [
        bracket.stop_loss.map(|(stop, trail, limit)| ("stop_loss_order", stop, trail, limit)),
        bracket.take_profit.map(|(stop, limit)| ("take_profit_order", Some(stop), None, limit)),
    ];
    for (kind, stop, trail, limit) in legs.into_iter().flatten() {
        let stop_price = match trail {
            Some(trail) if side == "sell" => Some(watched - trail.abs()),
            Some(trail) => Some(watched + trail.abs()),
            None => stop,
        };
        ex.next_id += 1;
        let order = FakeOrder {
            id: ex.next_id,
            client_order_id: None,
            product_id,
            symbol: product.symbol.into(),
            side: side.into(),
            size: position.abs(),
            unfilled: position.abs(),
            limit_price: limit,
            order_type: if limit.is_some() { "limit_order" } else { "market_order" }.into(),
            time_in_force: "gtc".into(),
            post_only: false,
            reduce_only: true,
            state: "pending".into(),
            avg_fill_price: None,
            cancellation_reason: None,
            created_at: ts,
            stop_order_type: Some(kind.into()),
            stop_price,
            trail_amount: trail,
            stop_trigger_method: bracket.trigger_method.clone(),
            bracket_order: true,
            bracket: None,
        };
        events.push(order_event(&order, "create", None, ts));
        ex.orders.push(order);
    }
    events
}

/// A bracket from its JSON fields (`prefix` `bracket_` on an entry, or the
/// `stop_loss_order`/`take_profit_order` objects); `Err` for a stop-loss with
/// both a price and a trail, as Delta answers `bad_schema`.
fn bracket_fields(
    sl: [Option<Decimal>; 3],
    tp: [Option<Decimal>; 2],
    method: Option<&str>,
) -> Result<Option<FakeBracket>, ()> {
    let [sl_price, sl_trail, sl_limit] = sl;
    let [tp_price, tp_limit] = tp;
    if sl_price.is_some() && sl_trail.is_some() {
        return Err(());
    }
    let stop_loss = (sl_price.is_some() || sl_trail.is_some()).then_some((sl_price, sl_trail, sl_limit));
    let take_profit = tp_price.map(|price| (price, tp_limit));
    if stop_loss.is_none() && take_profit.is_none() {
        return Ok(None);
    }
    let trigger_method = method.unwrap_or("mark_price").to_string();
    Ok(Some(FakeBracket { stop_loss, take_profit, trigger_method }))
}

fn envelope(status: StatusCode, body: Value) -> Response {
    (status, [("content-type", "application/json")], body.to_string()).into_response()
}

fn ok(result: Value) -> Response {
    envelope(StatusCode::OK, json!({"meta": {"after": null, "before": null}, "result": result, "success": true}))
}

fn error(status: StatusCode, code: &str) -> Response {
    envelope(status, json!({"error": {"code": code}, "success": false}))
}

fn weight(method: &Method, path: &str) -> u32 {
    match (method.as_str(), path) {
        (_, p) if p.starts_with("/v2/orders/batch") => 25,
        ("GET", "/v2/orders/history") | ("GET", "/v2/fills") => 10,
        ("POST" | "PUT" | "DELETE", "/v2/orders") => 5,
        ("GET", "/v2/orders") | ("GET", "/v2/positions/margined") | ("GET", "/v2/wallet/balances") => 3,
        ("GET", p)
            if p.starts_with("/v2/products")
                || p.starts_with("/v2/tickers")
                || p.starts_with("/v2/l2orderbook")
                || p == "/v2/history/candles" =>
        {
            3
        }
        _ => 1,
    }
}

fn query_map(uri: &Uri) -> HashMap<String, String> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|kv| !kv.is_empty())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                out.push(u8::from_str_radix(&text[i + 1..i + 3], 16).unwrap_or(b'?'));
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hmac_hex(secret: &str, message: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(message.as_bytes());
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn rest(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let arrived = std::time::Instant::now();
    shared.requests.fetch_add(1, Ordering::Relaxed);
    let path = uri.path().to_string();
    *shared.calls.lock().unwrap().entry(format!("{method} {path}")).or_insert(0) += 1;
    if shared.faults.unavailable.load(Ordering::Relaxed) {
        return error(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
    }
    // Take one 429 of the burst, if any is left (atomically: two requests
    // racing for the last one must not wrap the counter around).
    if shared.faults.burst_429.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
        return (StatusCode::TOO_MANY_REQUESTS, [("x-rate-limit-reset", "200")], "").into_response();
    }
    if headers.get("user-agent").is_none_or(|v| v.is_empty()) {
        return envelope(StatusCode::FORBIDDEN, json!({"error": "Forbidden", "message": "Request blocked by CDN"}));
    }
    {
        let mut ex = shared.exchange.lock().unwrap();
        let window = Duration::from_millis(shared.config.window_ms);
        if ex.window.0.elapsed() >= window {
            ex.window = (std::time::Instant::now(), 0);
        }
        let w = weight(&method, &path);
        if ex.window.1 + w > shared.config.window_units {
            let reset = (window - ex.window.0.elapsed()).as_millis().to_string();
            return (StatusCode::TOO_MANY_REQUESTS, [("x-rate-limit-reset", reset)], "").into_response();
        }
        ex.window.1 += w;
    }
    let private = ["/v2/orders", "/v2/fills", "/v2/positions", "/v2/wallet"].iter().any(|p| path.starts_with(p));
    if private {
        shared.private_uses.fetch_add(1, Ordering::Relaxed);
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        if header("api-key") != shared.config.key {
            return envelope(StatusCode::UNAUTHORIZED, json!({"error": {"code": "invalid_api_key"}, "success": false}));
        }
        let timestamp = header("timestamp");
        let server_s = now_us(&shared) / 1_000_000;
        match timestamp.parse::<i64>() {
            Ok(ts) if (server_s - ts).abs() <= 5 => {}
            _ => {
                return envelope(
                    StatusCode::UNAUTHORIZED,
                    json!({"error": "SignatureExpired", "message": "your signature has expired"}),
                );
            }
        }
        let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
        let prehash = format!("{}{}{}{}{}", method.as_str(), timestamp, path, query, String::from_utf8_lossy(&body));
        if hmac_hex(&shared.config.secret, &prehash) != header("signature") {
            shared.signature_failures.fetch_add(1, Ordering::Relaxed);
            return envelope(
                StatusCode::UNAUTHORIZED,
                json!({"success": false, "error": {"code": "invalid_signature"}}),
            );
        }
    }
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&body) {
            Ok(v) => v,
            Err(_) => return error(StatusCode::BAD_REQUEST, "bad_schema"),
        }
    };
    let q = query_map(&uri);
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (method.as_str(), segments.as_slice()) {
        ("GET", ["v2", "settings"]) => ok(json!({"server_time": now_us(&shared)})),
        ("GET", ["v2", "products"]) => {
            let ex = shared.exchange.lock().unwrap();
            ok(Value::Array(ex.products.iter().map(product_json).collect()))
        }
        ("GET", ["v2", "products", symbol]) => {
            let ex = shared.exchange.lock().unwrap();
            match ex.products.iter().find(|p| p.symbol == *symbol || p.id.to_string() == *symbol) {
                Some(p) => ok(product_json(p)),
                None => error(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        ("GET", ["v2", "history", "candles"]) => {
            let slow = shared.faults.slow_candles_ms.load(Ordering::Relaxed);
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            let number = |key: &str| q.get(key).and_then(|s| s.parse::<i64>().ok());
            let (Some(start), Some(end), Some(resolution)) = (number("start"), number("end"), q.get("resolution"))
            else {
                return error(StatusCode::BAD_REQUEST, "bad_schema");
            };
            let Some(step) = fake_resolution_seconds(resolution) else {
                return error(StatusCode::BAD_REQUEST, "invalid_resolution");
            };
            let symbol = q.get("symbol").cloned().unwrap_or_default();
            let ex = shared.exchange.lock().unwrap();
            let Some(p) = ex.products.iter().find(|p| p.symbol == symbol) else {
                return error(StatusCode::BAD_REQUEST, "invalid_contract");
            };
            let now_s = now_us(&shared) / 1_000_000;
            let number = |v: f64| Value::Number(serde_json::Number::from_f64(v).unwrap());
            let mut candles: Vec<Value> = fake_history(&shared.config, p, step, start, end, now_s)
                .into_iter()
                .map(|c| {
                    json!({"time": c.time / 1_000, "open": number(c.open), "high": number(c.high),
                    "low": number(c.low), "close": number(c.close), "volume": number(c.volume)})
                })
                .collect();
            // At most 2,000, the most recent, newest first (as some deployments answer).
            let skip = candles.len().saturating_sub(2_000);
            candles.drain(..skip);
            candles.reverse();
            ok(Value::Array(candles))
        }
        ("GET", ["v2", "tickers", symbol]) => {
            let ex = shared.exchange.lock().unwrap();
            let Some(p) = ex.products.iter().find(|p| p.symbol == *symbol) else {
                return error(StatusCode::NOT_FOUND, "not_found");
            };
            let book = &ex.books[&p.id];
            let (bid, ask) = (*book.bids.keys().next_back().unwrap(), *book.asks.keys().next().unwrap());
            ok(json!({"symbol": p.symbol, "product_id": p.id, "mark_price": book.mid.to_string(), "close": book.mid,
                "timestamp": now_us(&shared), "quotes": {"best_bid": fmt_price(bid, p), "best_ask": fmt_price(ask, p), "bid_size": "100", "ask_size": "100"}}))
        }
        ("GET", ["v2", "l2orderbook", symbol]) => {
            let ex = shared.exchange.lock().unwrap();
            let Some(p) = ex.products.iter().find(|p| p.symbol == *symbol) else {
                return error(StatusCode::NOT_FOUND, "not_found");
            };
            let book = &ex.books[&p.id];
            let depth: usize = q.get("depth").and_then(|s| s.parse().ok()).unwrap_or(20);
            let side = |levels: Vec<(&Decimal, &i64)>| {
                levels
                    .into_iter()
                    .take(depth)
                    .map(|(price, size)| json!({"price": fmt_price(*price, p), "size": size}))
                    .collect::<Vec<_>>()
            };
            ok(
                json!({"symbol": p.symbol, "buy": side(book.bids.iter().rev().collect()), "sell": side(book.asks.iter().collect()),
                "last_updated_at": now_us(&shared)}),
            )
        }
        ("PUT", ["v2", "orders"]) => {
            let ts = now_us(&shared);
            let mut ex = shared.exchange.lock().unwrap();
            let id = body.get("id").and_then(Value::as_i64);
            let Some(i) = ex.orders.iter().position(|o| Some(o.id) == id && o.state == "open") else {
                return error(StatusCode::BAD_REQUEST, "open_order_not_found");
            };
            let size = body.get("size").and_then(Value::as_i64).unwrap_or(0);
            let filled = ex.orders[i].size - ex.orders[i].unfilled;
            if size <= filled {
                return error(StatusCode::BAD_REQUEST, "bad_schema");
            }
            ex.orders[i].size = size;
            ex.orders[i].unfilled = size - filled;
            if let Some(price) = body.get("limit_price").and_then(Value::as_str).and_then(|p| p.parse().ok()) {
                ex.orders[i].limit_price = Some(price);
            }
            let order = ex.orders[i].clone();
            drop(ex);
            let _ = shared.events.send(order_event(&order, "update", None, ts));
            ok(order_json(&order))
        }
        ("DELETE", ["v2", "orders", "all"]) => {
            let ts = now_us(&shared);
            let product = body.get("product_id").and_then(Value::as_i64);
            let cancel_limits = flag(body.get("cancel_limit_orders"));
            let mut ex = shared.exchange.lock().unwrap();
            let mut events = Vec::new();
            // As on the real exchange, the cancel_* flags default to false: a bare call cancels nothing.
            let cancel_stops = flag(body.get("cancel_stop_orders"));
            let cancellable =
                |o: &FakeOrder| (o.state == "open" && cancel_limits) || (o.state == "pending" && cancel_stops);
            for order in ex.orders.iter_mut().filter(|o| cancellable(o) && product.is_none_or(|p| p == o.product_id)) {
                order.state = "cancelled".into();
                order.cancellation_reason = Some("cancelled_by_user".into());
                events.push(order_event(order, "delete", None, ts));
            }
            drop(ex);
            for event in events {
                let _ = shared.events.send(event);
            }
            envelope(StatusCode::OK, json!({"result": {}, "success": true}))
        }
        ("POST", ["v2", "orders"]) => {
            shared.timeline.lock().unwrap().1.push(arrived);
            let (response, events, slow) = place(&shared, &body);
            for event in events {
                let _ = shared.events.send(event);
            }
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            response
        }
        ("POST", ["v2", "orders", "bracket"]) => {
            let (response, events, slow) = place_bracket(&shared, &body);
            for event in events {
                let _ = shared.events.send(event);
            }
            if slow > 0 {
                tokio::time::sleep(Duration::from_millis(slow)).await;
            }
            response
        }
        ("DELETE", ["v2", "orders"]) => {
            let ts = now_us(&shared);
            let mut ex = shared.exchange.lock().unwrap();
            let found = ex.orders.iter().position(|o| {
                (o.state == "open" || o.state == "pending")
                    && (body.get("id").and_then(Value::as_i64) == Some(o.id)
                        || (body.get("client_order_id").and_then(Value::as_str).is_some()
                            && body.get("client_order_id").and_then(Value::as_str) == o.client_order_id.as_deref()))
            });
            let Some(i) = found else { return error(StatusCode::BAD_REQUEST, "open_order_not_found") };
            ex.orders[i].state = "cancelled".into();
            ex.orders[i].cancellation_reason = Some("cancelled_by_user".into());
            let order = ex.orders[i].clone();
            drop(ex);
            let _ = shared.events.send(order_event(&order, "delete", None, ts));
            ok(order_json(&order))
        }
        ("GET", ["v2", "orders"]) => {
            let ex = shared.exchange.lock().unwrap();
            let states = q.get("states").map_or("open", String::as_str);
            let listed = |o: &&FakeOrder| states.split(',').any(|state| state == o.state);
            ok(Value::Array(ex.orders.iter().filter(listed).map(order_json).collect()))
        }
        ("GET", ["v2", "orders", "history"]) => {
            let since: i64 = q.get("start_time").and_then(|s| s.parse().ok()).unwrap_or(0);
            let ex = shared.exchange.lock().unwrap();
            ok(Value::Array(
                ex.orders.iter().filter(|o| o.state != "open" && o.created_at >= since).map(order_json).collect(),
            ))
        }
        ("GET", ["v2", "orders", "client_order_id", client_id]) => {
            let ex = shared.exchange.lock().unwrap();
            match ex.orders.iter().find(|o| o.client_order_id.as_deref() == Some(*client_id)) {
                Some(o) => ok(order_json(o)),
                None => error(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        ("GET", ["v2", "orders", id]) => {
            let ex = shared.exchange.lock().unwrap();
            match ex.orders.iter().find(|o| o.id.to_string() == *id) {
                Some(o) => ok(order_json(o)),
                None => error(StatusCode::NOT_FOUND, "not_found"),
            }
        }
        ("GET", ["v2", "fills"]) => {
            let since: i64 = q.get("start_time").and_then(|s| s.parse().ok()).unwrap_or(0);
            let ex = shared.exchange.lock().unwrap();
            let fills = ex.fills.iter().filter(|f| f.created_at >= since).map(|f| {
                let time = chrono::DateTime::from_timestamp_micros(f.created_at).unwrap();
                json!({"id": f.id, "order_id": f.order_id.to_string(), "product_id": f.product_id, "product_symbol": f.symbol,
                    "side": f.side, "size": f.size, "price": f.price.to_string(), "role": f.role,
                    "commission": f.commission.to_string(), "created_at": time.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                    "fill_type": "normal"})
            });
            ok(Value::Array(fills.collect()))
        }
        ("GET", ["v2", "positions", "margined"]) => {
            let ex = shared.exchange.lock().unwrap();
            let positions = ex.positions.iter().filter(|(_, (size, _))| *size != 0).map(|(id, (size, entry))| {
                let symbol = ex.products.iter().find(|p| p.id == *id).unwrap().symbol;
                json!({"product_id": id, "product_symbol": symbol, "size": size, "entry_price": entry.to_string(), "realized_pnl": "0"})
            });
            ok(Value::Array(positions.collect()))
        }
        ("GET", ["v2", "wallet", "balances"]) => {
            let ex = shared.exchange.lock().unwrap();
            ok(
                json!([{"asset_id": 3, "asset_symbol": "USD", "balance": ex.balance.to_string(), "available_balance": ex.balance.to_string()}]),
            )
        }
        _ => error(StatusCode::NOT_FOUND, "not_found"),
    }
}

/// Seconds per candle of a resolution Delta offers (§4.6).
fn fake_resolution_seconds(resolution: &str) -> Option<i64> {
    let minutes = match resolution {
        "1m" => 1,
        "3m" => 3,
        "5m" => 5,
        "15m" => 15,
        "30m" => 30,
        "1h" => 60,
        "2h" => 120,
        "4h" => 240,
        "6h" => 360,
        "1d" => 1_440,
        "1w" => 10_080,
        _ => return None,
    };
    Some(minutes * 60)
}

/// The fake's candle opening at `t` seconds: a deterministic wave around the
/// product's start price.
fn fake_candle(p: &ProductDef, t: i64, broken: bool) -> tradehost::model::Candle {
    let wave = Decimal::from((t / 60) % 40 - 20) * p.tick;
    let open = p.start + wave;
    let close = open + Decimal::from((t / 60) % 3 - 1) * p.tick;
    let (high, low) = (open.max(close) + p.tick, open.min(close) - p.tick);
    let (high, low) = if broken { (low, high) } else { (high, low) };
    let f = |d: Decimal| d.to_string().parse::<f64>().unwrap();
    tradehost::model::Candle {
        symbol: p.symbol.into(),
        time: t * 1_000,
        open: f(open),
        high: f(high),
        low: f(low),
        close: f(close),
        volume: (10 + (t / 60) % 7) as f64,
    }
}

/// The candles the fake serves for `[start, end)` seconds (closed ones, none in the gaps), oldest first.
fn fake_history(
    config: &FakeConfig,
    p: &ProductDef,
    step: i64,
    start: i64,
    end: i64,
    now_s: i64,
) -> Vec<tradehost::model::Candle> {
    let first = (start + step - 1).div_euclid(step) * step;
    (0..)
        .map(|k| first + k * step)
        .take_while(|t| *t < end && t + step <= now_s)
        .filter(|t| !config.candle_gaps.iter().any(|(a, b)| (*a..*b).contains(t)))
        .map(|t| fake_candle(p, t, config.bad_candles.contains(&t)))
        .collect()
}

fn product_json(p: &ProductDef) -> Value {
    json!({"id": p.id, "symbol": p.symbol, "contract_type": "perpetual_futures", "state": "live", "trading_status": "operational",
        "contract_value": p.contract_value.to_string(), "tick_size": p.tick.to_string(), "maker_commission_rate": "0.0002",
        "taker_commission_rate": "0.0005", "position_size_limit": 100000, "settling_asset": {"id": 3, "symbol": "USD"}})
}

fn flag(value: Option<&Value>) -> bool {
    matches!(value, Some(Value::Bool(true))) || matches!(value, Some(Value::String(s)) if s == "true")
}

/// Attaches a bracket to the open position (§4.16): the answer and the stream messages.
fn place_bracket(shared: &Shared, body: &Value) -> (Response, Vec<Event>, u64) {
    let ts = now_us(shared);
    let leg = |key: &str, field: &str| {
        body.get(key).and_then(|leg| leg.get(field)).and_then(Value::as_str).and_then(|p| p.parse::<Decimal>().ok())
    };
    let bracket = bracket_fields(
        [
            leg("stop_loss_order", "stop_price"),
            leg("stop_loss_order", "trail_amount"),
            leg("stop_loss_order", "limit_price"),
        ],
        [leg("take_profit_order", "stop_price"), leg("take_profit_order", "limit_price")],
        body.get("bracket_stop_trigger_method").and_then(Value::as_str),
    );
    let Ok(Some(bracket)) = bracket else { return (error(StatusCode::BAD_REQUEST, "bad_schema"), vec![], 0) };
    let mut ex = shared.exchange.lock().unwrap();
    let Some(product_id) = body.get("product_id").and_then(Value::as_i64).filter(|id| ex.books.contains_key(id)) else {
        return (error(StatusCode::BAD_REQUEST, "invalid_contract"), vec![], 0);
    };
    if ex.positions.get(&product_id).is_none_or(|(size, _)| *size == 0) {
        return (error(StatusCode::BAD_REQUEST, "no_position_for_bracket"), vec![], 0);
    }
    let events = attach_bracket(&mut ex, product_id, &bracket, ts);
    let slow = shared.faults.slow_orders_ms.load(Ordering::Relaxed);
    (envelope(StatusCode::OK, json!({"success": true})), events, slow)
}

/// Places an order: validation, matching, the answer and the stream messages.
fn place(shared: &Shared, body: &Value) -> (Response, Vec<Event>, u64) {
    let ts = now_us(shared);
    let slow = shared.faults.slow_orders_ms.load(Ordering::Relaxed);
    let mut ex = shared.exchange.lock().unwrap();
    let client_order_id = body.get("client_order_id").and_then(Value::as_str).map(str::to_string);
    if let Some(id) = &client_order_id {
        *ex.posts_by_client_id.entry(id.clone()).or_default() += 1;
        if id.len() > 32 {
            return (error(StatusCode::BAD_REQUEST, "bad_schema"), vec![], 0);
        }
        if ex.orders.iter().any(|o| o.client_order_id.as_deref() == Some(id)) {
            return (error(StatusCode::BAD_REQUEST, "duplicate_client_order_id"), vec![], 0);
        }
    }
    let product = ex.products.iter().find(|p| {
        body.get("product_id").and_then(Value::as_i64) == Some(p.id)
            || body.get("product_symbol").and_then(Value::as_str) == Some(p.symbol)
    });
    let Some(product) = product.cloned() else {
        return (error(StatusCode::BAD_REQUEST, "invalid_contract"), vec![], 0);
    };
    let size = body.get("size").and_then(Value::as_i64).unwrap_or(0);
    let side = body.get("side").and_then(Value::as_str).unwrap_or_default().to_string();
    let order_type = body.get("order_type").and_then(Value::as_str).unwrap_or("market_order").to_string();
    let limit_price = body.get("limit_price").and_then(Value::as_str).and_then(|p| p.parse::<Decimal>().ok());
    let text_decimal = |key: &str| body.get(key).and_then(Value::as_str).and_then(|p| p.parse::<Decimal>().ok());
    let stop_order_type = body.get("stop_order_type").and_then(Value::as_str).map(str::to_string);
    let (mut stop_price, trail_amount) = (text_decimal("stop_price"), text_decimal("trail_amount"));
    let stop_trigger_method =
        body.get("stop_trigger_method").and_then(Value::as_str).unwrap_or("mark_price").to_string();
    if stop_order_type.as_deref().is_some_and(|t| !matches!(t, "stop_loss_order" | "take_profit_order"))
        || (stop_order_type.is_some() && stop_price.is_none() && trail_amount.is_none())
        || (stop_price.is_some() && trail_amount.is_some())
    {
        return (error(StatusCode::BAD_REQUEST, "invalid_stop_order"), vec![], 0);
    }
    let bracket = match bracket_fields(
        [
            text_decimal("bracket_stop_loss_price"),
            text_decimal("bracket_trail_amount"),
            text_decimal("bracket_stop_loss_limit_price"),
        ],
        [text_decimal("bracket_take_profit_price"), text_decimal("bracket_take_profit_limit_price")],
        body.get("bracket_stop_trigger_method").and_then(Value::as_str),
    ) {
        Ok(bracket) => bracket,
        Err(()) => return (error(StatusCode::BAD_REQUEST, "bad_schema"), vec![], 0),
    };
    if size <= 0
        || !(side == "buy" || side == "sell")
        || (order_type == "limit_order" && limit_price.is_none_or(|p| p <= Decimal::ZERO))
    {
        return (error(StatusCode::BAD_REQUEST, "bad_schema"), vec![], 0);
    }
    let book = &ex.books[&product.id];
    let (best_bid, best_ask) = (*book.bids.keys().next_back().unwrap(), *book.asks.keys().next().unwrap());
    let post_only = flag(body.get("post_only"));
    let reduce_only = flag(body.get("reduce_only"));
    let tif = body.get("time_in_force").and_then(Value::as_str).unwrap_or("gtc").to_string();
    let touch = if side == "buy" { best_ask } else { best_bid };
    let is_stop = stop_order_type.is_some();
    let marketable = !is_stop
        && (order_type == "market_order"
            || limit_price.is_some_and(|l| if side == "buy" { l >= best_ask } else { l <= best_bid }));
    if let Some(trail) = trail_amount {
        // A trailing stop starts its trigger the distance away from the watched price.
        let watched = trigger_price(book.mid, &product, &stop_trigger_method);
        stop_price = Some(if side == "sell" { watched - trail.abs() } else { watched + trail.abs() });
    }
    if post_only && marketable {
        return (error(StatusCode::BAD_REQUEST, "immediate_execution_post_only"), vec![], 0);
    }
    let (position, _) = ex.positions.get(&product.id).copied().unwrap_or((0, Decimal::ZERO));
    let sign = if side == "buy" { 1 } else { -1 };
    if reduce_only && (position == 0 || position.signum() == sign || size > position.abs()) {
        return (error(StatusCode::BAD_REQUEST, "reduce_only_order_cannot_increase_position"), vec![], 0);
    }
    let margin = touch * Decimal::from(size) * product.contract_value / Decimal::from(10);
    if !reduce_only && margin > ex.balance {
        return (
            envelope(
                StatusCode::BAD_REQUEST,
                json!({"error": {"code": "insufficient_margin", "context": {"available_balance": ex.balance.to_string()}}, "success": false}),
            ),
            vec![],
            0,
        );
    }
    ex.next_id += 1;
    let order = FakeOrder {
        id: ex.next_id,
        client_order_id,
        product_id: product.id,
        symbol: product.symbol.into(),
        side,
        size,
        unfilled: size,
        limit_price,
        order_type,
        time_in_force: tif.clone(),
        post_only,
        reduce_only,
        state: "open".into(),
        avg_fill_price: None,
        cancellation_reason: None,
        created_at: ts,
        stop_order_type,
        stop_price,
        trail_amount,
        stop_trigger_method,
        bracket_order: false,
        bracket,
    };
    let mut order = order;
    if is_stop {
        order.state = "pending".into();
    }
    ex.orders.push(order);
    let i = ex.orders.len() - 1;
    let mut events = vec![order_event(&ex.orders[i], "create", None, ts)];
    if marketable {
        events.extend(execute(&mut ex, i, size, touch, "taker", ts));
    } else if tif == "ioc" && !is_stop {
        ex.orders[i].state = "cancelled".into();
        ex.orders[i].cancellation_reason = Some("ioc_not_filled".into());
        events.push(order_event(&ex.orders[i], "delete", None, ts));
    }
    let response = ok(order_json(&ex.orders[i]));
    (response, events, slow)
}

async fn ws_private(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    ws.on_upgrade(move |socket| session(socket, shared, false))
}

async fn ws_public(ws: WebSocketUpgrade, State(shared): State<Arc<Shared>>) -> Response {
    ws.on_upgrade(move |socket| session(socket, shared, true))
}

const PRIVATE: [&str; 4] = ["orders", "positions", "v2/user_trades", "margins"];

/// One WebSocket connection.
async fn session(mut socket: WebSocket, shared: Arc<Shared>, public_endpoint: bool) {
    shared.connections.fetch_add(1, Ordering::Relaxed);
    if !public_endpoint {
        shared.private_uses.fetch_add(1, Ordering::Relaxed);
    }
    let mut events = shared.events.subscribe();
    let mut dropper = shared.drop_sockets.subscribe();
    let mut authed = false;
    let mut heartbeat = false;
    let mut subs: BTreeMap<String, HashSet<String>> = BTreeMap::new();
    let mut snapshot_seq: HashMap<String, i64> = HashMap::new();
    let mut beat = tokio::time::interval(Duration::from_millis(shared.config.heartbeat_ms));
    let (book_channel, trades_channel) =
        if public_endpoint { ("ob_updates", "trades") } else { ("l2_updates", "all_trades") };
    loop {
        let outgoing: Vec<String> = tokio::select! {
            _ = dropper.recv() => return,
            _ = beat.tick() => {
                if heartbeat && !shared.faults.stop_heartbeats.load(Ordering::Relaxed) { vec![json!({"type": "heartbeat"}).to_string()] } else { vec![] }
            }
            event = events.recv() => match event {
                Err(broadcast::error::RecvError::Lagged(_)) => return,
                Err(_) => return,
                Ok(Event::Raw(text)) => if public_endpoint { vec![text] } else { vec![] },
                Ok(Event::Public { symbol, seq, new, legacy, channel }) => {
                    let name = match channel {
                        "book" => book_channel,
                        "trades" => trades_channel,
                        _ if public_endpoint => "ticker",
                        _ => "v2/ticker",
                    };
                    let subscribed = subs.get(name).is_some_and(|s| s.contains(&symbol));
                    let fresh = channel != "book" || snapshot_seq.get(&symbol).is_some_and(|s| seq > *s);
                    if subscribed && fresh { vec![if public_endpoint { new } else { legacy }] } else { vec![] }
                }
                Ok(Event::Private { channel, text }) => {
                    if authed && !public_endpoint && subs.contains_key(channel) { vec![text] } else { vec![] }
                }
            },
            frame = socket.recv() => {
                let Some(Ok(frame)) = frame else { return };
                let Message::Text(text) = frame else { continue };
                let Ok(message) = serde_json::from_str::<Value>(&text) else { continue };
                handle_client(&shared, &message, public_endpoint, &mut authed, &mut heartbeat, &mut subs, &mut snapshot_seq)
            }
        };
        for text in outgoing {
            if socket.send(Message::Text(text.into())).await.is_err() {
                return;
            }
        }
    }
}

fn handle_client(
    shared: &Shared,
    message: &Value,
    public_endpoint: bool,
    authed: &mut bool,
    heartbeat: &mut bool,
    subs: &mut BTreeMap<String, HashSet<String>>,
    snapshot_seq: &mut HashMap<String, i64>,
) -> Vec<String> {
    match message.get("type").and_then(Value::as_str).unwrap_or_default() {
        "ping" => vec![json!({"type": "pong"}).to_string()],
        "enable_heartbeat" => {
            *heartbeat = true;
            vec![]
        }
        "key-auth" => {
            let payload = &message["payload"];
            let field = |k: &str| match payload.get(k) {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let reply = |success: bool, code: u16, status: &str, text: Option<&str>| {
                let mut r = json!({"type": "key-auth", "success": success, "status_code": code, "status": status});
                if let Some(text) = text {
                    r["message"] = json!(text);
                }
                vec![r.to_string()]
            };
            let (Some(key), Some(signature), Some(timestamp)) =
                (field("api-key"), field("signature"), field("timestamp"))
            else {
                return reply(false, 400, "incomplete_payload", Some("Incomplete payload"));
            };
            if key != shared.config.key {
                return reply(false, 404, "api_key_not_found", Some("ApiKey not found"));
            }
            let server_s = now_us(shared) / 1_000_000;
            if timestamp.parse::<i64>().map_or(true, |ts| (server_s - ts).abs() > 5) {
                return reply(false, 408, "request_expired", Some("Timestamp header outside of allowed time window"));
            }
            if hmac_hex(&shared.config.secret, &format!("GET{timestamp}/live")) != signature {
                shared.signature_failures.fetch_add(1, Ordering::Relaxed);
                return reply(false, 401, "invalid_signature", Some("Invalid Signature"));
            }
            *authed = true;
            reply(true, 200, "authenticated", None)
        }
        kind @ ("subscribe" | "unsubscribe") => {
            let mut out = Vec::new();
            let mut errors = Vec::new();
            let channels = message["payload"]["channels"].as_array().cloned().unwrap_or_default();
            for channel in channels {
                let name = channel["name"].as_str().unwrap_or_default().to_string();
                let symbols: Vec<String> = channel["symbols"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
                    .unwrap_or_default();
                if kind == "unsubscribe" {
                    match subs.get_mut(&name) {
                        Some(set) if !symbols.is_empty() => symbols.iter().for_each(|s| {
                            set.remove(s);
                        }),
                        _ => drop(subs.remove(&name)),
                    }
                    for s in &symbols {
                        snapshot_seq.remove(s);
                    }
                    continue;
                }
                if PRIVATE.contains(&name.as_str()) && (!*authed || public_endpoint) {
                    errors.push(
                        json!({"name": name, "error": format!("subscription forbidden on {name}. Unauthorized user")}),
                    );
                    continue;
                }
                subs.entry(name.clone()).or_default().extend(symbols.iter().cloned());
                if name == "ob_updates" || name == "l2_updates" {
                    let ex = shared.exchange.lock().unwrap();
                    for symbol in &symbols {
                        let Some(p) = ex.products.iter().find(|p| p.symbol == *symbol) else { continue };
                        let book = &ex.books[&p.id];
                        let (new, legacy) = book_messages(
                            "snapshot",
                            p.symbol,
                            book.seq,
                            checksum(book, p),
                            &levels(&book.asks, p, true),
                            &levels(&book.bids, p, false),
                            now_us(shared),
                        );
                        snapshot_seq.insert(symbol.clone(), book.seq);
                        shared.snapshots.fetch_add(1, Ordering::Relaxed);
                        out.push(if public_endpoint { new } else { legacy });
                    }
                }
            }
            let mut channels: Vec<Value> = subs
                .iter()
                .map(|(name, symbols)| json!({"name": name, "symbols": symbols.iter().cloned().collect::<Vec<_>>()}))
                .collect();
            channels.extend(errors);
            let mut replies = vec![json!({"type": "subscriptions", "channels": channels}).to_string()];
            replies.extend(out);
            replies
        }
        _ => vec![],
    }
}

/// The store and the fake agree: every fill once, no order posted twice,
/// the same net position, the same realised PnL after fees.
/// How an open order is compared between host and exchange: its client id,
/// or for a bracket leg (which has none on the exchange) `bracket` and its kind.
pub fn open_label(request: &tradehost::model::OrderRequest) -> String {
    match &request.stop {
        Some(stop) if request.parent.is_some() || request.oco.is_some() => match stop.kind {
            tradehost::model::StopKind::StopLoss => "bracket stop_loss_order".into(),
            tradehost::model::StopKind::TakeProfit => "bracket take_profit_order".into(),
        },
        _ => request.client_id.clone(),
    }
}

pub fn assert_consistent(fake: &FakeDelta, data: &Path) -> (usize, usize) {
    assert!(fake.duplicate_posts().is_empty(), "orders posted twice: {:?}", fake.duplicate_posts());
    assert_eq!(fake.signature_failures(), 0, "every signature verified");
    let store = Store::open(data).unwrap();
    let fills = store.reader().fills().unwrap();
    let recovered = store.recover().unwrap();
    let mut ids: Vec<String> =
        fills.iter().map(|f| f.exchange_id.clone().expect("live fills carry the exchange id")).collect();
    ids.sort();
    let before = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), before, "a fill was recorded twice");
    let mut fake_ids: Vec<String> = fake.fills().into_iter().map(|f| f.id).collect();
    fake_ids.sort();
    if ids != fake_ids {
        for fill in fake.fills().iter().filter(|f| !ids.contains(&f.id)) {
            let stored = fill.client_order_id.as_ref().and_then(|c| recovered.orders.get(c));
            eprintln!("missing fill {fill:?}\n  stored order: {stored:?}");
        }
    }
    assert_eq!(ids, fake_ids, "store fills == fake fills");
    let (contracts, _) = fake.position("BTCUSD");
    let host_size: Decimal = recovered.positions.values().filter_map(|p| p.get("BTCUSD")).map(|p| p.size).sum();
    assert_eq!(host_size, Decimal::from(contracts) * Decimal::new(1, 3), "net position");
    let realized: Decimal = recovered.positions.values().flat_map(|p| p.values()).map(|p| p.realized_pnl).sum();
    let fees: Decimal = fills.iter().map(|f| f.fee).sum();
    // Average entry prices are divisions: the host (base units) and the exchange
    // (contracts) round them at the 28th digit differently, so compare at 1e-12.
    let (host_pnl, fake_pnl) = (realized - fees, fake.balance() - FakeConfig::default().balance);
    assert!(
        (host_pnl - fake_pnl).abs() < Decimal::new(1, 12),
        "realised PnL after fees: host {host_pnl}, exchange {fake_pnl}"
    );
    let open_on_exchange = fake.open_labels();
    let mut open_in_store: Vec<String> = recovered
        .orders
        .values()
        .filter(|o| o.status.is_open() || o.status == tradehost::model::OrderStatus::Pending)
        .map(|o| open_label(&o.request))
        .collect();
    open_in_store.sort();
    assert_eq!(open_in_store, open_on_exchange, "open orders: store == exchange");
    let fake_clients: Vec<String> = fake.orders().into_iter().filter_map(|o| o.client_order_id).collect();
    for client_id in &fake_clients {
        assert!(recovered.orders.contains_key(client_id), "order {client_id} on the exchange is in the store");
    }
    (fills.len(), fake_clients.len())
}
