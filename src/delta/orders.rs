//! The order side of the Delta venue: the executor (REST sends and
//! cancels, with a look-up by client id after an uncertain send) and the
//! private stream (order states, fills, balances, a REST reconciliation
//! after every (re)connect).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::connector::{DeltaConnector, ORDERS_COMPONENT};
use super::products::{bracket_of, new_order};
use super::rest::NewOrder;
use super::rest::RestError;
use super::stream::{self, StreamEvent};
use super::wire::WsMessage;
use crate::exchange::{RemoteOrder, RemoteState, VenueCommand, VenueUpdate};
use crate::health::{ComponentState, Health, Metrics};
use crate::model::{Order, OrderRequest};

/// The same rejection for each of `client_ids`.
fn rejected(client_ids: impl IntoIterator<Item = String>, reason: String) -> Vec<VenueUpdate> {
    client_ids
        .into_iter()
        .map(|client_id| VenueUpdate::Order {
            client_id,
            remote: RemoteOrder::new(RemoteState::Rejected, Some(reason.clone())),
        })
        .collect()
}

impl DeltaConnector {
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
                            VenueCommand::PlaceBracket { entry, legs } => connector.place_bracket(entry, legs).await,
                            VenueCommand::Cancel(order) => connector.cancel(order).await,
                            VenueCommand::CancelSymbol { symbol, orders } => {
                                connector.cancel_symbol(&symbol, orders).await
                            }
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
        match new_order(&self.products, &request) {
            Ok(order) => self.send_order(&order).await,
            Err(reason) => rejected([request.client_id], reason),
        }
    }

    /// Sends an order; after a send whose outcome is unknown, looks it up.
    async fn send_order(&self, order: &NewOrder) -> Vec<VenueUpdate> {
        let client_id = order.client_order_id.clone();
        match self.rest.place_order(order).await {
            Ok(placed) => self.note_order(&placed),
            Err(
                error @ (RestError::Connectivity { .. } | RestError::Unavailable { .. } | RestError::Decode { .. }),
            ) => self.resolve_uncertain(&client_id, &error).await,
            Err(error) => rejected([client_id], format!("exchange: {error}")),
        }
    }

    /// Places a bracket: with its entry (Delta attaches it to the position
    /// once the entry fills, and the legs wait until then), or on the open
    /// position at once. The exchange creates the legs; the host adopts them.
    async fn place_bracket(&self, entry: Option<OrderRequest>, legs: Vec<OrderRequest>) -> Vec<VenueUpdate> {
        let symbol = entry.as_ref().or(legs.first()).map(|r| r.symbol.clone()).unwrap_or_default();
        // Legs whose entry filled long ago but that the exchange never created end here.
        let uncreated = self.brackets().take_uncreated(&symbol, self.server_now_ms() * 1_000);
        let reason = "the exchange did not create this bracket leg after its entry filled";
        let cancelled = |client_id| VenueUpdate::Order {
            client_id,
            remote: RemoteOrder::new(RemoteState::Cancelled, Some(reason.to_string())),
        };
        let mut updates: Vec<VenueUpdate> = uncreated.into_iter().map(cancelled).collect();
        updates.extend(self.send_bracket(&symbol, entry, legs).await);
        updates
    }

    async fn send_bracket(
        &self,
        symbol: &str,
        entry: Option<OrderRequest>,
        legs: Vec<OrderRequest>,
    ) -> Vec<VenueUpdate> {
        let ids: Vec<String> = entry.iter().chain(&legs).map(|r| r.client_id.clone()).collect();
        let leg_ids: Vec<String> = legs.iter().map(|r| r.client_id.clone()).collect();
        let bracket = match bracket_of(&self.products, symbol, &legs) {
            Ok(bracket) => bracket,
            Err(reason) => return rejected(ids, reason),
        };
        {
            let mut brackets = self.brackets();
            if let Some(held) = brackets.held_on(symbol) {
                let reason = format!("{symbol} already has a bracket ({held}): Delta holds one bracket per position");
                return rejected(ids, reason);
            }
            brackets.register(&legs, self.server_now_ms() * 1_000);
        }
        let forget = |reason: &str| {
            let mut brackets = self.brackets();
            leg_ids.iter().for_each(|leg| brackets.forget(leg));
            rejected(leg_ids.clone(), reason.to_string())
        };
        let Some(entry) = entry else {
            return match self.rest.place_bracket(&bracket).await {
                Ok(()) => self.adopt_legs(symbol, &leg_ids, 1).await.unwrap_or_default(),
                Err(
                    error @ (RestError::Connectivity { .. } | RestError::Unavailable { .. } | RestError::Decode { .. }),
                ) => match self.adopt_legs(symbol, &leg_ids, 3).await {
                    Some(adopted) => adopted,
                    None => forget(&format!("not placed: {error}, and the exchange holds no such bracket")),
                },
                Err(error) => forget(&format!("exchange: {error}")),
            };
        };
        let mut order = match new_order(&self.products, &entry) {
            Ok(order) => order,
            Err(reason) => {
                forget(&reason);
                return rejected(ids, reason);
            }
        };
        order.bracket = Some(bracket);
        let mut updates = self.send_order(&order).await;
        let refused = updates.iter().find_map(|update| match update {
            VenueUpdate::Order { client_id, remote }
                if *client_id == entry.client_id && remote.state == RemoteState::Rejected =>
            {
                Some(remote.reason.clone().unwrap_or_default())
            }
            _ => None,
        });
        match refused {
            Some(reason) => updates.extend(forget(&format!("its entry {} was rejected: {reason}", entry.client_id))),
            None => {
                // Waiting for the entry (unless an update above already reports the leg).
                let reported: Vec<String> = updates
                    .iter()
                    .filter_map(|u| {
                        if let VenueUpdate::Order { client_id, .. } = u { Some(client_id.clone()) } else { None }
                    })
                    .collect();
                let waiting = leg_ids.iter().filter(|leg| !reported.contains(leg));
                updates.extend(waiting.map(|leg| VenueUpdate::Order {
                    client_id: leg.clone(),
                    remote: RemoteOrder::new(RemoteState::Untriggered, None),
                }));
            }
        }
        updates
    }

    /// Looks for the orders the exchange created for a bracket on `symbol`
    /// (up to `attempts` times); their states, or `None` when none showed.
    async fn adopt_legs(&self, symbol: &str, legs: &[String], attempts: u32) -> Option<Vec<VenueUpdate>> {
        let product = self.products.get(symbol)?.id;
        for attempt in 0..attempts {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt))).await;
            }
            let Ok(open) = self.rest.open_orders(&[product]).await else { continue };
            let updates: Vec<VenueUpdate> = open
                .iter()
                .filter(|order| order.client_order_id.is_none())
                .flat_map(|order| self.note_order(order))
                .filter(|u| matches!(u, VenueUpdate::Order { client_id, .. } if legs.contains(client_id)))
                .collect();
            if !updates.is_empty() {
                return Some(updates);
            }
        }
        None
    }

    /// After a send whose outcome is unknown: look the order up by client id
    /// (never send it again). Two clear "no such order" answers mean it was not placed.
    async fn resolve_uncertain(&self, client_id: &str, error: &RestError) -> Vec<VenueUpdate> {
        tracing::warn!(order = client_id, "delta: {error}; looking the order up by client order id");
        let mut misses = 0;
        for attempt in 1..=8u32 {
            tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt.min(4)))).await;
            match self.rest.order_by_client_id(client_id).await {
                Ok(Some(order)) => return self.note_order(&order),
                Ok(None) => {
                    misses += 1;
                    if misses >= 2 {
                        return rejected(
                            [client_id.to_string()],
                            format!("not placed: {error}, and the exchange has no such order"),
                        );
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
        let leg = {
            let brackets = self.brackets();
            brackets.contains(&client_id).then(|| brackets.exchange_id(&client_id).map(str::to_string))
        };
        let (cancelled, current) = match leg {
            None => {
                // While the entry's cancel is in flight its waiting legs do not hold the symbol.
                self.brackets().entry_cancelling(&client_id, true);
                let cancelled = self.rest.cancel_by_client_id(&client_id, product.id).await;
                let current = match &cancelled {
                    Ok(_) => None,
                    Err(_) => Some(self.rest.order_by_client_id(&client_id).await),
                };
                self.brackets().entry_cancelling(&client_id, false);
                (cancelled, current)
            }
            Some(Some(exchange_id)) => {
                let cancelled = self.rest.cancel_order(&exchange_id, product.id).await;
                let current = match &cancelled {
                    Ok(_) => None,
                    Err(_) => Some(self.rest.order(&exchange_id).await.map(Some)),
                };
                (cancelled, current)
            }
            Some(None) => {
                return vec![VenueUpdate::Difference(format!(
                    "cannot cancel {client_id}: Delta creates a bracket's legs when its entry fills; cancel the entry instead"
                ))];
            }
        };
        match (cancelled, current) {
            (Ok(cancelled), _) => self.note_order(&cancelled),
            // Already filled or cancelled: report what it is.
            (Err(_), Some(Ok(Some(current)))) => self.note_order(&current),
            (Err(error), _) => vec![VenueUpdate::Difference(format!("cancel of {client_id} failed: {error}"))],
        }
    }

    /// Cancels every order on a product with one cancel-all; the orders are
    /// reported cancelled (one that filled just before keeps its fills, which
    /// the private stream reports). If the cancel-all fails, each is cancelled alone.
    async fn cancel_symbol(&self, symbol: &str, orders: Vec<Order>) -> Vec<VenueUpdate> {
        let Some(product) = self.products.get(symbol) else { return Vec::new() };
        match self.rest.cancel_all(product.id).await {
            Ok(()) => {
                tracing::info!(symbol, orders = orders.len(), "delta: cancelled every order of the product at once");
                let mut brackets = self.brackets();
                orders.iter().for_each(|order| brackets.forget(&order.request.client_id));
                drop(brackets);
                orders
                    .into_iter()
                    .map(|order| VenueUpdate::Order {
                        client_id: order.request.client_id,
                        remote: RemoteOrder::new(RemoteState::Cancelled, Some("cancelled_by_user".into())),
                    })
                    .collect()
            }
            Err(error) => {
                tracing::warn!(
                    symbol,
                    "delta: cancel-all failed ({error}); cancelling {} orders one by one",
                    orders.len()
                );
                let mut updates = Vec::new();
                for order in orders {
                    updates.extend(self.cancel(order).await);
                }
                updates
            }
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
        let Some(credentials) = self.credentials.clone() else {
            tracing::error!("delta: the private stream needs an API key (this connector reads market data only)");
            return;
        };
        spec.auth = Some((credentials, self.rest.clone()));
        let (events_tx, mut events) = mpsc::unbounded_channel();
        let (_commands_tx, commands) = mpsc::unbounded_channel();
        let stream = tokio::spawn(stream::run(spec, events_tx, commands, cancel.clone()));
        let messages = health.pulse(ORDERS_COMPONENT);
        while let Some(event) = tokio::select! { _ = cancel.cancelled() => None, e = events.recv() => e } {
            match event {
                StreamEvent::Up => {
                    match self.reconcile().await {
                        Ok(found) => found.into_iter().for_each(|u| drop(updates.send(u))),
                        Err(error) => tracing::warn!("delta: reconciliation after connect failed: {error}"),
                    }
                    health.set(ORDERS_COMPONENT, ComponentState::Up);
                }
                StreamEvent::Down(why) => {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                    health.set_down(ORDERS_COMPONENT, &format!("private stream disconnected ({why})"));
                }
                StreamEvent::Malformed(_) => {}
                StreamEvent::Message(message) => {
                    messages.beat();
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
            WsMessage::Orders { orders, .. } => orders.iter().flat_map(|order| self.note_order(order)).collect(),
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
}
