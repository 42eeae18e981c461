//! End-to-end tests of the PII policy: what each role receives of planted synthetic buyer PII,
//! and that a response the policy cannot read is withheld (fail closed).

mod common;

use common::*;
use http::StatusCode;
use spgate::sandbox::{Script, ScriptBody};

/// A synthetic value planted in upstream responses; it must never reach a caller it is withheld
/// from.
const PLANTED: &str = "Jane Planted-Example";

fn bytes_script(status: StatusCode, headers: Vec<(&str, &str)>, body: &str) -> Script {
    Script {
        status,
        headers: headers
            .into_iter()
            .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
            .collect(),
        body: ScriptBody::Bytes(bytes::Bytes::from(body.to_string())),
        header_delay: std::time::Duration::ZERO,
        times: None,
    }
}

#[tokio::test]
async fn restricted_responses_the_policy_cannot_read_are_withheld_with_502() {
    let gw = start_gateway(Options::default()).await;
    let path = "/orders/v0/orders/902-0000000-0000001/address";
    let cases = [
        (
            "not JSON",
            bytes_script(
                StatusCode::OK,
                vec![("content-type", "application/json")],
                &format!("Name: {PLANTED}"),
            ),
        ),
        (
            "truncated JSON",
            bytes_script(
                StatusCode::OK,
                vec![],
                &format!(r#"{{"payload":{{"ShippingAddress":{{"Name":"{PLANTED}""#),
            ),
        ),
        (
            "encoded",
            bytes_script(
                StatusCode::OK,
                vec![("content-encoding", "gzip")],
                &format!(r#"{{"payload":{{"BuyerCompanyName":"{PLANTED}"}}}}"#),
            ),
        ),
        (
            "too large",
            bytes_script(
                StatusCode::OK,
                vec![],
                &format!(
                    r#"{{"payload":{{"BuyerCompanyName":"{PLANTED}","pad":"{}"}}}}"#,
                    "x".repeat(9 * 1024 * 1024)
                ),
            ),
        ),
    ];
    for (what, script) in cases {
        gw.sandbox.script("ordersV0.getOrderAddress", script);
        let reply = gw.get(path).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{what}");
        assert_eq!(reply.error_code(), "InternalFailure", "{what}");
        let text = String::from_utf8_lossy(&reply.body);
        assert!(!text.contains("Planted"), "{what}: {text}");
    }
    // An error answer carries no buyer data and passes as Amazon sent it.
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        bytes_script(
            StatusCode::NOT_FOUND,
            vec![],
            r#"{"errors":[{"code":"NotFound","message":"Order not found"}]}"#,
        ),
    );
    let reply = gw.get(path).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.error_code(), "NotFound");
    // An error that echoes buyer data goes through the safety net too; a non-JSON one is withheld.
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        bytes_script(
            StatusCode::BAD_REQUEST,
            vec![],
            r#"{"errors":[{"code":"InvalidInput","message":"Bad address","details":"ship to jane.planted@example.invalid"}]}"#,
        ),
    );
    let reply = gw.get(path).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert_eq!(reply.error_code(), "InvalidInput");
    assert!(!String::from_utf8_lossy(&reply.body).contains("planted"));
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        bytes_script(
            StatusCode::BAD_REQUEST,
            vec![],
            "<html>Jane Planted-Example</html>",
        ),
    );
    let reply = gw.get(path).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(!String::from_utf8_lossy(&reply.body).contains("Planted"));
}

#[tokio::test]
async fn a_restricted_response_cut_by_the_total_timeout_is_withheld() {
    let gw = start_gateway(Options {
        upstream_toml: "header_timeout_ms = 500\ntotal_timeout_ms = 600".into(),
        ..Options::default()
    })
    .await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![],
            body: ScriptBody::Stall { first_bytes: 100 },
            header_delay: std::time::Duration::ZERO,
            times: None,
        },
    );
    let reply = gw
        .get("/orders/v0/orders/902-0000000-0000001/address")
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "InternalFailure");
}

const MIXED: &str = r#"
[roles.orders]
reveal = ["address"]
[roles.orders.pii]
name = "mask"
email = "pseudonymize"
phone = "drop"
address = "encrypt"
postal_code = "mask"
coarse_location = "pass"
company = "drop"
tax_id = "drop"
delivery_instructions = "drop"
"#;

async fn get_as(gw: &TestGateway, key: &str, path: &str) -> Reply {
    gw.call(
        http::Request::get(format!("{}{}", gw.url, path))
            .header("authorization", format!("Bearer {key}"))
            .header("x-spgate-seller", SELLER)
            .body(empty())
            .unwrap(),
    )
    .await
}

async fn reveal(gw: &TestGateway, values: &[&str]) -> serde_json::Value {
    let reply = gw
        .call(
            gw.request(http::Method::POST, "/v1/pii/reveal")
                .header("content-type", "application/json")
                .body(full(
                    serde_json::to_vec(&serde_json::json!({ "values": values })).unwrap(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    reply.json()
}

/// Every file under `dir`, concatenated.
fn read_tree(dir: &std::path::Path) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.push_str(&read_tree(&path));
        } else {
            out.push_str(&String::from_utf8_lossy(&std::fs::read(&path).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn each_role_gets_what_it_is_granted_encrypted_values_reveal_until_erased_and_the_audit_log_holds_no_pii(
) {
    let audit_dir = tempfile::tempdir().unwrap();
    let logs = audit_dir.path().join("log");
    let gw = start_gateway(Options {
        roles_toml: format!("{MIXED}\n{}", all_pass_role("clear")),
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"test\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            logs.display().to_string(),
        ),
        ..Options::default()
    })
    .await;
    let clear = spgate::auth::caller::create_client(
        &*gw.store,
        "clear-tool",
        "clear",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let clear_key = clear.key.expose().clone();
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[0].clone();
    let path = format!("/orders/v0/orders/{order}/address");

    // The clear role sees the synthetic buyer as the sandbox made it.
    let plain = get_as(&gw, &clear_key, &path).await;
    assert_eq!(plain.status, StatusCode::OK);
    let addr = plain.json()["payload"]["ShippingAddress"].clone();
    let (name, line1, phone, postal) = (
        addr["Name"].as_str().unwrap().to_string(),
        addr["AddressLine1"].as_str().unwrap().to_string(),
        addr["Phone"].as_str().unwrap().to_string(),
        addr["PostalCode"].as_str().unwrap().to_string(),
    );

    // The mixed role: masked name and postal code, encrypted address, no phone, clear city.
    let mixed = gw.get(&path).await;
    assert_eq!(mixed.status, StatusCode::OK, "{:?}", mixed.body);
    let text = String::from_utf8_lossy(&mixed.body).to_string();
    for planted in [&name, &line1, &phone] {
        assert!(!text.contains(planted.as_str()), "{planted} leaked: {text}");
    }
    let got = mixed.json()["payload"]["ShippingAddress"].clone();
    assert_ne!(got["Name"], addr["Name"]);
    assert!(got["Name"].as_str().unwrap().contains('*'), "{got}");
    assert!(got.get("Phone").is_none(), "{got}");
    assert_eq!(got["City"], addr["City"]);
    assert_eq!(got["PostalCode"].as_str().unwrap()[..2], postal[..2]);
    assert_ne!(got["PostalCode"], addr["PostalCode"]);
    let envelope = got["AddressLine1"].as_str().unwrap().to_string();
    assert!(envelope.starts_with("spgate:v1:"), "{envelope}");

    // Pseudonyms are stable per seller.
    let buyer = format!("/orders/v0/orders/{order}/buyerInfo");
    let a = gw.get(&buyer).await.json()["payload"]["BuyerEmail"].clone();
    let b = gw.get(&buyer).await.json()["payload"]["BuyerEmail"].clone();
    assert!(a.as_str().unwrap().starts_with("psn_"), "{a}");
    assert_eq!(a, b);

    // Reveal: the address (granted), while the order's key lives; the clear tool may not.
    let revealed = reveal(&gw, &[&envelope]).await;
    assert_eq!(revealed["values"][0]["value"], line1.as_str());
    assert_eq!(revealed["values"][0]["category"], "address");
    let forbidden = gw
        .call(
            http::Request::post(format!("{}/v1/pii/reveal", gw.url))
                .header("authorization", format!("Bearer {clear_key}"))
                .body(full(
                    serde_json::to_vec(&serde_json::json!({ "values": [envelope] })).unwrap(),
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(forbidden.json()["values"][0]["error"]["code"], "Forbidden");

    // Erasing the order destroys its key: the envelope the tool holds is dead.
    let erased = gw
        .gateway
        .vault()
        .erase(
            Some(SELLER),
            &order,
            spgate::vault::EraseReason::DataSubjectRequest,
            "test",
        )
        .await
        .unwrap();
    assert_eq!(erased.len(), 1);
    let after = reveal(&gw, &[&envelope]).await;
    assert_eq!(after["values"][0]["error"]["code"], "Expired");

    // The audit log: one record per request with the categories and actions, reveals and the
    // erasure; no PII value, key or token anywhere in it.
    gw.gateway.auditor().flush().await;
    let log = read_tree(&logs);
    for secret in [&name, &line1, &phone, &envelope, &clear_key, &gw.key] {
        assert!(!log.contains(secret.as_str()), "audit log holds a value");
    }
    assert!(!log.contains(REFRESH_TOKEN));
    let records: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let requests: Vec<_> = records
        .iter()
        .filter(|r| r["kind"] == "request" && r["operation"] == "ordersV0.getOrderAddress")
        .collect();
    assert_eq!(requests.len(), 2, "{log}");
    let mixed_rec = requests.iter().find(|r| r["tool"] == "test-tool").unwrap();
    let pii = mixed_rec["pii"].to_string();
    assert!(
        pii.contains("\"address\"") && pii.contains("encrypt"),
        "{pii}"
    );
    assert_eq!(mixed_rec["seller"], SELLER);
    assert_eq!(mixed_rec["status"], 200);
    assert_eq!(
        records.iter().filter(|r| r["kind"] == "reveal").count(),
        3,
        "{log}"
    );
    assert!(records.iter().any(|r| r["kind"] == "erase"), "{log}");
    // The chain verifies with its key.
    let key = AUDIT_KEY.to_string();
    let reports = spgate::audit::chain::verify(
        &logs,
        &spgate::audit::config::decode_key(&spgate::secret::Secret::new(key))
            .unwrap()
            .expose()
            .clone(),
    );
    let reports = reports.unwrap();
    assert_eq!(reports.len(), 1);
    assert!(reports[0].first_bad.is_none());
    assert!(reports[0].records >= 6, "{:?}", reports[0].records);
}

#[tokio::test]
async fn report_documents_stream_through_the_gateways_signed_link_with_the_roles_policy() {
    let gw = start_gateway(Options {
        roles_toml: format!("{MIXED}\n{}", all_pass_role("clear")),
        ..Options::default()
    })
    .await;
    let doc_path = "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING";
    let reply = gw.get(doc_path).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let doc = reply.json();
    let url = doc["url"].as_str().unwrap().to_string();
    assert!(
        url.starts_with(&format!("{}/v1/documents/", gw.url)),
        "{url}"
    );
    assert!(
        !url.contains("_sandbox"),
        "the upstream URL is sealed: {url}"
    );
    assert!(doc.get("compressionAlgorithm").is_none(), "{doc}");

    let path = &url[gw.url.len()..];
    let got = gw.get(path).await;
    assert_eq!(got.status, StatusCode::OK);
    let text = String::from_utf8(got.body.to_vec()).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    assert!(rows.len() > 10);
    let ids = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER);
    for row in &rows {
        assert!(ids.contains(&row[col("order-id")].to_string()), "{row:?}");
        assert!(row[col("buyer-email")].starts_with("psn_"), "{row:?}");
        assert_eq!(row[col("buyer-phone-number")], "");
        assert_eq!(row[col("ship-address-1")], "", "encrypt drops in documents");
        assert!(row[col("buyer-name")].contains('*'), "{row:?}");
        assert_eq!(row[col("ship-city")], "Testville");
        assert!(!text.contains("@example.com") && !text.contains("Synthetic Way"));
    }

    // The link is the tool's own: another tool (even for the same seller) is refused.
    let other = spgate::auth::caller::create_client(
        &*gw.store,
        "clear-tool",
        "clear",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let refused = get_as(&gw, other.key.expose(), path).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let tampered = format!("{}x", &path[..path.len() - 1]);
    assert_eq!(gw.get(&tampered).await.status, StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn a_repeat_read_of_an_orders_pii_comes_from_the_encrypted_cache_under_each_roles_policy() {
    let gw = start_gateway(Options {
        pii_cache: true,
        roles_toml: format!("{MIXED}\n{}", all_pass_role("clear")),
        ..Options::default()
    })
    .await;
    let clear = spgate::auth::caller::create_client(
        &*gw.store,
        "clear-tool",
        "clear",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[1].clone();
    let path = format!("/orders/v0/orders/{order}/address");
    let first = gw.get(&path).await;
    assert_eq!(first.headers["x-spgate-cache"], "miss");
    let second = gw.get(&path).await;
    assert_eq!(second.headers["x-spgate-cache"], "hit");
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 1);
    // The policy applies on the hit: the same masked name, a fresh envelope for the address.
    let (a, b) = (first.json(), second.json());
    let (a, b) = (
        &a["payload"]["ShippingAddress"],
        &b["payload"]["ShippingAddress"],
    );
    assert_eq!(a["Name"], b["Name"]);
    assert!(b["AddressLine1"]
        .as_str()
        .unwrap()
        .starts_with("spgate:v1:"));
    assert!(b.get("Phone").is_none());
    // Another role has its own entry (it may have been sent more by Amazon).
    let c1 = get_as(&gw, clear.key.expose(), &path).await;
    assert_eq!(c1.headers["x-spgate-cache"], "miss");
    assert!(c1.json()["payload"]["ShippingAddress"]["Phone"].is_string());
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 2);
    // Erasure empties the cache.
    gw.gateway
        .vault()
        .erase(
            Some(SELLER),
            &order,
            spgate::vault::EraseReason::Operator,
            "test",
        )
        .await
        .unwrap();
    assert_eq!(gw.get(&path).await.headers["x-spgate-cache"], "miss");
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 3);
}

#[tokio::test]
async fn order_data_seen_through_the_gateway_sets_each_orders_deletion_date() {
    let gw = start_gateway(Options {
        roles_toml: MIXED.into(),
        ..Options::default()
    })
    .await;
    let ids = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER);
    // The order list: every order the encrypting role receives gets a key and a record.
    let reply = gw
        .get("/orders/v0/orders?MarketplaceIds=ATVPDKIKX0DER,A2EUQ1WTGCTBG2&CreatedAfter=2020-01-01T00:00:00Z")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let orders = reply.json()["payload"]["Orders"]
        .as_array()
        .unwrap()
        .clone();
    assert!(!orders.is_empty());
    let vault = gw.gateway.vault();
    let mut checked = 0;
    for o in &orders {
        let id = o["AmazonOrderId"].as_str().unwrap();
        assert!(ids.contains(&id.to_string()));
        let record = vault.record(SELLER, id).await.unwrap().expect("a record");
        let status = o["OrderStatus"].as_str().unwrap();
        if status == "Canceled" {
            assert!(
                record.due_at <= vault.now().unix_timestamp() + 1,
                "cancelled: due now"
            );
        } else if let Some(latest) = o["LatestDeliveryDate"].as_str() {
            let latest = spgate::vault::parse_rfc3339(latest)
                .unwrap()
                .unix_timestamp();
            assert!(
                record.due_at <= latest.max(record.first_seen) + 30 * 86_400,
                "{id}: due {} after latest delivery {latest} + 30 days",
                record.due_at
            );
            checked += 1;
        }
    }
    assert!(checked > 0);
    // The buyer's e-mail pseudonym finds the order again (data-subject requests).
    let with_email = orders
        .iter()
        .find(|o| o["BuyerInfo"]["BuyerEmail"].is_string())
        .expect("an order with a buyer e-mail");
    let psn = with_email["BuyerInfo"]["BuyerEmail"].as_str().unwrap();
    assert!(psn.starts_with("psn_"), "{psn}");
    let export = vault.export_pseudonym(psn, "test").await.unwrap();
    assert!(
        export
            .orders
            .iter()
            .any(|e| e.order_id == with_email["AmazonOrderId"].as_str().unwrap()),
        "the pseudonym leads to its order"
    );
    // Ops report a delivery: due = delivered + 30 days.
    let at = vault.now() - time::Duration::days(3);
    vault
        .delivered(SELLER, &ids[0], at, spgate::store::DeliverySource::Ops)
        .await
        .unwrap();
    let record = vault.record(SELLER, &ids[0]).await.unwrap().unwrap();
    assert_eq!(
        record.due_at,
        (at + time::Duration::days(30)).unix_timestamp()
    );
}

#[tokio::test]
async fn a_pii_cache_hit_still_takes_a_token_of_the_tools_own_plan() {
    let plan = "[ratelimit.plans.one]\nmax_wait_ms = 0\noperations.\"ordersV0.getOrderAddress\" = { rate_per_second = 0.001, burst = 1 }\n[tools.test-tool]\nplan = \"one\"\n";
    let gw = start_gateway(Options {
        pii_cache: true,
        roles_toml: MIXED.to_string(),
        extra_toml: plan.into(),
        ..Options::default()
    })
    .await;
    let order = spgate::sandbox::Sandbox::synthetic_order_ids(SELLER)[1].clone();
    let path = format!("/orders/v0/orders/{order}/address");
    let first = gw.get(&path).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.headers["x-spgate-cache"], "miss");
    // The answer is in the cache, but the tool's own limit is spent: the operator's limit on
    // the tool holds for answers that cost Amazon nothing too.
    let refused = gw.get(&path).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "QuotaExceeded");
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 1);
    assert_eq!(gw.gateway.limiter().metrics().rejected_throttled, 1);
}
