//! Backtests: a hand-computed scenario checked to the last decimal, the SMA
//! crossover against an independent Python computation, determinism,
//! sweeps equal to single runs, timers on simulated time, and bad input.

use std::collections::BTreeMap;
use std::process::Command;

use rust_decimal::Decimal;
use tradehost::backtest::{self, BacktestConfig, BrokerConfig};
use tradehost::config::{Config, SandboxConfig};
use tradehost::model::{Candle, Liquidity, Side};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn bar(minute: i64, o: f64, h: f64, l: f64, c: f64) -> Candle {
    Candle { symbol: "X".into(), time: minute * 60_000, open: o, high: h, low: l, close: c, volume: 1.0 }
}

fn config(taker: &str, maker: &str, slippage: &str) -> BacktestConfig {
    BacktestConfig {
        broker: BrokerConfig {
            cash: d("10000"),
            taker_fee_bps: d(taker),
            maker_fee_bps: d(maker),
            slippage_bps: d(slippage),
            products: BTreeMap::new(),
        },
        from: None,
        to: None,
        params: BTreeMap::new(),
        sandbox: SandboxConfig::default(),
    }
}

#[test]
fn hand_computed_scenario_matches_to_the_last_decimal() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 {
        exchange::market_order("X", "buy", 2);
        exchange::limit_order("X", "sell", 1, 103.5);
    } else if c.time == 60000 {
        exchange::limit_order("X", "buy", 1, 100);
        print(`equity ${exchange::equity()}`);
    } else if c.time == 180000 {
        let p = exchange::position("X");
        print(`bar 3: equity ${exchange::equity()}, size ${p.size}, unrealised ${p.unrealized_pnl}`);
    }
}
"#;
    let data = vec![vec![
        bar(0, 100.0, 101.0, 99.0, 100.0),
        bar(1, 102.0, 104.0, 101.0, 103.0),
        bar(2, 98.0, 99.0, 95.0, 97.0),
        bar(3, 97.0, 100.0, 96.0, 99.0),
    ]];
    let run = backtest::run_script("hand.rhai", script, &data, &config("10", "5", "10"), &mut |_| {}).unwrap();
    let fills: Vec<(Side, Decimal, Decimal, Decimal, Liquidity, i64)> =
        run.fills.iter().map(|f| (f.side, f.size, f.price, f.fee, f.liquidity, f.time)).collect();
    assert_eq!(
        fills,
        vec![
            // market order from bar 0 fills at bar 1's open 102 × (1 + 0.001)
            (Side::Buy, d("2"), d("102.102"), d("0.204204"), Liquidity::Taker, 60_000),
            // the limit sell placed on bar 0 fills on bar 1, whose high reaches 103.5
            (Side::Sell, d("1"), d("103.5"), d("0.05175"), Liquidity::Maker, 60_000),
            // bar 2 gaps down through the 100 limit: filled at the open, 98
            (Side::Buy, d("1"), d("98"), d("0.049"), Liquidity::Maker, 120_000),
            // the end: the position of 2 is closed at the last close, 99
            (Side::Sell, d("2"), d("99"), d("0.198"), Liquidity::Taker, 180_000),
        ]
    );
    // After bar 1: cash 10000 − 0.204204 + 1.398 − 0.05175, plus (103 − 102.102) unrealised.
    assert_eq!(run.logs[0].1, "equity 10002.040046");
    // Bar 3 brings no order events, only a new mark: long 2 at 100.051, marked at 99.
    assert_eq!(run.logs[1].1, "bar 3: equity 9998.991046, size 2.0, unrealised -2.102");
    assert_eq!(run.report.final_equity, d("9998.793046"));
    assert_eq!(run.report.fees, d("0.502954"));
    assert_eq!(run.report.trades, 1);
    assert!(run.report.notes.iter().any(|n| n.contains("closed at the last close 99")), "{:?}", run.report.notes);
    assert_eq!(run.equity.len(), 4);
}

#[test]
fn sma_crossover_matches_the_independent_python_computation() {
    let expected: serde_json::Value = serde_json::from_str(include_str!("fixtures/sma_cross_expected.json")).unwrap();
    let candles =
        tradehost::feed::csv::read_candles(std::path::Path::new("tests/fixtures/btc_1m.csv"), "BTCUSD").unwrap();
    let mut cfg = config("5", "2", "1");
    cfg.broker.cash = d("100000");
    cfg.broker.products =
        Config::embedded().exchange.paper.product_list().into_iter().map(|p| (p.symbol.clone(), p)).collect();
    cfg.params = [("fast", 5), ("slow", 20), ("size", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let source = std::fs::read_to_string("strategies/sma_cross.rhai").unwrap();
    let run = backtest::run_script("strategies/sma_cross.rhai", &source, &[candles], &cfg, &mut |_| {}).unwrap();
    let ours: Vec<serde_json::Value> = run
        .fills
        .iter()
        .map(|f| serde_json::json!({ "side": f.side.as_str(), "size": f.size.normalize().to_string(), "price": f.price.normalize().to_string(), "fee": f.fee.normalize().to_string() }))
        .collect();
    assert_eq!(serde_json::Value::Array(ours), expected["fills"]);
    assert_eq!(run.report.final_equity.normalize().to_string(), expected["final_equity"].as_str().unwrap());
}

fn tradehost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tradehost"))
}

fn backtest_cli(extra: &[&str]) -> std::process::Output {
    tradehost()
        .args([
            "backtest",
            "--strategy",
            "strategies/sma_cross.rhai",
            "--data",
            "tests/fixtures/btc_1m.csv",
            "--symbol",
            "BTCUSD",
            "--quiet",
        ])
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn the_same_inputs_give_byte_identical_json() {
    let a = backtest_cli(&["--json", "--param", "fast=7"]);
    let b = backtest_cli(&["--json", "--param", "fast=7"]);
    assert_eq!(a.status.code(), Some(0), "{}", String::from_utf8_lossy(&a.stderr));
    assert_eq!(a.stdout, b.stdout);
    let report: serde_json::Value = serde_json::from_slice(&a.stdout).unwrap();
    assert!(report["conventions"][0].as_str().unwrap().contains("next bar's open"));
    assert_eq!(report["params"]["fast"], 7);
    assert_eq!(report["bars"], 600);
}

#[test]
fn sweep_results_equal_the_single_runs() {
    let sweep = backtest_cli(&["--json", "--sweep", "fast=5..10:5", "--sweep", "slow=20,30", "--rank", "total_return"]);
    assert_eq!(sweep.status.code(), Some(0), "{}", String::from_utf8_lossy(&sweep.stderr));
    let reports: Vec<serde_json::Value> = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(reports.len(), 4);
    let returns: Vec<f64> = reports.iter().map(|r| r["total_return"].as_f64().unwrap()).collect();
    assert!(returns.windows(2).all(|w| w[0] >= w[1]), "ranked best first: {returns:?}");
    for report in &reports {
        let (fast, slow) = (report["params"]["fast"].to_string(), report["params"]["slow"].to_string());
        let single = backtest_cli(&["--json", "--param", &format!("fast={fast}"), "--param", &format!("slow={slow}")]);
        let single: serde_json::Value = serde_json::from_slice(&single.stdout).unwrap();
        assert_eq!(&single, report, "fast={fast} slow={slow}");
    }
}

#[test]
fn trades_csv_and_plots_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (trades, svg, png) = (dir.path().join("t.csv"), dir.path().join("e.svg"), dir.path().join("e.png"));
    let out = backtest_cli(&["--trades", trades.to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(&trades).unwrap();
    assert!(csv.starts_with("id,time,symbol,side,size,price,fee,liquidity,order_id\n1,2024-01-01T"), "{csv}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
    assert_eq!(backtest_cli(&["--plot", png.to_str().unwrap()]).status.code(), Some(0));
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for row in [
        "trades",
        "win rate",
        "profit factor",
        "max drawdown",
        "sharpe",
        "sortino",
        "exposure",
        "fees paid",
        "final equity",
        "bars/s",
    ] {
        assert!(table.contains(row), "the table shows {row}: {table}");
    }
}

#[test]
fn timers_fire_on_simulated_time() {
    let script = r#"
fn on_start() { timer::every("t", "5m"); this.fired = 0; }
fn on_timer(name) { this.fired += 1; }
fn on_stop() { print(`fired ${this.fired}`); }
"#;
    let data = vec![(0..60).map(|m| bar(m, 100.0, 101.0, 99.0, 100.0)).collect()];
    let run = backtest::run_script("t.rhai", script, &data, &config("0", "0", "0"), &mut |_| {}).unwrap();
    // Bars at minutes 0..59: the timer is due at 5, 10, …, 55.
    assert_eq!(run.logs.last().unwrap().1, "fired 11");
}

#[test]
fn a_script_error_reports_the_bar_time_and_fails_the_run() {
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("bad.rhai");
    std::fs::write(&script, "fn on_candle(c) { if c.close > 30500.0 { throw \"too high\"; } }").unwrap();
    let out = tradehost()
        .args(["backtest", "--strategy"])
        .arg(&script)
        .args(["--data", "tests/fixtures/btc_1m.csv", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("at bar 2024-01-01T") && stderr.contains("bad.rhai:1:") && stderr.contains("too high"),
        "{stderr}"
    );
}

fn csv_error(text: &str, extra: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bars.csv");
    std::fs::write(&path, text).unwrap();
    let out = tradehost()
        .args(["backtest", "--strategy", "strategies/sma_cross.rhai", "--data"])
        .arg(&path)
        .args(["--symbol", "BTCUSD", "--quiet"])
        .args(extra)
        .output()
        .unwrap();
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn malformed_csvs_give_the_documented_errors() {
    let (code, stderr, _) = csv_error("time,open,high,low,close\n1,1,2,0.5,1\n", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 1: missing column `volume`"), "{stderr}");
    let (code, stderr, _) = csv_error("time,open,high,low,close,volume\n60,1,2,0.5,1,1\n120,1,2,0.5,x,1\n", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 3: `close` is not a number: \"x\""), "{stderr}");
    let (code, stderr, _) = csv_error("time,open,high,low,close,volume\n120,1,2,0.5,1,1\n60,1,2,0.5,1,1\n", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("line 3: out-of-order timestamp"), "{stderr}");
    let (code, stderr, _) = csv_error("time,open,high,low,close,volume\n60,1,2,0.5,1,1\n60,1,2,0.5,1,1\n", &[]);
    assert_eq!(code, 2);
    assert!(stderr.contains("duplicate timestamp"), "{stderr}");
    let (code, stderr, stdout) = csv_error(
        "time,open,high,low,close,volume\n60,1,2,0.5,1,1\n120,1,2,0.5,x,1\n180,1,2,0.5,1,1\n",
        &["--skip-bad-rows"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("skipped 1 malformed row"), "{stderr}");
    assert!(stdout.contains("bars               2"), "{stdout}");
}

#[test]
fn from_to_and_several_symbols() {
    let script = r#"
fn on_candle(c) { this.seen = (this.seen ?? #{}); this.seen[c.symbol] = (this.seen[c.symbol] ?? 0) + 1; }
fn on_stop() { print(`X ${this.seen["X"] ?? 0} Y ${this.seen["Y"] ?? 0}`); }
"#;
    let x: Vec<Candle> = (0..10).map(|m| bar(m, 100.0, 101.0, 99.0, 100.0)).collect();
    let y: Vec<Candle> = (5..15).map(|m| Candle { symbol: "Y".into(), ..bar(m, 50.0, 51.0, 49.0, 50.0) }).collect();
    let mut cfg = config("0", "0", "0");
    cfg.from = Some(3 * 60_000);
    cfg.to = Some(12 * 60_000);
    let run = backtest::run_script("m.rhai", script, &[x, y], &cfg, &mut |_| {}).unwrap();
    // X: minutes 3..9 (7 bars); Y: minutes 5..11 (7 bars); both delivered to a strategy without config().
    assert_eq!(run.logs.last().unwrap().1, "X 7 Y 7");
    assert_eq!(run.report.bars, 14);
    assert_eq!(run.report.symbols, vec!["X", "Y"]);
    assert_eq!(run.equity.len(), 9, "one equity point per bar time (minutes 3..11)");
}
