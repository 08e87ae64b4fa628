//! Where orders go and where market data comes from: `[exchange]` (paper or
//! Delta, with Delta's networks and URLs) and `[feed]` (synthetic or replay).

use std::collections::BTreeMap;
use std::path::PathBuf;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};

use super::Secret;
use crate::model::Product;

/// Exchange kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeKind {
    /// Simulated fills against the feed.
    #[default]
    Paper,
    /// Delta Exchange (India or Global, production or testnet).
    Delta,
}

/// `[exchange]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExchangeConfig {
    /// Which exchange.
    pub kind: ExchangeKind,
    /// Paper exchange settings.
    pub paper: PaperConfig,
    /// Delta Exchange settings.
    pub delta: DeltaConfig,
    /// With `kind = "delta"`: Delta's public market (books, trades, tickers)
    /// and the paper exchange's fills against it — no API key, no order sent.
    pub dry_run: bool,
}

impl ExchangeConfig {
    /// How this configuration trades.
    pub fn run_mode(&self) -> crate::model::RunMode {
        match (self.kind, self.dry_run) {
            (ExchangeKind::Paper, _) => crate::model::RunMode::Paper,
            (ExchangeKind::Delta, true) => crate::model::RunMode::DryRun,
            (ExchangeKind::Delta, false) => crate::model::RunMode::Live,
        }
    }
}

/// Delta Exchange environments (shared/delta-exchange.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeltaNetwork {
    /// India production.
    India,
    /// Global production.
    Global,
    /// India testnet ("Demo").
    #[default]
    IndiaTestnet,
    /// Global testnet.
    GlobalTestnet,
}

impl DeltaNetwork {
    /// REST base, private (legacy) WebSocket and public WebSocket URLs.
    pub fn urls(self) -> (&'static str, &'static str, &'static str) {
        match self {
            DeltaNetwork::India => (
                "https://api.india.delta.exchange",
                "wss://socket.india.delta.exchange",
                "wss://public-socket.india.delta.exchange",
            ),
            DeltaNetwork::IndiaTestnet => (
                "https://cdn-ind.testnet.deltaex.org",
                "wss://socket-ind.testnet.deltaex.org",
                "wss://socket-ind-pub.testnet.deltaex.org",
            ),
            // No public endpoint is documented for Global: the legacy endpoint serves every channel.
            DeltaNetwork::Global => {
                ("https://api.delta.exchange", "wss://socket.delta.exchange", "wss://socket.delta.exchange")
            }
            DeltaNetwork::GlobalTestnet => (
                "https://testnet-api.delta.exchange",
                "wss://testnet-socket.delta.exchange",
                "wss://testnet-socket.delta.exchange",
            ),
        }
    }

    /// True for the networks that trade real money.
    pub fn is_production(self) -> bool {
        matches!(self, DeltaNetwork::India | DeltaNetwork::Global)
    }
}

/// `[exchange.delta]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeltaConfig {
    /// Which environment.
    pub network: DeltaNetwork,
    /// REST base URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rest_url: Option<String>,
    /// Private (legacy) WebSocket URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_url: Option<String>,
    /// Public WebSocket URL override.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws_public_url: Option<String>,
    /// API key (or `TRADEHOST_DELTA_API_KEY`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key: Option<Secret>,
    /// API secret (or `TRADEHOST_DELTA_API_SECRET`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_secret: Option<Secret>,
    /// Products to trade and stream.
    pub symbols: Vec<String>,
    /// Use the legacy public channel names on the private endpoint (always on
    /// Global networks unless `ws_public_url` is set).
    pub legacy_channels: bool,
    /// Longest time one REST request may take.
    pub request_timeout_ms: u64,
    /// Reconnect when no heartbeat arrived for this long.
    pub heartbeat_timeout_ms: u64,
    /// Interval of our pings.
    pub ping_interval_ms: u64,
    /// First reconnect delay.
    pub reconnect_initial_ms: u64,
    /// Largest reconnect delay.
    pub reconnect_max_ms: u64,
    /// A symbol whose market stream is silent this long is stale: new entries are refused.
    pub stale_after_ms: u64,
    /// One-minute bars loaded over REST at start, for indicator warm-up.
    pub history_bars: usize,
    /// Longest wait, per series, for a starting strategy's missing warm-up
    /// candles from `/v2/history/candles` (then it starts with what there is).
    pub warmup_timeout_ms: u64,
}

impl Default for DeltaConfig {
    fn default() -> Self {
        DeltaConfig {
            network: DeltaNetwork::default(),
            rest_url: None,
            ws_url: None,
            ws_public_url: None,
            api_key: None,
            api_secret: None,
            symbols: vec!["BTCUSD".into()],
            legacy_channels: false,
            request_timeout_ms: 5_000,
            heartbeat_timeout_ms: 35_000,
            ping_interval_ms: 30_000,
            reconnect_initial_ms: 500,
            reconnect_max_ms: 30_000,
            stale_after_ms: 15_000,
            history_bars: 200,
            warmup_timeout_ms: 15_000,
        }
    }
}

impl DeltaConfig {
    /// True when market data uses the legacy channel names on the private
    /// endpoint: when asked, or on Global networks without a public endpoint.
    pub fn uses_legacy_channels(&self) -> bool {
        self.legacy_channels
            || (self.ws_public_url.is_none()
                && matches!(self.network, DeltaNetwork::Global | DeltaNetwork::GlobalTestnet))
    }

    /// REST, private WebSocket and public WebSocket URLs (overrides first).
    pub fn urls(&self) -> (String, String, String) {
        let (rest, ws, public) = self.network.urls();
        (
            self.rest_url.clone().unwrap_or_else(|| rest.into()),
            self.ws_url.clone().unwrap_or_else(|| ws.into()),
            self.ws_public_url.clone().unwrap_or_else(|| public.into()),
        )
    }
}

/// `[exchange.paper]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PaperConfig {
    /// Quote currency of the account.
    pub currency: String,
    /// Starting balance in the quote currency.
    pub balance: Decimal,
    /// Gross exposure allowed per unit of equity.
    pub leverage: Decimal,
    /// Fee for taking liquidity, basis points of notional.
    pub taker_fee_bps: Decimal,
    /// Fee for resting orders that fill, basis points of notional.
    pub maker_fee_bps: Decimal,
    /// Price slippage on taker fills, basis points.
    pub slippage_bps: Decimal,
    /// Tick and lot sizes by symbol.
    pub products: BTreeMap<String, ProductConfig>,
}

impl Default for PaperConfig {
    fn default() -> Self {
        PaperConfig {
            currency: "USD".into(),
            balance: Decimal::from(100_000),
            leverage: Decimal::from(5),
            taker_fee_bps: Decimal::from(5),
            maker_fee_bps: Decimal::from(2),
            slippage_bps: Decimal::from(1),
            products: BTreeMap::from([
                ("BTCUSD".into(), ProductConfig { tick_size: Decimal::new(5, 1), lot_size: Decimal::new(1, 3) }),
                ("ETHUSD".into(), ProductConfig { tick_size: Decimal::new(5, 2), lot_size: Decimal::new(1, 2) }),
            ]),
        }
    }
}

impl PaperConfig {
    /// The configured products.
    pub fn product_list(&self) -> Vec<Product> {
        self.products
            .iter()
            .map(|(symbol, p)| Product { symbol: symbol.clone(), tick_size: p.tick_size, lot_size: p.lot_size })
            .collect()
    }
}

/// `[exchange.paper.products.SYMBOL]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProductConfig {
    /// Smallest price increment.
    pub tick_size: Decimal,
    /// Smallest size increment.
    pub lot_size: Decimal,
}

/// Feed kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedKind {
    /// Seeded random walk.
    #[default]
    Synthetic,
    /// CSV replay.
    Replay,
}

/// `[feed]`.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct FeedConfig {
    /// Which feed.
    pub kind: FeedKind,
    /// Synthetic feed settings.
    pub synthetic: SyntheticConfig,
    /// Replay feed settings.
    pub replay: ReplayConfig,
}

/// `[feed.synthetic]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticConfig {
    /// Starting price by symbol; the keys are the symbols generated.
    pub start_prices: BTreeMap<String, f64>,
    /// Random seed: the same seed gives the same prices.
    pub seed: u64,
    /// Simulated time between two ticks.
    pub tick_interval_ms: u64,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Standard deviation of the log return per tick.
    pub volatility: f64,
    /// Bid/ask spread in basis points.
    pub spread_bps: f64,
    /// Largest size traded in one tick.
    pub max_tick_volume: f64,
    /// One-minute bars generated before the live start, for indicator warm-up.
    pub history_bars: usize,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        SyntheticConfig {
            start_prices: BTreeMap::from([("BTCUSD".into(), 60_000.0), ("ETHUSD".into(), 3_000.0)]),
            seed: 42,
            tick_interval_ms: 1_000,
            speed: 60.0,
            volatility: 0.0008,
            spread_bps: 2.0,
            max_tick_volume: 2.0,
            history_bars: 200,
        }
    }
}

/// `[feed.replay]`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ReplayConfig {
    /// CSV file (design.md §4.6 format).
    pub path: PathBuf,
    /// Symbol the file holds.
    pub symbol: String,
    /// Simulated seconds per real second.
    pub speed: f64,
    /// Start again from the first row at the end.
    #[serde(rename = "loop")]
    pub repeat: bool,
    /// Bid/ask spread in basis points around each close.
    pub spread_bps: f64,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        ReplayConfig { path: PathBuf::new(), symbol: String::new(), speed: 60.0, repeat: false, spread_bps: 2.0 }
    }
}
