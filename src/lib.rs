//! tradehost: a host for trading strategies written as Rhai scripts.
//!
//! Map of the modules (lower rows never import higher ones):
//! - [`model`]: plain domain types (orders, fills, candles, positions) with decimal money.
//! - [`clock`]: the one clock of a run: wall, or simulated for the synthetic and replay feeds.
//! - [`config`]: typed, validated configuration.
//! - [`data`]: candle aggregation, per-symbol market state and native indicators.
//! - [`exchange`]: the paper exchange (simulated fills) and the live venue interface.
//! - [`delta`]: the Delta Exchange connector (REST, streams, reconciliation).
//! - [`feed`]: market data sources (synthetic random walk, CSV replay).
//! - [`strategy`]: engine-agnostic strategy runtime: events in, commands out.
//! - [`script`]: the Rhai implementation: hardened engine and host API modules.
//! - [`execution`]: order management: client ids, shutdown gate, order and position state.
//! - [`activity`]: the activity bus with sequence numbers and an in-memory tail.
//! - [`supervisor`]: composition root: strategy lifecycle, hot reload, restarts, shutdown.

pub mod activity;
pub mod backtest;
pub mod bounded;
pub mod clock;
pub mod config;
pub mod data;
pub mod delta;
pub mod exchange;
pub mod execution;
pub mod feed;
pub mod health;
pub mod http;
pub mod model;
pub mod script;
pub mod store;
pub mod strategy;
pub mod supervisor;
