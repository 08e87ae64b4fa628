//! systemd integration for `Type=notify` units, active only when systemd
//! set `NOTIFY_SOCKET` (and `WATCHDOG_USEC` for the watchdog): `READY=1`
//! once every component is up, `STOPPING=1` as the ordered shutdown begins,
//! and `WATCHDOG=1` pings while the engine loop keeps turning, so a stuck
//! loop stops the pings and systemd restarts the process
//! (`Restart=on-failure`). A failed notification is logged, never fatal.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::tasks::Tasks;
use crate::execution::{ENGINE_COMPONENT, IDLE_TURN};
use crate::health::Health;

/// Sends `state` lines to the service manager, if there is one.
fn notify(state: &[&str]) {
    #[cfg(unix)]
    {
        let states: Vec<sd_notify::NotifyState> = state
            .iter()
            .map(|line| match *line {
                "READY=1" => sd_notify::NotifyState::Ready,
                "STOPPING=1" => sd_notify::NotifyState::Stopping,
                "WATCHDOG=1" => sd_notify::NotifyState::Watchdog,
                other => sd_notify::NotifyState::Custom(other),
            })
            .collect();
        // Warned about once: a dead socket would otherwise warn at every ping.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        match sd_notify::notify(&states) {
            Ok(()) => WARNED.store(false, std::sync::atomic::Ordering::Relaxed),
            Err(error) if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) => {
                tracing::warn!("systemd notification {state:?} failed: {error}");
            }
            Err(_) => {}
        }
    }
    #[cfg(not(unix))]
    let _ = state;
}

/// Tells systemd the host is ready.
pub fn ready() {
    notify(&["READY=1", "STATUS=ready: trading"]);
}

/// Tells systemd the host is shutting down.
pub fn stopping() {
    notify(&["STOPPING=1", "STATUS=shutting down"]);
}

/// How long systemd waits for a ping (`WATCHDOG_USEC` for this process).
fn watchdog_timeout() -> Option<Duration> {
    #[cfg(unix)]
    return sd_notify::watchdog_enabled();
    #[cfg(not(unix))]
    None
}

/// Whether to ping a watchdog of `timeout` when the engine loop last turned
/// `engine_age` ago: it must have turned within half the timeout, or two idle
/// turns, whichever is longer; during shutdown always.
fn should_ping(engine_age: Option<Duration>, timeout: Duration, shutting_down: bool) -> bool {
    let turned_within = (timeout / 2).max(2 * IDLE_TURN);
    shutting_down || engine_age.is_some_and(|age| age <= turned_within)
}

/// Pings the watchdog every quarter of its timeout while the engine loop
/// turned within half of it (at least two idle turns: it turns every second
/// when nothing happens); during shutdown, unconditionally (the stop timeout
/// governs then).
pub fn spawn_watchdog(tasks: &Tasks, health: Arc<Health>, stop: CancellationToken) {
    let Some(timeout) = watchdog_timeout().filter(|t| !t.is_zero()) else { return };
    let engine = health.pulse(ENGINE_COMPONENT);
    if timeout < 4 * IDLE_TURN {
        tracing::warn!(
            "WatchdogSec={:?} is below {:?}: an idle engine loop turns only every {IDLE_TURN:?}, so systemd may kill a healthy host; use 30s",
            timeout,
            4 * IDLE_TURN
        );
    }
    tracing::info!(timeout_ms = timeout.as_millis() as u64, "systemd watchdog on: pinged while the engine loop turns");
    tasks.spawn_auxiliary("systemd watchdog", "health", move || {
        let (engine, health, stop) = (engine.clone(), health.clone(), stop.clone());
        async move {
            let mut every = tokio::time::interval((timeout / 4).max(Duration::from_millis(10)));
            let mut silent = false;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = every.tick() => {}
                }
                if should_ping(engine.age(), timeout, health.is_shutting_down()) {
                    notify(&["WATCHDOG=1"]);
                    silent = false;
                } else if !silent {
                    silent = true;
                    tracing::error!(
                        "the engine loop has not turned for {:?}: systemd watchdog pings withheld",
                        engine.age()
                    );
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pings_only_while_the_engine_loop_turns() {
        let timeout = Duration::from_secs(30);
        let seconds = |s: u64| Some(Duration::from_secs(s));
        assert!(should_ping(seconds(1), timeout, false));
        assert!(should_ping(seconds(15), timeout, false), "within half the timeout");
        assert!(!should_ping(seconds(16), timeout, false), "a stuck loop: systemd restarts the process");
        assert!(!should_ping(None, timeout, false), "a loop that never turned");
        assert!(should_ping(seconds(60), timeout, true), "the stop timeout governs the shutdown");
        // A short watchdog still allows two idle turns of the loop.
        assert!(should_ping(seconds(2), Duration::from_secs(2), false));
        assert!(!should_ping(seconds(3), Duration::from_secs(2), false));
    }
}
