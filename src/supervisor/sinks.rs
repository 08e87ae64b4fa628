//! The sinks a strategy talks through: its commands (orders to the engine,
//! logs and notifications to the activity stream), its saved state (to the
//! store) and the fills it missed while it was down (from the store).

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use crate::activity::{ActivityBus, ActivityKind};
use crate::execution::{EngineRequest, publish_log};
use crate::store::{StoreReader, StoreWriter, WriteOp};
use crate::strategy::live::{self, CommandSink, StateSink};
use crate::strategy::plots::PlotBook;
use crate::strategy::{LogLevel, StrategyCommand};

/// The stored fills of a strategy after the last one its saved state
/// reflects; without a saved state, nothing (it starts from the newest fill).
pub(super) fn fill_replay(reader: StoreReader, name: &str) -> live::FillReplay {
    let name = name.to_string();
    Box::new(move |through: Option<u64>| {
        let result = match through {
            Some(through) => reader
                .fills_after(through)
                .map(|fills| (through, fills.into_iter().filter(|f| f.strategy == name).collect::<Vec<_>>())),
            None => reader.recent_fills(1).map(|last| (last.first().map_or(0, |f| f.id), Vec::new())),
        };
        result.unwrap_or_else(|error| {
            tracing::error!(strategy = %name, "cannot read fills to replay: {error}");
            (through.unwrap_or(0), Vec::new())
        })
    })
}

/// Writes a strategy's changed state to the store (not awaited: the bounded
/// delay and the final write at stop make it durable; the shutdown flush waits).
pub(super) fn state_sink(store: StoreWriter) -> StateSink {
    Arc::new(move |strategy: &str, state: serde_json::Value| {
        store.submit(vec![WriteOp::StrategyState { strategy: strategy.to_string(), state }], None);
    })
}

/// Routes a strategy's commands: orders to the engine, logs and
/// notifications to tracing and the activity bus, plotted values to the plot book.
pub(super) fn command_sink(
    engine: mpsc::Sender<EngineRequest>,
    activity: ActivityBus,
    plots: Arc<PlotBook>,
) -> CommandSink {
    Arc::new(move |strategy: &str, commands: Vec<StrategyCommand>| {
        let mut orders = Vec::new();
        for command in commands {
            match command {
                StrategyCommand::Log { level, message } => publish_log(&activity, strategy, level, &message),
                StrategyCommand::Notify(message) => {
                    tracing::info!(strategy = %strategy, "notify: {message}");
                    activity.publish(
                        ActivityKind::Log,
                        Some(strategy),
                        json!({ "level": "notify", "message": message }),
                    );
                }
                StrategyCommand::Heartbeat => {
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "heartbeat": true }));
                }
                StrategyCommand::HealthReport { key, value } => {
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "key": key, "value": value }));
                }
                StrategyCommand::Degraded(reason) => {
                    publish_log(&activity, strategy, LogLevel::Warn, &format!("degraded: {reason}"));
                    activity.publish(ActivityKind::Health, Some(strategy), json!({ "degraded": reason }));
                }
                StrategyCommand::Plot { symbol, name, point } => plots.record(strategy, &symbol, &name, point),
                order => orders.push(order),
            }
        }
        // A strategy thread that gets ahead of the engine waits here (the queue is bounded).
        if !orders.is_empty() {
            let count = orders.len();
            let request = EngineRequest::Commands { strategy: strategy.to_string(), commands: orders };
            if engine.blocking_send(request).is_err() {
                let message = format!("{count} order command(s) not carried out: the order engine has stopped");
                publish_log(&activity, strategy, LogLevel::Error, &message);
            }
        }
    })
}
