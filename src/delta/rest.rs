//! The signed REST client (shared/delta-exchange.md §2–4): one attempt per
//! signature, a client-side weight budget that waits *before* signing, 429s
//! honoured with `X-RATE-LIMIT-RESET`, a clock offset from `/v2/settings`
//! so the 5-second window holds on a skewed machine, both error shapes, and
//! typed errors that tell connectivity, rate limits, auth, rejections and
//! decode problems apart.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::time::Instant;

use super::sign::{Query, signature};
use super::wire::{
    Balance, DeltaProduct, L2Book, Meta, RestCandle, RestFill, RestOrder, RestPosition, Settings, Ticker,
};
use crate::config::Secret;

/// Sent on every request (the CDN refuses requests without one).
pub const USER_AGENT: &str = concat!("tradehost/", env!("CARGO_PKG_VERSION"));
/// Units per window (§3.6).
pub const WINDOW_UNITS: u32 = 10_000;
/// The fixed window.
pub const WINDOW: Duration = Duration::from_secs(300);
/// Most candles one request returns.
pub const CANDLES_PER_REQUEST: i64 = 2_000;

/// An API key and its secret.
#[derive(Clone, Debug)]
pub struct Credentials {
    /// The key (sent as `api-key`).
    pub key: Secret,
    /// The secret (never sent).
    pub secret: Secret,
}

/// Why a REST call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RestError {
    /// The request may not have reached the exchange (connect, reset, timeout).
    #[error("{endpoint}: cannot reach the exchange: {message}")]
    Connectivity {
        /// `METHOD /path`.
        endpoint: String,
        /// What failed.
        message: String,
        /// True when it timed out after sending (the request may have been executed).
        timed_out: bool,
    },
    /// 429: the weight budget or the engine limit is used up.
    #[error("{endpoint}: rate limited, window resets in {reset_ms} ms")]
    RateLimited {
        /// `METHOD /path`.
        endpoint: String,
        /// From `X-RATE-LIMIT-RESET`.
        reset_ms: u64,
    },
    /// Key, signature, time window, permission or IP problem.
    #[error("{endpoint}: authentication failed ({code}){}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Auth {
        /// `METHOD /path`.
        endpoint: String,
        /// The exchange's code (`invalid_api_key`, `SignatureExpired`, ...).
        code: String,
        /// Its message.
        message: Option<String>,
    },
    /// The exchange refused the request (business error with its code).
    #[error("{endpoint}: rejected by the exchange: {code}{}", context.as_ref().map(|c| format!(" {c}")).unwrap_or_default())]
    Rejected {
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// `insufficient_margin`, `open_order_not_found`, ...
        code: String,
        /// The error context, if any.
        context: Option<Value>,
    },
    /// Maintenance or a server error (5xx, `unavailable`).
    #[error("{endpoint}: exchange unavailable (HTTP {status}{})", code.as_deref().map(|c| format!(", {c}")).unwrap_or_default())]
    Unavailable {
        /// `METHOD /path`.
        endpoint: String,
        /// HTTP status.
        status: u16,
        /// Error code, if any.
        code: Option<String>,
    },
    /// The answer could not be decoded.
    #[error("{endpoint}: cannot decode the answer: {message}")]
    Decode {
        /// `METHOD /path`.
        endpoint: String,
        /// What is wrong, with the field path.
        message: String,
    },
    /// A signed call without configured credentials.
    #[error("{0}: no API key configured (exchange.delta.api_key / TRADEHOST_DELTA_API_KEY)")]
    NoCredentials(String),
}

impl RestError {
    /// True when retrying later (re-signed) may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, RestError::Connectivity { .. } | RestError::RateLimited { .. } | RestError::Unavailable { .. })
    }

    /// The exchange's error code, if it gave one.
    pub fn code(&self) -> Option<&str> {
        match self {
            RestError::Rejected { code, .. } | RestError::Auth { code, .. } => Some(code),
            RestError::Unavailable { code, .. } => code.as_deref(),
            _ => None,
        }
    }
}

/// Classifies an error answer (both shapes of §2.5).
pub fn classify_error(endpoint: &str, status: u16, body: &[u8], reset_ms: Option<u64>) -> RestError {
    let endpoint = endpoint.to_string();
    let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
    let (code, message, context) = match value.get("error") {
        Some(Value::Object(error)) => (
            error.get("code").and_then(Value::as_str).map(str::to_string),
            error.get("message").and_then(Value::as_str).map(str::to_string),
            error.get("context").cloned(),
        ),
        Some(Value::String(name)) => {
            (Some(name.clone()), value.get("message").and_then(Value::as_str).map(str::to_string), None)
        }
        _ => (None, None, None),
    };
    if status == 429 {
        return RestError::RateLimited { endpoint, reset_ms: reset_ms.unwrap_or(1_000) };
    }
    const AUTH: [&str; 9] = [
        "invalid_api_key",
        "InvalidApiKey",
        "invalid_signature",
        "Signature Mismatch",
        "signature_mismatch",
        "SignatureExpired",
        "UnauthorizedApiAccess",
        "unauthorized_api_access",
        "ip_not_whitelisted_for_api_key",
    ];
    match code {
        Some(code) if AUTH.contains(&code.as_str()) || status == 401 => RestError::Auth { endpoint, code, message },
        Some(code) if code == "unavailable" => RestError::Unavailable { endpoint, status, code: Some(code) },
        _ if status >= 500 => RestError::Unavailable { endpoint, status, code: None },
        Some(code) if code == "Forbidden" => RestError::Auth { endpoint, code, message },
        Some(code) => RestError::Rejected { endpoint, status, code, context },
        None if status == 401 || status == 403 => RestError::Auth { endpoint, code: format!("HTTP {status}"), message },
        None => RestError::Rejected {
            endpoint,
            status,
            code: format!("HTTP {status}"),
            context: Some(Value::String(String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())),
        },
    }
}

/// The client-side weight budget: a fixed window of [`WINDOW_UNITS`].
#[derive(Debug)]
pub struct RateBudget {
    /// End of the current window and the units used in it.
    state: Mutex<(Instant, u32)>,
    limit: u32,
    window: Duration,
}

impl RateBudget {
    /// A budget of `limit` units per `window`.
    pub fn new(limit: u32, window: Duration) -> Self {
        RateBudget { state: Mutex::new((Instant::now() + window, 0)), limit, window }
    }

    /// Takes `weight` units, first waiting for the next window if this one is spent.
    pub async fn acquire(&self, weight: u32) {
        loop {
            let wait = {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                if now >= state.0 {
                    *state = (now + self.window, 0);
                }
                if state.1 + weight <= self.limit {
                    state.1 += weight;
                    return;
                }
                state.0 - now
            };
            tracing::warn!(wait_ms = wait.as_millis() as u64, "delta: rate budget spent; waiting for the next window");
            tokio::time::sleep(wait).await;
        }
    }

    /// The exchange said the window is spent: nothing more until it resets.
    pub fn exhausted_for(&self, reset: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        *state = (Instant::now() + reset, self.limit);
    }

    /// Units used in the current window.
    pub fn used(&self) -> u32 {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).1
    }
}

/// One REST request, before signing.
#[derive(Debug, Clone)]
pub struct Call {
    /// HTTP method.
    pub method: Method,
    /// Path including `/v2`.
    pub path: String,
    /// Query string (signed and sent as is).
    pub query: Query,
    /// JSON body (signed and sent as is).
    pub body: Option<String>,
    /// Rate-limit weight.
    pub weight: u32,
    /// Needs the API key.
    pub signed: bool,
}

impl Call {
    /// A `GET`, signed or not.
    pub fn get(path: &str, query: Query, weight: u32, signed: bool) -> Self {
        Call { method: Method::GET, path: path.into(), query, body: None, weight, signed }
    }

    /// A signed call with a JSON body.
    pub fn send(method: Method, path: &str, body: String, weight: u32) -> Self {
        Call { method, path: path.into(), query: Query::new(), body: Some(body), weight, signed: true }
    }
}

/// Most waits for `X-RATE-LIMIT-RESET` in one call before it gives up.
pub const MAX_RATE_LIMIT_WAITS: u32 = 10;

/// Which endpoints a call may be retried on when it fails transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads: retried (re-signed) on connectivity problems, 5xx and 429.
    Idempotent,
    /// Writes: retried only on 429 (the exchange did not act); anything
    /// else goes back to the caller, who must look the order up.
    OnlyRateLimit,
}

/// The REST client.
pub struct RestClient {
    http: reqwest::Client,
    base: String,
    credentials: Option<Credentials>,
    budget: RateBudget,
    offset_ms: AtomicI64,
    attempts: u32,
    reachable: AtomicBool,
    /// Beats at every answer below 500 (the component `exchange.rest`'s activity).
    answered: crate::health::Pulse,
}

impl RestClient {
    /// A client for `base` (e.g. `https://api.india.delta.exchange`).
    pub fn new(base: &str, credentials: Option<Credentials>, timeout: Duration) -> Result<Self, RestError> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RestError::Connectivity { endpoint: base.into(), message: e.to_string(), timed_out: false })?;
        Ok(RestClient {
            http,
            base: base.trim_end_matches('/').to_string(),
            credentials,
            budget: RateBudget::new(WINDOW_UNITS, WINDOW),
            offset_ms: AtomicI64::new(0),
            attempts: 4,
            reachable: AtomicBool::new(true),
            answered: crate::health::Pulse::default(),
        })
    }

    /// False while the last request could not reach the exchange or met a
    /// server error or maintenance (for health).
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// When the exchange last answered (below 500).
    pub fn activity(&self) -> crate::health::Pulse {
        self.answered.clone()
    }

    /// The budget (for reporting).
    pub fn budget(&self) -> &RateBudget {
        &self.budget
    }

    /// Estimated server clock minus local clock, ms.
    pub fn clock_offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// Measures the clock offset from `/v2/settings` (midpoint of the round trip).
    pub async fn sync_clock(&self) -> Result<i64, RestError> {
        let sent = chrono::Utc::now().timestamp_micros();
        let settings: Settings = self.call(&Call::get("/v2/settings", Query::new(), 1, false)).await?.0;
        let received = chrono::Utc::now().timestamp_micros();
        let offset = (settings.server_time - (sent + received) / 2) / 1_000;
        self.offset_ms.store(offset, Ordering::Relaxed);
        Ok(offset)
    }

    /// The `timestamp` to sign now: server-corrected epoch seconds.
    pub fn timestamp(&self) -> String {
        ((chrono::Utc::now().timestamp_millis() + self.clock_offset_ms()) / 1_000).to_string()
    }

    /// A signed or public call with retries per `retry`. Every attempt is signed anew.
    /// A 429 (the exchange did nothing) waits for the reset and does not count
    /// as an attempt; at most [`MAX_RATE_LIMIT_WAITS`] such waits per call.
    pub async fn request<T: DeserializeOwned>(&self, call: Call, retry: Retry) -> Result<(T, Meta), RestError> {
        let Call { method, path, .. } = &call;
        let (mut attempt, mut rate_limit_waits) = (0, 0);
        loop {
            let error = match self.call(&call).await {
                Ok(done) => return Ok(done),
                Err(error) => error,
            };
            let delay = match &error {
                RestError::RateLimited { reset_ms, .. } if rate_limit_waits < MAX_RATE_LIMIT_WAITS => {
                    rate_limit_waits += 1;
                    Duration::from_millis(*reset_ms)
                }
                RestError::RateLimited { .. } => return Err(error),
                _ => {
                    attempt += 1;
                    if attempt >= self.attempts {
                        return Err(error);
                    }
                    match &error {
                        RestError::Auth { code, .. } if code == "SignatureExpired" => {
                            let _ = self.sync_clock().await;
                            Duration::ZERO
                        }
                        error if retry == Retry::Idempotent && error.is_transient() => {
                            Duration::from_millis(200 * 2u64.pow(attempt - 1))
                        }
                        _ => return Err(error),
                    }
                }
            };
            tracing::warn!(endpoint = %format!("{method} {path}"), attempt, rate_limit_waits, "delta: {error}; retrying in {} ms", delay.as_millis());
            tokio::time::sleep(delay).await;
        }
    }

    /// One attempt: wait for budget, sign, send, decode.
    async fn call<T: DeserializeOwned>(&self, call: &Call) -> Result<(T, Meta), RestError> {
        let Call { method, path, query, body, weight, signed } = call;
        let endpoint = format!("{method} {path}");
        self.budget.acquire(*weight).await;
        let url = format!("{}{}{}", self.base, path, query.as_str());
        let body = body.clone().unwrap_or_default();
        let mut request = self.http.request(method.clone(), &url);
        if *signed {
            let Some(credentials) = &self.credentials else { return Err(RestError::NoCredentials(endpoint)) };
            let timestamp = self.timestamp();
            let signature =
                signature(credentials.secret.expose(), method.as_str(), &timestamp, path, query.as_str(), &body);
            request = request
                .header("api-key", credentials.key.expose())
                .header("timestamp", timestamp)
                .header("signature", signature);
        }
        if !body.is_empty() {
            request = request.header("content-type", "application/json").body(body);
        }
        let response = request.send().await.map_err(|e| {
            self.reachable.store(false, Ordering::Relaxed);
            RestError::Connectivity { endpoint: endpoint.clone(), message: error_chain(&e), timed_out: e.is_timeout() }
        })?;
        let status = response.status().as_u16();
        self.reachable.store(status < 500, Ordering::Relaxed);
        if status < 500 {
            self.answered.beat();
        }
        let reset_ms =
            response.headers().get("x-rate-limit-reset").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        let bytes = response.bytes().await.map_err(|e| RestError::Connectivity {
            endpoint: endpoint.clone(),
            message: error_chain(&e),
            timed_out: e.is_timeout(),
        })?;
        if status == 429 {
            self.budget.exhausted_for(Duration::from_millis(reset_ms.unwrap_or(1_000)));
        }
        if !(200..300).contains(&status) {
            return Err(classify_error(&endpoint, status, &bytes, reset_ms));
        }
        decode(&endpoint, status, &bytes)
    }

    /// All products (paginated).
    pub async fn products(&self) -> Result<Vec<DeltaProduct>, RestError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let query = Query::new().push("page_size", 100).push_opt("after", after.as_deref());
            let (page, meta): (Vec<Value>, Meta) =
                self.request(Call::get("/v2/products", query, 3, false), Retry::Idempotent).await?;
            // Products the host cannot use (spot with decimal sizes, odd shapes) are skipped, not fatal.
            all.extend(page.into_iter().filter_map(|p| serde_json::from_value::<DeltaProduct>(p).ok()));
            match meta.after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// One product by symbol.
    pub async fn product(&self, symbol: &str) -> Result<DeltaProduct, RestError> {
        let path = format!("/v2/products/{}", super::sign::quote_plus(symbol));
        Ok(self.request(Call::get(&path, Query::new(), 3, false), Retry::Idempotent).await?.0)
    }

    /// Tickers of every product.
    pub async fn tickers(&self) -> Result<Vec<Ticker>, RestError> {
        Ok(self.request(Call::get("/v2/tickers", Query::new(), 3, false), Retry::Idempotent).await?.0)
    }

    /// One ticker.
    pub async fn ticker(&self, symbol: &str) -> Result<Ticker, RestError> {
        let path = format!("/v2/tickers/{}", super::sign::quote_plus(symbol));
        Ok(self.request(Call::get(&path, Query::new(), 3, false), Retry::Idempotent).await?.0)
    }

    /// The L2 book, `depth` levels a side.
    pub async fn l2_book(&self, symbol: &str, depth: u32) -> Result<L2Book, RestError> {
        let path = format!("/v2/l2orderbook/{}", super::sign::quote_plus(symbol));
        let query = Query::new().push("depth", depth);
        Ok(self.request(Call::get(&path, query, 3, false), Retry::Idempotent).await?.0)
    }

    /// Candles in `[start, end)` seconds, fetched in chunks of at most 2,000,
    /// sorted ascending without duplicates.
    pub async fn candles(
        &self,
        symbol: &str,
        resolution: &str,
        seconds: i64,
        start: i64,
        end: i64,
    ) -> Result<Vec<RestCandle>, RestError> {
        let mut out: Vec<RestCandle> = Vec::new();
        let mut from = start;
        while from < end {
            let to = (from + seconds * CANDLES_PER_REQUEST).min(end);
            let query =
                Query::new().push("resolution", resolution).push("symbol", symbol).push("start", from).push("end", to);
            let (chunk, _): (Vec<RestCandle>, _) =
                self.request(Call::get("/v2/history/candles", query, 3, false), Retry::Idempotent).await?;
            out.extend(chunk.into_iter().filter(|c| c.time >= start && c.time < end));
            from = to;
        }
        out.sort_by_key(|c| c.time);
        out.dedup_by_key(|c| c.time);
        Ok(out)
    }

    /// Places an order. Retried only on 429: after a timeout the caller must
    /// look the order up by client order id instead of sending it again.
    pub async fn place_order(&self, order: &NewOrder) -> Result<RestOrder, RestError> {
        let body = order.to_json();
        Ok(self.request(Call::send(Method::POST, "/v2/orders", body, 5), Retry::OnlyRateLimit).await?.0)
    }

    /// Attaches a bracket to the open position (`{"success":true}` on success).
    pub async fn place_bracket(&self, bracket: &NewBracket) -> Result<(), RestError> {
        let body = bracket.to_json();
        self.request::<Value>(Call::send(Method::POST, "/v2/orders/bracket", body, 5), Retry::OnlyRateLimit)
            .await
            .map(|_| ())
    }

    /// Cancels an order by exchange id.
    pub async fn cancel_order(&self, id: &str, product_id: i64) -> Result<RestOrder, RestError> {
        let id: Value = id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(id));
        let body = serde_json::json!({ "id": id, "product_id": product_id }).to_string();
        Ok(self.request(Call::send(Method::DELETE, "/v2/orders", body, 5), Retry::OnlyRateLimit).await?.0)
    }

    /// Cancels an order by client order id.
    pub async fn cancel_by_client_id(&self, client_id: &str, product_id: i64) -> Result<RestOrder, RestError> {
        let body = serde_json::json!({ "client_order_id": client_id, "product_id": product_id }).to_string();
        Ok(self.request(Call::send(Method::DELETE, "/v2/orders", body, 5), Retry::OnlyRateLimit).await?.0)
    }

    /// Cancels every open order of a product (all three kinds, explicitly).
    pub async fn cancel_all(&self, product_id: i64) -> Result<(), RestError> {
        let body = serde_json::json!({
            "product_id": product_id,
            "cancel_limit_orders": "true",
            "cancel_stop_orders": "true",
            "cancel_reduce_only_orders": "true",
        })
        .to_string();
        self.request::<Value>(Call::send(Method::DELETE, "/v2/orders/all", body, 5), Retry::Idempotent)
            .await
            .map(|_| ())
    }

    /// Changes an order's total size and limit price.
    pub async fn edit_order(
        &self,
        id: &str,
        product_id: i64,
        size: i64,
        limit_price: Option<&str>,
    ) -> Result<RestOrder, RestError> {
        let mut body = serde_json::json!({ "id": id.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(id)), "product_id": product_id, "size": size });
        if let Some(price) = limit_price {
            body["limit_price"] = Value::from(price);
        }
        let body = body.to_string();
        Ok(self.request(Call::send(Method::PUT, "/v2/orders", body, 5), Retry::OnlyRateLimit).await?.0)
    }

    /// Open and pending orders (all pages).
    pub async fn open_orders(&self, product_ids: &[i64]) -> Result<Vec<RestOrder>, RestError> {
        let ids = join_ids(product_ids);
        self.paged("/v2/orders", |q| q.push_opt("product_ids", ids.as_deref()).push("states", "open,pending"), 3).await
    }

    /// One order by client order id; `None` when the exchange has no such order.
    pub async fn order_by_client_id(&self, client_id: &str) -> Result<Option<RestOrder>, RestError> {
        let path = format!("/v2/orders/client_order_id/{}", super::sign::quote_plus(client_id));
        match self.request(Call::get(&path, Query::new(), 1, true), Retry::Idempotent).await {
            Ok((order, _)) => Ok(Some(order)),
            Err(RestError::Rejected { status: 404, .. }) => Ok(None),
            Err(RestError::Rejected { code, .. }) if code.contains("not_found") => Ok(None),
            Err(error) => Err(error),
        }
    }

    /// One order by exchange id.
    pub async fn order(&self, id: &str) -> Result<RestOrder, RestError> {
        let path = format!("/v2/orders/{}", super::sign::quote_plus(id));
        Ok(self.request(Call::get(&path, Query::new(), 1, true), Retry::Idempotent).await?.0)
    }

    /// Closed and cancelled orders since `start_us` (all pages).
    pub async fn order_history(&self, product_ids: &[i64], start_us: i64) -> Result<Vec<RestOrder>, RestError> {
        let ids = join_ids(product_ids);
        self.paged("/v2/orders/history", |q| q.push_opt("product_ids", ids.as_deref()).push("start_time", start_us), 10)
            .await
    }

    /// Our fills since `start_us` (all pages).
    pub async fn fills(&self, product_ids: &[i64], start_us: i64) -> Result<Vec<RestFill>, RestError> {
        let ids = join_ids(product_ids);
        self.paged("/v2/fills", |q| q.push_opt("product_ids", ids.as_deref()).push("start_time", start_us), 10).await
    }

    /// Open positions with their margin details.
    pub async fn positions(&self) -> Result<Vec<RestPosition>, RestError> {
        let (positions, _) =
            self.request(Call::get("/v2/positions/margined", Query::new(), 3, true), Retry::Idempotent).await?;
        Ok(positions)
    }

    /// Wallet balances.
    pub async fn wallet_balances(&self) -> Result<Vec<Balance>, RestError> {
        Ok(self.request(Call::get("/v2/wallet/balances", Query::new(), 3, true), Retry::Idempotent).await?.0)
    }

    /// Server time, µs.
    pub async fn server_time(&self) -> Result<i64, RestError> {
        let (settings, _): (Settings, _) =
            self.request(Call::get("/v2/settings", Query::new(), 1, false), Retry::Idempotent).await?;
        Ok(settings.server_time)
    }

    async fn paged<T: DeserializeOwned>(
        &self,
        path: &str,
        query: impl Fn(Query) -> Query,
        weight: u32,
    ) -> Result<Vec<T>, RestError> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let q = query(Query::new()).push("page_size", 50).push_opt("after", after.as_deref());
            let (page, meta): (Vec<T>, Meta) =
                self.request(Call::get(path, q, weight, true), Retry::Idempotent).await?;
            all.extend(page);
            match meta.after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }
}

fn join_ids(ids: &[i64]) -> Option<String> {
    (!ids.is_empty()).then(|| ids.iter().map(i64::to_string).collect::<Vec<_>>().join(","))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

/// Decodes a success envelope's `result` (and `meta`).
pub fn decode<T: DeserializeOwned>(endpoint: &str, status: u16, body: &[u8]) -> Result<(T, Meta), RestError> {
    let decode_error = |message: String| RestError::Decode { endpoint: endpoint.to_string(), message };
    let value: Value = serde_json::from_slice(body).map_err(|e| decode_error(format!("not JSON: {e}")))?;
    if value.get("success").and_then(Value::as_bool) == Some(false) {
        return Err(classify_error(endpoint, status, body, None));
    }
    let meta = value.get("meta").cloned().map(serde_json::from_value).transpose().ok().flatten().unwrap_or_default();
    let result = match value {
        Value::Object(mut map) if map.contains_key("result") => map.remove("result").unwrap_or(Value::Null),
        other => other,
    };
    let result = super::wire::from_json(result).map_err(decode_error)?;
    Ok((result, meta))
}

/// A new order, serialized once in the documented field order.
#[derive(Debug, Clone, PartialEq)]
pub struct NewOrder {
    /// Product id.
    pub product_id: i64,
    /// Contracts.
    pub size: i64,
    /// `buy` or `sell`.
    pub side: &'static str,
    /// Limit price as text (already on the tick grid); `None` for market orders.
    pub limit_price: Option<String>,
    /// `gtc` or `ioc`.
    pub time_in_force: &'static str,
    /// Post-only.
    pub post_only: bool,
    /// Reduce-only.
    pub reduce_only: bool,
    /// Our client order id (≤ 32 characters).
    pub client_order_id: String,
    /// A stop order's trigger, as Delta's fields.
    pub stop: Option<NewStop>,
    /// The bracket Delta attaches to the position once this entry fills
    /// (its `bracket_*` fields).
    pub bracket: Option<NewBracket>,
}

/// A position bracket: the stop-loss and take-profit orders Delta creates
/// and holds for a position (one per position), one-cancels-other.
#[derive(Debug, Clone, PartialEq)]
pub struct NewBracket {
    /// Product id.
    pub product_id: i64,
    /// The stop-loss leg.
    pub stop_loss: Option<BracketLegFields>,
    /// The take-profit leg.
    pub take_profit: Option<BracketLegFields>,
    /// `last_traded_price` or `mark_price`.
    pub stop_trigger_method: &'static str,
}

/// One leg of a [`NewBracket`], prices as text on the tick grid.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BracketLegFields {
    /// Trigger price (`None` for a trailing stop-loss).
    pub stop_price: Option<String>,
    /// Trailing distance, negative when it sells (the stop-loss only).
    pub trail_amount: Option<String>,
    /// Limit price once triggered (`None`: a market order).
    pub limit_price: Option<String>,
}

impl NewBracket {
    /// The body of `POST /v2/orders/bracket` (§4.16), exactly as signed and sent.
    pub fn to_json(&self) -> String {
        let leg = |fields: &BracketLegFields| {
            let mut leg = serde_json::Map::new();
            let kind = if fields.limit_price.is_some() { "limit_order" } else { "market_order" };
            leg.insert("order_type".into(), kind.into());
            for (key, value) in [
                ("stop_price", &fields.stop_price),
                ("trail_amount", &fields.trail_amount),
                ("limit_price", &fields.limit_price),
            ] {
                if let Some(value) = value {
                    leg.insert(key.into(), value.clone().into());
                }
            }
            Value::Object(leg)
        };
        let mut body = serde_json::Map::new();
        body.insert("product_id".into(), self.product_id.into());
        if let Some(stop_loss) = &self.stop_loss {
            body.insert("stop_loss_order".into(), leg(stop_loss));
        }
        if let Some(take_profit) = &self.take_profit {
            body.insert("take_profit_order".into(), leg(take_profit));
        }
        body.insert("bracket_stop_trigger_method".into(), self.stop_trigger_method.into());
        Value::Object(body).to_string()
    }

    /// The `bracket_*` fields of an entry order (§4.9).
    fn entry_fields(&self, body: &mut serde_json::Map<String, Value>) {
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(value) = value {
                body.insert(key.into(), value.clone().into());
            }
        };
        if let Some(stop_loss) = &self.stop_loss {
            put("bracket_stop_loss_price", &stop_loss.stop_price);
            put("bracket_stop_loss_limit_price", &stop_loss.limit_price);
            put("bracket_trail_amount", &stop_loss.trail_amount);
        }
        if let Some(take_profit) = &self.take_profit {
            put("bracket_take_profit_price", &take_profit.stop_price);
            put("bracket_take_profit_limit_price", &take_profit.limit_price);
        }
        body.insert("bracket_stop_trigger_method".into(), self.stop_trigger_method.into());
    }
}

/// The stop fields of a new order.
#[derive(Debug, Clone, PartialEq)]
pub struct NewStop {
    /// `stop_loss_order` or `take_profit_order`.
    pub stop_order_type: &'static str,
    /// Trigger price as text (on the tick grid); `None` for a trailing stop.
    pub stop_price: Option<String>,
    /// Trailing distance as text, negative for sells (as Delta's own client sends it).
    pub trail_amount: Option<String>,
    /// `last_traded_price` or `mark_price`.
    pub stop_trigger_method: &'static str,
}

impl NewOrder {
    /// The JSON body, exactly as signed and sent.
    pub fn to_json(&self) -> String {
        let mut body = serde_json::Map::new();
        body.insert("product_id".into(), self.product_id.into());
        body.insert("size".into(), self.size.into());
        body.insert("side".into(), self.side.into());
        match &self.limit_price {
            Some(price) => {
                body.insert("order_type".into(), "limit_order".into());
                body.insert("limit_price".into(), price.clone().into());
            }
            None => {
                body.insert("order_type".into(), "market_order".into());
            }
        }
        body.insert("time_in_force".into(), self.time_in_force.into());
        body.insert("post_only".into(), self.post_only.to_string().into());
        body.insert("reduce_only".into(), self.reduce_only.to_string().into());
        body.insert("client_order_id".into(), self.client_order_id.clone().into());
        if let Some(stop) = &self.stop {
            body.insert("stop_order_type".into(), stop.stop_order_type.into());
            if let Some(price) = &stop.stop_price {
                body.insert("stop_price".into(), price.clone().into());
            }
            if let Some(trail) = &stop.trail_amount {
                body.insert("trail_amount".into(), trail.clone().into());
            }
            body.insert("stop_trigger_method".into(), stop.stop_trigger_method.into());
        }
        if let Some(bracket) = &self.bracket {
            bracket.entry_fields(&mut body);
        }
        Value::Object(body).to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_budget_waits_for_the_next_window_before_signing() {
        let budget = RateBudget::new(10, Duration::from_secs(300));
        let start = Instant::now();
        budget.acquire(5).await;
        budget.acquire(5).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        budget.acquire(3).await;
        assert_eq!(start.elapsed(), Duration::from_secs(300), "waited for the window to reset");
        assert_eq!(budget.used(), 3);
        budget.exhausted_for(Duration::from_millis(1_500));
        let before = Instant::now();
        budget.acquire(1).await;
        assert_eq!(before.elapsed(), Duration::from_millis(1_500), "a 429 blocks until X-RATE-LIMIT-RESET");
    }
}
