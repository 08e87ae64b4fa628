//! What several benchmarks share: a seeded one-minute random walk and the
//! backtest settings of the shipped examples.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::ArcSwap;
use rust_decimal::Decimal;
use tradehost::backtest::{BacktestConfig, BrokerConfig};
use tradehost::config::{Config, SandboxConfig};
use tradehost::model::{AccountView, Candle};
use tradehost::strategy::{OrderIds, Quotas, SharedContext, StrategyContext};

/// A strategy context named "bench" on an empty USD account, without the
/// wall-clock quotas (orders, log lines, events per second): a benchmark's
/// candles arrive far faster than real time, and every run must see the same.
#[allow(dead_code)]
pub fn unthrottled_context() -> SharedContext {
    let account = Arc::new(ArcSwap::from_pointee(AccountView { currency: "USD".into(), ..Default::default() }));
    let ctx =
        StrategyContext::new("bench", account, OrderIds::new("bench", Arc::new(AtomicU64::new(0))), 5_000).shared();
    let unthrottled = SandboxConfig {
        orders_per_second: u32::MAX,
        log_lines_per_second: u32::MAX,
        events_per_second: u32::MAX,
        ..SandboxConfig::default()
    };
    ctx.borrow_mut().quotas = Quotas::new(&unthrottled, Default::default());
    ctx
}

/// `n` one-minute BTCUSD bars from `start`, each close a seeded random step
/// of up to ±`step`/2 (a fraction) from the last, rounded to cents.
#[allow(dead_code)]
pub fn random_walk(n: usize, start: f64, step: f64) -> Vec<Candle> {
    let (mut price, mut state) = (start, 7u64);
    (0..n)
        .map(|i| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            let open = price;
            price = (price * (1.0 + ((state >> 33) as f64 / (1u64 << 31) as f64 - 0.5) * step) * 100.0).round() / 100.0;
            let (high, low) = (open.max(price) + 0.5, open.min(price) - 0.5);
            Candle {
                symbol: "BTCUSD".into(),
                time: 1_600_000_020_000 / 60_000 * 60_000 + 60_000 * i as i64,
                open,
                high,
                low,
                close: price,
                volume: 1.5,
            }
        })
        .collect()
}

/// $100,000, 5 / 2 bps fees, 1 bp slippage, leverage 5, the embedded config's products.
#[allow(dead_code)]
pub fn backtest_config() -> BacktestConfig {
    BacktestConfig {
        broker: BrokerConfig {
            cash: Decimal::from(100_000),
            taker_fee_bps: Decimal::from(5),
            maker_fee_bps: Decimal::from(2),
            slippage_bps: Decimal::from(1),
            leverage: Decimal::from(5),
            products: Config::embedded()
                .exchange
                .paper
                .product_list()
                .into_iter()
                .map(|p| (p.symbol.clone(), p))
                .collect(),
        },
        from: None,
        to: None,
        params: BTreeMap::new(),
        sandbox: SandboxConfig::default(),
        risk: Default::default(),
        ml: Default::default(),
    }
}
