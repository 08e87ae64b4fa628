//! `[risk]` and `[strategies.overrides.NAME.risk]`: pre-trade limits, each
//! optional. Under `[risk]` a limit bounds the whole account; under a
//! strategy's override it bounds that strategy's own orders and positions.
//! The key names are a contract.

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// Pre-trade limits of the account or of one strategy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct RiskLimits {
    /// Largest order, in base units (contracts × contract value).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_order_size: Option<Decimal>,
    /// Largest order value in the quote currency (size × limit price, or × mark for market orders).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_order_notional: Option<Decimal>,
    /// Largest position value per symbol, counting the open orders that would increase it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_position_notional: Option<Decimal>,
    /// Largest sum of |position value| over symbols plus working orders.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_gross_exposure: Option<Decimal>,
    /// Most orders open at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_open_orders: Option<usize>,
    /// Most orders sent in any minute (a token bucket refilled over a minute).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_orders_per_minute: Option<u32>,
    /// Most orders sent in any second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_orders_per_second: Option<u32>,
    /// A limit price must be within this many percent of the mark.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_band_pct: Option<Decimal>,
    /// Largest gross exposure (with this order) as a multiple of equity.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_leverage: Option<Decimal>,
    /// The only symbols orders may be for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbols: Option<Vec<String>>,
}

impl RiskLimits {
    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == RiskLimits::default()
    }

    /// Values that cannot be limits, each under `prefix.key`.
    pub fn problems(&self, prefix: &str, out: &mut Vec<ConfigProblem>) {
        let mut bad = |key: &str, message: String| {
            out.push(ConfigProblem { key: format!("{prefix}.{key}"), message });
        };
        for (key, value) in [
            ("max_order_size", self.max_order_size),
            ("max_order_notional", self.max_order_notional),
            ("max_position_notional", self.max_position_notional),
            ("max_gross_exposure", self.max_gross_exposure),
            ("price_band_pct", self.price_band_pct),
            ("max_leverage", self.max_leverage),
        ] {
            if let Some(value) = value
                && value <= Decimal::ZERO
            {
                bad(key, format!("must be greater than 0, got {value}"));
            }
        }
        for (key, value) in [
            ("max_open_orders", self.max_open_orders.map(|v| v as u64)),
            ("max_orders_per_minute", self.max_orders_per_minute.map(u64::from)),
            ("max_orders_per_second", self.max_orders_per_second.map(u64::from)),
        ] {
            if value == Some(0) {
                bad(key, "must be greater than 0 (leave it out for no limit)".into());
            }
        }
        if self.symbols.as_ref().is_some_and(Vec::is_empty) {
            bad("symbols", "must name at least one symbol (leave it out to allow every symbol)".into());
        }
    }
}
