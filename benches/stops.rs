//! Prints what pending stop orders cost (no assertions), for
//! docs/performance.md:
//!
//! 1. paper exchange: time from the triggering tick to the stop's fill (the
//!    `on_tick` that fires and fills it), median and p99 over 2,000 rounds,
//!    with 0 and with 1,000 other stops pending on the symbol, and the cost of
//!    a tick that fires none;
//! 2. backtest: bars/s of the same strategy with no stop and with 1,000
//!    far-away stops pending for the whole run (200,000 one-minute bars).
//!
//! Run with `cargo bench --bench stops`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tradehost::backtest::{self, BacktestConfig, BrokerConfig};
use tradehost::config::{PaperConfig, ProductConfig, SandboxConfig};
use tradehost::exchange::{ExchangeEvent, PaperExchange};
use tradehost::model::{Candle, OrderKind, OrderRequest, Side, StopKind, StopTrigger, Tick, TimeInForce, TriggerOn};

const ROUNDS: usize = 2_000;
const BARS: usize = 200_000;

fn d(v: i64) -> Decimal {
    Decimal::from(v)
}

fn tick(time: i64, price: Decimal) -> Tick {
    Tick { symbol: "BTCUSD".into(), time, bid: price, ask: price + Decimal::ONE, last: price, volume: Decimal::ZERO }
}

fn stop(id: String, trigger: Decimal) -> OrderRequest {
    OrderRequest {
        client_id: id,
        strategy: "bench".into(),
        symbol: "BTCUSD".into(),
        side: Side::Sell,
        kind: OrderKind::Market,
        size: Decimal::new(1, 3),
        price: None,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        reduce_only: false,
        stop: Some(Box::new(StopTrigger {
            kind: StopKind::StopLoss,
            price: trigger,
            trail: None,
            trail_pct: None,
            on: TriggerOn::Last,
        })),
        oco: None,
        parent: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Median and p99 of the tick that fires one stop, with `others` stops pending.
fn paper_trigger(others: usize) -> (Duration, Duration) {
    let mut exchange = PaperExchange::new(&PaperConfig {
        balance: d(1_000_000_000),
        products: BTreeMap::from([(
            "BTCUSD".into(),
            ProductConfig { tick_size: Decimal::new(5, 1), lot_size: Decimal::new(1, 3) },
        )]),
        ..PaperConfig::default()
    });
    exchange.on_tick(&tick(0, d(60_000)));
    for i in 0..others {
        exchange.submit(stop(format!("far-{i}"), d(1_000 + i as i64)));
    }
    let mut quiet = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let started = Instant::now();
        exchange.on_tick(&tick(-(round as i64) - 1, d(60_000) + Decimal::from(round as i64 % 7)));
        quiet.push(started.elapsed());
    }
    quiet.sort();
    println!(
        "  {others:>5} stops pending, a tick that fires none: median {:.2?}, p99 {:.2?}",
        percentile(&quiet, 0.5),
        percentile(&quiet, 0.99)
    );
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let t = 1 + 2 * round as i64;
        exchange.on_tick(&tick(t, d(60_000)));
        exchange.submit(stop(format!("near-{round}"), d(59_990)));
        let started = Instant::now();
        let events = exchange.on_tick(&tick(t + 1, d(59_980)));
        times.push(started.elapsed());
        assert!(events.iter().any(|e| matches!(e, ExchangeEvent::Fill(_))), "the near stop fills");
    }
    times.sort();
    (percentile(&times, 0.5), percentile(&times, 0.99))
}

fn bars() -> Vec<Candle> {
    let (mut price, mut state) = (60_000.0f64, 7u64);
    (0..BARS)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let step = ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.002;
            let open = price;
            price *= 1.0 + step;
            let (high, low) = (open.max(price) * 1.0005, open.min(price) * 0.9995);
            Candle { symbol: "BTCUSD".into(), time: 60_000 * i as i64, open, high, low, close: price, volume: 1.5 }
        })
        .collect()
}

fn backtest_bars_per_second(data: &[Vec<Candle>], stops: usize) -> f64 {
    // Buys once, then (with `stops`) leaves that many sell stops far below the market.
    let script = format!(
        r#"
fn config() {{ #{{ symbols: ["BTCUSD"], timeframe: "1m" }} }}
fn on_candle(c) {{
    if this.done != true {{
        this.done = true;
        exchange::market_order("BTCUSD", "buy", 1);
        for i in 0..{stops} {{ exchange::stop_order("BTCUSD", "sell", 0.001, 100.0 + i); }}
    }}
}}
"#
    );
    let config = BacktestConfig {
        broker: BrokerConfig {
            cash: d(10_000_000),
            taker_fee_bps: d(5),
            maker_fee_bps: d(2),
            slippage_bps: d(1),
            products: BTreeMap::new(),
            leverage: d(5),
        },
        from: None,
        to: None,
        params: BTreeMap::new(),
        sandbox: SandboxConfig { orders_per_second: 1_000_000, ..SandboxConfig::default() },
        risk: Default::default(),
        ml: Default::default(),
    };
    let started = Instant::now();
    let run = backtest::run_script("stops.rhai", &script, data, &config, &mut |_| {}).unwrap();
    assert_eq!(run.report.bars, BARS);
    BARS as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    println!("paper exchange: the tick that fires a stop and fills it ({ROUNDS} rounds)");
    for others in [0, 1_000] {
        let (median, p99) = paper_trigger(others);
        println!("  {others:>5} other stops pending, the tick that fires one: median {median:.2?}, p99 {p99:.2?}");
    }
    let data = vec![bars()];
    println!("backtest, {BARS} one-minute bars, one core");
    for stops in [0, 10, 100, 1_000] {
        println!("  {stops:>5} stops pending: {:>9.0} bars/s", backtest_bars_per_second(&data, stops));
    }
}
