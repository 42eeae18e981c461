//! Forward-proxy mode (`[forward_proxy]`): a client that trusts the operator's CA tunnels to
//! Amazon's hosts through the gateway and is served by the gateway itself; CONNECT to any other
//! host or port is refused (403, SP-API shape, counted, aggregated in the audit log) and never
//! tunnelled; plain-HTTP absolute-form requests keep working.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::{start_gateway, Options, SELLER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use spgate::auth::drop_in;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const ORDERS: &str = "/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9&CreatedAfter=2020-01-01";

/// A gateway with the forward proxy on, its CA made by `spgate ca init`'s code, and the CA
/// certificate (DER) a client trusts.
async fn forward_gateway(
    server: &str,
    extra: &str,
) -> (
    common::TestGateway,
    tempfile::TempDir,
    rustls::pki_types::CertificateDer<'static>,
) {
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = spgate::server::mint::ca_init(dir.path()).unwrap();
    let gw = start_gateway(Options {
        server_toml: server.into(),
        files: vec![cert.clone(), key.clone()],
        extra_toml: format!(
            "[forward_proxy]\nenabled = true\nca_cert_file = {:?}\nca_key_file = {:?}\n{extra}",
            cert.display().to_string(),
            key.display().to_string(),
        ),
        ..Options::default()
    })
    .await;
    let der = rustls::pki_types::CertificateDer::from_pem_file(&cert).unwrap();
    (gw, dir, der)
}

/// Sends `CONNECT target` on a new connection; returns the status line's code, the response
/// head, and the connection.
async fn connect(gw: &common::TestGateway, target: &str) -> (u16, String, TcpStream) {
    let mut tcp = TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            tcp.read(&mut byte).await.unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let code = head[9..12].parse().unwrap();
    (code, head, tcp)
}

/// An HTTP/1.1 client over TLS inside a tunnel to `host`, trusting only `ca`.
async fn tunnel(
    gw: &common::TestGateway,
    host: &str,
    ca: &rustls::pki_types::CertificateDer<'static>,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (code, head, tcp) = connect(gw, &format!("{host}:443")).await;
    assert_eq!(code, 200, "{head}");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("the minted certificate verifies against the CA for this host");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Reads a refused CONNECT's body to the connection's end: SP-API's error shape, 403's code,
/// a message saying `why`.
async fn refusal(tcp: &mut TcpStream, why: &str) {
    let mut body = Vec::new();
    let _ = tcp.read_to_end(&mut body).await;
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["errors"][0]["code"], "Unauthorized", "{json}");
    let message = json["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{json}");
}

async fn answer(
    send: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (StatusCode, serde_json::Value) {
    send.ready().await.expect("the connection stays open");
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_amazons_hosts_is_served_by_the_gateway_token_endpoint_included() {
    let (gw, _dir, ca) = forward_gateway("", "").await;
    let client = gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*gw.store, &client.id, SELLER)
        .await
        .unwrap();

    // LWA's host: the drop-in token endpoint answers, as Amazon's would.
    let mut lwa = tunnel(&gw, "api.amazon.com", &ca).await;
    let form = format!(
        "grant_type=refresh_token&refresh_token={}&client_id={}&client_secret={}",
        creds.refresh_token.expose(),
        creds.lwa_client_id,
        creds.client_secret.expose()
    );
    let (status, token) = answer(
        &mut lwa,
        Request::post("/auth/o2/token")
            .header("host", "api.amazon.com")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(Full::new(Bytes::from(form)))
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{token}");
    let access = token["access_token"].as_str().unwrap().to_owned();

    // SP-API's host of another region than the seller's (EU): served from the seller's region.
    let mut sp = tunnel(&gw, "sellingpartnerapi-na.amazon.com", &ca).await;
    for _ in 0..2 {
        // Two requests on one tunnel: keep-alive inside it.
        let (status, orders) = answer(
            &mut sp,
            Request::get(ORDERS)
                .header("host", "sellingpartnerapi-na.amazon.com")
                .header("x-amz-access-token", &access)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{orders}");
        assert!(orders["payload"]["Orders"].is_array(), "{orders}");
    }
    let metrics = {
        let mut out = String::new();
        spgate::server::forward::render_metrics(&mut out);
        out
    };
    assert!(
        metrics.contains("spgate_forward_tunnels_total"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_any_other_host_or_port_is_refused_never_tunnelled_and_aggregated() {
    let audit = tempfile::tempdir().unwrap();
    let (gw, _dir, _ca) = forward_gateway(
        "",
        &format!(
            "[audit]\ndir = {:?}\ninstance = \"fwd\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
            audit.path().display().to_string()
        ),
    )
    .await;
    // The sandbox listens on loopback: a tunnel to it (or anywhere) would be an open proxy.
    let sandbox = gw.sandbox_url.trim_start_matches("http://").to_owned();
    for target in [
        "example.com:443",
        sandbox.as_str(),
        "sellingpartnerapi-na.amazon.com:8443",
        "sellingpartnerapi-na.amazon.com.evil.example:443",
    ] {
        let (code, head, mut tcp) = connect(&gw, target).await;
        assert_eq!(code, 403, "{target}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{head}");
        assert!(lower.contains("x-amzn-requestid: "), "{head}");
        refusal(&mut tcp, "refused").await;
    }
    let records = gw.gateway.auditor().noise().take(true);
    let counted: Vec<_> = records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .filter(|r| r["reason"] == "connect_refused")
        .collect();
    assert_eq!(counted.len(), 1, "one aggregate per address: {counted:?}");
    assert_eq!(counted[0]["count"], 4, "{counted:?}");
    let mut metrics = String::new();
    spgate::server::forward::render_metrics(&mut metrics);
    let refused: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("spgate_forward_connect_refused_total "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(refused >= 4, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_forward_proxy_connect_is_refused_and_absolute_form_still_works() {
    let gw = start_gateway(Options::default()).await;
    let (code, head, mut tcp) = connect(&gw, "sellingpartnerapi-na.amazon.com:443").await;
    assert_eq!(code, 403, "{head}");
    refusal(&mut tcp, "forward_proxy").await;

    // HTTP_PROXY style: the absolute URL names Amazon's host; the gateway serves the path.
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://sellingpartnerapi-na.amazon.com{ORDERS}"))
        .header("authorization", format!("Bearer {}", gw.key))
        .header("x-spgate-seller", SELLER)
        .body(Full::<Bytes>::default())
        .unwrap();
    let tcp = TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let (status, orders) = answer(&mut send, req).await;
    assert_eq!(status, 200, "{orders}");
    assert!(orders["payload"]["Orders"].is_array(), "{orders}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_holds_its_connections_slot_and_the_gateway_authenticates_inside() {
    let (gw, _dir, ca) = forward_gateway("max_connections_per_address = 1\n", "").await;
    let mut sp = tunnel(&gw, "sellingpartnerapi-eu.amazon.com", &ca).await;
    // The tunnel's connection is the address's one slot: a second one is closed at accept.
    let mut second = TcpStream::connect(gw.url.trim_start_matches("http://"))
        .await
        .unwrap();
    let _ = second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        second.read_to_end(&mut buf),
    )
    .await
    .expect("closed at once")
    .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    // Inside, the gateway authenticates as on its own listener: no credential, 401.
    let (status, body) = answer(
        &mut sp,
        Request::get(ORDERS)
            .header("host", "sellingpartnerapi-eu.amazon.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[test]
fn spgate_ca_init_writes_the_key_0600_and_the_certificate_0644_and_never_overwrites() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ca");
    let run = || {
        std::process::Command::new(env!("CARGO_BIN_EXE_spgate"))
            .args(["ca", "init", "--out"])
            .arg(&out)
            .output()
            .unwrap()
    };
    let first = run();
    let stdout = String::from_utf8_lossy(&first.stdout);
    assert!(
        first.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&first.stderr)
    );
    assert!(
        stdout.contains("[forward_proxy]"),
        "prints how to enable it: {stdout}"
    );
    assert!(stdout.contains("NODE_EXTRA_CA_CERTS="), "{stdout}");
    let (cert, key) = (
        out.join("spgate-forward-ca.pem"),
        out.join("spgate-forward-ca.key"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&cert), 0o644);
    }
    let before = std::fs::read(&key).unwrap();
    let again = run();
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(&key).unwrap(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_is_closed_by_the_drain_on_shutdown() {
    let (mut gw, _dir, ca) = forward_gateway("", "").await;
    let mut sp = tunnel(&gw, "sellingpartnerapi-na.amazon.com", &ca).await;
    let (status, _) = answer(
        &mut sp,
        Request::get(ORDERS)
            .header("host", "sellingpartnerapi-na.amazon.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // The tunnel is idle and kept alive: the drain closes it instead of waiting out its timeout
    // (the test gateway's drain_timeout_seconds is 5).
    let started = std::time::Instant::now();
    tokio::time::timeout(std::time::Duration::from_secs(4), gw.stop())
        .await
        .expect("the server stopped without waiting for the tunnel")
        .unwrap();
    assert!(started.elapsed() < std::time::Duration::from_secs(4));
    let req = Request::get(ORDERS).body(Full::default()).unwrap();
    let sent = tokio::time::timeout(std::time::Duration::from_secs(2), sp.send_request(req)).await;
    assert!(
        matches!(sent, Ok(Err(_))),
        "the tunnel's connection was closed: {sent:?}"
    );
}
