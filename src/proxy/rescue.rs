//! The only place that turns an error into an HTTP response.
//!
//! Every phase of the pipeline returns a [`ProxyError`]; [`rescue`] maps each variant to a status
//! and an SP-API-shaped body. The match is exhaustive, so a new variant cannot be forgotten. The
//! caller gets a generic message; the detail goes to the operational log (errors in this crate
//! never carry PII, tokens or secrets).

use http::{header, HeaderValue, Response, StatusCode};

use super::body::{self, Body};
use crate::auth::caller::CallerError;
use crate::auth::drop_in::TokenError;
use crate::auth::lwa::LwaError;
use crate::auth::onboarding::{self, OnboardingError};
use crate::auth::rdt::RdtError;
use crate::proxy::endpoints::rdt::GatewayRdtError;
use crate::proxy::upstream::UpstreamError;
use crate::ratelimit::RateLimitError;
use crate::server::peers::{BodyReadError, PeerError};
use crate::spapi::ErrorBody;
use crate::store::StoreError;

pub mod log_limit;

/// Everything that can end a request early.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Header names and values exceed `server.max_header_bytes`.
    #[error("request headers exceed {limit} bytes")]
    HeadersTooLarge {
        /// The limit.
        limit: usize,
    },
    /// The body exceeds `server.max_request_body_bytes`.
    #[error("request body exceeds {limit} bytes")]
    BodyTooLarge {
        /// The limit.
        limit: u64,
    },
    /// A body the gateway reads itself was too large or too slow.
    #[error(transparent)]
    BodyRead(#[from] crate::server::peers::BodyReadError),
    /// Both `Content-Length` and `Transfer-Encoding`, or a bad `Content-Length`: a smuggling risk.
    #[error("ambiguous request framing: {0}")]
    BadFraming(&'static str),
    /// No SP-API operation has this method and path.
    #[error("no SP-API operation matches this method and path")]
    NotFound,
    /// The caller could not be authenticated or authorized.
    #[error(transparent)]
    Caller(#[from] CallerError),
    /// The named seller has not authorized the application.
    #[error("the seller is not onboarded")]
    UnknownSeller,
    /// The seller's authorization was revoked (LWA `invalid_grant`).
    #[error("the seller's authorization is revoked; it must re-authorize")]
    SellerDeauthorized,
    /// No LWA token could be had.
    #[error(transparent)]
    Credentials(#[from] LwaError),
    /// SP-API could not be reached or did not answer in time.
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A gateway header has a bad value.
    #[error("bad header: {0}")]
    BadHeader(&'static str),
    /// The usage plan has no token for this request within its deadline (or the limiter's
    /// shared state is unavailable and fail_mode is closed).
    #[error(transparent)]
    RateLimited(#[from] RateLimitError),
    /// The caller's role may receive nothing this restricted operation returns.
    #[error("the role may not receive this operation's restricted data")]
    RoleMayNotReceive,
    /// No Restricted Data Token could be had: the request fails closed.
    #[error(transparent)]
    Restricted(#[from] RdtError),
    /// A step of the seller authorization workflow failed (answered with an HTML page).
    #[error(transparent)]
    Onboarding(#[from] OnboardingError),
    /// A response that may carry buyer PII could not be put through the PII policy (too large,
    /// unreadable, encoded, or not JSON): nothing from upstream reaches the caller.
    #[error("a response with buyer PII was refused: {0}")]
    UnsafeResponse(&'static str),
    /// A response with document links, and no `server.public_url` to build them on.
    #[error("server.public_url is not configured, so no document link can be handed out")]
    NoPublicUrl,
    /// The vault (per-order keys, retention) failed: a response needing it is withheld.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The operation is the gateway's own (the LWA client secret).
    #[error("the operation is reserved to the gateway")]
    GatewayOwned,
    /// A gateway Restricted Data Token was not issued (bad request) or not accepted.
    #[error(transparent)]
    GatewayRdt(#[from] super::endpoints::rdt::GatewayRdtError),
    /// The operation has no buyer-PII classification (neither mapped nor declared to carry
    /// none): the gateway does not know what it returns, so it is refused before sending.
    #[error("the operation has no buyer-PII classification")]
    Unclassified,
    /// An opaque buyer document (label, invoice, photo) for a role that does not pass
    /// `document`: refused before it is fetched.
    #[error("the role may not receive this document")]
    DocumentNotForRole,
    /// A report document link or download failed.
    #[error(transparent)]
    Document(#[from] crate::documents::DocumentError),
    /// A reveal request was refused as a whole.
    #[error(transparent)]
    Reveal(#[from] super::reveal::RevealError),
    /// The drop-in token endpoint refused a request (answered in LWA's error shape).
    #[error(transparent)]
    Token(#[from] TokenError),
    /// A document download was refused by the outbound policy, or failed.
    #[error(transparent)]
    Outbound(#[from] super::outbound::OutboundError),
    /// The audit log cannot be written: the request is refused (`audit.on_failure`), or its
    /// response (carrying buyer PII) is withheld because its record could not be written.
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    /// The shutdown drain ended before the request did.
    #[error("the gateway is shutting down")]
    ShuttingDown,
    /// The bytes of request bodies held to be sent again (`server.replay_buffer_bytes`) are
    /// all held by other requests.
    #[error("too many request bodies held at once")]
    ReplayBudget,
    /// An Orders v0 call could not be translated to Orders 2026-01-01 (answered in v0's error
    /// shape, the parameter's name in `details`).
    #[error(transparent)]
    Compat(#[from] crate::compat::CompatError),
}

/// `Retry-After` of a 503 for a dependency outage (store, limiter Redis, LWA), in seconds.
pub const RETRY_AFTER_SECONDS: u64 = 5;

/// Whose fault an error is, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The caller sent something wrong.
    Caller,
    /// Amazon (SP-API or LWA) failed.
    Upstream,
    /// The gateway itself failed.
    Internal,
}

/// Amazon's details for an expired access token.
pub const TOKEN_EXPIRED: &str = "The access token you provided has expired.";
/// Amazon's details for an unknown, revoked or malformed access token.
pub const TOKEN_INVALID: &str = "The access token you provided is revoked, malformed or invalid.";

/// The response for an error, with the request id already set by the caller of `rescue`.
pub fn rescue(err: &ProxyError) -> Response<Body> {
    use ProxyError as E;
    // Amazon's own answer to a bad access token, word for word (SDKs refresh on it).
    let token_details = match err {
        E::Caller(CallerError::TokenExpired) | E::GatewayRdt(GatewayRdtError::Expired) => {
            TOKEN_EXPIRED
        }
        E::Caller(CallerError::TokenInvalid) | E::GatewayRdt(GatewayRdtError::Invalid) => {
            TOKEN_INVALID
        }
        _ => "",
    };
    let (status, code, message, fault) = match err {
        E::HeadersTooLarge { .. } => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "InvalidInput", "Request headers are too large.", Fault::Caller),
        E::BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "InvalidInput", "Request body is too large.", Fault::Caller),
        E::BodyRead(BodyReadError::TooLarge { .. }) => (StatusCode::PAYLOAD_TOO_LARGE, "InvalidInput", "Request body is too large.", Fault::Caller),
        E::BodyRead(BodyReadError::Timeout(_)) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout", "The request body did not arrive in time.", Fault::Caller),
        E::BadFraming(_) => (StatusCode::BAD_REQUEST, "InvalidInput", "Request framing is ambiguous (Content-Length with Transfer-Encoding, or a bad Content-Length).", Fault::Caller),
        E::NotFound => (StatusCode::NOT_FOUND, "NotFound", "The requested resource is not an SP-API operation.", Fault::Caller),
        E::Caller(c) => match c {
            CallerError::MissingKey => (StatusCode::UNAUTHORIZED, "Unauthorized", "Missing API key: send Authorization: Bearer <key>.", Fault::Caller),
            CallerError::MalformedKey | CallerError::UnknownKey => (StatusCode::UNAUTHORIZED, "Unauthorized", "The API key is not valid.", Fault::Caller),
            CallerError::TokenExpired | CallerError::TokenInvalid => (StatusCode::FORBIDDEN, "Unauthorized", "Access to requested resource is denied.", Fault::Caller),
            CallerError::MissingSeller => (StatusCode::BAD_REQUEST, "InvalidInput", "Name the seller in the x-spgate-seller header.", Fault::Caller),
            CallerError::SellerNotAllowed => (StatusCode::FORBIDDEN, "Unauthorized", "This tool may not act for that seller.", Fault::Caller),
            CallerError::ApplicationWide => (StatusCode::FORBIDDEN, "Unauthorized", "This operation acts for the whole application; only a tool allowed for all sellers may call it.", Fault::Caller),
            CallerError::Store(s) if s.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway's store is unavailable, so the API key could not be checked; retry later.", Fault::Internal),
            CallerError::ClientCertificate => (StatusCode::FORBIDDEN, "Unauthorized", "This tool must connect with its registered client certificate.", Fault::Caller),
            CallerError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway could not check the API key.", Fault::Internal),
        },
        E::UnknownSeller => (StatusCode::FORBIDDEN, "Unauthorized", "That seller has not authorized this application.", Fault::Caller),
        E::SellerDeauthorized => (StatusCode::FORBIDDEN, "Unauthorized", "The seller's authorization was revoked; ops must have the seller re-authorize the application.", Fault::Upstream),
        E::Credentials(l) => match l {
            LwaError::InvalidGrant => (StatusCode::FORBIDDEN, "Unauthorized", "The seller's authorization was revoked; ops must have the seller re-authorize the application.", Fault::Upstream),
            LwaError::InvalidClient => (StatusCode::BAD_GATEWAY, "InternalFailure", "Login with Amazon rejected the gateway's client credentials.", Fault::Internal),
            LwaError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Login with Amazon is unavailable; retry later.", Fault::Upstream),
            LwaError::Protocol(_) => (StatusCode::BAD_GATEWAY, "InternalFailure", "Login with Amazon answered unexpectedly.", Fault::Upstream),
            LwaError::RefreshToken(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The seller's stored credentials cannot be used.", Fault::Internal),
            LwaError::CircuitOpen { .. } => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Login with Amazon is failing; the gateway stopped asking it for a while. Retry later.", Fault::Upstream),
        },
        E::Upstream(u) => match u {
            UpstreamError::Connect(_) => (StatusCode::BAD_GATEWAY, "ServiceUnavailable", "SP-API could not be reached.", Fault::Upstream),
            UpstreamError::HeaderTimeout(_) => (StatusCode::GATEWAY_TIMEOUT, "RequestTimeout", "SP-API did not answer in time.", Fault::Upstream),
            UpstreamError::BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "InvalidInput", "Request body is too large.", Fault::Caller),
            UpstreamError::Transport(_) => (StatusCode::BAD_GATEWAY, "ServiceUnavailable", "The request to SP-API failed.", Fault::Upstream),
        },
        E::Store(s) if s.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway's store is unavailable; retry later.", Fault::Internal),
        E::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway's store failed.", Fault::Internal),
        E::RoleMayNotReceive => (StatusCode::FORBIDDEN, "Unauthorized", "This tool's role may not receive the restricted data this operation returns.", Fault::Caller),
        E::Restricted(r) => match r {
            RdtError::Refused(_) => (StatusCode::FORBIDDEN, "Unauthorized", "Amazon refused a Restricted Data Token for this operation; the application may lack the restricted role.", Fault::Upstream),
            RdtError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Restricted data is temporarily unavailable; retry later.", Fault::Upstream),
            RdtError::Protocol(_) => (StatusCode::BAD_GATEWAY, "InternalFailure", "Amazon answered the Restricted Data Token request unexpectedly.", Fault::Upstream),
            RdtError::UnknownIncludedData => (StatusCode::BAD_REQUEST, "InvalidInput", "includedData names a dataset Amazon does not define for this operation.", Fault::Caller),
        },
                        E::BadHeader(why) => (StatusCode::BAD_REQUEST, "InvalidInput", *why, Fault::Caller),
        E::RateLimited(r) => match r {
            RateLimitError::Throttled { retry_after, rate_per_second } | RateLimitError::Deferred { retry_after, rate_per_second } | RateLimitError::QueueFull { retry_after, rate_per_second } => {
                return quota_exceeded(err, *retry_after, *rate_per_second);
            }
            RateLimitError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Rate limiting is unavailable; retry later.", Fault::Internal),
            RateLimitError::InvalidSettings(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway's rate limiting is misconfigured.", Fault::Internal),
        },
        E::UnsafeResponse(_) => (StatusCode::BAD_GATEWAY, "InternalFailure", "SP-API's response could not be checked against the data protection policy, so it was withheld.", Fault::Upstream),
        E::GatewayOwned => (StatusCode::FORBIDDEN, "Unauthorized", "The gateway manages the application's credentials itself; tools may not call this operation.", Fault::Caller),
        // Amazon's answers, word for word (SDKs branch on the code and details).
        E::GatewayRdt(r) => match r {
            GatewayRdtError::Malformed | GatewayRdtError::TooManyResources | GatewayRdtError::BadDataElements | GatewayRdtError::Delegation => (StatusCode::BAD_REQUEST, "InvalidInput", "Invalid Input", Fault::Caller),
            GatewayRdtError::NoResources => (StatusCode::BAD_REQUEST, "InvalidInput", "Empty target resource argument found", Fault::Caller),
            GatewayRdtError::BadResource => (StatusCode::BAD_REQUEST, "InvalidInput", "Request is missing or has invalid parameters", Fault::Caller),
            GatewayRdtError::NotRestricted => (StatusCode::BAD_REQUEST, "InvalidInput", "Application do not have access to some or all requested resource", Fault::Caller),
            GatewayRdtError::Expired | GatewayRdtError::Invalid | GatewayRdtError::WrongResource | GatewayRdtError::WrongSeller | GatewayRdtError::WrongTool => (StatusCode::FORBIDDEN, "Unauthorized", "Access to requested resource is denied.", Fault::Caller),
            GatewayRdtError::Crypto(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway could not issue a Restricted Data Token.", Fault::Internal),
        },
        E::Unclassified => (StatusCode::FORBIDDEN, "Unauthorized", "The gateway does not know which buyer data this operation returns, so it refuses it.", Fault::Internal),
        E::NoPublicUrl => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway has no server.public_url configured, so it cannot hand out document links; ops must set it.", Fault::Internal),
        E::DocumentNotForRole => (StatusCode::FORBIDDEN, "Unauthorized", "This tool's role may not receive this document.", Fault::Caller),
        E::Document(d) => match d {
            crate::documents::DocumentError::LinkExpired | crate::documents::DocumentError::LinkInvalid => (StatusCode::FORBIDDEN, "Unauthorized", "The document link is invalid or has expired; call getReportDocument again.", Fault::Caller),
            _ => (StatusCode::BAD_GATEWAY, "InternalFailure", "The report document could not be fetched or checked against the data protection policy.", Fault::Upstream),
        },
        E::Vault(crate::vault::VaultError::Store(s)) if s.is_unavailable() => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway's store is unavailable, so the response was withheld; retry later.", Fault::Internal),
        E::Vault(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway's data vault failed, so the response was withheld.", Fault::Internal),
        E::Reveal(r) => match r {
            super::reveal::RevealError::BadRequest(why) => (StatusCode::BAD_REQUEST, "InvalidInput", *why, Fault::Caller),
            super::reveal::RevealError::Lookup(l) if l.unavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway's data vault is unavailable; retry later.", Fault::Internal),
            super::reveal::RevealError::Lookup(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway's data vault failed.", Fault::Internal),
        },
        E::Outbound(o) => {
            use super::outbound::OutboundError as O;
            match o {
                O::Invalid | O::Scheme | O::Host(_) | O::Port(_) | O::Address { .. } => (StatusCode::BAD_GATEWAY, "InternalFailure", "The document's download location was refused: the gateway fetches documents only over https from Amazon's document hosts, never from private addresses.", Fault::Upstream),
                O::Redirect(_) => (StatusCode::BAD_GATEWAY, "InternalFailure", "The document host answered with a redirect, which the gateway does not follow.", Fault::Upstream),
                O::Status(_) | O::Transport(_) => (StatusCode::BAD_GATEWAY, "ServiceUnavailable", "The document could not be downloaded from Amazon's document host.", Fault::Upstream),
                O::Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "RequestTimeout", "Amazon's document host did not answer in time.", Fault::Upstream),
                O::Setup(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway's document client is not available.", Fault::Internal),
            }
        }
        E::AuditUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway cannot write its access log right now, so it does not serve this request; retry later.", Fault::Internal),
        E::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway is shutting down; retry on another instance.", Fault::Internal),
        E::ReplayBudget => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The gateway holds as many request bodies as it may at once; retry later.", Fault::Internal),
        E::Compat(c) => {
            use crate::compat::CompatError as C;
            match c {
                C::Untranslatable(_) => (StatusCode::BAD_REQUEST, "InvalidInput", "This Orders v0 parameter has no Orders 2026-01-01 counterpart, so the gateway, which answers Orders v0 from Orders 2026-01-01, cannot apply it.", Fault::Caller),
                C::BadParameter(_) => (StatusCode::BAD_REQUEST, "InvalidInput", "An Orders v0 parameter is missing, unknown, or has a value Orders v0 does not define.", Fault::Caller),
                C::NextTokenFilter(_) => (StatusCode::BAD_REQUEST, "InvalidInput", "A filter sent with a NextToken must have the first page's value: the NextToken continues the first page's search.", Fault::Caller),
                C::TokenInvalid => (StatusCode::BAD_REQUEST, "InvalidInput", "Invalid NextToken: it was not issued by the gateway for this tool and seller.", Fault::Caller),
                C::TokenExpired => (StatusCode::BAD_REQUEST, "InvalidInput", "The NextToken has expired; start the search again.", Fault::Caller),
                C::TokenSeal | C::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", "The gateway failed to translate the Orders v0 call.", Fault::Internal),
                C::UpstreamShape(_) => (StatusCode::BAD_GATEWAY, "InternalFailure", "Orders 2026-01-01 answered in a shape the gateway cannot translate to Orders v0.", Fault::Upstream),
            }
        }
        E::Token(t) => return token_error(t),
        E::Onboarding(o) => return onboarding_error(o),
    };
    match fault {
        Fault::Internal => {
            if let Some(repeats) = log_limit::admit(message) {
                tracing::error!(error = %err, status = status.as_u16(), repeats, "Request failed inside the gateway.")
            }
        }
        Fault::Upstream => {
            if let Some(repeats) = log_limit::admit(message) {
                tracing::warn!(error = %err, status = status.as_u16(), repeats, "Request failed upstream.")
            }
        }
        Fault::Caller => {
            tracing::debug!(error = %err, status = status.as_u16(), "Request refused.")
        }
    }
    // Only a fixed parameter name or explanation, never a value the caller sent.
    let details = match err {
        E::Compat(
            crate::compat::CompatError::Untranslatable(p)
            | crate::compat::CompatError::BadParameter(p)
            | crate::compat::CompatError::NextTokenFilter(p),
        ) => *p,
        E::GatewayRdt(r) => rdt_details(r).unwrap_or(token_details),
        _ => token_details,
    };
    let mut resp = Response::new(body::full(
        ErrorBody::one(code, message, details).to_bytes(),
    ));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let secs = match err {
            E::Credentials(LwaError::CircuitOpen {
                retry_after_seconds,
            }) => *retry_after_seconds,
            _ => RETRY_AFTER_SECONDS,
        };
        h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    // After a framing error or an unread oversized body the connection cannot be reused safely.
    if matches!(
        err,
        E::BadFraming(_) | E::BodyTooLarge { .. } | E::HeadersTooLarge { .. } | E::BodyRead(_)
    ) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    if !token_details.is_empty() {
        // Amazon's 403 for a bad access token: a failed authentication all the same.
        resp.extensions_mut()
            .insert(crate::server::peers::CredentialRefused);
    }
    resp
}

/// The details of a refused createRestrictedDataToken request (Amazon leaves most empty; these
/// name what to fix, never a value the caller sent).
fn rdt_details(err: &GatewayRdtError) -> Option<&'static str> {
    use GatewayRdtError as R;
    Some(match err {
        R::Malformed => "The body must be a JSON object with restrictedResources, an array.",
        R::TooManyResources => "At most 50 restrictedResources.",
        R::BadDataElements => "dataElements may hold buyerInfo, shippingAddress and buyerTaxInformation.",
        R::Delegation => "The gateway does not delegate to another application (targetApplication).",
        R::BadResource => "Resource not provided.",
        R::NotRestricted => "Each resource must be a restricted operation's method and path whose data this tool's role may receive.",
        R::NoResources | R::Expired | R::Invalid | R::WrongResource | R::WrongSeller | R::WrongTool | R::Crypto(_) => return None,
    })
}

/// Token endpoint errors, in LWA's shape `{"error","error_description"}`.
fn token_error(err: &TokenError) -> Response<Body> {
    let (status, code, description) = match err {
        TokenError::InvalidRequest(why) => (StatusCode::BAD_REQUEST, "invalid_request", *why),
        TokenError::UnsupportedGrantType => (
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
            "Only grant_type=refresh_token is supported.",
        ),
        TokenError::InvalidClient => (
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client authentication failed.",
        ),
        TokenError::InvalidGrant => (
            StatusCode::BAD_REQUEST,
            "invalid_grant",
            "The refresh token is invalid or revoked.",
        ),
        TokenError::Store(s) if s.is_unavailable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "temporarily_unavailable",
            "The gateway's store is unavailable; retry later.",
        ),
        TokenError::Store(_) | TokenError::Crypto(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            "The gateway failed to issue a token.",
        ),
    };
    if status.is_server_error() {
        if let Some(repeats) = log_limit::admit(description) {
            tracing::error!(error = %err, repeats, "Token request failed inside the gateway.");
        }
    } else {
        tracing::debug!(error = %err, "Token request refused.");
    }
    let body = serde_json::json!({ "error": code, "error_description": description });
    let mut resp = Response::new(body::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(RETRY_AFTER_SECONDS));
    }
    resp
}

/// Seller-facing error pages of the authorization workflow. They never echo request values.
fn onboarding_error(err: &OnboardingError) -> Response<Body> {
    use OnboardingError as O;
    let again = "Start again from your invitation link.";
    let (status, message) = match err {
        O::NotConfigured => (
            StatusCode::NOT_FOUND,
            "Seller onboarding is not enabled on this gateway.".to_string(),
        ),
        O::BadInvite => (
            StatusCode::BAD_REQUEST,
            "This invitation link is not valid. Ask for a new one.".to_string(),
        ),
        O::InviteUsed => (
            StatusCode::BAD_REQUEST,
            "This invitation link was already used.".to_string(),
        ),
        O::InviteExpired => (
            StatusCode::BAD_REQUEST,
            "This invitation link has expired. Ask for a new one.".to_string(),
        ),
        O::BadState => (
            StatusCode::BAD_REQUEST,
            format!("This authorization attempt is invalid, expired or already completed. {again}"),
        ),
                O::Denied => (
            StatusCode::BAD_REQUEST,
            format!("The authorization was not completed at Amazon. {again}"),
        ),
        O::WrongSeller { .. } => (
            StatusCode::BAD_REQUEST,
            "This link re-authorizes a different seller account. Sign in with the account it was made for.".to_string(),
        ),
        O::SellerNotConfirmed { .. } => (
            StatusCode::FORBIDDEN,
            "Amazon did not confirm that the account you signed in with is the seller this authorization names. Sign in with the right seller account, from your invitation link.".to_string(),
        ),
        O::ConfirmationUnavailable(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Amazon could not be reached to confirm the authorization. Please try again later. {again}"),
        ),
        O::AlreadyConnected => (
            StatusCode::BAD_REQUEST,
            "This seller account is already connected. Ask for a re-authorization link.".to_string(),
        ),
        O::MissingParameter(_) => (
            StatusCode::BAD_REQUEST,
            format!("Amazon's answer was incomplete. {again}"),
        ),
        O::Lwa(LwaError::Unavailable(_) | LwaError::CircuitOpen { .. }) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("Login with Amazon is unavailable right now. Please try again later. {again}"),
        ),
        O::Store(s) if s.is_unavailable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Our service is temporarily unavailable. Please try again later.".to_string(),
        ),
        O::Lwa(_) => (
            StatusCode::BAD_GATEWAY,
            format!("Amazon did not confirm the authorization. {again}"),
        ),
        O::Store(_) | O::Crypto(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Something went wrong on our side. Please try again later.".to_string(),
        ),
    };
    if status.is_client_error() {
        tracing::info!(error = %err, "Seller authorization step refused.");
    } else {
        tracing::error!(error = %err, "Seller authorization step failed.");
    }
    let mut resp = onboarding::page(status, &message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        let secs = match err {
            O::Lwa(LwaError::CircuitOpen {
                retry_after_seconds,
            }) => *retry_after_seconds,
            _ => RETRY_AFTER_SECONDS,
        };
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

/// 429 in Amazon's shape, with when to retry and the bucket's rate, as Amazon would send.
fn quota_exceeded(
    err: &ProxyError,
    retry_after: std::time::Duration,
    rate_per_second: f64,
) -> Response<Body> {
    tracing::debug!(error = %err, "Request throttled by the gateway.");
    let mut resp = too_many_requests(
        "You exceeded your quota for the requested resource.",
        retry_after,
    );
    // The rate the gateway enforces for this bucket, to four decimals (as Amazon prints rates).
    let rate = format!("{rate_per_second:.4}");
    let rate = rate.trim_end_matches('0').trim_end_matches('.');
    if let Ok(v) = HeaderValue::from_str(rate) {
        resp.headers_mut().insert(crate::spapi::RATE_LIMIT_LIMIT, v);
    }
    resp
}

/// A request refused before it reached the handler: its address exceeded its rate of
/// unauthenticated or failed requests. 429 in SP-API's shape with `Retry-After`; the connection
/// is closed.
pub fn peer_refused(err: &PeerError) -> Response<Body> {
    let retry_after = match err {
        PeerError::TooManyRequests { retry_after } => *retry_after,
        PeerError::TooManyConnections { .. } => std::time::Duration::from_secs(1),
    };
    if let Some(repeats) = log_limit::admit("peer refused") {
        tracing::warn!(error = %err, repeats, "Requests from one address refused before authentication.");
    }
    let mut resp = too_many_requests(
        "Too many unauthenticated or failed requests from this address.",
        retry_after,
    );
    resp.headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// A CONNECT the forward proxy does not serve (`server::forward`): 403 `Unauthorized` for a
/// host or port it does not serve, 400 for a malformed target or a CONNECT inside a tunnel,
/// 405 on HTTP/2, in SP-API's shape (500 `InternalFailure` when no certificate could be
/// minted); the connection is closed, nothing is tunnelled.
pub fn forward_refused(err: &crate::server::forward::ForwardError) -> Response<Body> {
    use crate::server::forward::ForwardError as F;
    let (status, code, message) = match err {
        F::Disabled => (StatusCode::FORBIDDEN, "Unauthorized", "The gateway is not a forward proxy here: set [forward_proxy] enabled = true, or call the gateway's URL directly.".to_string()),
        F::Malformed => (StatusCode::BAD_REQUEST, "InvalidInput", "CONNECT needs host:port.".to_string()),
        F::UserInfo => (StatusCode::BAD_REQUEST, "InvalidInput", "CONNECT refused: name the target as host:443, without user information.".to_string()),
        F::Http2 => (StatusCode::METHOD_NOT_ALLOWED, "InvalidInput", "CONNECT is not served on HTTP/2: connect to the gateway's forward proxy over HTTP/1.1.".to_string()),
        F::Nested => (StatusCode::BAD_REQUEST, "InvalidInput", "CONNECT inside a tunnel is refused: a tunnel carries SP-API requests only.".to_string()),
        F::HostNotAllowed { host } => (StatusCode::FORBIDDEN, "Unauthorized", format!("CONNECT to {host} refused: the gateway answers only for Amazon's SP-API and Login with Amazon hosts ([forward_proxy] allowed_hosts) and never tunnels.")),
        F::PortNotAllowed { port } => (StatusCode::FORBIDDEN, "Unauthorized", format!("CONNECT to port {port} refused: only port 443.")),
        // The CA file's path and the cause go to the log, not to the client.
        F::Mint { host, .. } => (StatusCode::INTERNAL_SERVER_ERROR, "InternalFailure", format!("The gateway could not issue a TLS certificate for {host}: its forward-proxy CA has expired or is unusable. The gateway's operator must renew it (spgate ca init).")),
    };
    let mut resp = Response::new(body::full(ErrorBody::one(code, &message, "").to_bytes()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(header::CONNECTION, HeaderValue::from_static("close"));
    // Answered before any handler: an id of its own, as every gateway answer carries one.
    if let Some(id) = crate::crypto::random_bytes::<8>()
        .ok()
        .and_then(|b| HeaderValue::from_str(&crate::crypto::hex(&b)).ok())
    {
        h.insert(crate::spapi::REQUEST_ID, id);
    }
    resp
}

/// 429 `QuotaExceeded` with `Retry-After` in whole seconds, rounded up, at least 1 (the header
/// has no fractions).
fn too_many_requests(message: &'static str, retry_after: std::time::Duration) -> Response<Body> {
    let body = ErrorBody::one("QuotaExceeded", message, "");
    let mut resp = Response::new(body::full(body.to_bytes()));
    *resp.status_mut() = StatusCode::TOO_MANY_REQUESTS;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    h.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::reveal::{LookupError, RevealError};

    fn unavailable_store() -> StoreError {
        StoreError::Redis {
            op: "get",
            reason: "connection refused".into(),
        }
    }

    fn retry_after(resp: &Response<Body>) -> Option<u64> {
        resp.headers()
            .get(header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().parse().unwrap())
    }

    #[test]
    fn an_unavailable_vault_during_a_reveal_is_503_with_retry_after() {
        let err = ProxyError::Reveal(RevealError::Lookup(LookupError {
            unavailable: true,
            message: "redis store, get: connection refused".into(),
        }));
        let resp = rescue(&err);
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(retry_after(&resp).is_some_and(|s| s >= 1));
        // A defect stays a 500.
        let err = ProxyError::Reveal(RevealError::Lookup(LookupError {
            unavailable: false,
            message: "stored key is corrupt".into(),
        }));
        assert_eq!(rescue(&err).status(), StatusCode::INTERNAL_SERVER_ERROR);
    }

    #[test]
    fn gateway_rdt_refusals_are_amazons_answers() {
        use GatewayRdtError as R;
        let denied = "Access to requested resource is denied.";
        let cases: [(R, u16, &str, &str, &str); 6] = [
            (R::NoResources, 400, "InvalidInput", "Empty target resource argument found", ""),
            (R::NotRestricted, 400, "InvalidInput", "Application do not have access to some or all requested resource", "Each resource must be a restricted operation's method and path whose data this tool's role may receive."),
            (R::Expired, 403, "Unauthorized", denied, TOKEN_EXPIRED),
            (R::Invalid, 403, "Unauthorized", denied, TOKEN_INVALID),
            (R::WrongResource, 403, "Unauthorized", denied, ""),
            (R::WrongSeller, 403, "Unauthorized", denied, ""),
        ];
        for (err, status, code, message, details) in cases {
            let token_problem = matches!(err, R::Expired | R::Invalid);
            let resp = rescue(&ProxyError::GatewayRdt(err));
            assert_eq!(resp.status().as_u16(), status, "{code} {message}");
            // An expired or invalid token counts against the address like a failed login.
            assert_eq!(
                resp.extensions()
                    .get::<crate::server::peers::CredentialRefused>()
                    .is_some(),
                token_problem,
                "{message}"
            );
            let body = futures_util::FutureExt::now_or_never(http_body_util::BodyExt::collect(
                resp.into_body(),
            ))
            .unwrap()
            .unwrap()
            .to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(
                v["errors"][0],
                serde_json::json!({"code": code, "message": message, "details": details})
            );
        }
    }

    #[test]
    fn onboarding_store_and_lwa_outages_are_503_with_retry_after() {
        for (err, secs) in [
            (
                OnboardingError::Store(unavailable_store()),
                RETRY_AFTER_SECONDS,
            ),
            (
                OnboardingError::Lwa(LwaError::Unavailable("timed out".into())),
                RETRY_AFTER_SECONDS,
            ),
            (
                OnboardingError::Lwa(LwaError::CircuitOpen {
                    retry_after_seconds: 7,
                }),
                7,
            ),
        ] {
            let resp = onboarding_error(&err);
            assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{err}");
            assert_eq!(retry_after(&resp), Some(secs), "{err}");
        }
        let corrupt = StoreError::Corrupt {
            what: "invite",
            detail: "bad json".into(),
        };
        let resp = onboarding_error(&OnboardingError::Store(corrupt));
        assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(retry_after(&resp), None);
    }
}
