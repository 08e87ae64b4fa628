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
