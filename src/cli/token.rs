//! `tradehost token`: prints the API token, or rotates it while the host is stopped.

use std::path::{Path, PathBuf};

use super::load_config;

/// Prints (or with `rotate` replaces) the token; returns the exit code.
pub fn token(rotate: bool, config_path: Option<&Path>, data_dir: Option<PathBuf>) -> u8 {
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
