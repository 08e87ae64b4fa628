//! Market data sources. `synthetic` generates a seeded random walk (the
//! embedded default); `replay` plays a CSV file (design.md §4.6). The live
//! feed task paces them at a configurable speed multiple and sends
//! [`FeedEvent`]s to the engine; it stops when its cancellation token fires.

pub mod csv;
pub mod synthetic;

use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Candle, Product, Side, Tick, decimal_from_f64};

pub use synthetic::SyntheticFeed;

/// What a feed produces.
#[derive(Debug, Clone, PartialEq)]
pub enum FeedEvent {
    /// A trade/quote tick to aggregate into bars.
    Tick(Tick),
    /// A complete base bar (replay) and the quote at its close.
    Bar {
        /// The bar.
        bar: Candle,
        /// Quote at the bar's close.
        close: Tick,
    },
    /// A complete base bar fetched over REST while a live stream is silent
    /// (no quote: it only fills the candle history).
    PolledBar(Candle),
    /// The exchange's mark price of a symbol (values positions).
    Mark {
        /// Instrument.
        symbol: String,
        /// Mark price.
        price: Decimal,
    },
    /// The feed has no more data.
    Finished,
}

/// A CSV replay.
#[derive(Debug, Clone)]
pub struct Replay {
    /// The bars, strictly increasing in time.
    pub candles: Vec<Candle>,
    /// Bar length.
    pub interval_ms: i64,
    /// The run's clock, which paces the bars.
    pub clock: crate::clock::Clock,
    /// Start again at the end.
    pub repeat: bool,
    /// Half the spread, as a fraction.
    pub half_spread: f64,
    /// Trading rules of the symbol.
    pub product: Product,
}

impl Replay {
    /// The quote at a bar's close, with the configured spread.
    pub fn close_tick(&self, bar: &Candle) -> Tick {
        let p = &self.product;
        let to_decimal = |v: f64| decimal_from_f64(v).unwrap_or(Decimal::ONE);
        let last = p.round_price(to_decimal(bar.close)).max(p.tick_size);
        let bid = p.round_price_away(to_decimal(bar.close * (1.0 - self.half_spread)), Side::Sell).min(last);
        let ask = p.round_price_away(to_decimal(bar.close * (1.0 + self.half_spread)), Side::Buy).max(last);
        Tick {
            symbol: bar.symbol.clone(),
            time: bar.time + self.interval_ms,
            bid,
            ask: ask.max(bid),
            last,
            volume: Decimal::ZERO,
        }
    }
}

/// A live market data source.
pub enum FeedSource {
    /// Random walk.
    Synthetic {
        /// The generator, positioned at the live start.
        feed: Box<SyntheticFeed>,
        /// The run's clock, which paces the steps.
        clock: crate::clock::Clock,
    },
    /// CSV replay.
    Replay(Replay),
}

/// Runs a feed until it ends or `cancel` fires.
pub async fn run(source: FeedSource, tx: mpsc::Sender<FeedEvent>, cancel: CancellationToken) {
    match source {
        FeedSource::Synthetic { mut feed, clock } => {
            clock.resume(); // the run's clock starts with its market
            loop {
                // Each step when the run's clock reaches its time: ticks carry the clock's time.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(clock.wall_until(feed.time())) => {}
                }
                for tick in feed.step() {
                    if tx.send(FeedEvent::Tick(tick)).await.is_err() {
                        return;
                    }
                }
            }
        }
        FeedSource::Replay(replay) => {
            let span = replay.candles.last().map_or(0, |c| c.time) - replay.candles.first().map_or(0, |c| c.time)
                + replay.interval_ms;
            let mut offset = 0;
            replay.clock.resume(); // the run's clock starts with its market
            loop {
                for candle in &replay.candles {
                    let bar = Candle { time: candle.time + offset, ..candle.clone() };
                    let close = replay.close_tick(&bar);
                    // A gap in the data (a weekend, an outage) is skipped, not waited out.
                    replay.clock.skip_to(close.time - replay.interval_ms);
                    // A bar is played when the run's clock reaches its close.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(replay.clock.wall_until(close.time)) => {}
                    }
                    if tx.send(FeedEvent::Bar { bar, close }).await.is_err() {
                        return;
                    }
                }
                if !replay.repeat {
                    let _ = tx.send(FeedEvent::Finished).await;
                    return;
                }
                offset += span;
            }
        }
    }
}
