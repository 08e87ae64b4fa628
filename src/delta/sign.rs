//! Request signing (shared/delta-exchange.md §2.2): the hex HMAC-SHA256 of
//! `METHOD + TIMESTAMP + PATH + QUERY + BODY`, where QUERY and BODY are the
//! exact bytes sent. [`Query`] builds the query string once (Python
//! `quote_plus` encoding, insertion order) so the signed and the sent text
//! cannot differ.

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// The lowercase hex HMAC-SHA256 of the prehash string.
pub fn signature(secret: &str, method: &str, timestamp: &str, path: &str, query: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    for part in [method, timestamp, path, query, body] {
        mac.update(part.as_bytes());
    }
    hex(&mac.finalize().into_bytes())
}

/// The signature of a WebSocket `key-auth` (`GET` + timestamp + `/live`).
pub fn ws_signature(secret: &str, timestamp: &str) -> String {
    signature(secret, "GET", timestamp, "/live", "", "")
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[(byte >> 4) as usize] as char);
        out.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    out
}

/// A query string built once: `""` when empty, else `?k=v&k=v` with every
/// key and value `quote_plus`-encoded, in insertion order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query(String);

impl Query {
    /// An empty query.
    pub fn new() -> Self {
        Query(String::new())
    }

    /// Appends a parameter.
    pub fn push(mut self, key: &str, value: impl std::fmt::Display) -> Self {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        quote_plus_into(&mut self.0, key);
        self.0.push('=');
        quote_plus_into(&mut self.0, &value.to_string());
        self
    }

    /// Appends a parameter when it has a value (empty values are never sent).
    pub fn push_opt(self, key: &str, value: Option<impl std::fmt::Display>) -> Self {
        match value.map(|v| v.to_string()).filter(|v| !v.is_empty()) {
            Some(value) => self.push(key, value),
            None => self,
        }
    }

    /// The text to sign and append to the path.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Python's `urllib.parse.quote_plus`: unreserved characters stay, space
/// becomes `+`, everything else `%XX` (uppercase) per UTF-8 byte.
pub fn quote_plus(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    quote_plus_into(&mut out, text);
    out
}

fn quote_plus_into(out: &mut String, text: &str) {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    for byte in text.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => out.push(byte as char),
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(DIGITS[(byte >> 4) as usize] as char);
                out.push(DIGITS[(byte & 0xf) as usize] as char);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_plus_matches_python() {
        assert_eq!(quote_plus("27,139"), "27%2C139");
        assert_eq!(quote_plus("MARK:BTCUSD"), "MARK%3ABTCUSD");
        assert_eq!(quote_plus("a b/c~"), "a+b%2Fc~");
        assert_eq!(Query::new().as_str(), "");
        assert_eq!(Query::new().push_opt("x", None::<&str>).push_opt("y", Some("")).as_str(), "");
    }
}
