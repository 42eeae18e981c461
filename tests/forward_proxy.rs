//! Forward-proxy mode (`[forward_proxy]`): a client that trusts the operator's CA tunnels to
//! Amazon's hosts through the gateway and is served by the gateway itself (accepted tunnels
//! audited, the outer connection's client certificate carried inside); CONNECT to any other
//! host, port or spelling, on HTTP/2 or inside a tunnel is refused (SP-API shape, counted,
//! aggregated in the audit log) and never tunnelled; an expired CA answers a clear 500, counted;
//! a TLS handshake that never finishes inside a tunnel is cut at the header deadline; a reload
//! may not change the section; `spgate ca init` writes its key whole or not at all; plain-HTTP
//! absolute-form requests keep working.

mod common;
mod pki;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{start_gateway, Options, SELLER};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::CertificateDer;
use spgate::auth::drop_in;
use spgate::server::forward::{Forward, RawForwardProxy};
use spgate::server::tls::{ClientPins, TlsConfig, TlsListener};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ORDERS: &str = "/orders/v0/orders?MarketplaceIds=A1PA6795UKMFR9&CreatedAfter=2020-01-01";

/// How a test's forward-proxy listener is set up.
struct Setup {
    /// Connections per address (the tunnel holds its connection's slot).
    per_address: usize,
    /// The header deadline (also the deadline of the TLS handshake inside a tunnel).
    header_timeout: Duration,
    /// The CA's lifetime (default: `spgate ca init`'s).
    ca_validity: Option<Duration>,
    /// An audit log in this directory.
    audit: Option<PathBuf>,
    /// TLS on the listener (HTTP/2 over ALPN, client certificates), from a test CA.
    tls: Option<(pki::Ca, pki::Issued, ClientPins)>,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            per_address: 100,
            header_timeout: Duration::from_secs(10),
            ca_validity: None,
            audit: None,
            tls: None,
        }
    }
}

/// A gateway whose own listener answers CONNECT as `spgate serve` does with `[forward_proxy]`,
/// its CA made by `spgate ca init`'s code; this test's [`Forward`] (its counters are this test's
/// alone).
struct Fwd {
    gw: common::TestGateway,
    /// `127.0.0.1:<port>` of the forward-proxy listener.
    addr: String,
    forward: Arc<Forward>,
    /// The CA certificate (DER) a client trusts.
    ca: CertificateDer<'static>,
    ca_cert: PathBuf,
    ca_key: PathBuf,
    /// The TLS listener's test CA, when it has TLS.
    listener_ca: Option<CertificateDer<'static>>,
    /// When a CA of `Setup::ca_validity` expires.
    ca_expires: Option<tokio::time::Instant>,
    _ca_dir: tempfile::TempDir,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Drop for Fwd {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

impl Fwd {
    async fn start(setup: Setup) -> Fwd {
        Fwd::start_with(setup, Options::default()).await
    }

    async fn start_with(setup: Setup, options: Options) -> Fwd {
        use rustls::pki_types::pem::PemObject;
        let dir = tempfile::tempdir().unwrap();
        let ca_expires = setup.ca_validity.map(|v| tokio::time::Instant::now() + v);
        let (cert, key) = match setup.ca_validity {
            Some(v) => spgate::server::mint::ca_init_valid_for(dir.path(), v).unwrap(),
            None => spgate::server::mint::ca_init(dir.path()).unwrap(),
        };
        let audit = setup.audit.as_ref().map_or(String::new(), |d| {
            format!(
                "[audit]\ndir = {:?}\ninstance = \"fwd\"\nkey = {{ env = \"AUDIT_KEY\" }}\n",
                d.display().to_string()
            )
        });
        let gw = start_gateway(Options {
            files: vec![cert.clone(), key.clone()],
            extra_toml: format!(
                "[forward_proxy]\nenabled = true\nca_cert_file = {:?}\nca_key_file = {:?}\n{audit}{}",
                cert.display().to_string(),
                key.display().to_string(),
                options.extra_toml,
            ),
            ..options
        })
        .await;
        let config = RawForwardProxy {
            enabled: Some(true),
            ca_cert_file: Some(cert.clone()),
            ca_key_file: Some(key.clone()),
            ..RawForwardProxy::default()
        }
        .resolve(&spgate::config::ProcessEnv)
        .unwrap()
        .unwrap();
        let forward = Arc::new(Forward::load(&config, &spgate::config::ProcessEnv).unwrap());
        let listener_ca = setup.tls.as_ref().map(|(ca, _, _)| ca.der());
        let tls = setup.tls.map(|(ca, server, pins)| {
            gw.gateway.set_client_pins(pins.clone());
            let config = TlsConfig {
                cert_file: server.cert_file.clone(),
                key_file: server.key_file.clone(),
                client_ca_file: Some(ca.cert_file.clone()),
                require_client_cert: false,
                reload_interval: Duration::from_secs(60),
            };
            TlsListener::load("proxy", config, pins, Arc::new(spgate::config::ProcessEnv)).unwrap()
        });
        let limits = spgate::server::ServerLimits {
            max_connections: 100,
            max_header_bytes: 32 * 1024,
            header_read_timeout: setup.header_timeout,
            drain_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(30),
            peers: spgate::server::peers::PeerLimits {
                max_connections_per_address: setup.per_address,
                unauthenticated_rate_per_second: 1000,
                unauthenticated_burst: 1000,
            },
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(spgate::server::serve_with(
            listener,
            gw.gateway.clone(),
            limits,
            spgate::server::Extras {
                tls,
                forward: Some(forward.clone()),
            },
            async {
                let _ = rx.await;
            },
        ));
        let ca = CertificateDer::from_pem_file(&cert).unwrap();
        Fwd {
            gw,
            addr,
            forward,
            ca,
            ca_cert: cert,
            ca_key: key,
            listener_ca,
            ca_expires,
            _ca_dir: dir,
            stop: Some(tx),
            server: Some(server),
        }
    }

    /// Stops the listener and waits for its drain.
    async fn stop(&mut self) -> std::io::Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        match self.server.take() {
            Some(h) => h.await.expect("server task"),
            None => Ok(()),
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        spgate::server::forward::render_metrics(Some(&self.forward), &mut out);
        out
    }

    /// A metric's value in [`Fwd::metrics`].
    fn metric(&self, name: &str) -> i64 {
        let metrics = self.metrics();
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no {name}: {metrics}"))
            .parse()
            .unwrap()
    }

    async fn tcp(&self) -> TcpStream {
        TcpStream::connect(&self.addr).await.unwrap()
    }
}

/// Sends `CONNECT target` on `io`; returns the status line's code, the response head, and the
/// stream.
async fn connect_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut io: S,
    target: &str,
) -> (u16, String, S) {
    io.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            io.read(&mut byte).await.unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let code = head[9..12].parse().unwrap();
    (code, head, io)
}

/// Sends `CONNECT target` on a new connection to `addr`.
async fn connect(addr: &str, target: &str) -> (u16, String, TcpStream) {
    connect_on(TcpStream::connect(addr).await.unwrap(), target).await
}

/// A rustls client config trusting only `ca` (HTTP/1.1).
fn trusting(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// An HTTP/1.1 client over TLS inside a tunnel to `host` opened on `io`, trusting only `ca`.
async fn tunnel_on<S>(io: S, host: &str, ca: &CertificateDer<'static>) -> H1
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (code, head, io) = connect_on(io, &format!("{host}:443")).await;
    assert_eq!(code, 200, "{head}");
    let name = rustls::pki_types::ServerName::try_from(host.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(trusting(ca))
        .connect(name, io)
        .await
        .expect("the minted certificate verifies against the CA for this host");
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// [`tunnel_on`] a new connection to the forward-proxy listener.
async fn tunnel(fwd: &Fwd, host: &str) -> H1 {
    tunnel_on(fwd.tcp().await, host, &fwd.ca).await
}

/// Reads a refused CONNECT's body to the connection's end: SP-API's error shape with `code`,
/// a message saying `why`.
async fn refusal<S: AsyncRead + Unpin>(io: &mut S, code: &str, why: &str) {
    let mut body = Vec::new();
    let _ = io.read_to_end(&mut body).await;
    let json: serde_json::Value = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)));
    assert_eq!(json["errors"][0]["code"], code, "{json}");
    let message = json["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(why), "{json}");
}

async fn answer(send: &mut H1, req: Request<Full<Bytes>>) -> (StatusCode, serde_json::Value) {
    send.ready().await.expect("the connection stays open");
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn orders(host: &str) -> http::request::Builder {
    Request::get(ORDERS).header("host", host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_to_amazons_hosts_is_served_by_the_gateway_token_endpoint_included_and_audited() {
    let audit = tempfile::tempdir().unwrap();
    let fwd = Fwd::start(Setup {
        audit: Some(audit.path().to_path_buf()),
        ..Setup::default()
    })
    .await;
    let client = fwd.gw.store.clients().await.unwrap().remove(0);
    let creds = drop_in::create(&*fwd.gw.store, &client.id, SELLER)
        .await
        .unwrap();

    // LWA's host: the drop-in token endpoint answers, as Amazon's would.
    let mut lwa = tunnel(&fwd, "api.amazon.com").await;
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
    let mut sp = tunnel(&fwd, "sellingpartnerapi-na.amazon.com").await;
    for _ in 0..2 {
        // Two requests on one tunnel: keep-alive inside it.
        let (status, orders) = answer(
            &mut sp,
            orders("sellingpartnerapi-na.amazon.com")
                .header("x-amz-access-token", &access)
                .body(Full::default())
                .unwrap(),
        )
        .await;
        assert_eq!(status, 200, "{orders}");
        assert!(orders["payload"]["Orders"].is_array(), "{orders}");
    }
    // This listener's counters: two tunnels, nothing refused.
    assert_eq!(fwd.metric("spgate_forward_tunnels_total"), 2);
    assert_eq!(
        fwd.forward
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    assert_eq!(fwd.metric("spgate_forward_certificates_minted_total"), 2);
    let expiry = fwd.metric("spgate_forward_ca_expiry_timestamp_seconds");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    assert!(
        (729 * 86400..=730 * 86400).contains(&(expiry - now)),
        "a two-year CA: {expiry}"
    );
    // Every accepted CONNECT is in the audit log: host and address.
    let records = common::audit_records(&fwd.gw, audit.path()).await;
    let tunnels: Vec<_> = records.iter().filter(|r| r["kind"] == "tunnel").collect();
    assert_eq!(tunnels.len(), 2, "{records:?}");
    assert_eq!(tunnels[0]["host"], "api.amazon.com", "{tunnels:?}");
    assert_eq!(
        tunnels[1]["host"], "sellingpartnerapi-na.amazon.com",
        "{tunnels:?}"
    );
    for t in &tunnels {
        assert_eq!(t["source"], "127.0.0.1", "{t}");
        assert_eq!(t["method"], "CONNECT", "{t}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn document_links_inside_a_tunnel_name_the_tunnels_host_and_are_fetched_back_through_it() {
    let fwd = Fwd::start_with(
        Setup::default(),
        Options {
            sandbox_documents: true,
            ..Options::default()
        },
    )
    .await;
    let host = "sellingpartnerapi-eu.amazon.com";
    let mut sp = tunnel(&fwd, host).await;
    let (status, document) = answer(
        &mut sp,
        Request::get("/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING")
            .header("host", host)
            .header("authorization", format!("Bearer {}", fwd.gw.key))
            .header("x-spgate-seller", SELLER)
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 200, "{document}");
    let url = document["url"].as_str().unwrap();
    let path = url
        .strip_prefix(&format!("https://{host}"))
        .unwrap_or_else(|| panic!("not on the tunnel's host: {url}"));
    assert!(path.starts_with("/v1/documents/"), "{url}");
    // Fetched as an SDK would: through a new tunnel to that host, with no credentials.
    let mut again = tunnel(&fwd, host).await;
    again.ready().await.unwrap();
    let resp = again
        .send_request(
            Request::get(path)
                .header("host", host)
                .body(Full::default())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).starts_with("order-id"),
        "{}",
        String::from_utf8_lossy(&body)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_any_other_host_port_or_spelling_is_refused_never_tunnelled_and_aggregated() {
    let audit = tempfile::tempdir().unwrap();
    let fwd = Fwd::start(Setup {
        audit: Some(audit.path().to_path_buf()),
        ..Setup::default()
    })
    .await;
    // The sandbox listens on loopback: a tunnel to it (or anywhere) would be an open proxy.
    let sandbox = fwd.gw.sandbox_url.trim_start_matches("http://").to_owned();
    let cases = [
        ("example.com:443", "Unauthorized", "refused"),
        (sandbox.as_str(), "Unauthorized", "refused"),
        (
            "sellingpartnerapi-na.amazon.com:8443",
            "Unauthorized",
            "only port 443",
        ),
        (
            "sellingpartnerapi-na.amazon.com:0443",
            "Unauthorized",
            "only port 443",
        ),
        (
            "sellingpartnerapi-na.amazon.com.evil.example:443",
            "Unauthorized",
            "refused",
        ),
        (
            "user:secret@sellingpartnerapi-na.amazon.com:443",
            "InvalidInput",
            "without user information",
        ),
    ];
    for (target, code, why) in cases {
        let (status, head, mut tcp) = connect(&fwd.addr, target).await;
        let expect = if code == "InvalidInput" { 400 } else { 403 };
        assert_eq!(status, expect, "{target}: {head}");
        let lower = head.to_ascii_lowercase();
        assert!(lower.contains("connection: close"), "{head}");
        assert!(lower.contains("x-amzn-requestid: "), "{head}");
        refusal(&mut tcp, code, why).await;
    }
    let records = fwd.gw.gateway.auditor().noise().take(true);
    let counted: Vec<_> = records
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .filter(|r| r["reason"] == "connect_refused")
        .collect();
    assert_eq!(counted.len(), 1, "one aggregate per address: {counted:?}");
    assert_eq!(counted[0]["count"], cases.len(), "{counted:?}");
    assert_eq!(
        fwd.forward
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        cases.len() as u64
    );
    assert_eq!(fwd.metric("spgate_forward_tunnels_total"), 0);
    assert_eq!(fwd.metric("spgate_forward_certificates_minted_total"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_inside_a_tunnel_and_on_http2_is_refused_and_counted() {
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new(pki_dir.path(), "listener-ca");
    let server = ca.server(pki_dir.path(), "listener");
    let fwd = Fwd::start(Setup {
        tls: Some((ca, server, ClientPins::new())),
        ..Setup::default()
    })
    .await;
    // Inside a tunnel, a CONNECT is 400 and the tunnel closes.
    let mut sp = tunnel_on(
        tls_to(&fwd, &[b"http/1.1"], None).await,
        "sellingpartnerapi-na.amazon.com",
        &fwd.ca,
    )
    .await;
    let (status, body) = answer(
        &mut sp,
        Request::connect("sellingpartnerapi-eu.amazon.com:443")
            .header("host", "sellingpartnerapi-eu.amazon.com:443")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["errors"][0]["code"], "InvalidInput", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("inside a tunnel"),
        "{body}"
    );
    assert!(sp.ready().await.is_err(), "the tunnel was closed");

    // On an HTTP/2 stream (TLS listener, ALPN h2): 405.
    let tls = tls_to(&fwd, &[b"h2"], None).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let resp = h2
        .send_request(
            Request::connect("sellingpartnerapi-na.amazon.com:443")
                .body(Full::<Bytes>::default())
                .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{body:?}");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("HTTP/2"),
        "{body}"
    );
    assert_eq!(fwd.metric("spgate_forward_tunnels_total"), 1);
    assert_eq!(
        fwd.forward
            .stats()
            .refused
            .load(std::sync::atomic::Ordering::Relaxed),
        2
    );
}

/// A TLS connection to the forward-proxy listener (its test CA trusted), offering `alpn`.
async fn tls_to(
    fwd: &Fwd,
    alpn: &[&[u8]],
    client_cert: Option<&pki::Issued>,
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(fwd.listener_ca.clone().expect("a TLS listener"))
        .unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let mut config = match client_cert {
        Some(c) => {
            let (chain, key) = c.rustls_pair();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, fwd.tcp().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_forward_proxy_connect_is_refused_and_absolute_form_still_works() {
    let gw = start_gateway(Options::default()).await;
    let addr = gw.url.trim_start_matches("http://").to_owned();
    let (code, head, mut tcp) = connect(&addr, "sellingpartnerapi-na.amazon.com:443").await;
    assert_eq!(code, 403, "{head}");
    refusal(&mut tcp, "Unauthorized", "forward_proxy").await;

    // HTTP_PROXY style: the absolute URL names Amazon's host; the gateway serves the path.
    let req = Request::builder()
        .method(Method::GET)
        .uri(format!("http://sellingpartnerapi-na.amazon.com{ORDERS}"))
        .header("authorization", format!("Bearer {}", gw.key))
        .header("x-spgate-seller", SELLER)
        .body(Full::<Bytes>::default())
        .unwrap();
    let tcp = TcpStream::connect(&addr).await.unwrap();
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
    let fwd = Fwd::start(Setup {
        per_address: 1,
        ..Setup::default()
    })
    .await;
    let mut sp = tunnel(&fwd, "sellingpartnerapi-eu.amazon.com").await;
    // The tunnel's connection is the address's one slot: a second one is closed at accept.
    let mut second = fwd.tcp().await;
    let _ = second
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut buf = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut buf))
        .await
        .expect("closed at once")
        .unwrap_or(0);
    assert_eq!(n, 0, "{}", String::from_utf8_lossy(&buf));
    // Inside, the gateway authenticates as on its own listener: no credential, 401.
    let (status, body) = answer(
        &mut sp,
        orders("sellingpartnerapi-eu.amazon.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_tool_tunnelling_over_mtls_is_served_with_its_outer_client_certificate() {
    let pki_dir = tempfile::tempdir().unwrap();
    let ca = pki::Ca::new(pki_dir.path(), "listener-ca");
    let server = ca.server(pki_dir.path(), "listener");
    let good = ca.client(pki_dir.path(), "tool");
    let mut pins = ClientPins::new();
    pins.insert("test-tool".into(), vec![good.pin()]);
    let fwd = Fwd::start(Setup {
        tls: Some((ca, server, pins)),
        ..Setup::default()
    })
    .await;
    let request = || {
        orders("sellingpartnerapi-eu.amazon.com")
            .header("authorization", format!("Bearer {}", fwd.gw.key))
            .header("x-spgate-seller", SELLER)
            .body(Full::default())
            .unwrap()
    };
    // With the pinned certificate on the outer TLS connection: served inside the tunnel.
    let mut with = tunnel_on(
        tls_to(&fwd, &[b"http/1.1"], Some(&good)).await,
        "sellingpartnerapi-eu.amazon.com",
        &fwd.ca,
    )
    .await;
    let (status, body) = answer(&mut with, request()).await;
    assert_eq!(status, 200, "{body}");
    // Without it, the pinned tool is refused inside as outside.
    let mut without = tunnel_on(
        tls_to(&fwd, &[b"http/1.1"], None).await,
        "sellingpartnerapi-eu.amazon.com",
        &fwd.ca,
    )
    .await;
    let (status, body) = answer(&mut without, request()).await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("client certificate"),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_ca_answers_a_clear_500_counted_and_closes() {
    let audit = tempfile::tempdir().unwrap();
    let fwd = Fwd::start(Setup {
        ca_validity: Some(Duration::from_secs(8)),
        audit: Some(audit.path().to_path_buf()),
        ..Setup::default()
    })
    .await;
    // Loaded while valid; then it expires under the running gateway.
    tokio::time::sleep_until(fwd.ca_expires.unwrap() + Duration::from_millis(500)).await;
    let (code, head, mut tcp) = connect(&fwd.addr, "sellingpartnerapi-na.amazon.com:443").await;
    assert_eq!(code, 500, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    refusal(&mut tcp, "InternalFailure", "spgate ca init").await;
    assert_eq!(fwd.metric("spgate_forward_mint_failures_total"), 1);
    assert_eq!(fwd.metric("spgate_forward_tunnels_total"), 0);
    let noise: Vec<_> = fwd
        .gw
        .gateway
        .auditor()
        .noise()
        .take(true)
        .iter()
        .map(|r| serde_json::to_value(r).unwrap())
        .collect();
    assert!(
        noise.iter().any(|r| r["reason"] == "connect_mint_failed"),
        "{noise:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_handshake_that_never_finishes_inside_a_tunnel_is_cut_at_the_header_deadline() {
    let fwd = Fwd::start(Setup {
        per_address: 1,
        header_timeout: Duration::from_millis(500),
        ..Setup::default()
    })
    .await;
    let (code, head, mut tcp) = connect(&fwd.addr, "sellingpartnerapi-na.amazon.com:443").await;
    assert_eq!(code, 200, "{head}");
    // The first bytes of a ClientHello, then nothing.
    tcp.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let started = std::time::Instant::now();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut buf))
        .await
        .expect("the gateway closed the tunnel");
    assert!(read.is_ok() || buf.is_empty(), "{read:?}");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    // The socket closes when the timed-out handshake is dropped; the count follows it
    // (after the address's slot is freed), so wait for it rather than race it.
    let counted = std::time::Instant::now();
    while fwd.metric("spgate_forward_handshake_failures_total") == 0
        && counted.elapsed() < Duration::from_secs(2)
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(fwd.metric("spgate_forward_handshake_failures_total"), 1);
    // The address's one slot is free again.
    let mut sp = tunnel(&fwd, "sellingpartnerapi-na.amazon.com").await;
    let (status, _) = answer(
        &mut sp,
        orders("sellingpartnerapi-na.amazon.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_the_forward_proxy_is_refused_and_an_unchanged_one_applies() {
    let fwd = Fwd::start(Setup::default()).await;
    let path = fwd.gw.dir.path().join("spgate.toml");
    let mut env = spgate::config::MapEnv::default();
    env.vars
        .insert("SPGATE_LWA_CLIENT_SECRET".into(), "secret".into());
    env.vars
        .insert("SPGATE_AUDIT_KEY".into(), common::AUDIT_KEY.into());
    env.vars.insert(
        "SPGATE_MASTER_KEY".into(),
        fwd.gw.master_key_b64.expose().clone(),
    );
    for f in [&fwd.ca_cert, &fwd.ca_key] {
        env.files
            .insert(f.clone(), std::fs::read_to_string(f).unwrap());
    }
    let admin = spgate::admin::Admin::new(
        fwd.gw.gateway.clone(),
        &[],
        Some(path.clone()),
        Arc::new(env),
    )
    .with_forward(Some(fwd.forward.clone()));
    let section = |hosts: &str| {
        format!(
            "{}\n[forward_proxy]\nenabled = true\nca_cert_file = {:?}\nca_key_file = {:?}\n{hosts}",
            include_str!("../config/spgate.example.toml"),
            fwd.ca_cert.display().to_string(),
            fwd.ca_key.display().to_string(),
        )
    };
    std::fs::write(&path, section("")).unwrap();
    admin
        .reload(None)
        .expect("the running section: the reload applies");
    for changed in [
        section("allowed_hosts = [\"api.amazon.com\"]\n"),
        include_str!("../config/spgate.example.toml").to_string(),
    ] {
        std::fs::write(&path, changed).unwrap();
        let err = admin.reload(None).unwrap_err();
        let spgate::admin::AdminError::InvalidConfig(issues) = &err else {
            panic!("{err}");
        };
        assert!(
            issues
                .iter()
                .any(|i| i.path == "forward_proxy" && i.message.contains("restart")),
            "{issues:?}"
        );
    }
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
    assert!(stdout.contains("expires"), "says when it expires: {stdout}");
    let (cert, key) = (
        out.join("spgate-forward-ca.pem"),
        out.join("spgate-forward-ca.key"),
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
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

#[test]
fn spgate_ca_init_leaves_no_partial_key_when_a_write_fails() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ca");
    std::fs::create_dir(&out).unwrap();
    // No byte may be written (RLIMIT_FSIZE 0; SIGXFSZ ignored, so the write fails with EFBIG).
    let failed = std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 0; exec \"$0\" ca init --out \"$1\"")
        .arg(env!("CARGO_BIN_EXE_spgate"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        !failed.status.success(),
        "{}",
        String::from_utf8_lossy(&failed.stdout)
    );
    let left: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "nothing half-written is left: {left:?}");
    // And the next run, with room to write, makes a whole CA.
    let ok = std::process::Command::new(env!("CARGO_BIN_EXE_spgate"))
        .args(["ca", "init", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let key = std::fs::read_to_string(out.join("spgate-forward-ca.key")).unwrap();
    assert!(
        key.trim_end().ends_with("-----END PRIVATE KEY-----"),
        "{key}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_is_closed_by_the_drain_on_shutdown() {
    let mut fwd = Fwd::start(Setup::default()).await;
    let mut sp = tunnel(&fwd, "sellingpartnerapi-na.amazon.com").await;
    let (status, _) = answer(
        &mut sp,
        orders("sellingpartnerapi-na.amazon.com")
            .body(Full::default())
            .unwrap(),
    )
    .await;
    assert_eq!(status, 401);
    // The tunnel is idle and kept alive: the drain closes it instead of waiting out its timeout
    // (the listener's drain timeout is 5 s).
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(4), fwd.stop())
        .await
        .expect("the server stopped without waiting for the tunnel")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(4));
    let req = Request::get(ORDERS).body(Full::default()).unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(2), sp.send_request(req)).await;
    assert!(
        matches!(sent, Ok(Err(_))),
        "the tunnel's connection was closed: {sent:?}"
    );
}
