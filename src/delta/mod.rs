//! Delta Exchange (India and Global): signed REST, the public and private
//! WebSocket streams, order-book maintenance, and the venue that plugs them
//! into the host. The protocol facts follow shared/delta-exchange.md; the
//! section numbers in the docs below refer to it.
//!
//! - [`sign`]: HMAC signing and the query string that is signed and sent.
//! - [`wire`]: lenient decoding of every REST result and stream message.
//! - [`book`]: L2 books with sequence and CRC-32 checks.
//! - [`rest`]: the REST client (budget, clock offset, typed errors).
//! - [`stream`]: one WebSocket with auth, heartbeat, pings and reconnects.
//! - [`products`]: products, orders in contracts, Delta's order states in host words.
//! - [`brackets`]: position brackets: the legs the exchange creates, adopted under the host's ids.
//! - [`connector`]: the venue: connecting, history, start-up reconciliation.
//! - [`orders`]: the order executor and the private stream.
//! - [`market`]: the public stream: books, ticks, marks, freshness.
//! - [`doctor`]: `tradehost doctor` checks for a Delta configuration.

pub mod book;
pub mod brackets;
pub mod connector;
pub mod doctor;
mod market;
mod orders;
pub mod products;
pub mod rest;
pub mod sign;
pub mod stream;
pub mod wire;

pub use connector::{ConnectError, DeltaConnector, Startup};
