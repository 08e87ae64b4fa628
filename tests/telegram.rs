//! The Telegram bot against a fake Bot API on loopback
//! (tests/support/fake_telegram.rs): every command answered from the host's
//! state through the same operations as the HTTP API, the allowlist, the
//! confirmation buttons, coalesced notifications under Telegram's rate
//! limits, faults that never stop trading, and /shutdown.

mod common;

#[path = "support/fake_telegram.rs"]
mod fake_telegram;

use std::time::Duration;

use common::TestHost;
use fake_telegram::{FakeTelegram, Fault, TOKEN, html_problem};
use serde_json::Value;
use tradehost::activity::ActivityKind;
use tradehost::config::{Config, Secret};

const CHAT: i64 = 111;
const OTHER_CHAT: i64 = 222;
const STRANGER: i64 = 999;

/// Buys 0.01 on the first candle and 0.02 on the third, then sells 0.01: a
/// position, three fills, a realised PnL, and then a steady state.
const TRADER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n == 1 { exchange::market_order("BTCUSD", "buy", 0.01); }
    if this.n == 3 { exchange::market_order("BTCUSD", "buy", 0.02); }
    if this.n == 5 { exchange::market_order("BTCUSD", "sell", 0.01); }
    if this.n == 6 { exchange::limit_order("BTCUSD", "buy", 0.01, c.close * 0.5); }
}
"#;

/// 40 market orders on each of its first five candles: a burst of 200 fills.
const BURST: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    this.n = (this.n ?? 0) + 1;
    if this.n <= 5 {
        for i in 0..40 { exchange::market_order("BTCUSD", if i % 2 == 0 { "buy" } else { "sell" }, 0.001); }
    }
}
"#;

/// Trades on every candle, forever.
const STEADY: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) { exchange::market_order("BTCUSD", if c.close > c.open { "buy" } else { "sell" }, 0.001); }
"#;

fn telegram(config: &mut Config, fake: &FakeTelegram) {
    let t = &mut config.telegram;
    t.enabled = true;
    t.token = Some(Secret::new(TOKEN));
    t.allowed_chat_ids = vec![CHAT, OTHER_CHAT];
    t.api_url = fake.url();
    t.poll_timeout_s = 2;
    t.request_timeout_ms = 12_000;
    t.backoff_max_ms = 1_000;
    t.coalesce_ms = 200;
    t.chat_interval_ms = 50;
}

async fn start(files: &[(&str, &str)], tweak: impl FnOnce(&mut Config)) -> (TestHost, FakeTelegram) {
    let fake = FakeTelegram::start().await;
    let host = TestHost::start(files, |config| {
        telegram(config, &fake);
        tweak(config);
    })
    .await;
    (host, fake)
}

fn text(message: &Value) -> String {
    message["text"].as_str().unwrap_or_default().to_string()
}

/// Sends `command` from `chat` and returns the text of the answer (all its
/// messages, once no more arrive).
async fn ask(fake: &FakeTelegram, chat: i64, command: &str) -> String {
    let before = fake.sent_to(chat).len();
    fake.send_text(chat, command);
    fake.wait_sent(chat, before, &format!("an answer to {command}"), |_| true).await;
    // A long answer comes in several messages; notifications may keep coming meanwhile.
    let mut count = fake.sent_to(chat).len();
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = fake.sent_to(chat).len();
        if now == count {
            break;
        }
        count = now;
    }
    fake.sent_to(chat).iter().skip(before).map(text).collect::<Vec<_>>().join("\n")
}

/// GETs an API path.
async fn api(host: &TestHost, path: &str) -> Value {
    host.api_get(path).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_from_the_hosts_state_through_the_same_operations() {
    let (host, fake) = start(&[("trader", TRADER)], |_| {}).await;
    // The command list is registered with descriptions.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while fake.calls("setMyCommands").is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "setMyCommands never called");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let commands = fake.calls("setMyCommands")[0].body["commands"].clone();
    let names: Vec<&str> = commands.as_array().unwrap().iter().map(|c| c["command"].as_str().unwrap()).collect();
    for expected in [
        "help",
        "status",
        "strategies",
        "positions",
        "orders",
        "fills",
        "pnl",
        "balance",
        "start",
        "stop",
        "reload",
        "pause",
        "resume",
        "kill",
        "shutdown",
        "version",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    assert!(commands.as_array().unwrap().iter().all(|c| !c["description"].as_str().unwrap().is_empty()));

    // Let the trader reach its steady state: three fills and a resting order.
    host.wait_for(0, "the resting order", |e| e.kind == ActivityKind::Order && e.data["status"] == "open").await;

    let help = ask(&fake, CHAT, "/help").await;
    assert!(help.contains("/status") && help.contains("/pnl"), "{help}");
    let version = ask(&fake, CHAT, "/version").await;
    assert!(version.contains(env!("CARGO_PKG_VERSION")), "{version}");

    let status = ask(&fake, CHAT, "/status").await;
    let api_status = api(&host, "/api/v1/status").await;
    assert!(status.contains("<pre>"), "a monospace table: {status}");
    assert!(status.contains("paper"), "{status}");
    assert!(status.contains("1 running, 0 failed, 1 in all"), "{status}");
    assert!(status.contains(&format!("open orders  {}", api_status["open_orders"])), "{status}\n{api_status}");

    let strategies = ask(&fake, CHAT, "/strategies").await;
    assert!(strategies.contains("trader") && strategies.contains("running"), "{strategies}");

    let positions = ask(&fake, CHAT, "/positions").await;
    let api_positions = api(&host, "/api/v1/positions").await;
    let position = &api_positions.as_array().unwrap()[0];
    assert_eq!(position["size"], "0.02", "{api_positions}");
    assert!(positions.contains("trader") && positions.contains("BTCUSD"), "{positions}");
    assert!(
        positions.contains(&format!("0.02  {}", position["entry_price"].as_str().unwrap())),
        "{positions}\n{api_positions}"
    );

    let orders = ask(&fake, CHAT, "/orders").await;
    let api_orders = api(&host, "/api/v1/orders").await;
    assert_eq!(api_orders.as_array().unwrap().len(), 1, "{api_orders}");
    let price = api_orders[0]["request"]["price"].as_str().expect("a price");
    assert!(orders.contains("limit") && orders.contains(price), "{orders}\n{api_orders}");

    let fills = ask(&fake, CHAT, "/fills 2").await;
    let api_fills = api(&host, "/api/v1/fills?limit=2").await;
    assert_eq!(fills.matches("trader").count(), 2, "two rows: {fills}");
    assert!(fills.contains("sell") && fills.contains(api_fills[1]["price"].as_str().unwrap()), "{fills}\n{api_fills}");

    let pnl = ask(&fake, CHAT, "/pnl all").await;
    let api_pnl = api(&host, "/api/v1/pnl?period=all").await;
    assert_eq!(api_pnl["total"]["fills"], 3, "{api_pnl}");
    let realized = api_pnl["strategies"][0]["realized"].as_str().unwrap();
    assert!(pnl.contains("PnL all") && pnl.contains("total"), "{pnl}");
    assert!(pnl.contains(&format!("trader  {realized}")) || pnl.contains(realized), "{pnl}\n{api_pnl}");
    assert!(ask(&fake, CHAT, "/pnl today").await.contains("PnL today"));
    assert!(ask(&fake, CHAT, "/pnl yesterday").await.contains("Usage: /pnl [today|week|all]"));

    let balance = ask(&fake, CHAT, "/balance").await;
    let api_balance = api(&host, "/api/v1/balances").await;
    assert!(balance.contains(api_balance["balance"].as_str().unwrap()), "{balance}\n{api_balance}");

    assert!(ask(&fake, CHAT, "/fills many").await.contains("Usage: /fills [n]"));
    assert!(ask(&fake, CHAT, "/bogus").await.contains("Unknown command \"/bogus\""));
    assert!(ask(&fake, CHAT, "/start").await.contains("Usage: /start NAME"));
    assert!(ask(&fake, CHAT, "/stop nobody").await.contains("no strategy named \"nobody\""));

    // Pause, resume: the account's trading state, as /risk shows it.
    let paused = ask(&fake, CHAT, "/pause").await;
    assert!(paused.contains("the account is reduce-only"), "{paused}");
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["account"], "reduce_only");
    let resumed = ask(&fake, CHAT, "/resume").await;
    assert!(resumed.contains("the account is active"), "{resumed}");
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["account"], "active");
    assert!(ask(&fake, CHAT, "/pause trader").await.contains("strategy trader is reduce-only"));
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["strategies"]["trader"], "reduce_only");
    ask(&fake, CHAT, "/resume trader").await;

    // Stop, start, reload — and a reload the compiler refuses, with file:line:col.
    let since = host.seq();
    assert!(ask(&fake, CHAT, "/stop trader").await.contains("strategy trader is stopping"));
    host.wait_strategy(since, "trader", "stopped").await;
    assert!(ask(&fake, CHAT, "/stop trader").await.contains("Refused"));
    assert!(ask(&fake, CHAT, "/start trader").await.contains("strategy trader is starting"));
    host.wait_strategy(since, "trader", "started").await;
    let reloaded = ask(&fake, CHAT, "/reload trader").await;
    assert!(reloaded.contains("strategy trader reloaded: now version 2"), "{reloaded}");
    std::fs::write(host.file("trader"), "fn on_candle(c) { let x = [1, 2; }").unwrap();
    host.wait_strategy(since, "trader", "reload_rejected").await;
    let rejected = ask(&fake, CHAT, "/reload trader").await;
    assert!(rejected.contains("Refused") && rejected.contains("trader.rhai:1:"), "{rejected}");
    for message in fake.calls("sendMessage") {
        let html = message.body["text"].as_str().unwrap();
        assert_eq!(html_problem(html), None, "every message is valid HTML: {html}");
    }
    assert_eq!(host.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strangers_get_nothing_and_are_counted() {
    let (host, fake) = start(&[], |_| {}).await;
    fake.send_text(STRANGER, "/status");
    fake.send_text(STRANGER, "/positions");
    // An allowed chat's command after them is answered: the stranger's were read and ignored.
    assert!(ask(&fake, CHAT, "/version").await.contains("tradehost"));
    assert!(fake.sent_to(STRANGER).is_empty(), "nothing to a stranger");
    let metrics = host.metrics().await;
    assert!(metrics.contains("tradehost_telegram_strangers_total 2"), "{metrics}");
    assert!(metrics.contains("tradehost_telegram_last_poll_age_seconds"), "{metrics}");
    // A button press from a stranger does nothing either.
    fake.press(STRANGER, 1, "confirm:0000000000000000");
    assert!(ask(&fake, CHAT, "/version").await.contains("tradehost"));
    assert!(fake.calls("answerCallbackQuery").is_empty());
    assert_eq!(host.stop().await, 0);
}

/// The inline keyboard's button data of a message.
fn button(message: &Value) -> String {
    message["reply_markup"]["inline_keyboard"][0][0]["callback_data"].as_str().unwrap_or_default().to_string()
}

async fn question(fake: &FakeTelegram, chat: i64, command: &str) -> (i64, String) {
    let before = fake.sent_to(chat).len();
    fake.send_text(chat, command);
    let asked = fake.wait_sent(chat, before, "a question", |t| t.contains("?")).await;
    let id = find_message_id(fake, chat, &asked).expect("the question was stored");
    (id, button(&asked))
}

fn find_message_id(fake: &FakeTelegram, chat: i64, sent: &Value) -> Option<i64> {
    (1..10_000).find(|id| fake.message(chat, *id).is_some_and(|m| m["text"] == sent["text"]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_shutdown_need_the_button_and_expired_or_foreign_presses_do_nothing() {
    let (host, fake) = start(&[("trader", TRADER)], |c| c.telegram.confirm_timeout_s = 2).await;
    host.wait_for(0, "the resting order", |e| e.kind == ActivityKind::Order && e.data["status"] == "open").await;

    let (message, data) = question(&fake, CHAT, "/kill").await;
    assert!(data.starts_with("confirm:"), "{data}");
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["account"], "active", "nothing before the button");
    // Another (allowed) chat pressing this chat's button, and a made-up button: nothing.
    fake.press(OTHER_CHAT, message, &data);
    fake.press(CHAT, message, "confirm:ffffffffffffffff");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fake.calls("answerCallbackQuery").len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the presses were answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for answer in fake.calls("answerCallbackQuery") {
        assert!(answer.body["text"].as_str().unwrap().contains("expired"), "{:?}", answer.body);
    }
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["account"], "active");
    // The right button: the kill switch runs, and the question becomes its report.
    fake.press(CHAT, message, &data);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !text(&fake.message(CHAT, message).unwrap()).contains("Kill switch: account halted") {
        assert!(tokio::time::Instant::now() < deadline, "the question was edited: {:?}", fake.message(CHAT, message));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(text(&fake.message(CHAT, message).unwrap()).contains("1 open order(s) cancelled"));
    assert_eq!(api(&host, "/api/v1/risk").await["trading"]["account"], "halted");
    // A second press of the used button does nothing more.
    let kills_before = host.host.activity().since(0, usize::MAX).iter().filter(|e| e.data["event"] == "kill").count();
    fake.press(CHAT, message, &data);
    ask(&fake, CHAT, "/version").await;
    let kills = host.host.activity().since(0, usize::MAX).iter().filter(|e| e.data["event"] == "kill").count();
    assert_eq!(kills, kills_before);

    // A shutdown button pressed after it expired does nothing, and says so.
    let (message, data) = question(&fake, CHAT, "/shutdown").await;
    tokio::time::sleep(Duration::from_millis(2_300)).await;
    fake.press(CHAT, message, &data);
    assert!(ask(&fake, CHAT, "/version").await.contains("tradehost"));
    assert!(!host.host.health().is_shutting_down(), "an expired button shuts nothing down");
    assert_eq!(host.stop().await, 0);
}

/// Sums the "N fills" titles of the notifications sent to `chat`.
fn notified_fills(fake: &FakeTelegram, chat: i64) -> usize {
    fake.sent_to(chat)
        .iter()
        .map(text)
        .filter_map(|t| {
            let title = t.strip_prefix("<b>")?.split("</b>").next()?.to_string();
            match title.as_str() {
                "1 fill" => Some(1),
                other => other.strip_suffix(" fills")?.parse().ok(),
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_fills_becomes_a_few_messages_with_the_right_totals_and_a_429_is_waited_out() {
    let fake = FakeTelegram::start().await;
    // The first notification meets a 429 with retry_after 2.
    fake.fail("sendMessage", [Fault::RetryAfter(2)]);
    let host = TestHost::start(&[("burst", BURST)], |c| {
        telegram(c, &fake);
        c.telegram.chat_interval_ms = 1_000;
        c.telegram.coalesce_ms = 1_000;
    })
    .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    while notified_fills(&fake, CHAT) < 200 || notified_fills(&fake, OTHER_CHAT) < 200 {
        assert!(tokio::time::Instant::now() < deadline, "200 fills notified: {}", notified_fills(&fake, CHAT));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(notified_fills(&fake, CHAT), 200, "every fill counted once");
    assert_eq!(notified_fills(&fake, OTHER_CHAT), 200, "every allowed chat is told");
    let fills_messages = fake.sent_to(CHAT).iter().filter(|m| text(m).contains(" fill")).count();
    assert!(fills_messages <= 10, "200 fills in a few messages, not {fills_messages}");
    let sends = fake.calls("sendMessage");
    let (limited, next) = (&sends[0], &sends[1]);
    assert!(
        next.at.duration_since(limited.at) >= Duration::from_secs(2),
        "the 429's retry_after was waited out: {:?}",
        next.at.duration_since(limited.at)
    );
    // Per chat, one message a second at most.
    let times: Vec<_> = sends.iter().filter(|r| r.body["chat_id"] == CHAT).map(|r| r.at).collect();
    for pair in times.windows(2) {
        assert!(pair[1].duration_since(pair[0]) >= Duration::from_millis(990), "chat rate limit kept");
    }
    // A compile error with characters that mean something in Markdown and HTML arrives intact.
    let since = host.seq();
    std::fs::write(host.dir.path().join("bad_name.rhai"), "fn on_candle(c) { let s = \"<b>&*[x]_\" + ; }").unwrap();
    host.wait_strategy(since, "bad_name", "failed").await;
    let failed = fake.wait_sent(CHAT, 0, "the compile error", |t| t.contains("bad_name failed")).await;
    let failed = text(&failed);
    assert!(failed.contains("bad_name.rhai:1:"), "{failed}");
    for message in fake.calls("sendMessage") {
        let html = message.body["text"].as_str().unwrap();
        assert_eq!(html_problem(html), None, "{html}");
    }
    assert_eq!(host.stop().await, 0);
}

async fn health(host: &TestHost) -> Value {
    reqwest::get(format!("http://{}/api/v1/health", host.host.http_addr())).await.unwrap().json().await.unwrap()
}

fn fills(host: &TestHost) -> usize {
    host.host.activity().since(0, usize::MAX).iter().filter(|e| e.kind == ActivityKind::Fill).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telegram_failing_in_every_way_never_stops_trading_and_the_bot_recovers() {
    let fake = FakeTelegram::start().await;
    // Start-up meets a 409 Conflict twice (another instance polls the token).
    fake.fail(
        "getMe",
        [Fault::Status(
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        )],
    );
    fake.fail(
        "setMyCommands",
        [Fault::Status(
            409,
            "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running",
        )],
    );
    let host = TestHost::start(&[("steady", STEADY)], |c| telegram(c, &fake)).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(&host).await;
        if h["reasons"]["telegram"].as_str().is_some_and(|r| r.contains("409 Conflict")) {
            assert_eq!(h["components"]["telegram"], "down");
            assert_eq!(h["status"], "ready", "the bot does not hold readiness: {h}");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the 409 shows in /health: {h}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(ask(&fake, CHAT, "/version").await.contains("tradehost"), "the bot got past the conflict");

    // Now every kind of failure, on polls and sends: 5xx, a closed connection, a hang past the timeout.
    fake.fail("getUpdates", [Fault::Status(502, "Bad Gateway"), Fault::Close, Fault::Hang(Duration::from_secs(60))]);
    fake.fail("sendMessage", [Fault::Close, Fault::Status(500, "Internal Server Error")]);
    let before = fills(&host);
    let started = tokio::time::Instant::now();
    let mut down_seen = false;
    while fake.calls("getUpdates").iter().filter(|r| r.at > started).count() < 5 {
        down_seen |= health(&host).await["components"]["telegram"] == "down";
        assert!(started.elapsed() < Duration::from_secs(60), "the bot keeps polling");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(down_seen, "the failures show in /health");
    assert!(fills(&host) > before + 5, "trading went on: {} → {}", before, fills(&host));
    assert!(ask(&fake, CHAT, "/status").await.contains("running"), "the bot recovered");
    assert_eq!(health(&host).await["components"]["telegram"], "up");

    // Shutdown completes within its deadline while Telegram hangs.
    fake.fail("*", (0..50).map(|_| Fault::Hang(Duration::from_secs(120))));
    let started = std::time::Instant::now();
    assert_eq!(host.stop().await, 0);
    assert!(started.elapsed() < Duration::from_secs(15), "shutdown took {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_from_telegram_exits_zero_with_notices() {
    let (host, fake) = start(&[("trader", TRADER)], |_| {}).await;
    fake.wait_sent(CHAT, 0, "the start-up notice", |t| t.contains("started (paper mode)")).await;
    let (message, data) = question(&fake, CHAT, "/shutdown").await;
    fake.press(CHAT, message, &data);
    let code = tokio::time::timeout(Duration::from_secs(20), host.host.wait()).await.expect("shut down in time");
    assert_eq!(code, 0);
    assert!(text(&fake.message(CHAT, message).unwrap()).contains("Shutdown started"));
    let texts: Vec<String> = fake.sent_to(CHAT).iter().map(text).collect();
    assert!(texts.iter().any(|t| t.contains("shutting down (Telegram(111))")), "{texts:#?}");
    assert!(texts.last().unwrap().contains("tradehost stopped"), "{texts:#?}");
}
