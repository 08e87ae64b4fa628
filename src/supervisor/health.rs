//! Each strategy as a health component `strategy.NAME`: shown with its
//! state, reason and the age of its last finished callback, degraded when
//! events wait for it and no callback finished within
//! `health.stale_after_ms.strategy`. Auxiliary: a strategy never holds the
//! host's readiness. Stopped strategies are not listed.

use std::time::Duration;

use super::Supervisor;
use crate::control::StrategyState;
use crate::health::{ComponentState, Freshness};

/// The health component of a strategy.
pub fn component(strategy: &str) -> String {
    format!("strategy.{strategy}")
}

impl Supervisor {
    /// Brings the strategies' health components in line with their slots.
    pub(super) fn report_health(&self) {
        let health = &self.health;
        let listed: Vec<String> =
            health.components().into_keys().filter(|name| name.starts_with("strategy.")).collect();
        for name in &listed {
            let strategy = &name["strategy.".len()..];
            if self.slots.get(strategy).is_none_or(|slot| slot.state == StrategyState::Stopped) {
                health.unregister(name);
            }
        }
        for (strategy, slot) in &self.slots {
            let name = component(strategy);
            let (state, reason) = match slot.state {
                StrategyState::Stopped => continue,
                StrategyState::Starting => (ComponentState::Starting, None),
                StrategyState::Running | StrategyState::Idle => {
                    (ComponentState::Up, slot.gap.as_ref().map(|gap| gap.reason.clone()))
                }
                StrategyState::Failed | StrategyState::Quarantined => {
                    let error = slot.last_error.as_ref().map(|e| e.to_string());
                    (ComponentState::Down, Some(error.unwrap_or_else(|| "failed".to_string())))
                }
            };
            if !listed.contains(&name) {
                health.register_auxiliary(&name);
                let (metrics, waiting_for) = (self.metrics.clone(), strategy.clone());
                health.expect_activity(
                    &name,
                    Freshness {
                        pulse: self.metrics.callback_histogram(strategy).pulse(),
                        after: Duration::from_millis(self.config.health.stale_after_ms.strategy),
                        busy: Some(Box::new(move || {
                            metrics.strategy_queue(&waiting_for).is_some_and(|(depth, _)| depth > 0)
                        })),
                        what: "finished no callback while events waited",
                    },
                );
            }
            health.report(&name, state, reason.as_deref());
        }
    }
}
