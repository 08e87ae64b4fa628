//! What the supervisor does with a strategy runtime's reports: starts,
//! reload outcomes, errors, and exits (restart with backoff, quarantine).

use std::time::Duration;

use serde_json::json;

use super::market::gap_of;
use super::{HEALTHY_RUN, Supervisor};
use crate::activity::ActivityKind;
use crate::control::{Control, ControlError, StrategyState};
use crate::execution::EngineRequest;
use crate::strategy::live::{ExitReason, RuntimeReport, TaggedReport};

impl Supervisor {
    /// Tells the engine the symbols a strategy declares (its only ones,
    /// unless its risk limits name `symbols`).
    fn declare_symbols(&self, name: &str) {
        let meta = self.slots.get(name).and_then(|s| s.handle.as_ref()).and_then(|h| h.meta());
        if let Some(meta) = meta {
            let request = EngineRequest::Declare { strategy: name.to_string(), symbols: meta.symbols };
            let engine = self.engine.clone();
            tokio::spawn(async move { drop(engine.send(request).await) });
        }
    }

    /// Handles a runtime's report.
    pub fn handle_report(&mut self, tagged: TaggedReport) {
        let TaggedReport { name, generation, report } = tagged;
        let Some(slot) = self.slots.get_mut(&name) else { return };
        if slot.generation != generation {
            return;
        }
        let activity = self.activity.clone();
        let event = |event: &str, extra: serde_json::Value| {
            let mut data = json!({ "event": event });
            if let (Some(data), Some(extra)) = (data.as_object_mut(), extra.as_object()) {
                data.extend(extra.clone());
            }
            activity.publish(ActivityKind::Strategy, Some(&name), data);
        };
        match report {
            RuntimeReport::Started => {
                self.declare_symbols(&name);
                let Some(slot) = self.slots.get_mut(&name) else { return };
                slot.state = StrategyState::Running;
                slot.version = slot.version.max(1);
                slot.gap = gap_of(slot, &self.feed_symbols, &self.hub);
                match &slot.gap {
                    None => {
                        tracing::info!(strategy = %name, version = slot.version, "strategy started");
                        event("started", json!({ "version": slot.version }));
                    }
                    Some(gap) if gap.idle => {
                        slot.state = StrategyState::Idle;
                        tracing::warn!(strategy = %name, version = slot.version, "strategy started but idle: {}", gap.reason);
                        event("idle", json!({ "version": slot.version, "reason": gap.reason }));
                    }
                    Some(gap) => {
                        tracing::warn!(strategy = %name, version = slot.version, "strategy started: {}", gap.reason);
                        event("started", json!({ "version": slot.version, "reason": gap.reason }));
                    }
                }
            }
            RuntimeReport::Reloaded => {
                self.declare_symbols(&name);
                let Some(slot) = self.slots.get_mut(&name) else { return };
                slot.version += 1;
                slot.reloads += 1;
                slot.last_error = None;
                // Symbols or timeframes the new version added are built from now
                // on (without warm-up history: restart the strategy for that).
                if let Some(meta) = slot.handle.as_ref().and_then(|h| h.meta()) {
                    let mut hub = self.hub.lock().unwrap_or_else(|e| e.into_inner());
                    for symbol in &meta.symbols {
                        for timeframe in meta.all_timeframes() {
                            let _ = hub.subscribe(symbol, timeframe); // a timeframe it cannot build shows as idle
                        }
                    }
                }
                slot.gap = gap_of(slot, &self.feed_symbols, &self.hub);
                let idle = slot.gap.as_ref().is_some_and(|g| g.idle);
                slot.state = if idle { StrategyState::Idle } else { StrategyState::Running };
                tracing::info!(strategy = %name, version = slot.version, "strategy reloaded");
                event("reloaded", json!({ "version": slot.version }));
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Ok(slot.version));
                }
            }
            RuntimeReport::ReloadRejected(error) => {
                tracing::error!(strategy = %name, "reload rejected, the previous version keeps running: {error}");
                event("reload_rejected", json!({ "error": error.to_string() }));
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Err(ControlError::Rejected(error.to_string())));
                }
                slot.last_error = Some(error);
            }
            RuntimeReport::CallbackFailed { callback, error } => {
                tracing::warn!(strategy = %name, callback, "callback failed: {error}");
                event("callback_failed", json!({ "callback": callback, "error": error.to_string() }));
                slot.last_error = Some(error);
            }
            RuntimeReport::Exited { reason, state } => {
                if state.is_some() {
                    slot.saved_state = state;
                }
                slot.handle = None;
                for reply in slot.pending_reloads.drain(..) {
                    let _ = reply.send(Err(ControlError::Conflict(format!(
                        "strategy {name} stopped before the reload was applied"
                    ))));
                }
                match reason {
                    ExitReason::Stopped => {
                        slot.state = StrategyState::Stopped;
                        tracing::info!(strategy = %name, "strategy stopped");
                        event("stopped", json!({}));
                    }
                    ExitReason::StartFailed(error) => {
                        slot.state = StrategyState::Failed;
                        tracing::error!(strategy = %name, "strategy cannot start (waiting for the file to change): {error}");
                        event("failed", json!({ "error": error.to_string() }));
                        slot.last_error = Some(error);
                    }
                    ExitReason::Failed(error) if slot.stopped_by_user.is_some() => {
                        // Stopped by a user while failing: it stays stopped, no restart.
                        slot.state = StrategyState::Stopped;
                        tracing::warn!(strategy = %name, "strategy failed while being stopped: {error}");
                        event("stopped", json!({ "error": error.to_string() }));
                        slot.last_error = Some(error);
                    }
                    ExitReason::Failed(error) => {
                        if slot.started_at.elapsed() >= HEALTHY_RUN {
                            slot.restarts_in_a_row = 0;
                        }
                        slot.restarts_in_a_row += 1;
                        slot.last_error = Some(error.clone());
                        let sup = &self.config.supervisor;
                        if slot.restarts_in_a_row > sup.quarantine_after_restarts {
                            slot.state = StrategyState::Quarantined;
                            tracing::error!(strategy = %name, "strategy quarantined after {} failed runs in a row; fix the file to restart it: {error}", slot.restarts_in_a_row);
                            event("quarantined", json!({ "error": error.to_string() }));
                        } else {
                            let delay_ms = backoff_ms(slot.restarts_in_a_row, sup);
                            slot.state = StrategyState::Starting;
                            tracing::warn!(strategy = %name, delay_ms, "strategy failed, restarting after backoff: {error}");
                            event("failed", json!({ "error": error.to_string(), "restart_in_ms": delay_ms }));
                            let due = Control::RestartDue { name: name.clone(), generation: slot.generation };
                            send_after(self.control.clone(), due, delay_ms, self.cancel.clone());
                        }
                    }
                }
                self.unregister(&name);
                if self.slots.get(&name).is_some_and(|s| s.deleted) {
                    self.slots.remove(&name);
                }
            }
        }
        self.publish();
    }
}

/// The wait before restart number `in_a_row`: doubling from the initial delay, capped.
fn backoff_ms(in_a_row: u32, config: &crate::config::SupervisorConfig) -> u64 {
    let exponent = in_a_row.saturating_sub(1).min(20);
    (config.restart_backoff_initial_ms.saturating_mul(1 << exponent)).min(config.restart_backoff_max_ms)
}

/// Sends `message` after `delay_ms`, unless shutdown begins first (a timer: nothing in it can fail).
fn send_after(
    control: tokio::sync::mpsc::UnboundedSender<Control>,
    message: Control,
    delay_ms: u64,
    cancel: tokio_util::sync::CancellationToken,
) {
    tokio::spawn(async move {
        tokio::select! {
            _ = cancel.cancelled() => {}
            _ = tokio::time::sleep(Duration::from_millis(delay_ms)) => drop(control.send(message)),
        }
    });
}
