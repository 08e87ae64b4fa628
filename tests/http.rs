//! The control API over real HTTP: every endpoint's success and error cases,
//! bearer auth, the error shape, readiness across startup and shutdown, and
//! every response validated against the served OpenAPI document.

mod common;

use common::TestHost;
use reqwest::{Method, StatusCode};
use serde_json::Value;
use tradehost::control::StrategyState;

struct Api {
    base: String,
    token: String,
    http: reqwest::Client,
    openapi: Value,
}

impl Api {
    async fn new(t: &TestHost) -> Api {
        let base = format!("http://{}", t.host.http_addr());
        let token = t.host.api_token().expose().to_string();
        let http = reqwest::Client::new();
        let openapi = t.api_get("/api/v1/openapi.json").await;
        Api { base, token, http, openapi }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body)
    }

    /// Calls with the right token and checks the answer against the OpenAPI document.
    async fn checked(&self, method: Method, path: &str, template: &str, expected: StatusCode) -> Value {
        let (status, body) = self.call(method.clone(), path, Some(&self.token)).await;
        assert_eq!(status, expected, "{method} {path}: {body}");
        self.validate(&method, template, status, &body);
        body
    }

    fn validate(&self, method: &Method, template: &str, status: StatusCode, body: &Value) {
        let operation = &self.openapi["paths"][template][method.as_str().to_lowercase()];
        assert!(operation.is_object(), "{method} {template} is not in the OpenAPI document");
        let response = &operation["responses"][status.as_str()];
        assert!(response.is_object(), "{method} {template}: status {status} is not documented");
        let Some(schema) = response["content"]["application/json"]["schema"].as_object() else {
            return;
        };
        let mut root = serde_json::json!({ "components": self.openapi["components"].clone() });
        root.as_object_mut().unwrap().extend(schema.clone());
        let validator = jsonschema::validator_for(&root).unwrap_or_else(|e| panic!("schema for {template}: {e}"));
        if let Err(error) = validator.validate(body) {
            panic!("{method} {template} {status}: the response does not match the OpenAPI schema: {error}\n{body}");
        }
    }

    fn assert_error_shape(body: &Value, code: &str) {
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    }
}

const TRADER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.done != true { this.done = true; exchange::market_order("BTCUSD", "buy", 0.01); exchange::limit_order("BTCUSD", "buy", 0.01, t.bid * 0.5); }
}
"#;

#[tokio::test(flavor = "multi_thread")]
async fn every_endpoint_answers_documented_json_and_needs_the_token() {
    let t = TestHost::start(&[("trader", TRADER)], |_| {}).await;
    t.wait_for(0, "a fill", |e| e.kind == tradehost::activity::ActivityKind::Fill).await;
    t.wait_for(0, "the resting order", |e| {
        e.kind == tradehost::activity::ActivityKind::Order && e.data["status"] == "open"
    })
    .await;
    let api = Api::new(&t).await;
    assert_eq!(api.openapi["openapi"].as_str().map(|v| v.starts_with('3')), Some(true));

    let health = api.checked(Method::GET, "/api/v1/health", "/api/v1/health", StatusCode::OK).await;
    assert_eq!(health["status"], "ready");
    let status = api.checked(Method::GET, "/api/v1/status", "/api/v1/status", StatusCode::OK).await;
    assert_eq!((status["strategies"].as_u64(), status["running"].as_u64()), (Some(1), Some(1)));
    let strategies = api.checked(Method::GET, "/api/v1/strategies", "/api/v1/strategies", StatusCode::OK).await;
    assert_eq!(strategies[0]["name"], "trader");
    let orders = api.checked(Method::GET, "/api/v1/orders", "/api/v1/orders", StatusCode::OK).await;
    assert_eq!(orders.as_array().unwrap().len(), 1, "one resting order");
    let all = api.checked(Method::GET, "/api/v1/orders?all=true&limit=50", "/api/v1/orders", StatusCode::OK).await;
    assert!(all.as_array().unwrap().len() >= 2);
    let fills = api.checked(Method::GET, "/api/v1/fills?limit=10", "/api/v1/fills", StatusCode::OK).await;
    assert_eq!(fills[0]["size"], "0.01");
    let positions = api.checked(Method::GET, "/api/v1/positions", "/api/v1/positions", StatusCode::OK).await;
    assert_eq!((positions[0]["strategy"].as_str(), positions[0]["size"].as_str()), (Some("trader"), Some("0.01")));
    let balances = api.checked(Method::GET, "/api/v1/balances", "/api/v1/balances", StatusCode::OK).await;
    assert_eq!(balances["currency"], "USD");
    let activity =
        api.checked(Method::GET, "/api/v1/activity?since=0&limit=5", "/api/v1/activity", StatusCode::OK).await;
    assert_eq!(activity[0]["v"], 1);
    let (code, metrics) = api.call(Method::GET, "/metrics", Some(&api.token)).await;
    assert_eq!(code, StatusCode::OK);
    let metrics = metrics.as_str().unwrap().to_string();
    assert!(
        metrics.contains("tradehost_fills_total 1")
            && metrics.contains("tradehost_callback_seconds_count{strategy=\"trader\"}"),
        "{metrics}"
    );
    api.checked(Method::POST, "/api/v1/strategies/trader/stop", "/api/v1/strategies/{name}/stop", StatusCode::OK).await;
    t.wait_status("trader", |s| s.state == StrategyState::Stopped).await;
    let conflict = api
        .checked(Method::POST, "/api/v1/strategies/trader/stop", "/api/v1/strategies/{name}/stop", StatusCode::CONFLICT)
        .await;
    Api::assert_error_shape(&conflict, "conflict");
    api.checked(Method::POST, "/api/v1/strategies/trader/start", "/api/v1/strategies/{name}/start", StatusCode::OK)
        .await;
    t.wait_status("trader", |s| s.state == StrategyState::Running).await;
    let reloaded = api
        .checked(Method::POST, "/api/v1/strategies/trader/reload", "/api/v1/strategies/{name}/reload", StatusCode::OK)
        .await;
    assert_eq!(reloaded["version"], 2);
    let missing = api
        .checked(
            Method::POST,
            "/api/v1/strategies/nope/reload",
            "/api/v1/strategies/{name}/reload",
            StatusCode::NOT_FOUND,
        )
        .await;
    Api::assert_error_shape(&missing, "not_found");

    // 401 without a token and with a wrong one, on every protected endpoint.
    for (method, path) in [
        (Method::GET, "/api/v1/status"),
        (Method::GET, "/api/v1/strategies"),
        (Method::POST, "/api/v1/strategies/trader/start"),
        (Method::POST, "/api/v1/strategies/trader/stop"),
        (Method::POST, "/api/v1/strategies/trader/reload"),
        (Method::GET, "/api/v1/orders"),
        (Method::GET, "/api/v1/fills"),
        (Method::GET, "/api/v1/positions"),
        (Method::GET, "/api/v1/balances"),
        (Method::GET, "/api/v1/activity"),
        (Method::GET, "/api/v1/ws"),
        (Method::POST, "/api/v1/shutdown"),
        (Method::GET, "/api/v1/metrics"),
        (Method::GET, "/api/v1/openapi.json"),
    ] {
        for token in [None, Some("wrong-token-of-some-length")] {
            let (code, body) = api.call(method.clone(), path, token).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path} with {token:?}");
            Api::assert_error_shape(&body, "unauthorized");
        }
    }
    // Malformed input and unknown routes: 4xx with the error shape, never 500.
    for (method, path, code, error) in [
        (Method::GET, "/api/v1/fills?limit=abc", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/fills?limit=0", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/activity?since=-4", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/orders?colour=red", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/ws?types=fills,nonsense", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/ws", StatusCode::BAD_REQUEST, "bad_request"), // not an upgrade
        (Method::POST, "/api/v1/strategies/bad%20name/start", StatusCode::BAD_REQUEST, "bad_request"),
        (Method::GET, "/api/v1/nothing-here", StatusCode::NOT_FOUND, "not_found"),
        (Method::DELETE, "/api/v1/status", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        (Method::GET, "/api/v1/shutdown", StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
    ] {
        let (status, body) = api.call(method.clone(), path, Some(&api.token)).await;
        assert_eq!(status, code, "{method} {path}: {body}");
        Api::assert_error_shape(&body, error);
    }
    let old_websocket = api
        .http
        .get(format!("{}/api/v1/ws", api.base))
        .bearer_auth(&api.token)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "8")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
        .send()
        .await
        .unwrap();
    assert_eq!(old_websocket.status(), StatusCode::BAD_REQUEST);
    let body: Value = old_websocket.json().await.unwrap();
    Api::assert_error_shape(&body, "bad_request");
    assert!(body["error"]["message"].as_str().unwrap().contains("Sec-WebSocket-Version: 13"), "{body}");
    let oversized = api
        .http
        .post(format!("{}/api/v1/shutdown", api.base))
        .bearer_auth(&api.token)
        // The server answers 413 without reading the body and closes the
        // connection: do not let the pool reuse it for the next request.
        .header("connection", "close")
        .body(vec![b'x'; 200 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(oversized.status(), StatusCode::PAYLOAD_TOO_LARGE);
    Api::assert_error_shape(&oversized.json().await.unwrap(), "payload_too_large");
    let page = api.http.get(format!("{}/", api.base)).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK, "the dashboard page needs no token");
    assert!(page.text().await.unwrap().contains("tradehost"));

    let accepted = api.checked(Method::POST, "/api/v1/shutdown", "/api/v1/shutdown", StatusCode::ACCEPTED).await;
    assert_eq!(accepted["ok"], true);
    assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(20), t.host.wait()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_with_a_compile_error_answers_422_with_file_line_col() {
    let t = TestHost::start(&[("s", "fn on_tick(t) { }")], |_| {}).await;
    t.wait_status("s", |s| s.state == StrategyState::Running).await;
    let api = Api::new(&t).await;
    std::fs::write(t.file("s"), "fn on_tick(t) {\n  let = 1;\n}").unwrap();
    let body = api
        .checked(
            Method::POST,
            "/api/v1/strategies/s/reload",
            "/api/v1/strategies/{name}/reload",
            StatusCode::UNPROCESSABLE_ENTITY,
        )
        .await;
    Api::assert_error_shape(&body, "reload_rejected");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("{}:2:", t.file("s").display())), "{message}");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn readiness_is_503_while_starting_200_when_ready_and_503_during_shutdown() {
    let slow = r#"
fn on_start() { let t = now(); while now() - t < 700 { } }
fn on_stop() { let t = now(); while now() - t < 1500 { } }
"#;
    let t = TestHost::start(&[("slow", slow)], |c| {
        c.sandbox.max_operations = 1_000_000_000;
        c.sandbox.callback_budget_ms = 5_000;
    })
    .await;
    let api = Api::new(&t).await;
    let (code, body) = api.call(Method::GET, "/api/v1/health", None).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "starting");
    api.validate(&Method::GET, "/api/v1/health", code, &body);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let (code, body) = api.call(Method::GET, "/api/v1/health", None).await;
        if code == StatusCode::OK {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    t.host.shutdown(tradehost::control::ShutdownReason::Api);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !t.host.health().is_shutting_down() {
        assert!(std::time::Instant::now() < deadline, "shutdown never began");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let (code, body) = api.call(Method::GET, "/api/v1/health", None).await;
    assert_eq!((code, body["status"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down")));
    let (code, body) = api.call(Method::POST, "/api/v1/strategies/slow/start", Some(&api.token)).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "write endpoints refuse during shutdown");
    Api::assert_error_shape(&body, "unavailable");
    assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(20), t.host.wait()).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn startup_fails_naming_the_component_that_is_not_ready_in_time() {
    let stuck = "fn on_start() { let t = now(); while now() - t < 3000 { } }";
    let t = TestHost::start(&[("stuck", stuck)], |c| {
        c.sandbox.max_operations = 1_000_000_000;
        c.sandbox.callback_budget_ms = 10_000;
        c.http.ready_timeout_ms = 500;
    })
    .await;
    let failed = t.wait_for(0, "the shutdown", |e| e.data["event"] == "shutdown_started").await;
    let reason = failed.data["reason"].as_str().unwrap();
    assert!(reason.contains("not ready after 500 ms") && reason.contains("strategies"), "{reason}");
    assert_eq!(tokio::time::timeout(std::time::Duration::from_secs(20), t.host.wait()).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_non_loopback_bind_without_a_token_is_refused() {
    let mut config = tradehost::config::Config::embedded();
    config.http.bind = "0.0.0.0:0".parse().unwrap();
    let problems = config.problems();
    assert!(
        problems.iter().any(|p| p.key == "http.bind" && p.message.contains("not a loopback address")),
        "{problems:?}"
    );
    config.http.token = Some(tradehost::config::Secret::new("a-long-enough-token-1234"));
    assert!(config.problems().is_empty());
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread")]
async fn the_generated_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let t = TestHost::start(&[], |c| c.http.token = None).await;
    let path = t.data.path().join("api-token");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), t.host.api_token().expose());
    let first = t.host.api_token().expose().to_string();
    let (dir, data) = t.stop_keep().await;
    // The next start reuses it: a dashboard that stored the token keeps working.
    let t = TestHost::start_in(dir, data, |c| c.http.token = None).await;
    assert_eq!(t.host.api_token().expose(), first);
    let strategies = t.api_get("/api/v1/strategies").await;
    assert!(strategies.is_array(), "the old token is accepted after a restart: {strategies}");
    // `tradehost token --rotate` refuses while the host runs, and replaces it once stopped.
    let rotate = |data: &std::path::Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_tradehost"))
            .args(["token", "--rotate", "--data-dir"])
            .arg(data)
            .output()
            .unwrap()
    };
    let refused = rotate(t.data.path());
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("the host is running"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), first, "unchanged while running");
    let (dir, data) = t.stop_keep().await;
    let out = rotate(data.path());
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rotated = std::fs::read_to_string(&path).unwrap();
    assert_ne!(rotated, first);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), rotated);
    let t = TestHost::start_in(dir, data, |c| c.http.token = None).await;
    assert_eq!(t.host.api_token().expose(), rotated);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stopped_strategy_stays_stopped_across_restarts_until_started() {
    let t = TestHost::start(&[("keep", "fn on_tick(t) { }"), ("halt", "fn on_tick(t) { }")], |_| {}).await;
    t.wait_status("halt", |s| s.state == tradehost::control::StrategyState::Running).await;
    let api = Api::new(&t).await;
    let (code, _) = api.call(Method::POST, "/api/v1/strategies/halt/stop", Some(&api.token)).await;
    assert_eq!(code, StatusCode::OK);
    let status = t.wait_status("halt", |s| s.state == tradehost::control::StrategyState::Stopped).await;
    assert!(status.reason.as_deref().is_some_and(|r| r.contains("stopped by a user")), "{status:?}");
    // A file change does not start it again.
    std::fs::write(t.file("halt"), "fn on_tick(t) { let changed = 1; }").unwrap();
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, |_| {}).await;
    t.wait_status("keep", |s| s.state == tradehost::control::StrategyState::Running).await;
    let status = t.wait_status("halt", |s| s.state == tradehost::control::StrategyState::Stopped).await;
    assert!(status.reason.as_deref().is_some_and(|r| r.contains("stopped by a user")), "{status:?}");
    let listed = t.api_get("/api/v1/strategies").await;
    let halt = listed.as_array().unwrap().iter().find(|s| s["name"] == "halt").unwrap().clone();
    assert_eq!(halt["state"], "stopped");
    assert!(halt["reason"].as_str().unwrap().contains("stopped by a user"), "{halt}");
    // Started again, it runs, and keeps running after the next restart.
    let api = Api::new(&t).await;
    let (code, _) = api.call(Method::POST, "/api/v1/strategies/halt/start", Some(&api.token)).await;
    assert_eq!(code, StatusCode::OK);
    t.wait_status("halt", |s| s.state == tradehost::control::StrategyState::Running).await;
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, |_| {}).await;
    t.wait_status("halt", |s| s.state == tradehost::control::StrategyState::Running).await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_strategy_on_a_symbol_the_feed_lacks_is_idle_with_the_reason() {
    let script = r#"fn config() { #{ symbols: ["SOLUSD"], timeframe: "1m" } }
fn on_candle(c) { }"#;
    let t = TestHost::start(&[("sol", script)], |_| {}).await;
    let status = t.wait_status("sol", |s| s.state == tradehost::control::StrategyState::Idle).await;
    assert!(status.reason.as_deref().is_some_and(|r| r.starts_with("no market data for SOLUSD")), "{status:?}");
    let listed = t.api_get("/api/v1/strategies").await;
    assert_eq!(listed[0]["state"], "idle");
    t.wait_strategy(0, "sol", "idle").await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_is_off_by_default_and_allows_only_configured_origins() {
    let preflight = |t: &TestHost, origin: &'static str| {
        let url = format!("http://{}/api/v1/status", t.host.http_addr());
        async move {
            reqwest::Client::new()
                .request(Method::OPTIONS, url)
                .header("Origin", origin)
                .header("Access-Control-Request-Method", "GET")
                .header("Access-Control-Request-Headers", "authorization")
                .send()
                .await
                .unwrap()
        }
    };
    let closed = TestHost::start(&[], |_| {}).await;
    let response = preflight(&closed, "https://desk.example").await;
    assert!(response.headers().get("access-control-allow-origin").is_none(), "CORS is off by default");
    assert_eq!(closed.stop().await, 0);

    let open = TestHost::start(&[], |c| c.http.cors_origins = vec!["https://desk.example".into()]).await;
    let allowed = preflight(&open, "https://desk.example").await;
    assert_eq!(
        allowed.headers().get("access-control-allow-origin").map(|v| v.to_str().unwrap()),
        Some("https://desk.example")
    );
    let other = preflight(&open, "https://evil.example").await;
    assert!(other.headers().get("access-control-allow-origin").is_none());
    assert_eq!(open.stop().await, 0);
}

const AVERAGER: &str = r#"
fn config() { #{ symbols: ["BTCUSD", "ETHUSD"], timeframe: "1s" } }
fn on_tick(t) {
    this.n = (this.n ?? 0) + 1;
    if this.n <= 14 {
        // Buys at seven different prices: the entry price is an average no tick grid holds.
        exchange::market_order(t.symbol, "buy", if t.symbol == "BTCUSD" { 0.003 } else { 0.07 });
        exchange::limit_order(t.symbol, "buy", 0.001, t.bid * 0.9);
    }
}
"#;

/// Decimals of a decimal string.
fn decimals(text: &str) -> u32 {
    text.split_once('.').map_or(0, |(_, frac)| frac.len() as u32)
}

/// Walks `value` along its OpenAPI `schema`; every string with format
/// price/size/money must have at most the decimals the product allows.
fn check_shown(schemas: &Value, schema: &Value, value: &Value, symbol: Option<&str>, path: &str, checked: &mut usize) {
    let products: std::collections::BTreeMap<String, tradehost::model::Product> = tradehost::config::Config::embedded()
        .exchange
        .paper
        .product_list()
        .into_iter()
        .map(|p| (p.symbol.clone(), p))
        .collect();
    let schema = match schema["$ref"].as_str() {
        Some(r) => &schemas[r.trim_start_matches("#/components/schemas/")],
        None => schema,
    };
    if let Some(one_of) = schema["oneOf"].as_array() {
        for option in one_of.iter().filter(|o| o["type"] != "null") {
            check_shown(schemas, option, value, symbol, path, checked);
        }
        return;
    }
    match value {
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                check_shown(schemas, &schema["items"], item, symbol, &format!("{path}[{i}]"), checked);
            }
        }
        Value::Object(map) => {
            let symbol = map
                .get("symbol")
                .and_then(Value::as_str)
                .or(map.get("request").and_then(|r| r["symbol"].as_str()))
                .or(symbol);
            for (key, field) in map {
                check_shown(schemas, &schema["properties"][key], field, symbol, &format!("{path}.{key}"), checked);
            }
        }
        Value::String(text) => {
            let product = symbol.and_then(|s| products.get(s));
            let allowed = match schema["format"].as_str() {
                Some("price") => product.expect("a price belongs to a symbol").tick_size.normalize().scale(),
                Some("size") => product.expect("a size belongs to a symbol").lot_size.normalize().scale(),
                Some("money") => tradehost::model::MONEY_DECIMALS,
                _ => return,
            };
            assert!(decimals(text) <= allowed, "{path} = {text}: more than {allowed} decimals");
            assert!(!text.contains('.') || !text.ends_with('0'), "{path} = {text}: trailing zero");
            *checked += 1;
        }
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn every_money_field_has_at_most_the_products_decimals() {
    let t = TestHost::start(&[("avg", AVERAGER)], |_| {}).await;
    for n in [14, 13] {
        t.wait_for(0, "the buys", |e| e.kind == tradehost::activity::ActivityKind::Fill && e.data["id"] == n).await;
    }
    let api = Api::new(&t).await;
    let schemas = api.openapi["components"]["schemas"].clone();
    let mut checked = 0;
    for (path, template) in [
        ("/api/v1/orders?all=true", "/api/v1/orders"),
        ("/api/v1/orders", "/api/v1/orders"),
        ("/api/v1/fills", "/api/v1/fills"),
        ("/api/v1/positions", "/api/v1/positions"),
        ("/api/v1/balances", "/api/v1/balances"),
    ] {
        let body = api.checked(Method::GET, path, template, StatusCode::OK).await;
        let schema =
            &api.openapi["paths"][template]["get"]["responses"]["200"]["content"]["application/json"]["schema"];
        check_shown(&schemas, schema, &body, None, path, &mut checked);
    }
    assert!(checked > 50, "only {checked} money fields were checked");
    let positions = t.api_get("/api/v1/positions").await;
    let entry = positions[0]["entry_price"].as_str().unwrap();
    assert!(decimals(entry) <= 1, "an averaged entry price is shown at the tick's decimals: {entry}");
    // The activity stream shows fills the same way.
    for event in
        t.host.activity().since(0, usize::MAX).iter().filter(|e| e.kind == tradehost::activity::ActivityKind::Fill)
    {
        check_shown(
            &schemas,
            &serde_json::json!({"$ref": "#/components/schemas/Fill"}),
            &event.data,
            None,
            "activity",
            &mut checked,
        );
    }
    assert_eq!(t.stop().await, 0);
}

const BUYER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "10s" } }
fn on_candle(c) { exchange::market_order("BTCUSD", "buy", 0.001); }
"#;

const SEESAW: &str = r#"
fn config() { #{ symbols: ["ETHUSD"], timeframe: "10s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n % 3 == 0 { exchange::market_order("ETHUSD", "sell", 0.02); }
    else { exchange::market_order("ETHUSD", "buy", 0.01); }
}
"#;

/// Net signed size per (strategy, symbol) of a `/fills` answer.
fn net_of_fills(fills: &Value) -> std::collections::BTreeMap<(String, String), rust_decimal::Decimal> {
    let mut net: std::collections::BTreeMap<_, rust_decimal::Decimal> = std::collections::BTreeMap::new();
    for fill in fills.as_array().unwrap() {
        let size: rust_decimal::Decimal = fill["size"].as_str().unwrap().parse().unwrap();
        let signed = if fill["side"] == "buy" { size } else { -size };
        let key = (fill["strategy"].as_str().unwrap().to_string(), fill["symbol"].as_str().unwrap().to_string());
        *net.entry(key).or_default() += signed;
    }
    net.retain(|_, size| !size.is_zero());
    net
}

#[tokio::test(flavor = "multi_thread")]
async fn api_positions_never_run_ahead_of_the_stored_fills() {
    // Commits wait 40 ms: a view published before its commit would show a
    // fill that two reads of the store around it both lack.
    let t = TestHost::start(&[("buyer", BUYER), ("seesaw", SEESAW)], |c| c.faults.commit_delay_ms = 40).await;
    t.wait_for(0, "a fill", |e| e.kind == tradehost::activity::ActivityKind::Fill).await;
    let (mut compared, mut busy) = (0, 0);
    let start = std::time::Instant::now();
    // Under load most triples see a fill land; the quiet ones are what count.
    while compared < 100 && start.elapsed() < std::time::Duration::from_secs(40) {
        // Positions read between two equal reads of the stored fills must be
        // exactly their sum: a view published before its commit would not be.
        let before = t.api_get("/api/v1/fills?limit=10000").await;
        let positions = t.api_get("/api/v1/positions").await;
        let after = t.api_get("/api/v1/fills?limit=10000").await;
        if before != after {
            busy += 1;
            continue;
        }
        compared += 1;
        let mut shown = std::collections::BTreeMap::new();
        for p in positions.as_array().unwrap() {
            let key = (p["strategy"].as_str().unwrap().to_string(), p["symbol"].as_str().unwrap().to_string());
            shown.insert(key, p["size"].as_str().unwrap().parse::<rust_decimal::Decimal>().unwrap());
        }
        assert_eq!(shown, net_of_fills(&before), "snapshot {compared}: /positions differs from the stored /fills");
    }
    eprintln!("{compared} snapshots compared, {busy} skipped while fills landed");
    assert!(compared >= 25, "only {compared} quiet snapshots in 40 s ({busy} busy)");
    let fills = t.api_get("/api/v1/fills?limit=10000").await;
    assert!(fills.as_array().unwrap().len() > 20, "the strategies kept trading: {}", fills.as_array().unwrap().len());
    assert_eq!(t.stop().await, 0);
}

/// The health file in the data folder says what `/api/v1/health` says,
/// follows a strategy failing within a moment, and ends `shutting_down`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_file_follows_the_host_and_ends_shutting_down() {
    let t = common::TestHost::start(&[("fine", "fn on_candle(c) { }")], |c| c.health.interval_ms = 200).await;
    let path = t.data.path().join("health.json");
    let read = || -> serde_json::Value { serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap() };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !path.exists() || read()["status"] != "ready" {
        assert!(std::time::Instant::now() < deadline, "the file says ready");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let file = read();
    let api = t.api_get("/api/v1/health").await;
    assert_eq!(file["components"], api["components"], "{file} vs {api}");
    assert_eq!(file["pid"], std::process::id());
    let first = file["written_at"].as_str().unwrap().to_string();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_ne!(read()["written_at"].as_str().unwrap(), first, "rewritten every interval");
    let data = t.data.path().to_path_buf();
    let (_dir, _data) = t.stop_keep().await;
    let last: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("health.json")).unwrap()).unwrap();
    assert_eq!(last["status"], "shutting_down", "{last}");
}

/// The chart's data: the equity history sampled into the store (and still
/// there after a restart), the newest candles of a series, and what a
/// strategy plotted — each answer checked against the OpenAPI document.
#[tokio::test(flavor = "multi_thread")]
async fn equity_history_candles_and_plots_are_documented_and_the_history_survives_a_restart() {
    const PLOTTER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    chart::plot("close", c.close);
    if this.bought != true { this.bought = true; exchange::market_order("BTCUSD", "buy", 0.01); }
}
"#;
    let sample_fast = |c: &mut tradehost::config::Config| c.store.equity_sample_ms = 200;
    let t = TestHost::start(&[("plotter", PLOTTER)], sample_fast).await;
    let api = Api::new(&t).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (equity, plots) = loop {
        let equity = api.checked(Method::GET, "/api/v1/equity", "/api/v1/equity", StatusCode::OK).await;
        let plots = api.checked(Method::GET, "/api/v1/plots?symbol=BTCUSD", "/api/v1/plots", StatusCode::OK).await;
        let points = plots.as_array().and_then(|p| p.first()).map_or(0, |p| p["points"].as_array().unwrap().len());
        if equity.as_array().unwrap().len() >= 3 && points >= 3 {
            break (equity, plots);
        }
        assert!(std::time::Instant::now() < deadline, "samples and plotted values: {equity} {plots}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let times: Vec<i64> = equity.as_array().unwrap().iter().map(|s| s["time"].as_i64().unwrap()).collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "oldest first: {times:?}");
    assert_eq!((plots[0]["strategy"].as_str(), plots[0]["name"].as_str()), (Some("plotter"), Some("close")));

    // Each plotted value is the close of the stored candle of its bar.
    let last = plots[0]["points"].as_array().unwrap().last().unwrap().clone();
    let to = last["time"].as_i64().unwrap() + 1;
    let all = api
        .checked(
            Method::GET,
            &format!("/api/v1/candles?symbol=BTCUSD&timeframe=1s&from=0&to={to}"),
            "/api/v1/candles",
            StatusCode::OK,
        )
        .await;
    let bar = all.as_array().unwrap().iter().find(|c| c["time"] == last["time"]).expect("the plotted bar is stored");
    assert_eq!(bar["close"].as_f64(), last["value"].as_f64());
    // Without `from`: the newest candles, oldest first.
    let newest = api
        .checked(
            Method::GET,
            &format!("/api/v1/candles?symbol=BTCUSD&timeframe=1s&to={to}&limit=3"),
            "/api/v1/candles",
            StatusCode::OK,
        )
        .await;
    let tail: Vec<Value> = all.as_array().unwrap().iter().rev().take(3).rev().cloned().collect();
    assert_eq!(newest.as_array().unwrap(), &tail);
    for (path, template) in [
        ("/api/v1/equity?points=0", "/api/v1/equity"),
        ("/api/v1/equity?from=x", "/api/v1/equity"),
        ("/api/v1/plots?symbol=BTCUSD&extra=1", "/api/v1/plots"),
    ] {
        let refused = api.checked(Method::GET, path, template, StatusCode::BAD_REQUEST).await;
        Api::assert_error_shape(&refused, "bad_request");
    }
    // Thinned to at most `points`, the newest sample kept.
    let two = api.checked(Method::GET, "/api/v1/equity?points=2", "/api/v1/equity", StatusCode::OK).await;
    assert!(two.as_array().unwrap().len() <= 2, "{two}");

    let first = equity[0].clone();
    let (dir, data) = t.stop_keep().await;
    let t = TestHost::start_in(dir, data, sample_fast).await;
    let api = Api::new(&t).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let after = api.checked(Method::GET, "/api/v1/equity", "/api/v1/equity", StatusCode::OK).await;
        let samples = after.as_array().unwrap();
        assert_eq!(samples[0], first, "the history from before the restart is kept");
        if samples.len() > times.len() && samples.last().unwrap()["time"].as_i64() > times.last().copied() {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "sampling goes on after the restart: {after}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(t.stop().await, 0);
}
