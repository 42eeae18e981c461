//! Header hygiene between the caller, the gateway and SP-API.
//!
//! Hop-by-hop headers (RFC 9110 section 7.6.1) belong to one connection and are never forwarded
//! in either direction, nor are headers the `Connection` header names. Caller credentials
//! (`Authorization`, a drop-in `x-amz-access-token`) and the gateway's own `x-spgate-*` headers
//! never reach Amazon.

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

/// The header naming the seller a request acts for.
pub const SELLER: HeaderName = HeaderName::from_static("x-spgate-seller");

/// Removes hop-by-hop headers, including those listed in `Connection`.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
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

/// Prepares a caller's headers for SP-API: hop-by-hop, caller credentials, `Host` and the
/// gateway's own headers are removed. The caller's `Content-Length`, `Content-Type`,
/// `User-Agent` and other end-to-end headers are kept.
pub fn for_upstream(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(crate::spapi::ACCESS_TOKEN);
    // SigV4 headers from a caller are meaningless once the credentials change.
    headers.remove("x-amz-date");
    headers.remove("x-amz-security-token");
    let ours: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with(SPGATE_PREFIX))
        .cloned()
        .collect();
    for name in ours {
        headers.remove(name);
    }
}

/// Prepares SP-API's response headers for the caller: hop-by-hop headers are removed; Amazon's
/// `x-amzn-RequestId`, `x-amzn-RateLimit-Limit` and other end-to-end headers pass.
pub fn for_caller(headers: &mut HeaderMap) {
    strip_hop_by_hop(headers);
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
    fn caller_credentials_and_hop_by_hop_headers_never_reach_amazon() {
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
            ("content-type", "application/json"),
            ("user-agent", "my-tool/1.0"),
            ("x-amz-date", "20260101T000000Z"),
        ]);
        for_upstream(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["content-type", "user-agent"]);
    }

    #[test]
    fn amazons_response_headers_pass_but_hop_by_hop_ones_do_not() {
        let mut h = map(&[
            ("x-amzn-requestid", "r-1"),
            ("x-amzn-ratelimit-limit", "0.5"),
            ("connection", "close"),
            ("transfer-encoding", "chunked"),
            ("content-type", "application/json"),
        ]);
        for_caller(&mut h);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(
            left,
            ["x-amzn-requestid", "x-amzn-ratelimit-limit", "content-type"]
        );
    }
}
