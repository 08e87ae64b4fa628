//! `tradehost data` against the fake Delta Exchange: fetches are chunked,
//! exact, incremental and resumable after kill -9; gaps and bad candles are
//! reported with their times; exported CSV backtests the same as the store;
//! bad input is refused with exit code 2.
#![cfg(unix)]

#[path = "support/fake_delta.rs"]
mod fake_delta;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::Ordering;
use std::time::Duration;

use fake_delta::{FakeConfig, FakeDelta};
use tradehost::model::Candle;
use tradehost::store::{Store, WriteOp};

const DAY: i64 = 86_400;

/// A day boundary four days ago (seconds): the start of the ranges fetched.
fn day_start() -> i64 {
    chrono::Utc::now().timestamp() / DAY * DAY - 4 * DAY
}

/// A config pointing the Delta REST client at the fake; returns its path.
fn write_config(root: &Path, fake: &FakeDelta) -> PathBuf {
    let path = root.join("config.toml");
    let text = format!(
        "data_dir = {:?}\n[exchange.delta]\nrest_url = \"{}\"\nrequest_timeout_ms = 2000\n",
        root.join("data"),
        fake.rest_url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn tradehost(config: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tradehost")).args(args).arg("--config").arg(config).output().unwrap()
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

fn stored(root: &Path, symbol: &str, timeframe: &str) -> Vec<Candle> {
    Store::open(&root.join("data")).unwrap().reader().candles_between(symbol, timeframe, 0, i64::MAX).unwrap()
}

/// `YYYY-mm-dd HH:MM` of a unix second, as the commands print times.
fn shown(second: i64) -> String {
    chrono::DateTime::from_timestamp(second, 0).unwrap().format("%Y-%m-%d %H:%M").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_stores_exactly_what_the_exchange_has_once_and_reports_gaps_and_bad_candles() {
    let start = day_start();
    let gap = (start + 3_600, start + 3_600 + 600); // ten minutes without trades
    let broken = start + 2 * DAY + 120;
    let config = FakeConfig { candle_gaps: vec![gap], bad_candles: vec![broken], ..FakeConfig::default() };
    let fake = FakeDelta::start(config).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let (from, to) = (start.to_string(), (start + 3 * DAY).to_string());
    let fetch = ["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "1m", "--from", &from, "--to", &to];
    let first = tradehost(&config, &fetch);
    let out = text(&first);
    // 4,320 one-minute candles in chunks of at most 2,000: three requests.
    assert_eq!(fake.calls("GET /v2/history/candles"), 3, "{out}");
    assert_eq!(first.status.code(), Some(1), "a bad candle from the exchange is an error: {out}");
    assert!(out.contains(&format!("gap: {} .. {} (10 candles missing)", shown(gap.0), shown(gap.1))), "{out}");
    assert!(out.contains(&format!("bad candle at {} ({})", shown(broken), broken * 1_000)), "{out}");
    assert!(out.contains("is below low"), "{out}");
    let expected: Vec<Candle> =
        fake.history("BTCUSD", "1m", start, start + 3 * DAY).into_iter().filter(|c| c.time != broken * 1_000).collect();
    assert_eq!(expected.len(), 3 * 1_440 - 10 - 1);
    assert_eq!(stored(root.path(), "BTCUSD", "1m"), expected, "the store holds exactly the exchange's good candles");
    // Again: nothing is asked twice, not even the gap.
    let second = tradehost(&config, &fetch);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(text(&second).contains("everything was stored already"), "{}", text(&second));
    assert_eq!(fake.calls("GET /v2/history/candles"), 3, "a second fetch makes no candle request");
    // A wider range fetches only the new day, through two 429s (retried after the reset the fake names).
    fake.faults().burst_429.store(2, Ordering::SeqCst);
    let wider = (start + 4 * DAY).to_string();
    let third = tradehost(
        &config,
        &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "1m", "--from", &from, "--to", &wider],
    );
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    assert_eq!(fake.calls("GET /v2/history/candles"), 3 + 1, "one request for the one new day");
    assert_eq!(fake.faults().burst_429.load(Ordering::SeqCst), 0, "the 429s were met and retried");
    assert_eq!(stored(root.path(), "BTCUSD", "1m").len(), expected.len() + 1_440);

    // verify reports the gap and a bad candle written into the store, with their times.
    {
        let store = Store::open(&root.path().join("data")).unwrap();
        let writer = store.writer(Default::default());
        let mut bad = expected[100].clone();
        (bad.high, bad.low) = (bad.low, bad.high);
        writer.commit_blocking(vec![WriteOp::Candle { timeframe: "1m".into(), candle: bad.clone() }]).unwrap();
        writer.close();
    }
    let verify = tradehost(&config, &["data", "verify"]);
    let out = text(&verify);
    assert_eq!(verify.status.code(), Some(1), "{out}");
    assert!(out.contains(&format!("bad candle at {}", shown(expected[100].time / 1_000))), "{out}");
    assert!(out.contains(&format!("gap: {} .. {}", shown(gap.0), shown(gap.1))), "{out}");
    let list = tradehost(&config, &["data", "list"]);
    let row = text(&list).lines().find(|l| l.starts_with("BTCUSD")).unwrap_or_default().to_string();
    let count = (expected.len() + 1_440).to_string();
    assert!(row.contains(&shown(start)) && row.split_whitespace().any(|w| w == count), "{}", text(&list));
    assert!(row.trim_end().ends_with(" 2"), "two gaps: the quiet ten minutes and the bad candle not stored: {row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_killed_midway_resumes_to_the_full_range_without_duplicates() {
    let start = day_start();
    let fake = FakeDelta::start(FakeConfig::default()).await;
    fake.faults().slow_candles_ms.store(300, Ordering::SeqCst);
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let (from, to) = (start.to_string(), (start + 3 * DAY).to_string());
    let fetch = ["data", "fetch", "--symbol", "ETHUSD", "--timeframe", "5m", "--from", &from, "--to", &to];
    // 864 five-minute candles, one request; make it several with 1m on ETHUSD too.
    let args: Vec<&str> =
        ["data", "fetch", "--symbol", "ETHUSD", "--timeframe", "1m", "--from", &from, "--to", &to].to_vec();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .args(&args)
        .arg("--config")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let begun = tokio::time::Instant::now();
    while fake.calls("GET /v2/history/candles") < 2 {
        assert!(begun.elapsed() < Duration::from_secs(20), "the fetch never got going");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    child.kill().unwrap(); // SIGKILL mid-way
    child.wait().unwrap();
    let partial = stored(root.path(), "ETHUSD", "1m");
    assert!(!partial.is_empty() && partial.len() < 3 * 1_440, "killed mid-way: {} candles", partial.len());
    fake.faults().slow_candles_ms.store(0, Ordering::SeqCst);
    let rerun = tradehost(&config, &args);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    let all = stored(root.path(), "ETHUSD", "1m");
    assert_eq!(all, fake.history("ETHUSD", "1m", start, start + 3 * DAY), "the full range, each candle once");
    assert!(fake.calls("GET /v2/history/candles") <= 4, "only what was missing was asked again");
    // Another timeframe is its own series.
    assert_eq!(tradehost(&config, &fetch).status.code(), Some(0));
    assert_eq!(stored(root.path(), "ETHUSD", "5m").len(), 3 * 288);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_csv_backtests_exactly_like_the_store() {
    let start = day_start();
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let (from, to) = (start.to_string(), (start + 2 * DAY).to_string());
    let fetched =
        tradehost(&config, &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "1m", "--from", &from, "--to", &to]);
    assert_eq!(fetched.status.code(), Some(0), "{}", text(&fetched));
    let csv = root.path().join("btc.csv");
    let csv_arg = csv.to_str().unwrap();
    let export = tradehost(&config, &["data", "export", "--symbol", "BTCUSD", "--timeframe", "1m", "-o", csv_arg]);
    assert_eq!(export.status.code(), Some(0), "{}", text(&export));
    let strategy = concat!(env!("CARGO_MANIFEST_DIR"), "/strategies/sma_cross.rhai");
    let common = ["backtest", "--strategy", strategy, "--json", "--quiet"];
    let from_csv = tradehost(&config, &[&common[..], &["--data", csv_arg, "--symbol", "BTCUSD"]].concat());
    let from_store = tradehost(&config, &[&common[..], &["--symbol", "BTCUSD", "--timeframe", "1m"]].concat());
    assert_eq!(from_csv.status.code(), Some(0), "{}", text(&from_csv));
    assert_eq!(from_store.status.code(), Some(0), "{}", text(&from_store));
    let report = |o: &Output| serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap();
    let (csv_report, store_report) = (report(&from_csv), report(&from_store));
    assert!(csv_report["trades"].as_u64().unwrap() > 3, "the strategy trades the fake's wave: {csv_report:#}");
    assert_eq!(csv_report, store_report, "the same bars give the same report");
    assert!(text(&from_store).contains(&format!("2880 stored candles {} ..", shown(start))), "{}", text(&from_store));
    assert!(text(&from_store).contains("no gaps"), "{}", text(&from_store));
    // Without stored candles the backtest says what to do.
    let none = tradehost(&config, &[&common[..], &["--symbol", "ETHUSD", "--timeframe", "1m"]].concat());
    assert_eq!(none.status.code(), Some(2));
    assert!(text(&none).contains("tradehost data fetch --symbol ETHUSD --timeframe 1m"), "{}", text(&none));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_reason_and_exit_code_2() {
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let from = day_start().to_string();
    let refused = |args: &[&str], says: &str| {
        let output = tradehost(&config, args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {}", text(&output));
        assert!(text(&output).contains(says), "{args:?} should say {says:?}: {}", text(&output));
    };
    refused(&["data", "fetch", "--symbol", "BTCUS", "--timeframe", "1m", "--from", &from], "close matches: BTCUSD");
    refused(
        &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "2m", "--from", &from],
        "Delta offers candles of 1m, 3m",
    );
    refused(
        &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "1m", "--from", "2024-02-01", "--to", "2024-01-01"],
        "is not before --to",
    );
    refused(
        &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "1m", "--from", "yesterday"],
        "--from \"yesterday\"",
    );
    assert_eq!(fake.calls("GET /v2/history/candles"), 0, "nothing fetched for bad input");
    let locked = root.path().join("locked");
    std::fs::create_dir_all(&locked).unwrap();
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o500)).unwrap();
    if std::fs::write(locked.join("probe"), "x").is_err() {
        // (Root can write anywhere: the check only means something for other users.)
        let dir = locked.join("data");
        let args = [
            "data",
            "fetch",
            "--symbol",
            "BTCUSD",
            "--timeframe",
            "1m",
            "--from",
            &from,
            "--data-dir",
            dir.to_str().unwrap(),
        ];
        refused(&args, "cannot open the store");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_commands_work_through_a_running_hosts_api() {
    let start = day_start();
    let fake = FakeDelta::start(FakeConfig::default()).await;
    let root = tempfile::tempdir().unwrap();
    let config = write_config(root.path(), &fake);
    let (from, to) = (start.to_string(), (start + DAY).to_string());
    let fetched =
        tradehost(&config, &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "5m", "--from", &from, "--to", &to]);
    assert_eq!(fetched.status.code(), Some(0), "{}", text(&fetched));
    // A paper host on the same data folder holds the store.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let strategies = root.path().join("strategies");
    std::fs::create_dir_all(&strategies).unwrap();
    let host_config = root.path().join("host.toml");
    let toml = format!(
        "data_dir = {:?}\n[http]\nbind = \"127.0.0.1:{port}\"\n[strategies]\ndir = {strategies:?}\n[exchange.delta]\nrest_url = \"{}\"\n",
        root.path().join("data"),
        fake.rest_url()
    );
    std::fs::write(&host_config, toml).unwrap();
    let mut host = Command::new(env!("CARGO_BIN_EXE_tradehost"))
        .args(["run", "--config"])
        .arg(&host_config)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let begun = tokio::time::Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        assert!(begun.elapsed() < Duration::from_secs(20), "the host never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let list = tradehost(&host_config, &["data", "list"]);
    let out = text(&list);
    assert_eq!(list.status.code(), Some(0), "{out}");
    assert!(out.contains("through its API"), "{out}");
    // (The paper host's own one-minute candles may show up too.)
    let row = out.lines().find(|l| l.split_whitespace().take(2).eq(["BTCUSD", "5m"])).unwrap_or_default();
    assert!(row.contains(&shown(start)) && row.split_whitespace().any(|w| w == "288"), "{out}");
    let csv = root.path().join("live.csv");
    let export = tradehost(
        &host_config,
        &["data", "export", "--symbol", "BTCUSD", "--timeframe", "5m", "-o", csv.to_str().unwrap()],
    );
    assert_eq!(export.status.code(), Some(0), "{}", text(&export));
    assert_eq!(std::fs::read_to_string(&csv).unwrap().lines().count(), 1 + 288);
    let verify = tradehost(&host_config, &["data", "verify", "--symbol", "BTCUSD", "--timeframe", "5m"]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    // Writing needs the store itself: fetch says why not.
    let refused =
        tradehost(&host_config, &["data", "fetch", "--symbol", "BTCUSD", "--timeframe", "5m", "--from", &from]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(text(&refused).contains("the host is running on"), "{}", text(&refused));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(host.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(host.wait().unwrap().success());
}
