//! Native indicators against TA-Lib reference values on a fixed series
//! (tests/fixtures/ta_reference.json, written by make_ta_fixture.py).

mod common;

use serde_json::Value;
use tradehost::data::{Atr, BBands, Ema, Highest, Lowest, Macd, Rsi, Sma, Vwap};

fn fixture() -> Value {
    serde_json::from_str(include_str!("fixtures/ta_reference.json")).unwrap()
}

fn assert_series(name: &str, ours: &[Option<f64>], reference: &Value) {
    let reference = reference.as_array().unwrap();
    assert_eq!(ours.len(), reference.len(), "{name}: length");
    for (i, (ours, theirs)) in ours.iter().zip(reference).enumerate() {
        match (ours, theirs.as_f64()) {
            (None, None) => {}
            (Some(a), Some(b)) => {
                assert!((a - b).abs() <= 1e-9 * b.abs().max(1.0), "{name}[{i}]: ours {a}, TA-Lib {b}")
            }
            (a, b) => panic!("{name}[{i}]: warm-up differs: ours {a:?}, TA-Lib {b:?}"),
        }
    }
}

#[test]
fn close_based_indicators_match_ta_lib() {
    let fx = fixture();
    let closes: Vec<f64> = common::fixture_candles(&fx).iter().map(|c| c.close).collect();
    let mut sma = Sma::new(10);
    let mut ema = Ema::new(10);
    let mut rsi = Rsi::new(14);
    assert_series("sma_10", &closes.iter().map(|c| sma.update(*c)).collect::<Vec<_>>(), &fx["sma_10"]);
    assert_series("ema_10", &closes.iter().map(|c| ema.update(*c)).collect::<Vec<_>>(), &fx["ema_10"]);
    assert_series("rsi_14", &closes.iter().map(|c| rsi.update(*c)).collect::<Vec<_>>(), &fx["rsi_14"]);

    let mut macd = Macd::new(12, 26, 9);
    let values: Vec<_> = closes.iter().map(|c| macd.update(*c)).collect();
    let part = |f: fn(&tradehost::data::MacdValue) -> f64| values.iter().map(|v| v.as_ref().map(f)).collect::<Vec<_>>();
    assert_series("macd", &part(|v| v.macd), &fx["macd_12_26_9"]["macd"]);
    assert_series("macd signal", &part(|v| v.signal), &fx["macd_12_26_9"]["signal"]);
    assert_series("macd hist", &part(|v| v.hist), &fx["macd_12_26_9"]["hist"]);

    let mut bb = BBands::new(20, 2.0);
    let bands: Vec<_> = closes.iter().map(|c| bb.update(*c)).collect();
    let part =
        |f: fn(&tradehost::data::BBandsValue) -> f64| bands.iter().map(|v| v.as_ref().map(f)).collect::<Vec<_>>();
    assert_series("bb upper", &part(|v| v.upper), &fx["bbands_20_2"]["upper"]);
    assert_series("bb middle", &part(|v| v.middle), &fx["bbands_20_2"]["middle"]);
    assert_series("bb lower", &part(|v| v.lower), &fx["bbands_20_2"]["lower"]);
}

#[test]
fn candle_based_indicators_match_ta_lib() {
    let fx = fixture();
    let candles = common::fixture_candles(&fx);
    let mut atr = Atr::new(14);
    let mut hi = Highest::new(20);
    let mut lo = Lowest::new(20);
    let mut vwap = Vwap::new();
    assert_series("atr_14", &candles.iter().map(|c| atr.update(c)).collect::<Vec<_>>(), &fx["atr_14"]);
    assert_series("highest_20", &candles.iter().map(|c| hi.update(c.high)).collect::<Vec<_>>(), &fx["highest_20"]);
    assert_series("lowest_20", &candles.iter().map(|c| lo.update(c.low)).collect::<Vec<_>>(), &fx["lowest_20"]);
    assert_series("vwap", &candles.iter().map(|c| vwap.update(c)).collect::<Vec<_>>(), &fx["vwap"]);
}
