//! The console's own tests: the pure parts (origin check, cookies, headers, error pages), then
//! whole requests through [`Admin::handle`] on a gateway with an embedded store and an audit
//! log in a temporary directory (sign-in, sessions, actions and their audit records).

use super::*;
use crate::audit::query::{self, Filters};
use crate::config::{Config, MapEnv};
use crate::server::PeerAddr;
use http_body_util::BodyExt as _;

const OPS_TOKEN: &str = "console-unit-ops-token-0123456789abcdef";
const SECURITY_TOKEN: &str = "console-unit-security-token-0123456789ab";
const SELLER: &str = "A1CONSOLE";
const ORDER: &str = "111-2222222-3333333";

fn post(headers: &[(&str, &str)]) -> Request<()> {
    let mut b = Request::post("/console/tools/create");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap_or_default()
}

fn set_cookies(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .map(str::to_string)
        .collect()
}

#[test]
fn posts_from_another_origin_are_refused() {
    let host = ("host", "127.0.0.1:9090");
    for (secure, scheme) in [(false, "http"), (true, "https")] {
        let own = format!("{scheme}://127.0.0.1:9090");
        let same = [
            host,
            ("origin", own.as_str()),
            ("sec-fetch-site", "same-origin"),
        ];
        assert!(same_origin(&post(&same), secure).is_ok(), "{own}");
        // No browser headers at all (curl): the CSRF token alone decides.
        assert!(same_origin(&post(&[host]), secure).is_ok());
    }
    let bad_for = |secure: bool| {
        let other_scheme = if secure {
            "http://127.0.0.1:9090"
        } else {
            "https://127.0.0.1:9090"
        };
        vec![
            // The same host and port under the other scheme is another origin.
            vec![host, ("origin", other_scheme)],
            vec![host, ("origin", "http://evil.example")],
            vec![host, ("origin", "null")],
            vec![host, ("origin", "http://127.0.0.1:9091")],
            vec![host, ("origin", "https://127.0.0.1:9091")],
            vec![host, ("origin", "http://127.0.0.1:9090.evil.example")],
            vec![host, ("origin", "ftp://127.0.0.1:9090")],
            vec![host, ("sec-fetch-site", "cross-site")],
            vec![host, ("sec-fetch-site", "same-site")],
            vec![("origin", "http://127.0.0.1:9090")],
        ]
    };
    for secure in [false, true] {
        for bad in bad_for(secure) {
            assert!(
                matches!(
                    same_origin(&post(&bad), secure),
                    Err(ConsoleError::CrossOrigin)
                ),
                "secure {secure}: {bad:?}"
            );
        }
    }
}

#[test]
fn cookies_are_read_by_exact_name() {
    let req = post(&[(
        "cookie",
        "other=1; spgate_console_login=pre; spgate_console=abc; __Host-spgate_console=tls",
    )]);
    assert_eq!(cookie_value(&req, COOKIE).as_deref(), Some("abc"));
    assert_eq!(cookie_value(&req, LOGIN_COOKIE).as_deref(), Some("pre"));
    assert_eq!(
        cookie_value(&req, cookie_name(COOKIE, true)).as_deref(),
        Some("tls")
    );
    assert_eq!(cookie_value(&req, cookie_name(LOGIN_COOKIE, true)), None);
    let empty = post(&[("cookie", "spgate_console=")]);
    assert_eq!(cookie_value(&empty, COOKIE), None);
}

#[test]
fn under_tls_cookies_are_host_prefixed_and_secure() {
    let cookie = |secure| {
        let mut resp = redirect("/console");
        set_cookie(&mut resp, COOKIE, "id", None, secure);
        set_cookie(&mut resp, LOGIN_COOKIE, "", Some(0), secure);
        set_cookies(resp.headers())
    };
    assert_eq!(
        cookie(true),
        [
            "__Host-spgate_console=id; Path=/; HttpOnly; SameSite=Strict; Secure",
            "__Host-spgate_console_login=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure",
        ]
    );
    assert_eq!(
        cookie(false),
        [
            "spgate_console=id; Path=/console; HttpOnly; SameSite=Strict",
            "spgate_console_login=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ]
    );
}

#[test]
fn hsts_is_sent_only_under_tls() {
    for secure in [false, true] {
        let mut resp = html(StatusCode::OK, String::new());
        secure_headers(&mut resp, secure);
        let h = resp.headers();
        assert_eq!(
            h.get(header::STRICT_TRANSPORT_SECURITY),
            secure.then_some(&HeaderValue::from_static(HSTS))
        );
        assert_eq!(
            h.get(header::CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static(CSP))
        );
    }
}

#[test]
fn a_client_is_local_only_by_a_loopback_address() {
    let req = |host: &str| {
        Request::get("/console")
            .header("host", host)
            .body(())
            .unwrap_or_default()
    };
    let lan: std::net::IpAddr = [192, 0, 2, 7].into();
    let mapped: std::net::IpAddr = "::ffff:127.0.0.1".parse().unwrap_or(lan);
    // The listener's view of the client decides, whatever Host it names.
    assert!(!local_client(Some(lan), &req("127.0.0.1:9090")));
    assert!(local_client(
        Some([127, 0, 0, 1].into()),
        &req("console.example")
    ));
    assert!(local_client(Some(mapped), &req("x")));
    assert!(local_client(
        Some(std::net::Ipv6Addr::LOCALHOST.into()),
        &req("x")
    ));
    // In-process callers: by the Host asked for.
    for (host, local) in [
        ("127.0.0.1:9090", true),
        ("localhost:9090", true),
        ("[::1]:9090", true),
        ("console.example:9090", false),
        ("192.0.2.7", false),
        ("", false),
    ] {
        assert_eq!(local_client(None, &req(host)), local, "{host}");
    }
}

#[test]
fn every_error_page_carries_the_policy() {
    for err in [
        ConsoleError::NotFound,
        ConsoleError::Csrf,
        ConsoleError::CrossOrigin,
        ConsoleError::Forbidden(AdminRole::Ops),
        ConsoleError::BadInput("x"),
    ] {
        let resp = error_response(&err);
        assert!(resp.status().is_client_error(), "{err}");
        assert_eq!(
            resp.headers().get(header::CONTENT_SECURITY_POLICY),
            Some(&HeaderValue::from_static(CSP))
        );
    }
    assert_eq!(
        error_response(&ConsoleError::SignedOut)
            .headers()
            .get(header::LOCATION),
        Some(&HeaderValue::from_static("/console/login"))
    );
}

#[test]
fn refusals_are_counted() {
    let before = REFUSED.cross_origin.load(Ordering::Relaxed);
    REFUSED.count(&ConsoleError::CrossOrigin);
    REFUSED.count(&ConsoleError::NotFound);
    let after = REFUSED.cross_origin.load(Ordering::Relaxed);
    // Other tests may count too, never fewer.
    assert!(after > before, "{before} -> {after}");
    let mut out = String::new();
    render_metrics(&mut out);
    let shown: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("spgate_console_refused_total{reason=\"cross_origin\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!(shown >= after, "{out}");
    assert!(out.contains("spgate_console_tap_dropped_total "), "{out}");
}

#[test]
fn text_is_escaped() {
    assert_eq!(
        pages::esc("<a href=\"x\">'&'</a>"),
        "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
    );
}

#[test]
fn an_audit_query_reads_a_bounded_time_range() {
    let now = time::macros::datetime!(2026-12-07 12:00 UTC);
    let q = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };
    // Nothing asked: the last day.
    let f = pages::audit_filters(&q(&[]), now);
    let f = f.ok().unwrap_or_default();
    assert_eq!(f.since.as_deref(), Some("2026-12-06T12:00:00.000Z"));
    assert_eq!(f.until.as_deref(), Some("2026-12-07T12:00:00.000Z"));
    // An until alone: the day before it.
    let f = pages::audit_filters(&q(&[("until", "2026-11-01")]), now);
    let f = f.ok().unwrap_or_default();
    assert_eq!(f.since.as_deref(), Some("2026-10-31T00:00:00.000Z"));
    // Up to 31 days; more is refused, as is an empty range.
    assert!(pages::audit_filters(&q(&[("since", "31d")]), now).is_ok());
    for bad in [
        vec![("since", "32d")],
        vec![("since", "2020-01-01")],
        vec![("since", "2026-12-01"), ("until", "2026-11-01")],
        vec![("since", "yesterday")],
    ] {
        assert!(
            matches!(
                pages::audit_filters(&q(&bad), now),
                Err(ConsoleError::BadInput(_))
            ),
            "{bad:?}"
        );
    }
}

// === whole requests ===

struct Fixture {
    admin: Admin,
    dir: tempfile::TempDir,
}

fn config_text(dir: &std::path::Path) -> String {
    format!(
        r#"
[server]
listen = "127.0.0.1:0"
[upstream.endpoints]
na = "http://127.0.0.1:9"
eu = "http://127.0.0.1:9"
fe = "http://127.0.0.1:9"
[lwa]
token_url = "http://127.0.0.1:9/auth/o2/token"
client_id = "amzn1.application-oa2-client.console-unit"
client_secret = {{ env = "LWA_SECRET" }}
[store]
type = "embedded"
data_dir = {data:?}
[keys]
master_key = {{ env = "MASTER_KEY" }}
[audit]
dir = {audit:?}
instance = "unit"
key = {{ env = "AUDIT_KEY" }}
[admin]
listen = "127.0.0.1:0"
[[admin.tokens]]
name = "unit-ops"
role = "ops"
token = {{ env = "OPS_TOKEN" }}
[[admin.tokens]]
name = "unit-security"
role = "security"
token = {{ env = "SECURITY_TOKEN" }}
[onboarding]
application_id = "amzn1.sp.solution.console-unit"
public_url = "https://spgate.example.test"
"#,
        data = dir.join("data").display().to_string(),
        audit = dir.join("audit").display().to_string(),
    )
}

fn env() -> MapEnv {
    let mut env = MapEnv::default();
    for (k, v) in [
        ("LWA_SECRET", "console-unit-lwa-secret"),
        ("MASTER_KEY", "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="),
        ("AUDIT_KEY", "c3BnYXRlLWNvbnNvbGUtdGVzdC1hdWRpdC1rZXktMzI="),
        ("OPS_TOKEN", OPS_TOKEN),
        ("SECURITY_TOKEN", SECURITY_TOKEN),
    ] {
        env.vars.insert(k.into(), v.into());
    }
    env
}

async fn fixture() -> Fixture {
    fixture_tls(false).await
}

/// The admin listener's TLS, with a fresh self-signed certificate (its files in the `Env`).
fn admin_tls(dir: &std::path::Path) -> Arc<crate::server::tls::TlsListener> {
    let key = rcgen::KeyPair::generate().expect("a key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .and_then(|p| p.self_signed(&key))
        .expect("a certificate");
    let (cert_file, key_file) = (dir.join("admin.crt"), dir.join("admin.key"));
    let mut env = env();
    env.files.insert(cert_file.clone(), cert.pem());
    env.files.insert(key_file.clone(), key.serialize_pem());
    let config = crate::server::tls::TlsConfig {
        cert_file,
        key_file,
        client_ca_file: None,
        require_client_cert: false,
        reload_interval: std::time::Duration::from_secs(3600),
    };
    crate::server::tls::TlsListener::load(
        "admin",
        config,
        crate::server::tls::ClientPins::new(),
        Arc::new(env),
    )
    .expect("the admin listener's TLS loads")
}

async fn fixture_tls(tls: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let text = config_text(dir.path());
    let path = dir.path().join("spgate.toml");
    std::fs::write(&path, &text).expect("the config file is written");
    let config = Config::from_toml(&text, &env()).expect("the config is valid");
    let tokens = config
        .admin
        .as_ref()
        .map(|a| a.tokens.clone())
        .unwrap_or_default();
    let (audit, key, onboarding) = (
        config.audit.clone(),
        Arc::new(config.master_key.clone()),
        config.onboarding.clone(),
    );
    let opened = crate::open_store(&config).await.expect("the store opens");
    let (gateway, _) = crate::build_gateway(config, opened)
        .await
        .expect("the gateway builds");
    let gateway = Arc::new(gateway);
    let listeners = if tls {
        vec![admin_tls(dir.path())]
    } else {
        Vec::new()
    };
    let admin = Admin::new(gateway.clone(), &tokens, Some(path), Arc::new(env()))
        .with_vault(gateway.vault().clone())
        .with_audit(audit)
        .with_onboarding(key, onboarding)
        .with_tls(listeners);
    Fixture { admin, dir }
}

/// An answer, read whole.
struct Answer {
    status: StatusCode,
    headers: http::HeaderMap,
    text: String,
}

impl Fixture {
    async fn call(&self, req: Request<String>) -> Answer {
        let resp = self.admin.handle(req).await;
        let (parts, body) = resp.into_parts();
        let bytes = body
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        Answer {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    async fn get(&self, path: &str, cookie: &str) -> Answer {
        let req = Request::get(path)
            .header("host", "127.0.0.1:9090")
            .header("cookie", format!("{COOKIE}={cookie}"))
            .body(String::new())
            .unwrap_or_default();
        self.call(req).await
    }

    async fn post(&self, path: &str, cookie: &str, form: &[(&str, &str)]) -> Answer {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(form)
            .finish();
        let req = Request::post(path)
            .header("host", "127.0.0.1:9090")
            .header("origin", "http://127.0.0.1:9090")
            .header("content-type", "application/x-www-form-urlencoded")
            .header("cookie", format!("{COOKIE}={cookie}"))
            .body(body)
            .unwrap_or_default();
        self.call(req).await
    }

    /// Signs in through the form (from `peer`); the session cookie's value, if any.
    async fn sign_in_from(&self, token: &str, peer: [u8; 4]) -> (Answer, Option<String>) {
        let req = Request::post("/console/login")
            .header("host", "127.0.0.1:9090")
            .header("origin", "http://127.0.0.1:9090")
            .header("cookie", format!("{LOGIN_COOKIE}=pre-session"))
            .extension(PeerAddr((peer, 50000).into()))
            .body(format!(
                "csrf=pre-session&token={}",
                form_urlencoded::byte_serialize(token.as_bytes()).collect::<String>()
            ))
            .unwrap_or_default();
        let answer = self.call(req).await;
        let id = answer
            .headers
            .get_all(header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(|c| c.strip_prefix(&format!("{COOKIE}=")))
            .and_then(|c| c.split(';').next())
            .filter(|v| !v.is_empty())
            .map(str::to_string);
        (answer, id)
    }

    async fn sign_in(&self, token: &str) -> String {
        let (answer, id) = self.sign_in_from(token, [127, 0, 0, 1]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.text);
        id.expect("a session cookie")
    }

    /// The session's CSRF token, from a page's sign-out form.
    async fn csrf(&self, cookie: &str) -> String {
        let page = self.get("/console", cookie).await;
        let at = page.text.find("name=\"csrf\" value=\"").map(|i| i + 19);
        let token = at.and_then(|i| page.text[i..].split('"').next());
        token.expect("a CSRF token on the page").to_string()
    }

    /// Every audit record written so far, as JSON.
    async fn records(&self) -> Vec<serde_json::Value> {
        self.admin.gateway.auditor().flush().await;
        let mut out = Vec::new();
        let read = query::query(&self.dir.path().join("audit"), &Filters::default(), |l| {
            out.push(serde_json::from_str(l).unwrap_or_default());
            Ok(())
        });
        assert!(read.is_ok(), "{read:?}");
        out
    }

    async fn records_of(&self, kind: &str) -> Vec<serde_json::Value> {
        let mut all = self.records().await;
        all.retain(|r| r["kind"] == kind);
        all
    }
}

#[tokio::test]
async fn sign_ins_accepted_and_refused_and_sign_outs_are_audited_without_the_token() {
    let f = fixture().await;
    let (refused, none) = f.sign_in_from("not-an-admin-token", [192, 0, 2, 9]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert!(none.is_none());
    let id = f.sign_in(SECURITY_TOKEN).await;
    let csrf = f.csrf(&id).await;
    let out = f.post("/console/logout", &id, &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    let records = f.records_of("sign_in").await;
    let summary: Vec<String> = records
        .iter()
        .map(|r| {
            format!(
                "{} {} {} {}",
                r["reason"].as_str().unwrap_or("-"),
                r["actor"].as_str().unwrap_or("-"),
                r["role"].as_str().unwrap_or("-"),
                r["source"].as_str().unwrap_or("-")
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            "unknown_token - - 192.0.2.9",
            "signed_in unit-security security 127.0.0.1",
            "signed_out unit-security security -",
        ]
    );
    let text = serde_json::to_string(&f.records().await).unwrap_or_default();
    for secret in ["not-an-admin-token", SECURITY_TOKEN, &id, &csrf] {
        assert!(!text.contains(secret), "the audit log holds a secret");
    }
}

#[tokio::test]
async fn the_live_refresh_does_not_keep_a_session_alive() {
    let f = fixture().await;
    let (polled, used) = (f.sign_in(OPS_TOKEN).await, f.sign_in(OPS_TOKEN).await);
    let sessions = &f.admin.console.sessions;
    sessions.age(session::IDLE * 2 / 3);
    assert_eq!(f.get("/console/live", &polled).await.status, StatusCode::OK);
    assert_eq!(f.get("/console", &used).await.status, StatusCode::OK);
    sessions.age(session::IDLE * 2 / 3);
    // The tab only polled: its session ended. The one the admin used lives.
    let gone = f.get("/console/live", &polled).await;
    assert_eq!(gone.status, StatusCode::SEE_OTHER);
    assert_eq!(
        gone.headers.get(header::LOCATION),
        Some(&HeaderValue::from_static("/console/login"))
    );
    assert_eq!(f.get("/console/live", &used).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_full_session_table_refuses_sign_in_with_a_clear_page() {
    let f = fixture().await;
    for i in 0..session::MAX_SESSIONS {
        let made = f
            .admin
            .console
            .sessions
            .create(&format!("holder-{i}"), AdminRole::Ops);
        assert!(made.is_ok());
    }
    let (full, id) = f.sign_in_from(OPS_TOKEN, [127, 0, 0, 1]).await;
    assert_eq!(full.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(id.is_none());
    assert!(full.text.contains("Too many sessions"), "{}", full.text);
    assert!(full.text.contains("1024 live sessions"), "{}", full.text);
}

#[tokio::test]
async fn reload_and_invites_from_the_console_are_audited_with_the_admin() {
    let f = fixture().await;
    let id = f.sign_in(OPS_TOKEN).await;
    let csrf = f.csrf(&id).await;
    let ok = f
        .post("/console/ratelimits/reload", &id, &[("csrf", &csrf)])
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.text.contains("Reloaded"));
    // A broken file: refused, and the page says so with an error status.
    std::fs::write(f.dir.path().join("spgate.toml"), "[server\n").unwrap_or_default();
    let bad = f
        .post("/console/ratelimits/reload", &id, &[("csrf", &csrf)])
        .await;
    assert_eq!(bad.status, StatusCode::CONFLICT);
    assert!(bad.text.contains("Refused"), "{}", bad.text);
    assert!(!bad.text.contains("notice ok"), "{}", bad.text);
    // The admin API's reload names its token's holder too.
    let api = Request::post("/admin/reload")
        .header("authorization", format!("Bearer {OPS_TOKEN}"))
        .body(String::new())
        .unwrap_or_default();
    assert_eq!(f.call(api).await.status, StatusCode::BAD_REQUEST);
    let invite = f
        .post(
            "/console/sellers/invite",
            &id,
            &[("csrf", &csrf), ("region", "eu"), ("seller", SELLER)],
        )
        .await;
    assert_eq!(invite.status, StatusCode::OK, "{}", invite.text);
    let reloads: Vec<String> = f
        .records_of("reload")
        .await
        .iter()
        .map(|r| format!("{} {}", r["actor"], r["reason"]))
        .collect();
    assert_eq!(
        reloads,
        [
            "\"unit-ops\" \"applied\"",
            "\"unit-ops\" \"refused_invalid\"",
            "\"unit-ops\" \"refused_invalid\""
        ]
    );
    let invites = f.records_of("invite_created").await;
    assert_eq!(invites.len(), 1, "{invites:?}");
    assert_eq!(invites[0]["actor"], "unit-ops");
    assert_eq!(invites[0]["seller"], SELLER);
    assert_eq!(invites[0]["reason"], "region_eu");
    // The link is a credential: not in the log.
    let link_start = invite.text.find("https://spgate.example.test/");
    let link = link_start.map(|i| invite.text[i..].split('"').next().unwrap_or_default());
    let link = link.unwrap_or_default();
    assert!(link.len() > 40, "{link}");
    let text = serde_json::to_string(&f.records().await).unwrap_or_default();
    assert!(!text.contains(link));
}

#[tokio::test]
async fn a_revoke_of_an_unknown_key_answers_an_error_not_success() {
    let f = fixture().await;
    let id = f.sign_in(OPS_TOKEN).await;
    let csrf = f.csrf(&id).await;
    let answer = f
        .post(
            "/console/tools/revoke",
            &id,
            &[("csrf", &csrf), ("id", "cli_unknown")],
        )
        .await;
    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert!(answer.text.contains("Not revoked"), "{}", answer.text);
    assert!(!answer.text.contains("notice ok"), "{}", answer.text);
}

#[tokio::test]
async fn export_and_erase_name_the_admin_and_erase_needs_a_reason() {
    let f = fixture().await;
    let key = f.admin.gateway.vault().order_key(SELLER, ORDER).await;
    assert!(key.is_ok(), "{key:?}");
    let id = f.sign_in(SECURITY_TOKEN).await;
    let csrf = f.csrf(&id).await;
    let export = f
        .post(
            "/console/retention/export",
            &id,
            &[("csrf", &csrf), ("order", ORDER), ("confirm", "yes")],
        )
        .await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.text);
    assert!(export.text.contains(ORDER));
    // No reason: refused, nothing erased.
    let form = |reason: Option<&'static str>| {
        let mut form = vec![
            ("csrf", csrf.clone()),
            ("order", ORDER.into()),
            ("confirm", ORDER.into()),
        ];
        if let Some(r) = reason {
            form.push(("reason", r.into()));
        }
        form
    };
    for reason in [None, Some(""), Some("because")] {
        let fields = form(reason);
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let refused = f.post("/console/retention/erase", &id, &fields).await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST, "{reason:?}");
    }
    assert!(f.records_of("erase").await.is_empty());
    let fields = form(Some("data_subject_request"));
    let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let done = f.post("/console/retention/erase", &id, &fields).await;
    assert_eq!(done.status, StatusCode::OK, "{}", done.text);
    assert!(done.text.contains("Erased"), "{}", done.text);
    let exports = f.records_of("export").await;
    assert_eq!(exports.len(), 1, "{exports:?}");
    assert_eq!(exports[0]["actor"], "unit-security");
    assert_eq!(exports[0]["order_id"], ORDER);
    let erasures = f.records_of("erase").await;
    assert_eq!(erasures.len(), 1, "{erasures:?}");
    assert_eq!(erasures[0]["actor"], "unit-security");
    assert_eq!(erasures[0]["reason"], "data_subject_request");
    assert_eq!(erasures[0]["order_id"], ORDER);
}

#[tokio::test]
async fn plain_http_to_another_machine_shows_a_warning() {
    let f = fixture().await;
    let page = |peer: [u8; 4]| {
        Request::get("/console/login")
            .header("host", "console.example:9090")
            .extension(PeerAddr((peer, 50000).into()))
            .body(String::new())
            .unwrap_or_default()
    };
    let remote = f.call(page([192, 0, 2, 7])).await;
    assert_eq!(remote.status, StatusCode::OK);
    assert!(remote.text.contains("id=\"plain-http\""), "{}", remote.text);
    let local = f.call(page([127, 0, 0, 1])).await;
    assert!(!local.text.contains("id=\"plain-http\""));
    // Signed-in pages too.
    let id = f.sign_in(OPS_TOKEN).await;
    let req = Request::get("/console")
        .header("cookie", format!("{COOKIE}={id}"))
        .extension(PeerAddr(([192, 0, 2, 7], 50000).into()))
        .body(String::new())
        .unwrap_or_default();
    assert!(f.call(req).await.text.contains("id=\"plain-http\""));
    // Plain HTTP: no HSTS.
    assert!(remote
        .headers
        .get(header::STRICT_TRANSPORT_SECURITY)
        .is_none());
}

#[tokio::test]
async fn chain_verification_runs_when_asked_not_on_every_view() {
    let f = fixture().await;
    let id = f.sign_in(SECURITY_TOKEN).await;
    let csrf = f.csrf(&id).await;
    let view = f.get("/console/audit", &id).await;
    assert_eq!(view.status, StatusCode::OK, "{}", view.text);
    assert!(view.text.contains("Not verified since the gateway started"));
    let verified = f
        .post("/console/audit/verify", &id, &[("csrf", &csrf)])
        .await;
    assert_eq!(verified.status, StatusCode::OK, "{}", verified.text);
    assert!(verified.text.contains("Every chain verified"));
    let again = f.get("/console/audit", &id).await;
    assert!(again.text.contains("Every chain verified"));
    assert!(again.text.contains("by unit-security"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_path_never_waits_for_a_stalled_console() {
    let f = fixture().await;
    let auditor = f.admin.gateway.auditor().clone();
    let dropped = stats::tap_dropped();
    let n = stats::TAP_QUEUE + 200;
    let stall = f.admin.console.stats().stall();
    // With the console's statistics locked, request records still pass the tap at once: they
    // are recorded, and the writer writes them all (the flush returns) without waiting.
    let runtime = tokio::runtime::Handle::current();
    let recorder = std::thread::spawn(move || {
        for i in 0..n {
            let mut r = crate::audit::Record::request(&format!("req-{i}")).with_tool("labels");
            r.status = Some(200);
            auditor.record(r);
        }
        runtime.block_on(auditor.flush());
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while !recorder.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let finished = recorder.is_finished();
    drop(stall);
    assert!(finished, "recording waited for the console's lock");
    assert!(recorder.join().is_ok());
    assert!(
        // The queue holds TAP_QUEUE, the counting thread one more: the rest is dropped.
        stats::tap_dropped() >= dropped + 150,
        "drops are counted: {} -> {}",
        dropped,
        stats::tap_dropped()
    );
    // What the queue held is counted once the console moves again.
    let mut counted = 0;
    for _ in 0..200 {
        counted = f.admin.console.stats().overview(unix_now()).hour.classes[1];
        if counted > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(counted > 0 && counted <= n as u64, "{counted}");
}

#[tokio::test]
async fn under_tls_the_console_uses_host_cookies_hsts_and_the_https_origin() {
    let f = fixture_tls(true).await;
    let login = f
        .call(
            Request::get("/console/login")
                .header("host", "console.example:9443")
                .extension(PeerAddr(([192, 0, 2, 7], 50000).into()))
                .body(String::new())
                .unwrap_or_default(),
        )
        .await;
    assert_eq!(login.status, StatusCode::OK);
    assert_eq!(
        login.headers.get(header::STRICT_TRANSPORT_SECURITY),
        Some(&HeaderValue::from_static(HSTS))
    );
    let pre = login
        .headers
        .get(header::SET_COOKIE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    assert!(pre.starts_with("__Host-spgate_console_login="), "{pre}");
    assert!(
        pre.contains("; Path=/;") && pre.ends_with("; Secure"),
        "{pre}"
    );
    // Encrypted: no warning, even for a client on another machine.
    assert!(!login.text.contains("id=\"plain-http\""));
    let sign_in = |origin: &'static str| {
        Request::post("/console/login")
            .header("host", "console.example:9443")
            .header("origin", origin)
            .header("cookie", format!("{LOGIN_COOKIE_TLS}=pre-session"))
            .body(format!("csrf=pre-session&token={OPS_TOKEN}"))
            .unwrap_or_default()
    };
    // The http:// origin of the same host and port is another origin.
    let plain = f.call(sign_in("http://console.example:9443")).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN);
    let signed = f.call(sign_in("https://console.example:9443")).await;
    assert_eq!(signed.status, StatusCode::SEE_OTHER, "{}", signed.text);
    let cookies = set_cookies(&signed.headers);
    let session = cookies
        .iter()
        .find_map(|c| c.strip_prefix(&format!("{COOKIE_TLS}=")))
        .and_then(|c| c.split(';').next())
        .unwrap_or_default()
        .to_string();
    assert_eq!(session.len(), 43, "{cookies:?}");
    assert!(
        cookies.iter().all(|c| c.ends_with("; Secure")),
        "{cookies:?}"
    );
    let page = |cookie: String| {
        Request::get("/console")
            .header("host", "console.example:9443")
            .header("cookie", cookie)
            .body(String::new())
            .unwrap_or_default()
    };
    // Only the __Host- cookie is read.
    let by_plain_name = f.call(page(format!("{COOKIE}={session}"))).await;
    assert_eq!(by_plain_name.status, StatusCode::SEE_OTHER);
    let ok = f.call(page(format!("{COOKIE_TLS}={session}"))).await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(ok.headers.get(header::STRICT_TRANSPORT_SECURITY).is_some());
}
