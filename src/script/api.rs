//! Host API modules for scripts: `exchange::`, `market::`, `ta::`, `timer::`,
//! `log::`, `health::`, `risk::`, plus `notify()` and `now()`. Functions read the
//! strategy's own snapshots or queue commands; none does I/O or blocks.
//! (`ml::`, which runs models and writes record files, is `script::ml`.)
//! Arguments are checked here so a wrong call names the function and its
//! expected signature.

use rhai::{Array, Dynamic, Engine, EvalAltResult, FLOAT, INT, Map, Module, NativeCallContext, Position};
use rust_decimal::Decimal;

use super::convert;
use crate::data::{BBands, Ema, Highest, IndicatorValue, Lowest, Macd, Rsi, Sma, parse_duration_ms};
use crate::model::{OrderKind, Side, StopKind, StopTrigger, TimeInForce, TriggerOn, decimal_from_f64, decimal_to_f64};
use crate::strategy::{LogLevel, OrderSpec, SharedContext, StrategyCommand, StrategyContext};

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

/// A host function scripts can call.
#[derive(Debug, Clone, Copy)]
pub struct HostFn {
    /// Qualified name, `ta::sma`.
    pub name: &'static str,
    /// The signature shown in errors.
    pub signature: &'static str,
    /// Fewest arguments it takes.
    pub min_args: usize,
    /// Most arguments it takes.
    pub max_args: usize,
}

const fn host(name: &'static str, signature: &'static str, min_args: usize, max_args: usize) -> HostFn {
    HostFn { name, signature, min_args, max_args }
}

/// Every host function with its expected signature and argument counts, for
/// error messages and for `check`.
pub const HOST_FUNCTIONS: &[HostFn] = &[
    host(
        "exchange::market_order",
        "exchange::market_order(symbol: string, side: \"buy\"|\"sell\", size: number [, options: #{reduce_only, stop_loss, take_profit, trail, trail_pct, ...}])",
        3,
        4,
    ),
    host(
        "exchange::limit_order",
        "exchange::limit_order(symbol: string, side: \"buy\"|\"sell\", size: number, price: number [, options: #{post_only, reduce_only, tif: \"gtc\"|\"ioc\", stop_loss, take_profit, ...}])",
        4,
        5,
    ),
    host(
        "exchange::stop_order",
        "exchange::stop_order(symbol: string, side: \"buy\"|\"sell\", size: number, trigger: number [, options: #{limit, reduce_only, trigger_on: \"last\"|\"mark\"}])",
        4,
        5,
    ),
    host(
        "exchange::take_profit",
        "exchange::take_profit(symbol: string, side: \"buy\"|\"sell\", size: number, trigger: number [, options: #{limit, reduce_only, trigger_on: \"last\"|\"mark\"}])",
        4,
        5,
    ),
    host(
        "exchange::trailing_stop",
        "exchange::trailing_stop(symbol: string, side: \"buy\"|\"sell\", size: number, options: #{trail | trail_pct, limit, reduce_only, trigger_on: \"last\"|\"mark\"})",
        4,
        4,
    ),
    host(
        "exchange::bracket",
        "exchange::bracket(symbol: string, options: #{stop_loss | trail | trail_pct, take_profit, stop_loss_limit, take_profit_limit, trigger_on})",
        2,
        2,
    ),
    host("exchange::cancel", "exchange::cancel(order_id: string)", 1, 1),
    host("exchange::cancel_all", "exchange::cancel_all([symbol: string])", 0, 1),
    host("exchange::position", "exchange::position(symbol: string)", 1, 1),
    host("exchange::open_orders", "exchange::open_orders([symbol: string])", 0, 1),
    host("exchange::balance", "exchange::balance([asset: string])", 0, 1),
    host("exchange::equity", "exchange::equity()", 0, 0),
    host("exchange::mode", "exchange::mode() -> \"backtest\"|\"paper\"|\"dry_run\"|\"live\"", 0, 0),
    host("market::candles", "market::candles(symbol: string (\"BTCUSD\" or \"BTCUSD@1h\"), n: int)", 2, 2),
    host("market::last", "market::last(symbol: string)", 1, 1),
    host("market::ticker", "market::ticker(symbol: string)", 1, 1),
    host("market::book", "market::book(symbol: string)", 1, 1),
    host("ta::sma", "ta::sma(symbol: string | values: array | series, n: int)", 2, 2),
    host("ta::ema", "ta::ema(symbol: string | values: array | series, n: int)", 2, 2),
    host("ta::rsi", "ta::rsi(symbol: string | values: array | series, n: int)", 2, 2),
    host("ta::atr", "ta::atr(symbol: string, n: int)", 2, 2),
    host("ta::macd", "ta::macd(symbol: string | values: array | series, fast: int, slow: int, signal: int)", 4, 4),
    host("ta::bbands", "ta::bbands(symbol: string | values: array | series, n: int, k: number)", 3, 3),
    host("ta::vwap", "ta::vwap(symbol: string)", 1, 1),
    host("ta::highest", "ta::highest(symbol: string | values: array | series, n: int)", 2, 2),
    host("ta::lowest", "ta::lowest(symbol: string | values: array | series, n: int)", 2, 2),
    host("timer::every", "timer::every(name: string, interval: string such as \"5s\")", 2, 2),
    host("timer::after", "timer::after(name: string, delay: string such as \"1m\")", 2, 2),
    host("timer::cancel", "timer::cancel(name: string)", 1, 1),
    host("log::info", "log::info(message)", 1, 1),
    host("log::warn", "log::warn(message)", 1, 1),
    host("log::error", "log::error(message)", 1, 1),
    host("health::heartbeat", "health::heartbeat()", 0, 0),
    host("health::report", "health::report(key: string, value)", 2, 2),
    host("health::degraded", "health::degraded(reason: string)", 1, 1),
    host("chart::plot", "chart::plot(name: string, value: number [, symbol: string])", 2, 3),
    host("risk::state", "risk::state()", 0, 0),
    host("risk::limits", "risk::limits()", 0, 0),
    host("ml::predict", "ml::predict(model: string, features: array of numbers) -> number | array", 2, 2),
    host("ml::predict_proba", "ml::predict_proba(model: string, features: array of numbers) -> array", 2, 2),
    host("ml::models", "ml::models() -> array of #{name, inputs, output, version}", 0, 0),
    host("ml::version", "ml::version(model: string) -> int", 1, 1),
    host("ml::record", "ml::record(features: array of numbers [, label: number | bool])", 1, 2),
    host("notify", "notify(message)", 1, 1),
    host("now", "now()", 0, 0),
    host("series", "series(capacity: int from 1 to sandbox.max_array_size)", 1, 1),
];

/// The expected signature of a host function, by its qualified name.
pub fn signature(name: &str) -> Option<&'static str> {
    HOST_FUNCTIONS.iter().find(|f| f.name == name).map(|f| f.signature)
}

/// Gives an argument error the position of the call that caused it.
pub(super) fn located<T>(cx: &NativeCallContext, body: impl FnOnce() -> Result<T>) -> Result<T> {
    body().map_err(|mut e| {
        if e.position().is_none() {
            e.set_position(cx.call_position());
        }
        e
    })
}

pub(super) fn bad(function: &str, message: String) -> Box<EvalAltResult> {
    let signature = signature(function).unwrap_or(function);
    EvalAltResult::ErrorRuntime(format!("{message}; expected {signature}").into(), Position::NONE).into()
}

/// Calls `f` with a value as text: a string as it is (no copy), anything
/// else printed, at most [`MAX_PRINTED_BYTES`] of it.
fn with_text<R>(value: &Dynamic, f: impl FnOnce(&str) -> R) -> R {
    match value.read_lock::<rhai::ImmutableString>() {
        Some(text) => f(&text),
        None => f(&super::memory::shown(value, MAX_PRINTED_BYTES)),
    }
}

/// Bytes of one candle as a script's map: eight entries and the map.
const CANDLE_BYTES: usize = 512;

/// The most of a non-string value a log line, notification or report
/// prints (they are cut shorter by their quotas anyway).
const MAX_PRINTED_BYTES: usize = 1 << 20;

/// The longest string a host function takes as a name, symbol, side or
/// option (longer: refused without being echoed, so a huge argument is
/// never copied into an error).
const MAX_TEXT_ARG_BYTES: usize = 2 << 20;

fn text(function: &str, what: &str, v: &Dynamic) -> Result<String> {
    if let Ok(text) = v.as_immutable_string_ref()
        && text.len() > MAX_TEXT_ARG_BYTES
    {
        Err(bad(function, format!("{function}: `{what}` is {} bytes, longer than any valid value", text.len())))
    } else if v.is_string() {
        Ok(v.to_string())
    } else {
        Err(bad(function, format!("{function}: `{what}` must be a string, got {}", v.type_name())))
    }
}

/// A symbol argument as a shared string (no copy: indicator calls run on every bar).
fn symbol_arg(function: &str, v: &Dynamic) -> Result<rhai::ImmutableString> {
    let symbol = v
        .clone()
        .into_immutable_string()
        .map_err(|got| bad(function, format!("{function}: `symbol` must be a string, got {got}")))?;
    if symbol.len() > MAX_TEXT_ARG_BYTES {
        return Err(bad(
            function,
            format!("{function}: `symbol` is {} bytes, longer than any valid value", symbol.len()),
        ));
    }
    Ok(symbol)
}

/// The series a script names (`SYMBOL` or `SYMBOL@TF`) as its key in the
/// strategy's market state; a plain symbol passes through without a copy.
fn series_arg(function: &str, ctx: &StrategyContext, symbol: rhai::ImmutableString) -> Result<rhai::ImmutableString> {
    if !symbol.bytes().any(|b| b == b'@') {
        return Ok(symbol);
    }
    ctx.series_key(&symbol).map(Into::into).map_err(|e| bad(function, format!("{function}: {e}")))
}

fn number(function: &str, what: &str, v: &Dynamic) -> Result<f64> {
    v.as_float()
        .or_else(|_| v.as_int().map(|i| i as f64))
        .map_err(|_| bad(function, format!("{function}: `{what}` must be a number, got {}", v.type_name())))
}

fn positive_decimal(function: &str, what: &str, v: &Dynamic) -> Result<Decimal> {
    let value = number(function, what, v)?;
    decimal_from_f64(value)
        .filter(|d| *d > Decimal::ZERO)
        .ok_or_else(|| bad(function, format!("{function}: `{what}` must be a positive number, got {value}")))
}

/// An order's size or price: a finite, positive number no larger than
/// [`crate::model::ORDER_NUMBER_MAX`].
fn order_number(function: &str, what: &str, v: &Dynamic) -> Result<Decimal> {
    let value = positive_decimal(function, what, v)?;
    crate::model::check_order_number(&format!("`{what}`"), value).map_err(|e| bad(function, format!("{function}: {e}")))
}

fn count(function: &str, what: &str, v: &Dynamic) -> Result<usize> {
    let value = number(function, what, v)?;
    if value >= 1.0 && value.fract() == 0.0 && value <= 1_000_000.0 {
        Ok(value as usize)
    } else {
        Err(bad(function, format!("{function}: `{what}` must be a whole number from 1 to 1000000, got {value}")))
    }
}

fn side(function: &str, v: &Dynamic) -> Result<Side> {
    text(function, "side", v)?.parse().map_err(|e: String| bad(function, format!("{function}: {e}")))
}

/// The options map of a call, refusing keys not in `known`.
fn options_of(function: &str, v: &Dynamic, known: &[&str]) -> Result<Map> {
    let map = v
        .clone()
        .try_cast::<Map>()
        .ok_or_else(|| bad(function, format!("{function}: `options` must be a map, got {}", v.type_name())))?;
    for key in map.keys() {
        if !known.contains(&key.as_str()) {
            return Err(bad(function, format!("{function}: unknown option `{key}` (known: {})", known.join(", "))));
        }
    }
    Ok(map)
}

fn flag(function: &str, map: &Map, key: &str) -> Result<bool> {
    match map.get(key) {
        None => Ok(false),
        Some(v) => v.as_bool().map_err(|_| bad(function, format!("{function}: option `{key}` must be true or false"))),
    }
}

fn indicator(value: IndicatorValue) -> Dynamic {
    match value {
        IndicatorValue::Warming => Dynamic::UNIT,
        IndicatorValue::Number(v) => Dynamic::from_float(v),
        IndicatorValue::Macd(m) => convert::map([
            ("macd", Dynamic::from_float(m.macd)),
            ("signal", Dynamic::from_float(m.signal)),
            ("hist", Dynamic::from_float(m.hist)),
        ]),
        IndicatorValue::Bands(b) => convert::map([
            ("upper", Dynamic::from_float(b.upper)),
            ("middle", Dynamic::from_float(b.middle)),
            ("lower", Dynamic::from_float(b.lower)),
        ]),
    }
}

/// The host modules by name (`ta`, `exchange`, …), bound to a strategy's
/// context. A strategy's engine registers those its source names: Rhai finds
/// the module of every `ta::` or `params::` by comparing its name with the
/// registered ones, one after another, on every call.
pub fn modules(ctx: &SharedContext) -> Vec<(&'static str, Module)> {
    vec![
        ("exchange", exchange_module(ctx)),
        ("market", market_module(ctx)),
        ("ta", ta_module(ctx)),
        ("timer", timer_module(ctx)),
        ("log", log_module(ctx)),
        ("health", health_module(ctx)),
        ("risk", risk_module(ctx)),
        ("chart", chart_module(ctx)),
    ]
}

/// Installs the host's global functions (`notify`, `now`) and where
/// `print` and `debug` go into a strategy's engine, bound to its context.
pub fn install(engine: &mut Engine, ctx: &SharedContext) {
    let c = ctx.clone();
    engine.register_fn("notify", move |message: Dynamic| with_text(&message, |text| c.borrow_mut().notify(text)));
    let c = ctx.clone();
    engine.register_fn("now", move || c.borrow().now);
    let c = ctx.clone();
    engine.on_print(move |text| c.borrow_mut().log(LogLevel::Info, text));
    let c = ctx.clone();
    engine.on_debug(move |text, _, pos| {
        let message =
            if pos.is_none() { text.to_string() } else { format!("{text} (line {})", pos.line().unwrap_or(0)) };
        c.borrow_mut().log(LogLevel::Debug, &message);
    });
}

fn place(
    ctx: &SharedContext,
    function: &str,
    args: [&Dynamic; 3],
    price: Option<&Dynamic>,
    opts: Option<&Dynamic>,
) -> Result<String> {
    let symbol = text(function, "symbol", args[0])?;
    let side = side(function, args[1])?;
    let size = order_number(function, "size", args[2])?;
    let price = price.map(|p| order_number(function, "price", p)).transpose()?;
    let entry_options: Vec<&str> = ["post_only", "reduce_only", "tif"].iter().chain(BRACKET_OPTIONS).copied().collect();
    let opts = opts.map(|o| options_of(function, o, &entry_options)).transpose()?.unwrap_or_default();
    let tif = opts.get("tif").map(|v| text(function, "tif", v)).transpose()?;
    let time_in_force = match tif.map(|t| t.to_ascii_lowercase()) {
        None => TimeInForce::Gtc,
        Some(t) if t == "gtc" => TimeInForce::Gtc,
        Some(t) if t == "ioc" => TimeInForce::Ioc,
        Some(t) => {
            return Err(bad(function, format!("{function}: option `tif` must be \"gtc\" or \"ioc\", got {t:?}")));
        }
    };
    let kind = if price.is_some() { OrderKind::Limit } else { OrderKind::Market };
    if kind == OrderKind::Market && (opts.contains_key("post_only") || opts.contains_key("tif")) {
        return Err(bad(function, format!("{function}: market orders take only `reduce_only` and bracket options")));
    }
    let closing = match side {
        Side::Buy => Side::Sell,
        Side::Sell => Side::Buy,
    };
    let legs = bracket_legs(function, &opts, &symbol, closing, size)?;
    let spec = OrderSpec {
        symbol,
        side,
        kind,
        size,
        price,
        time_in_force,
        post_only: flag(function, &opts, "post_only")?,
        reduce_only: flag(function, &opts, "reduce_only")?,
        stop: None,
        oco: None,
        parent: None,
    };
    if spec.reduce_only && !legs.is_empty() {
        return Err(bad(function, format!("{function}: a reduce-only order cannot carry a bracket")));
    }
    let mut ctx = ctx.borrow_mut();
    let entry = ctx.place(spec).map_err(|e| bad(function, format!("{function}: {e}")))?;
    place_legs(&mut ctx, legs, Some(&entry)).map_err(|e| bad(function, format!("{function}: {e}")))?;
    Ok(entry)
}

/// How a stop order is asked for: its kind, and a fixed trigger (stop-loss,
/// take-profit) or none (a trailing stop starts from the price at acceptance).
struct StopCall {
    function: &'static str,
    kind: StopKind,
    trigger: Option<Dynamic>,
}

const STOP_OPTIONS: &[&str] = &["limit", "reduce_only", "trigger_on"];
const TRAILING_OPTIONS: &[&str] = &["trail", "trail_pct", "limit", "reduce_only", "trigger_on"];

fn place_stop(ctx: &SharedContext, call: StopCall, args: [&Dynamic; 3], opts: Option<&Dynamic>) -> Result<String> {
    let function = call.function;
    let symbol = text(function, "symbol", args[0])?;
    let side = side(function, args[1])?;
    let size = order_number(function, "size", args[2])?;
    let known = if call.trigger.is_some() { STOP_OPTIONS } else { TRAILING_OPTIONS };
    let opts = opts.map(|o| options_of(function, o, known)).transpose()?.unwrap_or_default();
    let number = |key: &str| opts.get(key).map(|v| order_number(function, key, v)).transpose();
    let limit = number("limit")?;
    let on = trigger_on(function, &opts)?;
    let (price, trail, trail_pct) = match &call.trigger {
        Some(trigger) => (order_number(function, "trigger", trigger)?, None, None),
        None => {
            let (trail, trail_pct) = (number("trail")?, number("trail_pct")?);
            match (trail, trail_pct) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(bad(
                        function,
                        format!(
                            "{function}: give exactly one of `trail` (a price distance) or `trail_pct` (a percentage)"
                        ),
                    ));
                }
                (_, Some(pct)) if pct >= Decimal::ONE_HUNDRED => {
                    return Err(bad(function, format!("{function}: `trail_pct` must be under 100, got {pct}")));
                }
                _ => {}
            }
            (Decimal::ZERO, trail, trail_pct)
        }
    };
    let trigger = StopTrigger { kind: call.kind, price, trail, trail_pct, on };
    let spec = stop_spec(symbol, side, size, trigger, limit, flag(function, &opts, "reduce_only")?);
    ctx.borrow_mut().place(spec).map_err(|e| bad(function, format!("{function}: {e}")))
}

/// A stop order: stop-market, or stop-limit with `limit`.
fn stop_spec(
    symbol: String,
    side: Side,
    size: Decimal,
    trigger: StopTrigger,
    limit: Option<Decimal>,
    reduce_only: bool,
) -> OrderSpec {
    OrderSpec {
        symbol,
        side,
        kind: if limit.is_some() { OrderKind::Limit } else { OrderKind::Market },
        size,
        price: limit,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        reduce_only,
        stop: Some(Box::new(trigger)),
        oco: None,
        parent: None,
    }
}

/// The `trigger_on` option: `"last"` (the default) or `"mark"`.
fn trigger_on(function: &str, opts: &Map) -> Result<TriggerOn> {
    match opts.get("trigger_on").map(|v| text(function, "trigger_on", v)).transpose()? {
        None => Ok(TriggerOn::Last),
        Some(t) if t == "last" => Ok(TriggerOn::Last),
        Some(t) if t == "mark" => Ok(TriggerOn::Mark),
        Some(t) => {
            Err(bad(function, format!("{function}: option `trigger_on` must be \"last\" or \"mark\", got {t:?}")))
        }
    }
}

/// The options that attach a bracket to an entry (and that `exchange::bracket` takes).
const BRACKET_OPTIONS: &[&str] =
    &["stop_loss", "take_profit", "trail", "trail_pct", "stop_loss_limit", "take_profit_limit", "trigger_on"];

/// The legs a bracket's options ask for, closing `size` with `side`: a
/// stop-loss (fixed, or trailing with `trail`/`trail_pct`) and a
/// take-profit, each optional, each reduce-only; none when no bracket
/// option is given.
fn bracket_legs(function: &str, opts: &Map, symbol: &str, side: Side, size: Decimal) -> Result<Vec<OrderSpec>> {
    let number = |key: &str| opts.get(key).map(|v| order_number(function, key, v)).transpose();
    let (stop_loss, take_profit) = (number("stop_loss")?, number("take_profit")?);
    let (trail, trail_pct) = (number("trail")?, number("trail_pct")?);
    let on = trigger_on(function, opts)?;
    if trail_pct.is_some_and(|pct| pct >= Decimal::ONE_HUNDRED) {
        return Err(bad(function, format!("{function}: `trail_pct` must be under 100")));
    }
    if [stop_loss.is_some(), trail.is_some(), trail_pct.is_some()].iter().filter(|b| **b).count() > 1 {
        return Err(bad(function, format!("{function}: give one of `stop_loss`, `trail` or `trail_pct`")));
    }
    let leg = |kind, price, limit: Option<Decimal>, trail, trail_pct| {
        stop_spec(symbol.to_string(), side, size, StopTrigger { kind, price, trail, trail_pct, on }, limit, true)
    };
    let mut legs = Vec::new();
    if stop_loss.is_some() || trail.is_some() || trail_pct.is_some() {
        let price = stop_loss.unwrap_or(Decimal::ZERO);
        legs.push(leg(StopKind::StopLoss, price, number("stop_loss_limit")?, trail, trail_pct));
    } else if opts.contains_key("stop_loss_limit") {
        return Err(bad(function, format!("{function}: `stop_loss_limit` needs `stop_loss`, `trail` or `trail_pct`")));
    }
    match take_profit {
        Some(price) => legs.push(leg(StopKind::TakeProfit, price, number("take_profit_limit")?, None, None)),
        None if opts.contains_key("take_profit_limit") => {
            return Err(bad(function, format!("{function}: `take_profit_limit` needs `take_profit`")));
        }
        None => {}
    }
    Ok(legs)
}

/// Queues a bracket's legs, one-cancels-other when there are two, waiting
/// for `parent` when they protect an entry; returns their ids.
fn place_legs(
    ctx: &mut StrategyContext,
    legs: Vec<OrderSpec>,
    parent: Option<&str>,
) -> std::result::Result<Vec<String>, String> {
    let ids: Vec<String> = legs.iter().map(|_| ctx.next_order_id()).collect();
    let group = (ids.len() > 1).then(|| ids[0].clone());
    for (id, mut leg) in ids.iter().zip(legs) {
        leg.oco = group.clone();
        leg.parent = parent.map(str::to_string);
        ctx.place_as(id.clone(), leg)?;
    }
    Ok(ids)
}

/// `exchange::bracket(symbol, options)`: a stop-loss and/or take-profit for
/// the strategy's open position, one-cancels-other.
fn bracket(ctx: &SharedContext, symbol: &Dynamic, opts: &Dynamic) -> Result<Map> {
    const FUNCTION: &str = "exchange::bracket";
    let symbol = text(FUNCTION, "symbol", symbol)?;
    let opts = options_of(FUNCTION, opts, BRACKET_OPTIONS)?;
    let mut ctx = ctx.borrow_mut();
    let size = {
        let account = ctx.account.load();
        account.position(&ctx.name, &symbol).size
    };
    if size.is_zero() {
        return Err(bad(FUNCTION, format!("{FUNCTION}: no open position in {symbol} to protect")));
    }
    let legs = bracket_legs(FUNCTION, &opts, &symbol, Side::closing(size), size.abs())?;
    if legs.is_empty() {
        return Err(bad(
            FUNCTION,
            format!("{FUNCTION}: give `stop_loss` (or `trail`/`trail_pct`) and/or `take_profit`"),
        ));
    }
    let kinds: Vec<&str> = legs
        .iter()
        .map(|l| match l.stop.as_ref().map(|s| s.kind) {
            Some(StopKind::TakeProfit) => "take_profit",
            _ => "stop_loss",
        })
        .collect();
    let ids = place_legs(&mut ctx, legs, None).map_err(|e| bad(FUNCTION, format!("{FUNCTION}: {e}")))?;
    Ok(kinds.into_iter().zip(ids).map(|(k, id)| (k.into(), id.into())).collect())
}

/// Registers a stop-order function with and without its options map.
fn register_stop(m: &mut Module, ctx: &SharedContext, name: &'static str, kind: StopKind) {
    let function: &'static str = match kind {
        StopKind::StopLoss => "exchange::stop_order",
        StopKind::TakeProfit => "exchange::take_profit",
    };
    let c = ctx.clone();
    m.set_native_fn(name, move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, t: Dynamic| {
        located(&cx, || place_stop(&c, StopCall { function, kind, trigger: Some(t.clone()) }, [&s, &side, &size], None))
    });
    let c = ctx.clone();
    m.set_native_fn(
        name,
        move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, t: Dynamic, o: Dynamic| {
            located(&cx, || {
                place_stop(&c, StopCall { function, kind, trigger: Some(t.clone()) }, [&s, &side, &size], Some(&o))
            })
        },
    );
}

fn exchange_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn("market_order", move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic| {
        located(&cx, || place(&c, "exchange::market_order", [&s, &side, &size], None, None))
    });
    let c = ctx.clone();
    m.set_native_fn(
        "market_order",
        move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, o: Dynamic| {
            located(&cx, || place(&c, "exchange::market_order", [&s, &side, &size], None, Some(&o)))
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "limit_order",
        move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, p: Dynamic| {
            located(&cx, || place(&c, "exchange::limit_order", [&s, &side, &size], Some(&p), None))
        },
    );
    let c = ctx.clone();
    m.set_native_fn(
        "limit_order",
        move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, p: Dynamic, o: Dynamic| {
            located(&cx, || place(&c, "exchange::limit_order", [&s, &side, &size], Some(&p), Some(&o)))
        },
    );
    register_stop(&mut m, ctx, "stop_order", StopKind::StopLoss);
    let c = ctx.clone();
    m.set_native_fn("bracket", move |cx: NativeCallContext, s: Dynamic, o: Dynamic| {
        located(&cx, || bracket(&c, &s, &o))
    });
    register_stop(&mut m, ctx, "take_profit", StopKind::TakeProfit);
    let c = ctx.clone();
    m.set_native_fn(
        "trailing_stop",
        move |cx: NativeCallContext, s: Dynamic, side: Dynamic, size: Dynamic, o: Dynamic| {
            located(&cx, || {
                let call = StopCall { function: "exchange::trailing_stop", kind: StopKind::StopLoss, trigger: None };
                place_stop(&c, call, [&s, &side, &size], Some(&o))
            })
        },
    );
    let c = ctx.clone();
    m.set_native_fn("cancel", move |cx: NativeCallContext, id: Dynamic| {
        located(&cx, || {
            let client_id = text("exchange::cancel", "order_id", &id)?;
            c.borrow_mut().commands.push(StrategyCommand::Cancel { client_id });
            Ok(())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("cancel_all", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = text("exchange::cancel_all", "symbol", &s)?;
            c.borrow_mut().commands.push(StrategyCommand::CancelAll { symbol: Some(symbol) });
            Ok(())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("cancel_all", move |cx: NativeCallContext| {
        located(&cx, || {
            c.borrow_mut().commands.push(StrategyCommand::CancelAll { symbol: None });
            Ok(())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("position", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = text("exchange::position", "symbol", &s)?;
            let ctx = c.borrow();
            let account = ctx.account.load();
            Ok(convert::position(&account.position(&ctx.name, &symbol), account.marks.get(&symbol).copied()))
        })
    });
    let open_orders = |c: &SharedContext, symbol: Option<&str>| -> Array {
        let ctx = c.borrow();
        let account = ctx.account.load();
        account.open_orders_of(&ctx.name, symbol).map(convert::order).collect()
    };
    let c = ctx.clone();
    m.set_native_fn("open_orders", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || Ok(open_orders(&c, Some(&text("exchange::open_orders", "symbol", &s)?))))
    });
    let c = ctx.clone();
    m.set_native_fn("open_orders", move |cx: NativeCallContext| located(&cx, || Ok(open_orders(&c, None))));
    let c = ctx.clone();
    m.set_native_fn("balance", move |cx: NativeCallContext, asset: Dynamic| {
        located(&cx, || {
            let asset = text("exchange::balance", "asset", &asset)?;
            let account = c.borrow().account.load_full();
            Ok(if asset.eq_ignore_ascii_case(&account.currency) { decimal_to_f64(account.balance) } else { 0.0 })
        })
    });
    let c = ctx.clone();
    m.set_native_fn("balance", move |cx: NativeCallContext| {
        located(&cx, || Ok(decimal_to_f64(c.borrow().account.load().balance)))
    });
    let c = ctx.clone();
    m.set_native_fn("equity", move |cx: NativeCallContext| {
        located(&cx, || Ok(decimal_to_f64(c.borrow().account.load().equity)))
    });
    let c = ctx.clone();
    m.set_native_fn("mode", move || Ok(rhai::ImmutableString::from(c.borrow().mode.as_str())));
    m
}

fn market_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn("candles", move |cx: NativeCallContext, s: Dynamic, n: Dynamic| {
        located(&cx, || {
            let symbol = symbol_arg("market::candles", &s)?;
            let n = count("market::candles", "n", &n)?;
            let ctx = c.borrow();
            let key = series_arg("market::candles", &ctx, symbol.clone())?;
            let (name, timeframe) = match symbol.split_once('@') {
                Some((name, tf)) => {
                    (name.into(), tf.parse::<crate::data::Timeframe>().map_or(tf.into(), |t| t.to_string().into()))
                }
                None => (symbol.clone(), ctx.timeframe.as_str().into()),
            };
            let Some(series) = ctx.market.series(&key) else { return Ok(Array::new()) };
            super::guards::reserve("market::candles", n.min(series.len()).saturating_mul(CANDLE_BYTES))?;
            Ok(series.last_n(n).map(|candle| convert::candle(candle, &name, &timeframe)).collect::<Array>())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("last", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = text("market::last", "symbol", &s)?;
            Ok(c.borrow().market.last_price(&symbol).map_or(Dynamic::UNIT, Dynamic::from_float))
        })
    });
    let c = ctx.clone();
    m.set_native_fn("ticker", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = text("market::ticker", "symbol", &s)?;
            Ok(c.borrow().market.tick(&symbol).map_or(Dynamic::UNIT, convert::tick))
        })
    });
    let c = ctx.clone();
    m.set_native_fn("book", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = text("market::book", "symbol", &s)?;
            let ctx = c.borrow();
            let Some(t) = ctx.market.tick(&symbol) else {
                return Ok(Dynamic::UNIT);
            };
            let level = |price: Decimal| -> Dynamic {
                Dynamic::from_array(vec![Dynamic::from_float(decimal_to_f64(price)), Dynamic::from_float(0.0)])
            };
            Ok(convert::map([
                ("symbol", symbol.clone().into()),
                ("bids", Dynamic::from_array(vec![level(t.bid)])),
                ("asks", Dynamic::from_array(vec![level(t.ask)])),
            ]))
        })
    });
    m
}

/// True for a script's own values: an array or a `series`.
fn own_values(src: &Dynamic) -> bool {
    src.is_array() || src.is::<super::series::Series>()
}

/// Values of a script's own series (numbers only), oldest first.
fn values(function: &str, array: &Dynamic) -> Result<Vec<f64>> {
    if let Some(series) = array.read_lock::<super::series::Series>() {
        return Ok(series.values().collect());
    }
    let array = array.read_lock::<Array>().expect("checked own_values");
    array.iter().enumerate().map(|(i, v)| number(function, &format!("values[{i}]"), v)).collect()
}

fn last_of<T>(values: &[f64], mut update: impl FnMut(f64) -> Option<T>) -> Option<T> {
    values.iter().fold(None, |_, v| update(*v))
}

fn ta_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    macro_rules! single {
        ($name:literal, $method:ident, $array:expr) => {{
            let c = ctx.clone();
            // On a symbol's candles: shared by the general entry point below
            // and a typed fast path for the common `(string, int)` call.
            let on_symbol = move |symbol: rhai::ImmutableString, n: usize| -> Result<Dynamic> {
                let function = concat!("ta::", $name);
                let mut ctx = c.borrow_mut();
                let ctx = &mut *ctx;
                let symbol = series_arg(function, ctx, symbol)?;
                Ok(match ctx.market.series(&symbol) {
                    Some(series) => indicator(ctx.indicators.$method(&symbol, series, n)),
                    None => Dynamic::UNIT,
                })
            };
            let fast = on_symbol.clone();
            m.set_native_fn($name, move |cx: NativeCallContext, symbol: rhai::ImmutableString, n: INT| {
                located(&cx, || {
                    let n = match usize::try_from(n) {
                        Ok(n @ 1..=1_000_000) => n,
                        _ => count(concat!("ta::", $name), "n", &Dynamic::from_int(n))?,
                    };
                    fast(symbol, n)
                })
            });
            m.set_native_fn($name, move |cx: NativeCallContext, src: Dynamic, n: Dynamic| {
                located(&cx, || {
                    let function = concat!("ta::", $name);
                    let n = count(function, "n", &n)?;
                    if own_values(&src) {
                        let array_form: Option<fn(usize, &[f64]) -> Option<f64>> = $array;
                        let Some(compute) = array_form else {
                            return Err(bad(
                                function,
                                format!("{function} needs candles: pass a symbol, not an array"),
                            ));
                        };
                        return Ok(compute(n, &values(function, &src)?).map_or(Dynamic::UNIT, Dynamic::from_float));
                    }
                    on_symbol(symbol_arg(function, &src)?, n)
                })
            });
        }};
    }
    single!(
        "sma",
        sma,
        Some(|n, v| last_of(v, {
            let mut i = Sma::new(n);
            move |x| i.update(x)
        }))
    );
    single!(
        "ema",
        ema,
        Some(|n, v| last_of(v, {
            let mut i = Ema::new(n);
            move |x| i.update(x)
        }))
    );
    single!(
        "rsi",
        rsi,
        Some(|n, v| last_of(v, {
            let mut i = Rsi::new(n);
            move |x| i.update(x)
        }))
    );
    single!(
        "highest",
        highest,
        Some(|n, v| last_of(v, {
            let mut i = Highest::new(n);
            move |x| i.update(x)
        }))
    );
    single!(
        "lowest",
        lowest,
        Some(|n, v| last_of(v, {
            let mut i = Lowest::new(n);
            move |x| i.update(x)
        }))
    );
    single!("atr", atr, None);
    let c = ctx.clone();
    m.set_native_fn("vwap", move |cx: NativeCallContext, s: Dynamic| {
        located(&cx, || {
            let symbol = symbol_arg("ta::vwap", &s)?;
            let mut ctx = c.borrow_mut();
            let ctx = &mut *ctx;
            let symbol = series_arg("ta::vwap", ctx, symbol)?;
            Ok(ctx
                .market
                .series(&symbol)
                .map_or(Dynamic::UNIT, |series| indicator(ctx.indicators.vwap(&symbol, series))))
        })
    });
    let c = ctx.clone();
    m.set_native_fn(
        "macd",
        move |cx: NativeCallContext, src: Dynamic, fast: Dynamic, slow: Dynamic, signal: Dynamic| {
            located(&cx, || {
                let f = "ta::macd";
                let (fast, slow, signal) =
                    (count(f, "fast", &fast)?, count(f, "slow", &slow)?, count(f, "signal", &signal)?);
                if own_values(&src) {
                    let mut macd = Macd::new(fast, slow, signal);
                    return Ok(indicator(
                        last_of(&values(f, &src)?, |x| macd.update(x))
                            .map_or(IndicatorValue::Warming, IndicatorValue::Macd),
                    ));
                }
                let symbol = symbol_arg(f, &src)?;
                let mut ctx = c.borrow_mut();
                let ctx = &mut *ctx;
                let symbol = series_arg(f, ctx, symbol)?;
                Ok(ctx.market.series(&symbol).map_or(Dynamic::UNIT, |series| {
                    indicator(ctx.indicators.macd(&symbol, series, fast, slow, signal))
                }))
            })
        },
    );
    let c = ctx.clone();
    m.set_native_fn("bbands", move |cx: NativeCallContext, src: Dynamic, n: Dynamic, k: Dynamic| {
        located(&cx, || {
            let f = "ta::bbands";
            let (n, k) = (count(f, "n", &n)?, number(f, "k", &k)?);
            if own_values(&src) {
                let mut bands = BBands::new(n, k);
                return Ok(indicator(
                    last_of(&values(f, &src)?, |x| bands.update(x))
                        .map_or(IndicatorValue::Warming, IndicatorValue::Bands),
                ));
            }
            let symbol = symbol_arg(f, &src)?;
            let mut ctx = c.borrow_mut();
            let ctx = &mut *ctx;
            let symbol = series_arg(f, ctx, symbol)?;
            Ok(ctx
                .market
                .series(&symbol)
                .map_or(Dynamic::UNIT, |series| indicator(ctx.indicators.bbands(&symbol, series, n, k))))
        })
    });
    m
}

fn timer_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    for (name, repeat) in [("every", true), ("after", false)] {
        let c = ctx.clone();
        m.set_native_fn(name, move |cx: NativeCallContext, timer: Dynamic, duration: Dynamic| {
            located(&cx, || {
                let function = if repeat { "timer::every" } else { "timer::after" };
                let timer = text(function, "name", &timer)?;
                let ms = parse_duration_ms(&text(function, "duration", &duration)?)
                    .map_err(|e| bad(function, format!("{function}: {e}")))?;
                c.borrow_mut().set_timer(&timer, ms, repeat).map_err(|e| bad(function, format!("{function}: {e}")))
            })
        });
    }
    let c = ctx.clone();
    m.set_native_fn("cancel", move |cx: NativeCallContext, timer: Dynamic| {
        located(&cx, || Ok(c.borrow_mut().timers.cancel(&text("timer::cancel", "name", &timer)?)))
    });
    m
}

fn log_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    for (name, level) in
        [("info", LogLevel::Info), ("warn", LogLevel::Warn), ("error", LogLevel::Error), ("debug", LogLevel::Debug)]
    {
        let c = ctx.clone();
        m.set_native_fn(name, move |cx: NativeCallContext, message: Dynamic| {
            located(&cx, || {
                with_text(&message, |text| c.borrow_mut().log(level, text));
                Ok(())
            })
        });
    }
    m
}

fn risk_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    // The state that applies to this strategy's orders: the stricter of the account's and its own.
    m.set_native_fn("state", move || {
        let ctx = c.borrow();
        Ok(ctx.account.load().trading.of(&ctx.name).as_str().to_string())
    });
    let c = ctx.clone();
    // The limits that bound this strategy's orders: the account's and its own (unset ones are left out).
    m.set_native_fn("limits", move || {
        let ctx = c.borrow();
        let account = ctx.account.load();
        let limits = serde_json::json!({
            "account": account.risk_limits.get("account").cloned().unwrap_or_else(|| serde_json::json!({})),
            "own": account.risk_limits["strategies"].get(&ctx.name).cloned().unwrap_or_else(|| serde_json::json!({})),
        });
        Ok(convert::from_json(&numbers(limits)))
    });
    m
}

/// Limits as scripts read them: amounts (stored as exact decimal strings) become numbers.
fn numbers(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(key, value)| {
                    let value = match value {
                        serde_json::Value::String(text) if key != "symbols" => {
                            text.parse::<f64>().map_or(serde_json::Value::String(text), serde_json::Value::from)
                        }
                        other => numbers(other),
                    };
                    (key, value)
                })
                .collect(),
        ),
        other => other,
    }
}

/// `chart::plot(name, value [, symbol])`: an overlay value on the candle being
/// handled (the dashboard's chart, the backtest report).
fn chart_module(ctx: &SharedContext) -> Module {
    const FUNCTION: &str = "chart::plot";
    fn record(c: &SharedContext, name: &str, value: f64, symbol: Option<&str>) -> Result<()> {
        c.borrow_mut().plot(name, value, symbol).map_err(|e| bad(FUNCTION, format!("{FUNCTION}: {e}")))
    }
    fn plot(c: &SharedContext, name: &Dynamic, value: &Dynamic, symbol: Option<&Dynamic>) -> Result<()> {
        // Read as borrowed strings: a plot per bar allocates nothing.
        fn string<'a>(what: &str, v: &'a Dynamic) -> Result<impl std::ops::Deref<Target = rhai::ImmutableString> + 'a> {
            v.read_lock::<rhai::ImmutableString>()
                .ok_or_else(|| bad(FUNCTION, format!("{FUNCTION}: `{what}` must be a string, got {}", v.type_name())))
        }
        let name = string("name", name)?;
        let value = number(FUNCTION, "value", value)?;
        let symbol = symbol.map(|s| string("symbol", s)).transpose()?;
        record(c, &name, value, symbol.as_deref().map(|s| s.as_str()))
    }
    let mut m = Module::new();
    // Typed fast paths for the common `(string, float)` and `(string, int)`
    // calls, found by Rhai's first lookup; the `Dynamic` versions catch the
    // rest and give the errors.
    let c = ctx.clone();
    m.set_native_fn("plot", move |cx: NativeCallContext, name: rhai::ImmutableString, value: FLOAT| {
        located(&cx, || record(&c, &name, value, None))
    });
    let c = ctx.clone();
    m.set_native_fn("plot", move |cx: NativeCallContext, name: rhai::ImmutableString, value: INT| {
        located(&cx, || record(&c, &name, value as f64, None))
    });
    let c = ctx.clone();
    m.set_native_fn("plot", move |cx: NativeCallContext, name: Dynamic, value: Dynamic| {
        located(&cx, || plot(&c, &name, &value, None))
    });
    let c = ctx.clone();
    m.set_native_fn("plot", move |cx: NativeCallContext, name: Dynamic, value: Dynamic, symbol: Dynamic| {
        located(&cx, || plot(&c, &name, &value, Some(&symbol)))
    });
    m
}

fn health_module(ctx: &SharedContext) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    m.set_native_fn("heartbeat", move |cx: NativeCallContext| {
        located(&cx, || {
            c.borrow_mut().heartbeat();
            Ok(())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("report", move |cx: NativeCallContext, key: Dynamic, value: Dynamic| {
        located(&cx, || {
            let key = text("health::report", "key", &key)?;
            with_text(&value, |value| c.borrow_mut().report(&key, value));
            Ok(())
        })
    });
    let c = ctx.clone();
    m.set_native_fn("degraded", move |cx: NativeCallContext, reason: Dynamic| {
        located(&cx, || {
            let reason = text("health::degraded", "reason", &reason)?;
            c.borrow_mut().degraded(&reason);
            Ok(())
        })
    });
    m
}
