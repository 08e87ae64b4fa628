//! Conversions between host types and script values: events to object maps,
//! script numbers to decimals, and the `this` state to and from JSON.

use rhai::{Array, Dynamic, ImmutableString, Map};
use rust_decimal::Decimal;
use rustc_hash::FxHashMap;

use crate::model::{Candle, Fill, Order, Position, Tick, decimal_to_f64};

/// A map from `(key, value)` pairs (cheapest to build when the keys come in
/// sorted order).
pub fn map<const N: usize>(entries: [(&str, Dynamic); N]) -> Dynamic {
    let map: Map = entries.into_iter().map(|(k, v)| (k.into(), v)).collect();
    Dynamic::from_map(map)
}

fn num(value: Decimal) -> Dynamic {
    Dynamic::from_float(decimal_to_f64(value))
}

/// Script strings for symbols and timeframes, made once and then shared by
/// every candle instead of allocated for each.
#[derive(Debug, Default)]
pub struct SharedStrings {
    all: FxHashMap<String, ImmutableString>,
    /// The last two strings given out (a candle asks for its symbol and its
    /// timeframe), compared before hashing.
    recent: [Option<ImmutableString>; 2],
    /// The `recent` slot the next new string goes into.
    next: usize,
}

impl SharedStrings {
    /// The shared script string for `text`.
    pub fn get(&mut self, text: &str) -> ImmutableString {
        if let Some(shared) = self.recent.iter().flatten().find(|s| s.as_str() == text) {
            return shared.clone();
        }
        let shared = match self.all.get(text) {
            Some(shared) => shared.clone(),
            None => {
                let shared = ImmutableString::from(text);
                self.all.insert(text.to_string(), shared.clone());
                shared
            }
        };
        self.recent[self.next] = Some(shared.clone());
        self.next ^= 1;
        shared
    }
}

/// The candle map's keys, in the map's (sorted) order.
const CANDLE_KEYS: [&str; 8] = ["close", "high", "low", "open", "symbol", "time", "timeframe", "volume"];

/// The candle maps one strategy's `on_candle` receives: each a copy of one
/// template map with the candle's values written into it, which costs one
/// allocation instead of building the map's tree key by key.
#[derive(Debug)]
pub struct CandleArg(Map);

impl Default for CandleArg {
    fn default() -> Self {
        CandleArg(CANDLE_KEYS.into_iter().map(|key| (key.into(), Dynamic::UNIT)).collect())
    }
}

impl CandleArg {
    /// `#{symbol, timeframe, time, open, high, low, close, volume}` with the
    /// candle's symbol and timeframe as shared strings.
    pub fn fill(&mut self, c: &Candle, symbol: &ImmutableString, timeframe: &ImmutableString) -> Dynamic {
        let mut map = self.0.clone();
        for (slot, value) in map.values_mut().zip(candle_values(c, symbol, timeframe)) {
            *slot = value;
        }
        Dynamic::from_map(map)
    }
}

/// `#{symbol, timeframe, time, open, high, low, close, volume}`, with the
/// candle's symbol and timeframe as shared strings, as a new map.
pub fn candle(c: &Candle, symbol: &ImmutableString, timeframe: &ImmutableString) -> Dynamic {
    Dynamic::from_map(CANDLE_KEYS.into_iter().map(Into::into).zip(candle_values(c, symbol, timeframe)).collect())
}

/// A candle's values in `CANDLE_KEYS` order.
fn candle_values(c: &Candle, symbol: &ImmutableString, timeframe: &ImmutableString) -> [Dynamic; 8] {
    [
        Dynamic::from_float(c.close),
        Dynamic::from_float(c.high),
        Dynamic::from_float(c.low),
        Dynamic::from_float(c.open),
        symbol.clone().into(),
        Dynamic::from_int(c.time),
        timeframe.clone().into(),
        Dynamic::from_float(c.volume),
    ]
}

/// `#{symbol, time, bid, ask, last, volume}`.
pub fn tick(t: &Tick) -> Dynamic {
    map([
        ("ask", num(t.ask)),
        ("bid", num(t.bid)),
        ("last", num(t.last)),
        ("symbol", t.symbol.clone().into()),
        ("time", Dynamic::from_int(t.time)),
        ("volume", num(t.volume)),
    ])
}

/// `#{id, symbol, side, kind, size, price, status, filled, avg_price, reason, post_only, reduce_only}`.
pub fn order(o: &Order) -> Dynamic {
    let r = &o.request;
    let opt_num = |v: Option<Decimal>| v.map_or(Dynamic::UNIT, num);
    map([
        ("id", r.client_id.clone().into()),
        ("symbol", r.symbol.clone().into()),
        ("side", r.side.as_str().into()),
        ("kind", serde_plain(&r.kind).into()),
        ("size", num(r.size)),
        ("price", opt_num(r.price)),
        ("status", serde_plain(&o.status).into()),
        ("filled", num(o.filled)),
        ("avg_price", opt_num(o.avg_fill_price)),
        ("reason", o.reason.clone().map_or(Dynamic::UNIT, Into::into)),
        ("post_only", r.post_only.into()),
        ("reduce_only", r.reduce_only.into()),
        ("stop", r.stop.as_deref().map_or(Dynamic::UNIT, stop)),
        ("oco", r.oco.clone().map_or(Dynamic::UNIT, Into::into)),
        ("parent", r.parent.clone().map_or(Dynamic::UNIT, Into::into)),
    ])
}

/// `#{kind, trigger, trail, trail_pct, trigger_on}` of a stop order.
fn stop(s: &crate::model::StopTrigger) -> Dynamic {
    let opt_num = |v: Option<Decimal>| v.map_or(Dynamic::UNIT, num);
    map([
        ("kind", serde_plain(&s.kind).into()),
        ("trigger", num(s.price)),
        ("trail", opt_num(s.trail)),
        ("trail_pct", opt_num(s.trail_pct)),
        ("trigger_on", serde_plain(&s.on).into()),
    ])
}

/// `#{order_id, symbol, side, size, price, fee, liquidity, time}`.
pub fn fill(f: &Fill) -> Dynamic {
    map([
        ("order_id", f.order_id.clone().into()),
        ("symbol", f.symbol.clone().into()),
        ("side", f.side.as_str().into()),
        ("size", num(f.size)),
        ("price", num(f.price)),
        ("fee", num(f.fee)),
        ("liquidity", serde_plain(&f.liquidity).into()),
        ("time", Dynamic::from_int(f.time)),
    ])
}

/// `#{symbol, size, entry_price, unrealized_pnl, realized_pnl}` with `size` signed.
pub fn position(p: &Position, mark: Option<Decimal>) -> Dynamic {
    map([
        ("symbol", p.symbol.clone().into()),
        ("size", num(p.size)),
        ("entry_price", num(p.entry_price)),
        ("unrealized_pnl", num(mark.map_or(Decimal::ZERO, |m| p.unrealized_pnl(m)))),
        ("realized_pnl", num(p.realized_pnl)),
    ])
}

fn serde_plain<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// Converts script state to JSON; values that cannot be stored (functions,
/// custom types) are an error naming their key path.
pub fn to_json(value: &Dynamic, path: &str) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    if value.is_unit() {
        return Ok(Value::Null);
    }
    if let Some(b) = value.clone().try_cast::<bool>() {
        return Ok(Value::Bool(b));
    }
    if let Ok(i) = value.as_int() {
        return Ok(Value::from(i));
    }
    if let Ok(f) = value.as_float() {
        return serde_json::Number::from_f64(f)
            .map(Value::Number)
            .ok_or_else(|| format!("`{path}` is {f}, which cannot be stored"));
    }
    if value.is_string() || value.is_char() {
        return Ok(Value::String(value.to_string()));
    }
    if value.is_array() {
        let array = value.read_lock::<Array>().expect("is array");
        return array
            .iter()
            .enumerate()
            .map(|(i, v)| to_json(v, &format!("{path}[{i}]")))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array);
    }
    if value.is_map() {
        let map = value.read_lock::<Map>().expect("is map");
        let mut out = serde_json::Map::new();
        for (k, v) in map.iter() {
            let key = if path.is_empty() { k.to_string() } else { format!("{path}.{k}") };
            out.insert(k.to_string(), to_json(v, &key)?);
        }
        return Ok(Value::Object(out));
    }
    if let Some(series) = value.read_lock::<super::series::Series>() {
        return Ok(series.to_json());
    }
    Err(format!(
        "`{}` holds a {} value, which cannot be stored in strategy state",
        if path.is_empty() { "this" } else { path },
        value.type_name()
    ))
}

/// Converts JSON (state or config params) to a script value.
pub fn from_json(value: &serde_json::Value) -> Dynamic {
    use serde_json::Value;
    match value {
        Value::Null => Dynamic::UNIT,
        Value::Bool(b) => (*b).into(),
        Value::Number(n) => {
            n.as_i64().map_or_else(|| Dynamic::from_float(n.as_f64().unwrap_or(f64::NAN)), Dynamic::from_int)
        }
        Value::String(s) => s.clone().into(),
        Value::Array(a) => Dynamic::from_array(a.iter().map(from_json).collect()),
        Value::Object(o) => match super::series::Series::from_json(o) {
            Some(series) => Dynamic::from(series),
            None => Dynamic::from_map(o.iter().map(|(k, v)| (k.as_str().into(), from_json(v))).collect()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_map_has_every_field_under_its_own_key() {
        let c = Candle {
            symbol: "ETHUSD".into(),
            time: 1_700_000_000_000,
            open: 1.5,
            high: 2.5,
            low: 0.5,
            close: 2.0,
            volume: 10.0,
        };
        let mut strings = SharedStrings::default();
        let (symbol, timeframe) = (strings.get("ETHUSD"), strings.get("5m"));
        let map = candle(&c, &symbol, &timeframe).cast::<Map>();
        let json = to_json(&Dynamic::from_map(map), "").unwrap();
        assert_eq!(
            json,
            serde_json::json!({"symbol": "ETHUSD", "timeframe": "5m", "time": 1_700_000_000_000i64,
                "open": 1.5, "high": 2.5, "low": 0.5, "close": 2.0, "volume": 10.0})
        );
        assert!(strings.get("ETHUSD").ptr_eq(&symbol), "a symbol's string is made once");
        // Out of the recent slots, it comes from the table: still the same string.
        let others: Vec<_> = ["BTCUSD", "1m", "SOLUSD", "ETH"].into_iter().map(|s| strings.get(s)).collect();
        assert!(strings.get("ETHUSD").ptr_eq(&symbol));
        assert!(strings.get("5m").ptr_eq(&timeframe));
        for (text, shared) in ["BTCUSD", "1m", "SOLUSD", "ETH"].into_iter().zip(&others) {
            assert!(strings.get(text).ptr_eq(shared) && shared.as_str() == text, "{text}");
        }
    }
}
