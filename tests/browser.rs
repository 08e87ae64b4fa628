//! The dashboard in a real browser: headless Chromium driven over the W3C
//! WebDriver protocol (chromedriver) loads the page, enters the token, sees a
//! running strategy and a fill arrive live, clicks Reload and sees the reload
//! in the activity feed, sees the Telegram bot's 409 Conflict (another
//! instance polls its token) named under the header, the model table, the
//! candle chart with fills and plotted overlays, the per-strategy PnL equal
//! to the API's, sortable tables that fit 1280–1920 px and a phone; and the
//! backtest's HTML report opening without errors. Screenshots are saved in
//! target/ci-artifacts/ (dashboard at 1440×900 and phone size, the report).
//!
//! Needs Debian's `chromium` and `chromium-driver`; `.ci/run` installs them
//! and runs this test with `--ignored`.

mod common;
#[path = "support/fake_telegram.rs"]
mod fake_telegram;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::TestHost;
use fake_telegram::{FakeTelegram, Fault, TOKEN};
use serde_json::{Value, json};

const TRADER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_start() { this.n = 0; }
fn on_tick(t) {
    this.n += 1;
    if this.n % 40 == 0 { exchange::market_order("BTCUSD", if this.n % 80 == 0 { "sell" } else { "buy" }, 0.01); }
}
fn on_candle(c) { chart::plot("close", c.close); }
"#;

/// Where the screenshots go (CI keeps them as artifacts).
fn artifact(name: &str) -> std::path::PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ci-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

struct Driver {
    child: Child,
    base: String,
    session: String,
    http: reqwest::Client,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver");
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        while http.get(format!("{base}/status")).send().await.is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = tempfile::tempdir().unwrap();
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1280,1100",
        ]
        .iter()
        .map(|a| a.to_string())
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let capabilities = json!({ "capabilities": { "alwaysMatch": { "browserName": "chrome",
            "goog:chromeOptions": { "binary": "/usr/bin/chromium", "args": args } } } });
        let created: Value =
            http.post(format!("{base}/session")).json(&capabilities).send().await.unwrap().json().await.unwrap();
        let session =
            created["value"]["sessionId"].as_str().unwrap_or_else(|| panic!("no session: {created}")).to_string();
        Driver { child, base, session, http, _profile: profile }
    }

    async fn command(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let mut request = self.http.request(method, url);
        if !body.is_null() {
            request = request.json(&body);
        }
        let response: Value = request.send().await.unwrap().json().await.unwrap();
        if response["value"]["error"].is_string() {
            panic!("webdriver {path}: {}", response["value"]);
        }
        response["value"].clone()
    }

    async fn script(&self, script: &str) -> Value {
        self.command(reqwest::Method::POST, "/execute/sync", json!({ "script": script, "args": [] })).await
    }

    async fn element(&self, css: &str) -> String {
        let found =
            self.command(reqwest::Method::POST, "/element", json!({ "using": "css selector", "value": css })).await;
        found.as_object().and_then(|o| o.values().next()).and_then(|v| v.as_str()).unwrap().to_string()
    }

    /// Saves a PNG screenshot of the window.
    async fn screenshot(&self, path: &std::path::Path) {
        let png = self.command(reqwest::Method::GET, "/screenshot", Value::Null).await;
        let bytes = base64_decode::decode(png.as_str().unwrap());
        assert!(bytes.starts_with(b"\x89PNG"), "a PNG screenshot");
        std::fs::write(path, &bytes).unwrap();
        eprintln!("screenshot: {}", path.display());
    }

    async fn wait_true(&self, what: &str, script: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.script(script).await == Value::Bool(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.script("return document.body.innerText").await;
                panic!("timed out waiting for {what}; page:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs this with --ignored"]
async fn dashboard_shows_strategies_fills_live_and_reloads_from_a_button() {
    let chatty = "fn on_candle(c) { for i in 0..1000 { log::info(`line ${i}`); } }";
    let guard = r#"fn on_tick(t) { if this.placed != true && t.symbol == "BTCUSD" { this.placed = true; exchange::stop_order("BTCUSD", "sell", 0.01, t.bid * 0.5); } }"#;
    // Another bot instance polls the same token for the whole test.
    let telegram = FakeTelegram::start().await;
    let conflict = "Conflict: terminated by other getUpdates request; make sure that only one bot instance is running";
    telegram.fail("getMe", std::iter::repeat_n(Fault::Status(409, conflict), 1_000));
    // Spins 1.2 s in every 50th callback while candles keep coming: degraded, then up again.
    let staller = r#"fn config() { #{ symbols: ["ETHUSD"], timeframe: "1s" } }
fn on_candle(c) { this.n = (this.n ?? 0) + 1; if this.n % 50 == 0 { let t = timestamp(); while t.elapsed < 1.2 { } } }"#;
    let t = TestHost::start(&[("trader", TRADER), ("chatty", chatty), ("guard", guard), ("staller", staller)], |c| {
        c.sandbox.callback_budget_ms = 3_000;
        c.sandbox.max_operations = u64::MAX;
        c.health.stale_after_ms.strategy = 300;
        c.store.equity_sample_ms = 200;
        c.telegram.enabled = true;
        c.telegram.token = Some(tradehost::config::Secret::new(TOKEN));
        c.telegram.allowed_chat_ids = vec![111];
        c.telegram.api_url = telegram.url();
        c.telegram.backoff_max_ms = 500;
        let models =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/models/models.toml")).unwrap();
        let mut gbt =
            tradehost::config::Config::parse(&models, "models.toml").unwrap().ml.models.remove("gbt").unwrap();
        gbt.path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(&gbt.path);
        c.ml.models.insert("gbt".into(), gbt);
    })
    .await;
    let driver = Driver::start().await;
    let url = format!("http://{}/", t.host.http_addr());
    driver.command(reqwest::Method::POST, "/url", json!({ "url": url })).await;
    let input = driver.element("#token-input").await;
    driver
        .command(
            reqwest::Method::POST,
            &format!("/element/{input}/value"),
            json!({ "text": t.host.api_token().expose() }),
        )
        .await;
    let save = driver.element("#token-save").await;
    driver.command(reqwest::Method::POST, &format!("/element/{save}/click"), json!({})).await;

    driver
        .wait_true("the running strategy", r#"const s = document.querySelector('tr[data-name="trader"] .state'); return !!s && s.textContent === 'running';"#)
        .await;
    driver
        .wait_true("the live stream", "return document.querySelector('#stream').textContent === 'stream: live';")
        .await;
    driver
        .wait_true("a fill in the live feed", "return document.querySelectorAll('#feed li.event-fill').length > 0;")
        .await;
    driver.wait_true("the fills table", "return document.querySelectorAll('#fills tbody tr').length > 0;").await;
    driver
        .wait_true(
            "the waiting stop with its trigger",
            "return [...document.querySelectorAll('#orders tbody td .stop')].some(s => s.textContent.startsWith('stop @ ') && s.title === 'untriggered');",
        )
        .await;
    driver
        .wait_true(
            "chatty's quota hits",
            r#"const q = document.querySelector('tr[data-name="chatty"] .quota'); return !!q && /^log_rate [1-9]/.test(q.textContent);"#,
        )
        .await;

    driver
        .wait_true(
            "the bot's conflict under the header",
            r#"const p = document.querySelector('#problems li[data-component="telegram"]'); return !!p && !document.querySelector('#problems').hidden && p.textContent.startsWith('telegram: down') && p.textContent.includes('409 Conflict');"#,
        )
        .await;
    driver.wait_true("the host still ready", "return document.querySelector('#health').textContent === 'ready';").await;
    driver
        .wait_true(
            "the stalled strategy degraded, with the reason and the age",
            r#"const p = document.querySelector('#problems li[data-component="strategy.staller"]'); return !!p && p.textContent.startsWith('strategy.staller: degraded') && p.textContent.includes('finished no callback while events waited') && /last activity [0-9.]+ s ago/.test(p.textContent);"#,
        )
        .await;

    // Clicked in the page: the table is re-rendered every refresh, so a
    // WebDriver element reference may go stale between finding and clicking.
    driver.script(r#"document.querySelector('button[data-act="reload"][data-name="trader"]').click();"#).await;
    driver
        .wait_true(
            "the reload in the feed",
            "return [...document.querySelectorAll('#feed li.event-strategy')].some(li => li.textContent.includes('reloaded v2'));",
        )
        .await;
    driver
        .wait_true(
            "version 2 in the table",
            r#"return document.querySelector('tr[data-name="trader"] .version').textContent === '2';"#,
        )
        .await;

    // Buttons only where they apply: a stopped strategy can be started, not stopped.
    driver
        .wait_true(
            "a running strategy's Start disabled",
            r#"const b = document.querySelector('button[data-act="start"][data-name="chatty"]'); return !!b && b.disabled && !document.querySelector('button[data-act="stop"][data-name="chatty"]').disabled;"#,
        )
        .await;
    driver.script(r#"document.querySelector('button[data-act="stop"][data-name="chatty"]').click();"#).await;
    driver
        .wait_true(
            "the stopped strategy's Stop and Reload disabled, Start enabled",
            r#"const q = a => document.querySelector(`button[data-act="${a}"][data-name="chatty"]`); return document.querySelector('tr[data-name="chatty"] .state').textContent.startsWith('stopped') && q('stop').disabled && q('reload').disabled && !q('start').disabled;"#,
        )
        .await;
    // Fills carry their symbol and time; order churn is hidden in the feed until asked for.
    driver
        .wait_true(
            "symbol and time in the fills table",
            "const cells = document.querySelectorAll('#fills tbody tr:first-child td'); return cells.length === 8 && cells[3].textContent === 'BTCUSD' && /\\d+:\\d+/.test(cells[1].textContent);",
        )
        .await;
    driver
        .wait_true(
            "order events hidden, fills shown",
            "const f = document.querySelector('#feed'); return f.classList.contains('hide-order') && !f.classList.contains('hide-fill') && !document.querySelector('#feed-types input[data-type=\"order\"]').checked;",
        )
        .await;

    // The candle chart, asked through the page: BTCUSD's 1 s candles, the
    // trader's fills as markers, the guard's stop as a price line.
    driver
        .wait_true(
            "candles, fill markers and the stop's price line on the chart",
            "const c = window.tradehostChart; return !!c && c.symbol === 'BTCUSD' && c.timeframe === '1s' && c.candles > 10 && c.markers.some(m => m.startsWith('trader ')) && c.priceLines >= 1;",
        )
        .await;
    driver
        .wait_true(
            "the trader's plotted closes over the candles",
            "const c = window.tradehostChart; return c.overlays.some(o => o.name === 'trader close' && o.points > 3);",
        )
        .await;
    // The per-strategy panel shows the API's figures (asked from the page at the same moment).
    driver
        .wait_true(
            "the trader's PnL, trades and win rate as the API has them",
            r#"const x = new XMLHttpRequest(); x.open("GET", "/api/v1/strategies", false);
               x.setRequestHeader("Authorization", "Bearer " + localStorage.getItem("tradehost.token")); x.send();
               const api = JSON.parse(x.responseText).find(s => s.name === "trader").stats;
               const row = document.querySelector('tr[data-name="trader"]'), cell = c => row.querySelector(c);
               const shown = c => Number(cell(c).textContent.replace(/[,+]/g, ""));
               return api.trades >= 1 && cell(".net").dataset.value === String(api.net) && cell(".realized").dataset.value === String(api.realized)
                 && cell(".unrealized").dataset.value === String(api.unrealized) && cell(".trades").textContent === String(api.trades)
                 && Math.abs(shown(".net") - Number(api.net)) < 0.01 && Math.abs(shown(".realized") - Number(api.realized)) < 0.01
                 && cell(".win-rate").textContent === (api.win_rate * 100).toFixed(1) + " %";"#,
        )
        .await;
    // The equity curve comes from the store's history.
    driver
        .wait_true("the equity curve", "return !!window.tradehostEquity && window.tradehostEquity.points >= 3;")
        .await;
    // Sortable: the fills by number, up then down.
    let ids =
        "return [...document.querySelectorAll('#fills tbody tr td:first-child')].map(td => Number(td.textContent));";
    driver.script("document.querySelector('#fills th').click();").await;
    let up: Vec<u64> = serde_json::from_value(driver.script(ids).await).unwrap();
    assert!(up.len() > 1 && up.windows(2).all(|w| w[0] <= w[1]), "ascending: {up:?}");
    driver.script("document.querySelector('#fills th').click();").await;
    let down: Vec<u64> = serde_json::from_value(driver.script(ids).await).unwrap();
    assert!(down.windows(2).all(|w| w[0] >= w[1]), "descending: {down:?}");
    // Nothing overflows at common desktop widths.
    let fits = "return document.documentElement.scrollWidth <= window.innerWidth + 1 && [...document.querySelectorAll('.scroll')].every(e => e.scrollWidth <= e.clientWidth + 1);";
    for width in [1280, 1440, 1920] {
        driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": width, "height": 900 })).await;
        driver.wait_true(&format!("no table wider than the page at {width} px"), fits).await;
    }
    // Read at once: the chart refreshes as fills arrive.
    let markers = driver
        .script("const c = window.tradehostChart; return [c.markers.length, c.markers.filter(m => m.startsWith('trader ')).length];")
        .await;
    assert_eq!(markers[0], markers[1], "every marker is a fill of a strategy");

    driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": 1440, "height": 900 })).await;
    driver.screenshot(&artifact("dashboard-1440x900.png")).await;
    // The whole page, for a look at every section.
    driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": 1440, "height": 2600 })).await;
    driver.screenshot(&artifact("dashboard-1440-full.png")).await;
    // Usable on a phone: nothing wider than the screen, every strategy's buttons in reach.
    driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": 390, "height": 844 })).await;
    driver
        .wait_true(
            "a phone-width layout with the buttons in reach",
            "return document.documentElement.scrollWidth <= window.innerWidth + 1 && [...document.querySelectorAll('#strategies button, header button')].every(b => { const r = b.getBoundingClientRect(); return r.left >= 0 && r.right <= window.innerWidth; });",
        )
        .await;
    driver.screenshot(&artifact("dashboard-phone.png")).await;
    driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": 1400, "height": 1000 })).await;

    // The kill switch: confirm, keep the positions; the account shows halted until resumed.
    let kill = driver.element("#kill").await;
    driver.command(reqwest::Method::POST, &format!("/element/{kill}/click"), json!({})).await;
    driver.command(reqwest::Method::POST, "/alert/accept", json!({})).await;
    driver.command(reqwest::Method::POST, "/alert/dismiss", json!({})).await;
    driver
        .wait_true("the halted account", "return document.querySelector('#trading').textContent === 'trading: halted';")
        .await;
    assert_eq!(t.host.account().trading.account, tradehost::model::TradingState::Halted);
    let resume = driver.element("#resume").await;
    driver.command(reqwest::Method::POST, &format!("/element/{resume}/click"), json!({})).await;
    driver.command(reqwest::Method::POST, "/alert/accept", json!({})).await;
    driver
        .wait_true("trading again", "return document.querySelector('#trading').textContent === 'trading: active';")
        .await;
    // Opened from the address `tradehost run` prints: the token is kept and
    // leaves the address bar.
    driver.script("localStorage.clear();").await;
    let with_token = format!("http://{}/?token={}", t.host.http_addr(), t.host.api_token().expose());
    driver.command(reqwest::Method::POST, "/url", json!({ "url": with_token })).await;
    driver
        .wait_true(
            "the app from a ?token= address",
            "return !document.querySelector('#app').hidden && location.search === '' && localStorage.getItem('tradehost.token') !== null;",
        )
        .await;
    let _ = driver.command(reqwest::Method::DELETE, "", Value::Null).await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "needs Debian's chromium and chromium-driver; .ci/run installs them and runs this with --ignored"]
async fn the_backtest_report_opens_without_errors_and_holds_the_json_reports_figures() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .current_dir(root)
        .args(["backtest", "--strategy", "strategies/sma_cross.rhai", "--data", "tests/fixtures/btc_1m_8d.csv"])
        .args(["--symbol", "BTCUSD", "--quiet", "--json", "--report"])
        .arg(&html)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).unwrap();

    let driver = Driver::start().await;
    driver.command(reqwest::Method::POST, "/window/rect", json!({ "width": 1440, "height": 900 })).await;
    driver.command(reqwest::Method::POST, "/url", json!({ "url": format!("file://{}", html.display()) })).await;
    driver.wait_true("the report drawn", "return window.reportReady === true;").await;
    assert_eq!(driver.script("return window.reportErrors;").await, json!([]), "no errors while drawing");
    assert_eq!(driver.script("return window.reportData.report;").await, json, "the --json report's figures");
    let shown = driver
        .script("return [document.querySelectorAll('#trades tbody tr').length, window.reportData.trades.length, window.reportChart];")
        .await;
    let trades = json["trades"].as_u64().unwrap();
    assert_eq!((shown[0].as_u64(), shown[1].as_u64()), (Some(trades), Some(trades)), "every trade listed");
    let chart = &shown[2];
    assert_eq!(chart["candles"].as_u64(), json["bars"].as_u64(), "{chart}");
    assert!(chart["markers"].as_u64().unwrap() > 0);
    assert_eq!(chart["overlays"], json!(["sma fast", "sma slow"]));
    let final_equity = driver
        .script("return [...document.querySelectorAll('.metric')].find(m => m.querySelector('span').textContent === 'final equity').querySelector('b').textContent;")
        .await;
    let expected = json["final_equity"].as_str().unwrap().parse::<f64>().unwrap();
    assert_eq!(
        final_equity.as_str().unwrap().replace(',', "").parse::<f64>().unwrap(),
        (expected * 100.0).round() / 100.0
    );
    // Sorting the trades by PnL puts the worst first.
    driver.script("[...document.querySelectorAll('#trades th')].find(th => th.textContent === 'PnL').click();").await;
    let pnls: Vec<f64> = serde_json::from_value(
        driver.script("return [...document.querySelectorAll('#trades tbody tr')].map(tr => Number(tr.cells[8].dataset.value));").await,
    )
    .unwrap();
    assert!(pnls.windows(2).all(|w| w[0] <= w[1]), "sorted by PnL");
    driver.screenshot(&artifact("backtest-report.png")).await;
    let _ = driver.command(reqwest::Method::DELETE, "", Value::Null).await;
}

/// Standard base64 decoding for the screenshot (no extra dependency).
mod base64_decode {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |c: u8| match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            _ => 63,
        };
        let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace() && *c != b'=').collect();
        let mut out = Vec::with_capacity(clean.len() * 3 / 4);
        for chunk in clean.chunks(4) {
            let n = chunk.iter().enumerate().fold(0u32, |acc, (i, c)| acc | (u32::from(value(*c)) << (18 - 6 * i)));
            let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&bytes[..chunk.len().saturating_sub(1)]);
        }
        out
    }
}
