//! The WebSocket activity stream. `?since=SEQ` replays the persisted log and
//! then continues live with no gap and no duplicate (the live subscription
//! starts before the replay; overlap is skipped by sequence number);
//! `?types=fill,order` filters. Pings keep the connection honest: a client
//! that sends nothing for `ws_idle_timeout_ms` is dropped. A client too slow
//! to take its messages (a send that outlasts `ws_send_timeout_ms`, or one
//! that falls behind the live buffer) is closed with a reason telling it to
//! reconnect with `?since=`; it never stalls anyone else.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use utoipa::IntoParams;

use super::ApiState;
use super::error::ApiError;
use crate::activity::ActivityKind;

/// Close code for "reconnect with ?since=" (application range).
const CLOSE_RESYNC: u16 = 4000;
/// Close code for "the host is going away".
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a protocol-level timeout.
const CLOSE_IDLE: u16 = 4001;
/// Most live events written per flush.
const BATCH: usize = 512;
/// Events per replay page read from the store.
const REPLAY_PAGE: usize = 1_000;

/// `/ws` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WsQuery {
    /// Replay persisted events after this sequence number first.
    pub since: Option<u64>,
    /// Comma-separated event types to receive (default: all).
    pub types: Option<String>,
    /// The API token (browsers cannot send headers on WebSocket upgrades);
    /// checked by the authentication layer before this handler runs.
    #[allow(dead_code)]
    pub token: Option<String>,
}

/// Releases a client slot when the connection ends.
struct ClientSlot(ApiState);

impl Drop for ClientSlot {
    fn drop(&mut self) {
        self.0.metrics.ws_clients.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The activity stream. Envelopes as in `/activity`; see the module docs for
/// replay, keep-alive and slow-client rules.
#[utoipa::path(get, path = "/api/v1/ws", params(WsQuery), responses(
    (status = 101, description = "switching to the WebSocket stream"),
    (status = 400, body = super::ErrorBody), (status = 401, body = super::ErrorBody), (status = 503, body = super::ErrorBody)))]
pub async fn upgrade(
    State(state): State<ApiState>,
    q: Result<Query<WsQuery>, QueryRejection>,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))?;
    if state.health.is_shutting_down() {
        return Err(ApiError::Unavailable("the host is shutting down".into()));
    }
    let types = match &q.types {
        None => None,
        Some(list) => Some(
            list.split(',')
                .filter(|t| !t.is_empty())
                .map(|t| {
                    serde_json::from_value::<ActivityKind>(serde_json::Value::String(t.to_string()))
                        .map_err(|_| ApiError::BadRequest(format!("unknown event type {t:?} (types: order, fill, position, strategy, log, health, risk, system)")))
                })
                .collect::<Result<HashSet<_>, _>>()?,
        ),
    };
    let max = state.config.ws_max_clients as u64;
    if state.metrics.ws_clients.fetch_add(1, Ordering::SeqCst) >= max {
        state.metrics.ws_clients.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::Unavailable(format!("too many WebSocket clients (limit {max})")));
    }
    let slot = ClientSlot(state.clone());
    Ok(upgrade.on_upgrade(move |socket| async move {
        serve_client(socket, &slot.0, q.since, types).await;
        drop(slot);
    }))
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame { code, reason: Utf8Bytes::from(reason) }))
}

fn wanted(types: &Option<HashSet<ActivityKind>>, kind: &str) -> bool {
    types.as_ref().is_none_or(|set| {
        serde_json::from_value::<ActivityKind>(serde_json::Value::String(kind.to_string()))
            .is_ok_and(|k| set.contains(&k))
    })
}

async fn serve_client(socket: WebSocket, state: &ApiState, since: Option<u64>, types: Option<HashSet<ActivityKind>>) {
    let (mut sink, mut stream) = socket.split();
    let send_timeout = Duration::from_millis(state.config.ws_send_timeout_ms);
    let idle_timeout = Duration::from_millis(state.config.ws_idle_timeout_ms);
    // Subscribe first: anything committed from now on arrives live.
    let mut live = state.activity.subscribe();
    let mut last = since.unwrap_or_else(|| state.activity.last_seq());
    // Every write is bounded by the send timeout: a client that does not
    // take its messages is closed, never waited on.
    macro_rules! bounded {
        ($write:expr) => {
            match tokio::time::timeout(send_timeout, $write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!("dropping a WebSocket client too slow to take its messages");
                    let reason = format!("too slow: reconnect with ?since={last}");
                    let _ =
                        tokio::time::timeout(Duration::from_millis(100), sink.send(close(CLOSE_RESYNC, reason))).await;
                    return;
                }
            }
        };
    }
    macro_rules! send {
        ($message:expr) => {
            bounded!(sink.send($message))
        };
    }
    macro_rules! feed {
        ($message:expr) => {
            bounded!(sink.feed($message))
        };
    }
    macro_rules! flush {
        () => {
            bounded!(sink.flush())
        };
    }
    if since.is_some() {
        loop {
            let store = state.store.clone();
            let from = last;
            let page = match tokio::task::spawn_blocking(move || store.activity_since(from, REPLAY_PAGE)).await {
                Ok(Ok(page)) => page,
                _ => {
                    send!(close(1011, "cannot read the activity log".into()));
                    return;
                }
            };
            if page.is_empty() {
                break;
            }
            for event in page {
                last = event["seq"].as_u64().unwrap_or(last);
                if wanted(&types, event["type"].as_str().unwrap_or_default()) {
                    feed!(Message::Text(Utf8Bytes::from(event.to_string())));
                }
            }
            flush!();
        }
    }
    let mut ping = tokio::time::interval(Duration::from_millis(state.config.ws_ping_interval_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        tokio::select! {
            event = live.recv() => {
                // Take everything already waiting and write it with one flush:
                // one syscall for many messages when the stream is busy.
                let mut batch = vec![event];
                while batch.len() < BATCH {
                    match live.try_recv() {
                        Ok(event) => batch.push(Ok(event)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(missed)) => batch.push(Err(RecvError::Lagged(missed))),
                        Err(tokio::sync::broadcast::error::TryRecvError::Closed) => batch.push(Err(RecvError::Closed)),
                    }
                }
                let mut queued = false;
                for event in batch {
                    match event {
                        Ok(event) => {
                            if event.seq <= last {
                                continue; // already sent by the replay
                            }
                            last = event.seq;
                            if types.as_ref().is_none_or(|set| set.contains(&event.kind)) {
                                let text = Utf8Bytes::try_from(event.json.clone()).expect("JSON is UTF-8");
                                feed!(Message::Text(text));
                                queued = true;
                            }
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::info!(missed, "dropping a WebSocket client that fell behind the live stream");
                            send!(close(CLOSE_RESYNC, format!("fell behind by {missed} events: reconnect with ?since={last}")));
                            return;
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
                if queued {
                    flush!();
                }
            }
            message = stream.next() => match message {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > idle_timeout {
                    send!(close(CLOSE_IDLE, format!("no answer to pings for {} ms", idle_timeout.as_millis())));
                    return;
                }
                send!(Message::Ping(Default::default()));
            }
            _ = state.cancel.cancelled() => {
                send!(close(CLOSE_GOING_AWAY, "the host is shutting down".into()));
                return;
            }
        }
    }
}
