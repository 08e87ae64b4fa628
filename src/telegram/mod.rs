//! The Telegram bot: commands and notifications from a phone. It is one
//! more client of the host's control surface — every command runs the same
//! operation as its HTTP route ([`crate::http::ops`]) — and never in
//! trading's way:
//!
//! - it runs as its own supervised task, restarted if it panics and never a
//!   reason to stop the host; its health component does not hold readiness;
//! - notifications come off the activity bus into a bounded queue
//!   (`telegram.queue`): when Telegram is slower than the activity, the
//!   newest are dropped and counted, and the next message says how many;
//! - a burst within `telegram.coalesce_ms` becomes one message, each chat
//!   gets at most one message per `telegram.chat_interval_ms` (and all
//!   chats together about 30 a second), a 429's `retry_after` is waited out;
//! - a message is sent again only when it certainly did not arrive (the
//!   connection failed, a 5xx or a 429): never twice after a reconnect;
//! - Telegram unreachable, slow, answering 5xx or 409 Conflict (another
//!   process polls the same token) is logged, shown in `/api/v1/health`
//!   (component `telegram`) and the dashboard, and retried with capped backoff;
//! - only chats on `telegram.allowed_chat_ids` get answers or data; anyone
//!   else's update is ignored and logged by chat id;
//! - at shutdown it is stopped after the feed and before HTTP: it sends
//!   what is queued and a last "stopped" notice within a few seconds.

mod client;
mod commands;
mod notify;
pub mod render;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use teloxide::types::{InlineKeyboardButton, InlineKeyboardMarkup, MessageId, Update, UpdateKind};
use teloxide::utils::command::BotCommands;
use tokio::sync::{broadcast, mpsc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::activity::{ActivityEvent, LiveBatch};
use crate::config::TelegramConfig;
use crate::health::{BotCounters, ComponentState};
use crate::http::ApiState;
pub use client::BotError;
use client::{Client, Outgoing};
pub use commands::Command;
use commands::{Answer, Confirm};
use render::Block;

/// The bot's health component.
pub const COMPONENT: &str = "telegram";

/// How long the bot may take at shutdown to send what is queued and its last notice.
const FINAL_GRACE: Duration = Duration::from_secs(3);
/// The first wait after a failed request; it doubles up to `telegram.backoff_max_ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Most events one notification summarises (the rest wait for the next).
const MAX_BURST: usize = 10_000;
/// A command older than this when the bot reads it (sent while the host was
/// down or Telegram unreachable) is not carried out.
const STALE_COMMAND: chrono::TimeDelta = chrono::TimeDelta::seconds(120);

/// Why the bot cannot start.
#[derive(Debug, thiserror::Error)]
pub enum TelegramError {
    /// No token, or a client that cannot be built.
    #[error("{0}")]
    Setup(String),
}

/// A confirmation button waiting to be pressed.
struct Pending {
    chat: i64,
    action: Confirm,
    expires: Instant,
    message: Option<MessageId>,
}

/// The bot. One value lives as long as the host; [`Telegram::run`] is one
/// life of its task (restarted after a panic with the offset, the queue's
/// drop count and the waiting confirmations kept).
pub struct Telegram {
    api: ApiState,
    config: TelegramConfig,
    client: Client,
    allowed: BTreeSet<i64>,
    counters: Arc<BotCounters>,
    /// The next update to ask for (updates before it are confirmed).
    offset: AtomicI32,
    /// Notifications dropped since the last message said so.
    dropped: AtomicU64,
    pending: Mutex<HashMap<String, Pending>>,
    username: Mutex<Option<String>>,
    /// The activity subscription, taken when a run starts (made at
    /// construction so the start-up notice is not missed).
    events: Mutex<Option<broadcast::Receiver<Arc<LiveBatch>>>>,
}

impl Telegram {
    /// The bot of a host; refuses to start without a token.
    pub fn new(api: ApiState, config: &TelegramConfig) -> Result<Arc<Self>, TelegramError> {
        let token = config.required_token().map_err(TelegramError::Setup)?;
        let counters = api.metrics.telegram.clone();
        let client = Client::new(config, token.expose(), counters.clone()).map_err(TelegramError::Setup)?;
        api.health.register_auxiliary(COMPONENT);
        let events = api.activity.subscribe();
        Ok(Arc::new(Telegram {
            config: config.clone(),
            client,
            allowed: config.allowed_chat_ids.iter().copied().collect(),
            counters,
            offset: AtomicI32::new(0),
            dropped: AtomicU64::new(0),
            pending: Mutex::default(),
            username: Mutex::new(None),
            events: Mutex::new(Some(events)),
            api,
        }))
    }

    /// Runs the bot until `stop` fires, then sends what is queued and a last
    /// notice (within [`FINAL_GRACE`]).
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let events = self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let events = events.unwrap_or_else(|| self.api.activity.subscribe());
        let (tx, rx) = mpsc::channel(self.config.queue);
        let forwarding = self.forward(events, tx, stop.clone());
        tokio::join!(forwarding, self.notify(rx, stop.clone()), self.poll(stop));
    }

    fn set_down(&self, error: &BotError) {
        self.api.health.set_down(COMPONENT, &error.to_string());
    }

    // ----- notifications -----

    /// Moves notification events from the activity bus into the bounded
    /// queue, never waiting: what does not fit is counted as dropped.
    async fn forward(
        &self,
        mut events: broadcast::Receiver<Arc<LiveBatch>>,
        tx: mpsc::Sender<ActivityEvent>,
        stop: CancellationToken,
    ) {
        let wanted: BTreeSet<_> = self.config.notify.iter().copied().collect();
        let mut offer = |event: &ActivityEvent| {
            if notify::kind_of(event).is_some_and(|k| wanted.contains(&k)) && tx.try_send(event.clone()).is_err() {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        };
        loop {
            let received = tokio::select! {
                _ = stop.cancelled() => break,
                received = events.recv() => received,
            };
            match received {
                Ok(batch) => batch.events().iter().for_each(&mut offer),
                Err(broadcast::error::RecvError::Lagged(batches)) => {
                    tracing::warn!(batches, "telegram: fell behind the activity bus; notifications lost");
                    self.dropped.fetch_add(batches, Ordering::Relaxed);
                    self.counters.dropped.fetch_add(batches, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => break,
            }
        }
        // What was published before the stop still goes out.
        while let Ok(batch) = events.try_recv() {
            batch.events().iter().for_each(&mut offer);
        }
    }

    /// Sends queued notifications, a burst as one message; at stop, the rest
    /// and a last notice — all of it within [`FINAL_GRACE`] of the stop.
    async fn notify(&self, mut rx: mpsc::Receiver<ActivityEvent>, stop: CancellationToken) {
        let coalesce = Duration::from_millis(self.config.coalesce_ms);
        let work = async {
            loop {
                let first = tokio::select! {
                    _ = stop.cancelled() => break,
                    first = rx.recv() => first,
                };
                let Some(first) = first else { break };
                tokio::select! {
                    _ = stop.cancelled() => {}
                    _ = tokio::time::sleep(coalesce) => {}
                }
                let mut burst = vec![first];
                while burst.len() < MAX_BURST
                    && let Ok(event) = rx.try_recv()
                {
                    burst.push(event);
                }
                self.deliver(&burst).await;
            }
            // The forwarder ends with the stop: what it passed on still goes out.
            let mut burst = Vec::new();
            while let Some(event) = rx.recv().await {
                burst.push(event);
            }
            if !burst.is_empty() {
                self.deliver(&burst).await;
            }
            let stopped = vec![Block::Text("tradehost stopped: strategies stopped, store flushed.".into())];
            self.broadcast(&stopped).await;
        };
        let cutoff = async {
            stop.cancelled().await;
            tokio::time::sleep(FINAL_GRACE).await;
        };
        tokio::select! {
            _ = work => {}
            _ = cutoff => tracing::warn!("telegram: the last notices were not all sent within {FINAL_GRACE:?} of the stop"),
        }
    }

    /// Sends one summary of `burst` to every allowed chat.
    async fn deliver(&self, burst: &[ActivityEvent]) {
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        let blocks = notify::summarize(burst, dropped);
        if !blocks.is_empty() {
            self.broadcast(&blocks).await;
        }
    }

    /// Sends blocks to every allowed chat.
    async fn broadcast(&self, blocks: &[Block]) {
        for chat in &self.allowed {
            for html in render::render(blocks) {
                self.send(Outgoing { chat: *chat, html, keyboard: None }).await;
            }
        }
    }

    /// Sends one message; one that certainly did not arrive is sent again
    /// with capped backoff until it does (callers bound the wait at shutdown).
    async fn send(&self, message: Outgoing) -> Option<MessageId> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            match self.client.send_once(&message).await {
                Ok(id) => return Some(id),
                Err(error) if error.retryable() => {
                    tracing::warn!(chat = message.chat, "telegram: cannot send, trying again in {backoff:?}: {error}");
                    self.set_down(&error);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(self.config.backoff_max_ms));
                }
                Err(error) => {
                    tracing::error!(chat = message.chat, "telegram: message not sent: {error}");
                    return None;
                }
            }
        }
    }

    // ----- commands -----

    /// Long-polls updates and answers them, reconnecting with capped backoff.
    async fn poll(&self, stop: CancellationToken) {
        let max_backoff = Duration::from_millis(self.config.backoff_max_ms);
        let mut backoff = FIRST_BACKOFF;
        while !stop.is_cancelled() {
            let result = tokio::select! {
                _ = stop.cancelled() => break,
                result = self.poll_once() => result,
            };
            if let Err(error) = &result {
                self.set_down(error);
            }
            let wait = match result {
                Ok(updates) => {
                    backoff = FIRST_BACKOFF;
                    self.api.health.set(COMPONENT, ComponentState::Up);
                    self.api.health.pulse(COMPONENT).beat();
                    self.counters.last_poll_ms.store(chrono::Utc::now().timestamp_millis(), Ordering::Relaxed);
                    for update in updates {
                        self.offset.fetch_max(update.id.0 as i32 + 1, Ordering::Relaxed);
                        self.counters.updates.fetch_add(1, Ordering::Relaxed);
                        tokio::select! {
                            _ = stop.cancelled() => break,
                            _ = self.handle(update) => {}
                        }
                    }
                    self.expire_confirmations().await;
                    continue;
                }
                Err(BotError::RetryAfter(wait)) => wait,
                Err(error) => {
                    match &error {
                        BotError::Conflict => tracing::error!("telegram: {error}; retrying in {backoff:?}"),
                        _ => tracing::warn!("telegram: {error}; retrying in {backoff:?}"),
                    }
                    let wait = backoff;
                    backoff = (backoff * 2).min(max_backoff);
                    wait
                }
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Connects if needed (`getMe`, `setMyCommands`), then one long poll.
    async fn poll_once(&self) -> Result<Vec<Update>, BotError> {
        let known = self.username.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if known.is_none() {
            let username = self.client.username().await?;
            // The Bot API takes the names without the slash teloxide puts in front.
            let commands = Command::bot_commands()
                .into_iter()
                .map(|c| teloxide::types::BotCommand::new(c.command.trim_start_matches('/'), c.description))
                .collect();
            self.client.set_commands(commands).await?;
            tracing::info!(bot = %username, chats = ?self.allowed, "telegram bot connected");
            *self.username.lock().unwrap_or_else(|e| e.into_inner()) = Some(username);
        }
        self.client.updates(self.offset.load(Ordering::Relaxed), self.config.poll_timeout_s).await
    }

    /// True for an allowed chat; anyone else is counted and logged (the chat id only).
    fn allowed(&self, chat: i64) -> bool {
        let allowed = self.allowed.contains(&chat);
        if !allowed {
            self.counters.strangers.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(chat_id = chat, "telegram: update from a chat not on telegram.allowed_chat_ids ignored");
        }
        allowed
    }

    async fn handle(&self, update: Update) {
        match update.kind {
            UpdateKind::Message(message) => {
                let chat = message.chat.id.0;
                if !self.allowed(chat) {
                    return;
                }
                let Some(text) = message.text() else { return };
                let age = chrono::Utc::now() - message.date;
                if age > STALE_COMMAND {
                    let note = format!(
                        "Ignored {text:?}: it was sent {} s ago, while the bot could not read it. Send it again if you still mean it.",
                        age.num_seconds()
                    );
                    self.reply(chat, &[Block::Text(note)]).await;
                    return;
                }
                self.command(chat, text).await;
            }
            UpdateKind::CallbackQuery(query) => {
                let Some(message) = &query.message else { return };
                let chat = message.chat().id.0;
                if !self.allowed(chat) {
                    return;
                }
                self.confirm(chat, &query.id.0, query.data.as_deref().unwrap_or_default()).await;
            }
            _ => {}
        }
    }

    async fn reply(&self, chat: i64, blocks: &[Block]) {
        for html in render::render(blocks) {
            self.send(Outgoing { chat, html, keyboard: None }).await;
        }
    }

    async fn command(&self, chat: i64, text: &str) {
        let username = self.username.lock().unwrap_or_else(|e| e.into_inner()).clone().unwrap_or_default();
        let command = match Command::parse(text, &username) {
            Ok(command) => command,
            Err(_) => {
                let word = text.split_whitespace().next().unwrap_or_default();
                let note = format!("Unknown command {word:?}. /help lists the commands.");
                return self.reply(chat, &[Block::Text(note)]).await;
            }
        };
        tracing::info!(chat_id = chat, ?command, "telegram command");
        match commands::answer(&self.api, command).await {
            Answer::Reply(blocks) => self.reply(chat, &blocks).await,
            Answer::Ask(action) => self.ask(chat, action).await,
        }
    }

    /// Asks for a confirmation with a button that works for `telegram.confirm_timeout_s`.
    async fn ask(&self, chat: i64, action: Confirm) {
        let nonce = format!("confirm:{:016x}", rand::random::<u64>());
        let expires = Instant::now() + Duration::from_secs(self.config.confirm_timeout_s);
        self.pending
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(nonce.clone(), Pending { chat, action, expires, message: None });
        let keyboard = InlineKeyboardMarkup::new([[InlineKeyboardButton::callback(action.button(), nonce.clone())]]);
        let html = render::render(&[
            Block::Text(action.question().into()),
            Block::Text(format!("The button works for {} s.", self.config.confirm_timeout_s)),
        ])
        .concat();
        let sent = self.send(Outgoing { chat, html, keyboard: Some(keyboard) }).await;
        if let Some(pending) = self.pending.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&nonce) {
            pending.message = sent;
        }
    }

    /// A button press: runs the action if the button is this chat's and has not expired.
    async fn confirm(&self, chat: i64, query: &str, data: &str) {
        let pending = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            match pending.get(data) {
                Some(p) if p.chat == chat => pending.remove(data),
                _ => None,
            }
        };
        let Some(pending) = pending.filter(|p| p.expires > Instant::now()) else {
            tracing::info!(chat_id = chat, "telegram: an expired or unknown confirmation button was pressed");
            let _ = self.client.answer_callback(query, "This button has expired: nothing was done.").await;
            return;
        };
        // The action first: a slow Bot API must not hold up a kill.
        tracing::warn!(chat_id = chat, action = ?pending.action, "telegram: confirmed");
        let outcome = commands::confirmed(&self.api, pending.action, chat).await;
        let _ = self.client.answer_callback(query, "Confirmed").await;
        let html = render::render(&[Block::Text(outcome.clone())]).concat();
        let edited = match pending.message {
            Some(message) => self.client.edit(chat, message, &html).await.is_ok(),
            None => false,
        };
        if !edited {
            self.reply(chat, &[Block::Text(outcome)]).await;
        }
    }

    /// Drops confirmations whose time is up and says so on their messages.
    async fn expire_confirmations(&self) {
        let expired: Vec<Pending> = {
            let mut pending = self.pending.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            let keys: Vec<String> = pending.iter().filter(|(_, p)| p.expires <= now).map(|(k, _)| k.clone()).collect();
            keys.iter().filter_map(|k| pending.remove(k)).collect()
        };
        for p in expired {
            if let Some(message) = p.message {
                let _ = self.client.edit(p.chat, message, "Expired: nothing was done.").await;
            }
        }
    }
}
