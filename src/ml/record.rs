//! The rows `ml::record` writes: one CSV file per strategy, so a model is
//! trained on exactly the features the strategy computes live. Columns:
//! `time` (the bar's open time, ms since the epoch), `symbol`, `strategy`,
//! `label` (empty when none was given), then `f0`, `f1`, … The first row
//! fixes the width; the file never grows past its size limit.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

/// One recorded row.
#[derive(Debug, Clone, Copy)]
pub struct RecordRow<'a> {
    /// The bar's open time (or the event's time), ms since the epoch.
    pub time: i64,
    /// The symbol of the event being handled.
    pub symbol: &'a str,
    /// The recording strategy.
    pub strategy: &'a str,
    /// The label, if the script gave one.
    pub label: Option<f64>,
    /// The features.
    pub features: &'a [f64],
}

/// Why a row could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The row's width differs from the file's.
    #[error("{got} features, but the rows of {path} have {expected}")]
    Width {
        /// The file.
        path: PathBuf,
        /// Its width.
        expected: usize,
        /// The row's.
        got: usize,
    },
    /// A feature or label is NaN or infinite.
    #[error("{0} is not a finite number")]
    NotFinite(String),
    /// Writing failed.
    #[error("cannot write {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// Writes recorded rows to one CSV file.
#[derive(Debug)]
pub struct FeatureWriter {
    path: PathBuf,
    out: BufWriter<File>,
    width: Option<usize>,
    bytes: u64,
    max_bytes: u64,
    flush_each_row: bool,
}

impl FeatureWriter {
    /// A new file (replacing one there), written through a buffer: for a backtest's `--features-out`.
    pub fn create(path: &Path, max_bytes: u64) -> Result<FeatureWriter, RecordError> {
        let io = |source| RecordError::Io { path: path.to_path_buf(), source };
        let file = File::create(path).map_err(io)?;
        Ok(FeatureWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            width: None,
            bytes: 0,
            max_bytes,
            flush_each_row: false,
        })
    }

    /// Appends to a file (made with its folder if missing), each row written
    /// out at once: for a live host. The width of rows already there holds.
    pub fn append(path: &Path, max_bytes: u64) -> Result<FeatureWriter, RecordError> {
        let io = |source| RecordError::Io { path: path.to_path_buf(), source };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let width = File::open(path).ok().and_then(|f| {
            let mut header = String::new();
            BufReader::new(f).read_line(&mut header).ok()?;
            let columns = header.trim_end().split(',').count();
            (columns > 4).then_some(columns - 4)
        });
        let file = OpenOptions::new().create(true).append(true).open(path).map_err(io)?;
        let bytes = file.metadata().map_err(io)?.len();
        Ok(FeatureWriter {
            path: path.to_path_buf(),
            out: BufWriter::new(file),
            width,
            bytes,
            max_bytes,
            flush_each_row: true,
        })
    }

    /// Writes a row; `Ok(false)` when the file is at its size limit and the row was dropped.
    pub fn write(&mut self, row: RecordRow) -> Result<bool, RecordError> {
        if let Some(at) = row.features.iter().position(|f| !f.is_finite()) {
            return Err(RecordError::NotFinite(format!("feature {at} ({})", row.features[at])));
        }
        if let Some(label) = row.label.filter(|l| !l.is_finite()) {
            return Err(RecordError::NotFinite(format!("the label ({label})")));
        }
        let mut line = String::new();
        match self.width {
            Some(expected) if expected != row.features.len() => {
                return Err(RecordError::Width { path: self.path.clone(), expected, got: row.features.len() });
            }
            Some(_) => {}
            None => {
                line.push_str("time,symbol,strategy,label");
                for i in 0..row.features.len() {
                    line.push_str(&format!(",f{i}"));
                }
                line.push('\n');
            }
        }
        line.push_str(&format!("{},{},{},", row.time, csv_field(row.symbol), csv_field(row.strategy)));
        if let Some(label) = row.label {
            line.push_str(&label.to_string());
        }
        for f in row.features {
            line.push(',');
            line.push_str(&f.to_string());
        }
        line.push('\n');
        if self.bytes + line.len() as u64 > self.max_bytes {
            return Ok(false);
        }
        let io = |source| RecordError::Io { path: self.path.clone(), source };
        self.out.write_all(line.as_bytes()).map_err(io)?;
        if self.flush_each_row {
            self.out.flush().map_err(io)?;
        }
        self.width = Some(row.features.len());
        self.bytes += line.len() as u64;
        Ok(true)
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) -> Result<(), RecordError> {
        self.out.flush().map_err(|source| RecordError::Io { path: self.path.clone(), source })
    }
}

/// A symbol or strategy name as a CSV field (quoted when it must be).
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) { format!("\"{}\"", text.replace('"', "\"\"")) } else { text.to_string() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row<'a>(features: &'a [f64], label: Option<f64>) -> RecordRow<'a> {
        RecordRow { time: 60_000, symbol: "BTCUSD", strategy: "s", label, features }
    }

    #[test]
    fn writes_a_header_then_rows_of_one_width_and_stops_at_its_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.csv");
        let mut w = FeatureWriter::create(&path, 90).unwrap();
        assert!(w.write(row(&[1.5, -2.0], Some(1.0))).unwrap());
        assert!(w.write(row(&[0.25, 3.0], None)).unwrap());
        assert!(matches!(w.write(row(&[1.0], None)), Err(RecordError::Width { expected: 2, got: 1, .. })));
        assert!(matches!(w.write(row(&[f64::NAN, 1.0], None)), Err(RecordError::NotFinite(_))));
        assert!(!w.write(row(&[1.0, 2.0], None)).unwrap(), "over 90 bytes: dropped");
        w.flush().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, "time,symbol,strategy,label,f0,f1\n60000,BTCUSD,s,1,1.5,-2\n60000,BTCUSD,s,,0.25,3\n");
        // Appending keeps the width of the rows there.
        let mut again = FeatureWriter::append(&path, 1_000).unwrap();
        assert!(matches!(again.write(row(&[1.0], None)), Err(RecordError::Width { expected: 2, .. })));
        assert!(again.write(row(&[7.0, 8.0], None)).unwrap());
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("60000,BTCUSD,s,,7,8\n"));
    }
}
