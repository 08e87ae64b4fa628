//! The `tradehost` command line: parses arguments, sets up logging and calls
//! into the library. Exit codes: 0 clean, 1 runtime failure, 2 bad usage or
//! bad config, 130 after a forced second signal.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tradehost::config::Config;
use tradehost::script::{ScriptOptions, check};
use tradehost::supervisor;

#[macro_use]
mod out;
mod backtest_cmd;
mod client;

const TEMPLATE: &str = include_str!("strategy_template.rhai");

#[derive(Parser)]
#[command(
    name = "tradehost",
    version,
    about = "Run trading strategies written as Rhai scripts: sandboxed, hot-reloaded, supervised."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the host: strategies from the strategies folder trade on the configured exchange (paper by default).
    Run {
        /// Config file (TOML); without it the embedded default applies.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Strategies folder (overrides `strategies.dir`).
        #[arg(long)]
        strategies: Option<PathBuf>,
        /// Data folder (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Control API address (overrides `http.bind`).
        #[arg(long)]
        http: Option<SocketAddr>,
    },
    /// Compile and check strategy scripts; prints file:line:col errors and exits 1 on any error.
    Check {
        /// Script files.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Config file for sandbox limits, symbols and param overrides.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Check config, strategies and the store (integrity: positions equal the sum of fills,
    /// every fill's order exists, activity numbering has no gaps); exits 1 on any FAIL.
    Doctor {
        /// Ask the running host instead: its components, strategies and clock.
        #[arg(long)]
        live: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Ask a running host for its health, strategies and positions.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
    },
    /// Gracefully shut down a running host and wait until it has exited.
    Stop {
        #[command(flatten)]
        target: Target,
        /// How long to wait for the host to exit, in seconds.
        #[arg(long, default_value_t = 60)]
        wait: u64,
    },
    /// Replay a strategy over historical bars with the live runtime and print a report.
    Backtest(Box<backtest_cmd::BacktestArgs>),
    /// Print the API token the host uses (from <data-dir>/api-token), or replace it with --rotate.
    Token {
        /// Write a new token (refused while the host runs: stop it first).
        #[arg(long)]
        rotate: bool,
        /// Config file, for `data_dir`.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Data folder (overrides `data_dir`).
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Create a commented strategy template NAME.rhai in the strategies folder.
    New {
        /// Strategy name: letters, digits and underscores.
        name: String,
        /// Strategies folder.
        #[arg(long, default_value = "strategies")]
        strategies: PathBuf,
    },
}

/// Which host to talk to and how to authenticate.
#[derive(clap::Args)]
struct Target {
    /// Control API address (default: `http.bind` of the config, 127.0.0.1:8080).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// API token (default: TRADEHOST_API_TOKEN, else <data-dir>/api-token).
    #[arg(long, env = "TRADEHOST_API_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Config file, for `http.bind` and `data_dir`.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Data folder holding the generated api-token.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

fn main() -> ExitCode {
    // One TLS crypto provider for every client (reqwest and the WebSocket streams).
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Run { config, strategies, data_dir, http } => run(config.as_deref(), strategies, data_dir, http),
        Command::Check { files, config } => check_files(&files, config.as_deref()),
        Command::New { name, strategies } => new_strategy(&name, &strategies),
        Command::Doctor { live: true, target } => client::run(target, client::Action::Doctor),
        Command::Doctor { live: false, target } => doctor(target.config.as_deref(), target.data_dir),
        Command::Backtest(args) => backtest_cmd::run(*args),
        Command::Token { rotate, config, data_dir } => token(rotate, config.as_deref(), data_dir),
        Command::Status { target, json } => client::run(target, client::Action::Status { json }),
        Command::Stop { target, wait } => client::run(target, client::Action::Stop { wait_s: wait }),
    };
    ExitCode::from(code)
}

fn load_config(path: Option<&Path>) -> Result<Config, u8> {
    let mut config = Config::load(path).map_err(|error| {
        eprintln!("error: bad config: {error}");
        2
    })?;
    config.apply_env(|key| std::env::var(key).ok());
    Ok(config)
}

fn run(config: Option<&Path>, strategies: Option<PathBuf>, data_dir: Option<PathBuf>, http: Option<SocketAddr>) -> u8 {
    let mut config = match load_config(config) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if let Some(dir) = strategies {
        config.strategies.dir = dir;
    }
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = http {
        config.http.bind = addr;
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tradehost-worker").build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(async {
        let host = match supervisor::start(config).await {
            Ok(host) => host,
            Err(error) => {
                eprintln!("error: {error}");
                return error.exit_code() as u8;
            }
        };
        supervisor::spawn_signal_handler(host.control());
        host.wait().await as u8
    })
}

fn check_files(files: &[PathBuf], config_path: Option<&Path>) -> u8 {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    let mut ok = check_scripts(files, &config, config_path.is_some());
    if config_path.is_some() {
        ok &= check_overrides(files, &config);
    }
    u8::from(!ok)
}

/// With a config: every `[strategies.overrides.NAME]` must name a strategy in
/// the strategies folder or among the files checked; true if all do.
fn check_overrides(files: &[PathBuf], config: &Config) -> bool {
    let mut names: Vec<String> = tradehost::supervisor::scan(&config.strategies.dir)
        .map(|found| found.into_keys().collect())
        .unwrap_or_default();
    names.extend(files.iter().filter_map(|f| f.file_stem().and_then(|s| s.to_str()).map(str::to_string)));
    let mut ok = true;
    for name in config.strategies.overrides.keys().filter(|n| !names.contains(n)) {
        ok = false;
        eprintln!(
            "error: `strategies.overrides.{name}`: there is no strategy {name} in {} (strategies: {})",
            config.strategies.dir.display(),
            if names.is_empty() { "none".to_string() } else { names.join(", ") }
        );
    }
    ok
}

/// Checks scripts, printing one line each; true if all are fine. With
/// `strict` (a config was given), a strategy the configured market cannot
/// feed is an error; otherwise a note.
fn check_scripts(files: &[PathBuf], config: &Config, strict: bool) -> bool {
    let feed_symbols = config.feed_symbols();
    let base = match (config.exchange.kind, config.feed.kind) {
        (tradehost::config::ExchangeKind::Delta, _) => Some(tradehost::data::Timeframe::minute()),
        (_, tradehost::config::FeedKind::Synthetic) => {
            Some(tradehost::data::Timeframe::from_ms(config.feed.synthetic.tick_interval_ms as i64))
        }
        (_, tradehost::config::FeedKind::Replay) => {
            let replay = &config.feed.replay;
            let candles = tradehost::feed::csv::read_candles(&replay.path, &replay.symbol).ok();
            candles.and_then(|c| tradehost::feed::csv::interval_ms(&c)).map(tradehost::data::Timeframe::from_ms)
        }
    };
    let mut failed = false;
    for file in files {
        let name = file.file_stem().and_then(|s| s.to_str()).unwrap_or_default();
        let options = ScriptOptions {
            limits: config.sandbox.clone(),
            param_overrides: config.strategy_override(name).map(|o| o.params.clone()).unwrap_or_default(),
            default_symbols: config.feed_symbols(),
        };
        let shown = file.display().to_string();
        let result = std::fs::read_to_string(file)
            .map_err(|e| format!("{shown}: cannot read: {e}"))
            .and_then(|source| check(&shown, &source, &options).map_err(|e| e.to_string()));
        match result {
            Ok(meta) => match tradehost::supervisor::market_gap(&meta, &feed_symbols, base) {
                None => outln!("{shown}: ok (symbols {:?}, timeframe {})", meta.symbols, meta.timeframe),
                Some(gap) => {
                    let what = format!("{shown}: {}{}", if gap.idle { "idle: " } else { "" }, gap.reason);
                    if strict && gap.idle {
                        failed = true;
                        eprintln!("error: {what}");
                    } else if strict {
                        outln!("{what}");
                    } else {
                        outln!("{what}; with --config, this is checked against your market");
                    }
                }
            },
            Err(message) => {
                failed = true;
                eprintln!("{message}");
            }
        }
    }
    !failed
}

fn doctor(config_path: Option<&Path>, data_dir: Option<PathBuf>) -> u8 {
    let mut config = match Config::load(config_path) {
        Ok(config) => {
            outln!("OK    config: {}", config_path.map_or("embedded default".to_string(), |p| p.display().to_string()));
            config
        }
        Err(error) => {
            outln!("FAIL  config: {error}");
            return 1;
        }
    };
    if let Some(dir) = data_dir {
        config.data_dir = dir;
    }
    config.apply_env(|key| std::env::var(key).ok());
    let mut healthy = true;
    let dir = &config.strategies.dir;
    match tradehost::supervisor::scan(dir) {
        Ok(found) => {
            let files: Vec<PathBuf> = found.values().map(|(path, _)| path.clone()).collect();
            outln!("OK    strategies folder {}: {} strategies", dir.display(), files.len());
            healthy &= check_scripts(&files, &config, true);
            healthy &= check_overrides(&[], &config);
        }
        Err(error) => {
            outln!("FAIL  strategies folder {}: {error}", dir.display());
            healthy = false;
        }
    }
    let running = tradehost::store::running_host(&config.data_dir);
    let store = if let Some(holder) = &running {
        outln!(
            "--    store {}: the host is running ({holder}) and holds it; use `tradehost doctor --live` to ask it",
            config.data_dir.display()
        );
        None
    } else if !config.data_dir.is_dir() {
        outln!(
            "--    store: the data folder {} does not exist, nothing to check (the host creates it on its first start; check `data_dir` or --data-dir)",
            config.data_dir.display()
        );
        None
    } else {
        Some(tradehost::store::Store::open(&config.data_dir).and_then(|store| tradehost::store::check(&store)))
    };
    if let Some(result) = store {
        match result {
            Ok(report) if report.problems.is_empty() => outln!(
                "OK    store {}: {} orders, {} fills, {} activity events; positions match fills",
                config.data_dir.display(),
                report.orders,
                report.fills,
                report.activity
            ),
            Ok(report) => {
                healthy = false;
                for problem in report.problems {
                    outln!("FAIL  store: {problem}");
                }
            }
            Err(error) => {
                healthy = false;
                outln!("FAIL  store: {error}");
            }
        }
    }
    match config.exchange.kind {
        tradehost::config::ExchangeKind::Paper => outln!("OK    exchange: paper (no connection to check)"),
        tradehost::config::ExchangeKind::Delta => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("tokio runtime");
            for check in runtime.block_on(tradehost::delta::doctor::run(&config.exchange.delta)) {
                healthy &= check.ok;
                outln!("{}  delta {}: {}", if check.ok { "OK  " } else { "FAIL" }, check.name, check.detail);
            }
        }
    }
    u8::from(!healthy)
}

fn token(rotate: bool, config_path: Option<&Path>, data_dir: Option<PathBuf>) -> u8 {
    let config = match load_config(config_path) {
        Ok(config) => config,
        Err(code) => return code,
    };
    if config.http.token.is_some() && data_dir.is_none() {
        eprintln!("note: the config (or TRADEHOST_API_TOKEN) sets the token; the file below is used only without it");
    }
    let dir = data_dir.unwrap_or(config.data_dir);
    let path = dir.join("api-token");
    if !rotate {
        return match std::fs::read_to_string(&path) {
            Ok(token) => {
                outln!("{}", token.trim());
                0
            }
            Err(error) => {
                eprintln!(
                    "error: no token at {} ({error}); the host writes one on its first start, or run `tradehost token --rotate`",
                    path.display()
                );
                1
            }
        };
    }
    if let Some(holder) = tradehost::store::running_host(&dir) {
        // The host would keep the old token while `status` and `stop` read the new one.
        eprintln!(
            "error: the host is running ({holder}); stop it first (`tradehost stop`), then rotate the token and start it again"
        );
        return 1;
    }
    if let Err(error) = std::fs::create_dir_all(&dir) {
        eprintln!("error: cannot create {}: {error}", dir.display());
        return 1;
    }
    let token = tradehost::http::generate_token();
    if let Err(error) = tradehost::http::write_token_file(&path, &token) {
        eprintln!("error: cannot write {}: {error}", path.display());
        return 1;
    }
    outln!("{token}");
    eprintln!("wrote a new token to {}; the host uses it from its next start", path.display());
    0
}

fn new_strategy(name: &str, dir: &Path) -> u8 {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        eprintln!("error: strategy name {name:?} must use only letters, digits and underscores");
        return 2;
    }
    let path = dir.join(format!("{name}.rhai"));
    if path.exists() {
        eprintln!("error: {} already exists", path.display());
        return 1;
    }
    let written = std::fs::create_dir_all(dir).and_then(|_| std::fs::write(&path, TEMPLATE.replace("{{name}}", name)));
    match written {
        Ok(()) => {
            outln!("created {}", path.display());
            0
        }
        Err(error) => {
            eprintln!("error: cannot write {}: {error}", path.display());
            1
        }
    }
}
