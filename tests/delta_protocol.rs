//! Delta Exchange protocol facts, offline: every signing vector of
//! shared/delta-exchange.md §6 byte for byte, every REST and WebSocket sample
//! of the reference decoded (type drift included), both error shapes
//! classified, the order-book checksums of §5.8, and the order mapping.

use std::path::Path;

use rust_decimal::Decimal;
use serde_json::Value;
use tradehost::delta::book::{BookError, OrderBook};
use tradehost::delta::connector::{Products, new_order};
use tradehost::delta::products::bracket_of;
use tradehost::delta::rest::{RestError, classify_error, decode};
use tradehost::delta::sign::{Query, signature, ws_signature};
use tradehost::delta::wire::{
    Balance, BookMessage, DeltaProduct, L2Book, RestCandle, RestFill, RestOrder, RestPosition, Settings, Ticker,
    WsMessage,
};
use tradehost::model::{OrderKind, OrderRequest, Side, StopKind, StopTrigger, TimeInForce, TriggerOn};

const SECRET: &str = "test-secret-0001-abcdef";
const TS: &str = "1700000000";

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn fixture(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/delta").join(name)).unwrap()
}

#[test]
fn every_signing_vector_is_reproduced_byte_for_byte() {
    // V1: the query is built like PYCLIENT (quote_plus, insertion order).
    let v1 = Query::new().push("product_ids", "27,139").push("states", "open,pending");
    assert_eq!(v1.as_str(), "?product_ids=27%2C139&states=open%2Cpending");
    assert_eq!(
        signature(SECRET, "GET", TS, "/v2/orders", v1.as_str(), ""),
        "488990af3c64f4f630447437933535db01cb01792250c5cc83f0261927917cca"
    );
    let v2_body = r#"{"product_id":27,"size":10,"side":"buy","order_type":"limit_order","post_only":"false","limit_price":"59000.5","time_in_force":"gtc","client_order_id":"my-order-001"}"#;
    assert_eq!(v2_body.len(), 166);
    assert_eq!(
        signature(SECRET, "POST", TS, "/v2/orders", "", v2_body),
        "30c10a682e1a73ec65856e35937d37673f550b74caf8487d87ddbd0fc633e100"
    );
    assert_eq!(
        signature(SECRET, "DELETE", TS, "/v2/orders", "", r#"{"id":123456789,"product_id":27}"#),
        "dc76c2c4e2286573807db4049927a33dfe4ce1057f2817edc2cc2f829afddb5e"
    );
    assert_eq!(
        signature(SECRET, "GET", TS, "/v2/wallet/balances", Query::new().as_str(), ""),
        "8d72f7a107ccacfd82794c28d92814ac876283538bc451197a47da4d0b06d61d"
    );
    assert_eq!(ws_signature(SECRET, TS), "527f1d5a1b50f67748baeb42107e19ca9301e61cae958c79dfcc98f94a60e6f0");
    // V6: PYCLIENT's lone `?` signs differently; our empty query never adds it.
    assert_eq!(
        signature(SECRET, "GET", TS, "/v2/orders", "?", ""),
        "bfb53c33f2a3e7bebbad12070076026b54a8f17467bfec86245c84208c7478f5"
    );
    assert_ne!(
        signature(SECRET, "GET", TS, "/v2/orders", Query::new().as_str(), ""),
        "bfb53c33f2a3e7bebbad12070076026b54a8f17467bfec86245c84208c7478f5"
    );
    let v7 = Query::new()
        .push("resolution", "1m")
        .push("symbol", "MARK:BTCUSD")
        .push("start", 1_700_000_000)
        .push("end", 1_700_003_600);
    assert_eq!(v7.as_str(), "?resolution=1m&symbol=MARK%3ABTCUSD&start=1700000000&end=1700003600");
    assert_eq!(
        signature(SECRET, "GET", TS, "/v2/history/candles", v7.as_str(), ""),
        "9126c391b4a5baf0dddf07be706bf6cdececae12f344c937a313078f39c335ae"
    );
    // The docs vector (v2 path), and its misprinted v1 value.
    let docs_secret = "7b6f39dcf660ec1c7c664f612c60410a2bd0c258416b498bf0311f94228f";
    let query = Query::new().push("product_id", 1).push("state", "open");
    assert_eq!(
        signature(docs_secret, "GET", "1542110948", "/v2/orders", query.as_str(), ""),
        "4e38dda3e6477092f360ba70399266d8145630b22bcc34c0ec7f804d5746877a"
    );
    assert_eq!(
        signature(docs_secret, "GET", "1542110948", "/orders", query.as_str(), ""),
        "ad767fead0bdbe91ba1e4feb142079245fecd66aa5e47a70b40ba1a4c9b4e3db"
    );
}

#[test]
fn every_rest_sample_decodes() {
    let (products, meta): (Vec<DeltaProduct>, _) =
        decode("GET /v2/products", 200, fixture("rest_products.json").as_bytes()).unwrap();
    assert_eq!(meta.after, None);
    let p = &products[0];
    assert_eq!((p.id, p.symbol.as_str(), p.contract_value, p.tick_size), (84, "BTCUSD", d("0.001"), d("0.1")));
    assert_eq!((p.maker_commission_rate, p.taker_commission_rate), (Some(d("0.0002")), Some(d("0.0005"))));
    assert_eq!(p.settling_asset.as_ref().unwrap().symbol, "USD");

    let (ticker, _): (Ticker, _) = decode("t", 200, fixture("rest_ticker.json").as_bytes()).unwrap();
    assert_eq!(ticker.timestamp, Some(1_689_136_597_460_456));
    assert_eq!(ticker.quotes.unwrap().best_bid, Some(d("30599.5")));
    assert_eq!(ticker.close, Some(30600.5));

    let (book, _): (L2Book, _) = decode("b", 200, fixture("rest_l2book.json").as_bytes()).unwrap();
    assert_eq!((book.buy[0].price, book.buy[0].size), (d("9187.5"), d("205640")));
    assert_eq!(book.sell[0].price, d("9188.0"));

    let (candles, _): (Vec<RestCandle>, _) = decode("c", 200, fixture("rest_candles.json").as_bytes()).unwrap();
    assert_eq!((candles[1].time, candles[1].low), (1_605_393_120, Some(15987.5)));

    let (order, _): (RestOrder, _) = decode("o", 200, fixture("rest_order.json").as_bytes()).unwrap();
    assert_eq!((order.id.as_str(), order.state.as_str(), order.client_order_id), ("152870626", "open", None));
    assert_eq!(order.created_at, Some(1_605_494_306_000_000));

    let (fills, _): (Vec<RestFill>, _) = decode("f", 200, fixture("rest_fills.json").as_bytes()).unwrap();
    assert_eq!(fills[0].id, "e7ff05c233a74245b72381f8dd91d1ce");
    assert_eq!((fills[0].order_id.as_str(), fills[0].commission), ("152999629", Some(d("0.008335"))));

    let (positions, _): (Vec<RestPosition>, _) = decode("p", 200, fixture("rest_positions.json").as_bytes()).unwrap();
    assert_eq!((positions[0].size, positions[0].entry_price), (Some(d("1")), Some(d("29926.8"))));
    let (none, _): (RestPosition, _) = decode("p", 200, fixture("rest_position_none.json").as_bytes()).unwrap();
    assert_eq!((none.size, none.entry_price), (Some(Decimal::ZERO), None));

    let (balances, _): (Vec<Balance>, _) = decode("w", 200, fixture("rest_balances.json").as_bytes()).unwrap();
    assert_eq!((balances[0].asset_symbol.as_str(), balances[0].balance), ("USD", d("1000.5")));

    let (settings, _): (Settings, _) = decode("s", 200, fixture("rest_settings.json").as_bytes()).unwrap();
    assert_eq!(settings.server_time, 1_700_000_000_123_456);
}

#[test]
fn type_drift_is_decoded_leniently() {
    let drift: Value = serde_json::from_str(&fixture("rest_type_drift.json")).unwrap();
    let order: RestOrder = serde_json::from_value(drift["order_created_at_us_string"].clone()).unwrap();
    assert_eq!(
        (order.created_at, order.limit_price, order.unfilled_size),
        (Some(1_725_865_012_000_000), Some(d("59000.5")), Some(d("4")))
    );
    let order: RestOrder = serde_json::from_value(drift["order_created_at_iso"].clone()).unwrap();
    assert_eq!((order.id.as_str(), order.size, order.created_at), ("2", d("3"), Some(1_605_494_306_000_000)));
    let fill: RestFill = serde_json::from_value(drift["fill_numeric_id"].clone()).unwrap();
    assert_eq!(
        (fill.id.as_str(), fill.order_id.as_str(), fill.size, fill.commission),
        ("123", "456", d("0.09200"), Some(d("-0.01")))
    );
    let position: RestPosition = serde_json::from_value(drift["position_fractional_iso"].clone()).unwrap();
    assert_eq!((position.size, position.entry_price), (Some(d("-5")), Some(d("29926.8"))));
    let ticker: Ticker = serde_json::from_value(drift["ticker_string_timestamp"].clone()).unwrap();
    assert_eq!(ticker.timestamp, Some(1_689_136_597_460_456));
    assert_eq!(ticker.quotes.unwrap().best_bid, Some(d("30599.5")));
}

#[test]
fn every_websocket_sample_decodes() {
    let text = fixture("ws_messages.jsonl");
    let messages: Vec<WsMessage> = text
        .lines()
        .enumerate()
        .map(|(i, line)| WsMessage::parse(line).unwrap_or_else(|e| panic!("line {}: {e}", i + 1)))
        .collect();
    assert_eq!(messages.len(), 48);
    let find = |pred: &dyn Fn(&WsMessage) -> bool| messages.iter().filter(|m| pred(m)).count();
    assert_eq!(
        find(&|m| matches!(m, WsMessage::Auth { success: true, .. })),
        2,
        "key-auth OK and the legacy success reply"
    );
    assert_eq!(find(&|m| matches!(m, WsMessage::Auth { success: false, .. })), 6);
    assert!(messages.contains(&WsMessage::Heartbeat) && messages.contains(&WsMessage::Pong));
    // Compact ticker: quotes from `q`.
    assert!(messages.iter().any(|m| matches!(m, WsMessage::Ticker { symbol, bid: Some(b), ask: Some(a), .. }
        if symbol == "BTCUSD" && *b == d("72100") && *a == d("72101"))));
    // Both book namings decode into the same shape.
    let books: Vec<&BookMessage> =
        messages.iter().filter_map(|m| if let WsMessage::Book(b) = m { Some(b) } else { None }).collect();
    assert_eq!(books.len(), 5);
    assert!(books.iter().all(|b| b.symbol == "BTCUSD"));
    assert_eq!(books[3].sequence_no, Some(6199));
    assert_eq!(books[3].asks, vec![("16919.0".to_string(), "1087".to_string())]);
    // Trades: legacy, snapshot and compact.
    let trades: Vec<_> =
        messages.iter().filter_map(|m| if let WsMessage::Trades(t) = m { Some(t) } else { None }).flatten().collect();
    assert_eq!(trades.len(), 3);
    assert_eq!(
        (trades[2].price, trades[2].size, trades[2].timestamp),
        (d("72141.5"), d("1.0"), Some(1_775_800_366_578_410))
    );
    let candles: Vec<_> =
        messages.iter().filter_map(|m| if let WsMessage::Candle(c) = m { Some(c) } else { None }).collect();
    assert_eq!(candles.len(), 3);
    assert_eq!(
        (candles[1].open, candles[1].candle_start_time),
        (None, Some(1_596_015_240_000_000)),
        "null OHLC, string time"
    );
    assert_eq!(candles[2].close, Some(71748.0));
    // Private channels.
    let orders: Vec<_> = messages
        .iter()
        .filter_map(|m| if let WsMessage::Orders { action, orders } = m { Some((action, orders)) } else { None })
        .collect();
    assert_eq!(orders[0].0, "snapshot");
    assert_eq!(orders[0].1[0].id, "1592130");
    assert_eq!(
        (orders[1].1[0].id.as_str(), orders[1].1[0].client_order_id.as_ref()),
        ("1234", None),
        "update uses order_id; empty client id"
    );
    let fills: Vec<_> =
        messages.iter().filter_map(|m| if let WsMessage::UserTrade(t) = m { Some(t) } else { None }).collect();
    assert_eq!(fills.len(), 2);
    assert_eq!(
        (fills[1].fill_id.as_str(), fills[1].order_id.as_str(), fills[1].client_order_id.as_deref()),
        ("1234-abcd-qwer-3456", "3283999", Some("GA123"))
    );
    assert_eq!(
        (fills[1].size, fills[1].price, fills[1].role.as_deref(), fills[1].seq_no),
        (d("190"), d("17289.2"), Some("taker"), Some(4))
    );
    assert!(
        messages.iter().any(|m| matches!(m, WsMessage::Margins(b) if b.balance == d("10") && b.asset_symbol == "BTC"))
    );
    let positions: Vec<_> =
        messages.iter().filter_map(|m| if let WsMessage::Positions(p) = m { Some(p) } else { None }).collect();
    assert_eq!((positions[0][0].size, positions[1][0].size), (Some(d("-1686")), Some(d("-100"))));
    assert!(messages.iter().any(|m| matches!(m, WsMessage::SystemStatus(s) if s.status == "live")));
}

#[test]
fn malformed_frames_are_errors_that_say_why() {
    let err = WsMessage::parse("{not json").unwrap_err().to_string();
    assert!(err.contains("not JSON"), "{err}");
    let err = WsMessage::parse(r#"{"no_type":1}"#).unwrap_err().to_string();
    assert!(err.contains("\"type\""), "{err}");
    let err = WsMessage::parse(r#"{"type":"v2/user_trades","sy":"BTCUSD","f":"1","o":2,"S":"buy","s":"x","p":"1"}"#)
        .unwrap_err()
        .to_string();
    assert!(err.contains("v2/user_trades") && err.contains("`s`"), "{err}");
}

#[test]
fn both_error_shapes_are_classified() {
    let cases: Vec<Value> = serde_json::from_str(&fixture("rest_errors.json")).unwrap();
    for case in cases {
        let status = case["status"].as_u64().unwrap() as u16;
        let body = serde_json::to_vec(&case["body"]).unwrap();
        let error = classify_error("POST /v2/orders", status, &body, Some(1234));
        let kind = match &error {
            RestError::Auth { .. } => "auth",
            RestError::Rejected { .. } => "rejected",
            RestError::Unavailable { .. } => "unavailable",
            RestError::RateLimited { reset_ms, .. } => {
                assert_eq!(*reset_ms, 1234);
                "rate_limited"
            }
            other => panic!("unexpected {other:?}"),
        };
        assert_eq!(kind, case["kind"], "{case}");
        assert_eq!(error.code(), case["code"].as_str(), "{case}");
        assert!(error.to_string().contains("POST /v2/orders"));
    }
    // A success envelope with success=false is an error too.
    let err = decode::<Value>("GET /v2/x", 200, br#"{"success":false,"error":{"code":"bad_schema"}}"#).unwrap_err();
    assert_eq!(err.code(), Some("bad_schema"));
    let err =
        decode::<Vec<DeltaProduct>>("GET /v2/products", 200, br#"{"success":true,"result":[{"id":"x"}]}"#).unwrap_err();
    assert!(matches!(err, RestError::Decode { .. }) && err.to_string().contains("[0].id"), "{err}");
}

fn book_message(line: &str) -> BookMessage {
    match WsMessage::parse(line).unwrap() {
        WsMessage::Book(b) => b,
        other => panic!("{other:?}"),
    }
}

#[test]
fn order_book_reproduces_the_reference_checksums() {
    let lines: Vec<String> = fixture("ws_messages.jsonl").lines().map(str::to_string).collect();
    let snapshot = book_message(lines.iter().find(|l| l.contains(r#""action":"snapshot","symbol":"BTCUSD""#)).unwrap());
    let update = book_message(lines.iter().find(|l| l.contains(r#""action":"update""#)).unwrap());
    let mut book = OrderBook::new("BTCUSD");
    book.apply(&snapshot).unwrap();
    assert_eq!(book.checksum_text(), "16919.0:1087,16919.5:1193,16920.0:510|16918.0:602,16917.5:1792,16917.0:2039");
    assert_eq!(book.checksum(), 2_178_756_498);
    book.apply(&update).unwrap();
    assert_eq!(book.checksum_text(), "16919.5:710,16920.0:510|16918.5:304,16918.0:602,16917.5:1792,16917.0:2039");
    assert_eq!(book.checksum(), 3_409_694_612);
    assert_eq!((book.best_bid(), book.best_ask()), (Some((d("16918.5"), d("304"))), Some((d("16919.5"), d("710")))));
    assert_eq!(crc32fast::hash(b"100.00:23,100.05:34|99.04:87,98.65:102,98.30:16"), 3_599_895_312);

    // A skipped sequence number and a wrong checksum both demand a fresh snapshot.
    let mut gap = update.clone();
    gap.sequence_no = Some(6202);
    let mut book = OrderBook::new("BTCUSD");
    book.apply(&snapshot).unwrap();
    assert!(matches!(book.apply(&gap), Err(BookError::Gap { expected: 6200, got: 6202, .. })));
    assert!(!book.is_live(), "a broken book is cleared until the next snapshot");
    let mut bad = update.clone();
    bad.cs = Some(1);
    book.apply(&snapshot).unwrap();
    assert!(matches!(book.apply(&bad), Err(BookError::Checksum { expected: 1, computed: 3_409_694_612, .. })));
    assert!(matches!(OrderBook::new("BTCUSD").apply(&update), Err(BookError::NoSnapshot { .. })));
    let error = book_message(lines.iter().find(|l| l.contains(r#""ob_updates","action":"error""#)).unwrap());
    assert!(matches!(OrderBook::new("BTCUSD").apply(&error), Err(BookError::Exchange { .. })));
}

fn request(size: &str, price: Option<&str>, side: Side) -> OrderRequest {
    OrderRequest {
        client_id: "sma_cros-1a2b".into(),
        strategy: "sma_cross".into(),
        symbol: "BTCUSD".into(),
        side,
        kind: if price.is_some() { OrderKind::Limit } else { OrderKind::Market },
        size: d(size),
        price: price.map(d),
        time_in_force: TimeInForce::Gtc,
        post_only: true,
        reduce_only: false,
        stop: None,
        oco: None,
        parent: None,
    }
}

#[test]
fn script_orders_map_to_whole_contracts_on_the_tick_grid() {
    let (products, _): (Vec<DeltaProduct>, _) = decode("p", 200, fixture("rest_products.json").as_bytes()).unwrap();
    let products = Products::new(products);
    let buy = new_order(&products, &request("0.025", Some("60000.17"), Side::Buy)).unwrap();
    assert_eq!((buy.product_id, buy.size, buy.limit_price.as_deref()), (84, 25, Some("60000.1")), "buys round down");
    let sell = new_order(&products, &request("0.001", Some("60000.11"), Side::Sell)).unwrap();
    assert_eq!(sell.limit_price.as_deref(), Some("60000.2"), "sells round up");
    let body: Value = serde_json::from_str(&buy.to_json()).unwrap();
    assert_eq!(body["order_type"], "limit_order");
    assert_eq!((body["post_only"].as_str(), body["reduce_only"].as_str()), (Some("true"), Some("false")));
    assert_eq!(body["client_order_id"], "sma_cros-1a2b");
    let market: Value =
        serde_json::from_str(&new_order(&products, &request("0.002", None, Side::Sell)).unwrap().to_json()).unwrap();
    assert_eq!((market["order_type"].as_str(), market.get("limit_price")), (Some("market_order"), None));
    let err = new_order(&products, &request("0.0015", None, Side::Buy)).unwrap_err();
    assert!(err.contains("whole number of contracts"), "{err}");
    let mut long_id = request("0.001", None, Side::Buy);
    long_id.client_id = "x".repeat(33);
    assert!(new_order(&products, &long_id).unwrap_err().contains("32"));
    let mut unknown = request("0.001", None, Side::Buy);
    unknown.symbol = "DOGEUSD".into();
    assert!(new_order(&products, &unknown).is_err());
}

/// A bracket leg closing a long position: a stop at `trigger` (or trailing by `trail`), a limit once fired.
fn leg(kind: StopKind, trigger: &str, trail: Option<&str>, limit: Option<&str>) -> OrderRequest {
    let mut leg = request("0.002", limit, Side::Sell);
    leg.client_id = format!("leg-{kind:?}");
    leg.post_only = false;
    leg.reduce_only = true;
    leg.oco = Some("leg-StopLoss".into());
    leg.stop = Some(Box::new(StopTrigger {
        kind,
        price: d(trigger),
        trail: trail.map(d),
        trail_pct: None,
        on: TriggerOn::Last,
    }));
    leg
}

#[test]
fn brackets_map_to_delta_position_brackets_and_entry_fields_as_documented() {
    let (products, _): (Vec<DeltaProduct>, _) = decode("p", 200, fixture("rest_products.json").as_bytes()).unwrap();
    let products = Products::new(products);
    let legs = [
        leg(StopKind::StopLoss, "56000.03", None, Some("55000.07")),
        leg(StopKind::TakeProfit, "65000", None, Some("64000")),
    ];
    // POST /v2/orders/bracket, field for field as §4.16 shows it (prices on the tick grid).
    let body: Value = serde_json::from_str(&bracket_of(&products, "BTCUSD", &legs).unwrap().to_json()).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"product_id": 84,
            "stop_loss_order": {"order_type": "limit_order", "stop_price": "56000", "limit_price": "55000.1"},
            "take_profit_order": {"order_type": "limit_order", "stop_price": "65000", "limit_price": "64000"},
            "bracket_stop_trigger_method": "last_traded_price"})
    );
    // The same bracket on an entry: its bracket_* fields (§4.9); a trailing stop-loss sends its trail negative.
    let trailing = [leg(StopKind::StopLoss, "0", Some("50"), None), leg(StopKind::TakeProfit, "65000", None, None)];
    let mut entry = new_order(&products, &request("0.002", None, Side::Buy)).unwrap();
    entry.bracket = Some(bracket_of(&products, "BTCUSD", &trailing).unwrap());
    let body: Value = serde_json::from_str(&entry.to_json()).unwrap();
    assert_eq!(body["bracket_trail_amount"], "-50");
    assert_eq!(body["bracket_take_profit_price"], "65000");
    assert_eq!(body["bracket_stop_trigger_method"], "last_traded_price");
    assert!(body.get("bracket_stop_loss_price").is_none() && body.get("bracket_take_profit_limit_price").is_none());
    // What Delta cannot hold is refused with the reason.
    let two_stops = [leg(StopKind::StopLoss, "56000", None, None), leg(StopKind::StopLoss, "55000", None, None)];
    assert!(bracket_of(&products, "BTCUSD", &two_stops).unwrap_err().contains("at most one stop-loss"));
    let mut pct = leg(StopKind::StopLoss, "0", None, None);
    pct.stop.as_mut().unwrap().trail_pct = Some(d("1"));
    assert!(bracket_of(&products, "BTCUSD", &[pct]).unwrap_err().contains("trail_pct"));
    let mut marked = leg(StopKind::TakeProfit, "65000", None, None);
    marked.stop.as_mut().unwrap().on = TriggerOn::Mark;
    let mixed = [leg(StopKind::StopLoss, "56000", None, None), marked];
    assert!(bracket_of(&products, "BTCUSD", &mixed).unwrap_err().contains("same price"));
    assert!(new_order(&products, &legs[0]).unwrap_err().contains("sent with its bracket"), "a leg is never sent alone");
}
