//! Drop-in mode: an LWA-compatible token endpoint on the proxy listener, so an unmodified SP-API
//! SDK works by changing two URLs (SP-API endpoint and LWA token URL).
//!
//! A tool is given a gateway client id, client secret and refresh token that together stand for
//! one (tool, seller). `POST /auth/o2/token` (form-encoded or JSON, as real SDKs send both)
//! exchanges them for a short-lived gateway access token, which the SDK then sends in
//! `x-amz-access-token` exactly as it would to Amazon. Only hashes of the secret, the refresh
//! token and issued access tokens are stored. Real Amazon tokens never appear in any response.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::crypto::{self, CryptoError};
use crate::secret::Secret;
use crate::store::{DropInRecord, GatewayToken, Store, StoreError};

/// The path of the token endpoint, as LWA's.
pub const TOKEN_PATH: &str = "/auth/o2/token";
/// Lifetime of gateway access tokens (SDKs expect at least an hour).
pub const TOKEN_LIFETIME_SECONDS: i64 = 3600;
/// Prefix of gateway access tokens.
pub const TOKEN_PREFIX: &str = "spgat_";
/// Largest token request body accepted.
pub const MAX_TOKEN_REQUEST_BYTES: usize = 16 * 1024;

/// Why a token request was refused; each maps to LWA's error code.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// A field is missing or the body cannot be parsed (`invalid_request`).
    #[error("invalid token request: {0}")]
    InvalidRequest(&'static str),
    /// Only `refresh_token` is supported (`unsupported_grant_type`).
    #[error("unsupported grant type")]
    UnsupportedGrantType,
    /// Unknown client id or wrong secret (`invalid_client`).
    #[error("unknown client or wrong secret")]
    InvalidClient,
    /// Wrong or revoked refresh token, or the tool was revoked (`invalid_grant`).
    #[error("refresh token is not valid")]
    InvalidGrant,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No randomness.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Credentials handed to a tool once, at creation.
pub struct DropInCredentials {
    /// Gateway LWA client id.
    pub lwa_client_id: String,
    /// Gateway LWA client secret.
    pub client_secret: Secret<String>,
    /// Gateway refresh token for (tool, seller).
    pub refresh_token: Secret<String>,
}

/// LWA's success shape.
#[derive(Serialize)]
pub struct TokenResponse {
    /// The gateway access token.
    pub access_token: String,
    /// Always `bearer`.
    pub token_type: &'static str,
    /// Seconds until it expires.
    pub expires_in: i64,
    /// The refresh token the caller presented.
    pub refresh_token: String,
}

impl std::fmt::Debug for TokenResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenResponse")
            .field("access_token", &"**REDACTED**")
            .field("token_type", &self.token_type)
            .field("expires_in", &self.expires_in)
            .field("refresh_token", &"**REDACTED**")
            .finish()
    }
}

#[derive(Default, Deserialize)]
struct TokenRequest {
    grant_type: Option<String>,
    client_id: Option<String>,
    client_secret: Option<String>,
    refresh_token: Option<String>,
}

/// Creates drop-in credentials for an existing client and one seller.
pub async fn create(
    store: &dyn Store,
    client_id: &str,
    seller: &str,
) -> Result<DropInCredentials, TokenError> {
    let lwa_client_id = format!(
        "spgate-dropin-{}",
        crypto::hex(&crypto::random_bytes::<8>()?)
    );
    let client_secret = Secret::new(format!("spgcs_{}", crypto::random_token::<32>()?));
    let refresh_token = Secret::new(format!("spgrt_{}", crypto::random_token::<32>()?));
    store
        .insert_drop_in(&DropInRecord {
            lwa_client_id: lwa_client_id.clone(),
            secret_hash: crypto::sha256_hex(client_secret.expose().as_bytes()),
            refresh_hash: crypto::sha256_hex(refresh_token.expose().as_bytes()),
            client_id: client_id.to_string(),
            seller: seller.to_string(),
        })
        .await?;
    Ok(DropInCredentials {
        lwa_client_id,
        client_secret,
        refresh_token,
    })
}

/// Answers a token request body (form-encoded or JSON).
pub async fn issue(
    store: &dyn Store,
    content_type: Option<&str>,
    body: &Bytes,
    now: i64,
) -> Result<TokenResponse, TokenError> {
    let req = parse(content_type, body)?;
    match req.grant_type.as_deref() {
        Some("refresh_token") => {}
        Some(_) => return Err(TokenError::UnsupportedGrantType),
        None => return Err(TokenError::InvalidRequest("grant_type is required")),
    }
    let client_id = req
        .client_id
        .ok_or(TokenError::InvalidRequest("client_id is required"))?;
    let secret = Secret::new(
        req.client_secret
            .ok_or(TokenError::InvalidRequest("client_secret is required"))?,
    );
    let refresh = Secret::new(
        req.refresh_token
            .ok_or(TokenError::InvalidRequest("refresh_token is required"))?,
    );
    let record = store
        .drop_in(&client_id)
        .await?
        .ok_or(TokenError::InvalidClient)?;
    if !hash_matches(secret.expose(), &record.secret_hash) {
        return Err(TokenError::InvalidClient);
    }
    if !hash_matches(refresh.expose(), &record.refresh_hash) {
        return Err(TokenError::InvalidGrant);
    }
    let client = store
        .client(&record.client_id)
        .await?
        .ok_or(TokenError::InvalidGrant)?;
    if client.revoked_at.is_some() || !client.allows_seller(&record.seller) {
        return Err(TokenError::InvalidGrant);
    }
    let expires_at = now + TOKEN_LIFETIME_SECONDS;
    let token = format!(
        "{TOKEN_PREFIX}{expires_at}.{}",
        crypto::random_token::<32>()?
    );
    store
        .insert_gateway_token(
            &GatewayToken {
                token_hash: crypto::sha256_hex(token.as_bytes()),
                client_id: client.id,
                seller: record.seller,
                expires_at,
            },
            now,
        )
        .await?;
    Ok(TokenResponse {
        access_token: token,
        token_type: "bearer",
        expires_in: TOKEN_LIFETIME_SECONDS,
        refresh_token: refresh.expose().clone(),
    })
}

/// The expiry (unix seconds) a gateway access token names: `spgat_<expiry>.<random>`. Only
/// chooses between Amazon's two answers for a token the store does not know ("has expired" or
/// "is revoked, malformed or invalid"); the store alone decides whether a token is valid.
pub fn token_expiry(token: &str) -> Option<i64> {
    let rest = token.strip_prefix(TOKEN_PREFIX)?;
    let (expiry, random) = rest.split_once('.')?;
    if random.is_empty() || expiry.is_empty() || !expiry.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    expiry.parse().ok()
}

fn parse(content_type: Option<&str>, body: &Bytes) -> Result<TokenRequest, TokenError> {
    let json = content_type.is_some_and(|ct| ct.to_ascii_lowercase().contains("json"))
        || body.first().is_some_and(|b| *b == b'{');
    if json {
        return serde_json::from_slice(body)
            .map_err(|_| TokenError::InvalidRequest("body is not valid JSON"));
    }
    let mut req = TokenRequest::default();
    for (k, v) in form_urlencoded::parse(body) {
        let slot = match k.as_ref() {
            "grant_type" => &mut req.grant_type,
            "client_id" => &mut req.client_id,
            "client_secret" => &mut req.client_secret,
            "refresh_token" => &mut req.refresh_token,
            _ => continue,
        };
        *slot = Some(v.into_owned());
    }
    Ok(req)
}

/// Compares a presented secret with a stored hash, in constant time (digests, not the secrets,
/// and no early exit at the first differing byte).
fn hash_matches(value: &str, expected_hex: &str) -> bool {
    crypto::constant_time_eq(
        crypto::sha256_hex(value.as_bytes()).as_bytes(),
        expected_hex.as_bytes(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_its_expiry_and_anything_else_names_none() {
        assert_eq!(token_expiry("spgat_1765000000.abc"), Some(1_765_000_000));
        for other in [
            "spgat_abc",
            "spgat_.abc",
            "spgat_1765000000.",
            "spgat_-5.abc",
            "spgat_99999999999999999999999.abc",
            "Atza|1765000000.abc",
            "",
        ] {
            assert_eq!(token_expiry(other), None, "{other}");
        }
    }
}
