//! The operations every edge runs against the host. The HTTP handlers and
//! the Telegram bot both call these, so a request answers with the same
//! outcome under the same rules whichever way it came: reads come from the
//! snapshots and the store (store reads off the async workers), changes go
//! through the control channel and wait for its answer.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::Serialize;
use tokio::sync::oneshot;
use utoipa::ToSchema;

use super::ApiContext;
use super::error::ApiError;
use crate::control::{Control, ControlError, KillReport, ShutdownReason, StrategyState, StrategyStatus};
use crate::exchange::reconcile::{ReconcileReport, StoreConsistency, differences, persisting};
use crate::model::{Fill, Order, Position, Shown, TradingState, TradingStates};

/// `/status`.
#[derive(Debug, Serialize, ToSchema)]
pub struct StatusResponse {
    /// tradehost version.
    pub version: String,
    /// `paper`, `dry-run` (Delta's market, simulated fills, nothing sent) or `delta` (live).
    pub mode: String,
    /// The clock every record's time comes from: `wall`, or `simulated ×60`
    /// when the synthetic or replay feed runs the market faster than real time.
    pub clock: String,
    /// The clock's current time (ISO 8601).
    pub now: String,
    /// Seconds since start.
    pub uptime_s: u64,
    /// Strategies known.
    pub strategies: usize,
    /// Strategies running.
    pub running: usize,
    /// Strategies failed or quarantined.
    pub failed: usize,
    /// The account's trading state (`active`, `reduce_only`, `halted`).
    pub trading: TradingState,
    /// Balance plus unrealised PnL.
    #[schema(format = "money")]
    pub equity: Decimal,
    /// Open orders.
    pub open_orders: usize,
    /// Non-flat positions.
    pub positions: usize,
    /// Newest activity sequence number.
    pub last_seq: u64,
    /// Connected WebSocket clients.
    pub ws_clients: u64,
}

/// Outcome of a lifecycle request.
#[derive(Debug, Serialize, ToSchema)]
pub struct ActionResponse {
    /// Always true (failures are errors).
    pub ok: bool,
    /// What happened.
    pub message: String,
    /// New code version, for reloads.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
}

/// A strategy's position with its mark.
#[derive(Debug, Serialize, ToSchema)]
pub struct PositionView {
    /// Strategy.
    pub strategy: String,
    /// Instrument.
    pub symbol: String,
    /// Signed size.
    #[schema(format = "size")]
    pub size: Decimal,
    /// Average entry price.
    #[schema(format = "price")]
    pub entry_price: Decimal,
    /// Realised PnL.
    #[schema(format = "money")]
    pub realized_pnl: Decimal,
    /// Unrealised PnL at the mark.
    #[schema(format = "money")]
    pub unrealized_pnl: Decimal,
    /// Mark (mid) price, if known.
    #[schema(format = "price")]
    pub mark: Option<Decimal>,
}

/// `/balances`.
#[derive(Debug, Serialize, ToSchema)]
pub struct BalancesResponse {
    /// Quote currency.
    pub currency: String,
    /// Cash balance.
    #[schema(format = "money")]
    pub balance: Decimal,
    /// Balance plus unrealised PnL.
    #[schema(format = "money")]
    pub equity: Decimal,
}

/// Which fills `/pnl` counts as realised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum PnlPeriod {
    /// Since the trading day began (`risk.day_start_utc_hour`, default 00:00 UTC).
    Today,
    /// The last seven trading days, today included.
    Week,
    /// Everything stored.
    All,
}

impl std::str::FromStr for PnlPeriod {
    type Err = ApiError;

    fn from_str(text: &str) -> Result<Self, ApiError> {
        match text {
            "today" | "day" => Ok(PnlPeriod::Today),
            "week" => Ok(PnlPeriod::Week),
            "all" => Ok(PnlPeriod::All),
            other => Err(ApiError::BadRequest(format!("unknown period {other:?}: expected today, week or all"))),
        }
    }
}

/// One strategy's profit and loss over a period.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PnlRow {
    /// Strategy (or `total`).
    pub strategy: String,
    /// PnL its fills in the period realised, before fees.
    #[schema(format = "money")]
    pub realized: Decimal,
    /// Fees of its fills in the period.
    #[schema(format = "money")]
    pub fees: Decimal,
    /// Unrealised PnL of its open positions now, at the mark.
    #[schema(format = "money")]
    pub unrealized: Decimal,
    /// Realised minus fees plus unrealised.
    #[schema(format = "money")]
    pub net: Decimal,
    /// Its fills in the period.
    pub fills: usize,
}

/// `/pnl`.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct PnlResponse {
    /// `today`, `week` or `all`.
    pub period: String,
    /// Fills from this time on count (ms since the epoch; 0 for `all`).
    pub since: i64,
    /// Quote currency.
    pub currency: String,
    /// Each strategy with fills or an open position, by name.
    pub strategies: Vec<PnlRow>,
    /// The sum of the strategies.
    pub total: PnlRow,
}

/// Refuses changes once the host is shutting down.
pub fn writable(ctx: &ApiContext) -> Result<(), ApiError> {
    if ctx.health.is_shutting_down() {
        return Err(ApiError::Unavailable("the host is shutting down".into()));
    }
    Ok(())
}

/// Checks a strategy name from outside (a path, a chat message).
pub fn strategy_name(name: &str) -> Result<String, ApiError> {
    if !crate::control::valid_strategy_name(name) {
        let shown: String = name.chars().take(64).collect();
        return Err(ApiError::BadRequest(format!(
            "invalid strategy name {shown:?}: 1 to 64 letters, digits, `_` or `-`"
        )));
    }
    Ok(name.to_string())
}

/// Sends a control request and waits (at most 30 s) for its answer.
async fn ask<T>(
    ctx: &ApiContext,
    make: impl FnOnce(oneshot::Sender<Result<T, ControlError>>) -> Control,
) -> Result<T, ApiError> {
    let (reply, answer) = oneshot::channel();
    ctx.control.send(make(reply)).map_err(|_| ApiError::Unavailable("the supervisor is not running".into()))?;
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), answer)
        .await
        .map_err(|_| ApiError::Unavailable("the supervisor did not answer in time".into()))?;
    Ok(answer.map_err(|_| ApiError::Unavailable("the supervisor stopped".into()))??)
}

/// Runs a store read on the blocking pool.
async fn read<T: Send + 'static>(
    ctx: &ApiContext,
    read: impl FnOnce(&crate::store::StoreReader) -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, ApiError> {
    let store = ctx.store.clone();
    tokio::task::spawn_blocking(move || read(&store))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?
        .map_err(Into::into)
}

/// Version, mode, uptime, trading state, equity and counts.
pub fn status(ctx: &ApiContext) -> StatusResponse {
    let strategies = ctx.strategies.load();
    let account = ctx.account.load();
    let count = |states: &[StrategyState]| strategies.iter().filter(|s| states.contains(&s.state)).count();
    StatusResponse {
        version: env!("CARGO_PKG_VERSION").into(),
        mode: ctx.mode.clone(),
        clock: ctx.clock.label(),
        now: ctx.clock.now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        uptime_s: ctx.started.elapsed().as_secs(),
        strategies: strategies.len(),
        running: count(&[StrategyState::Running]),
        failed: count(&[StrategyState::Failed, StrategyState::Quarantined]),
        trading: account.trading.account,
        equity: Shown::money(account.equity),
        open_orders: account.open_orders.len(),
        positions: account.positions.values().flat_map(|p| p.values()).filter(|p| !p.size.is_zero()).count(),
        last_seq: ctx.activity.last_seq(),
        ws_clients: ctx.metrics.ws_clients.load(std::sync::atomic::Ordering::Relaxed),
    }
}

/// Every strategy's status with its quota hits, queue and results (PnL,
/// trades, win rate; the fills since the last call are read off the async workers).
pub async fn strategies(ctx: &ApiContext) -> Result<Vec<StrategyStatus>, ApiError> {
    let through = ctx.stats.lock().unwrap_or_else(|e| e.into_inner()).through();
    let fills = read(ctx, move |store| store.fills_after(through)).await?;
    let account = ctx.account.load();
    let mut book = ctx.stats.lock().unwrap_or_else(|e| e.into_inner());
    book.fold(&fills);
    let mut statuses = ctx.strategies.load().as_ref().clone();
    for status in &mut statuses {
        status.quota_hits = ctx.metrics.quota_hits(&status.name).snapshot();
        if let Some((depth, lagging)) = ctx.metrics.strategy_queue(&status.name) {
            (status.queue_depth, status.lagging) = (depth, lagging);
        }
        status.stats = book.stats(&status.name, &account);
    }
    Ok(statuses)
}

/// Starts a stopped, failed or quarantined strategy.
pub async fn start_strategy(ctx: &ApiContext, name: &str) -> Result<ActionResponse, ApiError> {
    writable(ctx)?;
    let name = strategy_name(name)?;
    ask(ctx, |reply| Control::Start(name.clone(), reply)).await?;
    Ok(ActionResponse { ok: true, message: format!("strategy {name} is starting"), version: None })
}

/// Stops a running strategy (its `on_stop` runs).
pub async fn stop_strategy(ctx: &ApiContext, name: &str) -> Result<ActionResponse, ApiError> {
    writable(ctx)?;
    let name = strategy_name(name)?;
    ask(ctx, |reply| Control::Stop(name.clone(), reply)).await?;
    Ok(ActionResponse { ok: true, message: format!("strategy {name} is stopping"), version: None })
}

/// Reloads a running strategy from its file: the new version, or the compile error.
pub async fn reload_strategy(ctx: &ApiContext, name: &str) -> Result<ActionResponse, ApiError> {
    writable(ctx)?;
    let name = strategy_name(name)?;
    let version = ask(ctx, |reply| Control::Reload(name.clone(), reply)).await?;
    Ok(ActionResponse { ok: true, message: format!("strategy {name} reloaded"), version: Some(version) })
}

/// Open orders, at most `limit`, rounded to the products' precision.
pub fn open_orders(ctx: &ApiContext, limit: usize) -> Vec<Order> {
    ctx.account.load().open_orders.iter().take(limit).map(|o| ctx.shown.order(o)).collect()
}

/// The newest `limit` stored orders, oldest first.
pub async fn stored_orders(ctx: &ApiContext, limit: usize) -> Result<Vec<Order>, ApiError> {
    let mut all = read(ctx, |store| store.orders()).await?;
    all.sort_by_key(|o| o.updated);
    let skip = all.len().saturating_sub(limit);
    Ok(all.iter().skip(skip).map(|o| ctx.shown.order(o)).collect())
}

/// The newest `limit` fills, oldest first.
pub async fn fills(ctx: &ApiContext, limit: usize) -> Result<Vec<Fill>, ApiError> {
    let fills = read(ctx, move |store| store.recent_fills(limit)).await?;
    Ok(fills.iter().map(|f| ctx.shown.fill(f)).collect())
}

/// Compares the host's open orders and positions with the venue's (a live
/// venue is asked; nothing changes) and checks the store's integrity. A
/// difference counts only if the host's view before and after the venue's
/// answer both show it (an order in flight is not a difference).
pub async fn reconcile(ctx: &ApiContext) -> Result<ReconcileReport, ApiError> {
    let checked = read(ctx, crate::store::check).await?;
    let store = StoreConsistency {
        orders: checked.orders,
        fills: checked.fills,
        activity: checked.activity,
        problems: checked.problems,
    };
    let before = ctx.account.load_full();
    let mut report = ReconcileReport {
        venue: ctx.mode.clone(),
        compared: false,
        clock_offset_ms: None,
        host_orders: before.open_orders.len(),
        venue_orders: None,
        differences: Vec::new(),
        error: None,
        store,
    };
    let Some(probe) = &ctx.venue else { return Ok(report) };
    match probe().await {
        Ok(venue) => {
            let after = ctx.account.load_full();
            report.differences = persisting(&differences(&before, &venue), differences(&after, &venue));
            report.compared = true;
            report.clock_offset_ms = Some(venue.clock_offset_ms);
            report.host_orders = after.open_orders.len();
            report.venue_orders = Some(venue.orders.len());
        }
        Err(error) => report.error = Some(error),
    }
    Ok(report)
}

/// Every strategy's non-flat positions with unrealised PnL at the mark, by strategy and symbol.
pub fn positions(ctx: &ApiContext) -> Vec<PositionView> {
    let account = ctx.account.load();
    let mut out: Vec<PositionView> = account
        .positions
        .iter()
        .flat_map(|(strategy, positions)| positions.values().map(move |p| (strategy, p)))
        .filter(|(_, p)| !p.size.is_zero())
        .map(|(strategy, p)| {
            let mark = account.marks.get(&p.symbol).copied();
            let shown = ctx.shown.position(p);
            PositionView {
                strategy: strategy.clone(),
                symbol: p.symbol.clone(),
                size: shown.size,
                entry_price: shown.entry_price,
                realized_pnl: shown.realized_pnl,
                unrealized_pnl: Shown::money(mark.map_or(Decimal::ZERO, |m| p.unrealized_pnl(m))),
                mark: mark.map(|m| ctx.shown.price(&p.symbol, m)),
            }
        })
        .collect();
    out.sort_by(|a, b| (&a.strategy, &a.symbol).cmp(&(&b.strategy, &b.symbol)));
    out
}

/// Cash balance and equity.
pub fn balances(ctx: &ApiContext) -> BalancesResponse {
    let account = ctx.account.load();
    BalancesResponse {
        currency: account.currency.clone(),
        balance: Shown::money(account.balance),
        equity: Shown::money(account.equity),
    }
}

/// Realised PnL (and fees) of the stored fills in `period`, per strategy,
/// with each strategy's unrealised PnL now: positions are replayed from
/// every stored fill, so a fill in the period that closes an older entry
/// Realised minus fees plus unrealised, saturating (money near Decimal's limit never panics).
fn net(row: &PnlRow) -> Decimal {
    row.realized.saturating_sub(row.fees).saturating_add(row.unrealized)
}

/// realises against that entry's price.
pub async fn pnl(ctx: &ApiContext, period: PnlPeriod) -> Result<PnlResponse, ApiError> {
    const DAY_MS: i64 = 86_400_000;
    let now = ctx.clock.now().timestamp_millis();
    let day_start = i64::from(ctx.risk_limits.load().account.day_start_utc_hour.unwrap_or(0)) * 3_600_000;
    let today = (now - day_start).div_euclid(DAY_MS) * DAY_MS + day_start;
    let since = match period {
        PnlPeriod::Today => today,
        PnlPeriod::Week => today - 6 * DAY_MS,
        PnlPeriod::All => 0,
    };
    let mut fills = read(ctx, |store| store.fills()).await?;
    fills.sort_by_key(|f| f.id);
    let account = ctx.account.load();
    let mut rows: BTreeMap<String, PnlRow> = BTreeMap::new();
    let row = |rows: &mut BTreeMap<String, PnlRow>, strategy: &str| {
        rows.entry(strategy.to_string())
            .or_insert_with(|| PnlRow {
                strategy: strategy.to_string(),
                realized: Decimal::ZERO,
                fees: Decimal::ZERO,
                unrealized: Decimal::ZERO,
                net: Decimal::ZERO,
                fills: 0,
            })
            .clone()
    };
    let mut replayed: BTreeMap<(String, String), Position> = BTreeMap::new();
    for fill in &fills {
        let position = replayed
            .entry((fill.strategy.clone(), fill.symbol.clone()))
            .or_insert_with(|| Position::flat(&fill.symbol));
        let realized = position.apply(fill.side, fill.size, fill.price);
        if fill.time >= since {
            let mut r = row(&mut rows, &fill.strategy);
            r.realized = r.realized.saturating_add(realized);
            r.fees = r.fees.saturating_add(fill.fee);
            r.fills += 1;
            rows.insert(fill.strategy.clone(), r);
        }
    }
    for (strategy, positions) in &account.positions {
        let unrealized: Decimal = positions
            .values()
            .filter(|p| !p.size.is_zero())
            .map(|p| account.marks.get(&p.symbol).map_or(Decimal::ZERO, |m| p.unrealized_pnl(*m)))
            .fold(Decimal::ZERO, Decimal::saturating_add);
        if positions.values().any(|p| !p.size.is_zero()) {
            let mut r = row(&mut rows, strategy);
            r.unrealized = r.unrealized.saturating_add(unrealized);
            rows.insert(strategy.clone(), r);
        }
    }
    let mut total = row(&mut BTreeMap::new(), "total");
    let strategies: Vec<PnlRow> = rows
        .into_values()
        .map(|mut r| {
            total.realized = total.realized.saturating_add(r.realized);
            total.fees = total.fees.saturating_add(r.fees);
            total.unrealized = total.unrealized.saturating_add(r.unrealized);
            total.fills += r.fills;
            r.net = net(&r);
            rounded(r)
        })
        .collect();
    total.net = net(&total);
    let period = match period {
        PnlPeriod::Today => "today",
        PnlPeriod::Week => "week",
        PnlPeriod::All => "all",
    };
    Ok(PnlResponse {
        period: period.into(),
        since,
        currency: account.currency.clone(),
        strategies,
        total: rounded(total),
    })
}

fn rounded(row: PnlRow) -> PnlRow {
    PnlRow {
        realized: Shown::money(row.realized),
        fees: Shown::money(row.fees),
        unrealized: Shown::money(row.unrealized),
        net: Shown::money(row.net),
        ..row
    }
}

/// Sets the account's trading state, or a strategy's: `active`,
/// `reduce_only`, `halted`, or `resume` (back to `active`).
pub async fn set_trading(ctx: &ApiContext, strategy: Option<String>, state: &str) -> Result<TradingStates, ApiError> {
    writable(ctx)?;
    let trading = match state {
        "active" | "resume" => TradingState::Active,
        "reduce_only" => TradingState::ReduceOnly,
        "halted" => TradingState::Halted,
        other => {
            return Err(ApiError::BadRequest(format!(
                "unknown state {other:?}: expected active, reduce_only, halted or resume"
            )));
        }
    };
    ask(ctx, |reply| Control::SetTrading { strategy, state: trading, reply }).await
}

/// The kill switch: halts the account, cancels every open order and, with
/// `flatten`, closes every position with reduce-only market orders.
pub async fn kill(ctx: &ApiContext, flatten: bool) -> Result<KillReport, ApiError> {
    ask(ctx, |reply| Control::Kill { flatten, reply }).await
}

/// Starts the ordered shutdown.
pub fn shutdown(ctx: &ApiContext, reason: ShutdownReason) -> Result<ActionResponse, ApiError> {
    writable(ctx)?;
    ctx.control
        .send(Control::Shutdown(reason))
        .map_err(|_| ApiError::Unavailable("the supervisor is not running".into()))?;
    Ok(ActionResponse { ok: true, message: "shutdown started".into(), version: None })
}

/// Replaces the risk limits in force (a validated `risk::Limits` as JSON).
pub async fn set_limits(ctx: &ApiContext, limits: serde_json::Value) -> Result<(), ApiError> {
    writable(ctx)?;
    ask(ctx, |reply| Control::SetLimits { limits, reply }).await
}
