//! Semantic checks of a parsed configuration: every problem at once, each
//! under its key path.

use rust_decimal::Decimal;

use super::{Config, ConfigProblem, ExchangeKind, FeedKind};

impl super::SandboxConfig {
    /// Limits and quotas that must be positive, under `prefix`.
    pub(super) fn problems(&self, prefix: &str, out: &mut Vec<ConfigProblem>) {
        for (key, value) in [
            ("max_operations", self.max_operations as usize),
            ("max_call_depth", self.max_call_depth),
            ("max_expr_depth", self.max_expr_depth),
            ("max_string_size", self.max_string_size),
            ("max_array_size", self.max_array_size),
            ("max_map_size", self.max_map_size),
            ("max_series_values", self.max_series_values),
            ("max_callback_memory", self.max_callback_memory),
            ("callback_budget_ms", self.callback_budget_ms as usize),
            ("max_log_line_bytes", self.max_log_line_bytes),
            ("log_lines_per_second", self.log_lines_per_second as usize),
            ("log_burst", self.log_burst as usize),
            ("notifications_per_minute", self.notifications_per_minute as usize),
            ("events_per_second", self.events_per_second as usize),
            ("orders_per_second", self.orders_per_second as usize),
            ("max_timers", self.max_timers),
            ("max_timer_name_bytes", self.max_timer_name_bytes),
            ("max_state_bytes", self.max_state_bytes),
            ("max_report_keys", self.max_report_keys),
            ("max_report_value_bytes", self.max_report_value_bytes),
        ] {
            if value == 0 {
                out.push(ConfigProblem { key: format!("{prefix}.{key}"), message: "must be greater than 0".into() });
            }
        }
    }
}

impl Config {
    /// Every semantic problem, each with its key path.
    pub fn problems(&self) -> Vec<ConfigProblem> {
        let mut out = Vec::new();
        self.sandbox.problems("sandbox", &mut out);
        self.limit_problems(&mut out);
        self.exchange_problems(&mut out);
        self.feed_problems(&mut out);
        self.risk.problems("risk", &mut out);
        self.telegram.problems(&mut out);
        self.ml.problems(&mut out);
        for (key, value) in self.health.stale_after_ms.keys() {
            if value < 100 {
                out.push(ConfigProblem { key: key.into(), message: format!("must be at least 100 (ms), got {value}") });
            }
        }
        if self.health.interval_ms == 0 {
            out.push(ConfigProblem { key: "health.interval_ms".into(), message: "must be greater than 0".into() });
        }
        for (name, strategy) in &self.strategies.overrides {
            if let Some(risk) = &strategy.risk {
                risk.problems(&format!("strategies.overrides.{name}.risk"), &mut out);
            }
            let prefix = format!("strategies.overrides.{name}.sandbox");
            match self.sandbox.merged(&strategy.sandbox) {
                Ok(sandbox) => sandbox.problems(&prefix, &mut out),
                Err(error) => {
                    out.push(ConfigProblem { key: format!("{prefix}.{}", error.key), message: error.message })
                }
            }
        }
        out
    }

    /// Limits that must be positive, the API's exposure, backoff ranges.
    fn limit_problems(&self, out: &mut Vec<ConfigProblem>) {
        let mut bad = |key: &str, message: String| out.push(ConfigProblem { key: key.to_string(), message });
        for (key, value) in [
            ("supervisor.max_consecutive_errors", self.supervisor.max_consecutive_errors as usize),
            ("supervisor.event_queue", self.supervisor.event_queue),
            ("shutdown.timeout_ms", self.shutdown.timeout_ms as usize),
            ("store.state_flush_ms", self.store.state_flush_ms as usize),
            ("http.request_timeout_ms", self.http.request_timeout_ms as usize),
            ("http.body_limit_bytes", self.http.body_limit_bytes),
            ("http.ws_max_clients", self.http.ws_max_clients),
            ("http.ws_ping_interval_ms", self.http.ws_ping_interval_ms as usize),
            ("http.ws_idle_timeout_ms", self.http.ws_idle_timeout_ms as usize),
            ("http.ws_send_timeout_ms", self.http.ws_send_timeout_ms as usize),
            ("http.ready_timeout_ms", self.http.ready_timeout_ms as usize),
            ("http.idle_timeout_ms", self.http.idle_timeout_ms as usize),
            ("http.max_connections", self.http.max_connections),
            ("exchange.delta.request_timeout_ms", self.exchange.delta.request_timeout_ms as usize),
            ("exchange.delta.heartbeat_timeout_ms", self.exchange.delta.heartbeat_timeout_ms as usize),
            ("exchange.delta.ping_interval_ms", self.exchange.delta.ping_interval_ms as usize),
            ("exchange.delta.reconnect_initial_ms", self.exchange.delta.reconnect_initial_ms as usize),
            ("exchange.delta.stale_after_ms", self.exchange.delta.stale_after_ms as usize),
        ] {
            if value == 0 {
                bad(key, "must be greater than 0".into());
            }
        }
        if (1..100).contains(&self.store.equity_sample_ms) {
            bad("store.equity_sample_ms", "must be 0 (no samples) or at least 100".into());
        }
        if let Some(token) = &self.http.token
            && token.expose().len() < 16
        {
            bad("http.token", "must be at least 16 characters".into());
        }
        if !self.http.bind.ip().is_loopback() && self.http.token.is_none() {
            bad(
                "http.bind",
                format!(
                    "{} is not a loopback address: set http.token or TRADEHOST_API_TOKEN before exposing the API",
                    self.http.bind
                ),
            );
        }
        if self.supervisor.restart_backoff_max_ms < self.supervisor.restart_backoff_initial_ms {
            bad("supervisor.restart_backoff_max_ms", "must be at least supervisor.restart_backoff_initial_ms".into());
        }
    }

    /// Delta's symbols and URLs, the paper account and its products.
    fn exchange_problems(&self, out: &mut Vec<ConfigProblem>) {
        let mut bad = |key: &str, message: String| out.push(ConfigProblem { key: key.to_string(), message });
        let delta = &self.exchange.delta;
        if delta.reconnect_max_ms < delta.reconnect_initial_ms {
            bad("exchange.delta.reconnect_max_ms", "must be at least exchange.delta.reconnect_initial_ms".into());
        }
        if self.exchange.kind == ExchangeKind::Delta && delta.symbols.is_empty() {
            bad("exchange.delta.symbols", "must name at least one product".into());
        }
        if self.exchange.dry_run && self.exchange.kind != ExchangeKind::Delta {
            bad(
                "exchange.dry_run",
                "a dry-run trades on Delta's market: set exchange.kind = \"delta\" (the paper exchange already simulates every fill)".into(),
            );
        }
        for (key, url, schemes) in [
            ("exchange.delta.rest_url", &delta.rest_url, ["http://", "https://"]),
            ("exchange.delta.ws_url", &delta.ws_url, ["ws://", "wss://"]),
            ("exchange.delta.ws_public_url", &delta.ws_public_url, ["ws://", "wss://"]),
        ] {
            if let Some(url) = url
                && !schemes.iter().any(|s| url.starts_with(s))
            {
                bad(key, format!("must start with {} or {}, got {url:?}", schemes[0], schemes[1]));
            }
        }
        let p = &self.exchange.paper;
        if p.balance < Decimal::ZERO {
            bad("exchange.paper.balance", format!("must not be negative, got {}", p.balance));
        }
        if p.leverage <= Decimal::ZERO {
            bad("exchange.paper.leverage", format!("must be greater than 0, got {}", p.leverage));
        }
        for (key, value) in [
            ("exchange.paper.taker_fee_bps", p.taker_fee_bps),
            ("exchange.paper.maker_fee_bps", p.maker_fee_bps),
            ("exchange.paper.slippage_bps", p.slippage_bps),
        ] {
            if value < Decimal::ZERO || value > Decimal::from(1000) {
                bad(key, format!("must be between 0 and 1000 basis points, got {value}"));
            }
        }
        for (symbol, product) in &p.products {
            if product.tick_size <= Decimal::ZERO {
                bad(&format!("exchange.paper.products.{symbol}.tick_size"), "must be greater than 0".into());
            }
            if product.lot_size <= Decimal::ZERO {
                bad(&format!("exchange.paper.products.{symbol}.lot_size"), "must be greater than 0".into());
            }
        }
    }

    /// The feed's own settings, and a paper product for every symbol it trades.
    fn feed_problems(&self, out: &mut Vec<ConfigProblem>) {
        let p = &self.exchange.paper;
        let paper = self.exchange.kind == ExchangeKind::Paper;
        let need_product =
            |key: &str, symbol: &str| (paper && !p.products.contains_key(symbol)).then(|| missing_product(key, symbol));
        let missing = out;
        match self.feed.kind {
            FeedKind::Synthetic => {
                let syn = &self.feed.synthetic;
                if syn.start_prices.is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.synthetic.start_prices".into(),
                        message: "must name at least one symbol with its starting price".into(),
                    });
                }
                for (symbol, price) in &syn.start_prices {
                    let key = format!("feed.synthetic.start_prices.{symbol}");
                    if !(price.is_finite() && *price > 0.0) {
                        missing.push(ConfigProblem {
                            key: key.clone(),
                            message: format!("must be a positive price, got {price}"),
                        });
                    }
                    missing.extend(need_product(&key, symbol));
                }
                for (key, value) in [
                    ("feed.synthetic.speed", syn.speed),
                    ("feed.synthetic.max_tick_volume", syn.max_tick_volume),
                    ("feed.synthetic.tick_interval_ms", syn.tick_interval_ms as f64),
                ] {
                    if !(value.is_finite() && value > 0.0) {
                        missing.push(ConfigProblem {
                            key: key.into(),
                            message: format!("must be greater than 0, got {value}"),
                        });
                    }
                }
                // Per-tick volatility above 0.1 (10 % per tick) is no market
                // the host simulates; 100 % spread would cross the book.
                for (key, value, max) in [
                    ("feed.synthetic.volatility", syn.volatility, 0.1),
                    ("feed.synthetic.spread_bps", syn.spread_bps, 10_000.0),
                ] {
                    if !(value.is_finite() && (0.0..=max).contains(&value)) {
                        missing.push(ConfigProblem {
                            key: key.into(),
                            message: format!("must be from 0 to {max}, got {value}"),
                        });
                    }
                }
            }
            FeedKind::Replay => {
                let r = &self.feed.replay;
                if r.path.as_os_str().is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.replay.path".into(),
                        message: "is required when feed.kind = \"replay\"".into(),
                    });
                }
                if r.symbol.is_empty() {
                    missing.push(ConfigProblem {
                        key: "feed.replay.symbol".into(),
                        message: "is required when feed.kind = \"replay\"".into(),
                    });
                } else {
                    missing.extend(need_product("feed.replay.symbol", &r.symbol));
                }
                if !(r.speed.is_finite() && r.speed > 0.0) {
                    missing.push(ConfigProblem {
                        key: "feed.replay.speed".into(),
                        message: format!("must be greater than 0, got {}", r.speed),
                    });
                }
            }
        }
    }
}

fn missing_product(key: &str, symbol: &str) -> ConfigProblem {
    ConfigProblem {
        key: key.to_string(),
        message: format!("symbol {symbol} has no [exchange.paper.products.{symbol}] entry (tick_size, lot_size)"),
    }
}
