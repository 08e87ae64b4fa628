//! The account's equity history: every `store.equity_sample_ms` the account
//! view's equity and balance are written to the store (one sample per tick,
//! so the history grows at a bounded rate), for the dashboard's equity curve
//! and `GET /api/v1/equity`. It outlives reloads of the page and restarts.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;

use super::tasks::Tasks;
use crate::clock::Clock;
use crate::model::{AccountView, EquitySample};
use crate::store::{StoreWriter, WriteOp};

/// The sample of the account now.
fn sample(account: &AccountView, clock: &Clock) -> EquitySample {
    EquitySample { time: clock.now_ms(), equity: account.equity, balance: account.balance }
}

/// Starts the sampler: one sample at once, then one every `every`, until `stop`.
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
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => writer.submit(vec![WriteOp::Equity(sample(&account.load(), &clock))], None),
                }
            }
        }
    });
}
