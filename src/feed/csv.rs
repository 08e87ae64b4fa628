//! The backtest/replay CSV format (design.md §4.6): a header row; the first
//! column is the timestamp (possibly unnamed) as unix seconds or
//! milliseconds, an ISO date or an ISO date-time; then open, high, low,
//! close and volume in any letter case. Errors name the line.

use std::path::Path;

use chrono::{DateTime, NaiveDate, NaiveDateTime};

use crate::model::{Candle, TimestampMs};

/// A CSV that cannot be used, with the line that is wrong.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The file could not be opened or read.
    #[error("{path}: {message}")]
    Io {
        /// File.
        path: String,
        /// Reason.
        message: String,
    },
    /// A required column is missing from the header.
    #[error(
        "{path}: line 1: missing column `{column}` (the header needs a timestamp column, then open, high, low, close, volume)"
    )]
    MissingColumn {
        /// File.
        path: String,
        /// Column name.
        column: &'static str,
    },
    /// A row is malformed.
    #[error("{path}: line {line}: {message}")]
    BadRow {
        /// File.
        path: String,
        /// 1-based line number.
        line: u64,
        /// What is wrong.
        message: String,
    },
    /// The file has no data rows.
    #[error("{path}: no data rows")]
    Empty {
        /// File.
        path: String,
    },
}

/// Parses a timestamp cell into unix milliseconds.
pub fn parse_timestamp(cell: &str) -> Option<TimestampMs> {
    let cell = cell.trim();
    if let Ok(n) = cell.parse::<i64>() {
        // Below 10^11 it is seconds (until the year 5138); above, milliseconds.
        return Some(if n.abs() < 100_000_000_000 { n * 1000 } else { n });
    }
    if let Ok(dt) = DateTime::parse_from_rfc3339(cell) {
        return Some(dt.timestamp_millis());
    }
    for format in ["%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M", "%Y-%m-%dT%H:%M"] {
        if let Ok(dt) = NaiveDateTime::parse_from_str(cell, format) {
            return Some(dt.and_utc().timestamp_millis());
        }
    }
    for format in ["%Y-%m-%d %H:%M:%S%:z", "%Y-%m-%d %H:%M:%S%z"] {
        if let Ok(dt) = DateTime::parse_from_str(cell, format) {
            return Some(dt.timestamp_millis());
        }
    }
    NaiveDate::parse_from_str(cell, "%Y-%m-%d")
        .ok()
        .map(|d| d.and_hms_opt(0, 0, 0).expect("midnight").and_utc().timestamp_millis())
}

/// Reads a whole CSV file of candles for `symbol`; rows must be strictly increasing in time.
pub fn read_candles(path: &Path, symbol: &str) -> Result<Vec<Candle>, CsvError> {
    read_candles_lenient(path, symbol, false).map(|(candles, _)| candles)
}

/// Like [`read_candles`]; with `skip_bad_rows`, malformed rows are skipped and
/// counted instead of stopping the read (time order is still enforced).
pub fn read_candles_lenient(path: &Path, symbol: &str, skip_bad_rows: bool) -> Result<(Vec<Candle>, usize), CsvError> {
    let name = path.display().to_string();
    let file = std::fs::File::open(path).map_err(|e| CsvError::Io { path: name.clone(), message: e.to_string() })?;
    parse_candles_lenient(std::io::BufReader::new(file), &name, symbol, skip_bad_rows)
}

/// Parses CSV text from a reader; `name` is used in errors.
pub fn parse_candles(reader: impl std::io::Read, name: &str, symbol: &str) -> Result<Vec<Candle>, CsvError> {
    parse_candles_lenient(reader, name, symbol, false).map(|(candles, _)| candles)
}

/// Parses CSV text, optionally skipping (and counting) malformed rows.
pub fn parse_candles_lenient(
    reader: impl std::io::Read,
    name: &str,
    symbol: &str,
    skip_bad_rows: bool,
) -> Result<(Vec<Candle>, usize), CsvError> {
    let mut reader =
        csv::ReaderBuilder::new().has_headers(true).flexible(true).trim(csv::Trim::All).from_reader(reader);
    let headers = reader.headers().map_err(|e| CsvError::Io { path: name.into(), message: e.to_string() })?.clone();
    let find = |column: &'static str| {
        headers
            .iter()
            .position(|h| h.eq_ignore_ascii_case(column))
            .ok_or(CsvError::MissingColumn { path: name.into(), column })
    };
    let columns = [find("open")?, find("high")?, find("low")?, find("close")?, find("volume")?];
    let mut candles: Vec<Candle> = Vec::new();
    let mut skipped = 0;
    for record in reader.records() {
        let record = match record {
            Ok(record) => record,
            Err(e)
                if skip_bad_rows
                    && matches!(e.kind(), csv::ErrorKind::UnequalLengths { .. } | csv::ErrorKind::Utf8 { .. }) =>
            {
                skipped += 1;
                continue;
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                return Err(CsvError::BadRow { path: name.into(), line, message: e.to_string() });
            }
        };
        let line = record.position().map_or(0, |p| p.line());
        let bad = |message: String| CsvError::BadRow { path: name.into(), line, message };
        let parsed = (|| {
            let stamp = record.get(0).unwrap_or_default();
            let time =
                parse_timestamp(stamp).ok_or_else(|| bad(format!("cannot read timestamp {}", excerpt(stamp))))?;
            let mut values = [0.0f64; 5];
            for (slot, (&index, label)) in
                values.iter_mut().zip(columns.iter().zip(["open", "high", "low", "close", "volume"]))
            {
                let cell = record.get(index).ok_or_else(|| bad(format!("missing `{label}` value")))?;
                *slot = cell
                    .parse::<f64>()
                    .ok()
                    .filter(|v| v.is_finite())
                    .ok_or_else(|| bad(format!("`{label}` is not a number: {}", excerpt(cell))))?;
            }
            let [open, high, low, close, volume] = values;
            if high < low || high < open.max(close) || low > open.min(close) || low <= 0.0 || volume < 0.0 {
                return Err(bad(format!(
                    "inconsistent bar: open {open}, high {high}, low {low}, close {close}, volume {volume}"
                )));
            }
            Ok(Candle { symbol: symbol.to_string(), time, open, high, low, close, volume })
        })();
        let candle = match parsed {
            Ok(candle) => candle,
            Err(_) if skip_bad_rows => {
                skipped += 1;
                continue;
            }
            Err(error) => return Err(error),
        };
        if let Some(previous) = candles.last()
            && candle.time <= previous.time
        {
            let what = if candle.time == previous.time { "duplicate" } else { "out-of-order" };
            let stamp = record.get(0).unwrap_or_default();
            return Err(bad(format!("{what} timestamp {}: rows must be in strictly increasing time", excerpt(stamp))));
        }
        candles.push(candle);
    }
    if candles.is_empty() {
        return Err(CsvError::Empty { path: name.into() });
    }
    Ok((candles, skipped))
}

/// A cell as an error shows it: quoted, and cut to its first 40 characters
/// with its length when longer, so a huge field never floods a message.
fn excerpt(cell: &str) -> String {
    const SHOWN: usize = 40;
    match cell.char_indices().nth(SHOWN) {
        None => format!("{cell:?}"),
        Some((end, _)) => format!("{:?}… ({} bytes)", &cell[..end], cell.len()),
    }
}

/// The bar interval of a series: the smallest gap between consecutive rows.
pub fn interval_ms(candles: &[Candle]) -> Option<i64> {
    candles.windows(2).map(|w| w[1].time - w[0].time).min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_in_every_documented_form() {
        assert_eq!(parse_timestamp("1700000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("2023-11-14"), Some(1_699_920_000_000));
        assert_eq!(parse_timestamp("2023-11-14 22:13:20"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("2023-11-14T22:13:20Z"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("2023-11-14 22:13:20+00:00"), Some(1_700_000_000_000));
        assert_eq!(parse_timestamp("yesterday"), None);
    }

    #[test]
    fn a_huge_bad_field_is_cut_in_the_error() {
        let huge = "9".repeat(1_000_000) + "x";
        let text = format!("timestamp,open,high,low,close,volume\n1,1,2,0.5,{huge},1\n");
        let error = parse_candles(text.as_bytes(), "t.csv", "X").unwrap_err().to_string();
        assert!(error.len() < 200, "{} bytes", error.len());
        assert!(
            error.contains("line 2") && error.contains("`close` is not a number") && error.contains("1000001 bytes"),
            "{error}"
        );
        let text = format!("timestamp,open,high,low,close,volume\n{huge},1,2,0.5,1,1\n");
        let error = parse_candles(text.as_bytes(), "t.csv", "X").unwrap_err().to_string();
        assert!(error.len() < 200 && error.contains("cannot read timestamp"), "{error}");
    }

    #[test]
    fn pandas_style_unnamed_index_and_mixed_case() {
        let text =
            ",Open,High,Low,Close,Volume\n2024-01-01 00:00:00,1,2,0.5,1.5,10\n2024-01-01 00:01:00,1.5,2,1,1.8,3\n";
        let candles = parse_candles(text.as_bytes(), "t.csv", "X").unwrap();
        assert_eq!(candles.len(), 2);
        assert_eq!(interval_ms(&candles), Some(60_000));
    }

    #[test]
    fn errors_name_the_line() {
        let bad_number = "time,open,high,low,close,volume\n1,1,2,0.5,1.5,10\n2,1,2,0.5,abc,10\n";
        let err = parse_candles(bad_number.as_bytes(), "t.csv", "X").unwrap_err().to_string();
        assert_eq!(err, "t.csv: line 3: `close` is not a number: \"abc\"");
        let unsorted = "time,open,high,low,close,volume\n5,1,2,0.5,1.5,10\n2,1,2,0.5,1.5,10\n";
        let err = parse_candles(unsorted.as_bytes(), "t.csv", "X").unwrap_err().to_string();
        assert!(err.contains("line 3: out-of-order"), "{err}");
        let missing = "time,open,high,low,close\n1,1,2,0.5,1.5\n";
        let err = parse_candles(missing.as_bytes(), "t.csv", "X").unwrap_err().to_string();
        assert!(err.contains("missing column `volume`"), "{err}");
    }
}
