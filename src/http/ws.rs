//! The WebSocket activity stream. `?since=SEQ` replays the persisted log and
//! then continues live with no gap and no duplicate (the live subscription
//! starts before the replay; overlap is skipped by sequence number);
//! `?types=fill,order` filters. Pings keep the connection honest: a client
//! that sends nothing for `ws_idle_timeout_ms` is dropped. A client too slow
//! to take its messages (a send that outlasts `ws_send_timeout_ms`, or one
//! that falls behind the live buffer) is closed with a reason telling it to
//! reconnect with `?since=`; it never stalls anyone else.
//!
//! Fan-out: the activity bus frames every envelope once per batch
//! ([`LiveBatch::frames`]); each client copies the frames it wants into its
//! write buffer and writes them with one syscall. tungstenite runs the
//! protocol around them: the handshake's framing state, reading client
//! frames (pongs, close), answering pings, and our pings and close frames.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use utoipa::IntoParams;

use super::ApiState;
use super::error::ApiError;
use crate::activity::{ActivityKind, LiveBatch, push_text_frame};

/// Close code for "reconnect with ?since=" (application range).
const CLOSE_RESYNC: u16 = 4000;
/// Close code for "the host is going away".
const CLOSE_GOING_AWAY: u16 = 1001;
/// Close code for a protocol-level timeout.
const CLOSE_IDLE: u16 = 4001;
/// Close code for an unexpected server condition.
const CLOSE_INTERNAL: u16 = 1011;
/// Live events taken before a write (whole batches, so it may be exceeded).
const BATCH: usize = 512;
/// Events per replay page read from the store.
const REPLAY_PAGE: usize = 1_000;
/// Read buffer per client: clients only send pongs and close frames, and
/// every read attempt clears this much (tungstenite's default is 128 KiB).
const READ_BUFFER: usize = 4 * 1024;
/// Write buffer a client keeps between writes; a larger one (after a
/// burst) is freed.
const KEPT_WRITE_BUFFER: usize = 16 * 1024;
/// Largest message a client may send.
const MAX_CLIENT_MESSAGE: usize = 64 * 1024;

/// The connection a client's stream runs on.
type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// The event types a client asked for, one bit per [`ActivityKind`].
#[derive(Clone, Copy, PartialEq)]
struct KindSet(u16);

impl KindSet {
    const ALL: KindSet = KindSet(u16::MAX);

    fn parse(list: &str) -> Result<KindSet, ApiError> {
        list.split(',').filter(|t| !t.is_empty()).try_fold(KindSet(0), |set, name| {
            let kind = kind_named(name).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "unknown event type {name:?} (types: order, fill, position, strategy, log, health, risk, system)"
                ))
            })?;
            Ok(KindSet(set.0 | KindSet::bit(kind)))
        })
    }

    fn bit(kind: ActivityKind) -> u16 {
        1 << kind as u16
    }

    fn contains(self, kind: ActivityKind) -> bool {
        self.0 & KindSet::bit(kind) != 0
    }
}

fn kind_named(name: &str) -> Option<ActivityKind> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}

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
    mut request: Request,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(format!("bad query: {}", e.body_text())))?;
    let types = q.types.as_deref().map_or(Ok(KindSet::ALL), KindSet::parse)?;
    let accept = accept_key(request.headers())?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| ApiError::BadRequest("this connection cannot be upgraded to a WebSocket".into()))?;
    if state.health.is_shutting_down() {
        return Err(ApiError::Unavailable("the host is shutting down".into()));
    }
    let newest = state.activity.last_seq();
    if let Some(since) = q.since.filter(|since| *since > newest) {
        return Err(ApiError::BadRequest(format!(
            "since={since} is beyond the newest event ({newest}): reconnect with ?since={newest} or without since"
        )));
    }
    let max = state.config.ws_max_clients as u64;
    if state.metrics.ws_clients.fetch_add(1, Ordering::SeqCst) >= max {
        state.metrics.ws_clients.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::Unavailable(format!("too many WebSocket clients (limit {max})")));
    }
    let slot = ClientSlot(state.clone());
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else { return };
        // Frames are limited too: tungstenite reserves a frame's announced
        // length before reading it.
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER)
            .max_message_size(Some(MAX_CLIENT_MESSAGE))
            .max_frame_size(Some(MAX_CLIENT_MESSAGE));
        let socket = WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
        serve_client(socket, &slot.0, q.since, types).await;
        drop(slot);
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "upgrade")
        .header(header::UPGRADE, "websocket")
        .header(header::SEC_WEBSOCKET_ACCEPT, accept)
        .body(Body::empty())
        .expect("a valid 101 response"))
}

/// Checks the RFC 6455 §4.2.1 upgrade headers and answers the key.
fn accept_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .any(|value| value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token))))
    };
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err(ApiError::BadRequest(
            "not a WebSocket upgrade: send `Connection: Upgrade` and `Upgrade: websocket`".into(),
        ));
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).is_none_or(|v| v != "13") {
        return Err(ApiError::BadRequest("unsupported WebSocket version: send `Sec-WebSocket-Version: 13`".into()));
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or_else(|| ApiError::BadRequest("missing `Sec-WebSocket-Key` header".into()))?;
    Ok(derive_accept_key(key.as_bytes()))
}

fn close(code: u16, reason: String) -> Message {
    Message::Close(Some(CloseFrame { code: code.into(), reason: Utf8Bytes::from(reason) }))
}

async fn serve_client(mut socket: Socket, state: &ApiState, since: Option<u64>, types: KindSet) {
    let send_timeout = Duration::from_millis(state.config.ws_send_timeout_ms);
    let idle_timeout = Duration::from_millis(state.config.ws_idle_timeout_ms);
    // Subscribe first: anything committed from now on arrives live.
    let mut live = state.activity.subscribe();
    let mut last = since.unwrap_or_else(|| state.activity.last_seq());
    // Every write is bounded by the send timeout, counted from its start: a
    // client that does not take its messages is closed, never waited on.
    macro_rules! bounded {
        ($write:expr) => {
            match tokio::time::timeout(send_timeout, $write).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return,
                Err(_) => {
                    tracing::info!("dropping a WebSocket client too slow to take its messages");
                    let reason = format!("too slow: reconnect with ?since={last}");
                    let _ = tokio::time::timeout(Duration::from_millis(100), socket.send(close(CLOSE_RESYNC, reason)))
                        .await;
                    return;
                }
            }
        };
    }
    // Frames waiting to be written, as one write.
    let mut out: Vec<u8> = Vec::new();
    macro_rules! write_out {
        () => {
            bounded!(write_frames(&mut socket, &out));
            out.clear();
            if out.capacity() > KEPT_WRITE_BUFFER {
                out = Vec::new(); // a burst's buffer is not kept per client
            }
        };
    }
    if since.is_some() {
        loop {
            let store = state.store.clone();
            let from = last;
            let page = match tokio::task::spawn_blocking(move || store.activity_since(from, REPLAY_PAGE)).await {
                Ok(Ok(page)) => page,
                _ => {
                    bounded!(socket.send(close(CLOSE_INTERNAL, "cannot read the activity log".into())));
                    return;
                }
            };
            if page.is_empty() {
                break;
            }
            for event in page {
                last = event["seq"].as_u64().unwrap_or(last);
                if event["type"].as_str().and_then(kind_named).is_some_and(|kind| types.contains(kind)) {
                    push_text_frame(&mut out, event.to_string().as_bytes());
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
                // Take every batch already waiting too and write them at
                // once: one syscall for many events when busy.
                let mut batch = batch;
                let mut events = 0;
                let finished = loop {
                    match batch {
                        Ok(_) if state.faults.ws_silent.load(Ordering::Relaxed) => {}
                        Ok(batch) => {
                            events += batch.events().len();
                            last = append_wanted(&mut out, &batch, last, types);
                        }
                        Err(RecvError::Lagged(missed)) => {
                            tracing::info!(missed, "dropping a WebSocket client that fell behind the live stream");
                            break Some(format!("fell behind the live stream by {missed} batches of events: reconnect with ?since={last}"));
                        }
                        Err(RecvError::Closed) => return,
                    }
                    if events >= BATCH {
                        break None;
                    }
                    batch = match live.try_recv() {
                        Ok(next) => Ok(next),
                        Err(TryRecvError::Empty) => break None,
                        Err(TryRecvError::Lagged(missed)) => Err(RecvError::Lagged(missed)),
                        Err(TryRecvError::Closed) => Err(RecvError::Closed),
                    };
                };
                if !out.is_empty() {
                    write_out!();
                }
                if let Some(reason) = finished {
                    bounded!(socket.send(close(CLOSE_RESYNC, reason)));
                    return;
                }
            }
            said = socket.next() => match said {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    // tungstenite queued the close reply; send it if we can.
                    let _ = tokio::time::timeout(Duration::from_millis(100), socket.flush()).await;
                    return;
                }
                Some(Ok(_)) => heard = Instant::now(),
            },
            _ = ping.tick() => {
                if heard.elapsed() > idle_timeout {
                    bounded!(socket.send(close(CLOSE_IDLE, format!("no answer to pings for {} ms", idle_timeout.as_millis()))));
                    return;
                }
                bounded!(socket.send(Message::Ping(Default::default())));
            }
            _ = &mut shutdown => {
                bounded!(socket.send(close(CLOSE_GOING_AWAY, "the host is shutting down".into())));
                return;
            }
        }
    }
}

/// Appends the frames of `batch`'s events after `last` that `types` wants
/// (the whole batch at once when it wants them all); returns the new last seq.
fn append_wanted(out: &mut Vec<u8>, batch: &LiveBatch, last: u64, types: KindSet) -> u64 {
    let events = batch.events();
    let Some(newest) = events.last() else { return last };
    if types == KindSet::ALL && events[0].seq > last {
        out.extend_from_slice(batch.frames());
    } else {
        for (i, event) in events.iter().enumerate() {
            // Skipped when the replay already sent it, or not wanted.
            if event.seq > last && types.contains(event.kind) {
                out.extend_from_slice(batch.frame(i));
            }
        }
    }
    last.max(newest.seq)
}

/// Writes ready frames straight to the connection, after whatever
/// tungstenite still holds (a pong it owes the client), so frames never
/// interleave.
async fn write_frames(socket: &mut Socket, frames: &[u8]) -> std::io::Result<()> {
    socket.flush().await.map_err(std::io::Error::other)?;
    let io = socket.get_mut();
    io.write_all(frames).await?;
    io.flush().await
}
