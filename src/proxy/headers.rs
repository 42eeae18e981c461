//! Header hygiene between the caller, the gateway and SP-API.
//!
//! Both directions are allowlists: up to Amazon only [`TO_UPSTREAM`] and
//! [`SP_API_REQUEST_HEADERS`], back to tools only
//! [`TO_CALLER`] (plus `Retry-After` on 429 and 503, and the gateway's own headers, added after
//! the filter). Everything else is dropped and counted ([`Dropped`], on `/metrics`). Hop-by-hop
//! headers (RFC 9110 section 7.6.1) and those the `Connection` header names are never
//! forwarded. Caller credentials (`Authorization`, a drop-in `x-amz-access-token`) never reach
//! Amazon: the gateway sets the token header itself after the filter.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName};

/// Headers that describe one connection, not the message.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The prefix of headers addressed to the gateway itself.
pub const SPGATE_PREFIX: &str = "x-spgate-";

/// The gateway's request id, returned on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-spgate-request-id");

/// The header naming the seller a request acts for (defined with the caller check).
pub use crate::auth::caller::SELLER;

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the few headers a message has, instead of a lookup per hop-by-hop name:
    // most messages carry none (every request and answer of the gateway goes through here).
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(listed.iter()) {
        headers.remove(name);
    }
}

/// What a tool may send up to Amazon besides [`SP_API_REQUEST_HEADERS`]: content negotiation,
/// the user agent and body framing (`Content-Length`; chunking is hop-by-hop and hyper's).
/// Not `Accept-Encoding`: every JSON answer meets the PII policy or its safety net, which read
/// the body, so answers come unencoded (an encoded one is refused).
/// `Authorization`, `Host`, cookies, `Forwarded`, `X-Forwarded-*`, SigV4 headers, any other
/// `x-amz*` header and the gateway's own `x-spgate-*` headers never reach Amazon.
pub const TO_UPSTREAM: [&str; 5] = [
    "content-type",
    "content-length",
    "accept",
    "accept-language",
    "user-agent",
];

/// Exactly the header parameters Amazon's models document, each with the model (catalog
/// `Operation::model`) whose operations take it: sent to another API, it is dropped.
/// `tests/headers.rs` compares this list with every model.
pub const SP_API_REQUEST_HEADERS: [(&str, &str); 8] = [
    ("x-amzn-shipping-business-id", "shippingV2"),
    ("x-amzn-idempotencykey", "shippingV2"),
    ("locale", "shippingV2"),
    (
        "x-amzn-fulfillment-service-id",
        "fulfillmentOutbound_2026-07-04",
    ),
    ("x-amzn-idempotency-token", "fbaInventory"),
    ("destaccountdigitalsignature", "sellerWallet_2024-03-01"),
    ("amountdigitalsignature", "sellerWallet_2024-03-01"),
    ("accept-language", "tracking_2026-01-30"),
];

/// What comes back to a tool of Amazon's response headers. `Retry-After` only on 429 and 503.
/// The gateway adds its own (`x-spgate-*`) after this filter, so Amazon cannot set them.
pub const TO_CALLER: [&str; 5] = [
    "content-type",
    "content-length",
    "content-encoding",
    "x-amzn-requestid",
    "x-amzn-ratelimit-limit",
];

/// Headers dropped by the allowlists, per direction (Prometheus `spgate_headers_dropped_total`).
/// Hop-by-hop headers are connection framing every proxy removes, and are not counted.
#[derive(Debug, Default)]
pub struct Dropped {
    to_upstream: AtomicU64,
    to_caller: AtomicU64,
}

/// Keeps a caller's headers that [`TO_UPSTREAM`] allows, or [`SP_API_REQUEST_HEADERS`] for
/// the operation's `model`; drops and counts the rest.
pub fn for_upstream(headers: &mut HeaderMap, model: &str, dropped: &Dropped) {
    strip_hop_by_hop(headers);
    let n = retain(headers, |name| {
        TO_UPSTREAM.contains(&name.as_str())
            || SP_API_REQUEST_HEADERS.contains(&(name.as_str(), model))
    });
    dropped.to_upstream.fetch_add(n, Ordering::Relaxed);
}

/// The headers [`for_upstream`] would send to Amazon for `model` that can change its answer
/// (all but `Content-Length`, the body's framing, and `User-Agent`), sorted by name and value:
/// what a shared answer's key holds, so requests that reach Amazon differently never share one.
pub fn answer_relevant(headers: &HeaderMap, model: &str) -> Vec<(HeaderName, http::HeaderValue)> {
    let mut kept = headers.clone();
    strip_hop_by_hop(&mut kept);
    let mut set: Vec<(HeaderName, http::HeaderValue)> = kept
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name != "content-length"
                && name != "user-agent"
                && (TO_UPSTREAM.contains(&name) || SP_API_REQUEST_HEADERS.contains(&(name, model)))
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect();
    set.sort_by(|a, b| (a.0.as_str(), a.1.as_bytes()).cmp(&(b.0.as_str(), b.1.as_bytes())));
    set
}

/// Keeps Amazon's response headers that [`TO_CALLER`] allows (and `Retry-After` on 429 and
/// 503); drops and counts the rest.
pub fn for_caller(headers: &mut HeaderMap, status: http::StatusCode, dropped: &Dropped) {
    strip_hop_by_hop(headers);
    let retry_after = matches!(status.as_u16(), 429 | 503);
    let n = retain(headers, |name| {
        TO_CALLER.contains(&name.as_str()) || (retry_after && name == header::RETRY_AFTER)
    });
    dropped.to_caller.fetch_add(n, Ordering::Relaxed);
}

/// Removes every header `keep` refuses; returns how many values were removed.
fn retain(headers: &mut HeaderMap, keep: impl Fn(&HeaderName) -> bool) -> u64 {
    if headers.keys().all(&keep) {
        return 0;
    }
    let refused: Vec<HeaderName> = headers.keys().filter(|k| !keep(k)).cloned().collect();
    let mut n = 0;
    for name in &refused {
        n += headers.get_all(name).iter().count() as u64;
        headers.remove(name);
    }
    if !refused.is_empty() {
        // Names only (never values), for whoever wonders where a header went.
        let names: Vec<&str> = refused.iter().map(HeaderName::as_str).collect();
        tracing::debug!(headers = ?names, "Headers outside the allowlist were dropped.");
    }
    n
}

// === impl Dropped ===

impl Dropped {
    /// Header values dropped on the way to Amazon.
    pub fn to_upstream(&self) -> u64 {
        self.to_upstream.load(Ordering::Relaxed)
    }

    /// Header values dropped on the way back to tools.
    pub fn to_caller(&self) -> u64 {
        self.to_caller.load(Ordering::Relaxed)
    }

    /// The counters in Prometheus text.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write;
        let _ = writeln!(
            out,
            "# HELP spgate_headers_dropped_total Header values outside the allowlists, dropped, by direction.\n# TYPE spgate_headers_dropped_total counter\nspgate_headers_dropped_total{{direction=\"to_upstream\"}} {}\nspgate_headers_dropped_total{{direction=\"to_caller\"}} {}",
            self.to_upstream(),
            self.to_caller()
        );
    }
}

/// Total size of header names and values, as limited by `server.max_header_bytes`.
pub fn total_size(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn only_allowlisted_headers_reach_amazon() {
        let mut h = map(&[
            ("authorization", "Bearer spg_secret"),
            ("x-amz-access-token", "gw-token"),
            ("x-spgate-seller", "A1"),
            ("x-spgate-max-wait-ms", "10"),
            ("connection", "keep-alive, x-custom-hop"),
            ("x-custom-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("transfer-encoding", "chunked"),
            ("te", "trailers"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("host", "sellingpartnerapi-na.amazon.com"),
            ("cookie", "session=1"),
            ("forwarded", "for=10.0.0.1"),
            ("x-forwarded-for", "10.0.0.1"),
            ("x-amzn-requestid", "chosen-by-tool"),
            ("x-amz-security-token", "x"),
            ("content-type", "application/json"),
            ("user-agent", "my-tool/1.0"),
            ("x-amz-date", "20260101T000000Z"),
            ("x-amzn-idempotencykey", "k-1"),
        ]);
        let dropped = Dropped::default();
        let mut shipping = h.clone();
        for_upstream(&mut h, "ordersV0", &dropped);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(left, ["content-type", "user-agent"]);
        // Hop-by-hop headers are connection framing, not counted; the other 12 are.
        assert_eq!(dropped.to_upstream(), 12);
        // Shipping v2 documents the idempotency key header.
        for_upstream(&mut shipping, "shippingV2", &dropped);
        assert!(shipping.contains_key("x-amzn-idempotencykey"));
    }

    #[test]
    fn a_shared_answer_is_keyed_by_the_headers_that_go_up_and_can_change_it() {
        let h = map(&[
            ("x-amzn-shipping-business-id", "AmazonShipping_US"),
            ("locale", "en_US"),
            ("accept", "application/json"),
            ("user-agent", "my-tool/1.0"),
            ("authorization", "Bearer spg_secret"),
            ("x-spgate-seller", "A1"),
            ("connection", "accept-language"),
            ("accept-language", "de-DE"),
        ]);
        let names = |model: &str| -> Vec<String> {
            answer_relevant(&h, model)
                .iter()
                .map(|(n, v)| format!("{n}={}", v.to_str().unwrap()))
                .collect()
        };
        // Sorted; the API's own header parameters only for its operations; never the user
        // agent, credentials, the gateway's headers or what `Connection` names.
        assert_eq!(
            names("shippingV2"),
            [
                "accept=application/json",
                "locale=en_US",
                "x-amzn-shipping-business-id=AmazonShipping_US"
            ]
        );
        assert_eq!(names("ordersV0"), ["accept=application/json"]);
        let other = map(&[("x-amzn-shipping-business-id", "AmazonShipping_UK")]);
        assert_ne!(
            answer_relevant(&other, "shippingV2"),
            answer_relevant(&h, "shippingV2")
        );
    }

    #[test]
    fn only_allowlisted_headers_come_back_from_amazon() {
        let headers = [
            ("x-amzn-requestid", "r-1"),
            ("x-amzn-ratelimit-limit", "0.5"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
            ("location", "https://evil.example/"),
            ("x-amzn-other", "1"),
            ("x-spgate-cache", "hit"),
            ("retry-after", "3"),
        ];
        let dropped = Dropped::default();
        let mut h = map(&headers);
        for_caller(&mut h, http::StatusCode::OK, &dropped);
        let mut left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        left.sort_unstable();
        assert_eq!(
            left,
            ["content-type", "x-amzn-ratelimit-limit", "x-amzn-requestid"]
        );
        assert_eq!(dropped.to_caller(), 6);
        let mut h = map(&headers);
        for_caller(&mut h, http::StatusCode::TOO_MANY_REQUESTS, &dropped);
        assert_eq!(h["retry-after"], "3");
        assert_eq!(dropped.to_caller(), 11);
    }
}
