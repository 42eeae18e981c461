//! Who is calling us: seller tools authenticate with an API key (`Authorization: Bearer
//! spg_...`) and name the seller they act for in `x-spgate-seller`; or, in drop-in mode, with a
//! gateway access token in `x-amz-access-token` that already names its seller.
//!
//! Keys are 256-bit random tokens. Only their SHA-256 is stored; a key is shown once, when it is
//! created. (A slow password hash would add nothing: the keys have full entropy.)

use http::{HeaderMap, HeaderName};

use crate::crypto::{self, CryptoError};
use crate::secret::Secret;
use crate::server::tls::{ClientPins, PeerCert};
use crate::store::{ClientRecord, Store, StoreError};

/// The header naming the seller a request acts for.
pub const SELLER: HeaderName = HeaderName::from_static("x-spgate-seller");

/// Prefix of every gateway API key.
pub const KEY_PREFIX: &str = "spg_";

/// Why a caller was turned away. Messages never carry the key.
#[derive(Debug, thiserror::Error)]
pub enum CallerError {
    /// No `Authorization: Bearer` header.
    #[error("missing API key")]
    MissingKey,
    /// The bearer value is not a gateway key.
    #[error("malformed API key")]
    MalformedKey,
    /// No client has this key, or it was revoked.
    #[error("unknown or revoked API key")]
    UnknownKey,
    /// A drop-in gateway token (`x-amz-access-token`) that has expired: answered as Amazon
    /// answers an expired access token, so SDKs refresh.
    #[error("the gateway access token has expired")]
    TokenExpired,
    /// A drop-in gateway token that is unknown, malformed, or whose tool was revoked.
    #[error("the gateway access token is revoked, malformed or invalid")]
    TokenInvalid,
    /// The request names no seller.
    #[error("missing x-spgate-seller header")]
    MissingSeller,
    /// The client may not act for this seller.
    #[error("this tool may not act for that seller")]
    SellerNotAllowed,
    /// The operation acts for the whole application; only tools allowed every seller may call it.
    #[error("this operation needs a tool allowed for all sellers")]
    ApplicationWide,
    /// The tool must present one of its pinned client certificates, and this connection did not.
    #[error("the tool's client certificate is missing or not the pinned one")]
    ClientCertificate,
    /// The store could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// A newly created key: shown to the operator once, never stored.
pub struct NewKey {
    /// The key itself.
    pub key: Secret<String>,
    /// The client record holding its hash.
    pub client: ClientRecord,
}

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The tool.
    pub client: ClientRecord,
    /// The seller a drop-in token is bound to (`None` for API keys).
    pub token_seller: Option<String>,
    /// How the caller authenticated.
    pub via: Via,
}

/// How a caller authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// `Authorization: Bearer spg_...`.
    ApiKey,
    /// A gateway access token in `x-amz-access-token` (drop-in mode).
    DropInToken,
    /// A document link the gateway issued to the tool (the link is the credential).
    DocumentLink,
    /// A gateway Restricted Data Token in `x-amz-access-token`
    /// (`proxy::endpoints::rdt`), good only for its resources.
    GatewayRdt,
}

/// Authenticates the caller: an API key if `Authorization` carries one, else a drop-in gateway
/// token in `x-amz-access-token` (SDKs may also send a stale SigV4 `Authorization`, ignored
/// then). Revoked tools are unknown.
pub async fn authenticate(
    store: &dyn Store,
    headers: &HeaderMap,
    now: i64,
) -> Result<Caller, CallerError> {
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let has_key = auth.is_some_and(|a| {
        let a = a.trim_start();
        (a.starts_with("Bearer ") || a.starts_with("bearer "))
            && a[7..].trim_start().starts_with(KEY_PREFIX)
    });
    if !has_key {
        if let Some(token) = headers.get(crate::spapi::ACCESS_TOKEN) {
            let token = token
                .to_str()
                .map_err(|_| CallerError::TokenInvalid)?
                .trim();
            let Some(found) = store
                .gateway_token(&crypto::sha256_hex(token.as_bytes()), now)
                .await?
            else {
                // Expired tokens are purged from the store; the expiry the token names tells
                // the two answers apart (a forged one only chooses which refusal it gets).
                return Err(match crate::auth::drop_in::token_expiry(token) {
                    Some(expires_at) if expires_at <= now => CallerError::TokenExpired,
                    _ => CallerError::TokenInvalid,
                });
            };
            let client = store
                .client(&found.client_id)
                .await?
                .ok_or(CallerError::TokenInvalid)?;
            if client.revoked_at.is_some() {
                return Err(CallerError::TokenInvalid);
            }
            return Ok(Caller {
                client,
                token_seller: Some(found.seller),
                via: Via::DropInToken,
            });
        }
    }
    let client = authenticate_key(store, headers).await?;
    Ok(Caller {
        client,
        token_seller: None,
        via: Via::ApiKey,
    })
}

/// [`authenticate`], then the second factor: a tool with pinned client certificates
/// (`[tools.<name>] client_cert_spki_sha256`, the gateway's `pins`) must have presented one of
/// them on this TLS connection ([`PeerCert`], attached by the listener).
pub async fn authenticate_request<B>(
    store: &dyn Store,
    pins: &ClientPins,
    req: &http::Request<B>,
    now: i64,
) -> Result<Caller, CallerError> {
    let caller = authenticate(store, req.headers(), now).await?;
    check_client_cert(&caller, pins, req.extensions().get::<PeerCert>())?;
    Ok(caller)
}

/// Whether the connection's client certificate satisfies the tool's pins: those of the
/// gateway and those of the listener the connection came in on. A pinned tool on a connection
/// without a [`PeerCert`] (plain HTTP) is refused: what cannot be checked is not served.
pub fn check_client_cert(
    caller: &Caller,
    pins: &ClientPins,
    peer: Option<&PeerCert>,
) -> Result<(), CallerError> {
    let tool = &caller.client.tool;
    let listener_pins = peer.and_then(|p| p.pins.get(tool));
    if pins.get(tool).is_none() && listener_pins.is_none() {
        return Ok(());
    }
    let spki = peer.and_then(|p| p.spki_sha256);
    let matches = |set: Option<&Vec<crate::server::tls::SpkiPin>>| {
        set.is_none_or(|set| spki.is_some_and(|s| set.contains(&s)))
    };
    if spki.is_some() && matches(pins.get(tool)) && matches(listener_pins) {
        Ok(())
    } else {
        Err(CallerError::ClientCertificate)
    }
}

async fn authenticate_key(
    store: &dyn Store,
    headers: &HeaderMap,
) -> Result<ClientRecord, CallerError> {
    let value = headers
        .get(http::header::AUTHORIZATION)
        .ok_or(CallerError::MissingKey)?;
    let value = value.to_str().map_err(|_| CallerError::MalformedKey)?;
    let key = value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .ok_or(CallerError::MalformedKey)?
        .trim();
    if !key.starts_with(KEY_PREFIX) || key.len() > 128 {
        return Err(CallerError::MalformedKey);
    }
    let client = store
        .client_by_key_hash(&crypto::sha256_hex(key.as_bytes()))
        .await?
        .ok_or(CallerError::UnknownKey)?;
    if client.revoked_at.is_some() {
        return Err(CallerError::UnknownKey);
    }
    Ok(client)
}

/// The seller a request acts for, checked against what the caller may do. A drop-in token names
/// its seller; `x-spgate-seller`, if also sent, must agree.
pub fn seller<'a>(caller: &'a Caller, headers: &'a HeaderMap) -> Result<&'a str, CallerError> {
    let named = headers
        .get(SELLER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|s| !s.is_empty());
    let seller = match (&caller.token_seller, named) {
        (Some(bound), Some(named)) if bound != named => return Err(CallerError::SellerNotAllowed),
        (Some(bound), _) => bound.as_str(),
        (None, Some(named)) => named,
        (None, None) => return Err(CallerError::MissingSeller),
    };
    if !caller.client.allows_seller(seller) {
        return Err(CallerError::SellerNotAllowed);
    }
    Ok(seller)
}

/// Creates a client with a fresh key and stores it. The key is returned once.
pub async fn create_client(
    store: &dyn Store,
    tool: &str,
    role: &str,
    sellers: Vec<String>,
    now: i64,
) -> Result<NewKey, CreateClientError> {
    let key = format!("{KEY_PREFIX}{}", crypto::random_token::<32>()?);
    let client = ClientRecord {
        id: format!("cli_{}", crypto::random_token::<9>()?),
        tool: tool.to_string(),
        role: role.to_string(),
        sellers,
        key_hash: crypto::sha256_hex(key.as_bytes()),
        key_prefix: key[..KEY_PREFIX.len() + 6].to_string(),
        created_at: now,
        revoked_at: None,
    };
    store.insert_client(&client).await?;
    Ok(NewKey {
        key: Secret::new(key),
        client,
    })
}

/// Why a client could not be created.
#[derive(Debug, thiserror::Error)]
pub enum CreateClientError {
    /// No randomness.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}
