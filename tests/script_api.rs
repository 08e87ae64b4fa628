//! The script host API and sandbox, driven synchronously (as a backtest does).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use tradehost::config::SandboxConfig;
use tradehost::model::{AccountView, Candle, OrderKind, Side};
use tradehost::script::{ScriptOptions, ScriptStrategy, check};
use tradehost::strategy::{
    OrderIds, SharedContext, Strategy, StrategyCommand, StrategyContext, StrategyEnv, StrategyEvent,
};

fn options() -> ScriptOptions {
    ScriptOptions {
        limits: SandboxConfig {
            max_operations: 200_000,
            callback_budget_ms: 2_000,
            max_array_size: 10_000,
            max_string_size: 100_000,
            ..SandboxConfig::default()
        },
        param_overrides: Default::default(),
        default_symbols: vec!["X".into()],
        panicking_function: false,
        ml: Default::default(),
    }
}

fn build(source: &str) -> (ScriptStrategy, SharedContext) {
    build_with(source, options())
}

fn build_with(source: &str, options: ScriptOptions) -> (ScriptStrategy, SharedContext) {
    let account = Arc::new(ArcSwap::from_pointee(AccountView { currency: "USD".into(), ..Default::default() }));
    let ctx = StrategyContext::new("t", account, OrderIds::new("t", Arc::new(AtomicU64::new(0))), 1000).shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    (ScriptStrategy::new("t.rhai", source, options, env).unwrap_or_else(|e| panic!("{e}")), ctx)
}

fn candle(i: i64, close: f64) -> Candle {
    Candle {
        symbol: "X".into(),
        time: i * 60_000,
        open: close,
        high: close + 1.0,
        low: close - 1.0,
        close,
        volume: 1.0,
    }
}

fn feed(
    strategy: &mut ScriptStrategy,
    ctx: &SharedContext,
    c: Candle,
) -> Result<bool, tradehost::strategy::StrategyError> {
    ctx.borrow_mut().market.push_candle(c.clone());
    strategy.handle(&StrategyEvent::Candle(c))
}

fn logs(ctx: &SharedContext) -> Vec<String> {
    ctx.borrow_mut()
        .drain()
        .into_iter()
        .filter_map(|c| if let StrategyCommand::Log { message, .. } = c { Some(message) } else { None })
        .collect()
}

#[test]
fn compile_errors_report_file_line_and_column() {
    let err = check("s.rhai", "fn on_candle(c) {\n  let x = ;\n}", &options()).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("s.rhai:2:"), "{text}");
}

#[test]
fn wrong_callback_signature_and_unknown_callbacks_are_rejected() {
    let err = check("s.rhai", "fn on_start() {}\n\nfn on_candle() { }", &options()).unwrap_err();
    assert_eq!(err.location.as_ref().map(|l| l.line), Some(3));
    assert!(err.message.contains("fn on_candle(candle)"), "{err}");
    let err = check("s.rhai", "fn on_candel(c) { }", &options()).unwrap_err();
    assert!(err.message.contains("unknown callback `on_candel`"), "{err}");
}

#[test]
fn a_runaway_config_names_its_file_and_line() {
    let source = "// a strategy\nfn config() {\n    let x = 0;\n    loop { x += 1; }\n}\n";
    let err = check("s.rhai", source, &options()).unwrap_err();
    let location = err.location.as_ref().expect("a location");
    assert_eq!((location.file.as_str(), location.line), ("s.rhai", 2), "{err}");
    assert!(err.message.contains("config") && err.message.contains("sandbox.max_operations"), "{err}");
}

#[test]
fn warmup_is_declared_or_follows_the_longest_indicator() {
    let meta = |source: &str| build_with(source, options()).0.meta().warmup;
    let declared = r#"fn config() { #{ warmup: 42 } }
fn on_candle(c) { ta::sma(c.symbol, 200); }"#;
    assert_eq!(meta(declared), Some(42));
    // Three times the longest period, read from numbers and params (overrides included).
    let from_params = r#"fn config() { #{ params: #{ slow: 400 } } }
fn on_candle(c) { ta::sma(c.symbol, 20); ta::ema(c.symbol, params::slow); ta::bbands(c.symbol, 20, 2.0); }"#;
    assert_eq!(meta(from_params), Some(1_200));
    let short = "fn config() { #{} }\nfn on_candle(c) { ta::rsi(c.symbol, 14); }";
    assert_eq!(meta(short), Some(100), "at least 100");
    let reads = "fn config() { #{} }\nfn on_candle(c) { ta::rsi(c.symbol, 14); market::candles(c.symbol, 300); }";
    assert_eq!(meta(reads), Some(300), "the candles it reads");
    let unknown = "fn config() { #{} }\nfn on_candle(c) { let n = 5; ta::sma(c.symbol, n * 2); }";
    assert_eq!(meta(unknown), None, "not known: the documented default applies");
    let err = check("s.rhai", "fn config() { #{ warmup: 0 } }", &options()).unwrap_err();
    assert!(err.message.contains("`warmup` must be a whole number of candles from 1 to 5000, got 0"), "{err}");
}

#[test]
fn config_metadata_and_param_overrides() {
    let source = r#"fn config() { #{ symbols: ["X"], timeframe: "5m", params: #{ fast: 10, slow: 30 } } }
fn on_start() { print(`${params::fast}/${params::slow}`); }"#;
    let mut options = options();
    options.param_overrides.insert("fast".into(), serde_json::json!(7));
    let (mut s, ctx) = build_with(source, options.clone());
    assert_eq!(s.meta().timeframe.to_string(), "5m");
    s.handle(&StrategyEvent::Start).unwrap();
    assert_eq!(logs(&ctx), vec!["7/30"]);

    options.param_overrides.insert("fsat".into(), serde_json::json!(1));
    let err = check("s.rhai", source, &options).unwrap_err();
    assert!(err.message.contains("param `fsat`") && err.message.contains("declared: fast, slow"), "{err}");
}

#[test]
fn orders_return_ids_at_once_and_queue_commands() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            this.id = exchange::market_order("X", "buy", 2);
            exchange::limit_order("X", "sell", 1.5, 101.25, #{ post_only: true, tif: "gtc" });
            print(this.id);
        }"#,
    );
    feed(&mut s, &ctx, candle(0, 100.0)).unwrap();
    let commands = ctx.borrow_mut().drain();
    let places: Vec<_> = commands
        .iter()
        .filter_map(|c| if let StrategyCommand::Place(r) = c { Some(r.clone()) } else { None })
        .collect();
    assert_eq!(places.len(), 2);
    assert_eq!(
        (places[0].side, places[0].kind, places[0].size.to_string()),
        (Side::Buy, OrderKind::Market, "2".to_string())
    );
    assert_eq!((places[1].price.unwrap().to_string(), places[1].post_only), ("101.25".to_string(), true));
    let printed = commands
        .iter()
        .find_map(|c| if let StrategyCommand::Log { message, .. } = c { Some(message.clone()) } else { None });
    assert_eq!(printed.as_deref(), Some(places[0].client_id.as_str()));
}

#[test]
fn wrong_argument_types_and_counts_name_the_signature() {
    let (mut s, ctx) = build(r#"fn on_candle(c) { exchange::market_order("X", "buy", "lots"); }"#);
    let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
    assert!(
        err.contains("`size` must be a number, got string")
            && err.contains("expected exchange::market_order(symbol: string"),
        "{err}"
    );
    assert!(err.starts_with("t.rhai:1:"), "{err}");

    // A wrong argument count is known before anything runs: the script does not compile.
    let account = Arc::new(ArcSwap::from_pointee(AccountView::default()));
    let ctx = StrategyContext::new("t", account, OrderIds::new("t", Arc::new(AtomicU64::new(0))), 10).shared();
    let env = StrategyEnv { ctx, abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    let source = r#"fn on_candle(c) { exchange::market_order("X"); }"#;
    let err = ScriptStrategy::new("t.rhai", source, options(), env).err().expect("refused at compile").to_string();
    assert!(
        err.starts_with("t.rhai:1:")
            && err.contains("called with 1 argument(s)")
            && err.contains("expected exchange::market_order(symbol: string"),
        "{err}"
    );

    let (mut s, ctx) = build(r#"fn on_candle(c) { exchange::market_order("X", "hold", 1); }"#);
    let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
    assert!(err.contains("side must be \"buy\" or \"sell\""), "{err}");
}

#[test]
fn sandbox_limits_fail_the_callback_with_a_clear_error() {
    let memory = "needed more than the 8388608 bytes one callback may allocate: exceeds the sandbox limits";
    let cases = [
        ("fn on_candle(c) { loop { } }", "operations per callback"),
        ("fn f(n) { f(n + 1) }\nfn on_candle(c) { f(0); }", "nested calls"),
        ("fn on_candle(c) { let s = \"x\"; loop { s += s; } }", memory),
        ("fn on_candle(c) { let a = [1]; loop { a += a; } }", memory),
        ("fn on_candle(c) { let a = []; loop { a.push([1, 2, 3, 4, 5, 6, 7, 8]); } }", memory),
        ("fn on_candle(c) { let m = #{}; let i = 0; loop { m[`k${i}`] = blob(1000); i += 1; } }", memory),
        ("fn on_candle(c) { let s = \"ab\"; s.pad(1 << 40, 'y'); }", "string.pad would allocate"),
        ("fn on_candle(c) { let a = []; a.pad(1 << 40, 0); }", "array.pad would allocate"),
        ("fn on_candle(c) { let b = blob(1 << 40); }", "blob would allocate"),
        ("fn on_candle(c) { let s = \"x\"; s.pad(100000, 'x'); let t = s; s.replace(\"\", t); }", "string.replace"),
        ("fn on_candle(c) { let s = \"x\"; s.pad(1000000, 'x'); s.split(\"\"); }", "string.split"),
        // One string a thousand times is small in memory but not in print.
        (
            "fn on_candle(c) { let s = \"x\"; s.pad(100000, 'x'); let a = []; a.pad(1000, s); let t = `${a}`; }",
            "printing an array would allocate",
        ),
        (
            "fn on_candle(c) { let s = \"x\"; s.pad(100000, 'x'); let a = []; a.pad(1000, s); print(a); }",
            "printing an array would allocate",
        ),
        (
            "fn on_candle(c) { let s = \"x\"; s.pad(100000, 'x'); let a = []; a.pad(1000, s); a.to_string() }",
            "printing an array would allocate",
        ),
        // An option or name given a huge value is refused without printing it.
        (
            "fn on_candle(c) { let s = \"x\"; s.pad(2000, 'x'); let a = []; a.pad(300000, s); exchange::market_order(\"X\", \"buy\", 1.0, #{ tif: a }); }",
            "`tif` must be a string",
        ),
        (
            "fn on_candle(c) { let s = \"\\x7f\"; s.pad(5000000, '\\x7f'); exchange::market_order(\"X\", s, 1.0); }",
            "`side` is 5000000 bytes",
        ),
        ("fn on_candle(c) { let s = \"a\"; s.pad(3000000, 'a'); let f = Fn(s); f.call(); }", "no function"),
        // Values nested deeper than the printers and comparisons go.
        (
            "fn on_candle(c) { let a = []; for i in 0..300 { a = [a.take()]; } let t = a.to_debug(); }",
            "nests more than",
        ),
        (
            "fn on_candle(c) { let a = []; for i in 0..300 { a = [a.take()]; } let t = a == a; }",
            "nests more than 64 levels deep",
        ),
        // Copies of a host value are as large as what a copy allocates.
        (
            "fn on_candle(c) { let s = \"a\"; s.pad(300000, 'a'); let it = s.chars(); let a = []; a.pad(2000, it); }",
            "array.pad would allocate",
        ),
        (
            "fn on_candle(c) { let a = [0.0 / 0.0, 1.0, 0.0 / 0.0, -1.0]; a.sort(); if a[0] != -1.0 { throw \"order\"; } a.sort_by(|x, y| 0); throw \"sorted\"; }",
            "sorted",
        ),
        ("fn on_candle(c) { import \"os\" as os; }", "refused"),
    ];
    for (source, expected) in cases {
        let mut options = options();
        options.limits.max_operations = 5_000_000;
        options.limits.max_callback_memory = 8 << 20;
        let (mut s, ctx) = build_with(source, options);
        let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
        assert!(err.contains(expected) && err.contains("t.rhai:"), "{source}: {err}");
        assert!(err.len() < 2_000, "{source}: {err}");
        // The strategy goes on after the failed callback.
        assert!(feed(&mut s, &ctx, candle(1, 1.0)).is_err());
    }
    assert!(check("s.rhai", "fn on_candle(c) { eval(\"1\"); }", &options()).is_err(), "eval is disabled");
}

#[test]
fn a_thrown_or_logged_value_too_large_to_print_is_cut() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            let s = "x"; s.pad(100000, 'x'); let a = []; a.pad(100000, s);
            if c.close > 1.0 { throw a; }
            log::info(a);
        }"#,
    );
    feed(&mut s, &ctx, candle(0, 1.0)).unwrap();
    let logged = logs(&ctx);
    assert!(logged[0].len() < 5_000 && logged[0].starts_with("[\"xxxx"), "{}", logged[0].len());
    let err = feed(&mut s, &ctx, candle(1, 2.0)).unwrap_err().to_string();
    assert!(err.len() < 2_000 && err.contains("[\"xxxx") && err.ends_with('…'), "{err}");
}

#[test]
fn what_this_keeps_is_held_to_the_sandbox_limits_after_callbacks() {
    // 500 elements a callback against max_array_size = 10 000: found
    // within a few kilobytes of growth after the limit.
    let (mut s, ctx) = build("fn on_start() { this.a = []; }\nfn on_candle(c) { for i in 0..500 { this.a.push(i); } }");
    s.handle(&StrategyEvent::Start).unwrap();
    let failed_at = (0..100).find(|&i| feed(&mut s, &ctx, candle(i, 1.0)).is_err()).expect("held to the limit");
    assert!((20..=45).contains(&failed_at), "failed at callback {failed_at}");
    let err = feed(&mut s, &ctx, candle(100, 1.0)).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("after on_candle: `this` holds")
            && message.contains("array elements: exceeds the sandbox limits (sandbox.max_array_size = 10000)")
            && message.starts_with("t.rhai:2:1:"),
        "{message}"
    );

    // Copies of one string count as often as they appear: 10 kB pushed ten
    // times a callback, against max_string_size = 100 000.
    let (mut s, ctx) = build(
        "fn on_start() { this.a = []; this.s = \"x\"; this.s.pad(10000, 'x'); }\n\
         fn on_candle(c) { for i in 0..10 { this.a.push(this.s); } }",
    );
    s.handle(&StrategyEvent::Start).unwrap();
    let failed_at = (0..200).find(|&i| feed(&mut s, &ctx, candle(i, 1.0)).is_err()).expect("held to the limit");
    let err = s.export_state().unwrap_err().to_string();
    assert!(err.contains("bytes of strings: exceeds the sandbox limits (sandbox.max_string_size = 100000)"), "{err}");
    assert!(failed_at < 200, "{failed_at}");

    // Restored state is measured at the first callback.
    let mut options = options();
    options.limits.max_map_size = 3;
    let (mut s, ctx) = build_with("fn on_candle(c) { }", options);
    s.restore_state(serde_json::json!({"a": 1, "b": 2, "c": 3, "d": 4}));
    let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
    assert!(err.contains("4 map entries: exceeds the sandbox limits (sandbox.max_map_size = 3)"), "{err}");
}

#[test]
fn wall_clock_budget_stops_slow_callbacks() {
    let mut options = options();
    options.limits.max_operations = u64::MAX / 2;
    options.limits.callback_budget_ms = 50;
    let (mut s, ctx) = build_with("fn on_candle(c) { loop { } }", options);
    let started = std::time::Instant::now();
    let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
    assert!(err.contains("wall-clock budget of 50 ms"), "{err}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[test]
fn state_survives_reload_and_on_reload_runs() {
    let (mut s, ctx) = build("fn on_candle(c) { this.n = (this.n ?? 0) + 1; print(`v1 ${this.n}`); }");
    feed(&mut s, &ctx, candle(0, 1.0)).unwrap();
    feed(&mut s, &ctx, candle(1, 1.0)).unwrap();
    assert!(s.reload("fn on_candle(c) { let x = ; }").is_err(), "broken source is refused");
    feed(&mut s, &ctx, candle(2, 1.0)).unwrap();
    s.reload(
        "fn on_reload() { print(`reloaded at ${this.n}`); }\nfn on_candle(c) { this.n += 1; print(`v2 ${this.n}`); }",
    )
    .unwrap();
    feed(&mut s, &ctx, candle(3, 1.0)).unwrap();
    assert_eq!(logs(&ctx), vec!["v1 1", "v1 2", "v1 3", "reloaded at 3", "v2 4"]);
    assert_eq!(s.export_state().unwrap(), serde_json::json!({"n": 4}));
}

#[test]
fn unstorable_state_names_its_key() {
    let (mut s, ctx) = build("fn on_candle(c) { this.nested = #{ f: Fn(\"on_candle\") }; }");
    feed(&mut s, &ctx, candle(0, 1.0)).unwrap();
    let err = s.export_state().unwrap_err().to_string();
    assert!(err.contains("`nested.f`"), "{err}");
}

#[test]
fn ta_functions_match_ta_lib_through_the_script_api() {
    let fx: serde_json::Value = serde_json::from_str(include_str!("fixtures/ta_reference.json")).unwrap();
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            let m = ta::macd("X", 12, 26, 9);
            let b = ta::bbands("X", 20, 2.0);
            let row = [ta::sma("X", 10), ta::ema("X", 10), ta::rsi("X", 14), ta::atr("X", 14),
                       if m == () { () } else { m.macd }, if b == () { () } else { b.upper },
                       ta::highest("X", 20), ta::lowest("X", 20), ta::vwap("X")];
            this.rows = (this.rows ?? []) + [row];
        }"#,
    );
    for candle in common::fixture_candles(&fx) {
        feed(&mut s, &ctx, candle).unwrap();
    }
    let state = s.export_state().unwrap();
    let rows = state["rows"].as_array().unwrap();
    let columns = [
        &fx["sma_10"],
        &fx["ema_10"],
        &fx["rsi_14"],
        &fx["atr_14"],
        &fx["macd_12_26_9"]["macd"],
        &fx["bbands_20_2"]["upper"],
        &fx["highest_20"],
        &fx["lowest_20"],
        &fx["vwap"],
    ];
    for (col, reference) in columns.iter().enumerate() {
        for (i, row) in rows.iter().enumerate() {
            let (ours, theirs) = (row[col].as_f64(), reference[i].as_f64());
            match (ours, theirs) {
                (None, None) => {}
                (Some(a), Some(b)) => {
                    assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "column {col} row {i}: {a} vs {b}")
                }
                _ => panic!("column {col} row {i}: warm-up differs: {ours:?} vs {theirs:?}"),
            }
        }
    }
}

#[test]
fn array_forms_compute_over_a_scripts_own_series() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) { print(ta::sma([1, 2, 3, 4.0], 2)); print(ta::highest([1, 5, 2], 2)); print(ta::sma([1], 2)); }"#,
    );
    feed(&mut s, &ctx, candle(0, 1.0)).unwrap();
    assert_eq!(logs(&ctx), vec!["3.5", "5.0", ""]);
}

#[test]
fn a_series_keeps_its_newest_values_and_indexes_from_the_newest() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            if this.h == () { this.h = series(3); }
            this.h.push(c.close);
            let h = this.h;
            print(`${h.len} ${h.capacity} ${h.is_full()} [${h[0]} ${h[1]} ${h[2]} ${h[3]}] sum=${h.sum()} mean=${h.mean()} min=${h.min()} max=${h.max()}`);
        }"#,
    );
    for (i, close) in [5.0, 1.0, 4.0, 2.0].into_iter().enumerate() {
        feed(&mut s, &ctx, candle(i as i64, close)).unwrap();
    }
    assert_eq!(
        logs(&ctx),
        vec![
            "1 3 false [5.0   ] sum=5.0 mean=5.0 min=5.0 max=5.0",
            "2 3 false [1.0 5.0  ] sum=6.0 mean=3.0 min=1.0 max=5.0",
            "3 3 true [4.0 1.0 5.0 ] sum=10.0 mean=3.3333333333333335 min=1.0 max=5.0",
            "3 3 true [2.0 4.0 1.0 ] sum=7.0 mean=2.3333333333333335 min=1.0 max=4.0",
        ]
    );
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            let h = series(4);
            for x in [1, 2.5, 3] { h.push(x); }
            let seen = [];
            for x in h { seen.push(x); }
            print(`${seen} ${h.to_array()} ${series(2).mean()} ${h}`);
        }"#,
    );
    feed(&mut s, &ctx, candle(0, 1.0)).unwrap();
    assert_eq!(logs(&ctx), vec!["[1.0, 2.5, 3.0] [1.0, 2.5, 3.0]  series(3 of 4)"]);
}

#[test]
fn bad_series_use_names_what_is_wrong() {
    let cases = [
        ("let h = series(0);", "capacity must be from 1 to 10000 (sandbox.max_array_size), got 0"),
        ("let h = series(10001);", "got 10001"),
        ("let h = series(2.5);", "series(capacity): the capacity must be a whole number of values, got f64"),
        ("let h = series(2); h.push(\"x\");", "series.push: the value must be a number"),
        ("let h = series(2); h.push(1.0 / 0.0);", "series.push: the value must be finite"),
        ("let h = series(2); h.push(1); h[-1]", "negative is not allowed"),
    ];
    for (body, expected) in cases {
        let (mut s, ctx) = build(&format!("fn on_candle(c) {{ {body} }}"));
        let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
        assert!(err.contains(expected), "{body}: {err}");
        assert!(err.starts_with("t.rhai:1:"), "{body}: the error has a location: {err}");
    }
}

#[test]
fn ta_on_a_series_equals_ta_on_the_same_array() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            if this.h == () { this.h = series(30); this.a = []; }
            this.h.push(c.close);
            this.a.push(c.close);
            if this.a.len() > 30 { this.a.remove(0); }
            let h = this.h;
            let a = this.a;
            let same = ta::sma(h, 10) == ta::sma(a, 10) && ta::ema(h, 10) == ta::ema(a, 10)
                && ta::rsi(h, 14) == ta::rsi(a, 14) && ta::highest(h, 20) == ta::highest(a, 20)
                && ta::lowest(h, 20) == ta::lowest(a, 20)
                && `${ta::macd(h, 12, 26, 9)}` == `${ta::macd(a, 12, 26, 9)}`
                && `${ta::bbands(h, 20, 2.0)}` == `${ta::bbands(a, 20, 2.0)}`;
            print(`${same} ${ta::sma(h, 10)}`);
        }"#,
    );
    for i in 0..60 {
        feed(&mut s, &ctx, candle(i, 100.0 + (i as f64 * 0.7).sin() * 5.0)).unwrap();
    }
    let lines = logs(&ctx);
    assert_eq!(lines.len(), 60);
    assert!(lines.iter().all(|l| l.starts_with("true ")), "{lines:?}");
    assert!(lines[5].ends_with(' '), "sma(10) warms up on a series too: {}", lines[5]);
    assert!(!lines[59].ends_with(' '), "{}", lines[59]);
}

#[test]
fn a_series_in_this_survives_reload_and_restart() {
    let source = r#"fn on_candle(c) {
        if this.h == () { this.h = series(3); }
        this.h.push(c.close);
        print(`${this.h.to_array()} ${this.h.sum()}`);
    }"#;
    let (mut s, ctx) = build(source);
    for i in 0..4 {
        feed(&mut s, &ctx, candle(i, i as f64)).unwrap();
    }
    s.reload(&source.replace("print(", "print(\"v2 \" + ")).unwrap();
    feed(&mut s, &ctx, candle(4, 4.0)).unwrap();
    let stored = s.export_state().unwrap();
    assert_eq!(stored, serde_json::json!({"h": {"$series": 3, "values": [2.0, 3.0, 4.0]}}));
    let lines = logs(&ctx);
    assert_eq!(lines.last().unwrap(), "v2 [2.0, 3.0, 4.0] 9.0");

    let account = Arc::new(ArcSwap::from_pointee(AccountView { currency: "USD".into(), ..Default::default() }));
    let ctx = StrategyContext::new("t", account, OrderIds::new("t", Arc::new(AtomicU64::new(0))), 1000).shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: Some(stored) };
    let mut restarted = ScriptStrategy::new("t.rhai", source, options(), env).unwrap();
    feed(&mut restarted, &ctx, candle(5, 5.0)).unwrap();
    assert_eq!(logs(&ctx), vec!["[3.0, 4.0, 5.0] 12.0"]);
}

#[test]
fn series_copies_count_against_the_series_limit() {
    let mut options = options();
    options.limits.max_series_values = 50_000;
    let (mut s, ctx) = build_with(
        r#"fn on_candle(c) {
            let h = series(1000);
            for i in 0..1000 { h.push(i); }
            let copies = [];
            loop { copies.push(h); }
        }"#,
        options,
    );
    let err = feed(&mut s, &ctx, candle(0, 1.0)).unwrap_err().to_string();
    assert!(err.contains("its series hold more than 50000 values together (sandbox.max_series_values)"), "{err}");
    assert_eq!(tradehost::script::series::values_held(), 0, "the copies are released with the callback");
}

/// Series kept in `this` past the limit stop the callback that filled them,
/// and every later one before its first operation.
#[test]
fn series_kept_past_the_limit_stop_every_callback() {
    let mut options = options();
    options.limits.max_series_values = 50;
    let (mut s, ctx) = build_with(
        r#"fn on_candle(c) {
            print(`bar ${c.time}`);
            if this.h == () { this.h = series(100); }
            for i in 0..60 { this.h.push(i); }
            print("filled");
        }"#,
        options,
    );
    for time in 0..3 {
        let err = feed(&mut s, &ctx, candle(time, 1.0)).unwrap_err().to_string();
        assert!(err.contains("its series hold more than 50 values together (sandbox.max_series_values)"), "{err}");
    }
    assert_eq!(logs(&ctx), vec!["bar 0"], "the later callbacks stop before their first operation");
}

#[test]
fn each_candle_arrives_fresh_whatever_the_script_did_to_the_last() {
    let (mut s, ctx) = build(
        r#"fn on_candle(c) {
            print(`${c.keys()} ${c.close} ${c.extra}`);
            if this.first == () { this.first = c; this.list = [c]; }
            c.extra = 1;
            c.close = -1.0;
            c.remove("low");
            print(`kept ${this.first.close} ${this.list[0].close} ${this.first.extra} ${this.first.keys().len()}`);
        }"#,
    );
    feed(&mut s, &ctx, candle(0, 10.0)).unwrap();
    feed(&mut s, &ctx, candle(1, 11.0)).unwrap();
    assert_eq!(
        logs(&ctx),
        vec![
            "[\"close\", \"high\", \"low\", \"open\", \"symbol\", \"time\", \"timeframe\", \"volume\"] 10.0 ",
            "kept 10.0 10.0  8",
            "[\"close\", \"high\", \"low\", \"open\", \"symbol\", \"time\", \"timeframe\", \"volume\"] 11.0 ",
            "kept 10.0 10.0  8",
        ]
    );
    let state = s.export_state().unwrap();
    assert_eq!(state["first"]["close"], 10.0);
    assert_eq!(state["first"]["time"], 0);
}

/// A strategy's engine registers the host modules its source names; one
/// named only inside an interpolated string, and one first named by a hot
/// reload, are there too.
#[test]
fn every_host_module_a_script_names_is_callable_after_a_reload_too() {
    let (mut s, ctx) = build("fn on_candle(c) { print(`sma ${ta::sma(c.symbol, 1)}`); }");
    feed(&mut s, &ctx, candle(0, 5.0)).unwrap();
    assert_eq!(logs(&ctx).last().map(String::as_str), Some("sma 5.0"));
    s.reload("fn on_candle(c) { log::info(`balance ${exchange::balance()}, sma ${ta::sma(c.symbol, 2)}`); }").unwrap();
    feed(&mut s, &ctx, candle(1, 7.0)).unwrap();
    assert_eq!(logs(&ctx).last().map(String::as_str), Some("balance 0.0, sma 6.0"));
}

/// `parse_json` evaluates its text as an expression: a script that names it
/// (or builds a function pointer) reaches every host module, named or not.
#[test]
fn host_modules_reached_through_parse_json_are_there() {
    let source =
        r#"fn on_candle(c) { let m = parse_json("{\"v\": " + "t" + "a::sma(\"X\", 1)}"); print(`v ${m.v}`); }"#;
    let (mut s, ctx) = build(source);
    feed(&mut s, &ctx, candle(0, 5.0)).unwrap();
    assert_eq!(logs(&ctx).last().map(String::as_str), Some("v 5.0"));
    let source = r#"fn on_candle(c) { let f = Fn("parse" + "_json"); let m = f.call("{\"v\": " + "t" + "a::sma(\"X\", 1)}"); print(`v ${m.v}`); }"#;
    let (mut s, ctx) = build(source);
    feed(&mut s, &ctx, candle(1, 7.0)).unwrap();
    assert_eq!(logs(&ctx).last().map(String::as_str), Some("v 7.0"));
}
