//! `series(capacity)`: a native rolling window of numbers for scripts. A
//! push is O(1) at any size (the oldest value drops out once full), `h[0]` is
//! the newest value, and — unlike an array kept in `this` — Rhai's data-size
//! checks see one value, not every element, so a long history costs nothing
//! per assignment. Its size is bounded by its capacity (at most
//! `sandbox.max_array_size`), and it is stored with `this` as
//! `{"$series": capacity, "values": [oldest … newest]}`, so hot reloads and
//! restarts keep it.

use std::cell::Cell;
use std::collections::VecDeque;

use rhai::{Dynamic, Engine, EvalAltResult, FLOAT, INT, Position};

/// The key that marks a stored series.
pub const TAG: &str = "$series";

thread_local! {
    /// Values held by every series alive on this thread (each strategy runs
    /// on its own thread): the sandbox stops a callback once it passes
    /// `sandbox.max_series_values`, whether the series are in `this`, in
    /// locals or copied into arrays.
    static HELD: Cell<usize> = const { Cell::new(0) };
    /// `sandbox.max_series_values` of the callback running on this thread.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
}

fn held_add(n: usize) {
    let held = HELD.with(|h| {
        h.set(h.get().saturating_add(n));
        h.get()
    });
    if held > LIMIT.with(Cell::get) {
        super::memory::stop_at_next_operation();
    }
}

/// Sets the limit of the callback starting on this thread: from now on,
/// passing it stops the callback at its next operation (the sandbox's
/// per-operation check then finds the series over the limit); already past
/// it, the callback stops before its first.
pub fn limit_held(max: usize) {
    LIMIT.with(|l| l.set(max));
    if values_held() > max {
        super::memory::stop_at_next_operation();
    }
}

fn held_sub(n: usize) {
    // A series dropped on another thread than the one that made it only
    // makes this thread's count lower, never negative.
    let _ = HELD.try_with(|h| h.set(h.get().saturating_sub(n)));
}

/// Values held by all series alive on this thread.
pub fn values_held() -> usize {
    HELD.with(Cell::get)
}

/// A bounded window of numbers, newest last inside.
#[derive(Debug)]
pub struct Series {
    capacity: usize,
    values: VecDeque<f64>,
    /// Sum of `values`, kept up to date on every push and re-summed exactly
    /// every `capacity` pushes so rounding cannot drift.
    sum: f64,
    /// Pushes since the last exact re-sum.
    since_resum: usize,
}

type Result<T> = std::result::Result<T, Box<EvalAltResult>>;

fn error(message: String) -> Box<EvalAltResult> {
    EvalAltResult::ErrorRuntime(message.into(), Position::NONE).into()
}

impl Series {
    /// An empty series of `capacity` values.
    pub fn new(capacity: usize) -> Self {
        Series { capacity, values: VecDeque::with_capacity(capacity.min(1024)), sum: 0.0, since_resum: 0 }
    }

    /// Adds a value, dropping the oldest when full. O(1).
    pub fn push(&mut self, value: f64) {
        let dropped = if self.values.len() == self.capacity { self.values.pop_front() } else { None };
        if dropped.is_none() {
            held_add(1);
        }
        self.values.push_back(value);
        self.since_resum += 1;
        if self.since_resum >= self.capacity {
            self.since_resum = 0;
            self.sum = self.values.iter().sum();
        } else {
            self.sum += value - dropped.unwrap_or(0.0);
        }
    }

    /// Sum of the values (`None` when empty). O(1).
    pub fn sum(&self) -> Option<f64> {
        (!self.is_empty()).then_some(self.sum)
    }

    /// Mean of the values (`None` when empty). O(1).
    pub fn mean(&self) -> Option<f64> {
        self.sum().map(|sum| sum / self.len() as f64)
    }

    /// Removes every value.
    pub fn clear(&mut self) {
        held_sub(self.values.len());
        self.values.clear();
        self.sum = 0.0;
        self.since_resum = 0;
    }

    /// The value `back` places before the newest (`0`: the newest).
    pub fn get(&self, back: usize) -> Option<f64> {
        self.values.len().checked_sub(back + 1).and_then(|i| self.values.get(i).copied())
    }

    /// Values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when it holds nothing.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// Values it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The values, oldest first.
    pub fn values(&self) -> impl Iterator<Item = f64> + '_ {
        self.values.iter().copied()
    }

    /// As stored with `this`.
    pub fn to_json(&self) -> serde_json::Value {
        let values: Vec<serde_json::Value> = self
            .values
            .iter()
            .map(|v| serde_json::Number::from_f64(*v).map_or(serde_json::Value::Null, Into::into))
            .collect();
        serde_json::json!({ TAG: self.capacity, "values": values })
    }

    /// A stored series (`{"$series": capacity, "values": [...]}`), if `value` is one.
    pub fn from_json(value: &serde_json::Map<String, serde_json::Value>) -> Option<Series> {
        if value.len() != 2 {
            return None;
        }
        let capacity = usize::try_from(value.get(TAG)?.as_u64()?).ok().filter(|c| *c > 0)?;
        let values = value.get("values")?.as_array()?;
        let mut series = Series::new(capacity);
        for v in values {
            series.push(v.as_f64()?);
        }
        Some(series)
    }
}

/// Equal when they hold the same values with the same capacity.
impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        self.capacity == other.capacity && self.values == other.values
    }
}

impl Clone for Series {
    fn clone(&self) -> Self {
        held_add(self.values.len());
        Series { capacity: self.capacity, values: self.values.clone(), sum: self.sum, since_resum: self.since_resum }
    }
}

impl Drop for Series {
    fn drop(&mut self) {
        held_sub(self.values.len());
    }
}

impl IntoIterator for Series {
    type Item = FLOAT;
    type IntoIter = std::collections::vec_deque::IntoIter<f64>;

    fn into_iter(mut self) -> Self::IntoIter {
        let values = std::mem::take(&mut self.values);
        held_sub(values.len());
        values.into_iter()
    }
}

/// A number argument of a series method.
fn number(function: &str, value: &Dynamic) -> Result<f64> {
    let x = value
        .as_float()
        .or_else(|_| value.as_int().map(|i| i as f64))
        .map_err(|got| error(format!("series.{function}: the value must be a number, got {got}")))?;
    if x.is_finite() { Ok(x) } else { Err(error(format!("series.{function}: the value must be finite, got {x}"))) }
}

/// Installs `series(capacity)` and its methods; a capacity above
/// `max_capacity` (the sandbox's array limit) is refused.
pub fn install(engine: &mut Engine, max_capacity: usize) {
    engine.register_type_with_name::<Series>("series").register_iterator::<Series>();
    engine.register_fn("series", move |capacity: Dynamic| -> Result<Series> {
        let capacity = capacity.as_int().map_err(|got| {
            error(format!("series(capacity): the capacity must be a whole number of values, got {got}"))
        })?;
        match usize::try_from(capacity) {
            Ok(c @ 1..) if c <= max_capacity => Ok(Series::new(c)),
            _ => Err(error(format!(
                "series(capacity): the capacity must be from 1 to {max_capacity} (sandbox.max_array_size), got {capacity}"
            ))),
        }
    });
    engine.register_fn("push", |s: &mut Series, value: Dynamic| -> Result<()> {
        s.push(number("push", &value)?);
        Ok(())
    });
    engine.register_fn("push", |s: &mut Series, value: FLOAT| -> Result<()> {
        if !value.is_finite() {
            return Err(error(format!("series.push: the value must be finite, got {value}")));
        }
        s.push(value);
        Ok(())
    });
    engine.register_indexer_get(|s: &mut Series, back: INT| -> Result<Dynamic> {
        if back < 0 {
            return Err(error(format!(
                "series[{back}]: 0 is the newest value, 1 the one before; negative is not allowed"
            )));
        }
        Ok(usize::try_from(back).ok().and_then(|b| s.get(b)).map_or(Dynamic::UNIT, Dynamic::from_float))
    });
    engine.register_get("len", |s: &mut Series| s.len() as INT);
    engine.register_fn("len", |s: &mut Series| s.len() as INT);
    engine.register_get("capacity", |s: &mut Series| s.capacity() as INT);
    engine.register_fn("is_full", |s: &mut Series| s.len() == s.capacity());
    engine.register_fn("is_empty", |s: &mut Series| s.is_empty());
    let number_or_unit = |x: Option<f64>| x.map_or(Dynamic::UNIT, Dynamic::from_float);
    engine.register_fn("sum", move |s: &mut Series| number_or_unit(s.sum()));
    engine.register_fn("mean", move |s: &mut Series| number_or_unit(s.mean()));
    engine.register_fn("min", move |s: &mut Series| number_or_unit(s.values().reduce(f64::min)));
    engine.register_fn("max", move |s: &mut Series| number_or_unit(s.values().reduce(f64::max)));
    engine.register_fn("to_array", |s: &mut Series| s.values().map(Dynamic::from_float).collect::<rhai::Array>());
    engine.register_fn("clear", |s: &mut Series| s.clear());
    engine.register_fn("to_string", |s: &mut Series| format!("series({} of {})", s.len(), s.capacity()));
    engine.register_fn("to_debug", |s: &mut Series| format!("series({} of {}): {:?}", s.len(), s.capacity(), s.values));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_series_drops_its_oldest_and_indexes_from_the_newest() {
        let mut s = Series::new(3);
        for v in 1..=5 {
            s.push(f64::from(v));
        }
        assert_eq!((s.len(), s.get(0), s.get(2), s.get(3)), (3, Some(5.0), Some(3.0), None));
        assert_eq!(s.values().collect::<Vec<_>>(), vec![3.0, 4.0, 5.0]);
        let stored = s.to_json();
        assert_eq!(stored, serde_json::json!({"$series": 3, "values": [3.0, 4.0, 5.0]}));
        assert_eq!(Series::from_json(stored.as_object().unwrap()), Some(s));
        assert_eq!(Series::from_json(serde_json::json!({"$series": 0, "values": []}).as_object().unwrap()), None);
    }

    #[test]
    fn every_live_series_value_is_counted_once() {
        let before = values_held();
        let mut a = Series::new(4);
        for v in 0..6 {
            a.push(f64::from(v));
        }
        assert_eq!(values_held() - before, 4);
        let b = a.clone();
        assert_eq!(values_held() - before, 8);
        let iterated: Vec<f64> = b.into_iter().collect();
        assert_eq!((iterated.len(), values_held() - before), (4, 4));
        a.clear();
        assert_eq!(values_held(), before);
        a.push(1.0);
        drop(a);
        assert_eq!(values_held(), before);
    }

    #[test]
    fn the_running_sum_matches_an_exact_sum() {
        let mut s = Series::new(7);
        let mut all = Vec::new();
        for i in 0..1000 {
            let v = (f64::from(i) * 0.37).sin() * 1e4 + 0.1;
            s.push(v);
            all.push(v);
            let window = &all[all.len().saturating_sub(7)..];
            let exact: f64 = window.iter().sum();
            assert!((s.sum().unwrap() - exact).abs() < 1e-6, "push {i}: {} vs {exact}", s.sum().unwrap());
            assert!((s.mean().unwrap() - exact / window.len() as f64).abs() < 1e-6);
        }
        s.clear();
        assert_eq!((s.sum(), s.mean(), s.len()), (None, None, 0));
    }
}
