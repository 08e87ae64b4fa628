//! Backtests with the live runtime: the same strategy implementation and host
//! API, driven synchronously over historical candles with a simulated clock
//! (timers fire on bar time) and the bar fill conventions of [`broker`].
//! Deterministic: the same inputs give the same report, byte for byte.

pub mod broker;
pub mod plot;
pub mod report;
pub mod sweep;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use rust_decimal::Decimal;

use crate::config::SandboxConfig;
use crate::exchange::ExchangeEvent;
use crate::model::{AccountView, Candle, Fill, TimestampMs, decimal_from_f64};
use crate::script::{ScriptOptions, ScriptStrategy};
use crate::strategy::{
    OrderIds, SharedContext, Strategy, StrategyCommand, StrategyContext, StrategyEnv, StrategyError, StrategyEvent,
    StrategyFactory,
};

pub use broker::{Broker, BrokerConfig};
pub use report::{EquityPoint, Report};

/// The fill conventions, as printed in every report.
pub const CONVENTIONS: [&str; 6] = [
    "a market order placed while handling a bar fills at the next bar's open, moved by slippage_bps against the order",
    "a limit order fills on a later bar whose range reaches its price, at the limit price, or at the open if the bar gaps through it",
    "no partial fills: bar volume is not modelled",
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
    #[error("no bars between --from and --to")]
    NoData,
}

/// Everything a run produced.
pub struct BacktestRun {
    /// Metrics.
    pub report: Report,
    /// Every fill.
    pub fills: Vec<Fill>,
    /// Equity after every bar time.
    pub equity: Vec<EquityPoint>,
    /// The strategy's log lines (time, message).
    pub logs: Vec<(TimestampMs, String)>,
}

/// Runs a script over the candles (any number of symbols).
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
    let mut bars: Vec<&Candle> = data
        .iter()
        .flatten()
        .filter(|c| config.from.is_none_or(|f| c.time >= f) && config.to.is_none_or(|t| c.time < t))
        .collect();
    bars.sort_by(|a, b| (a.time, &a.symbol).cmp(&(b.time, &b.symbol)));
    if bars.is_empty() {
        return Err(BacktestError::NoData);
    }
    let account = Arc::new(ArcSwap::from_pointee(AccountView {
        currency: "USD".into(),
        balance: config.broker.cash,
        equity: config.broker.cash,
        ..Default::default()
    }));
    let ctx =
        StrategyContext::new(name, account.clone(), OrderIds::new(name, Arc::new(AtomicU64::new(0))), 5_000).shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    let mut strategy = factory(env).map_err(BacktestError::Strategy)?;
    let meta = strategy.meta();
    let mut sim = Simulation {
        name: name.to_string(),
        ctx,
        account,
        placeholder: Arc::new(AccountView::default()),
        broker: Broker::new(config.broker.clone()),
        logs: Vec::new(),
    };
    let first = bars[0].time;
    sim.handle(strategy.as_mut(), StrategyEvent::Start, first)?;
    let mut equity = Vec::new();
    let mut exposure_bars = 0usize;
    let mut i = 0;
    while i < bars.len() {
        let time = bars[i].time;
        let due = sim.ctx.borrow_mut().timers.take_due(time);
        for timer in due {
            sim.handle(strategy.as_mut(), StrategyEvent::Timer(timer), time)?;
        }
        while i < bars.len() && bars[i].time == time {
            let bar = bars[i];
            let events = sim.broker.on_bar(bar);
            sim.publish_account(!events.is_empty());
            sim.deliver(strategy.as_mut(), events, time)?;
            sim.ctx.borrow_mut().market.push_candle(bar.clone());
            if meta.symbols.is_empty() || meta.symbols.contains(&bar.symbol) {
                sim.handle(strategy.as_mut(), StrategyEvent::Candle(bar.clone()), time)?;
            }
            i += 1;
        }
        if sim.broker.positions.values().any(|p| !p.size.is_zero()) {
            exposure_bars += 1;
        }
        equity.push(EquityPoint { time, equity: sim.broker.equity() });
        on_bar(i);
    }
    // The end: cancel what is open, close what is held at the last close.
    let last = bars[bars.len() - 1].time;
    let mut notes = Vec::new();
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
    let interval = data.iter().filter_map(|s| crate::feed::csv::interval_ms(s)).min().unwrap_or(60_000);
    let report = Report::compute(&report::Inputs {
        strategy: name,
        symbols: data.iter().filter_map(|s| s.first()).map(|c| c.symbol.clone()).collect(),
        bars: bars.len(),
        interval_ms: interval,
        initial_cash: config.broker.cash,
        equity: &equity,
        fills: &sim.broker.fills,
        fees: sim.broker.fees,
        exposure_bars,
        params: &config.params,
        notes,
        elapsed: started.elapsed(),
    });
    Ok(BacktestRun { report, fills: sim.broker.fills, equity, logs: sim.logs })
}

struct Simulation {
    name: String,
    ctx: SharedContext,
    account: Arc<ArcSwap<AccountView>>,
    /// Stands in for the account while [`Simulation::publish_account`] updates it.
    placeholder: Arc<AccountView>,
    broker: Broker,
    logs: Vec<(TimestampMs, String)>,
}

impl Simulation {
    /// Shows the broker's account to the strategy: balance, equity and marks
    /// after every bar; positions and open orders when `orders_changed` (an
    /// order or fill event). Updated in place when the strategy holds no
    /// snapshot, which is always the case between callbacks.
    fn publish_account(&self, orders_changed: bool) {
        let mut view = self.account.swap(self.placeholder.clone());
        let refresh_orders = orders_changed || Arc::get_mut(&mut view).is_none();
        let view_mut = Arc::make_mut(&mut view);
        view_mut.balance = self.broker.cash;
        view_mut.equity = self.broker.equity();
        for (symbol, mark) in self.broker.marks() {
            match view_mut.marks.get_mut(symbol) {
                Some(slot) => *slot = *mark,
                None => {
                    view_mut.marks.insert(symbol.clone(), *mark);
                }
            }
        }
        if refresh_orders {
            let positions = self.broker.positions.iter().map(|(s, p)| (s.clone(), p.clone())).collect();
            view_mut.positions = [(self.name.clone(), positions)].into_iter().collect();
            view_mut.open_orders = self.broker.open.clone();
        }
        self.account.store(view);
    }

    fn deliver(
        &mut self,
        strategy: &mut dyn Strategy,
        events: Vec<ExchangeEvent>,
        time: TimestampMs,
    ) -> Result<(), BacktestError> {
        for event in events {
            let event = match event {
                ExchangeEvent::Fill(fill) => StrategyEvent::Fill(fill),
                ExchangeEvent::Order(order) => StrategyEvent::Order(order),
            };
            self.handle(strategy, event, time)?;
        }
        Ok(())
    }

    /// Runs one callback at simulated `time` and executes what it asked for.
    fn handle(
        &mut self,
        strategy: &mut dyn Strategy,
        event: StrategyEvent,
        time: TimestampMs,
    ) -> Result<(), BacktestError> {
        self.ctx.borrow_mut().now = time;
        let result = strategy.handle(&event);
        let commands = self.ctx.borrow_mut().drain();
        result.map_err(|error| BacktestError::Callback { time, error })?;
        let mut events = Vec::new();
        for command in commands {
            match command {
                StrategyCommand::Place(request) => events.extend(self.broker.submit(request, time)),
                StrategyCommand::Cancel { client_id } => events.extend(self.broker.cancel(&client_id, time)),
                StrategyCommand::CancelAll { symbol } => {
                    let ids: Vec<String> = self
                        .broker
                        .open
                        .iter()
                        .filter(|o| symbol.as_deref().is_none_or(|s| o.request.symbol == s))
                        .map(|o| o.request.client_id.clone())
                        .collect();
                    events.extend(ids.iter().filter_map(|id| self.broker.cancel(id, time)));
                }
                StrategyCommand::Log { message, .. } | StrategyCommand::Notify(message) => {
                    self.logs.push((time, message))
                }
                _ => {}
            }
        }
        if !events.is_empty() {
            self.publish_account(true);
            self.deliver(strategy, events, time)?;
        }
        Ok(())
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
