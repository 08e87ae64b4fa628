//! The account's equity history: every `store.equity_sample_ms` on the run's
//! clock (at most ten a wall second) the account view's equity and balance
//! are written to the store, so the history grows at a bounded rate, for the
//! dashboard's equity curve and `GET /api/v1/equity`. It outlives reloads of
//! the page and restarts.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::tasks::Tasks;
use crate::clock::Clock;
use crate::model::{AccountView, EquitySample};
use crate::store::{StoreWriter, WriteOp};

/// The shortest wall time between two samples.
const MIN_WALL_GAP: Duration = Duration::from_millis(100);

/// The sample of the account now.
fn sample(account: &AccountView, clock: &Clock) -> EquitySample {
    EquitySample { time: clock.now_ms(), equity: account.equity, balance: account.balance }
}

/// Starts the sampler: one sample at once, then one every `every` of the run's clock, until `stop`.
pub fn spawn(
    tasks: &Tasks,
    every: Duration,
    account: Arc<ArcSwap<AccountView>>,
    clock: Clock,
    writer: StoreWriter,
    stop: CancellationToken,
) {
    tasks.spawn_auxiliary("equity history", "store", move || {
        let (account, clock, writer, stop) = (account.clone(), clock.clone(), writer.clone(), stop.clone());
        async move {
            let every = i64::try_from(every.as_millis()).unwrap_or(i64::MAX);
            let mut due = clock.now_ms();
            loop {
                // On the run's clock (a simulated ×60 market samples every
                // simulated minute), never more than ten times a wall second.
                let wait = clock.wall_until(due).max(MIN_WALL_GAP);
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let now = clock.now_ms();
                if now >= due {
                    writer.submit(vec![WriteOp::Equity(sample(&account.load(), &clock))], None);
                    due = now.saturating_add(every);
                }
            }
        }
    });
}
