//! Compile-tier spike (issue 20, item 5) — a report, not a product feature.
//!
//! Runs `strategies/sma_cross.rhai`'s `on_candle` over 1,000,000 one-minute
//! candles on the host's own engine setup (sandboxed engine, host API,
//! shared candle map, `this`), through:
//! 1. Rhai's AST interpreter, as the host does today;
//! 2. Rhai's own bytecode VM ("grain", Rhai ≥ 1.27, feature `grain`), which
//!    lowers the AST to instructions and hands anything it cannot lower back
//!    to the interpreter;
//! 3. a closure compiler written here for the subset strategies use
//!    (see `closures` below);
//! 4. the same logic as a native Rust strategy, for the ceiling.
//!
//! Tiers 1–3 must produce identical commands on every bar (the differential
//! test: the bench panics otherwise). It then prints ns per candle and
//! bars/s for each tier, and which statements of the shipped and example
//! strategies each compiler covers.
//!
//! `cargo bench --bench compile_tier --features compile-tier-spike`

#[path = "compile_tier/closures.rs"]
mod closures;
#[path = "common/native.rs"]
mod native;
#[path = "common/setup.rs"]
mod setup;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rhai::{AST, CallFnOptions, Dynamic, Engine, ImmutableString, Map, Module, Scope};
use tradehost::config::SandboxConfig;
use tradehost::model::Candle;
use tradehost::script::convert::CandleArg;
use tradehost::script::{CallbackGuard, api, hardened_engine};
use tradehost::strategy::{SharedContext, Strategy, StrategyEvent};

const SMA_CROSS: &str = include_str!("../strategies/sma_cross.rhai");
/// Candles per tier (`BARS=n` to change, e.g. under callgrind).
fn bars() -> usize {
    std::env::var("BARS").ok().and_then(|b| b.parse().ok()).unwrap_or(1_000_000)
}

/// The host's engine for one strategy, as `ScriptStrategy::new` builds it.
struct Host {
    engine: Engine,
    ast: AST,
    ctx: SharedContext,
    guard: CallbackGuard,
    candle: CandleArg,
    symbol: ImmutableString,
    timeframe: ImmutableString,
    state: Dynamic,
}

impl Host {
    fn new(source: &str) -> Host {
        let ctx = setup::unthrottled_context();
        let guard = CallbackGuard::default();
        let mut engine = hardened_engine(&SandboxConfig::default(), &guard, Arc::new(AtomicBool::new(false)));
        api::install(&mut engine, &ctx);
        for (name, module) in api::modules(&ctx) {
            engine.register_static_module(name, module.into());
        }
        let mut params = Module::new();
        params.set_var("fast", 10 as rhai::INT);
        params.set_var("slow", 30 as rhai::INT);
        params.set_var("size", 0.05 as rhai::FLOAT);
        engine.register_static_module("params", params.into());
        let ast = engine.compile(source).expect("sma_cross compiles");
        let mut state = Dynamic::from_map(Map::new());
        let options = CallFnOptions::new().eval_ast(false).bind_this_ptr(&mut state);
        drop(
            engine
                .call_fn_with_options::<Dynamic>(options, &mut Scope::new(), &ast, "on_start", ())
                .expect("on_start runs"),
        );
        ctx.borrow_mut().drain();
        Host {
            engine,
            ast,
            ctx,
            guard,
            candle: CandleArg::default(),
            symbol: "BTCUSD".into(),
            timeframe: "1m".into(),
            state,
        }
    }

    /// Feeds one candle to the context and returns `c` for the script.
    fn begin(&mut self, candle: &Candle) -> Dynamic {
        let mut ctx = self.ctx.borrow_mut();
        ctx.market.push_candle(candle.clone());
        ctx.begin_event(&StrategyEvent::Candle(candle.clone()));
        drop(ctx);
        self.candle.fill(candle, &self.symbol, &self.timeframe)
    }

    /// The commands of this candle, folded into `digest`.
    fn end(&mut self, digest: &mut DefaultHasher, dump: bool) -> usize {
        let commands = self.ctx.borrow_mut().drain();
        for command in &commands {
            let text = format!("{command:?}");
            if dump {
                eprintln!("  {text}");
            }
            text.hash(digest);
        }
        commands.len()
    }
}

/// One run of a tier: ns spent in callbacks per candle, commands and their digest.
struct Run {
    name: &'static str,
    nanos_per_bar: f64,
    commands: usize,
    digest: u64,
    per_bar: Vec<u64>,
}

fn run_tier(name: &'static str, candles: &[Candle], mut call: impl FnMut(&mut Host, Dynamic), host: &mut Host) -> Run {
    let mut digest = DefaultHasher::new();
    let mut per_bar = Vec::with_capacity(candles.len());
    let mut spent = Duration::ZERO;
    let mut commands = 0;
    let dump: Option<usize> = std::env::var("DUMP_BAR").ok().and_then(|b| b.parse().ok());
    for (i, candle) in candles.iter().enumerate() {
        let dump = dump == Some(i);
        if dump {
            eprintln!("{name}, bar {i}: this = {:?}", host.state);
        }
        let c = host.begin(candle);
        let started = Instant::now();
        call(host, c);
        spent += started.elapsed();
        let mut bar = DefaultHasher::new();
        commands += host.end(&mut bar, dump);
        let bar = bar.finish();
        bar.hash(&mut digest);
        per_bar.push(bar);
    }
    Run {
        name,
        nanos_per_bar: spent.as_nanos() as f64 / candles.len() as f64,
        commands,
        digest: digest.finish(),
        per_bar,
    }
}

fn interpreter(candles: &[Candle]) -> Run {
    let mut host = Host::new(SMA_CROSS);
    let mut scope = Scope::new();
    run_tier(
        "Rhai AST interpreter (today)",
        candles,
        |host, c| {
            host.guard.arm(Duration::from_millis(1_000));
            let options = CallFnOptions::new().eval_ast(false).rewind_scope(true).bind_this_ptr(&mut host.state);
            drop(
                host.engine.call_fn_with_options::<Dynamic>(options, &mut scope, &host.ast, "on_candle", (c,)).unwrap(),
            );
            host.guard.disarm();
        },
        &mut host,
    )
}

fn grain(candles: &[Candle]) -> Run {
    let mut host = Host::new(SMA_CROSS);
    let program = rhai::grain::Compiler::new().compile(&host.ast);
    // The VM borrows the engine; the bench keeps a second engine alive for it
    // so `host` stays mutable (same setup, same context).
    let engine = std::mem::replace(&mut host.engine, Engine::new_raw());
    let mut vm = rhai::grain::Vm::new(&engine);
    let mut scope = Scope::new();
    run_tier(
        "Rhai grain bytecode VM",
        candles,
        |host, c| {
            host.guard.arm(Duration::from_millis(1_000));
            let options = CallFnOptions::new().eval_ast(false).rewind_scope(true).bind_this_ptr(&mut host.state);
            drop(vm.call_fn_with_options::<Dynamic>(options, &mut scope, &program, "on_candle", (c,)).unwrap());
            host.guard.disarm();
        },
        &mut host,
    )
}

fn compiled_closures(candles: &[Candle]) -> Run {
    let mut host = Host::new(SMA_CROSS);
    let mut params = Map::new();
    params.insert("fast".into(), Dynamic::from_int(10));
    params.insert("slow".into(), Dynamic::from_int(30));
    params.insert("size".into(), Dynamic::from_float(0.05));
    let compiled =
        closures::compile_fn(&host.ast, "on_candle", &params).expect("sma_cross's on_candle is in the subset");
    let mut runner = closures::Runner::new(&host.engine, &host.ctx);
    run_tier(
        "closure compiler (this spike)",
        candles,
        |host, c| {
            host.guard.arm(Duration::from_millis(1_000));
            drop(runner.call(&compiled, &mut host.state, c).unwrap());
            host.guard.disarm();
        },
        &mut host,
    )
}

fn native(candles: &[Candle]) -> f64 {
    let ctx = setup::unthrottled_context();
    let mut strategy = native::NativeSmaCross::new(ctx.clone(), "bench");
    let mut spent = Duration::ZERO;
    for candle in candles {
        ctx.borrow_mut().market.push_candle(candle.clone());
        let event = StrategyEvent::Candle(candle.clone());
        ctx.borrow_mut().begin_event(&event);
        let started = Instant::now();
        strategy.handle(&event).unwrap();
        spent += started.elapsed();
        ctx.borrow_mut().drain();
    }
    spent.as_nanos() as f64 / candles.len() as f64
}

fn assert_same(reference: &Run, other: &Run) {
    if let Some(bar) = reference.per_bar.iter().zip(&other.per_bar).position(|(a, b)| a != b) {
        panic!("{} differs from {} first at bar {bar}", other.name, reference.name);
    }
    assert_eq!((reference.commands, reference.digest), (other.commands, other.digest));
}

/// Statements of every shipped and example strategy, and how many each compiler lowers.
fn coverage() {
    let engine = {
        let ctx = setup::unthrottled_context();
        let guard = CallbackGuard::default();
        let mut engine = hardened_engine(&SandboxConfig::default(), &guard, Arc::new(AtomicBool::new(false)));
        api::install(&mut engine, &ctx);
        for (name, module) in api::modules(&ctx) {
            engine.register_static_module(name, module.into());
        }
        engine
    };
    let mut files: Vec<_> = ["strategies", "examples/strategies"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()))
        .filter(|p| p.extension().is_some_and(|e| e == "rhai"))
        .collect();
    files.sort();
    println!("\ncoverage of the shipped and example strategies (statements in functions):");
    println!("{:<42} {:>6} {:>18} {:>22}", "file", "stmts", "closure compiler", "grain residual nodes");
    let (mut total, mut covered) = (0, 0);
    for file in files {
        let source = std::fs::read_to_string(&file).unwrap();
        let ast = engine.compile(&source).unwrap();
        let (stmts, lowered, missing) = closures::coverage(&ast);
        let program = rhai::grain::Compiler::new().compile(&ast);
        total += stmts;
        covered += lowered;
        println!(
            "{:<42} {:>6} {:>10} ({:>3.0} %) {:>22}",
            file.display(),
            stmts,
            lowered,
            100.0 * lowered as f64 / stmts.max(1) as f64,
            program.residual_nodes()
        );
        if !missing.is_empty() {
            println!("    not in the subset: {}", missing.into_iter().collect::<Vec<_>>().join(", "));
        }
    }
    println!("{:<42} {:>6} {:>10} ({:>3.0} %)", "all", total, covered, 100.0 * covered as f64 / total.max(1) as f64);
}

fn main() {
    let data = setup::random_walk(bars(), 60_000.0, 0.004);
    let rounds: usize = std::env::var("ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(3);
    println!(
        "machine: {} cores; sma_cross.rhai on_candle over {} candles, callback time only, best of {rounds} alternating rounds",
        std::thread::available_parallelism().map_or(1, |n| n.get()),
        data.len()
    );
    let mut best: Vec<Run> = Vec::new();
    let mut native_best = f64::INFINITY;
    for _ in 0..rounds {
        let runs = [interpreter(&data), grain(&data), compiled_closures(&data)];
        for run in &runs[1..] {
            assert_same(&runs[0], run);
        }
        native_best = native_best.min(native(&data));
        if best.is_empty() {
            best.extend(runs);
        } else {
            for (kept, run) in best.iter_mut().zip(runs) {
                if run.nanos_per_bar < kept.nanos_per_bar {
                    *kept = run;
                }
            }
        }
    }
    let reference = &best[0];
    println!("identical commands on every bar: {} commands in all ({:016x})", reference.commands, reference.digest);
    println!("{:<34} {:>10} {:>12} {:>9}", "tier", "ns/candle", "bars/s", "speed-up");
    for run in &best {
        println!(
            "{:<34} {:>10.0} {:>12.0} {:>8.2}×",
            run.name,
            run.nanos_per_bar,
            1e9 / run.nanos_per_bar,
            reference.nanos_per_bar / run.nanos_per_bar
        );
    }
    println!(
        "{:<34} {:>10.0} {:>12.0} {:>8.2}×  (no plots)",
        "native Rust",
        native_best,
        1e9 / native_best,
        reference.nanos_per_bar / native_best
    );
    coverage();
}
