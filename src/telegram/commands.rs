//! The bot's commands: each one is parsed by teloxide's `BotCommands`, runs
//! the same operation as its HTTP route (`http::ops`) and answers with the
//! outcome as blocks of text and tables.

use teloxide::utils::command::BotCommands;

use super::render::Block;
use crate::http::ApiContext;
use crate::http::ops::{self, PnlPeriod};

/// Most open orders `/orders` lists.
const MAX_ORDER_ROWS: usize = 50;
/// Every command, as Telegram lists them (`setMyCommands`).
#[derive(BotCommands, Clone, Debug, PartialEq)]
#[command(rename_rule = "lowercase", description = "tradehost commands:")]
pub enum Command {
    /// The command list.
    #[command(description = "this list")]
    Help,
    /// Mode, uptime, trading state, strategies, equity, open orders.
    #[command(description = "mode, uptime, trading state, strategies, equity, open orders")]
    Status,
    /// Every strategy's state, version, restarts and last error.
    #[command(description = "every strategy's state and last error")]
    Strategies,
    /// Open positions.
    #[command(description = "open positions with unrealised PnL")]
    Positions,
    /// Open orders.
    #[command(description = "open orders")]
    Orders,
    /// The newest fills.
    #[command(description = "the newest fills: /fills [n]")]
    Fills(String),
    /// Profit and loss per strategy.
    #[command(description = "PnL per strategy: /pnl [today|week|all]")]
    Pnl(String),
    /// Balance and equity.
    #[command(description = "balance and equity")]
    Balance,
    /// Starts a strategy.
    #[command(description = "start a strategy: /start NAME")]
    Start(String),
    /// Stops a strategy.
    #[command(description = "stop a strategy: /stop NAME")]
    Stop(String),
    /// Reloads a strategy from its file.
    #[command(description = "reload a strategy from its file: /reload NAME")]
    Reload(String),
    /// Reduce-only: no new entries, exits allowed.
    #[command(description = "reduce-only (account, or /pause NAME)")]
    Pause(String),
    /// Back to active.
    #[command(description = "active again (account, or /resume NAME)")]
    Resume(String),
    /// The kill switch, after a confirmation.
    #[command(description = "kill switch: halt and cancel all (/kill flatten also closes positions); asks first")]
    Kill(String),
    /// The ordered shutdown, after a confirmation.
    #[command(description = "shut the host down; asks first")]
    Shutdown,
    /// The version.
    #[command(description = "tradehost version")]
    Version,
}

/// What an answer asks before it acts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirm {
    /// The kill switch (with `flatten`: positions closed too).
    Kill {
        /// Also close positions.
        flatten: bool,
    },
    /// The ordered shutdown.
    Shutdown,
}

impl Confirm {
    /// The question shown above the button.
    pub fn question(self) -> &'static str {
        match self {
            Confirm::Kill { flatten: false } => "Kill switch: halt the account and cancel every open order?",
            Confirm::Kill { flatten: true } => {
                "Kill switch: halt the account, cancel every open order and close every position?"
            }
            Confirm::Shutdown => "Shut the host down (ordered shutdown: strategies stop, orders per their policy)?",
        }
    }

    /// The button's label.
    pub fn button(self) -> &'static str {
        match self {
            Confirm::Kill { .. } => "Yes, kill",
            Confirm::Shutdown => "Yes, shut down",
        }
    }
}

/// The answer to a command: blocks to send, or a confirmation to ask.
#[derive(Debug, PartialEq)]
pub enum Answer {
    /// Send these.
    Reply(Vec<Block>),
    /// Ask with a button first.
    Ask(Confirm),
}

fn reply(blocks: Vec<Block>) -> Answer {
    Answer::Reply(blocks)
}

fn text(message: impl Into<String>) -> Answer {
    reply(vec![Block::Text(message.into())])
}

fn usage(what: &str) -> Answer {
    text(format!("Usage: {what}"))
}

fn table(header: &[&str], rows: Vec<Vec<String>>) -> Block {
    Block::Table { header: header.iter().map(|h| h.to_string()).collect(), rows }
}

fn uptime(seconds: u64) -> String {
    let (d, h, m, s) = (seconds / 86_400, seconds / 3_600 % 24, seconds / 60 % 60, seconds % 60);
    if d > 0 {
        format!("{d}d {h}h {m}m")
    } else if h > 0 {
        format!("{h}h {m}m")
    } else {
        format!("{m}m {s}s")
    }
}

fn time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%m-%d %H:%M:%S").to_string())
}

/// Runs a command against the host and answers with the outcome.
pub async fn answer(ctx: &ApiContext, command: Command) -> Answer {
    match command {
        Command::Help => text(Command::descriptions().to_string()),
        Command::Version => text(format!("tradehost {}", env!("CARGO_PKG_VERSION"))),
        Command::Status => {
            let s = ops::status(ctx);
            let currency = ctx.account.load().currency.clone();
            let rows = vec![
                vec!["mode".into(), s.mode],
                vec!["uptime".into(), uptime(s.uptime_s)],
                vec!["trading".into(), s.trading.as_str().to_string()],
                vec![
                    "strategies".into(),
                    format!("{} running, {} failed, {} in all", s.running, s.failed, s.strategies),
                ],
                vec!["equity".into(), format!("{} {currency}", s.equity)],
                vec!["open orders".into(), s.open_orders.to_string()],
                vec!["positions".into(), s.positions.to_string()],
            ];
            reply(vec![Block::Title(format!("tradehost {}", s.version)), Block::Table { header: vec![], rows }])
        }
        Command::Strategies => {
            let statuses = match ops::strategies(ctx).await {
                Ok(statuses) => statuses,
                Err(error) => return text(format!("Cannot list the strategies: {error}")),
            };
            if statuses.is_empty() {
                return text("No strategies.");
            }
            let rows = statuses
                .iter()
                .map(|s| {
                    let state = serde_json::to_value(s.state).ok().and_then(|v| v.as_str().map(String::from));
                    vec![s.name.clone(), state.unwrap_or_default(), s.version.to_string(), s.restarts.to_string()]
                })
                .collect();
            let mut blocks = vec![table(&["strategy", "state", "version", "restarts"], rows)];
            let notes: Vec<String> = statuses
                .iter()
                .filter_map(|s| {
                    let note = s.reason.clone().or_else(|| s.last_error.as_ref().map(|e| e.to_string()))?;
                    Some(format!("{}: {note}", s.name))
                })
                .collect();
            if !notes.is_empty() {
                blocks.push(Block::Text(notes.join("\n")));
            }
            reply(blocks)
        }
        Command::Positions => {
            let positions = ops::positions(ctx);
            if positions.is_empty() {
                return text("No open positions.");
            }
            let rows = positions
                .into_iter()
                .map(|p| {
                    vec![
                        p.strategy,
                        p.symbol,
                        p.size.to_string(),
                        p.entry_price.to_string(),
                        p.mark.map_or_else(|| "-".into(), |m| m.to_string()),
                        p.unrealized_pnl.to_string(),
                    ]
                })
                .collect();
            reply(vec![table(&["strategy", "symbol", "size", "entry", "mark", "uPnL"], rows)])
        }
        Command::Orders => {
            let orders = ops::open_orders(ctx, 10_000);
            if orders.is_empty() {
                return text("No open orders.");
            }
            // A bounded answer: a few messages at most, so commands after it (a /kill) wait little.
            let more = orders.len().saturating_sub(MAX_ORDER_ROWS);
            let rows = orders
                .into_iter()
                .take(MAX_ORDER_ROWS)
                .map(|o| {
                    let price = o.request.price.or(o.request.stop.as_ref().map(|s| s.price));
                    vec![
                        o.request.strategy.clone(),
                        o.request.symbol.clone(),
                        o.request.side.as_str().into(),
                        kind(&o),
                        o.request.size.to_string(),
                        price.map_or_else(|| "market".into(), |p| p.to_string()),
                        o.status.as_str().into(),
                    ]
                })
                .collect();
            let mut blocks = vec![table(&["strategy", "symbol", "side", "kind", "size", "price", "status"], rows)];
            if more > 0 {
                blocks.push(Block::Text(format!(
                    "… and {more} more open orders (all of them: the dashboard or GET /api/v1/orders)."
                )));
            }
            reply(blocks)
        }
        Command::Fills(n) => {
            let n = match n.trim() {
                "" => 10,
                n => match n.parse::<usize>() {
                    Ok(n @ 1..=100) => n,
                    _ => return usage("/fills [n] with n from 1 to 100"),
                },
            };
            match ops::fills(ctx, n).await {
                Ok(fills) if fills.is_empty() => text("No fills yet."),
                Ok(fills) => {
                    let rows = fills
                        .into_iter()
                        .map(|f| {
                            vec![
                                time(f.time),
                                f.strategy,
                                f.symbol,
                                f.side.as_str().into(),
                                f.size.to_string(),
                                f.price.to_string(),
                            ]
                        })
                        .collect();
                    reply(vec![table(&["time (UTC)", "strategy", "symbol", "side", "size", "price"], rows)])
                }
                Err(error) => text(error.to_string()),
            }
        }
        Command::Pnl(period) => {
            let period = match period.trim() {
                "" => PnlPeriod::Today,
                other => match other.parse() {
                    Ok(period) => period,
                    Err(_) => return usage("/pnl [today|week|all]"),
                },
            };
            match ops::pnl(ctx, period).await {
                Ok(pnl) => {
                    let row = |r: &ops::PnlRow| {
                        vec![
                            r.strategy.clone(),
                            r.realized.to_string(),
                            r.fees.to_string(),
                            r.unrealized.to_string(),
                            r.net.to_string(),
                            r.fills.to_string(),
                        ]
                    };
                    let mut rows: Vec<Vec<String>> = pnl.strategies.iter().map(row).collect();
                    rows.push(row(&pnl.total));
                    reply(vec![
                        Block::Title(format!("PnL {} ({}), since {}", pnl.period, pnl.currency, time(pnl.since))),
                        table(&["strategy", "realised", "fees", "unrealised", "net", "fills"], rows),
                    ])
                }
                Err(error) => text(error.to_string()),
            }
        }
        Command::Balance => {
            let b = ops::balances(ctx);
            reply(vec![Block::Table {
                header: vec![],
                rows: vec![
                    vec!["balance".into(), b.balance.to_string(), b.currency.clone()],
                    vec!["equity".into(), b.equity.to_string(), b.currency],
                ],
            }])
        }
        Command::Start(name) | Command::Stop(name) | Command::Reload(name) if name.trim().is_empty() => {
            usage("/start NAME, /stop NAME or /reload NAME (see /strategies)")
        }
        Command::Start(name) => outcome(ops::start_strategy(ctx, name.trim()).await.map(|a| a.message)),
        Command::Stop(name) => outcome(ops::stop_strategy(ctx, name.trim()).await.map(|a| a.message)),
        Command::Reload(name) => outcome(
            ops::reload_strategy(ctx, name.trim())
                .await
                .map(|a| format!("{}: now version {}", a.message, a.version.unwrap_or_default())),
        ),
        Command::Pause(name) => trading(ctx, name, "reduce_only").await,
        Command::Resume(name) => trading(ctx, name, "active").await,
        Command::Kill(option) => match option.trim() {
            "" => Answer::Ask(Confirm::Kill { flatten: false }),
            "flatten" => Answer::Ask(Confirm::Kill { flatten: true }),
            _ => usage("/kill or /kill flatten"),
        },
        Command::Shutdown => match ops::writable(ctx) {
            Ok(()) => Answer::Ask(Confirm::Shutdown),
            Err(error) => text(error.to_string()),
        },
    }
}

/// `market`, `limit`, or the stop kind of a stop order.
fn kind(order: &crate::model::Order) -> String {
    let name = |value: serde_json::Value| value.as_str().map(String::from).unwrap_or_default();
    match &order.request.stop {
        Some(stop) => name(serde_json::to_value(stop.kind).unwrap_or_default()),
        None => name(serde_json::to_value(order.request.kind).unwrap_or_default()),
    }
}

fn outcome(result: Result<String, crate::http::ApiError>) -> Answer {
    match result {
        Ok(message) => text(message),
        Err(error) => text(format!("Refused: {error}")),
    }
}

async fn trading(ctx: &ApiContext, name: String, state: &str) -> Answer {
    let strategy = match name.trim() {
        "" => None,
        name => match ops::strategy_name(name) {
            Ok(name) => Some(name),
            Err(error) => return text(format!("Refused: {error}")),
        },
    };
    let scope = strategy.clone().map_or_else(|| "the account".to_string(), |s| format!("strategy {s}"));
    match ops::set_trading(ctx, strategy, state).await {
        Ok(states) => {
            let meaning = match state {
                "reduce_only" => "reduce-only: new entries are refused, exits go through",
                _ => "active: orders within the limits go through",
            };
            let rows = std::iter::once(vec!["account".to_string(), states.account.as_str().to_string()])
                .chain(states.strategies.iter().map(|(s, t)| vec![s.clone(), t.as_str().to_string()]))
                .collect();
            reply(vec![Block::Text(format!("{scope} is {meaning}")), table(&["scope", "trading"], rows)])
        }
        Err(error) => text(format!("Refused: {error}")),
    }
}

/// Carries out a confirmed action and describes what it did.
pub async fn confirmed(ctx: &ApiContext, action: Confirm, chat: i64) -> String {
    match action {
        Confirm::Kill { flatten } => match ops::kill(ctx, flatten).await {
            Ok(report) => format!(
                "Kill switch: account halted, {} open order(s) cancelled, {} reduce-only order(s) sent to close positions. /resume to trade again.",
                report.cancelled, report.flatten_orders
            ),
            Err(error) => format!("Kill switch failed: {error}"),
        },
        Confirm::Shutdown => match ops::shutdown(ctx, crate::control::ShutdownReason::Telegram(chat)) {
            Ok(_) => "Shutdown started.".to_string(),
            Err(error) => format!("Refused: {error}"),
        },
    }
}
