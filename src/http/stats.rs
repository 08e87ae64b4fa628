//! Per-strategy results for `/strategies`: realised PnL, fees and closed
//! round trips (trades, wins) from the stored fills, folded in as they come
//! (each call reads only the fills after the last one it saw), and
//! unrealised PnL from the open positions at the mark.

use std::collections::BTreeMap;

use rust_decimal::Decimal;

use crate::control::StrategyStats;
use crate::model::{AccountView, Fill, Position, Shown};

/// A symbol's position of one strategy as its fills built it, and the net
/// result of the round trip under way.
#[derive(Debug)]
struct Trip {
    position: Position,
    net: Decimal,
}

/// Every strategy's totals so far.
#[derive(Debug, Default)]
pub struct StatsBook {
    through: u64,
    trips: BTreeMap<(String, String), Trip>,
    totals: BTreeMap<String, StrategyStats>,
}

impl StatsBook {
    /// The id of the last fill folded in.
    pub fn through(&self) -> u64 {
        self.through
    }

    /// Folds in fills newer than the last one seen (older ones are skipped).
    pub fn fold(&mut self, fills: &[Fill]) {
        for fill in fills {
            if fill.id <= self.through {
                continue;
            }
            self.through = fill.id;
            let key = (fill.strategy.clone(), fill.symbol.clone());
            let trip = self
                .trips
                .entry(key)
                .or_insert_with(|| Trip { position: Position::flat(&fill.symbol), net: Decimal::ZERO });
            let before = trip.position.size;
            let realized = trip.position.apply(fill.side, fill.size, fill.price);
            trip.net = trip.net.saturating_add(realized).saturating_sub(fill.fee);
            let totals = self.totals.entry(fill.strategy.clone()).or_default();
            totals.realized = totals.realized.saturating_add(realized);
            totals.fees = totals.fees.saturating_add(fill.fee);
            totals.fills += 1;
            let after = trip.position.size;
            if !before.is_zero() && (after.is_zero() || after.is_sign_negative() != before.is_sign_negative()) {
                totals.trades += 1;
                totals.wins += u64::from(trip.net > Decimal::ZERO);
                trip.net = Decimal::ZERO;
            }
        }
    }

    /// A strategy's results now: its totals and its open positions at `account`'s marks, money rounded for display.
    pub fn stats(&self, strategy: &str, account: &AccountView) -> StrategyStats {
        let mut stats = self.totals.get(strategy).cloned().unwrap_or_default();
        stats.unrealized = account
            .positions
            .get(strategy)
            .into_iter()
            .flat_map(|positions| positions.values())
            .filter(|p| !p.size.is_zero())
            .map(|p| account.marks.get(&p.symbol).map_or(Decimal::ZERO, |mark| p.unrealized_pnl(*mark)))
            .fold(Decimal::ZERO, Decimal::saturating_add);
        stats.net = stats.realized.saturating_sub(stats.fees).saturating_add(stats.unrealized);
        stats.win_rate = (stats.trades > 0).then(|| stats.wins as f64 / stats.trades as f64);
        for money in [&mut stats.realized, &mut stats.fees, &mut stats.unrealized, &mut stats.net] {
            *money = Shown::money(*money);
        }
        stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Liquidity, Side};

    fn fill(id: u64, side: Side, size: i64, price: i64) -> Fill {
        Fill {
            id,
            order_id: format!("o{id}"),
            strategy: "s".into(),
            symbol: "BTCUSD".into(),
            side,
            size: Decimal::from(size),
            price: Decimal::from(price),
            fee: Decimal::ONE,
            liquidity: Liquidity::Taker,
            time: id as i64,
            exchange_id: None,
        }
    }

    #[test]
    fn round_trips_count_as_trades_and_wins_net_of_fees() {
        let mut book = StatsBook::default();
        // Long 2 at 100, out at 110: +20, fees 2 → a win.
        book.fold(&[fill(1, Side::Buy, 2, 100), fill(2, Side::Sell, 2, 110)]);
        // Short 1 at 110, reversed by buying 2 at 111: −1 − 1 fee... a loss; then long 1 open.
        book.fold(&[fill(3, Side::Sell, 1, 110), fill(4, Side::Buy, 2, 111)]);
        // Seen again: skipped.
        book.fold(&[fill(2, Side::Sell, 2, 110)]);
        let stats = book.stats("s", &AccountView::default());
        assert_eq!((stats.trades, stats.wins, stats.fills), (2, 1, 4));
        assert_eq!(stats.realized, Decimal::from(19));
        assert_eq!(stats.fees, Decimal::from(4));
        assert_eq!(stats.win_rate, Some(0.5));
        assert_eq!(book.through(), 4);
        assert_eq!(book.stats("other", &AccountView::default()), StrategyStats::default());
    }
}
