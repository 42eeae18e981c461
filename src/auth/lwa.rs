//! Login with Amazon: access tokens per seller (refresh_token grant) and per scope (grantless,
//! client_credentials grant), cached until shortly before they expire and refreshed
//! single-flight: however many requests find a subject's token missing at once, one LWA call is
//! made and the rest wait for its result.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode, Uri};
use serde::Deserialize;
use tokio::time::Instant;

use std::sync::Arc;

use super::slots::Slots;
use crate::config::LwaConfig;
use crate::crypto::MasterKey;
use crate::proxy::body;
use crate::proxy::upstream::{exchange, HttpClient};
use crate::secret::Secret;
use crate::store::token_cache::SharedTokenCache;

/// Whose token: a seller's, or the application's for a grantless scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    /// A seller, by selling partner id.
    Seller(String),
    /// The application itself, for a grantless scope.
    Grantless(&'static str),
}

impl Subject {
    /// The key of this subject in the shared cache.
    pub fn cache_key(&self) -> String {
        match self {
            Subject::Seller(id) => format!("seller:{id}"),
            Subject::Grantless(scope) => format!("grantless:{scope}"),
        }
    }
}

/// Why no token could be had. Messages never carry tokens or secrets.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LwaError {
    /// LWA rejected the refresh token (`invalid_grant`): the seller must re-authorize.
    #[error("LWA rejected the seller's refresh token (invalid_grant)")]
    InvalidGrant,
    /// LWA rejected our client credentials (`invalid_client`).
    #[error("LWA rejected the application's client credentials (invalid_client)")]
    InvalidClient,
    /// LWA did not answer, answered 5xx, or timed out.
    #[error("LWA is unavailable: {0}")]
    Unavailable(String),
    /// LWA answered something we do not understand.
    #[error("LWA answered unexpectedly: {0}")]
    Protocol(String),
    /// The seller's refresh token could not be read from the store.
    #[error("the seller's refresh token cannot be used: {0}")]
    RefreshToken(String),
    /// LWA failed [`CIRCUIT_THRESHOLD`] times in a row: token requests fail fast until the
    /// circuit closes again.
    #[error("LWA circuit open after repeated failures; retry in {retry_after_seconds} s")]
    CircuitOpen {
        /// Seconds until LWA is tried again (at least 1).
        retry_after_seconds: u64,
    },
}

/// Consecutive LWA failures (no answer, 5xx, 429) that open the circuit.
pub const CIRCUIT_THRESHOLD: u32 = 5;

/// How long an open circuit refuses token requests before LWA is tried again.
pub const CIRCUIT_OPEN_FOR: Duration = Duration::from_secs(10);

/// A circuit breaker in front of the token endpoint. While LWA is down, thousands of requests
/// would each wait `timeout` for it; with the circuit open they fail at once with 503 and
/// `Retry-After`, and readiness reports it. After [`CIRCUIT_OPEN_FOR`] one call is let through
/// (half-open): success closes the circuit, failure opens it again.
#[derive(Default)]
pub struct Circuit {
    state: std::sync::Mutex<CircuitState>,
    opened: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct CircuitState {
    failures: u32,
    open_until: Option<Instant>,
}

// === impl Circuit ===

impl Circuit {
    fn lock(&self) -> std::sync::MutexGuard<'_, CircuitState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err` while the circuit is open.
    fn check(&self) -> Result<(), LwaError> {
        let state = self.lock();
        match state.open_until {
            Some(until) if Instant::now() < until => {
                let left = until.saturating_duration_since(Instant::now());
                Err(LwaError::CircuitOpen {
                    retry_after_seconds: (left.as_secs() + u64::from(left.subsec_nanos() > 0))
                        .max(1),
                })
            }
            _ => Ok(()),
        }
    }

    /// LWA answered (a token or a definite refusal): the circuit closes.
    fn answered(&self) {
        let mut state = self.lock();
        if state.open_until.take().is_some() {
            tracing::info!("Login with Amazon answers again; its circuit is closed.");
        }
        state.failures = 0;
    }

    /// LWA did not answer usefully; the circuit opens at the threshold.
    fn failed(&self, error: &LwaError) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        if state.failures >= CIRCUIT_THRESHOLD {
            if state.open_until.is_none() {
                self.opened
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::error!(
                    error = %error,
                    failures = state.failures,
                    open_seconds = CIRCUIT_OPEN_FOR.as_secs(),
                    "Login with Amazon failed repeatedly; its circuit is open and token requests fail fast."
                );
            }
            state.open_until = Some(Instant::now() + CIRCUIT_OPEN_FOR);
        }
    }

    /// Whether token requests fail fast right now.
    pub fn is_open(&self) -> bool {
        self.check().is_err()
    }

    /// How many times the circuit has opened since start.
    pub fn opened(&self) -> u64 {
        self.opened.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// The credential to present for a subject's token.
pub enum Grant {
    /// `grant_type=refresh_token`.
    RefreshToken(Secret<String>),
    /// `grant_type=client_credentials` with this scope.
    ClientCredentials(&'static str),
    /// `grant_type=authorization_code`: the seller's `spapi_oauth_code` and our redirect URI.
    AuthorizationCode {
        /// The code from the callback.
        code: Secret<String>,
        /// The redirect URI registered for the application.
        redirect_uri: String,
    },
}

/// What LWA answered to a successful token request.
pub struct Fetched {
    /// The access token.
    pub access_token: Secret<String>,
    /// When to stop using it (expiry less the refresh margin).
    pub refresh_at: Instant,
    /// A refresh token, for the authorization_code grant.
    pub refresh_token: Option<Secret<String>>,
}

/// LWA client with a token cache.
pub struct Lwa {
    client: HttpClient,
    token_url: Uri,
    client_id: String,
    client_secret: Secret<String>,
    previous_client_secret: Option<Secret<String>>,
    margin: Duration,
    timeout: Duration,
    tokens: Slots<Subject, Secret<String>, LwaError>,
    calls: std::sync::atomic::AtomicU64,
    /// Fails token requests fast while LWA is down.
    circuit: Circuit,
    /// With the redis store: the cache and refresh lock shared by every gateway instance.
    shared: Option<Shared>,
}

/// The shared second-level cache: tokens sealed under the master key, and a refresh lock.
pub struct Shared {
    /// Where sealed tokens and locks live.
    pub cache: Arc<dyn SharedTokenCache>,
    /// Seals tokens before they leave the process.
    pub key: Arc<MasterKey>,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    expires_in: u64,
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
}

// === impl Lwa ===

impl Lwa {
    /// A client for the configured token endpoint.
    pub fn new(client: HttpClient, cfg: &LwaConfig, shared: Option<Shared>) -> Lwa {
        Lwa {
            shared,
            client,
            token_url: cfg.token_url.clone(),
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            previous_client_secret: cfg.previous_client_secret.clone(),
            margin: cfg.refresh_margin,
            timeout: cfg.timeout,
            tokens: Slots::new(),
            calls: std::sync::atomic::AtomicU64::new(0),
            circuit: Circuit::default(),
        }
    }

    /// How many calls this client has made to the token endpoint.
    pub fn calls(&self) -> u64 {
        self.calls.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The circuit breaker in front of the token endpoint (readiness and metrics read it).
    pub fn circuit(&self) -> &Circuit {
        &self.circuit
    }

    /// The subject's access token, from the cache or from LWA. `grant` is called only when LWA
    /// must be asked, so the refresh token is unsealed only then.
    pub async fn token(
        &self,
        subject: &Subject,
        grant: impl FnOnce() -> Result<Grant, LwaError>,
    ) -> Result<Secret<String>, LwaError> {
        self.tokens
            .get_or_fetch(subject, || async {
                match &self.shared {
                    Some(shared) => self.fetch_shared(shared, subject, grant).await,
                    None => {
                        let f = self.fetch(grant()?).await?;
                        Ok((f.access_token, f.refresh_at))
                    }
                }
            })
            .await
    }

    /// Several instances: take another instance's token if there is one; else take the refresh
    /// lock and ask LWA, or wait for the instance holding it. Any Redis trouble falls back to
    /// asking LWA directly (correct, only less economical).
    async fn fetch_shared(
        &self,
        shared: &Shared,
        subject: &Subject,
        grant: impl FnOnce() -> Result<Grant, LwaError>,
    ) -> Result<(Secret<String>, Instant), LwaError> {
        let key = subject.cache_key();
        if let Some(found) = self.shared_get(shared, &key).await {
            return Ok(found);
        }
        let lock_ttl = self.timeout * 2 + Duration::from_secs(1);
        let direct = |grant: Grant| async move {
            let f = self.fetch(grant).await?;
            Ok((f.access_token, f.refresh_at))
        };
        match shared.cache.try_lock(&key, lock_ttl).await {
            Ok(Some(lock)) => {
                let result = match self.shared_get(shared, &key).await {
                    Some(found) => Ok(found),
                    None => match grant() {
                        Ok(g) => direct(g).await,
                        Err(e) => Err(e),
                    },
                };
                if let Ok((token, refresh_at)) = &result {
                    self.shared_put(shared, &key, token, *refresh_at).await;
                }
                if let Err(e) = shared.cache.unlock(&key, &lock).await {
                    tracing::warn!(error = %e, "Could not release the shared token refresh lock; it expires on its own.");
                }
                result
            }
            Ok(None) => {
                let deadline = Instant::now() + self.timeout;
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    if let Some(found) = self.shared_get(shared, &key).await {
                        return Ok(found);
                    }
                }
                direct(grant()?).await
            }
            Err(e) => {
                tracing::warn!(error = %e, "Shared token cache unavailable; asking LWA directly.");
                direct(grant()?).await
            }
        }
    }

    async fn shared_get(&self, shared: &Shared, key: &str) -> Option<(Secret<String>, Instant)> {
        let (sealed, remaining) = match shared.cache.get(key).await {
            Ok(Some(found)) => found,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(error = %e, "Shared token cache unavailable.");
                return None;
            }
        };
        if remaining < Duration::from_secs(1) {
            return None;
        }
        let aad = format!("lwa-token:{key}");
        match shared.key.open_str(&sealed, aad.as_bytes()) {
            Ok(token) => Some((token, Instant::now() + remaining)),
            Err(e) => {
                tracing::warn!(error = %e, "A shared token could not be opened; ignoring it.");
                None
            }
        }
    }

    async fn shared_put(
        &self,
        shared: &Shared,
        key: &str,
        token: &Secret<String>,
        refresh_at: Instant,
    ) {
        let ttl = refresh_at.saturating_duration_since(Instant::now());
        if ttl.is_zero() {
            return;
        }
        let aad = format!("lwa-token:{key}");
        let sealed = match shared.key.seal_str(token, aad.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "Could not seal a token for the shared cache.");
                return;
            }
        };
        if let Err(e) = shared.cache.put(key, &sealed, ttl).await {
            tracing::warn!(error = %e, "Could not share a token.");
        }
    }

    /// Exchanges a seller's `spapi_oauth_code` for its refresh token (and a first access token)
    /// with the authorization_code grant. Nothing is cached: the caller stores the refresh token.
    pub async fn exchange_code(
        &self,
        code: Secret<String>,
        redirect_uri: &str,
    ) -> Result<Fetched, LwaError> {
        let fetched = self
            .fetch(Grant::AuthorizationCode {
                code,
                redirect_uri: redirect_uri.to_string(),
            })
            .await?;
        if fetched.refresh_token.is_none() {
            return Err(LwaError::Protocol(
                "no refresh_token in the authorization_code answer".into(),
            ));
        }
        Ok(fetched)
    }

    /// Forgets a subject's token if it is still `token` (after the upstream rejected it).
    pub async fn invalidate(&self, subject: &Subject, token: &Secret<String>) {
        self.tokens.invalidate_if(subject, |t| t == token).await;
        if let Some(shared) = &self.shared {
            let key = subject.cache_key();
            if self
                .shared_get(shared, &key)
                .await
                .is_some_and(|(t, _)| t == *token)
            {
                // A zero TTL deletes the shared entry.
                if let Err(e) = shared.cache.put(&key, "", Duration::ZERO).await {
                    tracing::warn!(error = %e, "Could not drop a rejected token from the shared cache.");
                }
            }
        }
    }

    /// The form body of a token request (holds the client secret: wrapped by the caller).
    fn form(&self, grant: &Grant, client_secret: &Secret<String>) -> String {
        let mut form = form_urlencoded::Serializer::new(String::new());
        match grant {
            Grant::RefreshToken(rt) => {
                form.append_pair("grant_type", "refresh_token");
                form.append_pair("refresh_token", rt.expose());
            }
            Grant::ClientCredentials(scope) => {
                form.append_pair("grant_type", "client_credentials");
                form.append_pair("scope", scope);
            }
            Grant::AuthorizationCode { code, redirect_uri } => {
                form.append_pair("grant_type", "authorization_code");
                form.append_pair("code", code.expose());
                form.append_pair("redirect_uri", redirect_uri);
            }
        }
        form.append_pair("client_id", &self.client_id);
        form.append_pair("client_secret", client_secret.expose());
        form.finish()
    }

    /// Asks LWA with the current client secret and, if LWA rejects it as `invalid_client` while
    /// a previous secret is configured (Amazon's rotation window), with the previous one.
    async fn fetch(&self, grant: Grant) -> Result<Fetched, LwaError> {
        match self.fetch_with(&grant, &self.client_secret).await {
            Err(LwaError::InvalidClient) => match &self.previous_client_secret {
                Some(previous) => {
                    let result = self.fetch_with(&grant, previous).await;
                    if result.is_ok() {
                        tracing::warn!("LWA rejected the current client secret and accepted the previous one; check the rotation.");
                    }
                    result
                }
                None => Err(LwaError::InvalidClient),
            },
            other => other,
        }
    }

    async fn fetch_with(
        &self,
        grant: &Grant,
        client_secret: &Secret<String>,
    ) -> Result<Fetched, LwaError> {
        self.circuit.check()?;
        let result = self.fetch_once(grant, client_secret).await;
        match &result {
            Err(e @ LwaError::Unavailable(_)) => self.circuit.failed(e),
            Ok(_)
            | Err(
                LwaError::InvalidGrant
                | LwaError::InvalidClient
                | LwaError::Protocol(_)
                | LwaError::RefreshToken(_)
                | LwaError::CircuitOpen { .. },
            ) => self.circuit.answered(),
        }
        result
    }

    async fn fetch_once(
        &self,
        grant: &Grant,
        client_secret: &Secret<String>,
    ) -> Result<Fetched, LwaError> {
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let form = Secret::new(self.form(grant, client_secret));
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.token_url.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(body::full(Bytes::from(form.expose().clone())))
            .map_err(|e| LwaError::Protocol(e.to_string()))?;
        let started = Instant::now();
        let (status, bytes) = exchange(&self.client, req, self.timeout)
            .await
            .map_err(LwaError::Unavailable)?;
        if status.is_success() {
            let t: TokenResponse = serde_json::from_slice(&bytes)
                .map_err(|e| LwaError::Protocol(format!("token response: {e}")))?;
            let lifetime = Duration::from_secs(t.expires_in);
            // Refresh `margin` before expiry; a token shorter-lived than twice the margin is
            // refreshed at half its life instead, so it is still used at all.
            let early = self.margin.min(lifetime / 2);
            return Ok(Fetched {
                access_token: Secret::new(t.access_token),
                refresh_at: started + lifetime - early,
                refresh_token: t.refresh_token.map(Secret::new),
            });
        }
        let code = serde_json::from_slice::<ErrorResponse>(&bytes)
            .map(|e| e.error)
            .unwrap_or_default();
        Err(match (status, code.as_str()) {
            (_, "invalid_grant") => LwaError::InvalidGrant,
            (_, "invalid_client") | (StatusCode::UNAUTHORIZED, _) => LwaError::InvalidClient,
            (s, _) if s.is_server_error() || s == StatusCode::TOO_MANY_REQUESTS => {
                LwaError::Unavailable(format!("token endpoint answered {s}"))
            }
            (s, c) => LwaError::Protocol(format!("token endpoint answered {s} {c}")),
        })
    }
}
