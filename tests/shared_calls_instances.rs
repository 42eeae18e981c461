//! Shared answers across gateway instances on one Redis (issue 14, item 4, review M3): a write
//! through one instance drops the answer another instance cached, and while an instance cannot
//! hear the others' writes (its pub/sub subscription is cut) it serves no cached answer.

mod common;

use std::time::Duration;

use common::cut::CutProxy;
use common::*;
use http::StatusCode;
use spgate::proxy::{SharedChannelEvent, SharedEvent, CACHE_HEADER};
use spgate::sandbox::Script;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

const GET_ITEM: &str = "catalogItems_2022-04-01.getCatalogItem";
const PATCH: &str = "listingsItems_2021-08-01.patchListingsItem";
const ITEM: &str = "/catalog/2022-04-01/items/B07N4M94X4?marketplaceIds=ATVPDKIKX0DER";

/// Two instances on one Redis (store and `[ratelimit.redis]`, the channel's) in front of one
/// sandbox, caching [`GET_ITEM`] for 300 s with no settle window; `a_redis` is the address
/// instance A reaches Redis at for `[ratelimit.redis]` (a [`CutProxy`], or Redis itself).
struct Pair {
    a: TestGateway,
    b: TestGateway,
    store: String,
}

async fn pair(a_redis: &str) -> Pair {
    pair_on(a_redis, "127.0.0.1:6379").await
}

/// [`pair`], with B reaching Redis at `b_redis` for `[ratelimit.redis]`.
async fn pair_on(a_redis: &str, b_redis: &str) -> Pair {
    pair_with(a_redis, b_redis, true, "").await
}

/// [`pair_on`], with B caching [`GET_ITEM`] or nothing (`b_caches`), and `b_upstream` in its
/// `[upstream]`.
async fn pair_with(a_redis: &str, b_redis: &str, b_caches: bool, b_upstream: &str) -> Pair {
    let store = redis_store_toml();
    let prefix = store
        .lines()
        .find_map(|l| l.strip_prefix("key_prefix = "))
        .unwrap()
        .to_string();
    let extra = |redis: &str, caches: bool| {
        let ttl = if caches {
            format!("[shared_calls.ttl_seconds]\n\"{GET_ITEM}\" = 300\n")
        } else {
            String::new()
        };
        format!(
            "[ratelimit.redis]\nurl = \"redis://{redis}\"\nkey_prefix = {prefix}\n[shared_calls]\nsettle_seconds = 0\n{ttl}"
        )
    };
    let a = start_gateway(Options {
        store_toml: Some(store.clone()),
        extra_toml: extra(a_redis, true),
        ..Options::default()
    })
    .await;
    let b = start_gateway(Options {
        store_toml: Some(store.clone()),
        extra_toml: extra(b_redis, b_caches),
        upstream_toml: b_upstream.to_string(),
        shared_sandbox: Some((a.sandbox.clone(), a.sandbox_url.clone())),
        master_key: Some(a.master_key_b64.clone()),
        ..Options::default()
    })
    .await;
    a.sandbox.script(
        GET_ITEM,
        Script::json(
            StatusCode::OK,
            serde_json::json!({"asin": "B07N4M94X4", "summaries": [{"itemName": "Synthetic pen"}]}),
        ),
    );
    a.sandbox.script(
        PATCH,
        Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"})),
    );
    Pair { a, b, store }
}

fn cache_header(reply: &Reply) -> Option<&str> {
    reply.headers.get(CACHE_HEADER).map(|v| v.to_str().unwrap())
}

/// A listings write for [`SELLER`] through `gw`.
async fn patch(gw: &TestGateway) -> Reply {
    let req = gw
        .request(
            http::Method::PATCH,
            &format!("/listings/2021-08-01/items/{SELLER}/SKU-1?marketplaceIds=ATVPDKIKX0DER"),
        )
        .header("content-type", "application/json")
        .body(full(r#"{"productType":"PEN","patches":[]}"#))
        .unwrap();
    gw.call(req).await
}

/// Waits (up to 20 s) until `done`.
async fn until(done: impl Fn() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(std::time::Instant::now() < deadline, "not within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits (up to 20 s) until the instance's invalidation channel is `live`.
async fn channel_until(gw: &TestGateway, live: bool) {
    until(|| gw.gateway.shared_calls().channel_live() == Some(live)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_through_one_instance_drops_the_answer_cached_on_another() {
    let Pair { a, b, store } = pair("127.0.0.1:6379").await;
    assert_eq!(a.gateway.shared_calls().channel_live(), Some(true));
    assert_eq!(b.gateway.shared_calls().channel_live(), Some(true));
    let upstream = || a.sandbox.received(GET_ITEM).len();
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    assert_eq!(upstream(), 1);

    // The tool writes through B, then reads through A at once: A asks Amazon again.
    let write = patch(&b).await;
    assert_eq!(write.status, StatusCode::OK, "{:?}", write.body);
    let after = a.get_for(SELLER, ITEM).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(cache_header(&after), Some("miss"));
    assert_eq!(upstream(), 2, "a fresh answer from Amazon");
    // And keeps that one.
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    assert_eq!(upstream(), 2);

    let (a_calls, b_calls) = (a.gateway.shared_calls(), b.gateway.shared_calls());
    // The write's end was announced before B answered; its start, in the background.
    assert!(b_calls.channel_counted(SharedChannelEvent::Published) >= 1);
    until(|| b_calls.channel_counted(SharedChannelEvent::Published) == 2).await;
    assert!(a_calls.channel_counted(SharedChannelEvent::Received) >= 1);
    assert!(a_calls.counted(SharedEvent::Invalidated) >= 1);
    assert_eq!(
        b_calls.channel_counted(SharedChannelEvent::Received),
        0,
        "its own announcements are not applied twice"
    );
    let mut metrics = String::new();
    a_calls.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_shared_calls_invalidation_live 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("spgate_shared_calls_invalidation_total{event=\"received\"}"),
        "{metrics}"
    );
    drop((a, b));
    clean_redis(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn while_the_subscription_is_cut_no_cached_answer_is_served() {
    let proxy = CutProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let Pair { a, b, store } = pair(&proxy.addr.to_string()).await;
    let upstream = || a.sandbox.received(GET_ITEM).len();
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));

    // A can no longer hear B's writes: it serves nothing from its cache, and caches nothing.
    proxy.cut();
    channel_until(&a, false).await;
    let calls = a.gateway.shared_calls();
    assert!(
        calls.counted(SharedEvent::Reset) >= 1,
        "the cached answer went"
    );
    assert_eq!(calls.cached().0, 0);
    assert_eq!(patch(&b).await.status, StatusCode::OK, "a write A misses");
    for _ in 0..3 {
        let reply = a.get_for(SELLER, ITEM).await;
        assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
        assert_eq!(cache_header(&reply), Some("miss"));
    }
    assert_eq!(upstream(), 4, "every read went to Amazon");
    assert_eq!(calls.counted(SharedEvent::Hit), 1);
    assert!(calls.counted(SharedEvent::NotLive) >= 3);
    assert!(calls.channel_counted(SharedChannelEvent::Lost) >= 1);
    let mut metrics = String::new();
    calls.render_metrics(&mut metrics);
    assert!(
        metrics.contains("spgate_shared_calls_invalidation_live 0"),
        "{metrics}"
    );

    // Back: the cache starts again from nothing.
    proxy.restore();
    channel_until(&a, true).await;
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    assert_eq!(upstream(), 5);
    drop((a, b));
    clean_redis(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_redis_did_not_take_is_announced_when_it_is_back() {
    let proxy = CutProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let Pair { a, b, store } = pair_on("127.0.0.1:6379", &proxy.addr.to_string()).await;
    let a_calls = a.gateway.shared_calls();
    channel_until(&a, true).await;
    // A has heard B's heartbeat (B is a peer whose silence closes A's cache).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    // B cannot reach Redis: its write goes to Amazon all the same, is kept to announce, and
    // its answer waits until A, no longer hearing B, has closed its cache.
    proxy.cut();
    assert_eq!(patch(&b).await.status, StatusCode::OK);
    let b_calls = b.gateway.shared_calls();
    assert!(b_calls.channel_counted(SharedChannelEvent::PublishFailed) >= 1);
    // The tool reads through A right after the write's answer: no pre-write answer.
    let after = a.get_for(SELLER, ITEM).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        cache_header(&after),
        Some("miss"),
        "no stale hit after the write"
    );
    assert_eq!(b_calls.channel_counted(SharedChannelEvent::Held), 1);
    assert_eq!(a.sandbox.received(GET_ITEM).len(), 2);
    assert!(a_calls.channel_counted(SharedChannelEvent::PeerSilent) >= 1);
    let mut metrics = String::new();
    b_calls.render_metrics(&mut metrics);
    for event in ["publish_failed", "held", "heartbeat_withheld"] {
        assert!(
            metrics.contains(&format!(
                "spgate_shared_calls_invalidation_total{{event=\"{event}\"}}"
            )),
            "{metrics}"
        );
    }
    // Back: B sends it, its heartbeat comes back, A opens again from nothing.
    proxy.restore();
    until(|| b_calls.channel_counted(SharedChannelEvent::Republished) >= 1).await;
    until(|| a_calls.channel_counted(SharedChannelEvent::Received) >= 1).await;
    channel_until(&a, true).await;
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    assert_eq!(a.sandbox.received(GET_ITEM).len(), 3);
    drop((a, b));
    clean_redis(&store).await;
}

/// A TCP proxy to Redis that can freeze: bytes are held, connections stay open (a stalled
/// network path, which no connection error reports).
struct FreezeProxy {
    addr: std::net::SocketAddr,
    flowing: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl FreezeProxy {
    async fn start() -> FreezeProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (flowing, watching) = watch::channel(true);
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let Ok(outbound) = tokio::net::TcpStream::connect("127.0.0.1:6379").await else {
                    continue;
                };
                let (in_read, in_write) = inbound.into_split();
                let (out_read, out_write) = outbound.into_split();
                tokio::spawn(pump(in_read, out_write, watching.clone()));
                tokio::spawn(pump(out_read, in_write, watching.clone()));
            }
        });
        FreezeProxy {
            addr,
            flowing,
            task,
        }
    }
}

impl Drop for FreezeProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut flowing: watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if flowing.wait_for(|f| *f).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_that_stops_answering_closes_the_cache_without_a_connection_error() {
    let proxy = FreezeProxy::start().await;
    let Pair { a, b, store } = pair(&proxy.addr.to_string()).await;
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    // Nothing reaches A from Redis any more, and nothing says so but the silence.
    proxy.flowing.send_replace(false);
    assert_eq!(
        patch(&b).await.status,
        StatusCode::OK,
        "a write A cannot hear"
    );
    channel_until(&a, false).await;
    let reply = a.get_for(SELLER, ITEM).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(cache_header(&reply), Some("miss"));
    assert_eq!(a.sandbox.received(GET_ITEM).len(), 2);
    proxy.flowing.send_replace(true);
    channel_until(&a, true).await;
    drop((a, b));
    clean_redis(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_caches_nothing_still_announces_its_writes() {
    let Pair { a, b, store } = pair_with("127.0.0.1:6379", "127.0.0.1:6379", false, "").await;
    let b_calls = b.gateway.shared_calls();
    assert_eq!(b_calls.channel_live(), None, "B subscribes to nothing");
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    assert_eq!(patch(&b).await.status, StatusCode::OK);
    assert_eq!(
        cache_header(&a.get_for(SELLER, ITEM).await),
        Some("miss"),
        "B's write reached A"
    );
    assert!(b_calls.channel_counted(SharedChannelEvent::Published) >= 1);
    assert_eq!(a.sandbox.received(GET_ITEM).len(), 2);
    drop((a, b));
    clean_redis(&store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_ends_in_an_error_is_announced_before_the_error_goes_back() {
    let proxy = CutProxy::start("127.0.0.1:6379".parse().unwrap()).await;
    let b_redis = proxy.addr.to_string();
    let upstream = "header_timeout_ms = 500\ntotal_timeout_ms = 600";
    let Pair { a, b, store } = pair_with("127.0.0.1:6379", &b_redis, true, upstream).await;
    // Amazon takes the write but does not answer in B's time.
    a.sandbox.script(
        PATCH,
        Script {
            header_delay: Duration::from_secs(2),
            ..Script::json(StatusCode::OK, serde_json::json!({"status": "ACCEPTED"}))
        },
    );
    channel_until(&a, true).await;
    // A has heard B's heartbeat.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("miss"));
    assert_eq!(cache_header(&a.get_for(SELLER, ITEM).await), Some("hit"));
    // B cannot announce it: its error waits, as an answer would, until A has closed.
    proxy.cut();
    let write = patch(&b).await;
    assert!(write.status.is_server_error(), "{:?}", write.status);
    let b_calls = b.gateway.shared_calls();
    assert!(b_calls.channel_counted(SharedChannelEvent::PublishFailed) >= 1);
    let after = a.get_for(SELLER, ITEM).await;
    assert_eq!(after.status, StatusCode::OK);
    assert_eq!(
        cache_header(&after),
        Some("miss"),
        "no stale hit after the error"
    );
    assert_eq!(b_calls.channel_counted(SharedChannelEvent::Held), 1);
    drop((a, b));
    clean_redis(&store).await;
}
