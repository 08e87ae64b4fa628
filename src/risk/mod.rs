//! Pre-trade risk checks: pure and synchronous, on the one path every order
//! takes (the order manager's `prepare` live and on paper, the backtest's
//! broker). `[risk]` limits bound the account; a strategy's
//! `[strategies.overrides.NAME.risk]` limits bound that strategy's own
//! orders and positions; an order must pass both. Reduce-only orders and
//! orders that only shrink a position pass the exposure checks
//! (`max_position_notional`, `max_gross_exposure`, `max_leverage`). Before
//! the limits, the trading state: `halted` refuses every new order,
//! `reduce_only` every order that does not shrink a position (for the
//! account, or for one strategy; cancels never come here). A refusal names
//! the limit, its value and the order's value.

mod protections;

use std::collections::{BTreeMap, HashMap};

use rust_decimal::Decimal;

use crate::config::{Config, ConfigProblem, RiskLimits};
use crate::model::{AccountView, Order, OrderRequest, Side, TimestampMs, TradingState, TradingStates};

pub use protections::{Imposed, ProtectionEvent, ProtectionStatus, Protections};

/// Why an order was refused: which limit, and the figures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("risk limit {limit} ({scope}): {detail}")]
pub struct Refusal {
    /// The limit's key, e.g. `max_order_size`.
    pub limit: &'static str,
    /// `account` or `strategy NAME`.
    pub scope: String,
    /// The limit's value and the order's.
    pub detail: String,
}

/// The limits in force: the account's and each strategy's own.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// `[risk]`: limits of the whole account.
    pub account: RiskLimits,
    /// `[strategies.overrides.NAME.risk]`: limits of each strategy's own orders and positions.
    pub strategies: BTreeMap<String, RiskLimits>,
}

impl Limits {
    /// The limits of a configuration.
    pub fn from_config(config: &Config) -> Self {
        let strategies = config
            .strategies
            .overrides
            .iter()
            .filter_map(|(name, o)| o.risk.clone().filter(|r| !r.is_empty()).map(|r| (name.clone(), r)))
            .collect();
        Limits { account: config.risk.clone(), strategies }
    }

    /// Values that cannot be limits, each under its key (`account.max_order_size`).
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        self.account.problems("account", &mut out);
        for (name, limits) in &self.strategies {
            limits.problems(&format!("strategies.{name}"), &mut out);
        }
        out
    }
}

/// A token bucket: `capacity` orders, refilled evenly over `period_ms`.
#[derive(Debug, Clone)]
struct Bucket {
    tokens: f64,
    updated: TimestampMs,
}

impl Bucket {
    fn refill(&mut self, capacity: u32, period_ms: i64, now: TimestampMs) -> f64 {
        let elapsed = (now - self.updated).max(0) as f64;
        self.tokens = (self.tokens + elapsed * f64::from(capacity) / period_ms as f64).min(f64::from(capacity));
        self.updated = now;
        self.tokens
    }
}

/// The limits in force and the order-rate state they need.
#[derive(Debug, Clone, Default)]
pub struct RiskGate {
    account: RiskLimits,
    strategies: BTreeMap<String, RiskLimits>,
    /// The account's order-rate token buckets, by limit.
    account_buckets: BTreeMap<&'static str, Bucket>,
    /// Each strategy's order-rate token buckets, by limit.
    strategy_buckets: HashMap<String, BTreeMap<&'static str, Bucket>>,
    /// Whether new orders may go out.
    trading: TradingStates,
    /// What the protections watch (daily baselines, peaks, losing exits).
    protections: Protections,
    /// The symbols each strategy declares (`config()`): its only symbols
    /// unless its limits name `symbols` themselves.
    declared: BTreeMap<String, Vec<String>>,
}

/// Whose limits and which of the account's orders and positions they see.
#[derive(Clone, Copy)]
enum Scope<'a> {
    Account,
    Strategy(&'a str),
}

impl Scope<'_> {
    fn name(&self) -> String {
        match self {
            Scope::Account => "account".into(),
            Scope::Strategy(name) => format!("strategy {name}"),
        }
    }

    fn owns(&self, order: &Order) -> bool {
        match self {
            Scope::Account => true,
            Scope::Strategy(name) => order.request.strategy == *name,
        }
    }

    /// Net position in a symbol: the strategy's own, or every strategy's summed.
    fn position(&self, account: &AccountView, symbol: &str) -> Decimal {
        match self {
            Scope::Account => account.positions.values().filter_map(|p| p.get(symbol)).map(|p| p.size).sum(),
            Scope::Strategy(name) => account.position(name, symbol).size,
        }
    }

    /// Net positions by symbol.
    fn positions(&self, account: &AccountView) -> BTreeMap<String, Decimal> {
        let mut out = BTreeMap::new();
        for (strategy, positions) in &account.positions {
            if matches!(self, Scope::Strategy(name) if name != strategy) {
                continue;
            }
            for (symbol, position) in positions {
                *out.entry(symbol.clone()).or_insert(Decimal::ZERO) += position.size;
            }
        }
        out
    }
}

impl RiskGate {
    /// The limits of a configuration: `[risk]` and every strategy override's `risk`.
    pub fn from_config(config: &Config) -> Self {
        RiskGate::from_limits(Limits::from_config(config))
    }

    /// A gate enforcing `limits`.
    pub fn from_limits(limits: Limits) -> Self {
        RiskGate::new(limits.account, limits.strategies)
    }

    /// The limits it enforces.
    pub fn limits(&self) -> Limits {
        Limits { account: self.account.clone(), strategies: self.strategies.clone() }
    }

    /// Account limits and per-strategy limits.
    pub fn new(account: RiskLimits, strategies: BTreeMap<String, RiskLimits>) -> Self {
        RiskGate {
            account,
            strategies,
            account_buckets: BTreeMap::new(),
            strategy_buckets: HashMap::new(),
            trading: TradingStates::default(),
            protections: Protections::default(),
            declared: BTreeMap::new(),
        }
    }

    /// True if some check reads the open orders (the order manager then adds
    /// the orders it is preparing).
    pub fn reads_open_orders(&self) -> bool {
        self.account.reads_open_orders() || self.strategies.values().any(RiskLimits::reads_open_orders)
    }

    /// True when no limit is set anywhere, no strategy declared its symbols
    /// and trading is active (every order passes).
    pub fn is_open(&self) -> bool {
        self.account.is_empty()
            && self.strategies.is_empty()
            && self.declared.is_empty()
            && self.trading == TradingStates::default()
    }

    /// The symbols a strategy declares: its orders must be for one of them
    /// (unless its own limits name `symbols`).
    pub fn declare(&mut self, strategy: &str, symbols: Vec<String>) {
        self.declared.insert(strategy.to_string(), symbols);
    }

    /// Keeps what another gate knew that is not configuration: trading
    /// states, protections and declared symbols.
    pub fn take_state(&mut self, from: &mut RiskGate) {
        self.trading = std::mem::take(&mut from.trading);
        self.protections = std::mem::take(&mut from.protections);
        self.declared = std::mem::take(&mut from.declared);
    }

    /// The trading states in force.
    pub fn trading(&self) -> &TradingStates {
        &self.trading
    }

    /// Sets the account's trading state (`strategy` none) or a strategy's, by
    /// hand: what a protection imposed on that scope is dropped with it.
    pub fn set_trading(&mut self, strategy: Option<&str>, state: TradingState) {
        self.trading.set(strategy, state);
        self.protections.on_manual(strategy, state);
    }

    /// What the protections watch, for the store.
    pub fn protections(&self) -> &Protections {
        &self.protections
    }

    /// Restores what the protections watched (after a restart).
    pub fn restore_protections(&mut self, protections: Protections) {
        self.protections = protections;
    }

    /// True when a protection is set anywhere.
    pub fn protects(&self) -> bool {
        self.account.protects() || self.strategies.values().any(RiskLimits::protects)
    }

    /// Notes a fill of `strategy` that realised `pnl` (losing exits count
    /// toward losing streaks).
    pub fn on_exit(&mut self, strategy: &str, pnl: Decimal, now: TimestampMs) {
        self.protections.on_exit(strategy, pnl, now);
    }

    /// Looks at the account and at each protected strategy at `now`: the
    /// protections trigger or lift trading states; returns what happened.
    pub fn watch(&mut self, account: &AccountView, now: TimestampMs) -> Vec<ProtectionEvent> {
        let mut events = Vec::new();
        if self.account.protects() {
            let seen = (Decimal::ZERO, account.equity);
            events.extend(self.protections.watch(protections::ACCOUNT, &self.account, seen, now, &mut self.trading));
        }
        for (name, limits) in self.strategies.iter().filter(|(_, l)| l.protects()) {
            let pnl: Decimal = account
                .positions
                .get(name)
                .map(|positions| {
                    positions
                        .values()
                        .map(|p| {
                            p.realized_pnl
                                + account.marks.get(&p.symbol).map_or(Decimal::ZERO, |m| p.unrealized_pnl(*m))
                        })
                        .sum()
                })
                .unwrap_or_default();
            events.extend(self.protections.watch(name, limits, (account.equity, pnl), now, &mut self.trading));
        }
        events
    }

    /// Restores stored trading states (not a manual change: protections keep what they imposed).
    pub fn restore_trading(&mut self, trading: TradingStates) {
        self.trading = trading;
    }

    /// Checks an order against the account's and its strategy's limits at
    /// `now`; an order that passes uses up its place in the order-rate limits.
    pub fn check(&mut self, request: &OrderRequest, account: &AccountView, now: TimestampMs) -> Result<(), Refusal> {
        if self.is_open() {
            return Ok(());
        }
        self.check_trading_state(request, account)?;
        let strategy = Scope::Strategy(&request.strategy);
        let own = self.strategies.get(&request.strategy);
        if let Some(declared) = self.declared.get(&request.strategy)
            && own.is_none_or(|limits| limits.symbols.is_none())
            && !declared.contains(&request.symbol)
        {
            let detail = format!("{} is not one of the symbols it declares: {}", request.symbol, declared.join(", "));
            return Err(Refusal { limit: "symbols", scope: strategy.name(), detail });
        }
        check_limits(Scope::Account, &self.account, request, account)?;
        if let Some(own) = own {
            check_limits(strategy, own, request, account)?;
        }
        // Rates last: only an order that passes everything else takes a token.
        let own = own.map(rate_limits).unwrap_or_default();
        let account_rates = rate_limits(&self.account);
        if account_rates.is_empty() && own.is_empty() {
            return Ok(());
        }
        let (account_buckets, strategy_buckets) = (&mut self.account_buckets, &mut self.strategy_buckets);
        let own_buckets = match strategy_buckets.get_mut(&request.strategy) {
            Some(buckets) => buckets,
            None => strategy_buckets.entry(request.strategy.clone()).or_default(),
        };
        rate_room(Scope::Account, &account_rates, account_buckets, now)?;
        rate_room(strategy, &own, own_buckets, now)?;
        for (rates, buckets) in [(&account_rates, account_buckets), (&own, own_buckets)] {
            for (key, ..) in rates {
                if let Some(bucket) = buckets.get_mut(key) {
                    bucket.tokens -= 1.0;
                }
            }
        }
        Ok(())
    }

    /// Refuses what a `halted` or `reduce_only` state does not allow.
    fn check_trading_state(&self, request: &OrderRequest, account: &AccountView) -> Result<(), Refusal> {
        let states = [(Scope::Account, self.trading.account)].into_iter().chain(
            self.trading.strategies.get(&request.strategy).map(|state| (Scope::Strategy(&request.strategy), *state)),
        );
        for (scope, state) in states {
            let refuse = |detail: String| Err(Refusal { limit: "trading_state", scope: scope.name(), detail });
            match state {
                TradingState::Active => {}
                TradingState::Halted => return refuse("halted: new orders are refused (cancels still work)".into()),
                TradingState::ReduceOnly if !shrinks(request, scope.position(account, &request.symbol)) => {
                    return refuse(format!(
                        "reduce_only: a {} of {} {} would not reduce the position",
                        request.side, request.size, request.symbol
                    ));
                }
                TradingState::ReduceOnly => {}
            }
        }
        Ok(())
    }
}

/// Refuses when a rate limit has no token left at `now`.
fn rate_room(
    scope: Scope,
    rates: &[(&'static str, u32, i64)],
    buckets: &mut BTreeMap<&'static str, Bucket>,
    now: TimestampMs,
) -> Result<(), Refusal> {
    for (key, capacity, period_ms) in rates {
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: f64::from(*capacity), updated: now });
        if bucket.refill(*capacity, *period_ms, now) < 1.0 {
            let per = if *period_ms == 1_000 { "second" } else { "minute" };
            return Err(Refusal {
                limit: key,
                scope: scope.name(),
                detail: format!("{capacity} orders per {per} already sent"),
            });
        }
    }
    Ok(())
}

/// The order-rate limits that are set: (key, orders, period in ms).
fn rate_limits(limits: &RiskLimits) -> Vec<(&'static str, u32, i64)> {
    [
        ("max_orders_per_minute", limits.max_orders_per_minute, 60_000),
        ("max_orders_per_second", limits.max_orders_per_second, 1_000),
    ]
    .into_iter()
    .filter_map(|(key, value, period)| value.map(|v| (key, v, period)))
    .collect()
}

/// True when an order can only reduce `position`: reduce-only, or on the
/// closing side and no larger than the position.
fn shrinks(request: &OrderRequest, position: Decimal) -> bool {
    request.reduce_only
        || (!position.is_zero() && Side::closing(position) == request.side && request.size <= position.abs())
}

/// The price an order is valued at: its limit, or the mark for a market order.
fn order_price(request: &OrderRequest, account: &AccountView) -> Option<Decimal> {
    request.price.or_else(|| account.marks.get(&request.symbol).copied())
}

/// The checks that need no state: symbols, size, value, price band, open
/// orders, and (unless the order only reduces) exposure.
fn check_limits(
    scope: Scope,
    limits: &RiskLimits,
    request: &OrderRequest,
    account: &AccountView,
) -> Result<(), Refusal> {
    let refuse = |limit: &'static str, detail: String| Err(Refusal { limit, scope: scope.name(), detail });
    if let Some(symbols) = &limits.symbols
        && !symbols.contains(&request.symbol)
    {
        return refuse("symbols", format!("{} is not one of {}", request.symbol, symbols.join(", ")));
    }
    if let Some(max) = limits.max_order_size
        && request.size > max
    {
        return refuse("max_order_size", format!("order size {} is over the limit {max}", request.size));
    }
    let priced = [
        ("max_order_notional", limits.max_order_notional.is_some()),
        ("price_band_pct", limits.price_band_pct.is_some()),
        ("max_position_notional", limits.max_position_notional.is_some()),
        ("max_gross_exposure", limits.max_gross_exposure.is_some()),
        ("max_leverage", limits.max_leverage.is_some()),
    ]
    .into_iter()
    .find_map(|(key, set)| set.then_some(key));
    let price = match (priced, order_price(request, account)) {
        (None, _) => Decimal::ZERO,
        (Some(_), Some(price)) => price,
        (Some(limit), None) => {
            return refuse(limit, format!("no market price for {} yet to value the order", request.symbol));
        }
    };
    let notional = request.size.saturating_mul(price);
    if let Some(max) = limits.max_order_notional
        && notional > max
    {
        return refuse("max_order_notional", format!("order value {notional} is over the limit {max}"));
    }
    if let (Some(band), Some(limit_price)) = (limits.price_band_pct, request.price) {
        match account.marks.get(&request.symbol) {
            Some(mark) if !mark.is_zero() => {
                let off = ((limit_price - mark) / mark * Decimal::ONE_HUNDRED).abs();
                if off > band {
                    return refuse(
                        "price_band_pct",
                        format!(
                            "limit price {limit_price} is {}% from the mark {mark}, over the limit {band}%",
                            off.round_dp(4)
                        ),
                    );
                }
            }
            _ => {
                return refuse(
                    "price_band_pct",
                    format!("no mark for {} yet to check the limit price", request.symbol),
                );
            }
        }
    }
    if let Some(max) = limits.max_open_orders {
        let open = account.open_orders.iter().filter(|o| scope.owns(o)).count();
        if open + 1 > max {
            return refuse("max_open_orders", format!("{open} orders are open already, the limit is {max}"));
        }
    }
    let position = scope.position(account, &request.symbol);
    let signed = request.side.sign() * request.size;
    let shrinks = request.reduce_only
        || (!position.is_zero() && Side::closing(position) == request.side && request.size <= position.abs());
    if shrinks {
        return Ok(());
    }
    if let Some(max) = limits.max_position_notional {
        // Open orders on the same side that would add to the position count as if filled.
        let working: Decimal = account
            .open_orders
            .iter()
            .filter(|o| scope.owns(o) && o.request.symbol == request.symbol && o.request.side == request.side)
            .map(|o| o.request.side.sign() * o.remaining())
            .sum();
        let value = position.saturating_add(working).saturating_add(signed).abs().saturating_mul(price);
        if value > max {
            return refuse(
                "max_position_notional",
                format!("position value {value} in {} would be over the limit {max}", request.symbol),
            );
        }
    }
    if limits.max_gross_exposure.is_some() || limits.max_leverage.is_some() {
        let mark = |symbol: &str| account.marks.get(symbol).copied().unwrap_or(Decimal::ZERO);
        let positions: Decimal = scope
            .positions(account)
            .iter()
            .map(|(s, size)| size.abs().saturating_mul(mark(s)))
            .fold(Decimal::ZERO, Decimal::saturating_add);
        let working: Decimal = account
            .open_orders
            .iter()
            .filter(|o| scope.owns(o))
            // Valued at the mark, not the limit price: a far-off resting order is no exposure.
            .map(|o| {
                let at = account.marks.get(&o.request.symbol).copied().or(o.request.price).unwrap_or_default();
                o.remaining().saturating_mul(at)
            })
            .fold(Decimal::ZERO, Decimal::saturating_add);
        let exposure = positions.saturating_add(working).saturating_add(notional);
        if let Some(max) = limits.max_gross_exposure
            && exposure > max
        {
            return refuse("max_gross_exposure", format!("gross exposure {exposure} would be over the limit {max}"));
        }
        if let Some(max) = limits.max_leverage {
            if account.equity <= Decimal::ZERO {
                return refuse("max_leverage", format!("equity is {}: no exposure is allowed", account.equity));
            }
            let leverage = exposure / account.equity;
            if leverage > max {
                return refuse(
                    "max_leverage",
                    format!(
                        "exposure {exposure} is {}× equity {}, over the limit {max}×",
                        leverage.round_dp(4),
                        account.equity
                    ),
                );
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{OrderKind, OrderStatus, Position, TimeInForce};

    fn d(text: &str) -> Decimal {
        text.parse().unwrap()
    }

    fn order(id: &str, strategy: &str, side: Side, size: &str, price: Option<&str>) -> OrderRequest {
        OrderRequest {
            client_id: id.into(),
            strategy: strategy.into(),
            symbol: "BTCUSD".into(),
            side,
            kind: if price.is_some() { OrderKind::Limit } else { OrderKind::Market },
            size: d(size),
            price: price.map(d),
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only: false,
            stop: None,
            oco: None,
            parent: None,
        }
    }

    /// Mark 100, equity 10 000; strategy `s` holds `position` BTCUSD and `open` resting orders.
    fn account(position: &str, open: &[OrderRequest]) -> AccountView {
        let mut held = Position::flat("BTCUSD");
        held.size = d(position);
        AccountView {
            currency: "USD".into(),
            balance: d("10000"),
            equity: d("10000"),
            positions: [("s".to_string(), [("BTCUSD".to_string(), held)].into_iter().collect())].into_iter().collect(),
            marks: [("BTCUSD".to_string(), d("100"))].into_iter().collect(),
            open_orders: std::sync::Arc::new(
                open.iter()
                    .map(|r| {
                        let mut o = Order::new(r.clone(), 0);
                        o.status = OrderStatus::Open;
                        o
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    fn gate(limits: RiskLimits) -> RiskGate {
        RiskGate::new(limits, BTreeMap::new())
    }

    /// `at` passes and `over` is refused by `limit`, on a fresh gate each.
    fn boundary(limits: RiskLimits, account: &AccountView, at: OrderRequest, over: OrderRequest, limit: &str) {
        assert_eq!(gate(limits.clone()).check(&at, account, 0), Ok(()), "at the limit");
        let refusal = gate(limits).check(&over, account, 0).unwrap_err();
        assert_eq!(refusal.limit, limit, "{refusal}");
        assert!(refusal.to_string().starts_with(&format!("risk limit {limit} (account): ")), "{refusal}");
    }

    #[test]
    fn each_limit_passes_at_its_value_and_refuses_one_step_over() {
        let flat = account("0", &[]);
        let buy = |size: &str, price: Option<&str>| order("o", "s", Side::Buy, size, price);
        let size = RiskLimits { max_order_size: Some(d("1")), ..Default::default() };
        boundary(size, &flat, buy("1", None), buy("1.001", None), "max_order_size");
        let notional = RiskLimits { max_order_notional: Some(d("150")), ..Default::default() };
        boundary(notional, &flat, buy("1.5", None), buy("1.51", None), "max_order_notional");
        let band = RiskLimits { price_band_pct: Some(d("5")), ..Default::default() };
        boundary(band, &flat, buy("1", Some("105")), buy("1", Some("105.5")), "price_band_pct");
        let open = RiskLimits { max_open_orders: Some(2), ..Default::default() };
        let one_open = account("0", &[buy("1", Some("90"))]);
        let two_open = account("0", &[buy("1", Some("90")), buy("1", Some("91"))]);
        assert_eq!(gate(open.clone()).check(&buy("1", Some("95")), &one_open, 0), Ok(()));
        assert_eq!(gate(open).check(&buy("1", Some("95")), &two_open, 0).unwrap_err().limit, "max_open_orders");
        // Position 1 (100) + a resting buy of 1 (counted as filled) + this order.
        let position = RiskLimits { max_position_notional: Some(d("300")), ..Default::default() };
        let held = account("1", &[buy("1", Some("100"))]);
        boundary(position, &held, buy("1", None), buy("1.01", None), "max_position_notional");
        let gross = RiskLimits { max_gross_exposure: Some(d("300")), ..Default::default() };
        boundary(gross, &held, buy("1", None), buy("1.01", None), "max_gross_exposure");
        let leverage = RiskLimits { max_leverage: Some(d("0.03")), ..Default::default() };
        boundary(leverage, &held, buy("1", None), buy("1.01", None), "max_leverage");
        let symbols = RiskLimits { symbols: Some(vec!["BTCUSD".into()]), ..Default::default() };
        let mut eth = buy("1", None);
        eth.symbol = "ETHUSD".into();
        boundary(symbols, &flat, buy("1", None), eth, "symbols");
    }

    #[test]
    fn order_rates_are_token_buckets_refilled_by_the_clock() {
        let limits = RiskLimits { max_orders_per_second: Some(3), ..Default::default() };
        let mut gate = gate(limits);
        let flat = account("0", &[]);
        let buy = order("o", "s", Side::Buy, "1", None);
        for _ in 0..3 {
            assert_eq!(gate.check(&buy, &flat, 1_000), Ok(()));
        }
        assert_eq!(gate.check(&buy, &flat, 1_000).unwrap_err().limit, "max_orders_per_second");
        assert_eq!(
            gate.check(&buy, &flat, 1_332).unwrap_err().limit,
            "max_orders_per_second",
            "a third of a second is not yet one token"
        );
        assert_eq!(gate.check(&buy, &flat, 1_334), Ok(()), "one token back after a third of a second");
        assert!(gate.check(&buy, &flat, 1_334).is_err());
        for _ in 0..3 {
            assert_eq!(gate.check(&buy, &flat, 5_000), Ok(()), "full again after a second");
        }
    }

    #[test]
    fn orders_that_only_shrink_a_position_pass_the_exposure_limits_but_not_the_others() {
        let limits = RiskLimits {
            max_position_notional: Some(d("50")),
            max_gross_exposure: Some(d("50")),
            max_leverage: Some(d("0.001")),
            max_order_size: Some(d("1")),
            ..Default::default()
        };
        let long = account("3", &[]);
        assert_eq!(gate(limits.clone()).check(&order("a", "s", Side::Sell, "1", None), &long, 0), Ok(()));
        let mut reduce_only = order("b", "s", Side::Buy, "1", None);
        reduce_only.reduce_only = true;
        assert_eq!(gate(limits.clone()).check(&reduce_only, &long, 0), Ok(()));
        let refusal = gate(limits.clone()).check(&order("c", "s", Side::Buy, "1", None), &long, 0).unwrap_err();
        assert_eq!(refusal.limit, "max_position_notional");
        assert_eq!(
            gate(limits).check(&order("d", "s", Side::Sell, "2", None), &long, 0).unwrap_err().limit,
            "max_order_size"
        );
    }

    #[test]
    fn a_strategys_own_limits_bound_its_own_orders_and_positions() {
        let strategies =
            [("s".to_string(), RiskLimits { max_position_notional: Some(d("150")), ..Default::default() })];
        let mut gate = RiskGate::new(RiskLimits::default(), strategies.into_iter().collect());
        let held = account("1", &[]);
        let refusal = gate.check(&order("a", "s", Side::Buy, "1", None), &held, 0).unwrap_err();
        assert_eq!((refusal.limit, refusal.scope.as_str()), ("max_position_notional", "strategy s"));
        assert!(
            refusal.to_string().contains("position value 200") && refusal.to_string().contains("limit 150"),
            "{refusal}"
        );
        // Another strategy holds nothing and has no limits of its own.
        assert_eq!(gate.check(&order("b", "other", Side::Buy, "1", None), &held, 0), Ok(()));
    }

    #[test]
    fn a_strategy_trades_only_the_symbols_it_declares_unless_its_limits_say_otherwise() {
        let mut eth = order("a", "s", Side::Buy, "1", None);
        eth.symbol = "ETHUSD".into();
        let flat = account("0", &[]);
        let mut declared = RiskGate::default();
        declared.declare("s", vec!["BTCUSD".into()]);
        let refusal = declared.check(&eth, &flat, 0).unwrap_err();
        assert_eq!((refusal.limit, refusal.scope.as_str()), ("symbols", "strategy s"));
        assert_eq!(declared.check(&order("b", "s", Side::Buy, "1", None), &flat, 0), Ok(()));
        let own = RiskLimits { symbols: Some(vec!["BTCUSD".into(), "ETHUSD".into()]), ..Default::default() };
        let mut widened = RiskGate::new(RiskLimits::default(), [("s".to_string(), own)].into_iter().collect());
        widened.declare("s", vec!["BTCUSD".into()]);
        assert_eq!(widened.check(&eth, &flat, 0), Ok(()), "the strategy's own `symbols` limit decides");
    }

    #[test]
    fn an_order_that_cannot_be_valued_is_refused_by_name() {
        let limits = RiskLimits { max_order_notional: Some(d("1000")), ..Default::default() };
        let mut eth = order("a", "s", Side::Buy, "1", None);
        eth.symbol = "ETHUSD".into();
        let refusal = gate(limits).check(&eth, &account("0", &[]), 0).unwrap_err();
        assert_eq!(refusal.limit, "max_order_notional");
        assert!(refusal.detail.contains("no market price for ETHUSD"), "{refusal}");
    }
}
