//! Execution: the order manager ([`Oms`], synchronous and deterministic)
//! and the engine task that drives it ([`Engine`]): the one place where
//! market data meets orders. Every order of every strategy takes the same
//! path through it — checks, intent stored, sent, outcome stored, then
//! reported — on paper, on Delta and (the order manager alone) in backtests.

mod engine;
mod orders;

pub use engine::{
    ENGINE_COMPONENT, Engine, EngineRequest, FEED_COMPONENT, IDLE_TURN, Runtimes, publish_difference, publish_log,
};
pub use orders::{ExecutionError, Oms};
