//! The admin listener: a separate port with its own bearer tokens and roles.
//!
//! **API Boundary:** its own listener. **Invariant:** the proxy listener serves no admin route.
//!
//! Routes: `GET /healthz` and `GET /readyz` (liveness, and whether the store answers),
//! `GET /metrics` (Prometheus text), and for the `ops` role `GET /admin/ratelimits?seller=&
//! operation=` (tokens, rate, queue depth, per-tool use), `POST /admin/reload` (re-reads the
//! config file; an invalid file is refused and the running plans stay), `GET /admin/compat`
//! (per region, whether compat mode `auto` translates Orders v0 because Amazon answered it as
//! removed) and `POST /admin/compat/reset?region=` (forgets that, audited).
//!
//! Orders (the vault, when attached with [`Admin::with_vault`]): `POST
//! /admin/orders/{orderId}/delivered` (ops; `{"seller", "delivered_at"?, "source"?}`, records the
//! delivery so the order's PII is due 30 days later), `POST /admin/orders/{orderId}/hold`
//! (security; `{"seller", "reason", "until"}`, a legal hold) and `DELETE
//! /admin/orders/{orderId}/hold?seller=` (security; releases it). Each answers JSON; the vault
//! audits them.
//!
//! The web console (`/console`, [`console`]) uses the same tokens, role check and actions.

pub mod console;

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::config::{AdminRole, AdminToken, Config, ConfigIssue, Env};
use crate::crypto;
use crate::net::body::{self, Body};
use crate::proxy::Gateway;
use crate::vault::{self, Vault, VaultError};

/// Largest JSON body an order route reads.
const MAX_ORDER_BODY: usize = 64 * 1024;

/// Why an admin request was refused.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// No route.
    #[error("no such admin route")]
    NotFound,
    /// Missing or unknown bearer token.
    #[error("missing or unknown admin token")]
    Unauthorized,
    /// The token's role may not do this.
    #[error("the {0:?} role may not do this")]
    Forbidden(AdminRole),
    /// Reload asked of a gateway that was not started from a config file.
    #[error("this gateway has no config file to reload")]
    NoConfigFile,
    /// The new config is invalid; nothing changed.
    #[error("the new configuration is invalid")]
    InvalidConfig(Vec<ConfigIssue>),
    /// The audit log cannot be written: admin and security actions are refused (or, done,
    /// not confirmed) until it can.
    #[error("the audit log cannot be written")]
    AuditUnavailable,
    /// A query parameter has a value the route does not take (its name).
    #[error("the parameter {0} has an invalid value")]
    BadParameter(&'static str),
}

/// The admin service.
pub struct Admin {
    gateway: Arc<Gateway>,
    /// (SHA-256 of the token, holder, role).
    tokens: Vec<(String, String, AdminRole)>,
    config_path: Option<PathBuf>,
    env: Arc<dyn Env + Send + Sync>,
    /// The vault behind the order routes (none: they answer 404).
    vault: Option<Vault>,
    /// TLS listeners whose counters `/metrics` shows.
    tls: Vec<Arc<crate::server::tls::TlsListener>>,
    /// The web console's sessions and live statistics.
    console: console::Console,
    /// The proxy listener's forward proxy (its counters for `/metrics`; its configuration,
    /// which a reload may not change).
    forward: Option<Arc<crate::server::forward::Forward>>,
}

impl Admin {
    /// Builds the admin service for a gateway.
    pub fn new(
        gateway: Arc<Gateway>,
        tokens: &[AdminToken],
        config_path: Option<PathBuf>,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Admin {
        Admin {
            console: console::Console::new(gateway.auditor()),
            gateway,
            tokens: tokens
                .iter()
                .map(|t| {
                    (
                        crypto::sha256_hex(t.token.expose().as_bytes()),
                        t.name.clone(),
                        t.role,
                    )
                })
                .collect(),
            config_path,
            env,
            vault: None,
            tls: Vec::new(),
            forward: None,
        }
    }

    /// The proxy listener's forward proxy, when `[forward_proxy]` is enabled.
    pub fn with_forward(mut self, forward: Option<Arc<crate::server::forward::Forward>>) -> Admin {
        self.forward = forward;
        self
    }

    /// Serves the order routes (delivery events, legal holds) with this vault.
    pub fn with_vault(mut self, vault: Vault) -> Admin {
        self.vault = Some(vault);
        self
    }

    /// Lets the console query, report and verify this audit log.
    pub fn with_audit(mut self, audit: Option<crate::audit::AuditConfig>) -> Admin {
        self.console.set_audit(audit);
        self
    }

    /// Tells the console which rate plans and tool assignments are in force at start.
    pub fn with_plans(
        self,
        plans: &crate::ratelimit::config::Plans,
        tools: &std::collections::BTreeMap<String, String>,
    ) -> Admin {
        self.console.set_plans(plans, tools);
        self
    }

    /// Lets the console's ops create seller invite links (when `[onboarding]` is configured).
    pub fn with_onboarding(
        mut self,
        master_key: Arc<crypto::MasterKey>,
        onboarding: Option<crate::config::OnboardingConfig>,
    ) -> Admin {
        self.console.set_onboarding(master_key, onboarding);
        self
    }

    /// The console's live request statistics.
    pub fn console_stats(&self) -> &console::stats::Stats {
        self.console.stats()
    }

    /// Shows these TLS listeners' reloads and handshake failures in `/metrics`.
    pub fn with_tls(mut self, tls: Vec<Arc<crate::server::tls::TlsListener>>) -> Admin {
        self.tls = tls;
        self
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body>
    where
        B: http_body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path();
        if path == "/console" || path.starts_with("/console/") {
            return console::handle(self, req).await;
        }
        // Records lost from here on (even if a gap has reported them) fail the action.
        let lost = self.gateway.auditor().lost_mark();
        if req.uri().path().starts_with("/admin/orders/") {
            return match self.orders(req).await {
                // An action is confirmed only once its records are written.
                Ok(_) if self.gateway.auditor().flushed_since(lost).await.is_err() => {
                    error_response(&AdminError::AuditUnavailable)
                }
                Ok(resp) => resp,
                Err(OrderRouteError::Admin(e)) => error_response(&e),
                Err(e) => order_error(&e),
            };
        }
        let action = req.method() != Method::GET;
        match self.route(&req).await {
            // An action is confirmed only once its records are written.
            Ok(_) if action && self.gateway.auditor().flushed_since(lost).await.is_err() => {
                error_response(&AdminError::AuditUnavailable)
            }
            Ok(resp) => resp,
            Err(e) => error_response(&e),
        }
    }

    async fn route<B>(&self, req: &Request<B>) -> Result<Response<Body>, AdminError> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") => Ok(self.readiness().await),
            (&Method::GET, "/metrics") => Ok(self.metrics()),
            (&Method::GET, "/admin/ratelimits") => {
                self.authorize(req, AdminRole::Ops)?;
                let q = req.uri().query().unwrap_or("");
                let param = |name: &str| {
                    form_urlencoded::parse(q.as_bytes())
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.into_owned())
                };
                let (seller, operation) = (param("seller"), param("operation"));
                let limiter = self.gateway.limiter();
                let status = limiter.status(seller.as_deref(), operation.as_deref());
                let application = limiter.app_status(operation.as_deref());
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "buckets": status, "application": application }),
                ))
            }
            (&Method::GET, "/admin/compat") => {
                self.authorize(req, AdminRole::Ops)?;
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "orders_v0_auto": self.gateway.compat().status() }),
                ))
            }
            (&Method::POST, "/admin/compat/reset") => {
                let who = self.authorize(req, AdminRole::Ops)?;
                let region =
                    match form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .find(|(k, _)| k == "region")
                    {
                        Some((_, r)) => Some(
                            r.parse::<crate::store::Region>()
                                .map_err(|_| AdminError::BadParameter("region"))?,
                        ),
                        None => None,
                    };
                let was = self.gateway.compat().reset_removal(region);
                let record = crate::audit::Record::new(crate::audit::Kind::CompatSwitch)
                    .with_actor(&who)
                    .with_reason(crate::audit::Reason::from_static(match region {
                        None => "reset_all",
                        Some(crate::store::Region::Na) => "reset_na",
                        Some(crate::store::Region::Eu) => "reset_eu",
                        Some(crate::store::Region::Fe) => "reset_fe",
                    }));
                self.gateway.auditor().record(record);
                tracing::warn!(admin = %who, "Compat mode auto's removal detection was reset through the admin listener.");
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "reset": true, "were_translating": was }),
                ))
            }
            (&Method::POST, "/admin/reload") => {
                let who = self.authorize(req, AdminRole::Ops)?;
                self.reload(Some(&who))?;
                tracing::info!(admin = %who, "Configuration reloaded through the admin listener.");
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "reloaded": true }),
                ))
            }
            _ => Err(AdminError::NotFound),
        }
    }

    /// `/readyz`: 503 whenever requests would fail for a dependency, naming each one down (one
    /// per line): the store does not answer, the limiter's Redis does not answer while
    /// `fail_mode = "closed"`, the audit log cannot be written, or LWA's circuit is open.
    async fn readiness(&self) -> Response<Body> {
        let down: Vec<&str> = self
            .dependencies()
            .await
            .into_iter()
            .filter_map(|(_, problem)| problem)
            .collect();
        if down.is_empty() {
            return text(StatusCode::OK, "ready\n");
        }
        let mut resp = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", down.join("\n")),
        );
        resp.headers_mut().insert(
            header::RETRY_AFTER,
            HeaderValue::from(crate::proxy::rescue::RETRY_AFTER_SECONDS),
        );
        resp
    }

    /// Each dependency requests need, with what is wrong with it (`None`: up): the store (always
    /// asked, past the cache), the limiter's Redis while `fail_mode = "closed"`, the audit log,
    /// and LWA's circuit.
    pub(crate) async fn dependencies(&self) -> Vec<(&'static str, Option<&'static str>)> {
        let store = match self.gateway.store().ping().await {
            Ok(()) => None,
            Err(e) => {
                if let Some(repeats) = crate::proxy::rescue::log_limit::admit("readyz store") {
                    tracing::warn!(error = %e, repeats, "Not ready: the store does not answer.");
                }
                Some("store unavailable")
            }
        };
        let limiter = (!self.gateway.limiter().ready().await)
            .then_some("rate limit store (redis, fail_mode closed) unavailable");
        let audit = (!self.gateway.auditor().healthy()).then_some("audit log unavailable");
        let lwa = self
            .gateway
            .lwa()
            .circuit()
            .is_open()
            .then_some("login with amazon circuit open");
        vec![
            ("store", store),
            ("rate limit store", limiter),
            ("audit log", audit),
            ("Login with Amazon", lwa),
        ]
    }

    /// The vault behind the order routes and the console's retention page.
    fn vault(&self) -> Result<&Vault, AdminError> {
        self.vault.as_ref().ok_or(AdminError::NotFound)
    }

    /// Re-reads the config file and applies its rate plans, the tools' client-certificate
    /// pins and Orders v0 modes; an invalid file changes nothing. `actor` is the admin who
    /// asked (the admin API's token holder, the console's signed-in admin; none for SIGHUP),
    /// named in the audit record.
    pub fn reload(&self, actor: Option<&str>) -> Result<(), AdminError> {
        let path = self.config_path.as_ref().ok_or(AdminError::NoConfigFile)?;
        // `[forward_proxy]` is set up at start only: a change is refused, not ignored.
        let running = self.forward.as_ref().map(|f| f.config());
        let loaded = Config::load(path, &*self.env).and_then(|c| {
            crate::server::forward::Forward::reload_check(running, c.forward_proxy.as_ref())
                .map(|()| c)
                .map_err(|issue| crate::config::ConfigError(vec![issue]))
        });
        let mut record = crate::audit::Record::new(crate::audit::Kind::Reload);
        record.reason = Some(crate::audit::Reason::from_static(if loaded.is_ok() {
            "applied"
        } else {
            "refused_invalid"
        }));
        if let Some(actor) = actor {
            record = record.with_actor(actor);
        }
        self.gateway.auditor().record(record);
        let config = loaded.map_err(|e| AdminError::InvalidConfig(e.0))?;
        self.console
            .set_plans(&config.ratelimit.limiter.plans, &config.tool_plans);
        self.gateway
            .reload_plans(config.ratelimit.limiter.plans, config.tool_plans);
        // Client-certificate pins apply to connections and requests from now on.
        for listener in self.tls.iter().filter(|l| l.name() == "proxy") {
            listener.set_pins(config.tool_client_certs.clone());
        }
        self.gateway.set_client_pins(config.tool_client_certs);
        self.gateway.compat().reload(config.compat); // Orders v0 modes per tool
        Ok(())
    }

    /// `/admin/orders/{orderId}/delivered` and `/admin/orders/{orderId}/hold`.
    async fn orders<B>(&self, req: Request<B>) -> Result<Response<Body>, OrderRouteError>
    where
        B: http_body::Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = req.uri().path().to_string();
        let rest = path.trim_start_matches("/admin/orders/");
        let (raw_id, action) = rest.split_once('/').ok_or(AdminError::NotFound)?;
        let order_id = percent_encoding::percent_decode_str(raw_id)
            .decode_utf8()
            .map_err(|_| AdminError::NotFound)?
            .into_owned();
        if order_id.is_empty() {
            return Err(AdminError::NotFound.into());
        }
        let method = req.method().clone();
        let role = match (&method, action) {
            (&Method::POST, "delivered") => AdminRole::Ops,
            (&Method::POST | &Method::DELETE, "hold") => AdminRole::Security,
            _ => return Err(AdminError::NotFound.into()),
        };
        let who = self.authorize(&req, role)?;
        let vault = self.vault()?;
        let query_seller = req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "seller")
                .map(|(_, v)| v.into_owned())
        });
        let body = read_json(req.into_body(), self.gateway.body_read_timeout()).await?;
        let field = |name: &str| body.get(name).and_then(|v| v.as_str()).map(str::to_string);
        let seller = field("seller")
            .or(query_seller)
            .filter(|s| !s.is_empty())
            .ok_or(OrderRouteError::BadRequest("seller is required"))?;
        let time = |name: &'static str| -> Result<Option<time::OffsetDateTime>, OrderRouteError> {
            match field(name) {
                None => Ok(None),
                Some(s) => vault::parse_rfc3339(&s)
                    .map(Some)
                    .ok_or(OrderRouteError::BadRequest("dates must be RFC 3339")),
            }
        };
        let record = match (&method, action) {
            (&Method::POST, "delivered") => {
                let at = time("delivered_at")?.unwrap_or_else(|| vault.now());
                let source = match field("source") {
                    None => crate::store::DeliverySource::Event,
                    Some(s) => s.parse().map_err(|_| {
                        OrderRouteError::BadRequest("source must be event, order_data or ops")
                    })?,
                };
                vault.delivered(&seller, &order_id, at, source).await?;
                tracing::info!(admin = %who, %seller, %order_id, "Delivery recorded through the admin listener.");
                vault.record(&seller, &order_id).await?
            }
            (&Method::POST, _) => {
                let reason = field("reason").unwrap_or_default();
                let until =
                    time("until")?.ok_or(OrderRouteError::BadRequest("until is required"))?;
                Some(vault.hold(&seller, &order_id, &reason, until, &who).await?)
            }
            _ => Some(vault.release(&seller, &order_id, &who).await?),
        };
        let record = record.ok_or(VaultError::UnknownOrder)?;
        Ok(json(
            StatusCode::OK,
            &serde_json::json!({
                "order_id": record.order_id,
                "seller": record.seller,
                "state": record.state,
                "delivered_at": record.delivered_at.map(vault::rfc3339),
                "delivery_source": record.delivery_source,
                "due": vault::rfc3339(record.due_at),
                "purge_at": vault::rfc3339(record.purge_at()),
                "legal_hold": record.hold.as_ref().map(|h| serde_json::json!({
                    "reason": h.reason,
                    "until": vault::rfc3339(h.until),
                    "by": h.by,
                })),
            }),
        ))
    }

    fn authorize<B>(&self, req: &Request<B>, role: AdminRole) -> Result<String, AdminError> {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AdminError::Unauthorized)?;
        let (name, has) = self.token_holder(presented)?;
        self.permit(has, role)?;
        Ok(name)
    }

    /// The holder and role of an admin token (the API's bearer token, the console's sign-in).
    fn token_holder(&self, presented: &str) -> Result<(String, AdminRole), AdminError> {
        let hash = crypto::sha256_hex(presented.trim().as_bytes());
        // Every token is compared, each in constant time: neither the position of a match nor
        // where a digest differs shows in the time taken.
        let mut found = None;
        for (h, name, role) in &self.tokens {
            if crypto::constant_time_eq(h.as_bytes(), hash.as_bytes()) && found.is_none() {
                found = Some((name.clone(), *role));
            }
        }
        found.ok_or(AdminError::Unauthorized)
    }

    /// Whether a holder of role `has` may do what needs `role`: the role matches and the audit
    /// log can record the action.
    fn permit(&self, has: AdminRole, role: AdminRole) -> Result<(), AdminError> {
        if has != role {
            return Err(AdminError::Forbidden(has));
        }
        if !self.gateway.auditor().available() {
            return Err(AdminError::AuditUnavailable);
        }
        Ok(())
    }

    fn metrics(&self) -> Response<Body> {
        let m = self.gateway.limiter().metrics();
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, samples: &[(&str, u64)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
        counter(
            "spgate_ratelimit_decisions_total",
            "Rate-limit decisions by outcome.",
            &[
                ("{outcome=\"immediate\"}", m.admitted_immediate),
                ("{outcome=\"waited\"}", m.admitted_waited),
                ("{outcome=\"throttled\"}", m.rejected_throttled),
                ("{outcome=\"deferred\"}", m.rejected_deferred),
                ("{outcome=\"queue_full\"}", m.rejected_queue_full),
                ("{outcome=\"unavailable\"}", m.rejected_unavailable),
            ],
        );
        counter(
            "spgate_upstream_throttled_total",
            "429 answers received from Amazon.",
            &[("", m.upstream_throttled)],
        );
        counter(
            "spgate_ratelimit_redis_fallbacks_total",
            "Decisions taken locally because Redis was unreachable.",
            &[("", m.redis_fallbacks)],
        );
        counter(
            "spgate_ratelimit_app_limited_total",
            "Decisions where an application-wide bucket (all sellers) had no token.",
            &[("", m.app_limited)],
        );
        counter(
            "spgate_ratelimit_redis_errors_total",
            "Failed Redis calls of the limiter.",
            &[("", m.redis_errors)],
        );
        counter(
            "spgate_lwa_token_requests_total",
            "Calls to the LWA token endpoint.",
            &[("", self.gateway.lwa().calls())],
        );
        counter(
            "spgate_lwa_circuit_opened_total",
            "Times the LWA circuit opened after repeated failures (token requests then fail fast).",
            &[("", self.gateway.lwa().circuit().opened())],
        );
        counter(
            "spgate_onboarding_refused_total",
            "Seller authorizations refused because Amazon did not confirm the seller id or a re-authorization link named another seller (spoofing or rebinding attempts).",
            &[("", crate::auth::onboarding::refused_total())],
        );
        counter(
            "spgate_rdt_requests_total",
            "createRestrictedDataToken calls.",
            &[("", self.gateway.rdts().calls())],
        );
        let _ = writeln!(
            out,
            "# HELP spgate_ratelimit_wait_seconds Time admitted requests waited for a token.\n# TYPE spgate_ratelimit_wait_seconds summary\nspgate_ratelimit_wait_seconds_sum {}\nspgate_ratelimit_wait_seconds_count {}",
            m.wait_seconds_sum, m.wait_count
        );
        let _ = writeln!(
            out,
            "# HELP spgate_lwa_circuit_open Whether LWA's circuit is open now.\n# TYPE spgate_lwa_circuit_open gauge\nspgate_lwa_circuit_open {}",
            u8::from(self.gateway.lwa().circuit().is_open())
        );
        crate::server::peers::render_metrics(&mut out);
        console::render_metrics(&mut out);
        crate::server::forward::render_metrics(self.forward.as_deref(), &mut out);
        self.gateway.auditor().render_metrics(&mut out);
        self.gateway.lwa().render_metrics(&mut out);
        self.gateway.shared_calls().render_metrics(&mut out);
        self.gateway.replay_budget().render_metrics(&mut out);
        self.gateway.outbound().render_metrics(&mut out);
        self.gateway.header_drops().render_metrics(&mut out);
        self.gateway.pii_gate().render_metrics(&mut out);
        self.gateway.compat().render_metrics(&mut out);
        crate::server::tls::render_metrics(&self.tls, &mut out);
        let mut resp = Response::new(body::full(out));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        resp
    }
}

impl crate::server::Handler for Admin {
    async fn call(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Body> {
        self.handle(req).await
    }
}

fn text(status: StatusCode, body: impl Into<bytes::Bytes>) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
}

/// Why an order route failed (besides the admin errors `rescue` maps).
#[derive(Debug, thiserror::Error)]
enum OrderRouteError {
    /// Routing or authorization.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The request body or query is unusable.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(#[from] VaultError),
}

/// Reads a small JSON object body; an empty body is an empty object.
async fn read_json<B>(
    body: B,
    deadline: std::time::Duration,
) -> Result<serde_json::Map<String, serde_json::Value>, OrderRouteError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let bytes = crate::server::peers::read_body(body, MAX_ORDER_BODY, deadline)
        .await
        .map_err(|e| match e {
            crate::server::peers::BodyReadError::TooLarge { .. } => {
                OrderRouteError::BadRequest("the body is unreadable or larger than 64 KiB")
            }
            crate::server::peers::BodyReadError::Timeout(_) => {
                OrderRouteError::BadRequest("the body did not arrive in time")
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice(&bytes) {
        Ok(serde_json::Value::Object(map)) => Ok(map),
        Ok(serde_json::Value::Null) => Ok(serde_json::Map::new()),
        _ => Err(OrderRouteError::BadRequest(
            "the body must be a JSON object",
        )),
    }
}

/// The JSON error answer of an order route (same shape as every other error).
fn order_error(err: &OrderRouteError) -> Response<Body> {
    let (status, code, message) = match err {
        OrderRouteError::Admin(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalFailure",
            "Unexpected.",
        ),
        OrderRouteError::BadRequest(m) => (StatusCode::BAD_REQUEST, "InvalidInput", *m),
        OrderRouteError::Vault(e) => match e {
            VaultError::UnknownOrder => (
                StatusCode::NOT_FOUND,
                "NotFound",
                "The gateway holds no record of this order for this seller.",
            ),
            VaultError::AlreadyDeleted => (
                StatusCode::CONFLICT,
                "Conflict",
                "The order's PII is already deleted.",
            ),
            VaultError::Held => (
                StatusCode::CONFLICT,
                "Conflict",
                "The order is under legal hold.",
            ),
            VaultError::InvalidHold(m) => (StatusCode::BAD_REQUEST, "InvalidInput", *m),
            VaultError::Contention => (
                StatusCode::SERVICE_UNAVAILABLE,
                "ServiceUnavailable",
                "The record is busy; try again.",
            ),
            VaultError::Store(_) | VaultError::Crypto(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure",
                "The vault failed.",
            ),
        },
    };
    tracing::info!(error = %err, status = status.as_u16(), "Admin order request refused.");
    json(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message, "details": ""}]}),
    )
}

/// A JSON response (also used by `rescue` for admin errors).
pub fn json(status: StatusCode, value: &serde_json::Value) -> Response<Body> {
    let mut resp = Response::new(body::full(value.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// Admin listener errors, as JSON in SP-API's error shape (the admin listener maps its own
/// errors; `proxy::rescue` maps the proxy's).
pub fn error_response(err: &AdminError) -> Response<Body> {
    use AdminError as A;
    let (status, code, message) = match err {
        A::NotFound => (
            StatusCode::NOT_FOUND,
            "NotFound",
            "No such admin route.".to_string(),
        ),
        A::Unauthorized => (
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Missing or unknown admin token.".to_string(),
        ),
        A::Forbidden(_) => (
            StatusCode::FORBIDDEN,
            "Unauthorized",
            "This admin role may not do that.".to_string(),
        ),
        A::NoConfigFile => (
            StatusCode::CONFLICT,
            "InvalidInput",
            "This gateway was not started from a config file.".to_string(),
        ),
        A::InvalidConfig(issues) => (
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!(
                "The new configuration is invalid; nothing changed: {}",
                issues
                    .iter()
                    .map(|i| format!("{}: {}", i.path, i.message))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        ),
        A::BadParameter(name) => (
            StatusCode::BAD_REQUEST,
            "InvalidInput",
            format!("The parameter {name} has an invalid value."),
        ),
        A::AuditUnavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "The gateway cannot write its audit log right now; the action is not confirmed. Retry later.".to_string(),
        ),
    };
    tracing::info!(error = %err, status = status.as_u16(), "Admin request refused.");
    let mut resp = json(
        status,
        &serde_json::json!({"errors": [{"code": code, "message": message, "details": ""}]}),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}
