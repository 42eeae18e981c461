//! The HTTP client of the control plane: LWA token requests, Restricted Data Tokens and audit
//! alert webhooks. reqwest over rustls with ring (the one crypto backend), TLS 1.2 or newer,
//! no redirects (a credential request goes only where it was configured to go), no proxy, and
//! one deadline for the whole exchange. The data plane (proxied SP-API requests) stays on hyper.
//!
//! [`builder`] is where every reqwest client of the gateway starts (this one and the document
//! downloads' in `proxy::outbound`), so none of them reads a proxy from the environment.

use std::time::Duration;

/// The base of every reqwest client the gateway makes: no redirects, and no proxy, not even
/// one `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY` names. reqwest honours those variables by
/// default, which would send LWA client secrets and refresh tokens through a proxy nobody
/// configured for the gateway, and let a proxy resolve document hosts past the outbound
/// policy's checked resolver.
pub fn builder() -> reqwest::ClientBuilder {
    reqwest::ClientBuilder::new()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
}

/// A client whose every exchange ends within `timeout`.
pub fn client(timeout: Duration) -> Result<reqwest::Client, String> {
    builder()
        .use_rustls_tls()
        .min_tls_version(reqwest::tls::Version::TLS_1_2)
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

#[cfg(test)]
mod tests {
    /// Every reqwest client starts from [`super::builder`]: any other way to make one
    /// (`Client::new`, `Client::builder`, `reqwest::get`) reads proxies from the environment.
    #[test]
    fn every_reqwest_client_is_made_from_the_builder_without_env_proxies() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut offenders = Vec::new();
        let mut dirs = vec![src];
        while let Some(dir) = dirs.pop() {
            for entry in std::fs::read_dir(&dir).expect("src is readable") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs")
                    && !path.ends_with("auth/control_plane.rs")
                {
                    let text = std::fs::read_to_string(&path).expect("source is UTF-8");
                    for banned in [
                        "reqwest::Client::new(",
                        "reqwest::Client::builder(",
                        "reqwest::ClientBuilder::new(",
                        "reqwest::get(",
                    ] {
                        if text.contains(banned) {
                            offenders.push(format!("{}: {banned}", path.display()));
                        }
                    }
                }
            }
        }
        assert!(offenders.is_empty(), "{offenders:?}");
    }
}
