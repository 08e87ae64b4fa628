//! REST handlers and the OpenAPI document generated from their types.

use std::collections::BTreeMap;

use axum::Json;
use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{Html, IntoResponse};
use axum::routing::{get, post};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, OpenApi, ToSchema};

use super::error::{ApiError, ErrorBody};
use super::ops::{
    self, ActionResponse, BalancesResponse, PnlPeriod, PnlResponse, PnlRow, PositionView, StatusResponse,
};
use super::{ApiState, ws};
use crate::activity::ActivityEvent;
use crate::config::RiskLimits;
use crate::control::{KillReport, ShutdownReason, StrategyStatus};
use crate::health::ComponentState;
use crate::model::{Fill, Order, Shown, TradingState, TradingStates};
use crate::risk::{Limits, ProtectionStatus};

const DASHBOARD: &str = include_str!("dashboard.html");
/// TradingView's lightweight-charts, vendored (assets/lightweight-charts/README.md).
const CHART_LIBRARY: &str = include_str!("../../assets/lightweight-charts/lightweight-charts.standalone.production.js");
/// Where the dashboard loads the chart library from.
pub(super) const CHART_LIBRARY_PATH: &str = "/assets/lightweight-charts.js";

/// All routes (state attached by the caller).
pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(dashboard))
        .route("/index.html", get(dashboard))
        .route(CHART_LIBRARY_PATH, get(chart_library))
        .route("/api/v1/health", get(health))
        .route("/api/v1/reconcile", get(reconcile))
        .route("/api/v1/status", get(status))
        .route("/api/v1/strategies", get(strategies))
        .route("/api/v1/strategies/{name}/start", post(start_strategy))
        .route("/api/v1/strategies/{name}/stop", post(stop_strategy))
        .route("/api/v1/strategies/{name}/reload", post(reload_strategy))
        .route("/api/v1/orders", get(orders))
        .route("/api/v1/fills", get(fills))
        .route("/api/v1/candles", get(candles))
        .route("/api/v1/candles/series", get(candle_series))
        .route("/api/v1/equity", get(equity))
        .route("/api/v1/plots", get(plots))
        .route("/api/v1/positions", get(positions))
        .route("/api/v1/balances", get(balances))
        .route("/api/v1/pnl", get(pnl))
        .route("/api/v1/models", get(models))
        .route("/api/v1/activity", get(activity))
        .route("/api/v1/ws", get(ws::upgrade))
        .route("/api/v1/shutdown", post(shutdown))
        .route("/api/v1/risk", get(risk))
        .route("/api/v1/risk/state", post(set_trading_state))
        .route("/api/v1/risk/limits", axum::routing::put(set_limits))
        .route("/api/v1/kill", post(kill))
        .route("/api/v1/metrics", get(metrics))
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
}

/// The OpenAPI 3 description of the API, generated from the handlers' types.
#[derive(OpenApi)]
#[openapi(
    info(title = "tradehost control API", description = "Control and observe a tradehost: strategies, orders, fills, positions, activity."),
    paths(health, reconcile, status, models, strategies, start_strategy, stop_strategy, reload_strategy, orders, fills, candles, candle_series, equity, plots, positions, balances, pnl, activity, ws::upgrade, shutdown, risk, set_trading_state, set_limits, kill, metrics, openapi),
    components(schemas(ErrorBody, StrategyStatus, Order, Fill, crate::model::Candle, crate::model::EquitySample, crate::strategy::plots::PlotSeries, crate::strategy::plots::PlotPoint, CandleSeriesView, ActivityEvent, HealthResponse, StatusResponse, ActionResponse, PositionView, BalancesResponse, PnlResponse, PnlRow, PnlPeriod, RiskResponse, Limits, RiskLimits, ProtectionStatus, crate::risk::Imposed, TradingStates, TradingState, TradingStateRequest, KillReport, crate::ml::ModelStatus, crate::exchange::reconcile::ReconcileReport, crate::exchange::reconcile::StoreConsistency, crate::exchange::reconcile::Difference, crate::control::StrategyStats, crate::health::FreshnessView)),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `/health`.
#[derive(Debug, Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ready`, `degraded` (serving, a component impaired), `starting` or `shutting_down`.
    pub status: String,
    /// Each component's state.
    pub components: BTreeMap<String, ComponentState>,
    /// Why components are down, where known (a task that panicked names its
    /// panic), or what is wrong while one still serves (a model file refused).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, String>,
    /// Each component's age of last real activity and freshness threshold.
    pub freshness: BTreeMap<String, crate::health::FreshnessView>,
    /// Each model's state (version, file, when loaded, last error); absent without models.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<crate::ml::ModelStatus>,
}

/// `?limit=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LimitQuery {
    /// Most items (1 to 10000, default 100).
    pub limit: Option<usize>,
}

/// `/candles` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CandlesQuery {
    /// Symbol.
    pub symbol: String,
    /// Timeframe as written in scripts (`1m`).
    pub timeframe: String,
    /// First candle start, ms. Without it the newest `limit` candles before
    /// `to` are answered (what a chart opens on); with it, the oldest from `from`.
    pub from: Option<i64>,
    /// End, exclusive, ms (default: after the last stored).
    pub to: Option<i64>,
    /// Most candles (1 to 10000, default 10000): page on with `from` = the last time + 1.
    pub limit: Option<usize>,
}

/// `/plots` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PlotsQuery {
    /// Only the series overlaying this symbol (default: all).
    pub symbol: Option<String>,
}

/// `/equity` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EquityQuery {
    /// First sample time, ms (default: the first stored).
    pub from: Option<i64>,
    /// End, exclusive, ms (default: now and later).
    pub to: Option<i64>,
    /// Most samples (1 to 10000, default 1000): a longer history is thinned
    /// to evenly spread samples, the newest always kept.
    pub points: Option<usize>,
}

/// One stored candle series, as `tradehost data list` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct CandleSeriesView {
    /// Symbol.
    pub symbol: String,
    /// Timeframe.
    pub timeframe: String,
    /// First candle start, ms.
    pub first: i64,
    /// Last candle start, ms.
    pub last: i64,
    /// Candles stored.
    pub count: usize,
    /// Runs of missing candles between the first and the last.
    pub gaps: usize,
}

/// `/orders` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OrdersQuery {
    /// Include closed orders from the store (default: open orders only).
    pub all: Option<bool>,
    /// Most items (1 to 10000, default 100).
    pub limit: Option<usize>,
}

/// `/activity` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ActivityQuery {
    /// Events after this sequence number (default 0).
    pub since: Option<u64>,
    /// Most events (1 to 10000, default 100).
    pub limit: Option<usize>,
}

fn limit(value: Option<usize>) -> Result<usize, ApiError> {
    match value.unwrap_or(100) {
        n @ 1..=10_000 => Ok(n),
        n => Err(ApiError::BadRequest(format!("limit must be between 1 and 10000, got {n}"))),
    }
}

fn query<T>(query: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    query.map(|Query(q)| q).map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))
}

fn strategy_name(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    Ok(name)
}

async fn dashboard() -> impl IntoResponse {
    ([(header::CACHE_CONTROL, "no-store")], Html(DASHBOARD))
}

async fn chart_library() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8"), (header::CACHE_CONTROL, "public, max-age=86400")],
        CHART_LIBRARY,
    )
}

/// Readiness: 200 when every component is up, 503 while starting, degraded or shutting down.
#[utoipa::path(get, path = "/api/v1/health", security(()), responses(
    (status = 200, description = "ready", body = HealthResponse),
    (status = 503, description = "starting, degraded or shutting down", body = HealthResponse)))]
async fn health(State(state): State<ApiState>) -> impl IntoResponse {
    let status = state.health.status();
    let code = if status == "ready" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (
        code,
        Json(HealthResponse {
            status: status.into(),
            components: state.health.components(),
            reasons: state.health.reasons(),
            freshness: state.health.freshness(),
            models: state.models.statuses(),
        }),
    )
}

/// Asks a live venue for its open orders and positions and reports where
/// the host differs (nothing is changed), with the clock offset, and checks
/// the store: positions equal the sum of fills, every fill's order exists,
/// activity numbering has no gaps. Paper and dry-run have no venue to ask.
#[utoipa::path(get, path = "/api/v1/reconcile", responses(
    (status = 200, description = "the comparison (differences empty when the host and the venue agree)", body = crate::exchange::reconcile::ReconcileReport),
    (status = 401, description = "missing or wrong token", body = ErrorBody)))]
async fn reconcile(
    State(state): State<ApiState>,
) -> Result<Json<crate::exchange::reconcile::ReconcileReport>, ApiError> {
    ops::reconcile(&state).await.map(Json)
}

/// Every model with its version, file, load time, last refused file, calls and cache use.
#[utoipa::path(get, path = "/api/v1/models", responses(
    (status = 200, body = Vec<crate::ml::ModelStatus>), (status = 401, body = ErrorBody)))]
async fn models(State(state): State<ApiState>) -> Json<Vec<crate::ml::ModelStatus>> {
    Json(state.models.statuses())
}

/// Version, mode, uptime and counts.
#[utoipa::path(get, path = "/api/v1/status", responses(
    (status = 200, body = StatusResponse), (status = 401, body = ErrorBody)))]
async fn status(State(state): State<ApiState>) -> Json<StatusResponse> {
    Json(ops::status(&state))
}

/// Every strategy with its state, version, reloads, restarts, last error, quota hits and results (PnL, trades, win rate).
#[utoipa::path(get, path = "/api/v1/strategies", responses(
    (status = 200, body = Vec<StrategyStatus>), (status = 401, body = ErrorBody)))]
async fn strategies(State(state): State<ApiState>) -> Result<Json<Vec<StrategyStatus>>, ApiError> {
    ops::strategies(&state).await.map(Json)
}

/// Starts a stopped, failed or quarantined strategy.
#[utoipa::path(post, path = "/api/v1/strategies/{name}/start", params(("name" = String, Path, description = "strategy name")), responses(
    (status = 200, body = ActionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn start_strategy(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ActionResponse>, ApiError> {
    Ok(Json(ops::start_strategy(&state, &strategy_name(name)?).await?))
}

/// Stops a running strategy (its `on_stop` runs).
#[utoipa::path(post, path = "/api/v1/strategies/{name}/stop", params(("name" = String, Path, description = "strategy name")), responses(
    (status = 200, body = ActionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn stop_strategy(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ActionResponse>, ApiError> {
    Ok(Json(ops::stop_strategy(&state, &strategy_name(name)?).await?))
}

/// Reloads a running strategy from its file: the new version, or the compile error (422).
#[utoipa::path(post, path = "/api/v1/strategies/{name}/reload", params(("name" = String, Path, description = "strategy name")), responses(
    (status = 200, body = ActionResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 422, description = "compile error with file:line:col", body = ErrorBody),
    (status = 503, body = ErrorBody)))]
async fn reload_strategy(
    State(state): State<ApiState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Json<ActionResponse>, ApiError> {
    Ok(Json(ops::reload_strategy(&state, &strategy_name(name)?).await?))
}

/// Open orders (or, with `all=true`, every stored order, newest last).
#[utoipa::path(get, path = "/api/v1/orders", params(OrdersQuery), responses(
    (status = 200, body = Vec<Order>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn orders(
    State(state): State<ApiState>,
    q: Result<Query<OrdersQuery>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let q = query(q)?;
    let limit = limit(q.limit)?;
    if q.all.unwrap_or(false) {
        return Ok(Json(ops::stored_orders(&state, limit).await?));
    }
    Ok(Json(ops::open_orders(&state, limit)))
}

/// The newest fills, oldest first.
#[utoipa::path(get, path = "/api/v1/fills", params(LimitQuery), responses(
    (status = 200, body = Vec<Fill>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn fills(
    State(state): State<ApiState>,
    q: Result<Query<LimitQuery>, QueryRejection>,
) -> Result<Json<Vec<Fill>>, ApiError> {
    let limit = limit(query(q)?.limit)?;
    Ok(Json(ops::fills(&state, limit).await?))
}

/// Stored candles of one series in `[from, to)`, oldest first (the store's
/// history: `tradehost data fetch`, and the candles the host closed).
#[utoipa::path(get, path = "/api/v1/candles", params(CandlesQuery), responses(
    (status = 200, body = Vec<crate::model::Candle>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn candles(
    State(state): State<ApiState>,
    q: Result<Query<CandlesQuery>, QueryRejection>,
) -> Result<Json<Vec<crate::model::Candle>>, ApiError> {
    let q = query(q)?;
    let limit = limit(Some(q.limit.unwrap_or(10_000)))?;
    let store = state.store.clone();
    let to = q.to.unwrap_or(i64::MAX);
    let candles = tokio::task::spawn_blocking(move || match q.from {
        Some(from) => store.candles_between(&q.symbol, &q.timeframe, from, to).map(|mut candles| {
            candles.truncate(limit);
            candles
        }),
        None => store.candles_before(&q.symbol, &q.timeframe, to, limit),
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(candles))
}

/// What the strategies plotted with `chart::plot` (the chart's overlays): the
/// newest values of each series by bar, since the host started.
#[utoipa::path(get, path = "/api/v1/plots", params(PlotsQuery), responses(
    (status = 200, body = Vec<crate::strategy::plots::PlotSeries>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn plots(
    State(state): State<ApiState>,
    q: Result<Query<PlotsQuery>, QueryRejection>,
) -> Result<Json<Vec<crate::strategy::plots::PlotSeries>>, ApiError> {
    let q = query(q)?;
    Ok(Json(state.plots.series(q.symbol.as_deref())))
}

/// The account's equity history from the store (sampled every
/// `store.equity_sample_ms`), oldest first: it survives reloads and restarts.
#[utoipa::path(get, path = "/api/v1/equity", params(EquityQuery), responses(
    (status = 200, body = Vec<crate::model::EquitySample>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn equity(
    State(state): State<ApiState>,
    q: Result<Query<EquityQuery>, QueryRejection>,
) -> Result<Json<Vec<crate::model::EquitySample>>, ApiError> {
    let q = query(q)?;
    let points = match q.points.unwrap_or(1000) {
        n @ 1..=10_000 => n,
        n => return Err(ApiError::BadRequest(format!("points must be between 1 and 10000, got {n}"))),
    };
    let store = state.store.clone();
    let (from, to) = (q.from.unwrap_or(0), q.to.unwrap_or(i64::MAX));
    let samples = tokio::task::spawn_blocking(move || store.equity_between(from, to, points))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(
        samples
            .iter()
            .map(|s| crate::model::EquitySample {
                time: s.time,
                equity: Shown::money(s.equity),
                balance: Shown::money(s.balance),
            })
            .collect(),
    ))
}

/// The stored candle series: first, last, count and gaps of each.
#[utoipa::path(get, path = "/api/v1/candles/series", responses(
    (status = 200, body = Vec<CandleSeriesView>), (status = 401, body = ErrorBody)))]
async fn candle_series(State(state): State<ApiState>) -> Result<Json<Vec<CandleSeriesView>>, ApiError> {
    let store = state.store.clone();
    let sets = tokio::task::spawn_blocking(move || store.candle_sets())
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(sets.iter().map(CandleSeriesView::of).collect()))
}

impl CandleSeriesView {
    /// The summary of a stored series.
    pub fn of(set: &crate::store::CandleSet) -> Self {
        let step = set.timeframe.parse::<crate::data::Timeframe>().map_or(i64::MAX, |t| t.ms());
        CandleSeriesView {
            symbol: set.symbol.clone(),
            timeframe: set.timeframe.clone(),
            first: set.times.first().copied().unwrap_or_default(),
            last: set.times.last().copied().unwrap_or_default(),
            count: set.times.len(),
            gaps: crate::data::history::gaps(set.times.iter().copied(), step).len(),
        }
    }
}

/// Every strategy's non-flat positions with unrealised PnL at the mark.
#[utoipa::path(get, path = "/api/v1/positions", responses(
    (status = 200, body = Vec<PositionView>), (status = 401, body = ErrorBody)))]
async fn positions(State(state): State<ApiState>) -> Json<Vec<PositionView>> {
    Json(ops::positions(&state))
}

/// Cash balance and equity of the account.
#[utoipa::path(get, path = "/api/v1/balances", responses(
    (status = 200, body = BalancesResponse), (status = 401, body = ErrorBody)))]
async fn balances(State(state): State<ApiState>) -> Json<BalancesResponse> {
    Json(ops::balances(&state))
}

/// `?period=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PnlQuery {
    /// `today` (since the trading day began), `week` (the last seven trading days) or `all` (default `today`).
    pub period: Option<String>,
}

/// Realised PnL and fees of the period's fills and unrealised PnL now, per strategy and in total.
#[utoipa::path(get, path = "/api/v1/pnl", params(PnlQuery), responses(
    (status = 200, body = PnlResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn pnl(
    State(state): State<ApiState>,
    q: Result<Query<PnlQuery>, QueryRejection>,
) -> Result<Json<PnlResponse>, ApiError> {
    let period: PnlPeriod = query(q)?.period.as_deref().unwrap_or("today").parse()?;
    Ok(Json(ops::pnl(&state, period).await?))
}

/// The persisted activity log after `since`.
#[utoipa::path(get, path = "/api/v1/activity", params(ActivityQuery), responses(
    (status = 200, body = Vec<ActivityEvent>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn activity(
    State(state): State<ApiState>,
    q: Result<Query<ActivityQuery>, QueryRejection>,
) -> Result<Json<Vec<serde_json::Value>>, ApiError> {
    let q = query(q)?;
    let (since, limit) = (q.since.unwrap_or(0), limit(q.limit)?);
    let store = state.store.clone();
    let events = tokio::task::spawn_blocking(move || store.activity_since(since, limit))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    Ok(Json(events))
}

/// Starts the graceful shutdown.
#[utoipa::path(post, path = "/api/v1/shutdown", responses(
    (status = 202, body = ActionResponse), (status = 401, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn shutdown(State(state): State<ApiState>) -> Result<(StatusCode, Json<ActionResponse>), ApiError> {
    Ok((StatusCode::ACCEPTED, Json(ops::shutdown(&state, ShutdownReason::Api)?)))
}

/// `/risk`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RiskResponse {
    /// Whether new orders may go out: the account's state and each strategy's own.
    pub trading: TradingStates,
    /// The limits in force.
    pub limits: Limits,
    /// What the protections watch and impose, by scope (as last stored: at
    /// least once a minute, and at every trigger or change).
    pub protections: Vec<ProtectionStatus>,
    /// Orders refused since the host started, by limit.
    pub rejections: BTreeMap<String, u64>,
}

/// A trading state to set: the account's, or one strategy's.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TradingStateRequest {
    /// `active`, `reduce_only`, `halted`, or `resume` (back to `active`).
    pub state: String,
    /// A strategy; without it the account's state is set.
    pub strategy: Option<String>,
}

/// `/kill` options.
#[derive(Debug, Deserialize, ToSchema, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct KillQuery {
    /// Also close every position with reduce-only market orders.
    pub flatten: Option<bool>,
}

/// The trading states, the limits in force and what the protections watch.
#[utoipa::path(get, path = "/api/v1/risk", responses(
    (status = 200, body = RiskResponse), (status = 401, body = ErrorBody)))]
async fn risk(State(state): State<ApiState>) -> Json<RiskResponse> {
    Json(RiskResponse {
        trading: state.account.load().trading.clone(),
        limits: state.risk_limits.load().as_ref().clone(),
        protections: state.protections.load().as_ref().clone(),
        rejections: state.metrics.risk_rejections(),
    })
}

/// Replaces the risk limits in force (every limit at once: the account's and
/// each strategy's); stored, and used from then on, also after a restart,
/// instead of the config file's.
#[utoipa::path(put, path = "/api/v1/risk/limits", request_body = Limits, responses(
    (status = 200, body = Limits), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
async fn set_limits(
    State(state): State<ApiState>,
    body: Result<Json<Limits>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Limits>, ApiError> {
    ops::writable(&state)?;
    let Json(limits) = body.map_err(|e| ApiError::BadRequest(format!("bad limits: {}", e.body_text())))?;
    let problems = limits.problems();
    if !problems.is_empty() {
        let problems: Vec<String> = problems.iter().map(ToString::to_string).collect();
        return Err(ApiError::BadRequest(problems.join("; ")));
    }
    let json = serde_json::to_value(&limits).map_err(|e| ApiError::Internal(e.to_string()))?;
    ops::set_limits(&state, json).await?;
    Ok(Json(limits))
}

/// Sets the account's trading state, or a strategy's (`resume` returns to `active`).
#[utoipa::path(post, path = "/api/v1/risk/state", request_body = TradingStateRequest, responses(
    (status = 200, body = TradingStates), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 404, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn set_trading_state(
    State(state): State<ApiState>,
    body: Result<Json<TradingStateRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<TradingStates>, ApiError> {
    let Json(request) = body.map_err(|e| ApiError::BadRequest(format!("bad body: {}", e.body_text())))?;
    Ok(Json(ops::set_trading(&state, request.strategy, &request.state).await?))
}

/// The kill switch: halts the account, cancels every open order and, with
/// `flatten=true`, closes every position with reduce-only market orders.
#[utoipa::path(post, path = "/api/v1/kill", params(KillQuery), responses(
    (status = 200, body = KillReport), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
    (status = 503, body = ErrorBody)))]
async fn kill(
    State(state): State<ApiState>,
    q: Result<Query<KillQuery>, QueryRejection>,
) -> Result<Json<KillReport>, ApiError> {
    let flatten = query(q)?.flatten.unwrap_or(false);
    Ok(Json(ops::kill(&state, flatten).await?))
}

/// Prometheus text format.
#[utoipa::path(get, path = "/api/v1/metrics", responses(
    (status = 200, description = "Prometheus text exposition", body = String, content_type = "text/plain"), (status = 401, body = ErrorBody)))]
async fn metrics(State(state): State<ApiState>) -> impl IntoResponse {
    state.metrics.events.store(state.activity.delivered(), std::sync::atomic::Ordering::Relaxed);
    let mut text = state.metrics.render();
    state.health.render_metrics(&mut text);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", responses(
    (status = 200, description = "OpenAPI 3 document", body = Object), (status = 401, body = ErrorBody)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}
