//! `tradehost doctor` for Delta: reachability, server clock offset, key
//! validity (a signed read), product lookup of each configured symbol and a
//! WebSocket connect with `key-auth`. Each check is OK or FAIL with a reason.

use std::sync::Arc;
use std::time::Duration;

use super::rest::{Credentials, RestClient};
use crate::config::DeltaConfig;

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// What was checked.
    pub name: String,
    /// Passed.
    pub ok: bool,
    /// Details or the reason it failed.
    pub detail: String,
}

fn check(name: impl Into<String>, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check { name: name.into(), ok: true, detail },
        Err(detail) => Check { name: name.into(), ok: false, detail },
    }
}

/// Runs every check (later ones still run when earlier ones fail).
pub async fn run(config: &DeltaConfig) -> Vec<Check> {
    let (rest_url, ws_url, _) = config.urls();
    let credentials = match (&config.api_key, &config.api_secret) {
        (Some(key), Some(secret)) => Some(Credentials { key: key.clone(), secret: secret.clone() }),
        _ => None,
    };
    let mut out = Vec::new();
    let rest = match RestClient::new(&rest_url, credentials.clone(), Duration::from_millis(config.request_timeout_ms)) {
        Ok(rest) => Arc::new(rest),
        Err(error) => return vec![check("REST client", Err(error.to_string()))],
    };
    let reachable = rest.sync_clock().await;
    out.push(check(
        format!("reach {rest_url}"),
        reachable.as_ref().map(|_| "answers".into()).map_err(|e| e.to_string()),
    ));
    out.push(check(
        "server time offset",
        match reachable {
            Ok(offset) if offset.abs() < 5_000 => Ok(format!("{offset} ms (corrected when signing)")),
            Ok(offset) => Ok(format!("{offset} ms: the local clock is off; signatures use the corrected time")),
            Err(error) => Err(error.to_string()),
        },
    ));
    out.push(check(
        "API key (signed read of wallet balances)",
        match &credentials {
            None => Err("no key: set TRADEHOST_DELTA_API_KEY and TRADEHOST_DELTA_API_SECRET".into()),
            Some(_) => {
                rest.wallet_balances().await.map(|b| format!("valid; {} wallet(s)", b.len())).map_err(|e| e.to_string())
            }
        },
    ));
    for symbol in &config.symbols {
        out.push(check(
            format!("product {symbol}"),
            rest.product(symbol)
                .await
                .map(|p| format!("id {}, contract value {}, tick {}", p.id, p.contract_value, p.tick_size))
                .map_err(|e| e.to_string()),
        ));
    }
    out.push(check(format!("WebSocket {ws_url} + key-auth"), websocket(&ws_url, credentials, &rest).await));
    out
}

async fn websocket(url: &str, credentials: Option<Credentials>, rest: &RestClient) -> Result<String, String> {
    let mut socket = super::stream::connect(url).await?;
    let Some(credentials) = credentials else { return Err("connected, but no key to authenticate with".into()) };
    super::stream::key_auth(&mut socket, &credentials, &rest.timestamp()).await?;
    Ok("connected and authenticated".into())
}
