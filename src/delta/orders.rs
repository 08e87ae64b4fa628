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
use super::products::{new_order, remote_of};
use super::rest::RestError;
use super::stream::{self, StreamEvent};
use super::wire::WsMessage;
use crate::exchange::{RemoteOrder, RemoteState, VenueCommand, VenueUpdate};
use crate::health::{ComponentState, Health, Metrics};
use crate::model::{Order, OrderRequest};

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
        let client_id = request.client_id.clone();
        let refuse = |reason: String| {
            vec![VenueUpdate::Order {
                client_id: client_id.clone(),
                remote: RemoteOrder::new(RemoteState::Rejected, Some(reason)),
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
                            remote: RemoteOrder::new(
                                RemoteState::Rejected,
                                Some(format!("not placed: {error}, and the exchange has no such order")),
                            ),
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

    /// Cancels every order on a product with one cancel-all; the orders are
    /// reported cancelled (one that filled just before keeps its fills, which
    /// the private stream reports). If the cancel-all fails, each is cancelled alone.
    async fn cancel_symbol(&self, symbol: &str, orders: Vec<Order>) -> Vec<VenueUpdate> {
        let Some(product) = self.products.get(symbol) else { return Vec::new() };
        match self.rest.cancel_all(product.id).await {
            Ok(()) => {
                tracing::info!(symbol, orders = orders.len(), "delta: cancelled every order of the product at once");
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
}
