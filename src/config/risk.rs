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
    /// Protection: a loss this large (quote currency, realised + unrealised)
    /// since the day began makes the scope reduce-only until the next day
    /// (or a manual resume).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_daily_loss: Option<Decimal>,
    /// The hour (UTC, 0–23) a trading day begins; 0 when left out.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub day_start_utc_hour: Option<u32>,
    /// Protection: a fall from peak equity of this many percent halts the
    /// scope until a manual resume.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_drawdown_pct: Option<Decimal>,
    /// Protection: this many losing exits within a window stop new entries for a while.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub losing_streak: Option<LosingStreak>,
}

/// `[risk.losing_streak]`: `trades` losing exits within `window_minutes`
/// make the scope reduce-only for `cooldown_minutes`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LosingStreak {
    /// Losing exits (fills that realise a loss) that trigger it.
    pub trades: u32,
    /// The window they must fall in.
    pub window_minutes: u64,
    /// How long new entries stay refused.
    pub cooldown_minutes: u64,
}

impl RiskLimits {
    /// True when a protection (daily loss, drawdown, losing streak) is set.
    pub fn protects(&self) -> bool {
        self.max_daily_loss.is_some() || self.max_drawdown_pct.is_some() || self.losing_streak.is_some()
    }

    /// True when no limit is set.
    pub fn is_empty(&self) -> bool {
        *self == RiskLimits::default()
    }

    /// True if a check of these limits reads the open orders.
    pub fn reads_open_orders(&self) -> bool {
        self.max_open_orders.is_some()
            || self.max_position_notional.is_some()
            || self.max_gross_exposure.is_some()
            || self.max_leverage.is_some()
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
            ("max_daily_loss", self.max_daily_loss),
            ("max_drawdown_pct", self.max_drawdown_pct),
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
        if self.day_start_utc_hour.is_some_and(|h| h > 23) {
            bad(
                "day_start_utc_hour",
                format!("must be an hour from 0 to 23, got {}", self.day_start_utc_hour.unwrap_or(0)),
            );
        }
        if self.max_drawdown_pct.is_some_and(|p| p >= Decimal::ONE_HUNDRED) {
            bad("max_drawdown_pct", "must be below 100".into());
        }
        if let Some(streak) = &self.losing_streak {
            for (key, value) in [
                ("losing_streak.trades", u64::from(streak.trades)),
                ("losing_streak.window_minutes", streak.window_minutes),
                ("losing_streak.cooldown_minutes", streak.cooldown_minutes),
            ] {
                if value == 0 {
                    bad(key, "must be greater than 0".into());
                }
            }
        }
        if self.symbols.as_ref().is_some_and(Vec::is_empty) {
            bad("symbols", "must name at least one symbol (leave it out to allow every symbol)".into());
        }
    }
}
