//! Document downloads follow only the outbound policy (issue 11 item 4): an upstream answer that
//! names a loopback, private or link-local address, plain http, a host outside the allowlist, or
//! a redirect is refused with a clear SP-API error, audited with a reason code and counted on
//! `/metrics`. No test traffic leaves 127.0.0.0/8: every refused URL is refused before a
//! connection is made, or resolves to loopback.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use http::{Method, StatusCode};
use spgate::sandbox::Script;

const DOCUMENT: &str = "/reports/2021-06-30/documents/DOC-SSRF";
const OPERATION: &str = "reports_2021-06-30.getReportDocument";

fn audited(extra: &str, audit_dir: &Path) -> Options {
    Options {
        extra_toml: format!(
            "[audit]\ndir = {:?}\ninstance = \"test\"\nkey = {{ env = \"AUDIT_KEY\" }}\n{extra}",
            audit_dir.display().to_string(),
        ),
        ..Options::default()
    }
}

/// Makes the sandbox's getReportDocument name `url`, then follows the gateway's link to it.
async fn follow(gw: &TestGateway, url: &str) -> Reply {
    gw.sandbox.script(
        OPERATION,
        Script::json(
            StatusCode::OK,
            serde_json::json!({ "reportDocumentId": "DOC-SSRF", "url": url }),
        ),
    );
    let reply = gw.get(DOCUMENT).await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    let link = reply.json()["url"].as_str().unwrap().to_string();
    assert!(
        link.starts_with(&gw.url),
        "the URL is the gateway's: {link}"
    );
    assert!(!link.contains(url), "the upstream URL is sealed");
    gw.get(&link[gw.url.len()..]).await
}

/// The audit reasons of the document downloads (requests without an operation).
async fn download_reasons(gw: &TestGateway, dir: &Path) -> Vec<String> {
    audit_records(gw, dir)
        .await
        .into_iter()
        .filter(|r| r["kind"] == "request" && r["operation"] == "documents.download")
        .map(|r| r["reason"].as_str().unwrap_or("").to_string())
        .collect()
}

/// The admin listener of `gw` on 127.0.0.1:0 (its `/metrics` is what an SSRF would read).
async fn admin(gw: &TestGateway) -> String {
    let admin = Arc::new(spgate::admin::Admin::new(
        gw.gateway.clone(),
        &[],
        None,
        Arc::new(spgate::config::MapEnv::default()),
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(spgate::server::serve(
        listener,
        admin,
        spgate::server::ServerLimits {
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
        },
        std::future::pending(),
    ));
    url
}

async fn plain_get(url: &str) -> Reply {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<spgate::proxy::body::Body>();
    let req = http::Request::builder()
        .method(Method::GET)
        .uri(url)
        .body(empty())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let (parts, body) = resp.into_parts();
    let body = http_body_util::BodyExt::collect(body)
        .await
        .unwrap()
        .to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

fn assert_refused(reply: &Reply, url: &str) {
    assert_eq!(
        reply.status,
        StatusCode::BAD_GATEWAY,
        "{url}: {:?}",
        reply.body
    );
    assert_eq!(reply.error_code(), "InternalFailure", "{url}");
    let message = reply.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        message.contains("refused") || message.contains("redirect"),
        "{url}: a clear message: {message}"
    );
    assert!(
        !String::from_utf8_lossy(&reply.body).contains("spgate_"),
        "{url}: nothing of the target reaches the tool"
    );
}

#[tokio::test]
async fn urls_to_loopback_private_and_link_local_addresses_or_over_http_are_refused_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        sandbox_documents: false,
        ..audited(
            // A name that resolves to loopback, allowed by name: the resolver must refuse it.
            "[outbound]\ndocument_hosts = [\"*.s3.amazonaws.com\", \"localhost\"]\n",
            dir.path(),
        )
    })
    .await;
    let admin_url = admin(&gw).await;
    let cases = [
        // The gateway's own admin listener (the finding).
        (format!("{admin_url}/metrics"), "document_host_not_allowed"),
        (format!("{}/healthz", gw.url), "document_host_not_allowed"),
        ("https://127.0.0.1/x".into(), "document_host_not_allowed"),
        ("https://10.0.0.1/x".into(), "document_host_not_allowed"),
        ("https://172.16.0.1/x".into(), "document_host_not_allowed"),
        ("https://192.168.1.1/x".into(), "document_host_not_allowed"),
        (
            "http://169.254.169.254/latest/meta-data/".into(),
            "document_host_not_allowed",
        ),
        ("https://[::1]/x".into(), "document_host_not_allowed"),
        ("https://[fc00::1]/x".into(), "document_host_not_allowed"),
        (
            "https://[::ffff:127.0.0.1]/x".into(),
            "document_host_not_allowed",
        ),
        (
            "https://evil.example.com/report".into(),
            "document_host_not_allowed",
        ),
        (
            "http://bucket.s3.amazonaws.com/report".into(),
            "document_url_not_https",
        ),
        (
            "https://bucket.s3.amazonaws.com:8443/report".into(),
            "document_port_not_allowed",
        ),
        (
            "https://user@bucket.s3.amazonaws.com/report".into(),
            "document_url_invalid",
        ),
        (
            "https://localhost/report".into(),
            "document_address_not_public",
        ),
    ];
    for (url, _) in &cases {
        let reply = follow(&gw, url).await;
        assert_refused(&reply, url);
    }
    let reasons = download_reasons(&gw, dir.path()).await;
    let expected: Vec<&str> = cases.iter().map(|(_, r)| *r).collect();
    assert_eq!(reasons, expected);

    let metrics = plain_get(&format!("{admin_url}/metrics")).await;
    let text = String::from_utf8_lossy(&metrics.body).to_string();
    for line in [
        "spgate_outbound_refused_total{reason=\"host_not_allowed\"} 11",
        "spgate_outbound_refused_total{reason=\"url_not_https\"} 1",
        "spgate_outbound_refused_total{reason=\"port_not_allowed\"} 1",
        "spgate_outbound_refused_total{reason=\"url_invalid\"} 1",
        "spgate_outbound_refused_total{reason=\"address_not_public\"} 1",
        // The header allowlist's counter sits beside it (each test request's `Host` is dropped).
        "spgate_headers_dropped_total{direction=\"to_upstream\"} ",
    ] {
        assert!(text.contains(line), "{line} in:\n{text}");
    }
}

#[tokio::test]
async fn the_sandboxs_documents_download_only_when_the_config_opts_its_loopback_address_in() {
    let doc = "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING";
    let link = |reply: &Reply| {
        let url = reply.json()["url"].as_str().unwrap().to_string();
        url
    };
    let opted_in = start_gateway(Options::default()).await;
    let url = link(&opted_in.get(doc).await);
    let got = opted_in.get(&url[opted_in.url.len()..]).await;
    assert_eq!(got.status, StatusCode::OK, "{:?}", got.body);
    assert!(got.body.len() > 100);

    let dir = tempfile::tempdir().unwrap();
    let gw = start_gateway(Options {
        sandbox_documents: false,
        ..audited("", dir.path())
    })
    .await;
    let url = link(&gw.get(doc).await);
    let refused = gw.get(&url[gw.url.len()..]).await;
    assert_refused(&refused, &url);
    assert_eq!(
        download_reasons(&gw, dir.path()).await,
        ["document_host_not_allowed"]
    );
    assert_eq!(gw.gateway.outbound().refused("host_not_allowed"), 1);
}

/// A document host on loopback (opted in) that answers every request with `status` and a
/// `Location` header.
async fn answering_host(status: StatusCode, to: &str) -> std::net::SocketAddr {
    use hyper::service::service_fn;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let to = to.to_string();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let to = to.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |_req| {
                    let to = to.clone();
                    async move {
                        http::Response::builder()
                            .status(status)
                            .header("location", to)
                            .body(http_body_util::Full::new(bytes::Bytes::new()))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

/// A gateway that may fetch from `host` only (audited in `dir`), and its answer to a document
/// link that points there.
async fn via_loopback_host(host: std::net::SocketAddr, dir: &Path) -> (TestGateway, Reply) {
    let gw = start_gateway(Options {
        sandbox_documents: false,
        ..audited(&format!("[outbound]\nallow_loopback = [\"{host}\"]\n"), dir)
    })
    .await;
    let reply = follow(&gw, &format!("http://{host}/report")).await;
    (gw, reply)
}

#[tokio::test]
async fn a_redirect_from_a_document_host_is_refused_not_followed() {
    let dir = tempfile::tempdir().unwrap();
    let gw_admin_target = "http://127.0.0.1:9/metrics";
    let host = answering_host(StatusCode::FOUND, gw_admin_target).await;
    let (gw, reply) = via_loopback_host(host, dir.path()).await;
    assert_refused(&reply, "redirect");
    assert!(reply.headers.get("location").is_none());
    assert_eq!(
        download_reasons(&gw, dir.path()).await,
        ["document_redirect_refused"]
    );
    assert_eq!(gw.gateway.outbound().refused("redirect_refused"), 1);
}

#[tokio::test]
async fn a_document_host_that_fails_is_a_clear_error_counted_apart_from_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let host = answering_host(StatusCode::INTERNAL_SERVER_ERROR, "/").await;
    let (gw, reply) = via_loopback_host(host, dir.path()).await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    assert_eq!(
        download_reasons(&gw, dir.path()).await,
        ["document_upstream_status"]
    );
    let mut text = String::new();
    gw.gateway.outbound().render_metrics(&mut text);
    assert!(
        text.contains("spgate_outbound_failed_total{reason=\"upstream_status\"} 1"),
        "{text}"
    );
    assert!(!text.contains("spgate_outbound_refused_total{"), "{text}");
}

/// A listener that counts the connections made to it and closes each at once: the proxy that
/// `HTTP_PROXY`, `HTTPS_PROXY` and `ALL_PROXY` name. Any connection means a proxy was used.
fn recording_proxy() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(stream);
        }
    });
    (port, seen)
}

/// reqwest reads `HTTP(S)_PROXY`/`ALL_PROXY` unless told not to; the gateway's clients are
/// told not to. A `spgate demo` process (gateway and sandbox, LWA and document host on
/// loopback over http) runs with every proxy variable naming a listener that records
/// connections: the token request (LWA) and the document download go direct, and the
/// listener sees nothing. (The variables are set on the child only: tests never change their
/// own process's environment.)
#[tokio::test]
async fn proxies_named_by_the_environment_are_not_used_for_lwa_or_document_downloads() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    use std::sync::atomic::Ordering;

    let (proxy_port, seen) = recording_proxy();
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    let mut cmd = Command::new(common::process::BIN);
    cmd.args(["demo", "--listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0"])
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env(var, &proxy);
    }
    let mut child = cmd.spawn().unwrap();
    let stdout = child.stdout.take().unwrap();
    let _reaper = common::process::Reaper(vec![child]);
    let mut lines = BufReader::new(stdout).lines().map_while(Result::ok);
    let export = lines
        .find(|l| l.starts_with("export SPGATE_URL="))
        .expect("the demo prints its variables");
    assert!(
        lines.any(|l| l.contains("Serving until Ctrl-C")),
        "the demo serves"
    );
    // Keep draining the demo's output so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    let vars: std::collections::HashMap<String, String> = export
        .trim_start_matches("export ")
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let (url, key, seller) = (
        &vars["SPGATE_URL"],
        &vars["SPGATE_KEY"],
        &vars["SPGATE_SELLER"],
    );
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Empty<bytes::Bytes>>();
    let get = |target: String| {
        let client = client.clone();
        let req = http::Request::get(target)
            .header("authorization", format!("Bearer {key}"))
            .header("x-spgate-seller", seller.as_str())
            .body(http_body_util::Empty::new())
            .unwrap();
        async move {
            let resp = client.request(req).await.unwrap();
            let status = resp.status();
            let body = http_body_util::BodyExt::collect(resp.into_body())
                .await
                .unwrap()
                .to_bytes();
            (status, body)
        }
    };
    // A restricted document: an access token from LWA, then an RDT, then the link.
    let (status, body) = get(format!(
        "{url}/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING"
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let doc: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let link = doc["url"].as_str().unwrap().to_string();
    let (status, body) = get(link).await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).starts_with("order-id\t"));
    assert_eq!(seen.load(Ordering::SeqCst), 0, "a proxy was used");
}
