//! Candle history sync, the pure part: which ranges of a requested span are
//! not fetched yet, what makes a candle bad, and where a series has gaps.
//! Times are milliseconds; ranges are `[from, to)`.

use crate::model::{Candle, TimestampMs};

/// Resolutions Delta's `/v2/history/candles` offers (shared/delta-exchange.md §4.6).
/// (Delta's `1w` is left out: its weeks need not start where epoch-aligned
/// seven-day buckets do.)
pub const DELTA_RESOLUTIONS: &[&str] = &["1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "1d"];

/// Delta's resolution for a timeframe, if it offers one.
pub fn delta_resolution(timeframe: super::Timeframe) -> Option<&'static str> {
    DELTA_RESOLUTIONS.iter().copied().find(|r| r.parse::<super::Timeframe>().is_ok_and(|tf| tf == timeframe))
}

/// A run of missing candles between two stored ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// Start of the first missing candle.
    pub from: TimestampMs,
    /// Start of the candle after the gap.
    pub to: TimestampMs,
    /// Missing candles.
    pub missing: i64,
}

/// What is wrong with a candle of a `step`-long timeframe (`previous`: the
/// time of the candle before it).
pub fn check_candle(candle: &Candle, previous: Option<TimestampMs>, step: i64) -> Option<String> {
    let prices = [candle.open, candle.high, candle.low, candle.close];
    if prices.iter().any(|p| !p.is_finite()) || !candle.volume.is_finite() {
        return Some("a price or the volume is not a number".into());
    }
    if prices.iter().any(|p| *p <= 0.0) {
        return Some("a price is not positive".into());
    }
    if candle.high < candle.low {
        return Some(format!("high {} is below low {}", candle.high, candle.low));
    }
    for (name, price) in [("open", candle.open), ("close", candle.close)] {
        if price > candle.high || price < candle.low {
            return Some(format!("{name} {price} is outside low {} .. high {}", candle.low, candle.high));
        }
    }
    if candle.volume < 0.0 {
        return Some(format!("volume {} is negative", candle.volume));
    }
    if candle.time.rem_euclid(step.max(1)) != 0 {
        return Some(format!("time {} does not start a {} ms candle", candle.time, step));
    }
    match previous {
        Some(previous) if candle.time <= previous => {
            Some(format!("time {} does not follow the previous candle's {}", candle.time, previous))
        }
        _ => None,
    }
}

/// The gaps of a series of candle start times (ascending), `step` apart when complete.
pub fn gaps(times: impl IntoIterator<Item = TimestampMs>, step: i64) -> Vec<Gap> {
    let mut out = Vec::new();
    let mut previous: Option<TimestampMs> = None;
    for time in times {
        if let Some(previous) = previous
            && time - previous > step
        {
            out.push(Gap { from: previous + step, to: time, missing: (time - previous) / step - 1 });
        }
        previous = Some(time);
    }
    out
}

/// The parts of `[from, to)` not covered by `covered` (sorted, merged ranges),
/// cut into pieces of at most `chunk` ms, oldest first.
pub fn missing(
    covered: &[(TimestampMs, TimestampMs)],
    from: TimestampMs,
    to: TimestampMs,
    chunk: i64,
) -> Vec<(i64, i64)> {
    let mut holes = Vec::new();
    let mut cursor = from;
    for &(start, end) in covered {
        if end <= cursor {
            continue;
        }
        if start >= to {
            break;
        }
        if start > cursor {
            holes.push((cursor, start.min(to)));
        }
        cursor = cursor.max(end);
        if cursor >= to {
            break;
        }
    }
    if cursor < to {
        holes.push((cursor, to));
    }
    let mut out = Vec::new();
    for (start, end) in holes {
        let mut piece = start;
        while piece < end {
            let next = piece.saturating_add(chunk.max(1)).min(end);
            out.push((piece, next));
            piece = next;
        }
    }
    out
}

/// The unbroken runs of a series of candle start times (ascending), as
/// `[first, last + step)` ranges.
pub fn runs(times: impl IntoIterator<Item = TimestampMs>, step: i64) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for time in times {
        match out.last_mut() {
            Some(run) if run.1 == time => run.1 = time + step,
            _ => out.push((time, time + step)),
        }
    }
    out
}

/// `ranges` with `new` added, sorted and merged (touching ranges join).
pub fn cover(ranges: &[(TimestampMs, TimestampMs)], new: (TimestampMs, TimestampMs)) -> Vec<(i64, i64)> {
    let mut all: Vec<(i64, i64)> = ranges.iter().copied().chain([new]).filter(|(a, b)| a < b).collect();
    all.sort_unstable();
    let mut out: Vec<(i64, i64)> = Vec::with_capacity(all.len());
    for (start, end) in all {
        match out.last_mut() {
            Some(last) if start <= last.1 => last.1 = last.1.max(end),
            _ => out.push((start, end)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candle(time: i64, open: f64, high: f64, low: f64, close: f64) -> Candle {
        Candle { symbol: "X".into(), time, open, high, low, close, volume: 1.0 }
    }

    #[test]
    fn bad_candles_are_named() {
        assert_eq!(check_candle(&candle(60, 10.0, 11.0, 9.0, 10.5), Some(0), 60), None);
        assert!(check_candle(&candle(60, 10.0, 9.0, 11.0, 10.0), None, 60).unwrap().contains("below low"));
        assert!(check_candle(&candle(60, 12.0, 11.0, 9.0, 10.0), None, 60).unwrap().starts_with("open 12"));
        assert!(check_candle(&candle(60, 10.0, 11.0, 9.0, 8.0), None, 60).unwrap().starts_with("close 8"));
        assert!(check_candle(&candle(60, 0.0, 11.0, 0.0, 10.0), None, 60).unwrap().contains("not positive"));
        assert!(check_candle(&candle(60, 10.0, 11.0, 9.0, 10.0), Some(60), 60).unwrap().contains("does not follow"));
        assert!(check_candle(&candle(60, f64::NAN, 11.0, 9.0, 10.0), None, 60).is_some());
    }

    #[test]
    fn gaps_missing_ranges_and_coverage() {
        assert_eq!(gaps([0, 60, 240, 300], 60), vec![Gap { from: 120, to: 240, missing: 2 }]);
        assert_eq!(missing(&[], 0, 250, 100), vec![(0, 100), (100, 200), (200, 250)]);
        assert_eq!(missing(&[(0, 100), (150, 300)], 0, 400, 1_000), vec![(100, 150), (300, 400)]);
        assert_eq!(missing(&[(0, 500)], 100, 400, 10), vec![]);
        assert_eq!(cover(&[(0, 100), (200, 300)], (100, 200)), vec![(0, 300)]);
        assert_eq!(cover(&[(0, 100)], (150, 160)), vec![(0, 100), (150, 160)]);
        assert_eq!(runs([0, 60, 120, 240], 60), vec![(0, 180), (240, 300)]);
    }
}
