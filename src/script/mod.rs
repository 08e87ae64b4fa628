//! The Rhai implementation of a strategy. A script is compiled, its
//! callbacks checked and its `config()` read before it may run; a reload
//! swaps the compiled script between two events and keeps `this`. Errors
//! carry `file:line:col`.

pub mod api;
pub mod convert;
mod guards;
mod lint;
pub mod memory;
pub mod ml;
pub mod sandbox;
pub mod series;

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write;
use std::str::FromStr;
use std::time::Duration;

use rhai::{AST, CallFnOptions, Dynamic, Engine, EvalAltResult, FuncArgs, Map, Module, Position, Scope};

use crate::config::SandboxConfig;
use crate::data::Timeframe;
use crate::model::MAX_SYMBOL_BYTES;
use crate::strategy::{Location, SharedContext, Strategy, StrategyEnv, StrategyError, StrategyEvent, StrategyMeta};

pub use sandbox::{CallbackGuard, hardened_engine};

/// The longest value printed in an error message, in bytes.
const MAX_ERROR_BYTES: usize = 1_000;
/// Most symbols a strategy may trade.
const MAX_SYMBOLS: usize = 1_000;

/// Callbacks a script may define, with their parameter counts.
pub const CALLBACKS: &[(&str, usize, &str)] = &[
    ("config", 0, "fn config()"),
    ("on_start", 0, "fn on_start()"),
    ("on_candle", 1, "fn on_candle(candle)"),
    ("on_tick", 1, "fn on_tick(tick)"),
    ("on_order", 1, "fn on_order(order)"),
    ("on_fill", 1, "fn on_fill(fill)"),
    ("on_timer", 1, "fn on_timer(name)"),
    ("on_reload", 0, "fn on_reload()"),
    ("on_stop", 0, "fn on_stop()"),
];

/// How a script strategy is set up by its host.
#[derive(Debug, Clone)]
pub struct ScriptOptions {
    /// Sandbox limits.
    pub limits: SandboxConfig,
    /// `[strategies.overrides.NAME.params]` from the config file.
    pub param_overrides: BTreeMap<String, serde_json::Value>,
    /// Symbols used when `config()` names none (the feed's symbols).
    pub default_symbols: Vec<String>,
    /// Adds `test::panic(message)`, a host function that panics (tests of
    /// the host's panic handling set it through `Config::faults`).
    pub panicking_function: bool,
    /// The models `ml::` calls and where `ml::record` writes.
    pub ml: ml::MlOptions,
}

/// A compiled and checked script.
struct Compiled {
    ast: AST,
    callbacks: rustc_hash::FxHashSet<&'static str>,
    /// Where each callback is defined, for errors that carry no position.
    locations: HashMap<&'static str, Location>,
    meta: StrategyMeta,
    params: Map,
}

/// A strategy written in Rhai.
pub struct ScriptStrategy {
    engine: Engine,
    compiled: Compiled,
    file: String,
    state: Dynamic,
    scope: Scope<'static>,
    guard: CallbackGuard,
    budget: Duration,
    ctx: SharedContext,
    options: ScriptOptions,
    strings: convert::SharedStrings,
    candle: convert::CandleArg,
    ml: ml::SharedMl,
    /// Host modules no version of the script has named yet.
    unregistered: Vec<(&'static str, rhai::Shared<Module>)>,
    /// Bytes the callbacks kept since `this` was last measured.
    kept: usize,
    /// `this` is measured again once `kept` reaches it (`memory::measure_step`).
    measure_at: usize,
}

impl ScriptStrategy {
    /// Compiles `source` (from `file`) and restores state from `env`.
    pub fn new(file: &str, source: &str, options: ScriptOptions, env: StrategyEnv) -> Result<Self, StrategyError> {
        let guard = CallbackGuard::default();
        let mut engine = hardened_engine(&options.limits, &guard, env.abort.clone());
        api::install(&mut engine, &env.ctx);
        let ml = ml::MlState::shared(options.ml.clone());
        let mut modules = api::modules(&env.ctx);
        modules.push(("ml", ml::module(&env.ctx, &ml)));
        if options.panicking_function {
            let mut test = rhai::Module::new();
            test.set_native_fn("panic", |message: &str| -> Result<(), Box<rhai::EvalAltResult>> {
                panic!("{message}")
            });
            modules.push(("test", test));
        }
        let mut unregistered = modules.into_iter().map(|(name, module)| (name, module.into())).collect();
        register_named_modules(&mut engine, &mut unregistered, source);
        let budget = Duration::from_millis(options.limits.callback_budget_ms);
        let compiled = compile(&engine, file, source, &options, &guard, budget)?;
        let state = env
            .initial_state
            .as_ref()
            .map(convert::from_json)
            .filter(Dynamic::is_map)
            .unwrap_or_else(|| Dynamic::from_map(Map::new()));
        let mut strategy = ScriptStrategy {
            engine,
            compiled,
            file: file.to_string(),
            state,
            scope: Scope::new(),
            guard,
            budget,
            ctx: env.ctx,
            options,
            strings: convert::SharedStrings::default(),
            candle: convert::CandleArg::default(),
            ml,
            unregistered,
            kept: 0,
            measure_at: 0,
        };
        strategy.activate();
        Ok(strategy)
    }

    /// Registers the current params module and timeframe.
    fn activate(&mut self) {
        let mut params = Module::new();
        for (key, value) in &self.compiled.params {
            params.set_var(key.as_str(), value.clone());
        }
        self.engine.register_static_module("params", params.into());
        let mut ctx = self.ctx.borrow_mut();
        ctx.timeframe = self.compiled.meta.timeframe.to_string();
        ctx.own_timeframe = self.compiled.meta.timeframe;
        ctx.other_timeframes = self.compiled.meta.timeframes.clone();
    }

    /// True if the script defines the callback `name`.
    fn defines(&self, name: &str) -> bool {
        self.compiled.callbacks.contains(name)
    }

    fn call(&mut self, name: &'static str, args: impl FuncArgs) -> Result<bool, StrategyError> {
        if !self.defines(name) {
            return Ok(false);
        }
        self.guard.arm(self.budget);
        let options = CallFnOptions::new().eval_ast(false).rewind_scope(true).bind_this_ptr(&mut self.state);
        let result =
            self.engine.call_fn_with_options::<Dynamic>(options, &mut self.scope, &self.compiled.ast, name, args);
        let memory = self.guard.disarm();
        // A printer refused memory without an error Rhai would pass on.
        let result = result.and_then(|value| match memory.refused {
            true => Err(EvalAltResult::ErrorTerminated(sandbox::MEMORY_FULL.into(), Position::NONE).into()),
            false => Ok(value),
        });
        let result = result.map(|_| true).map_err(|e| {
            let mut error = runtime_error(&self.file, name, *e, &self.options.limits);
            if error.location.is_none() {
                error.location = self.compiled.locations.get(name).cloned();
            }
            error
        });
        if !self.state.is_map() {
            self.state = Dynamic::from_map(Map::new());
            return Err(StrategyError::new(format!("{name}: `this` must stay an object map; it was reset to #{{}}")));
        }
        self.kept = self.kept.saturating_add(memory.kept.max(0) as usize);
        if self.kept >= self.measure_at {
            match sandbox::check_state(&self.state, &self.options.limits) {
                Ok(measured) => {
                    self.kept = 0;
                    self.measure_at = memory::measure_step(&measured);
                }
                // Still over: measured again after the next callback too.
                Err(message) => {
                    let location = self.compiled.locations.get(name).cloned();
                    return result.and(Err(StrategyError { location, message: format!("after {name}: {message}") }));
                }
            }
        }
        result
    }
}

impl Strategy for ScriptStrategy {
    fn handle(&mut self, event: &StrategyEvent) -> Result<bool, StrategyError> {
        match event {
            StrategyEvent::Start => self.call("on_start", ()),
            StrategyEvent::Candle(c) => {
                let symbol = self.strings.get(&c.symbol);
                self.ml.borrow_mut().current = Some((symbol.clone(), c.time));
                let timeframe = self.strings.get(&self.ctx.borrow().timeframe);
                let candle = self.candle.fill(c, &symbol, &timeframe);
                self.call("on_candle", (candle,))
            }
            StrategyEvent::OtherCandle(..) => Ok(false),
            StrategyEvent::Tick(t) => {
                self.ml.borrow_mut().current = Some((self.strings.get(&t.symbol), t.time));
                // The script's map is built only for a script that has the callback:
                // most have no on_order/on_fill, and a backtest has an order event per fill.
                if !self.defines("on_tick") {
                    return Ok(false);
                }
                self.call("on_tick", (convert::tick(t),))
            }
            StrategyEvent::Order(_) | StrategyEvent::Fill(_) if !self.defines(event.callback()) => Ok(false),
            StrategyEvent::Order(o) => self.call("on_order", (convert::order(o),)),
            StrategyEvent::Fill(f) => self.call("on_fill", (convert::fill(f),)),
            StrategyEvent::Timer(name) => self.call("on_timer", (Dynamic::from(name.clone()),)),
            StrategyEvent::Stop => {
                let called = self.call("on_stop", ());
                self.ml.borrow_mut().flush().map_err(|e| StrategyError::new(format!("ml::record: {e}")))?;
                called
            }
        }
    }

    fn meta(&self) -> StrategyMeta {
        self.compiled.meta.clone()
    }

    fn reload(&mut self, source: &str) -> Result<(), StrategyError> {
        register_named_modules(&mut self.engine, &mut self.unregistered, source);
        self.compiled = compile(&self.engine, &self.file, source, &self.options, &self.guard, self.budget)?;
        self.activate();
        self.call("on_reload", ()).map(drop)
    }

    fn export_state(&self) -> Result<serde_json::Value, StrategyError> {
        // Measured first: a `this` holding many copies of one string is
        // small in memory but not as JSON.
        sandbox::check_state(&self.state, &self.options.limits).map_err(StrategyError::new)?;
        convert::to_json(&self.state, "").map_err(StrategyError::new)
    }

    fn restore_state(&mut self, this: serde_json::Value) {
        let state = convert::from_json(&this);
        self.state = if state.is_map() { state } else { Dynamic::from_map(Map::new()) };
        self.measure_at = 0;
    }
}

/// Compiles and checks a script without running it: syntax, callback
/// signatures and `config()`. Used by `tradehost check`.
pub fn check(file: &str, source: &str, options: &ScriptOptions) -> Result<StrategyMeta, StrategyError> {
    let guard = CallbackGuard::default();
    let engine = hardened_engine(&options.limits, &guard, Default::default());
    compile(&engine, file, source, options, &guard, Duration::from_millis(options.limits.callback_budget_ms))
        .map(|c| c.meta)
}

/// A syntax error at `file:line:col`. When the parser ran into the end of the
/// file (or the next `fn`) looking for a closing bracket, the error points at
/// the bracket left open and the `fn` it is in, not where the parser stopped.
fn syntax_error(file: &str, source: &str, error: &rhai::ParseError) -> StrategyError {
    let message = error.0.to_string();
    let last_line = source.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()).last().map_or(1, |(i, _)| i + 1);
    let at_the_end = error.1.line().is_none_or(|line| line >= last_line);
    let runs_past_a_bracket = match error.0.as_ref() {
        rhai::ParseErrorType::MissingToken(token, _) => at_the_end && ["}", ")", "]"].contains(&token.as_str()),
        rhai::ParseErrorType::WrongFnDefinition => true,
        _ => false,
    };
    if runs_past_a_bracket && let Some((line, column, bracket, function)) = lint::unclosed(source) {
        let within = function.map_or(String::new(), |f| format!(" in fn {f}"));
        let end = error.1.line().map_or(String::new(), |l| format!(" (found at line {l})"));
        return StrategyError {
            location: Some(Location { file: file.to_string(), line, column }),
            message: format!("this `{bracket}`{within} is never closed: {message}{end}"),
        };
    }
    StrategyError { location: location(file, error.position()), message }
}

fn location(file: &str, position: Position) -> Option<Location> {
    Some(Location { file: file.to_string(), line: position.line()?, column: position.position().unwrap_or(1) })
}

/// Where `fn name` is defined in the source.
fn definition(file: &str, source: &str, name: &str) -> Option<Location> {
    source.lines().enumerate().find_map(|(i, line)| {
        let column = line.find(&format!("fn {name}"))?;
        let rest = line[column + 3 + name.len()..].trim_start();
        rest.starts_with('(').then(|| Location { file: file.to_string(), line: i + 1, column: column + 1 })
    })
}

/// Registers each host module whose name `source` holds as a word (in code,
/// a string or a comment: more than it uses is harmless), and keeps the
/// rest for a later version of the script. Written out is the only way to a
/// module (no `eval`, no imports, a function pointer cannot hold a `::`
/// path) except `parse_json`, which evaluates its text as an expression: a
/// source that names it, or `Fn` (a pointer to it by a built name), gets all
/// of them. Rhai compares each `ta::` with every registered module's name.
fn register_named_modules(
    engine: &mut Engine,
    unregistered: &mut Vec<(&'static str, rhai::Shared<Module>)>,
    source: &str,
) {
    let all = ["parse_json", "Fn"].iter().any(|word| names_word(source, word));
    unregistered.retain(|(name, module)| {
        if !all && !names_word(source, name) {
            return true;
        }
        engine.register_static_module(*name, module.clone());
        false
    });
}

/// True if `word` occurs in `text` not as part of a longer identifier.
fn names_word(text: &str, word: &str) -> bool {
    let is_identifier = |c: char| c.is_alphanumeric() || c == '_';
    text.match_indices(word).any(|(at, _)| {
        !text[..at].chars().next_back().is_some_and(is_identifier)
            && !text[at + word.len()..].chars().next().is_some_and(is_identifier)
    })
}

fn compile(
    engine: &Engine,
    file: &str,
    source: &str,
    options: &ScriptOptions,
    guard: &CallbackGuard,
    budget: Duration,
) -> Result<Compiled, StrategyError> {
    if source.trim().is_empty() {
        return Err(StrategyError {
            location: Some(Location { file: file.into(), line: 1, column: 1 }),
            message: "the script is empty".into(),
        });
    }
    let ast = engine.compile(source).map_err(|e| syntax_error(file, source, &e))?;
    lint::calls(source, &ast, file)?;
    let mut callbacks = rustc_hash::FxHashSet::default();
    let mut locations = HashMap::new();
    for function in ast.iter_functions() {
        let known = CALLBACKS.iter().find(|(name, ..)| *name == function.name);
        match known {
            Some((name, arity, signature)) if function.params.len() != *arity => {
                return Err(StrategyError {
                    location: definition(file, source, name),
                    message: format!(
                        "{name} takes {arity} parameter(s): expected `{signature}`, found {} parameter(s)",
                        function.params.len()
                    ),
                });
            }
            Some((name, ..)) => {
                callbacks.insert(*name);
                if let Some(location) = definition(file, source, name) {
                    locations.insert(*name, location);
                }
            }
            None if function.name.starts_with("on_") => {
                let known: Vec<_> = CALLBACKS.iter().filter(|c| c.0.starts_with("on_")).map(|c| c.0).collect();
                return Err(StrategyError {
                    location: definition(file, source, function.name),
                    message: format!("unknown callback `{}` (callbacks are: {})", function.name, known.join(", ")),
                });
            }
            None => {}
        }
    }
    let (meta, params) = if callbacks.contains("config") {
        guard.arm(budget);
        let result = engine.call_fn_with_options::<Dynamic>(
            CallFnOptions::new().eval_ast(false),
            &mut Scope::new(),
            &ast,
            "config",
            (),
        );
        guard.disarm();
        let value = result.map_err(|e| {
            let mut error = runtime_error(file, "config", *e, &options.limits);
            // Rhai reports budget and operation-limit stops without a position.
            error.location = error.location.or_else(|| definition(file, source, "config"));
            error
        })?;
        let (mut meta, params) = read_config(file, source, value, options)?;
        meta.warmup = meta.warmup.or_else(|| default_warmup(source, &params));
        (meta, params)
    } else {
        if let Some(key) = options.param_overrides.keys().next() {
            return Err(StrategyError::new(format!(
                "{file}: param `{key}` is set (by --param or the config file) but the script has no config() and declares no params"
            )));
        }
        (StrategyMeta::new(options.default_symbols.clone(), Timeframe::minute()), Map::new())
    };
    Ok(Compiled { ast, callbacks, locations, meta, params })
}

/// Warm-up candles for a strategy that does not declare `warmup`: three
/// times its longest `ta::` period (EMAs and RSIs settle over a few periods)
/// or the most candles a `market::candles` call reads, whichever is more, at
/// least 100 — when every one of them is a number or a numeric param;
/// otherwise `None` (the host's documented default applies).
fn default_warmup(source: &str, params: &Map) -> Option<usize> {
    let mut needed = 0usize;
    for (indicator, period) in lint::history_reads(source) {
        let candles = match period {
            lint::Period::Literal(n) => n,
            lint::Period::Param(name) => {
                let value = params.get(name.as_str())?;
                value
                    .as_int()
                    .ok()
                    .map(|n| n.max(0) as usize)
                    .or_else(|| value.as_float().ok().map(|f| f.max(0.0) as usize))?
            }
            lint::Period::Unknown => return None,
        };
        needed = needed.max(if indicator { candles.saturating_mul(3) } else { candles });
    }
    (needed > 0).then(|| needed.clamp(100, MAX_WARMUP as usize))
}

/// Most warm-up candles a strategy may ask for per series (`warmup` in `config()`).
const MAX_WARMUP: rhai::INT = 5_000;

fn read_config(
    file: &str,
    source: &str,
    value: Dynamic,
    options: &ScriptOptions,
) -> Result<(StrategyMeta, Map), StrategyError> {
    let err = |message: String| StrategyError {
        location: definition(file, source, "config"),
        message: format!("config(): {message}"),
    };
    let map = value.try_cast::<Map>().ok_or_else(|| {
        err("must return an object map such as #{ symbols: [\"BTCUSD\"], timeframe: \"1m\", params: #{} }".into())
    })?;
    let mut meta = StrategyMeta::new(options.default_symbols.clone(), Timeframe::minute());
    let mut params = Map::new();
    for (key, value) in map {
        match key.as_str() {
            "symbols" => {
                let array =
                    if value.is_string() { vec![value] } else { value.try_cast::<rhai::Array>().unwrap_or_default() };
                if array.is_empty() || array.len() > MAX_SYMBOLS {
                    return Err(err(format!("`symbols` must be a string or an array of 1 to {MAX_SYMBOLS} strings")));
                }
                meta.symbols = array
                    .into_iter()
                    .map(|s| match s.into_immutable_string() {
                        Ok(s) if !s.is_empty() && s.len() <= MAX_SYMBOL_BYTES => Ok(s.to_string()),
                        _ => Err(err(format!("`symbols` must hold strings of 1 to {MAX_SYMBOL_BYTES} bytes"))),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "timeframe" => {
                meta.timeframe = Timeframe::from_str(&memory::shown(&value, MAX_ERROR_BYTES))
                    .map_err(|e| err(format!("`timeframe`: {e}")))?;
            }
            "timeframes" => {
                let array = value.try_cast::<rhai::Array>().ok_or_else(|| {
                    err("`timeframes` must be an array of timeframes such as [\"1h\", \"1d\"]".into())
                })?;
                for item in array {
                    let tf = Timeframe::from_str(&memory::shown(&item, MAX_ERROR_BYTES))
                        .map_err(|e| err(format!("`timeframes`: {e}")))?;
                    if !meta.timeframes.contains(&tf) {
                        meta.timeframes.push(tf);
                    }
                }
            }
            "params" => params = value.try_cast::<Map>().ok_or_else(|| err("`params` must be an object map".into()))?,
            "warmup" => {
                let candles = value.as_int().ok().filter(|n| (1..=MAX_WARMUP).contains(n)).ok_or_else(|| {
                    let value = memory::shown(&value, MAX_ERROR_BYTES);
                    err(format!("`warmup` must be a whole number of candles from 1 to {MAX_WARMUP}, got {value}"))
                })?;
                meta.warmup = Some(candles as usize);
            }
            other => {
                return Err(err(format!(
                    "unknown key `{other}` (known: symbols, timeframe, timeframes, warmup, params)"
                )));
            }
        }
    }
    for (key, value) in &options.param_overrides {
        if !params.contains_key(key.as_str()) {
            let declared: Vec<_> = params.keys().map(|k| k.to_string()).collect();
            return Err(err(format!(
                "param `{key}` is set (by --param or the config file) but the script does not declare it (declared: {})",
                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
            )));
        }
        let declared = &params[key.as_str()];
        let number = |v: &Dynamic| v.is_int() || v.is_float();
        let fits = match value {
            serde_json::Value::Number(_) => number(declared) || declared.is_string(),
            serde_json::Value::Bool(_) => declared.is_bool() || declared.is_string(),
            serde_json::Value::String(_) => !number(declared) && !declared.is_bool(),
            _ => true,
        };
        if !fits {
            let kind = if number(declared) {
                "a number"
            } else if declared.is_bool() {
                "true or false"
            } else {
                "a value"
            };
            let declared = memory::shown(declared, MAX_ERROR_BYTES);
            return Err(err(format!(
                "param `{key}` is set to {value} (by --param or the config file), but the script declares it as {kind} ({declared})"
            )));
        }
        params.insert(key.as_str().into(), convert::from_json(value));
    }
    Ok((meta, params))
}

/// Turns a Rhai runtime error into a strategy error at its innermost location.
fn runtime_error(file: &str, callback: &str, error: EvalAltResult, limits: &SandboxConfig) -> StrategyError {
    let mut error = error;
    let mut position = error.position();
    while let EvalAltResult::ErrorInFunctionCall(_, _, inner, pos) = error {
        if !pos.is_none() {
            position = pos;
        }
        error = *inner;
    }
    if !error.position().is_none() {
        position = error.position();
    }
    error.clear_position();
    let message = match &error {
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("exceeded the limit of {} operations per callback (sandbox.max_operations)", limits.max_operations)
        }
        EvalAltResult::ErrorStackOverflow(_) => {
            format!("exceeded the limit of {} nested calls (sandbox.max_call_depth)", limits.max_call_depth)
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == sandbox::MEMORY_FULL => {
            guards::take_refusal().unwrap_or_else(|| {
                format!(
                    "needed more than the {} bytes one callback may allocate: exceeds the sandbox limits (sandbox.max_callback_memory)",
                    limits.max_callback_memory
                )
            })
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == sandbox::ABORTED => {
            "stopped: the host is shutting down".to_string()
        }
        EvalAltResult::ErrorTerminated(token, _) if token.to_string() == sandbox::SERIES_FULL => format!(
            "its series hold more than {} values together (sandbox.max_series_values)",
            limits.max_series_values
        ),
        EvalAltResult::ErrorTerminated(..) => {
            format!("exceeded its wall-clock budget of {} ms (sandbox.callback_budget_ms)", limits.callback_budget_ms)
        }
        EvalAltResult::ErrorFunctionNotFound(sig, _) => {
            // The signature holds the name, which a script may build as long as it likes.
            let sig = &memory::shown_with(MAX_ERROR_BYTES, |out| out.write_str(sig));
            let name = sig.split([' ', '(']).next().unwrap_or(sig);
            match api::signature(name) {
                Some(expected) => format!("wrong arguments in call {sig}: expected {expected}"),
                None if sig.contains("()") => {
                    format!(
                        "no function or operator {sig}: one value is unit `()` (an unset variable or `this` field, or an indicator still warming up?)"
                    )
                }
                None => format!("no function or operator {sig}"),
            }
        }
        // A thrown value, or an error naming one, may be too large to print.
        EvalAltResult::ErrorRuntime(message, _) => memory::shown(message, MAX_ERROR_BYTES),
        other => memory::shown_with(MAX_ERROR_BYTES, |out| write!(out, "{other}")),
    };
    StrategyError { location: location(file, position), message: format!("{callback}: {message}") }
}

#[cfg(test)]
mod tests {
    use super::names_word;

    #[test]
    fn a_module_is_named_by_its_word_only() {
        assert!(names_word("let f = ta::sma(c.symbol, 10);", "ta"));
        assert!(names_word("log::info(`${ta :: sma(s, 3)}`)", "ta"));
        assert!(names_word("ta", "ta"));
        assert!(!names_word("exchange::market_order(s, \"buy\", 1.0)", "market"));
        assert!(!names_word("let data = 1; let tax = 2; let _ta = 3;", "ta"));
        assert!(names_word("// timer::every(\"x\", \"1m\") later", "timer"));
    }
}
