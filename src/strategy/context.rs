//! What a strategy reads and writes while it handles an event: its own market
//! state and indicator cache, a snapshot of the account, its timers, and the
//! commands it queues. Owned by the strategy's thread; never locked.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use super::{LogLevel, Quotas, StrategyCommand, Timers};
use crate::data::{IndicatorCache, MarketState, Timeframe, series_key};
use crate::model::{AccountView, OrderKind, OrderRequest, Side, TimeInForce, TimestampMs};

/// Client order ids: `<name>-<counter>` in base 36, at most 22 characters
/// (Delta Exchange allows 32). The counter is shared by every strategy and
/// starts each run at a block the store reserved, so ids never repeat for a
/// data dir.
#[derive(Debug, Clone)]
pub struct OrderIds {
    prefix: String,
    counter: Arc<AtomicU64>,
}

impl OrderIds {
    /// Ids for one strategy, drawing numbers from the shared counter.
    pub fn new(strategy: &str, counter: Arc<AtomicU64>) -> Self {
        let name: String = strategy.chars().filter(char::is_ascii_alphanumeric).take(8).collect();
        OrderIds { prefix: format!("{name}-"), counter }
    }

    /// The next id.
    pub fn next_id(&self) -> String {
        let n = self.counter.fetch_add(1, Ordering::Relaxed) + 1;
        format!("{}{}", self.prefix, base36(n))
    }
}

/// Lowercase base-36 digits of `n`.
pub fn base36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = Vec::new();
    loop {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).expect("ascii")
}

/// The strategy's view of the host during one callback.
#[derive(Debug)]
pub struct StrategyContext {
    /// Strategy name.
    pub name: String,
    /// Candle series and last ticks of the strategy's symbols.
    pub market: MarketState,
    /// The strategy's candle timeframe, as scripts see it (`"1m"`).
    pub timeframe: String,
    /// The strategy's candle timeframe.
    pub own_timeframe: Timeframe,
    /// Other timeframes it declared, readable as `SYMBOL@TF` series.
    pub other_timeframes: Vec<Timeframe>,
    /// Incremental indicator states.
    pub indicators: IndicatorCache,
    /// Account snapshot published by the order manager.
    pub account: Arc<ArcSwap<AccountView>>,
    /// The strategy's timers.
    pub timers: Timers,
    /// Current time of the runtime's clock.
    pub now: TimestampMs,
    /// Commands queued by the current callback.
    pub commands: Vec<StrategyCommand>,
    /// What the strategy may make the host keep, and what it used.
    pub quotas: Quotas,
    /// How this run trades (`exchange::mode()`).
    pub mode: crate::model::RunMode,
    /// The candle being handled (symbol, bar start): where `chart::plot` values go.
    plot_bar: Option<(String, TimestampMs)>,
    /// The (symbol, name) series plotted so far (at most `plots::MAX_SERIES`).
    plotted: Vec<(std::sync::Arc<str>, std::sync::Arc<str>)>,
    ids: OrderIds,
}

/// The context shared between a strategy and its host functions on one thread.
pub type SharedContext = Rc<RefCell<StrategyContext>>;

/// The parts of an order a strategy chooses.
#[derive(Debug, Clone)]
pub struct OrderSpec {
    /// Instrument.
    pub symbol: String,
    /// Buy or sell.
    pub side: Side,
    /// Market or limit.
    pub kind: OrderKind,
    /// Size.
    pub size: rust_decimal::Decimal,
    /// Limit price.
    pub price: Option<rust_decimal::Decimal>,
    /// GTC or IOC.
    pub time_in_force: TimeInForce,
    /// Maker only.
    pub post_only: bool,
    /// Reduce only.
    pub reduce_only: bool,
    /// A stop order's trigger.
    pub stop: Option<Box<crate::model::StopTrigger>>,
    /// One-cancels-other group.
    pub oco: Option<String>,
    /// The entry this order waits for.
    pub parent: Option<String>,
}

impl StrategyContext {
    /// A fresh context.
    pub fn new(name: &str, account: Arc<ArcSwap<AccountView>>, ids: OrderIds, candle_capacity: usize) -> Self {
        StrategyContext {
            name: name.to_string(),
            market: MarketState::new(candle_capacity),
            timeframe: String::new(),
            own_timeframe: Timeframe::minute(),
            other_timeframes: Vec::new(),
            indicators: IndicatorCache::default(),
            account,
            timers: Timers::default(),
            now: 0,
            commands: Vec::new(),
            quotas: Quotas::default(),
            mode: crate::model::RunMode::default(),
            plot_bar: None,
            plotted: Default::default(),
            ids,
        }
    }

    /// Notes the event about to be handled: an `on_candle` plots on its candle's bar.
    pub fn begin_event(&mut self, event: &super::StrategyEvent) {
        match (event, &mut self.plot_bar) {
            // The same symbol's next bar, as a rule: its name is not copied again.
            (super::StrategyEvent::Candle(candle), Some((symbol, time))) => {
                symbol.clone_from(&candle.symbol);
                *time = candle.time;
            }
            (super::StrategyEvent::Candle(candle), None) => self.plot_bar = Some((candle.symbol.clone(), candle.time)),
            _ => self.plot_bar = None,
        }
    }

    /// Queues a chart overlay value (`chart::plot`): on the candle being
    /// handled, or on `symbol`'s bar now. At most [`super::plots::MAX_SERIES`] series.
    pub fn plot(&mut self, name: &str, value: f64, symbol: Option<&str>) -> Result<(), String> {
        use super::plots::{MAX_NAME_BYTES, MAX_SERIES, PlotPoint};
        use crate::model::MAX_SYMBOL_BYTES;
        if name.is_empty() || name.len() > MAX_NAME_BYTES {
            return Err(format!("the name must be 1 to {MAX_NAME_BYTES} bytes, got {}", name.len()));
        }
        if !value.is_finite() {
            return Err(format!("`{name}`: the value must be a finite number, got {value}"));
        }
        if let Some(symbol) = symbol.filter(|s| s.len() > MAX_SYMBOL_BYTES) {
            return Err(format!("`{name}`: the symbol must be at most {MAX_SYMBOL_BYTES} bytes, got {}", symbol.len()));
        }
        let (symbol, time) = match (symbol, &self.plot_bar) {
            (Some(symbol), Some((bar_symbol, time))) if symbol == bar_symbol => (symbol, *time),
            (Some(symbol), _) => {
                let length = self.own_timeframe.ms();
                (symbol, self.now - self.now.rem_euclid(length))
            }
            (None, Some((symbol, time))) => (symbol.as_str(), *time),
            (None, None) => {
                return Err(format!("`{name}`: outside on_candle give the symbol: chart::plot(name, value, symbol)"));
            }
        };
        let known = self.plotted.iter().find(|(s, n)| **s == *symbol && **n == *name);
        let (symbol, name) = match known {
            Some((symbol, name)) => (symbol.clone(), name.clone()),
            None if self.plotted.len() >= MAX_SERIES => {
                return Err(format!("`{name}`: a strategy plots at most {MAX_SERIES} series (symbol and name)"));
            }
            None => {
                let key: (std::sync::Arc<str>, std::sync::Arc<str>) = (symbol.into(), name.into());
                self.plotted.push(key.clone());
                key
            }
        };
        self.commands.push(StrategyCommand::Plot { symbol, name, point: PlotPoint { time, value } });
        Ok(())
    }

    /// Wraps it for sharing with host functions.
    pub fn shared(self) -> SharedContext {
        Rc::new(RefCell::new(self))
    }

    /// Queues an order and returns its client id at once (an error when
    /// over the strategy's order quota).
    pub fn place(&mut self, spec: OrderSpec) -> Result<String, String> {
        let client_id = self.next_order_id();
        self.place_as(client_id, spec)
    }

    /// A new client order id, for orders that name each other (a bracket).
    pub fn next_order_id(&self) -> String {
        self.ids.next_id()
    }

    /// Queues an order under a client id from [`Self::next_order_id`].
    pub fn place_as(&mut self, client_id: String, spec: OrderSpec) -> Result<String, String> {
        self.quotas.order(self.quotas.time(self.now))?;
        self.commands.push(StrategyCommand::Place(OrderRequest {
            client_id: client_id.clone(),
            strategy: self.name.clone(),
            symbol: spec.symbol,
            side: spec.side,
            kind: spec.kind,
            size: spec.size,
            price: spec.price,
            time_in_force: spec.time_in_force,
            post_only: spec.post_only,
            reduce_only: spec.reduce_only,
            stop: spec.stop,
            oco: spec.oco,
            parent: spec.parent,
        }));
        Ok(client_id)
    }

    /// Queues a log line, within the log quotas.
    pub fn log(&mut self, level: LogLevel, message: &str) {
        if let Some(message) = self.quotas.log_line(self.quotas.time(self.now), message) {
            self.commands.push(StrategyCommand::Log { level, message });
        }
    }

    /// Queues a notification, within the notification quota.
    pub fn notify(&mut self, message: &str) {
        if let Some(message) = self.quotas.notification(self.quotas.time(self.now), message) {
            self.commands.push(StrategyCommand::Notify(message));
        }
    }

    /// Queues a health value, within the report quotas.
    pub fn report(&mut self, key: &str, value: &str) {
        if let Some((key, value)) = self.quotas.report(self.quotas.time(self.now), key, value) {
            self.commands.push(StrategyCommand::HealthReport { key, value });
        }
    }

    /// Queues a heartbeat (`health::heartbeat`), within the event quota.
    pub fn heartbeat(&mut self) {
        if self.quotas.event(self.quotas.time(self.now)).is_some() {
            self.commands.push(StrategyCommand::Heartbeat);
        }
    }

    /// Declares the strategy degraded (empty reason: recovered), within the report quotas.
    pub fn degraded(&mut self, reason: &str) {
        if let Some(reason) = self.quotas.short_text(self.quotas.time(self.now), reason) {
            self.commands.push(StrategyCommand::Degraded(reason));
        }
    }

    /// Sets a timer (`every`: repeating) due `ms` from now, within the timer quotas.
    pub fn set_timer(&mut self, name: &str, ms: i64, every: bool) -> Result<(), String> {
        self.quotas.timer(name, self.timers.len(), self.timers.contains(name))?;
        if every {
            self.timers.every(name, self.now, ms)
        } else {
            self.timers.after(name, self.now, ms)
        }
        Ok(())
    }

    /// Ends a callback: queues the quota warning that is due, and returns
    /// the quota error when hits count as failures.
    pub fn end_callback(&mut self) -> Option<String> {
        let failure = self.quotas.end_callback();
        if let Some(warning) = self.quotas.warning(self.quotas.time(self.now)) {
            self.commands.push(StrategyCommand::Log { level: LogLevel::Warn, message: warning });
        }
        failure
    }

    /// The market-state key of a series a script names: `SYMBOL` is the
    /// strategy's own timeframe, `SYMBOL@TF` another one, which must be
    /// declared in `timeframes` (`SYMBOL@TF` of its own timeframe is `SYMBOL`).
    pub fn series_key(&self, name: &str) -> Result<String, String> {
        let Some((symbol, tf)) = name.split_once('@') else {
            return Ok(name.to_string());
        };
        let timeframe: Timeframe = tf.parse().map_err(|e| format!("series {name:?}: {e}"))?;
        if timeframe == self.own_timeframe {
            Ok(symbol.to_string())
        } else if self.other_timeframes.contains(&timeframe) {
            Ok(series_key(symbol, timeframe))
        } else {
            Err(format!(
                "series {name:?}: timeframe {timeframe} is not declared; add `timeframes: [\"{timeframe}\"]` to config()"
            ))
        }
    }

    /// Takes the queued commands.
    pub fn drain(&mut self) -> Vec<StrategyCommand> {
        std::mem::take(&mut self.commands)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_fit_delta_limit_and_are_unique() {
        let ids = OrderIds::new("a_very_long_strategy_name", Arc::new(AtomicU64::new(u64::MAX / 2)));
        let a = ids.next_id();
        let b = ids.next_id();
        assert_ne!(a, b);
        assert!(a.len() <= 32, "{a} is {} chars", a.len());
        assert_eq!(base36(35), "z");
    }
}
