//! The web console at `/console`, served by the admin listener only (the proxy listener has no
//! route to it).
//!
//! Server-rendered HTML; the stylesheet and one small script (it refreshes the overview's charts
//! every 5 s) are compiled into the binary and served from `/console/assets/`. Every answer
//! carries a strict Content-Security-Policy (`default-src 'self'`, no inline script or style,
//! `frame-ancestors 'none'`) and `Cache-Control: no-store`.
//!
//! **Sign-in** with an admin token (the admin API's bearer tokens, found the same way, compared
//! in constant time) starts a server-side session ([`session`]): the cookie (`HttpOnly`,
//! `SameSite=Strict`) holds a random id whose SHA-256 is the session's key; it ends after 15
//! minutes without a request by the admin (the overview's live refresh does not count) or 8
//! hours. When the admin listener has TLS the cookies are `__Host-` cookies (`Secure`,
//! `Path=/`, no `Domain`: no other host or plain-HTTP page can set or shadow them) and every
//! answer carries `Strict-Transport-Security`; on plain HTTP they are `Path=/console` cookies
//! without `Secure`, and a page served to a client that is not on this machine (not a loopback
//! address) shows a warning that tokens and cookies cross the network in clear text. **Every
//! POST** is refused unless it comes from the console's own origin (`Origin`: the listener's
//! scheme, host and port; `Sec-Fetch-Site`) and carries the session's CSRF token (sign-in: the
//! token of its pre-session cookie). Sign-ins (accepted or refused), sign-outs, and each action
//! are audited with the admin's name; a refused sign-in with the client's address only (never
//! the token).
//!
//! **Roles** are those of the admin API, checked by the same code ([`super::Admin`]'s token
//! lookup and role check): the overview for both; rate limits (and reload), sellers and tools
//! (create and revoke keys) for `ops`; audit and retention (holds, export, erase) for `security`.
//! **Actions** are audited like their twins, each record naming the admin as `actor`: reload as
//! `POST /admin/reload`, holds as the hold routes, keys as `spgate clients add|revoke`
//! (`key_created`/`key_revoked`), invites as `spgate sellers invite` (`invite_created`), export
//! and erase as `spgate vault export|erase` (an erasure needs its reason: a data-subject request
//! or an operator's decision); an action is confirmed only once its records are written, and a
//! refused one answers with an error status and says so.
//!
//! The live statistics come from the audit log's tap through a bounded queue
//! ([`stats::feed`]): the request path never waits for the console.

pub mod pages;
pub mod session;
pub mod stats;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};

use super::{Admin, AdminError};
use crate::audit::AuditConfig;
use crate::config::AdminRole;
use crate::proxy::body::{self, Body};
use session::{SessionError, Sessions};

/// The session cookie (plain HTTP; with TLS it is [`COOKIE_TLS`]).
pub const COOKIE: &str = "spgate_console";
/// The sign-in form's pre-session cookie (its CSRF token; with TLS [`LOGIN_COOKIE_TLS`]).
pub const LOGIN_COOKIE: &str = "spgate_console_login";
/// The session cookie under TLS: the `__Host-` prefix makes the browser refuse it unless it is
/// `Secure`, `Path=/` and host-only.
pub const COOKIE_TLS: &str = "__Host-spgate_console";
/// The pre-session cookie under TLS.
pub const LOGIN_COOKIE_TLS: &str = "__Host-spgate_console_login";
/// `Strict-Transport-Security` of every console answer under TLS (one year).
pub const HSTS: &str = "max-age=31536000";
/// The Content-Security-Policy of every console answer.
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'";
/// Largest form body read.
const MAX_FORM: usize = 16 * 1024;
/// Audit records per page.
pub const PAGE_SIZE: usize = 50;

const CSS: &str = include_str!("assets/console.css");
const JS: &str = include_str!("assets/console.js");

/// Why a console request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// No such page.
    #[error("no such console page")]
    NotFound,
    /// No live session: sign in.
    #[error("not signed in")]
    SignedOut,
    /// The sign-in token is not an admin token.
    #[error("unknown admin token")]
    BadToken,
    /// The audit page is already serving as many queries as it may at once.
    #[error("too many audit queries at once")]
    Busy,
    /// The session's role may not see or do this.
    #[error("the {0:?} role may not do this")]
    Forbidden(AdminRole),
    /// A POST from another origin.
    #[error("cross-origin request")]
    CrossOrigin,
    /// A POST without the session's CSRF token.
    #[error("missing or wrong CSRF token")]
    Csrf,
    /// A form field is missing or malformed.
    #[error("bad input: {0}")]
    BadInput(&'static str),
    /// The admin service refused (invalid config on reload, audit log unavailable).
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// No session could be made.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The vault refused or failed.
    #[error(transparent)]
    Vault(#[from] crate::vault::VaultError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A key could not be created.
    #[error(transparent)]
    CreateClient(#[from] crate::auth::caller::CreateClientError),
    /// The audit log could not be read.
    #[error(transparent)]
    AuditRead(#[from] crate::audit::query::QueryError),
    /// The audit chain could not be verified.
    #[error(transparent)]
    AuditVerify(#[from] crate::audit::cli::CliError),
    /// The audit log is not configured (no `[audit]` section).
    #[error("no audit log is configured")]
    NoAuditLog,
    /// An invite link could not be made.
    #[error(transparent)]
    Onboarding(#[from] crate::auth::onboarding::OnboardingError),
    /// The thread reading the audit log ended without an answer.
    #[error("the audit log reader stopped")]
    ReaderStopped,
}

/// The console's state inside [`Admin`].
pub struct Console {
    sessions: Sessions,
    stats: Arc<stats::Stats>,
    /// The audit log's directory and key (queries, reports, verification).
    audit: Option<AuditConfig>,
    /// The rate plans and tool assignment in force (set at start and by each reload).
    plans: std::sync::RwLock<pages::PlansView>,
    /// What invite links are made with (none: seller onboarding is not configured).
    invites: Option<(
        Arc<crate::crypto::MasterKey>,
        crate::config::OnboardingConfig,
    )>,
    /// Audit page queries running at once (each reads the chain files on a blocking thread).
    audit_scans: Arc<tokio::sync::Semaphore>,
    /// The last chain verification (it reads every file: run on request, not per page view).
    verified: std::sync::Mutex<Option<pages::Verification>>,
}

impl Console {
    /// A console fed by `auditor`'s request records (through a bounded queue: see
    /// [`stats::feed`]).
    pub fn new(auditor: &crate::audit::Auditor) -> Console {
        let stats = Arc::new(stats::Stats::new());
        if auditor.enabled() && !auditor.set_tap(stats::feed(stats.clone(), stats::TAP_QUEUE)) {
            tracing::warn!("The audit log already feeds another console: this one shows no request statistics.");
        }
        Console {
            sessions: Sessions::default(),
            stats,
            audit: None,
            plans: std::sync::RwLock::new(pages::PlansView::default()),
            invites: None,
            audit_scans: Arc::new(tokio::sync::Semaphore::new(pages::AUDIT_SCANS)),
            verified: std::sync::Mutex::new(None),
        }
    }

    /// Lets ops create seller invite links (`[onboarding]`).
    pub fn set_onboarding(
        &mut self,
        master_key: Arc<crate::crypto::MasterKey>,
        onboarding: Option<crate::config::OnboardingConfig>,
    ) {
        self.invites = onboarding.map(|cfg| (master_key, cfg));
    }

    /// Gives the console the audit log's directory and key.
    pub fn set_audit(&mut self, audit: Option<AuditConfig>) {
        self.audit = audit;
    }

    /// Records the plans in force.
    pub fn set_plans(
        &self,
        plans: &crate::ratelimit::config::Plans,
        tools: &std::collections::BTreeMap<String, String>,
    ) {
        *self.plans.write().unwrap_or_else(|p| p.into_inner()) =
            pages::PlansView::new(plans, tools);
    }

    /// The plans in force.
    fn plans(&self) -> pages::PlansView {
        self.plans.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The live statistics.
    pub fn stats(&self) -> &stats::Stats {
        &self.stats
    }
}

fn unix_now() -> u64 {
    time::OffsetDateTime::now_utc().unix_timestamp().max(0) as u64
}

/// A parsed request: the parts the pages need.
struct Req {
    method: Method,
    path: String,
    query: HashMap<String, String>,
    form: HashMap<String, String>,
    cookie: Option<String>,
    login_cookie: Option<String>,
    /// The admin listener has TLS.
    secure: bool,
    /// Plain HTTP to a client that is not on this machine: the pages warn.
    exposed: bool,
    /// The client's address, when the listener knows it.
    peer: Option<std::net::IpAddr>,
}

impl Req {
    fn field(&self, name: &str) -> &str {
        self.form.get(name).map_or("", |v| v.trim())
    }
    fn required(&self, name: &str, what: &'static str) -> Result<&str, ConsoleError> {
        let v = self.field(name);
        if v.is_empty() {
            return Err(ConsoleError::BadInput(what));
        }
        Ok(v)
    }
}

/// Answers a request under `/console`.
pub async fn handle<B>(admin: &Admin, req: Request<B>) -> Response<Body>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // Records lost from here on (even if a gap has reported them) fail the action.
    let lost = admin.gateway.auditor().lost_mark();
    let action = req.method() == Method::POST;
    let secure = admin.tls.iter().any(|l| l.name() == "admin");
    let mut resp = match serve(admin, req, secure).await {
        Ok(_) if action && admin.gateway.auditor().flushed_since(lost).await.is_err() => {
            error_response(&ConsoleError::Admin(AdminError::AuditUnavailable))
        }
        Ok(resp) => resp,
        Err(e) => {
            REFUSED.count(&e);
            error_response(&e)
        }
    };
    secure_headers(&mut resp, secure);
    resp
}

/// Console requests refused, by reason (`/metrics`: `spgate_console_refused_total`).
static REFUSED: Refusals = Refusals::new();

struct Refusals {
    bad_token: AtomicU64,
    forbidden: AtomicU64,
    cross_origin: AtomicU64,
    csrf: AtomicU64,
}

impl Refusals {
    const fn new() -> Refusals {
        Refusals {
            bad_token: AtomicU64::new(0),
            forbidden: AtomicU64::new(0),
            cross_origin: AtomicU64::new(0),
            csrf: AtomicU64::new(0),
        }
    }

    fn count(&self, e: &ConsoleError) {
        let counter = match e {
            ConsoleError::BadToken => &self.bad_token,
            ConsoleError::Forbidden(_) => &self.forbidden,
            ConsoleError::CrossOrigin => &self.cross_origin,
            ConsoleError::Csrf => &self.csrf,
            _ => return,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Appends the console's counters in Prometheus text format.
pub fn render_metrics(out: &mut String) {
    use std::fmt::Write as _;
    let _ = writeln!(
        out,
        "# HELP spgate_console_refused_total Console requests refused: unknown sign-in token, role not allowed, cross-origin post, missing or wrong CSRF token.\n# TYPE spgate_console_refused_total counter"
    );
    for (reason, c) in [
        ("bad_token", &REFUSED.bad_token),
        ("forbidden", &REFUSED.forbidden),
        ("cross_origin", &REFUSED.cross_origin),
        ("csrf", &REFUSED.csrf),
    ] {
        let _ = writeln!(
            out,
            "spgate_console_refused_total{{reason=\"{reason}\"}} {}",
            c.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        out,
        "# HELP spgate_console_tap_dropped_total Request records the console's statistics did not count because their queue was full (the request path never waits for the console).\n# TYPE spgate_console_tap_dropped_total counter\nspgate_console_tap_dropped_total {}",
        stats::tap_dropped()
    );
}

/// The headers every console answer carries (under TLS, HSTS too).
fn secure_headers(resp: &mut Response<Body>, secure: bool) {
    let h = resp.headers_mut();
    if secure {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            HeaderValue::from_static(HSTS),
        );
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
}

async fn serve<B>(
    admin: &Admin,
    req: Request<B>,
    secure: bool,
) -> Result<Response<Body>, ConsoleError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    // Static assets need no session.
    if method == Method::GET {
        match path.as_str() {
            "/console/assets/console.css" => return Ok(asset(CSS, "text/css; charset=utf-8")),
            "/console/assets/console.js" => return Ok(asset(JS, "text/javascript; charset=utf-8")),
            _ => {}
        }
    }
    if method == Method::POST {
        same_origin(&req, secure)?;
    } else if method != Method::GET {
        return Err(ConsoleError::NotFound);
    }
    let query = req
        .uri()
        .query()
        .map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect())
        .unwrap_or_default();
    let cookie = cookie_value(&req, cookie_name(COOKIE, secure));
    let login_cookie = cookie_value(&req, cookie_name(LOGIN_COOKIE, secure));
    let peer = req
        .extensions()
        .get::<crate::server::PeerAddr>()
        .map(|p| p.0.ip());
    let exposed = !secure && !local_client(peer, &req);
    let form = if method == Method::POST {
        let bytes = crate::server::peers::read_body(
            req.into_body(),
            MAX_FORM,
            admin.gateway.body_read_timeout(),
        )
        .await
        .map_err(|_| ConsoleError::BadInput("the form is unreadable or too large"))?;
        form_urlencoded::parse(&bytes).into_owned().collect()
    } else {
        HashMap::new()
    };
    let r = Req {
        method,
        path,
        query,
        form,
        cookie,
        login_cookie,
        secure,
        exposed,
        peer,
    };
    match (&r.method, r.path.as_str()) {
        (&Method::GET, "/console/login") => login_page(&r),
        (&Method::POST, "/console/login") => login(admin, &r),
        _ => {
            // The overview's live refresh is no sign of the admin: it leaves the idle clock.
            let activity = if r.path == "/console/live" {
                session::Activity::Background
            } else {
                session::Activity::Admin
            };
            let (id, session) = r
                .cookie
                .as_deref()
                .and_then(|id| admin.console.sessions.get(id, activity).map(|s| (id, s)))
                .ok_or(ConsoleError::SignedOut)?;
            if r.method == Method::POST && !session::same_token(r.field("csrf"), &session.csrf) {
                return Err(ConsoleError::Csrf);
            }
            pages::route(admin, &r, id, &session).await
        }
    }
}

/// Whether the client is on this machine: its address (as the listener saw it) is a loopback
/// address; without one (in-process callers), the `Host` it asked for is a loopback name.
fn local_client<B>(peer: Option<std::net::IpAddr>, req: &Request<B>) -> bool {
    if let Some(ip) = peer {
        return match ip {
            std::net::IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .map_or(v6.is_loopback(), |v4| v4.is_loopback()),
            std::net::IpAddr::V4(v4) => v4.is_loopback(),
        };
    }
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(h, _)| h),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A cookie's name: under TLS with the `__Host-` prefix.
fn cookie_name(plain: &'static str, secure: bool) -> &'static str {
    match (plain, secure) {
        (COOKIE, true) => COOKIE_TLS,
        (LOGIN_COOKIE, true) => LOGIN_COOKIE_TLS,
        (name, _) => name,
    }
}

/// A POST must come from the console's own origin: `Sec-Fetch-Site` (when the browser sends it)
/// is `same-origin` or `none`, and `Origin` (when sent) is exactly the listener's scheme
/// (`https` under TLS, else `http`) with the host and port the request was sent to.
fn same_origin<B>(req: &Request<B>, secure: bool) -> Result<(), ConsoleError> {
    let h = req.headers();
    if let Some(site) = h.get("sec-fetch-site") {
        if !matches!(site.to_str(), Ok("same-origin" | "none")) {
            return Err(ConsoleError::CrossOrigin);
        }
    }
    if let Some(origin) = h.get(header::ORIGIN) {
        let host = h
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .ok_or(ConsoleError::CrossOrigin)?;
        let origin = origin.to_str().map_err(|_| ConsoleError::CrossOrigin)?;
        let scheme = if secure { "https://" } else { "http://" };
        let named = origin.strip_prefix(scheme);
        if !named.is_some_and(|n| n.eq_ignore_ascii_case(&host)) {
            return Err(ConsoleError::CrossOrigin);
        }
    }
    Ok(())
}

fn cookie_value<B>(req: &Request<B>, name: &str) -> Option<String> {
    req.headers()
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty())
}

/// Sets one of the console's cookies (`name` is its plain-HTTP name): under TLS a `__Host-`
/// cookie (`Secure`, `Path=/`), else one for `/console`.
fn set_cookie(
    resp: &mut Response<Body>,
    name: &'static str,
    value: &str,
    max_age: Option<u64>,
    secure: bool,
) {
    let path = if secure { "/" } else { "/console" };
    let mut c = format!(
        "{}={value}; Path={path}; HttpOnly; SameSite=Strict",
        cookie_name(name, secure)
    );
    if let Some(age) = max_age {
        c.push_str(&format!("; Max-Age={age}"));
    }
    if secure {
        c.push_str("; Secure");
    }
    if let Ok(v) = HeaderValue::from_str(&c) {
        resp.headers_mut().append(header::SET_COOKIE, v);
    }
}

fn asset(text: &'static str, content_type: &'static str) -> Response<Body> {
    let mut resp = Response::new(body::full(text));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// An HTML answer.
pub fn html(status: StatusCode, page: String) -> Response<Body> {
    let mut resp = Response::new(body::full(page));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp
}

/// A 303 to a console page.
pub fn redirect(to: &str) -> Response<Body> {
    let mut resp = Response::new(body::empty());
    *resp.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// The sign-in page, with a fresh pre-session cookie whose value the form repeats.
fn login_page(r: &Req) -> Result<Response<Body>, ConsoleError> {
    let token = crate::crypto::random_token::<24>().map_err(SessionError::from)?;
    let mut resp = html(StatusCode::OK, pages::login(&token, r.exposed));
    set_cookie(&mut resp, LOGIN_COOKIE, &token, Some(600), r.secure);
    Ok(resp)
}

/// The audit record of a sign-in, a refused sign-in or a sign-out (never the token).
fn sign_in_record(
    reason: &'static str,
    who: Option<(&str, AdminRole)>,
    peer: Option<std::net::IpAddr>,
) -> crate::audit::Record {
    let mut record = crate::audit::Record::new(crate::audit::Kind::SignIn)
        .with_reason(crate::audit::Reason::from_static(reason));
    if let Some((name, role)) = who {
        record = record.with_actor(name).with_role(pages::role_name(role));
    }
    record.source = peer;
    record
}

fn login(admin: &Admin, r: &Req) -> Result<Response<Body>, ConsoleError> {
    let expected = r.login_cookie.as_deref().ok_or(ConsoleError::Csrf)?;
    if !session::same_token(r.field("csrf"), expected) {
        return Err(ConsoleError::Csrf);
    }
    let auditor = admin.gateway.auditor();
    let (name, role) = match admin.token_holder(r.field("token")) {
        Ok(holder) => holder,
        Err(_) => {
            auditor.record(sign_in_record("unknown_token", None, r.peer));
            tracing::info!("Console sign-in refused: unknown admin token.");
            return Err(ConsoleError::BadToken);
        }
    };
    let id = admin.console.sessions.create(&name, role)?;
    auditor.record(sign_in_record("signed_in", Some((&name, role)), r.peer));
    tracing::info!(admin = %name, role = ?role, "Console sign-in.");
    let mut resp = redirect("/console");
    set_cookie(&mut resp, COOKIE, &id, None, r.secure);
    set_cookie(&mut resp, LOGIN_COOKIE, "", Some(0), r.secure);
    Ok(resp)
}

/// Ends the session and clears its cookie.
fn logout(admin: &Admin, r: &Req, id: &str, s: &session::Session) -> Response<Body> {
    admin.console.sessions.end(id);
    admin.gateway.auditor().record(sign_in_record(
        "signed_out",
        Some((&s.name, s.role)),
        r.peer,
    ));
    let mut resp = redirect("/console/login");
    set_cookie(&mut resp, COOKIE, "", Some(0), r.secure);
    resp
}

/// An error page.
fn error_page(status: StatusCode, title: &str, message: &str) -> Response<Body> {
    let mut resp = html(status, pages::error(title, message));
    // `handle` sets them again with HSTS when under TLS.
    secure_headers(&mut resp, false);
    resp
}

/// The answer for a console error: an HTML page (a missing session: a redirect to the sign-in
/// page). The one place console errors become responses, as `admin::error_response` is for
/// the admin API.
pub fn error_response(err: &ConsoleError) -> Response<Body> {
    use crate::vault::VaultError as V;
    use ConsoleError as C;
    let (status, title, message): (StatusCode, &str, String) = match err {
        C::SignedOut => return redirect("/console/login"),
        C::NotFound | C::Admin(crate::admin::AdminError::NotFound) => (
            StatusCode::NOT_FOUND,
            "Not found",
            "No such console page.".into(),
        ),
        C::BadToken | C::Admin(crate::admin::AdminError::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            "Sign-in refused",
            "That is not an admin token.".into(),
        ),
        C::Forbidden(_) | C::Admin(crate::admin::AdminError::Forbidden(_)) => (
            StatusCode::FORBIDDEN,
            "Not allowed",
            "Your admin role may not see or do this.".into(),
        ),
        C::CrossOrigin => (
            StatusCode::FORBIDDEN,
            "Refused",
            "The form was not sent from this console (cross-origin request).".into(),
        ),
        C::Csrf => (
            StatusCode::FORBIDDEN,
            "Refused",
            "The form's CSRF token is missing or stale: reload the page and try again.".into(),
        ),
        C::BadInput(m) => (StatusCode::BAD_REQUEST, "Invalid input", format!("{m}.")),
        C::Admin(crate::admin::AdminError::BadParameter(name)) => (
            StatusCode::BAD_REQUEST,
            "Invalid input",
            format!("The parameter {name} has an invalid value."),
        ),
        C::Admin(crate::admin::AdminError::InvalidConfig(_))
        | C::Admin(crate::admin::AdminError::NoConfigFile) => (
            StatusCode::CONFLICT,
            "Not reloaded",
            "The configuration could not be reloaded; nothing changed.".into(),
        ),
        C::Admin(crate::admin::AdminError::AuditUnavailable) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Audit log unavailable",
            "The gateway cannot write its audit log right now; the action is not confirmed. Retry later.".into(),
        ),
        C::Session(SessionError::Full) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Too many sessions",
            format!(
                "The console already holds {} live sessions, its limit. Sign out of sessions you no longer use, or retry once idle sessions end ({} minutes without use).",
                session::MAX_SESSIONS,
                session::IDLE.as_secs() / 60
            ),
        ),
        C::Session(SessionError::Random(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Sign-in unavailable",
            "No console session can be started right now. Retry later.".into(),
        ),
        C::Busy => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "The audit log is being queried by other console pages; retry in a moment.".into(),
        ),
        C::Vault(V::UnknownOrder) => (
            StatusCode::NOT_FOUND,
            "Unknown order",
            "The gateway holds no record of this order for this seller.".into(),
        ),
        C::Vault(V::AlreadyDeleted) => (
            StatusCode::CONFLICT,
            "Already deleted",
            "The order's PII is already deleted.".into(),
        ),
        C::Vault(V::Held) => (
            StatusCode::CONFLICT,
            "Under legal hold",
            "The order is under legal hold.".into(),
        ),
        C::Vault(V::InvalidHold(m)) => (StatusCode::BAD_REQUEST, "Invalid hold", format!("{m}.")),
        C::Vault(V::Contention) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Busy",
            "The record is busy; try again.".into(),
        ),
        C::Store(e) if e.is_unavailable() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "Store unavailable",
            "The store does not answer. Retry later.".into(),
        ),
        C::NoAuditLog => (
            StatusCode::NOT_FOUND,
            "No audit log",
            "This gateway keeps no audit log (no [audit] section).".into(),
        ),
        C::Vault(V::Store(_) | V::Crypto(_))
        | C::Store(_)
        | C::CreateClient(_)
        | C::AuditRead(_)
        | C::AuditVerify(_)
        | C::Onboarding(_)
        | C::ReaderStopped => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed",
            "The gateway failed; the operational log has the detail.".into(),
        ),
    };
    if status.is_server_error() {
        tracing::error!(error = %err, status = status.as_u16(), "Console request failed.");
    } else {
        tracing::info!(error = %err, status = status.as_u16(), "Console request refused.");
    }
    let mut resp = error_page(status, title, &message);
    if status == StatusCode::SERVICE_UNAVAILABLE {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    }
    resp
}

#[cfg(test)]
mod tests;
