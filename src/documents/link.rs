//! Short-lived signed links to report documents: `/v1/documents/{token}`.
//!
//! The token carries its claims sealed (AES-256-GCM under the master key, associated data
//! `document-link`), so any gateway instance with the same master key can serve it without shared
//! state, and the tool can read nothing from it: the upstream URL is a presigned S3 URL, itself a
//! bearer credential. A token is the sealed value `v1:<key id>:<base64url>` with its two colons
//! written as dots, so it is one URL path segment of `[A-Za-z0-9_.-]`.

use serde::{Deserialize, Serialize};

use super::DocumentError;
use crate::crypto::MasterKey;

/// The associated data every document link is sealed with.
const AAD: &[u8] = b"document-link";

/// How long a link may live at most; [`DEFAULT_TTL_SECONDS`] is what the gateway uses.
pub const MAX_TTL_SECONDS: i64 = 3600;

/// The lifetime of a freshly issued link.
pub const DEFAULT_TTL_SECONDS: i64 = 300;

/// What a document link grants: one upstream document, for one seller, tool and role, until
/// `expires_at`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkClaims {
    /// The presigned upstream URL (a bearer credential: never logged).
    pub url: String,
    /// `compressionAlgorithm` from getReportDocument (e.g. `GZIP`), if any.
    pub compression: Option<String>,
    /// The selling partner the document belongs to.
    pub seller_id: String,
    /// The tool the link was issued to.
    pub tool: String,
    /// That tool's client id: the download is served while this client exists, is not
    /// revoked and may act for the seller (the link is the credential, no header needed).
    #[serde(default)]
    pub client_id: String,
    /// The role whose policy redacts the document.
    pub role: String,
    /// The document's id (the report document id, or the request's path parameters).
    pub document_id: String,
    /// An opaque buyer document (label, invoice, photo, web page): served only to roles that
    /// pass `document`, never sniffed and redacted field by field.
    #[serde(default)]
    pub opaque: bool,
    /// Expiry, unix seconds.
    pub expires_at: i64,
}

impl std::fmt::Debug for LinkClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkClaims")
            .field("url", &"**REDACTED**")
            .field("compression", &self.compression)
            .field("seller_id", &self.seller_id)
            .field("tool", &self.tool)
            .field("client_id", &self.client_id)
            .field("role", &self.role)
            .field("document_id", &self.document_id)
            .field("opaque", &self.opaque)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Seals `claims` into a token for `/v1/documents/{token}`. The expiry must lie in
/// `(now, now + MAX_TTL_SECONDS]`.
pub fn issue(key: &MasterKey, claims: &LinkClaims, now: i64) -> Result<String, DocumentError> {
    if claims.expires_at <= now || claims.expires_at - now > MAX_TTL_SECONDS {
        return Err(DocumentError::BadExpiry {
            max_seconds: MAX_TTL_SECONDS,
        });
    }
    let plain = serde_json::to_vec(claims).map_err(|_| DocumentError::LinkInvalid)?;
    let sealed = key.seal(&plain, AAD)?;
    Ok(sealed.replacen(':', ".", 2))
}

/// Opens a token made by [`issue`]; expired, tampered, malformed or foreign tokens (sealed under
/// a key this gateway does not hold) are rejected.
pub fn open(key: &MasterKey, token: &str, now: i64) -> Result<LinkClaims, DocumentError> {
    let valid_chars = token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !valid_chars || token.bytes().filter(|&b| b == b'.').count() != 2 {
        return Err(DocumentError::LinkInvalid);
    }
    let sealed = token.replacen('.', ":", 2);
    let plain = key
        .open(&sealed, AAD)
        .map_err(|_| DocumentError::LinkInvalid)?;
    let claims: LinkClaims =
        serde_json::from_slice(plain.expose()).map_err(|_| DocumentError::LinkInvalid)?;
    if now >= claims.expires_at {
        return Err(DocumentError::LinkExpired);
    }
    Ok(claims)
}
