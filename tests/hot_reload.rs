//! Hot reload: new versions take effect without a restart, broken saves keep
//! the old version running, editor save patterns are handled, deletions stop
//! strategies, and `this` survives.

mod common;

use common::{TestHost, is_log, save_by_rename};
use tradehost::control::StrategyState;

fn version(tag: &str) -> String {
    format!(
        r#"fn config() {{ #{{ symbols: ["BTCUSD"], timeframe: "1s" }} }}
fn on_candle(c) {{ this.n = (this.n ?? 0) + 1; print(`{tag} n=${{this.n}}`); }}"#
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn changed_file_takes_effect_without_restart_and_keeps_state() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    let first = t.wait_log(0, "s", "v1 n=").await;
    let since = t.seq();
    std::fs::write(t.file("s"), version("v2")).unwrap();
    t.wait_strategy(since, "s", "reloaded").await;
    let v2 = t.wait_log(since, "s", "v2 n=").await;
    let n = |e: &tradehost::activity::ActivityEvent| -> u64 {
        e.data["message"].as_str().unwrap().rsplit('=').next().unwrap().parse().unwrap()
    };
    assert!(n(&v2) > n(&first), "state carried over: {} then {}", n(&first), n(&v2));
    let status = t.wait_status("s", |s| s.version == 2).await;
    assert_eq!((status.state, status.reloads, status.restarts), (StrategyState::Running, 1, 0));
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn syntax_error_keeps_the_old_version_and_reports_file_line_col() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    t.wait_log(0, "s", "v1").await;
    let since = t.seq();
    std::fs::write(t.file("s"), "fn on_candle(c) {\n    let x = ;\n}\n").unwrap();
    let rejected = t.wait_strategy(since, "s", "reload_rejected").await;
    let error = rejected.data["error"].as_str().unwrap().to_string();
    let expected_prefix = format!("{}:2:", t.file("s").display());
    assert!(error.starts_with(&expected_prefix), "{error}");
    let after = t.seq();
    t.wait_log(after, "s", "v1").await;
    let status = t.wait_status("s", |s| s.last_error.is_some()).await;
    assert_eq!((status.state, status.version), (StrategyState::Running, 1));
    assert_eq!(status.last_error.unwrap().location.unwrap().line, 2);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn temp_file_and_rename_saves_are_seen() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    t.wait_log(0, "s", "v1").await;
    let since = t.seq();
    save_by_rename(&t.file("s"), &version("renamed"));
    t.wait_log(since, "s", "renamed n=").await;
    assert!(t.host.strategies().iter().all(|s| s.name == "s"), "the temp file is not a strategy");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn truncate_then_write_never_runs_an_empty_or_partial_version() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    t.wait_log(0, "s", "v1").await;
    let since = t.seq();
    // Truncate, wait well past the debounce, then write the new version.
    std::fs::write(t.file("s"), "").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    t.wait_log(t.seq(), "s", "v1").await;
    std::fs::write(t.file("s"), version("v3")).unwrap();
    t.wait_log(since, "s", "v3").await;
    let events = t.host.activity().since(since, usize::MAX);
    assert!(
        !events.iter().any(|e| e.data["event"] == "reload_rejected" || e.data["event"] == "stopped"),
        "an empty file was taken as a version: {events:?}"
    );
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_file_stops_its_strategy_and_new_files_start() {
    let t = TestHost::start(&[("a", &version("a")), ("b", &version("b"))], |_| {}).await;
    t.wait_log(0, "a", "a n=").await;
    let since = t.seq();
    std::fs::remove_file(t.file("a")).unwrap();
    t.wait_strategy(since, "a", "stopped").await;
    std::fs::write(t.file("c"), version("c")).unwrap();
    t.wait_log(since, "c", "c n=").await;
    let after = t.seq();
    t.wait_log(after, "b", "b n=").await;
    t.wait_log(t.seq(), "c", "c n=").await;
    assert!(!t.host.activity().since(after, usize::MAX).iter().any(|e| is_log(e, "a", "a n=")), "a still runs");
    t.wait_status("c", |s| s.state == StrategyState::Running).await;
    let names: Vec<String> = t.host.strategies().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["b", "c"]);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn bytes_that_are_not_utf8_are_a_rejected_reload_and_the_old_version_keeps_running() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    t.wait_log(0, "s", "v1").await;
    let since = t.seq();
    std::fs::write(t.file("s"), b"fn on_candle(c) { print(\"\xff\xfe\"); }").unwrap();
    let rejected = t.wait_strategy(since, "s", "reload_rejected").await;
    let error = rejected.data["error"].as_str().unwrap();
    assert!(error.contains("not UTF-8") && error.contains("keeps running"), "{error}");
    let after = t.seq();
    t.wait_log(after, "s", "v1 n=").await;
    let status = t.wait_status("s", |s| s.last_error.is_some()).await;
    assert_eq!(status.state, StrategyState::Running);
    // A readable save afterwards is applied as usual.
    std::fs::write(t.file("s"), version("v2")).unwrap();
    t.wait_log(after, "s", "v2 n=").await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_watcher_survives_its_folder_being_deleted_recreated_and_moved_back() {
    let t = TestHost::start(&[("s", &version("v1"))], |_| {}).await;
    t.wait_log(0, "s", "v1").await;
    let dir = t.dir.path().to_path_buf();
    // Deleted: its strategies stop, the watcher is down with the reason.
    let since = t.seq();
    std::fs::remove_dir_all(&dir).unwrap();
    t.wait_strategy(since, "s", "removed").await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let health = t.api_get("/api/v1/health").await;
        if health["components"]["watcher"] == "down" {
            assert!(health["reasons"]["watcher"].as_str().unwrap().contains("is missing"), "{health}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the watcher never reported the folder missing: {health}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // Recreated with a new file: it is picked up.
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("fresh.rhai"), version("fresh")).unwrap();
    t.wait_log(since, "fresh", "fresh n=").await;
    // Moved away and back: still watched.
    let aside = dir.with_extension("aside");
    std::fs::rename(&dir, &aside).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    std::fs::rename(&aside, &dir).unwrap();
    let since = t.seq();
    std::fs::write(dir.join("later.rhai"), version("later")).unwrap();
    t.wait_log(since, "later", "later n=").await;
    assert_eq!(t.api_get("/api/v1/health").await["components"]["watcher"], "up");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn files_whose_names_are_not_strategy_names_are_ignored_so_every_strategy_can_be_controlled() {
    let t = TestHost::start(
        &[("good_one-2", &version("good")), ("has space", &version("space")), ("dot.ted", &version("dot"))],
        |_| {},
    )
    .await;
    std::fs::write(t.dir.path().join("new\nline.rhai"), version("newline")).unwrap();
    std::fs::write(t.dir.path().join("ünï.rhai"), version("unicode")).unwrap();
    t.wait_log(0, "good_one-2", "good n=").await;
    let since = t.seq();
    std::fs::write(t.file("good_one-2"), version("good2")).unwrap();
    t.wait_log(since, "good_one-2", "good2 n=").await;
    let names: Vec<String> = t.host.strategies().into_iter().map(|s| s.name).collect();
    assert_eq!(names, vec!["good_one-2"], "only the valid name runs");
    let url = format!("http://{}/api/v1/strategies/good_one-2/stop", t.host.http_addr());
    let response = reqwest::Client::new().post(url).bearer_auth(t.host.api_token().expose()).send().await.unwrap();
    assert_eq!(response.status(), 200, "every running strategy can be controlled");
    assert_eq!(t.stop().await, 0);
}
