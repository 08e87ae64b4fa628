//! The bot's side of the Bot API: one teloxide [`Bot`] with our timeouts,
//! sends that keep to Telegram's rate limits (per chat and in all) and wait
//! out a 429's `retry_after`, and errors sorted into what may be retried
//! without sending anything twice. The token never appears in an error.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use teloxide::prelude::*;
use teloxide::types::{InlineKeyboardMarkup, LinkPreviewOptions, MessageId, ParseMode};
use teloxide::{ApiError, RequestError};
use tokio::sync::Mutex;
use tokio::time::Instant;

use super::render;
use crate::config::TelegramConfig;
use crate::health::BotCounters;

/// Shortest interval between any two messages (Telegram allows about 30 a second in all).
const GLOBAL_INTERVAL: Duration = Duration::from_millis(34);

/// How the Bot API describes its 5xx answers.
const SERVER_ERRORS: [&str; 4] = ["Internal Server Error", "Bad Gateway", "Service Unavailable", "Gateway Timeout"];

/// Why a Bot API request failed, as the bot acts on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BotError {
    /// Another process polls updates with the same token (HTTP 409).
    #[error(
        "409 Conflict: another bot instance is polling updates with the same token; stop it, or give this host its own bot"
    )]
    Conflict,
    /// The token was refused (HTTP 401/404).
    #[error("the bot token was refused by the Bot API (check telegram.token or TRADEHOST_TELEGRAM_TOKEN)")]
    Unauthorized,
    /// Telegram asks to wait this long before the next request (HTTP 429).
    #[error("429 Too Many Requests: retry after {0:?}")]
    RetryAfter(Duration),
    /// The request certainly did not reach Telegram (no connection) or was
    /// refused before being carried out (a 5xx from Telegram or a proxy): repeated.
    #[error("the Bot API is unreachable: {0}")]
    Unreachable(String),
    /// The connection broke after the request went out: it may have been
    /// carried out, so a message is not sent again (no duplicates).
    #[error("the Bot API connection broke mid-request: {0}")]
    Uncertain(String),
    /// No answer in time: the request may or may not have been carried out.
    #[error("the Bot API did not answer in time")]
    Timeout,
    /// Telegram refused the request (a bad chat id, HTML it cannot parse …).
    #[error("the Bot API refused the request: {0}")]
    Refused(String),
}

impl BotError {
    /// Sorts a teloxide error, with the token cut out of any text.
    fn of(error: RequestError, token: &str) -> Self {
        let clean = |text: String| if token.is_empty() { text } else { text.replace(token, "<token>") };
        match error {
            RequestError::Api(ApiError::TerminatedByOtherGetUpdates) => BotError::Conflict,
            RequestError::Api(ApiError::InvalidToken) => BotError::Unauthorized,
            RequestError::RetryAfter(seconds) => BotError::RetryAfter(seconds.duration()),
            // Not connected: the request never left.
            RequestError::Network(e) if e.is_connect() => BotError::Unreachable(clean(e.to_string())),
            RequestError::Network(e) if e.is_timeout() => BotError::Timeout,
            // Broken after the request went out: it may have been carried out.
            RequestError::Network(e) => BotError::Uncertain(clean(e.to_string())),
            // A 5xx answers with text that is not the Bot API's JSON (a proxy's error page).
            RequestError::InvalidJson { raw, .. } => {
                BotError::Uncertain(clean(format!("an answer that is not the Bot API's JSON: {:.120}", raw)))
            }
            RequestError::Api(ApiError::Unknown(text)) if SERVER_ERRORS.iter().any(|e| text.starts_with(e)) => {
                BotError::Unreachable(clean(text))
            }
            other => BotError::Refused(clean(other.to_string())),
        }
    }

    /// True when repeating the request cannot deliver a message twice.
    pub fn retryable(&self) -> bool {
        matches!(self, BotError::RetryAfter(_) | BotError::Unreachable(_) | BotError::Conflict)
    }
}

/// A message to send: HTML text, an optional inline keyboard.
pub struct Outgoing {
    /// The chat.
    pub chat: i64,
    /// HTML text under the message limit.
    pub html: String,
    /// Buttons under the message.
    pub keyboard: Option<InlineKeyboardMarkup>,
}

/// The Bot API client with the rate limits and counters.
#[derive(Clone)]
pub struct Client {
    bot: Bot,
    /// When each chat, and any chat, may get its next message.
    next_send: Arc<Mutex<(HashMap<i64, Instant>, Instant)>>,
    chat_interval: Duration,
    request_timeout: Duration,
    counters: Arc<BotCounters>,
}

impl Client {
    /// A client of the Bot API at `config.api_url` with the token.
    pub fn new(config: &TelegramConfig, token: &str, counters: Arc<BotCounters>) -> Result<Self, String> {
        let url = reqwest::Url::parse(&config.api_url).map_err(|e| format!("`telegram.api_url`: {e}"))?;
        let poll = Duration::from_secs(config.poll_timeout_s.into());
        let request_timeout = Duration::from_millis(config.request_timeout_ms);
        let http = teloxide::net::default_reqwest_settings()
            .timeout(poll + request_timeout)
            .build()
            .map_err(|e| format!("cannot build the Telegram HTTP client: {}", e.without_url()))?;
        Ok(Client {
            bot: Bot::with_client(token, http).set_api_url(url),
            next_send: Arc::new(Mutex::new((HashMap::new(), Instant::now()))),
            chat_interval: Duration::from_millis(config.chat_interval_ms),
            request_timeout,
            counters,
        })
    }

    fn error(&self, error: RequestError) -> BotError {
        BotError::of(error, self.bot.token())
    }

    /// Runs one request with a deadline.
    async fn call<T>(
        &self,
        deadline: Duration,
        request: impl std::future::IntoFuture<Output = Result<T, RequestError>>,
    ) -> Result<T, BotError> {
        match tokio::time::timeout(deadline, request.into_future()).await {
            Ok(result) => result.map_err(|e| self.error(e)),
            Err(_) => Err(BotError::Timeout),
        }
    }

    /// The bot's username (`getMe`).
    pub async fn username(&self) -> Result<String, BotError> {
        let me = self.call(self.request_timeout, self.bot.get_me()).await?;
        Ok(me.user.username.unwrap_or_default())
    }

    /// Registers the command list Telegram shows (`setMyCommands`).
    pub async fn set_commands(&self, commands: Vec<teloxide::types::BotCommand>) -> Result<(), BotError> {
        self.call(self.request_timeout, self.bot.set_my_commands(commands)).await.map(drop)
    }

    /// One long poll for updates after `offset`, waiting up to `wait_s`.
    pub async fn updates(&self, offset: i32, wait_s: u32) -> Result<Vec<teloxide::types::Update>, BotError> {
        use teloxide::types::AllowedUpdate;
        let request = self
            .bot
            .get_updates()
            .offset(offset)
            .timeout(wait_s)
            .allowed_updates(vec![AllowedUpdate::Message, AllowedUpdate::CallbackQuery]);
        let result = self.call(Duration::from_secs(wait_s.into()) + self.request_timeout, request).await;
        self.counters.polls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        result
    }

    /// Waits until `chat` may get a message under the rate limits, and books the slot.
    async fn wait_turn(&self, chat: i64) {
        let at = {
            let mut next = self.next_send.lock().await;
            let now = Instant::now();
            let at = next.0.get(&chat).copied().unwrap_or(now).max(next.1).max(now);
            next.0.insert(chat, at + self.chat_interval);
            next.1 = at + GLOBAL_INTERVAL;
            at
        };
        tokio::time::sleep_until(at).await;
    }

    /// Pushes `chat`'s next slot back (after a 429).
    async fn hold(&self, chat: i64, wait: Duration) {
        let mut next = self.next_send.lock().await;
        let until = Instant::now() + wait;
        let slot = next.0.entry(chat).or_insert(until);
        *slot = (*slot).max(until);
        next.1 = next.1.max(until);
    }

    /// Sends one message once, keeping to the rate limits and waiting out
    /// 429s; HTML Telegram refuses is sent again as plain text. Returns the
    /// message id.
    pub async fn send_once(&self, message: &Outgoing) -> Result<MessageId, BotError> {
        let mut html = true;
        loop {
            self.wait_turn(message.chat).await;
            let text = if html { message.html.clone() } else { render::plain(&message.html) };
            let mut request = self.bot.send_message(ChatId(message.chat), text).link_preview_options(no_preview());
            if html {
                request = request.parse_mode(ParseMode::Html);
            }
            if let Some(keyboard) = &message.keyboard {
                request = request.reply_markup(keyboard.clone());
            }
            match self.call(self.request_timeout, request).await {
                Ok(sent) => {
                    self.counters.sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Ok(sent.id);
                }
                Err(BotError::RetryAfter(wait)) => {
                    self.counters.retry_after.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::warn!(chat = message.chat, "telegram: 429, waiting {wait:?} before sending again");
                    self.hold(message.chat, wait).await;
                }
                Err(BotError::Refused(reason)) if html && reason.contains("parse entities") => {
                    tracing::error!(
                        "telegram: the Bot API refused a message's HTML ({reason}); sending it as plain text"
                    );
                    html = false;
                }
                Err(error) => {
                    self.counters.send_failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    return Err(error);
                }
            }
        }
    }

    /// Answers a button press (`answerCallbackQuery`) with a short note.
    pub async fn answer_callback(&self, id: &str, text: &str) -> Result<(), BotError> {
        let request = self.bot.answer_callback_query(teloxide::types::CallbackQueryId(id.to_string())).text(text);
        self.call(self.request_timeout, request).await.map(drop)
    }

    /// Replaces a message's text (and drops its buttons).
    pub async fn edit(&self, chat: i64, message: MessageId, html: &str) -> Result<(), BotError> {
        let request = self
            .bot
            .edit_message_text(ChatId(chat), message, html)
            .parse_mode(ParseMode::Html)
            .link_preview_options(no_preview());
        self.call(self.request_timeout, request).await.map(drop)
    }
}

fn no_preview() -> LinkPreviewOptions {
    LinkPreviewOptions {
        is_disabled: true,
        url: None,
        prefer_small_media: false,
        prefer_large_media: false,
        show_above_text: false,
    }
}
