//! Machine-learning predictors for scripts: ONNX models declared in
//! `[ml.models.NAME]`, loaded once and shared by every strategy (an `Arc`
//! each call takes), checked at every load (input width, the output asked
//! for, the golden pair), swapped atomically when their file changes and
//! passes the checks (a bad file keeps the old model serving), with
//! per-model call counts and latency. Every load runs the model once (on
//! the golden input, or a row of zeros) so a file that cannot run is refused. Inference runs on the calling
//! strategy's thread. [`PredictionCache`] keeps one strategy's recent
//! answers; [`FeatureWriter`] writes the rows `ml::record` sends.

mod cache;
mod onnx;
mod record;
mod trees;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::Digest;

pub use cache::{PredictionCache, feature_key};
pub use onnx::{OnnxModel, Outputs};
pub use record::{FeatureWriter, RecordError, RecordRow};

use crate::config::{MlConfig, ModelConfig, ModelOutput};
use crate::health::Histogram;

/// Why a model could not be loaded or asked.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MlError {
    /// The file could not be read.
    #[error("cannot read {path}: {message}")]
    Read {
        /// The file.
        path: PathBuf,
        /// What the system said.
        message: String,
    },
    /// The bytes are not an ONNX model tract can run.
    #[error("not a usable ONNX model: {0}")]
    Invalid(String),
    /// The model's declared input width differs from `inputs`.
    #[error("the model takes {declared} features but `inputs` is {configured}")]
    Width {
        /// What the model declares.
        declared: usize,
        /// What the config says.
        configured: usize,
    },
    /// `output` names an output the model does not have.
    #[error("the model has no {0} output (set `output` to one it has: value, label or probabilities)")]
    MissingOutput(ModelOutput),
    /// The golden input's prediction is not the golden output.
    #[error(
        "golden check failed: golden_input predicts {got:?}, golden_output is {expected:?} (tolerance {tolerance})"
    )]
    Golden {
        /// What the model predicted.
        got: Vec<f64>,
        /// What the config expects.
        expected: Vec<f64>,
        /// The tolerance used.
        tolerance: f64,
    },
    /// A call passed the wrong number of features.
    #[error("takes {expected} features, got {got}")]
    FeatureCount {
        /// The model's width.
        expected: usize,
        /// What the call passed.
        got: usize,
    },
    /// A feature is NaN or infinite.
    #[error("feature {index} is {value} (features must be finite numbers)")]
    NotFinite {
        /// Its position.
        index: usize,
        /// Its value.
        value: f64,
    },
    /// Inference itself failed.
    #[error("inference failed: {0}")]
    Run(String),
}

/// What one prediction gave: the output the model's config selects, and the
/// class probabilities when the model has them.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The `output` the config selects.
    pub output: Vec<f64>,
    /// Class probabilities, for classifiers.
    pub probabilities: Option<Vec<f64>>,
}

/// One loaded version of a model: immutable, shared by every caller.
#[derive(Debug)]
pub struct Model {
    /// The name scripts use.
    pub name: String,
    /// 1 for the model loaded at start, one more for each swap.
    pub version: u32,
    /// Its section of the config.
    pub config: ModelConfig,
    /// When this version was loaded.
    pub loaded_at: DateTime<Utc>,
    /// SHA-256 of the file (hex), to tell which file serves.
    pub sha256: String,
    onnx: OnnxModel,
}

impl Model {
    /// Reads, prepares and checks the model file of `config`.
    pub fn load(name: &str, config: &ModelConfig, version: u32) -> Result<Model, MlError> {
        let bytes = std::fs::read(&config.path)
            .map_err(|e| MlError::Read { path: config.path.clone(), message: e.to_string() })?;
        Model::from_bytes(name, config, version, &bytes)
    }

    /// Prepares and checks a model from the bytes of its file: it must run
    /// (a row of zeros, or the golden input); a panic while preparing or
    /// running it refuses the file like any other fault.
    pub fn from_bytes(name: &str, config: &ModelConfig, version: u32, bytes: &[u8]) -> Result<Model, MlError> {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Model::prepare(name, config, version, bytes)))
            .unwrap_or_else(|panic| {
                Err(MlError::Invalid(format!("preparing it panicked: {}", crate::health::panic_message(panic))))
            })
    }

    fn prepare(name: &str, config: &ModelConfig, version: u32, bytes: &[u8]) -> Result<Model, MlError> {
        let onnx = OnnxModel::from_bytes(bytes, config.inputs)?;
        if !onnx.has(config.output) {
            return Err(MlError::MissingOutput(config.output));
        }
        let model = Model {
            name: name.to_string(),
            version,
            config: config.clone(),
            loaded_at: Utc::now(),
            sha256: hex(&sha2::Sha256::digest(bytes)),
            onnx,
        };
        let Some((input, expected)) = config.golden_input.as_ref().zip(config.golden_output.as_ref()) else {
            model.predict(&vec![0.0; config.inputs])?;
            return Ok(model);
        };
        {
            let got = model.predict(input)?.output;
            let tolerance = config.golden_tolerance;
            let close = got.len() == expected.len()
                && got.iter().zip(expected).all(|(g, e)| (g - e).abs() <= tolerance * (1.0 + e.abs()));
            if !close {
                return Err(MlError::Golden { got, expected: expected.clone(), tolerance });
            }
        }
        Ok(model)
    }

    /// Checks the features, standardizes them (`mean`, `scale`) and runs the model.
    pub fn predict(&self, features: &[f64]) -> Result<Prediction, MlError> {
        if features.len() != self.config.inputs {
            return Err(MlError::FeatureCount { expected: self.config.inputs, got: features.len() });
        }
        if let Some(index) = features.iter().position(|f| !f.is_finite()) {
            return Err(MlError::NotFinite { index, value: features[index] });
        }
        let mut row = features.to_vec();
        if let Some(mean) = &self.config.mean {
            row.iter_mut().zip(mean).for_each(|(x, m)| *x -= m);
        }
        if let Some(scale) = &self.config.scale {
            row.iter_mut().zip(scale).for_each(|(x, s)| *x /= s);
        }
        let outputs = self.onnx.run(&row)?;
        let output = match self.config.output {
            ModelOutput::Value => outputs.value,
            ModelOutput::Label => outputs.label,
            ModelOutput::Probabilities => outputs.probabilities.clone(),
        }
        .ok_or(MlError::MissingOutput(self.config.output))?;
        Ok(Prediction { output, probabilities: outputs.probabilities })
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Calls and cache use of one model (all versions).
#[derive(Debug, Default)]
pub struct ModelMetrics {
    /// Times a file was read into a serving model (1 at start, one more per swap).
    pub loads: AtomicU64,
    /// Predictions asked for (cache hits included).
    pub calls: AtomicU64,
    /// Calls that failed (bad features, inference errors).
    pub errors: AtomicU64,
    /// Calls answered from a strategy's cache.
    pub cache_hits: AtomicU64,
    /// Calls that ran the model.
    pub cache_misses: AtomicU64,
    /// How long running the model took (misses only).
    pub latency: Histogram,
}

/// A model's entry: the version serving now, and what went wrong last.
#[derive(Debug)]
struct Slot {
    config: ModelConfig,
    current: ArcSwap<Model>,
    last_error: Mutex<Option<(String, DateTime<Utc>)>>,
    metrics: ModelMetrics,
}

/// A model's state, for `/api/v1/models`, `/api/v1/health` and the dashboard.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ModelStatus {
    /// The name scripts use.
    pub name: String,
    /// The model file.
    pub path: String,
    /// Feature width.
    pub inputs: usize,
    /// What `ml::predict` returns: `value`, `label` or `probabilities`.
    pub output: String,
    /// The version serving (1 at start, one more per swap).
    pub version: u32,
    /// When that version was loaded.
    pub loaded_at: DateTime<Utc>,
    /// SHA-256 of the file serving.
    pub sha256: String,
    /// Why the last change of the file was refused (the old version kept serving), if it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// When that was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at: Option<DateTime<Utc>>,
    /// Times a file was read into a serving model: 1 however many strategies
    /// use it, one more per swap.
    pub loads: u64,
    /// Predictions asked for.
    pub calls: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls answered from a cache.
    pub cache_hits: u64,
    /// Calls that ran the model.
    pub cache_misses: u64,
}

/// Some models could not be loaded at start: each with its file and why.
#[derive(Debug, Clone, PartialEq)]
pub struct LoadErrors(pub Vec<(String, PathBuf, MlError)>);

impl std::fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, path, error)) in self.0.iter().enumerate() {
            let sep = if i == 0 { "" } else { "\n" };
            write!(f, "{sep}`ml.models.{name}` ({}): {error}", path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for LoadErrors {}

/// What a changed model file led to.
#[derive(Debug, Clone, PartialEq)]
pub enum Swap {
    /// The file's content is what already serves (a refused file's error is cleared).
    Unchanged,
    /// The new file passed its checks and serves from now on.
    Swapped {
        /// The new version.
        version: u32,
    },
    /// The new file was refused; the old version keeps serving.
    Refused {
        /// The version still serving.
        serving: u32,
        /// Why.
        error: MlError,
    },
}

/// Every configured model, loaded once and shared.
#[derive(Debug, Default)]
pub struct Registry {
    slots: BTreeMap<String, Slot>,
    /// Predictions each strategy's cache keeps per model.
    pub cache_entries: usize,
}

impl Registry {
    /// Loads every model of `[ml]`; any model that fails its checks fails the
    /// whole load, with every failure named.
    pub fn load(config: &MlConfig) -> Result<Registry, LoadErrors> {
        let mut slots = BTreeMap::new();
        let mut errors = Vec::new();
        for (name, model) in &config.models {
            match Model::load(name, model, 1) {
                Ok(loaded) => {
                    slots.insert(
                        name.clone(),
                        Slot {
                            config: model.clone(),
                            current: ArcSwap::from_pointee(loaded),
                            last_error: Mutex::new(None),
                            metrics: ModelMetrics { loads: AtomicU64::new(1), ..ModelMetrics::default() },
                        },
                    );
                }
                Err(error) => errors.push((name.clone(), model.path.clone(), error)),
            }
        }
        if !errors.is_empty() {
            return Err(LoadErrors(errors));
        }
        Ok(Registry { slots, cache_entries: config.cache_entries })
    }

    /// True when no model is configured.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// The version of `name` serving now.
    pub fn model(&self, name: &str) -> Option<Arc<Model>> {
        self.slots.get(name).map(|slot| slot.current.load_full())
    }

    /// The counters of `name`.
    pub fn metrics(&self, name: &str) -> Option<&ModelMetrics> {
        self.slots.get(name).map(|slot| &slot.metrics)
    }

    /// The model names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// Each model's file.
    pub fn paths(&self) -> impl Iterator<Item = (&str, &Path)> {
        self.slots.iter().map(|(name, slot)| (name.as_str(), slot.config.path.as_path()))
    }

    /// Reads `name`'s file again and swaps it in if it changed and passes its
    /// checks; a refused file keeps the old version serving and is remembered
    /// as the model's last error. Reads and prepares the model: call it off
    /// the async workers.
    pub fn reload(&self, name: &str) -> Option<Swap> {
        let slot = self.slots.get(name)?;
        let serving = slot.current.load_full();
        let refuse = |error: MlError| {
            *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some((error.to_string(), Utc::now()));
            Swap::Refused { serving: serving.version, error }
        };
        let bytes = match std::fs::read(&slot.config.path) {
            Ok(bytes) => bytes,
            Err(e) => return Some(refuse(MlError::Read { path: slot.config.path.clone(), message: e.to_string() })),
        };
        if hex(&sha2::Sha256::digest(&bytes)) == serving.sha256 {
            // The file is what serves (again, after a refused one): nothing is wrong.
            *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
            return Some(Swap::Unchanged);
        }
        Some(match Model::from_bytes(name, &slot.config, serving.version + 1, &bytes) {
            Ok(model) => {
                let version = model.version;
                slot.current.store(Arc::new(model));
                slot.metrics.loads.fetch_add(1, Ordering::Relaxed);
                *slot.last_error.lock().unwrap_or_else(|e| e.into_inner()) = None;
                Swap::Swapped { version }
            }
            Err(error) => refuse(error),
        })
    }

    /// Every model's state.
    pub fn statuses(&self) -> Vec<ModelStatus> {
        self.slots
            .iter()
            .map(|(name, slot)| {
                let model = slot.current.load();
                let last_error = slot.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone();
                let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
                ModelStatus {
                    name: name.clone(),
                    path: slot.config.path.display().to_string(),
                    inputs: slot.config.inputs,
                    output: slot.config.output.to_string(),
                    version: model.version,
                    loaded_at: model.loaded_at,
                    sha256: model.sha256.clone(),
                    last_error_at: last_error.as_ref().map(|(_, at)| *at),
                    last_error: last_error.map(|(e, _)| e),
                    loads: count(&slot.metrics.loads),
                    calls: count(&slot.metrics.calls),
                    errors: count(&slot.metrics.errors),
                    cache_hits: count(&slot.metrics.cache_hits),
                    cache_misses: count(&slot.metrics.cache_misses),
                }
            })
            .collect()
    }

    /// Runs a prediction, timing it into the model's latency histogram.
    pub fn timed_predict(&self, model: &Model, features: &[f64]) -> Result<Prediction, MlError> {
        let started = Instant::now();
        let result = model.predict(features);
        if let Some(metrics) = self.metrics(&model.name) {
            metrics.latency.observe(started.elapsed());
            metrics.cache_misses.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    /// Prometheus text for every model.
    pub fn render_metrics(&self, out: &mut String) {
        if self.slots.is_empty() {
            return;
        }
        type Counter = fn(&ModelMetrics) -> &AtomicU64;
        let families: [(&str, &str, Counter); 5] = [
            ("tradehost_ml_loads_total", "Model files read into a serving model, by model.", |m| &m.loads),
            ("tradehost_ml_calls_total", "Predictions asked for, by model.", |m| &m.calls),
            ("tradehost_ml_errors_total", "Predictions that failed, by model.", |m| &m.errors),
            ("tradehost_ml_cache_hits_total", "Predictions answered from a strategy's cache.", |m| &m.cache_hits),
            ("tradehost_ml_cache_misses_total", "Predictions that ran the model.", |m| &m.cache_misses),
        ];
        for (family, help, field) in families {
            let _ = writeln!(out, "# HELP {family} {help}\n# TYPE {family} counter");
            for (name, slot) in &self.slots {
                let _ = writeln!(out, "{family}{{model=\"{name}\"}} {}", field(&slot.metrics).load(Ordering::Relaxed));
            }
        }
        let _ =
            writeln!(out, "# HELP tradehost_ml_version The model version serving.\n# TYPE tradehost_ml_version gauge");
        for (name, slot) in &self.slots {
            let _ = writeln!(out, "tradehost_ml_version{{model=\"{name}\"}} {}", slot.current.load().version);
        }
        let family = "tradehost_ml_predict_seconds";
        let _ = writeln!(out, "# HELP {family} Time running a model (cache misses).\n# TYPE {family} histogram");
        for (name, slot) in &self.slots {
            slot.metrics.latency.render(out, family, &format!("model=\"{name}\""));
        }
    }
}
