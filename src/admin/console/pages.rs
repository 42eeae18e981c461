//! The console's pages and actions, rendered on the server. Every value is HTML-escaped
//! ([`esc`]); charts are inline SVG (markup, not script, so the CSP allows them), each with its
//! figures as text beside it, so nothing is told by colour alone. A refused or failed action
//! answers with an error status as well as its notice.
//!
//! The audit page reads a bounded slice of the log: a time range of at most [`MAX_WINDOW_DAYS`]
//! (the last [`DEFAULT_WINDOW_HOURS`] hours unless asked), the newest [`super::PAGE_SIZE`]
//! records per page for at most [`MAX_PAGES`] pages, alerts of the last [`ALERT_DAYS`] days, at
//! most [`AUDIT_SCANS`] queries at once (then 503), and chain verification (which reads every
//! file) only when asked, its last result kept.

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;

use http::{header, HeaderValue, Method, Response, StatusCode};

use super::session::Session;
use super::stats::{Overview, Point};
use super::{html, ConsoleError, Req, PAGE_SIZE};
use crate::admin::Admin;
use crate::audit::query::{self, Filters, View};
use crate::config::AdminRole;
use crate::proxy::body::{self, Body};
use crate::secret::Secret;
use crate::vault::{self, EraseReason};

/// Audit page queries that may run at once.
pub const AUDIT_SCANS: usize = 2;
/// The audit query's time range when none is given: the last day.
pub const DEFAULT_WINDOW_HOURS: i64 = 24;
/// The longest time range one audit query may read.
pub const MAX_WINDOW_DAYS: i64 = 31;
/// Pages of records one query may page through (newest first).
pub const MAX_PAGES: usize = 200;
/// Alerts shown: those of this many last days.
pub const ALERT_DAYS: i64 = 30;

/// The last chain verification (run on request: it reads every file).
#[derive(Debug, Clone)]
pub struct Verification {
    /// Every chain verified.
    ok: bool,
    /// `audit verify`'s report.
    text: String,
    /// When (RFC 3339).
    at: String,
    /// Who asked.
    by: String,
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The rate plans and tool assignment in force, as shown.
#[derive(Debug, Clone, Default)]
pub struct PlansView {
    /// Plan name, max wait, max priority, rules (default, per API, per operation).
    plans: Vec<(String, String, String, String)>,
    /// Tool -> plan.
    tools: BTreeMap<String, String>,
}

impl PlansView {
    /// Summarizes plans and their assignment.
    pub fn new(plans: &crate::ratelimit::config::Plans, tools: &BTreeMap<String, String>) -> Self {
        let mut rows: Vec<_> = plans
            .plans
            .iter()
            .map(|(name, p)| {
                (
                    name.clone(),
                    p.max_wait.map_or("limiter default".into(), |d| {
                        format!("{} ms", d.as_millis())
                    }),
                    format!("{:?}", p.max_priority).to_lowercase(),
                    format!(
                        "{} default, {} per API, {} per operation",
                        u8::from(p.default.is_some()),
                        p.apis.len(),
                        p.operations.len()
                    ),
                )
            })
            .collect();
        rows.sort();
        PlansView {
            plans: rows,
            tools: tools.clone(),
        }
    }
}

/// Which role a page or action needs (`None`: any signed-in admin).
fn needs(method: &Method, path: &str) -> Option<Option<AdminRole>> {
    Some(match (method, path) {
        (&Method::GET, "/console" | "/console/" | "/console/live") => None,
        (&Method::POST, "/console/logout") => None,
        (&Method::GET, "/console/ratelimits") | (&Method::POST, "/console/ratelimits/reload") => {
            Some(AdminRole::Ops)
        }
        (&Method::GET, "/console/sellers")
        | (
            &Method::POST,
            "/console/tools/create" | "/console/tools/revoke" | "/console/sellers/invite",
        ) => Some(AdminRole::Ops),
        (&Method::GET, "/console/audit" | "/console/retention")
        | (
            &Method::POST,
            "/console/audit/verify"
            | "/console/retention/hold"
            | "/console/retention/release"
            | "/console/retention/export"
            | "/console/retention/erase",
        ) => Some(AdminRole::Security),
        _ => return None,
    })
}

/// Serves a signed-in request.
pub(super) async fn route(
    admin: &Admin,
    r: &Req,
    session_id: &str,
    s: &Session,
) -> Result<Response<Body>, ConsoleError> {
    let role = needs(&r.method, &r.path).ok_or(ConsoleError::NotFound)?;
    if let Some(role) = role {
        // The admin API's own check: the role, and an audit log that can record the action.
        admin.permit(s.role, role).map_err(|e| match e {
            crate::admin::AdminError::Forbidden(has) => ConsoleError::Forbidden(has),
            e => ConsoleError::Admin(e),
        })?;
    }
    let page = |title: &str, body: String| {
        html(StatusCode::OK, layout(s, r.exposed, &r.path, title, &body))
    };
    // A refused action's page: its notice says why, its status that it failed.
    let refused = |status: StatusCode, title: &str, body: String| {
        html(status, layout(s, r.exposed, &r.path, title, &body))
    };
    Ok(match (&r.method, r.path.as_str()) {
        (&Method::GET, "/console" | "/console/") => page("Overview", overview(admin, s).await),
        (&Method::GET, "/console/live") => html(StatusCode::OK, live(admin).await),
        (&Method::POST, "/console/logout") => super::logout(admin, r, session_id, s),
        (&Method::GET, "/console/ratelimits") => {
            page("Rate limits", ratelimits(admin, s, None, &r.query))
        }
        (&Method::POST, "/console/ratelimits/reload") => {
            let outcome = match admin.reload(Some(&s.name)) {
                Ok(()) => {
                    tracing::info!(admin = %s.name, "Configuration reloaded through the console.");
                    Ok("Reloaded: the rate plans and tool assignments in the config file apply now.".to_string())
                }
                Err(crate::admin::AdminError::InvalidConfig(issues)) => Err(format!(
                    "Refused: the config file is invalid; nothing changed. {}",
                    issues
                        .iter()
                        .map(|i| format!("{}: {}", i.path, i.message))
                        .collect::<Vec<_>>()
                        .join("; ")
                )),
                Err(crate::admin::AdminError::NoConfigFile) => {
                    Err("Refused: this gateway was not started from a config file.".to_string())
                }
                Err(e) => return Err(e.into()),
            };
            let status = if outcome.is_ok() {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            refused(
                status,
                "Rate limits",
                ratelimits(admin, s, Some(outcome), &std::collections::HashMap::new()),
            )
        }
        (&Method::GET, "/console/sellers") => {
            page("Sellers and tools", sellers(admin, s, None).await?)
        }
        (&Method::POST, "/console/tools/create") => {
            let tool = r.required("tool", "the tool's name is required")?;
            let role = r.required("role", "the role is required")?;
            let seller_ids: Vec<String> = r
                .required("sellers", "give the sellers (comma-separated, or *)")?
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            if !valid_name(tool)
                || !valid_name(role)
                || !seller_ids.iter().all(|s| valid_name(s) || s == "*")
            {
                return Err(ConsoleError::BadInput(
                    "names are letters, digits, '-', '_' and '.' (at most 64)",
                ));
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let new = crate::auth::caller::create_client(
                &**admin.gateway.store(),
                tool,
                role,
                seller_ids,
                now,
            )
            .await?;
            let mut record = crate::audit::Record::new(crate::audit::Kind::KeyCreated)
                .with_tool(tool)
                .with_role(role);
            record.client_id = Some(crate::audit::record::Id::lossy(&new.client.id));
            admin.gateway.auditor().record(record.with_actor(&s.name));
            tracing::info!(admin = %s.name, client = %new.client.id, "Tool key created through the console.");
            let shown = format!(
                "<div class=\"notice ok\" role=\"status\"><p><strong>Key created</strong> for tool <code>{}</code> (client <code id=\"new-client-id\">{}</code>). It is shown this once; only its hash is stored.</p><p><label for=\"new-key\">API key</label> <input id=\"new-key\" readonly value=\"{}\" size=\"60\"></p></div>",
                esc(tool),
                esc(&new.client.id),
                esc(new.key.expose())
            );
            page("Sellers and tools", sellers(admin, s, Some(shown)).await?)
        }
        (&Method::POST, "/console/sellers/invite") => {
            let (key, cfg) = admin
                .console
                .invites
                .as_ref()
                .ok_or(ConsoleError::BadInput(
                    "seller onboarding is not configured: add an [onboarding] section",
                ))?;
            let region: crate::store::Region = r
                .required("region", "the region is required")?
                .parse()
                .map_err(|_| ConsoleError::BadInput("the region is na, eu or fe"))?;
            let seller = Some(r.field("seller")).filter(|s| !s.is_empty());
            if seller.is_some_and(|s| !valid_name(s)) {
                return Err(ConsoleError::BadInput("a seller id is letters and digits"));
            }
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let link = crate::auth::onboarding::create_invite(
                &**admin.gateway.store(),
                key,
                cfg,
                region,
                seller,
                now,
            )
            .await?;
            admin
                .gateway
                .auditor()
                .record(crate::audit::events::invite_record(region, seller, &s.name));
            tracing::info!(admin = %s.name, %region, "Seller invite created through the console.");
            let shown = format!(
                "<div class=\"notice ok\" role=\"status\"><p><strong>Invite created</strong> ({}; one use, valid {} hours). Send the seller this link:</p><p><input id=\"invite-link\" readonly size=\"80\" value=\"{}\"></p></div>",
                esc(&region.to_string()),
                cfg.invite_ttl.as_secs() / 3600,
                esc(&link)
            );
            page("Sellers and tools", sellers(admin, s, Some(shown)).await?)
        }
        (&Method::POST, "/console/tools/revoke") => {
            let id = r.required("id", "the client id is required")?;
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            if admin.gateway.store().revoke_client(id, now).await? {
                let mut record = crate::audit::Record::new(crate::audit::Kind::KeyRevoked);
                record.client_id = Some(crate::audit::record::Id::lossy(id));
                admin.gateway.auditor().record(record.with_actor(&s.name));
                tracing::info!(admin = %s.name, client = %id, "Tool key revoked through the console.");
                let shown = format!("<div class=\"notice ok\" role=\"status\"><p>Revoked <code>{}</code>: its key is refused from the next request on.</p></div>", esc(id));
                page("Sellers and tools", sellers(admin, s, Some(shown)).await?)
            } else {
                let shown = format!("<div class=\"notice bad\" role=\"alert\"><p>Not revoked: no active client <code>{}</code>.</p></div>", esc(id));
                refused(
                    StatusCode::NOT_FOUND,
                    "Sellers and tools",
                    sellers(admin, s, Some(shown)).await?,
                )
            }
        }
        (&Method::GET, "/console/audit") => {
            let cfg = admin
                .console
                .audit
                .clone()
                .ok_or(ConsoleError::NoAuditLog)?;
            let _permit = admin
                .console
                .audit_scans
                .clone()
                .try_acquire_owned()
                .map_err(|_| ConsoleError::Busy)?;
            let q = r.query.clone();
            let mut body = tokio::task::spawn_blocking(move || audit(&cfg, &q))
                .await
                .map_err(|_| ConsoleError::ReaderStopped)??;
            let last = admin
                .console
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            body.push_str(&verification(last.as_ref(), s));
            page("Audit", body)
        }
        (&Method::POST, "/console/audit/verify") => {
            let cfg = admin
                .console
                .audit
                .clone()
                .ok_or(ConsoleError::NoAuditLog)?;
            let _permit = admin
                .console
                .audit_scans
                .clone()
                .try_acquire_owned()
                .map_err(|_| ConsoleError::Busy)?;
            let by = s.name.clone();
            let done = tokio::task::spawn_blocking(move || verify_chains(&cfg, by))
                .await
                .map_err(|_| ConsoleError::ReaderStopped)??;
            tracing::info!(admin = %s.name, ok = done.ok, "Audit chains verified through the console.");
            let status = if done.ok {
                StatusCode::OK
            } else {
                StatusCode::CONFLICT
            };
            let body = verification(Some(&done), s);
            *admin
                .console
                .verified
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(done);
            refused(status, "Audit chain verification", body)
        }
        (&Method::GET, "/console/retention") => page("Retention", retention(admin, s, None).await?),
        (&Method::POST, "/console/retention/hold") => {
            let seller = r.required("seller", "the seller is required")?;
            let order = r.required("order", "the order id is required")?;
            let reason = r.required("reason", "a legal hold needs a reason")?;
            let until = r.required("until", "a legal hold needs an end date")?;
            let until = vault::parse_rfc3339(&format!("{until}T00:00:00Z"))
                .or_else(|| vault::parse_rfc3339(until))
                .ok_or(ConsoleError::BadInput(
                    "the end date must be a date (YYYY-MM-DD)",
                ))?;
            let rec = admin
                .vault()?
                .hold(seller, order, reason, until, &s.name)
                .await?;
            let shown = hold_notice("set; its PII is deleted no earlier than", &rec);
            page("Retention", retention(admin, s, Some(shown)).await?)
        }
        (&Method::POST, "/console/retention/release") => {
            let seller = r.required("seller", "the seller is required")?;
            let order = r.required("order", "the order id is required")?;
            let rec = admin.vault()?.release(seller, order, &s.name).await?;
            let shown = hold_notice("lifted; its PII is due for deletion at", &rec);
            page("Retention", retention(admin, s, Some(shown)).await?)
        }
        (&Method::POST, "/console/retention/export") => {
            let order = r.required("order", "the order id is required")?;
            if r.field("confirm") != "yes" {
                return Err(ConsoleError::BadInput(
                    "confirm that the export (buyer PII) may be downloaded",
                ));
            }
            let export = admin.vault()?.export(order, &s.name).await?;
            tracing::info!(admin = %s.name, orders = export.orders.len(), "Data-subject export through the console.");
            let text = serde_json::to_string_pretty(&export)
                .map_err(|_| ConsoleError::BadInput("the export could not be written as JSON"))?;
            let mut resp = Response::new(body::full(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            resp.headers_mut().insert(
                header::CONTENT_DISPOSITION,
                HeaderValue::from_static("attachment; filename=\"spgate-export.json\""),
            );
            resp
        }
        (&Method::POST, "/console/retention/erase") => {
            let order = r.required("order", "the order id is required")?;
            if r.field("confirm") != order {
                return Err(ConsoleError::BadInput(
                    "type the order id again to confirm the erasure",
                ));
            }
            let seller = Some(r.field("seller")).filter(|s| !s.is_empty());
            // No default: the admin says why, and the audit record keeps it.
            let reason = match r.field("reason") {
                "data_subject_request" => EraseReason::DataSubjectRequest,
                "operator_decision" => EraseReason::Operator,
                _ => return Err(ConsoleError::BadInput(
                    "say why the order is erased: a data-subject request or an operator's decision",
                )),
            };
            let erased = admin.vault()?.erase(seller, order, reason, &s.name).await?;
            tracing::info!(admin = %s.name, orders = erased.len(), "Erasure through the console.");
            let mut shown = String::from("<div class=\"notice ok\" role=\"status\">");
            if erased.is_empty() {
                shown.push_str("<p>Nothing left to erase (already deleted).</p>");
            }
            for e in &erased {
                let _ = write!(
                    shown,
                    "<p>Erased <code>{}</code> ({}): data key destroyed, {} cached response(s) deleted.</p>",
                    esc(&e.order_id),
                    esc(&e.seller),
                    e.cache_entries
                );
            }
            shown.push_str("</div>");
            page("Retention", retention(admin, s, Some(shown)).await?)
        }
        _ => return Err(ConsoleError::NotFound),
    })
}

/// What a hold's change did, for the retention page.
fn hold_notice(what: &str, rec: &crate::store::RetentionRecord) -> String {
    format!(
        "<div class=\"notice ok\" role=\"status\"><p>Legal hold on <code>{}</code> ({}) {what} {}.</p></div>",
        esc(&rec.order_id),
        esc(&rec.seller),
        esc(&vault::rfc3339(rec.purge_at()))
    )
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

// === layout ===

/// The warning of a page served over plain HTTP to a client on another machine.
fn plain_http_warning(exposed: bool) -> &'static str {
    if exposed {
        "<p class=\"notice bad\" role=\"alert\" id=\"plain-http\"><strong>Not encrypted:</strong> this console is served over plain HTTP to another machine, so admin tokens, session cookies and the data shown cross the network in clear text. Give the admin listener TLS (<code>[admin.tls]</code>), or reach it only through a loopback address or an encrypted tunnel.</p>"
    } else {
        ""
    }
}

fn layout(s: &Session, exposed: bool, path: &str, title: &str, body: &str) -> String {
    let mut nav = String::new();
    let links: &[(&str, &str, Option<AdminRole>)] = &[
        ("/console", "Overview", None),
        ("/console/ratelimits", "Rate limits", Some(AdminRole::Ops)),
        (
            "/console/sellers",
            "Sellers and tools",
            Some(AdminRole::Ops),
        ),
        ("/console/audit", "Audit", Some(AdminRole::Security)),
        ("/console/retention", "Retention", Some(AdminRole::Security)),
    ];
    for (href, label, role) in links {
        if role.is_some_and(|r| r != s.role) {
            continue;
        }
        let current = if *href == path || (*href == "/console" && path == "/console/") {
            " aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(nav, "<a href=\"{href}\"{current}>{label}</a>");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{title} · spgate console</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"><script src=\"/console/assets/console.js\" defer></script></head><body><header class=\"top\"><a class=\"brand\" href=\"/console\">spgate console</a><nav aria-label=\"Console\">{nav}</nav><form class=\"who\" method=\"post\" action=\"/console/logout\"><input type=\"hidden\" name=\"csrf\" value=\"{csrf}\"><span>{name} <small>({role})</small></span> <button type=\"submit\">Sign out</button></form></header><main>{warning}<h1>{title}</h1>{body}</main></body></html>",
        warning = plain_http_warning(exposed),
        title = esc(title),
        csrf = esc(&s.csrf),
        name = esc(&s.name),
        role = role_name(s.role),
    )
}

pub(super) fn role_name(role: AdminRole) -> &'static str {
    match role {
        AdminRole::Ops => "ops",
        AdminRole::Security => "security",
    }
}

fn csrf_field(s: &Session) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(&s.csrf)
    )
}

/// The sign-in page (with the plain-HTTP warning when `exposed`).
pub fn login(csrf: &str, exposed: bool) -> String {
    let problem = plain_http_warning(exposed);
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>Sign in · spgate console</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body><main class=\"narrow\"><h1>spgate console</h1>{problem}<form method=\"post\" action=\"/console/login\" class=\"card\"><input type=\"hidden\" name=\"csrf\" value=\"{}\"><p><label for=\"token\">Admin token (ops or security)</label><br><input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"off\" required size=\"48\"></p><p><button type=\"submit\">Sign in</button></p><p class=\"hint\">The session ends after 15 idle minutes.</p></form></main></body></html>",
        esc(csrf)
    )
}

/// An error page.
pub fn error(title: &str, message: &str) -> String {
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t} · spgate console</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body><main class=\"narrow\"><h1>{t}</h1><p class=\"notice bad\" role=\"alert\">{m}</p><p><a href=\"/console\">Back to the console</a> · <a href=\"/console/login\">Sign in</a></p></main></body></html>",
        t = esc(title),
        m = esc(message)
    )
}

// === overview ===

async fn overview(admin: &Admin, s: &Session) -> String {
    let _ = s;
    format!(
        "<p class=\"hint\" id=\"live-status\" role=\"status\">The last hour, per minute; updated every 5 seconds.</p><section id=\"live\" data-live=\"/console/live\" aria-live=\"polite\">{}</section>",
        live(admin).await
    )
}

/// The live part of the overview (also fetched by the script every 5 s).
async fn live(admin: &Admin) -> String {
    let o = admin.console.stats().overview(super::unix_now());
    let mut out = String::new();
    out.push_str(&health(admin).await);
    if !admin.gateway.auditor().enabled() {
        out.push_str("<p class=\"notice bad\" role=\"status\">No audit log is configured: request statistics come from the request records, so there are none.</p>");
    }
    out.push_str(&summary(&o));
    out.push_str(&charts(&o));
    out.push_str(&tools_table(&o));
    out
}

async fn health(admin: &Admin) -> String {
    let mut out = String::from("<h2>Dependencies</h2><ul class=\"health\">");
    for (name, problem) in admin.dependencies().await {
        let _ = match problem {
            None => write!(
                out,
                "<li class=\"up\"><span aria-hidden=\"true\">✔</span> {} <strong>OK</strong></li>",
                esc(name)
            ),
            Some(p) => write!(
                out,
                "<li class=\"down\"><span aria-hidden=\"true\">✖</span> {} <strong>DOWN</strong>: {}</li>",
                esc(name),
                esc(p)
            ),
        };
    }
    out.push_str("</ul>");
    out
}

fn ms(v: Option<f64>) -> String {
    v.map_or("–".into(), |v| format!("{v:.1} ms"))
}

fn summary(o: &Overview) -> String {
    let card = |label: &str, value: String| {
        format!("<div class=\"stat\"><span class=\"label\">{label}</span><span class=\"value\">{value}</span></div>")
    };
    let h = &o.hour;
    let m = &o.last_minute;
    let total: u64 = h.classes.iter().sum();
    [
        "<h2>Requests</h2><div class=\"stats\">".to_string(),
        card("req/s (last minute)", format!("{:.2}", m.rps)),
        card("requests (hour)", total.to_string()),
        card(
            "2xx / 4xx / 5xx (hour)",
            format!("{} / {} / {}", h.classes[1], h.classes[3], h.classes[4]),
        ),
        card("gateway 429s (hour)", h.gateway_429.to_string()),
        card("upstream 429s (hour)", h.upstream_429.to_string()),
        card(
            "p50 / p99 (hour)",
            format!("{} / {}", ms(h.p50_ms), ms(h.p99_ms)),
        ),
        "</div>".to_string(),
    ]
    .concat()
}

const W: f64 = 600.0;
const H: f64 = 160.0;

/// A line chart of several series over the hour's minutes; each series is told apart by its
/// dash pattern and its legend, not only its colour.
fn line_chart(title: &str, unit: &str, series: &[(&str, &str, Vec<f64>)]) -> String {
    let max = series
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .fold(0.0f64, f64::max);
    let top = if max > 0.0 { max * 1.1 } else { 1.0 };
    let mut svg = format!(
        "<figure class=\"chart\"><figcaption>{t}</figcaption><svg viewBox=\"0 0 {W} {h}\" role=\"img\" aria-label=\"{t}\" preserveAspectRatio=\"none\"><line class=\"axis\" x1=\"0\" y1=\"{H}\" x2=\"{W}\" y2=\"{H}\"/><text class=\"tick\" x=\"2\" y=\"12\">{top:.2} {u}</text><text class=\"tick\" x=\"2\" y=\"{yb}\">−60 min</text><text class=\"tick\" x=\"{xe}\" y=\"{yb}\" text-anchor=\"end\">now</text>",
        t = esc(title),
        h = H + 16.0,
        u = esc(unit),
        yb = H + 14.0,
        xe = W - 2.0,
    );
    for (label, class, values) in series {
        let n = values.len().max(2) as f64 - 1.0;
        let points = values
            .iter()
            .enumerate()
            .map(|(i, v)| format!("{:.1},{:.1}", i as f64 * W / n, H - v / top * (H - 4.0)))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = write!(
            svg,
            "<polyline class=\"series {class}\" points=\"{points}\"><title>{}</title></polyline>",
            esc(label)
        );
    }
    svg.push_str("</svg><ul class=\"legend\">");
    for (label, class, values) in series {
        let last = values.last().copied().unwrap_or(0.0);
        let _ = write!(
            svg,
            "<li><svg width=\"28\" height=\"8\" aria-hidden=\"true\"><line class=\"series {class}\" x1=\"0\" y1=\"4\" x2=\"28\" y2=\"4\"/></svg> {} (last: {last:.2})</li>",
            esc(label)
        );
    }
    svg.push_str("</ul></figure>");
    svg
}

fn charts(o: &Overview) -> String {
    let col = |f: &dyn Fn(&Point) -> f64| o.minutes.iter().map(f).collect::<Vec<f64>>();
    let mut out = String::from("<div class=\"charts\">");
    out.push_str(&line_chart(
        "Requests per second",
        "req/s",
        &[("all requests", "s1", col(&|p| p.rps))],
    ));
    out.push_str(&line_chart(
        "Answers by status class (per minute)",
        "answers",
        &[
            ("2xx", "s1", col(&|p| p.classes[1] as f64)),
            ("4xx", "s2", col(&|p| p.classes[3] as f64)),
            ("5xx", "s3", col(&|p| p.classes[4] as f64)),
        ],
    ));
    out.push_str(&line_chart(
        "429s (per minute)",
        "answers",
        &[
            (
                "gateway 429 (limiter)",
                "s2",
                col(&|p| p.gateway_429 as f64),
            ),
            (
                "upstream 429 (Amazon)",
                "s3",
                col(&|p| p.upstream_429 as f64),
            ),
        ],
    ));
    out.push_str(&line_chart(
        "Latency",
        "ms",
        &[
            ("p50", "s1", col(&|p| p.p50_ms.unwrap_or(0.0))),
            ("p99", "s3", col(&|p| p.p99_ms.unwrap_or(0.0))),
        ],
    ));
    out.push_str("</div>");
    out
}

/// A small bar chart of one series (a sparkline of bars).
fn spark(values: &[f64]) -> String {
    let max = values.iter().copied().fold(0.0f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let mut svg =
        String::from("<svg class=\"spark\" viewBox=\"0 0 120 24\" preserveAspectRatio=\"none\" aria-hidden=\"true\">");
    for (i, v) in values.iter().enumerate() {
        let h = v / top * 22.0;
        let _ = write!(
            svg,
            "<rect x=\"{}\" y=\"{:.1}\" width=\"1.6\" height=\"{:.1}\"/>",
            i * 2,
            24.0 - h,
            h
        );
    }
    svg.push_str("</svg>");
    svg
}

fn tools_table(o: &Overview) -> String {
    let mut out = String::from("<h2>Per tool (last hour)</h2><div class=\"scroll\"><table><thead><tr><th>tool</th><th>requests</th><th>req/s</th><th>2xx</th><th>4xx</th><th>5xx</th><th>gateway 429</th><th>upstream 429</th><th>p50</th><th>p99</th><th>per minute</th></tr></thead><tbody>");
    if o.tools.is_empty() {
        out.push_str("<tr><td colspan=\"11\">No requests in the last hour.</td></tr>");
    }
    for t in &o.tools {
        let h = &t.hour;
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{:.3}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&t.tool),
            h.classes.iter().sum::<u64>(),
            h.rps,
            h.classes[1],
            h.classes[3],
            h.classes[4],
            h.gateway_429,
            h.upstream_429,
            ms(h.p50_ms),
            ms(h.p99_ms),
            spark(&t.rps)
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

// === rate limits ===

fn ratelimits(
    admin: &Admin,
    s: &Session,
    outcome: Option<Result<String, String>>,
    query: &std::collections::HashMap<String, String>,
) -> String {
    let mut out = String::new();
    match outcome {
        Some(Ok(m)) => {
            let _ = write!(
                out,
                "<div class=\"notice ok\" role=\"status\"><p>{}</p></div>",
                esc(&m)
            );
        }
        Some(Err(m)) => {
            let _ = write!(
                out,
                "<div class=\"notice bad\" role=\"alert\"><p>{}</p></div>",
                esc(&m)
            );
        }
        None => {}
    }
    let seller = query.get("seller").filter(|v| !v.is_empty());
    let operation = query.get("operation").filter(|v| !v.is_empty());
    let _ = write!(
        out,
        "<form method=\"get\" action=\"/console/ratelimits\" class=\"filters\"><label>seller <input name=\"seller\" value=\"{}\"></label> <label>operation <input name=\"operation\" value=\"{}\"></label> <button type=\"submit\">Filter</button></form>",
        esc(seller.map_or("", |v| v)),
        esc(operation.map_or("", |v| v))
    );
    let buckets = admin
        .gateway
        .limiter()
        .status(seller.map(String::as_str), operation.map(String::as_str));
    out.push_str("<h2>Buckets</h2><div class=\"scroll\"><table><thead><tr><th>seller</th><th>operation</th><th>level</th><th>rate</th><th>burst</th><th>queue</th><th>tools' share</th></tr></thead><tbody>");
    if buckets.is_empty() {
        out.push_str("<tr><td colspan=\"7\">No bucket used yet.</td></tr>");
    }
    for b in &buckets {
        let level = if b.burst > 0 {
            (b.tokens / f64::from(b.burst)).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let total: u64 = b.tools.iter().map(|t| t.admitted).sum();
        let shares = b
            .tools
            .iter()
            .map(|t| {
                let pct = if total > 0 {
                    t.admitted as f64 * 100.0 / total as f64
                } else {
                    0.0
                };
                format!(
                    "{} {:.0}% ({} admitted, {} waiting)",
                    esc(&t.tool),
                    pct,
                    t.admitted,
                    t.waiting
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let empty = if b.tokens < 1.0 {
            " <strong>empty</strong>"
        } else {
            ""
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td><meter min=\"0\" max=\"1\" low=\"0.2\" value=\"{level:.2}\"></meter> {:.2} / {}{empty}</td><td>{:.3}/s</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&b.seller),
            esc(&b.operation),
            b.tokens,
            b.burst,
            b.rate_per_second,
            b.burst,
            b.queue_depth,
            if shares.is_empty() { "–".into() } else { shares }
        );
    }
    out.push_str("</tbody></table></div>");
    let plans = admin.console.plans();
    out.push_str("<h2>Plans in force</h2><div class=\"scroll\"><table><thead><tr><th>plan</th><th>longest wait</th><th>highest priority</th><th>rules</th></tr></thead><tbody>");
    if plans.plans.is_empty() {
        out.push_str("<tr><td colspan=\"4\">No plan configured: every tool gets the limiter's defaults.</td></tr>");
    }
    for (name, wait, prio, rules) in &plans.plans {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(name),
            esc(wait),
            esc(prio),
            esc(rules)
        );
    }
    out.push_str("</tbody></table></div><h3>Tools' plans</h3><ul>");
    if plans.tools.is_empty() {
        out.push_str("<li>No tool is assigned a plan.</li>");
    }
    for (tool, plan) in &plans.tools {
        let _ = write!(out, "<li>{} → {}</li>", esc(tool), esc(plan));
    }
    let _ = write!(
        out,
        "</ul><h2>Reload</h2><form method=\"post\" action=\"/console/ratelimits/reload\">{}<p>Re-reads the config file; an invalid file changes nothing.</p><button type=\"submit\">Reload the configuration</button></form>",
        csrf_field(s)
    );
    out
}

// === sellers and tools ===

async fn sellers(
    admin: &Admin,
    s: &Session,
    shown: Option<String>,
) -> Result<String, ConsoleError> {
    let store = admin.gateway.store();
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut out = shown.unwrap_or_default();
    out.push_str("<h2>Sellers</h2><div class=\"scroll\"><table><thead><tr><th>seller</th><th>region</th><th>marketplaces</th><th>status</th><th>re-authorize by</th></tr></thead><tbody>");
    let sellers = store.sellers().await?;
    if sellers.is_empty() {
        out.push_str("<tr><td colspan=\"5\">No seller is connected.</td></tr>");
    }
    for seller in &sellers {
        let date = time::OffsetDateTime::from_unix_timestamp(seller.reauthorize_by)
            .map(|t| t.date().to_string())
            .unwrap_or_default();
        let days = (seller.reauthorize_by - now) / 86_400;
        let due = if seller.reauthorize_by <= now {
            " class=\"due\"><strong>overdue</strong> "
        } else if days < 30 {
            " class=\"due\"><strong>due soon</strong> "
        } else {
            ">"
        };
        let status = seller.status.as_str();
        let status = if status == "active" {
            esc(status)
        } else {
            format!("<strong>{}</strong>", esc(status))
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{status}</td><td{due}{} ({} days)</td></tr>",
            esc(&seller.selling_partner_id),
            esc(&seller.region.to_string()),
            esc(&seller.marketplaces.join(", ")),
            esc(&date),
            days
        );
    }
    out.push_str("</tbody></table></div>");
    if admin.console.invites.is_some() {
        let _ = write!(
            out,
            "<form method=\"post\" action=\"/console/sellers/invite\" class=\"filters\">{}<label>region <select name=\"region\"><option>na</option><option>eu</option><option>fe</option></select></label> <label>re-authorization of seller (optional) <input name=\"seller\"></label> <button type=\"submit\">Create an invite link</button></form>",
            csrf_field(s)
        );
    } else {
        out.push_str(
            "<p class=\"hint\">Seller invites need an <code>[onboarding]</code> section.</p>",
        );
    }
    let plans = admin.console.plans().tools;
    out.push_str("<h2>Tools</h2><div class=\"scroll\"><table><thead><tr><th>client</th><th>tool</th><th>role</th><th>sellers</th><th>plan</th><th>key</th><th>status</th><th></th></tr></thead><tbody>");
    let clients = store.clients().await?;
    if clients.is_empty() {
        out.push_str("<tr><td colspan=\"8\">No tool has a key.</td></tr>");
    }
    for c in &clients {
        let (status, action) = match c.revoked_at {
            Some(_) => ("<strong>revoked</strong>".to_string(), String::new()),
            None => (
                "active".to_string(),
                format!(
                    "<form method=\"post\" action=\"/console/tools/revoke\">{}<input type=\"hidden\" name=\"id\" value=\"{}\"><button type=\"submit\" class=\"danger\" aria-label=\"Revoke {}\">Revoke</button></form>",
                    csrf_field(s),
                    esc(&c.id),
                    esc(&c.id)
                ),
            ),
        };
        let _ = write!(
            out,
            "<tr data-client=\"{id}\"><td><code>{id}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><code>{}…</code></td><td>{status}</td><td>{action}</td></tr>",
            esc(&c.tool),
            esc(&c.role),
            esc(&c.sellers.join(", ")),
            esc(plans.get(&c.tool).map_or("–", String::as_str)),
            esc(&c.key_prefix),
            id = esc(&c.id),
        );
    }
    let _ = write!(
        out,
        "</tbody></table></div><h2>Create a key</h2><form method=\"post\" action=\"/console/tools/create\" class=\"card\">{}<p><label>tool <input name=\"tool\" required pattern=\"[A-Za-z0-9._-]{{1,64}}\"></label></p><p><label>role <input name=\"role\" required pattern=\"[A-Za-z0-9._-]{{1,64}}\"></label></p><p><label>sellers <input name=\"sellers\" required placeholder=\"A1SELLER,A2SELLER or *\"></label></p><p><button type=\"submit\">Create the key</button> <span class=\"hint\">The key is shown once.</span></p></form>",
        csrf_field(s)
    );
    Ok(out)
}

// === audit ===

/// The audit query of a form: its filters over a bounded time range (`since` defaults to
/// [`DEFAULT_WINDOW_HOURS`] before `until`, `until` to now; at most [`MAX_WINDOW_DAYS`] apart).
pub(super) fn audit_filters(
    q: &std::collections::HashMap<String, String>,
    now: time::OffsetDateTime,
) -> Result<Filters, ConsoleError> {
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let when = |k: &str| -> Result<Option<time::OffsetDateTime>, ConsoleError> {
        get(k)
            .map(|t| {
                query::parse_time(&t, now)
                    .ok()
                    .and_then(|t| vault::parse_rfc3339(&t))
                    .ok_or(ConsoleError::BadInput(
                        "times are RFC 3339 or relative (e.g. 24h)",
                    ))
            })
            .transpose()
    };
    let until = when("until")?.unwrap_or(now);
    let since = when("since")?.unwrap_or(until - time::Duration::hours(DEFAULT_WINDOW_HOURS));
    if since >= until {
        return Err(ConsoleError::BadInput("since must be before until"));
    }
    if until - since > time::Duration::days(MAX_WINDOW_DAYS) {
        return Err(ConsoleError::BadInput(
            "one query reads at most 31 days: narrow since and until",
        ));
    }
    Ok(Filters {
        tool: get("tool"),
        seller: get("seller"),
        operation: get("operation"),
        kind: get("kind")
            .map(|k| serde_json::from_value(serde_json::Value::String(k)))
            .transpose()
            .map_err(|_| ConsoleError::BadInput("unknown record kind"))?,
        status: get("status")
            .map(|s| query::parse_status(&s))
            .transpose()
            .map_err(|_| ConsoleError::BadInput("status is a code (e.g. 429) or a class (4xx)"))?,
        pii: get("pii")
            .map(|p| p.parse())
            .transpose()
            .map_err(|_: String| ConsoleError::BadInput("unknown PII category"))?,
        since: Some(query::record_time(since)),
        until: Some(query::record_time(until)),
    })
}

/// The audit page: reads the chain files (on a blocking thread: a large log must not hold a
/// runtime worker), within the bounds of [`audit_filters`].
fn audit(
    cfg: &crate::audit::AuditConfig,
    q: &std::collections::HashMap<String, String>,
) -> Result<String, ConsoleError> {
    let now = time::OffsetDateTime::now_utc();
    let get = |k: &str| {
        q.get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let filters = audit_filters(q, now)?;
    let page: usize = get("page")
        .and_then(|p| p.parse().ok())
        .unwrap_or(0)
        .min(MAX_PAGES - 1);
    let keep = (page + 1) * PAGE_SIZE;
    let mut newest: VecDeque<String> = VecDeque::with_capacity(keep + 1);
    let total = query::query(&cfg.dir, &filters, |line| {
        newest.push_back(line.to_string());
        if newest.len() > keep {
            newest.pop_front();
        }
        Ok(())
    })?;
    let mut out = String::new();
    let field = |k: &str| esc(&get(k).unwrap_or_default());
    let kinds = [
        "",
        "request",
        "key_created",
        "key_revoked",
        "seller_authorized",
        "seller_deauthorized",
        "reload",
        "reveal",
        "export",
        "erase",
        "deletion_run",
        "legal_hold",
        "delivery",
        "alert",
        "audit_started",
        "audit_stopped",
        "audit_retention",
        "gap",
        "unauthenticated",
        "tunnel",
        "compat_switch",
        "invite_created",
        "sign_in",
    ];
    let kind_now = get("kind").unwrap_or_default();
    let options = kinds
        .iter()
        .map(|k| {
            let sel = if *k == kind_now { " selected" } else { "" };
            format!(
                "<option value=\"{k}\"{sel}>{}</option>",
                if k.is_empty() { "any" } else { k }
            )
        })
        .collect::<String>();
    let _ = write!(
        out,
        "<h2>Query</h2><form method=\"get\" action=\"/console/audit\" class=\"filters\"><label>tool <input name=\"tool\" value=\"{}\"></label> <label>seller <input name=\"seller\" value=\"{}\"></label> <label>operation <input name=\"operation\" value=\"{}\"></label> <label>kind <select name=\"kind\">{options}</select></label> <label>status <input name=\"status\" size=\"5\" value=\"{}\"></label> <label>PII <input name=\"pii\" size=\"10\" value=\"{}\"></label> <label>since <input name=\"since\" size=\"12\" placeholder=\"24h\" value=\"{}\"></label> <label>until <input name=\"until\" size=\"12\" value=\"{}\"></label> <button type=\"submit\">Query</button></form>",
        field("tool"), field("seller"), field("operation"), field("status"), field("pii"), field("since"), field("until")
    );
    let rows: Vec<&String> = newest
        .iter()
        .rev()
        .skip(page * PAGE_SIZE)
        .take(PAGE_SIZE)
        .collect();
    let range = format!(
        "from {} to {}",
        filters.since.as_deref().unwrap_or("–"),
        filters.until.as_deref().unwrap_or("–")
    );
    let _ = write!(
        out,
        "<p id=\"audit-summary\">{total} matching record(s) {}, newest first; page {} of {}{}.</p>",
        esc(&range),
        page + 1,
        (total as usize).div_ceil(PAGE_SIZE).clamp(1, MAX_PAGES),
        if total as usize > MAX_PAGES * PAGE_SIZE {
            " (only the newest pages are shown: narrow the query for older records)"
        } else {
            ""
        }
    );
    out.push_str(&records_table(&rows));
    let link = |p: usize| {
        let mut params: Vec<(String, String)> = q
            .iter()
            .filter(|(k, v)| k.as_str() != "page" && !v.is_empty())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        params.sort();
        params.push(("page".into(), p.to_string()));
        let qs = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(params)
            .finish();
        format!("/console/audit?{}", esc(&qs))
    };
    out.push_str("<nav class=\"pager\" aria-label=\"Pages\">");
    if page > 0 {
        let _ = write!(
            out,
            "<a href=\"{}\" rel=\"prev\">← newer</a> ",
            link(page - 1)
        );
    }
    if (page + 1) * PAGE_SIZE < total as usize && page + 1 < MAX_PAGES {
        let _ = write!(
            out,
            "<a href=\"{}\" rel=\"next\">older →</a>",
            link(page + 1)
        );
    }
    out.push_str("</nav>");
    // The per-tool report over the same time range.
    let report = query::report(&cfg.dir, filters.since.clone(), filters.until.clone())?;
    out.push_str(&report_chart(&report));
    // Alerts of the last ALERT_DAYS days, newest first.
    let alerts = Filters {
        kind: Some(crate::audit::Kind::Alert),
        since: Some(query::record_time(now - time::Duration::days(ALERT_DAYS))),
        ..Filters::default()
    };
    let mut recent: VecDeque<String> = VecDeque::new();
    let n = query::query(&cfg.dir, &alerts, |line| {
        recent.push_back(line.to_string());
        if recent.len() > 20 {
            recent.pop_front();
        }
        Ok(())
    })?;
    let _ = write!(
        out,
        "<h2>Alerts</h2><p>{n} alert(s) in the last {ALERT_DAYS} days; the latest 20:</p>"
    );
    let rows: Vec<&String> = recent.iter().rev().collect();
    out.push_str(&records_table(&rows));
    Ok(out)
}

/// Verifies every chain (`spgate audit verify`): reads every file, so it runs only when asked.
fn verify_chains(
    cfg: &crate::audit::AuditConfig,
    by: String,
) -> Result<Verification, ConsoleError> {
    let key = Secret::new(base64::Engine::encode(
        &base64::engine::general_purpose::STANDARD,
        cfg.key.expose(),
    ));
    let mut text = Vec::new();
    let ok = crate::audit::cli::verify(&cfg.dir, &key, false, &mut text)?;
    Ok(Verification {
        ok,
        text: String::from_utf8_lossy(&text).into_owned(),
        at: vault::rfc3339(time::OffsetDateTime::now_utc().unix_timestamp()),
        by,
    })
}

/// The chain verification section: the last result, and the form that runs it again.
fn verification(last: Option<&Verification>, s: &Session) -> String {
    let mut out = String::from("<h2>Chain verification</h2>");
    match last {
        None => out.push_str("<p class=\"notice\" role=\"status\" id=\"verify-status\">Not verified since the gateway started. Verification reads every audit file.</p>"),
        Some(v) => {
            let _ = write!(
                out,
                "<p class=\"notice {}\" role=\"status\" id=\"verify-status\"><strong>{}</strong> (verified {} by {})</p><pre class=\"verify\">{}</pre>",
                if v.ok { "ok" } else { "bad" },
                if v.ok { "✔ Every chain verified." } else { "✖ Verification failed (see below)." },
                esc(&v.at),
                esc(&v.by),
                esc(&v.text)
            );
        }
    }
    let _ = write!(
        out,
        "<form method=\"post\" action=\"/console/audit/verify\">{}<button type=\"submit\">Verify the chains now</button></form>",
        csrf_field(s)
    );
    out
}

fn records_table(lines: &[&String]) -> String {
    let mut out = String::from("<div class=\"scroll\"><table class=\"records\"><thead><tr><th>time</th><th>instance</th><th>kind</th><th>tool / actor</th><th>role</th><th>seller</th><th>operation / reason</th><th>status</th><th>ms</th><th>limiter</th><th>PII</th></tr></thead><tbody>");
    if lines.is_empty() {
        out.push_str("<tr><td colspan=\"11\">No records.</td></tr>");
    }
    for line in lines {
        let Ok(v) = serde_json::from_str::<View<'_>>(line) else {
            continue;
        };
        let o = |x: &Option<std::borrow::Cow<'_, str>>| esc(x.as_deref().unwrap_or("–"));
        let who = match (&v.tool, &v.actor) {
            (Some(t), _) => esc(t),
            (None, Some(a)) => format!("@{}", esc(a)),
            _ => "–".into(),
        };
        let what = match (&v.operation, &v.reason) {
            (Some(op), _) => esc(op),
            (None, Some(r)) => format!("({})", esc(r)),
            _ => "–".into(),
        };
        let pii = v
            .pii
            .iter()
            .map(|p| format!("{}:{}", p.category, p.action))
            .collect::<Vec<_>>()
            .join(", ");
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{who}</td><td>{}</td><td>{}</td><td>{what}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&v.time),
            esc(&v.instance),
            esc(&v.kind),
            o(&v.role),
            o(&v.seller),
            v.status.map_or("–".into(), |s| s.to_string()),
            v.latency_us.map_or("–".into(), |us| format!("{:.1}", us as f64 / 1000.0)),
            v.limiter.as_ref().map_or("–".into(), |l| esc(&l.decision)),
            if pii.is_empty() { "–".into() } else { esc(&pii) }
        );
    }
    out.push_str("</tbody></table></div>");
    out
}

/// Per tool: requests, denials, 429s, reveals, and a bar per PII category received (the count
/// written beside each bar).
fn report_chart(report: &BTreeMap<String, query::ToolSummary>) -> String {
    let mut out = String::from("<h2>Per-tool report</h2><p class=\"hint\">PII categories each tool received (responses in any form but dropped), over the queried time range.</p>");
    if report.is_empty() {
        out.push_str("<p>No request in the range.</p>");
        return out;
    }
    let max = report
        .values()
        .flat_map(|t| t.pii.values().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    out.push_str("<div class=\"report\">");
    for (tool, t) in report {
        let _ = write!(
            out,
            "<section class=\"tool\"><h3>{}</h3><p>{} requests · {} denials · {} 429s · {} reveals</p>",
            esc(tool),
            t.requests,
            t.denials,
            t.throttled,
            t.reveals
        );
        if t.pii.is_empty() {
            out.push_str("<p>No PII received.</p></section>");
            continue;
        }
        let rows = t.pii.len();
        let _ = write!(
            out,
            "<svg class=\"bars\" viewBox=\"0 0 400 {}\" role=\"img\" aria-label=\"PII categories received by {}\">",
            rows * 18,
            esc(tool)
        );
        for (i, (cat, n)) in t.pii.iter().enumerate() {
            let w = (*n as f64 / max as f64) * 220.0;
            let y = i * 18;
            let _ = write!(
                out,
                "<text x=\"0\" y=\"{}\" class=\"tick\">{}</text><rect x=\"110\" y=\"{}\" width=\"{w:.1}\" height=\"12\"/><text x=\"{:.1}\" y=\"{}\" class=\"tick\">{n}</text>",
                y + 12,
                esc(cat),
                y + 2,
                114.0 + w,
                y + 12
            );
        }
        out.push_str("</svg></section>");
    }
    out.push_str("</div>");
    out
}

// === retention ===

async fn retention(
    admin: &Admin,
    s: &Session,
    shown: Option<String>,
) -> Result<String, ConsoleError> {
    let report = admin.vault()?.report().await?;
    let mut out = shown.unwrap_or_default();
    let _ = write!(
        out,
        "<h2>Vault report</h2><div class=\"stats\"><div class=\"stat\"><span class=\"label\">active</span><span class=\"value\">{}</span></div><div class=\"stat\"><span class=\"label\">held</span><span class=\"value\">{}</span></div><div class=\"stat\"><span class=\"label\">deleted</span><span class=\"value\">{}</span></div><div class=\"stat\"><span class=\"label\">overdue</span><span class=\"value\">{}{}</span></div><div class=\"stat\"><span class=\"label\">live data keys</span><span class=\"value\">{}</span></div></div><p class=\"hint\">PII is deleted {} days after delivery at the latest. Generated {}.</p>",
        report.active,
        report.held,
        report.deleted,
        report.overdue,
        if report.overdue > 0 { " <strong>(scheduler behind)</strong>" } else { "" },
        report.live_keys,
        report.max_days,
        esc(&report.generated_at)
    );
    out.push_str("<h2>Next due</h2><div class=\"scroll\"><table><thead><tr><th>seller</th><th>order</th><th>state</th><th>deleted at</th><th>basis</th></tr></thead><tbody>");
    if report.next_due.is_empty() {
        out.push_str("<tr><td colspan=\"5\">Nothing is due.</td></tr>");
    }
    for d in &report.next_due {
        let state = serde_json::to_value(d.state)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let state = if state == "held" {
            "<strong>held</strong>".to_string()
        } else {
            esc(&state)
        };
        let _ = write!(
            out,
            "<tr><td>{}</td><td><code>{}</code></td><td>{state}</td><td>{}</td><td>{}</td></tr>",
            esc(&d.seller),
            esc(&d.order_id),
            esc(&d.purge_at),
            esc(d.basis)
        );
    }
    let csrf = csrf_field(s);
    let _ = write!(
        out,
        "</tbody></table></div><div class=\"forms\"><form method=\"post\" action=\"/console/retention/hold\" class=\"card\"><h2>Set a legal hold</h2>{csrf}<p><label>seller <input name=\"seller\" required></label></p><p><label>order id <input name=\"order\" required></label></p><p><label>reason <input name=\"reason\" required></label></p><p><label>until <input name=\"until\" type=\"date\" required></label></p><p><button type=\"submit\">Set the hold</button></p></form><form method=\"post\" action=\"/console/retention/release\" class=\"card\"><h2>Lift a legal hold</h2>{csrf}<p><label>seller <input name=\"seller\" required></label></p><p><label>order id <input name=\"order\" required></label></p><p><button type=\"submit\">Lift the hold</button></p></form><form method=\"post\" action=\"/console/retention/export\" class=\"card\"><h2>Export (data-subject access)</h2>{csrf}<p><label>order id <input name=\"order\" required></label></p><p><label><input type=\"checkbox\" name=\"confirm\" value=\"yes\" required> The download holds buyer PII; I handle it as a data-subject request.</label></p><p><button type=\"submit\">Download the export</button></p></form><form method=\"post\" action=\"/console/retention/erase\" class=\"card\"><h2>Erase</h2>{csrf}<p><label>order id <input name=\"order\" required></label></p><p><label>seller (optional) <input name=\"seller\"></label></p><p><label>type the order id again to confirm <input name=\"confirm\" required></label></p><fieldset><legend>reason (recorded in the audit log)</legend><label><input type=\"radio\" name=\"reason\" value=\"data_subject_request\" required> a data-subject (erasure) request</label><br><label><input type=\"radio\" name=\"reason\" value=\"operator_decision\"> an operator's decision</label></fieldset><p><button type=\"submit\" class=\"danger\">Erase the order's PII</button></p></form></div>"
    );
    Ok(out)
}
