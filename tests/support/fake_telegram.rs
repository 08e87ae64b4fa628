//! A fake Telegram Bot API on loopback that speaks the real protocol
//! (https://core.telegram.org/bots/api): `POST /bot<token>/<method>` with a
//! JSON body, answers `{"ok": true, "result": …}` or `{"ok": false,
//! "error_code", "description", "parameters": {"retry_after"}}`. It serves
//! getMe, getUpdates (a long poll that waits up to `timeout` seconds for an
//! update after `offset`, and forgets the updates an offset confirms),
//! sendMessage (parse_mode HTML is checked: unbalanced or unknown tags are
//! refused as Telegram refuses them), setMyCommands, answerCallbackQuery and
//! editMessageText; it records every request. Faults, queued per method:
//! an error status (5xx, 409 Conflict), 429 with retry_after, hanging, and
//! closing the connection without an answer.

#![allow(dead_code)]

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::time::Instant;

/// The token the fake accepts.
pub const TOKEN: &str = "123456789:AAFakeTokenForTests_0123456789abcdef";
/// The bot's own user id.
pub const BOT_ID: i64 = 900_000_001;

/// One recorded request.
#[derive(Debug, Clone)]
pub struct Request {
    /// Bot API method.
    pub method: String,
    /// The JSON body.
    pub body: Value,
    /// When it arrived.
    pub at: Instant,
}

/// A fault the fake answers a request with instead of serving it.
#[derive(Debug, Clone)]
pub enum Fault {
    /// An error status with Telegram's error body.
    Status(u16, &'static str),
    /// 429 Too Many Requests with `retry_after` seconds.
    RetryAfter(u32),
    /// No answer for this long (then the normal answer).
    Hang(Duration),
    /// The connection is closed without an answer.
    Close,
}

#[derive(Default)]
struct Inner {
    /// Updates not yet confirmed by an offset.
    updates: Vec<Value>,
    requests: Vec<Request>,
    faults: HashMap<String, VecDeque<Fault>>,
    /// Messages the bot sent or edited, by (chat, message id): the text now.
    messages: HashMap<(i64, i64), Value>,
    /// The bodies of the sendMessage requests that were carried out, in order.
    delivered: Vec<Value>,
}

/// The fake Bot API.
#[derive(Clone)]
pub struct FakeTelegram {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
    arrived: Arc<Notify>,
    next_update: Arc<AtomicI64>,
    next_message: Arc<AtomicI64>,
}

impl FakeTelegram {
    /// Starts the fake on a free loopback port.
    pub async fn start() -> FakeTelegram {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let fake = FakeTelegram {
            addr: listener.local_addr().unwrap(),
            inner: Arc::default(),
            arrived: Arc::new(Notify::new()),
            next_update: Arc::new(AtomicI64::new(500_000)),
            next_message: Arc::new(AtomicI64::new(1)),
        };
        let app = Router::new().route("/{bot}/{method}", post(serve)).with_state(fake.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        fake
    }

    /// The `telegram.api_url` that points at the fake.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues faults for the next requests of `method` (`*`: any method).
    pub fn fail(&self, method: &str, faults: impl IntoIterator<Item = Fault>) {
        self.inner.lock().unwrap().faults.entry(method.to_string()).or_default().extend(faults);
    }

    /// A user in `chat` sends `text` (a command gets its bot_command entity).
    pub fn send_text(&self, chat: i64, text: &str) -> i64 {
        let message_id = self.next_message.fetch_add(1, Ordering::SeqCst);
        let mut message = json!({
            "message_id": message_id,
            "date": chrono::Utc::now().timestamp(),
            "chat": { "id": chat, "type": "private", "first_name": "Trader" },
            "from": { "id": chat, "is_bot": false, "first_name": "Trader" },
            "text": text,
        });
        if text.starts_with('/') {
            let length = text.split_whitespace().next().unwrap_or_default().encode_utf16().count();
            message["entities"] = json!([{ "type": "bot_command", "offset": 0, "length": length }]);
        }
        self.push_update(json!({ "message": message }));
        message_id
    }

    /// A user in `chat` presses the button carrying `data` under the bot's message `message_id`.
    pub fn press(&self, chat: i64, message_id: i64, data: &str) {
        let message = self.inner.lock().unwrap().messages.get(&(chat, message_id)).cloned().unwrap_or_else(|| {
            json!({ "message_id": message_id, "date": chrono::Utc::now().timestamp(),
                    "chat": { "id": chat, "type": "private", "first_name": "Trader" }, "text": "?" })
        });
        let id = self.next_update.load(Ordering::SeqCst);
        self.push_update(json!({ "callback_query": {
            "id": format!("cb{id}"),
            "from": { "id": chat, "is_bot": false, "first_name": "Trader" },
            "message": message,
            "chat_instance": format!("ci{chat}"),
            "data": data,
        }}));
    }

    fn push_update(&self, mut update: Value) {
        update["update_id"] = json!(self.next_update.fetch_add(1, Ordering::SeqCst));
        self.inner.lock().unwrap().updates.push(update);
        self.arrived.notify_waiters();
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Request> {
        self.inner.lock().unwrap().requests.clone()
    }

    /// The requests of one method so far.
    pub fn calls(&self, method: &str) -> Vec<Request> {
        self.requests().into_iter().filter(|r| r.method == method).collect()
    }

    /// The messages delivered to `chat` (sendMessage bodies carried out), in order.
    pub fn sent_to(&self, chat: i64) -> Vec<Value> {
        let inner = self.inner.lock().unwrap();
        inner.delivered.iter().filter(|b| b["chat_id"] == json!(chat)).cloned().collect()
    }

    /// The message the bot sent (or last edited) with this id.
    pub fn message(&self, chat: i64, message_id: i64) -> Option<Value> {
        self.inner.lock().unwrap().messages.get(&(chat, message_id)).cloned()
    }

    /// Updates not yet confirmed by an offset.
    pub fn unconfirmed(&self) -> usize {
        self.inner.lock().unwrap().updates.len()
    }

    /// Waits until a sendMessage to `chat` after the first `after` ones
    /// satisfies `matches`, and returns its body.
    pub async fn wait_sent(&self, chat: i64, after: usize, what: &str, matches: impl Fn(&str) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(found) =
                self.sent_to(chat).into_iter().skip(after).find(|b| matches(b["text"].as_str().unwrap_or_default()))
            {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no message to chat {chat} with {what}; sent: {:#?}",
                self.sent_to(chat)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn ok(result: Value) -> Response {
    axum::Json(json!({ "ok": true, "result": result })).into_response()
}

fn error(code: u16, description: &str) -> Response {
    let status = axum::http::StatusCode::from_u16(code).unwrap();
    (status, axum::Json(json!({ "ok": false, "error_code": code, "description": description }))).into_response()
}

/// Checks the HTML subset Telegram accepts: known tags, balanced, entities escaped.
pub fn html_problem(text: &str) -> Option<String> {
    const TAGS: [&str; 8] = ["b", "i", "u", "s", "code", "pre", "a", "blockquote"];
    let mut open: Vec<String> = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find(['<', '&']) {
        let tail = &rest[i..];
        if tail.starts_with('&') {
            let end = tail.find(';')?;
            if !["&lt;", "&gt;", "&amp;", "&quot;"].contains(&&tail[..=end]) {
                return Some(format!("Bad Request: can't parse entities: unsupported entity {:?}", &tail[..=end]));
            }
            rest = &tail[end + 1..];
            continue;
        }
        let Some(end) = tail.find('>') else {
            return Some("Bad Request: can't parse entities: unclosed start tag".into());
        };
        let tag = &tail[1..end];
        if let Some(name) = tag.strip_prefix('/') {
            if open.pop().as_deref() != Some(name) {
                return Some(format!("Bad Request: can't parse entities: unmatched end tag {name:?}"));
            }
        } else {
            let name = tag.split_whitespace().next().unwrap_or_default();
            if !TAGS.contains(&name) {
                return Some(format!("Bad Request: can't parse entities: unsupported start tag {name:?}"));
            }
            open.push(name.to_string());
        }
        rest = &tail[end + 1..];
    }
    (!open.is_empty()).then(|| format!("Bad Request: can't parse entities: unclosed tags {open:?}"))
}

/// Bot API method names are case-insensitive (teloxide sends `GetMe`): the
/// fake records them in the documentation's spelling.
fn canonical(method: &str) -> String {
    const METHODS: [&str; 6] =
        ["getMe", "getUpdates", "sendMessage", "setMyCommands", "answerCallbackQuery", "editMessageText"];
    METHODS.iter().find(|m| m.eq_ignore_ascii_case(method)).map_or_else(|| method.to_string(), |m| m.to_string())
}

async fn serve(State(fake): State<FakeTelegram>, Path((bot, method)): Path<(String, String)>, body: Bytes) -> Response {
    let method = canonical(&method);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let fault = {
        let mut inner = fake.inner.lock().unwrap();
        inner.requests.push(Request { method: method.clone(), body: body.clone(), at: Instant::now() });
        let mut fault = inner.faults.get_mut(&method).and_then(VecDeque::pop_front);
        if fault.is_none() {
            fault = inner.faults.get_mut("*").and_then(VecDeque::pop_front);
        }
        fault
    };
    match fault {
        Some(Fault::Status(code, description)) => return error(code, description),
        Some(Fault::RetryAfter(seconds)) => {
            let body = json!({ "ok": false, "error_code": 429, "description": format!("Too Many Requests: retry after {seconds}"), "parameters": { "retry_after": seconds } });
            return (axum::http::StatusCode::TOO_MANY_REQUESTS, axum::Json(body)).into_response();
        }
        Some(Fault::Hang(duration)) => tokio::time::sleep(duration).await,
        // Hyper drops the connection of a handler that panics: the client sees it closed.
        Some(Fault::Close) => {
            std::panic::resume_unwind(Box::new("fake telegram: closing the connection (injected fault)"))
        }
        None => {}
    }
    if bot != format!("bot{TOKEN}") {
        return error(401, "Unauthorized");
    }
    let chat = body["chat_id"].as_i64().unwrap_or_default();
    match method.as_str() {
        "getMe" => ok(json!({
            "id": BOT_ID, "is_bot": true, "first_name": "tradehost", "username": "tradehost_test_bot",
            "can_join_groups": true, "can_read_all_group_messages": false, "supports_inline_queries": false,
            "can_connect_to_business": false, "has_main_web_app": false,
        })),
        "setMyCommands" => {
            // 1-32 lowercase letters, digits and underscores; a description of 1-256 characters.
            for command in body["commands"].as_array().cloned().unwrap_or_default() {
                let name = command["command"].as_str().unwrap_or_default();
                let description = command["description"].as_str().unwrap_or_default();
                if !(1..=32).contains(&name.len())
                    || !name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
                {
                    return error(400, "Bad Request: BOT_COMMAND_INVALID");
                }
                if !(1..=256).contains(&description.chars().count()) {
                    return error(400, "Bad Request: BOT_COMMAND_DESCRIPTION_INVALID");
                }
            }
            ok(json!(true))
        }
        "getUpdates" => {
            let offset = body["offset"].as_i64().unwrap_or(0);
            let wait = Duration::from_secs(body["timeout"].as_u64().unwrap_or(0));
            let deadline = Instant::now() + wait;
            loop {
                let arrived = fake.arrived.notified();
                let ready: Vec<Value> = {
                    let mut inner = fake.inner.lock().unwrap();
                    // An offset confirms every update before it: they are forgotten.
                    inner.updates.retain(|u| u["update_id"].as_i64().unwrap_or_default() >= offset);
                    inner.updates.clone()
                };
                if !ready.is_empty() || Instant::now() >= deadline {
                    return ok(Value::Array(ready));
                }
                let _ = tokio::time::timeout_at(deadline, arrived).await;
            }
        }
        "sendMessage" => {
            let Some(text) = body["text"].as_str() else { return error(400, "Bad Request: message text is empty") };
            if text.chars().count() > 4096 {
                return error(400, "Bad Request: message is too long");
            }
            if body["parse_mode"] == "HTML"
                && let Some(problem) = html_problem(text)
            {
                return error(400, &problem);
            }
            let id = fake.next_message.fetch_add(1, Ordering::SeqCst);
            let message = json!({
                "message_id": id, "date": chrono::Utc::now().timestamp(),
                "chat": { "id": chat, "type": "private", "first_name": "Trader" },
                "from": { "id": BOT_ID, "is_bot": true, "first_name": "tradehost", "username": "tradehost_test_bot" },
                "text": text,
            });
            let mut inner = fake.inner.lock().unwrap();
            inner.messages.insert((chat, id), message.clone());
            inner.delivered.push(body.clone());
            ok(message)
        }
        "editMessageText" => {
            let id = body["message_id"].as_i64().unwrap_or_default();
            let mut inner = fake.inner.lock().unwrap();
            match inner.messages.get_mut(&(chat, id)) {
                Some(message) => {
                    message["text"] = body["text"].clone();
                    message["edit_date"] = json!(chrono::Utc::now().timestamp());
                    ok(message.clone())
                }
                None => error(400, "Bad Request: message to edit not found"),
            }
        }
        "answerCallbackQuery" => ok(json!(true)),
        _ => error(404, "Not Found"),
    }
}
