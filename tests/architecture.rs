//! The module map of `src/lib.rs` holds: every library module imports only
//! modules listed above it (so there are no import cycles), and the edges
//! design.md rules out by name never appear. Reads the sources (`crate::x`
//! paths and `use crate::{x, …}` groups); unit-test modules may reach anywhere.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The library's modules, lowest first: each may import only those before it.
const LAYERS: &[&str] = &[
    "model",
    "bounded",
    "clock",
    "control",
    "config",
    "data",
    "risk",
    "health",
    "ml",
    "store",
    "activity",
    "exchange",
    "delta",
    "feed",
    "strategy",
    "script",
    "execution",
    "backtest",
    "supervisor",
    "http",
    "telegram",
    "host",
];

/// Edges that must never exist, with the reason.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    ("control", "host", "the control types are the language every edge speaks, below everything"),
    ("control", "supervisor", "the control types may not depend on who answers them"),
    ("http", "host", "the API talks to the host through the control channel only"),
    ("http", "supervisor", "the API talks to the host through the control channel only"),
    ("http", "execution", "the API talks to the host through the control channel only"),
    ("delta", "execution", "the venue reports events; it does not reach into the order manager"),
    ("delta", "store", "the venue takes what it needs from recovery as plain values"),
    ("delta", "feed", "the venue's market events are the exchange module's vocabulary"),
    ("telegram", "store", "the bot reads and changes through the API's operations (http::ops), never directly"),
    ("telegram", "supervisor", "the bot talks to the host through the control channel only"),
    ("telegram", "execution", "the bot talks to the host through the control channel only"),
    ("store", "http", "data knows nothing of the edges"),
    ("ml", "http", "models know nothing of the edges"),
    ("ml", "script", "the predictor interface knows nothing of Rhai"),
    ("data", "http", "data knows nothing of the edges"),
];

/// Top-level library module → the library modules its files import.
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut stack = vec![src.clone()];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
                continue;
            }
            if path.extension().and_then(|e| e.to_str()) != Some("rs") {
                continue;
            }
            let relative = path.strip_prefix(&src).unwrap();
            let top = relative.components().next().unwrap().as_os_str().to_str().unwrap().trim_end_matches(".rs");
            if matches!(top, "main" | "lib" | "cli") {
                continue; // the binary may use the whole library
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let text = text.split("#[cfg(test)]\nmod tests").next().unwrap();
            let found = edges.entry(top.to_string()).or_default();
            found.extend(imports_of(text));
            found.remove(top);
        }
    }
    edges
}

/// The first path segments a source text imports from the crate.
fn imports_of(text: &str) -> BTreeSet<String> {
    let ident =
        |s: &str| -> String { s.trim().chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect() };
    let mut found: BTreeSet<String> = text.match_indices("crate::").map(|(at, _)| ident(&text[at + 7..])).collect();
    for group in text.split("use crate::{").skip(1) {
        found.extend(group.split('}').next().unwrap_or_default().split(',').map(ident));
    }
    found.remove("");
    found
}

#[test]
fn every_module_is_in_the_map_and_imports_only_modules_below_it() {
    let edges = imports();
    let rank = |module: &str| LAYERS.iter().position(|m| *m == module);
    let mut problems = Vec::new();
    for (module, targets) in &edges {
        let Some(own) = rank(module) else {
            problems.push(format!("module `{module}` is not in the map (add it to LAYERS and lib.rs)"));
            continue;
        };
        for target in targets {
            match rank(target) {
                Some(theirs) if theirs > own => {
                    problems.push(format!("`{module}` imports `{target}`, which sits above it in the map"))
                }
                Some(_) => {}
                None if edges.contains_key(target.as_str()) => {
                    problems.push(format!("`{module}` imports `{target}`, which is not in the map"))
                }
                None => {} // a macro or item path, not a module
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn no_edge_design_md_rules_out_exists() {
    let edges = imports();
    let mut problems = Vec::new();
    for (from, to, why) in FORBIDDEN {
        if edges.get(*from).is_some_and(|targets| targets.contains(*to)) {
            problems.push(format!("`{from}` imports `{to}`: {why}"));
        }
    }
    for (module, targets) in &edges {
        if targets.contains("host") {
            problems.push(format!("`{module}` imports `host`: nothing imports the composition root"));
        }
    }
    let control = edges.get("control").cloned().unwrap_or_default();
    assert!(control.iter().all(|m| m == "model"), "control imports only the model, not {control:?}");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_reader_finds_paths_and_use_groups() {
    let text = "use crate::{execution::Oms, store};\nfn f() { crate::host::start(); }";
    assert_eq!(imports_of(text), ["execution", "host", "store"].into_iter().map(String::from).collect());
}
