//! Seller onboarding through Amazon's website authorization workflow.
//!
//! 1. Ops create a signed one-time invite (`spgate sellers invite --region eu`) and send the
//!    link to the seller.
//! 2. `GET /oauth/start?invite=<id>.<signature>` checks the invite and redirects the seller to
//!    Seller Central's consent page with our application id, a fresh single-use `state` (256
//!    random bits, stored only as a hash, bound to the invite, valid 10 minutes) and
//!    `version=beta` for a draft application.
//! 3. Amazon sends the seller back to `GET /oauth/callback?state=...&selling_partner_id=...&
//!    spapi_oauth_code=...`. The state is taken (a replay finds nothing), the code is exchanged
//!    for a refresh token (authorization_code grant with our redirect URI), and the seller is
//!    recorded with its refresh token sealed, its region from the invite, its marketplaces and a
//!    re-authorization date a year out. Any failure shows an error page and stores nothing.
//!
//! The `selling_partner_id` comes from the browser, so it is not trusted: before anything is
//! stored, Amazon must confirm that the new token belongs to that seller, with an SP-API call
//! keyed by the seller id (`searchListingsItems` for `/listings/2021-08-01/items/{sellerId}`,
//! which Amazon answers only for the token's own seller). An invite made by ops for a seller id
//! (a re-authorization link) additionally admits only that id. A callback Amazon does not
//! confirm is refused and alerted (error log, audit record, `spgate_onboarding_refused_total`):
//! it is someone squatting a seller id with their own account, or a re-authorization that would
//! move a connected seller to another account.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;

use super::lwa::{Lwa, LwaError};
use crate::config::{Endpoints, OnboardingConfig};
use crate::crypto::{self, CryptoError, MasterKey};
use crate::net::body::{self, Body};
use crate::net::upstream::HttpClient;
use crate::secret::Secret;
use crate::store::{Invite, OAuthState, Region, SellerRecord, SellerStatus, Store, StoreError};

/// Path that starts an authorization.
pub const START_PATH: &str = "/oauth/start";
/// Path Amazon redirects back to.
pub const CALLBACK_PATH: &str = "/oauth/callback";

/// Set on the callback's response when a seller was connected (the pipeline audits it).
#[derive(Debug, Clone)]
pub struct Authorized(pub String);
/// Lifetime of one authorization attempt's `state`.
pub const STATE_TTL_SECONDS: i64 = 600;
/// Sellers re-authorize yearly.
pub const REAUTHORIZE_AFTER_SECONDS: i64 = 365 * 86_400;
/// How long the confirming SP-API call may take.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);
/// Callbacks refused because Amazon did not confirm the seller id, or because a
/// re-authorization link came back naming another seller.
static REFUSED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Callbacks refused since start because Amazon did not confirm the seller id (spoofed ids and
/// re-authorizations into another account) or a re-authorization link named another seller,
/// for `spgate_onboarding_refused_total`.
pub fn refused_total() -> u64 {
    REFUSED.load(std::sync::atomic::Ordering::Relaxed)
}

/// Signature purpose for invites.
const INVITE_PURPOSE: &str = "seller-invite";

/// Why an onboarding step failed. Rendered as an error page; never echoes request values.
#[derive(Debug, thiserror::Error)]
pub enum OnboardingError {
    /// `[onboarding]` is not configured.
    #[error("seller onboarding is not configured")]
    NotConfigured,
    /// The invite is missing, malformed, forged or unknown.
    #[error("invalid invite link")]
    BadInvite,
    /// The invite was already used.
    #[error("invite already used")]
    InviteUsed,
    /// The invite expired.
    #[error("invite expired")]
    InviteExpired,
    /// A callback parameter is missing.
    #[error("callback is missing {0}")]
    MissingParameter(&'static str),
    /// The state is missing, unknown, expired or replayed.
    #[error("invalid, expired or replayed state")]
    BadState,
    /// A re-authorization link came back with another seller's id.
    #[error("the callback names another seller than the invite for seller {expected}")]
    WrongSeller {
        /// The seller the re-authorization link was made for (an id, not personal data).
        expected: String,
    },
    /// A new-seller link came back with a seller that is already connected.
    #[error("the seller is already connected")]
    AlreadyConnected,
    /// Amazon did not confirm that the new refresh token belongs to the seller id the browser
    /// sent: a spoofed seller id, or a re-authorization into another account.
    #[error("Amazon did not confirm seller {claimed} for the new token (answered {status})")]
    SellerNotConfirmed {
        /// The seller id the callback named (an id, not personal data).
        claimed: String,
        /// Whether the seller is already connected (the attempt would have rebound it).
        rebind: bool,
        /// Amazon's status for the confirming call.
        status: u16,
    },
    /// Amazon could not be asked to confirm the seller (no answer, 5xx, no marketplace).
    #[error("the seller could not be confirmed with Amazon: {0}")]
    ConfirmationUnavailable(String),
    /// Amazon reported an error instead of a code.
    #[error("Amazon reported an authorization error")]
    Denied,
    /// Exchanging the code failed.
    #[error(transparent)]
    Lwa(#[from] LwaError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Sealing or randomness failed.
    #[error(transparent)]
    Crypto(#[from] CryptoError),
}

/// Creates an invite and returns its link.
pub async fn create_invite(
    store: &dyn Store,
    key: &MasterKey,
    cfg: &OnboardingConfig,
    region: Region,
    seller: Option<&str>,
    now: i64,
) -> Result<String, OnboardingError> {
    let id = crypto::random_token::<18>()?;
    store
        .insert_invite(&Invite {
            id: id.clone(),
            region,
            created_at: now,
            expires_at: now + cfg.invite_ttl.as_secs() as i64,
            used_at: None,
            seller: seller.map(str::to_string),
        })
        .await?;
    let sig = key.sign(INVITE_PURPOSE, id.as_bytes());
    Ok(format!("{}{START_PATH}?invite={id}.{sig}", cfg.public_url))
}

/// The website authorization workflow's two endpoints.
pub struct Onboarding<'a> {
    /// Config.
    pub cfg: &'a OnboardingConfig,
    /// Where invites, states and sellers live.
    pub store: &'a dyn Store,
    /// Signs invites, seals refresh tokens.
    pub key: &'a MasterKey,
    /// Exchanges codes.
    pub lwa: &'a Lwa,
    /// For the marketplace lookup after authorization.
    pub client: &'a HttpClient,
    /// SP-API endpoints per region.
    pub endpoints: &'a Endpoints,
}

impl Onboarding<'_> {
    /// `GET /oauth/start?invite=...`: redirect to Seller Central's consent page.
    pub async fn start(
        &self,
        query: Option<&str>,
        now: i64,
    ) -> Result<Response<Body>, OnboardingError> {
        let invite = param(query, "invite").ok_or(OnboardingError::BadInvite)?;
        let (id, sig) = invite.split_once('.').ok_or(OnboardingError::BadInvite)?;
        if !self.key.verify(INVITE_PURPOSE, id.as_bytes(), sig) {
            return Err(OnboardingError::BadInvite);
        }
        let invite = self.usable_invite(id, now).await?;
        let state = crypto::random_token::<32>()?;
        self.store
            .insert_oauth_state(&OAuthState {
                state_hash: crypto::sha256_hex(state.as_bytes()),
                invite_id: invite.id,
                expires_at: now + STATE_TTL_SECONDS,
            })
            .await?;
        let mut consent = format!(
            "{}/apps/authorize/consent?",
            self.cfg
                .consent_urls
                .for_region(invite.region)
                .to_string()
                .trim_end_matches('/')
        );
        let mut q = form_urlencoded::Serializer::new(String::new());
        q.append_pair("application_id", &self.cfg.application_id);
        q.append_pair("state", &state);
        if self.cfg.draft {
            q.append_pair("version", "beta");
        }
        consent.push_str(&q.finish());
        let mut resp = page(StatusCode::FOUND, "Redirecting to Amazon Seller Central…");
        let location = HeaderValue::from_str(&consent).map_err(|_| OnboardingError::BadInvite)?;
        resp.headers_mut().insert(header::LOCATION, location);
        Ok(resp)
    }

    /// `GET /oauth/callback?...`: exchange the code and record the seller.
    pub async fn callback(
        &self,
        query: Option<&str>,
        now: i64,
    ) -> Result<Response<Body>, OnboardingError> {
        if param(query, "error").is_some() {
            return Err(OnboardingError::Denied);
        }
        let state = param(query, "state").ok_or(OnboardingError::BadState)?;
        let taken = self
            .store
            .take_oauth_state(&crypto::sha256_hex(state.as_bytes()), now)
            .await?
            .ok_or(OnboardingError::BadState)?;
        let seller = param(query, "selling_partner_id")
            .ok_or(OnboardingError::MissingParameter("selling_partner_id"))?;
        if seller.is_empty()
            || seller.len() > 64
            || !seller.bytes().all(|b| b.is_ascii_alphanumeric())
        {
            return Err(OnboardingError::MissingParameter(
                "a valid selling_partner_id",
            ));
        }
        let code = Secret::new(
            param(query, "spapi_oauth_code")
                .ok_or(OnboardingError::MissingParameter("spapi_oauth_code"))?,
        );
        let invite = self.usable_invite(&taken.invite_id, now).await?;
        // The seller id comes from the browser: it may only name the seller the invite was made
        // for (re-authorization), or a seller not connected yet (checked atomically below).
        if let Some(expected) = invite.seller.as_deref().filter(|e| *e != seller) {
            REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let err = OnboardingError::WrongSeller {
                expected: expected.to_string(),
            };
            tracing::error!(error = %err, seller = %expected, "Seller re-authorization refused: the callback names another seller than the link was made for.");
            return Err(err);
        }
        let fetched = self.lwa.exchange_code(code, &self.cfg.redirect_uri).await?;
        let refresh = fetched
            .refresh_token
            .ok_or_else(|| LwaError::Protocol("no refresh token".into()))?;
        let marketplaces = self
            .marketplaces(invite.region, &fetched.access_token)
            .await;
        self.confirm_seller(invite.region, &seller, &fetched.access_token, &marketplaces)
            .await?;
        let sealed = self
            .key
            .seal_str(&refresh, format!("refresh_token:{seller}").as_bytes())?;
        if !self.store.use_invite(&invite.id, now).await? {
            return Err(OnboardingError::InviteUsed);
        }
        let record = SellerRecord {
            selling_partner_id: seller.clone(),
            region: invite.region,
            marketplaces,
            refresh_token_sealed: sealed,
            authorized_at: now,
            reauthorize_by: now + REAUTHORIZE_AFTER_SECONDS,
            status: SellerStatus::Active,
        };
        match invite.seller {
            Some(_) => self.store.put_seller(&record).await?,
            None => match self.store.insert_seller(&record).await {
                Err(StoreError::Conflict(_)) => return Err(OnboardingError::AlreadyConnected),
                other => other?,
            },
        }
        tracing::info!(seller = %seller, region = %invite.region, "Seller authorized the application.");
        let mut resp = page(
            StatusCode::OK,
            "Thank you: your Amazon seller account is now connected. You can close this page.",
        );
        resp.extensions_mut().insert(Authorized(seller));
        Ok(resp)
    }

    async fn usable_invite(&self, id: &str, now: i64) -> Result<Invite, OnboardingError> {
        let invite = self
            .store
            .invite(id)
            .await?
            .ok_or(OnboardingError::BadInvite)?;
        if invite.used_at.is_some() {
            return Err(OnboardingError::InviteUsed);
        }
        if invite.expires_at <= now {
            return Err(OnboardingError::InviteExpired);
        }
        Ok(invite)
    }

    /// Asks Amazon whether the token belongs to `seller`: `searchListingsItems` for that seller
    /// id (one result at most) answers 2xx only for the token's own seller. Any other answer
    /// refuses the callback; no answer refuses it too (nothing is stored unconfirmed).
    async fn confirm_seller(
        &self,
        region: Region,
        seller: &str,
        access_token: &Secret<String>,
        marketplaces: &[String],
    ) -> Result<(), OnboardingError> {
        let unavailable = |why: &str| OnboardingError::ConfirmationUnavailable(why.to_string());
        let marketplace = marketplaces
            .first()
            .ok_or_else(|| unavailable("no marketplace to ask in"))?;
        let base = self.endpoints.for_region(region).to_string();
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("marketplaceIds", marketplace)
            .append_pair("pageSize", "1")
            .finish();
        let uri: Uri = format!(
            "{}/listings/2021-08-01/items/{seller}?{query}",
            base.trim_end_matches('/')
        )
        .parse()
        .map_err(|_| unavailable("bad endpoint"))?;
        let mut token = HeaderValue::from_str(access_token.expose())
            .map_err(|_| unavailable("unusable access token"))?;
        token.set_sensitive(true);
        let req = Request::get(uri)
            .header(crate::spapi::ACCESS_TOKEN, token)
            .body(body::empty())
            .map_err(|_| unavailable("bad request"))?;
        let status = match tokio::time::timeout(CONFIRM_TIMEOUT, self.client.request(req)).await {
            Ok(Ok(resp)) => resp.status(),
            Ok(Err(e)) => return Err(unavailable(&format!("SP-API unreachable: {e}"))),
            Err(_) => return Err(unavailable("SP-API did not answer in time")),
        };
        if status.is_success() {
            return Ok(());
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(unavailable(&format!("SP-API answered {status}")));
        }
        let rebind = self.store.seller(seller).await?.is_some();
        REFUSED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = OnboardingError::SellerNotConfirmed {
            claimed: seller.to_string(),
            rebind,
            status: status.as_u16(),
        };
        tracing::error!(error = %err, seller = %seller, rebind, "Seller authorization refused: Amazon does not confirm the seller id the browser sent.");
        Err(err)
    }

    /// The seller's marketplace ids (best effort: an empty list if Amazon does not answer).
    async fn marketplaces(&self, region: Region, access_token: &Secret<String>) -> Vec<String> {
        let base = self.endpoints.for_region(region).to_string();
        let uri: Result<Uri, _> = format!(
            "{}/sellers/v1/marketplaceParticipations",
            base.trim_end_matches('/')
        )
        .parse();
        let (Ok(uri), Ok(mut token)) = (uri, HeaderValue::from_str(access_token.expose())) else {
            return Vec::new();
        };
        token.set_sensitive(true);
        let Ok(req) = Request::get(uri)
            .header(crate::spapi::ACCESS_TOKEN, token)
            .body(body::empty())
        else {
            return Vec::new();
        };
        let fetch = async {
            let resp = self.client.request(req).await.ok()?;
            if !resp.status().is_success() {
                return None;
            }
            let bytes = resp.into_body().collect().await.ok()?.to_bytes();
            let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
            Some(
                v["payload"]
                    .as_array()?
                    .iter()
                    .filter_map(|p| p["marketplace"]["id"].as_str().map(str::to_string))
                    .collect(),
            )
        };
        match tokio::time::timeout(Duration::from_secs(10), fetch).await {
            Ok(Some(ids)) => ids,
            _ => {
                tracing::warn!(
                    "Could not list the new seller's marketplaces; recorded without them."
                );
                Vec::new()
            }
        }
    }
}

fn param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A minimal HTML page. The message is ours, never a request value.
pub fn page(status: StatusCode, message: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>spgate</title></head><body><p>{message}</p></body></html>"
    );
    let mut resp = Response::new(body::full(Bytes::from(html)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    resp
}
