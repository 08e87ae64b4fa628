//! Named timers of one strategy (`timer::every`, `timer::after`), on whatever
//! clock the runtime uses: wall time live, simulated time in a backtest.

use std::collections::BTreeMap;

use crate::model::TimestampMs;

/// A malformed timer duration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {0:?}: expected a number and a unit ms, s, m, h or d, e.g. \"500ms\" or \"5s\"")]
pub struct TimerError(pub String);

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

/// Parses `"500ms"`, `"5s"`, `"1m"`, `"2h"`, `"1d"` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<i64, TimerError> {
    let err = || TimerError(text.to_string());
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').ok_or_else(err)?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().map_err(|_| err())?;
    let unit_ms = match unit {
        "ms" => 1.0,
        "s" => 1_000.0,
        "m" => 60_000.0,
        "h" => 3_600_000.0,
        "d" => 86_400_000.0,
        _ => return Err(err()),
    };
    let ms = (number * unit_ms).round() as i64;
    if ms <= 0 { Err(err()) } else { Ok(ms) }
}

impl Timers {
    /// Fires `name` every `interval_ms`, first at `now + interval_ms`; replaces a timer of that name.
    pub fn every(&mut self, name: &str, now: TimestampMs, interval_ms: i64) {
        self.timers.insert(name.to_string(), Timer { due: now + interval_ms, every_ms: Some(interval_ms) });
    }

    /// Fires `name` once at `now + delay_ms`; replaces a timer of that name.
    pub fn after(&mut self, name: &str, now: TimestampMs, delay_ms: i64) {
        self.timers.insert(name.to_string(), Timer { due: now + delay_ms, every_ms: None });
    }

    /// Removes a timer; true if it existed.
    pub fn cancel(&mut self, name: &str) -> bool {
        self.timers.remove(name).is_some()
    }

    /// The earliest due time.
    pub fn next_due(&self) -> Option<TimestampMs> {
        self.timers.values().map(|t| t.due).min()
    }

    /// Names of timers due at `now`, earliest first; repeating ones are rescheduled
    /// (a late repeating timer fires once, not once per missed interval).
    pub fn take_due(&mut self, now: TimestampMs) -> Vec<String> {
        let mut due: Vec<(TimestampMs, String)> =
            self.timers.iter().filter(|(_, t)| t.due <= now).map(|(n, t)| (t.due, n.clone())).collect();
        due.sort();
        for (_, name) in &due {
            let timer = self.timers.get_mut(name).expect("listed above");
            match timer.every_ms {
                Some(every) => timer.due = now.max(timer.due + every),
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
    fn durations_parse() {
        assert_eq!(parse_duration_ms("5s"), Ok(5_000));
        assert_eq!(parse_duration_ms("1.5m"), Ok(90_000));
        assert_eq!(parse_duration_ms("250ms"), Ok(250));
        assert!(parse_duration_ms("5 parsecs").is_err());
        assert!(parse_duration_ms("0s").is_err());
    }

    #[test]
    fn repeating_and_one_shot_timers() {
        let mut t = Timers::default();
        t.every("a", 0, 10);
        t.after("b", 0, 15);
        assert_eq!(t.take_due(9), Vec::<String>::new());
        assert_eq!(t.take_due(10), vec!["a"]);
        assert_eq!(t.take_due(20), vec!["b", "a"]);
        assert_eq!(t.next_due(), Some(30));
        assert!(t.cancel("a"));
        assert_eq!(t.next_due(), None);
    }
}
