//! Amazon's usage plans enforced before Amazon has to: the sandbox enforces the same plans
//! and counts what it receives, so any request the gateway lets through too early shows up as an
//! upstream 429 or a burst above the plan.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use spgate::sandbox::{QuotaMode, Script, ScriptBody};

const ADDRESS: &str = "/orders/v0/orders/TEST_CASE_200/address";

/// The plan of getOrderAddress: 0.5 requests/s, burst 30.
const RATE: f64 = 0.5;
const BURST: f64 = 30.0;

/// The tests that measure arrival spacing at the sandbox with hundreds of concurrent requests
/// run one at a time: on two cores, two of them at once starve each other's timers, which would
/// measure the machine, not the limiter.
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn limited(extra: &str) -> Options {
    Options {
        quotas: QuotaMode::Catalog,
        extra_toml: format!("[ratelimit]\ndefault_max_wait_ms = 2500\n{extra}"),
        ..Options::default()
    }
}

/// Asserts that upstream arrivals never exceeded burst + rate x elapsed.
fn assert_within_plan(gw: &TestGateway, op: &str) -> usize {
    assert_within_plan_give_or_take(gw, op, Duration::ZERO)
}

/// Upstream 429s the tests that send through several instances or a restart tolerate. The
/// sandbox's bucket is exact at each arrival, and a loaded 2-core machine can delay a forwarded
/// request past the spacing allowance (50 ms) while a later one arrives on time: the sandbox
/// then sees two requests closer than the plan although the gateway granted them a slot apart.
/// The limiter's decisions themselves are checked exactly, on tokio's paused clock or Redis's,
/// in `src/ratelimit/tests.rs` (three limiters on one Redis, sellers and the application
/// bucket, a restart); a gateway that shares no bucket or forgets a spent burst makes dozens.
const JITTER_429S: u64 = 2;

/// The same lateness as arrival slack: one token of the plan (2 s at 0.5/s).
const ARRIVAL_SLACK: Duration = Duration::from_secs(2);

/// [`assert_within_plan`] with `slack` added to each arrival's elapsed time.
fn assert_within_plan_give_or_take(gw: &TestGateway, op: &str, slack: Duration) -> usize {
    let mut got: Vec<_> = gw.sandbox.received(op).into_iter().map(|r| r.at).collect();
    got.sort();
    let first = got[0];
    for (i, at) in got.iter().enumerate() {
        let elapsed = at.duration_since(first) + slack;
        let allowed = BURST + RATE * elapsed.as_secs_f64();
        assert!(
            (i + 1) as f64 <= allowed + 1e-9,
            "arrival {} at {:?} exceeds the plan ({allowed})",
            i + 1,
            at.duration_since(first)
        );
    }
    got.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_concurrent_calls_reach_amazon_within_the_usage_plan_and_never_get_429() {
    let _serial = HEAVY.lock().await;
    let gw = Arc::new(start_gateway(limited("")).await);
    let mut tasks = Vec::new();
    for _ in 0..500 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.get(ADDRESS).await }));
    }
    let (mut ok, mut throttled) = (0, 0);
    for t in tasks {
        let reply = t.await.unwrap();
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                throttled += 1;
                if !reply.headers.contains_key("retry-after") {
                    panic!(
                        "429 without retry-after: {:?} {}",
                        reply.headers,
                        String::from_utf8_lossy(&reply.body)
                    );
                }
                assert_eq!(reply.error_code(), "QuotaExceeded");
                assert!(
                    reply.headers["retry-after"]
                        .to_str()
                        .unwrap()
                        .parse::<u64>()
                        .unwrap()
                        >= 1
                );
                let rate: f64 = reply.headers["x-amzn-ratelimit-limit"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(
                    (0.48..=0.5).contains(&rate),
                    "the rate the gateway enforces: {rate}"
                );
            }
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!(ok + throttled, 500);
    assert!(ok >= 30, "the burst is used: {ok}");
    assert_eq!(
        gw.sandbox.stats().throttled_total,
        0,
        "Amazon never had to answer 429"
    );
    assert_eq!(assert_within_plan(&gw, "ordersV0.getOrderAddress"), ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_sharing_redis_stay_within_the_plan_together() {
    let _serial = HEAVY.lock().await;
    let prefix = format!(
        "spgate-rl-test-{}:",
        spgate::crypto::random_token::<9>().unwrap()
    );
    let redis =
        format!("[ratelimit.redis]\nurl = \"redis://127.0.0.1:6379\"\nkey_prefix = \"{prefix}\"\n");
    let first = start_gateway(limited(&redis)).await;
    let mut gateways = vec![Arc::new(first)];
    for _ in 0..2 {
        let mut opts = limited(&redis);
        opts.shared_sandbox = Some((gateways[0].sandbox.clone(), gateways[0].sandbox_url.clone()));
        gateways.push(Arc::new(start_gateway(opts).await));
    }
    // Warm each instance's upstream connection pool (an operation without a usage plan), so the
    // burst's first arrivals are not late by a TCP connect each while later ones ride pooled
    // connections: that skew, not the limiter, is what a cold start would measure.
    let mut warm = Vec::new();
    for i in 0..90 {
        let gw = gateways[i % 3].clone();
        warm.push(tokio::spawn(async move {
            gw.get("/supplySources/2020-07-01/supplySources")
                .await
                .status
        }));
    }
    for w in warm {
        assert_eq!(w.await.unwrap(), StatusCode::OK);
    }
    let mut tasks = Vec::new();
    for i in 0..300 {
        let gw = gateways[i % 3].clone();
        tasks.push(tokio::spawn(async move { gw.get(ADDRESS).await.status }));
    }
    let mut ok = 0;
    for t in tasks {
        let status = t.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS,
            "{status}"
        );
        ok += usize::from(status == StatusCode::OK);
    }
    let op = spgate::catalog::Catalog::builtin()
        .by_key("ordersV0.getOrderAddress")
        .unwrap();
    let m: Vec<_> = gateways
        .iter()
        .map(|g| {
            (
                g.gateway.limiter().metrics(),
                g.gateway.limiter().bucket_status(SELLER, op),
            )
        })
        .collect();
    assert!(ok >= 30, "{ok} {m:?}");
    // Three buckets instead of one would let 90 through at once, 60 of them answered 429.
    let stats = gateways[0].sandbox.stats();
    assert!(stats.throttled_total <= JITTER_429S, "{stats:?} {m:?}");
    let arrived =
        assert_within_plan_give_or_take(&gateways[0], "ordersV0.getOrderAddress", ARRIVAL_SLACK);
    // Every arrival was answered 200 or 429 (a 429 is retried or passed on).
    let throttled = usize::try_from(stats.throttled_total).unwrap();
    assert_eq!(arrived, ok + throttled);
    clean_redis(&format!("key_prefix = \"{prefix}\"")).await;
}

#[tokio::test]
async fn an_upstream_429_empties_the_bucket_and_an_idempotent_call_is_retried_in_time() {
    let gw = start_gateway(limited("")).await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::TOO_MANY_REQUESTS,
            headers: vec![],
            body: ScriptBody::Json(serde_json::json!({"errors": [{"code": "QuotaExceeded", "message": "x", "details": ""}]})),
            header_delay: Duration::ZERO,
            times: Some(1),
        },
    );
    let reply = gw
        .call(
            gw.request(Method::GET, ADDRESS)
                .header("x-spgate-max-wait-ms", "4000")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "retried after the bucket refilled"
    );
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 2);
    let metrics = gw.gateway.limiter().metrics();
    assert_eq!(metrics.upstream_throttled, 1);
    // The bucket was emptied: a caller who cannot wait is refused without reaching Amazon.
    let reply = gw
        .call(
            gw.request(Method::GET, ADDRESS)
                .header("x-spgate-max-wait-ms", "0")
                .body(empty())
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 2);
}

#[tokio::test]
async fn a_failed_post_is_never_retried() {
    let gw = start_gateway(limited("")).await;
    gw.sandbox.script(
        "ordersV0.confirmShipment",
        Script {
            status: StatusCode::SERVICE_UNAVAILABLE,
            headers: vec![],
            body: ScriptBody::Json(serde_json::json!({"errors": [{"code": "ServiceUnavailable", "message": "x", "details": ""}]})),
            header_delay: Duration::ZERO,
            times: Some(1),
        },
    );
    let reply = gw
        .call(
            gw.request(Method::POST, "/orders/v0/orders/1/shipmentConfirmation")
                .body(full("{}"))
                .unwrap(),
        )
        .await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(gw.sandbox.received("ordersV0.confirmShipment").len(), 1);
}

#[tokio::test]
async fn amazons_stated_rate_updates_the_bucket_and_bad_limiter_headers_are_400() {
    let gw = start_gateway(limited("")).await;
    gw.sandbox.script(
        "ordersV0.getOrderAddress",
        Script {
            status: StatusCode::OK,
            headers: vec![(
                "x-amzn-ratelimit-limit".parse().unwrap(),
                "5".parse().unwrap(),
            )],
            body: ScriptBody::Json(serde_json::json!({"payload": {}})),
            header_delay: Duration::ZERO,
            times: None,
        },
    );
    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);
    let op = spgate::catalog::Catalog::builtin()
        .by_key("ordersV0.getOrderAddress")
        .unwrap();
    let status = gw.gateway.limiter().bucket_status(SELLER, op).unwrap();
    assert!(
        (4.85..=5.0).contains(&status.rate_per_second),
        "Amazon's 5/s, less the spacing allowance: {}",
        status.rate_per_second
    );
    for (name, value) in [
        ("x-spgate-priority", "urgent"),
        ("x-spgate-max-wait-ms", "soon"),
    ] {
        let reply = gw
            .call(
                gw.request(Method::GET, ADDRESS)
                    .header(name, value)
                    .body(empty())
                    .unwrap(),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{name}");
        assert_eq!(reply.error_code(), "InvalidInput");
    }
}

#[tokio::test]
async fn tool_plans_cap_a_tool_below_amazons_plan() {
    let gw = start_gateway(limited(
        "[ratelimit.plans.slow]\nmax_wait_ms = 100\noperations.\"ordersV0.getOrderAddress\" = { rate_per_second = 0.1, burst = 2 }\n[tools.test-tool]\nplan = \"slow\"\n",
    ))
    .await;
    let mut statuses = Vec::new();
    for _ in 0..5 {
        statuses.push(gw.get(ADDRESS).await.status);
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == StatusCode::OK).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(gw.sandbox.received("ordersV0.getOrderAddress").len(), 2);
}

async fn admin_get(url: &str, path: &str, token: Option<&str>, method: Method) -> Reply {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<spgate::proxy::body::Body>();
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("{url}{path}"));
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = client.request(req.body(empty()).unwrap()).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status,
        headers,
        body,
    }
}

#[tokio::test]
async fn the_admin_listener_shows_buckets_to_ops_reloads_plans_and_refuses_bad_files() {
    let gw = start_gateway(limited("")).await;
    let ops = "ops-token-0123456789abcdef0123456789";
    let security = "sec-token-0123456789abcdef0123456789";
    let tokens = [
        spgate::config::AdminToken {
            name: "ops".into(),
            role: spgate::config::AdminRole::Ops,
            token: spgate::secret::Secret::new(ops.into()),
        },
        spgate::config::AdminToken {
            name: "sec".into(),
            role: spgate::config::AdminRole::Security,
            token: spgate::secret::Secret::new(security.into()),
        },
    ];
    let cfg_path = gw.dir.path().join("spgate.toml");
    let mut env = spgate::config::MapEnv::default();
    env.vars
        .insert("SPGATE_LWA_CLIENT_SECRET".into(), CLIENT_SECRET.into());
    env.vars.insert("SPGATE_AUDIT_KEY".into(), AUDIT_KEY.into());
    env.vars.insert(
        "SPGATE_MASTER_KEY".into(),
        gw.master_key_b64.expose().clone(),
    );
    let admin = Arc::new(spgate::admin::Admin::new(
        gw.gateway.clone(),
        &tokens,
        Some(cfg_path.clone()),
        Arc::new(env),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let limits = spgate::server::ServerLimits {
        max_connections: 16,
        max_header_bytes: 16 * 1024,
        header_read_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
        write_timeout: Duration::from_secs(30),
        peers: spgate::server::peers::PeerLimits {
            max_connections_per_address: 16,
            unauthenticated_rate_per_second: 20,
            unauthenticated_burst: 100,
        },
    };
    tokio::spawn(spgate::server::serve(
        listener,
        admin,
        limits,
        std::future::pending(),
    ));

    assert_eq!(gw.get(ADDRESS).await.status, StatusCode::OK);
    assert_eq!(
        admin_get(&url, "/healthz", None, Method::GET).await.status,
        StatusCode::OK
    );
    assert_eq!(
        admin_get(&url, "/readyz", None, Method::GET).await.status,
        StatusCode::OK
    );
    let metrics = admin_get(&url, "/metrics", None, Method::GET).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    // Two admissions: the request's, and the createRestrictedDataToken call its RDT needed.
    assert!(
        text.contains("spgate_ratelimit_decisions_total{outcome=\"immediate\"} 2"),
        "{text}"
    );
    let path = format!("/admin/ratelimits?seller={SELLER}&operation=ordersV0.getOrderAddress");
    assert_eq!(
        admin_get(&url, &path, None, Method::GET).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_get(&url, &path, Some(security), Method::GET)
            .await
            .status,
        StatusCode::FORBIDDEN,
        "security cannot do ops' work"
    );
    let status = admin_get(&url, &path, Some(ops), Method::GET).await;
    assert_eq!(status.status, StatusCode::OK);
    let v = status.json();
    assert_eq!(v["buckets"][0]["burst"], 30);
    assert_eq!(v["buckets"][0]["tools"][0]["tool"], "test-tool");

    // An invalid file is refused and the running plans stay.
    std::fs::write(&cfg_path, "[ratelimit.plans.x]\ndefault = { share = 7 }\n").unwrap();
    let reply = admin_get(&url, "/admin/reload", Some(ops), Method::POST).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&reply.body).contains("ratelimit.plans.x.default"));
    assert_eq!(
        gw.get(ADDRESS).await.status,
        StatusCode::OK,
        "old plans still in force"
    );
    // A valid file takes effect without a restart: this tool is now capped at nothing left.
    let valid = format!(
        "{}\n[ratelimit.plans.none]\nmax_wait_ms = 0\noperations.\"ordersV0.getOrderAddress\" = {{ rate_per_second = 0.001, burst = 1 }}\n[tools.test-tool]\nplan = \"none\"\n",
        include_str!("../config/spgate.example.toml").replace("[tools.label-printer]\nplan = \"labels\"\n", "")
    );
    std::fs::write(&cfg_path, valid).unwrap();
    assert_eq!(
        admin_get(&url, "/admin/reload", Some(security), Method::POST)
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    let reply = admin_get(&url, "/admin/reload", Some(ops), Method::POST).await;
    assert_eq!(
        reply.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(
        gw.get(ADDRESS).await.status,
        StatusCode::OK,
        "the new plan's burst of 1"
    );
    assert_eq!(
        gw.get(ADDRESS).await.status,
        StatusCode::TOO_MANY_REQUESTS,
        "then nothing"
    );
    // The proxy listener serves no admin route.
    assert_eq!(
        gw.get("/admin/ratelimits").await.status,
        StatusCode::NOT_FOUND
    );
}

/// 80 requests/s, burst 100: fast enough to measure shares precisely in a few seconds.
const FAST: &str = "/shipping/v2/shipments/additionalInputs/schema?rateId=r&requestToken=t";
const FAST_RATE: f64 = 80.0;

/// Runs `workers` loops per key for `run`, each sending FAST as soon as the last answer came,
/// and returns, per key, the admitted (non-429) answers completed within `window` of the start.
async fn contend(
    gw: &Arc<TestGateway>,
    keys: &[String],
    workers: usize,
    run: Duration,
    window: (Duration, Duration),
) -> Vec<usize> {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (k, key) in keys.iter().enumerate() {
        for _ in 0..workers {
            let (gw, key) = (gw.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                let mut admitted = Vec::new();
                while start.elapsed() < run {
                    let req = http::Request::get(format!("{}{FAST}", gw.url))
                        .header("authorization", format!("Bearer {key}"))
                        .header("x-spgate-seller", SELLER)
                        .body(empty())
                        .unwrap();
                    let reply = gw.call(req).await;
                    if reply.status != StatusCode::TOO_MANY_REQUESTS {
                        admitted.push(start.elapsed());
                    }
                }
                (k, admitted)
            }));
        }
    }
    let mut counts = vec![0; keys.len()];
    for t in tasks {
        let (k, admitted) = t.await.unwrap();
        counts[k] += admitted
            .iter()
            .filter(|at| **at >= window.0 && **at < window.1)
            .count();
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tools_with_equal_shares_each_get_half_under_contention_and_a_lone_tool_gets_the_plan()
{
    let _serial = HEAVY.lock().await;
    let plans = "[ratelimit.plans.half]\nmax_wait_ms = 5000\ndefault = { share = 0.5 }\n[tools.test-tool]\nplan = \"half\"\n[tools.tool-b]\nplan = \"half\"\n";
    let gw = Arc::new(start_gateway(limited(plans)).await);
    let b =
        spgate::auth::caller::create_client(&*gw.store, "tool-b", "orders", vec![SELLER.into()], 0)
            .await
            .unwrap();
    let keys = vec![gw.key.clone(), b.key.expose().clone()];

    // A lone tool: the whole plan (after the burst), within 5%.
    let lone = contend(
        &gw,
        &keys[..1],
        8,
        Duration::from_millis(2600),
        (Duration::from_millis(600), Duration::from_millis(2600)),
    )
    .await;
    // The plan as the gateway enforces it: Amazon's rate less the spacing allowance.
    let op = spgate::catalog::Catalog::builtin()
        .by_key("shippingV2.getAdditionalInputs")
        .unwrap();
    let enforced = gw
        .gateway
        .limiter()
        .bucket_status(SELLER, op)
        .unwrap()
        .rate_per_second;
    assert!(
        enforced > 0.8 * FAST_RATE && enforced <= FAST_RATE,
        "{enforced}"
    );
    let plan = enforced * 2.0;
    assert!(
        lone[0] as f64 >= 0.95 * plan,
        "a lone tool got {} of {plan}",
        lone[0]
    );

    // Both tools, equal shares, both always waiting: half each, within 5 points.
    let both = contend(
        &gw,
        &keys,
        8,
        Duration::from_millis(3600),
        (Duration::from_millis(600), Duration::from_millis(3600)),
    )
    .await;
    let total = (both[0] + both[1]) as f64;
    for n in &both {
        let share = *n as f64 / total;
        assert!((0.45..=0.55).contains(&share), "shares {both:?}");
    }
    assert!(
        total >= 0.95 * enforced * 3.0,
        "together they use the plan: {total}"
    );
    assert_eq!(
        gw.sandbox.stats().throttled_total,
        0,
        "Amazon never had to answer 429"
    );
}

// === application-wide limits (issue 14) ===

const CATALOG_ITEM: &str = "catalogItems_2022-04-01.getCatalogItem";

/// `n` more sellers, known to the sandbox and the gateway's store, allowed to the test key.
fn many_seller_ids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("A{i:012}")).collect()
}

async fn add_sellers(gw: &TestGateway, sellers: &[String]) {
    let master = spgate::crypto::MasterKey::from_base64("k1", &gw.master_key_b64).unwrap();
    for seller in sellers {
        let refresh = format!("Atzr|synthetic-{seller}");
        gw.sandbox.add_seller(seller, &refresh);
        let sealed = master
            .seal_str(
                &spgate::secret::Secret::new(refresh),
                format!("refresh_token:{seller}").as_bytes(),
            )
            .unwrap();
        gw.store
            .put_seller(&spgate::store::SellerRecord {
                selling_partner_id: seller.clone(),
                region: spgate::store::Region::Eu,
                marketplaces: vec!["A1PA6795UKMFR9".into()],
                refresh_token_sealed: sealed,
                authorized_at: 1_700_000_000,
                reauthorize_by: 1_900_000_000,
                status: spgate::store::SellerStatus::Active,
            })
            .await
            .unwrap();
    }
}

/// One call per seller of an operation without a usage plan, 25 at a time, so every seller's
/// access token is cached before the measurement (a thousand token refreshes at once is another
/// test: the LWA circuit's).
async fn warm_tokens(gateways: &[Arc<TestGateway>], sellers: &[String]) {
    for (c, chunk) in sellers.chunks(25).enumerate() {
        let mut tasks = Vec::new();
        for (i, seller) in chunk.iter().enumerate() {
            let gw = gateways[(c * 25 + i) % gateways.len()].clone();
            let req = seller_get(&gw, seller, "/supplySources/2020-07-01/supplySources");
            tasks.push(tokio::spawn(async move { gw.call(req).await.status }));
        }
        for t in tasks {
            assert_eq!(t.await.unwrap(), StatusCode::OK);
        }
    }
}

fn seller_get(
    gw: &TestGateway,
    seller: &str,
    path: &str,
) -> http::Request<spgate::proxy::body::Body> {
    http::Request::get(format!("{}{path}", gw.url))
        .header("authorization", format!("Bearer {}", gw.key))
        .header("x-spgate-seller", seller)
        .body(empty())
        .unwrap()
}

/// Every seller calls getCatalogItem twice a second (its own plan: 2/s, burst 2) for `secs`
/// seconds, spread over the gateways; answers are counted by status.
async fn every_seller_twice_a_second(
    gateways: &[Arc<TestGateway>],
    sellers: &[String],
    secs: u64,
) -> (usize, usize) {
    let start = tokio::time::Instant::now();
    let mut tasks = Vec::new();
    for (i, seller) in sellers.iter().enumerate() {
        let gw = gateways[i % gateways.len()].clone();
        let seller = seller.clone();
        tasks.push(tokio::spawn(async move {
            // Each seller starts at its own offset within the first half second.
            let offset = Duration::from_micros((i as u64 * 499_993) % 500_000);
            let mut tick = tokio::time::interval_at(start + offset, Duration::from_millis(500));
            // A late answer delays the next call; it never makes the seller catch up in a burst.
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let (mut ok, mut refused, mut unreachable) = (0, 0, 0);
            for _ in 0..secs * 2 {
                tick.tick().await;
                let req = seller_get(
                    &gw,
                    &seller,
                    "/catalog/2022-04-01/items/B0SYNTH001?marketplaceIds=ATVPDKIKX0DER",
                );
                let reply = gw.call(req).await;
                match reply.status {
                    StatusCode::OK => ok += 1,
                    StatusCode::TOO_MANY_REQUESTS => refused += 1,
                    // A thousand upstream connections on a loaded test machine: a connect may
                    // time out (the request never reached the sandbox); counted, and bounded below.
                    StatusCode::BAD_GATEWAY => unreachable += 1,
                    other => panic!("{other} {}", String::from_utf8_lossy(&reply.body)),
                }
            }
            (ok, refused, unreachable)
        }));
    }
    let (mut ok, mut refused, mut unreachable) = (0, 0, 0);
    for t in tasks {
        let (o, r, u) = t.await.unwrap();
        ok += o;
        refused += r;
        unreachable += u;
    }
    assert!(
        unreachable * 20 <= ok + refused + unreachable,
        "{unreachable} calls could not reach the sandbox"
    );
    (ok, refused)
}

/// Arrivals at the sandbox in any one-second window never exceed the application's rate plus
/// the burst; returns how many arrived.
fn assert_any_second_within(gw: &TestGateway, op: &str, rate: f64, burst: f64) -> usize {
    let mut got: Vec<_> = gw.sandbox.received(op).into_iter().map(|r| r.at).collect();
    got.sort();
    let mut end = 0;
    for (i, start) in got.iter().enumerate() {
        while end < got.len() && got[end].duration_since(*start) < Duration::from_secs(1) {
            end += 1;
        }
        assert!(
            (end - i) as f64 <= rate + burst,
            "{} arrivals within one second from arrival {i} exceed {rate}/s + {burst}",
            end - i
        );
    }
    got.len()
}

fn catalog_options(sellers: &[String], extra: &str) -> Options {
    let mut opts = limited(extra);
    opts.key_sellers = sellers.to_vec();
    // One test client stands for a thousand sellers' tools: more connections from one address.
    opts.server_toml = "max_connections_per_address = 4000".into();
    opts
}

fn script_catalog_item(gw: &TestGateway) {
    gw.sandbox.script(
        CATALOG_ITEM,
        Script {
            status: StatusCode::OK,
            headers: Vec::new(),
            body: ScriptBody::Json(serde_json::json!({"asin": "B0SYNTH001"})),
            header_delay: Duration::ZERO,
            times: None,
        },
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sellers_together_stay_within_the_application_limit() {
    let _serial = HEAVY.lock().await;
    let sellers = many_seller_ids(1000);
    let gw = start_gateway(catalog_options(&sellers, "")).await;
    add_sellers(&gw, &sellers).await;
    script_catalog_item(&gw);
    let gateways = [Arc::new(gw)];
    warm_tokens(&gateways, &sellers).await;
    let started = std::time::Instant::now();
    let (ok, refused) = every_seller_twice_a_second(&gateways, &sellers, 3).await;
    let took = started.elapsed();
    let gw = &gateways[0];
    let stats = gw.sandbox.stats();
    eprintln!(
        "1,000 sellers x 2/s (6,000 calls, {took:?}): {ok} answered, {refused} refused by the gateway, upstream 429s {}; {:?}",
        stats.throttled_total,
        gw.gateway.limiter().app_status(None),
    );
    // Counted with the tolerance of a loaded machine (see `JITTER_429S`): arrivals in any
    // second within 5% of the application's 250/s + burst, and at most 1% of them answered
    // 429. Without the application bucket the sellers' 2,000/s reach the sandbox: eight times
    // the limit, most of it refused. Exact: `sellers_together_never_exceed_the_application_
    // wide_limit` in src/ratelimit/tests.rs, on tokio's paused clock.
    let arrived = assert_any_second_within(gw, CATALOG_ITEM, 250.0 * 1.05, 2.0);
    let throttled = usize::try_from(stats.throttled_total).unwrap();
    assert!(
        throttled * 100 <= arrived,
        "{throttled} of {arrived} answered 429"
    );
    assert_eq!(arrived, ok + throttled);
    // Not merely strict: most of the application's budget is used (after the spacing allowance).
    assert!(ok >= 300, "only {ok} admitted in 3 s");
    assert!(gw.gateway.limiter().metrics().app_limited > 0);
}

// === restarts (issue 14 item 2) ===

/// 40 concurrent calls of getOrderAddress (0.5/s, burst 30); the number the gateway let through.
/// A refusal is a 429, or the gateway's 503 when it gets no RDT in time (getOrderAddress is
/// restricted: a new process fetches an RDT first, from createRestrictedDataToken's bucket,
/// which a restarted process also starts spent); their number is printed.
async fn burst_of_forty(gw: &Arc<TestGateway>) -> usize {
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move { gw.get(ADDRESS).await }));
    }
    let (mut ok, mut unavailable) = (0, 0);
    for t in tasks {
        let reply = t.await.unwrap();
        let status = reply.status;
        let rdt_refused = status == StatusCode::SERVICE_UNAVAILABLE
            && reply.error_code() == "ServiceUnavailable"
            && reply.headers.contains_key("retry-after");
        assert!(
            status == StatusCode::OK || status == StatusCode::TOO_MANY_REQUESTS || rdt_refused,
            "{status} {}",
            String::from_utf8_lossy(&reply.body)
        );
        ok += usize::from(status == StatusCode::OK);
        unavailable += usize::from(rdt_refused);
    }
    eprintln!("burst of forty: {ok} answered, {unavailable} refused 503 (no RDT in time)");
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_abrupt_stop_restart_burst_does_not_spend_the_burst_twice() {
    let _serial = HEAVY.lock().await;
    let data = tempfile::tempdir().unwrap();
    let store = format!(
        "[store]\ntype = \"embedded\"\ndata_dir = {:?}\n",
        data.path().display().to_string()
    );
    let first = Arc::new(
        start_gateway(Options {
            store_toml: Some(store.clone()),
            ..limited("")
        })
        .await,
    );
    let ok_before = burst_of_forty(&first).await;
    assert!(ok_before >= 30, "the burst is used: {ok_before}");
    // An abrupt stop: the server task is cut, nothing is drained or written.
    let (sandbox, sandbox_url, master) = (
        first.sandbox.clone(),
        first.sandbox_url.clone(),
        first.master_key_b64.clone(),
    );
    if let Some(server) = &first.server {
        server.abort();
    }
    // (`first` stays in scope: it owns the sandbox's server.)
    let second = Arc::new(
        start_gateway(Options {
            store_toml: Some(store),
            shared_sandbox: Some((sandbox, sandbox_url)),
            master_key: Some(master),
            ..limited("")
        })
        .await,
    );
    // The restarted process needs an RDT first, and its createRestrictedDataToken bucket starts
    // spent too (past the 2.5 s wait right after a quick restart: the burst would meet only
    // 503s and say nothing of getOrderAddress's bucket). One call at a time until it has one.
    let (mut warm_ok, mut has_rdt) = (0, false);
    for _ in 0..20 {
        match second.get(ADDRESS).await.status {
            StatusCode::SERVICE_UNAVAILABLE => tokio::time::sleep(Duration::from_millis(500)).await,
            status => {
                (warm_ok, has_rdt) = (usize::from(status == StatusCode::OK), true);
                break;
            }
        }
    }
    assert!(has_rdt, "the restarted gateway got no RDT in 10 s");
    let ok_after = warm_ok + burst_of_forty(&second).await;
    // A restart that forgot the spent burst would send 30 more at once: about 30 answered 429
    // (tolerance: `JITTER_429S`; exact on tokio's paused clock in src/ratelimit/tests.rs,
    // `a_restarted_instance_does_not_hand_out_a_burst_it_already_spent`).
    let stats = second.sandbox.stats();
    assert!(
        stats.throttled_total <= JITTER_429S,
        "Amazon answered 429 {} times ({ok_before} before, {ok_after} after the restart)",
        stats.throttled_total
    );
    // The restarted gateway hands out only what the plan refilled since (0.5/s for a few s).
    assert!(ok_after <= 5, "{ok_after} let through after the restart");
}
