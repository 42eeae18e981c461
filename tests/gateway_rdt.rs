//! Gateway Restricted Data Tokens (issue 17 item 2): createRestrictedDataToken answered by the
//! gateway with its own token in Amazon's shape, Amazon's 400s for bad requests, the token
//! accepted on its resources (for its seller, by its tool) and refused everywhere else with
//! Amazon's 403s, across instances sharing the master key, and audited without the token.

mod common;

use common::*;
use http::{Method, StatusCode};
use spgate::proxy::endpoints::rdt::{self, Claims, Resource};

const RDT_PATH: &str = "/tokens/2021-03-01/restrictedDataToken";
const ADDRESS_ONLY: &str = "[roles.shipping.pii]\nname = \"pass\"\naddress = \"pass\"\n\
                            postal_code = \"pass\"\ncoarse_location = \"pass\"\nphone = \"pass\"\n";

/// A gateway whose tool (role `shipping`: addresses, no e-mails) may act for the test seller and
/// a second one, with an audit log.
async fn gateway(audit: &std::path::Path, extra: &str) -> TestGateway {
    start_gateway(Options {
        role: "shipping".into(),
        roles_toml: ADDRESS_ONLY.into(),
        key_sellers: vec![SELLER.into(), "A2OTHERSELLER02".into()],
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"rdt\"\nkey = {{ env = \"AUDIT_KEY\" }}\n{extra}",
            audit.display().to_string()
        ),
        ..Options::default()
    })
    .await
}

/// Mints a gateway RDT with the test key for `resources` (a JSON array).
async fn mint(gw: &TestGateway, resources: &str) -> Reply {
    let body = format!(r#"{{"restrictedResources":{resources}}}"#);
    gw.call(
        gw.request(Method::POST, RDT_PATH)
            .header("content-type", "application/json")
            .body(full(body))
            .unwrap(),
    )
    .await
}

/// A request presenting `token` as an SDK does: in `x-amz-access-token`, nothing else.
async fn with_rdt(gw: &TestGateway, path: &str, token: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = http::Request::builder()
        .method(Method::GET)
        .uri(format!("{}{path}", gw.url))
        .header("x-amz-access-token", token);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    gw.call(req.body(empty()).unwrap()).await
}

/// An error answer: status, code, message, details.
type Answer = (StatusCode, String, String, String);

fn error(reply: &Reply) -> Answer {
    let code = reply.error_code();
    let e = &reply.json()["errors"][0];
    (
        reply.status,
        code,
        e["message"].as_str().unwrap().to_string(),
        e["details"].as_str().unwrap_or_default().to_string(),
    )
}

async fn first_order(gw: &TestGateway) -> String {
    let orders = gw
        .get("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER&CreatedAfter=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(orders.status, StatusCode::OK);
    orders.json()["payload"]["Orders"][0]["AmazonOrderId"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_rdt_serves_its_resources_for_its_seller_and_tool_and_nothing_else() {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway(audit.path(), "").await;
    let order = first_order(&gw).await;
    let minted = mint(
        &gw,
        &format!(
            r#"[{{"method":"GET","path":"/orders/v0/orders/{order}/address"}},
                {{"method":"GET","path":"/orders/v0/orders/{{orderId}}","dataElements":["shippingAddress"]}}]"#
        ),
    )
    .await;
    assert_eq!(minted.status, StatusCode::OK, "{:?}", minted.body);
    let v = minted.json();
    assert_eq!(v["expiresIn"], 3600);
    assert_eq!(v.as_object().unwrap().len(), 2, "Amazon's shape: {v}");
    let token = v["restrictedDataToken"].as_str().unwrap().to_string();
    assert!(token.starts_with("spgrdt_"));
    assert!(minted.headers.contains_key("x-amzn-requestid"));
    let amazon_rdts = gw.gateway.rdts().calls();

    // On its resources: served through the pipeline, the gateway fetching the real RDT.
    let address = with_rdt(
        &gw,
        &format!("/orders/v0/orders/{order}/address"),
        &token,
        &[],
    )
    .await;
    assert_eq!(address.status, StatusCode::OK);
    assert!(address.json()["payload"]["ShippingAddress"]["AddressLine1"].is_string());
    let one = with_rdt(&gw, &format!("/orders/v0/orders/{order}"), &token, &[]).await;
    assert_eq!(one.status, StatusCode::OK);
    let payload = &one.json()["payload"];
    assert!(
        payload["ShippingAddress"]["AddressLine1"].is_string(),
        "{payload}"
    );
    // Only shippingAddress was asked for: no buyer data, though the role passes names.
    assert!(
        payload
            .get("BuyerInfo")
            .is_none_or(|b| b.get("BuyerName").is_none()),
        "{payload}"
    );
    assert!(
        gw.gateway.rdts().calls() > amazon_rdts,
        "the gateway fetched Amazon's RDT"
    );
    // The token with the key of the tool it was issued to, and the seller it names: fine too.
    let keyed = gw
        .call(
            gw.request(Method::GET, &format!("/orders/v0/orders/{order}/address"))
                .header("x-amz-access-token", &token)
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(keyed.status, StatusCode::OK);

    let denied = (
        StatusCode::FORBIDDEN,
        "Unauthorized".to_string(),
        "Access to requested resource is denied.".to_string(),
        String::new(),
    );
    // Another resource, another order under a specific path, another method.
    for path in [
        format!("/orders/v0/orders/{order}/buyerInfo"),
        format!("/orders/v0/orders/{order}/orderItems"),
        "/orders/v0/orders/999-0000000-0000000/address".to_string(),
        "/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9".to_string(),
    ] {
        let r = with_rdt(&gw, &path, &token, &[]).await;
        assert_eq!(error(&r), denied, "{path}");
    }
    // Minting with a gateway RDT: refused like any other resource it does not name.
    let again = gw
        .call(
            http::Request::builder()
                .method(Method::POST)
                .uri(format!("{}{RDT_PATH}", gw.url))
                .header("x-amz-access-token", &token)
                .body(full(
                    r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders"}]}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(error(&again), denied);
    // Another seller (one the tool may act for).
    let path = format!("/orders/v0/orders/{order}/address");
    let r = with_rdt(
        &gw,
        &path,
        &token,
        &[("x-spgate-seller", "A2OTHERSELLER02")],
    )
    .await;
    assert_eq!(error(&r), denied);
    // Another tool's key with this tool's token.
    let other = spgate::auth::caller::create_client(
        &*gw.store,
        "other-tool",
        "shipping",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let bearer = format!("Bearer {}", other.key.expose());
    let r = with_rdt(&gw, &path, &token, &[("authorization", &bearer)]).await;
    assert_eq!(error(&r), denied);
    // Forged: an altered token, Amazon's own token format, a token sealed under another key.
    let mut forged = token.clone().into_bytes();
    let i = forged.len() - 5;
    forged[i] = if forged[i] == b'x' { b'y' } else { b'x' };
    let other_key = spgate::crypto::MasterKey::from_base64(
        "k1",
        &spgate::crypto::MasterKey::generate_base64().unwrap(),
    )
    .unwrap();
    let ours = spgate::crypto::MasterKey::from_base64("k1", &gw.master_key_b64).unwrap();
    let mut claims = rdt::open(&ours, &token).unwrap();
    let foreign = rdt::seal(&other_key, &claims).unwrap();
    let invalid = (
        StatusCode::FORBIDDEN,
        "Unauthorized".to_string(),
        "Access to requested resource is denied.".to_string(),
        "The access token you provided is revoked, malformed or invalid.".to_string(),
    );
    for bad in [
        String::from_utf8(forged).unwrap(),
        foreign,
        "spgrdt_x".into(),
    ] {
        assert_eq!(
            error(&with_rdt(&gw, &path, &bad, &[]).await),
            invalid,
            "{bad}"
        );
    }
    // Expired: Amazon's details for an expired token, so SDKs know.
    claims.expires_at = 1_700_000_000;
    let expired = rdt::seal(&ours, &claims).unwrap();
    let r = with_rdt(&gw, &path, &expired, &[]).await;
    assert_eq!(
        error(&r).3,
        "The access token you provided has expired.",
        "{:?}",
        r.body
    );
    // Revoked tool: its tokens open nothing.
    let client = gw.store.clients().await.unwrap();
    let ours_client = client.iter().find(|c| c.tool == "test-tool").unwrap();
    gw.store
        .revoke_client(&ours_client.id, 1_700_000_001)
        .await
        .unwrap();
    assert_eq!(error(&with_rdt(&gw, &path, &token, &[]).await), invalid);

    // The audit log: issue and uses marked as a gateway RDT's, refusals with their reasons, and
    // never the token.
    let records = audit_records(&gw, audit.path()).await;
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains("spgrdt_"), "a token in the audit log");
    let reasons: Vec<&str> = records
        .iter()
        .filter_map(|r| r["reason"].as_str())
        .collect();
    for reason in [
        "gateway_rdt_wrong_resource",
        "gateway_rdt_wrong_seller",
        "gateway_rdt_wrong_tool",
        "gateway_rdt_expired",
    ] {
        assert!(reasons.contains(&reason), "{reason}: {reasons:?}");
    }
    let served: Vec<_> = records
        .iter()
        .filter(|r| r["gateway_rdt"] == true && r["status"] == 200)
        .map(|r| r["operation"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(
        served,
        [
            "tokens_2021-03-01.createRestrictedDataToken",
            "ordersV0.getOrderAddress",
            "ordersV0.getOrder",
            "ordersV0.getOrderAddress"
        ]
    );
    // The revoked tool's refusal names it.
    assert!(records.iter().any(|r| r["reason"] == "unauthenticated"
        && r["tool"] == "test-tool"
        && r["gateway_rdt"] == true));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_requests_get_amazons_400s() {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway(audit.path(), "").await;
    let input = |message: &str, details: &str| {
        (
            StatusCode::BAD_REQUEST,
            "InvalidInput".to_string(),
            message.to_string(),
            details.to_string(),
        )
    };
    let no_access = "Application do not have access to some or all requested resource";
    let cases: &[(&str, Answer)] = &[
        ("[]", input("Empty target resource argument found", "")),
        (
            r#"[{"method":"","path":"/orders/v0/orders/1/address"}]"#,
            input("Request is missing or has invalid parameters", "Resource not provided."),
        ),
        (
            r#"[{"method":"GET","path":"/catalog/2022-04-01/items"}]"#,
            input(no_access, "Each resource must be a restricted operation's method and path whose data this tool's role may receive."),
        ),
        // The role (names, addresses, phones) receives nothing getOrderRegulatedInfo returns.
        (
            r#"[{"method":"GET","path":"/orders/v0/orders/{orderId}/regulatedInfo"}]"#,
            input(no_access, "Each resource must be a restricted operation's method and path whose data this tool's role may receive."),
        ),
        (
            r#"[{"method":"GET","path":"/orders/v0/orders","dataElements":["all"]}]"#,
            input("Invalid Input", "dataElements may hold buyerInfo, shippingAddress and buyerTaxInformation."),
        ),
    ];
    for (resources, expect) in cases {
        let r = mint(&gw, resources).await;
        assert_eq!(&error(&r), expect, "{resources}");
    }
    let r = gw
        .call(
            gw.request(Method::POST, RDT_PATH)
                .body(full("not json"))
                .unwrap(),
        )
        .await;
    assert_eq!(error(&r).0, StatusCode::BAD_REQUEST);
    // No token was issued, nothing reached Amazon's Tokens API, each refusal is recorded.
    assert_eq!(
        gw.sandbox
            .stats()
            .by_operation
            .get("tokens_2021-03-01.createRestrictedDataToken"),
        None
    );
    let records = audit_records(&gw, audit.path()).await;
    let refused = records
        .iter()
        .filter(|r| r["reason"] == "gateway_rdt_invalid_input" && r["status"] == 400)
        .count();
    assert_eq!(refused, cases.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_orders_v0_translation_the_tokens_data_elements_still_bound_the_answer() {
    // A role receiving everything; the token asks getOrder for the shipping address only.
    let gw = start_gateway(Options {
        extra_toml: "[compat]\norders_v0 = \"translate\"\n".into(),
        ..Options::default()
    })
    .await;
    let order = first_order(&gw).await;
    let full_answer = gw.get(&format!("/orders/v0/orders/{order}")).await;
    assert_eq!(full_answer.status, StatusCode::OK);
    let email = |r: &Reply| r.json()["payload"]["BuyerInfo"]["BuyerEmail"].is_string();
    assert!(email(&full_answer), "the role receives e-mails");
    let minted = mint(
        &gw,
        r#"[{"method":"GET","path":"/orders/v0/orders/{orderId}","dataElements":["shippingAddress"]}]"#,
    )
    .await;
    let token = minted.json()["restrictedDataToken"]
        .as_str()
        .unwrap()
        .to_string();
    let r = with_rdt(&gw, &format!("/orders/v0/orders/{order}"), &token, &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    assert!(r.json()["payload"]["ShippingAddress"]["AddressLine1"].is_string());
    assert!(!email(&r), "{}", r.json());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_for_fifty_resources_of_the_longest_paths_fits_in_a_request_header() {
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway(audit.path(), "").await;
    let order = first_order(&gw).await;
    // The longest path accepted, 50 times (Amazon's limit), and the order's own at the end.
    let filler = "9".repeat(rdt::MAX_PATH_BYTES - "/orders/v0/orders//address".len());
    let mut resources: Vec<String> = (0..rdt::MAX_RESOURCES - 1)
        .map(|_| format!(r#"{{"method":"GET","path":"/orders/v0/orders/{filler}/address"}}"#))
        .collect();
    resources.push(format!(
        r#"{{"method":"GET","path":"/orders/v0/orders/{order}/address"}}"#
    ));
    let minted = mint(&gw, &format!("[{}]", resources.join(","))).await;
    assert_eq!(minted.status, StatusCode::OK, "{:?}", minted.body);
    let token = minted.json()["restrictedDataToken"]
        .as_str()
        .unwrap()
        .to_string();
    let r = with_rdt(
        &gw,
        &format!("/orders/v0/orders/{order}/address"),
        &token,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    // One byte longer is refused.
    let long = format!("/orders/v0/orders/{filler}9/address");
    let r = mint(&gw, &format!(r#"[{{"method":"GET","path":"{long}"}}]"#)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_rdt_minted_on_one_instance_is_accepted_by_another() {
    let store = redis_store_toml();
    let master = spgate::crypto::MasterKey::generate_base64().unwrap();
    let one = start_gateway(Options {
        store_toml: Some(store.clone()),
        master_key: Some(master.clone()),
        ..Options::default()
    })
    .await;
    let minted = mint(
        &one,
        r#"[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]"#,
    )
    .await;
    assert_eq!(minted.status, StatusCode::OK);
    let token = minted.json()["restrictedDataToken"]
        .as_str()
        .unwrap()
        .to_string();
    let two = start_gateway(Options {
        store_toml: Some(store.clone()),
        master_key: Some(master),
        shared_sandbox: Some((one.sandbox.clone(), one.sandbox_url.clone())),
        ..Options::default()
    })
    .await;
    let order = first_order(&two).await;
    let r = with_rdt(
        &two,
        &format!("/orders/v0/orders/{order}/address"),
        &token,
        &[],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    clean_redis(&store).await;
}

#[test]
fn a_token_names_nothing_readable() {
    let key = spgate::crypto::MasterKey::from_base64(
        "k1",
        &spgate::crypto::MasterKey::generate_base64().unwrap(),
    )
    .unwrap();
    let claims = Claims {
        client_id: "cli_abc".into(),
        tool: "label-printer".into(),
        seller: SELLER.into(),
        resources: vec![Resource {
            operation: "ordersV0.getOrderAddress".into(),
            path: "/orders/v0/orders/{orderId}/address".into(),
            data_elements: vec![],
        }],
        expires_at: 2_000_000_000,
    };
    let token = rdt::seal(&key, &claims).unwrap();
    for secret in ["cli_abc", "label-printer", SELLER, "getOrderAddress"] {
        assert!(!token.contains(secret), "{secret}");
    }
    assert_eq!(rdt::open(&key, &token).unwrap(), claims);
}
