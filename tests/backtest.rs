//! Backtests: a hand-computed scenario checked to the last decimal, the SMA
//! crossover against an independent Python computation, determinism,
//! sweeps equal to single runs, timers on simulated time, and bad input.

use std::collections::BTreeMap;
use std::process::Command;

use rust_decimal::Decimal;
use tradehost::backtest::{self, BacktestConfig, BrokerConfig};
use tradehost::config::{Config, RiskLimits, SandboxConfig};
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
            leverage: d("5"),
        },
        from: None,
        to: None,
        params: BTreeMap::new(),
        sandbox: SandboxConfig::default(),
        risk: Default::default(),
        ml: Default::default(),
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
            // the limit sell placed on bar 1 fills on bar 1's path (open 102, low 101, high 104 at 2/3 of the bar)
            (Side::Sell, d("1"), d("103.5"), d("0.05175"), Liquidity::Maker, 100_000),
            // bar 2 gaps down through the 100 limit: filled at the open, 98
            (Side::Buy, d("1"), d("98"), d("0.049"), Liquidity::Maker, 120_000),
            // the end: the position of 2 is closed at the last close, 99, when bar 3 closes
            (Side::Sell, d("2"), d("99"), d("0.198"), Liquidity::Taker, 240_000),
        ]
    );
    // After bar 1: cash 10000 − 0.204204 + 1.398 − 0.05175, plus (103 − 102.102) unrealised.
    assert_eq!(run.logs[0].1, "equity 10002.040046");
    // Bar 3 brings no order events, only a new mark: long 2 at 100.051, marked at 99.
    assert_eq!(run.logs[1].1, "bar 3: equity 9998.991046, size 2.0, unrealised -2.102");
    assert_eq!(run.equity.last().unwrap().equity, d("9998.793046"), "exact below the report");
    assert_eq!(run.report.final_equity, d("9998.793"), "the report shows money at 4 decimals");
    assert_eq!(run.report.fees, d("0.503"));
    assert_eq!(run.report.trades, 1);
    assert!(run.report.notes.iter().any(|n| n.contains("closed at the last close 99")), "{:?}", run.report.notes);
    assert_eq!(run.equity.len(), 4);
}

/// Buys 1 X at market on every bar.
const BUY_EVERY_BAR: &str = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) { exchange::market_order("X", "buy", 1); }
"#;

/// One-minute bars that open, peak and close at one price each.
fn flat_bars(prices: &[f64]) -> Vec<Candle> {
    prices.iter().enumerate().map(|(k, p)| bar(k as i64, *p, *p, *p, *p)).collect()
}

#[test]
fn a_max_position_limit_rejects_the_documented_orders_and_changes_the_equity_predictably() {
    let script = BUY_EVERY_BAR;
    // Rising bars: a buy on bar k fills at bar k+1's open.
    let data = vec![flat_bars(&[100.0, 110.0, 120.0, 130.0, 140.0])];
    let free = backtest::run_script("buy.rhai", script, &data, &config("0", "0", "0"), &mut |_| {}).unwrap();
    let mut limited = config("0", "0", "0");
    let limits = RiskLimits { max_position_notional: Some(d("250")), ..Default::default() };
    limited.risk = tradehost::risk::RiskGate::new(limits, BTreeMap::new());
    let run = backtest::run_script("buy.rhai", script, &data, &limited, &mut |_| {}).unwrap();
    // Unlimited: buys filled at 110, 120, 130, 140 and closed at 140 → +60.
    assert_eq!(free.report.final_equity, d("10060"));
    // Limited: bar 0 (1 × 100) and bar 1 (2 × 110) pass; bar 2 (3 × 120), 3 and 4 are over 250.
    assert_eq!(run.report.final_equity, d("10050"));
    let note = run.report.notes.iter().find(|n| n.contains("rejected")).expect("a note on the rejections");
    assert!(note.starts_with("3 order(s) were rejected (3 by risk limit max_position_notional); the first: risk limit max_position_notional (account): position value 360"), "{note}");
}

#[test]
fn a_daily_loss_protection_makes_a_backtest_reduce_only_on_the_bar_clock() {
    let script = BUY_EVERY_BAR;
    let data = vec![flat_bars(&[100.0, 90.0, 80.0, 70.0, 60.0])];
    let mut limited = config("0", "0", "0");
    let limits = RiskLimits { max_daily_loss: Some(d("15")), ..Default::default() };
    limited.risk = tradehost::risk::RiskGate::new(limits, BTreeMap::new());
    let run = backtest::run_script("falling.rhai", script, &data, &limited, &mut |_| {}).unwrap();
    // Buys fill at 90, 80 and 70; at the close of bar 3 the account is 30 down: reduce-only from then on.
    let protection = run.report.notes.iter().find(|n| n.contains("protection")).expect("a note on the protection");
    assert!(
        protection.contains("protection max_daily_loss triggered for account: reduce_only (lost 30 since the day began, the limit is 15)"),
        "{protection}"
    );
    let rejected = run.report.notes.iter().find(|n| n.contains("rejected")).expect("a note on the rejections");
    assert!(rejected.starts_with("2 order(s) were rejected (2 by risk limit trading_state)"), "{rejected}");
    assert_eq!(run.fills.iter().filter(|f| f.side == Side::Buy).count(), 3);
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
    let exact = run.equity.last().unwrap().equity;
    assert_eq!(exact.normalize().to_string(), expected["final_equity"].as_str().unwrap());
    assert_eq!(run.report.final_equity, tradehost::model::Shown::money(exact));
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
    let conventions = report["conventions"].as_array().unwrap();
    assert!(conventions.iter().any(|c| c.as_str().unwrap().contains("the next bar's open")), "{conventions:?}");
    assert_eq!(report["timeframe"], "1m");
    assert_eq!(report["data_interval"], "1m");
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

/// The embedded data of a written HTML report.
fn report_data(path: &std::path::Path) -> serde_json::Value {
    let page = std::fs::read_to_string(path).unwrap();
    assert!(!page.contains("<script src="), "self-contained: nothing loaded from elsewhere");
    assert!(page.contains("createChart"), "the chart library is inlined");
    let start = page.find(r#"<script id="report-data" type="application/json">"#).expect("the embedded data");
    let json = &page[start..];
    let json = &json[json.find('>').unwrap() + 1..json.find("</script>").unwrap()];
    serde_json::from_str(json).unwrap()
}

#[test]
fn the_html_report_embeds_the_runs_figures_trades_and_charts() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let out = tradehost()
        .args(["backtest", "--strategy", "strategies/sma_cross.rhai", "--data", "tests/fixtures/btc_1m_8d.csv"])
        .args(["--symbol", "BTCUSD", "--quiet", "--json", "--report"])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = report_data(&html);
    assert_eq!(data["report"], json, "the report's figures are the --json report's");
    let trades = data["trades"].as_array().unwrap();
    assert_eq!(trades.len() as u64, json["trades"].as_u64().unwrap());
    // Every position is closed at the end: the trades' PnL after fees adds up to the run's.
    let pnl: f64 = trades.iter().map(|t| t["pnl"].as_str().unwrap().parse::<f64>().unwrap()).sum();
    let gain = json["final_equity"].as_str().unwrap().parse::<f64>().unwrap()
        - json["initial_cash"].as_str().unwrap().parse::<f64>().unwrap();
    assert!((pnl - gain).abs() < 0.01 * trades.len() as f64, "trades {pnl} vs equity {gain}");
    assert_eq!(trades.last().unwrap()["exit_reason"], "end of data");
    assert!(trades.iter().any(|t| t["exit_reason"] == "market"));
    for t in trades {
        assert!(
            t["exit_time"].as_i64() >= t["entry_time"].as_i64()
                && ["long", "short"].contains(&t["side"].as_str().unwrap())
        );
    }
    let symbol = &data["chart"]["symbols"][0];
    assert_eq!(symbol["symbol"], "BTCUSD");
    assert_eq!(symbol["merged"], 1, "8 days of minutes are drawn as they are");
    assert_eq!(symbol["bars"].as_array().unwrap().len() as u64, json["bars"].as_u64().unwrap());
    let fills: u64 = symbol["markers"].as_array().unwrap().iter().map(|m| m["fills"].as_u64().unwrap()).sum();
    assert_eq!(fills, json["fills"].as_u64().unwrap(), "every fill is on a marker");
    let plots: Vec<&String> = symbol["plots"].as_object().unwrap().keys().collect();
    assert_eq!(plots, ["sma fast", "sma slow"], "the script's chart::plot overlays");
    assert_eq!(data["per_symbol"][0]["trades"], json["trades"]);

    // A sweep: the ranked runs and the metric over the two swept parameters.
    let sweep = dir.path().join("sweep.html");
    let out = backtest_cli(&[
        "--sweep",
        "fast=5,10,15",
        "--sweep",
        "slow=30,40",
        "--json",
        "--report",
        sweep.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let ranked: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let data = report_data(&sweep);
    assert_eq!(data["sweep"]["runs"], ranked);
    let heat = &data["sweep"]["heatmap"];
    assert_eq!((heat["x"].as_str(), heat["y"].as_str()), (Some("fast"), Some("slow")));
    assert_eq!(heat["xs"], serde_json::json!([5, 10, 15]));
    let best = ranked[0]["sharpe"].as_f64().unwrap();
    let cells: Vec<f64> = heat["cells"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
        .collect();
    assert_eq!(cells.len(), 6);
    assert_eq!(cells.iter().copied().fold(f64::MIN, f64::max), best, "the best cell is the best run");
}

#[test]
fn trades_csv_and_plots_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let (trades, svg, png) = (dir.path().join("t.csv"), dir.path().join("e.svg"), dir.path().join("e.png"));
    let out = backtest_cli(&["--trades", trades.to_str().unwrap(), "--plot", svg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let csv = std::fs::read_to_string(&trades).unwrap();
    assert!(csv.starts_with("id,time,symbol,side,size,price,fee,liquidity,order_id\n1,2024-01-01T"), "{csv}");
    let svg_text = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg_text.contains("<svg") && svg_text.contains("drawdown") && svg_text.contains("sma fast"),
        "panes and legends"
    );
    // A long run is drawn with merged candles, not thousands of overlapping ones.
    let long = dir.path().join("long.svg");
    let out = tradehost()
        .args(["backtest", "--strategy", "strategies/sma_cross.rhai", "--data", "tests/fixtures/btc_1m_8d.csv"])
        .args(["--symbol", "BTCUSD", "--quiet", "--plot"])
        .arg(&long)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(std::fs::read_to_string(&long).unwrap().contains("bars per candle"));
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
    // Bars at minutes 0..59, the last closing at 60: the timer is due at 5, 10, …, 60.
    assert_eq!(run.logs.last().unwrap().1, "fired 12");
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
        "time,open,high,low,close,volume\n60,1,2,0.5,1,1\n120,1,2,0.5,x,1\n180,1,2,0.5,1,1\n240,1,2,0.5,1,1\n",
        &["--skip-bad-rows"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("skipped 1 malformed row"), "{stderr}");
    assert!(stdout.contains("bars               3 of 1m (data: 1m bars)"), "{stdout}");
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

fn fixture(name: &str, symbol: &str) -> Vec<Candle> {
    tradehost::feed::csv::read_candles(std::path::Path::new(&format!("tests/fixtures/{name}")), symbol).unwrap()
}

/// The SMA crossover of strategies/sma_cross.rhai on another timeframe.
fn sma_cross_on(timeframe: &str) -> String {
    std::fs::read_to_string("strategies/sma_cross.rhai")
        .unwrap()
        .replace("timeframe: \"1m\"", &format!("timeframe: \"{timeframe}\""))
}

#[test]
fn a_one_hour_strategy_on_minutes_equals_it_on_pandas_hours() {
    let minutes = fixture("btc_1m_8d.csv", "BTCUSD");
    let hours = fixture("btc_1h_8d.csv", "BTCUSD"); // made by pandas' resample, see make_resample_fixture.py
    let mut cfg = config("5", "2", "1");
    cfg.params = [("fast", 5), ("slow", 20), ("size", 1)]
        .into_iter()
        .map(|(k, v)| (k.to_string(), serde_json::json!(v)))
        .collect();
    let script = sma_cross_on("1h");
    let on_minutes = backtest::run_script("s.rhai", &script, &[minutes], &cfg, &mut |_| {}).unwrap();
    let on_hours = backtest::run_script("s.rhai", &script, &[hours], &cfg, &mut |_| {}).unwrap();
    assert!(on_hours.report.trades >= 4, "the fixture should make trades: {}", on_hours.report.trades);
    assert_eq!(on_minutes.report.bars, 192, "8 days of minutes are 192 hourly bars");
    assert_eq!(on_minutes.report.bars, on_hours.report.bars);
    assert_eq!((on_minutes.report.data_interval.as_str(), on_hours.report.data_interval.as_str()), ("1m", "1h"));
    assert_eq!(on_minutes.report.timeframe, "1h");
    let fills = |run: &backtest::BacktestRun| -> Vec<(i64, Side, Decimal, Decimal, Decimal)> {
        run.fills.iter().map(|f| (f.time, f.side, f.size, f.price, f.fee)).collect()
    };
    assert_eq!(fills(&on_minutes), fills(&on_hours));
    assert_eq!(on_minutes.equity, on_hours.equity);
    assert_eq!(on_minutes.report.trades, on_hours.report.trades);
    assert_eq!(on_minutes.report.final_equity, on_hours.report.final_equity);
    // The same strategy on 1m bars is a different strategy: many more trades.
    let on_one_minute =
        backtest::run_script("s.rhai", &sma_cross_on("1m"), &[fixture("btc_1m_8d.csv", "BTCUSD")], &cfg, &mut |_| {})
            .unwrap();
    assert!(on_one_minute.report.trades > on_hours.report.trades * 10);
}

#[test]
fn a_five_minute_strategy_reads_the_hours_a_one_hour_strategy_sees() {
    let minutes = vec![fixture("btc_1m_8d.csv", "BTCUSD")];
    let cfg = config("0", "0", "0");
    let hourly = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1h" } }
fn on_candle(c) { print(`${c.time} ${c.close} ${ta::sma("BTCUSD", 5) ?? "-"}`); }
"#;
    let five = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "5m", timeframes: ["1h"] } }
fn on_candle(c) {
    let hour = market::candles("BTCUSD@1h", 1);
    if hour.len() == 1 && hour[0].time != this.last {
        this.last = hour[0].time;
        if hour[0].timeframe != "1h" { throw "wrong timeframe"; }
        print(`${hour[0].time} ${hour[0].close} ${ta::sma("BTCUSD@1h", 5) ?? "-"}`);
    }
}
"#;
    let hours = backtest::run_script("h.rhai", hourly, &minutes, &cfg, &mut |_| {}).unwrap();
    let seen = backtest::run_script("f.rhai", five, &minutes, &cfg, &mut |_| {}).unwrap();
    let lines = |run: &backtest::BacktestRun| run.logs.iter().map(|(_, l)| l.clone()).collect::<Vec<_>>();
    assert_eq!(lines(&hours).len(), 192);
    assert_eq!(lines(&seen), lines(&hours));
    // Each hour is seen when its last 5m candle closes, not later.
    let times: Vec<i64> = seen.logs.iter().map(|(t, _)| *t).collect();
    assert_eq!(times, hours.logs.iter().map(|(t, _)| *t).collect::<Vec<_>>());

    let undeclared = r#"fn config() { #{ symbols: ["BTCUSD"], timeframe: "5m" } }
fn on_candle(c) { market::candles("BTCUSD@1h", 1); }"#;
    let err = backtest::run_script("u.rhai", undeclared, &minutes, &cfg, &mut |_| {}).err().unwrap().to_string();
    assert!(err.contains("timeframe 1h is not declared") && err.contains("timeframes: [\"1h\"]"), "{err}");
}

#[test]
fn data_coarser_than_the_timeframe_or_for_other_symbols_exits_2_naming_both() {
    let out = tradehost()
        .args(["backtest", "--strategy", "strategies/sma_cross.rhai", "--data", "tests/fixtures/btc_1m.csv", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("trades BTCUSD but the data has btc_1m") && stderr.contains("--symbol"), "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("m.rhai");
    std::fs::write(&script, sma_cross_on("1m")).unwrap();
    let out = tradehost()
        .args(["backtest", "--strategy"])
        .arg(&script)
        .args(["--data", "tests/fixtures/btc_1h_8d.csv", "--symbol", "BTCUSD", "--quiet"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("1h bars") && stderr.contains("1m candles") && stderr.contains("coarser"), "{stderr}");
}

#[test]
fn ticks_follow_each_bar_path_and_the_market_maker_trades() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_tick(t) { print(`tick ${t.time} ${t.last}`); }
fn on_candle(c) { print(`candle ${c.time}`); }
"#;
    // A rising bar dips first (open, low, high, close); a falling one peaks first.
    let data = vec![vec![bar(0, 100.0, 103.0, 99.0, 102.0), bar(1, 102.0, 104.0, 97.0, 98.0)]];
    let run = backtest::run_script("t.rhai", script, &data, &config("0", "0", "0"), &mut |_| {}).unwrap();
    let lines: Vec<&str> = run.logs.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        lines,
        [
            "tick 0 100.0",
            "tick 20000 99.0",
            "tick 40000 103.0",
            "tick 60000 102.0",
            "candle 0",
            "tick 60000 102.0",
            "tick 80000 104.0",
            "tick 100000 97.0",
            "tick 120000 98.0",
            "candle 60000",
        ]
    );
    assert!(run.report.conventions.iter().any(|c| c.contains("four ticks")));

    let source = std::fs::read_to_string("strategies/market_maker.rhai").unwrap();
    let mut cfg = config("0", "0", "0");
    cfg.broker.products =
        Config::embedded().exchange.paper.product_list().into_iter().map(|p| (p.symbol.clone(), p)).collect();
    let run = backtest::run_script("market_maker.rhai", &source, &[fixture("btc_1m.csv", "BTCUSD")], &cfg, &mut |_| {})
        .unwrap();
    assert!(run.fills.len() >= 10, "the market maker should trade on ticks: {} fills", run.fills.len());
    assert!(run.fills.iter().all(|f| f.liquidity == Liquidity::Maker || f.order_id.contains("-end-")));
}

#[test]
fn a_closed_pipe_ends_the_command_quietly() {
    let cmd = format!(
        "{} backtest --strategy strategies/sma_cross.rhai --data tests/fixtures/btc_1m.csv --symbol BTCUSD --quiet | head -1",
        env!("CARGO_BIN_EXE_tradehost")
    );
    let out = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
}

#[test]
fn no_losing_trades_is_an_infinite_profit_factor_and_short_samples_are_flagged() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 { exchange::market_order("X", "buy", 1); }
    if c.time == 120000 { exchange::market_order("X", "sell", 1); }
}
"#;
    let data =
        vec![(0..5).map(|m| bar(m, 100.0 + m as f64, 101.0 + m as f64, 99.0 + m as f64, 100.0 + m as f64)).collect()];
    let run = backtest::run_script("w.rhai", script, &data, &config("0", "0", "0"), &mut |_| {}).unwrap();
    assert_eq!(run.report.trades, 1);
    assert!(run.report.profit_factor.is_infinite());
    let json = serde_json::to_value(&run.report).unwrap();
    assert_eq!(json["profit_factor"], "inf");
    assert_eq!(json["short_sample"], true);
    assert!(run.report.table().contains("inf (no losing trades)"));
    assert!(run.report.notes.iter().any(|n| n.contains("under a month")));
}

fn sym_bar(symbol: &str, minute: i64, o: f64, h: f64, l: f64, c: f64) -> Candle {
    Candle { symbol: symbol.into(), ..bar(minute, o, h, l, c) }
}

#[test]
fn several_symbols_move_through_each_bar_together_with_no_look_ahead() {
    // An order for Y placed in X's on_candle at minute 1's close fills at Y's
    // minute-2 open — not at Y's minute-1 open, which lies in the past.
    let script = r#"
fn config() { #{ symbols: ["X", "Y"], timeframe: "1m" } }
fn on_candle(c) {
    print(`last ${c.symbol} ${market::last(c.symbol)}`);
    if c.symbol == "X" && c.time == 0 { exchange::market_order("Y", "buy", 1); }
}
fn on_fill(f) { print(`fill ${f.symbol} ${f.price} at ${f.time}`); }
"#;
    let data = vec![
        vec![
            sym_bar("X", 0, 10.0, 11.0, 9.0, 10.5),
            sym_bar("X", 1, 10.5, 12.0, 10.0, 11.0),
            sym_bar("X", 2, 11.0, 11.0, 11.0, 11.0),
        ],
        vec![
            sym_bar("Y", 0, 50.0, 51.0, 49.0, 50.5),
            sym_bar("Y", 1, 60.0, 61.0, 59.0, 60.5),
            sym_bar("Y", 2, 70.0, 71.0, 69.0, 70.5),
        ],
    ];
    let run = backtest::run_script("m.rhai", script, &data, &config("0", "0", "0"), &mut |_| {}).unwrap();
    let lines: Vec<&str> = run.logs.iter().map(|(_, l)| l.as_str()).collect();
    assert!(lines.contains(&"fill Y 60.0 at 60000"), "{lines:?}");
    // market::last follows the closes for a strategy without on_tick.
    assert!(lines.contains(&"last X 10.5") && lines.contains(&"last Y 60.5"), "{lines:?}");
    let times: Vec<i64> = run.logs.iter().map(|(t, _)| *t).collect();
    assert!(times.windows(2).all(|w| w[1] >= w[0]), "the clock never goes back: {times:?}");
}

#[test]
fn other_timeframes_appear_when_they_close_not_earlier() {
    // A 1h strategy reading 5m candles: at each tick of the hour it sees only
    // the 5m candles that closed by then.
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1h", timeframes: ["5m"] } }
fn on_tick(t) {
    let seen = market::candles("X@5m", 100);
    let newest = if seen.len() > 0 { seen[seen.len() - 1].time + 300000 } else { 0 };
    if newest > t.time { throw `at ${t.time} a 5m candle closing at ${newest} was visible`; }
    print(`${t.time} ${seen.len()}`);
}
"#;
    let minutes: Vec<Candle> = (0..180).map(|m| bar(m, 100.0, 101.0, 99.0, 100.5)).collect();
    let run = backtest::run_script("o.rhai", script, &[minutes], &config("0", "0", "0"), &mut |_| {}).unwrap();
    let lines: Vec<&str> = run.logs.iter().map(|(_, l)| l.as_str()).collect();
    // The second hour: 12 candles at its start, 16 at +20 min, 20 at +40, 24 at its end.
    assert_eq!(&lines[4..8], ["3600000 12", "4800000 16", "6000000 20", "7200000 24"], "{lines:?}");
}

#[test]
fn a_limit_order_that_crosses_when_placed_takes_at_the_next_price() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_tick(t) {
    if t.time == 0 { exchange::limit_order("X", "buy", 1, 105); }   // the price is 100: marketable
}
"#;
    let data = vec![vec![bar(0, 100.0, 103.0, 99.0, 102.0), bar(1, 102.0, 103.0, 101.0, 102.0)]];
    let run = backtest::run_script("l.rhai", script, &data, &config("10", "2", "0"), &mut |_| {}).unwrap();
    let first = &run.fills[0];
    // The next price on the path is the low, 99, at a third of the bar: taken there, as a taker.
    assert_eq!((first.price, first.liquidity, first.time), (d("99"), Liquidity::Taker, 20_000));
    assert_eq!(first.fee, d("0.099"));
}

#[test]
fn an_order_past_the_margin_limit_is_rejected_as_on_the_paper_exchange() {
    let out = backtest_cli(&["--param", "size=1e9", "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["trades"], 0, "a billion BTC on 100,000 cash never fills");
    assert_eq!(report["final_equity"], "100000");
    let notes = report["notes"].to_string();
    assert!(notes.contains("order(s) were rejected; the first: insufficient margin"), "{notes}");
}

#[test]
fn a_candle_the_data_starts_inside_is_not_delivered() {
    let script = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1h" } }
fn on_candle(c) { print(`${c.time}`); }
"#;
    let mut cfg = config("0", "0", "0");
    cfg.from = Some(1_704_067_200_000 + 30 * 60_000); // 00:30: the first hour would hold 30 minutes
    let run = backtest::run_script("p.rhai", script, &[fixture("btc_1m_8d.csv", "BTCUSD")], &cfg, &mut |_| {}).unwrap();
    assert_eq!(run.logs[0].1, "1704070800000", "the first candle is the first whole hour, 01:00");
    assert_eq!(run.report.bars, 191);
    assert_eq!(run.report.from, "2024-01-01T01:00:00Z");
}

#[test]
fn an_unknown_param_names_the_params_the_script_has() {
    let out = backtest_cli(&["--param", "fastt=5"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("param `fastt`") && stderr.contains("declared: fast, size, slow"), "{stderr}");
}

#[test]
fn backtest_refuses_mistyped_params_and_outputs_that_would_go_wrong_before_running() {
    let cases: [(&[&str], &str); 8] = [
        (
            &["--param", "fast=abc"],
            "param `fast` is set to \"abc\" (by --param or the config file), but the script declares it as a number (10)",
        ),
        (&["--sweep", "fast=5,10", "--plot", "x.svg"], "--plot, --trades and --features-out write one run's results"),
        (
            &["--sweep", "fast=5,10", "--features-out", "f.csv"],
            "--plot, --trades and --features-out write one run's results",
        ),
        (
            &["--features-out", "strategies/sma_cross.rhai"],
            "--features-out strategies/sma_cross.rhai: that is an input of this run",
        ),
        (&["--sweep", "fast=5,10", "--param", "fast=7"], "`fast` is given by both --param and --sweep"),
        (&["--trades", "tests/fixtures/btc_1m.csv"], "that is an input of this run"),
        (&["--plot", "equity.jpg"], "the file must end in .svg or .png"),
        (&["--report", "report.txt"], "--report report.txt: the file must end in .html"),
    ];
    for (extra, message) in cases {
        let out = backtest_cli(extra);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{extra:?}: {stderr}");
        assert!(stderr.contains(message), "{extra:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{extra:?}: nothing ran");
    }
}

/// A backtest of `script` on hand-made bars: fees 10 bps taker, 5 maker, no slippage.
fn run_bars(script: &str, data: Vec<Vec<Candle>>) -> tradehost::backtest::BacktestRun {
    backtest::run_script("hand.rhai", script, &data, &config("10", "5", "0"), &mut |_| {}).unwrap()
}

/// Fills of a backtest as (side, size, price, time).
fn fill_list(run: &tradehost::backtest::BacktestRun) -> Vec<(Side, Decimal, Decimal, i64)> {
    run.fills.iter().map(|f| (f.side, f.size, f.price, f.time)).collect()
}

#[test]
fn a_stop_gapped_through_fills_at_the_open() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 {
        exchange::market_order("X", "buy", 1);
        exchange::stop_order("X", "sell", 1, 95, #{ reduce_only: true });
    }
}
fn on_order(o) { if o.stop != () { print(`${o.status} ${o.stop.kind} ${o.stop.trigger}`); } }
"#;
    let data = vec![vec![
        bar(0, 100.0, 101.0, 99.0, 100.0),
        bar(1, 100.0, 102.0, 99.0, 101.0),
        bar(2, 90.0, 92.0, 89.0, 91.0),
    ]];
    let run = run_bars(script, data);
    assert_eq!(
        fill_list(&run),
        vec![(Side::Buy, d("1"), d("100"), 60_000), (Side::Sell, d("1"), d("90"), 120_000)],
        "the stop at 95 fills at bar 2's open, 90"
    );
    let logs: Vec<&str> = run.logs.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(logs, ["untriggered stop_loss 95.0", "filled stop_loss 95.0"]);
    assert_eq!(run.fills[1].fee, d("0.09"));
    // One losing trade: no profit, so the profit factor is 0 (not -0, which printed "-0.00").
    assert!(run.report.profit_factor == 0.0 && run.report.profit_factor.is_sign_positive());
}

#[test]
fn a_stop_loss_and_a_take_profit_in_one_bar_fire_in_the_order_of_the_bar_path() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 || c.time == 120000 { exchange::market_order("X", "buy", 2); }
    if c.time == 60000 {
        exchange::stop_order("X", "sell", 1, 97, #{ reduce_only: true });
        exchange::take_profit("X", "sell", 1, 104, #{ reduce_only: true });
    }
    if c.time == 180000 {
        exchange::stop_order("X", "sell", 1, 98, #{ reduce_only: true });
        exchange::take_profit("X", "sell", 1, 108, #{ reduce_only: true });
    }
}
"#;
    let data = vec![vec![
        bar(0, 100.0, 100.0, 100.0, 100.0),
        bar(1, 100.0, 100.0, 100.0, 100.0),
        // Rising bar: open 100, low 96 at 1/3, high 105 at 2/3, close 103.
        bar(2, 100.0, 105.0, 96.0, 103.0),
        bar(3, 103.0, 103.0, 103.0, 103.0),
        // Falling bar: open 103, high 109 at 1/3, low 97 at 2/3, close 100.
        bar(4, 103.0, 109.0, 97.0, 100.0),
    ]];
    let run = run_bars(script, data);
    assert_eq!(
        fill_list(&run),
        vec![
            (Side::Buy, d("2"), d("100"), 60_000),
            // Bar 2 dips first: the stop at 97, then the take-profit at 104 on the way up.
            (Side::Sell, d("1"), d("97"), 140_000),
            (Side::Sell, d("1"), d("104"), 160_000),
            (Side::Buy, d("2"), d("103"), 180_000),
            // Bar 4 rises first: the take-profit at 108, then the stop at 98.
            (Side::Sell, d("1"), d("108"), 260_000),
            (Side::Sell, d("1"), d("98"), 280_000),
        ]
    );
    assert!(run.report.conventions.iter().any(|c| c.contains("a stop-loss and a take-profit inside one bar")));
}

#[test]
fn a_trailing_stop_follows_the_bar_path_and_fires_where_it_stands() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 { exchange::market_order("X", "buy", 1); }
    if c.time == 60000 { exchange::trailing_stop("X", "sell", 1, #{ trail: 5, reduce_only: true }); }
}
"#;
    let data = vec![vec![
        bar(0, 100.0, 100.0, 100.0, 100.0),
        bar(1, 100.0, 100.0, 100.0, 100.0),
        // Rising: 100, 99, 120, 118 — the trigger climbs from 95 to 115.
        bar(2, 100.0, 120.0, 99.0, 118.0),
        // Falling: 118, 119, 110, 112 — 119 moves it to 115 only (never down), 110 fires it at 115.
        bar(3, 118.0, 119.0, 110.0, 112.0),
    ]];
    let run = run_bars(script, data);
    assert_eq!(fill_list(&run), vec![(Side::Buy, d("1"), d("100"), 60_000), (Side::Sell, d("1"), d("115"), 220_000)]);
}

#[test]
fn brackets_on_an_entry_and_on_a_position_cancel_their_other_leg() {
    let script = r#"
fn config() { #{ symbols: ["X"], timeframe: "1m" } }
fn on_candle(c) {
    if c.time == 0 { exchange::market_order("X", "buy", 2, #{ stop_loss: 97, take_profit: 104 }); }
    if c.time == 180000 { exchange::market_order("X", "buy", 1); }
    if c.time == 240000 {
        let legs = exchange::bracket("X", #{ stop_loss: 100, take_profit: 106 });
        print(`legs ${legs.stop_loss} ${legs.take_profit}`);
    }
}
fn on_order(o) { if o.status == "cancelled" { print(`${o.id} cancelled: ${o.reason}`); } }
"#;
    let data = vec![vec![
        bar(0, 100.0, 100.0, 100.0, 100.0),
        bar(1, 100.0, 100.0, 100.0, 100.0),
        // Rising: the dip to 96 fires the stop at 97; the take-profit at 104 is gone by then.
        bar(2, 100.0, 105.0, 96.0, 103.0),
        bar(3, 103.0, 103.0, 103.0, 103.0),
        bar(4, 103.0, 103.0, 103.0, 103.0),
        // Falling: the high (107) comes first and takes profit at 106; the stop is cancelled.
        bar(5, 103.0, 107.0, 99.0, 100.0),
    ]];
    let run = run_bars(script, data);
    assert_eq!(
        fill_list(&run),
        vec![
            (Side::Buy, d("2"), d("100"), 60_000),
            (Side::Sell, d("2"), d("97"), 140_000),
            (Side::Buy, d("1"), d("103"), 240_000),
            (Side::Sell, d("1"), d("106"), 320_000),
        ]
    );
    let logs: Vec<&str> = run.logs.iter().map(|(_, l)| l.as_str()).collect();
    assert_eq!(
        logs,
        [
            "hand-3 cancelled: one-cancels-other: hand-2 filled",
            "legs hand-5 hand-6",
            "hand-5 cancelled: one-cancels-other: hand-6 filled",
        ]
    );
}

/// The shipped strategies' backtest JSON is byte-for-byte what it was before
/// the script-speed work (tests/fixtures/golden/, written by the commit
/// before it, 481c905): the faster call path, the shared candle map and the
/// tuned scripts change no number. Regenerate only on a deliberate change:
/// `tradehost backtest --strategy S --data tests/fixtures/btc_1m_8d.csv
/// --symbol SYM --quiet --json > tests/fixtures/golden/NAME.json`.
#[test]
fn shipped_strategies_backtest_byte_for_byte_as_before() {
    let cases = [
        ("strategies/sma_cross.rhai", "BTCUSD", "sma_cross"),
        ("strategies/rsi_reversion.rhai", "ETHUSD", "rsi_reversion"),
        ("strategies/market_maker.rhai", "BTCUSD", "market_maker"),
        ("examples/strategies/breakout_atr.rhai", "BTCUSD", "breakout_atr"),
        ("examples/strategies/breakout_bracket.rhai", "BTCUSD", "breakout_bracket"),
        ("examples/strategies/state_counter.rhai", "ETHUSD", "state_counter"),
    ];
    let running: Vec<_> = cases
        .iter()
        .map(|(strategy, symbol, _)| {
            tradehost()
                .args(["backtest", "--strategy", strategy, "--data", "tests/fixtures/btc_1m_8d.csv"])
                .args(["--symbol", symbol, "--quiet", "--json"])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for ((strategy, _, name), child) in cases.into_iter().zip(running) {
        let out = child.wait_with_output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{strategy}: {}", String::from_utf8_lossy(&out.stderr));
        let golden = std::fs::read(format!("tests/fixtures/golden/{name}.json")).unwrap();
        assert!(out.stdout == golden, "{strategy}: the backtest JSON differs from tests/fixtures/golden/{name}.json");
    }
}
