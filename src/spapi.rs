//! SP-API wire shapes shared by the gateway and the sandbox: the error body and header names.
//!
//! Amazon answers errors as `{"errors":[{"code","message","details"}]}`. The gateway answers its
//! own errors in the same shape so SDKs parse them like Amazon's.

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Amazon's request id header, passed back to callers.
pub const REQUEST_ID: &str = "x-amzn-requestid";
/// Amazon's rate limit header (requests per second for the account-application pair).
pub const RATE_LIMIT_LIMIT: &str = "x-amzn-ratelimit-limit";
/// The header carrying the LWA access token or Restricted Data Token.
pub const ACCESS_TOKEN: &str = "x-amz-access-token";

/// Whether an error body talks about the access token (case-insensitive): SP-API's 403s for an
/// expired or revoked token say so ("The access token you provided has expired.").
pub fn mentions_access_token(body: &[u8]) -> bool {
    body.windows(12)
        .any(|w| w.eq_ignore_ascii_case(b"access token"))
}

/// SP-API's error response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// One or more errors; SP-API always sends at least one.
    pub errors: Vec<ErrorItem>,
}

/// One entry of [`ErrorBody::errors`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorItem {
    /// Machine-readable code, e.g. `QuotaExceeded`, `Unauthorized`, `InvalidInput`, `NotFound`.
    pub code: String,
    /// Human-readable message. Never carries PII, tokens or secrets.
    pub message: String,
    /// Extra detail; Amazon sends an empty string when there is none.
    #[serde(default)]
    pub details: String,
}

// === impl ErrorBody ===

impl ErrorBody {
    /// One error with the given code, message and details.
    pub fn one(code: &str, message: &str, details: &str) -> ErrorBody {
        ErrorBody {
            errors: vec![ErrorItem {
                code: code.to_owned(),
                message: message.to_owned(),
                details: details.to_owned(),
            }],
        }
    }

    /// Serialized JSON bytes.
    pub fn to_bytes(&self) -> Bytes {
        // Serializing plain strings into JSON cannot fail.
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }
}
