//! `ml::` for scripts: predictions from the host's shared models through
//! the strategy's own cache, and `ml::record` rows for training (written to
//! a file, bounded in size). Every call runs on the strategy's thread and
//! counts against its callback budget; a bad call is a script error naming
//! the model and the problem.

use std::cell::RefCell;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use rhai::{Array, Dynamic, Map, Module, NativeCallContext};

use super::api::{bad, located};
use crate::ml::{FeatureWriter, Prediction, PredictionCache, RecordRow, Registry, feature_key};
use crate::strategy::{QuotaKind, SharedContext};

type Result<T> = std::result::Result<T, Box<rhai::EvalAltResult>>;

/// Where `ml::record` rows go.
#[derive(Debug, Clone)]
pub enum RecordTarget {
    /// Rows are dropped (a live host without `ml.record_dir`).
    Off,
    /// A new file (a backtest's `--features-out`).
    Create(PathBuf),
    /// A folder holding `<strategy>.csv`, appended to (a live host's `ml.record_dir`).
    AppendIn(PathBuf),
}

/// The models a script may use and where its records go.
#[derive(Debug, Clone)]
pub struct MlOptions {
    /// The host's models (shared; empty when none are configured).
    pub registry: Arc<Registry>,
    /// Where `ml::record` writes.
    pub record: RecordTarget,
    /// A record file's size limit in bytes.
    pub record_max_bytes: u64,
}

impl Default for MlOptions {
    fn default() -> Self {
        MlOptions { registry: Arc::default(), record: RecordTarget::Off, record_max_bytes: 100 << 20 }
    }
}

/// A strategy's `ml::` state on its own thread.
pub struct MlState {
    options: MlOptions,
    cache: PredictionCache,
    writer: Option<FeatureWriter>,
    /// The symbol and bar time of the last candle or tick handled (what a record row carries).
    pub current: Option<(rhai::ImmutableString, i64)>,
}

/// The state shared by the `ml::` functions of one strategy.
pub type SharedMl = Rc<RefCell<MlState>>;

impl MlState {
    /// A strategy's fresh state.
    pub fn shared(options: MlOptions) -> SharedMl {
        let cache = PredictionCache::new(options.registry.cache_entries);
        Rc::new(RefCell::new(MlState { options, cache, writer: None, current: None }))
    }

    /// Writes out buffered record rows (a backtest calls it at the end).
    pub fn flush(&mut self) -> std::result::Result<(), crate::ml::RecordError> {
        self.writer.as_mut().map_or(Ok(()), FeatureWriter::flush)
    }
}

const PREDICT: &str = "ml::predict";
const PROBA: &str = "ml::predict_proba";
const RECORD: &str = "ml::record";

/// The features of a call as numbers; `model` names the model in errors (none for `ml::record`).
fn features_of(function: &str, model: Option<&str>, v: &Dynamic) -> Result<Vec<f64>> {
    let prefix = model.map_or(format!("{function}:"), |m| format!("{function}: model `{m}`:"));
    let array = v
        .read_lock::<Array>()
        .ok_or_else(|| bad(function, format!("{prefix} `features` must be an array, got {}", v.type_name())))?;
    if array.is_empty() {
        return Err(bad(function, format!("{prefix} `features` is empty")));
    }
    array
        .iter()
        .enumerate()
        .map(|(i, f)| {
            f.as_float()
                .or_else(|_| f.as_int().map(|n| n as f64))
                .map_err(|_| bad(function, format!("{prefix} feature {i} must be a number, got {}", f.type_name())))
        })
        .collect()
}

fn name_of(function: &str, v: &Dynamic) -> Result<String> {
    if v.is_string() {
        Ok(v.to_string())
    } else {
        Err(bad(function, format!("{function}: `model` must be a string, got {}", v.type_name())))
    }
}

/// Answers from the strategy's cache, or runs the model and remembers the answer.
fn predict(
    ctx: &SharedContext,
    ml: &SharedMl,
    function: &str,
    name: &Dynamic,
    features: &Dynamic,
) -> Result<Prediction> {
    let name = name_of(function, name)?;
    let registry = ml.borrow().options.registry.clone();
    let Some(model) = registry.model(&name) else {
        let known: Vec<&str> = registry.names().collect();
        let known = if known.is_empty() { "none are configured in [ml.models]".to_string() } else { known.join(", ") };
        return Err(bad(function, format!("{function}: unknown model `{name}` (models: {known})")));
    };
    let metrics = registry.metrics(&name).expect("a model has metrics");
    metrics.calls.fetch_add(1, Ordering::Relaxed);
    let fail = |message: String| {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
        bad(function, format!("{function}: model `{name}`: {message}"))
    };
    let features = features_of(function, Some(&name), features).inspect_err(|_| {
        metrics.errors.fetch_add(1, Ordering::Relaxed);
    })?;
    let (now, timeframe_ms) = {
        let ctx = ctx.borrow();
        (ctx.now, ctx.own_timeframe.ms())
    };
    let key = feature_key(&features);
    if let Some(hit) = ml.borrow().cache.get(&name, model.version, &key, now) {
        metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        return Ok(hit.clone());
    }
    let prediction = registry.timed_predict(&model, &features).map_err(|e| fail(e.to_string()))?;
    let ttl = model.config.cache_ttl_ms().unwrap_or(timeframe_ms);
    ml.borrow_mut().cache.put(&name, model.version, key, now, ttl, prediction.clone());
    Ok(prediction)
}

fn numbers(values: &[f64]) -> Dynamic {
    Dynamic::from_array(values.iter().map(|v| Dynamic::from_float(*v)).collect())
}

fn record(ctx: &SharedContext, ml: &SharedMl, features: &Dynamic, label: Option<&Dynamic>) -> Result<()> {
    let features = features_of(RECORD, None, features)?;
    let label = label
        .map(|l| {
            l.as_float()
                .or_else(|_| l.as_int().map(|n| n as f64))
                .or_else(|_| l.as_bool().map(|b| if b { 1.0 } else { 0.0 }))
                .map_err(|_| {
                    bad(RECORD, format!("{RECORD}: `label` must be a number or a bool, got {}", l.type_name()))
                })
        })
        .transpose()?;
    let mut state = ml.borrow_mut();
    let state = &mut *state;
    let mut context = ctx.borrow_mut();
    let strategy = context.name.clone();
    if state.writer.is_none() {
        let max = state.options.record_max_bytes;
        let opened = match &state.options.record {
            RecordTarget::Off => return Ok(()),
            RecordTarget::Create(path) => FeatureWriter::create(path, max),
            RecordTarget::AppendIn(dir) => FeatureWriter::append(&dir.join(format!("{strategy}.csv")), max),
        };
        state.writer = Some(opened.map_err(|e| bad(RECORD, format!("{RECORD}: {e}")))?);
    }
    let (symbol, time) = match &state.current {
        Some((symbol, time)) => (symbol.clone(), *time),
        None => (rhai::ImmutableString::new(), context.now),
    };
    let row = RecordRow { time, symbol: &symbol, strategy: &strategy, label, features: &features };
    let writer = state.writer.as_mut().expect("opened above");
    match writer.write(row) {
        Ok(true) => Ok(()),
        Ok(false) => {
            context.quotas.hit(QuotaKind::MlRecord);
            Ok(())
        }
        Err(e) => Err(bad(RECORD, format!("{RECORD}: {e}"))),
    }
}

/// The `ml::` module of one strategy.
pub fn module(ctx: &SharedContext, ml: &SharedMl) -> Module {
    let mut m = Module::new();
    let (c, s) = (ctx.clone(), ml.clone());
    m.set_native_fn("predict", move |cx: NativeCallContext, name: Dynamic, features: Dynamic| {
        located(&cx, || {
            let prediction = predict(&c, &s, PREDICT, &name, &features)?;
            Ok(match prediction.output.as_slice() {
                [one] => Dynamic::from_float(*one),
                many => numbers(many),
            })
        })
    });
    let (c, s) = (ctx.clone(), ml.clone());
    m.set_native_fn("predict_proba", move |cx: NativeCallContext, name: Dynamic, features: Dynamic| {
        located(&cx, || {
            let prediction = predict(&c, &s, PROBA, &name, &features)?;
            match prediction.probabilities {
                Some(p) => Ok(numbers(&p)),
                None => Err(bad(
                    PROBA,
                    format!("{PROBA}: model `{name}` is not a classifier: it has no probabilities output"),
                )),
            }
        })
    });
    let s = ml.clone();
    m.set_native_fn("models", move || {
        let registry = s.borrow().options.registry.clone();
        let models: Array = registry
            .names()
            .filter_map(|name| registry.model(name))
            .map(|model| {
                let mut map = Map::new();
                map.insert("name".into(), model.name.clone().into());
                map.insert("inputs".into(), Dynamic::from_int(model.config.inputs as i64));
                map.insert("output".into(), model.config.output.to_string().into());
                map.insert("version".into(), Dynamic::from_int(i64::from(model.version)));
                Dynamic::from_map(map)
            })
            .collect();
        Ok(models)
    });
    let s = ml.clone();
    m.set_native_fn("version", move |cx: NativeCallContext, name: Dynamic| {
        located(&cx, || {
            let name = name_of("ml::version", &name)?;
            let registry = s.borrow().options.registry.clone();
            registry
                .model(&name)
                .map(|model| i64::from(model.version))
                .ok_or_else(|| bad("ml::version", format!("ml::version: unknown model `{name}`")))
        })
    });
    let (c, s) = (ctx.clone(), ml.clone());
    m.set_native_fn("record", move |cx: NativeCallContext, features: Dynamic| {
        located(&cx, || record(&c, &s, &features, None))
    });
    let (c, s) = (ctx.clone(), ml.clone());
    m.set_native_fn("record", move |cx: NativeCallContext, features: Dynamic, label: Dynamic| {
        located(&cx, || record(&c, &s, &features, Some(&label)))
    });
    m
}
