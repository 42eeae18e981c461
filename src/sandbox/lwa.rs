//! The fake Login-with-Amazon token endpoint (`POST /auth/o2/token`).
//!
//! Accepts form-encoded bodies (what LWA documents) and JSON bodies (what some SDKs send).
//! Grants: `refresh_token`, `client_credentials` (grantless, with `scope`) and
//! `authorization_code`. Errors use LWA's shape `{"error","error_description"}`:
//! `invalid_request` (400, missing or malformed fields), `unsupported_grant_type` (400),
//! `invalid_client` (401, unknown client or wrong secret), `invalid_grant` (400, unknown or
//! revoked refresh token, unknown or used code), `invalid_scope` (400, a scope no grantless
//! operation uses) and `temporarily_unavailable` (503, while the LWA is down).

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use http::header::{HeaderName, HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderMap, Response, StatusCode};
use ring::digest;
use tokio::time::Instant;

use super::body::{self, BoxBody, ReadBody};
use super::tokens::{self, TokenKind, TokenRecord};
use super::{lock, Inner, Stats};
use crate::catalog::Catalog;
use crate::spapi;

/// The prefix of refresh tokens accepted under open enrollment.
const OPEN_ENROLLMENT_PREFIX: &str = "Atzr|";

/// An LWA error: status, `error` code and `error_description`.
struct LwaError {
    status: StatusCode,
    code: &'static str,
    description: &'static str,
}

impl LwaError {
    const fn new(status: StatusCode, code: &'static str, description: &'static str) -> LwaError {
        LwaError {
            status,
            code,
            description,
        }
    }

    fn bad_request(code: &'static str, description: &'static str) -> LwaError {
        LwaError::new(StatusCode::BAD_REQUEST, code, description)
    }
}

/// Which grant succeeded, for the counters.
#[derive(Clone, Copy)]
enum Grant {
    RefreshToken,
    ClientCredentials,
    AuthorizationCode,
}

/// Answers one LWA request.
pub(super) fn handle(inner: &Inner, headers: &HeaderMap, read: &ReadBody) -> Response<BoxBody> {
    match grant(inner, headers, read) {
        Ok((which, body)) => {
            inner.stat(|s: &mut Stats| match which {
                Grant::RefreshToken => s.lwa_refresh_grants += 1,
                Grant::ClientCredentials => s.lwa_client_credentials_grants += 1,
                Grant::AuthorizationCode => s.lwa_authorization_code_grants += 1,
            });
            tracing::debug!("sandbox lwa: token issued");
            respond(StatusCode::OK, &body)
        }
        Err(error) => {
            inner.stat(|s| s.lwa_errors += 1);
            tracing::debug!(error = error.code, "sandbox lwa: request refused");
            respond(
                error.status,
                &serde_json::json!({
                    "error": error.code,
                    "error_description": error.description,
                }),
            )
        }
    }
}

fn respond(status: StatusCode, body: &serde_json::Value) -> Response<BoxBody> {
    let mut response = Response::new(body::full(serde_json::to_vec(body).unwrap_or_default()));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        HeaderName::from_static(spapi::REQUEST_ID),
        super::request_id_header(),
    );
    response
}

fn grant(
    inner: &Inner,
    headers: &HeaderMap,
    read: &ReadBody,
) -> Result<(Grant, serde_json::Value), LwaError> {
    if inner.lwa_down.load(Ordering::SeqCst) {
        return Err(LwaError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The authorization server is temporarily unavailable.",
        ));
    }
    let params = parse_params(headers, read)?;
    let field = |name: &str| {
        params
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    };
    let grant_type = field("grant_type")
        .ok_or_else(|| LwaError::bad_request("invalid_request", "grant_type is required."))?;
    let which = match grant_type {
        "refresh_token" => Grant::RefreshToken,
        "client_credentials" => Grant::ClientCredentials,
        "authorization_code" => Grant::AuthorizationCode,
        _ => {
            return Err(LwaError::bad_request(
                "unsupported_grant_type",
                "The grant type is not supported.",
            ))
        }
    };
    let required: &[&str] = match which {
        Grant::RefreshToken => &["client_id", "client_secret", "refresh_token"],
        Grant::ClientCredentials => &["client_id", "client_secret", "scope"],
        Grant::AuthorizationCode => &["client_id", "client_secret", "code", "redirect_uri"],
    };
    if required.iter().any(|name| field(name).is_none()) {
        return Err(LwaError::bad_request(
            "invalid_request",
            "The request is missing a required parameter.",
        ));
    }
    let client_id = field("client_id").unwrap_or_default();
    let client_secret = field("client_secret").unwrap_or_default();
    if !client_ok(inner, client_id, client_secret) {
        return Err(LwaError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        ));
    }

    let ttl = inner.config.access_token_ttl;
    let (seller, scope, refresh_token) = match which {
        Grant::RefreshToken => {
            let refresh_token = field("refresh_token").unwrap_or_default();
            let seller = seller_for_refresh_token(inner, refresh_token).ok_or_else(|| {
                LwaError::bad_request(
                    "invalid_grant",
                    "The request has an invalid grant parameter : refresh_token",
                )
            })?;
            (Some(seller), None, Some(refresh_token.to_owned()))
        }
        Grant::AuthorizationCode => {
            let code = field("code").unwrap_or_default();
            let mut lwa = lock(&inner.lwa);
            let (seller, refresh_token) = lwa.codes.remove(code).ok_or_else(|| {
                LwaError::bad_request(
                    "invalid_grant",
                    "The request has an invalid grant parameter : code",
                )
            })?;
            lwa.revoked.remove(&refresh_token);
            lwa.sellers.insert(refresh_token.clone(), seller.clone());
            (Some(seller), None, Some(refresh_token))
        }
        Grant::ClientCredentials => {
            let scope = field("scope").unwrap_or_default();
            let known = Catalog::builtin()
                .operations()
                .iter()
                .any(|op| op.grantless_scope == Some(scope));
            if !known {
                return Err(LwaError::bad_request(
                    "invalid_scope",
                    "The requested scope is invalid, unknown, or malformed.",
                ));
            }
            (None, Some(scope.to_owned()), None)
        }
    };
    let kind = match which {
        Grant::ClientCredentials => TokenKind::Grantless,
        Grant::RefreshToken | Grant::AuthorizationCode => TokenKind::Access,
    };
    let access_token = lock(&inner.tokens)
        .issue(TokenRecord {
            kind,
            seller,
            client_id: client_id.to_owned(),
            scope,
            expires_at: Instant::now() + ttl,
            resources: Vec::new(),
        })
        .map_err(|_| {
            LwaError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "server_error",
                "The authorization server could not generate a token.",
            )
        })?;
    let mut body = serde_json::json!({
        "access_token": access_token,
        "token_type": "bearer",
        "expires_in": ttl.as_secs(),
    });
    if let (Some(refresh_token), Some(map)) = (refresh_token, body.as_object_mut()) {
        map.insert("refresh_token".to_owned(), refresh_token.into());
    }
    Ok((which, body))
}

/// The request's parameters: JSON object when the content type says JSON, form otherwise.
fn parse_params(headers: &HeaderMap, read: &ReadBody) -> Result<HashMap<String, String>, LwaError> {
    let malformed = || LwaError::bad_request("invalid_request", "The request body is malformed.");
    let bytes = read.bytes.as_ref().ok_or_else(malformed)?;
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| {
            ct.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if !is_json {
        return Ok(form_urlencoded::parse(bytes)
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect());
    }
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|_| malformed())?;
    let object = value.as_object().ok_or_else(malformed)?;
    Ok(object
        .iter()
        .filter_map(|(k, v)| {
            let v = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return None,
            };
            Some((k.clone(), v))
        })
        .collect())
}

/// Whether (client_id, client_secret) is one of the configured pairs.
fn client_ok(inner: &Inner, client_id: &str, client_secret: &str) -> bool {
    // Check every pair without stopping early, so timing does not reveal which matched.
    inner
        .config
        .lwa_clients
        .iter()
        .fold(false, |ok, (id, secret)| {
            let matched = tokens::constant_time_eq(id.as_bytes(), client_id.as_bytes())
                & tokens::constant_time_eq(secret.as_bytes(), client_secret.as_bytes());
            ok | matched
        })
}

/// The seller a refresh token belongs to: registered, or derived under open enrollment.
fn seller_for_refresh_token(inner: &Inner, refresh_token: &str) -> Option<String> {
    let lwa = lock(&inner.lwa);
    if lwa.revoked.contains(refresh_token) {
        return None;
    }
    if let Some(seller) = lwa.sellers.get(refresh_token) {
        return Some(seller.clone());
    }
    (inner.config.open_enrollment && refresh_token.starts_with(OPEN_ENROLLMENT_PREFIX))
        .then(|| open_enrollment_seller(refresh_token))
}

/// "A" followed by the first 12 uppercase hex characters of the refresh token's SHA-256.
pub(super) fn open_enrollment_seller(refresh_token: &str) -> String {
    let digest = digest::digest(&digest::SHA256, refresh_token.as_bytes());
    let hex: String = digest.as_ref()[..6]
        .iter()
        .map(|b| format!("{b:02X}"))
        .collect();
    format!("A{hex}")
}
