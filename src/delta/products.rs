//! Delta's products as the host trades them: lookups by symbol and id,
//! script orders in whole contracts on the tick grid, and Delta's order
//! states in the host's words.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::rest::{NewOrder, NewStop};
use super::wire::{DeltaProduct, RestOrder};
use crate::exchange::{RemoteOrder, RemoteState};
use crate::model::{OrderKind, OrderRequest, Side, StopKind, TimeInForce, TriggerOn};

/// Longest `client_order_id` Delta accepts.
pub const MAX_CLIENT_ID: usize = 32;

/// The traded products, by symbol and id.
#[derive(Debug, Default)]
pub struct Products {
    by_symbol: HashMap<String, DeltaProduct>,
    by_id: HashMap<i64, String>,
}

impl Products {
    /// Indexes products.
    pub fn new(products: impl IntoIterator<Item = DeltaProduct>) -> Self {
        let mut out = Products::default();
        for product in products {
            out.by_id.insert(product.id, product.symbol.clone());
            out.by_symbol.insert(product.symbol.clone(), product);
        }
        out
    }

    /// The products' trading rules in host units: prices in ticks, sizes in
    /// contracts (the contract value, in base units).
    pub fn rules(&self) -> Vec<crate::model::Product> {
        self.by_symbol
            .values()
            .map(|p| crate::model::Product {
                symbol: p.symbol.clone(),
                tick_size: p.tick_size,
                lot_size: p.contract_value,
            })
            .collect()
    }

    /// How the products' prices and sizes are shown.
    pub fn shown(&self) -> crate::model::Shown {
        crate::model::Shown::new(&self.rules())
    }

    /// A product by symbol.
    pub fn get(&self, symbol: &str) -> Option<&DeltaProduct> {
        self.by_symbol.get(symbol)
    }

    /// The traded product a message names, by symbol (either field) or else by id.
    pub fn resolve(&self, symbols: [Option<&str>; 2], id: Option<i64>) -> Option<&DeltaProduct> {
        symbols
            .into_iter()
            .flatten()
            .find_map(|s| self.by_symbol.get(s))
            .or_else(|| self.by_id.get(&id?).and_then(|s| self.by_symbol.get(s)))
    }

    /// Product ids of every traded product.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.by_id.keys().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Maps a script order to a Delta order: whole contracts, the limit price
/// on the tick grid (never worse than asked), the flags, the client id.
pub fn new_order(products: &Products, request: &OrderRequest) -> Result<NewOrder, String> {
    let product = products
        .get(&request.symbol)
        .ok_or_else(|| format!("{} is not one of exchange.delta.symbols", request.symbol))?;
    if request.parent.is_some() || request.oco.is_some() {
        return Err("brackets are not supported on the Delta venue yet (paper and backtests have them)".into());
    }
    if request.client_id.len() > MAX_CLIENT_ID {
        return Err(format!("client order id {} is longer than {MAX_CLIENT_ID} characters", request.client_id));
    }
    let contracts = request.size / product.contract_value;
    if contracts.fract() != Decimal::ZERO || contracts < Decimal::ONE {
        return Err(format!(
            "size {} {} is not a whole number of contracts (one contract is {})",
            request.size, request.symbol, product.contract_value
        ));
    }
    let size = i64::try_from(contracts.trunc().mantissa() / 10i128.pow(contracts.trunc().scale()))
        .map_err(|_| format!("size {} is too large", request.size))?;
    let limit_price = match (request.kind, request.price) {
        (OrderKind::Limit, Some(price)) => {
            let rounding = match request.side {
                Side::Buy => rust_decimal::RoundingStrategy::ToNegativeInfinity,
                Side::Sell => rust_decimal::RoundingStrategy::ToPositiveInfinity,
            };
            let ticks = (price / product.tick_size).round_dp_with_strategy(0, rounding);
            let price = (ticks * product.tick_size).normalize();
            if price <= Decimal::ZERO {
                return Err(format!("limit price {price} must be greater than 0"));
            }
            Some(price.to_string())
        }
        (OrderKind::Limit, None) => return Err("a limit order needs a price".into()),
        (OrderKind::Market, _) => None,
    };
    let on_grid = |price: Decimal, rounding| {
        let price = ((price / product.tick_size).round_dp_with_strategy(0, rounding) * product.tick_size).normalize();
        if price <= Decimal::ZERO {
            Err(format!("price {price} must be greater than 0"))
        } else {
            Ok(price.to_string())
        }
    };
    let stop = match request.stop.as_deref() {
        None => None,
        Some(stop) => {
            if stop.trail_pct.is_some() {
                return Err("a trailing stop on Delta takes `trail` (a price distance), not `trail_pct`".into());
            }
            let nearest = rust_decimal::RoundingStrategy::MidpointNearestEven;
            Some(NewStop {
                stop_order_type: match stop.kind {
                    StopKind::StopLoss => "stop_loss_order",
                    StopKind::TakeProfit => "take_profit_order",
                },
                stop_price: if stop.trail.is_some() { None } else { Some(on_grid(stop.price, nearest)?) },
                trail_amount: match stop.trail {
                    Some(trail) => {
                        let trail = on_grid(trail, nearest)?;
                        Some(if request.side == Side::Sell { format!("-{trail}") } else { trail })
                    }
                    None => None,
                },
                stop_trigger_method: match stop.on {
                    TriggerOn::Last => "last_traded_price",
                    TriggerOn::Mark => "mark_price",
                },
            })
        }
    };
    Ok(NewOrder {
        product_id: product.id,
        size,
        side: request.side.as_str(),
        limit_price,
        time_in_force: match request.time_in_force {
            TimeInForce::Gtc => "gtc",
            TimeInForce::Ioc => "ioc",
        },
        post_only: request.post_only,
        reduce_only: request.reduce_only,
        client_order_id: request.client_id.clone(),
        stop,
    })
}

/// The host's view of a Delta order state.
pub fn remote_of(order: &RestOrder) -> RemoteOrder {
    let state = match order.state.as_str() {
        "closed" => RemoteState::Closed,
        "cancelled" => RemoteState::Cancelled,
        "pending" => RemoteState::Untriggered,
        _ => RemoteState::Open,
    };
    RemoteOrder { trigger: order.stop_price, ..RemoteOrder::new(state, order.cancellation_reason.clone()) }
}
