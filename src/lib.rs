//! tradehost: a host for trading strategies written as Rhai scripts.
//!
//! Map of the modules, lowest first: a module imports only modules listed
//! above it (checked by `tests/architecture.rs`; docs/architecture.md has
//! the picture).
//! - [`model`]: plain domain types (orders, fills, candles, positions, products) with decimal money.
//! - [`bounded`]: a map that forgets its oldest entries beyond a size.
//! - [`clock`]: the one clock of a run: wall, simulated (synthetic and replay feeds), or manual (tests).
//! - [`control`]: the requests every edge sends the host, their replies and errors, strategy status.
//! - [`config`]: typed, validated configuration.
//! - [`data`]: candle aggregation, per-symbol market state and native indicators.
//! - [`risk`]: pre-trade limits of the account and of each strategy (pure, synchronous).
//! - [`health`]: the component registry and the counters behind `/metrics`.
//! - [`ml`]: ONNX models for scripts: loaded once, checked, shared, hot-swapped; prediction cache, feature records.
//! - [`store`]: redb tables, the single writer, recovery and typed reads.
//! - [`activity`]: the activity bus with sequence numbers, a bounded tail and persistence.
//! - [`exchange`]: the venue interface (market events, order updates) and the paper exchange.
//! - [`delta`]: the Delta Exchange venue (REST, streams, books, reconciliation).
//! - [`feed`]: market data sources (synthetic random walk, CSV replay).
//! - [`strategy`]: the engine-agnostic strategy runtime: events in, commands out.
//! - [`script`]: the Rhai implementation of a strategy: sandbox and host API modules.
//! - [`execution`]: the order manager and the engine task that drives it.
//! - [`backtest`]: strategies over historical candles with a simulated clock; report, plot.
//! - [`supervisor`]: strategy slots: start, hot reload, restart with backoff, quarantine.
//! - [`http`]: the REST API, WebSocket stream, dashboard and OpenAPI.
//! - [`telegram`]: the Telegram bot: commands through the API's operations, notifications.
//! - [`host`]: the composition root: boot, supervised tasks, the lifecycle loop, ordered shutdown, signals.

pub mod activity;
pub mod backtest;
pub mod bounded;
pub mod clock;
pub mod config;
pub mod control;
pub mod data;
pub mod delta;
pub mod exchange;
pub mod execution;
pub mod feed;
pub mod health;
pub mod host;
pub mod http;
pub mod ml;
pub mod model;
pub mod risk;
pub mod script;
pub mod store;
pub mod strategy;
pub mod supervisor;
pub mod telegram;
