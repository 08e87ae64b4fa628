//! Prints what the pre-trade risk checks cost (no assertions), for
//! docs/performance.md: one order checked against every limit at once, on an
//! account of 3 strategies with positions and 30 open orders; and a
//! backtest of `sma_cross.rhai` on 300,000 bars with no limits and with every
//! limit on (set wide, so the same orders go through).
//!
//! Run with `cargo bench --bench risk`.

use std::collections::BTreeMap;
use std::time::Instant;

use rust_decimal::Decimal;
use tradehost::backtest::{self, BacktestConfig};
use tradehost::config::RiskLimits;
use tradehost::model::{AccountView, Candle, Order, OrderKind, OrderRequest, OrderStatus, Position, Side, TimeInForce};
use tradehost::risk::RiskGate;

#[path = "common/setup.rs"]
mod setup;

fn every_limit() -> RiskLimits {
    RiskLimits {
        max_order_size: Some(Decimal::from(1_000)),
        max_order_notional: Some(Decimal::from(100_000_000)),
        max_position_notional: Some(Decimal::from(100_000_000)),
        max_gross_exposure: Some(Decimal::from(1_000_000_000)),
        max_open_orders: Some(10_000),
        max_orders_per_minute: Some(u32::MAX),
        max_orders_per_second: Some(u32::MAX),
        price_band_pct: Some(Decimal::from(50)),
        max_leverage: Some(Decimal::from(1_000)),
        symbols: Some(vec!["BTCUSD".into(), "ETHUSD".into()]),
        ..Default::default()
    }
}

fn request(strategy: &str, side: Side, price: Option<Decimal>) -> OrderRequest {
    OrderRequest {
        client_id: "x".into(),
        strategy: strategy.into(),
        symbol: "BTCUSD".into(),
        side,
        kind: if price.is_some() { OrderKind::Limit } else { OrderKind::Market },
        size: Decimal::new(5, 2),
        price,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        reduce_only: false,
        stop: None,
        oco: None,
        parent: None,
    }
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    sorted[((sorted.len() as f64 - 1.0) * p) as usize]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let strategies = ["a", "b", "c"];
    let mut account = AccountView { currency: "USD".into(), balance: Decimal::from(100_000), ..Default::default() };
    account.equity = account.balance;
    account.marks = [("BTCUSD".to_string(), Decimal::from(60_000)), ("ETHUSD".to_string(), Decimal::from(3_000))]
        .into_iter()
        .collect();
    for (i, name) in strategies.iter().enumerate() {
        let mut position = Position::flat("BTCUSD");
        position.size = Decimal::new(i as i64 + 1, 2);
        account.positions.insert(name.to_string(), [("BTCUSD".to_string(), position)].into());
        for k in 0..10 {
            let mut order = Order::new(request(name, Side::Buy, Some(Decimal::from(59_000 - k))), 0);
            order.status = OrderStatus::Open;
            std::sync::Arc::make_mut(&mut account.open_orders).push(order);
        }
    }
    let per_strategy: BTreeMap<String, RiskLimits> =
        strategies.iter().map(|s| (s.to_string(), every_limit())).collect();
    let mut gate = RiskGate::new(every_limit(), per_strategy);
    let orders = [request("a", Side::Buy, Some(Decimal::from(59_500))), request("b", Side::Sell, None)];
    let mut times = Vec::with_capacity(200_000);
    for i in 0..200_000 {
        let order = &orders[i % 2];
        let started = Instant::now();
        let outcome = gate.check(order, &account, i as i64);
        times.push(started.elapsed().as_nanos());
        assert!(outcome.is_ok(), "{outcome:?}");
    }
    times.sort_unstable();
    println!(
        "pre-trade check, every limit on (account + strategy), 30 open orders: median {} ns  p99 {} ns  max {} ns",
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        times.last().unwrap()
    );

    let (mut price, mut state) = (30_000.0f64, 7u64);
    let bars: Vec<Candle> = (0..300_000)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let open = price;
            price *= 1.0 + ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * 0.004;
            let (high, low) = (open.max(price) * 1.0005, open.min(price) * 0.9995);
            Candle { symbol: "BTCUSD".into(), time: 60_000 * i, open, high, low, close: price, volume: 1.5 }
        })
        .collect();
    let data = vec![bars];
    let source = include_str!("../strategies/sma_cross.rhai");
    for (label, risk) in [
        ("no limits", RiskGate::default()),
        ("every limit on", RiskGate::new(every_limit(), [("sma_cross".to_string(), every_limit())].into())),
    ] {
        let config = BacktestConfig { risk, ..setup::backtest_config() };
        let run = backtest::run_script("sma_cross.rhai", source, &data, &config, &mut |_| {}).unwrap();
        println!(
            "backtest sma_cross.rhai, 300,000 bars, {label}: {:.0} bars/s ({} fills, final equity {})",
            run.report.bars_per_second(),
            run.fills.len(),
            run.report.final_equity.round_dp(2)
        );
    }
}
