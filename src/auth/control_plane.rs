//! The HTTP client of the control plane: LWA token requests, Restricted Data Tokens and audit
//! alert webhooks. reqwest over rustls with ring (the one crypto backend), TLS 1.2 or newer,
//! no redirects (a credential request goes only where it was configured to go), no proxy, and
//! one deadline for the whole exchange. The data plane (proxied SP-API requests) stays on hyper.
//!
//! [`builder`] is where every reqwest client of the gateway starts (this one and the document
//! downloads' in `proxy::outbound`), so none of them reads a proxy from the environment. Clippy
//! enforces it (`clippy.toml` `disallowed-methods`: `Client::new`, `Client::builder`,
//! `ClientBuilder::new`, `reqwest::get`, matched on resolved paths, so aliases do not get around
//! it); [`builder`] is the one place allowed to call them. The `Default` impls cannot be named
//! there, so a test here looks for them.

use std::time::Duration;

/// The base of every reqwest client the gateway makes: no redirects, and no proxy, not even
/// one `HTTP_PROXY`, `HTTPS_PROXY` or `ALL_PROXY` names. reqwest honours those variables by
/// default, which would send LWA client secrets and refresh tokens through a proxy nobody
/// configured for the gateway, and let a proxy resolve document hosts past the outbound
/// policy's checked resolver.
#[allow(clippy::disallowed_methods)] // The one shared builder: no proxy, no redirects.
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
    /// What clippy's `disallowed-methods` cannot name: reqwest's `Default` impls (a trait
    /// method has no path of its own) and a proxy added on top of [`super::builder`]. Looked for
    /// in every Rust source of the package (`src`, `tests`, `benches`, `examples`, `build.rs`).
    #[test]
    fn no_reqwest_client_is_made_by_default_or_given_a_proxy() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut offenders = Vec::new();
        let mut files = vec![root.join("build.rs")];
        let mut dirs: Vec<_> = ["src", "tests", "benches", "examples"]
            .iter()
            .map(|d| root.join(d))
            .collect();
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    dirs.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") {
                    files.push(path);
                }
            }
        }
        let this = root.join("src/auth/control_plane.rs");
        let mut read = 0;
        for path in files.iter().filter(|p| **p != this) {
            let Ok(text) = std::fs::read_to_string(path) else {
                continue;
            };
            read += 1;
            let banned = [
                "Client::default(",
                "ClientBuilder::default(",
                ".proxy(reqwest::",
                "reqwest::Proxy::",
            ];
            for banned in banned {
                if text.contains(banned) {
                    offenders.push(format!("{}: {banned}", path.display()));
                }
            }
        }
        assert!(read > 10, "the sources were found ({read})");
        assert!(offenders.is_empty(), "{offenders:?}");
    }
}
