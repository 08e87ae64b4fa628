//! A seeded random walk: the same seed and settings always give the same
//! ticks. Prices are rounded to each product's tick, sizes to its lot.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use rust_decimal::Decimal;

use crate::config::SyntheticConfig;
use crate::model::{Product, Side, Tick, TimestampMs, decimal_from_f64};

/// Generates ticks for several symbols.
#[derive(Debug, Clone)]
pub struct SyntheticFeed {
    markets: Vec<(Product, f64)>,
    rng: ChaCha8Rng,
    time: TimestampMs,
    tick_ms: i64,
    volatility: f64,
    half_spread: f64,
    max_volume: f64,
}

impl SyntheticFeed {
    /// A feed starting at `start_time`; `products` must cover every configured symbol.
    pub fn new(config: &SyntheticConfig, products: &[Product], start_time: TimestampMs) -> Self {
        let markets = config
            .start_prices
            .iter()
            .filter_map(|(symbol, price)| products.iter().find(|p| &p.symbol == symbol).map(|p| (p.clone(), *price)))
            .collect();
        SyntheticFeed {
            markets,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            time: start_time,
            tick_ms: config.tick_interval_ms as i64,
            volatility: config.volatility,
            half_spread: config.spread_bps / 20_000.0,
            max_volume: config.max_tick_volume,
        }
    }

    /// Continues an earlier run: each symbol with a price in `prices` walks on
    /// from it, and the random sequence is drawn anew from the seed and the
    /// start time (not replayed from the seed's beginning).
    pub fn resume(mut self, prices: &std::collections::BTreeMap<String, f64>) -> Self {
        for (product, price) in self.markets.iter_mut() {
            if let Some(last) = prices.get(&product.symbol).filter(|p| p.is_finite() && **p > 0.0) {
                *price = *last;
            }
        }
        let seed: u64 = self.rng.get_seed()[..8].iter().fold(0, |acc, b| acc << 8 | u64::from(*b));
        self.rng = ChaCha8Rng::seed_from_u64(seed ^ self.time as u64);
        self
    }

    /// Simulated time of the next step.
    pub fn time(&self) -> TimestampMs {
        self.time
    }

    /// Simulated time between steps.
    pub fn tick_ms(&self) -> i64 {
        self.tick_ms
    }

    /// One tick per symbol at the current time, then advances the clock.
    pub fn step(&mut self) -> Vec<Tick> {
        let time = self.time;
        self.time += self.tick_ms;
        let mut ticks = Vec::with_capacity(self.markets.len());
        for (product, price) in self.markets.iter_mut() {
            let z: f64 = self.rng.sample(StandardNormal);
            // Kept within what an order may carry, however long the walk runs.
            *price = (*price * (self.volatility * z).exp()).clamp(1e-6, 1e9);
            let volume: f64 = self.rng.random_range(0.0..self.max_volume);
            let to_decimal = |v: f64| decimal_from_f64(v).unwrap_or(Decimal::ONE);
            let last = product.round_price(to_decimal(*price)).max(product.tick_size);
            let bid = product
                .round_price_away(to_decimal(*price * (1.0 - self.half_spread)), Side::Sell)
                .min(last)
                .max(product.tick_size);
            let ask = product.round_price_away(to_decimal(*price * (1.0 + self.half_spread)), Side::Buy).max(last);
            ticks.push(Tick {
                symbol: product.symbol.clone(),
                time,
                bid,
                ask,
                last,
                volume: product.round_size(to_decimal(volume)),
            });
        }
        ticks
    }
}
