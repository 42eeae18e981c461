//! Answers shared between callers (`[shared_calls]`): identical concurrent reads of an operation
//! without buyer PII make one upstream call, cached answers stay with their seller, and a write
//! through the gateway drops them; each caller still gets its own plan decision and record.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::StatusCode;
use spgate::proxy::CACHE_HEADER;
use spgate::sandbox::Script;

const GET_ITEM: &str = "catalogItems_2022-04-01.getCatalogItem";
const OTHER_SELLER: &str = "A2OTHERSELLER02";

/// A catalog item answer (the sandbox's static example wants a longer query).
fn item() -> Script {
    Script::json(
        StatusCode::OK,
        serde_json::json!({"asin": "B07N4M94X4", "summaries": [{"itemName": "Synthetic pen"}]}),
    )
}

fn item_path(asin: &str) -> String {
    format!("/catalog/2022-04-01/items/{asin}?marketplaceIds=ATVPDKIKX0DER")
}

/// A gateway whose tool may act for the test seller and [`OTHER_SELLER`], with `shared` as its
/// `[shared_calls]` section and an audit log in `audit`.
async fn gateway(audit: &std::path::Path, shared: &str, more: &str) -> TestGateway {
    gateway_upstream(audit, shared, more, "").await
}

/// [`gateway`], with `upstream` in its `[upstream]` section.
async fn gateway_upstream(
    audit: &std::path::Path,
    shared: &str,
    more: &str,
    upstream: &str,
) -> TestGateway {
    let gw = start_gateway(Options {
        upstream_toml: upstream.into(),
        key_sellers: vec![SELLER.into(), OTHER_SELLER.into()],
        extra_toml: format!(
            "[shared_calls]\n{shared}\n[audit]\ndir = {:?}\ninstance = \"shared\"\nkey = {{ env = \"AUDIT_KEY\" }}\n{more}",
            audit.display().to_string()
        ),
        ..Options::default()
    })
    .await;
    add_seller(&gw, OTHER_SELLER, spgate::store::Region::Eu).await;
    gw
}

/// A gateway caching [`GET_ITEM`] answers for 300 s, with `upstream` in its `[upstream]`
/// section; Amazon answers [`item`].
async fn caching_items(audit: &std::path::Path, upstream: &str) -> TestGateway {
    let ttl = format!("[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300");
    let gw = gateway_upstream(audit, &ttl, "", upstream).await;
    gw.sandbox.script(GET_ITEM, item());
    gw
}

fn cache_header(reply: &Reply) -> Option<&str> {
    reply.headers.get(CACHE_HEADER).map(|v| v.to_str().unwrap())
}

fn reasons(records: &[serde_json::Value], reason: &str) -> usize {
    records
        .iter()
        .filter(|r| r["kind"] == "request" && r["reason"] == reason)
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_identical_concurrent_reads_make_one_upstream_call_and_fifty_answers() {
    let audit = tempfile::tempdir().unwrap();
    let gw = Arc::new(gateway(audit.path(), "coalesce = true", "").await);
    // Amazon takes its time, so every request arrives while the first is in flight.
    let mut slow = item();
    slow.header_delay = Duration::from_secs(2);
    gw.sandbox.script(GET_ITEM, slow);
    let tasks: Vec<_> = (0..60)
        .map(|i| {
            let gw = gw.clone();
            // 50 for one item, 10 for another: a different path is never shared.
            let asin = if i < 50 { "B07N4M94X4" } else { "B000000001" };
            tokio::spawn(async move { gw.get_for(SELLER, &item_path(asin)).await })
        })
        .collect();
    let mut coalesced = 0;
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(reply.json()["summaries"][0]["itemName"], "Synthetic pen");
        coalesced += usize::from(cache_header(&reply) == Some("coalesced"));
    }
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 2, "one call per item");
    assert_eq!(coalesced, 58);
    let shared = gw.gateway.shared_calls();
    assert_eq!(shared.counted(spgate::proxy::SharedEvent::Coalesced), 58);
    let records = audit_records(&gw, audit.path()).await;
    assert_eq!(
        reasons(&records, "coalesced"),
        58,
        "each follower has its record"
    );
    assert_eq!(
        records
            .iter()
            .filter(|r| r["operation"] == GET_ITEM && r["status"] == 200)
            .count(),
        60
    );
}

#[tokio::test]
async fn a_cached_answer_stays_with_its_seller_and_a_write_through_the_gateway_drops_it() {
    let audit = tempfile::tempdir().unwrap();
    let gw = caching_items(audit.path(), "").await;
    let path = item_path("B07N4M94X4");
    let upstream = || gw.sandbox.received(GET_ITEM);
    let first = gw.get_for(SELLER, &path).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(cache_header(&first), Some("miss"));
    let again = gw.get_for(SELLER, &path).await;
    assert_eq!(cache_header(&again), Some("hit"));
    assert_eq!(again.body, first.body);
    assert_eq!(upstream().len(), 1);

    // Another seller asking the same thing is answered by Amazon, with its own token.
    let other = gw.get_for(OTHER_SELLER, &path).await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(cache_header(&other), Some("miss"));
    assert_eq!(upstream().len(), 2);
    assert_eq!(upstream()[1].seller.as_deref(), Some(OTHER_SELLER));

    // Another tool's write to the seller's listings drops the seller's cached catalog answers
    // (one listing change shows in the catalog too), and only that seller's.
    let writer = spgate::auth::caller::create_client(
        &*gw.store,
        "writer-tool",
        "orders",
        vec![SELLER.into()],
        1_700_000_000,
    )
    .await
    .unwrap();
    let patch = http::Request::patch(format!(
        "{}/listings/2021-08-01/items/{SELLER}/SKU-1?marketplaceIds=ATVPDKIKX0DER",
        gw.url
    ))
    .header("authorization", format!("Bearer {}", writer.key.expose()))
    .header("x-spgate-seller", SELLER)
    .header("content-type", "application/json")
    .body(full(r#"{"productType":"PEN","patches":[]}"#))
    .unwrap();
    let _ = gw.call(patch).await;
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(upstream().len(), 3);
    assert_eq!(
        cache_header(&gw.get_for(OTHER_SELLER, &path).await),
        Some("hit")
    );
    assert_eq!(upstream().len(), 3);
    let records = audit_records(&gw, audit.path()).await;
    assert_eq!(reasons(&records, "cache_hit"), 2);
}

#[tokio::test]
async fn a_cached_answer_still_takes_a_token_of_the_tools_own_plan() {
    let audit = tempfile::tempdir().unwrap();
    let plan = format!(
        "[ratelimit.plans.one]\nmax_wait_ms = 0\noperations.\"{GET_ITEM}\" = {{ rate_per_second = 0.001, burst = 1 }}\n[tools.test-tool]\nplan = \"one\"\n"
    );
    let gw = gateway(
        audit.path(),
        &format!("[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300"),
        &plan,
    )
    .await;
    gw.sandbox.script(GET_ITEM, item());
    let path = item_path("B07N4M94X4");
    assert_eq!(gw.get_for(SELLER, &path).await.status, StatusCode::OK);
    let refused = gw.get_for(SELLER, &path).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "QuotaExceeded");
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 1);
}

#[tokio::test]
async fn a_fee_estimate_is_shared_only_with_a_request_of_the_same_body() {
    const FEES: &str = "productFeesV0.getMyFeesEstimateForSKU";
    let audit = tempfile::tempdir().unwrap();
    let gw = gateway(
        audit.path(),
        &format!("[shared_calls.ttl_seconds]\n\"{FEES}\" = 60"),
        "",
    )
    .await;
    gw.sandbox.script(
        FEES,
        Script::json(
            StatusCode::OK,
            serde_json::json!({"payload": {"FeesEstimateResult": {"Status": "Success"}}}),
        ),
    );
    let estimate = |price: u32| {
        let body = serde_json::json!({"FeesEstimateRequest": {"MarketplaceId": "ATVPDKIKX0DER", "Identifier": "req-1", "PriceToEstimateFees": {"ListingPrice": {"CurrencyCode": "USD", "Amount": price}}}});
        gw.request(
            http::Method::POST,
            "/products/fees/v0/listings/SKU-1/feesEstimate",
        )
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .unwrap()
    };
    let first = gw.call(estimate(10)).await;
    assert_eq!(first.status, StatusCode::OK, "{:?}", first.body);
    assert_eq!(cache_header(&first), Some("miss"));
    assert_eq!(cache_header(&gw.call(estimate(10)).await), Some("hit"));
    assert_eq!(cache_header(&gw.call(estimate(11)).await), Some("miss"));
    assert_eq!(gw.sandbox.received(FEES).len(), 2);
}

#[tokio::test]
async fn requests_sending_different_headers_upstream_never_share_an_answer() {
    let audit = tempfile::tempdir().unwrap();
    let gw = caching_items(audit.path(), "").await;
    let path = item_path("B07N4M94X4");
    let get = |language: &str, agent: &str| {
        gw.request(http::Method::GET, &path)
            .header("accept-language", language)
            .header("user-agent", agent)
            .body(empty())
            .unwrap()
    };
    assert_eq!(
        cache_header(&gw.call(get("en-US", "a/1")).await),
        Some("miss")
    );
    // Another language is another answer from Amazon; the user agent does not change it.
    assert_eq!(
        cache_header(&gw.call(get("de-DE", "a/1")).await),
        Some("miss")
    );
    assert_eq!(
        cache_header(&gw.call(get("en-US", "b/2")).await),
        Some("hit")
    );
    assert_eq!(
        cache_header(&gw.call(get("de-DE", "a/1")).await),
        Some("hit")
    );
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_answer_is_not_shared_each_follower_asks_amazon_itself() {
    let audit = tempfile::tempdir().unwrap();
    let gw = Arc::new(gateway(audit.path(), "coalesce = true", "").await);
    let mut refused = Script::json(
        StatusCode::BAD_REQUEST,
        serde_json::json!({"errors": [{"code": "InvalidInput", "message": "bad", "details": ""}]}),
    );
    refused.header_delay = Duration::from_millis(1500);
    gw.sandbox.script(GET_ITEM, refused);
    let path = item_path("B07N4M94X4");
    let tasks: Vec<_> = (0..5)
        .map(|_| {
            let (gw, path) = (gw.clone(), path.clone());
            tokio::spawn(async move { gw.get_for(SELLER, &path).await })
        })
        .collect();
    for t in tasks {
        let reply = t.await.unwrap();
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{:?}", reply.body);
        assert_ne!(cache_header(&reply), Some("coalesced"));
    }
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 5, "one call each");
    assert_eq!(
        gw.gateway
            .shared_calls()
            .counted(spgate::proxy::SharedEvent::Coalesced),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_fails_still_drops_what_was_read_while_it_was_in_flight() {
    const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
    let audit = tempfile::tempdir().unwrap();
    // No settle window: what is tested here is the write's end dropping the answer.
    let ttl = format!("settle_seconds = 0\n[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300");
    let gw = gateway_upstream(
        audit.path(),
        &ttl,
        "",
        "header_timeout_ms = 1500\ntotal_timeout_ms = 5000",
    )
    .await;
    gw.sandbox.script(GET_ITEM, item());
    let gw = Arc::new(gw);
    // Amazon takes longer than the gateway waits: the write ends in a timeout, and Amazon may
    // still have applied it.
    let mut slow = Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"}));
    slow.header_delay = Duration::from_secs(4);
    gw.sandbox.script(PATCH, slow);
    let path = item_path("B07N4M94X4");
    let write = {
        let gw = gw.clone();
        tokio::spawn(async move {
            let patch = gw
                .request(
                    http::Method::PATCH,
                    &format!(
                        "/listings/2021-08-01/items/{SELLER}/SKU-1?marketplaceIds=ATVPDKIKX0DER"
                    ),
                )
                .header("content-type", "application/json")
                .body(full(r#"{"productType":"PEN","patches":[]}"#))
                .unwrap();
            gw.call(patch).await
        })
    };
    // A read while the write is in flight (after its first invalidation) is cached.
    while gw.sandbox.received(PATCH).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    let failed = write.await.unwrap();
    assert_eq!(
        failed.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        failed.body
    );
    // The failed write's end dropped it: the next read asks Amazon again.
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 2);
}

/// A listings write for [`SELLER`] through the gateway, by the test tool.
fn patch_listing(gw: &TestGateway) -> http::Request<spgate::proxy::body::Body> {
    gw.request(
        http::Method::PATCH,
        &format!("/listings/2021-08-01/items/{SELLER}/SKU-1?marketplaceIds=ATVPDKIKX0DER"),
    )
    .header("content-type", "application/json")
    .body(full(r#"{"productType":"PEN","patches":[]}"#))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_arriving_after_a_write_never_joins_a_leader_that_started_before_it() {
    const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
    let audit = tempfile::tempdir().unwrap();
    // No settle window: what is tested here is the generation.
    let ttl = format!(
        "coalesce = true\nsettle_seconds = 0\n[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300"
    );
    let gw = Arc::new(gateway(audit.path(), &ttl, "").await);
    let mut slow = item();
    slow.header_delay = Duration::from_secs(3);
    gw.sandbox.script(GET_ITEM, slow);
    gw.sandbox.script(
        PATCH,
        Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"})),
    );
    let path = item_path("B07N4M94X4");
    let before = {
        let (gw, path) = (gw.clone(), path.clone());
        tokio::spawn(async move { gw.get_for(SELLER, &path).await })
    };
    while gw.sandbox.received(GET_ITEM).is_empty() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The write ends while the first read is still with Amazon: a read after it may not get
    // the answer Amazon is preparing for the first (it may predate the write).
    let write = gw.call(patch_listing(&gw)).await;
    assert_eq!(write.status, StatusCode::OK, "{:?}", write.body);
    let after = gw.get_for(SELLER, &path).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_ne!(cache_header(&after), Some("coalesced"));
    assert_eq!(
        gw.sandbox.received(GET_ITEM).len(),
        2,
        "it asked Amazon itself"
    );
    assert_eq!(before.await.unwrap().status, StatusCode::OK);
    let shared = gw.gateway.shared_calls();
    assert_eq!(shared.counted(spgate::proxy::SharedEvent::AfterWrite), 1);
    assert_eq!(shared.counted(spgate::proxy::SharedEvent::Coalesced), 0);
    // The one that started before the write is not cached; the one after it is.
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 2);
}

/// An item answer of about `kib` KiB.
fn big_item(kib: usize) -> Script {
    Script::json(
        StatusCode::OK,
        serde_json::json!({"asin": "B07N4M94X4", "summaries": [{"itemName": "x".repeat(kib * 1024)}]}),
    )
}

#[tokio::test]
async fn the_cache_is_bounded_by_bytes_and_says_so_in_its_metrics() {
    let audit = tempfile::tempdir().unwrap();
    let shared = format!("max_bytes = 1048576\n[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300");
    let gw = gateway(audit.path(), &shared, "").await;
    gw.sandbox.script(GET_ITEM, big_item(400));
    // Three answers of ~400 KiB do not fit in 1 MiB: the third pushes out the first.
    for asin in ["B000000001", "B000000002", "B000000003"] {
        let reply = gw.get_for(SELLER, &item_path(asin)).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(cache_header(&reply), Some("miss"));
    }
    let calls = gw.gateway.shared_calls();
    let (entries, bytes) = calls.cached();
    assert_eq!(entries, 2);
    assert!(bytes <= 1_048_576 && bytes > 800 * 1024, "{bytes}");
    assert_eq!(calls.counted(spgate::proxy::SharedEvent::Evicted), 1);
    assert_eq!(
        cache_header(&gw.get_for(SELLER, &item_path("B000000003")).await),
        Some("hit")
    );
    assert_eq!(
        cache_header(&gw.get_for(SELLER, &item_path("B000000001")).await),
        Some("miss")
    );
    let mut metrics = String::new();
    calls.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_shared_calls_total{event=\"evicted\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spgate_shared_calls_cached_answers 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spgate_shared_calls_cached_bytes "),
        "{metrics}"
    );
}

#[tokio::test]
async fn max_bytes_below_a_mebibyte_is_refused_at_startup() {
    let raw = spgate::proxy::RawSharedCalls {
        max_bytes: Some(64 * 1024),
        ..Default::default()
    };
    let issues = raw.resolve().unwrap_err();
    assert!(
        issues.iter().any(|i| i.path == "shared_calls.max_bytes"),
        "{issues:?}"
    );
    let ok = spgate::proxy::RawSharedCalls::default().resolve().unwrap();
    assert_eq!(ok.max_bytes, 64 * 1024 * 1024);
}

#[tokio::test]
async fn shared_answers_on_a_share_plan_are_counted_by_the_limiter_and_per_tool() {
    let audit = tempfile::tempdir().unwrap();
    let plan = format!(
        "[ratelimit.plans.shared]\noperations.\"{GET_ITEM}\" = {{ share = 0.5 }}\n[tools.test-tool]\nplan = \"shared\"\n"
    );
    let gw = gateway(
        audit.path(),
        &format!("[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300"),
        &plan,
    )
    .await;
    gw.sandbox.script(GET_ITEM, item());
    let path = item_path("B07N4M94X4");
    let admitted = || {
        let m = gw.gateway.limiter().metrics();
        m.admitted_immediate + m.admitted_waited
    };
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(admitted(), 1);
    for _ in 0..3 {
        let hit = gw.get_for(SELLER, &path).await;
        assert_eq!(cache_header(&hit), Some("hit"));
    }
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 1);
    assert_eq!(
        admitted(),
        4,
        "each hit is a decision of the tool's plan, counted"
    );
    let calls = gw.gateway.shared_calls();
    assert_eq!(calls.counted_for_tool("test-tool"), (3, 0));
    let mut metrics = String::new();
    calls.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_shared_calls_tool_total{tool=\"test-tool\",event=\"hit\"} 3"),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_shared_answers_record_names_the_request_that_fetched_it() {
    let audit = tempfile::tempdir().unwrap();
    let gw = caching_items(audit.path(), "").await;
    let path = item_path("B07N4M94X4");
    let first = gw.get_for(SELLER, &path).await;
    let hit = gw.get_for(SELLER, &path).await;
    assert_eq!(cache_header(&hit), Some("hit"));
    let leader = first.headers["x-spgate-request-id"]
        .to_str()
        .unwrap()
        .to_string();
    let records = audit_records(&gw, audit.path()).await;
    let hit_record = records
        .iter()
        .find(|r| r["reason"] == "cache_hit")
        .expect("the hit's record");
    assert_eq!(hit_record["shared_from"], leader.as_str());
    assert_ne!(hit_record["request_id"], leader.as_str());
    let leader_record = records
        .iter()
        .find(|r| r["request_id"] == leader.as_str())
        .unwrap();
    assert!(leader_record.get("shared_from").is_none());
    assert!(leader_record["upstream_request_id"].is_string());
    assert_eq!(
        hit_record["upstream_request_id"], leader_record["upstream_request_id"],
        "Amazon's id of the answer it got"
    );
}

#[tokio::test]
async fn a_revoked_seller_or_tool_is_never_served_from_the_cache() {
    let audit = tempfile::tempdir().unwrap();
    let gw = caching_items(audit.path(), "").await;
    let path = item_path("B07N4M94X4");
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(
        cache_header(&gw.get_for(OTHER_SELLER, &path).await),
        Some("miss")
    );
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    gw.store
        .set_seller_status(SELLER, spgate::store::SellerStatus::Deauthorized)
        .await
        .unwrap();
    let refused = gw.get_for(SELLER, &path).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN, "{:?}", refused.body);
    assert_eq!(cache_header(&refused), None);
    // The tool revoked: nothing more for any seller.
    assert_eq!(
        cache_header(&gw.get_for(OTHER_SELLER, &path).await),
        Some("hit")
    );
    let client = gw.store.clients().await.unwrap().remove(0);
    gw.store
        .revoke_client(&client.id, 1_700_000_001)
        .await
        .unwrap();
    let refused = gw.get_for(OTHER_SELLER, &path).await;
    assert_eq!(
        refused.status,
        StatusCode::UNAUTHORIZED,
        "{:?}",
        refused.body
    );
    assert_eq!(cache_header(&refused), None);
    assert_eq!(
        gw.gateway
            .shared_calls()
            .counted(spgate::proxy::SharedEvent::Hit),
        2
    );
}

#[tokio::test]
async fn a_read_within_the_settle_window_after_a_write_is_answered_but_not_cached() {
    const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
    let audit = tempfile::tempdir().unwrap();
    let ttl = format!("settle_seconds = 1\n[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300");
    let gw = gateway(audit.path(), &ttl, "").await;
    gw.sandbox.script(GET_ITEM, item());
    gw.sandbox.script(
        PATCH,
        Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"})),
    );
    let path = item_path("B07N4M94X4");
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    assert_eq!(gw.call(patch_listing(&gw)).await.status, StatusCode::OK);
    // Amazon may not show the write yet: what it answers now is not kept.
    let started = std::time::Instant::now();
    for _ in 0..2 {
        let reply = gw.get_for(SELLER, &path).await;
        assert_eq!(reply.status, StatusCode::OK);
        assert_eq!(cache_header(&reply), Some("miss"));
    }
    // The two reads above started within the window (checked, so a slow machine cannot
    // make this pass for the wrong reason).
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    let calls = gw.gateway.shared_calls();
    assert_eq!(calls.counted(spgate::proxy::SharedEvent::Settling), 2);
    // Other sellers are not settling.
    assert_eq!(
        cache_header(&gw.get_for(OTHER_SELLER, &path).await),
        Some("miss")
    );
    assert_eq!(
        cache_header(&gw.get_for(OTHER_SELLER, &path).await),
        Some("hit")
    );
    // Past the window, answers are kept again.
    tokio::time::sleep(Duration::from_millis(1100).saturating_sub(started.elapsed())).await;
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    let mut metrics = String::new();
    calls.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_shared_calls_total{event=\"settling\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_settle_window_defaults_to_five_seconds_and_is_bounded() {
    let ok = spgate::proxy::RawSharedCalls::default().resolve().unwrap();
    assert_eq!(ok.settle, Duration::from_secs(5));
    let raw = spgate::proxy::RawSharedCalls {
        settle_seconds: Some(3601),
        ..Default::default()
    };
    let issues = raw.resolve().unwrap_err();
    assert!(
        issues
            .iter()
            .any(|i| i.path == "shared_calls.settle_seconds"),
        "{issues:?}"
    );
}

#[tokio::test]
async fn a_write_refused_before_going_upstream_drops_no_cached_answer() {
    const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
    let audit = tempfile::tempdir().unwrap();
    let plan = format!(
        "[ratelimit.plans.one]\nmax_wait_ms = 0\noperations.\"{PATCH}\" = {{ rate_per_second = 0.001, burst = 1 }}\n[tools.test-tool]\nplan = \"one\"\n"
    );
    let ttl = format!("settle_seconds = 0\n[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300");
    let gw = gateway(audit.path(), &ttl, &plan).await;
    gw.sandbox.script(GET_ITEM, item());
    gw.sandbox.script(
        PATCH,
        Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"})),
    );
    let path = item_path("B07N4M94X4");
    // The plan's one token goes to a first write.
    assert_eq!(gw.call(patch_listing(&gw)).await.status, StatusCode::OK);
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("miss"));
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    // A second write is refused by the tool's plan: nothing was written, nothing goes.
    let refused = gw.call(patch_listing(&gw)).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gw.sandbox.received(PATCH).len(), 1);
    assert_eq!(cache_header(&gw.get_for(SELLER, &path).await), Some("hit"));
    assert_eq!(gw.sandbox.received(GET_ITEM).len(), 1);
}
