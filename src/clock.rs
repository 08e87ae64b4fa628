//! The one clock of a run. Every record the host makes — candles, orders,
//! fills, positions, activity, strategy timers and `now()` — takes its time
//! from the same [`Clock`]: the wall clock when trading on an exchange, a
//! simulated clock running `speed` times faster from a start time when the
//! synthetic or replay feed drives the market, and a manual clock that only
//! moves when a test moves it ([`Clock::manual`], [`Clock::advance`]).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::model::TimestampMs;

/// A cheap, shareable clock.
#[derive(Debug, Clone)]
pub struct Clock {
    inner: Arc<Kind>,
}

#[derive(Debug)]
enum Kind {
    Wall,
    Simulated { speed: f64, anchor: Mutex<Anchor> },
    Manual(Mutex<TimestampMs>),
}

/// How often a wait on a manual clock looks whether the clock was moved.
const MANUAL_POLL: Duration = Duration::from_millis(2);

/// A simulated clock reads `at` at the wall instant `since`; while `since`
/// is `None` it is paused at `at`.
#[derive(Debug, Clone, Copy)]
struct Anchor {
    at: TimestampMs,
    since: Option<Instant>,
}

impl Anchor {
    fn now(&self, speed: f64) -> TimestampMs {
        self.at + self.since.map_or(0, |since| (since.elapsed().as_secs_f64() * 1000.0 * speed) as i64)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::wall()
    }
}

impl Clock {
    /// The system's wall clock.
    pub fn wall() -> Clock {
        Clock { inner: Arc::new(Kind::Wall) }
    }

    /// A clock paused at `start` that, once [`Clock::resume`]d, runs `speed`
    /// times faster than the wall clock (a market feed resumes it when it starts).
    pub fn simulated(start: TimestampMs, speed: f64) -> Clock {
        let speed = if speed.is_finite() && speed > 0.0 { speed } else { 1.0 };
        Clock { inner: Arc::new(Kind::Simulated { speed, anchor: Mutex::new(Anchor { at: start, since: None }) }) }
    }

    /// A clock that stands at `start` until [`Clock::advance`] or
    /// [`Clock::set`] moves it (tests: timers and anything timed fire when
    /// the test says so, not after a sleep).
    pub fn manual(start: TimestampMs) -> Clock {
        Clock { inner: Arc::new(Kind::Manual(Mutex::new(start))) }
    }

    /// Moves a manual clock forward by `ms` (no effect on other clocks).
    pub fn advance(&self, ms: i64) {
        if let Kind::Manual(now) = &*self.inner {
            *now.lock().unwrap_or_else(|e| e.into_inner()) += ms;
        }
    }

    /// Sets a manual clock to `time` (no effect on other clocks).
    pub fn set(&self, time: TimestampMs) {
        if let Kind::Manual(now) = &*self.inner {
            *now.lock().unwrap_or_else(|e| e.into_inner()) = time;
        }
    }

    fn anchor(&self) -> Option<(f64, std::sync::MutexGuard<'_, Anchor>)> {
        match &*self.inner {
            Kind::Wall | Kind::Manual(_) => None,
            Kind::Simulated { speed, anchor } => Some((*speed, anchor.lock().unwrap_or_else(|e| e.into_inner()))),
        }
    }

    /// Starts a paused simulated clock running (no effect otherwise).
    pub fn resume(&self) {
        if let Some((_, mut anchor)) = self.anchor()
            && anchor.since.is_none()
        {
            anchor.since = Some(Instant::now());
        }
    }

    /// Moves a simulated clock forward to `time` at once if it is behind (a
    /// replay skips a gap in its data instead of waiting it out).
    pub fn skip_to(&self, time: TimestampMs) {
        if let Some((speed, mut anchor)) = self.anchor()
            && anchor.now(speed) < time
        {
            *anchor = Anchor { at: time, since: anchor.since.map(|_| Instant::now()) };
        }
    }

    /// The current time in milliseconds since the Unix epoch.
    pub fn now_ms(&self) -> TimestampMs {
        if let Kind::Manual(now) = &*self.inner {
            return *now.lock().unwrap_or_else(|e| e.into_inner());
        }
        match self.anchor() {
            None => chrono::Utc::now().timestamp_millis(),
            Some((speed, anchor)) => anchor.now(speed),
        }
    }

    /// The current time as a UTC date-time.
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        chrono::DateTime::from_timestamp_millis(self.now_ms()).unwrap_or_else(chrono::Utc::now)
    }

    /// How long in wall time until this clock reads `time` (zero if it has).
    /// A manual clock's wait is a short poll: only the test knows when it moves.
    pub fn wall_until(&self, time: TimestampMs) -> Duration {
        let speed = match &*self.inner {
            Kind::Wall => 1.0,
            Kind::Simulated { speed, .. } => *speed,
            Kind::Manual(_) if self.now_ms() >= time => return Duration::ZERO,
            Kind::Manual(_) => return MANUAL_POLL,
        };
        let ahead_ms = (time - self.now_ms()).max(0) as f64;
        Duration::from_secs_f64(ahead_ms / 1000.0 / speed)
    }

    /// What the API shows: `wall` or `simulated ×60`.
    pub fn label(&self) -> String {
        match &*self.inner {
            Kind::Wall => "wall".to_string(),
            Kind::Simulated { speed, .. } => format!("simulated ×{}", trim_number(*speed)),
            Kind::Manual(_) => "manual".to_string(),
        }
    }
}

fn trim_number(value: f64) -> String {
    if value.fract() == 0.0 { format!("{value:.0}") } else { format!("{value}") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_simulated_clock_starts_where_told_and_runs_faster() {
        let clock = Clock::simulated(1_000_000, 60.0);
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(clock.now_ms(), 1_000_000, "paused until resumed");
        clock.resume();
        let first = clock.now_ms();
        assert!((1_000_000..1_000_000 + 600).contains(&first), "{first}");
        std::thread::sleep(Duration::from_millis(50));
        let later = clock.now_ms();
        assert!(later - first >= 50 * 60 - 60, "50 ms of wall time is 3 s simulated: {}", later - first);
        assert!(clock.wall_until(later + 60_000) <= Duration::from_millis(1_001));
        assert_eq!(clock.label(), "simulated ×60");
        clock.skip_to(later + 86_400_000);
        assert!(clock.now_ms() >= later + 86_400_000, "a gap is skipped at once");
        assert_eq!(Clock::wall().label(), "wall");
    }

    #[test]
    fn a_manual_clock_moves_only_when_moved() {
        let clock = Clock::manual(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        assert_eq!(clock.wall_until(1_000), Duration::ZERO);
        assert!(clock.wall_until(2_000) <= MANUAL_POLL, "waits poll");
        clock.advance(500);
        assert_eq!(clock.now_ms(), 1_500);
        clock.set(86_400_000);
        assert_eq!(clock.now(), chrono::DateTime::from_timestamp_millis(86_400_000).unwrap());
        clock.resume();
        clock.skip_to(90_000_000);
        assert_eq!(clock.now_ms(), 86_400_000, "resume and skip_to belong to simulated clocks");
        assert_eq!(clock.label(), "manual");
    }
}
