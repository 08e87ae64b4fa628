//! Candle history from Delta into the store: what `tradehost data fetch`
//! runs, and what a host on Delta's market runs before a strategy starts so
//! its indicators are warm. Only what the store lacks is asked for (the
//! ranges fetched before, and runs of candles the host stored as they
//! closed, count as held), a chunk per request, each chunk stored with the
//! range it covers: an interrupted fetch resumes where it stopped.

use std::sync::Arc;
use std::time::Duration;

use crate::data::Timeframe;
use crate::data::history::{self, DELTA_RESOLUTIONS};
use crate::delta::rest::{RestClient, RestError};
use crate::model::{Candle, TimestampMs};
use crate::store::{StoreReader, StoreWriter, WriteOp};
use crate::supervisor::WarmUpSync;

/// Candles per `/v2/history/candles` request (Delta answers at most 2,000).
const CHUNK: i64 = 2_000;

/// A chunk ending this close to now (or one candle, if longer) may still miss
/// candles the exchange has not published: only what it sent counts as fetched.
const RECENT_MS: i64 = 5 * 60_000;

/// Why a sync stopped.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Delta has no candles of this length.
    #[error("Delta offers candles of {offered}, not {0}", offered = DELTA_RESOLUTIONS.join(", "))]
    Resolution(Timeframe),
    /// A request failed (after the REST client's retries).
    #[error("{symbol} {timeframe} from {from}: {source}")]
    Rest {
        /// Instrument.
        symbol: String,
        /// Timeframe.
        timeframe: Timeframe,
        /// Start of the chunk, ms.
        from: TimestampMs,
        /// What failed.
        source: RestError,
    },
    /// The store failed.
    #[error("store: {0}")]
    Store(String),
}

/// What a sync did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Synced {
    /// Requests made.
    pub requests: usize,
    /// Candles stored.
    pub stored: usize,
    /// Candles the exchange sent that were not stored: time and what is wrong.
    pub bad: Vec<(TimestampMs, String)>,
}

/// What counts as held already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Only ranges fetched from the exchange before (`data fetch`: candles a
    /// paper feed or the live stream built are replaced by the exchange's).
    FetchedRanges,
    /// Those and any stored candle (a host on Delta's market, whose closed
    /// candles are Delta's market: a restart fetches only the gap).
    StoredCandles,
}

/// Brings `[from, to)` of a series into the store; `progress(done, total,
/// stored)` after each request.
pub async fn sync(
    rest: &RestClient,
    reader: &StoreReader,
    writer: &StoreWriter,
    (symbol, timeframe): (&str, Timeframe),
    (from, to): (TimestampMs, TimestampMs),
    trust: Trust,
    mut progress: impl FnMut(usize, usize, usize),
) -> Result<Synced, HistoryError> {
    let resolution = history::delta_resolution(timeframe).ok_or(HistoryError::Resolution(timeframe))?;
    let (tf, step) = (timeframe.to_string(), timeframe.ms());
    let store_error = |e: &dyn std::fmt::Display| HistoryError::Store(e.to_string());
    let mut covered = reader.candle_coverage(symbol, &tf).map_err(|e| store_error(&e))?;
    if trust == Trust::StoredCandles {
        let stored = reader.candles_between(symbol, &tf, from, to).map_err(|e| store_error(&e))?;
        for run in history::runs(stored.iter().map(|c| c.time), step) {
            covered = history::cover(&covered, run);
        }
    }
    let pieces = history::missing(&covered, from, to, step * CHUNK);
    let mut out = Synced::default();
    for (done, &(start, end)) in pieces.iter().enumerate() {
        let fetched = rest
            .candles(symbol, resolution, step / 1_000, start / 1_000, end / 1_000)
            .await
            .map_err(|source| HistoryError::Rest { symbol: symbol.to_string(), timeframe, from: start, source })?;
        out.requests += 1;
        let mut candles = Vec::with_capacity(fetched.len());
        for raw in fetched {
            let Some(candle) = raw.candle(symbol) else {
                out.bad.push((raw.time * 1_000, "a price is missing".into()));
                continue;
            };
            match history::check_candle(&candle, candles.last().map(|c: &Candle| c.time), step) {
                Some(problem) => out.bad.push((candle.time, problem)),
                None => candles.push(candle),
            }
        }
        out.stored += candles.len();
        // The newest candles may not be published yet: near now, only what arrived counts as asked.
        let recent = end > chrono::Utc::now().timestamp_millis() - step.max(RECENT_MS);
        let asked_to = if recent { candles.last().map_or(start, |c| c.time + step) } else { end };
        let op =
            WriteOp::History { symbol: symbol.to_string(), timeframe: tf.clone(), candles, asked: (start, asked_to) };
        writer.commit(vec![op]).await.map_err(|e| store_error(&e))?;
        progress(done + 1, pieces.len(), out.stored);
    }
    Ok(out)
}

/// The warm-up sync of a host on Delta's market. It runs on a strategy's
/// thread (a plain thread, never an async worker) and blocks it at most
/// `deadline` for all the strategy's series together.
pub fn warm_up_sync(
    rest: Arc<RestClient>,
    reader: StoreReader,
    writer: StoreWriter,
    runtime: tokio::runtime::Handle,
    deadline: Duration,
) -> WarmUpSync {
    Arc::new(move |series: &[(&str, Timeframe)], candles: usize| {
        let now = chrono::Utc::now().timestamp_millis();
        let all = async {
            for &(symbol, timeframe) in series.iter().filter(|(_, tf)| history::delta_resolution(*tf).is_some()) {
                let to = now.div_euclid(timeframe.ms()) * timeframe.ms();
                let from = to.saturating_sub(timeframe.ms().saturating_mul(candles as i64));
                let trusted = Trust::StoredCandles;
                match sync(&rest, &reader, &writer, (symbol, timeframe), (from, to), trusted, |_, _, _| {}).await {
                    Ok(synced) if synced.requests > 0 => tracing::info!(
                        symbol,
                        %timeframe,
                        stored = synced.stored,
                        requests = synced.requests,
                        "warm-up candles fetched"
                    ),
                    Ok(_) => {}
                    Err(error) => tracing::warn!(symbol, %timeframe, "warm-up candles not fetched: {error}"),
                }
            }
        };
        if runtime.block_on(async { tokio::time::timeout(deadline, all).await }).is_err() {
            tracing::warn!("warm-up candles: gave up after {deadline:?}; the strategy starts with what there is");
        }
    })
}
