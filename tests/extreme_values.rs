//! No value panics the order path: property tests over the script API and
//! the order manager with extreme sizes and prices (infinite, NaN, negative,
//! tiny, past `Decimal`'s range), and over the arithmetic that follows a fill.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64};

use arc_swap::ArcSwap;
use proptest::prelude::*;
use rust_decimal::Decimal;
use tradehost::config::{PaperConfig, SandboxConfig};
use tradehost::exchange::{ExchangeEvent, PaperExchange, Venue};
use tradehost::execution::Oms;
use tradehost::model::{
    AccountView, ORDER_NUMBER_MAX, OrderKind, OrderRequest, OrderStatus, Position, Side, Tick, TimeInForce,
};
use tradehost::script::{ScriptOptions, ScriptStrategy};
use tradehost::strategy::{OrderIds, Strategy as _, StrategyCommand, StrategyContext, StrategyEnv, StrategyEvent};

/// Numbers a script can write: ordinary ones and every awkward kind.
fn script_number() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => -1e3f64..1e6,
        1 => prop::num::f64::ANY,
        1 => prop::sample::select(vec![
            0.0, -0.0, 1e-300, 1e-9, 7e28, 1e28, 7.9e28, 1e29, 1e300, f64::MAX, f64::MIN_POSITIVE,
            f64::INFINITY, f64::NEG_INFINITY, f64::NAN, 1e12, 1e12 + 1.0, 999_999_999_999.99,
        ]),
    ]
}

/// The number as a Rhai expression (scripts reach infinity and NaN by arithmetic).
fn rhai_literal(value: f64) -> String {
    if value.is_nan() {
        "(1e308 * 10.0 - 1e308 * 10.0)".into()
    } else if value == f64::INFINITY {
        "(1e308 * 10.0)".into()
    } else if value == f64::NEG_INFINITY {
        "(-1e308 * 10.0)".into()
    } else {
        format!("{value:e}")
    }
}

/// Runs a script that places one limit order in `on_start`; returns the
/// callback's outcome and the commands it queued.
fn place_from_script(size: f64, price: f64) -> (Result<bool, String>, Vec<StrategyCommand>) {
    let source = format!(
        "fn on_start() {{ exchange::limit_order(\"BTCUSD\", \"buy\", {}, {}); }}",
        rhai_literal(size),
        rhai_literal(price)
    );
    let account = Arc::new(ArcSwap::from_pointee(AccountView::default()));
    let ctx = StrategyContext::new("t", account, OrderIds::new("t", Arc::new(AtomicU64::new(0))), 10).shared();
    let env = StrategyEnv { ctx: ctx.clone(), abort: Arc::new(AtomicBool::new(false)), initial_state: None };
    let options = ScriptOptions {
        limits: SandboxConfig::default(),
        param_overrides: Default::default(),
        default_symbols: vec!["BTCUSD".into()],
        panicking_function: false,
        ml: Default::default(),
    };
    let mut strategy = ScriptStrategy::new("t.rhai", &source, options, env).expect("compiles");
    let outcome = strategy.handle(&StrategyEvent::Start).map_err(|e| e.to_string());
    let commands = ctx.borrow_mut().drain();
    (outcome, commands)
}

/// Any `Decimal`, weighted towards the extremes.
fn any_decimal() -> impl Strategy<Value = Decimal> {
    prop_oneof![
        (any::<i64>(), 0u32..=28).prop_map(|(m, s)| Decimal::new(m, s)),
        (any::<u32>(), any::<u32>(), any::<u32>(), any::<bool>(), 0u32..=28)
            .prop_map(|(lo, mid, hi, neg, scale)| Decimal::from_parts(lo, mid, hi, neg, scale)),
        prop::sample::select(vec![Decimal::MAX, Decimal::MIN, Decimal::ZERO, Decimal::new(1, 28), ORDER_NUMBER_MAX]),
    ]
}

fn paper_oms() -> Oms {
    let config = PaperConfig::default();
    let mut oms = Oms::new(Venue::Paper(Box::new(PaperExchange::new(&config))));
    oms.set_products(config.product_list());
    let one = Decimal::from(50_000);
    oms.on_tick(&Tick { symbol: "BTCUSD".into(), time: 1, bid: one, ask: one + Decimal::ONE, last: one, volume: one });
    oms
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn any_size_or_price_from_a_script_is_an_order_within_bounds_or_a_script_error(
        size in script_number(),
        price in script_number(),
    ) {
        let (outcome, commands) = place_from_script(size, price);
        match outcome {
            Ok(_) => {
                let [StrategyCommand::Place(request)] = &commands[..] else {
                    panic!("one order queued, got {commands:?}");
                };
                prop_assert!(request.size > Decimal::ZERO && request.size <= ORDER_NUMBER_MAX, "{request:?}");
                let price = request.price.unwrap();
                prop_assert!(price > Decimal::ZERO && price <= ORDER_NUMBER_MAX, "{request:?}");
            }
            Err(error) => {
                prop_assert!(commands.is_empty());
                prop_assert!(
                    error.contains("`size`") || error.contains("`price`"),
                    "the error names the bad argument: {error}"
                );
            }
        }
    }

    #[test]
    fn any_size_or_price_reaching_the_order_manager_is_refused_or_bounded_never_a_panic(
        size in any_decimal(),
        price in prop::option::of(any_decimal()),
        sell in any::<bool>(),
    ) {
        let mut oms = paper_oms();
        let request = OrderRequest {
            client_id: "a".into(),
            strategy: "s".into(),
            symbol: "BTCUSD".into(),
            side: if sell { Side::Sell } else { Side::Buy },
            kind: if price.is_some() { OrderKind::Limit } else { OrderKind::Market },
            size,
            price,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only: false,
            stop: None,
            oco: None,
            parent: None,
        };
        for event in oms.submit(request) {
            if let ExchangeEvent::Order(order) = event {
                if order.status == OrderStatus::Rejected {
                    prop_assert!(order.reason.as_deref().is_some_and(|r| !r.is_empty()));
                } else {
                    prop_assert!(order.request.size > Decimal::ZERO && order.request.size <= ORDER_NUMBER_MAX);
                }
            }
        }
        // The account view after it still adds up.
        let _ = oms.view().load().equity;
    }

    #[test]
    fn fills_of_any_size_and_price_never_panic_the_position_arithmetic(
        fills in prop::collection::vec((any::<bool>(), any_decimal(), any_decimal()), 1..6),
        mark in any_decimal(),
    ) {
        let mut position = Position::flat("X");
        for (sell, size, price) in fills {
            position.apply(if sell { Side::Sell } else { Side::Buy }, size.abs(), price);
        }
        let _ = position.unrealized_pnl(mark);
    }
}
