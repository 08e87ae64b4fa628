//! Paper exchange: fill prices, fees, partial fills, netting, PnL and margin
//! rejection, all in exact decimals computed by hand.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use tradehost::config::{PaperConfig, ProductConfig};
use tradehost::exchange::{ExchangeEvent, PaperExchange};
use tradehost::model::{
    Fill, Liquidity, Order, OrderKind, OrderRequest, OrderStatus, Side, StopKind, StopTrigger, Tick, TimeInForce,
    TriggerOn,
};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn exchange() -> PaperExchange {
    PaperExchange::new(&PaperConfig {
        currency: "USD".into(),
        balance: d("10000"),
        leverage: d("2"),
        taker_fee_bps: d("5"),
        maker_fee_bps: d("2"),
        slippage_bps: d("1"),
        products: BTreeMap::from([("BTCUSD".into(), ProductConfig { tick_size: d("0.5"), lot_size: d("0.001") })]),
    })
}

fn tick(time: i64, bid: &str, ask: &str, last: &str, volume: &str) -> Tick {
    Tick { symbol: "BTCUSD".into(), time, bid: d(bid), ask: d(ask), last: d(last), volume: d(volume) }
}

fn request(id: &str, side: Side, kind: OrderKind, size: &str, price: Option<&str>) -> OrderRequest {
    OrderRequest {
        client_id: id.into(),
        strategy: "t".into(),
        symbol: "BTCUSD".into(),
        side,
        kind,
        size: d(size),
        price: price.map(d),
        time_in_force: TimeInForce::Gtc,
        post_only: false,
        reduce_only: false,
        stop: None,
        oco: None,
        parent: None,
    }
}

fn fills(events: &[ExchangeEvent]) -> Vec<Fill> {
    events.iter().filter_map(|e| if let ExchangeEvent::Fill(f) = e { Some(f.clone()) } else { None }).collect()
}

fn last_order(events: &[ExchangeEvent]) -> Order {
    events.iter().rev().find_map(|e| if let ExchangeEvent::Order(o) = e { Some(o.clone()) } else { None }).unwrap()
}

#[test]
fn market_order_pays_slippage_rounded_to_tick_and_taker_fee() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    let events = ex.submit(request("a", Side::Buy, OrderKind::Market, "2", None));
    let fill = &fills(&events)[0];
    // 101 × (1 + 0.0001) = 101.0101, rounded up to the 0.5 tick.
    assert_eq!(fill.price, d("101.5"));
    assert_eq!(fill.fee, d("0.1015"));
    assert_eq!(fill.liquidity, Liquidity::Taker);
    assert_eq!(last_order(&events).status, OrderStatus::Filled);
    assert_eq!(ex.position("BTCUSD").size, d("2"));
    assert_eq!(ex.account().balance, d("9999.8985"));
}

#[test]
fn resting_limit_fills_partially_against_traded_size_then_completes() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    ex.submit(request("a", Side::Buy, OrderKind::Market, "2", None));
    let events = ex.submit(request("b", Side::Sell, OrderKind::Limit, "1", Some("105")));
    assert_eq!(last_order(&events).status, OrderStatus::Open);

    let events = ex.on_tick(&tick(2, "104.5", "105.5", "105", "0.4"));
    let fill = &fills(&events)[0];
    assert_eq!((fill.size, fill.price, fill.fee, fill.liquidity), (d("0.4"), d("105"), d("0.0084"), Liquidity::Maker));
    assert_eq!(last_order(&events).status, OrderStatus::PartiallyFilled);
    // realised (105 − 101.5) × 0.4 = 1.4
    assert_eq!(ex.account().balance, d("9999.8985") + d("1.4") - d("0.0084"));

    let events = ex.on_tick(&tick(3, "104.5", "105.5", "105.5", "1"));
    let fill = &fills(&events)[0];
    assert_eq!((fill.size, fill.fee), (d("0.6"), d("0.0126")));
    let order = last_order(&events);
    assert_eq!((order.status, order.filled, order.avg_fill_price), (OrderStatus::Filled, d("1"), Some(d("105"))));
    assert_eq!(ex.account().balance, d("10003.3775"));
    let position = ex.position("BTCUSD");
    assert_eq!((position.size, position.entry_price, position.realized_pnl), (d("1"), d("101.5"), d("3.5")));
    // unrealised at mid 105: (105 − 101.5) × 1
    assert_eq!(ex.account().equity, d("10003.3775") + d("3.5"));
    assert_eq!(ex.open_orders().count(), 0);
}

#[test]
fn netting_flips_a_long_into_a_short_at_the_fill_price() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "100.5", "100", "0"));
    ex.submit(request("a", Side::Buy, OrderKind::Market, "1", None)); // 100.5 × 1.0001 = 100.51005, rounded up to 101
    let entry = ex.position("BTCUSD").entry_price;
    assert_eq!(entry, d("101"));
    ex.on_tick(&tick(2, "110", "110.5", "110", "0"));
    let events = ex.submit(request("b", Side::Sell, OrderKind::Market, "3", None));
    // 110 × 0.9999 = 109.989, rounded down to 109.5
    assert_eq!(fills(&events)[0].price, d("109.5"));
    let position = ex.position("BTCUSD");
    assert_eq!((position.size, position.entry_price, position.realized_pnl), (d("-2"), d("109.5"), d("8.5")));
}

#[test]
fn margin_check_rejects_orders_beyond_balance_times_leverage() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    let events = ex.submit(request("big", Side::Buy, OrderKind::Market, "250", None));
    let order = last_order(&events);
    assert_eq!(order.status, OrderStatus::Rejected);
    let reason = order.reason.unwrap();
    assert!(reason.contains("insufficient margin") && reason.contains("limit is 20000.00 USD"), "{reason}");
    assert!(fills(&events).is_empty());
    // 190 × 100.5 = 19095 fits under 20000
    assert_eq!(
        last_order(&ex.submit(request("ok", Side::Buy, OrderKind::Market, "190", None))).status,
        OrderStatus::Filled
    );
    // reducing is always allowed
    assert_eq!(
        last_order(&ex.submit(request("r", Side::Sell, OrderKind::Market, "10", None))).status,
        OrderStatus::Filled
    );
}

#[test]
fn a_far_off_resting_order_is_valued_at_the_mark_and_blocks_nothing() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    // A new order is valued at its limit price or the mark, whichever is
    // higher: a post-only sell of 100 at 150 is 15,000, under 20,000.
    let mut far = request("far", Side::Sell, OrderKind::Limit, "100", Some("150"));
    far.post_only = true;
    let order = last_order(&ex.submit(far));
    assert_eq!(order.status, OrderStatus::Open, "{:?}", order.reason);
    // Resting, it counts at the mark (10,050), leaving room for 90 at 100.5
    // (at its limit price it would leave only 5,000).
    let order = last_order(&ex.submit(request("ok", Side::Buy, OrderKind::Market, "90", None)));
    assert_eq!(order.status, OrderStatus::Filled, "{:?}", order.reason);
    // A sell at an absurd price is refused at once, so it can never rest and block.
    let mut absurd = request("absurd", Side::Sell, OrderKind::Limit, "1", Some("1000000000000"));
    absurd.post_only = true;
    let order = last_order(&ex.submit(absurd));
    assert!(order.reason.as_deref().is_some_and(|r| r.contains("insufficient margin")), "{order:?}");
}

#[test]
fn post_only_ioc_and_reduce_only_rules() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    let mut post = request("p", Side::Buy, OrderKind::Limit, "1", Some("102"));
    post.post_only = true;
    let order = last_order(&ex.submit(post));
    assert_eq!(order.status, OrderStatus::Rejected);
    assert!(order.reason.unwrap().contains("post-only"));

    let mut ioc = request("i", Side::Buy, OrderKind::Limit, "1", Some("99"));
    ioc.time_in_force = TimeInForce::Ioc;
    assert_eq!(last_order(&ex.submit(ioc)).status, OrderStatus::Cancelled);

    let mut reduce = request("r", Side::Sell, OrderKind::Market, "1", None);
    reduce.reduce_only = true;
    let order = last_order(&ex.submit(reduce.clone()));
    assert_eq!(order.status, OrderStatus::Rejected);
    assert!(order.reason.unwrap().contains("reduce-only"));

    ex.submit(request("a", Side::Buy, OrderKind::Market, "0.5", None));
    reduce.client_id = "r2".into();
    reduce.size = d("3");
    let events = ex.submit(reduce);
    assert_eq!(fills(&events)[0].size, d("0.5"), "reduce-only is clipped to the position");
    assert!(ex.position("BTCUSD").size.is_zero());
}

#[test]
fn sizes_and_prices_are_rounded_to_lot_and_tick() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    let order = last_order(&ex.submit(request("a", Side::Buy, OrderKind::Limit, "0.0019", Some("90.3"))));
    assert_eq!((order.request.size, order.request.price), (d("0.001"), Some(d("90.5"))));
    let order = last_order(&ex.submit(request("b", Side::Buy, OrderKind::Market, "0.0004", None)));
    assert_eq!(order.status, OrderStatus::Rejected);
    assert!(ex.cancel("a").is_ok());
    assert!(ex.cancel("a").is_err(), "cancelling twice is an error");
}

fn stop(id: &str, side: Side, size: &str, kind: StopKind, trigger: &str, limit: Option<&str>) -> OrderRequest {
    let order_kind = if limit.is_some() { OrderKind::Limit } else { OrderKind::Market };
    let mut request = request(id, side, order_kind, size, limit);
    request.stop =
        Some(Box::new(StopTrigger { kind, price: d(trigger), trail: None, trail_pct: None, on: TriggerOn::Last }));
    request
}

/// A paper account long 1 BTCUSD bought at 101 (100.5 × 1.0001 rounded up).
fn long_one() -> PaperExchange {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    ex.submit(request("entry", Side::Buy, OrderKind::Market, "1", None));
    ex
}

#[test]
fn a_stop_loss_waits_for_its_trigger_then_fills_as_a_taker() {
    let mut ex = long_one();
    let mut sl = stop("sl", Side::Sell, "1", StopKind::StopLoss, "95", None);
    sl.reduce_only = true;
    let placed = last_order(&ex.submit(sl));
    assert_eq!(placed.status, OrderStatus::Untriggered, "{:?}", placed.reason);
    assert!(fills(&ex.on_tick(&tick(2, "95.5", "96", "95.5", "0"))).is_empty(), "95.5 is above the trigger");
    let events = ex.on_tick(&tick(3, "94.5", "95", "95", "0"));
    let fill = &fills(&events)[0];
    // Fired by last = 95; sells at the bid 94.5 less 1 bp = 94.49055, rounded down to the tick: 94.
    assert_eq!((fill.price, fill.size, fill.liquidity), (d("94"), d("1"), Liquidity::Taker));
    assert_eq!(fill.fee, d("0.047"));
    assert_eq!(last_order(&events).status, OrderStatus::Filled);
    assert!(ex.position("BTCUSD").size.is_zero());
    assert!(ex.lookup("sl").is_some_and(|o| o.status == OrderStatus::Filled));
}

#[test]
fn a_stop_limit_takes_up_to_its_limit_or_rests_as_a_limit() {
    let mut ex = long_one();
    ex.submit(stop("a", Side::Sell, "0.4", StopKind::StopLoss, "95", Some("94")));
    ex.submit(stop("b", Side::Sell, "0.4", StopKind::StopLoss, "95", Some("94.5")));
    // Fires at last 95 with the bid at 94: `a` (limit 94) takes at 94; `b` (94.5) rests.
    let events = ex.on_tick(&tick(2, "94", "94.5", "95", "0"));
    let filled: Vec<_> = fills(&events).iter().map(|f| (f.order_id.clone(), f.price)).collect();
    assert_eq!(filled, vec![("a".to_string(), d("94"))]);
    let b = ex.lookup("b").unwrap();
    assert_eq!((b.status, b.filled), (OrderStatus::Triggered, Decimal::ZERO));
    assert_eq!(ex.open_orders().map(|o| o.request.client_id.as_str()).collect::<Vec<_>>(), ["b"]);
    // Resting as a limit, it fills as a maker when the bid comes back to 94.5.
    let fill = &fills(&ex.on_tick(&tick(3, "94.5", "95", "94.5", "0")))[0];
    assert_eq!((fill.order_id.as_str(), fill.price, fill.liquidity), ("b", d("94.5"), Liquidity::Maker));
}

#[test]
fn a_take_profit_fires_when_the_price_rises_to_it() {
    let mut ex = long_one();
    ex.submit(stop("tp", Side::Sell, "1", StopKind::TakeProfit, "110", None));
    assert!(fills(&ex.on_tick(&tick(2, "109", "109.5", "109.5", "0"))).is_empty());
    let fill = &fills(&ex.on_tick(&tick(3, "110", "110.5", "110", "0")))[0];
    // 110 × 0.9999 = 109.989, rounded down to 109.5.
    assert_eq!(fill.price, d("109.5"));
    assert!(ex.position("BTCUSD").size.is_zero());
}

#[test]
fn trailing_stops_follow_the_best_price_by_an_amount_or_a_percentage() {
    let mut ex = long_one();
    let mut by_amount = stop("amount", Side::Sell, "0.5", StopKind::StopLoss, "0", None);
    by_amount.stop.as_mut().unwrap().trail = Some(d("5"));
    let mut by_pct = stop("pct", Side::Sell, "0.5", StopKind::StopLoss, "0", None);
    by_pct.stop.as_mut().unwrap().trail_pct = Some(d("10"));
    let trigger = |ex: &PaperExchange, id: &str| ex.lookup(id).unwrap().request.stop.unwrap().price;
    ex.submit(by_amount);
    ex.submit(by_pct);
    // Started from the last price 100.5: 95.5 and 90.45 (rounded to the tick: 90.5).
    assert_eq!((trigger(&ex, "amount"), trigger(&ex, "pct")), (d("95.5"), d("90.5")));
    let moved = ex.on_tick(&tick(2, "119.5", "120", "120", "0"));
    assert_eq!((trigger(&ex, "amount"), trigger(&ex, "pct")), (d("115"), d("108")));
    // Each move is reported as an order update, so it is stored and shown.
    let reported: Vec<_> = moved
        .iter()
        .filter_map(|e| {
            if let ExchangeEvent::Order(o) = e { Some((o.status, o.request.stop.as_ref()?.price)) } else { None }
        })
        .collect();
    assert_eq!(reported, [(OrderStatus::Untriggered, d("115")), (OrderStatus::Untriggered, d("108"))]);
    // A fall does not move them back (and reports nothing).
    assert!(ex.on_tick(&tick(3, "115.5", "116", "115.5", "0")).is_empty());
    assert_eq!((trigger(&ex, "amount"), trigger(&ex, "pct")), (d("115"), d("108")));
    let events = ex.on_tick(&tick(4, "114.5", "115", "115", "0"));
    assert_eq!(fills(&events).iter().map(|f| f.order_id.as_str()).collect::<Vec<_>>(), ["amount"]);
    let events = ex.on_tick(&tick(5, "107.5", "108", "108", "0"));
    assert_eq!(fills(&events).iter().map(|f| f.order_id.as_str()).collect::<Vec<_>>(), ["pct"]);
    assert!(ex.position("BTCUSD").size.is_zero());
}

#[test]
fn stops_that_would_fire_at_once_or_have_nothing_to_reduce_are_refused_or_cancelled() {
    let mut ex = long_one();
    let refused = last_order(&ex.submit(stop("late", Side::Sell, "1", StopKind::StopLoss, "101", None)));
    assert_eq!(refused.status, OrderStatus::Rejected);
    assert!(refused.reason.as_deref().unwrap().contains("would trigger at once"), "{refused:?}");
    let mut sl = stop("sl", Side::Sell, "1", StopKind::StopLoss, "95", None);
    sl.reduce_only = true;
    ex.submit(sl);
    // The position is closed by hand before the stop fires: the stop has nothing to reduce.
    ex.submit(request("exit", Side::Sell, OrderKind::Market, "1", None));
    let events = ex.on_tick(&tick(2, "94", "94.5", "94.5", "0"));
    let sl = last_order(&events);
    assert_eq!(sl.status, OrderStatus::Cancelled);
    assert!(sl.reason.unwrap().contains("no position to reduce"));
    assert!(fills(&events).is_empty());
}

#[test]
fn waiting_stops_and_their_trailed_triggers_survive_save_and_restore() {
    let mut ex = long_one();
    let mut trailing = stop("trail", Side::Sell, "1", StopKind::StopLoss, "0", None);
    trailing.stop.as_mut().unwrap().trail = Some(d("5"));
    let placed = last_order(&ex.submit(trailing));
    ex.on_tick(&tick(2, "109.5", "110", "110", "0"));
    let saved = ex.save();
    let mut stored = BTreeMap::new();
    stored.insert("trail".to_string(), placed);
    let mut restored = exchange();
    restored.restore(&saved, &stored).unwrap();
    assert_eq!(restored.lookup("trail").unwrap().request.stop.unwrap().price, d("105"));
    restored.on_tick(&tick(3, "104.5", "105", "105", "0"));
    assert!(restored.position("BTCUSD").size.is_zero(), "the restored stop fired");
    assert!(restored.cancel("trail").is_err(), "it is no longer waiting");
}

fn leg(id: &str, kind: StopKind, trigger: &str, group: &str, parent: Option<&str>) -> OrderRequest {
    let mut request = stop(id, Side::Sell, "1", kind, trigger, None);
    request.reduce_only = true;
    request.oco = Some(group.into());
    request.parent = parent.map(str::to_string);
    request
}

#[test]
fn a_brackets_other_leg_is_cancelled_when_one_fills() {
    let mut ex = long_one();
    ex.submit(leg("sl", StopKind::StopLoss, "95", "sl", None));
    ex.submit(leg("tp", StopKind::TakeProfit, "110", "sl", None));
    let events = ex.on_tick(&tick(2, "110", "110.5", "110", "0"));
    assert_eq!(fills(&events).iter().map(|f| f.order_id.as_str()).collect::<Vec<_>>(), ["tp"]);
    let sl = ex.lookup("sl").unwrap();
    assert_eq!(sl.status, OrderStatus::Cancelled);
    assert_eq!(sl.reason.as_deref(), Some("one-cancels-other: tp filled"));
    assert!(events.iter().any(
        |e| matches!(e, ExchangeEvent::Order(o) if o.request.client_id == "sl" && o.status == OrderStatus::Cancelled)
    ));
    assert!(ex.position("BTCUSD").size.is_zero());
    assert!(fills(&ex.on_tick(&tick(3, "90", "90.5", "90", "0"))).is_empty(), "the stop is gone");
}

#[test]
fn a_bracket_on_an_entry_waits_for_its_fill_and_is_sized_to_it() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    let entry = last_order(&ex.submit(request("entry", Side::Buy, OrderKind::Limit, "1", Some("99"))));
    assert_eq!(entry.status, OrderStatus::Open);
    ex.submit(leg("sl", StopKind::StopLoss, "95", "sl", Some("entry")));
    let tp = last_order(&ex.submit(leg("tp", StopKind::TakeProfit, "105", "sl", Some("entry"))));
    assert_eq!(tp.status, OrderStatus::Untriggered, "{tp:?}");
    // The price reaches the take-profit before the entry fills: nothing happens.
    assert!(fills(&ex.on_tick(&tick(2, "105", "105.5", "105", "0"))).is_empty());
    // The entry fills (0.4 traded at 99): the legs start, sized to it.
    let events = ex.on_tick(&tick(3, "98.5", "99", "99", "0.4"));
    assert_eq!(fills(&events)[0].order_id, "entry");
    let entry = ex.lookup("entry").unwrap();
    assert_eq!(entry.status, OrderStatus::PartiallyFilled);
    assert_eq!(ex.lookup("tp").unwrap().request.size, d("1"), "still waiting while the entry works");
    ex.cancel("entry").unwrap();
    assert_eq!(ex.lookup("tp").unwrap().request.size, d("0.4"), "sized to what the entry filled");
    let events = ex.on_tick(&tick(4, "105", "105.5", "105", "0"));
    assert_eq!(fills(&events).iter().map(|f| (f.order_id.as_str(), f.size)).collect::<Vec<_>>(), [("tp", d("0.4"))]);
    assert_eq!(ex.lookup("sl").unwrap().status, OrderStatus::Cancelled);
    assert!(ex.position("BTCUSD").size.is_zero());
}

#[test]
fn a_brackets_legs_are_cancelled_when_its_entry_ends_without_a_fill() {
    let mut ex = exchange();
    ex.on_tick(&tick(1, "100", "101", "100.5", "0"));
    ex.submit(request("entry", Side::Buy, OrderKind::Limit, "1", Some("90")));
    ex.submit(leg("sl", StopKind::StopLoss, "85", "sl", Some("entry")));
    let events = ex.cancel("entry").unwrap();
    let sl = events
        .iter()
        .find_map(|e| if let ExchangeEvent::Order(o) = e { (o.request.client_id == "sl").then_some(o) } else { None });
    let sl = sl.expect("the leg's cancellation is reported with the entry's");
    assert_eq!(
        (sl.status, sl.reason.as_deref()),
        (OrderStatus::Cancelled, Some("its entry entry ended without a fill"))
    );
    let late = last_order(&ex.submit(leg("late", StopKind::StopLoss, "85", "late", Some("entry"))));
    assert_eq!(late.status, OrderStatus::Rejected, "a leg for an entry that is over");
}
