//! Native incremental indicators with TA-Lib's definitions: the same seeding,
//! the same warm-up (`None` until enough data). Each `update` takes one new
//! value or candle and returns the current output.

use std::collections::VecDeque;

use crate::model::Candle;

/// Simple moving average of the last `n` values (TA_SMA).
#[derive(Debug, Clone)]
pub struct Sma {
    n: usize,
    window: VecDeque<f64>,
    sum: f64,
}

impl Sma {
    /// SMA over `n` values (`n` ≥ 1).
    pub fn new(n: usize) -> Self {
        Sma { n: n.max(1), window: VecDeque::with_capacity(n.max(1) + 1), sum: 0.0 }
    }
    /// Adds a value.
    pub fn update(&mut self, value: f64) -> Option<f64> {
        self.window.push_back(value);
        self.sum += value;
        if self.window.len() > self.n {
            self.sum -= self.window.pop_front().unwrap_or_default();
        }
        (self.window.len() == self.n).then(|| self.sum / self.n as f64)
    }
}

/// Exponential moving average seeded with the SMA of the first `n` values (TA_EMA).
#[derive(Debug, Clone)]
pub struct Ema {
    n: usize,
    k: f64,
    seen: usize,
    seed_sum: f64,
    value: Option<f64>,
}

impl Ema {
    /// EMA with smoothing `2 / (n + 1)`.
    pub fn new(n: usize) -> Self {
        let n = n.max(1);
        Ema { n, k: 2.0 / (n as f64 + 1.0), seen: 0, seed_sum: 0.0, value: None }
    }
    /// Adds a value.
    pub fn update(&mut self, value: f64) -> Option<f64> {
        self.value = match self.value {
            Some(prev) => Some((value - prev) * self.k + prev),
            None => {
                self.seen += 1;
                self.seed_sum += value;
                (self.seen == self.n).then(|| self.seed_sum / self.n as f64)
            }
        };
        self.value
    }
}

/// Wilder's relative strength index (TA_RSI): averages seeded with the simple
/// mean of the first `n` changes, first value after `n + 1` prices.
#[derive(Debug, Clone)]
pub struct Rsi {
    n: usize,
    prev: Option<f64>,
    changes: usize,
    avg_gain: f64,
    avg_loss: f64,
}

impl Rsi {
    /// RSI over `n` changes.
    pub fn new(n: usize) -> Self {
        Rsi { n: n.max(1), prev: None, changes: 0, avg_gain: 0.0, avg_loss: 0.0 }
    }
    /// Adds a close.
    pub fn update(&mut self, close: f64) -> Option<f64> {
        let prev = self.prev.replace(close)?;
        let change = close - prev;
        let (gain, loss) = if change > 0.0 { (change, 0.0) } else { (0.0, -change) };
        let n = self.n as f64;
        self.changes += 1;
        if self.changes <= self.n {
            self.avg_gain += gain / n;
            self.avg_loss += loss / n;
            if self.changes < self.n {
                return None;
            }
        } else {
            self.avg_gain = (self.avg_gain * (n - 1.0) + gain) / n;
            self.avg_loss = (self.avg_loss * (n - 1.0) + loss) / n;
        }
        let total = self.avg_gain + self.avg_loss;
        Some(if total.abs() < 1e-14 { 0.0 } else { 100.0 * self.avg_gain / total })
    }
}

/// Average true range with Wilder smoothing (TA_ATR): first value after `n + 1` candles.
#[derive(Debug, Clone)]
pub struct Atr {
    n: usize,
    prev_close: Option<f64>,
    seen: usize,
    value: f64,
}

impl Atr {
    /// ATR over `n` true ranges.
    pub fn new(n: usize) -> Self {
        Atr { n: n.max(1), prev_close: None, seen: 0, value: 0.0 }
    }
    /// Adds a candle.
    pub fn update(&mut self, candle: &Candle) -> Option<f64> {
        let prev_close = self.prev_close.replace(candle.close)?;
        let true_range =
            (candle.high - candle.low).max((candle.high - prev_close).abs()).max((candle.low - prev_close).abs());
        let n = self.n as f64;
        self.seen += 1;
        if self.seen <= self.n {
            self.value += true_range;
            if self.seen < self.n {
                return None;
            }
            self.value /= n;
        } else {
            self.value = (self.value * (n - 1.0) + true_range) / n;
        }
        Some(self.value)
    }
}

/// MACD line, signal line and histogram.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MacdValue {
    /// Fast EMA minus slow EMA.
    pub macd: f64,
    /// EMA of the MACD line.
    pub signal: f64,
    /// MACD minus signal.
    pub hist: f64,
}

/// MACD as TA_MACD computes it: both EMAs start at the slow EMA's first bar,
/// the fast one seeded with the SMA of the `fast` closes ending there; the
/// signal EMA is seeded with the SMA of the first `signal` MACD values.
#[derive(Debug, Clone)]
pub struct Macd {
    fast_n: usize,
    slow_n: usize,
    closes: VecDeque<f64>,
    fast: Option<f64>,
    slow: Option<f64>,
    signal: Ema,
}

impl Macd {
    /// MACD(fast, slow, signal); swaps fast and slow if given the wrong way round.
    pub fn new(fast: usize, slow: usize, signal: usize) -> Self {
        let (fast, slow) = if slow < fast { (slow, fast) } else { (fast, slow) };
        Macd {
            fast_n: fast.max(1),
            slow_n: slow.max(1),
            closes: VecDeque::new(),
            fast: None,
            slow: None,
            signal: Ema::new(signal),
        }
    }
    /// Adds a close.
    pub fn update(&mut self, close: f64) -> Option<MacdValue> {
        let k = |n: usize| 2.0 / (n as f64 + 1.0);
        match (self.fast, self.slow) {
            (Some(fast), Some(slow)) => {
                self.fast = Some((close - fast) * k(self.fast_n) + fast);
                self.slow = Some((close - slow) * k(self.slow_n) + slow);
            }
            _ => {
                self.closes.push_back(close);
                if self.closes.len() < self.slow_n {
                    return None;
                }
                let mean = |n: usize| self.closes.iter().rev().take(n).sum::<f64>() / n as f64;
                self.fast = Some(mean(self.fast_n));
                self.slow = Some(mean(self.slow_n));
                self.closes.clear();
            }
        }
        let macd = self.fast? - self.slow?;
        let signal = self.signal.update(macd)?;
        Some(MacdValue { macd, signal, hist: macd - signal })
    }
}

/// Bollinger Bands value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BBandsValue {
    /// Middle + k standard deviations.
    pub upper: f64,
    /// SMA.
    pub middle: f64,
    /// Middle − k standard deviations.
    pub lower: f64,
}

/// Bollinger Bands with an SMA middle and population standard deviation (TA_BBANDS).
#[derive(Debug, Clone)]
pub struct BBands {
    n: usize,
    k: f64,
    window: VecDeque<f64>,
    sum: f64,
    sum_sq: f64,
}

impl BBands {
    /// Bands over `n` closes, `k` deviations wide.
    pub fn new(n: usize, k: f64) -> Self {
        BBands { n: n.max(1), k, window: VecDeque::new(), sum: 0.0, sum_sq: 0.0 }
    }
    /// Adds a close.
    pub fn update(&mut self, close: f64) -> Option<BBandsValue> {
        self.window.push_back(close);
        self.sum += close;
        self.sum_sq += close * close;
        if self.window.len() > self.n {
            let old = self.window.pop_front().unwrap_or_default();
            self.sum -= old;
            self.sum_sq -= old * old;
        }
        if self.window.len() < self.n {
            return None;
        }
        let n = self.n as f64;
        let middle = self.sum / n;
        let variance = self.sum_sq / n - middle * middle;
        let deviation = if variance > 0.0 { variance.sqrt() } else { 0.0 };
        Some(BBandsValue { upper: middle + self.k * deviation, middle, lower: middle - self.k * deviation })
    }
}

/// Highest of the last `n` values (TA_MAX; applied to highs by `ta::highest`).
#[derive(Debug, Clone)]
pub struct Highest {
    extreme: Extreme,
}

impl Highest {
    /// Highest over `n` values.
    pub fn new(n: usize) -> Self {
        Highest { extreme: Extreme::new(n, |new, old| new >= old) }
    }
    /// Adds a value.
    pub fn update(&mut self, value: f64) -> Option<f64> {
        self.extreme.update(value)
    }
}

/// Lowest of the last `n` values (TA_MIN; applied to lows by `ta::lowest`).
#[derive(Debug, Clone)]
pub struct Lowest {
    extreme: Extreme,
}

impl Lowest {
    /// Lowest over `n` values.
    pub fn new(n: usize) -> Self {
        Lowest { extreme: Extreme::new(n, |new, old| new <= old) }
    }
    /// Adds a value.
    pub fn update(&mut self, value: f64) -> Option<f64> {
        self.extreme.update(value)
    }
}

/// Sliding-window extreme with a monotonic deque: O(1) per update.
#[derive(Debug, Clone)]
struct Extreme {
    n: usize,
    index: usize,
    deque: VecDeque<(usize, f64)>,
    dominates: fn(f64, f64) -> bool,
}

impl Extreme {
    fn new(n: usize, dominates: fn(f64, f64) -> bool) -> Self {
        Extreme { n: n.max(1), index: 0, deque: VecDeque::new(), dominates }
    }
    fn update(&mut self, value: f64) -> Option<f64> {
        while self.deque.back().is_some_and(|&(_, old)| (self.dominates)(value, old)) {
            self.deque.pop_back();
        }
        self.deque.push_back((self.index, value));
        self.index += 1;
        while self.deque.front().is_some_and(|&(i, _)| i + self.n < self.index) {
            self.deque.pop_front();
        }
        (self.index >= self.n).then(|| self.deque.front().map(|&(_, v)| v)).flatten()
    }
}

/// Volume-weighted average of the typical price `(high + low + close) / 3`,
/// anchored at the start of each UTC day (not a TA-Lib function).
#[derive(Debug, Clone, Default)]
pub struct Vwap {
    day: Option<i64>,
    price_volume: f64,
    volume: f64,
}

impl Vwap {
    /// An empty VWAP.
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds a candle; `None` while the session has no volume.
    pub fn update(&mut self, candle: &Candle) -> Option<f64> {
        let day = candle.time.div_euclid(86_400_000);
        if self.day != Some(day) {
            self.day = Some(day);
            self.price_volume = 0.0;
            self.volume = 0.0;
        }
        let typical = (candle.high + candle.low + candle.close) / 3.0;
        self.price_volume += typical * candle.volume;
        self.volume += candle.volume;
        (self.volume > 0.0).then(|| self.price_volume / self.volume)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warm_up_lengths_match_ta_lib_lookbacks() {
        let first_output =
            |mut f: Box<dyn FnMut(f64) -> bool>| (0..100).position(|i| f(i as f64 * 1.5 + (i % 3) as f64)).unwrap();
        let mut sma = Sma::new(10);
        assert_eq!(first_output(Box::new(move |v| sma.update(v).is_some())), 9);
        let mut ema = Ema::new(10);
        assert_eq!(first_output(Box::new(move |v| ema.update(v).is_some())), 9);
        let mut rsi = Rsi::new(14);
        assert_eq!(first_output(Box::new(move |v| rsi.update(v).is_some())), 14);
        let mut macd = Macd::new(12, 26, 9);
        assert_eq!(first_output(Box::new(move |v| macd.update(v).is_some())), 33);
        let mut max = Highest::new(5);
        assert_eq!(first_output(Box::new(move |v| max.update(v).is_some())), 4);
    }

    #[test]
    fn extremes_slide() {
        let mut hi = Highest::new(3);
        let mut lo = Lowest::new(3);
        let values = [5.0, 1.0, 4.0, 2.0, 3.0, 0.5];
        let highs: Vec<_> = values.iter().map(|v| hi.update(*v)).collect();
        let lows: Vec<_> = values.iter().map(|v| lo.update(*v)).collect();
        assert_eq!(highs, vec![None, None, Some(5.0), Some(4.0), Some(4.0), Some(3.0)]);
        assert_eq!(lows, vec![None, None, Some(1.0), Some(1.0), Some(2.0), Some(0.5)]);
    }
}
