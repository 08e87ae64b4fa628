//! Protections: limits on what has happened rather than on one order. Per
//! scope (the account, or a strategy), on the run's clock (the backtest's bar
//! clock too):
//! - `max_daily_loss`: the loss since the trading day began (realised +
//!   unrealised) → `reduce_only` until the next day begins (or a manual resume,
//!   after which it does not trigger again that day);
//! - `max_drawdown_pct`: the fall from peak equity → `halted` until a manual
//!   resume (which starts a new peak);
//! - `losing_streak`: `trades` losing exits within the window → `reduce_only`
//!   for the cooldown.
//!
//! A strategy's equity is the account's equity when it was first watched plus
//! its own PnL since. What a protection imposes never loosens a stricter state
//! set by hand, and lifting it never undoes one.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use crate::config::RiskLimits;
use crate::model::{TimestampMs, TradingState, TradingStates};

const DAY_MS: i64 = 86_400_000;

/// What a protection did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectionEvent {
    /// `triggered` or `lifted`.
    pub event: &'static str,
    /// `max_daily_loss`, `max_drawdown_pct` or `losing_streak`.
    pub protection: &'static str,
    /// `account` or the strategy's name.
    pub scope: String,
    /// The state it imposed (or that was lifted).
    pub state: TradingState,
    /// Until when (none: until a manual resume).
    pub until: Option<TimestampMs>,
    /// The figures: the limit and the value that crossed it.
    pub detail: String,
}

/// A state a protection imposed on a scope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Imposed {
    /// `max_daily_loss`, `max_drawdown_pct` or `losing_streak`.
    pub protection: String,
    /// What it imposed.
    pub state: TradingState,
    /// Until when (none: until a manual resume).
    pub until: Option<TimestampMs>,
}

/// What the protections watch for one scope, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ProtectionStatus {
    /// `account` or the strategy's name.
    pub scope: String,
    /// Equity when the trading day began (the daily loss counts from it).
    pub day_start_equity: Decimal,
    /// Peak equity (the drawdown counts from it).
    pub peak_equity: Decimal,
    /// Losing exits within the losing streak's window.
    pub losing_exits: usize,
    /// What a protection imposes now, if anything.
    pub imposed: Option<Imposed>,
}

/// What is watched for one scope.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct Watch {
    /// Equity when first watched, for a strategy (its PnL is added).
    base: Decimal,
    day: i64,
    day_start: Decimal,
    peak: Decimal,
    losses: Vec<TimestampMs>,
    imposed: Option<Imposed>,
    /// The day a daily-loss trigger was resumed by hand: not again that day.
    waived_day: Option<i64>,
    /// A manual resume happened: the next look starts a new peak.
    new_peak: bool,
}

/// The protections' state of every scope (stored: it survives restarts).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Protections {
    scopes: BTreeMap<String, Watch>,
}

/// The scope key of the account (strategies use their names).
pub const ACCOUNT: &str = "";

/// The scope's name in events.
fn scope_name(key: &str) -> String {
    if key == ACCOUNT { "account".into() } else { key.to_string() }
}

impl Protections {
    /// Every watched scope, as the API shows it.
    pub fn status(&self) -> Vec<ProtectionStatus> {
        self.scopes
            .iter()
            .map(|(key, w)| ProtectionStatus {
                scope: scope_name(key),
                day_start_equity: w.day_start,
                peak_equity: w.peak,
                losing_exits: w.losses.len(),
                imposed: w.imposed.clone(),
            })
            .collect()
    }

    /// Notes a fill that realised `pnl` for `strategy`: a loss counts toward
    /// the losing streaks of the strategy and of the account.
    pub fn on_exit(&mut self, strategy: &str, pnl: Decimal, now: TimestampMs) {
        if pnl >= Decimal::ZERO {
            return;
        }
        for key in [ACCOUNT, strategy] {
            if let Some(watch) = self.scopes.get_mut(key) {
                watch.losses.push(now);
            }
        }
    }

    /// A manual change of a scope's state: whatever a protection imposed is
    /// dropped; a resume waives the daily loss for the day and starts a new peak.
    pub fn on_manual(&mut self, strategy: Option<&str>, state: TradingState) {
        if let Some(watch) = self.scopes.get_mut(strategy.unwrap_or(ACCOUNT)) {
            watch.imposed = None;
            if state == TradingState::Active {
                watch.waived_day = Some(watch.day);
                watch.new_peak = true;
                watch.losses.clear();
            }
        }
    }

    /// Looks at one scope at `now` with its limits: its equity is the base
    /// it was first seen with (`base_if_new`) plus `pnl`. Rolls the day, lifts
    /// what expired, triggers what is crossed; changes `trading` and returns
    /// what happened. (The account: base 0, its equity as `pnl`.)
    pub fn watch(
        &mut self,
        key: &str,
        limits: &RiskLimits,
        (base_if_new, pnl): (Decimal, Decimal),
        now: TimestampMs,
        trading: &mut TradingStates,
    ) -> Vec<ProtectionEvent> {
        let day_start_ms = i64::from(limits.day_start_utc_hour.unwrap_or(0)) * 3_600_000;
        let day = (now - day_start_ms).div_euclid(DAY_MS);
        let watch = self.scopes.entry(key.to_string()).or_insert_with(|| Watch {
            base: base_if_new,
            day,
            day_start: base_if_new + pnl,
            peak: base_if_new + pnl,
            ..Default::default()
        });
        let equity = watch.base + pnl;
        let strategy = (key != ACCOUNT).then_some(key);
        let mut events = Vec::new();
        if day != watch.day {
            watch.day = day;
            watch.day_start = equity;
        }
        if watch.new_peak {
            watch.new_peak = false;
            watch.peak = equity;
        }
        watch.peak = watch.peak.max(equity);
        if let Some(imposed) = watch.imposed.clone().filter(|i| i.until.is_some_and(|until| until <= now)) {
            watch.imposed = None;
            if current(trading, strategy) == imposed.state {
                trading.set(strategy, TradingState::Active);
            }
            events.push(ProtectionEvent {
                event: "lifted",
                protection: protection_name(&imposed.protection),
                scope: scope_name(key),
                state: imposed.state,
                until: imposed.until,
                detail: "its time is over".into(),
            });
        }
        let mut impose = |protection: &'static str, state: TradingState, until: Option<TimestampMs>, detail: String| {
            if current(trading, strategy) >= state {
                return; // already as strict or stricter
            }
            trading.set(strategy, state);
            watch.imposed = Some(Imposed { protection: protection.into(), state, until });
            events.push(ProtectionEvent {
                event: "triggered",
                protection,
                scope: scope_name(key),
                state,
                until,
                detail,
            });
        };
        if let Some(max) = limits.max_daily_loss {
            let loss = watch.day_start - equity;
            if loss >= max && watch.waived_day != Some(day) {
                let next_day = (day + 1) * DAY_MS + day_start_ms;
                let detail = format!("lost {loss} since the day began, the limit is {max}");
                impose("max_daily_loss", TradingState::ReduceOnly, Some(next_day), detail);
            }
        }
        if let Some(pct) = limits.max_drawdown_pct
            && watch.peak > Decimal::ZERO
        {
            let drawdown = (watch.peak - equity) / watch.peak * Decimal::ONE_HUNDRED;
            if drawdown >= pct {
                let detail = format!(
                    "equity {equity} is {}% below its peak {}, the limit is {pct}%",
                    drawdown.round_dp(4),
                    watch.peak
                );
                impose("max_drawdown_pct", TradingState::Halted, None, detail);
            }
        }
        if let Some(streak) = &limits.losing_streak {
            let window = streak.window_minutes as i64 * 60_000;
            watch.losses.retain(|t| now - *t < window);
            if watch.losses.len() >= streak.trades as usize {
                let losses = watch.losses.len();
                watch.losses.clear();
                let until = now + streak.cooldown_minutes as i64 * 60_000;
                let detail = format!(
                    "{losses} losing exits within {} minutes, the limit is {}",
                    streak.window_minutes, streak.trades
                );
                impose("losing_streak", TradingState::ReduceOnly, Some(until), detail);
            }
        }
        events
    }
}

/// The state of a scope (the account's, or a strategy's own).
fn current(trading: &TradingStates, strategy: Option<&str>) -> TradingState {
    match strategy {
        None => trading.account,
        Some(name) => trading.strategies.get(name).copied().unwrap_or_default(),
    }
}

/// A protection's name as the static string events carry.
fn protection_name(name: &str) -> &'static str {
    ["max_daily_loss", "max_drawdown_pct", "losing_streak"].into_iter().find(|n| *n == name).unwrap_or("protection")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LosingStreak;

    const HOUR: i64 = 3_600_000;

    fn d(value: i64) -> Decimal {
        Decimal::from(value)
    }

    /// The account's protections at `time` with `equity`.
    fn look(
        p: &mut Protections,
        limits: &RiskLimits,
        equity: i64,
        time: i64,
        trading: &mut TradingStates,
    ) -> Vec<ProtectionEvent> {
        p.watch(ACCOUNT, limits, (Decimal::ZERO, d(equity)), time, trading)
    }

    #[test]
    fn the_daily_loss_makes_the_account_reduce_only_until_the_next_day() {
        let limits = RiskLimits { max_daily_loss: Some(d(100)), day_start_utc_hour: Some(6), ..Default::default() };
        let (mut p, mut trading) = (Protections::default(), TradingStates::default());
        let morning = 10 * HOUR; // day 0, after the 06:00 start
        assert!(look(&mut p, &limits, 10_000, morning, &mut trading).is_empty());
        assert!(look(&mut p, &limits, 9_901, morning + HOUR, &mut trading).is_empty(), "99 lost: under the limit");
        let events = look(&mut p, &limits, 9_900, morning + 2 * HOUR, &mut trading);
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(
            (events[0].event, events[0].protection, events[0].state),
            ("triggered", "max_daily_loss", TradingState::ReduceOnly)
        );
        assert_eq!(events[0].until, Some(24 * HOUR + 6 * HOUR), "until the next day begins at 06:00");
        assert!(
            events[0].detail.contains("lost 100") && events[0].detail.contains("limit is 100"),
            "{}",
            events[0].detail
        );
        assert_eq!(trading.account, TradingState::ReduceOnly);
        assert!(
            look(&mut p, &limits, 9_800, 29 * HOUR, &mut trading).is_empty(),
            "05:00 the next morning: still day 0"
        );
        assert_eq!(trading.account, TradingState::ReduceOnly);
        let lifted = look(&mut p, &limits, 9_800, 30 * HOUR, &mut trading);
        assert_eq!((lifted.len(), lifted[0].event), (1, "lifted"), "06:00 begins the new day: {lifted:?}");
        assert_eq!(trading.account, TradingState::Active);
        assert!(look(&mut p, &limits, 9_701, 31 * HOUR, &mut trading).is_empty(), "the new day counts from 9 800");
        assert_eq!(look(&mut p, &limits, 9_700, 32 * HOUR, &mut trading)[0].protection, "max_daily_loss");
    }

    #[test]
    fn a_drawdown_halts_until_a_manual_resume_which_starts_a_new_peak() {
        let limits = RiskLimits { max_drawdown_pct: Some(d(10)), ..Default::default() };
        let (mut p, mut trading) = (Protections::default(), TradingStates::default());
        assert!(look(&mut p, &limits, 10_000, 0, &mut trading).is_empty());
        assert!(look(&mut p, &limits, 11_000, HOUR, &mut trading).is_empty());
        assert!(look(&mut p, &limits, 9_901, 2 * HOUR, &mut trading).is_empty(), "9.99 % below the peak");
        let events = look(&mut p, &limits, 9_900, 3 * HOUR, &mut trading);
        assert_eq!(
            (events[0].protection, events[0].state, events[0].until),
            ("max_drawdown_pct", TradingState::Halted, None)
        );
        assert!(look(&mut p, &limits, 9_900, 100 * HOUR, &mut trading).is_empty());
        assert_eq!(trading.account, TradingState::Halted, "no time lifts it");
        trading.set(None, TradingState::Active);
        p.on_manual(None, TradingState::Active);
        assert!(look(&mut p, &limits, 9_900, 101 * HOUR, &mut trading).is_empty(), "a new peak at 9 900");
        assert!(look(&mut p, &limits, 8_911, 102 * HOUR, &mut trading).is_empty());
        assert_eq!(look(&mut p, &limits, 8_910, 103 * HOUR, &mut trading)[0].state, TradingState::Halted);
    }

    #[test]
    fn a_losing_streak_stops_entries_for_the_cooldown() {
        let streak = LosingStreak { trades: 3, window_minutes: 60, cooldown_minutes: 30 };
        let limits = RiskLimits { losing_streak: Some(streak), ..Default::default() };
        let (mut p, mut trading) = (Protections::default(), TradingStates::default());
        let strategy = |p: &mut Protections, time: i64, trading: &mut TradingStates| {
            p.watch("s", &limits, (d(10_000), Decimal::ZERO), time, trading)
        };
        assert!(strategy(&mut p, 0, &mut trading).is_empty());
        p.on_exit("s", d(-5), 0);
        p.on_exit("s", d(7), 10 * 60_000); // a win does not count
        p.on_exit("s", d(-5), 20 * 60_000);
        assert!(strategy(&mut p, 61 * 60_000, &mut trading).is_empty(), "the first loss left the window");
        p.on_exit("s", d(-5), 62 * 60_000);
        p.on_exit("s", d(-5), 63 * 60_000);
        let events = strategy(&mut p, 63 * 60_000, &mut trading);
        assert_eq!((events[0].protection, events[0].until), ("losing_streak", Some(93 * 60_000)));
        assert_eq!(trading.strategies["s"], TradingState::ReduceOnly);
        assert!(strategy(&mut p, 92 * 60_000, &mut trading).is_empty());
        assert_eq!(strategy(&mut p, 93 * 60_000, &mut trading)[0].event, "lifted");
        assert_eq!(trading.of("s"), TradingState::Active);
    }

    #[test]
    fn a_stricter_state_set_by_hand_is_neither_loosened_nor_undone() {
        let limits = RiskLimits { max_daily_loss: Some(d(100)), ..Default::default() };
        let (mut p, mut trading) = (Protections::default(), TradingStates::default());
        look(&mut p, &limits, 10_000, HOUR, &mut trading);
        trading.set(None, TradingState::Halted);
        assert!(look(&mut p, &limits, 9_000, 2 * HOUR, &mut trading).is_empty());
        assert!(look(&mut p, &limits, 9_000, 30 * HOUR, &mut trading).is_empty());
        assert_eq!(trading.account, TradingState::Halted);
    }
}
