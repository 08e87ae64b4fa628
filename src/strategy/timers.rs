//! Named timers of one strategy (`timer::every`, `timer::after`), on whatever
//! clock the runtime uses: wall time live, simulated time in a backtest.

use std::collections::BTreeMap;

use crate::model::TimestampMs;

#[derive(Debug, Clone)]
struct Timer {
    due: TimestampMs,
    every_ms: Option<i64>,
}

/// The timers of one strategy.
#[derive(Debug, Clone, Default)]
pub struct Timers {
    timers: BTreeMap<String, Timer>,
}

impl Timers {
    /// Fires `name` every `interval_ms`, first at `now + interval_ms`; replaces a timer of that name.
    pub fn every(&mut self, name: &str, now: TimestampMs, interval_ms: i64) {
        self.timers
            .insert(name.to_string(), Timer { due: now.saturating_add(interval_ms), every_ms: Some(interval_ms) });
    }

    /// Fires `name` once at `now + delay_ms`; replaces a timer of that name.
    pub fn after(&mut self, name: &str, now: TimestampMs, delay_ms: i64) {
        self.timers.insert(name.to_string(), Timer { due: now.saturating_add(delay_ms), every_ms: None });
    }

    /// Timers set.
    pub fn len(&self) -> usize {
        self.timers.len()
    }

    /// True when no timer is set.
    pub fn is_empty(&self) -> bool {
        self.timers.is_empty()
    }

    /// True if a timer of that name is set.
    pub fn contains(&self, name: &str) -> bool {
        self.timers.contains_key(name)
    }

    /// Removes a timer; true if it existed.
    pub fn cancel(&mut self, name: &str) -> bool {
        self.timers.remove(name).is_some()
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<TimestampMs> {
        self.timers.values().map(|t| t.due).min()
    }

    /// Names of timers due at `now`, earliest first; repeating ones are
    /// rescheduled on their own schedule (a late repeating timer fires once,
    /// not once per missed interval, and next at its first time after `now`).
    pub fn take_due(&mut self, now: TimestampMs) -> Vec<String> {
        let mut due: Vec<(TimestampMs, String)> =
            self.timers.iter().filter(|(_, t)| t.due <= now).map(|(n, t)| (t.due, n.clone())).collect();
        due.sort();
        for (_, name) in &due {
            let timer = self.timers.get_mut(name).expect("listed above");
            match timer.every_ms {
                // The next time on its schedule after `now` (not `now` itself: it would fire again at once).
                Some(every) => {
                    let next = timer.due.saturating_add(every);
                    let missed = if next <= now { (now - next) / every + 1 } else { 0 };
                    timer.due = next.saturating_add(missed.saturating_mul(every));
                }
                None => {
                    self.timers.remove(name);
                }
            }
        }
        due.into_iter().map(|(_, name)| name).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeating_and_one_shot_timers() {
        let mut t = Timers::default();
        t.every("a", 0, 10);
        t.after("b", 0, 15);
        assert_eq!(t.take_due(9), Vec::<String>::new());
        assert_eq!(t.take_due(10), vec!["a"]);
        assert_eq!(t.take_due(20), vec!["b", "a"]);
        assert_eq!(t.next_due(), Some(30));
        // Late by three intervals: fires once, then keeps its schedule.
        assert_eq!(t.take_due(65), vec!["a"]);
        assert_eq!(t.take_due(65), Vec::<String>::new(), "not again at the same time");
        assert_eq!(t.next_due(), Some(70));
        assert!(t.cancel("a"));
        assert_eq!(t.next_due(), None);
    }
}
