//! The prediction cache of one strategy: a model's answer for the exact same
//! features is reused until its time to live passes on the strategy's clock
//! (the simulated clock in a backtest, so backtests stay deterministic).

use std::collections::HashMap;

use super::Prediction;
use crate::bounded::BoundedMap;
use crate::model::TimestampMs;

/// A remembered prediction: which model version made it and until when it holds.
#[derive(Debug, Clone)]
struct Entry {
    version: u32,
    expires: TimestampMs,
    prediction: Prediction,
}

/// Most memory one strategy's cache of one model may take (an estimate per entry:
/// the key twice, the prediction, bookkeeping).
const MAX_BYTES_PER_MODEL: usize = 64 << 20;

/// Predictions by (model, feature bits), at most `capacity` per model, and
/// never more than [`MAX_BYTES_PER_MODEL`] per model however wide the features.
#[derive(Debug)]
pub struct PredictionCache {
    capacity: usize,
    models: HashMap<String, BoundedMap<Vec<u64>, Entry>>,
}

/// The exact bytes of a feature vector (so 0.1 and 0.1 + 1e-17 differ, and -0.0 and 0.0 too).
pub fn feature_key(features: &[f64]) -> Vec<u64> {
    features.iter().map(|f| f.to_bits()).collect()
}

impl PredictionCache {
    /// An empty cache keeping at most `capacity` predictions per model.
    pub fn new(capacity: usize) -> Self {
        PredictionCache { capacity: capacity.max(1), models: HashMap::new() }
    }

    /// The prediction `version` of `model` made for these features, if it has not expired at `now`.
    pub fn get(&self, model: &str, version: u32, key: &[u64], now: TimestampMs) -> Option<&Prediction> {
        let entry = self.models.get(model)?.get(key)?;
        (entry.version == version && now < entry.expires).then_some(&entry.prediction)
    }

    /// Remembers a prediction until `now + ttl_ms`.
    pub fn put(
        &mut self,
        model: &str,
        version: u32,
        key: Vec<u64>,
        now: TimestampMs,
        ttl_ms: i64,
        prediction: Prediction,
    ) {
        let entry_bytes = 16 * key.len()
            + 16 * prediction.output.len()
            + 8 * prediction.probabilities.as_ref().map_or(0, Vec::len)
            + 128;
        let capacity = self.capacity.min(MAX_BYTES_PER_MODEL / entry_bytes);
        let entries = self.models.entry(model.to_string()).or_insert_with(|| BoundedMap::new(capacity));
        entries.insert(key, Entry { version, expires: now.saturating_add(ttl_ms), prediction });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(v: f64) -> Prediction {
        Prediction { output: vec![v], probabilities: None }
    }

    #[test]
    fn hits_within_the_ttl_and_misses_after_it_or_for_a_new_version() {
        let mut cache = PredictionCache::new(10);
        let key = feature_key(&[1.0, 2.0]);
        cache.put("m", 1, key.clone(), 1_000, 60_000, prediction(0.5));
        assert_eq!(cache.get("m", 1, &key, 1_000).unwrap().output, vec![0.5]);
        assert_eq!(cache.get("m", 1, &key, 60_999).unwrap().output, vec![0.5]);
        assert!(cache.get("m", 1, &key, 61_000).is_none(), "expired");
        assert!(cache.get("m", 2, &key, 2_000).is_none(), "another version of the model");
        assert!(cache.get("other", 1, &key, 2_000).is_none(), "another model");
        assert!(cache.get("m", 1, &feature_key(&[1.0, 2.000_000_000_000_001]), 2_000).is_none());
    }

    #[test]
    fn keeps_at_most_its_capacity_per_model() {
        let mut cache = PredictionCache::new(3);
        for i in 0..10 {
            cache.put("m", 1, feature_key(&[i as f64]), 0, 1_000, prediction(i as f64));
        }
        assert!(cache.get("m", 1, &feature_key(&[6.0]), 0).is_none(), "the oldest went");
        assert!(cache.get("m", 1, &feature_key(&[9.0]), 0).is_some());
        assert_eq!(cache.models["m"].len(), 3);
    }

    #[test]
    fn wide_features_keep_the_cache_under_its_memory_bound() {
        let mut cache = PredictionCache::new(1_000_000);
        let wide = vec![0.5; 4_096];
        for i in 0..2_000 {
            let mut features = wide.clone();
            features[0] = i as f64;
            cache.put("m", 1, feature_key(&features), 0, 1_000, prediction(1.0));
        }
        let kept = cache.models["m"].len();
        assert!(kept < 2_000 && kept * 4_096 * 16 <= MAX_BYTES_PER_MODEL, "kept {kept}");
    }
}
