//! Exchanges: what an order becomes. `paper` simulates fills against the
//! market feed deterministically; a live connector produces the same events.

pub mod paper;

use crate::model::{Fill, Order};

pub use paper::{AccountSnapshot, Execution, PaperError, PaperExchange, settle};

/// What an exchange reports back.
#[derive(Debug, Clone, PartialEq)]
pub enum ExchangeEvent {
    /// An order changed state (accepted, partially filled, filled, cancelled, rejected).
    Order(Order),
    /// An execution.
    Fill(Fill),
}
