//! Typed configuration: TOML parsed into immutable structs with
//! `deny_unknown_fields`, then validated with every problem reported at once
//! under its key path. Secrets may also come from the environment and are
//! redacted in `Debug` output.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod market;
mod ml;
mod risk;
mod sections;
mod telegram;
mod validate;

pub use market::{
    DeltaConfig, DeltaNetwork, ExchangeConfig, ExchangeKind, FeedConfig, FeedKind, PaperConfig, ProductConfig,
    ReplayConfig, SyntheticConfig,
};
pub use ml::{MAX_MODEL_INPUTS, MlConfig, ModelConfig, ModelOutput, valid_model_name};
pub use risk::{LosingStreak, RiskLimits};
pub use sections::{
    HealthConfig, HttpConfig, SandboxConfig, ShutdownConfig, ShutdownPolicy, StoreConfig, StrategiesConfig,
    StrategyOverride, SupervisorConfig,
};
pub use telegram::{NotifyKind, TelegramConfig};

/// The configuration embedded in the binary (also `config/default.toml`).
pub const DEFAULT_TOML: &str = include_str!("../../config/default.toml");

/// One problem found in a configuration, with the key it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Dotted key path, e.g. `feed.synthetic.speed`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}`: {}", self.key, self.message)
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// File path.
        path: PathBuf,
        /// Underlying error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema.
    #[error("{origin}:{}", problems.iter().map(|p| format!("\n  {p}")).collect::<String>())]
    Invalid {
        /// File path or `embedded default`.
        origin: String,
        /// Every problem found.
        problems: Vec<ConfigProblem>,
    },
}

/// A secret string: never printed by `Debug` or `Display`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("<redacted>")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The whole host configuration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Where the host keeps its state.
    pub data_dir: PathBuf,
    /// Strategy discovery and per-strategy overrides.
    pub strategies: StrategiesConfig,
    /// Script sandbox limits.
    pub sandbox: SandboxConfig,
    /// Restart, backoff and quarantine rules.
    pub supervisor: SupervisorConfig,
    /// Ordered shutdown deadlines.
    pub shutdown: ShutdownConfig,
    /// Which exchange to trade on.
    pub exchange: ExchangeConfig,
    /// Where market data comes from.
    pub feed: FeedConfig,
    /// Control API.
    pub http: HttpConfig,
    /// Durable state.
    pub store: StoreConfig,
    /// Pre-trade limits of the account.
    pub risk: RiskLimits,
    /// The Telegram bot.
    pub telegram: TelegramConfig,
    /// ONNX models scripts call with `ml::predict`.
    pub ml: MlConfig,
    /// The health file.
    pub health: HealthConfig,
    /// Faults injected by tests; never read from a file.
    #[serde(skip)]
    pub faults: Faults,
}

/// Faults a test injects on purpose to check that the host survives a
/// failing task; never read from a config file (tests set them in code).
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// How many more times the market feed task panics as it starts (shared by its restarts).
    pub feed_panics: std::sync::Arc<std::sync::atomic::AtomicU32>,
    /// The engine task panics as it starts.
    pub engine_panics: bool,
    /// Scripts get `test::panic(message)`, a host function that panics.
    pub panicking_function: bool,
    /// Every store commit waits this long before it starts (0: none).
    pub commit_delay_ms: u64,
    /// While set, WebSocket clients stay connected but get no live events
    /// (a stream that looks connected and delivers nothing).
    pub ws_silent: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Faults {
    /// Panics if a feed panic is still due (the market feed task calls it as it starts).
    pub fn feed_step(&self) {
        use std::sync::atomic::Ordering;
        let due = self.feed_panics.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
        assert!(!due, "injected fault: the market feed panicked");
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("data"),
            strategies: StrategiesConfig::default(),
            sandbox: SandboxConfig::default(),
            supervisor: SupervisorConfig::default(),
            shutdown: ShutdownConfig::default(),
            exchange: ExchangeConfig::default(),
            feed: FeedConfig::default(),
            http: HttpConfig::default(),
            store: StoreConfig::default(),
            risk: RiskLimits::default(),
            telegram: TelegramConfig::default(),
            ml: MlConfig::default(),
            health: HealthConfig::default(),
            faults: Faults::default(),
        }
    }
}

impl Config {
    /// Where the health file goes, when it is written.
    pub fn health_file(&self) -> Option<PathBuf> {
        self.health.write_file.then(|| self.health.file.clone().unwrap_or_else(|| self.data_dir.join("health.json")))
    }

    /// The embedded default configuration.
    pub fn embedded() -> Config {
        Config::parse(DEFAULT_TOML, "embedded default").expect("embedded default config is valid")
    }

    /// Loads a file, or the embedded default when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        match path {
            None => Config::parse(DEFAULT_TOML, "embedded default"),
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
                Config::parse(&text, &path.display().to_string())
            }
        }
    }

    /// Parses and validates TOML text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let invalid = |problems| ConfigError::Invalid { origin: origin.to_string(), problems };
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| invalid(vec![ConfigProblem { key: "(document)".into(), message: toml_message(&e, text) }]))?;
        let config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let key = e.path().to_string();
            let mut message = toml_message(e.inner(), text);
            if is_secret_key(&key) {
                message = redact_quoted(&message);
            }
            invalid(vec![ConfigProblem { key, message }])
        })?;
        let problems = config.problems();
        if problems.is_empty() { Ok(config) } else { Err(invalid(problems)) }
    }

    /// Applies secrets from the environment (`TRADEHOST_API_TOKEN`,
    /// `TRADEHOST_DELTA_API_KEY`, `TRADEHOST_DELTA_API_SECRET`, `TRADEHOST_TELEGRAM_TOKEN`).
    pub fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) {
        if let Some(token) = env("TRADEHOST_API_TOKEN").filter(|t| !t.is_empty()) {
            self.http.token = Some(Secret::new(token));
        }
        if let Some(key) = env("TRADEHOST_DELTA_API_KEY").filter(|t| !t.is_empty()) {
            self.exchange.delta.api_key = Some(Secret::new(key));
        }
        if let Some(secret) = env("TRADEHOST_DELTA_API_SECRET").filter(|t| !t.is_empty()) {
            self.exchange.delta.api_secret = Some(Secret::new(secret));
        }
        if let Some(token) = env("TRADEHOST_TELEGRAM_TOKEN").filter(|t| !t.is_empty()) {
            self.telegram.token = Some(Secret::new(token));
        }
    }

    /// Symbols the configured feed produces.
    pub fn feed_symbols(&self) -> Vec<String> {
        if self.exchange.kind == ExchangeKind::Delta {
            return self.exchange.delta.symbols.clone();
        }
        match self.feed.kind {
            FeedKind::Synthetic => self.feed.synthetic.start_prices.keys().cloned().collect(),
            FeedKind::Replay => vec![self.feed.replay.symbol.clone()],
        }
    }

    /// The sandbox limits and quotas of a strategy: `[sandbox]` with its
    /// `[strategies.overrides.NAME.sandbox]` keys (checked at load).
    pub fn sandbox_for(&self, name: &str) -> SandboxConfig {
        self.strategy_override(name)
            .and_then(|o| self.sandbox.merged(&o.sandbox).ok())
            .unwrap_or_else(|| self.sandbox.clone())
    }

    /// The override section for a strategy, if any.
    pub fn strategy_override(&self, name: &str) -> Option<&StrategyOverride> {
        self.strategies.overrides.get(name)
    }
}

/// Whether a config key path names a secret, whose value an error must not show.
fn is_secret_key(path: &str) -> bool {
    let last = path.rsplit('.').next().unwrap_or(path);
    matches!(last, "api_key" | "api_secret" | "token")
}

/// Replaces every `quoted` value in a deserializer message (serde quotes the
/// offending value in backticks) with `<redacted>`.
fn redact_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut parts = message.split('`');
    if let Some(first) = parts.next() {
        out.push_str(first);
    }
    let mut inside = true;
    for part in parts {
        out.push_str(if inside { "`<redacted>`" } else { part });
        inside = !inside;
    }
    out
}

fn toml_message(error: &toml::de::Error, text: &str) -> String {
    let message = error.message().trim_end().to_string();
    match error.span() {
        Some(span) => {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{message} (line {line}, column {column})")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrong_typed_secret_is_not_echoed() {
        for value in ["12345678901", "[\"hunter2hunter2\"]", "{ s = \"hunter2hunter2\" }", "1.5e3"] {
            let text = format!("[exchange.delta]\napi_secret = {value}\n[http]\ntoken = {value}\n");
            let error = Config::parse(&text, "t.toml").unwrap_err().to_string();
            assert!(error.contains("api_secret"), "{error}");
            for secret in ["12345678901", "hunter2", "1.5e3", "1500"] {
                assert!(!error.contains(secret), "{value}: {error}");
            }
        }
        // Other keys keep the value: it helps and is not secret.
        let error = Config::parse("[http]\nbind = 12345\n", "t.toml").unwrap_err().to_string();
        assert!(error.contains("12345"), "{error}");
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::embedded();
        assert!(!config.feed_symbols().is_empty());
    }

    #[test]
    fn default_toml_matches_the_built_in_defaults() {
        assert_eq!(format!("{:?}", Config::embedded()), format!("{:?}", Config::default()));
    }

    /// Every key of the configuration appears in config/default.toml, set or
    /// commented out, with a comment line right above it.
    #[test]
    fn default_toml_documents_every_key() {
        let value = toml::Value::try_from(Config::default()).unwrap();
        let mut keys = Vec::new();
        collect_leaf_keys(&value, &mut keys);
        keys.push("token".into());
        let lines: Vec<&str> = DEFAULT_TOML.lines().collect();
        for key in keys {
            let found = lines.iter().enumerate().find(|(_, line)| {
                let line = line.trim_start_matches('#').trim_start();
                line.starts_with(&format!("{key} =")) || line.starts_with(&format!("{key}="))
            });
            let (index, _) = found.unwrap_or_else(|| panic!("key `{key}` is not in config/default.toml"));
            assert!(index > 0 && lines[index - 1].trim_start().starts_with('#'), "key `{key}` has no comment above it");
        }
    }

    fn collect_leaf_keys(value: &toml::Value, out: &mut Vec<String>) {
        if let toml::Value::Table(table) = value {
            for (key, child) in table {
                if child.is_table() {
                    collect_leaf_keys(child, out);
                } else {
                    out.push(key.clone());
                }
            }
        }
    }

    #[test]
    fn secrets_are_redacted() {
        let mut config = Config::embedded();
        config.apply_env(|k| (k == "TRADEHOST_API_TOKEN").then(|| "hunter2".to_string()));
        assert_eq!(config.http.token.as_ref().unwrap().expose(), "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn delta_networks_choose_urls_and_channel_names() {
        let text = "[exchange]\nkind = \"delta\"\n[exchange.delta]\nnetwork = \"global\"\nsymbols = [\"BTCUSDT\"]\n";
        let mut config = Config::parse(text, "t.toml").unwrap();
        let delta = &config.exchange.delta;
        assert_eq!(delta.urls().0, "https://api.delta.exchange");
        assert!(delta.network.is_production() && delta.uses_legacy_channels());
        assert_eq!(config.feed_symbols(), ["BTCUSDT"]);
        config.apply_env(|k| match k {
            "TRADEHOST_DELTA_API_KEY" => Some("key-1".into()),
            "TRADEHOST_DELTA_API_SECRET" => Some("secret-1".into()),
            _ => None,
        });
        assert_eq!(config.exchange.delta.api_secret.as_ref().unwrap().expose(), "secret-1");
        assert!(!format!("{config:?}").contains("secret-1"), "secrets never print");
        let india = Config::parse("[exchange.delta]\nnetwork = \"india-testnet\"\n", "t.toml").unwrap();
        assert!(!india.exchange.delta.uses_legacy_channels() && !india.exchange.delta.network.is_production());
        let err = Config::parse("[exchange]\nkind = \"delta\"\n[exchange.delta]\nnetwork = \"mars\"\n", "t.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("exchange.delta.network"), "{err}");
        let err = Config::parse(
            "[exchange]\nkind = \"delta\"\n[exchange.delta]\nsymbols = []\nrest_url = \"ftp://x\"\nreconnect_max_ms = 1\n",
            "t.toml",
        )
        .unwrap_err()
        .to_string();
        for key in ["exchange.delta.symbols", "exchange.delta.rest_url", "exchange.delta.reconnect_max_ms"] {
            assert!(err.contains(key), "{key} in {err}");
        }
    }

    #[test]
    fn all_semantic_problems_are_reported_at_once() {
        let text = "[exchange.paper]\nleverage = 0\n[sandbox]\nmax_operations = 0\n";
        let err = Config::parse(text, "t.toml").unwrap_err().to_string();
        assert!(err.contains("exchange.paper.leverage"), "{err}");
        assert!(err.contains("sandbox.max_operations"), "{err}");
    }

    #[test]
    fn bad_risk_limits_name_their_keys() {
        let text = "[risk]\nmax_order_size = \"-1\"\nday_start_utc_hour = 24\n[risk.losing_streak]\ntrades = 0\nwindow_minutes = 5\ncooldown_minutes = 5\n[strategies.overrides.a.risk]\nmax_open_orders = 0\n";
        let err = Config::parse(text, "t.toml").unwrap_err().to_string();
        for key in [
            "risk.max_order_size",
            "risk.day_start_utc_hour",
            "risk.losing_streak.trades",
            "strategies.overrides.a.risk.max_open_orders",
        ] {
            assert!(err.contains(key), "{key} in {err}");
        }
        let err = Config::parse("[risk]\nmax_open_orders = \"many\"\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_open_orders"), "{err}");
        let err = Config::parse("[risk]\nmax_order_sise = 1\n", "t.toml").unwrap_err().to_string();
        assert!(err.contains("max_order_sise"), "{err}");
        let ok = Config::parse("[risk]\nmax_order_size = \"0.5\"\nmax_orders_per_second = 5\n", "t.toml").unwrap();
        assert_eq!(ok.risk.max_order_size, Some(rust_decimal::Decimal::new(5, 1)));
    }
}
