//! The Delta venue: products and unit conversion, start-up reconciliation,
//! the order executor (REST, with look-up-before-anything-else after an
//! uncertain send), the private stream (orders, fills, balances, with a
//! REST reconciliation after every (re)connect) and the public market stream
//! (order books with sequence and checksum checks, trades → ticks, per-symbol
//! freshness feeding health and the stale-symbol gate).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::book::OrderBook;
use super::rest::{Credentials, NewOrder, RestClient, RestError};
use super::stream::{self, StreamCommand, StreamEvent, StreamSpec};
use super::wire::{Product, RestOrder, WsMessage};
use crate::bounded::BoundedMap;
use crate::config::DeltaConfig;
use crate::exchange::MarketEvent;
use crate::exchange::{RemoteOrder, RemoteState, VenueCommand, VenueFill, VenueUpdate};
use crate::health::{ComponentState, Health, Metrics};
use crate::model::{Candle, Fill, Liquidity, Order, OrderKind, OrderRequest, OrderStatus, Side, Tick, TimeInForce};

/// Health component of the public market stream.
pub const MARKET_COMPONENT: &str = "exchange.market";
/// Health component of the REST API (down during outages and maintenance).
pub const REST_COMPONENT: &str = "exchange.rest";
/// Health component of the private order stream.
pub const ORDERS_COMPONENT: &str = "exchange.orders";
/// Longest `client_order_id` Delta accepts.
pub const MAX_CLIENT_ID: usize = 32;

/// Why the connector could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Key or secret missing.
    #[error(
        "`exchange.delta.api_key` / `exchange.delta.api_secret` are not set (or TRADEHOST_DELTA_API_KEY / TRADEHOST_DELTA_API_SECRET)"
    )]
    NoCredentials,
    /// A configured symbol is not a live product.
    #[error("`exchange.delta.symbols`: {0} is not a product on this network")]
    UnknownSymbol(String),
    /// A REST call failed.
    #[error(transparent)]
    Rest(#[from] RestError),
}

/// The traded products, by symbol and id.
#[derive(Debug, Default)]
pub struct Products {
    by_symbol: HashMap<String, Product>,
    by_id: HashMap<i64, String>,
}

impl Products {
    /// Indexes products.
    pub fn new(products: impl IntoIterator<Item = Product>) -> Self {
        let mut out = Products::default();
        for product in products {
            out.by_id.insert(product.id, product.symbol.clone());
            out.by_symbol.insert(product.symbol.clone(), product);
        }
        out
    }

    /// How the products' prices (tick) and sizes (contract value, in base units) are shown.
    pub fn shown(&self) -> crate::model::Shown {
        let products: Vec<crate::model::Product> = self
            .by_symbol
            .values()
            .map(|p| crate::model::Product {
                symbol: p.symbol.clone(),
                tick_size: p.tick_size,
                lot_size: p.contract_value,
            })
            .collect();
        crate::model::Shown::new(&products)
    }

    /// A product by symbol.
    pub fn get(&self, symbol: &str) -> Option<&Product> {
        self.by_symbol.get(symbol)
    }

    /// The traded product a message names, by symbol (either field) or else by id.
    pub fn resolve(&self, symbols: [Option<&str>; 2], id: Option<i64>) -> Option<&Product> {
        symbols
            .into_iter()
            .flatten()
            .find_map(|s| self.by_symbol.get(s))
            .or_else(|| self.by_id.get(&id?).and_then(|s| self.by_symbol.get(s)))
    }

    /// Product ids of every traded product.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Maps a script order to a Delta order: whole contracts, the limit price
/// on the tick grid (never worse than asked), the flags, the client id.
pub fn new_order(products: &Products, request: &OrderRequest) -> Result<NewOrder, String> {
    let product = products
        .get(&request.symbol)
        .ok_or_else(|| format!("{} is not one of exchange.delta.symbols", request.symbol))?;
    if request.client_id.len() > MAX_CLIENT_ID {
        return Err(format!("client order id {} is longer than {MAX_CLIENT_ID} characters", request.client_id));
    }
    let contracts = request.size / product.contract_value;
    if contracts.fract() != Decimal::ZERO || contracts < Decimal::ONE {
        return Err(format!(
            "size {} {} is not a whole number of contracts (one contract is {})",
            request.size, request.symbol, product.contract_value
        ));
    }
    let size = i64::try_from(contracts.trunc().mantissa() / 10i128.pow(contracts.trunc().scale()))
        .map_err(|_| format!("size {} is too large", request.size))?;
    let limit_price = match (request.kind, request.price) {
        (OrderKind::Limit, Some(price)) => {
            let rounding = match request.side {
                Side::Buy => rust_decimal::RoundingStrategy::ToNegativeInfinity,
                Side::Sell => rust_decimal::RoundingStrategy::ToPositiveInfinity,
            };
            let ticks = (price / product.tick_size).round_dp_with_strategy(0, rounding);
            let price = (ticks * product.tick_size).normalize();
            if price <= Decimal::ZERO {
                return Err(format!("limit price {price} must be greater than 0"));
            }
            Some(price.to_string())
        }
        (OrderKind::Limit, None) => return Err("a limit order needs a price".into()),
        (OrderKind::Market, _) => None,
    };
    Ok(NewOrder {
        product_id: product.id,
        size,
        side: request.side.as_str(),
        limit_price,
        time_in_force: match request.time_in_force {
            TimeInForce::Gtc => "gtc",
            TimeInForce::Ioc => "ioc",
        },
        post_only: request.post_only,
        reduce_only: request.reduce_only,
        client_order_id: request.client_id.clone(),
    })
}

/// The host's view of a Delta order state.
pub fn remote_of(order: &RestOrder) -> RemoteOrder {
    let state = match order.state.as_str() {
        "closed" => RemoteState::Closed,
        "cancelled" => RemoteState::Cancelled,
        _ => RemoteState::Open,
    };
    RemoteOrder { state, reason: order.cancellation_reason.clone() }
}

/// What start-up reconciliation found.
pub struct Startup {
    /// Remote state of the stored open and pending orders.
    pub known_at_start: HashMap<String, RemoteOrder>,
    /// Order states, fills and the balance to apply before strategies resume.
    pub updates: Vec<VenueUpdate>,
    /// The exchange's net position per traded symbol, in base units.
    pub positions: BTreeMap<String, Decimal>,
    /// Wallet balance in the settlement currency.
    pub balance: Decimal,
}

/// The connector.
pub struct DeltaConnector {
    /// REST client (signed, budgeted, clock-corrected).
    pub rest: Arc<RestClient>,
    /// Traded products.
    pub products: Products,
    /// Settlement currency.
    pub currency: String,
    config: DeltaConfig,
    credentials: Credentials,
    /// Exchange order id → client order id.
    order_ids: Mutex<BoundedMap<String, String>>,
    /// Newest fill time seen, µs (reconciliation starts a minute before it).
    last_fill_us: AtomicI64,
}

impl DeltaConnector {
    /// Connects: clock offset, products of the configured symbols, the
    /// settlement currency. Loudly announces production networks.
    pub async fn connect(config: &DeltaConfig) -> Result<DeltaConnector, ConnectError> {
        let (Some(key), Some(secret)) = (&config.api_key, &config.api_secret) else {
            return Err(ConnectError::NoCredentials);
        };
        let credentials = Credentials { key: key.clone(), secret: secret.clone() };
        let (rest_url, ws_url, public_url) = config.urls();
        if config.network.is_production() && config.rest_url.is_none() {
            tracing::warn!("################################################################");
            tracing::warn!("LIVE TRADING on Delta Exchange {:?} ({rest_url}): real money", config.network);
            tracing::warn!("################################################################");
        }
        tracing::info!(rest = %rest_url, ws = %ws_url, public = %public_url, "delta: connecting");
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let rest = Arc::new(RestClient::new(&rest_url, Some(credentials.clone()), timeout)?);
        let offset = rest.sync_clock().await?;
        tracing::info!(offset_ms = offset, "delta: server clock offset measured");
        let mut products = Vec::new();
        for symbol in &config.symbols {
            match rest.product(symbol).await {
                Ok(product) => products.push(product),
                Err(RestError::Rejected { status: 404, .. }) => {
                    return Err(ConnectError::UnknownSymbol(symbol.clone()));
                }
                Err(error) => return Err(error.into()),
            }
        }
        let currency = products
            .iter()
            .find_map(|p| p.settling_asset.as_ref().map(|a| a.symbol.clone()))
            .unwrap_or_else(|| "USD".into());
        Ok(DeltaConnector {
            rest,
            products: Products::new(products),
            currency,
            config: config.clone(),
            credentials,
            order_ids: Mutex::new(BoundedMap::new(100_000)),
            last_fill_us: AtomicI64::new(0),
        })
    }

    /// Server time, ms (local clock corrected by the measured offset).
    fn server_now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis() + self.rest.clock_offset_ms()
    }

    /// The last `bars` closed one-minute candles of every symbol, oldest first.
    pub async fn history(&self, bars: usize) -> Result<Vec<Candle>, RestError> {
        let end = self.server_now_ms() / 60_000 * 60;
        let mut out = Vec::new();
        for symbol in &self.config.symbols {
            out.extend(self.closed_minutes(symbol, end - bars as i64 * 60, end).await?);
        }
        Ok(out)
    }

    /// Closed one-minute candles of a symbol in `[start, end)` seconds, oldest first.
    pub async fn closed_minutes(&self, symbol: &str, start: i64, end: i64) -> Result<Vec<Candle>, RestError> {
        let candles = self.rest.candles(symbol, "1m", 60, start, end).await?;
        Ok(candles
            .into_iter()
            .filter_map(|c| {
                Some(Candle {
                    symbol: symbol.to_string(),
                    time: c.time * 1_000,
                    open: c.open?,
                    high: c.high?,
                    low: c.low?,
                    close: c.close?,
                    volume: c.volume.unwrap_or(0.0),
                })
            })
            .collect())
    }

    /// Start-up reconciliation: the exchange's word on every stored open or
    /// pending order, then orders, fills and the balance since the last fill
    /// the store knows (or the oldest unresolved order).
    pub async fn startup(
        &self,
        stored_orders: impl IntoIterator<Item = &Order>,
        stored_fills: &[Fill],
    ) -> Result<Startup, RestError> {
        let mut known_at_start = HashMap::new();
        let mut since_ms = chrono::Utc::now().timestamp_millis() - 3_600_000;
        for order in stored_orders {
            let client_id = &order.request.client_id;
            if !(order.status.is_open() || order.status == OrderStatus::Pending) {
                continue;
            }
            since_ms = since_ms.min(order.updated);
            if let Some(remote) = self.rest.order_by_client_id(client_id).await? {
                self.remember_order(&remote);
                known_at_start.insert(client_id.clone(), remote_of(&remote));
            }
        }
        if let Some(last) = stored_fills.iter().map(|f| f.time).max() {
            since_ms = since_ms.min(last);
        }
        self.last_fill_us.store(since_ms * 1_000, Ordering::Relaxed);
        let updates = self.reconcile().await?;
        let balance = updates
            .iter()
            .rev()
            .find_map(|u| if let VenueUpdate::Balance(b) = u { Some(*b) } else { None })
            .unwrap_or_default();
        let mut positions = BTreeMap::new();
        for position in self.rest.positions().await? {
            let symbols = [position.product_symbol.as_deref(), position.symbol.as_deref()];
            if let Some(product) = self.products.resolve(symbols, position.product_id) {
                positions.insert(product.symbol.clone(), position.size.unwrap_or_default() * product.contract_value);
            }
        }
        Ok(Startup { known_at_start, updates, positions, balance })
    }

    fn remember_order(&self, order: &RestOrder) {
        if let Some(client_id) = &order.client_order_id {
            self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(order.id.clone(), client_id.clone());
        }
    }

    /// Orders, fills and the balance from REST since a minute before the
    /// newest fill seen: what a stream gap may have hidden.
    pub async fn reconcile(&self) -> Result<Vec<VenueUpdate>, RestError> {
        let since_us = self.last_fill_us.load(Ordering::Relaxed) - 60_000_000;
        let ids = self.products.ids();
        let mut updates = Vec::new();
        let mut orders = self.rest.order_history(&ids, since_us).await?;
        orders.extend(self.rest.open_orders(&ids).await?);
        for order in &orders {
            self.remember_order(order);
            if let Some(client_id) = &order.client_order_id {
                updates.push(VenueUpdate::Order { client_id: client_id.clone(), remote: remote_of(order) });
            }
        }
        let mut fills = self.rest.fills(&ids, since_us).await?;
        fills.sort_by_key(|f| f.created_at.unwrap_or_default());
        for fill in fills {
            let Some(symbol) = self
                .products
                .resolve([fill.product_symbol.as_deref(), None], fill.product_id)
                .map(|p| p.symbol.clone())
            else {
                continue;
            };
            let client_id = match fill.client_order_id.clone() {
                Some(id) => Some(id),
                None => self.client_id_of(&fill.order_id).await,
            };
            let Some(client_id) = client_id else {
                updates.push(VenueUpdate::Difference(format!(
                    "fill {} of order {} on {symbol} was not placed by this host",
                    fill.id, fill.order_id
                )));
                continue;
            };
            if let Some(update) = self.venue_fill(
                &symbol,
                fill.id,
                client_id,
                fill.size,
                fill.price,
                fill.role.as_deref(),
                fill.commission,
                fill.created_at,
            ) {
                updates.push(update);
            }
        }
        for balance in self.rest.wallet_balances().await? {
            if balance.asset_symbol == self.currency {
                updates.push(VenueUpdate::Balance(balance.balance));
            }
        }
        Ok(updates)
    }

    /// The client id of an exchange order (asks the exchange when unknown).
    async fn client_id_of(&self, order_id: &str) -> Option<String> {
        if let Some(id) = self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).get(order_id) {
            return Some(id.clone());
        }
        let order = self.rest.order(order_id).await.ok()?;
        self.remember_order(&order);
        order.client_order_id
    }

    #[allow(clippy::too_many_arguments)]
    fn venue_fill(
        &self,
        symbol: &str,
        exchange_id: String,
        client_id: String,
        contracts: Decimal,
        price: Decimal,
        role: Option<&str>,
        commission: Option<Decimal>,
        time_us: Option<i64>,
    ) -> Option<VenueUpdate> {
        let product = self.products.get(symbol)?;
        let size = contracts * product.contract_value;
        let liquidity = if role == Some("maker") { Liquidity::Maker } else { Liquidity::Taker };
        let rate = liquidity.pick(product.maker_commission_rate, product.taker_commission_rate).unwrap_or_default();
        let fee = commission.unwrap_or_else(|| (price * size * rate).round_dp(8));
        let time_us = time_us.unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
        self.last_fill_us.fetch_max(time_us, Ordering::Relaxed);
        Some(VenueUpdate::Fill(VenueFill {
            exchange_id,
            client_id,
            size,
            price,
            fee,
            liquidity,
            time: time_us / 1_000,
        }))
    }

    /// Executes order commands concurrently until `cancel`; then waits a
    /// little for the ones in flight.
    pub async fn run_orders(
        self: Arc<Self>,
        mut commands: mpsc::UnboundedReceiver<VenueCommand>,
        updates: mpsc::UnboundedSender<VenueUpdate>,
        cancel: CancellationToken,
    ) {
        let mut in_flight = JoinSet::new();
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                Some(_) = in_flight.join_next(), if !in_flight.is_empty() => {}
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let connector = self.clone();
                    let updates = updates.clone();
                    in_flight.spawn(async move {
                        let results = match command {
                            VenueCommand::Place(request) => connector.place(request).await,
                            VenueCommand::Cancel(order) => connector.cancel(order).await,
                        };
                        for update in results {
                            let _ = updates.send(update);
                        }
                    });
                }
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), async { while in_flight.join_next().await.is_some() {} })
            .await;
    }

    async fn place(&self, request: OrderRequest) -> Vec<VenueUpdate> {
        let client_id = request.client_id.clone();
        let refuse = |reason: String| {
            vec![VenueUpdate::Order {
                client_id: client_id.clone(),
                remote: RemoteOrder { state: RemoteState::Rejected, reason: Some(reason) },
            }]
        };
        let order = match new_order(&self.products, &request) {
            Ok(order) => order,
            Err(reason) => return refuse(reason),
        };
        match self.rest.place_order(&order).await {
            Ok(placed) => {
                self.remember_order(&placed);
                vec![VenueUpdate::Order { client_id, remote: remote_of(&placed) }]
            }
            Err(
                error @ (RestError::Connectivity { .. } | RestError::Unavailable { .. } | RestError::Decode { .. }),
            ) => self.resolve_uncertain(&client_id, &error).await,
            Err(error) => refuse(format!("exchange: {error}")),
        }
    }

    /// After a send whose outcome is unknown: look the order up by client id
    /// (never send it again). Two clear "no such order" answers mean it was not placed.
    async fn resolve_uncertain(&self, client_id: &str, error: &RestError) -> Vec<VenueUpdate> {
        tracing::warn!(order = client_id, "delta: {error}; looking the order up by client order id");
        let mut misses = 0;
        for attempt in 1..=8u32 {
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(4)))).await;
            match self.rest.order_by_client_id(client_id).await {
                Ok(Some(order)) => {
                    self.remember_order(&order);
                    return vec![VenueUpdate::Order { client_id: client_id.into(), remote: remote_of(&order) }];
                }
                Ok(None) => {
                    misses += 1;
                    if misses >= 2 {
                        return vec![VenueUpdate::Order {
                            client_id: client_id.into(),
                            remote: RemoteOrder {
                                state: RemoteState::Rejected,
                                reason: Some(format!("not placed: {error}, and the exchange has no such order")),
                            },
                        }];
                    }
                }
                Err(lookup) => tracing::warn!(order = client_id, "delta: look-up failed: {lookup}"),
            }
        }
        vec![VenueUpdate::Difference(format!(
            "order {client_id}: outcome unknown after {error}; it stays pending until a reconciliation finds it"
        ))]
    }

    async fn cancel(&self, order: Order) -> Vec<VenueUpdate> {
        let client_id = order.request.client_id.clone();
        let Some(product) = self.products.get(&order.request.symbol) else { return Vec::new() };
        match self.rest.cancel_by_client_id(&client_id, product.id).await {
            Ok(cancelled) => vec![VenueUpdate::Order { client_id, remote: remote_of(&cancelled) }],
            Err(error) => match self.rest.order_by_client_id(&client_id).await {
                // Already filled or cancelled: report what it is.
                Ok(Some(current)) => vec![VenueUpdate::Order { client_id, remote: remote_of(&current) }],
                _ => vec![VenueUpdate::Difference(format!("cancel of {client_id} failed: {error}"))],
            },
        }
    }

    fn stream_spec(&self, name: &'static str, url: String, channels: Vec<(String, Vec<String>)>) -> StreamSpec {
        StreamSpec {
            name,
            url,
            channels,
            auth: None,
            heartbeat_timeout: Duration::from_millis(self.config.heartbeat_timeout_ms),
            ping_interval: Duration::from_millis(self.config.ping_interval_ms),
            backoff_initial: Duration::from_millis(self.config.reconnect_initial_ms),
            backoff_max: Duration::from_millis(self.config.reconnect_max_ms),
        }
    }

    /// The private stream: order states, fills and balances as they happen,
    /// and a REST reconciliation after every (re)connect.
    pub async fn run_private(
        self: Arc<Self>,
        updates: mpsc::UnboundedSender<VenueUpdate>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) {
        let symbols = self.config.symbols.clone();
        let (_, ws_url, _) = self.config.urls();
        let mut spec = self.stream_spec(
            "private",
            ws_url,
            vec![
                ("orders".into(), symbols.clone()),
                ("positions".into(), symbols.clone()),
                ("v2/user_trades".into(), symbols),
                ("margins".into(), Vec::new()),
            ],
        );
        spec.auth = Some((self.credentials.clone(), self.rest.clone()));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (_commands_tx, commands) = mpsc::unbounded_channel();
        let stream = tokio::spawn(stream::run(spec, events_tx, commands, cancel.clone()));
        while let Some(event) = tokio::select! { _ = cancel.cancelled() => None, e = events.recv() => e } {
            match event {
                StreamEvent::Up => {
                    match self.reconcile().await {
                        Ok(found) => found.into_iter().for_each(|u| drop(updates.send(u))),
                        Err(error) => tracing::warn!("delta: reconciliation after connect failed: {error}"),
                    }
                    health.set(ORDERS_COMPONENT, ComponentState::Up);
                }
                StreamEvent::Down(_) => {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                    health.set(ORDERS_COMPONENT, ComponentState::Down);
                }
                StreamEvent::Malformed(_) => {}
                StreamEvent::Message(message) => {
                    for update in self.private_message(*message).await {
                        let _ = updates.send(update);
                    }
                }
            }
        }
        let _ = stream.await;
    }

    async fn private_message(&self, message: WsMessage) -> Vec<VenueUpdate> {
        match message {
            WsMessage::Orders { orders, .. } => orders
                .iter()
                .filter_map(|order| {
                    self.remember_order(order);
                    let client_id = order.client_order_id.clone()?;
                    Some(VenueUpdate::Order { client_id, remote: remote_of(order) })
                })
                .collect(),
            WsMessage::UserTrade(trade) => {
                let client_id = match trade.client_order_id.clone() {
                    Some(id) => Some(id),
                    None => self.client_id_of(&trade.order_id).await,
                };
                let Some(client_id) = client_id else {
                    return vec![VenueUpdate::Difference(format!(
                        "fill {} of order {} on {} was not placed by this host",
                        trade.fill_id, trade.order_id, trade.symbol
                    ))];
                };
                self.venue_fill(
                    &trade.symbol,
                    trade.fill_id,
                    client_id,
                    trade.size,
                    trade.price,
                    trade.role.as_deref(),
                    None,
                    trade.timestamp,
                )
                .into_iter()
                .collect()
            }
            WsMessage::Margins(balance) if balance.asset_symbol == self.currency => {
                vec![VenueUpdate::Balance(balance.balance)]
            }
            _ => Vec::new(),
        }
    }

    /// The public stream: books and trades become ticks on `feed`; symbols
    /// silent longer than `stale_after_ms` (or with a broken book) are stale,
    /// reported as [`MarketEvent::Stale`] when that changes.
    pub async fn run_market(
        self: Arc<Self>,
        feed: mpsc::Sender<MarketEvent>,
        health: Arc<Health>,
        metrics: Arc<Metrics>,
        cancel: CancellationToken,
    ) {
        let symbols = self.config.symbols.clone();
        let (_, ws_url, public_url) = self.config.urls();
        let (url, book_channel, trades_channel, ticker_channel) = if self.config.uses_legacy_channels() {
            (ws_url, "l2_updates", "all_trades", "v2/ticker")
        } else {
            (public_url, "ob_updates", "trades", "ticker")
        };
        let spec = self.stream_spec(
            "public",
            url,
            vec![
                (book_channel.into(), symbols.clone()),
                (trades_channel.into(), symbols.clone()),
                (ticker_channel.into(), symbols.clone()),
            ],
        );
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let stream = tokio::spawn(stream::run(spec, events_tx, commands, cancel.clone()));
        let stale_after = Duration::from_millis(self.config.stale_after_ms);
        let mut market = PublicBooks::default();
        // Symbols reported stale to the order manager (the first check reports every
        // symbol without a book yet).
        let mut stale: HashSet<String> = HashSet::new();
        for symbol in &symbols {
            market.books.insert(symbol.clone(), OrderBook::new(symbol));
        }
        let mut check = tokio::time::interval(Duration::from_millis(250));
        // Bars the hub has (history, or the stream's bar in progress) end here; while a
        // symbol is stale its closed minutes are polled over REST from this point on.
        let start_minute = self.server_now_ms() / 60_000 * 60_000;
        let mut bars_until: HashMap<String, i64> = symbols.iter().map(|s| (s.clone(), start_minute)).collect();
        let mut last_poll: HashMap<String, Instant> = HashMap::new();
        let poll_every = stale_after.max(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = check.tick() => {
                    let now = Instant::now();
                    let stale_now: Vec<String> =
                        symbols.iter().filter(|s| !market.is_fresh(s, now, stale_after)).cloned().collect();
                    if report_stale(&feed, &mut stale, &symbols, |s| stale_now.contains(s)).await {
                        if stale_now.is_empty() {
                            tracing::info!("delta: market data fresh for every symbol");
                        } else if !market.ever_up {
                            tracing::info!(symbols = ?stale_now, "delta: waiting for the first order books");
                        } else {
                            tracing::warn!(symbols = ?stale_now, "delta: market data stale: new entries refused");
                        }
                    }
                    for symbol in &stale_now {
                        if last_poll.get(symbol).is_some_and(|t| now - *t < poll_every) {
                            continue;
                        }
                        last_poll.insert(symbol.clone(), now);
                        let from = bars_until.get(symbol).copied().unwrap_or(start_minute);
                        let to = self.server_now_ms() / 60_000 * 60_000;
                        if to <= from {
                            continue;
                        }
                        match self.closed_minutes(symbol, from / 1_000, to / 1_000).await {
                            Ok(bars) => {
                                for bar in bars {
                                    bars_until.insert(symbol.clone(), bar.time + 60_000);
                                    let _ = feed.send(MarketEvent::PolledBar(bar)).await;
                                }
                            }
                            Err(error) => tracing::warn!(symbol = %symbol, "delta: candle polling failed: {error}"),
                        }
                    }
                    let state = if stale_now.is_empty() { ComponentState::Up } else if market.ever_up { ComponentState::Down } else { ComponentState::Starting };
                    health.set(MARKET_COMPONENT, state);
                    let rest = if self.rest.is_reachable() { ComponentState::Up } else { ComponentState::Down };
                    health.set(REST_COMPONENT, rest);
                }
                event = events.recv() => match event {
                    None => break,
                    Some(StreamEvent::Up) => market.ever_up = true,
                    Some(StreamEvent::Down(_)) => {
                        metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                        for (symbol, book) in market.books.iter_mut() {
                            *book = OrderBook::new(symbol);
                        }
                    }
                    Some(StreamEvent::Malformed(_)) => {}
                    Some(StreamEvent::Message(message)) => {
                        if let WsMessage::Ticker { symbol, mark: Some(price), .. } = message.as_ref() {
                            if self.products.get(symbol).is_some() {
                                let _ = feed.send(MarketEvent::Mark { symbol: symbol.clone(), price: *price }).await;
                            }
                            continue;
                        }
                        let ticks = market.apply(&self.products, *message, book_channel, &commands_tx);
                        // A symbol that just became fresh is open for entries at once.
                        if let Some(tick) = ticks.first()
                            && stale.contains(&tick.symbol)
                            && market.is_fresh(&tick.symbol, Instant::now(), stale_after)
                        {
                            stale.remove(&tick.symbol);
                            let _ = feed.send(MarketEvent::Stale { symbol: tick.symbol.clone(), stale: false }).await;
                        }
                        for tick in ticks {
                            let minute = tick.time / 60_000 * 60_000;
                            let until = bars_until.entry(tick.symbol.clone()).or_insert(minute);
                            *until = (*until).max(minute);
                            if feed.send(MarketEvent::Tick(tick)).await.is_err() {
                                break;
                            }
                        }
                    }
                },
            }
        }
        stream.abort();
        let _ = stream.await;
    }
}

/// Sends a [`MarketEvent::Stale`] for every symbol whose staleness changes
/// to `is_stale(symbol)`; returns true when any did.
async fn report_stale(
    feed: &mpsc::Sender<MarketEvent>,
    stale: &mut HashSet<String>,
    symbols: &[String],
    is_stale: impl Fn(&String) -> bool,
) -> bool {
    let mut changed = false;
    for symbol in symbols {
        let now = is_stale(symbol);
        if now != stale.contains(symbol) {
            changed = true;
            if now {
                stale.insert(symbol.clone());
            } else {
                stale.remove(symbol);
            }
            let _ = feed.send(MarketEvent::Stale { symbol: symbol.clone(), stale: now }).await;
        }
    }
    changed
}

/// Books, last trades and freshness of the public stream.
#[derive(Default)]
struct PublicBooks {
    books: HashMap<String, OrderBook>,
    last_trade: HashMap<String, Decimal>,
    top: HashMap<String, (Decimal, Decimal)>,
    fresh: HashMap<String, Instant>,
    ever_up: bool,
}

impl PublicBooks {
    /// The symbol's book is live and it had a message within `stale_after`.
    fn is_fresh(&self, symbol: &str, now: Instant, stale_after: Duration) -> bool {
        self.books.get(symbol).is_some_and(OrderBook::is_live)
            && self.fresh.get(symbol).is_some_and(|t| now - *t <= stale_after)
    }

    /// Applies one public message; returns the ticks it produced.
    fn apply(
        &mut self,
        products: &Products,
        message: WsMessage,
        book_channel: &str,
        commands: &mpsc::UnboundedSender<StreamCommand>,
    ) -> Vec<Tick> {
        match message {
            WsMessage::Book(update) => {
                let symbol = update.symbol.clone();
                let Some(book) = self.books.get_mut(&symbol) else { return Vec::new() };
                if let Err(error) = book.apply(&update) {
                    tracing::warn!("delta: order book {error}; resubscribing for a fresh snapshot");
                    let _ = commands
                        .send(StreamCommand::Resubscribe { channel: book_channel.into(), symbols: vec![symbol] });
                    return Vec::new();
                }
                self.fresh.insert(symbol.clone(), Instant::now());
                let (Some((bid, _)), Some((ask, _))) = (book.best_bid(), book.best_ask()) else { return Vec::new() };
                if self.top.insert(symbol.clone(), (bid, ask)) == Some((bid, ask)) {
                    return Vec::new();
                }
                let last = self.last_trade.get(&symbol).copied().unwrap_or((bid + ask) / Decimal::TWO);
                let time = update.timestamp.map_or_else(|| chrono::Utc::now().timestamp_millis(), |us| us / 1_000);
                vec![Tick { symbol, time, bid, ask, last, volume: Decimal::ZERO }]
            }
            WsMessage::Trades(trades) => trades
                .into_iter()
                .filter_map(|trade| {
                    let product = products.get(&trade.symbol)?;
                    self.last_trade.insert(trade.symbol.clone(), trade.price);
                    self.fresh.insert(trade.symbol.clone(), Instant::now());
                    // No quote without a live book: ticks wait for the snapshot.
                    let (bid, ask) = self.top.get(&trade.symbol).copied()?;
                    self.books.get(&trade.symbol).filter(|b| b.is_live())?;
                    Some(Tick {
                        time: trade.timestamp.map_or_else(|| chrono::Utc::now().timestamp_millis(), |us| us / 1_000),
                        bid,
                        ask,
                        last: trade.price,
                        volume: trade.size * product.contract_value,
                        symbol: trade.symbol,
                    })
                })
                .collect(),
            WsMessage::SystemStatus(status) => {
                tracing::warn!(status = %status.status, event = ?status.event, "delta: exchange status");
                Vec::new()
            }
            _ => Vec::new(),
        }
    }
}
