//! The HTTP client of the control plane: LWA token requests, Restricted Data Tokens and audit
//! alert webhooks. reqwest over rustls with ring (the one crypto backend), TLS 1.2 or newer,
//! no redirects (a credential request goes only where it was configured to go), and one
//! deadline for the whole exchange. The data plane (proxied SP-API requests) stays on hyper.

use std::time::Duration;

/// A client whose every exchange ends within `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        .build()
        .map_err(|e| describe(&e))
}

/// A reqwest error without its URL (errors name failures, not addresses, which may carry
/// tokens).
pub fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else if e.is_body() || e.is_decode() {
        "answer unreadable"
    } else {
        "request failed"
    };
    match std::error::Error::source(e) {
        Some(source) => format!("{kind}: {source}"),
        None => kind.to_string(),
    }
}
