//! Backtests with the live runtime: the same strategy implementation and host
//! API, driven synchronously over historical candles with a simulated clock
//! (timers fire on bar time) and the bar fill conventions of [`broker`].
//! Deterministic: the same inputs give the same report, byte for byte.

pub mod broker;
pub mod chart_data;
pub mod html;
pub mod plot;
pub mod report;
pub mod sweep;
pub mod timeline;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use rust_decimal::Decimal;

use crate::config::SandboxConfig;
use crate::exchange::ExchangeEvent;
use crate::model::{AccountView, Candle, Fill, Order, OrderRequest, OrderStatus, Tick, TimestampMs, decimal_from_f64};
use crate::script::{ScriptOptions, ScriptStrategy};
use crate::strategy::{
    OrderIds, SharedContext, Strategy, StrategyCommand, StrategyContext, StrategyEnv, StrategyError, StrategyEvent,
    StrategyFactory,
};

pub use broker::{Broker, BrokerConfig};
pub use report::{EquityPoint, Report};
pub use timeline::{Step, Timeline, TimelineError};

/// The fill conventions, as printed in every report.
pub const CONVENTIONS: [&str; 11] = [
    "bars are candles of the strategy's timeframe, aggregated from the data as the live host aggregates them; on_candle fires once per closed candle, at its close time",
    "each bar drives four ticks (on_tick, with bid = ask = last): the open at the bar's start, then low then high if the bar closed at or above its open (high then low if below) at 1/3 and 2/3 of the bar, then the close at its end; each tick carries a quarter of the bar's volume",
    "timers fire at the start and at the close of each bar",
    "a market order fills at the next tick's price (an order placed in on_candle: the next bar's open), moved by slippage_bps against the order",
    "a limit order fills when the price path after its placement reaches its price, at the limit price, or at the open if a bar opens through it",
    "a stop order fires when the price path reaches its trigger and fills as a taker at the trigger price (moved by slippage_bps), or at the open if a bar opens through it; a stop-limit then works as a limit order from that price; a trailing stop's trigger follows each tick of the path; a stop-loss and a take-profit inside one bar fire in the order the path reaches them (the low first in a rising bar, the high first in a falling one)",
    "no partial fills: bar volume is not modelled",
    "an order that would take exposure past equity × leverage (exchange.paper.leverage) is rejected, as on the paper exchange",
    "fees on every fill: taker_fee_bps for market orders, maker_fee_bps for limit orders",
    "positions are marked to market at every close; equity = cash + unrealised PnL",
    "orders still open at the end are cancelled; an open position is closed at the last close as a taker",
];

/// What a backtest runs on.
#[derive(Debug, Clone)]
pub struct BacktestConfig {
    /// Broker settings.
    pub broker: BrokerConfig,
    /// Only bars at or after this time.
    pub from: Option<TimestampMs>,
    /// Only bars before this time.
    pub to: Option<TimestampMs>,
    /// Overrides of the script's `config().params`.
    pub params: BTreeMap<String, serde_json::Value>,
    /// Script sandbox limits.
    pub sandbox: SandboxConfig,
    /// Pre-trade limits, as live (`[risk]` and the strategy's override).
    pub risk: crate::risk::RiskGate,
    /// The models `ml::` calls, and where `ml::record` rows go (`--features-out`).
    pub ml: crate::script::ml::MlOptions,
}

/// Why a backtest stopped.
#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    /// The strategy could not be built (compile error, bad config()).
    #[error("{0}")]
    Strategy(StrategyError),
    /// A callback failed while handling the bar at `time`.
    #[error("at bar {}: {error}", chrono::DateTime::from_timestamp_millis(*time).map_or(time.to_string(), |t| t.to_rfc3339()))]
    Callback {
        /// Bar time.
        time: TimestampMs,
        /// The error.
        error: StrategyError,
    },
    /// No bars to run on.
    #[error("the data holds no complete candle of the strategy's timeframe (within --from and --to, if given)")]
    NoData,
    /// The data does not fit the strategy (symbols, timeframe).
    #[error(transparent)]
    Data(#[from] TimelineError),
}

/// Everything a run produced.
pub struct BacktestRun {
    /// Metrics.
    pub report: Report,
    /// Every fill.
    pub fills: Vec<Fill>,
    /// Equity after every bar time.
    pub equity: Vec<EquityPoint>,
    /// The strategy's log lines (time, message), the first [`LOG_LINES_KEPT`].
    pub logs: Vec<(TimestampMs, String)>,
    /// Log lines written after the first [`LOG_LINES_KEPT`] (not kept).
    pub logs_omitted: u64,
    /// What the strategy plotted with `chart::plot`, every bar.
    pub plots: Vec<crate::strategy::plots::PlotSeries>,
    /// Why each order was placed, by client id (`market`, `limit`, `stop loss`,
    /// `take profit`, `trailing stop`): a trade's exit reason.
    pub order_kinds: HashMap<String, &'static str>,
    /// What the strategy declared (symbols, timeframe).
    pub meta: crate::strategy::StrategyMeta,
}

impl BacktestRun {
    /// The bars of the strategy's timeframe the run went through, per symbol
    /// (made again from `data` and `config`, as the run made them).
    pub fn bars(&self, data: &[Vec<Candle>], config: &BacktestConfig) -> Vec<Vec<Candle>> {
        let meta = crate::strategy::StrategyMeta { timeframes: Vec::new(), ..self.meta.clone() };
        let Ok(timeline) = timeline::build(data, &meta, config.from, config.to) else { return Vec::new() };
        let mut by_symbol: BTreeMap<&str, Vec<Candle>> = BTreeMap::new();
        for candle in timeline.own() {
            by_symbol.entry(candle.symbol.as_str()).or_default().push(candle.clone());
        }
        by_symbol.into_values().collect()
    }
}

/// What an order is, as a trade's exit reason.
fn order_kind(request: &OrderRequest) -> &'static str {
    match (&request.stop, request.kind) {
        (Some(stop), _) if stop.trail.is_some() || stop.trail_pct.is_some() => "trailing stop",
        (Some(stop), _) if stop.kind == crate::model::StopKind::TakeProfit => "take profit",
        (Some(_), _) => "stop loss",
        (None, crate::model::OrderKind::Limit) => "limit",
        (None, _) => "market",
    }
}

/// Log lines a backtest keeps for its report (each at most
/// `sandbox.max_log_line_bytes`); later ones are counted, not kept.
pub const LOG_LINES_KEPT: usize = 100_000;

/// Runs a script over the candles (any number of symbols): the candles are
/// aggregated to the strategy's timeframe (and to every other timeframe it
/// reads) first, so the data may be finer than the strategy's timeframe.
pub fn run_script(
    file: &str,
    source: &str,
    data: &[Vec<Candle>],
    config: &BacktestConfig,
    on_bar: &mut dyn FnMut(usize),
) -> Result<BacktestRun, BacktestError> {
    let options = ScriptOptions {
        limits: config.sandbox.clone(),
        param_overrides: config.params.clone(),
        default_symbols: data.iter().filter_map(|s| s.first()).map(|c| c.symbol.clone()).collect(),
        panicking_function: false,
        ml: config.ml.clone(),
    };
    let (file, source) = (file.to_string(), source.to_string());
    let name = std::path::Path::new(&file).file_stem().and_then(|s| s.to_str()).unwrap_or("strategy").to_string();
    let factory: StrategyFactory =
        Box::new(move |env| ScriptStrategy::new(&file, &source, options, env).map(|s| Box::new(s) as _));
    run(&name, factory, data, config, on_bar)
}

/// Runs any strategy implementation over the candles.
pub fn run(
    name: &str,
    factory: StrategyFactory,
    data: &[Vec<Candle>],
    config: &BacktestConfig,
    on_bar: &mut dyn FnMut(usize),
) -> Result<BacktestRun, BacktestError> {
    let started = std::time::Instant::now();
    let account = Arc::new(ArcSwap::from_pointee(AccountView {
        currency: "USD".into(),
        balance: config.broker.cash,
        equity: config.broker.cash,
        risk_limits: Arc::new(serde_json::to_value(config.risk.limits()).unwrap_or_default()),
        ..Default::default()
    }));
    let mut ctx = StrategyContext::new(name, account.clone(), OrderIds::new(name, Arc::new(AtomicU64::new(0))), 5_000);
    ctx.mode = crate::model::RunMode::Backtest;
    ctx.quotas = crate::strategy::Quotas::on_run_clock(&config.sandbox, Arc::default());
    let ctx = ctx.shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    let mut strategy = factory(env).map_err(BacktestError::Strategy)?;
    let meta = strategy.meta();
    let timeline = timeline::build(data, &meta, config.from, config.to)?;
    let own_bars = timeline.own().count();
    let (Some(first), Some(last_bar)) = (timeline.own().next(), timeline.own().next_back()) else {
        return Err(BacktestError::NoData);
    };
    let (first, last_bar) = (first.time, last_bar.time);
    let tf = meta.timeframe.ms();
    let mut sim = Simulation {
        name: name.to_string(),
        ctx,
        account,
        spare: None,
        snapshots: 0,
        published_snapshot: 0,
        equity: config.broker.cash,
        broker: Broker::new(config.broker.clone()),
        logs: Vec::new(),
        logs_omitted: 0,
        wants_ticks: true,
        rejected: (0, None),
        risk: {
            let mut risk = config.risk.clone();
            risk.declare(name, meta.symbols.clone());
            risk
        },
        risk_rejected: BTreeMap::new(),
        realized: BTreeMap::new(),
        protections: Vec::new(),
        view_stale: false,
        plots: Default::default(),
        order_kinds: HashMap::new(),
    };
    sim.handle(strategy.as_mut(), StrategyEvent::Start, first)?;
    let mut equity = Vec::new();
    let mut exposure_bars = 0usize;
    let mut done = 0usize;
    let steps = &timeline.steps;
    // Candles of other timeframes wait until the clock passes their close.
    let mut others: VecDeque<(TimestampMs, crate::data::Timeframe, &Candle)> = VecDeque::new();
    let mut group: Vec<&Candle> = Vec::new();
    let mut walking: Vec<bool> = Vec::new();
    let mut i = 0;
    while i < steps.len() {
        // One group: every step that closes at the same time; the bars of
        // several symbols move through their ticks side by side.
        let close = steps[i].close;
        group.clear();
        while i < steps.len() && steps[i].close == close {
            let candle = timeline.candle(&steps[i]);
            match steps[i].timeframe {
                Some(timeframe) => others.push_back((close, timeframe, candle)),
                None => group.push(candle),
            }
            i += 1;
        }
        let Some(start) = group.first().map(|bar| bar.time) else { continue };
        sim.fire_timers(strategy.as_mut(), start)?;
        // A bar's path is walked only while something can happen on it (an
        // open order its range can fill or fire, or on_tick); otherwise its
        // close is all that counts.
        walking.clear();
        walking.resize(group.len(), false);
        // Nothing can happen on any bar's path (no open order, no on_tick): skip it.
        let quiet = !sim.wants_ticks && group.iter().all(|bar| !sim.broker.may_act(&bar.symbol, bar.low, bar.high));
        for k in if quiet { 4 } else { 0 }..4 {
            for (b, bar) in group.iter().enumerate() {
                let path = bar_path(bar, tf);
                let (time, price) = path[k];
                sim.push_others(&mut others, time);
                if !walking[b] {
                    if !sim.wants_ticks && !sim.broker.may_act(&bar.symbol, bar.low, bar.high) {
                        continue;
                    }
                    walking[b] = true;
                    if k > 0 {
                        sim.broker.set_mark(&bar.symbol, path[k - 1].1);
                    }
                }
                let events = sim.broker.on_price(&bar.symbol, price, time, k == 0);
                sim.publish_account(!events.is_empty());
                sim.deliver(strategy.as_mut(), events, time)?;
                if sim.wants_ticks {
                    let tick = bar_tick(bar, time, price);
                    sim.ctx.borrow_mut().market.push_tick(tick.clone());
                    if !sim.handle(strategy.as_mut(), StrategyEvent::Tick(tick), time)? {
                        // No on_tick: ticks are not simulated, prices come from closes.
                        sim.wants_ticks = false;
                        sim.ctx.borrow_mut().market.forget_tick(&bar.symbol);
                    }
                }
            }
        }
        sim.push_others(&mut others, close);
        for (bar, walked) in group.iter().zip(&walking) {
            if !walked {
                sim.broker.set_mark(&bar.symbol, bar.close);
            }
        }
        sim.publish_account(false);
        sim.watch_protections(close);
        for bar in &group {
            sim.ctx.borrow_mut().market.push_candle((*bar).clone());
        }
        sim.fire_timers(strategy.as_mut(), close)?;
        for bar in &group {
            sim.handle(strategy.as_mut(), StrategyEvent::Candle((*bar).clone()), close)?;
        }
        done += group.len();
        if sim.broker.positions.values().any(|p| !p.size.is_zero()) {
            exposure_bars += 1;
        }
        equity.push(EquityPoint { time: start, equity: sim.equity() });
        on_bar(done);
    }
    // The end: cancel what is open, close what is held at the last close.
    let last = last_bar + tf;
    let mut notes = Vec::new();
    if !timeline.unused.is_empty() {
        notes.push(format!("data for {} is not traded by the strategy and was left out", timeline.unused.join(", ")));
    }
    if let (rejected @ 1.., Some(first)) = &sim.rejected {
        let by_limit: Vec<String> =
            sim.risk_rejected.iter().map(|(limit, n)| format!("{n} by risk limit {limit}")).collect();
        let by_limit = if by_limit.is_empty() { String::new() } else { format!(" ({})", by_limit.join(", ")) };
        notes.push(format!("{rejected} order(s) were rejected{by_limit}; the first: {first}"));
    }
    for (time, event) in &sim.protections {
        let at = chrono::DateTime::from_timestamp_millis(*time).map_or(time.to_string(), |t| t.to_rfc3339());
        notes.push(format!(
            "{at}: protection {} {} for {}: {} ({})",
            event.protection,
            event.event,
            event.scope,
            event.state.as_str(),
            event.detail
        ));
    }
    let open: Vec<String> = sim.broker.open.iter().map(|o| o.request.client_id.clone()).collect();
    if !open.is_empty() {
        notes.push(format!("{} order(s) still open at the end were cancelled", open.len()));
    }
    for id in open {
        sim.broker.cancel(&id, last);
    }
    let symbols: Vec<String> = sim.broker.positions.keys().cloned().collect();
    for (n, symbol) in symbols.iter().enumerate() {
        let Some(price) = sim.broker.marks().get(symbol).copied() else { continue };
        let size = sim.broker.position(symbol).size;
        if sim.broker.close_position(symbol, price, last, name, format!("{name}-end-{n}")).is_some() {
            notes.push(format!("the open position of {size} {symbol} was closed at the last close {price}"));
        }
    }
    if let Some(point) = equity.last_mut() {
        point.equity = sim.broker.equity();
    }
    sim.handle(strategy.as_mut(), StrategyEvent::Stop, last)?;
    let report = Report::compute(&report::Inputs {
        strategy: name,
        symbols: if meta.symbols.is_empty() {
            data.iter().filter_map(|s| s.first()).map(|c| c.symbol.clone()).collect()
        } else {
            meta.symbols.clone()
        },
        bars: own_bars,
        timeframe: meta.timeframe,
        data_interval: timeline.data_interval,
        initial_cash: config.broker.cash,
        equity: &equity,
        fills: &sim.broker.fills,
        fees: sim.broker.fees,
        exposure_bars,
        params: &config.params,
        notes,
        elapsed: started.elapsed(),
    });
    Ok(BacktestRun {
        report,
        fills: sim.broker.fills,
        equity,
        logs: sim.logs,
        logs_omitted: sim.logs_omitted,
        plots: sim.plots.into_series(&sim.name),
        order_kinds: sim.order_kinds,
        meta,
    })
}

/// The prices a bar's path goes through, with their times: the open at the
/// bar's start; then the low and the high — the low first when the bar
/// closed at or above its open (a rising bar most likely dipped first), the
/// high first when it closed below — at a third and two thirds of the bar;
/// then the close at its end.
pub fn bar_path(bar: &Candle, timeframe_ms: i64) -> [(TimestampMs, f64); 4] {
    let (first, second) = if bar.close >= bar.open { (bar.low, bar.high) } else { (bar.high, bar.low) };
    let t = bar.time;
    [(t, bar.open), (t + timeframe_ms / 3, first), (t + timeframe_ms * 2 / 3, second), (t + timeframe_ms, bar.close)]
}

/// The tick a strategy sees at one point of a bar's path: bid, ask and last
/// at the price, a quarter of the bar's volume.
fn bar_tick(bar: &Candle, time: TimestampMs, price: f64) -> Tick {
    let price = self::price(price);
    Tick {
        symbol: bar.symbol.clone(),
        time,
        bid: price,
        ask: price,
        last: price,
        volume: decimal_from_f64(bar.volume / 4.0).unwrap_or_default(),
    }
}

struct Simulation {
    name: String,
    ctx: SharedContext,
    account: Arc<ArcSwap<AccountView>>,
    /// The view published before the current one, with the snapshot of
    /// positions and orders it shows: [`Simulation::publish_account`]
    /// refreshes and publishes it.
    spare: Option<(Arc<AccountView>, u64)>,
    /// Counts the snapshots of positions and orders taken from the broker.
    snapshots: u64,
    /// The snapshot the published view shows.
    published_snapshot: u64,
    /// The equity in the published view.
    equity: Decimal,
    broker: Broker,
    logs: Vec<(TimestampMs, String)>,
    logs_omitted: u64,
    /// False once the strategy showed it has no `on_tick`.
    wants_ticks: bool,
    /// Orders the broker rejected, and the first reason.
    rejected: (usize, Option<String>),
    /// Pre-trade limits.
    risk: crate::risk::RiskGate,
    /// Orders the risk limits refused, by limit.
    risk_rejected: BTreeMap<&'static str, usize>,
    /// Realised PnL by symbol after the last fill (a fill's own is the change).
    realized: BTreeMap<String, rust_decimal::Decimal>,
    /// What the protections triggered or lifted, with the time.
    protections: Vec<(TimestampMs, crate::risk::ProtectionEvent)>,
    /// An order went to the broker since the account view was last published.
    view_stale: bool,
    /// What the strategy plotted.
    plots: crate::strategy::plots::StrategyPlots,
    /// Each placed order's kind, by client id.
    order_kinds: HashMap<String, &'static str>,
}

impl Simulation {
    /// Gives the strategy the candles of other timeframes that closed by `now`.
    fn push_others(&self, others: &mut VecDeque<(TimestampMs, crate::data::Timeframe, &Candle)>, now: TimestampMs) {
        if others.is_empty() {
            return;
        }
        while let Some((_, timeframe, candle)) = others.front().filter(|(close, ..)| *close <= now) {
            self.ctx.borrow_mut().market.push_other(*timeframe, (*candle).clone());
            others.pop_front();
        }
    }

    /// Runs the timers due at `time`.
    fn fire_timers(&mut self, strategy: &mut dyn Strategy, time: TimestampMs) -> Result<(), BacktestError> {
        let due = {
            let mut ctx = self.ctx.borrow_mut();
            if ctx.timers.is_empty() {
                return Ok(()); // the common case, twice a bar
            }
            ctx.timers.take_due(time)
        };
        for timer in due {
            self.handle(strategy, StrategyEvent::Timer(timer), time)?;
        }
        Ok(())
    }

    /// Shows the broker's account to the strategy: balance, equity and marks
    /// after every bar; positions and open orders as of the last order or
    /// fill event (`orders_changed`), or of now when a strategy still holds
    /// the view to reuse.
    fn publish_account(&mut self, orders_changed: bool) {
        self.view_stale &= !orders_changed;
        // The view published before the current one is brought up to date and
        // swapped in: one atomic swap a publish.
        let current = self.published_snapshot;
        let (mut view, snapshot) =
            self.spare.take().unwrap_or_else(|| (Arc::new((**self.account.load()).clone()), current));
        // Copied when a strategy still holds it; then, as on an order event,
        // its positions and orders are read from the broker.
        let refresh = orders_changed || Arc::get_mut(&mut view).is_none();
        let view_mut = Arc::make_mut(&mut view);
        view_mut.balance = self.broker.cash;
        self.equity = self.broker.equity();
        view_mut.equity = self.equity;
        for (symbol, mark) in self.broker.marks() {
            match view_mut.marks.get_mut(symbol) {
                Some(slot) => *slot = *mark,
                None => {
                    view_mut.marks.insert(symbol.clone(), *mark);
                }
            }
        }
        let snapshot = if refresh {
            let positions = self.broker.positions.iter().map(|(s, p)| (s.clone(), p.clone())).collect();
            view_mut.positions = [(self.name.clone(), positions)].into_iter().collect();
            view_mut.open_orders = Arc::new(self.broker.open.clone());
            self.snapshots += 1;
            self.snapshots
        } else if snapshot != current {
            // Behind the published view: the same positions and orders as it
            // shows (a trailing stop's trigger moves without an event, so the
            // broker's may differ until the next order event).
            let published = self.account.load();
            view_mut.positions = published.positions.clone();
            view_mut.open_orders = published.open_orders.clone();
            current
        } else {
            snapshot
        };
        let previous = self.account.swap(view);
        self.spare = Some((previous, std::mem::replace(&mut self.published_snapshot, snapshot)));
    }

    /// The broker's equity, as last published: every change to the broker
    /// is published before the strategy or the equity curve sees it.
    fn equity(&self) -> Decimal {
        debug_assert_eq!(self.equity, self.broker.equity(), "the account view is behind the broker");
        self.equity
    }

    fn deliver(
        &mut self,
        strategy: &mut dyn Strategy,
        events: Vec<ExchangeEvent>,
        time: TimestampMs,
    ) -> Result<(), BacktestError> {
        for event in events {
            let event = match event {
                ExchangeEvent::Fill(fill) => {
                    let realized = self.broker.position(&fill.symbol).realized_pnl;
                    let before = self.realized.insert(fill.symbol.clone(), realized).unwrap_or_default();
                    if realized != before {
                        self.risk.on_exit(&self.name, realized - before - fill.fee, time);
                    }
                    StrategyEvent::Fill(fill)
                }
                ExchangeEvent::Order(order) => {
                    if order.status == OrderStatus::Rejected {
                        self.rejected.0 += 1;
                        self.rejected.1.get_or_insert_with(|| order.reason.clone().unwrap_or_default());
                    }
                    StrategyEvent::Order(order)
                }
            };
            self.handle(strategy, event, time)?;
        }
        Ok(())
    }

    /// Lets the protections look at the account at `time` (the bar clock).
    fn watch_protections(&mut self, time: TimestampMs) {
        if self.risk.protects() {
            let events = self.risk.watch(&self.account.load(), time);
            self.protections.extend(events.into_iter().map(|e| (time, e)));
        }
    }

    /// Checks an order against the risk limits (on the account as it is
    /// after the orders before it), then hands it to the broker.
    fn place(&mut self, request: OrderRequest, time: TimestampMs) -> Vec<ExchangeEvent> {
        if !self.risk.is_open() {
            if self.view_stale {
                self.publish_account(true);
            }
            if let Err(refusal) = self.risk.check(&request, &self.account.load(), time) {
                *self.risk_rejected.entry(refusal.limit).or_default() += 1;
                let mut order = Order::new(request, time);
                order.status = OrderStatus::Rejected;
                order.reason = Some(refusal.to_string());
                return vec![ExchangeEvent::Order(order)];
            }
        }
        self.view_stale = true;
        self.order_kinds.insert(request.client_id.clone(), order_kind(&request));
        self.broker.submit(request, time)
    }

    /// Runs one callback at simulated `time` and executes what it asked for;
    /// false when the strategy has no callback for the event.
    fn handle(
        &mut self,
        strategy: &mut dyn Strategy,
        event: StrategyEvent,
        time: TimestampMs,
    ) -> Result<bool, BacktestError> {
        {
            let mut ctx = self.ctx.borrow_mut();
            ctx.now = time;
            ctx.begin_event(&event);
        }
        let mut result = strategy.handle(&event);
        let quota_failure = self.ctx.borrow_mut().end_callback();
        if let (Some(message), Ok(_)) = (quota_failure, &result) {
            result = Err(crate::strategy::StrategyError::new(format!("{}: {message}", event.callback())));
        }
        let commands = self.ctx.borrow_mut().drain();
        let ran = result.map_err(|error| BacktestError::Callback { time, error })?;
        let mut events = Vec::new();
        for command in commands {
            match command {
                StrategyCommand::Place(request) => events.extend(self.place(request, time)),
                StrategyCommand::Cancel { client_id } => events.extend(self.broker.cancel(&client_id, time)),
                StrategyCommand::CancelAll { symbol } => {
                    let ids: Vec<String> = self
                        .broker
                        .open
                        .iter()
                        .filter(|o| symbol.as_deref().is_none_or(|s| o.request.symbol == s))
                        .map(|o| o.request.client_id.clone())
                        .collect();
                    events.extend(ids.iter().flat_map(|id| self.broker.cancel(id, time)));
                }
                StrategyCommand::Plot { symbol, name, point } => self.plots.record(symbol, name, point),
                StrategyCommand::Log { message, .. } | StrategyCommand::Notify(message) => {
                    if self.logs.len() < LOG_LINES_KEPT {
                        self.logs.push((time, message));
                    } else {
                        self.logs_omitted += 1;
                    }
                }
                _ => {}
            }
        }
        if !events.is_empty() {
            self.publish_account(true);
            self.deliver(strategy, events, time)?;
        }
        Ok(ran)
    }
}

/// Parses `--param key=value` (numbers, booleans, else strings).
pub fn parse_param(text: &str) -> Result<(String, serde_json::Value), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("--param {text:?}: expected key=value"))?;
    if key.is_empty() {
        return Err(format!("--param {text:?}: the key is empty"));
    }
    Ok((key.to_string(), parse_value(value)))
}

/// A command-line value as a script value.
pub fn parse_value(value: &str) -> serde_json::Value {
    if let Ok(i) = value.parse::<i64>() {
        return serde_json::Value::from(i);
    }
    if let Some(f) = value.parse::<f64>().ok().filter(|f| f.is_finite()) {
        return serde_json::Value::from(f);
    }
    match value {
        "true" => serde_json::Value::Bool(true),
        "false" => serde_json::Value::Bool(false),
        other => serde_json::Value::String(other.to_string()),
    }
}

/// A price from a candle as an exact decimal.
pub fn price(value: f64) -> Decimal {
    decimal_from_f64(value).unwrap_or_default()
}
