//! The binary's commands other than argument parsing: one file per command.

#[macro_use]
pub mod out;
pub mod backtest;
pub mod check;
pub mod client;
pub mod data;
pub mod doctor;
pub mod live_doctor;
pub mod logging;
pub mod new;
pub mod run;
pub mod token;

use std::path::Path;

use tradehost::config::Config;

/// Loads the config file (or the embedded default) with environment
/// overrides; prints the problem and returns exit code 2 when it is bad.
pub fn load_config(path: Option<&Path>) -> Result<Config, u8> {
    let mut config = Config::load(path).map_err(|error| {
        eprintln!("error: bad config: {error}");
        2
    })?;
    config.apply_env(|key| std::env::var(key).ok());
    Ok(config)
}
