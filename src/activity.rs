//! The activity bus: every notable event (orders, fills, positions, strategy
//! lifecycle, logs, system) gets a strictly increasing sequence number, is
//! kept in a bounded in-memory tail for recent reads, and is broadcast to
//! live subscribers. With a store attached, an event becomes visible (tail
//! and broadcast) only after the store committed it, so numbers seen by
//! anyone are never reused after a crash and the stored log has no gaps.
//! Live subscribers get events in batches: everything one group commit made
//! visible is one broadcast, so a busy stream wakes each subscriber once per
//! commit rather than once per event. Publishing never blocks: a subscriber
//! that falls behind the broadcast buffer sees `Lagged` and must resync
//! from the tail.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use crate::store::{StoreWriter, WriteOp};

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::broadcast;

/// Kinds of activity (the envelope's `type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ActivityKind {
    /// An order changed state.
    Order,
    /// A fill.
    Fill,
    /// A position changed.
    Position,
    /// A strategy started, stopped, reloaded, failed or was quarantined.
    Strategy,
    /// A strategy's log line.
    Log,
    /// Health changes and strategy health reports.
    Health,
    /// Risk events.
    Risk,
    /// Host lifecycle.
    System,
}

/// One activity event in the wire envelope of design.md §4.4.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ActivityEvent {
    /// Envelope version.
    pub v: u8,
    /// Sequence number, strictly increasing.
    pub seq: u64,
    /// When it was published.
    pub ts: DateTime<Utc>,
    /// What kind of event.
    #[serde(rename = "type")]
    pub kind: ActivityKind,
    /// The strategy concerned, if any.
    pub strategy: Option<String>,
    /// Kind-specific payload.
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// Events made visible together, in sequence order, with their envelopes
/// serialized once and framed for the WebSocket stream: every subscriber
/// shares the batch and writes its frames as they are.
#[derive(Debug, Default)]
pub struct LiveBatch {
    events: Vec<ActivityEvent>,
    /// Every event's envelope as a WebSocket text frame, back to back.
    frames: Vec<u8>,
    /// Where each event's frame ends in `frames`.
    ends: Vec<usize>,
}

impl LiveBatch {
    fn push(&mut self, event: ActivityEvent, json: &str) {
        push_text_frame(&mut self.frames, json.as_bytes());
        self.ends.push(self.frames.len());
        self.events.push(event);
    }

    /// The events, oldest first.
    pub fn events(&self) -> &[ActivityEvent] {
        &self.events
    }

    /// Every event's envelope as one WebSocket text frame each, back to back.
    pub fn frames(&self) -> &[u8] {
        &self.frames
    }

    /// Event `i`'s envelope as a WebSocket text frame.
    pub fn frame(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] };
        &self.frames[start..self.ends[i]]
    }
}

/// Appends `payload` as one final, unmasked WebSocket text frame (RFC 6455
/// §5.2), the way a server sends it.
pub fn push_text_frame(out: &mut Vec<u8>, payload: &[u8]) {
    const FIN_TEXT: u8 = 0x81;
    out.push(FIN_TEXT);
    match payload.len() {
        short @ 0..=125 => out.push(short as u8),
        medium @ 126..=0xffff => {
            out.push(126);
            out.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            out.push(127);
            out.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Batches the broadcast buffer holds before a slow subscriber lags.
const BROADCAST_BATCHES: usize = 1024;
/// Most events in one batch, so the buffer pins at most
/// `BROADCAST_BATCHES × MAX_BATCH` events however large a commit was.
const MAX_BATCH: usize = 16;
/// A batch ends once its frames reach this many bytes, so the buffer pins at
/// most about `BROADCAST_BATCHES × MAX_BATCH_BYTES` however large the events.
const MAX_BATCH_BYTES: usize = 64 * 1024;
/// Most bytes of envelopes the in-memory tail keeps (its oldest events go
/// first), whatever its event capacity.
pub const TAIL_BYTES: usize = 8 << 20;

/// Recent visible events with the size of each envelope.
struct Tail {
    events: VecDeque<(ActivityEvent, usize)>,
    bytes: usize,
}

struct Sequencer {
    next_seq: u64,
    store: Option<StoreWriter>,
}

/// A cheap, clonable handle to the bus.
#[derive(Clone)]
pub struct ActivityBus {
    delivered: Arc<std::sync::atomic::AtomicU64>,
    /// The newest visible sequence number (the store's last one at start).
    newest: Arc<std::sync::atomic::AtomicU64>,
    sequencer: Arc<Mutex<Sequencer>>,
    tail: Arc<Mutex<Tail>>,
    capacity: usize,
    /// Visible events, with their envelopes as JSON, not yet broadcast
    /// (until their group commit ends).
    pending: Arc<Mutex<Vec<(ActivityEvent, String)>>>,
    sender: broadcast::Sender<Arc<LiveBatch>>,
    clock: Arc<arc_swap::ArcSwap<crate::clock::Clock>>,
}

impl ActivityBus {
    /// A bus keeping `capacity` recent events; numbering starts after `last_seq`.
    pub fn new(capacity: usize, last_seq: u64) -> Self {
        let (sender, _) = broadcast::channel(BROADCAST_BATCHES);
        ActivityBus {
            delivered: Default::default(),
            newest: Arc::new(std::sync::atomic::AtomicU64::new(last_seq)),
            sequencer: Arc::new(Mutex::new(Sequencer { next_seq: last_seq + 1, store: None })),
            tail: Arc::new(Mutex::new(Tail { events: VecDeque::with_capacity(capacity.min(4096)), bytes: 0 })),
            capacity: capacity.max(1),
            pending: Default::default(),
            sender,
            clock: Default::default(),
        }
    }

    /// Stamps events from now on with `clock` (the wall clock until set).
    pub fn set_clock(&self, clock: crate::clock::Clock) {
        self.clock.store(Arc::new(clock));
    }

    /// Persists every event from now on before it becomes visible; what a
    /// group commit made visible is broadcast when the group ends.
    pub fn attach_store(&self, store: StoreWriter) {
        let (pending, sender) = (self.pending.clone(), self.sender.clone());
        store.set_group_end(Arc::new(move || broadcast_pending(&pending, &sender)));
        self.sequencer.lock().unwrap_or_else(|e| e.into_inner()).store = Some(store);
    }

    /// Stops persisting (at the end of shutdown, before the store closes;
    /// events still committing are broadcast when their group ends).
    pub fn detach_store(&self) {
        self.sequencer.lock().unwrap_or_else(|e| e.into_inner()).store = None;
    }

    /// Publishes an event and returns its sequence number.
    pub fn publish(&self, kind: ActivityKind, strategy: Option<&str>, data: serde_json::Value) -> u64 {
        let mut sequencer = self.sequencer.lock().unwrap_or_else(|e| e.into_inner());
        let seq = sequencer.next_seq;
        sequencer.next_seq += 1;
        let ts = self.clock.load().now();
        let event = ActivityEvent { v: 1, seq, ts, kind, strategy: strategy.map(str::to_string), data };
        // Serialized once: the stored envelope and the broadcast frame.
        let json = serde_json::to_string(&event).expect("activity serializes");
        // Handed on under the lock, so events become visible in sequence order.
        match &sequencer.store {
            Some(store) => {
                let bus = self.clone();
                store.submit(
                    vec![WriteOp::Activity { seq, envelope: json.clone() }],
                    Some(Box::new(move |result| match result {
                        Ok(()) => bus.make_visible(event, json),
                        Err(error) => tracing::error!(seq, "activity event not stored, so not published: {error}"),
                    })),
                );
            }
            None => {
                self.make_visible(event, json);
                broadcast_pending(&self.pending, &self.sender);
            }
        }
        seq
    }

    /// Events made visible since this bus was created.
    pub fn delivered(&self) -> u64 {
        self.delivered.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Puts an event (and its envelope as JSON) in the tail and queues it
    /// for the next broadcast.
    fn make_visible(&self, event: ActivityEvent, json: String) {
        self.delivered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // The tail lock is held while queueing, so batches keep sequence order.
        let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        self.newest.fetch_max(event.seq, std::sync::atomic::Ordering::Relaxed);
        tail.bytes += json.len();
        tail.events.push_back((event.clone(), json.len()));
        while tail.events.len() > self.capacity || (tail.bytes > TAIL_BYTES && tail.events.len() > 1) {
            if let Some((_, size)) = tail.events.pop_front() {
                tail.bytes -= size;
            }
        }
        self.pending.lock().unwrap_or_else(|e| e.into_inner()).push((event, json));
    }

    /// Live events from now on, in batches.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LiveBatch>> {
        self.sender.subscribe()
    }

    /// Events after `since` still in the tail, oldest first, at most `limit`.
    pub fn since(&self, since: u64, limit: usize) -> Vec<ActivityEvent> {
        let tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
        tail.events.iter().map(|(e, _)| e).filter(|e| e.seq > since).take(limit).cloned().collect()
    }

    /// The sequence number of the newest visible event (0 if none yet),
    /// counting those stored before this run.
    pub fn last_seq(&self) -> u64 {
        self.newest.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Broadcasts the queued events, in batches of at most [`MAX_BATCH`].
fn broadcast_pending(pending: &Mutex<Vec<(ActivityEvent, String)>>, sender: &broadcast::Sender<Arc<LiveBatch>>) {
    let events = std::mem::take(&mut *pending.lock().unwrap_or_else(|e| e.into_inner()));
    let mut events = events.into_iter().peekable();
    while events.peek().is_some() {
        let mut batch = LiveBatch::default();
        while let Some((event, json)) =
            events.next_if(|_| batch.events.len() < MAX_BATCH && batch.frames.len() < MAX_BATCH_BYTES)
        {
            batch.push(event, &json);
        }
        let _ = sender.send(Arc::new(batch));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequence_numbers_increase_and_tail_is_bounded() {
        let bus = ActivityBus::new(3, 41);
        let mut rx = bus.subscribe();
        for i in 0..5 {
            bus.publish(ActivityKind::Log, Some("s"), serde_json::json!({ "i": i }));
        }
        assert_eq!(bus.last_seq(), 46);
        let tail: Vec<u64> = bus.since(0, 10).iter().map(|e| e.seq).collect();
        assert_eq!(tail, vec![44, 45, 46]);
        assert_eq!(rx.try_recv().unwrap().events()[0].seq, 42);
        let json = serde_json::to_value(bus.since(45, 1)).unwrap();
        assert_eq!(json[0]["type"], "log");
        assert_eq!(json[0]["v"], 1);
    }

    #[test]
    fn the_tail_and_each_broadcast_batch_are_bounded_in_bytes() {
        let bus = ActivityBus::new(100_000, 0);
        let mut rx = bus.subscribe();
        let big = "x".repeat(100_000);
        for i in 0..200 {
            bus.publish(ActivityKind::Log, Some("s"), serde_json::json!({ "i": i, "message": big }));
        }
        let kept = bus.since(0, usize::MAX);
        assert!(kept.len() < 90, "about 8 MB of 100 KB events: {}", kept.len());
        assert_eq!(kept.last().unwrap().seq, 200, "the newest are kept");
        assert_eq!(rx.try_recv().unwrap().events().len(), 1, "a batch of large events ends at 64 KB");
    }

    #[test]
    fn what_a_group_commit_made_visible_is_broadcast_as_one_batch_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let writer = store.writer(crate::store::Retention::default());
        let bus = ActivityBus::new(1_000, 0);
        bus.attach_store(writer.clone());
        let mut rx = bus.subscribe();
        for i in 0..500 {
            bus.publish(ActivityKind::Log, Some("s"), serde_json::json!({ "i": i }));
        }
        let (mut batches, mut received) = (Vec::new(), 0);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while received < 500 && std::time::Instant::now() < deadline {
            match rx.try_recv() {
                Ok(batch) => {
                    received += batch.events().len();
                    batches.push(batch);
                }
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
            }
        }
        let seqs: Vec<u64> = batches.iter().flat_map(|b| b.events().iter().map(|e| e.seq)).collect();
        assert_eq!(seqs, (1..=500).collect::<Vec<_>>(), "every event once, in order");
        assert!(batches.len() < 500, "events committed together share a broadcast ({} batches)", batches.len());
        assert!(batches.iter().all(|b| b.events().len() <= MAX_BATCH), "batches stay small");
        assert_eq!(bus.last_seq(), 500);
        writer.close();
    }

    /// Reads `wire` as a WebSocket client would and returns the text messages.
    fn read_text_frames(wire: Vec<u8>) -> Vec<String> {
        use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
        use tokio_tungstenite::tungstenite::{Message, protocol::Role, protocol::WebSocket};
        let mut socket = WebSocket::from_raw_socket(std::io::Cursor::new(wire), Role::Client, None);
        let mut texts = Vec::new();
        loop {
            match socket.read() {
                Ok(Message::Text(text)) => texts.push(text.to_string()),
                Ok(other) => panic!("not a text frame: {other:?}"),
                // The end of the bytes, as tungstenite reports it.
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)) => return texts,
                Err(e) => panic!("unreadable frame: {e}"),
            }
        }
    }

    #[test]
    fn text_frames_of_every_length_class_read_back_through_tungstenite() {
        let payloads: Vec<String> = [0, 1, 125, 126, 127, 65_535, 65_536, 200_000]
            .iter()
            .map(|n: &usize| format!("{}{}", "é".repeat(n / 2), "x".repeat(n % 2)))
            .collect();
        let mut wire = Vec::new();
        for payload in &payloads {
            push_text_frame(&mut wire, payload.as_bytes());
        }
        assert_eq!(read_text_frames(wire), payloads);
    }

    #[test]
    fn a_batch_carries_each_envelope_as_a_frame() {
        let bus = ActivityBus::new(10, 0);
        let mut rx = bus.subscribe();
        // Three events made visible by one commit, then broadcast together.
        for i in 0..3u64 {
            let data = serde_json::json!({ "i": i, "pad": "p".repeat(100 * i as usize) });
            let event =
                ActivityEvent { v: 1, seq: i + 1, ts: Utc::now(), kind: ActivityKind::Fill, strategy: None, data };
            let json = serde_json::to_string(&event).unwrap();
            bus.make_visible(event, json);
        }
        broadcast_pending(&bus.pending, &bus.sender);
        let batch = rx.try_recv().unwrap();
        let envelopes: Vec<String> = batch.events().iter().map(|e| serde_json::to_string(e).unwrap()).collect();
        assert_eq!(read_text_frames(batch.frames().to_vec()), envelopes);
        let one_by_one: Vec<String> = (0..3).flat_map(|i| read_text_frames(batch.frame(i).to_vec())).collect();
        assert_eq!(one_by_one, envelopes);
    }
}
