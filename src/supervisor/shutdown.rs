//! The strategy phases of the ordered shutdown: `on_stop` for every
//! strategy (bounded; late ones are aborted), then each one's shutdown policy.

use std::time::Duration;

use tokio::sync::oneshot;

use super::Supervisor;
use crate::config::ShutdownPolicy;
use crate::execution::EngineRequest;

/// How long shutdown waits for a live exchange to confirm cancels and closing fills.
const POLICY_SETTLE: Duration = Duration::from_secs(5);

impl Supervisor {
    /// Strategy phases of the ordered shutdown: `on_stop` for every strategy
    /// (bounded; late ones are aborted), then each strategy's policy.
    pub async fn stop_all(&mut self, on_stop_timeout: Duration, abort_grace: Duration) {
        self.shutting_down = true;
        let running: Vec<String> =
            self.slots.iter().filter(|(_, s)| s.handle.is_some()).map(|(n, _)| n.clone()).collect();
        for name in &running {
            if let Some(handle) = &self.slots[name].handle {
                handle.stop();
            }
        }
        let deadline = tokio::time::Instant::now() + on_stop_timeout;
        self.await_exits(deadline).await;
        let late: Vec<String> = self.slots.iter().filter(|(_, s)| s.handle.is_some()).map(|(n, _)| n.clone()).collect();
        if !late.is_empty() {
            tracing::warn!(strategies = ?late, "on_stop did not finish in time: aborting");
            for name in &late {
                if let Some(handle) = &self.slots[name].handle {
                    handle.abort();
                }
            }
            self.await_exits(tokio::time::Instant::now() + abort_grace).await;
        }
        let default = self.config.strategies.shutdown_policy;
        let policies: Vec<(String, ShutdownPolicy)> = self
            .slots
            .keys()
            .map(|name| {
                (name.clone(), self.config.strategy_override(name).and_then(|o| o.shutdown_policy).unwrap_or(default))
            })
            .collect();
        let (reply, done) = oneshot::channel();
        if self.engine.send(EngineRequest::ApplyPolicies(policies.clone(), reply)).await.is_ok() {
            let _ = done.await;
        }
        // A live exchange answers later: wait (bounded) until the cancels and
        // closing fills are recorded, so the store and the log show them.
        let settle = tokio::time::Instant::now() + POLICY_SETTLE;
        let settled = |account: &crate::model::AccountView| {
            policies.iter().all(|(name, policy)| match policy {
                ShutdownPolicy::Leave => true,
                ShutdownPolicy::Cancel => account.open_orders_of(name, None).next().is_none(),
                ShutdownPolicy::Flatten => {
                    account.open_orders_of(name, None).next().is_none()
                        && account.positions.get(name).is_none_or(|p| p.values().all(|p| p.size.is_zero()))
                }
            })
        };
        while !settled(&self.account.load()) {
            if tokio::time::Instant::now() >= settle {
                tracing::warn!(
                    "shutdown policies not confirmed by the exchange within {POLICY_SETTLE:?}; the next start reconciles them"
                );
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    async fn await_exits(&mut self, deadline: tokio::time::Instant) {
        while self.slots.values().any(|s| s.handle.is_some()) {
            match tokio::time::timeout_at(deadline, self.reports.recv()).await {
                Ok(Some(report)) => self.handle_report(report),
                Ok(None) | Err(_) => break,
            }
        }
    }

    /// Closes the order gate: every new order is refused from now on.
    pub async fn close_gate(&self) {
        let (reply, closed) = oneshot::channel();
        if self.engine.send(EngineRequest::CloseGate(reply)).await.is_ok() {
            let _ = closed.await;
        }
    }
}
