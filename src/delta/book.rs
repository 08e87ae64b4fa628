//! Order-book maintenance for `ob_updates` / `l2_updates`
//! (shared/delta-exchange.md §5.8): a snapshot, then deltas whose sequence
//! number must be exactly the previous + 1, each checked against the CRC-32
//! of the top ten levels rendered from the original price/size strings.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use super::wire::{BookMessage, WsLevels};

/// Why a book must be rebuilt from a fresh snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BookError {
    /// An update arrived before any snapshot.
    #[error("{symbol}: update before a snapshot")]
    NoSnapshot {
        /// Symbol.
        symbol: String,
    },
    /// A sequence number was skipped or repeated.
    #[error("{symbol}: sequence gap (expected {expected}, got {got})")]
    Gap {
        /// Symbol.
        symbol: String,
        /// Previous + 1.
        expected: i64,
        /// What arrived.
        got: i64,
    },
    /// The book differs from the exchange's.
    #[error("{symbol}: checksum mismatch (exchange {expected}, computed {computed})")]
    Checksum {
        /// Symbol.
        symbol: String,
        /// The message's `cs`.
        expected: u32,
        /// Ours.
        computed: u32,
    },
    /// A price or size is not a number.
    #[error("{symbol}: bad level {price:?}:{size:?}")]
    BadLevel {
        /// Symbol.
        symbol: String,
        /// Price text.
        price: String,
        /// Size text.
        size: String,
    },
    /// The exchange reported an error for the stream.
    #[error("{symbol}: exchange error: {message}")]
    Exchange {
        /// Symbol.
        symbol: String,
        /// Its message.
        message: String,
    },
}

/// One side: price → (price text, size text, size).
type Side = BTreeMap<Decimal, (String, String, Decimal)>;

/// An L2 book of one symbol.
#[derive(Debug, Clone, Default)]
pub struct OrderBook {
    symbol: String,
    asks: Side,
    bids: Side,
    seq: Option<i64>,
}

impl OrderBook {
    /// An empty book waiting for its snapshot.
    pub fn new(symbol: &str) -> Self {
        OrderBook { symbol: symbol.to_string(), ..Default::default() }
    }

    /// Applies a snapshot or update. On error the book is cleared: the
    /// caller must resubscribe to get a new snapshot.
    pub fn apply(&mut self, message: &BookMessage) -> Result<(), BookError> {
        let result = self.try_apply(message);
        if result.is_err() {
            self.asks.clear();
            self.bids.clear();
            self.seq = None;
        }
        result
    }

    fn try_apply(&mut self, message: &BookMessage) -> Result<(), BookError> {
        let symbol = self.symbol.clone();
        match message.action.as_str() {
            "snapshot" => {
                self.asks.clear();
                self.bids.clear();
            }
            "update" => {
                let Some(previous) = self.seq else { return Err(BookError::NoSnapshot { symbol }) };
                let got = message.sequence_no.unwrap_or(-1);
                if got != previous + 1 {
                    return Err(BookError::Gap { symbol, expected: previous + 1, got });
                }
            }
            _ => {
                let message = message.msg.clone().unwrap_or_else(|| format!("action {:?}", message.action));
                return Err(BookError::Exchange { symbol, message });
            }
        }
        apply_levels(&symbol, &mut self.asks, &message.asks)?;
        apply_levels(&symbol, &mut self.bids, &message.bids)?;
        self.seq = message.sequence_no;
        if let Some(expected) = message.cs {
            let computed = self.checksum();
            if i64::from(computed) != expected {
                return Err(BookError::Checksum { symbol, expected: expected as u32, computed });
            }
        }
        Ok(())
    }

    /// CRC-32 of `asks|bids`, each the first ten levels as `price:size`
    /// joined by `,` (asks ascending, bids descending).
    pub fn checksum(&self) -> u32 {
        crc32fast::hash(self.checksum_text().as_bytes())
    }

    /// The text the checksum is computed over.
    pub fn checksum_text(&self) -> String {
        let render = |levels: &mut dyn Iterator<Item = &(String, String, Decimal)>| {
            levels.take(10).map(|(p, s, _)| format!("{p}:{s}")).collect::<Vec<_>>().join(",")
        };
        format!("{}|{}", render(&mut self.asks.values()), render(&mut self.bids.values().rev()))
    }

    /// Best bid (price, size).
    pub fn best_bid(&self) -> Option<(Decimal, Decimal)> {
        self.bids.iter().next_back().map(|(p, (_, _, s))| (*p, *s))
    }

    /// Best ask (price, size).
    pub fn best_ask(&self) -> Option<(Decimal, Decimal)> {
        self.asks.iter().next().map(|(p, (_, _, s))| (*p, *s))
    }

    /// True once a snapshot has been applied.
    pub fn is_live(&self) -> bool {
        self.seq.is_some()
    }
}

fn apply_levels(symbol: &str, side: &mut Side, levels: &WsLevels) -> Result<(), BookError> {
    for (price_text, size_text) in levels {
        let bad = || BookError::BadLevel { symbol: symbol.into(), price: price_text.clone(), size: size_text.clone() };
        let price: Decimal = price_text.parse().map_err(|_| bad())?;
        let size: Decimal = size_text.parse().map_err(|_| bad())?;
        if size.is_zero() {
            side.remove(&price);
        } else {
            side.insert(price, (price_text.clone(), size_text.clone(), size));
        }
    }
    Ok(())
}
