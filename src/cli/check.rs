//! `tradehost check`: compiles strategy scripts and checks them (and, with
//! `--config`, their overrides and market) without starting anything.

use std::path::{Path, PathBuf};

use tradehost::config::Config;
use tradehost::script::{ScriptOptions, check};

use super::load_config;

/// Checks the files; returns the exit code (1 on any error).
pub fn check_files(files: &[PathBuf], config_path: Option<&Path>) -> u8 {
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
pub fn check_overrides(files: &[PathBuf], config: &Config) -> bool {
    let mut names: Vec<String> = tradehost::supervisor::scan(&config.strategies.dir)
        .map(|found| found.files.into_keys().collect())
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
pub fn check_scripts(files: &[PathBuf], config: &Config, strict: bool) -> bool {
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
            panicking_function: false,
            ml: Default::default(),
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
