//! The Delta venue: products and unit conversion, start-up reconciliation,
//! the order executor (REST, with look-up-before-anything-else after an
//! uncertain send), the private stream (orders, fills, balances, with a
//! REST reconciliation after every (re)connect) and the public market stream
//! (order books with sequence and checksum checks, trades → ticks, per-symbol
//! freshness feeding health and the stale-symbol gate).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rust_decimal::Decimal;

use super::brackets::{Brackets, is_leg, kind_of};
use super::rest::{Credentials, RestClient, RestError};
use super::stream::StreamSpec;
use super::wire::RestOrder;
use crate::bounded::BoundedMap;
use crate::config::DeltaConfig;
use crate::exchange::reconcile::{VenueOrder, VenueSnapshot};
use crate::exchange::{RemoteOrder, RemoteState, VenueFill, VenueUpdate};
use crate::model::{Candle, Fill, Liquidity, Order, OrderStatus, Side};

pub use super::products::{MAX_CLIENT_ID, Products, new_order, remote_of};

/// Health component of the public market stream.
pub const MARKET_COMPONENT: &str = "exchange.market";
/// Health component of the REST API (down during outages and maintenance).
pub const REST_COMPONENT: &str = "exchange.rest";
/// Health component of the private order stream.
pub const ORDERS_COMPONENT: &str = "exchange.orders";

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
    pub(super) config: DeltaConfig,
    /// API key and secret (`None`: market data only).
    pub(super) credentials: Option<Credentials>,
    /// Exchange order id → client order id.
    pub(super) order_ids: Mutex<BoundedMap<String, String>>,
    /// Newest fill time seen, µs (reconciliation starts a minute before it).
    pub(super) last_fill_us: AtomicI64,
    /// The host's bracket legs, adopted as the exchange creates them.
    pub(super) brackets: Mutex<Brackets>,
}

impl DeltaConnector {
    /// Connects: clock offset, products of the configured symbols, the
    /// settlement currency. Loudly announces production networks.
    pub async fn connect(config: &DeltaConfig) -> Result<DeltaConnector, ConnectError> {
        let (Some(key), Some(secret)) = (&config.api_key, &config.api_secret) else {
            return Err(ConnectError::NoCredentials);
        };
        Self::connect_with(config, Some(Credentials { key: key.clone(), secret: secret.clone() })).await
    }

    /// Connects for market data only (a dry-run): public endpoints, no key;
    /// the private stream and every order call are unavailable.
    pub async fn connect_public(config: &DeltaConfig) -> Result<DeltaConnector, ConnectError> {
        Self::connect_with(config, None).await
    }

    async fn connect_with(
        config: &DeltaConfig,
        credentials: Option<Credentials>,
    ) -> Result<DeltaConnector, ConnectError> {
        let (rest_url, ws_url, public_url) = config.urls();
        if credentials.is_some() && config.network.is_production() && config.rest_url.is_none() {
            tracing::warn!("################################################################");
            tracing::warn!("LIVE TRADING on Delta Exchange {:?} ({rest_url}): real money", config.network);
            tracing::warn!("################################################################");
        }
        tracing::info!(rest = %rest_url, ws = %ws_url, public = %public_url, "delta: connecting");
        let timeout = Duration::from_millis(config.request_timeout_ms);
        let rest = Arc::new(RestClient::new(&rest_url, credentials.clone(), timeout)?);
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
            brackets: Mutex::new(Brackets::default()),
        })
    }

    /// Server time, ms (local clock corrected by the measured offset).
    pub(super) fn server_now_ms(&self) -> i64 {
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
        Ok(candles.into_iter().filter_map(|c| c.candle(symbol)).collect())
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
        let stored: Vec<&Order> = stored_orders
            .into_iter()
            .filter(|order| order.status.is_open() || order.status == OrderStatus::Pending)
            .collect();
        // Bracket legs have no client id on the exchange: the reconciliation adopts them.
        self.brackets().restore(stored.iter().copied());
        for order in &stored {
            since_ms = since_ms.min(order.updated);
            if is_leg(&order.request) {
                continue;
            }
            if let Some(remote) = self.rest.order_by_client_id(&order.request.client_id).await? {
                // Its legs are no exchange orders older than the entry itself.
                if let Some(created) = remote.created_at {
                    let legs =
                        stored.iter().filter(|leg| leg.request.parent.as_ref() == Some(&order.request.client_id));
                    let mut brackets = self.brackets();
                    legs.for_each(|leg| brackets.not_before(&leg.request.client_id, created));
                }
                for update in self.note_order(&remote) {
                    if let VenueUpdate::Order { client_id, remote } = update {
                        known_at_start.insert(client_id, remote);
                    }
                }
            }
        }
        if let Some(last) = stored_fills.iter().map(|f| f.time).max() {
            since_ms = since_ms.min(last);
        }
        self.last_fill_us.store(since_ms * 1_000, Ordering::Relaxed);
        let updates = self.reconcile().await?;
        for update in &updates {
            if let VenueUpdate::Order { client_id, remote } = update
                && stored.iter().any(|order| order.request.client_id == *client_id && is_leg(&order.request))
            {
                known_at_start.insert(client_id.clone(), remote.clone());
            }
        }
        // A leg the exchange has not created yet still waits for its working entry.
        for leg in stored.iter().filter(|order| is_leg(&order.request)) {
            let entry = leg.request.parent.as_ref().and_then(|entry| known_at_start.get(entry));
            let entry_works = entry.is_some_and(|e| {
                matches!(e.state, RemoteState::Open | RemoteState::Untriggered | RemoteState::Triggered)
            });
            if entry_works && !known_at_start.contains_key(&leg.request.client_id) {
                known_at_start.insert(leg.request.client_id.clone(), RemoteOrder::new(RemoteState::Untriggered, None));
            }
            // A leg the exchange neither holds nor will create is closed at start: it must not hold the symbol.
            if !known_at_start.contains_key(&leg.request.client_id) {
                self.brackets().forget(&leg.request.client_id);
            }
        }
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

    /// What the exchange holds now — open orders (with the host's client
    /// ids where known) and net positions in base units — and the clock
    /// offset measured now. Reads only: nothing the host knows changes.
    pub async fn snapshot(&self) -> Result<VenueSnapshot, RestError> {
        let clock_offset_ms = self.rest.sync_clock().await?;
        let mut orders = Vec::new();
        for order in self.rest.open_orders(&self.products.ids()).await? {
            let symbols = [order.product_symbol.as_deref(), order.symbol.as_deref()];
            let Some(product) = self.products.resolve(symbols, order.product_id) else { continue };
            let known = self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).get(&order.id).cloned();
            orders.push(VenueOrder {
                exchange_id: order.id.clone(),
                client_id: order.client_order_id.clone().or(known),
                symbol: product.symbol.clone(),
                side: if order.side == "sell" { Side::Sell } else { Side::Buy },
                remaining: order.unfilled_size.unwrap_or(order.size) * product.contract_value,
            });
        }
        let mut positions = BTreeMap::new();
        for position in self.rest.positions().await? {
            let symbols = [position.product_symbol.as_deref(), position.symbol.as_deref()];
            if let Some(product) = self.products.resolve(symbols, position.product_id) {
                positions.insert(product.symbol.clone(), position.size.unwrap_or_default() * product.contract_value);
            }
        }
        Ok(VenueSnapshot { orders, positions, clock_offset_ms })
    }

    pub(super) fn brackets(&self) -> std::sync::MutexGuard<'_, Brackets> {
        self.brackets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What an exchange order means to the host: its state under our client
    /// id (its own, or the bracket leg it is adopted as), remembered for its
    /// fills; nothing for an order the host did not place. An entry that
    /// ended without a fill takes its waiting bracket legs with it.
    pub(super) fn note_order(&self, order: &RestOrder) -> Vec<VenueUpdate> {
        let product =
            self.products.resolve([order.product_symbol.as_deref(), order.symbol.as_deref()], order.product_id);
        let mut brackets = self.brackets();
        let known = self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).get(&order.id).cloned();
        let (client_id, leg) = match (&order.client_order_id, known) {
            (Some(id), _) => (id.clone(), false),
            // An exchange order seen before keeps its id (a leg's later states never adopt anew).
            (None, Some(id)) => (id, true),
            (None, None) => {
                let adopted = kind_of(order.stop_order_type.as_deref())
                    .filter(|_| order.bracket_order != Some(false))
                    .zip(product)
                    .and_then(|(kind, product)| brackets.adopt(&product.symbol, kind, &order.id, order.created_at));
                match adopted {
                    Some(id) => (id, true),
                    None => return Vec::new(),
                }
            }
        };
        self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).insert(order.id.clone(), client_id.clone());
        let mut remote = remote_of(order);
        let ended = matches!(remote.state, RemoteState::Closed | RemoteState::Cancelled | RemoteState::Rejected);
        let filled_some = order.unfilled_size.is_some_and(|unfilled| unfilled < order.size);
        if leg {
            // The exchange sizes a position bracket's legs to the whole position.
            remote.size = product.map(|p| order.size * p.contract_value);
            match (order.state.as_str(), product) {
                // A filled leg closed the position: the whole bracket is over.
                ("closed", Some(product)) => brackets.forget_symbol(&product.symbol),
                _ if ended => brackets.forget(&client_id),
                _ => {}
            }
        } else if order.state == "closed" || (ended && filled_some) {
            brackets.entry_filled(&client_id, self.server_now_ms() * 1_000);
        }
        let mut updates = vec![VenueUpdate::Order { client_id: client_id.clone(), remote }];
        let unfilled = order.unfilled_size.is_none_or(|unfilled| unfilled == order.size);
        if ended && unfilled && order.state != "closed" {
            for waiting in brackets.waiting_for(&client_id) {
                brackets.forget(&waiting);
                let reason = Some(format!("its entry {client_id} ended without a fill"));
                let remote = RemoteOrder::new(RemoteState::Cancelled, reason);
                updates.push(VenueUpdate::Order { client_id: waiting, remote });
            }
        }
        updates
    }

    /// Orders, fills and the balance from REST since a minute before the
    /// newest fill seen: what a stream gap may have hidden.
    pub async fn reconcile(&self) -> Result<Vec<VenueUpdate>, RestError> {
        let since_us = self.last_fill_us.load(Ordering::Relaxed) - 60_000_000;
        let ids = self.products.ids();
        let mut updates = Vec::new();
        // Open orders first, then the newest: a bracket leg is adopted as the live one.
        let mut orders = self.rest.open_orders(&ids).await?;
        let mut history = self.rest.order_history(&ids, since_us).await?;
        history.sort_by_key(|order| std::cmp::Reverse(order.created_at));
        orders.extend(history);
        for order in &orders {
            updates.extend(self.note_order(order));
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
    pub(super) async fn client_id_of(&self, order_id: &str) -> Option<String> {
        if let Some(id) = self.order_ids.lock().unwrap_or_else(|e| e.into_inner()).get(order_id) {
            return Some(id.clone());
        }
        let order = self.rest.order(order_id).await.ok()?;
        match self.note_order(&order).into_iter().next()? {
            VenueUpdate::Order { client_id, .. } => Some(client_id),
            _ => None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) fn venue_fill(
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
            exchange_id: Some(exchange_id),
            client_id,
            size,
            price,
            fee,
            liquidity,
            time: time_us / 1_000,
        }))
    }

    pub(super) fn stream_spec(
        &self,
        name: &'static str,
        url: String,
        channels: Vec<(String, Vec<String>)>,
    ) -> StreamSpec {
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
}
