//! The `tradehost` command line: parses arguments, sets up logging and calls
//! into the library. Exit codes: 0 clean, 1 runtime failure, 2 bad usage or
//! bad config, 130 after a forced second signal.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[macro_use]
mod cli;

use cli::{backtest, client};

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
        /// Delta's real market with simulated fills: no API key, no order sent (sets `exchange.dry_run`).
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        logging: cli::logging::LogArgs,
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
    /// With --live, run four validations against a running host (integrations, synchronization,
    /// real-time, data consistency); exits 0 when all are OK, 1 on a WARN, 2 on a FAIL.
    Doctor {
        /// Ask the running host through its API instead of reading a stopped host's data folder.
        #[arg(long)]
        live: bool,
        /// Print the --live results as JSON.
        #[arg(long, requires = "live")]
        json: bool,
        /// How long --live waits for a live event on the WebSocket stream, in seconds.
        #[arg(long, default_value_t = 10, requires = "live")]
        event_wait: u64,
        #[command(flatten)]
        target: Target,
    },
    /// Ask a running host whether it is ready (`GET /api/v1/health`, no token needed): prints its
    /// status and exits 0 when ready, 1 otherwise (container health checks, scripts).
    Health {
        /// Control API address (default: `http.bind` of the config, 127.0.0.1:8080).
        #[arg(long)]
        http: Option<SocketAddr>,
        /// Config file, for `http.bind`.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print a shell completion script (e.g. `tradehost completions bash > /etc/bash_completion.d/tradehost`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page in roff (e.g. `tradehost man > tradehost.1; man ./tradehost.1`).
    Man,
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
    /// The kill switch: halt the account, cancel every open order (and with --flatten close every position).
    Kill {
        #[command(flatten)]
        target: Target,
        /// Also close every position with reduce-only market orders.
        #[arg(long)]
        flatten: bool,
    },
    /// Let only position-reducing orders out (the account, or one strategy with --strategy).
    Pause {
        #[command(flatten)]
        target: Target,
        /// One strategy instead of the account.
        #[arg(long)]
        strategy: Option<String>,
    },
    /// Let every order the limits allow out again (the account, or one strategy with --strategy).
    Resume {
        #[command(flatten)]
        target: Target,
        /// One strategy instead of the account.
        #[arg(long)]
        strategy: Option<String>,
    },
    /// Replay a strategy over historical bars with the live runtime and print a report.
    Backtest(Box<backtest::BacktestArgs>),
    /// Candle history in the store: fetch from Delta Exchange, list, export to CSV, verify.
    Data {
        #[command(subcommand)]
        command: cli::data::DataCommand,
    },
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
        Command::Run { config, strategies, data_dir, http, dry_run, logging } => {
            cli::run::run(config.as_deref(), strategies, data_dir, http, dry_run, &logging)
        }
        Command::Check { files, config } => cli::check::check_files(&files, config.as_deref()),
        Command::New { name, strategies } => cli::new::new_strategy(&name, &strategies),
        Command::Doctor { live: true, json, event_wait, target } => {
            cli::live_doctor::run(target, json, std::time::Duration::from_secs(event_wait))
        }
        Command::Doctor { live: false, target, .. } => cli::doctor::doctor(target.config.as_deref(), target.data_dir),
        Command::Health { http, config } => client::health(http, config.as_deref()),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "tradehost",
                &mut std::io::stdout(),
            );
            0
        }
        Command::Man => {
            match clap_mangen::Man::new(<Cli as clap::CommandFactory>::command()).render(&mut std::io::stdout()) {
                Ok(()) => 0,
                Err(error) => {
                    eprintln!("error: {error}");
                    1
                }
            }
        }
        Command::Backtest(args) => backtest::run(*args),
        Command::Data { command } => cli::data::run(command),
        Command::Token { rotate, config, data_dir } => cli::token::token(rotate, config.as_deref(), data_dir),
        Command::Status { target, json } => client::run(target, client::Action::Status { json }),
        Command::Stop { target, wait } => client::run(target, client::Action::Stop { wait_s: wait }),
        Command::Kill { target, flatten } => client::run(target, client::Action::Kill { flatten }),
        Command::Pause { target, strategy } => {
            client::run(target, client::Action::Trading { state: "reduce_only", strategy })
        }
        Command::Resume { target, strategy } => {
            client::run(target, client::Action::Trading { state: "resume", strategy })
        }
    };
    ExitCode::from(code)
}
