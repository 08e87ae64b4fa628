//! The read model of the strategies, published after every change.

use serde::Serialize;

use crate::strategy::StrategyError;

/// Lifecycle state of a strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StrategyState {
    /// Being built or waiting for a restart.
    Starting,
    /// Handling events.
    Running,
    /// Running, but it can never trade: its symbols or timeframe are not in
    /// the market data (the status's `reason` says which).
    Idle,
    /// Stopped by the user, by its config, or at shutdown.
    Stopped,
    /// Failed to start (compile error, bad config()); waits for the file to change.
    Failed,
    /// Crashed too often; waits for the file to change or a user start.
    Quarantined,
}

/// One strategy as the supervisor sees it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StrategyStatus {
    /// Name (file stem).
    pub name: String,
    /// Script file.
    pub file: String,
    /// Lifecycle state.
    pub state: StrategyState,
    /// Why it is idle, stopped, failed or quarantined.
    pub reason: Option<String>,
    /// Code version: 1 at first start, +1 per applied reload.
    pub version: u32,
    /// Applied hot reloads.
    pub reloads: u32,
    /// Restarts after failures.
    pub restarts: u32,
    /// The last error (compile, reload or callback), with its location.
    pub last_error: Option<StrategyError>,
}
