//! The venue and its market at start: the paper exchange with the synthetic
//! or replay feed (warm-up history generated or read, a synthetic market
//! resumed where the last run stopped), or the Delta connector (history,
//! reconciliation with the store). Either way the stored orders are restored
//! and the outcomes found at start are stored and published before anything
//! else runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use super::HostError;
use super::tasks::Tasks;
use crate::activity::{ActivityBus, ActivityKind};
use crate::clock::Clock;
use crate::config::{Config, ExchangeKind, FeedKind};
use crate::data::{MarketHub, Timeframe};
use crate::delta::DeltaConnector;
use crate::delta::connector::ORDERS_COMPONENT;
use crate::exchange::{ExchangeEvent, LiveVenue, PaperExchange, Venue, VenueCommand, VenueUpdate};
use crate::execution::{Oms, publish_difference};
use crate::feed::{self, FeedSource, Replay, SyntheticFeed};
use crate::health::{Health, Metrics};
use crate::model::{Shown, TimestampMs};
use crate::store::{Recovered, Store, StoreReader, StoreWriter};
use tokio_util::sync::CancellationToken;

/// The venue, its market and what start-up found.
pub(super) struct Booted {
    /// The order manager over the venue, restored from the store.
    pub oms: Oms,
    /// Market history so far.
    pub hub: MarketHub,
    /// Where live market data will come from.
    pub market: Market,
    /// Order outcomes found at start (stored and published already).
    pub resolved: Vec<ExchangeEvent>,
    /// The Delta connector's order channels.
    pub delta: Option<DeltaLinks>,
    /// The run's clock.
    pub clock: Clock,
    /// How prices, sizes and money are shown.
    pub shown: Shown,
}

/// Builds the venue and its market, restores the stored orders and stores
/// and publishes the outcomes found at start.
pub(super) async fn boot(
    config: &Config,
    store: &Store,
    recovered: &Recovered,
    writer: &StoreWriter,
    activity: &ActivityBus,
    health: &Health,
) -> Result<Booted, HostError> {
    let (oms, hub, market, resolved, delta, clock, shown) = match config.exchange.kind {
        ExchangeKind::Paper => {
            let mut oms = Oms::new(Venue::Paper(Box::new(PaperExchange::new(&config.exchange.paper))));
            oms.set_products(config.exchange.paper.product_list());
            // Warm-up history first, on an empty book: it must not fill restored orders.
            let last_activity = last_activity_time(store, recovered.last_activity_seq);
            let (hub, source, clock) = build_feed(config, &mut oms, store, last_activity)?;
            oms.set_clock(clock.clone());
            activity.set_clock(clock.clone());
            let resolved = oms.restore(recovered).map_err(|e| HostError::Recovery(e.to_string()))?;
            let shown = Shown::new(&config.exchange.paper.product_list());
            (oms, hub, Market::Feed(source), resolved, None, clock, shown)
        }
        ExchangeKind::Delta if config.exchange.dry_run => {
            use crate::delta::connector::{MARKET_COMPONENT, REST_COMPONENT};
            for component in [MARKET_COMPONENT, REST_COMPONENT] {
                health.register(component);
            }
            let (oms, hub, resolved, connector) = start_dry_run(config, recovered).await?;
            track_delta(health, &connector, config);
            let shown = connector.products.shown();
            (oms, hub, Market::Delta(connector), resolved, None, Clock::wall(), shown)
        }
        ExchangeKind::Delta => {
            use crate::delta::connector::{MARKET_COMPONENT, ORDERS_COMPONENT, REST_COMPONENT};
            for component in [MARKET_COMPONENT, ORDERS_COMPONENT, REST_COMPONENT] {
                health.register(component);
            }
            let (oms, hub, resolved, links) = start_delta(config, store, recovered, activity).await?;
            let connector = links.connector.clone();
            track_delta(health, &connector, config);
            let shown = connector.products.shown();
            (oms, hub, Market::Delta(connector), resolved, Some(links), Clock::wall(), shown)
        }
    };
    let mut oms = oms;
    oms.set_risk(crate::risk::RiskGate::from_limits(risk_limits(config, recovered)));
    publish_resolved(&oms, &resolved, writer, activity, &shown).await?;
    Ok(Booted { oms, hub, market, resolved, delta, clock, shown })
}

/// The risk limits in force: those last set through the API, else the config file's.
fn risk_limits(config: &Config, recovered: &Recovered) -> crate::risk::Limits {
    let stored = recovered.risk_limits.as_ref().map(|v| serde_json::from_value::<crate::risk::Limits>(v.clone()));
    match stored {
        Some(Ok(limits)) => {
            tracing::warn!("risk limits: the ones last set through the API apply, not the config file's [risk]");
            limits
        }
        Some(Err(error)) => {
            tracing::error!("stored risk limits are unreadable ({error}): the config file's apply");
            crate::risk::Limits::from_config(config)
        }
        None => crate::risk::Limits::from_config(config),
    }
}

/// Stores the order outcomes found at start, then logs and publishes them.
async fn publish_resolved(
    oms: &Oms,
    resolved: &[ExchangeEvent],
    writer: &StoreWriter,
    activity: &ActivityBus,
    shown: &Shown,
) -> Result<(), HostError> {
    if resolved.is_empty() {
        return Ok(());
    }
    writer.commit(oms.write_ops(resolved)).await.map_err(|e| HostError::Recovery(e.to_string()))?;
    for event in resolved {
        match event {
            ExchangeEvent::Order(order) => {
                tracing::warn!(order = %order.request.client_id, status = ?order.status, "order outcome resolved at start: {}", order.reason.as_deref().unwrap_or("known to the exchange"));
                activity.publish(
                    ActivityKind::Order,
                    Some(&order.request.strategy),
                    json!({ "recovered": true, "order": shown.order(order) }),
                );
            }
            ExchangeEvent::Fill(fill) => {
                let shown_fill = shown.fill(fill);
                tracing::warn!(order = %fill.order_id, size = %shown_fill.size, price = %shown_fill.price, "fill found at start");
                activity.publish(ActivityKind::Fill, Some(&fill.strategy), json!(shown_fill));
            }
        }
    }
    Ok(())
}

/// Builds the feed source, a hub preloaded with its history, and the run's
/// simulated clock.
fn build_feed(
    config: &Config,
    oms: &mut Oms,
    store: &StoreReader,
    last_activity: Option<TimestampMs>,
) -> Result<(MarketHub, FeedSource, Clock), HostError> {
    let products = config.exchange.paper.product_list();
    match config.feed.kind {
        FeedKind::Synthetic => {
            let syn = &config.feed.synthetic;
            let base = Timeframe::from_ms(syn.tick_interval_ms as i64);
            let history_ms = syn.history_bars as i64 * 60_000;
            let capacity = (history_ms / base.ms()) as usize + 20_000;
            let mut hub = MarketHub::new(base, capacity);
            let resume = synthetic_resume(store, syn, last_activity)?;
            let feed = match resume {
                Some((time, prices)) => {
                    // Continue where the last run stopped: times never go
                    // backwards, prices do not jump; warm-up candles come from the store.
                    // The next whole minute: candles continue without a gap or an overlap.
                    let start = Timeframe::minute().bucket(time - 1) + Timeframe::minute().ms();
                    tracing::info!(
                        resume_at = %chrono::DateTime::from_timestamp_millis(start).map_or(start.to_string(), |t| t.to_rfc3339()),
                        "the synthetic market continues from the last run's time and prices"
                    );
                    SyntheticFeed::new(syn, &products, start).resume(&prices)
                }
                None => {
                    let now = Timeframe::minute().bucket(chrono::Utc::now().timestamp_millis());
                    let mut feed = SyntheticFeed::new(syn, &products, now - history_ms);
                    while feed.time() < now {
                        for tick in feed.step() {
                            hub.on_tick(&tick);
                            oms.on_tick(&tick);
                        }
                    }
                    feed
                }
            };
            let clock = Clock::simulated(feed.time(), syn.speed);
            Ok((hub, FeedSource::Synthetic { feed: Box::new(feed), clock: clock.clone() }, clock))
        }
        FeedKind::Replay => {
            let r = &config.feed.replay;
            let candles = feed::csv::read_candles(&r.path, &r.symbol)?;
            let interval_ms = feed::csv::interval_ms(&candles).unwrap_or(60_000);
            let product =
                products.into_iter().find(|p| p.symbol == r.symbol).expect("validated: replay symbol has a product");
            let hub = MarketHub::new(Timeframe::from_ms(interval_ms), 20_000);
            let clock = Clock::simulated(candles.first().map_or(0, |c| c.time + interval_ms), r.speed);
            let replay = Replay {
                clock: clock.clone(),
                candles,
                interval_ms,
                repeat: r.repeat,
                half_spread: r.spread_bps / 20_000.0,
                product,
                cursor: (0, 0),
            };
            Ok((hub, FeedSource::Replay(replay), clock))
        }
    }
}

/// Where market data comes from.
pub(super) enum Market {
    /// The synthetic or replay feed.
    Feed(FeedSource),
    /// Delta's public stream.
    Delta(Arc<DeltaConnector>),
}

/// The running Delta connector's channels.
pub(super) struct DeltaLinks {
    pub connector: Arc<DeltaConnector>,
    pub commands: mpsc::UnboundedReceiver<VenueCommand>,
    pub updates_tx: mpsc::UnboundedSender<VenueUpdate>,
    pub updates: mpsc::UnboundedReceiver<VenueUpdate>,
}

impl DeltaLinks {
    /// Spawns the order executor (its failure shuts the host down: it holds
    /// orders in flight) and the private stream (restarted: it reconciles
    /// over REST whenever it starts); returns the updates they send.
    pub(super) fn spawn(
        self,
        tasks: &Tasks,
        health: &Arc<Health>,
        metrics: &Arc<Metrics>,
        cancel: &CancellationToken,
    ) -> mpsc::UnboundedReceiver<VenueUpdate> {
        let DeltaLinks { connector, commands, updates_tx, updates } = self;
        let executor = connector.clone().run_orders(commands, updates_tx.clone(), cancel.clone());
        tasks.spawn_critical("exchange orders", ORDERS_COMPONENT, executor);
        let (health, metrics, cancel) = (health.clone(), metrics.clone(), cancel.clone());
        tasks.spawn_restarting("exchange private stream", ORDERS_COMPONENT, move || {
            connector.clone().run_private(updates_tx.clone(), health.clone(), metrics.clone(), cancel.clone())
        });
        updates
    }
}

/// Connects to Delta, loads warm-up history, and reconciles the store with
/// the exchange before any strategy resumes: stored open and pending orders
/// are looked up by client id, missed fills are applied, and differences
/// (foreign orders or fills, positions that do not add up) are logged.
async fn start_delta(
    config: &Config,
    store: &Store,
    recovered: &crate::store::Recovered,
    activity: &ActivityBus,
) -> Result<(Oms, MarketHub, Vec<ExchangeEvent>, DeltaLinks), HostError> {
    let delta = &config.exchange.delta;
    let connector = Arc::new(DeltaConnector::connect(delta).await?);
    let mut hub = MarketHub::new(Timeframe::minute(), 20_000);
    match connector.history(delta.history_bars).await {
        Ok(candles) => candles.into_iter().for_each(|c| drop(hub.on_bar(c))),
        Err(error) => tracing::warn!("delta: no warm-up history: {error}"),
    }
    let stored_fills = store.reader().recent_fills(10_000)?;
    let startup =
        connector.startup(recovered.orders.values(), &stored_fills).await.map_err(crate::delta::ConnectError::Rest)?;
    let (commands_tx, commands) = mpsc::unbounded_channel();
    let (updates_tx, updates) = mpsc::unbounded_channel();
    let mut oms = Oms::new(Venue::Live(LiveVenue {
        commands: commands_tx,
        currency: connector.currency.clone(),
        balance: startup.balance,
        known_at_start: startup.known_at_start,
    }));
    oms.remember_fills(stored_fills.into_iter().filter_map(|f| f.exchange_id));
    let mut resolved = oms.restore(recovered).map_err(|e| HostError::Recovery(e.to_string()))?;
    for update in startup.updates {
        match oms.apply_venue(update) {
            Ok(events) => resolved.extend(events),
            Err(difference) => publish_difference(activity, &difference),
        }
    }
    let ours = oms.net_positions();
    for (symbol, exchange) in &startup.positions {
        let host = ours.get(symbol).copied().unwrap_or_default();
        if host != *exchange {
            publish_difference(
                activity,
                &format!("position {symbol}: the exchange holds {exchange}, the strategies' fills add up to {host}"),
            );
        }
    }
    tracing::info!(
        currency = %connector.currency,
        balance = %startup.balance,
        reconciled = resolved.len(),
        "delta: reconciled with the store"
    );
    Ok((oms, hub, resolved, DeltaLinks { connector, commands, updates_tx, updates }))
}

/// A dry-run: Delta's market over its public endpoints (history, books,
/// trades, tickers) and the paper exchange's fills against it, with Delta's
/// products (tick, contract size). Nothing private is asked, no order is sent.
async fn start_dry_run(
    config: &Config,
    recovered: &Recovered,
) -> Result<(Oms, MarketHub, Vec<ExchangeEvent>, Arc<DeltaConnector>), HostError> {
    let delta = &config.exchange.delta;
    let connector = Arc::new(DeltaConnector::connect_public(delta).await?);
    tracing::warn!("DRY-RUN on Delta Exchange {:?}: real prices, simulated fills; no order is sent", delta.network);
    let mut paper = config.exchange.paper.clone();
    paper.products = connector
        .products
        .rules()
        .into_iter()
        .map(|p| (p.symbol, crate::config::ProductConfig { tick_size: p.tick_size, lot_size: p.lot_size }))
        .collect();
    let mut oms = Oms::new(Venue::Paper(Box::new(PaperExchange::new(&paper))));
    oms.set_products(paper.product_list());
    let mut hub = MarketHub::new(Timeframe::minute(), 20_000);
    match connector.history(delta.history_bars).await {
        Ok(candles) => candles.into_iter().for_each(|c| drop(hub.on_bar(c))),
        Err(error) => tracing::warn!("delta: no warm-up history: {error}"),
    }
    let resolved = oms.restore(recovered).map_err(|e| HostError::Recovery(e.to_string()))?;
    Ok((oms, hub, resolved, connector))
}

/// The time of the newest activity event: the last moment the previous run's clock recorded.
fn last_activity_time(store: &Store, last_seq: u64) -> Option<TimestampMs> {
    let newest = store.activity_since(last_seq.checked_sub(1)?, 1).ok()?.pop()?;
    chrono::DateTime::parse_from_rfc3339(newest["ts"].as_str()?).ok().map(|t| t.timestamp_millis())
}

/// Where and at which prices (by symbol) a synthetic market resumes.
type Resume = (TimestampMs, BTreeMap<String, f64>);

/// Where a synthetic market resumes after an earlier run on the same data
/// folder: the later of the newest stored candle's close and the newest
/// activity event, at each symbol's newest stored close (symbols without a
/// stored candle start again at their configured price). `None` on a fresh store.
fn synthetic_resume(
    store: &StoreReader,
    config: &crate::config::SyntheticConfig,
    last_activity: Option<TimestampMs>,
) -> Result<Option<Resume>, HostError> {
    let mut prices = BTreeMap::new();
    let mut time = last_activity;
    for symbol in config.start_prices.keys() {
        if let Some((candle, length)) = store.last_candle(symbol)? {
            time = Some(time.map_or(candle.time + length, |t| t.max(candle.time + length)));
            prices.insert(symbol.clone(), candle.close);
        }
    }
    Ok(time.map(|t| (t, prices)))
}

/// The REST client's answers as `exchange.rest`'s activity, and the public
/// stream's freshness rule (its messages, within `exchange.delta.stale_after_ms`).
fn track_delta(health: &Health, connector: &DeltaConnector, config: &Config) {
    use crate::delta::connector::{MARKET_COMPONENT, REST_COMPONENT};
    health.track(REST_COMPONENT, connector.rest.activity());
    health.expect_activity(
        MARKET_COMPONENT,
        crate::health::Freshness {
            pulse: health.pulse(MARKET_COMPONENT),
            after: std::time::Duration::from_millis(config.exchange.delta.stale_after_ms),
            busy: None,
            what: "received no market data",
        },
    );
}
