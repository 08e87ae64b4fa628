//! The control plane: REST API, WebSocket activity stream, dashboard and
//! OpenAPI document, built by [`router`] so tests call it in-process. Every
//! request except `GET /api/v1/health` and the dashboard page needs the
//! bearer token. Lifecycle requests go through the supervisor's control
//! channel; reads come from snapshots and the store.

mod error;
pub mod ops;
mod routes;
pub mod stats;
mod ws;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use subtle::ConstantTimeEq;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tower_http::cors::CorsLayer;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

use crate::activity::ActivityBus;
use crate::config::{HttpConfig, Secret};
use crate::control::{Control, StrategyStatus};
use crate::health::{Health, Metrics};
use crate::model::AccountView;
use crate::store::StoreReader;

pub use error::{ApiError, ErrorBody};
pub use routes::{ApiDoc, CandleSeriesView};

/// What the handlers share.
pub struct ApiContext {
    /// The supervisor's control channel.
    pub control: mpsc::UnboundedSender<Control>,
    /// Live activity.
    pub activity: ActivityBus,
    /// Strategy statuses.
    pub strategies: Arc<ArcSwap<Vec<StrategyStatus>>>,
    /// Account snapshot.
    pub account: Arc<ArcSwap<AccountView>>,
    /// Persisted orders, fills and activity.
    pub store: StoreReader,
    /// Component readiness.
    pub health: Arc<Health>,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// The bearer token.
    pub token: Secret,
    /// Limits and timeouts.
    pub config: HttpConfig,
    /// Start time (for uptime).
    pub started: Instant,
    /// Closes WebSocket clients at shutdown.
    pub cancel: CancellationToken,
    /// `paper` or `delta`.
    pub mode: String,
    /// The run's clock, whose time every record carries.
    pub clock: crate::clock::Clock,
    /// How prices, sizes and money are shown.
    pub shown: crate::model::Shown,
    /// The risk limits in force: the account's and each strategy's.
    pub risk_limits: Arc<ArcSwap<crate::risk::Limits>>,
    /// What the protections watch, by scope.
    pub protections: Arc<ArcSwap<Vec<crate::risk::ProtectionStatus>>>,
    /// The models scripts call (`/models`, and their state in `/health`).
    pub models: Arc<crate::ml::Registry>,
    /// Injected failures (tests).
    pub faults: crate::config::Faults,
    /// The `http` component's activity, stamped at every request.
    pub requests: crate::health::Pulse,
    /// Each strategy's results, folded in from the stored fills.
    pub stats: std::sync::Mutex<stats::StatsBook>,
    /// The strategies' `chart::plot` values (the chart's overlays).
    pub plots: Arc<crate::strategy::plots::PlotBook>,
    /// Reads what a live venue holds (`/reconcile`); none for paper and dry-run.
    pub venue: Option<crate::exchange::reconcile::VenueProbe>,
}

/// Shared state of the router.
pub type ApiState = Arc<ApiContext>;

/// Paths that need no token: readiness probes, the dashboard page itself
/// and the chart library it loads.
fn is_public(method: &Method, path: &str) -> bool {
    ((method == Method::GET || method == Method::HEAD) && path == "/api/v1/health")
        || path == "/"
        || path == "/index.html"
        || path == routes::CHART_LIBRARY_PATH
}

/// Compares tokens in constant time.
fn token_matches(expected: &Secret, given: &str) -> bool {
    let (a, b) = (expected.expose().as_bytes(), given.as_bytes());
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

async fn authenticate(State(state): State<ApiState>, request: Request, next: Next) -> Result<Response, ApiError> {
    state.requests.beat();
    if is_public(request.method(), request.uri().path()) {
        return Ok(next.run(request).await);
    }
    let bearer = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_string);
    // Browsers cannot set headers on WebSocket upgrades: the stream also takes ?token=.
    let query_token = (request.uri().path() == "/api/v1/ws")
        .then(|| {
            request
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|pair| pair.strip_prefix("token=").map(percent_decode)))
        })
        .flatten();
    match bearer.or(query_token) {
        Some(given) if token_matches(&state.token, &given) => Ok(next.run(request).await),
        _ => Err(ApiError::Unauthorized),
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Gives every error response the JSON error shape (405, 408, 413, … from
/// the framework and layers come without one).
async fn error_shape(response: Response) -> Response {
    let status = response.status();
    let is_json =
        response.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let code = match status.as_u16() {
        404 => "not_found",
        405 => "method_not_allowed",
        408 => "timeout",
        413 => "payload_too_large",
        415 => "unsupported_media_type",
        422 => "unprocessable",
        s if s < 500 => "bad_request",
        _ => "internal",
    };
    let message = status.canonical_reason().unwrap_or("error").to_string();
    let mut shaped = error::error_response(status, code, message);
    for (name, value) in response.headers() {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            shaped.headers_mut().insert(name.clone(), value.clone());
        }
    }
    shaped
}

/// The whole HTTP surface.
pub fn router(state: ApiState) -> Router {
    let config = state.config.clone();
    let mut router = routes::routes()
        .fallback(|| async { ApiError::NotFound("no such route".into()) })
        .layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .with_state(state)
        .layer(RequestBodyLimitLayer::new(config.body_limit_bytes))
        .layer(TimeoutLayer::with_status_code(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            Duration::from_millis(config.request_timeout_ms),
        ));
    if !config.cors_origins.is_empty() {
        let origins: Vec<HeaderValue> = config.cors_origins.iter().filter_map(|o| o.parse().ok()).collect();
        router = router.layer(
            CorsLayer::new()
                .allow_origin(origins)
                .allow_methods([Method::GET, Method::POST])
                .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE]),
        );
    }
    // Outermost, so errors from every layer above get the JSON shape too.
    router.layer(middleware::map_response(error_shape))
}

/// File descriptors kept free for everything but API connections (the
/// store, strategy files, the exchange's sockets, logs).
const RESERVED_FDS: u64 = 256;

/// How many API connections may be open at once: `http.max_connections`,
/// below the file-descriptor limit (raised to its hard limit first, where
/// the system allows), so idle clients can never exhaust it.
pub fn connection_limit(configured: usize) -> usize {
    let wanted = configured as u64 + RESERVED_FDS;
    let allowed = match rlimit::increase_nofile_limit(wanted) {
        Ok(limit) => limit,
        Err(error) => {
            tracing::warn!("cannot read or raise the open-file limit ({error}); assuming 1024");
            1024
        }
    };
    let limit = (allowed.saturating_sub(RESERVED_FDS).max(16) as usize).min(configured);
    if limit < configured {
        tracing::warn!(
            configured,
            limit,
            "http.max_connections is above what the open-file limit ({allowed}) allows: at most {limit} API connections"
        );
    }
    limit
}

/// Serves the router until `shutdown` fires. A client has `idle_timeout` to
/// send a request's headers (on a new connection and between requests on a
/// kept-alive one) before it is closed, and at most `max_connections` are
/// open at once: a connection over the limit is closed at once. Connections
/// have Nagle's algorithm off: a WebSocket batch or a small answer goes out
/// at once instead of waiting up to a delayed ACK (~40 ms) behind the previous one.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
    idle_timeout: Duration,
    max_connections: usize,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
    let connections = tokio_util::task::TaskTracker::new();
    let mut refused: u64 = 0;
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, say: wait a little rather than spin.
                    tracing::warn!("cannot accept an API connection: {error}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused == 1 || refused.is_multiple_of(1_000) {
                tracing::warn!(refused, "too many API connections (limit {max_connections}): closing new ones");
            }
            continue; // dropped: closed at once
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {error}");
        }
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder.timer(hyper_util::rt::TokioTimer::new()).header_read_timeout(idle_timeout).keep_alive(true);
            let connection = builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service).with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!("API connection ended: {error}");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(5), connection).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
}

/// A random 32-byte token in hex.
pub fn generate_token() -> String {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The token stored at `path`, or a new one written there when the file is
/// missing or holds no token; true when it was created.
pub fn load_or_create_token(path: &std::path::Path) -> std::io::Result<(String, bool)> {
    match std::fs::read_to_string(path) {
        Ok(stored) if is_token(stored.trim()) => return Ok((stored.trim().to_string(), false)),
        Ok(_) => tracing::warn!(path = %path.display(), "the stored API token is malformed; generating a new one"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error),
    }
    let token = generate_token();
    write_token_file(path, &token)?;
    Ok((token, true))
}

/// True for a token this host would accept from a file: 32 to 256 printable
/// ASCII characters without spaces.
fn is_token(text: &str) -> bool {
    (32..=256).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_graphic())
}

/// Writes a token to `<data_dir>/api-token`, readable by the owner only.
pub fn write_token_file(path: &std::path::Path, token: &str) -> std::io::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    std::io::Write::write_all(&mut file, token.as_bytes())
}
