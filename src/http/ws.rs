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
use futures_util::stream::SplitStream;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
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
/// Live events taken before a flush (whole batches, so it may be exceeded).
const BATCH: usize = 512;
/// Events per replay page read from the store.
const REPLAY_PAGE: usize = 1_000;
/// Read buffer per client: clients only send pongs and close frames, and
/// every read attempt clears this much (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;
/// Largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

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
    let upgrade = upgrade.read_buffer_size(READ_BUFFER).max_message_size(MAX_CLIENT_MESSAGE);
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

/// Reads what the client sends (pongs, pings, close) on a task of its own, so
/// the writing loop never polls the socket for input: it hears a `()` for
/// every message and the channel's end when the client has gone.
fn spawn_reader(mut stream: SplitStream<WebSocket>) -> (mpsc::Receiver<()>, AbortOnDropHandle<()>) {
    let (heard, receiver) = mpsc::channel(1);
    let task = tokio::spawn(async move {
        while let Some(Ok(message)) = stream.next().await {
            if matches!(message, Message::Close(_)) {
                break;
            }
            let _ = heard.try_send(());
        }
    });
    (receiver, AbortOnDropHandle::new(task))
}

async fn serve_client(socket: WebSocket, state: &ApiState, since: Option<u64>, types: Option<HashSet<ActivityKind>>) {
    let (mut sink, stream) = socket.split();
    let (mut client_said, _reader) = spawn_reader(stream);
    let send_timeout = Duration::from_millis(state.config.ws_send_timeout_ms);
    let idle_timeout = Duration::from_millis(state.config.ws_idle_timeout_ms);
    // Subscribe first: anything committed from now on arrives live.
    let mut live = state.activity.subscribe();
    let mut last = since.unwrap_or_else(|| state.activity.last_seq());
    // Every write is bounded by the send timeout, counted from the start of
    // its batch (one clock read per batch): a client that does not take its
    // messages is closed, never waited on.
    let mut deadline: tokio::time::Instant;
    macro_rules! bounded {
        ($write:expr) => {
            match tokio::time::timeout_at(deadline, $write).await {
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
        ($message:expr) => {{
            deadline = tokio::time::Instant::now() + send_timeout;
            bounded!(sink.send($message))
        }};
    }
    // Messages of one batch, written with one bounded `send_all` (one
    // flush, one timer) instead of one timed write per message.
    let mut outgoing: Vec<Message> = Vec::new();
    macro_rules! write_out {
        () => {
            bounded!(sink.send_all(&mut futures_util::stream::iter(outgoing.drain(..).map(Ok))))
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
            deadline = tokio::time::Instant::now() + send_timeout;
            for event in page {
                last = event["seq"].as_u64().unwrap_or(last);
                if wanted(&types, event["type"].as_str().unwrap_or_default()) {
                    outgoing.push(Message::Text(Utf8Bytes::from(event.to_string())));
                }
            }
            write_out!();
        }
    }
    let mut ping = tokio::time::interval(Duration::from_millis(state.config.ws_ping_interval_ms));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    let shutdown = state.cancel.cancelled();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            batch = live.recv() => {
                // Take every batch already waiting too and write them with
                // one flush: one syscall for many messages when busy.
                // (Nothing more after a lag or the end: those finish the client.)
                let mut events = batch.as_ref().map_or(BATCH, |b| b.len());
                let mut batches = vec![batch];
                while events < BATCH {
                    match live.try_recv() {
                        Ok(batch) => {
                            events += batch.len();
                            batches.push(Ok(batch));
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(missed)) => {
                            batches.push(Err(RecvError::Lagged(missed)));
                            break;
                        }
                        Err(tokio::sync::broadcast::error::TryRecvError::Closed) => {
                            batches.push(Err(RecvError::Closed));
                            break;
                        }
                    }
                }
                let mut finished = None;
                for batch in batches {
                    match batch {
                        Ok(batch) => {
                            for event in batch.iter() {
                                if event.seq <= last {
                                    continue; // already sent by the replay
                                }
                                last = event.seq;
                                if types.as_ref().is_none_or(|set| set.contains(&event.kind)) {
                                    outgoing.push(Message::Text(event.json.clone()));
                                }
                            }
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::info!(missed, "dropping a WebSocket client that fell behind the live stream");
                            finished = Some(close(CLOSE_RESYNC, format!("fell behind the live stream by {missed} batches of events: reconnect with ?since={last}")));
                        }
                        Err(RecvError::Closed) => return,
                    }
                }
                let closing = finished.is_some();
                outgoing.extend(finished);
                if !outgoing.is_empty() {
                    deadline = tokio::time::Instant::now() + send_timeout;
                    write_out!();
                }
                if closing {
                    return;
                }
            }
            said = client_said.recv() => match said {
                Some(()) => heard = Instant::now(),
                None => return,
            },
            _ = ping.tick() => {
                if heard.elapsed() > idle_timeout {
                    send!(close(CLOSE_IDLE, format!("no answer to pings for {} ms", idle_timeout.as_millis())));
                    return;
                }
                send!(Message::Ping(Default::default()));
            }
            _ = &mut shutdown => {
                send!(close(CLOSE_GOING_AWAY, "the host is shutting down".into()));
                return;
            }
        }
    }
}
