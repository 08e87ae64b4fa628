//! Logging for `tradehost run`: human text (colour on a terminal) or one
//! JSON object per line (`--log-format json`), to stdout and optionally to
//! a file rotated daily (`--log-file`, written by a thread of its own behind
//! a 128,000-line queue: a stalled disk drops lines rather than stall trading).
//! Levels per module come from `RUST_LOG` (default `info`).

use std::path::{Path, PathBuf};

use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (timestamp, level, target, fields, message).
    Json,
}

/// The logging flags of `run`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Also write the log to this file, rotated daily (FILE.YYYY-MM-DD).
    #[arg(long, value_name = "FILE")]
    pub log_file: Option<PathBuf>,
}

/// Keeps the file writer's thread running; dropping it flushes the file.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

fn layer<S, W>(format: LogFormat, writer: W, ansi: bool) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    match format {
        LogFormat::Text => fmt.with_ansi(ansi).boxed(),
        LogFormat::Json => fmt.json().flatten_event(true).with_current_span(false).boxed(),
    }
}

/// Installs the global logger; an unusable log file is an error naming it.
pub fn init(args: &LogArgs) -> Result<LogGuard, String> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let mut layers = vec![layer(args.log_format, std::io::stdout, terminal)];
    let mut guard = None;
    if let Some(path) = &args.log_file {
        let appender = rolling_file(path)?;
        let (writer, worker) =
            tracing_appender::non_blocking::NonBlockingBuilder::default().lossy(true).finish(appender);
        layers.push(layer(args.log_format, writer, false));
        guard = Some(worker);
    }
    tracing_subscriber::registry().with(layers).with(filter).init();
    Ok(LogGuard(guard))
}

/// A daily-rotated file `path.YYYY-MM-DD` in `path`'s folder (created if missing).
fn rolling_file(path: &Path) -> Result<tracing_appender::rolling::RollingFileAppender, String> {
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        return Err(format!("--log-file {}: not a file name", path.display()));
    };
    tracing_appender::rolling::Builder::new()
        .rotation(tracing_appender::rolling::Rotation::DAILY)
        .filename_prefix(name.to_string_lossy())
        .build(folder)
        .map_err(|e| format!("--log-file {}: {e}", path.display()))
}
