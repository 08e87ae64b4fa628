//! The engine task: the one place where market data meets orders. It feeds
//! ticks and bars to the market hub and the order manager, routes candles,
//! ticks, order updates and fills to the strategies that want them, executes
//! the strategies' order commands, and publishes orders, fills and positions
//! on the activity bus. Serial by design, so a given feed gives one outcome.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::Oms;
use crate::activity::{ActivityBus, ActivityKind};
use crate::config::ShutdownPolicy;
use crate::control::{Control, KillReport, ShutdownReason};
use crate::data::{MarketHub, TimedCandle};
use crate::exchange::MarketEvent;
use crate::exchange::{ExchangeEvent, VenueUpdate};
use crate::model::{Order, OrderRequest, OrderStatus, Tick, TradingState, TradingStates};
use crate::store::{StoreWriter, WriteOp};
use crate::strategy::live::RuntimeHandle;
use crate::strategy::{LogLevel, OrderIds, StrategyCommand, StrategyEvent};

/// The running strategies by name, as the engine routes to them.
pub type Runtimes = Arc<ArcSwap<HashMap<String, Arc<RuntimeHandle>>>>;

/// Requests to the engine task.
pub enum EngineRequest {
    /// Commands a strategy produced.
    Commands {
        /// Strategy name.
        strategy: String,
        /// Its commands, in order.
        commands: Vec<StrategyCommand>,
    },
    /// Refuse every new order from now on.
    CloseGate(oneshot::Sender<()>),
    /// Apply each strategy's shutdown policy.
    ApplyPolicies(Vec<(String, ShutdownPolicy)>, oneshot::Sender<()>),
    /// Set a trading state (stored before the answer).
    SetTrading {
        /// A strategy, or none for the account.
        strategy: Option<String>,
        /// The new state.
        state: TradingState,
        /// The states now in force.
        reply: oneshot::Sender<TradingStates>,
    },
    /// Replace the risk limits (stored before the answer).
    SetLimits {
        /// The new limits.
        limits: Box<crate::risk::Limits>,
        /// Answered once stored.
        reply: oneshot::Sender<()>,
    },
    /// The symbols a strategy declares (at its start and every reload).
    Declare {
        /// Strategy.
        strategy: String,
        /// Its symbols.
        symbols: Vec<String>,
    },
    /// The kill switch.
    Kill {
        /// Also close every position.
        flatten: bool,
        /// What it did.
        reply: oneshot::Sender<KillReport>,
    },
}

/// A strategy's checked commands: intents to store, then steps to run.
struct Batch {
    strategy: String,
    rejected: Vec<ExchangeEvent>,
    intents: Vec<Order>,
    steps: Vec<Step>,
    committed: oneshot::Receiver<Result<(), Arc<crate::store::StoreError>>>,
}

impl Batch {
    /// Waits until the batch's intents are committed (at once when it has none).
    async fn committed(&mut self) -> Result<(), Arc<crate::store::StoreError>> {
        (&mut self.committed).await.unwrap_or(Err(Arc::new(crate::store::StoreError::WriterGone)))
    }
}

/// One step of a strategy's command batch, after its intents are stored.
enum Step {
    Send(OrderRequest),
    Cancel(String),
    CancelAll(Option<String>),
}

/// The engine loop's health component.
pub const ENGINE_COMPONENT: &str = "engine";
/// The market feed's health component (stamped as its events reach the engine).
pub const FEED_COMPONENT: &str = "feed";
/// The longest the engine loop waits between two turns when nothing happens.
pub const IDLE_TURN: std::time::Duration = std::time::Duration::from_secs(1);

/// What the engine owns.
pub struct Engine {
    /// Order manager (owns the paper exchange).
    pub oms: Oms,
    /// Market hub (shared with strategies' history loaders).
    pub hub: Arc<Mutex<MarketHub>>,
    /// Strategies to route to.
    pub runtimes: Runtimes,
    /// Activity bus.
    pub activity: ActivityBus,
    /// Durable writes.
    pub store: StoreWriter,
    /// Where a fatal store failure is reported.
    pub control: mpsc::UnboundedSender<Control>,
    /// Shared order id counter (for flatten orders).
    pub id_counter: Arc<std::sync::atomic::AtomicU64>,
    /// Order and fill counters.
    pub metrics: Arc<crate::health::Metrics>,
    /// Where the engine loop's turns (`engine`) and the market events that
    /// reach it (`feed`) are stamped.
    pub health: Arc<crate::health::Health>,
    /// How prices, sizes and money are shown in activity and logs.
    pub shown: crate::model::Shown,
    /// Reports of a live venue (none for paper).
    pub venue_updates: Option<mpsc::UnboundedReceiver<VenueUpdate>>,
    /// Send orders as soon as their intents are committed, while the engine
    /// keeps handling events (live venues; the paper exchange stays strictly
    /// sequential so its fills stay deterministic).
    pub pipeline: bool,
    /// When the protections' state was last stored (clock time).
    pub protections_saved: i64,
    /// Order outcomes found at start (while the host was down): delivered to
    /// their strategies with the first market event, once they run. (Fills
    /// found at start reach them through the fill replay of their saved state.)
    pub startup_events: Vec<ExchangeEvent>,
}

impl Engine {
    /// Runs until the request channel closes or `cancel` fires.
    pub async fn run(
        mut self,
        mut requests: mpsc::Receiver<EngineRequest>,
        mut feed: mpsc::Receiver<MarketEvent>,
        cancel: CancellationToken,
    ) {
        let mut feed_open = true;
        let mut venue = self.venue_updates.take();
        self.oms.hold_view();
        // Live venue: batches whose intents are committing, sent in order as their commits land.
        let mut pending: VecDeque<Batch> = VecDeque::new();
        let (turns, market) = (self.health.pulse(ENGINE_COMPONENT), self.health.pulse(FEED_COMPONENT));
        // Turns at least this often when idle, so a silent engine means a stuck one.
        let mut idle = tokio::time::interval(IDLE_TURN);
        idle.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            turns.beat();
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break,
                _ = idle.tick() => {}
                committed = async { pending.front_mut().expect("checked").committed().await }, if !pending.is_empty() => {
                    let batch = pending.pop_front().expect("checked");
                    self.finish(batch, committed).await;
                }
                update = async { venue.as_mut()?.recv().await }, if venue.is_some() => match update {
                    Some(update) => self.handle_venue(update).await,
                    None => venue = None,
                },
                request = requests.recv() => match request {
                    Some(EngineRequest::Commands { strategy, commands }) if self.pipeline => {
                        let batch = self.prepare_batch(&strategy, commands);
                        if batch.intents.is_empty() && pending.is_empty() {
                            self.finish(batch, Ok(())).await;
                        } else {
                            pending.push_back(self.commit_intents(batch));
                        }
                    }
                    Some(request) => {
                        if matches!(request, EngineRequest::ApplyPolicies(..) | EngineRequest::Kill { .. }) {
                            // Policies and the kill switch act on every order sent so far: send the queued ones first.
                            while let Some(mut batch) = pending.pop_front() {
                                let committed = batch.committed().await;
                                self.finish(batch, committed).await;
                            }
                        }
                        self.handle_request(request).await
                    }
                    None => break,
                },
                event = feed.recv(), if feed_open => match event {
                    Some(event) => {
                        market.beat();
                        self.handle_feed(event).await
                    }
                    None => {
                        feed_open = false;
                        // A replay that reached its end: no more market events are due.
                        self.health.expect_nothing(FEED_COMPONENT);
                    }
                },
            }
            // Whatever changed and needed storing is stored by now.
            self.oms.release_view();
        }
    }

    /// Applies a live venue's report: events are stored, then reported;
    /// anything that matches no known order is logged as a difference.
    async fn handle_venue(&mut self, update: VenueUpdate) {
        match self.oms.apply_venue(update) {
            Ok(events) => self.persist_and_dispatch(events).await,
            Err(difference) => publish_difference(&self.activity, &difference),
        }
    }

    async fn handle_request(&mut self, request: EngineRequest) {
        match request {
            EngineRequest::Commands { strategy, commands } => self.execute(&strategy, commands).await,
            EngineRequest::CloseGate(reply) => {
                self.oms.close_gate();
                let _ = reply.send(());
            }
            EngineRequest::SetTrading { strategy, state, reply } => {
                let trading = self.set_trading(strategy.as_deref(), state).await;
                let _ = reply.send(trading);
            }
            EngineRequest::SetLimits { limits, reply } => {
                self.set_limits(*limits).await;
                let _ = reply.send(());
            }
            EngineRequest::Declare { strategy, symbols } => self.oms.declare_symbols(&strategy, symbols),
            EngineRequest::Kill { flatten, reply } => {
                let report = self.kill(flatten).await;
                let _ = reply.send(report);
            }
            EngineRequest::ApplyPolicies(policies, reply) => {
                // One cancel per symbol where the venue can, for all of them at once.
                let cancelling = policies.iter().filter(|(_, p)| *p != ShutdownPolicy::Leave);
                let cancelling: BTreeSet<String> = cancelling.map(|(s, _)| s.clone()).collect();
                let cancels = self.oms.cancel_strategies(&cancelling);
                if !cancels.is_empty() {
                    tracing::info!(strategies = cancelling.len(), events = cancels.len(), "shutdown: orders cancelled");
                }
                self.persist_and_dispatch(cancels).await;
                for (strategy, policy) in policies {
                    let mut commands = Vec::new();
                    if policy == ShutdownPolicy::Flatten {
                        let ids = OrderIds::new(&strategy, self.id_counter.clone());
                        let orders = self.oms.flatten_orders(&strategy, &mut || ids.next_id());
                        if let Err(error) = self.record_intents(&orders).await {
                            self.fatal(format!("cannot store order intents: {error}"));
                            continue;
                        }
                        commands.extend(orders.into_iter().map(|o| Step::Send(o.request)));
                    }
                    let events = self.run_steps(&strategy, commands);
                    if !events.is_empty() {
                        tracing::info!(strategy = %strategy, policy = ?policy, events = events.len(), "shutdown policy applied");
                    }
                    self.persist_and_dispatch(events).await;
                }
                let _ = reply.send(());
            }
        }
    }

    /// Lets the protections look at the account: what they trigger or lift
    /// is stored, then logged and published; what they watch (baselines,
    /// peaks) is stored at least once a minute of clock time.
    async fn watch_protections(&mut self) {
        if !self.oms.protects() {
            return;
        }
        // The protections watch the account as it is now (marks included).
        self.oms.release_view();
        let events = self.oms.watch_protections();
        let now = self.oms.now();
        if events.is_empty() {
            if now - self.protections_saved >= 60_000 {
                self.protections_saved = now;
                self.store.submit(self.oms.risk_state_ops(), None);
            }
            return;
        }
        self.protections_saved = now;
        if let Err(error) = self.store.commit(self.oms.risk_state_ops()).await {
            self.fatal(format!("cannot store the protections' state: {error}"));
            return;
        }
        for event in events {
            let scope = (event.scope != "account").then_some(event.scope.as_str());
            tracing::warn!(scope = %event.scope, protection = event.protection, state = event.state.as_str(), "protection {}: {}", event.event, event.detail);
            self.activity.publish(ActivityKind::Risk, scope, json!({ "event": "protection", "protection": event }));
        }
    }

    /// Sets a trading state, stores it, then publishes it.
    async fn set_trading(&mut self, strategy: Option<&str>, state: TradingState) -> TradingStates {
        let trading = self.oms.set_trading(strategy, state);
        if let Err(error) = self.store.commit(self.oms.risk_state_ops()).await {
            self.fatal(format!("cannot store the trading state: {error}"));
        }
        let scope = strategy.map_or("account".to_string(), |s| format!("strategy {s}"));
        tracing::warn!(scope = %scope, state = state.as_str(), "trading state set");
        self.activity.publish(
            ActivityKind::Risk,
            strategy,
            json!({ "event": "trading_state", "scope": scope, "state": state }),
        );
        trading
    }

    /// Replaces the risk limits, stores them, then publishes the change.
    async fn set_limits(&mut self, limits: crate::risk::Limits) {
        let json = serde_json::to_value(&limits).unwrap_or_default();
        self.oms.set_risk(crate::risk::RiskGate::from_limits(limits));
        if let Err(error) = self.store.commit(vec![WriteOp::RiskLimits(json.clone())]).await {
            self.fatal(format!("cannot store the risk limits: {error}"));
        }
        tracing::warn!("risk limits replaced through the API");
        self.activity.publish(ActivityKind::Risk, None, json!({ "event": "limits", "limits": json }));
    }

    /// The kill switch: halt the account, cancel every open order, and with
    /// `flatten` close every position with reduce-only market orders.
    async fn kill(&mut self, flatten: bool) -> KillReport {
        let trading = self.set_trading(None, TradingState::Halted).await;
        let cancelled = self.oms.open_orders().filter(|o| o.status.is_open()).count();
        let mut events = self.oms.cancel_everything();
        let mut flatten_orders = 0;
        if flatten {
            for strategy in self.oms.strategies_with_positions() {
                let ids = OrderIds::new(&strategy, self.id_counter.clone());
                let orders = self.oms.flatten_orders(&strategy, &mut || ids.next_id());
                if let Err(error) = self.record_intents(&orders).await {
                    self.fatal(format!("cannot store order intents: {error}"));
                    continue;
                }
                flatten_orders += orders.len();
                let steps = orders.into_iter().map(|o| Step::Send(o.request)).collect();
                events.extend(self.run_steps(&strategy, steps));
            }
        }
        self.persist_and_dispatch(events).await;
        tracing::warn!(cancelled, flatten_orders, "kill switch: account halted");
        self.activity.publish(
            ActivityKind::Risk,
            None,
            json!({ "event": "kill", "flatten": flatten, "cancelled": cancelled, "flatten_orders": flatten_orders }),
        );
        KillReport { trading, cancelled, flatten_orders }
    }

    /// Executes a strategy's commands in order. Order intents of the whole
    /// batch are stored in one commit before any of them is sent.
    async fn execute(&mut self, strategy: &str, commands: Vec<StrategyCommand>) {
        let batch = self.prepare_batch(strategy, commands);
        let mut batch = self.commit_intents(batch);
        let committed = batch.committed().await;
        self.finish(batch, committed).await;
    }

    /// Checks a strategy's commands: orders become intents (or rejections), cancels steps.
    fn prepare_batch(&mut self, strategy: &str, commands: Vec<StrategyCommand>) -> Batch {
        let (done, committed) = oneshot::channel();
        let mut batch = Batch {
            strategy: strategy.to_string(),
            rejected: Vec::new(),
            intents: Vec::new(),
            steps: Vec::new(),
            committed,
        };
        let _ = done.send(Ok(()));
        for command in commands {
            match command {
                StrategyCommand::Place(request) => {
                    let order = self.oms.prepare(request);
                    if order.status == OrderStatus::Pending {
                        batch.steps.push(Step::Send(order.request.clone()));
                        batch.intents.push(order);
                    } else {
                        batch.rejected.push(ExchangeEvent::Order(order));
                    }
                }
                StrategyCommand::Cancel { client_id } => batch.steps.push(Step::Cancel(client_id)),
                StrategyCommand::CancelAll { symbol } => batch.steps.push(Step::CancelAll(symbol)),
                _ => {}
            }
        }
        for limit in self.oms.take_refusals() {
            self.metrics.risk_rejection(limit);
        }
        batch
    }

    /// Starts committing a batch's intents without waiting for the commit.
    fn commit_intents(&self, mut batch: Batch) -> Batch {
        if !batch.intents.is_empty() {
            let (done, committed) = oneshot::channel();
            self.store.submit(
                batch.intents.iter().cloned().map(WriteOp::Order).collect(),
                Some(Box::new(move |result| drop(done.send(result)))),
            );
            batch.committed = committed;
        }
        batch
    }

    /// Runs a batch once its intents are committed (or reports why they were not sent).
    async fn finish(&mut self, batch: Batch, committed: Result<(), Arc<crate::store::StoreError>>) {
        let Batch { strategy, mut rejected, intents, mut steps, .. } = batch;
        if let Err(error) = committed {
            self.fatal(format!("cannot store order intents: {error}"));
            let reason = "the order could not be recorded in the store, so it was not sent";
            rejected.extend(self.oms.reject_unsent(intents, reason));
            steps.retain(|s| !matches!(s, Step::Send(_)));
        }
        rejected.extend(self.run_steps(&strategy, steps));
        self.persist_and_dispatch(rejected).await;
    }

    /// Stores order intents and waits for the commit.
    async fn record_intents(&mut self, intents: &[Order]) -> Result<(), Arc<crate::store::StoreError>> {
        if intents.is_empty() {
            return Ok(());
        }
        self.store.commit(intents.iter().cloned().map(WriteOp::Order).collect()).await
    }

    fn run_steps(&mut self, strategy: &str, steps: Vec<Step>) -> Vec<ExchangeEvent> {
        let mut events = Vec::new();
        // Consecutive sends go together, so a bracket's legs reach the venue with their entry.
        let mut sends = Vec::new();
        for step in steps {
            if !matches!(step, Step::Send(_)) {
                events.extend(self.oms.send_all(std::mem::take(&mut sends)));
            }
            match step {
                Step::Send(request) => {
                    tracing::debug!(strategy = %strategy, order = %request.client_id, "order sent");
                    sends.push(request);
                }
                Step::Cancel(client_id) => match self.oms.cancel(strategy, &client_id) {
                    Ok(cancelled) => events.extend(cancelled),
                    Err(error) => {
                        publish_log(&self.activity, strategy, LogLevel::Warn, &format!("exchange::cancel: {error}"))
                    }
                },
                Step::CancelAll(symbol) => events.extend(self.oms.cancel_all(strategy, symbol.as_deref())),
            }
        }
        events.extend(self.oms.send_all(sends));
        events
    }

    /// Commits the events' effects, then (only then) tells anyone about them.
    async fn persist_and_dispatch(&mut self, events: Vec<ExchangeEvent>) {
        if events.is_empty() {
            return;
        }
        match self.store.commit(self.oms.write_ops(&events)).await {
            Ok(()) => {
                // Stored: now the account shows it, before strategies hear of it.
                self.oms.release_view();
                self.dispatch(events)
            }
            Err(error) => self.fatal(format!("cannot store order and fill events (they were not reported): {error}")),
        }
    }

    fn fatal(&self, message: String) {
        tracing::error!("{message}");
        let _ = self.control.send(Control::Shutdown(ShutdownReason::Fatal(message)));
    }

    async fn handle_feed(&mut self, event: MarketEvent) {
        if !self.startup_events.is_empty() {
            let runtimes = self.runtimes.load();
            for event in std::mem::take(&mut self.startup_events) {
                if let ExchangeEvent::Order(order) = event
                    && let Some(runtime) = runtimes.get(&order.request.strategy)
                {
                    runtime.send_event(StrategyEvent::Order(order));
                }
            }
        }
        let (candles, tick) = match event {
            MarketEvent::Tick(tick) => (self.hub.lock().unwrap_or_else(|e| e.into_inner()).on_tick(&tick), Some(tick)),
            MarketEvent::Bar { bar, close } => {
                (self.hub.lock().unwrap_or_else(|e| e.into_inner()).on_bar(bar), Some(close))
            }
            MarketEvent::PolledBar(bar) => {
                (self.hub.lock().unwrap_or_else(|e| e.into_inner()).on_polled_bar(bar), None)
            }
            MarketEvent::Mark { symbol, price } => {
                self.oms.set_mark(&symbol, price);
                return;
            }
            MarketEvent::Stale { symbol, stale } => {
                self.oms.set_stale(&symbol, stale);
                return;
            }
            MarketEvent::Finished => {
                self.activity.publish(ActivityKind::System, None, json!({ "event": "feed_finished" }));
                tracing::info!("market feed finished");
                return;
            }
        };
        if let Some(tick) = &tick {
            let events = self.oms.on_tick(tick);
            self.persist_and_dispatch(events).await;
            self.watch_protections().await;
        }
        if !candles.is_empty() {
            // Cached for warm-up and backtests; not awaited (nothing waits on a candle).
            let ops = candles
                .iter()
                .map(|c| WriteOp::Candle { timeframe: c.timeframe.to_string(), candle: c.candle.clone() })
                .collect();
            self.store.submit(ops, None);
        }
        self.route_market(candles, tick);
    }

    fn route_market(&self, candles: Vec<TimedCandle>, tick: Option<Tick>) {
        let runtimes = self.runtimes.load();
        for runtime in runtimes.values() {
            for candle in &candles {
                if let Some(event) = runtime.candle_event(candle) {
                    runtime.send_event(event);
                }
            }
            if let Some(tick) = tick.as_ref().filter(|t| runtime.wants(&t.symbol, None)) {
                runtime.send_event(StrategyEvent::Tick(tick.clone()));
            }
        }
    }

    /// Publishes order and fill events and delivers them to their strategies.
    fn dispatch(&self, events: Vec<ExchangeEvent>) {
        if events.is_empty() {
            return;
        }
        let runtimes = self.runtimes.load();
        for event in events {
            match event {
                ExchangeEvent::Fill(fill) => {
                    self.metrics.fills.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let strategy = fill.strategy.clone();
                    let shown = self.shown.fill(&fill);
                    self.activity.publish(ActivityKind::Fill, Some(&strategy), json!(shown));
                    let position = self.shown.position(&self.oms.position(&strategy, &fill.symbol));
                    self.activity.publish(ActivityKind::Position, Some(&strategy), json!(position));
                    tracing::info!(strategy = %strategy, id = fill.id, order = %fill.order_id, side = %fill.side, size = %shown.size, price = %shown.price, fee = %shown.fee, "fill");
                    if let Some(runtime) = runtimes.get(&strategy) {
                        runtime.send_event(StrategyEvent::Fill(fill));
                    }
                }
                ExchangeEvent::Order(order) => {
                    self.metrics.order(order.status.as_str());
                    let strategy = order.request.strategy.clone();
                    self.activity.publish(ActivityKind::Order, Some(&strategy), json!(self.shown.order(&order)));
                    // Order churn (posts, cancels, a post-only quote that would cross) is
                    // routine for a market maker: debug. Other rejections need a look: warn.
                    let reason = order.reason.as_deref().unwrap_or_default();
                    if order.status == crate::model::OrderStatus::Rejected && !reason.contains("post-only") {
                        tracing::warn!(strategy = %strategy, order = %order.request.client_id, "order rejected: {reason}");
                    } else {
                        tracing::debug!(strategy = %strategy, order = %order.request.client_id, status = ?order.status, reason, "order");
                    }
                    if let Some(runtime) = runtimes.get(&strategy) {
                        runtime.send_event(StrategyEvent::Order(order));
                    }
                }
            }
        }
    }
}

/// Writes a strategy's log line to tracing and the activity bus.
pub fn publish_log(activity: &ActivityBus, strategy: &str, level: LogLevel, message: &str) {
    match level {
        LogLevel::Debug => tracing::debug!(target: "strategy", strategy = %strategy, "{message}"),
        LogLevel::Info => tracing::info!(target: "strategy", strategy = %strategy, "{message}"),
        LogLevel::Warn => tracing::warn!(target: "strategy", strategy = %strategy, "{message}"),
        LogLevel::Error => tracing::error!(target: "strategy", strategy = %strategy, "{message}"),
    }
    activity.publish(ActivityKind::Log, Some(strategy), json!({ "level": level, "message": message }));
}

/// Logs and publishes something the exchange knows that the host did not expect.
pub fn publish_difference(activity: &ActivityBus, detail: &str) {
    tracing::warn!("exchange difference: {detail}");
    activity.publish(ActivityKind::System, None, json!({ "event": "exchange_difference", "detail": detail }));
}
