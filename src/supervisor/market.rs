//! What a strategy gets of the market: its warm-up history, and what of its
//! market this host cannot give it (a [`MarketGap`]).

use std::sync::Mutex;

use super::Slot;
use crate::data::{MarketHub, TimedCandle, Timeframe};
use crate::store::StoreReader;
use crate::strategy::StrategyMeta;

/// Fills the store with a strategy's warm-up candles before it starts: for
/// each (symbol, timeframe) the last so many candles, from the exchange on a
/// host that has one, within one deadline for them all; a series the
/// exchange does not offer is left to what the store and the live market have.
pub type WarmUpSync = std::sync::Arc<dyn Fn(&[(&str, Timeframe)], usize) + Send + Sync>;

/// Candles a strategy starts with, of every timeframe it reads (its
/// `warmup`, else [`WARM_UP_CANDLES`]): what the feed has, preceded by the
/// stored candles just before it when the feed's own history is short —
/// fetched first by `sync`, when given.
pub(super) fn warm_up_history(
    hub: &Mutex<MarketHub>,
    store: &StoreReader,
    meta: &StrategyMeta,
    sync: Option<&WarmUpSync>,
) -> Vec<TimedCandle> {
    let wanted = meta.warmup.unwrap_or(WARM_UP_CANDLES);
    let mut series = Vec::new();
    for symbol in &meta.symbols {
        for timeframe in meta.all_timeframes() {
            match hub.lock().unwrap_or_else(|e| e.into_inner()).subscribe(symbol, timeframe) {
                Ok(live) => series.push((symbol.as_str(), timeframe, live)),
                Err(error) => tracing::warn!(symbol, "{error}"),
            }
        }
    }
    let short: Vec<(&str, Timeframe)> =
        series.iter().filter(|(.., live)| live.len() < wanted).map(|(s, tf, _)| (*s, *tf)).collect();
    if let Some(sync) = sync.filter(|_| !short.is_empty()) {
        sync(&short, wanted);
    }
    let mut out = Vec::new();
    for (symbol, timeframe, live) in series {
        if live.len() < wanted {
            let (missing, tf) = ((wanted - live.len()) as i64, timeframe.to_string());
            let stored = match live.first() {
                Some(first) => store.candles_between(symbol, &tf, first.time - missing * timeframe.ms(), first.time),
                None => store.candles(symbol, &tf, wanted),
            };
            match stored {
                Ok(stored) => out.extend(stored.into_iter().map(|candle| TimedCandle { timeframe, candle })),
                Err(error) => tracing::warn!(symbol, "stored candles unavailable for warm-up: {error}"),
            }
        }
        out.extend(live.into_iter().map(|candle| TimedCandle { timeframe, candle }));
    }
    out
}

/// What of its market a strategy cannot get from this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MarketGap {
    /// `no market data for SOLUSD (the market provides BTCUSD, ETHUSD)`.
    pub reason: String,
    /// True when it can never trade (idle); false when it still trades some symbols.
    pub idle: bool,
}

/// What a strategy lacks of the market: symbols the feed does not provide,
/// or a timeframe the feed's `base` bars cannot make (when the base is known).
pub fn market_gap(meta: &StrategyMeta, feed_symbols: &[String], base: Option<Timeframe>) -> Option<MarketGap> {
    if let Some(base) = base
        && let Some(tf) = meta.all_timeframes().find(|tf| tf.ms() % base.ms() != 0)
    {
        // Its own timeframe missing: no on_candle ever; another one: those reads stay empty.
        let reason =
            format!("timeframe {tf} cannot be built from the market's {base} bars (it must be a whole multiple)");
        return Some(MarketGap { reason, idle: tf == meta.timeframe });
    }
    let missing: Vec<&str> = meta.symbols.iter().filter(|s| !feed_symbols.contains(s)).map(String::as_str).collect();
    if missing.is_empty() {
        return None;
    }
    let trades: Vec<&str> = meta.symbols.iter().filter(|s| feed_symbols.contains(s)).map(String::as_str).collect();
    let mut reason =
        format!("no market data for {} (the market provides {})", missing.join(", "), feed_symbols.join(", "));
    if !trades.is_empty() {
        reason.push_str(&format!("; it trades {} only", trades.join(", ")));
    }
    Some(MarketGap { reason, idle: trades.is_empty() })
}

/// What the strategy of a running slot lacks of the market, if anything.
pub(super) fn gap_of(slot: &Slot, feed_symbols: &[String], hub: &Mutex<MarketHub>) -> Option<MarketGap> {
    let meta = slot.handle.as_ref()?.meta()?;
    let base = hub.lock().unwrap_or_else(|e| e.into_inner()).base();
    market_gap(&meta, feed_symbols, Some(base))
}

/// Candles of history a strategy should start with, per symbol.
/// Warm-up candles per series for a strategy that does not declare `warmup`.
pub const WARM_UP_CANDLES: usize = 500;
