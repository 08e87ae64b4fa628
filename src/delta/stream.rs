//! One WebSocket stream with its whole life cycle (shared/delta-exchange.md
//! §5): connect, `key-auth` for the private endpoint (subscriptions only
//! after success), `enable_heartbeat` with a watchdog, pings, subscribe,
//! decode every frame (a malformed one is reported and skipped), and on any
//! failure reconnect with capped exponential backoff and jitter, then
//! authenticate and subscribe again.
//!
//! Decoded frames go to the connector task through an unbounded channel:
//! blocking the socket reader would stall heartbeats and pings and get the
//! stream dropped, and the connector applies each frame at once (a book
//! update, a tick handed to the bounded market queue, an order update).

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use super::rest::{Credentials, RestClient};
use super::sign::ws_signature;
use super::wire::WsMessage;

/// What a stream connects to and how it behaves.
#[derive(Clone)]
pub struct StreamSpec {
    /// `public` or `private` (for logs and health).
    pub name: &'static str,
    /// `wss://…` URL.
    pub url: String,
    /// Channels and their symbols (empty: no symbols list).
    pub channels: Vec<(String, Vec<String>)>,
    /// Credentials for `key-auth` (private stream); the REST client gives the corrected clock.
    pub auth: Option<(Credentials, Arc<RestClient>)>,
    /// Reconnect when no heartbeat arrived for this long.
    pub heartbeat_timeout: Duration,
    /// Interval of our `{"type":"ping"}`.
    pub ping_interval: Duration,
    /// First reconnect delay.
    pub backoff_initial: Duration,
    /// Largest reconnect delay.
    pub backoff_max: Duration,
}

/// What a stream reports.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamEvent {
    /// Connected, authenticated (private) and subscribed.
    Up,
    /// The connection ended; a reconnect follows.
    Down(String),
    /// A decoded message.
    Message(Box<WsMessage>),
    /// A frame that could not be decoded (skipped).
    Malformed(String),
}

/// Requests to a running stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamCommand {
    /// Unsubscribe and subscribe again (fresh snapshot), e.g. after a book gap.
    Resubscribe {
        /// Channel.
        channel: String,
        /// Symbols.
        symbols: Vec<String>,
    },
}

/// The reconnect delay after `failures` consecutive failures: exponential,
/// capped, with ±50 % jitter (never above the cap).
pub fn backoff(failures: u32, initial: Duration, max: Duration) -> Duration {
    let base = initial.saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(16))).min(max);
    base.mul_f64(0.5 + rand::random::<f64>() * 0.5)
}

/// Runs the stream until `cancel` fires.
pub async fn run(
    spec: StreamSpec,
    events: mpsc::UnboundedSender<StreamEvent>,
    mut commands: mpsc::UnboundedReceiver<StreamCommand>,
    cancel: CancellationToken,
) {
    let mut failures = 0u32;
    loop {
        let mut up = false;
        let reason = tokio::select! {
            _ = cancel.cancelled() => return,
            reason = session(&spec, &events, &mut commands, &mut up) => reason,
        };
        if cancel.is_cancelled() {
            return;
        }
        failures = if up { 1 } else { failures + 1 };
        let delay = backoff(failures, spec.backoff_initial, spec.backoff_max);
        tracing::warn!(
            stream = spec.name,
            "delta: {} stream down: {reason}; reconnecting in {} ms",
            spec.name,
            delay.as_millis()
        );
        let _ = events.send(StreamEvent::Down(reason));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

fn subscribe_message(kind: &str, channels: &[(String, Vec<String>)]) -> String {
    let channels: Vec<_> = channels
        .iter()
        .map(
            |(name, symbols)| {
                if symbols.is_empty() { json!({ "name": name }) } else { json!({ "name": name, "symbols": symbols }) }
            },
        )
        .collect();
    json!({ "type": kind, "payload": { "channels": channels } }).to_string()
}

/// A WebSocket connection to Delta.
pub type Socket = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Connects within 10 s.
pub async fn connect(url: &str) -> Result<Socket, String> {
    match tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url)).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(error)) => Err(format!("cannot connect to {url}: {error}")),
        Err(_) => Err(format!("cannot connect to {url}: timed out")),
    }
}

/// Sends `key-auth` signed for `timestamp` and waits up to 5 s for the answer.
pub async fn key_auth(socket: &mut Socket, credentials: &Credentials, timestamp: &str) -> Result<(), String> {
    let auth = json!({ "type": "key-auth", "payload": {
        "api-key": credentials.key.expose(),
        "signature": ws_signature(credentials.secret.expose(), timestamp),
        "timestamp": timestamp,
    }});
    socket.send(Message::text(auth.to_string())).await.map_err(|e| format!("cannot send key-auth: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return Err("no key-auth answer within 5 s".into()),
            Ok(None) => return Err("closed during key-auth".into()),
            Ok(Some(Err(error))) => return Err(format!("read error during key-auth: {error}")),
            Ok(Some(Ok(frame))) => frame,
        };
        let Message::Text(text) = frame else { continue };
        if let Ok(WsMessage::Auth { success, status, message }) = WsMessage::parse(&text) {
            return if success {
                Ok(())
            } else {
                Err(format!("key-auth refused: {status} {}", message.unwrap_or_default()))
            };
        }
    }
}

/// One connection; returns why it ended.
async fn session(
    spec: &StreamSpec,
    events: &mpsc::UnboundedSender<StreamEvent>,
    commands: &mut mpsc::UnboundedReceiver<StreamCommand>,
    up: &mut bool,
) -> String {
    let mut socket = match connect(&spec.url).await {
        Ok(socket) => socket,
        Err(error) => return error,
    };
    if let Some((credentials, rest)) = &spec.auth
        && let Err(error) = key_auth(&mut socket, credentials, &rest.timestamp()).await
    {
        return error;
    }
    for message in [json!({ "type": "enable_heartbeat" }).to_string(), subscribe_message("subscribe", &spec.channels)] {
        if let Err(error) = socket.send(Message::text(message)).await {
            return format!("cannot subscribe: {error}");
        }
    }
    // Up only once the server acknowledged the subscriptions: whatever happens
    // after the acknowledgement arrives on this stream, and the consumer's
    // reconciliation on Up covers everything before it.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let frame = match tokio::time::timeout_at(deadline, socket.next()).await {
            Err(_) => return "no subscription acknowledgement within 5 s".into(),
            Ok(None) => return "closed while subscribing".into(),
            Ok(Some(Err(error))) => return format!("read error while subscribing: {error}"),
            Ok(Some(Ok(frame))) => frame,
        };
        let Message::Text(text) = frame else { continue };
        match WsMessage::parse(&text) {
            Ok(WsMessage::Subscriptions(ack)) => {
                let refused: Vec<String> = ack["channels"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|c| Some(format!("{}: {}", c["name"].as_str()?, c["error"].as_str()?)))
                    .collect();
                if !refused.is_empty() {
                    return format!("subscriptions refused: {}", refused.join("; "));
                }
                break;
            }
            Ok(WsMessage::Heartbeat | WsMessage::Pong) => {}
            Ok(message) => {
                let _ = events.send(StreamEvent::Message(Box::new(message)));
            }
            Err(error) => {
                let _ = events.send(StreamEvent::Malformed(error.to_string()));
            }
        }
    }
    *up = true;
    let _ = events.send(StreamEvent::Up);
    let mut heartbeat_deadline = Instant::now() + spec.heartbeat_timeout;
    let mut ping = tokio::time::interval_at(Instant::now() + spec.ping_interval, spec.ping_interval);
    let mut awaiting_pong: Option<Instant> = None;
    loop {
        let pong_deadline = awaiting_pong.map(|sent| sent + Duration::from_secs(5));
        tokio::select! {
            frame = socket.next() => {
                let text = match frame {
                    None => return "closed by the server".into(),
                    Some(Err(error)) => return format!("read error: {error}"),
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(Message::Close(frame))) => {
                        return format!("closed by the server{}", frame.map(|f| format!(": {} {}", f.code, f.reason)).unwrap_or_default())
                    }
                    Some(Ok(Message::Pong(_))) => { awaiting_pong = None; continue }
                    Some(Ok(_)) => continue,
                };
                match WsMessage::parse(&text) {
                    Ok(WsMessage::Heartbeat) => heartbeat_deadline = Instant::now() + spec.heartbeat_timeout,
                    Ok(WsMessage::Pong) => awaiting_pong = None,
                    Ok(message) => {
                        if events.send(StreamEvent::Message(Box::new(message))).is_err() {
                            return "consumer gone".into();
                        }
                    }
                    Err(error) => {
                        tracing::warn!(stream = spec.name, "delta: skipped a frame: {error}");
                        let _ = events.send(StreamEvent::Malformed(error.to_string()));
                    }
                }
            }
            _ = tokio::time::sleep_until(heartbeat_deadline) => {
                return format!("no heartbeat for {} ms", spec.heartbeat_timeout.as_millis());
            }
            _ = async { tokio::time::sleep_until(pong_deadline.unwrap_or_else(Instant::now)).await }, if pong_deadline.is_some() => {
                return "no pong within 5 s".into();
            }
            _ = ping.tick() => {
                if awaiting_pong.is_none() {
                    awaiting_pong = Some(Instant::now());
                }
                if let Err(error) = socket.send(Message::text(json!({ "type": "ping" }).to_string())).await {
                    return format!("cannot send ping: {error}");
                }
            }
            Some(command) = commands.recv() => match command {
                StreamCommand::Resubscribe { channel, symbols } => {
                    let channels = [(channel, symbols)];
                    for kind in ["unsubscribe", "subscribe"] {
                        if let Err(error) = socket.send(Message::text(subscribe_message(kind, &channels))).await {
                            return format!("cannot resubscribe: {error}");
                        }
                    }
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_millis(800));
        for failures in 1..=20 {
            let delay = backoff(failures, initial, max);
            let base = (initial * 2u32.pow((failures - 1).min(3))).min(max);
            assert!(delay >= base / 2 && delay <= base, "failure {failures}: {delay:?} vs {base:?}");
        }
    }
}
