//! Market data sources. `synthetic` generates a seeded random walk (the
//! embedded default); `replay` plays a CSV file (design.md §4.6). The live
//! feed task paces them at a configurable speed multiple and sends
//! [`MarketEvent`]s to the engine; it stops when its cancellation token fires.

pub mod csv;
pub mod synthetic;

use rust_decimal::Decimal;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::model::{Candle, Product, Side, Tick, decimal_from_f64};

pub use crate::exchange::MarketEvent;
pub use synthetic::SyntheticFeed;

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
    /// Where the replay is: the next bar and the time offset of this pass
    /// (a restarted feed task continues from here).
    pub cursor: (usize, i64),
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

/// Runs a feed until it ends or `cancel` fires. The source keeps its
/// position, so running it again (after a panic) continues where it was.
pub async fn run(source: &mut FeedSource, tx: mpsc::Sender<MarketEvent>, cancel: CancellationToken) {
    match source {
        FeedSource::Synthetic { feed, clock } => {
            clock.resume(); // the run's clock starts with its market
            loop {
                // Each step when the run's clock reaches its time: ticks carry the clock's time.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(clock.wall_until(feed.time())) => {}
                }
                for tick in feed.step() {
                    if tx.send(MarketEvent::Tick(tick)).await.is_err() {
                        return;
                    }
                }
            }
        }
        FeedSource::Replay(replay) => {
            let span = replay.candles.last().map_or(0, |c| c.time) - replay.candles.first().map_or(0, |c| c.time)
                + replay.interval_ms;
            replay.clock.resume(); // the run's clock starts with its market
            loop {
                while let Some(candle) = replay.candles.get(replay.cursor.0) {
                    let bar = Candle { time: candle.time + replay.cursor.1, ..candle.clone() };
                    let close = replay.close_tick(&bar);
                    // A gap in the data (a weekend, an outage) is skipped, not waited out.
                    replay.clock.skip_to(close.time - replay.interval_ms);
                    // A bar is played when the run's clock reaches its close.
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(replay.clock.wall_until(close.time)) => {}
                    }
                    replay.cursor.0 += 1;
                    if tx.send(MarketEvent::Bar { bar, close }).await.is_err() {
                        return;
                    }
                }
                if !replay.repeat {
                    let _ = tx.send(MarketEvent::Finished).await;
                    return;
                }
                replay.cursor = (0, replay.cursor.1 + span);
            }
        }
    }
}
