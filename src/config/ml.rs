//! `[ml]`: the ONNX models scripts may call, how each is read and checked,
//! and where `ml::record` rows go in a live host.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::ConfigProblem;

/// Widest feature vector a model may take.
pub const MAX_MODEL_INPUTS: usize = 4_096;

/// `[ml]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MlConfig {
    /// The models, by the name scripts call them with.
    pub models: BTreeMap<String, ModelConfig>,
    /// Predictions each strategy keeps per model; the oldest go first.
    pub cache_entries: usize,
    /// A live host appends each strategy's `ml::record` rows to
    /// `<record_dir>/<strategy>.csv` (off when unset; a backtest writes them
    /// with `--features-out`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub record_dir: Option<PathBuf>,
    /// The record file stops growing at this size (rows beyond it are dropped
    /// and counted as the strategy's `ml_record` quota hits).
    pub record_max_mb: u64,
}

impl Default for MlConfig {
    fn default() -> Self {
        MlConfig { models: BTreeMap::new(), cache_entries: 10_000, record_dir: None, record_max_mb: 100 }
    }
}

/// What `ml::predict` returns from a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelOutput {
    /// The model's (first) numeric output: a regression value or a score.
    #[default]
    Value,
    /// A classifier's predicted label.
    Label,
    /// A classifier's class probabilities.
    Probabilities,
}

impl std::fmt::Display for ModelOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ModelOutput::Value => "value",
            ModelOutput::Label => "label",
            ModelOutput::Probabilities => "probabilities",
        })
    }
}

/// `[ml.models.NAME]`. These key names are a contract.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The `.onnx` file (relative to the working directory); watched and
    /// swapped in when it changes and passes the checks.
    pub path: PathBuf,
    /// The feature vector's width the model takes.
    pub inputs: usize,
    /// Which output `ml::predict` returns.
    #[serde(default)]
    pub output: ModelOutput,
    /// Subtracted from each feature before the model sees it (standardization in Rust).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean: Option<Vec<f64>>,
    /// Each feature is divided by this after `mean` is subtracted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<Vec<f64>>,
    /// Features (as a script passes them) whose prediction is checked at every load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_input: Option<Vec<f64>>,
    /// What `ml::predict` must return for `golden_input`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub golden_output: Option<Vec<f64>>,
    /// Largest difference from `golden_output` accepted (absolute, plus the
    /// same share of the expected value).
    #[serde(default = "default_golden_tolerance")]
    pub golden_tolerance: f64,
    /// How long a prediction is reused for the same features ("30s", "1h");
    /// by default one timeframe of the calling strategy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_ttl: Option<String>,
}

fn default_golden_tolerance() -> f64 {
    1e-5
}

impl ModelConfig {
    /// `cache_ttl` in milliseconds, when set and valid.
    pub fn cache_ttl_ms(&self) -> Option<i64> {
        self.cache_ttl.as_deref().and_then(|t| crate::model::parse_duration_ms(t).ok())
    }
}

/// True for names a script can write in a string and a metric label can carry.
pub fn valid_model_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
}

impl MlConfig {
    /// Every problem of the section, each under its key.
    pub(super) fn problems(&self, out: &mut Vec<ConfigProblem>) {
        let mut bad = |key: String, message: String| out.push(ConfigProblem { key, message });
        if self.cache_entries == 0 || self.cache_entries > 1_000_000 {
            bad("ml.cache_entries".into(), format!("must be from 1 to 1000000, got {}", self.cache_entries));
        }
        if self.record_max_mb == 0 {
            bad("ml.record_max_mb".into(), "must be greater than 0".into());
        }
        for (name, model) in &self.models {
            let key = |k: &str| format!("ml.models.{name}.{k}");
            if !valid_model_name(name) {
                bad(format!("ml.models.{name}"), "a model name is 1 to 64 letters, digits, `_`, `-` or `.`".into());
            }
            if model.inputs == 0 || model.inputs > MAX_MODEL_INPUTS {
                bad(key("inputs"), format!("must be from 1 to {MAX_MODEL_INPUTS}, got {}", model.inputs));
            }
            for (field, values) in
                [("mean", &model.mean), ("scale", &model.scale), ("golden_input", &model.golden_input)]
            {
                let Some(values) = values else { continue };
                if values.len() != model.inputs {
                    bad(key(field), format!("has {} values; `inputs` is {}", values.len(), model.inputs));
                }
                if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                    bad(key(field), format!("value {at} is not a finite number"));
                }
            }
            if let Some(at) = model.scale.iter().flatten().position(|v| *v == 0.0) {
                bad(key("scale"), format!("value {at} is 0 (features are divided by it)"));
            }
            match (&model.golden_input, &model.golden_output) {
                (Some(_), None) => bad(key("golden_output"), "is missing: `golden_input` needs it".into()),
                (None, Some(_)) => bad(key("golden_input"), "is missing: `golden_output` needs it".into()),
                (_, Some(output)) if output.is_empty() || output.iter().any(|v| !v.is_finite()) => {
                    bad(key("golden_output"), "must be one or more finite numbers".into())
                }
                _ => {}
            }
            if !(model.golden_tolerance.is_finite() && model.golden_tolerance >= 0.0) {
                bad(key("golden_tolerance"), "must be a number of 0 or more".into());
            }
            if let Some(ttl) = &model.cache_ttl
                && let Err(e) = crate::model::parse_duration_ms(ttl)
            {
                bad(key("cache_ttl"), e.to_string());
            }
        }
    }
}
