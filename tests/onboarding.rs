//! Seller onboarding through the website authorization workflow, against the sandbox's LWA.

mod common;

use common::*;
use http::StatusCode;
use spgate::auth::onboarding;
use spgate::store::{Region, SellerStatus};

const NEW_SELLER: &str = "A2NEWSELLER77";

async fn gateway(draft: bool) -> TestGateway {
    gateway_audited(draft, None).await
}

async fn gateway_audited(draft: bool, audit: Option<&std::path::Path>) -> TestGateway {
    let audit = audit.map_or(String::new(), |dir| {
        format!(
            "[audit]\ndir = {:?}\ninstance = \"onb\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            dir.display().to_string()
        )
    });
    start_gateway(Options {
        extra_toml: format!(
            "[onboarding]\napplication_id = \"amzn1.sp.solution.test\"\ndraft = {draft}\npublic_url = \"https://spgate.example.test\"\n[onboarding.consent_urls]\neu = \"https://sellercentral-europe.example.test\"\n{audit}"
        ),
        ..Options::default()
    })
    .await
}

/// Creates an invite through the library (as `spgate sellers invite` does) and returns the
/// gateway-local start path.
async fn invite(gw: &TestGateway, region: Region, now: i64) -> String {
    invite_for(gw, region, None, now).await
}

async fn invite_for(gw: &TestGateway, region: Region, seller: Option<&str>, now: i64) -> String {
    let cfg = spgate::config::Config::from_toml(
        "[lwa]\nclient_id = \"x\"\nclient_secret = { env = \"S\" }\n[keys]\nmaster_key = { env = \"M\" }\n[onboarding]\napplication_id = \"a\"\npublic_url = \"https://spgate.example.test\"\n",
        &{
            let mut env = spgate::config::MapEnv::default();
            env.vars.insert("S".into(), "s".into());
            env.vars.insert("M".into(), gw.master_key_b64.expose().clone());
            env
        },
    )
    .unwrap();
    let link = onboarding::create_invite(
        &*gw.store,
        &cfg.master_key,
        cfg.onboarding.as_ref().unwrap(),
        region,
        seller,
        now,
    )
    .await
    .unwrap();
    link.strip_prefix("https://spgate.example.test")
        .unwrap()
        .to_string()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Follows /oauth/start and returns the `state` from the consent redirect.
async fn start(gw: &TestGateway, path: &str) -> (Reply, Option<String>) {
    let reply = gw
        .call(
            http::Request::get(format!("{}{path}", gw.url))
                .body(empty())
                .unwrap(),
        )
        .await;
    let state = reply.headers.get("location").and_then(|l| {
        let url = l.to_str().ok()?;
        let q = url.split_once('?')?.1;
        form_urlencoded::parse(q.as_bytes())
            .find(|(k, _)| k == "state")
            .map(|(_, v)| v.into_owned())
    });
    (reply, state)
}

async fn callback(gw: &TestGateway, state: &str, code: &str) -> Reply {
    callback_claiming(gw, state, NEW_SELLER, code).await
}

#[tokio::test]
async fn a_seller_authorizes_through_the_invite_and_is_recorded_with_a_sealed_token() {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway_audited(true, Some(audit.path())).await;
    let path = invite(&gw, Region::Eu, now()).await;
    let (reply, state) = start(&gw, &path).await;
    assert_eq!(reply.status, StatusCode::FOUND);
    let location = reply.headers["location"].to_str().unwrap().to_string();
    assert!(
        location.starts_with("https://sellercentral-europe.example.test/apps/authorize/consent?"),
        "{location}"
    );
    assert!(
        location.contains("application_id=amzn1.sp.solution.test")
            && location.contains("version=beta")
    );
    assert_eq!(reply.headers["referrer-policy"], "no-referrer");
    let state = state.unwrap();
    assert!(state.len() >= 22, "at least 128 bits of state");

    gw.sandbox
        .add_authorization_code("code-123", NEW_SELLER, "Atzr|new-seller-refresh-token");
    let reply = callback(&gw, &state, "code-123").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let seller = gw
        .store
        .seller(NEW_SELLER)
        .await
        .unwrap()
        .expect("recorded");
    assert_eq!(seller.region, Region::Eu);
    assert_eq!(seller.status, SellerStatus::Active);
    assert!(seller.reauthorize_by - seller.authorized_at >= 365 * 86_400);
    assert!(!seller
        .refresh_token_sealed
        .contains("new-seller-refresh-token"));
    assert!(
        !seller.marketplaces.is_empty(),
        "marketplaces looked up with the new token"
    );
    assert_eq!(gw.sandbox.stats().lwa_authorization_code_grants, 1);

    // The authorization is in the audit log.
    gw.gateway.auditor().flush().await;
    let mut log = String::new();
    for e in std::fs::read_dir(audit.path()).unwrap() {
        log.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
    }
    assert!(
        log.lines()
            .any(|l| l.contains("\"kind\":\"seller_authorized\"") && l.contains(NEW_SELLER)),
        "{log}"
    );
    assert!(!log.contains("new-seller-refresh-token"));

    // Replaying the callback, or reusing the invite, stores nothing more.
    let reply = callback(&gw, &state, "code-123").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let (reply, _) = start(&gw, &path).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(gw.sandbox.stats().lwa_authorization_code_grants, 1);
}

#[tokio::test]
async fn a_released_app_gets_no_beta_flag() {
    let gw = gateway(false).await;
    let path = invite(&gw, Region::Na, now()).await;
    let (reply, _) = start(&gw, &path).await;
    let location = reply.headers["location"].to_str().unwrap();
    assert!(location.starts_with("https://sellercentral.amazon.com/apps/authorize/consent?"));
    assert!(!location.contains("version=beta"));
}

#[tokio::test]
async fn forged_expired_and_missing_invites_and_states_store_nothing() {
    let gw = gateway(false).await;
    let path = invite(&gw, Region::Eu, now()).await;
    let forged = format!("{}x", &path[..path.len() - 1]);
    let expired = invite(&gw, Region::Eu, now() - 100 * 3600).await;
    for bad in [
        forged.as_str(),
        expired.as_str(),
        "/oauth/start",
        "/oauth/start?invite=abc",
    ] {
        let (reply, state) = start(&gw, bad).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(state.is_none());
        assert!(reply.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html"));
    }
    gw.sandbox
        .add_authorization_code("code-1", NEW_SELLER, "Atzr|x");
    let reply = callback(&gw, "never-issued-state", "code-1").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(
        !String::from_utf8_lossy(&reply.body).contains("never-issued-state"),
        "request values are never echoed"
    );
    // Amazon reports an error instead of a code.
    let (_, state) = start(&gw, &path).await;
    let reply = gw
        .call(
            http::Request::get(format!(
                "{}/oauth/callback?error=access_denied&state={}",
                gw.url,
                state.unwrap()
            ))
            .body(empty())
            .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    // LWA refuses the code (unknown, or already used): an error page, nothing stored.
    let (_, state) = start(&gw, &path).await;
    let reply = callback(&gw, &state.unwrap(), "unknown-code").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(gw.store.seller(NEW_SELLER).await.unwrap().is_none());
    assert!(gw
        .store
        .invite(
            path.split("invite=")
                .nth(1)
                .unwrap()
                .split('.')
                .next()
                .unwrap()
        )
        .await
        .unwrap()
        .unwrap()
        .used_at
        .is_none());
}

#[tokio::test]
async fn an_expired_state_is_refused() {
    let gw = gateway(false).await;
    let path = invite(&gw, Region::Eu, now()).await;
    let (_, state) = start(&gw, &path).await;
    let state = state.unwrap();
    // Age the stored state past its 10 minutes.
    let db = rusqlite::Connection::open(gw.dir.path().join("data/spgate.db")).unwrap();
    db.execute("UPDATE oauth_states SET expires_at = expires_at - 601", [])
        .unwrap();
    gw.sandbox
        .add_authorization_code("code-2", NEW_SELLER, "Atzr|y");
    assert_eq!(
        callback(&gw, &state, "code-2").await.status,
        StatusCode::BAD_REQUEST
    );
    assert!(gw.store.seller(NEW_SELLER).await.unwrap().is_none());
}

#[tokio::test]
async fn without_an_onboarding_section_the_oauth_paths_are_404() {
    let gw = start_gateway(Options::default()).await;
    let (reply, _) = start(&gw, "/oauth/start?invite=a.b").await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_invite_never_replaces_a_connected_seller_unless_it_was_made_for_that_seller() {
    let gw = gateway(false).await;
    // A new-seller invite, used by someone who claims the already connected test seller's id.
    let path = invite(&gw, Region::Eu, now()).await;
    let (_, state) = start(&gw, &path).await;
    gw.sandbox
        .add_authorization_code("code-x", SELLER, "Atzr|attacker-account-token");
    let reply = callback_claiming(&gw, &state.unwrap(), SELLER, "code-x").await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    let before = gw.store.seller(SELLER).await.unwrap().unwrap();
    assert_eq!(
        before.authorized_at, 1_700_000_000,
        "the connected seller is untouched"
    );

    // A re-authorization invite is bound to its seller: another id is refused...
    let reauth = invite_for(&gw, Region::Eu, Some(SELLER), now()).await;
    let (_, state) = start(&gw, &reauth).await;
    gw.sandbox
        .add_authorization_code("code-y", NEW_SELLER, "Atzr|y");
    assert_eq!(
        callback(&gw, &state.unwrap(), "code-y").await.status,
        StatusCode::BAD_REQUEST
    );
    // ...and the right seller re-authorizes.
    let (_, state) = start(&gw, &reauth).await;
    gw.sandbox
        .add_authorization_code("code-z", SELLER, "Atzr|renewed");
    let reply = callback_claiming(&gw, &state.unwrap(), SELLER, "code-z").await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert!(
        gw.store
            .seller(SELLER)
            .await
            .unwrap()
            .unwrap()
            .authorized_at
            > before.authorized_at
    );
}

/// Completes a callback naming `claimed` with a code Amazon issued to another account.
async fn callback_claiming(gw: &TestGateway, state: &str, claimed: &str, code: &str) -> Reply {
    let q = form_urlencoded::Serializer::new(String::new())
        .append_pair("state", state)
        .append_pair("selling_partner_id", claimed)
        .append_pair("spapi_oauth_code", code)
        .finish();
    gw.call(
        http::Request::get(format!("{}/oauth/callback?{q}", gw.url))
            .body(empty())
            .unwrap(),
    )
    .await
}

/// The audit log of a gateway started with `gateway_audited`.
async fn audit_log(gw: &TestGateway, dir: &std::path::Path) -> String {
    gw.gateway.auditor().flush().await;
    let mut log = String::new();
    for e in std::fs::read_dir(dir).unwrap() {
        log.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
    }
    log
}

const ATTACKER: &str = "A3ATTACKER0001";
const VICTIM: &str = "A4UNCONNECTED01";

#[tokio::test]
async fn a_spoofed_seller_id_is_refused_stores_nothing_and_is_alerted() {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway_audited(false, Some(audit.path())).await;
    // The victim has an Amazon account but has not connected it to this gateway.
    gw.sandbox.add_seller(VICTIM, "Atzr|victim-own-token");
    let path = invite(&gw, Region::Eu, now()).await;
    let (_, state) = start(&gw, &path).await;
    // The invite holder signs in with their own account and edits the callback's seller id.
    gw.sandbox
        .add_authorization_code("code-spoof", ATTACKER, "Atzr|attacker-own-token");
    let refused = onboarding::refused_total();
    let reply = callback_claiming(&gw, &state.unwrap(), VICTIM, "code-spoof").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(gw.store.seller(VICTIM).await.unwrap().is_none());
    assert!(gw.store.seller(ATTACKER).await.unwrap().is_none());
    assert!(onboarding::refused_total() > refused);
    let log = audit_log(&gw, audit.path()).await;
    assert!(
        log.lines()
            .any(|l| l.contains("onboarding_seller_not_confirmed") && l.contains(VICTIM)),
        "{log}"
    );
    // The invite was not spent: the real owner of the link can still use it.
    let (reply, _) = start(&gw, &path).await;
    assert_eq!(reply.status, StatusCode::FOUND);
}

/// A re-authorization link for SELLER, signed in at Amazon with ATTACKER's account, whose
/// callback names `claimed`: refused with `status`, counted, alerted with `reason`, and the
/// seller keeps its token and keeps working.
async fn reauthorization_into_another_account(claimed: &str, status: StatusCode, reason: &str) {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway_audited(false, Some(audit.path())).await;
    let before = gw.store.seller(SELLER).await.unwrap().unwrap();
    let reauth = invite_for(&gw, Region::Eu, Some(SELLER), now()).await;
    let (_, state) = start(&gw, &reauth).await;
    gw.sandbox
        .add_authorization_code("code-rebind", ATTACKER, "Atzr|attacker-own-token");
    let refused = onboarding::refused_total();
    let reply = callback_claiming(&gw, &state.unwrap(), claimed, "code-rebind").await;
    assert_eq!(reply.status, status);
    let after = gw.store.seller(SELLER).await.unwrap().unwrap();
    assert_eq!(after.refresh_token_sealed, before.refresh_token_sealed);
    assert_eq!(after.authorized_at, before.authorized_at);
    assert!(gw.store.seller(ATTACKER).await.unwrap().is_none());
    assert!(onboarding::refused_total() > refused);
    let log = audit_log(&gw, audit.path()).await;
    assert!(
        log.lines()
            .any(|l| l.contains(reason) && l.contains(SELLER)),
        "{log}"
    );
    // Tools keep working for the seller with its own token.
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn a_reauthorization_into_another_account_is_refused_and_the_seller_keeps_its_token() {
    // The callback keeps the seller id the link was made for: Amazon does not confirm it.
    reauthorization_into_another_account(
        SELLER,
        StatusCode::FORBIDDEN,
        "onboarding_rebind_refused",
    )
    .await;
}

#[tokio::test]
async fn a_reauthorization_link_answered_with_another_seller_id_is_refused_and_alerted() {
    reauthorization_into_another_account(
        ATTACKER,
        StatusCode::BAD_REQUEST,
        "onboarding_wrong_seller",
    )
    .await;
}
