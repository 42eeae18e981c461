//! Login with Amazon: access tokens per seller (refresh_token grant) and per scope (grantless,
//! client_credentials grant), cached until shortly before they expire and refreshed
//! single-flight: however many requests find a subject's token missing at once, one LWA call is
//! made and the rest wait for its result.

use std::time::Duration;

use http::StatusCode;
use tokio::time::Instant;

use std::sync::Arc;

use super::slots::Slots;
use crate::config::{LwaConfig, TokenLossConfig};
use crate::crypto::MasterKey;
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
    /// The control-plane HTTP client.
    http: reqwest::Client,
    token_url: oauth2::TokenUrl,
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
    /// When a bare 403 is taken as a lost token ([`Lwa::heal`]).
    token_loss: TokenLossConfig,
    /// Refreshes [`Lwa::heal`] made per subject, and in all, in the current minute.
    heal_budget: HealBudget,
    /// What [`Lwa::heal`] decided, counted (metrics).
    heal_counts: [std::sync::atomic::AtomicU64; Heal::ALL.len()],
    /// Requests retried after a heal (metrics).
    heal_retries: std::sync::atomic::AtomicU64,
}

/// What [`Lwa::heal`] decided about a token Amazon answered with a bare 403 (`Unauthorized`,
/// empty details): Amazon says the same of a token it lost (a restart on its side, a rotation)
/// and of a call the application's roles do not allow, so the token's age and a per-subject
/// bound decide, and a genuine permission 403 costs at most one refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heal {
    /// The token was old enough and the subject's bound allowed it: forgotten here and in the
    /// shared cache, so the retry (and every request after it) fetches a new one, single-flight.
    Refreshed,
    /// The token had already been replaced or forgotten (another request healed it, or it
    /// expired): the retry uses the current one and spends no refresh.
    Replaced,
    /// The token is younger than `token_loss_min_age_seconds`: a fresh token's 403 is a
    /// permission refusal; Amazon's answer is passed back.
    Young,
    /// The subject's refreshes for this minute are spent; Amazon's answer is passed back.
    Bounded,
    /// This instance's refreshes for this minute, all subjects together
    /// (`token_loss_refreshes_per_minute_total`), are spent; Amazon's answer is passed back.
    BoundedTotal,
    /// Healing is off (`token_loss_refreshes_per_minute = 0`).
    Off,
}

/// Refreshes per subject within a sliding one-minute window (the window opens at a subject's
/// first refresh). Keyed by [`Subject::cache_key`]: a seller's access token and the RDTs made
/// with it share one bound, each grantless scope has its own; the window of all subjects
/// together is kept under [`HEAL_TOTAL_KEY`], which no subject's key is.
#[derive(Default)]
struct HealBudget {
    windows: std::sync::Mutex<std::collections::HashMap<String, (Instant, u32)>>,
}

/// The shared second-level cache: tokens sealed under the master key, and a refresh lock.
pub struct Shared {
    /// Where sealed tokens and locks live.
    pub cache: Arc<dyn SharedTokenCache>,
    /// Seals tokens before they leave the process.
    pub key: Arc<MasterKey>,
}

/// A transport failure of a token request (no answer, timeout, TLS). The text names the
/// failure, never the URL or a body.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct LwaHttpError(String);

// === impl Lwa ===

impl Lwa {
    /// A client for the configured token endpoint.
    pub fn new(cfg: &LwaConfig, shared: Option<Shared>) -> Result<Lwa, LwaError> {
        let token_url = oauth2::TokenUrl::new(cfg.token_url.to_string())
            .map_err(|_| LwaError::Protocol("the token URL is not a URL".into()))?;
        let http = super::control_plane::client(cfg.timeout)
            .map_err(|e| LwaError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Lwa {
            shared,
            http,
            token_url,
            client_id: cfg.client_id.clone(),
            client_secret: cfg.client_secret.clone(),
            previous_client_secret: cfg.previous_client_secret.clone(),
            margin: cfg.refresh_margin,
            timeout: cfg.timeout,
            tokens: Slots::new(),
            calls: std::sync::atomic::AtomicU64::new(0),
            circuit: Circuit::default(),
            token_loss: cfg.token_loss,
            heal_budget: HealBudget::default(),
            heal_counts: Default::default(),
            heal_retries: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Decides what to do about `token`, which Amazon answered with a bare 403 (see [`Heal`]).
    /// Looking at the cached token and forgetting it is one step under the subject's slot
    /// lock, so of many requests rejected with one token, one refreshes (and spends the
    /// subject's bound) and the others find it [`Heal::Replaced`]; the refresh itself is the
    /// next [`Lwa::token`] call, single-flight as always.
    pub async fn heal(&self, subject: &Subject, token: &Secret<String>) -> Heal {
        let limit = self.token_loss.refreshes_per_minute;
        let heal = if limit == 0 {
            Heal::Off
        } else {
            let mut slot = self.tokens.lock(subject).await;
            let age = slot.value().filter(|(t, _)| *t == token).map(|(_, a)| a);
            let heal = match age {
                None => Heal::Replaced,
                Some(age) if age < self.token_loss.min_age => Heal::Young,
                Some(_) => match self.heal_budget.take(
                    &subject.cache_key(),
                    limit,
                    self.token_loss.refreshes_per_minute_total,
                ) {
                    Err(refused) => refused,
                    Ok(()) => {
                        slot.clear();
                        Heal::Refreshed
                    }
                },
            };
            if heal == Heal::Refreshed {
                // Still under the slot's lock: no request of this instance can pick the lost
                // token up from the shared cache before it is gone.
                if let Some(shared) = &self.shared {
                    self.drop_shared(shared, subject, token).await;
                }
            }
            heal
        };
        self.heal_counts[heal as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match heal {
            Heal::Refreshed => {
                tracing::warn!(subject = %subject.cache_key(), "Amazon refused an access token with a bare 403; it was refreshed and the request is retried once.")
            }
            Heal::Bounded => {
                tracing::warn!(subject = %subject.cache_key(), "Amazon refused an access token with a bare 403; this subject's token refreshes for the minute are spent, so the answer is passed back.")
            }
            Heal::BoundedTotal => {
                tracing::warn!(subject = %subject.cache_key(), "Amazon refused an access token with a bare 403; this instance's token refreshes for the minute (all subjects) are spent, so the answer is passed back.")
            }
            Heal::Replaced | Heal::Young | Heal::Off => {}
        }
        heal
    }

    /// Counts a request sent again after [`Lwa::heal`] (metrics).
    pub fn healed_retry(&self) {
        self.heal_retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// How many times [`Lwa::heal`] decided `heal`.
    pub fn heals(&self, heal: Heal) -> u64 {
        self.heal_counts[heal as usize].load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The token-loss counters in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "spgate_lwa_token_loss_total";
        let _ = writeln!(out, "# HELP {name} Bare 403s (Unauthorized, empty details) on an Amazon token, by what the gateway did.\n# TYPE {name} counter");
        for heal in Heal::ALL {
            let _ = writeln!(
                out,
                "{name}{{outcome=\"{}\"}} {}",
                heal.as_str(),
                self.heals(heal)
            );
        }
        let name = "spgate_lwa_token_loss_retries_total";
        let _ = writeln!(out, "# HELP {name} Requests sent again after their token was refreshed or replaced for a bare 403.\n# TYPE {name} counter\n{name} {}", self.heal_retries.load(std::sync::atomic::Ordering::Relaxed));
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
            self.drop_shared(shared, subject, token).await;
        }
    }

    /// Deletes the subject's shared token if it is still `token`.
    async fn drop_shared(&self, shared: &Shared, subject: &Subject, token: &Secret<String>) {
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
        use oauth2::basic::BasicErrorResponseType as E;
        use oauth2::{RequestTokenError, TokenResponse};
        self.calls
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let client = oauth2::basic::BasicClient::new(oauth2::ClientId::new(self.client_id.clone()))
            .set_client_secret(oauth2::ClientSecret::new(client_secret.expose().clone()))
            .set_token_uri(self.token_url.clone())
            // LWA takes the client credentials in the form body.
            .set_auth_type(oauth2::AuthType::RequestBody);
        // The status of LWA's answer: oauth2 reports only the parsed error body, and a 5xx or 429
        // (retry later) must not be mistaken for a refusal.
        let status = Arc::new(std::sync::Mutex::new(None));
        let http = {
            let (client, status) = (self.http.clone(), status.clone());
            move |req: oauth2::HttpRequest| send(client.clone(), req, status.clone())
        };
        let started = Instant::now();
        let result = match grant {
            Grant::RefreshToken(rt) => {
                client
                    .exchange_refresh_token(&oauth2::RefreshToken::new(rt.expose().clone()))
                    .request_async(&http)
                    .await
            }
            Grant::ClientCredentials(scope) => {
                client
                    .exchange_client_credentials()
                    .add_scope(oauth2::Scope::new((*scope).to_string()))
                    .request_async(&http)
                    .await
            }
            Grant::AuthorizationCode { code, redirect_uri } => {
                let redirect = oauth2::RedirectUrl::new(redirect_uri.clone())
                    .map_err(|_| LwaError::Protocol("the redirect URI is not a URL".into()))?;
                client
                    .set_redirect_uri(redirect)
                    .exchange_code(oauth2::AuthorizationCode::new(code.expose().clone()))
                    .request_async(&http)
                    .await
            }
        };
        let status = status
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or(StatusCode::OK);
        let retry_later = status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS;
        match result {
            Ok(t) => {
                let lifetime = t
                    .expires_in()
                    .ok_or_else(|| LwaError::Protocol("token response: no expires_in".into()))?;
                // Refresh `margin` before expiry; a token shorter-lived than twice the margin is
                // refreshed at half its life instead, so it is still used at all.
                let early = self.margin.min(lifetime / 2);
                Ok(Fetched {
                    access_token: Secret::new(t.access_token().secret().clone()),
                    refresh_at: started + lifetime - early,
                    refresh_token: t.refresh_token().map(|r| Secret::new(r.secret().clone())),
                })
            }
            Err(RequestTokenError::ServerResponse(e)) => Err(match e.error() {
                E::InvalidGrant => LwaError::InvalidGrant,
                E::InvalidClient => LwaError::InvalidClient,
                _ if retry_later => {
                    LwaError::Unavailable(format!("token endpoint answered {status}"))
                }
                _ if status == StatusCode::UNAUTHORIZED => LwaError::InvalidClient,
                other => LwaError::Protocol(format!("token endpoint answered {status} {other}")),
            }),
            Err(RequestTokenError::Request(e)) => Err(LwaError::Unavailable(e.to_string())),
            Err(RequestTokenError::Parse(..) | RequestTokenError::Other(_)) if retry_later => Err(
                LwaError::Unavailable(format!("token endpoint answered {status}")),
            ),
            Err(RequestTokenError::Parse(..) | RequestTokenError::Other(_))
                if status == StatusCode::UNAUTHORIZED =>
            {
                Err(LwaError::InvalidClient)
            }
            Err(RequestTokenError::Parse(e, _)) => Err(LwaError::Protocol(format!(
                "token response ({status}): {e}"
            ))),
            Err(RequestTokenError::Other(e)) => Err(LwaError::Protocol(format!(
                "token response ({status}): {e}"
            ))),
        }
    }
}

// === impl Heal, HealBudget ===

impl Heal {
    /// Every outcome, in the order of the metric's samples.
    pub const ALL: [Heal; 6] = [
        Heal::Refreshed,
        Heal::Replaced,
        Heal::Young,
        Heal::Bounded,
        Heal::BoundedTotal,
        Heal::Off,
    ];

    /// Whether the request is sent again (with a new or the current token).
    pub fn retries(self) -> bool {
        matches!(self, Heal::Refreshed | Heal::Replaced)
    }

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Heal::Refreshed => "refreshed",
            Heal::Replaced => "replaced",
            Heal::Young => "young",
            Heal::Bounded => "bounded",
            Heal::BoundedTotal => "bounded_total",
            Heal::Off => "off",
        }
    }
}

/// Past this many subjects, windows older than a minute are dropped when one is taken.
const HEAL_PRUNE_AT: usize = 10_000;

/// The [`HealBudget`] window of all subjects together (a subject's key is never empty).
const HEAL_TOTAL_KEY: &str = "";

impl HealBudget {
    /// Takes one of `limit` refreshes of the subject's current minute and one of `total` of
    /// all subjects' (0: no such bound), both or neither; refused, says which bound is spent.
    fn take(&self, key: &str, limit: u32, total: u32) -> Result<(), Heal> {
        const MINUTE: Duration = Duration::from_secs(60);
        let now = Instant::now();
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        if windows.len() >= HEAL_PRUNE_AT {
            windows.retain(|_, (opened, _)| now.duration_since(*opened) < MINUTE);
        }
        let mut used_of = |key: &str| {
            let (opened, used) = windows.entry(key.to_string()).or_insert((now, 0));
            if now.duration_since(*opened) >= MINUTE {
                (*opened, *used) = (now, 0);
            }
            *used
        };
        if used_of(key) >= limit {
            return Err(Heal::Bounded);
        }
        if total > 0 && used_of(HEAL_TOTAL_KEY) >= total {
            return Err(Heal::BoundedTotal);
        }
        let keys: &[&str] = if total > 0 {
            &[key, HEAL_TOTAL_KEY]
        } else {
            &[key]
        };
        for key in keys {
            if let Some((_, used)) = windows.get_mut(*key) {
                *used += 1;
            }
        }
        Ok(())
    }
}

/// Sends one token request with reqwest (its timeout set at build), noting the answer's status.
async fn send(
    http: reqwest::Client,
    req: oauth2::HttpRequest,
    status: Arc<std::sync::Mutex<Option<StatusCode>>>,
) -> Result<oauth2::HttpResponse, LwaHttpError> {
    let req = reqwest::Request::try_from(req)
        .map_err(|e| LwaHttpError(super::control_plane::describe(&e)))?;
    let resp = http
        .execute(req)
        .await
        .map_err(|e| LwaHttpError(super::control_plane::describe(&e)))?;
    *status.lock().unwrap_or_else(|p| p.into_inner()) = Some(resp.status());
    let mut out = http::Response::builder().status(resp.status());
    for (name, value) in resp.headers() {
        out = out.header(name, value);
    }
    let body = resp
        .bytes()
        .await
        .map_err(|e| LwaHttpError(super::control_plane::describe(&e)))?;
    out.body(body.to_vec())
        .map_err(|e| LwaHttpError(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lwa(min_age_seconds: u64, refreshes_per_minute: u32, total: u32) -> Lwa {
        let cfg = LwaConfig {
            token_url: "http://127.0.0.1:9/auth/o2/token".parse().unwrap(),
            client_id: "amzn1.application-oa2-client.test".into(),
            client_secret: Secret::new("test".into()),
            previous_client_secret: None,
            refresh_margin: Duration::from_secs(300),
            timeout: Duration::from_secs(1),
            token_loss: TokenLossConfig {
                min_age: Duration::from_secs(min_age_seconds),
                refreshes_per_minute,
                refreshes_per_minute_total: total,
            },
        };
        Lwa::new(&cfg, None).unwrap()
    }

    /// Puts `token` in the subject's slot as if LWA had just issued it.
    async fn issue(lwa: &Lwa, subject: &Subject, token: &str) -> Secret<String> {
        let token = Secret::new(token.to_string());
        lwa.tokens.invalidate_if(subject, |_| true).await;
        let got = lwa
            .tokens
            .get_or_fetch(subject, || async {
                Ok((token.clone(), Instant::now() + Duration::from_secs(3600)))
            })
            .await
            .unwrap();
        assert_eq!(got, token);
        token
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_403_heals_old_tokens_once_per_subject_and_minute() {
        let lwa = lwa(10, 1, 0);
        let seller = Subject::Seller("A1SELLER".into());
        let other = Subject::Seller("A2SELLER".into());
        let grantless = Subject::Grantless("sellingpartnerapi::notifications");
        let t1 = issue(&lwa, &seller, "t1").await;
        assert_eq!(lwa.heal(&seller, &t1).await, Heal::Young, "a fresh token");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(lwa.heal(&seller, &t1).await, Heal::Refreshed);
        assert_eq!(
            lwa.heal(&seller, &t1).await,
            Heal::Replaced,
            "a second request with the same lost token spends nothing"
        );
        let t2 = issue(&lwa, &seller, "t2").await;
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(lwa.heal(&seller, &t2).await, Heal::Bounded);
        // Other subjects have bounds of their own: another seller, a grantless scope.
        for subject in [&other, &grantless] {
            let t = issue(&lwa, subject, "t").await;
            tokio::time::advance(Duration::from_secs(10)).await;
            assert_eq!(lwa.heal(subject, &t).await, Heal::Refreshed);
        }
        // A minute after the seller's refresh, its bound is back.
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(lwa.heal(&seller, &t2).await, Heal::Refreshed);
        assert_eq!(
            Heal::ALL.map(|h| lwa.heals(h)),
            [4, 1, 1, 1, 0, 0],
            "refreshed, replaced, young, bounded, bounded_total, off"
        );
        let off = self::lwa(0, 0, 0);
        let t = issue(&off, &seller, "t").await;
        assert_eq!(off.heal(&seller, &t).await, Heal::Off);
        assert!(!Heal::Off.retries() && !Heal::Bounded.retries() && !Heal::Young.retries());
    }

    #[tokio::test(start_paused = true)]
    async fn a_bare_403_heals_at_most_the_instance_total_per_minute_for_all_subjects() {
        let lwa = lwa(10, 1, 2);
        let sellers: Vec<Subject> = (1..=4)
            .map(|i| Subject::Seller(format!("A{i}SELLER")))
            .collect();
        let mut tokens = Vec::new();
        for seller in &sellers {
            tokens.push(issue(&lwa, seller, "t").await);
        }
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(lwa.heal(&sellers[0], &tokens[0]).await, Heal::Refreshed);
        let again = issue(&lwa, &sellers[0], "t2").await;
        tokio::time::advance(Duration::from_secs(10)).await;
        // The subject's own bound refuses first, and spends nothing of the total.
        assert_eq!(lwa.heal(&sellers[0], &again).await, Heal::Bounded);
        assert_eq!(lwa.heal(&sellers[1], &tokens[1]).await, Heal::Refreshed);
        // Two refreshes this minute in all: any other subject is refused, its bound untouched.
        assert_eq!(lwa.heal(&sellers[2], &tokens[2]).await, Heal::BoundedTotal);
        assert_eq!(lwa.heal(&sellers[3], &tokens[3]).await, Heal::BoundedTotal);
        assert!(!Heal::BoundedTotal.retries());
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(lwa.heal(&sellers[2], &tokens[2]).await, Heal::Refreshed);
        assert_eq!(
            Heal::ALL.map(|h| lwa.heals(h)),
            [3, 0, 0, 1, 2, 0],
            "refreshed, replaced, young, bounded, bounded_total, off"
        );
        let mut metrics = String::new();
        lwa.render_metrics(&mut metrics);
        assert!(
            metrics.contains("spgate_lwa_token_loss_total{outcome=\"bounded_total\"} 2"),
            "{metrics}"
        );
    }

    #[test]
    fn the_circuit_opens_after_consecutive_failures_and_an_answer_closes_it() {
        let circuit = Circuit::default();
        let down = LwaError::Unavailable("token endpoint answered 503".into());
        for _ in 1..CIRCUIT_THRESHOLD {
            circuit.failed(&down);
        }
        assert!(
            !circuit.is_open(),
            "below the threshold requests still go to LWA"
        );
        circuit.failed(&down);
        assert!(circuit.is_open());
        assert_eq!(circuit.opened(), 1);
        match circuit.check() {
            Err(LwaError::CircuitOpen {
                retry_after_seconds,
            }) => assert!((1..=CIRCUIT_OPEN_FOR.as_secs()).contains(&retry_after_seconds)),
            other => panic!("expected an open circuit, got {other:?}"),
        }
        circuit.answered();
        assert!(!circuit.is_open());
        // A single failure after recovery does not reopen it.
        circuit.failed(&down);
        assert!(!circuit.is_open());
    }
}
