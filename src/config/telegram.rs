//! `[telegram]`: the bot's token, who may talk to it, where the Bot API is,
//! and which notifications go out how fast.

use serde::{Deserialize, Serialize};

use super::{ConfigProblem, Secret};

/// `[telegram]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelegramConfig {
    /// Run the bot.
    pub enabled: bool,
    /// The bot token from BotFather (or `TRADEHOST_TELEGRAM_TOKEN`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Secret>,
    /// The only chats the bot answers and notifies (required when enabled).
    pub allowed_chat_ids: Vec<i64>,
    /// The Bot API server (tests point it at a fake on loopback).
    pub api_url: String,
    /// How long one `getUpdates` long poll waits for updates, in seconds.
    pub poll_timeout_s: u32,
    /// A Bot API request fails after this long (a long poll: after its wait plus this).
    pub request_timeout_ms: u64,
    /// Longest wait between attempts to reach an unreachable Bot API.
    pub backoff_max_ms: u64,
    /// How long the confirmation button of /kill and /shutdown works.
    pub confirm_timeout_s: u64,
    /// Which activity becomes a notification: `fills`, `rejections`,
    /// `strategies`, `risk`, `exchange`, `system`, `notify` (a script's `notify(msg)`).
    pub notify: Vec<NotifyKind>,
    /// Notifications within this window go out as one message.
    pub coalesce_ms: u64,
    /// Shortest interval between two messages to one chat (Telegram allows
    /// about one a second per chat and thirty a second in all).
    pub chat_interval_ms: u64,
    /// Notifications waiting for Telegram at most; beyond it they are dropped,
    /// counted, and the next message says how many.
    pub queue: usize,
}

/// A kind of notification (`[telegram] notify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum NotifyKind {
    /// Fills.
    Fills,
    /// Orders the exchange or a risk limit refused.
    Rejections,
    /// Strategies failed, restarted, quarantined, reloaded or reload rejected.
    Strategies,
    /// Protections, trading state changes, the kill switch, new limits.
    Risk,
    /// Exchange streams and other components down and back up.
    Exchange,
    /// Start-up, shutdown and failed tasks.
    System,
    /// A script's `notify(msg)`.
    Notify,
}

impl Default for TelegramConfig {
    fn default() -> Self {
        TelegramConfig {
            enabled: false,
            token: None,
            allowed_chat_ids: Vec::new(),
            api_url: "https://api.telegram.org".into(),
            poll_timeout_s: 25,
            request_timeout_ms: 15_000,
            backoff_max_ms: 30_000,
            confirm_timeout_s: 60,
            notify: vec![
                NotifyKind::Fills,
                NotifyKind::Rejections,
                NotifyKind::Strategies,
                NotifyKind::Risk,
                NotifyKind::Exchange,
                NotifyKind::System,
                NotifyKind::Notify,
            ],
            coalesce_ms: 1_000,
            chat_interval_ms: 1_000,
            queue: 1_000,
        }
    }
}

impl TelegramConfig {
    /// Problems of an enabled bot's section (none when disabled), each under its key.
    pub(super) fn problems(&self, out: &mut Vec<ConfigProblem>) {
        if !self.enabled {
            return;
        }
        let mut bad = |key: &str, message: &str| {
            out.push(ConfigProblem { key: format!("telegram.{key}"), message: message.to_string() })
        };
        if self.allowed_chat_ids.is_empty() {
            bad(
                "allowed_chat_ids",
                "is empty: list the chat ids the bot may answer (the bot answers nobody else; see the README's Telegram section)",
            );
        }
        if !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://"))
            || reqwest::Url::parse(&self.api_url).is_err()
        {
            bad("api_url", "must be an http:// or https:// URL");
        }
        for (key, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("backoff_max_ms", self.backoff_max_ms),
            ("confirm_timeout_s", self.confirm_timeout_s),
            ("queue", self.queue as u64),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0");
            }
        }
        if self.poll_timeout_s == 0 || self.poll_timeout_s > 50 {
            bad("poll_timeout_s", "must be from 1 to 50 (Telegram holds a long poll for at most 50 seconds)");
        }
        for (key, value, most) in [
            ("request_timeout_ms", self.request_timeout_ms, 600_000),
            ("backoff_max_ms", self.backoff_max_ms, 3_600_000),
            ("confirm_timeout_s", self.confirm_timeout_s, 86_400),
            ("coalesce_ms", self.coalesce_ms, 3_600_000),
            ("chat_interval_ms", self.chat_interval_ms, 3_600_000),
        ] {
            if value > most {
                bad(key, &format!("must be at most {most}"));
            }
        }
        if let Some(token) = &self.token
            && !plausible_token(token.expose())
        {
            bad("token", "does not look like a bot token (digits, a colon, then letters, digits, `_` or `-`)");
        }
    }

    /// The token, once config and environment are applied; an enabled bot without one cannot start.
    pub fn required_token(&self) -> Result<&Secret, String> {
        self.token.as_ref().ok_or_else(|| {
            "`telegram.token`: the bot is enabled but has no token: set telegram.token or TRADEHOST_TELEGRAM_TOKEN"
                .to_string()
        })
    }
}

/// True for `123456:ABC-def_…`, the shape BotFather hands out.
fn plausible_token(token: &str) -> bool {
    match token.split_once(':') {
        Some((id, secret)) => {
            !id.is_empty()
                && id.bytes().all(|b| b.is_ascii_digit())
                && !secret.is_empty()
                && secret.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        }
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn an_enabled_bot_needs_an_allowlist_and_sane_timings() {
        let text = "[telegram]\nenabled = true\npoll_timeout_s = 0\nconfirm_timeout_s = 99999999999\nrequest_timeout_ms = 18446744073709551615\n";
        let error = Config::parse(text, "t.toml").unwrap_err().to_string();
        for expected in [
            "`telegram.allowed_chat_ids`: is empty",
            "`telegram.poll_timeout_s`: must be from 1 to 50",
            "`telegram.confirm_timeout_s`: must be at most 86400",
            "`telegram.request_timeout_ms`: must be at most 600000",
        ] {
            assert!(error.contains(expected), "{expected} in {error}");
        }
        let fine = "[telegram]\nenabled = true\nallowed_chat_ids = [1]\ntoken = \"1:a\"\n";
        assert!(Config::parse(fine, "t.toml").is_ok());
    }
}
