//! ML predictors: the example ONNX models (logistic, MLP, LightGBM trees)
//! predict what onnxruntime computed for the committed inputs; bad models
//! are refused with the reason (and a bad file on hot swap keeps the old
//! model serving); the prediction cache follows the strategy's clock; script
//! errors carry file:line:col; `--features-out` writes the recorded rows and
//! a backtest with a model is byte-for-byte deterministic; a model two
//! strategies use is loaded once.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use common::TestHost;
use serde_json::Value;
use tradehost::backtest::{self, BacktestConfig, BacktestError};
use tradehost::config::{Config, ModelConfig, ModelOutput};
use tradehost::ml::{MlError, Model, Registry, Swap};
use tradehost::model::Candle;
use tradehost::script::ml::{MlOptions, RecordTarget};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The example models' sections (examples/models/models.toml), paths made absolute.
fn example_models() -> Config {
    let text = std::fs::read_to_string(root().join("examples/models/models.toml")).unwrap();
    let mut config = Config::parse(&text, "models.toml").unwrap();
    for model in config.ml.models.values_mut() {
        model.path = root().join(&model.path);
    }
    config
}

fn example(name: &str) -> ModelConfig {
    example_models().ml.models[name].clone()
}

fn expected() -> Value {
    serde_json::from_str(&std::fs::read_to_string(root().join("examples/models/expected.json")).unwrap()).unwrap()
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

fn assert_close(got: &[f64], want: &[f64], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-5, "{what}: {got:?} vs onnxruntime {want:?}");
    }
}

#[test]
fn every_example_model_predicts_what_onnxruntime_computed() {
    let expected = expected();
    let inputs: Vec<Vec<f64>> = expected["inputs"].as_array().unwrap().iter().map(numbers).collect();
    assert!(inputs.len() >= 10);
    for name in ["logistic", "mlp", "gbt"] {
        let want = &expected["models"][name]["outputs"];
        let mut config = example(name);
        // Each output the model has, asked for in turn.
        let outputs: Vec<(ModelOutput, &str)> = if want.get("probabilities").is_some() {
            vec![(ModelOutput::Label, "label"), (ModelOutput::Probabilities, "probabilities")]
        } else {
            vec![(ModelOutput::Value, want.as_object().unwrap().keys().next().unwrap().as_str())]
        };
        for (output, key) in outputs {
            config.output = output;
            config.golden_input = None;
            config.golden_output = None;
            let model = Model::load(name, &config, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
            for (i, row) in inputs.iter().enumerate() {
                let got = model.predict(row).unwrap();
                assert_close(&got.output, &numbers(&want[key][i]), &format!("{name} {key} row {i}"));
                if let Some(probabilities) = want.get("probabilities") {
                    let p = got.probabilities.expect("a classifier's probabilities");
                    assert_close(&p, &numbers(&probabilities[i]), &format!("{name} probabilities row {i}"));
                }
            }
        }
    }
}

/// A five-feature model without standardization, golden pair or cache TTL.
fn plain(path: PathBuf, output: ModelOutput) -> ModelConfig {
    ModelConfig {
        path,
        inputs: 5,
        output,
        mean: None,
        scale: None,
        golden_input: None,
        golden_output: None,
        golden_tolerance: 1e-5,
        cache_ttl: None,
    }
}

/// The tree ensembles of tests/fixtures/trees (LightGBM, random forests,
/// sklearn gradient boosting; classifiers binary (one score column and two)
/// and three-class, and regressors) give onnxruntime's labels, probabilities and values.
#[test]
fn tree_ensembles_of_every_converter_match_onnxruntime() {
    let dir = root().join("tests/fixtures/trees");
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let inputs: Vec<Vec<f64>> = expected["inputs"].as_array().unwrap().iter().map(numbers).collect();
    let models = expected["models"].as_object().unwrap();
    assert_eq!(models.len(), 7);
    for (name, want) in models {
        let outputs = want["outputs"].as_object().unwrap();
        let asked: Vec<(ModelOutput, &str)> = if outputs.contains_key("label") {
            vec![(ModelOutput::Label, "label"), (ModelOutput::Probabilities, "probabilities")]
        } else {
            vec![(ModelOutput::Value, "variable")]
        };
        for (output, key) in asked {
            let config = plain(dir.join(format!("{name}.onnx")), output);
            let model = Model::load(name, &config, 1).unwrap_or_else(|e| panic!("{name}: {e}"));
            for (i, row) in inputs.iter().enumerate() {
                let got = model.predict(row).unwrap().output;
                assert_close(&got, &numbers(&outputs[key][i]), &format!("{name} {key} row {i}"));
            }
        }
    }
}

#[test]
fn hostile_tree_ensembles_are_refused_with_the_reason() {
    let dir = root().join("tests/fixtures/trees");
    for (file, reason) in [
        ("bad_loop.onnx", "form a loop"),
        ("bad_feature.onnx", "the trees read feature 99 of 5"),
        ("bad_targets.onnx", "at most 4096 are supported"),
    ] {
        let config = plain(dir.join(file), ModelOutput::Value);
        let error = Model::load("bad", &config, 1).unwrap_err().to_string();
        assert!(error.starts_with("not a usable ONNX model") && error.contains(reason), "{file}: {error}");
    }
}

#[test]
fn bad_models_are_refused_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let good = example("gbt");
    // A golden output the model does not give.
    let mut golden = good.clone();
    golden.golden_output = Some(vec![0.9, 0.1]);
    let error = Model::load("gbt", &golden, 1).unwrap_err();
    assert!(matches!(error, MlError::Golden { .. }), "{error}");
    assert!(error.to_string().contains("golden check failed"), "{error}");
    // The wrong width.
    let mut wide = good.clone();
    wide.inputs = 5;
    (wide.golden_input, wide.golden_output, wide.mean, wide.scale) = (None, None, None, None);
    let error = Model::load("gbt", &wide, 1).unwrap_err();
    assert_eq!(error, MlError::Width { declared: 4, configured: 5 });
    assert_eq!(error.to_string(), "the model takes 4 features but `inputs` is 5");
    // An output the model does not have.
    let mut value = example("mlp");
    (value.output, value.golden_input, value.golden_output) = (ModelOutput::Probabilities, None, None);
    assert_eq!(Model::load("mlp", &value, 1).unwrap_err(), MlError::MissingOutput(ModelOutput::Probabilities));
    // A truncated file, garbage, an empty file, a missing file.
    let bytes = std::fs::read(&good.path).unwrap();
    for (file, content) in [
        ("half.onnx", &bytes[..bytes.len() / 2]),
        ("garbage.onnx", &b"not a model at all"[..]),
        ("empty.onnx", &[][..]),
    ] {
        let path = dir.path().join(file);
        std::fs::write(&path, content).unwrap();
        let config = ModelConfig { path, ..good.clone() };
        let error = Model::load("gbt", &config, 1).unwrap_err();
        assert!(matches!(error, MlError::Invalid(_)), "{file}: {error}");
        assert!(error.to_string().starts_with("not a usable ONNX model: "), "{file}: {error}");
    }
    let missing = ModelConfig { path: dir.path().join("nope.onnx"), ..good.clone() };
    assert!(Model::load("gbt", &missing, 1).unwrap_err().to_string().starts_with("cannot read "));
    // A start-up load names each failing model and its file.
    let mut config = example_models();
    config.ml.models.insert("broken".into(), ModelConfig { path: dir.path().join("garbage.onnx"), ..good.clone() });
    let error = Registry::load(&config.ml).unwrap_err().to_string();
    assert!(
        error.starts_with("`ml.models.broken` (") && error.contains("garbage.onnx): not a usable ONNX model"),
        "{error}"
    );
}

#[test]
fn a_bad_file_on_hot_swap_keeps_the_old_model_and_a_good_one_swaps_in() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.onnx");
    std::fs::copy(example("gbt").path, &path).unwrap();
    let mut config = example_models();
    config.ml.models = [("m".to_string(), ModelConfig { path: path.clone(), ..example("gbt") })].into();
    let registry = Registry::load(&config.ml).unwrap();
    let row = numbers(&expected()["inputs"][3]);
    let before = registry.model("m").unwrap().predict(&row).unwrap();
    assert_eq!(registry.reload("m"), Some(Swap::Unchanged));
    // Half-written, then garbage: refused, version 1 keeps answering the same.
    let bytes = std::fs::read(&path).unwrap();
    for bad in [&bytes[..bytes.len() / 3], &b"garbage"[..]] {
        std::fs::write(&path, bad).unwrap();
        match registry.reload("m") {
            Some(Swap::Refused { serving: 1, error }) => assert!(matches!(error, MlError::Invalid(_)), "{error}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(registry.model("m").unwrap().version, 1);
        assert_eq!(registry.model("m").unwrap().predict(&row).unwrap(), before);
    }
    let status = &registry.statuses()[0];
    assert!(status.last_error.as_deref().unwrap().starts_with("not a usable ONNX model"), "{status:?}");
    // A model that fails the golden check is refused too.
    std::fs::copy(example("logistic").path, &path).unwrap();
    assert!(matches!(registry.reload("m"), Some(Swap::Refused { error: MlError::Golden { .. }, .. })));
    // The serving file back: unchanged, and the refused file's error is gone.
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(registry.reload("m"), Some(Swap::Unchanged), "the same bytes as the serving version");
    assert_eq!(registry.statuses()[0].last_error, None);
    // Another good model swaps in as version 2.
    let mut other = ModelConfig { path: path.clone(), ..example("logistic") };
    other.golden_input = None;
    other.golden_output = None;
    config.ml.models.insert("m".into(), other);
    std::fs::copy(example("logistic").path, &path).unwrap();
    let registry = Registry::load(&config.ml).unwrap();
    assert_ne!(registry.model("m").unwrap().predict(&row).unwrap(), before, "the logistic model answers");
    std::fs::copy(example("gbt").path, &path).unwrap();
    assert_eq!(registry.reload("m"), Some(Swap::Swapped { version: 2 }));
    assert_eq!(registry.model("m").unwrap().predict(&row).unwrap(), before, "now the tree model answers");
    let status = &registry.statuses()[0];
    assert_eq!((status.version, status.loads, status.last_error.clone()), (2, 2, None));
}

fn minute_bars(n: usize) -> Vec<Candle> {
    (0..n)
        .map(|i| {
            let p = 100.0 + (i % 7) as f64;
            Candle {
                symbol: "BTCUSD".into(),
                time: 1_704_067_200_000 + i as i64 * 60_000,
                open: p,
                high: p + 1.0,
                low: p - 1.0,
                close: p,
                volume: 1.0,
            }
        })
        .collect()
}

fn backtest_config(models: &Config, record: RecordTarget) -> BacktestConfig {
    BacktestConfig {
        broker: backtest::BrokerConfig {
            cash: 100_000.into(),
            taker_fee_bps: 5.into(),
            maker_fee_bps: 2.into(),
            slippage_bps: 1.into(),
            products: Default::default(),
            leverage: 5.into(),
        },
        from: None,
        to: None,
        params: Default::default(),
        sandbox: Default::default(),
        risk: Default::default(),
        ml: MlOptions { registry: Arc::new(Registry::load(&models.ml).unwrap()), record, record_max_bytes: u64::MAX },
    }
}

/// Asks for the same features twice per bar.
const TWICE: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1m" } }
fn on_candle(c) {
    let f = [0.1, -0.2, 0.3, 0.05];
    let a = ml::predict("gbt", f);
    let b = ml::predict("gbt", f);
    if a[1] != b[1] { throw "a cached answer differs"; }
}
"#;

#[test]
fn the_cache_holds_a_prediction_for_one_timeframe_or_its_cache_ttl_on_the_backtest_clock() {
    for (ttl, runs) in [(None, 20), (Some("5m"), 4), (Some("1h"), 1)] {
        let mut models = example_models();
        models.ml.models.get_mut("gbt").unwrap().cache_ttl = ttl.map(String::from);
        let config = backtest_config(&models, RecordTarget::Off);
        backtest::run_script("twice.rhai", TWICE, &[minute_bars(20)], &config, &mut |_| {}).unwrap();
        let metrics = config.ml.registry.metrics("gbt").unwrap();
        let (calls, hits, misses) = (
            metrics.calls.load(Ordering::Relaxed),
            metrics.cache_hits.load(Ordering::Relaxed),
            metrics.cache_misses.load(Ordering::Relaxed),
        );
        assert_eq!((calls, misses, hits), (40, runs, 40 - runs), "cache_ttl {ttl:?}");
    }
}

fn script_error(body: &str) -> String {
    let script = format!(
        "fn config() {{ #{{ symbols: [\"BTCUSD\"], timeframe: \"1m\" }} }}\nfn on_candle(c) {{\n    {body}\n}}\n"
    );
    let config = backtest_config(&example_models(), RecordTarget::Off);
    match backtest::run_script("strategies/bad.rhai", &script, &[minute_bars(3)], &config, &mut |_| {}) {
        Err(BacktestError::Callback { error, .. }) => error.to_string(),
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("{body}: no error"),
    }
}

#[test]
fn bad_calls_are_script_errors_naming_the_model_and_the_place() {
    let wrong = script_error("ml::predict(\"gbt\", [1.0, 2.0, 3.0]);");
    assert!(
        wrong.starts_with("strategies/bad.rhai:3:9") && wrong.contains("model `gbt`: takes 4 features, got 3"),
        "{wrong}"
    );
    let nan = script_error("let f = [1.0, 0.0 / 0.0, 3.0, 4.0]; ml::predict(\"gbt\", f);");
    assert!(nan.starts_with("strategies/bad.rhai:3:") && nan.contains("model `gbt`: feature 1 is NaN"), "{nan}");
    let unknown = script_error("ml::predict_proba(\"gtb\", [1, 2, 3, 4]);");
    assert!(
        unknown.starts_with("strategies/bad.rhai:3:9")
            && unknown.contains("unknown model `gtb` (models: gbt, logistic, mlp)"),
        "{unknown}"
    );
    let regressor = script_error("ml::predict_proba(\"mlp\", [1, 2, 3, 4]);");
    assert!(regressor.contains("model `mlp` is not a classifier"), "{regressor}");
    let text = script_error("ml::predict(\"gbt\", [1, \"x\", 3, 4]);");
    assert!(text.contains("feature 1 must be a number, got string"), "{text}");
}

fn tradehost() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tradehost"))
}

/// `tradehost backtest` of ml_signal.rhai with the example models; the JSON report and the features file.
fn ml_signal_backtest(dir: &Path, run: &str) -> (String, String) {
    let config = dir.join("models.toml");
    std::fs::write(&config, std::fs::read_to_string(root().join("examples/models/models.toml")).unwrap()).unwrap();
    let features = dir.join(format!("features-{run}.csv"));
    let out = tradehost()
        .current_dir(root())
        .args([
            "backtest",
            "--strategy",
            "examples/strategies/ml_signal.rhai",
            "--data",
            "tests/fixtures/btc_1m_8d.csv",
        ])
        .args(["--symbol", "BTCUSD", "--json", "--quiet", "--config"])
        .arg(&config)
        .arg("--features-out")
        .arg(&features)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    (String::from_utf8(out.stdout).unwrap(), std::fs::read_to_string(&features).unwrap())
}

#[test]
fn an_ml_backtest_is_deterministic_and_writes_the_rows_the_script_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let (report, features) = ml_signal_backtest(dir.path(), "a");
    assert_eq!(ml_signal_backtest(dir.path(), "b"), (report.clone(), features.clone()), "byte for byte");
    let report: Value = serde_json::from_str(&report).unwrap();
    assert!(report["trades"].as_u64().unwrap() > 0, "the model trades: {report}");
    // One row per candle from the one after the first features on: the
    // previous candle's features with this candle's return as the label.
    let bars: Vec<(i64, f64)> = std::fs::read_to_string(root().join("tests/fixtures/btc_1m_8d.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (cells[0].parse::<i64>().unwrap() * 1000, cells[4].parse::<f64>().unwrap())
        })
        .collect();
    let mut lines = features.lines();
    assert_eq!(lines.next(), Some("time,symbol,strategy,label,f0,f1,f2,f3"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let first_features = 26; // the 26-candle EMA is the slowest
    assert_eq!(rows.len(), bars.len() - first_features, "every candle after the first with features");
    for row in &rows {
        let time: i64 = row[0].parse().unwrap();
        let at = bars.iter().position(|(t, _)| *t == time).expect("a bar time");
        assert_eq!((row[1], row[2]), ("BTCUSD", "ml_signal"));
        let (label, f3): (f64, f64) = (row[3].parse().unwrap(), row[7].parse().unwrap());
        // Recorded at bar `at`: the previous bar's features, labelled with this bar's return.
        let label_return = (bars[at].1 / bars[at - 1].1 - 1.0) * 100.0;
        let feature_return = (bars[at - 1].1 / bars[at - 2].1 - 1.0) * 100.0;
        assert!((label - label_return).abs() < 1e-9, "{row:?}: label {label} vs {label_return}");
        assert!((f3 - feature_return).abs() < 1e-9, "{row:?}: f3 {f3} vs {feature_return}");
    }
}

const USER: &str = r#"
fn config() { #{ symbols: ["BTCUSD"], timeframe: "1s" } }
fn on_candle(c) {
    let p = ml::predict_proba("gbt", [c.close % 3.0, 0.1, -0.1, 0.0]);
    health::report("version", ml::version("gbt"));
    ml::record([c.close, p[1]], c.close > c.open);
}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_model_is_loaded_once_and_a_bad_file_never_stops_it_serving() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gbt.onnx");
    std::fs::copy(example("gbt").path, &path).unwrap();
    let models = example_models();
    let records = dir.path().join("features");
    let t = TestHost::start(&[("one", USER), ("two", USER)], |c| {
        c.ml = models.ml.clone();
        c.ml.models.retain(|name, _| name == "gbt");
        c.ml.record_dir = Some(records.clone());
        let gbt = c.ml.models.get_mut("gbt").unwrap();
        (gbt.path, gbt.golden_input, gbt.golden_output) = (path.clone(), None, None);
    })
    .await;
    let called = |v: &Value| v[0]["calls"].as_u64().unwrap_or(0);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut models = t.api_get("/api/v1/models").await;
    while called(&models) < 6 {
        assert!(std::time::Instant::now() < deadline, "both strategies predict: {models}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        models = t.api_get("/api/v1/models").await;
    }
    assert_eq!(models.as_array().unwrap().len(), 1);
    assert_eq!(
        (models[0]["name"].as_str(), models[0]["loads"].as_u64(), models[0]["version"].as_u64()),
        (Some("gbt"), Some(1), Some(1))
    );
    let metrics = t.metrics().await;
    assert!(metrics.contains("tradehost_ml_loads_total{model=\"gbt\"} 1"), "{metrics}");
    assert!(metrics.contains("tradehost_ml_predict_seconds_count{model=\"gbt\"}"), "{metrics}");
    // With `ml.record_dir` set, each strategy's rows go to its own file.
    for name in ["one", "two"] {
        let text = std::fs::read_to_string(records.join(format!("{name}.csv"))).unwrap();
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("time,symbol,strategy,label,f0,f1"));
        let row: Vec<&str> = lines.next().unwrap().split(',').collect();
        assert_eq!((row[1], row[2], row.len()), ("BTCUSD", name, 6), "{text}");
        assert!(["0", "1"].contains(&row[3]), "{text}");
    }

    // A half-written file: refused, named in /health, still serving v1.
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let health = wait_model(&t, "the refused file", |health| {
        health["reasons"]["ml.gbt"].as_str().is_some_and(|r| r.contains("v1 keeps serving"))
    })
    .await;
    assert_eq!(health["status"], "ready", "{health}");
    assert_eq!(health["components"]["ml.gbt"], "up");
    assert!(health["models"][0]["last_error"].as_str().unwrap().starts_with("not a usable ONNX model"), "{health}");
    let before = called(&t.api_get("/api/v1/models").await);
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let models = t.api_get("/api/v1/models").await;
    assert!(called(&models) > before && models[0]["errors"] == 0, "still predicting: {models}");
    for name in ["one", "two"] {
        t.wait_status(name, |s| s.state == tradehost::control::StrategyState::Running).await;
    }
    // The serving file back: the reason goes. Another model: version 2.
    std::fs::write(&path, &bytes).unwrap();
    wait_model(&t, "the refused file's reason cleared", |health| health["reasons"].get("ml.gbt").is_none()).await;
    std::fs::copy(example("logistic").path, &path).unwrap();
    let health = wait_model(&t, "version 2", |health| health["models"][0]["version"] == 2).await;
    assert_eq!(health["models"][0]["loads"], 2, "{health}");
    let swapped = t
        .wait_for(0, "the swap in the activity feed", |e| e.data["component"] == "ml.gbt" && e.data["version"] == 2)
        .await;
    assert_eq!(swapped.data["reason"], "model gbt v2 loaded");
    assert_eq!(t.stop().await, 0);
}

/// Polls `/api/v1/health` until `done` holds (10 s at most).
async fn wait_model(t: &TestHost, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let health = t.api_get("/api/v1/health").await;
        if done(&health) {
            return health;
        }
        assert!(std::time::Instant::now() < deadline, "{what}: {health}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
