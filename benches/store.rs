//! Prints store figures for docs/performance.md (no assertions):
//! 1. durable fills per second with group commit, 1 and 16 concurrent writers,
//!    each fill acknowledged only after its commit returned;
//! 2. the latency a fill adds between the exchange's report and `on_fill`:
//!    the commit of what the engine writes for one fill (fill, order state,
//!    position, paper account), while activity events stream in beside it.
//!
//! Run with `cargo bench --bench store`.

use std::time::{Duration, Instant};

use rust_decimal::Decimal;
use tradehost::config::PaperConfig;
use tradehost::exchange::PaperExchange;
use tradehost::model::{Fill, Liquidity, Order, OrderKind, OrderRequest, Position, Side, TimeInForce};
use tradehost::store::{Store, WriteOp};

fn fill(id: u64) -> Fill {
    Fill {
        id,
        order_id: format!("bench-{id}"),
        strategy: "bench".into(),
        symbol: "BTCUSD".into(),
        side: Side::Buy,
        size: Decimal::new(1, 2),
        price: Decimal::new(6_000_050, 2),
        fee: Decimal::new(3, 2),
        liquidity: Liquidity::Taker,
        time: 1_700_000_000_000,
        exchange_id: None,
    }
}

fn order(id: u64) -> Order {
    Order::new(
        OrderRequest {
            client_id: format!("bench-{id}"),
            strategy: "bench".into(),
            symbol: "BTCUSD".into(),
            side: Side::Buy,
            kind: OrderKind::Market,
            size: Decimal::new(1, 2),
            price: None,
            time_in_force: TimeInForce::Gtc,
            post_only: false,
            reduce_only: false,
            stop: None,
            oco: None,
            parent: None,
        },
        0,
    )
}

fn throughput(writers: u64, per_writer: u64) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.writer(Default::default());
    let started = Instant::now();
    let threads: Vec<_> = (0..writers)
        .map(|t| {
            let writer = writer.clone();
            std::thread::spawn(move || {
                for i in 0..per_writer {
                    writer.commit_blocking(vec![WriteOp::Fill(fill(t * 1_000_000 + i + 1))]).unwrap();
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let elapsed = started.elapsed();
    let total = writers * per_writer;
    println!(
        "durable fills, {writers:>2} concurrent writer(s): {total} fills in {elapsed:.2?} = {:.0} fills/s (each acknowledged after its commit)",
        total as f64 / elapsed.as_secs_f64()
    );
    writer.close();
}

fn fill_latency() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let writer = store.writer(Default::default());
    let paper = PaperExchange::new(&PaperConfig::default());
    let account = paper.save();
    // Activity events arriving beside the fills, as they do in the host.
    let background = {
        let writer = writer.clone();
        std::thread::spawn(move || {
            for seq in 1..=20_000u64 {
                writer.submit(
                    vec![WriteOp::Activity {
                        seq,
                        envelope: serde_json::json!({ "seq": seq, "type": "log" }).to_string(),
                    }],
                    None,
                );
                std::thread::sleep(Duration::from_micros(100));
            }
        })
    };
    let mut samples = Vec::new();
    for id in 1..=2_000u64 {
        let mut position = Position::flat("BTCUSD");
        position.apply(Side::Buy, Decimal::new(id as i64, 2), Decimal::new(60_000, 0));
        let ops = vec![
            WriteOp::Order(order(id)),
            WriteOp::Fill(fill(id)),
            WriteOp::Position { strategy: "bench".into(), position },
            WriteOp::PaperAccount(account.clone()),
        ];
        let started = Instant::now();
        writer.commit_blocking(ops).unwrap();
        samples.push(started.elapsed());
    }
    background.join().unwrap();
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "latency a fill adds before on_fill (commit of fill + order + position + account): median {:.2?}  p99 {:.2?}  max {:.2?}",
        at(0.5),
        at(0.99),
        samples[samples.len() - 1]
    );
    writer.close();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    throughput(1, 2_000);
    throughput(16, 5_000);
    throughput(64, 2_000);
    fill_latency();
}
