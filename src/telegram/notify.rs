//! Notifications: which activity events become one (by `[telegram] notify`
//! kind), and how a burst of them reads as one message — fills summed per
//! strategy, symbol and side, other events one line each, a count of what
//! did not fit and of what was dropped.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::Value;

use super::render::Block;
use crate::activity::{ActivityEvent, ActivityKind};
use crate::config::NotifyKind;

/// Most lines of one kind a notification lists before "… and N more".
const LINES_PER_KIND: usize = 12;

/// The notification kind of an activity event, if it is one.
pub fn kind_of(event: &ActivityEvent) -> Option<NotifyKind> {
    let what = event.data.get("event").and_then(Value::as_str).unwrap_or_default();
    match event.kind {
        ActivityKind::Fill => Some(NotifyKind::Fills),
        ActivityKind::Order => {
            (event.data.get("status").and_then(Value::as_str) == Some("rejected")).then_some(NotifyKind::Rejections)
        }
        ActivityKind::Strategy => Some(NotifyKind::Strategies),
        ActivityKind::Risk => Some(NotifyKind::Risk),
        // The bot's own state is not news to the chat it could not reach.
        ActivityKind::Health => event
            .data
            .get("component")
            .and_then(Value::as_str)
            .filter(|c| *c != super::COMPONENT)
            .map(|_| NotifyKind::Exchange),
        ActivityKind::System => (what != "feed_finished").then_some(NotifyKind::System),
        ActivityKind::Log => {
            (event.data.get("level").and_then(Value::as_str) == Some("notify")).then_some(NotifyKind::Notify)
        }
        ActivityKind::Position => None,
    }
}

fn text(value: &Value, key: &str) -> String {
    match value.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

fn decimal(value: &Value, key: &str) -> Decimal {
    match value.get(key) {
        Some(Value::String(s)) => s.parse().unwrap_or_default(),
        Some(Value::Number(n)) => n.to_string().parse().unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

/// One line for an event other than a fill.
fn line(event: &ActivityEvent) -> String {
    let d = &event.data;
    let who = event.strategy.as_deref().unwrap_or("host");
    let what = text(d, "event");
    match event.kind {
        ActivityKind::Order => format!(
            "{who}: {} {} {} rejected: {}",
            text(d, "side"),
            text(d, "size"),
            text(d, "symbol"),
            text(d, "reason")
        ),
        ActivityKind::Strategy => {
            let detail = [text(d, "error"), text(d, "reason")].into_iter().find(|s| !s.is_empty());
            let version = d.get("version").map(|v| format!(" (version {v})")).unwrap_or_default();
            let restart = d.get("restart_in_ms").map(|ms| format!(", restarting in {ms} ms")).unwrap_or_default();
            match detail {
                Some(detail) => format!("{who} {}{version}{restart}: {detail}", what.replace('_', " ")),
                None => format!("{who} {}{version}", what.replace('_', " ")),
            }
        }
        ActivityKind::Risk => match what.as_str() {
            "kill" => format!(
                "KILL SWITCH: account halted, {} order(s) cancelled, {} flatten order(s)",
                text(d, "cancelled"),
                text(d, "flatten_orders")
            ),
            "trading_state" => format!("trading state of {}: {}", text(d, "scope"), text(d, "state")),
            "limits" => "risk limits replaced".to_string(),
            "protection" => {
                let p = d.get("protection").cloned().unwrap_or_default();
                format!(
                    "protection {} {} ({}): {}",
                    text(&p, "protection"),
                    text(&p, "event"),
                    text(&p, "scope"),
                    text(&p, "detail")
                )
            }
            other => format!("risk: {other}"),
        },
        ActivityKind::Health => {
            let component = text(d, "component");
            match text(d, "state").as_str() {
                // Up with a reason: still serving, something to know (a model file refused, a new model version).
                "up" if !text(d, "reason").is_empty() => format!("{component}: {}", text(d, "reason")),
                "up" => format!("{component} is back up"),
                state => format!("{component} is {state}: {}", text(d, "reason")),
            }
        }
        ActivityKind::System => match what.as_str() {
            "started" => format!("tradehost {} started ({} mode)", text(d, "version"), text(d, "mode")),
            "shutdown_started" => format!("shutting down ({})", text(d, "reason")),
            "task_failed" => format!("task {} failed ({}): {}", text(d, "task"), text(d, "action"), text(d, "message")),
            "task_restarted" => format!("task {} restarted", text(d, "task")),
            "exchange_difference" => format!("exchange difference: {}", text(d, "detail")),
            other => other.replace('_', " "),
        },
        ActivityKind::Log => format!("{who}: {}", text(d, "message")),
        ActivityKind::Fill | ActivityKind::Position => String::new(),
    }
}

/// Fills of one strategy, symbol and side summed.
#[derive(Default)]
struct FillSum {
    count: usize,
    size: Decimal,
    notional: Decimal,
    fees: Decimal,
}

/// A burst of notifications as one message's blocks; `dropped` notifications
/// did not fit the queue and are only counted.
pub fn summarize(events: &[ActivityEvent], dropped: u64) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut fills: BTreeMap<(String, String, String), FillSum> = BTreeMap::new();
    let mut lines: BTreeMap<NotifyKind, Vec<String>> = BTreeMap::new();
    for event in events {
        let Some(kind) = kind_of(event) else { continue };
        if kind == NotifyKind::Fills {
            let d = &event.data;
            let key = (text(d, "strategy"), text(d, "symbol"), text(d, "side"));
            let sum = fills.entry(key).or_default();
            let (size, price) = (decimal(d, "size"), decimal(d, "price"));
            sum.count += 1;
            sum.size = sum.size.saturating_add(size);
            sum.notional = sum.notional.saturating_add(size.saturating_mul(price));
            sum.fees = sum.fees.saturating_add(decimal(d, "fee"));
        } else {
            lines.entry(kind).or_default().push(line(event));
        }
    }
    if !fills.is_empty() {
        let count: usize = fills.values().map(|s| s.count).sum();
        blocks.push(Block::Title(if count == 1 { "1 fill".into() } else { format!("{count} fills") }));
        let rows = fills
            .iter()
            .map(|((strategy, symbol, side), sum)| {
                let average = sum.notional.checked_div(sum.size).unwrap_or_default().round_dp(8).normalize();
                vec![
                    strategy.clone(),
                    symbol.clone(),
                    side.clone(),
                    sum.count.to_string(),
                    sum.size.normalize().to_string(),
                    average.to_string(),
                    sum.fees.round_dp(8).normalize().to_string(),
                ]
            })
            .collect();
        let header = ["strategy", "symbol", "side", "fills", "size", "avg price", "fees"];
        blocks.push(Block::Table { header: header.map(String::from).to_vec(), rows });
    }
    for (kind, lines) in lines {
        let title = match kind {
            NotifyKind::Rejections => "Orders rejected",
            NotifyKind::Strategies => "Strategies",
            NotifyKind::Risk => "Risk",
            NotifyKind::Exchange => "Connections",
            NotifyKind::System => "Host",
            NotifyKind::Notify => "From strategies",
            NotifyKind::Fills => "Fills",
        };
        blocks.push(Block::Title(title.into()));
        let shown: Vec<String> = lines.iter().take(LINES_PER_KIND).cloned().collect();
        let mut text = shown.join("\n");
        if lines.len() > LINES_PER_KIND {
            text.push_str(&format!("\n… and {} more", lines.len() - LINES_PER_KIND));
        }
        blocks.push(Block::Text(text));
    }
    if dropped > 0 {
        blocks.push(Block::Text(format!(
            "{dropped} notification(s) were dropped: they came faster than Telegram took them (see the dashboard or /fills)"
        )));
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(kind: ActivityKind, strategy: Option<&str>, data: Value) -> ActivityEvent {
        ActivityEvent { v: 1, seq: 1, ts: chrono::Utc::now(), kind, strategy: strategy.map(String::from), data }
    }

    #[test]
    fn a_burst_of_fills_sums_per_strategy_symbol_and_side() {
        let mut events: Vec<ActivityEvent> = (0..40)
            .map(|i| {
                let price = if i % 2 == 0 { "100" } else { "102" };
                event(
                    ActivityKind::Fill,
                    Some("s_1"),
                    json!({ "strategy": "s_1", "symbol": "BTCUSD", "side": "buy", "size": "0.5", "price": price, "fee": "0.01" }),
                )
            })
            .collect();
        events.push(event(ActivityKind::Order, Some("s_1"), json!({ "status": "rejected", "side": "buy", "size": "9", "symbol": "BTCUSD", "reason": "risk: max_order_size 1 exceeded" })));
        events.push(event(ActivityKind::Position, Some("s_1"), json!({})));
        let blocks = summarize(&events, 3);
        let html = super::super::render::render(&blocks).join("\n");
        let text = super::super::render::plain(&html);
        assert!(text.contains("40 fills"), "{text}");
        assert!(text.contains("s_1       BTCUSD  buy      40    20        101   0.4\nOrders rejected"), "{text}");
        assert!(text.contains("max_order_size"), "{text}");
        assert!(text.contains("3 notification(s) were dropped"), "{text}");
    }

    #[test]
    fn which_events_notify() {
        assert_eq!(kind_of(&event(ActivityKind::Order, None, json!({ "status": "filled" }))), None);
        assert_eq!(kind_of(&event(ActivityKind::Log, None, json!({ "level": "info" }))), None);
        assert_eq!(kind_of(&event(ActivityKind::Log, None, json!({ "level": "notify" }))), Some(NotifyKind::Notify));
        assert_eq!(kind_of(&event(ActivityKind::Health, None, json!({ "heartbeat": true }))), None);
        assert_eq!(
            kind_of(&event(ActivityKind::Health, None, json!({ "component": "delta.market", "state": "down" }))),
            Some(NotifyKind::Exchange)
        );
    }
}
