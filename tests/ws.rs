//! The WebSocket activity stream: replay with no gap or duplicate during a
//! burst, fan-out to many clients, slow and silent clients dropped without
//! hurting others, the client limit and the type filter.

mod common;

use std::time::Duration;

use common::TestHost;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tradehost::activity::ActivityKind;

type Client = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(t: &TestHost, query: &str) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
    let url = format!("ws://{}/api/v1/ws?token={}{query}", t.host.http_addr(), t.host.api_token().expose());
    tokio_tungstenite::connect_async(url).await.map(|(client, _)| client)
}

/// Reads events until one satisfies `done`; returns all read.
async fn read_until(client: &mut Client, done: impl Fn(&Value) -> bool) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = tokio::time::timeout(Duration::from_secs(20), client.next()).await.expect("an event in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).unwrap();
                let finished = done(&event);
                events.push(event);
                if finished {
                    return events;
                }
            }
            Some(Ok(Message::Close(frame))) => panic!("closed: {frame:?}"),
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
}

/// Whether the host ends the connection (close frame, error or end of
/// stream) within `limit`, skipping whatever arrives before.
async fn closed_within(client: &mut Client, limit: Duration) -> bool {
    let closed = async {
        loop {
            match client.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.is_ok()
}

fn is_marker(event: &Value, marker: &str) -> bool {
    event["data"]["marker"] == marker
}

async fn ws_clients(t: &TestHost) -> u64 {
    t.api_get("/api/v1/status").await["ws_clients"].as_u64().unwrap()
}

async fn wait_clients(t: &TestHost, expected: u64) {
    for _ in 0..400 {
        if ws_clients(t).await == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("ws_clients never became {expected} (is {})", ws_clients(t).await);
}

#[tokio::test(flavor = "multi_thread")]
async fn since_replays_history_then_live_with_no_gap_or_duplicate_during_a_burst() {
    let t = TestHost::start(&[], |_| {}).await;
    let bus = t.host.activity().clone();
    for i in 0..300 {
        bus.publish(ActivityKind::System, None, json!({ "i": i }));
    }
    let start = t.wait_for(0, "the first burst", |e| e.data["i"] == 299).await.seq - 250;
    let burst = tokio::spawn(async move {
        for i in 0..3_000 {
            bus.publish(ActivityKind::System, None, json!({ "burst": i }));
            if i % 100 == 0 {
                tokio::task::yield_now().await;
            }
        }
        bus.publish(ActivityKind::System, None, json!({ "marker": "end" }));
    });
    // Connect while the burst is running.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut client = connect(&t, &format!("&since={start}")).await.unwrap();
    let events = read_until(&mut client, |e| is_marker(e, "end")).await;
    burst.await.unwrap();
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs[0], start + 1, "replay starts right after since");
    for pair in seqs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "gap or duplicate between {} and {}", pair[0], pair[1]);
    }
    assert!(events.iter().any(|e| e["data"]["burst"] == 2_999));
    assert_eq!(events[0]["v"], 1);
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_all_receive_the_same_sequence() {
    let t = TestHost::start(&[], |_| {}).await;
    t.host.activity().publish(ActivityKind::System, None, json!({ "marker": "before" }));
    let since = t.wait_for(0, "the first marker", |e| is_marker(&serde_json::to_value(e).unwrap(), "before")).await.seq;
    let mut clients = Vec::new();
    for _ in 0..200 {
        clients.push(connect(&t, &format!("&types=system&since={since}")).await.unwrap());
    }
    wait_clients(&t, 200).await;
    for i in 0..100 {
        t.host.activity().publish(ActivityKind::System, None, json!({ "n": i }));
    }
    t.host.activity().publish(ActivityKind::System, None, json!({ "marker": "done" }));
    let readers: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                read_until(&mut client, |e| is_marker(e, "done"))
                    .await
                    .iter()
                    .map(|e| e["seq"].as_u64().unwrap())
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut sequences = Vec::new();
    for reader in readers {
        sequences.push(reader.await.unwrap());
    }
    assert!(sequences[0].len() >= 101);
    assert_eq!(sequences[0][0], since + 1);
    assert!(sequences.iter().all(|s| *s == sequences[0]), "every client saw the same sequence");
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stops_reading_is_dropped_while_others_keep_receiving() {
    let t = TestHost::start(&[], |c| c.http.ws_send_timeout_ms = 300).await;
    let _stalled = connect(&t, "").await.unwrap(); // never read
    let mut reader = connect(&t, "").await.unwrap();
    wait_clients(&t, 2).await;
    let payload = "x".repeat(4_096);
    let bus = t.host.activity().clone();
    let publisher = tokio::spawn(async move {
        for i in 0..6_000 {
            bus.publish(ActivityKind::Log, None, json!({ "i": i, "pad": payload }));
            if i % 200 == 0 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        bus.publish(ActivityKind::System, None, json!({ "marker": "end" }));
    });
    let events = read_until(&mut reader, |e| is_marker(e, "end")).await;
    publisher.await.unwrap();
    let logs = events.iter().filter(|e| e["type"] == "log").count();
    assert_eq!(logs, 6_000, "the reading client got every event");
    wait_clients(&t, 1).await;
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_silent_client_is_cleaned_up_after_the_ping_timeout() {
    let t = TestHost::start(&[], |c| {
        c.http.ws_ping_interval_ms = 50;
        c.http.ws_idle_timeout_ms = 300;
    })
    .await;
    // A client that never reads never answers pings.
    let silent = connect(&t, "").await.unwrap();
    wait_clients(&t, 1).await;
    wait_clients(&t, 0).await;
    drop(silent);
    // A client that keeps reading answers pings and stays.
    let mut alive = connect(&t, "").await.unwrap();
    let keep = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(1_000);
        while tokio::time::timeout_at(deadline, alive.next()).await.is_ok() {}
        alive
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(ws_clients(&t).await, 1, "a client that answers pings is kept");
    let mut alive = keep.await.unwrap();
    alive.close(None).await.unwrap();
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_sending_an_oversized_message_is_closed_and_others_keep_receiving() {
    let t = TestHost::start(&[], |_| {}).await;
    let mut rude = connect(&t, "").await.unwrap();
    let mut polite = connect(&t, "").await.unwrap();
    wait_clients(&t, 2).await;
    rude.send(Message::Text("x".repeat(70 * 1024).into())).await.unwrap();
    assert!(
        closed_within(&mut rude, Duration::from_secs(10)).await,
        "the connection of a client sending more than 64 KiB is closed"
    );
    // A frame that only announces 10 MiB is refused at its header, not
    // waited for (and no room is reserved for it).
    let mut boaster = connect(&t, "").await.unwrap();
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = boaster.get_mut() else { panic!("plain TCP") };
    let header = [&[0x81u8, 0x80 | 127][..], &(10u64 << 20).to_be_bytes(), &[1, 2, 3, 4]].concat();
    tokio::io::AsyncWriteExt::write_all(tcp, &header).await.unwrap();
    assert!(
        closed_within(&mut boaster, Duration::from_secs(5)).await,
        "a frame announcing more than 64 KiB closes the connection at once"
    );
    wait_clients(&t, 1).await;
    t.host.activity().publish(ActivityKind::System, None, json!({ "marker": "after" }));
    let events = read_until(&mut polite, |e| is_marker(e, "after")).await;
    assert!(is_marker(events.last().unwrap(), "after"));
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_pings_are_answered_between_streamed_frames_without_corrupting_any() {
    // Events go out as ready frames written straight to the socket, pongs
    // through tungstenite, both while the host's socket is mostly full: every
    // ping gets its pong, in order, and every event frame arrives whole.
    let t = TestHost::start(&[], |_| {}).await;
    // A small receive window keeps the host's socket full most of the time.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4 * 1024).unwrap();
    let tcp = socket.connect(t.host.http_addr()).await.unwrap();
    let url = format!("ws://{}/api/v1/ws?types=log,system&token={}", t.host.http_addr(), t.host.api_token().expose());
    let (client, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    wait_clients(&t, 1).await;
    let (mut sink, mut stream) = client.split();
    let pinger = tokio::spawn(async move {
        for i in 0..300 {
            sink.send(Message::Ping(format!("ping {i}").into_bytes().into())).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        sink
    });
    let bus = t.host.activity().clone();
    let publisher = tokio::spawn(async move {
        let pad = "x".repeat(2_000);
        for i in 0..5_000 {
            bus.publish(ActivityKind::Log, None, json!({ "i": i, "pad": pad }));
            if i % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
        }
        bus.publish(ActivityKind::System, None, json!({ "marker": "end" }));
    });
    let (mut logs, mut pongs) = (Vec::new(), Vec::new());
    loop {
        let message = tokio::time::timeout(Duration::from_secs(30), stream.next()).await.expect("a message in time");
        match message {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text).expect("every frame is a whole envelope");
                if is_marker(&event, "end") {
                    break;
                }
                let Some(i) = event["data"]["i"].as_u64() else { continue }; // the host's own events
                logs.push(i);
                if logs.len() % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(2)).await; // let the socket fill
                }
            }
            Some(Ok(Message::Pong(payload))) => pongs.push(String::from_utf8(payload.to_vec()).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    publisher.await.unwrap();
    let mut sink = pinger.await.unwrap();
    assert_eq!(logs, (0..5_000).collect::<Vec<_>>(), "every event once, in order, intact");
    // Pongs still owed after the marker arrive next.
    while pongs.len() < 300 {
        match tokio::time::timeout(Duration::from_secs(10), stream.next()).await.expect("the remaining pongs") {
            Some(Ok(Message::Pong(payload))) => pongs.push(String::from_utf8(payload.to_vec()).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("stream ended before every pong: {other:?}"),
        }
    }
    assert_eq!(pongs, (0..300).map(|i| format!("ping {i}")).collect::<Vec<_>>(), "one pong per ping, in order");
    sink.send(Message::Close(None)).await.unwrap();
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_client_limit_and_the_type_filter_hold() {
    let t = TestHost::start(&[], |c| c.http.ws_max_clients = 2).await;
    let mut fills_only = connect(&t, "&types=fill,system").await.unwrap();
    let _second = connect(&t, "").await.unwrap();
    match connect(&t, "").await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 503),
        other => panic!("a third client must be refused, got {:?}", other.map(|_| ())),
    }
    t.host.activity().publish(ActivityKind::Log, None, json!({ "hidden": true }));
    t.host.activity().publish(ActivityKind::System, None, json!({ "marker": "end" }));
    let events = read_until(&mut fills_only, |e| is_marker(e, "end")).await;
    assert!(events.iter().all(|e| e["type"] == "fill" || e["type"] == "system"), "{events:?}");
    fills_only.send(Message::Close(None)).await.unwrap();
    assert_eq!(t.stop().await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn shutdown_closes_clients_with_a_reason() {
    let t = TestHost::start(&[], |_| {}).await;
    let mut client = connect(&t, "").await.unwrap();
    wait_clients(&t, 1).await;
    t.host.shutdown(tradehost::control::ShutdownReason::Api);
    let reason = loop {
        match tokio::time::timeout(Duration::from_secs(20), client.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(frame)))) => break frame.reason.to_string(),
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert!(reason.contains("shutting down"), "{reason}");
    assert_eq!(tokio::time::timeout(Duration::from_secs(20), t.host.wait()).await.unwrap(), 0);
}
