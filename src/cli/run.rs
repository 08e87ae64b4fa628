//! `tradehost run`: the host in the foreground until a signal or a fatal error.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use tradehost::host;

use super::load_config;

/// Loads the config with the command line's overrides, sets up logging and
/// runs the host; returns the process exit code.
pub fn run(
    config: Option<&Path>,
    strategies: Option<PathBuf>,
    data_dir: Option<PathBuf>,
    http: Option<SocketAddr>,
    dry_run: bool,
    logging: &super::logging::LogArgs,
) -> u8 {
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
    // The flags are checked like the file (`--http 0.0.0.0:8080` needs a token).
    let problems = config.problems();
    if !problems.is_empty() {
        for problem in problems {
            eprintln!("error: bad config: {problem}");
        }
        return 2;
    }
    if dry_run {
        if config.exchange.kind != tradehost::config::ExchangeKind::Delta {
            eprintln!(
                "error: --dry-run trades on Delta's market: set exchange.kind = \"delta\" and exchange.delta.symbols in the config (no API key needed)"
            );
            return 2;
        }
        config.exchange.dry_run = true;
    }
    let _log = match super::logging::init(logging) {
        Ok(guard) => guard,
        Err(message) => {
            eprintln!("error: {message}");
            return 2;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("tradehost-worker").build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return 1;
        }
    };
    runtime.block_on(async {
        let host = match host::start(config).await {
            Ok(host) => host,
            Err(error) => {
                eprintln!("error: {error}");
                return error.exit_code() as u8;
            }
        };
        host::spawn_signal_handler(host.control());
        print_dashboard_address(host.http_addr(), host.api_token().expose());
        host.wait().await as u8
    })
}

/// Prints where the dashboard is. On a terminal the address carries the
/// token (the page keeps it and drops it from the address bar), as Jupyter
/// does; anywhere else (a log file, the journal) it does not.
fn print_dashboard_address(addr: SocketAddr, token: &str) {
    let with_token = reqwest::Url::parse_with_params(&format!("http://{addr}/"), [("token", token)]);
    if let (true, Ok(url)) = (std::io::IsTerminal::is_terminal(&std::io::stdout()), with_token) {
        println!("dashboard: {url}");
    } else {
        println!("dashboard: http://{addr}/ (the API token: `tradehost token`)");
    }
}
