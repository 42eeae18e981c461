//! Login with Amazon handled by the gateway: token caching under load, client-secret rotation,
//! and drop-in mode for unmodified SDKs.

mod common;

use std::sync::Arc;

use common::*;
use http::StatusCode;
use spgate::auth::drop_in;

/// An operation Amazon publishes no usage plan for, so the gateway never throttles it: tests
/// about token caching under load use it (the limiter has its own tests).
const UNPLANNED: &str = "/supplySources/2020-07-01/supplySources";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_requests_for_a_cold_seller_make_one_lwa_call() {
    let gw = Arc::new(start_gateway(Options::default()).await);
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.get(UNPLANNED).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!((gw.lwa_calls)(), 1);
    assert_eq!(gw.sandbox.stats().lwa_refresh_grants, 1);
}

#[tokio::test]
async fn the_new_client_secret_is_used_and_the_old_one_only_on_invalid_client() {
    // Amazon has not activated the new secret yet: the old one still works.
    let gw = start_gateway(Options {
        gateway_lwa_secret: "new-secret".into(),
        gateway_previous_lwa_secret: Some(CLIENT_SECRET.into()),
        ..Options::default()
    })
    .await;
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        (gw.lwa_calls)(),
        2,
        "one rejected call with the new secret, one with the old"
    );
    assert_eq!(gw.sandbox.stats().lwa_errors, 1);

    // Both accepted: only the new one is ever sent.
    let gw = start_gateway(Options {
        gateway_lwa_secret: "new-secret".into(),
        gateway_previous_lwa_secret: Some(CLIENT_SECRET.into()),
        sandbox_lwa_secrets: vec![CLIENT_SECRET.into(), "new-secret".into()],
        ..Options::default()
    })
    .await;
    assert_eq!(
        gw.get("/orders/v0/orders/TEST_CASE_200/address")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!((gw.lwa_calls)(), 1);

    // Neither accepted: the caller gets a 502, never a hang or a leak.
    let gw = start_gateway(Options {
        gateway_lwa_secret: "wrong".into(),
        ..Options::default()
    })
    .await;
    let reply = gw.get("/orders/v0/orders/TEST_CASE_200/address").await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&reply.body).contains("wrong"));
}

struct DropIn {
    gw: TestGateway,
    creds: drop_in::DropInCredentials,
}

async fn drop_in_gateway() -> DropIn {
    let gw = start_gateway(Options::default()).await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    DropIn { gw, creds }
}

impl DropIn {
    async fn token_request(&self, content_type: &str, body: String) -> Reply {
        let req = http::Request::post(format!("{}/auth/o2/token", self.gw.url))
            .header("content-type", content_type)
            .body(full(body))
            .unwrap();
        self.gw.call(req).await
    }

    fn form(&self, client_id: &str, secret: &str, refresh: &str) -> String {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "refresh_token")
            .append_pair("refresh_token", refresh)
            .append_pair("client_id", client_id)
            .append_pair("client_secret", secret)
            .finish()
    }

    async fn token(&self) -> String {
        let body = self.form(
            &self.creds.lwa_client_id,
            self.creds.client_secret.expose(),
            self.creds.refresh_token.expose(),
        );
        let reply = self
            .token_request("application/x-www-form-urlencoded;charset=UTF-8", body)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()["access_token"].as_str().unwrap().to_string()
    }

    async fn sp_api(&self, token: &str, path: &str, extra: &[(&str, &str)]) -> Reply {
        let mut req = http::Request::get(format!("{}{path}", self.gw.url))
            .header("x-amz-access-token", token)
            // SDKs send Amazon's host name or a mangled one; it is never trusted.
            .header("host", "sellingpartnerapi-na.amazon.com");
        for (k, v) in extra {
            req = req.header(*k, *v);
        }
        self.gw.call(req.body(empty()).unwrap()).await
    }
}

#[tokio::test]
async fn an_sdk_gets_gateway_tokens_in_lwa_shape_from_form_and_json_requests() {
    let d = drop_in_gateway().await;
    let form = d.form(
        &d.creds.lwa_client_id,
        d.creds.client_secret.expose(),
        d.creds.refresh_token.expose(),
    );
    let json = serde_json::json!({
        "grant_type": "refresh_token",
        "refresh_token": d.creds.refresh_token.expose(),
        "client_id": d.creds.lwa_client_id,
        "client_secret": d.creds.client_secret.expose(),
    })
    .to_string();
    for (ct, body) in [
        ("application/x-www-form-urlencoded", form),
        ("application/json", json),
    ] {
        let reply = d.token_request(ct, body).await;
        assert_eq!(reply.status, StatusCode::OK, "{ct}");
        let v = reply.json();
        assert!(v["access_token"].as_str().unwrap().starts_with("spgat_"));
        assert_eq!(v["token_type"], "bearer");
        assert!(v["expires_in"].as_i64().unwrap() >= 3600);
        assert_eq!(v["refresh_token"], d.creds.refresh_token.expose().as_str());
        assert_eq!(reply.headers["cache-control"], "no-store");
    }
    assert_eq!(
        d.gw.sandbox.stats().lwa_refresh_grants,
        0,
        "issuing a gateway token asks Amazon nothing"
    );
}

#[tokio::test]
async fn a_gateway_token_calls_sp_api_for_its_seller_and_amazon_tokens_never_leave() {
    let d = drop_in_gateway().await;
    let token = d.token().await;
    let reply = d
        .sp_api(&token, "/orders/v0/orders/TEST_CASE_200/address", &[])
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let got = d.gw.sandbox.received("ordersV0.getOrderAddress");
    let upstream_token = got[0].headers["x-amz-access-token"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        upstream_token.starts_with("Atz.sprdt|"),
        "Amazon saw an RDT for the seller (a restricted operation)"
    );
    assert_ne!(
        upstream_token, token,
        "the gateway token never reaches Amazon"
    );
    assert_eq!(got[0].seller.as_deref(), Some(SELLER));
    let everything = format!(
        "{:?}{}",
        reply.headers,
        String::from_utf8_lossy(&reply.body)
    );
    assert!(!everything.contains(&upstream_token) && !everything.contains("Atz"));

    // The token is bound to its seller: naming another one is refused.
    let reply = d
        .sp_api(
            &token,
            "/orders/v0/orders/TEST_CASE_200/address",
            &[("x-spgate-seller", "A9OTHER")],
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    // Naming the same seller is fine; a stale SigV4 Authorization header is ignored.
    let reply = d
        .sp_api(&token, "/orders/v0/orders/TEST_CASE_200/address", &[("x-spgate-seller", SELLER), ("authorization", "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20260101/us-east-1/execute-api/aws4_request")])
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    // An unknown token is answered as Amazon answers one: 403, its words and details (SDKs
    // refresh on this answer), and a request id an SDK can report.
    for unknown in [
        "spgat_not-a-real-token",
        "spgat_99999999999.forged",
        "Atza|IwEBIreal",
    ] {
        let reply = d
            .sp_api(unknown, "/orders/v0/orders/TEST_CASE_200/address", &[])
            .await;
        assert_amazon_token_refusal(
            &reply,
            "The access token you provided is revoked, malformed or invalid.",
        );
    }
}

/// Amazon's refusal of an access token: 403 `Unauthorized` "Access to requested resource is
/// denied." with the given details, and the gateway's request id in `x-amzn-RequestId`.
fn assert_amazon_token_refusal(reply: &Reply, details: &str) {
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{:?}", reply.body);
    let v = reply.json();
    assert_eq!(v["errors"][0]["code"], "Unauthorized");
    assert_eq!(
        v["errors"][0]["message"],
        "Access to requested resource is denied."
    );
    assert_eq!(v["errors"][0]["details"], details);
    let amzn = reply
        .headers
        .get("x-amzn-requestid")
        .expect("x-amzn-RequestId");
    assert_eq!(Some(amzn), reply.headers.get("x-spgate-request-id"));
}

#[tokio::test]
async fn an_expired_drop_in_token_gets_amazons_answer_so_sdks_refresh() {
    let d = drop_in_gateway().await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let body = d.form(
        &d.creds.lwa_client_id,
        d.creds.client_secret.expose(),
        d.creds.refresh_token.expose(),
    );
    // A token issued two hours ago expired an hour ago.
    let old = drop_in::issue(
        &*d.gw.store,
        Some("application/x-www-form-urlencoded"),
        &bytes::Bytes::from(body),
        now - 2 * drop_in::TOKEN_LIFETIME_SECONDS,
    )
    .await
    .unwrap();
    let path = "/orders/v0/orders/TEST_CASE_200/address";
    let reply = d.sp_api(&old.access_token, path, &[]).await;
    assert_amazon_token_refusal(&reply, "The access token you provided has expired.");
    // The refreshed token works.
    let token = d.token().await;
    assert_eq!(d.sp_api(&token, path, &[]).await.status, StatusCode::OK);
}

#[tokio::test]
async fn bad_token_requests_get_lwa_errors_and_nothing_is_issued() {
    let d = drop_in_gateway().await;
    let id = d.creds.lwa_client_id.clone();
    let secret = d.creds.client_secret.expose().clone();
    let refresh = d.creds.refresh_token.expose().clone();
    let form = "application/x-www-form-urlencoded";
    let cases = [
        (
            d.form(&id, "wrong", &refresh),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            d.form("spgate-dropin-unknown", &secret, &refresh),
            StatusCode::UNAUTHORIZED,
            "invalid_client",
        ),
        (
            d.form(&id, &secret, "spgrt_wrong"),
            StatusCode::BAD_REQUEST,
            "invalid_grant",
        ),
        (
            format!("grant_type=client_credentials&client_id={id}&client_secret={secret}&scope=x"),
            StatusCode::BAD_REQUEST,
            "unsupported_grant_type",
        ),
        (
            format!("grant_type=refresh_token&client_id={id}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "{not json".to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
    ];
    for (body, status, code) in cases {
        let reply = d.token_request(form, body.clone()).await;
        assert_eq!(reply.status, status, "{body}");
        assert_eq!(reply.json()["error"], code, "{body}");
        assert!(!String::from_utf8_lossy(&reply.body).contains(&secret));
    }
    let reply =
        d.gw.call(
            http::Request::get(format!("{}/auth/o2/token", d.gw.url))
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND, "only POST");
    let big = "x".repeat(20_000);
    assert_eq!(
        d.token_request(form, big).await.status,
        StatusCode::PAYLOAD_TOO_LARGE
    );
}

#[tokio::test]
async fn revoking_the_tool_stops_its_drop_in_tokens_and_refreshes() {
    let d = drop_in_gateway().await;
    let token = d.token().await;
    assert_eq!(
        d.sp_api(&token, "/orders/v0/orders/TEST_CASE_200/address", &[])
            .await
            .status,
        StatusCode::OK
    );
    let client = d.gw.store.clients().await.unwrap().remove(0);
    d.gw.store.revoke_client(&client.id, 1).await.unwrap();
    let reply = d
        .sp_api(&token, "/orders/v0/orders/TEST_CASE_200/address", &[])
        .await;
    assert_amazon_token_refusal(
        &reply,
        "The access token you provided is revoked, malformed or invalid.",
    );
    let body = d.form(
        &d.creds.lwa_client_id,
        d.creds.client_secret.expose(),
        d.creds.refresh_token.expose(),
    );
    let reply = d
        .token_request("application/x-www-form-urlencoded", body)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.json()["error"], "invalid_grant");
}

#[tokio::test]
async fn gateway_tokens_are_stored_only_as_hashes() {
    let d = drop_in_gateway().await;
    let token = d.token().await;
    let db = std::fs::read(d.gw.dir.path().join("data/spgate.db")).unwrap();
    let wal = std::fs::read(d.gw.dir.path().join("data/spgate.db-wal")).unwrap_or_default();
    for secret in [
        token.as_str(),
        d.creds.client_secret.expose(),
        d.creds.refresh_token.expose(),
    ] {
        let needle = secret.as_bytes();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle),
            "a secret is in the database file"
        );
        assert!(
            !wal.windows(needle.len()).any(|w| w == needle),
            "a secret is in the WAL"
        );
    }
}

fn rdt_options(role_toml: &str) -> Options {
    Options {
        require_rdt: true,
        role: "r".into(),
        roles_toml: role_toml.to_string(),
        ..Options::default()
    }
}

#[tokio::test]
async fn restricted_calls_get_an_rdt_asking_only_for_what_the_role_may_receive() {
    let gw = start_gateway(rdt_options(
        "[roles.r.pii]\naddress = \"pass\"\npostal_code = \"pass\"\n",
    ))
    .await;
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[8].clone();
    // getOrder: only shippingAddress is asked for, so Amazon sends no BuyerInfo.
    let reply = gw.get(&format!("/orders/v0/orders/{id}")).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let order = &reply.json()["payload"];
    assert!(
        order["ShippingAddress"]["AddressLine1"].is_string(),
        "{order}"
    );
    assert!(
        order
            .get("BuyerInfo")
            .is_none_or(|b| b.get("BuyerEmail").is_none()),
        "{order}"
    );
    assert_eq!(
        gw.sandbox.received("ordersV0.getOrder")[0].token_kind,
        spgate::sandbox::TokenKind::Rdt
    );
    // getOrderAddress: an RDT (no dataElements), cached for the next call.
    for _ in 0..3 {
        assert_eq!(
            gw.get(&format!("/orders/v0/orders/{id}/address"))
                .await
                .status,
            StatusCode::OK
        );
    }
    assert_eq!(
        gw.sandbox.stats().rdts_issued,
        2,
        "one RDT per resource, then cached"
    );
    let rdt_op = spgate::catalog::Catalog::builtin()
        .by_key(spgate::auth::rdt::RDT_OPERATION)
        .unwrap();
    let bucket = gw
        .gateway
        .limiter()
        .bucket_status(SELLER, rdt_op)
        .expect("RDT fetches are rate limited");
    assert_eq!(bucket.tools.iter().map(|t| t.admitted).sum::<u64>(), 2);
    let rdt_calls = gw
        .sandbox
        .received("tokens_2021-03-01.createRestrictedDataToken");
    assert_eq!(rdt_calls.len(), 2);
}

#[tokio::test]
async fn a_role_without_restricted_data_uses_the_plain_token_or_is_refused() {
    let gw = start_gateway(rdt_options("[roles.r.pii]\n")).await;
    let id = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[8].clone();
    // getOrders takes dataElements: with none needed, the plain token gets orders without PII.
    let reply = gw
        .get("/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9&CreatedAfter=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let text = String::from_utf8_lossy(&reply.body);
    assert!(
        !text.contains("ShippingAddress") && !text.contains("BuyerEmail"),
        "{text}"
    );
    assert_eq!(
        gw.sandbox.received("ordersV0.getOrders")[0].token_kind,
        spgate::sandbox::TokenKind::Access
    );
    // getOrderAddress returns nothing this role may have: refused before Amazon is asked.
    let reply = gw.get(&format!("/orders/v0/orders/{id}/address")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "Unauthorized");
    assert!(gw.sandbox.received("ordersV0.getOrderAddress").is_empty());
    assert_eq!(gw.sandbox.stats().rdts_issued, 0);
}

#[tokio::test]
async fn no_rdt_means_no_restricted_call_fail_closed() {
    let gw = start_gateway(Options {
        require_rdt: true,
        ..Options::default()
    })
    .await;
    for (status, expect) in [
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN),
        (
            StatusCode::SERVICE_UNAVAILABLE,
            StatusCode::SERVICE_UNAVAILABLE,
        ),
    ] {
        gw.sandbox.script(
            "tokens_2021-03-01.createRestrictedDataToken",
            spgate::sandbox::Script::json(status, serde_json::json!({"errors": [{"code": "Unauthorized", "message": "no", "details": ""}]})),
        );
        let reply = gw.get("/orders/v0/orders/1/address").await;
        assert_eq!(reply.status, expect);
        gw.sandbox.clear_scripts();
        // A failure is remembered for a moment, so the next case starts after it.
        tokio::time::sleep(spgate::auth::slots::FAILURE_TTL).await;
    }
    assert!(
        gw.sandbox.received("ordersV0.getOrderAddress").is_empty(),
        "never fetched with a plain token"
    );
}

#[tokio::test]
async fn orders_2026_ask_only_for_the_datasets_the_role_may_receive() {
    let gw = start_gateway(rdt_options("[roles.r.pii]\naddress = \"pass\"\n")).await;
    let reply = gw
        .get("/orders/2026-01-01/orders?marketplaceIds=A1PA6795UKMFR9&createdAfter=2020-01-01T00:00:00Z&includedData=BUYER,RECIPIENT")
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let got = gw.sandbox.received("orders_2026-01-01.searchOrders");
    assert!(
        got[0].path_and_query.contains("includedData=RECIPIENT"),
        "{}",
        got[0].path_and_query
    );
    assert!(
        !got[0].path_and_query.contains("BUYER"),
        "{}",
        got[0].path_and_query
    );
    assert!(!String::from_utf8_lossy(&reply.body).contains("buyerEmail"));
}

#[tokio::test]
async fn a_token_rejected_upstream_is_replaced_and_the_request_retried_once() {
    let gw = start_gateway(Options::default()).await;
    assert_eq!(
        gw.get("/sellers/v1/marketplaceParticipations").await.status,
        StatusCode::OK
    );
    gw.sandbox.expire_access_tokens();
    let reply = gw.get("/sellers/v1/marketplaceParticipations").await;
    assert_eq!(reply.status, StatusCode::OK, "retried with a fresh token");
    assert_eq!((gw.lwa_calls)(), 2);
    assert_eq!(
        gw.sandbox.stats().unauthorized_total,
        1,
        "exactly one rejected attempt"
    );
}

#[tokio::test]
async fn sigv4_is_off_by_default_and_signs_token_and_host_when_enabled() {
    let gw = start_gateway(Options::default()).await;
    assert_eq!(
        gw.get("/sellers/v1/marketplaceParticipations").await.status,
        StatusCode::OK
    );
    let got = gw.sandbox.received("sellers.getMarketplaceParticipations");
    assert!(
        !got[0].headers.contains_key("authorization") && !got[0].headers.contains_key("x-amz-date")
    );

    let gw = start_gateway(Options {
        upstream_toml: "[upstream.sigv4]\nenabled = true\naccess_key_id = { env = \"MASTER\" }\nsecret_access_key = { env = \"LWA_SECRET\" }\n".into(),
        ..Options::default()
    })
    .await;
    assert_eq!(
        gw.get("/sellers/v1/marketplaceParticipations").await.status,
        StatusCode::OK
    );
    let got = gw.sandbox.received("sellers.getMarketplaceParticipations");
    let auth = got[0].headers["authorization"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(auth.starts_with("AWS4-HMAC-SHA256 Credential="), "{auth}");
    assert!(
        auth.contains("/eu-west-1/execute-api/aws4_request"),
        "the EU seller's AWS region: {auth}"
    );
    let signed = auth
        .split("SignedHeaders=")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap();
    for h in ["host", "x-amz-access-token", "x-amz-date"] {
        assert!(
            signed.split(';').any(|s| s == h),
            "{h} not signed: {signed}"
        );
    }
    assert!(got[0].headers.contains_key("x-amz-date"));
    assert!(
        !auth.contains(CLIENT_SECRET),
        "the secret key never travels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_make_one_lwa_call_for_a_cold_seller() {
    let store = redis_store_toml();
    let first = start_gateway(Options {
        store_toml: Some(store.clone()),
        ..Options::default()
    })
    .await;
    let mut gateways = vec![Arc::new(first)];
    for _ in 0..2 {
        let g = start_gateway(Options {
            store_toml: Some(store.clone()),
            shared_sandbox: Some((gateways[0].sandbox.clone(), gateways[0].sandbox_url.clone())),
            master_key: Some(gateways[0].master_key_b64.clone()),
            ..Options::default()
        })
        .await;
        gateways.push(Arc::new(g));
    }
    let mut tasks = Vec::new();
    for i in 0..300 {
        let gw = gateways[i % 3].clone();
        tasks.push(tokio::spawn(async move { gw.get(UNPLANNED).await.status }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let calls: u64 = gateways.iter().map(|g| (g.lwa_calls)()).sum();
    assert_eq!(calls, 1, "one LWA call across three instances");
    assert_eq!(gateways[0].sandbox.stats().lwa_refresh_grants, 1);
    // A token Amazon rejects is dropped for every instance.
    gateways[0].sandbox.expire_access_tokens();
    assert_eq!(gateways[1].get(UNPLANNED).await.status, StatusCode::OK);
    assert_eq!(gateways[2].get(UNPLANNED).await.status, StatusCode::OK);
    assert_eq!(
        gateways[0].sandbox.stats().lwa_refresh_grants,
        2,
        "the second instance reused the first's fresh token"
    );
    clean_redis(&store).await;
}

#[tokio::test]
async fn a_drop_in_token_stands_for_one_seller_and_never_reaches_application_wide_operations() {
    let gw = start_gateway(Options {
        key_sellers: vec!["*".into()],
        ..Options::default()
    })
    .await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();
    let d = DropIn { gw, creds };
    let token = d.token().await;
    let reply = d
        .sp_api(&token, "/notifications/v1/destinations", &[])
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(reply.error_code(), "Unauthorized");
    assert!(d
        .gw
        .sandbox
        .received("notifications.getDestinations")
        .is_empty());
    // The same tool's API key may (it is allowed every seller).
    assert_ne!(
        d.gw.get("/notifications/v1/destinations").await.status,
        StatusCode::FORBIDDEN
    );
}

#[tokio::test]
async fn a_403_that_is_not_about_the_token_keeps_it_and_is_passed_back_unchanged() {
    let gw = start_gateway(Options::default()).await;
    let denied = serde_json::json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": ""}]});
    gw.sandbox.script(
        "sellers.getMarketplaceParticipations",
        spgate::sandbox::Script::json(StatusCode::FORBIDDEN, denied.clone()),
    );
    for _ in 0..3 {
        let reply = gw.get("/sellers/v1/marketplaceParticipations").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.json(), denied, "Amazon's answer, body intact");
    }
    assert_eq!((gw.lwa_calls)(), 1, "no LWA call per permission error");
    assert_eq!(
        gw.sandbox
            .received("sellers.getMarketplaceParticipations")
            .len(),
        3,
        "and no retries"
    );
}

/// A tool allowed every seller (so it may call grantless operations), healing tokens older than
/// a second, with an audit log in `audit`.
async fn healing_gateway(audit: &std::path::Path, lwa_toml: &str) -> TestGateway {
    start_gateway(Options {
        key_sellers: vec!["*".into()],
        lwa_toml: lwa_toml.into(),
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"heal\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            audit.display().to_string()
        ),
        ..Options::default()
    })
    .await
}

/// How many request records carry `reason`.
fn with_reason(records: &[serde_json::Value], reason: &str) -> usize {
    records
        .iter()
        .filter(|r| r["kind"] == "request" && r["reason"] == reason)
        .count()
}

const GRANTLESS: &str = "/notifications/v1/destinations";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_amazon_lost_heal_at_the_next_request_with_one_refresh_per_subject() {
    use spgate::auth::lwa::Heal;
    let audit = tempfile::tempdir().unwrap();
    let gw = Arc::new(healing_gateway(audit.path(), "token_loss_min_age_seconds = 1\n").await);
    assert_eq!(gw.get(UNPLANNED).await.status, StatusCode::OK);
    assert_eq!(gw.get(GRANTLESS).await.status, StatusCode::OK);
    assert_eq!((gw.lwa_calls)(), 2);
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // The sandbox forgets every token (as after a restart with new token secrets): Amazon's
    // bare 403, not "expired". A POST with a body is refreshed and sent again, body and all
    // (the sandbox answers 202 only to the example's exact body).
    gw.sandbox.rotate_token_secrets();
    let feed = serde_json::json!({"feedType": "POST_PRODUCT_DATA", "inputFeedDocumentId": "3d4e42b5-1d6e-44e8-a89c-2abfca0625bb", "marketplaceIds": ["ATVPDKIKX0DER", "A1F83G8C2ARO7P"]});
    let post = gw
        .request(http::Method::POST, "/feeds/2021-06-30/feeds")
        .header("content-type", "application/json")
        .body(full(feed.to_string()))
        .unwrap();
    let reply = gw.call(post).await;
    assert_eq!(reply.status, StatusCode::ACCEPTED, "{:?}", reply.body);
    assert_eq!(
        gw.sandbox.stats().unauthorized_total,
        1,
        "refused once, then sent again"
    );
    assert_eq!(gw.sandbox.received("feeds_2021-06-30.createFeed").len(), 1);
    assert_eq!((gw.lwa_calls)(), 3, "one refresh for the seller");

    // Concurrent grantless calls with the lost grantless token (as many as its usage plan,
    // 1/s burst 5, lets through with their resends within the deadline): one refresh, every
    // one answered (its own bound: the seller's refresh did not spend it).
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let gw = gw.clone();
            tokio::spawn(async move { gw.get(GRANTLESS).await.status })
        })
        .collect();
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    assert_eq!((gw.lwa_calls)(), 4, "one refresh for the grantless scope");
    let lwa = gw.gateway.lwa();
    assert_eq!(lwa.heals(Heal::Refreshed), 2);
    let rejected = gw.sandbox.stats().unauthorized_total;
    assert_eq!(
        lwa.heals(Heal::Refreshed) + lwa.heals(Heal::Replaced),
        rejected,
        "every request Amazon refused was healed"
    );

    // Lost again within the minute: the seller's bound is spent, Amazon's answer passes back.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    gw.sandbox.rotate_token_secrets();
    let reply = gw.get(UNPLANNED).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert_eq!(lwa.heals(Heal::Bounded), 1);
    assert_eq!((gw.lwa_calls)(), 4);

    let records = audit_records(&gw, audit.path()).await;
    assert_eq!(
        with_reason(&records, "token_lost_retried") as u64,
        rejected,
        "each healed request is recorded as such"
    );
    assert_eq!(with_reason(&records, "token_lost_bounded"), 1);
    let metrics = {
        let mut out = String::new();
        lwa.render_metrics(&mut out);
        out
    };
    assert!(metrics.contains("spgate_lwa_token_loss_total{outcome=\"refreshed\"} 2"));
    assert!(metrics.contains(&format!("spgate_lwa_token_loss_retries_total {rejected}")));
}

#[tokio::test]
async fn a_permission_403_on_an_old_token_costs_one_refresh_a_minute() {
    use spgate::auth::lwa::Heal;
    let audit = tempfile::tempdir().unwrap();
    let gw = healing_gateway(audit.path(), "token_loss_min_age_seconds = 0\n").await;
    let denied = serde_json::json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": ""}]});
    gw.sandbox.script(
        "sellers.getMarketplaceParticipations",
        spgate::sandbox::Script::json(StatusCode::FORBIDDEN, denied.clone()),
    );
    for _ in 0..5 {
        let reply = gw.get("/sellers/v1/marketplaceParticipations").await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN);
        assert_eq!(reply.json(), denied, "Amazon's answer, body intact");
    }
    assert_eq!((gw.lwa_calls)(), 2, "the first token and one refresh");
    assert_eq!(
        gw.sandbox
            .received("sellers.getMarketplaceParticipations")
            .len(),
        6,
        "one retry, with the refreshed token"
    );
    let lwa = gw.gateway.lwa();
    assert_eq!(
        (lwa.heals(Heal::Refreshed), lwa.heals(Heal::Bounded)),
        (1, 4)
    );
}

#[tokio::test]
async fn a_permission_403_for_every_seller_costs_at_most_the_instance_total_of_refreshes() {
    use spgate::auth::lwa::Heal;
    let audit = tempfile::tempdir().unwrap();
    let gw = healing_gateway(
        audit.path(),
        "token_loss_min_age_seconds = 0\ntoken_loss_refreshes_per_minute_total = 2\n",
    )
    .await;
    let others = ["A2OTHERSELLER02", "A3OTHERSELLER03", "A4OTHERSELLER04"];
    for seller in others {
        add_seller(&gw, seller, spgate::store::Region::Eu).await;
    }
    // An operation the application has no role for: Amazon's bare 403, for every seller.
    let denied = serde_json::json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": ""}]});
    gw.sandbox.script(
        "sellers.getMarketplaceParticipations",
        spgate::sandbox::Script::json(StatusCode::FORBIDDEN, denied),
    );
    for seller in std::iter::once(SELLER).chain(others) {
        let reply = gw
            .get_for(seller, "/sellers/v1/marketplaceParticipations")
            .await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{seller}");
    }
    let lwa = gw.gateway.lwa();
    assert_eq!(
        (lwa.heals(Heal::Refreshed), lwa.heals(Heal::BoundedTotal)),
        (2, 2),
        "two sellers' tokens refreshed, then the instance's bound refuses"
    );
    assert_eq!(
        (gw.lwa_calls)(),
        4 + 2,
        "a token per seller and two refreshes"
    );
    let records = audit_records(&gw, audit.path()).await;
    assert_eq!(with_reason(&records, "token_lost_bounded"), 2);
    let mut metrics = String::new();
    lwa.render_metrics(&mut metrics);
    assert!(metrics.contains("spgate_lwa_token_loss_total{outcome=\"bounded_total\"} 2"));
}

#[tokio::test]
async fn a_healed_request_the_deadline_stops_is_not_recorded_as_retried() {
    use spgate::auth::lwa::Heal;
    let audit = tempfile::tempdir().unwrap();
    let gw = healing_gateway(audit.path(), "token_loss_min_age_seconds = 0\n").await;
    // Amazon's bare 403 arrives after the caller's deadline: the token is refreshed, but the
    // request is not sent again.
    let denied = serde_json::json!({"errors": [{"code": "Unauthorized", "message": "Access to requested resource is denied.", "details": ""}]});
    let mut late = spgate::sandbox::Script::json(StatusCode::FORBIDDEN, denied);
    late.header_delay = std::time::Duration::from_millis(600);
    gw.sandbox
        .script("sellers.getMarketplaceParticipations", late);
    let req = gw
        .request(http::Method::GET, "/sellers/v1/marketplaceParticipations")
        .header("x-spgate-max-wait-ms", "300")
        .body(empty())
        .unwrap();
    let reply = gw.call(req).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let lwa = gw.gateway.lwa();
    assert_eq!(lwa.heals(Heal::Refreshed), 1);
    assert_eq!(
        gw.sandbox
            .received("sellers.getMarketplaceParticipations")
            .len(),
        1,
        "not sent again"
    );
    let records = audit_records(&gw, audit.path()).await;
    assert_eq!(with_reason(&records, "token_lost_retried"), 0);
    assert_eq!(with_reason(&records, "token_lost_refreshed"), 1);
    let mut metrics = String::new();
    lwa.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_lwa_token_loss_retries_total 0"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_held_to_be_sent_again_have_one_budget_for_all_requests() {
    const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
    let gw = Arc::new(
        start_gateway(Options {
            server_toml: "replay_buffer_bytes = 262144\n".into(),
            ..Options::default()
        })
        .await,
    );
    let mut slow =
        spgate::sandbox::Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"}));
    slow.header_delay = std::time::Duration::from_secs(3);
    gw.sandbox.script(PATCH, slow);
    let patch = |gw: &TestGateway| {
        let body =
            serde_json::json!({"productType": "PEN", "patches": [], "pad": "x".repeat(200 * 1024)});
        gw.request(
            http::Method::PATCH,
            &format!("/listings/2021-08-01/items/{SELLER}/SKU-1?marketplaceIds=ATVPDKIKX0DER"),
        )
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
    };
    let first = {
        let gw = gw.clone();
        tokio::spawn(async move { gw.call(patch(&gw)).await })
    };
    while gw.sandbox.received(PATCH).is_empty() {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    // The first holds ~200 KiB of the 256 KiB until it ends: another is refused, fail closed.
    let refused = gw.call(patch(&gw)).await;
    assert_eq!(
        refused.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        refused.body
    );
    assert_eq!(refused.error_code(), "ServiceUnavailable");
    assert!(refused.headers.contains_key("retry-after"));
    assert_eq!(gw.gateway.replay_budget().refused(), 1);
    // Bodiless requests need none of it.
    assert_eq!(gw.get(UNPLANNED).await.status, StatusCode::OK);
    assert_eq!(first.await.unwrap().status, StatusCode::OK);
    assert_eq!(gw.gateway.replay_budget().held(), 0, "given back");
    assert_eq!(gw.call(patch(&gw)).await.status, StatusCode::OK);
    assert_eq!(gw.sandbox.received(PATCH).len(), 2);
}
