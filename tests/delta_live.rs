//! The host against a faithful fake Delta Exchange on loopback
//! (tests/support/fake_delta.rs): a shipped strategy trading unchanged,
//! every fault switch, and clock skew. After each run the store and the
//! fake's account must agree: same fills, no order sent twice, the same
//! net position and the same PnL.

mod common;
#[path = "support/fake_delta.rs"]
mod fake_delta;

use std::path::Path;
use std::time::Duration;

use fake_delta::{FakeConfig, FakeDelta, assert_consistent, open_label};
use rust_decimal::Decimal;
use tradehost::config::{Config, Secret};
use tradehost::control::ShutdownReason;
use tradehost::health::ComponentState;
use tradehost::host::{self, HostHandle};

const MARKET_MAKER: &str = include_str!("../strategies/market_maker.rhai");

/// A host configured for the fake: fast heartbeats and reconnects, a tight
/// quote so fills come quickly (the script itself is the shipped one).
pub fn delta_config(fake: &FakeDelta, dir: &Path, data: &Path) -> Config {
    let mut config = common::fast_config(dir, data);
    fake.configure(&mut config);
    let delta = &mut config.exchange.delta;
    delta.request_timeout_ms = 1_000;
    delta.heartbeat_timeout_ms = 1_500;
    delta.ping_interval_ms = 1_000;
    delta.reconnect_initial_ms = 100;
    delta.reconnect_max_ms = 800;
    delta.stale_after_ms = 1_000;
    delta.history_bars = 60;
    let params = &mut config.strategies.overrides.entry("market_maker".into()).or_default().params;
    params.insert("spread_bps".into(), serde_json::json!(3.0));
    params.insert("requote_bps".into(), serde_json::json!(2.0));
    config
}

struct Run {
    fake: FakeDelta,
    host: HostHandle,
    dir: tempfile::TempDir,
    data: tempfile::TempDir,
}

async fn start(fake_config: FakeConfig) -> Run {
    let run = Run::launch(FakeDelta::start(fake_config).await, ("market_maker", MARKET_MAKER), |_| {}).await;
    run.wait("host ready", Duration::from_secs(20), |r| r.host.health().is_ready()).await;
    run
}

impl Run {
    /// Starts a host against `fake` with one strategy `(name, source)` and
    /// the Delta config adjusted by `configure`; does not wait for readiness.
    async fn launch(fake: FakeDelta, (name, source): (&str, &str), configure: impl FnOnce(&mut Config)) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let data = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(format!("{name}.rhai")), source).unwrap();
        let mut config = delta_config(&fake, dir.path(), data.path());
        configure(&mut config);
        let host = host::start(config).await.expect("host starts against the fake");
        Run { fake, host, dir, data }
    }

    async fn wait(&self, what: &str, limit: Duration, done: impl Fn(&Run) -> bool) -> Duration {
        let start = tokio::time::Instant::now();
        while !done(self) {
            if start.elapsed() >= limit {
                let open = self.fake.orders().iter().filter(|o| o.state == "open").count();
                let recent: Vec<String> = self
                    .host
                    .activity()
                    .since(0, usize::MAX)
                    .iter()
                    .rev()
                    .take(12)
                    .map(|e| e.data.to_string())
                    .collect();
                panic!(
                    "timed out after {limit:?} waiting for {what}; health {:?}; {open} open orders on the fake; latest activity (newest first): {recent:#?}",
                    self.host.health().components()
                );
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        eprintln!("{what}: {:?}", start.elapsed());
        start.elapsed()
    }

    /// Waits for a strategy log line after `since` containing `text`; returns the line.
    async fn wait_activity(&self, what: &str, limit: Duration, since: u64, text: impl Fn(&str) -> bool) -> String {
        let start = tokio::time::Instant::now();
        loop {
            let found = self.host.activity().since(since, usize::MAX).into_iter().find_map(|e| {
                let message = e.data["message"].as_str()?.to_string();
                (e.kind == tradehost::activity::ActivityKind::Log && text(&message)).then_some(message)
            });
            if let Some(message) = found {
                return message;
            }
            if start.elapsed() >= limit {
                let logs: Vec<String> =
                    self.host.activity().since(since, usize::MAX).iter().map(|e| e.data.to_string()).collect();
                panic!("timed out after {limit:?} waiting for {what}; logs: {logs:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Every report has landed: the host's open orders are the exchange's
    /// (none still pending) and its net BTCUSD position is the exchange's.
    fn caught_up(&self) -> bool {
        let account = self.host.account();
        let mut host_open: Vec<String> = account.open_orders.iter().map(|o| open_label(&o.request)).collect();
        let pending = account.open_orders.iter().any(|o| o.status == tradehost::model::OrderStatus::Pending);
        let fake_open = self.fake.open_labels();
        host_open.sort_unstable();
        let host_size: Decimal = account.positions.values().filter_map(|p| p.get("BTCUSD")).map(|p| p.size).sum();
        let (contracts, _) = self.fake.position("BTCUSD");
        !pending && host_open == fake_open && host_size == Decimal::from(contracts) * Decimal::new(1, 3)
    }

    fn state(&self, component: &str) -> Option<ComponentState> {
        self.host.health().components().get(component).copied()
    }

    async fn wait_fills(&self, more_than: usize) {
        self.wait(&format!("more than {more_than} fills on the fake"), Duration::from_secs(30), |r| {
            r.fake.fills().len() > more_than
        })
        .await;
    }

    /// Freezes the market, lets in-flight reports land, stops the host, and
    /// checks the store against the fake's account.
    async fn finish(self) -> (usize, usize) {
        self.fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
        self.wait("the host's orders and position to match the exchange's", Duration::from_secs(10), Run::caught_up)
            .await;
        self.host.shutdown(ShutdownReason::Api);
        let code = tokio::time::timeout(Duration::from_secs(20), self.host.wait()).await.expect("host stops");
        assert_eq!(code, 0, "clean shutdown");
        assert_consistent(&self.fake, self.data.path())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shipped_strategy_trades_unchanged_and_the_accounts_agree() {
    let run = start(FakeConfig::default()).await;
    run.wait_fills(6).await;
    // Each requote cancels the old quotes before the new ones rest: never more
    // than a bid and an ask, plus the pair being replaced.
    let mut most_open = 0;
    for _ in 0..100 {
        most_open = most_open.max(run.fake.orders().iter().filter(|o| o.state == "open").count());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(most_open <= 4, "{most_open} quotes open at once: cancels missed orders");
    let account = run.host.account();
    assert_eq!(account.currency, "USD");
    assert!(account.balance > Decimal::ZERO, "balance from the exchange wallet");
    // Positions are valued at the exchange's mark price (a quarter tick off the mid here), not the mid.
    let mark = account.marks["BTCUSD"];
    assert_eq!(mark % Decimal::new(5, 1), Decimal::new(125, 3), "mark {mark} comes from the ticker channel");
    let unrealized: Decimal =
        account.positions.values().flat_map(|p| p.values()).map(|p| p.unrealized_pnl(account.marks[&p.symbol])).sum();
    assert_eq!(account.equity, account.balance + unrealized);
    let (fills, orders) = run.finish().await;
    assert!(fills > 6 && orders > fills / 2, "{fills} fills, {orders} orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_sockets_and_silent_heartbeats_reconnect_within_the_backoff_bound() {
    let run = start(FakeConfig::default()).await;
    run.wait_fills(2).await;
    let connections = run.fake.connections();
    run.fake.drop_sockets();
    run.wait("orders stream down", Duration::from_secs(5), |r| {
        r.state("exchange.orders") == Some(ComponentState::Down)
    })
    .await;
    let took = run
        .wait("orders stream up again", Duration::from_secs(5), |r| {
            r.state("exchange.orders") == Some(ComponentState::Up)
        })
        .await;
    assert!(took < Duration::from_millis(800 + 1_500), "reconnected in {took:?}");
    run.wait("both streams reconnected", Duration::from_secs(3), |r| r.fake.connections() >= connections + 2).await;
    // Heartbeats stop: the watchdog reconnects; health shows the outage while it lasts.
    let connections = run.fake.connections();
    run.fake.faults().stop_heartbeats.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("orders stream down after the heartbeat watchdog", Duration::from_secs(4), |r| {
        r.state("exchange.orders") == Some(ComponentState::Down)
    })
    .await;
    run.wait("watchdog reconnect", Duration::from_secs(6), |r| r.fake.connections() >= connections + 2).await;
    run.fake.faults().stop_heartbeats.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait("streams up after heartbeats resume", Duration::from_secs(6), |r| r.host.health().is_ready()).await;
    let fills = run.fake.fills().len();
    run.wait_fills(fills + 2).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn book_gaps_bad_checksums_and_malformed_frames_resubscribe_without_a_crash() {
    let run = start(FakeConfig::default()).await;
    run.wait_fills(1).await;
    for fault in ["gap", "checksum", "malformed"] {
        let (snapshots, connections) = (run.fake.snapshots(), run.fake.connections());
        match fault {
            "gap" => run.fake.sequence_gap(),
            "checksum" => run.fake.bad_checksum(),
            _ => run.fake.malformed_frame(),
        }
        if fault == "malformed" {
            tokio::time::sleep(Duration::from_millis(500)).await;
            assert_eq!(run.fake.snapshots(), snapshots, "a malformed frame is skipped, not a resubscribe");
        } else {
            run.wait(&format!("resubscribe after {fault}"), Duration::from_secs(5), |r| r.fake.snapshots() > snapshots)
                .await;
        }
        assert_eq!(run.fake.connections(), connections, "{fault}: no reconnect needed");
        run.wait("market fresh", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Up))
            .await;
    }
    // A frozen market is stale: health shows it and new entries are refused until it is fresh.
    run.fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("market stale", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Degraded))
        .await;
    // The stream's own check names the symbols (the silence rule may say it first).
    let names_the_symbols = |r: &Run| {
        let reason = r.host.health().reasons().get("exchange.market").cloned().unwrap_or_default();
        reason.starts_with("no market data for BTCUSD within 1000 ms: new entries refused")
    };
    run.wait("the reason naming the symbol", Duration::from_secs(5), names_the_symbols).await;
    assert_eq!(run.host.health().status(), "degraded");
    run.fake.faults().freeze_market.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait("market fresh again", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Up))
        .await;
    let fills = run.fake.fills().len();
    run.wait_fills(fills + 1).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_maintenance_and_slow_answers_never_duplicate_an_order() {
    let run = start(FakeConfig::default()).await;
    run.wait_fills(1).await;
    // A burst of 429s: requests wait for X-RATE-LIMIT-RESET, are re-signed and go through.
    run.fake.faults().burst_429.store(4, std::sync::atomic::Ordering::SeqCst);
    let fills = run.fake.fills().len();
    run.wait_fills(fills + 1).await;
    assert_eq!(run.fake.faults().burst_429.load(std::sync::atomic::Ordering::SeqCst), 0, "the burst was served");
    let rate_limited = run.host.activity().since(0, usize::MAX).into_iter().filter(|e| {
        e.data["reason"].as_str().is_some_and(|r| r.contains("rate limited"))
            || e.data["detail"].as_str().is_some_and(|d| d.contains("rate limited"))
    });
    assert_eq!(rate_limited.count(), 0, "429s are waited out: no order rejected, no cancel failed");
    // Maintenance: REST answers 503 `unavailable`; health shows it; trading resumes afterwards.
    run.fake.faults().unavailable.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("REST down", Duration::from_secs(5), |r| r.state("exchange.rest") == Some(ComponentState::Down)).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    run.fake.faults().unavailable.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait("REST up", Duration::from_secs(10), |r| r.state("exchange.rest") == Some(ComponentState::Up)).await;
    // Answers slower than the client timeout: the order exists anyway and is found by client id.
    let orders_before = run.fake.orders().len();
    run.fake.faults().slow_orders_ms.store(1_500, std::sync::atomic::Ordering::SeqCst);
    run.wait("orders placed while answers are slow", Duration::from_secs(10), |r| {
        r.fake.orders().len() >= orders_before + 4
    })
    .await;
    // The sends that timed out are looked up (by client id) before answers are fast again.
    let slow: Vec<String> =
        run.fake.orders()[orders_before..].iter().filter_map(|o| o.client_order_id.clone()).collect();
    run.wait("the timed-out sends resolved", Duration::from_secs(10), |r| {
        let pending = |o: &&tradehost::model::Order| o.status == tradehost::model::OrderStatus::Pending;
        !r.host.account().open_orders.iter().filter(pending).any(|o| slow.contains(&o.request.client_id))
    })
    .await;
    run.fake.faults().slow_orders_ms.store(0, std::sync::atomic::Ordering::SeqCst);
    let fills = run.fake.fills().len();
    run.wait_fills(fills + 1).await;
    run.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_skewed_server_clock_is_measured_and_signatures_hold() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    fake.faults().clock_skew_ms.store(-42_000, std::sync::atomic::Ordering::SeqCst);
    let run = Run::launch(fake, ("market_maker", MARKET_MAKER), |_| {}).await;
    run.wait_fills(2).await;
    // The clock jumps while running: the next requests expire, the client re-measures and re-signs.
    run.fake.faults().clock_skew_ms.store(30_000, std::sync::atomic::Ordering::SeqCst);
    let fills = run.fake.fills().len();
    run.wait_fills(fills + 2).await;
    assert!(run.dir.path().exists());
    run.finish().await;
}

async fn doctor(fake: &FakeDelta, secret: &str, symbols: &str) -> (Option<i32>, String) {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir(root.path().join("strategies")).unwrap();
    let config = root.path().join("config.toml");
    std::fs::write(
        &config,
        format!(
            "data_dir = {:?}\n[strategies]\ndir = {:?}\n[exchange]\nkind = \"delta\"\n[exchange.delta]\nrest_url = \"{}\"\nws_url = \"{}\"\nws_public_url = \"{}\"\napi_key = \"{}\"\napi_secret = \"{secret}\"\nsymbols = {symbols}\n",
            root.path().join("data"),
            root.path().join("strategies"),
            fake.rest_url(),
            fake.ws_url(),
            fake.ws_public_url(),
            fake.config().key,
        ),
    )
    .unwrap();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tradehost"))
            .args(["doctor", "--config"])
            .arg(&config)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_reachability_clock_key_products_and_websocket_auth() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    fake.faults().clock_skew_ms.store(7_000, std::sync::atomic::Ordering::SeqCst);
    let secret = fake.config().secret.clone();
    let (code, out) = doctor(&fake, &secret, r#"["BTCUSD", "ETHUSD"]"#).await;
    assert_eq!(code, Some(0), "{out}");
    for line in [
        "OK    delta reach",
        "OK    delta server time offset",
        "OK    delta API key",
        "OK    delta product BTCUSD: id 84",
        "OK    delta product ETHUSD",
        "OK    delta WebSocket",
    ] {
        assert!(out.contains(line), "missing {line:?} in\n{out}");
    }
    assert!(out.contains("the local clock is off"), "a 7 s skew is reported\n{out}");
    let (code, out) = doctor(&fake, "wrong-secret", r#"["BTCUSD", "NOPEUSD"]"#).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("FAIL  delta API key") && out.contains("invalid_signature"), "{out}");
    assert!(out.contains("FAIL  delta product NOPEUSD"), "{out}");
    assert!(out.contains("FAIL  delta WebSocket") && out.contains("invalid_signature"), "{out}");
    assert!(fake.signature_failures() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_client_covers_every_endpoint_against_the_fake() {
    use tradehost::delta::rest::{Credentials, NewOrder, RestClient, RestError};
    let fake = FakeDelta::start(FakeConfig { step_ticks: 0, ..FakeConfig::default() }).await;
    fake.faults().clock_skew_ms.store(12_000, std::sync::atomic::Ordering::SeqCst);
    let credentials =
        Credentials { key: Secret::new(fake.config().key.clone()), secret: Secret::new(fake.config().secret.clone()) };
    let rest = RestClient::new(&fake.rest_url(), Some(credentials), Duration::from_secs(2)).unwrap();
    let offset = rest.sync_clock().await.unwrap();
    assert!((11_000..13_000).contains(&offset), "offset {offset} ms");
    assert_eq!(rest.server_time().await.unwrap() / 1_000_000, (chrono::Utc::now().timestamp_millis() + offset) / 1_000);
    let products = rest.products().await.unwrap();
    assert_eq!(products.iter().map(|p| p.symbol.as_str()).collect::<Vec<_>>(), ["BTCUSD", "ETHUSD"]);
    let btc = rest.product("BTCUSD").await.unwrap();
    assert_eq!((btc.id, btc.contract_value, btc.tick_size), (84, Decimal::new(1, 3), Decimal::new(5, 1)));
    assert!(matches!(rest.product("NOPE").await, Err(RestError::Rejected { status: 404, .. })));
    let ticker = rest.ticker("BTCUSD").await.unwrap();
    let quotes = ticker.quotes.unwrap();
    assert!(quotes.best_bid.unwrap() < quotes.best_ask.unwrap());
    let book = rest.l2_book("BTCUSD", 3).await.unwrap();
    assert_eq!((book.buy.len(), book.sell.len()), (3, 3));
    assert!(book.buy[0].price > book.buy[1].price && book.sell[0].price < book.sell[1].price, "best first");
    // 4,500 minutes: three chunks of at most 2,000, sorted ascending without duplicates.
    let requests = fake.requests();
    let end = 1_700_000_000 - 1_700_000_000 % 60;
    let candles = rest.candles("BTCUSD", "1m", 60, end - 4_500 * 60, end).await.unwrap();
    assert_eq!(fake.requests() - requests, 3);
    assert_eq!(candles.len(), 4_500);
    assert!(candles.windows(2).all(|w| w[1].time == w[0].time + 60));
    // Orders: place, edit, look up, cancel, cancel all.
    let order = |id: &str, price: &str| NewOrder {
        product_id: 84,
        size: 2,
        side: "buy",
        limit_price: Some(price.into()),
        time_in_force: "gtc",
        post_only: true,
        reduce_only: false,
        client_order_id: id.into(),
        stop: None,
        bracket: None,
    };
    // 429s mean the exchange did nothing: the order waits them out (more of
    // them than the client's attempts for other errors) and goes through once.
    fake.faults().burst_429.store(6, std::sync::atomic::Ordering::SeqCst);
    let placed = rest.place_order(&order("t-1", "50000")).await.unwrap();
    assert_eq!(fake.faults().burst_429.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_eq!((placed.state.as_str(), placed.client_order_id.as_deref()), ("open", Some("t-1")));
    let edited = rest.edit_order(&placed.id, 84, 5, Some("50100")).await.unwrap();
    assert_eq!((edited.size, edited.limit_price), (Decimal::from(5), Some(Decimal::from(50_100))));
    rest.place_order(&order("t-2", "50000")).await.unwrap();
    rest.place_order(&order("t-3", "50000")).await.unwrap();
    assert_eq!(rest.open_orders(&[84]).await.unwrap().len(), 3);
    assert_eq!(rest.order_by_client_id("t-2").await.unwrap().unwrap().state, "open");
    assert_eq!(rest.order_by_client_id("never-sent").await.unwrap(), None);
    assert_eq!(rest.order(&placed.id).await.unwrap().client_order_id.as_deref(), Some("t-1"));
    let cancelled = rest.cancel_by_client_id("t-2", 84).await.unwrap();
    assert_eq!(cancelled.state, "cancelled");
    let again = rest.cancel_order(&cancelled.id, 84).await.unwrap_err();
    assert_eq!(again.code(), Some("open_order_not_found"), "{again}");
    rest.cancel_all(84).await.unwrap();
    assert!(rest.open_orders(&[84]).await.unwrap().is_empty(), "cancel-all sends the explicit cancel_* flags");
    assert_eq!(rest.order_history(&[84], 0).await.unwrap().len(), 3);
    // A marketable post-only order is refused with the exchange's code.
    let refused = rest.place_order(&order("t-4", "70000")).await.unwrap_err();
    assert_eq!(refused.code(), Some("immediate_execution_post_only"));
    // A taker fill shows in fills, positions and the wallet.
    let mut market = order("t-5", "70000");
    market.limit_price = None;
    market.post_only = false;
    assert_eq!(rest.place_order(&market).await.unwrap().state, "closed");
    let fills = rest.fills(&[84], 0).await.unwrap();
    assert_eq!((fills.len(), fills[0].size, fills[0].role.as_deref()), (1, Decimal::from(2), Some("taker")));
    assert!(fills[0].created_at.is_some(), "ISO time with microseconds decoded");
    let positions = rest.positions().await.unwrap();
    assert_eq!(positions[0].size, Some(Decimal::from(2)));
    let wallet = rest.wallet_balances().await.unwrap();
    assert_eq!(wallet[0].balance, fake.balance());
    assert!(rest.budget().used() > 0);
    // Wrong secret: an authentication error, never a retry storm.
    let wrong = Credentials { key: Secret::new(fake.config().key.clone()), secret: Secret::new("nope") };
    let bad = RestClient::new(&fake.rest_url(), Some(wrong), Duration::from_secs(2)).unwrap();
    bad.sync_clock().await.unwrap();
    let error = bad.wallet_balances().await.unwrap_err();
    assert!(matches!(&error, RestError::Auth { code, .. } if code == "invalid_signature"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_channel_names_work_behind_the_switch() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("market_maker", MARKET_MAKER), |config| {
        config.exchange.delta.legacy_channels = true;
        config.exchange.delta.ws_public_url = Some("ws://127.0.0.1:9/unused".into());
    })
    .await;
    run.wait("host ready on the legacy endpoint", Duration::from_secs(20), |r| r.host.health().is_ready()).await;
    run.wait_fills(3).await;
    run.finish().await;
}

const CANDLE_LOGGER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_candle(c) { log::info(`candle ${c.time} close ${c.close}`); }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candles_come_from_rest_polling_while_the_market_stream_is_silent() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    // Put the exchange's clock 6 s before a minute boundary, so a silent minute closes soon.
    let local = chrono::Utc::now().timestamp_millis();
    fake.faults()
        .clock_skew_ms
        .store((54_000 - local % 60_000).rem_euclid(60_000), std::sync::atomic::Ordering::SeqCst);
    let run = Run::launch(fake, ("candles", CANDLE_LOGGER), |_| {}).await;
    run.wait("host ready", Duration::from_secs(20), |r| r.host.health().is_ready()).await;
    let since = run.host.activity().last_seq();
    run.fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("market stale", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Degraded))
        .await;
    // The minute that closes while the stream is silent arrives as the exchange's own candle.
    let logged =
        run.wait_activity("a polled candle", Duration::from_secs(20), since, |text| text.contains("candle ")).await;
    let time: i64 = logged.split_whitespace().nth(1).unwrap().parse().unwrap();
    let close: f64 = logged.split_whitespace().nth(3).unwrap().parse().unwrap();
    let rest = run.fake.history("BTCUSD", "1m", time / 1_000, time / 1_000 + 60);
    assert_eq!(close, rest[0].close, "{logged}: the fake's REST candle for that minute, not a stream-built bar");
    run.fake.faults().freeze_market.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait("market fresh", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Up)).await;
    run.host.shutdown(ShutdownReason::Api);
    assert_eq!(run.host.wait().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_after_the_host_was_ready_never_fails_the_start_deadline() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("market_maker", MARKET_MAKER), |config| config.http.ready_timeout_ms = 2_000).await;
    run.wait("host ready", Duration::from_secs(2), |r| r.host.health().is_ready()).await;
    run.fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("market stale", Duration::from_secs(5), |r| r.state("exchange.market") == Some(ComponentState::Degraded))
        .await;
    // Past the start-up deadline while the market is down: the host keeps running.
    tokio::time::sleep(Duration::from_millis(2_500)).await;
    assert!(!run.host.health().is_shutting_down(), "a later outage is not a failed start");
    run.fake.faults().freeze_market.store(false, std::sync::atomic::Ordering::SeqCst);
    run.wait("ready again", Duration::from_secs(5), |r| r.host.health().is_ready()).await;
    run.finish().await;
}

const OVERSIZED: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.sent == () {
        this.sent = true;
        exchange::market_order("BTCUSD", "buy", 0.002);
        exchange::limit_order("BTCUSD", "buy", 0.001, t.bid * 0.9);
        exchange::limit_order("BTCUSD", "buy", 0.5, t.bid * 0.9);
    }
}
fn on_order(o) { log::info(o.status + " " + o.size + " " + (o.reason ?? "")); }
"#;

#[tokio::test(flavor = "multi_thread")]
async fn risk_limits_and_the_kill_switch_hold_on_the_delta_venue() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("big", OVERSIZED), |c| {
        c.risk.max_order_size = Some(Decimal::new(1, 2));
        c.strategies.shutdown_policy = tradehost::config::ShutdownPolicy::Leave;
    })
    .await;
    let refused = run
        .wait_activity("the oversized order refused", Duration::from_secs(20), 0, |m| m.starts_with("rejected 0.5"))
        .await;
    assert!(
        refused.contains("risk limit max_order_size (account): order size 0.5 is over the limit 0.01"),
        "{refused}"
    );
    run.wait("the other two orders on the exchange", Duration::from_secs(10), |r| r.fake.orders().len() == 2).await;
    assert!(run.fake.orders().iter().all(|o| o.size <= 10), "no order over 10 contracts reached the exchange");
    run.wait("the market buy filled", Duration::from_secs(10), |r| r.fake.position("BTCUSD").0 == 2).await;
    run.wait("the resting buy open", Duration::from_secs(10), |r| r.host.account().open_orders.len() == 1).await;
    // The kill switch: the exchange's book and position agree afterwards.
    let (reply, answer) = tokio::sync::oneshot::channel();
    run.host.control().send(tradehost::control::Control::Kill { flatten: true, reply }).unwrap();
    let report = answer.await.unwrap().unwrap();
    assert_eq!((report.cancelled, report.flatten_orders), (1, 1));
    run.wait("no open order on the exchange", Duration::from_secs(10), |r| {
        r.fake.orders().iter().all(|o| o.state != "open")
    })
    .await;
    run.wait("flat on the exchange", Duration::from_secs(10), |r| r.fake.position("BTCUSD").0 == 0).await;
    assert_eq!(run.host.account().trading.account, tradehost::model::TradingState::Halted);
    run.finish().await;
}

const FORTY_RESTING: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.sent == () {
        this.sent = true;
        for i in 0..40 { exchange::limit_order("BTCUSD", "buy", 0.001, t.bid * 0.9 - i); }
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_a_products_orders_with_one_cancel_all() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("many", FORTY_RESTING), |_| {}).await;
    run.wait("40 orders resting on the exchange", Duration::from_secs(20), |r| {
        r.fake.orders().iter().filter(|o| o.state == "open").count() == 40
    })
    .await;
    run.wait("the host's orders to match the exchange's", Duration::from_secs(10), Run::caught_up).await;
    run.host.shutdown(ShutdownReason::Api);
    let code = tokio::time::timeout(Duration::from_secs(20), run.host.wait()).await.expect("host stops");
    assert_eq!(code, 0, "clean shutdown");
    assert_eq!(run.fake.calls("DELETE /v2/orders/all"), 1, "one cancel-all for the product");
    assert_eq!(run.fake.calls("DELETE /v2/orders"), 0, "no order cancelled one by one");
    assert!(run.fake.orders().iter().all(|o| o.state == "cancelled"), "every order cancelled on the exchange");
    let (_, orders) = assert_consistent(&run.fake, run.data.path());
    assert_eq!(orders, 40, "the store holds the 40 orders, none open");
}

const PROTECTED: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.sent != true { this.sent = true; exchange::market_order("BTCUSD", "buy", 0.002); }
}
fn on_fill(f) {
    if f.side == "buy" && this.guarded != true {
        this.guarded = true;
        exchange::stop_order("BTCUSD", "sell", 0.001, f.price - 20.0, #{ reduce_only: true, trigger_on: "last" });
        exchange::trailing_stop("BTCUSD", "sell", 0.001, #{ trail: 20.0, reduce_only: true });
    }
}
fn on_order(o) { if o.stop != () { log::info(`${o.status} ${o.stop.kind}`); } else { log::info(`order ${o.status} ${o.reason ?? ""}`); } }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_stop_and_trailing_orders_are_sent_triggered_by_the_exchange_and_filled_once() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("protected", PROTECTED), |_| {}).await;
    run.wait_activity("a stop waiting on the exchange", Duration::from_secs(20), 0, |m| m == "untriggered stop_loss")
        .await;
    let stops: Vec<_> = run.fake.orders().into_iter().filter(|o| o.stop_order_type.is_some()).collect();
    assert_eq!(stops.len(), 2, "{stops:?}");
    let fixed = stops.iter().find(|o| o.trail_amount.is_none()).unwrap();
    let trailing = stops.iter().find(|o| o.trail_amount.is_some()).unwrap();
    assert_eq!(fixed.stop_order_type.as_deref(), Some("stop_loss_order"));
    assert_eq!(fixed.stop_trigger_method, "last_traded_price");
    assert!((fixed.reduce_only, fixed.order_type.as_str()) == (true, "market_order"), "{fixed:?}");
    assert_eq!(trailing.trail_amount, Some(Decimal::from(-20)), "a sell's trail is sent negative");
    // The random walk reaches both triggers; each stop fills once and the account ends flat.
    run.wait("both stops filled on the exchange", Duration::from_secs(60), |r| {
        r.fake.orders().iter().filter(|o| o.stop_order_type.is_some() && o.state == "closed").count() == 2
    })
    .await;
    run.wait("flat on the exchange", Duration::from_secs(10), |r| r.fake.position("BTCUSD").0 == 0).await;
    let (fills, orders) = run.finish().await;
    assert_eq!((fills, orders), (3, 3), "one entry and two stops, each filled once");
}

/// An entry protected by a bracket; once a leg closed it, a second entry and
/// a trailing bracket on the open position.
const BRACKETED: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_tick(t) {
    if this.phase == () {
        this.phase = 1;
        exchange::market_order("BTCUSD", "buy", 0.002, #{ stop_loss: t.last - 30.0, take_profit: t.last + 30.0, trigger_on: "last" });
    } else if this.phase == 2 && exchange::position("BTCUSD").size == 0.0 {
        this.phase = 3;
        exchange::market_order("BTCUSD", "buy", 0.002);
    }
}
fn on_fill(f) {
    if this.phase == 3 && f.side == "buy" {
        this.phase = 4;
        exchange::bracket("BTCUSD", #{ trail: 25.0, take_profit: f.price + 30.0 });
    }
}
fn on_order(o) {
    if o.stop == () { return; }
    log::info(`${o.status} ${o.stop.kind} ${o.size}`);
    if o.status == "filled" && this.phase == 1 { this.phase = 2; }
    // The second bracket's take-profit is cancelled by hand: the trailing stop alone closes.
    if this.phase == 4 && o.status == "untriggered" && o.stop.kind == "take_profit" && this.dropped != true {
        this.dropped = true;
        exchange::cancel(o.id);
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brackets_are_delta_position_brackets_adopted_fired_by_the_exchange_and_filled_once() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("bracketed", BRACKETED), |_| {}).await;
    // The entry carries the bracket: once it fills the exchange creates both
    // legs (no client ids) and the host adopts them under its legs' ids.
    run.wait("the entry's bracket held by the exchange", Duration::from_secs(20), |r| {
        r.fake.orders().iter().filter(|o| o.bracket_order && o.state == "pending").count() == 2
    })
    .await;
    let entry = run.fake.orders().into_iter().find(|o| o.bracket.is_some()).expect("the entry carries the bracket");
    let bracket = entry.bracket.clone().unwrap();
    let entry_price = entry.avg_fill_price.unwrap();
    let (sl, _, sl_limit) = bracket.stop_loss.unwrap();
    let (tp, tp_limit) = bracket.take_profit.unwrap();
    assert_eq!(bracket.trigger_method, "last_traded_price");
    assert!((sl_limit, tp_limit) == (None, None), "market legs: {bracket:?}");
    assert!(sl.unwrap() < entry_price + Decimal::from(20) && tp > entry_price - Decimal::from(20), "{bracket:?}");
    assert_eq!(run.fake.calls("POST /v2/orders"), 1, "entry and bracket in one signed request");
    run.wait_activity("both legs adopted", Duration::from_secs(10), 0, |m| m == "untriggered stop_loss 0.002").await;
    run.wait_activity("both legs adopted", Duration::from_secs(10), 0, |m| m == "untriggered take_profit 0.002").await;
    // The walk reaches one leg: it fills, the exchange cancels the other (one-cancels-other).
    run.wait_activity("a leg filled", Duration::from_secs(60), 0, |m| m.starts_with("filled ")).await;
    run.wait_activity("the other leg cancelled", Duration::from_secs(10), 0, |m| m.starts_with("cancelled ")).await;
    // Then a trailing bracket on the open position: POST /v2/orders/bracket.
    // (The script cancels its take-profit as soon as it sees it waiting.)
    run.wait("the position's bracket created by the exchange", Duration::from_secs(20), |r| {
        r.fake.orders().iter().filter(|o| o.bracket_order).count() == 4
    })
    .await;
    assert_eq!(run.fake.calls("POST /v2/orders/bracket"), 1);
    let trailing = run.fake.orders().into_iter().find(|o| o.bracket_order && o.trail_amount.is_some()).unwrap();
    assert_eq!(trailing.trail_amount, Some(Decimal::from(-25)), "a selling stop's trail is sent negative");
    // A leg cancelled by the script is cancelled on the exchange by its exchange id (unless the
    // trailing stop closed the position first, which cancels it too); the executor keeps working.
    run.wait("the second take-profit leg cancelled on the exchange", Duration::from_secs(30), |r| {
        let take_profits: Vec<_> = r
            .fake
            .orders()
            .into_iter()
            .filter(|o| o.bracket_order && o.stop_order_type.as_deref() == Some("take_profit_order"))
            .collect();
        take_profits.len() == 2 && take_profits[1].state == "cancelled"
    })
    .await;
    run.wait("the second bracket closed the position", Duration::from_secs(60), |r| {
        r.fake.orders().iter().filter(|o| o.bracket_order && o.state == "closed").count() == 2
    })
    .await;
    run.wait("flat on the exchange", Duration::from_secs(10), |r| r.fake.position("BTCUSD").0 == 0).await;
    let legs_filled = |r: &Run| {
        let filled = |m: &str| m.starts_with("filled stop_loss") || m.starts_with("filled take_profit");
        let events = r.host.activity().since(0, usize::MAX);
        events.iter().filter(|e| e.data["message"].as_str().is_some_and(filled)).count()
    };
    run.wait("the host saw both legs fill", Duration::from_secs(10), |r| legs_filled(r) >= 2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (fills, orders) = run.finish().await;
    assert_eq!((fills, orders), (4, 2), "two entries and two legs, each filled once; legs carry no client ids");
}

/// Buys once and says in which mode it runs.
const DRY: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_tick(t) {
    if this.sent != true {
        this.sent = true;
        log::info(`mode ${exchange::mode()} ask ${t.ask}`);
        exchange::market_order("BTCUSD", "buy", 0.002);
    }
}
fn on_fill(f) { log::info(`filled ${f.size} at ${f.price}`); }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_run_fills_on_the_exchanges_prices_sends_nothing_and_keeps_its_own_account() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let run = Run::launch(fake, ("dry", DRY), |config| {
        config.exchange.dry_run = true;
        config.exchange.delta.api_key = None;
        config.exchange.delta.api_secret = None;
    })
    .await;
    run.wait("host ready", Duration::from_secs(20), |r| r.host.health().is_ready()).await;
    let mode = run.wait_activity("the mode", Duration::from_secs(20), 0, |m| m.starts_with("mode dry_run")).await;
    let ask: f64 = mode.rsplit(' ').next().unwrap().parse().unwrap();
    let filled = run.wait_activity("a paper fill", Duration::from_secs(20), 0, |m| m.starts_with("filled ")).await;
    // The paper exchange filled at the fake's ask the script saw, plus at most
    // the configured slippage and the walk of one step (16 ticks of 0.5).
    let price: f64 = filled.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(price >= ask - 8.0 && price <= ask * 1.001 + 8.0, "filled at {price}, the ask was {ask}");
    let account = run.host.account();
    let position = account.positions.get("dry").and_then(|p| p.get("BTCUSD")).expect("a paper position");
    assert_eq!(position.size, Decimal::new(2, 3));
    assert_eq!(run.fake.private_uses(), 0, "no signed request, no private socket");
    assert!(run.fake.orders().is_empty() && run.fake.calls("POST /v2/orders") == 0, "no order reached the exchange");
    let started = run.host.activity().since(0, usize::MAX).into_iter().find(|e| e.data["event"] == "started").unwrap();
    assert_eq!(started.data["mode"], "dry-run");
    run.host.shutdown(ShutdownReason::Api);
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), run.host.wait()).await.unwrap(), 0);

    // Its data dir holds a dry-run account: a live run there is refused, and a
    // dry-run on a live data dir likewise.
    let live = delta_config(&run.fake, run.dir.path(), run.data.path());
    let error = host::start(live).await.err().expect("a live run on a dry-run data dir is refused");
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("holds a dry_run account's orders and fills"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_refuses_a_data_dir_with_live_records() {
    let run = start(FakeConfig::default()).await;
    run.wait_fills(0).await;
    let (fake, dir, data) = (run.fake, run.dir, run.data);
    run.host.shutdown(ShutdownReason::Api);
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), run.host.wait()).await.unwrap(), 0);
    let mut dry = delta_config(&fake, dir.path(), data.path());
    dry.exchange.dry_run = true;
    let error = host::start(dry).await.err().expect("a dry-run on a live data dir is refused");
    assert_eq!(error.exit_code(), 2);
    assert!(error.to_string().contains("holds a live account's orders and fills; a dry_run run"), "{error}");
}

/// A 5-minute strategy that needs 250 candles of history: 20 hours.
const WARM: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "5m", warmup: 300 } }
fn on_tick(t) {
    if this.checked != true {
        this.checked = true;
        let sma = ta::sma("BTCUSD", 250);
        log::info(if sma == () { "cold" } else { `warm ${sma}` });
    }
}
fn on_candle(c) {
    if this.first_candle != false {
        this.first_candle = false;
        let sma = ta::sma(c.symbol, 250);
        log::info(if sma == () { "first candle: cold" } else { `first candle: warm ${sma}` });
    }
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_strategy_starts_warm_from_history_fetched_into_the_store() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    // Put the exchange's clock 8 s before a five-minute boundary, so the first live candle closes soon.
    let local = chrono::Utc::now().timestamp_millis();
    let skew = (292_000 - local % 300_000).rem_euclid(300_000);
    fake.faults().clock_skew_ms.store(skew, std::sync::atomic::Ordering::SeqCst);
    let run = Run::launch(fake, ("warm", WARM), |_| {}).await;
    // The host's own start loads 60 one-minute bars: 12 five-minute candles, far from 250.
    let said =
        run.wait_activity("the first tick", Duration::from_secs(30), 0, |m| m == "cold" || m.starts_with("warm")).await;
    assert!(said.starts_with("warm "), "ta::sma(250) on 5m candles is warm at the first tick: {said}");
    let said =
        run.wait_activity("the first live candle", Duration::from_secs(30), 0, |m| m.starts_with("first candle")).await;
    assert!(said.starts_with("first candle: warm "), "and at the first live candle: {said}");
    let store = {
        run.host.shutdown(ShutdownReason::Api);
        assert_eq!(tokio::time::timeout(Duration::from_secs(20), run.host.wait()).await.unwrap(), 0);
        tradehost::store::Store::open(run.data.path()).unwrap()
    };
    let stored = store.reader().candles("BTCUSD", "5m", 1_000).unwrap();
    assert!(stored.len() >= 300, "the warm-up candles were fetched into the store: {}", stored.len());
    // Candles the host built itself are newer than the fetched ones; the fetched ones are the exchange's.
    let exchange = run.fake.history("BTCUSD", "5m", stored[0].time / 1_000, chrono::Utc::now().timestamp());
    let matching = stored.iter().zip(&exchange).take_while(|(ours, theirs)| ours == theirs).count();
    assert!(matching >= 290, "the first {matching} stored candles are the exchange's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_an_order_placed_behind_the_hosts_back_and_doctor_live_fails_on_it() {
    use tradehost::delta::rest::{Credentials, NewOrder, RestClient};
    let run = start(FakeConfig::default()).await;
    run.wait_fills(2).await;
    // A still market: the host's orders stop changing, so its view and the exchange's must agree.
    run.fake.faults().freeze_market.store(true, std::sync::atomic::Ordering::SeqCst);
    run.wait("the host's orders and position to match the exchange's", Duration::from_secs(10), Run::caught_up).await;
    let api = |path: &'static str| {
        let (addr, token) = (run.host.http_addr(), run.host.api_token().expose().to_string());
        async move {
            let response = reqwest::Client::new().get(format!("http://{addr}{path}")).bearer_auth(token).send().await;
            response.unwrap().json::<serde_json::Value>().await.unwrap()
        }
    };
    let agreed = api("/api/v1/reconcile").await;
    assert_eq!((agreed["venue"].as_str(), agreed["compared"].as_bool()), (Some("delta"), Some(true)), "{agreed:#}");
    assert_eq!(agreed["differences"], serde_json::json!([]), "{agreed:#}");
    assert!(agreed["clock_offset_ms"].is_i64() && agreed["store"]["problems"] == serde_json::json!([]), "{agreed:#}");
    // Someone places an order on the account from elsewhere (the website, another bot).
    let credentials = Credentials {
        key: Secret::new(run.fake.config().key.clone()),
        secret: Secret::new(run.fake.config().secret.clone()),
    };
    let rest = RestClient::new(&run.fake.rest_url(), Some(credentials), Duration::from_secs(2)).unwrap();
    let manual = NewOrder {
        product_id: 84,
        size: 3,
        side: "buy",
        limit_price: Some("1000".into()),
        time_in_force: "gtc",
        post_only: true,
        reduce_only: false,
        client_order_id: "by-hand-1".into(),
        stop: None,
        bracket: None,
    };
    let placed = rest.place_order(&manual).await.unwrap();
    let found = api("/api/v1/reconcile").await;
    let detail = format!(
        "exchange order {} (client id by-hand-1) on BTCUSD: buy 0.003 open on the exchange, unknown to the host",
        placed.id
    );
    let expected = serde_json::json!([{ "subject": format!("exchange order {}", placed.id), "detail": detail }]);
    assert_eq!(found["differences"], expected, "{found:#}");
    let (addr, token) = (run.host.http_addr().to_string(), run.host.api_token().expose().to_string());
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_tradehost"))
            .args(["doctor", "--live", "--event-wait", "1", "--http", &addr, "--token", &token])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(2), "{stdout}");
    assert!(stdout.contains("OK    exchange delta: REST reachable, API key accepted, clock offset"), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL  difference: exchange order {} (client id by-hand-1) on BTCUSD", placed.id)),
        "{stdout}"
    );
    rest.cancel_order(&placed.id, 84).await.unwrap();
    run.host.shutdown(ShutdownReason::Api);
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), run.host.wait()).await.unwrap(), 0);
}
