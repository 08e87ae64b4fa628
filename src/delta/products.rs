//! Delta's products as the host trades them: lookups by symbol and id,
//! script orders in whole contracts on the tick grid, and Delta's order
//! states in the host's words.

use std::collections::HashMap;

use rust_decimal::Decimal;

use super::rest::{BracketLegFields, NewBracket, NewOrder, NewStop};
use super::wire::{DeltaProduct, RestOrder};
use crate::exchange::{RemoteOrder, RemoteState};
use crate::model::{OrderKind, OrderRequest, Side, StopKind, StopTrigger, TimeInForce, TriggerOn};

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
/// A bracket's legs are not orders of their own on Delta: see [`bracket_of`].
pub fn new_order(products: &Products, request: &OrderRequest) -> Result<NewOrder, String> {
    let product = product_of(products, &request.symbol)?;
    if request.parent.is_some() || request.oco.is_some() {
        return Err("a bracket leg is sent with its bracket, not alone".into());
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
        (OrderKind::Limit, Some(price)) => Some(limit_on_grid(product, request.side, price)?),
        (OrderKind::Limit, None) => return Err("a limit order needs a price".into()),
        (OrderKind::Market, _) => None,
    };
    let stop = match request.stop.as_deref() {
        None => None,
        Some(stop) => {
            let trigger = trigger_fields(product, request.side, stop)?;
            Some(NewStop {
                stop_order_type: match stop.kind {
                    StopKind::StopLoss => "stop_loss_order",
                    StopKind::TakeProfit => "take_profit_order",
                },
                stop_price: trigger.stop_price,
                trail_amount: trigger.trail_amount,
                stop_trigger_method: trigger_method(stop.on),
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
        bracket: None,
    })
}

/// Maps a bracket's legs (a stop-loss and/or a take-profit closing one
/// position on `symbol`) to Delta's position bracket. Both legs watch the
/// same price (Delta has one trigger method per bracket).
pub fn bracket_of(products: &Products, symbol: &str, legs: &[OrderRequest]) -> Result<NewBracket, String> {
    let product = product_of(products, symbol)?;
    let mut bracket =
        NewBracket { product_id: product.id, stop_loss: None, take_profit: None, stop_trigger_method: "" };
    for leg in legs {
        let Some(stop) = leg.stop.as_deref() else {
            return Err(format!("bracket leg {} has no trigger", leg.client_id));
        };
        if leg.symbol != symbol {
            return Err(format!("bracket leg {} is on {}, not {symbol}", leg.client_id, leg.symbol));
        }
        let method = trigger_method(stop.on);
        if !bracket.stop_trigger_method.is_empty() && bracket.stop_trigger_method != method {
            return Err("a bracket's legs must watch the same price on Delta".into());
        }
        bracket.stop_trigger_method = method;
        let mut fields = trigger_fields(product, leg.side, stop)?;
        if let Some(limit) = leg.price {
            fields.limit_price = Some(limit_on_grid(product, leg.side, limit)?);
        }
        let slot = match stop.kind {
            StopKind::StopLoss => &mut bracket.stop_loss,
            StopKind::TakeProfit if fields.trail_amount.is_some() => {
                return Err("Delta trails only a bracket's stop-loss".into());
            }
            StopKind::TakeProfit => &mut bracket.take_profit,
        };
        if slot.replace(fields).is_some() {
            return Err("a bracket on Delta has at most one stop-loss and one take-profit".into());
        }
    }
    if bracket.stop_loss.is_none() && bracket.take_profit.is_none() {
        return Err("a bracket needs a stop-loss or a take-profit".into());
    }
    Ok(bracket)
}

fn product_of<'a>(products: &'a Products, symbol: &str) -> Result<&'a DeltaProduct, String> {
    products.get(symbol).ok_or_else(|| format!("{symbol} is not one of exchange.delta.symbols"))
}

/// A limit price on the tick grid, never worse than asked.
fn limit_on_grid(product: &DeltaProduct, side: Side, price: Decimal) -> Result<String, String> {
    let rounding = match side {
        Side::Buy => rust_decimal::RoundingStrategy::ToNegativeInfinity,
        Side::Sell => rust_decimal::RoundingStrategy::ToPositiveInfinity,
    };
    let price = on_grid(product, price, rounding);
    if price <= Decimal::ZERO {
        return Err(format!("limit price {price} must be greater than 0"));
    }
    Ok(price.to_string())
}

fn on_grid(product: &DeltaProduct, price: Decimal, rounding: rust_decimal::RoundingStrategy) -> Decimal {
    ((price / product.tick_size).round_dp_with_strategy(0, rounding) * product.tick_size).normalize()
}

/// A stop's trigger as Delta's fields: a price on the tick grid, or a
/// trailing distance (negative when the order sells, as Delta's own client sends it).
fn trigger_fields(product: &DeltaProduct, side: Side, stop: &StopTrigger) -> Result<BracketLegFields, String> {
    if stop.trail_pct.is_some() {
        return Err("a trailing stop on Delta takes `trail` (a price distance), not `trail_pct`".into());
    }
    let nearest = |price: Decimal| {
        let price = on_grid(product, price, rust_decimal::RoundingStrategy::MidpointNearestEven);
        if price <= Decimal::ZERO {
            Err(format!("price {price} must be greater than 0"))
        } else {
            Ok(price.to_string())
        }
    };
    Ok(match stop.trail {
        Some(trail) => {
            let trail = nearest(trail)?;
            let trail_amount = if side == Side::Sell { format!("-{trail}") } else { trail };
            BracketLegFields { trail_amount: Some(trail_amount), ..BracketLegFields::default() }
        }
        None => BracketLegFields { stop_price: Some(nearest(stop.price)?), ..BracketLegFields::default() },
    })
}

fn trigger_method(on: TriggerOn) -> &'static str {
    match on {
        TriggerOn::Last => "last_traded_price",
        TriggerOn::Mark => "mark_price",
    }
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
