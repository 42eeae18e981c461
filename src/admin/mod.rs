//! The admin listener: a separate port with its own bearer tokens and roles.
//!
//! **API Boundary:** its own listener. **Invariant:** the proxy listener serves no admin route.
//!
//! Routes: `GET /healthz` and `GET /readyz` (liveness, and whether the store answers),
//! `GET /metrics` (Prometheus text), and for the `ops` role `GET /admin/ratelimits?seller=&
//! operation=` (tokens, rate, queue depth, per-tool use) and `POST /admin/reload` (re-reads the
//! config file; an invalid file is refused and the running plans stay).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use crate::config::{AdminRole, AdminToken, Config, ConfigIssue, Env};
use crate::crypto;
use crate::proxy::body::{self, Body};
use crate::proxy::Gateway;

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
}

/// The admin service.
pub struct Admin {
    gateway: Arc<Gateway>,
    /// (SHA-256 of the token, holder, role).
    tokens: Vec<(String, String, AdminRole)>,
    config_path: Option<PathBuf>,
    env: Arc<dyn Env + Send + Sync>,
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
        }
    }

    /// Answers one admin request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<Body> {
        match self.route(&req).await {
            Ok(resp) => resp,
            Err(e) => crate::proxy::rescue::admin_error(&e),
        }
    }

    async fn route<B>(&self, req: &Request<B>) -> Result<Response<Body>, AdminError> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/healthz") => Ok(text(StatusCode::OK, "ok\n")),
            (&Method::GET, "/readyz") => {
                Ok(match self.gateway.store().seller("readyz-probe").await {
                    Ok(_) => text(StatusCode::OK, "ready\n"),
                    Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "store unavailable\n"),
                })
            }
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
                let status = self
                    .gateway
                    .limiter()
                    .status(seller.as_deref(), operation.as_deref());
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "buckets": status }),
                ))
            }
            (&Method::POST, "/admin/reload") => {
                let who = self.authorize(req, AdminRole::Ops)?;
                self.reload()?;
                tracing::info!(admin = %who, "Configuration reloaded through the admin listener.");
                Ok(json(
                    StatusCode::OK,
                    &serde_json::json!({ "reloaded": true }),
                ))
            }
            _ => Err(AdminError::NotFound),
        }
    }

    /// Re-reads the config file and applies its rate plans; an invalid file changes nothing.
    pub fn reload(&self) -> Result<(), AdminError> {
        let path = self.config_path.as_ref().ok_or(AdminError::NoConfigFile)?;
        let config = Config::load(path, &*self.env).map_err(|e| AdminError::InvalidConfig(e.0))?;
        self.gateway
            .reload_plans(config.ratelimit.limiter.plans, config.tool_plans);
        Ok(())
    }

    fn authorize<B>(&self, req: &Request<B>, role: AdminRole) -> Result<String, AdminError> {
        let presented = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AdminError::Unauthorized)?;
        let hash = crypto::sha256_hex(presented.trim().as_bytes());
        let (_, name, has) = self
            .tokens
            .iter()
            .find(|(h, _, _)| *h == hash)
            .ok_or(AdminError::Unauthorized)?;
        if *has != role {
            return Err(AdminError::Forbidden(*has));
        }
        Ok(name.clone())
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
            "spgate_rdt_requests_total",
            "createRestrictedDataToken calls.",
            &[("", self.gateway.rdts().calls())],
        );
        let _ = writeln!(
            out,
            "# HELP spgate_ratelimit_wait_seconds Time admitted requests waited for a token.\n# TYPE spgate_ratelimit_wait_seconds summary\nspgate_ratelimit_wait_seconds_sum {}\nspgate_ratelimit_wait_seconds_count {}",
            m.wait_seconds_sum, m.wait_count
        );
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

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    resp
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
