//! `strategies/sma_cross.rhai` (fast 10, slow 30, size 0.05) written as a
//! native Rust strategy on the same runtime, for comparisons in benchmarks.

use rust_decimal::Decimal;
use tradehost::data::{IndicatorValue, Timeframe};
use tradehost::model::{OrderKind, Side, TimeInForce, decimal_from_f64, decimal_to_f64};
use tradehost::strategy::{OrderSpec, SharedContext, Strategy, StrategyError, StrategyEvent, StrategyMeta};

/// A plain good-till-cancelled market order, as `exchange::market_order(symbol, side, size)` places it.
pub fn market_order(symbol: String, side: Side, size: Decimal) -> OrderSpec {
    OrderSpec {
        symbol,
        side,
        kind: OrderKind::Market,
        size,
        price: None,
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        reduce_only: false,
        stop: None,
        oco: None,
        parent: None,
    }
}

/// sma_cross.rhai written in Rust against the same context.
pub struct NativeSmaCross {
    ctx: SharedContext,
    name: String,
    above: Option<bool>,
}

impl NativeSmaCross {
    /// The strategy for `name`, reading and writing through `ctx`.
    pub fn new(ctx: SharedContext, name: &str) -> Self {
        NativeSmaCross { ctx, name: name.to_string(), above: None }
    }
}

impl Strategy for NativeSmaCross {
    fn handle(&mut self, event: &StrategyEvent) -> Result<bool, StrategyError> {
        let StrategyEvent::Candle(c) = event else { return Ok(false) };
        let mut guard = self.ctx.borrow_mut();
        let ctx = &mut *guard;
        let Some(series) = ctx.market.series(&c.symbol) else { return Ok(true) };
        let fast = ctx.indicators.sma(&c.symbol, series, 10);
        let slow = ctx.indicators.sma(&c.symbol, series, 30);
        let (IndicatorValue::Number(fast), IndicatorValue::Number(slow)) = (fast, slow) else {
            return Ok(true);
        };
        let above = fast > slow;
        if self.above.is_some_and(|a| a != above) {
            let target = if above { 0.05 } else { -0.05 };
            let position = ctx.account.load().position(&self.name, &c.symbol).size;
            let delta = target - decimal_to_f64(position);
            let side = if delta > 0.0 { Side::Buy } else { Side::Sell };
            ctx.place(market_order(c.symbol.clone(), side, decimal_from_f64(delta.abs()).unwrap_or_default()))
                .map_err(StrategyError::new)?;
        }
        self.above = Some(above);
        Ok(true)
    }
    fn meta(&self) -> StrategyMeta {
        StrategyMeta::new(vec!["BTCUSD".into()], Timeframe::minute())
    }
}
