//! The market side of the Delta venue: the public stream's order books
//! (sequence and checksum checks), trades and tickers become ticks and marks;
//! per-symbol freshness feeds health and [`MarketEvent::Stale`].

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::book::OrderBook;
use super::connector::{DeltaConnector, MARKET_COMPONENT, REST_COMPONENT};
use super::products::Products;
use super::stream::{self, StreamCommand, StreamEvent};
use super::wire::WsMessage;
use crate::exchange::MarketEvent;
use crate::health::{ComponentState, Health, Metrics};
use crate::model::Tick;

impl DeltaConnector {
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
        // Why the stream is down, while it is.
        let mut disconnected: Option<String> = None;
        let messages = health.pulse(MARKET_COMPONENT);
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
                    let (state, reason) = if stale_now.is_empty() {
                        (ComponentState::Up, None)
                    } else if !market.ever_up {
                        (ComponentState::Starting, None)
                    } else if let Some(why) = &disconnected {
                        let symbols = stale_now.join(", ");
                        (ComponentState::Down, Some(format!("stream disconnected ({why}): new entries refused for {symbols}")))
                    } else {
                        let (symbols, ms) = (stale_now.join(", "), stale_after.as_millis());
                        (ComponentState::Degraded, Some(format!("no market data for {symbols} within {ms} ms: new entries refused")))
                    };
                    health.report(MARKET_COMPONENT, state, reason.as_deref());
                    let rest = if self.rest.is_reachable() { ComponentState::Up } else { ComponentState::Down };
                    health.set(REST_COMPONENT, rest);
                }
                event = events.recv() => match event {
                    None => break,
                    Some(StreamEvent::Up) => {
                        market.ever_up = true;
                        disconnected = None;
                    }
                    Some(StreamEvent::Down(why)) => {
                        disconnected = Some(why);
                        metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                        for (symbol, book) in market.books.iter_mut() {
                            *book = OrderBook::new(symbol);
                        }
                    }
                    Some(StreamEvent::Malformed(_)) => {}
                    Some(StreamEvent::Message(message)) => {
                        messages.beat();
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
