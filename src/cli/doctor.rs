//! `tradehost doctor`: checks config, strategies, the store and the
//! exchange without a running host (`--live` asks a running one instead).

use std::path::{Path, PathBuf};

use tradehost::config::Config;

use super::check::{check_overrides, check_scripts};

/// Prints one line per check; returns 1 on any FAIL.
pub fn doctor(config_path: Option<&Path>, data_dir: Option<PathBuf>) -> u8 {
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
            let files: Vec<PathBuf> = found.files.values().map(|f| f.path.clone()).collect();
            outln!("OK    strategies folder {}: {} strategies", dir.display(), files.len());
            for path in &found.ignored {
                outln!(
                    "WARN  {}: ignored (a strategy file's name is 1 to 64 letters, digits, `_` or `-`)",
                    path.display()
                );
            }
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
        // Opening checks every entry read-only first; the invariants check runs on what opened.
        // A panic inside the store library is damage, never a crash of `doctor`.
        let data_dir = config.data_dir.clone();
        let checked = std::panic::catch_unwind(move || {
            tradehost::store::Store::open(&data_dir).and_then(|store| tradehost::store::check(&store))
        });
        Some(checked.unwrap_or_else(|payload| {
            Err(tradehost::store::StoreError::Damaged {
                path: config.data_dir.join(tradehost::store::DB_FILE),
                detail: format!("reading it failed: {}", tradehost::health::panic_message(payload)),
            })
        }))
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
