//! `tradehost new`: a commented strategy template to start from.

use std::path::Path;

const TEMPLATE: &str = include_str!("../strategy_template.rhai");

/// Writes `NAME.rhai` into `dir` (never over an existing file); returns the exit code.
pub fn new_strategy(name: &str, dir: &Path) -> u8 {
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
