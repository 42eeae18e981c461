//! `NextToken` of a translated `getOrders`: a gateway token wrapping the 2026 `paginationToken`.
//!
//! Amazon's 2026 search wants every other parameter repeated with the token, so the gateway
//! token carries the translated query too. It is sealed under the master key, bound to the tool
//! and the seller (associated data), and expires when the 2026 token does (24 hours after it
//! was issued), so any instance can open it and nobody else can read or forge it.

use serde::{Deserialize, Serialize};

use super::CompatError;
use crate::crypto::MasterKey;
use crate::secret::Secret;

/// What a gateway `NextToken` starts with.
pub const PREFIX: &str = "spgate-v0-next.";

/// How long a 2026 pagination token lives (Amazon: "The token will expire after 24 hours").
pub const LIFETIME_SECONDS: i64 = 24 * 60 * 60;

/// The contents of a gateway `NextToken`.
pub struct Claims {
    /// Amazon's 2026 `paginationToken`.
    pub token: Secret<String>,
    /// The translated 2026 query of the first page (without `paginationToken`).
    pub query: String,
    /// Unix time after which the token is refused.
    pub expires: i64,
}

/// The sealed plaintext.
#[derive(Serialize, Deserialize)]
struct Wire {
    t: String,
    q: String,
    e: i64,
}

impl std::fmt::Debug for Claims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claims")
            .field("token", &self.token)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

fn aad(tool: &str, seller: &str) -> Vec<u8> {
    format!("spgate-compat-next-token\0{tool}\0{seller}").into_bytes()
}

/// Seals a 2026 token (and the query it belongs to) for `tool` acting for `seller`.
pub fn wrap(
    key: &MasterKey,
    tool: &str,
    seller: &str,
    token: &str,
    query: &str,
    now: i64,
) -> Result<String, CompatError> {
    let wire = Wire {
        t: token.to_string(),
        q: query.to_string(),
        e: now + LIFETIME_SECONDS,
    };
    let plain = serde_json::to_vec(&wire).map_err(|_| CompatError::TokenSeal)?;
    let sealed = key
        .seal(&plain, &aad(tool, seller))
        .map_err(|_| CompatError::TokenSeal)?;
    Ok(format!("{PREFIX}{sealed}"))
}

/// Opens a gateway token; refuses one that is not the gateway's, is for another tool or seller,
/// or has expired.
pub fn unwrap(
    key: &MasterKey,
    tool: &str,
    seller: &str,
    wrapped: &str,
    now: i64,
) -> Result<Claims, CompatError> {
    let sealed = wrapped
        .strip_prefix(PREFIX)
        .ok_or(CompatError::TokenInvalid)?;
    let plain = key
        .open(sealed, &aad(tool, seller))
        .map_err(|_| CompatError::TokenInvalid)?;
    let wire: Wire =
        serde_json::from_slice(plain.expose()).map_err(|_| CompatError::TokenInvalid)?;
    if now >= wire.e {
        return Err(CompatError::TokenExpired);
    }
    Ok(Claims {
        token: Secret::new(wire.t),
        query: wire.q,
        expires: wire.e,
    })
}
