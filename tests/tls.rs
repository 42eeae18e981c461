//! The TLS listener end to end: a CA made in the test (rcgen), clients trusting it over HTTP/1.1
//! and HTTP/2 (ALPN), curl, TLS 1.0/1.1 refused (openssl s_client), certificate rotation under
//! load with no failed request, and per-tool client certificates (mTLS) as a second factor.

mod common;
mod pki;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{empty, start_gateway, Options, SELLER};
use http::{Method, Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use pki::{client_config, Ca, Issued};
use spgate::config::ProcessEnv;
use spgate::proxy::body::Body;
use spgate::server::tls::{ClientPins, TlsConfig, TlsListener};
use tokio::net::TcpListener;

/// A tool a test needs is missing: a notice here, a failure under CI (the `CI` variable),
/// where every check must run.
fn tool_missing(notice: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {notice}");
    eprintln!("notice: {notice}");
}

const PATH: &str = "/orders/v0/orders/TEST_CASE_200/address";

/// A gateway served over TLS by `serve_with_tls`, as `spgate serve` does with `[server.tls]`.
struct TlsGateway {
    gw: common::TestGateway,
    /// `https://localhost:<port>`.
    url: String,
    port: u16,
    tls: Arc<TlsListener>,
    dir: tempfile::TempDir,
    ca: Ca,
    server: Issued,
    /// Client certificates pinned for the test tool.
    pinned: Vec<Issued>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for TlsGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// `pinned`: client certificates to issue and pin for the test tool (needs `client_ca`).
async fn tls_gateway(client_ca: bool, pinned: &[&str]) -> TlsGateway {
    tls_gateway_with(client_ca, pinned, Duration::from_secs(10)).await
}

/// [`tls_gateway`] with the given header read timeout.
async fn tls_gateway_with(
    client_ca: bool,
    pinned: &[&str],
    header_read_timeout: Duration,
) -> TlsGateway {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    // Document links are built on server.public_url: here the TLS listener's.
    let gw = start_gateway(Options {
        no_public_url: true,
        server_toml: format!("public_url = \"https://localhost:{port}\"\n"),
        ..Options::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.server(dir.path(), "server");
    let pinned: Vec<Issued> = pinned.iter().map(|n| ca.client(dir.path(), n)).collect();
    let mut pins = ClientPins::new();
    if !pinned.is_empty() {
        pins.insert("test-tool".into(), pinned.iter().map(Issued::pin).collect());
    }
    // As `spgate serve` does from `[tools.<name>] client_cert_spki_sha256`.
    gw.gateway.set_client_pins(pins.clone());
    let config = TlsConfig {
        cert_file: server.cert_file.clone(),
        key_file: server.key_file.clone(),
        client_ca_file: client_ca.then(|| ca.cert_file.clone()),
        require_client_cert: false,
        reload_interval: Duration::from_secs(1),
    };
    let tls = TlsListener::load("proxy", config, pins, Arc::new(ProcessEnv)).unwrap();
    let limits = spgate::server::ServerLimits {
        max_connections: 1000,
        max_header_bytes: 32 * 1024,
        header_read_timeout,
        drain_timeout: Duration::from_secs(5),
        write_timeout: Duration::from_secs(30),
        peers: spgate::server::peers::PeerLimits {
            max_connections_per_address: 1000,
            unauthenticated_rate_per_second: 1000,
            unauthenticated_burst: 1000,
        },
    };
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(spgate::server::serve_with_tls(
        listener,
        gw.gateway.clone(),
        limits,
        Some(tls.clone()),
        async {
            let _ = rx.await;
        },
    ));
    TlsGateway {
        gw,
        url: format!("https://localhost:{port}"),
        port,
        tls,
        dir,
        ca,
        server,
        pinned,
        stop: Some(tx),
    }
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

fn https_client(mut config: rustls::ClientConfig, pooled: bool) -> HttpsClient {
    // hyper-rustls sets ALPN itself from the versions enabled below.
    let h2 = std::mem::take(&mut config.alpn_protocols)
        .iter()
        .any(|p| p == b"h2");
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only();
    let connector = if h2 {
        builder.enable_all_versions().build()
    } else {
        builder.enable_http1().build()
    };
    let mut client = Client::builder(TokioExecutor::new());
    if !pooled {
        client.pool_max_idle_per_host(0);
    }
    client.build(connector)
}

impl TlsGateway {
    fn request(&self, path: &str) -> Request<Body> {
        Request::builder()
            .method(Method::GET)
            .uri(format!("{}{path}", self.url))
            .header("authorization", format!("Bearer {}", self.gw.key))
            .header("x-spgate-seller", SELLER)
            .body(empty())
            .unwrap()
    }

    /// Status, protocol version and body of one request.
    async fn get(&self, client: &HttpsClient) -> Result<(StatusCode, Version, String), String> {
        self.get_path(client, PATH).await
    }

    async fn get_path(
        &self,
        client: &HttpsClient,
        path: &str,
    ) -> Result<(StatusCode, Version, String), String> {
        let resp = client
            .request(self.request(path))
            .await
            .map_err(|e| format!("{e:?}"))?;
        let (status, version) = (resp.status(), resp.version());
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, version, String::from_utf8_lossy(&body).into()))
    }

    /// The leaf certificate a fresh handshake sees.
    async fn served_cert(&self) -> rustls::pki_types::CertificateDer<'static> {
        let stream = self.connect(b"http/1.1").await;
        stream.get_ref().1.peer_certificates().unwrap()[0].clone()
    }

    /// A fresh TLS connection offering `alpn`.
    async fn connect(&self, alpn: &[u8]) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let config = client_config(&self.ca, &[alpn], None);
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        connector.connect(name, tcp).await.unwrap()
    }
}

#[tokio::test]
async fn a_client_trusting_the_ca_is_served_over_http2_and_http1_chosen_by_alpn() {
    let t = tls_gateway(false, &[]).await;
    let h2 = https_client(client_config(&t.ca, &[b"h2", b"http/1.1"], None), true);
    let (status, version, body) = t.get(&h2).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(version, Version::HTTP_2);
    let h1 = https_client(client_config(&t.ca, &[b"http/1.1"], None), true);
    let (status, version, _) = t.get(&h1).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(version, Version::HTTP_11);
    // A client that does not trust the CA gets no answer at all.
    let stranger = Ca::new(t.dir.path(), "stranger");
    let untrusting = https_client(client_config(&stranger, &[b"h2"], None), true);
    assert!(t.get(&untrusting).await.is_err());
}

#[tokio::test]
async fn curl_with_the_ca_trusted_succeeds_over_http2() {
    if std::process::Command::new("curl")
        .arg("--version")
        .output()
        .is_err()
    {
        tool_missing("curl is not installed; skipping the curl check");
        return;
    }
    let t = tls_gateway(false, &[]).await;
    let out = tokio::process::Command::new("curl")
        .args([
            "-sS",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{http_version}",
        ])
        .arg("--cacert")
        .arg(&t.ca.cert_file)
        .args(["-H", &format!("Authorization: Bearer {}", t.gw.key)])
        .args(["-H", &format!("x-spgate-seller: {SELLER}")])
        .arg(format!("{}{PATH}", t.url))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout, "200 2", "{}", String::from_utf8_lossy(&out.stderr));
}

/// Runs `openssl s_client` against the gateway with `args`; returns (exit ok, output).
async fn s_client(port: u16, args: &[&str]) -> Option<(bool, String)> {
    let out = tokio::process::Command::new("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .ok()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Some((out.status.success(), text))
}

#[tokio::test]
async fn tls_1_0_and_1_1_are_refused_and_1_2_and_1_3_accepted() {
    let t = tls_gateway(false, &[]).await;
    // SECLEVEL=0 makes openssl itself willing to offer the old versions, so a refusal is the
    // gateway's.
    let Some((ok, text)) = s_client(t.port, &["-tls1_2"]).await else {
        tool_missing("openssl is not installed; the versions are asserted by the unit tests only");
        return;
    };
    assert!(ok && text.contains("TLSv1.2"), "{text}");
    let (ok, text) = s_client(t.port, &["-tls1_3"]).await.unwrap();
    assert!(ok && text.contains("TLSv1.3"), "{text}");
    for old in ["-tls1", "-tls1_1"] {
        let before = t.tls.stats.handshake_failures.load(Ordering::Relaxed);
        let (ok, text) = s_client(t.port, &[old, "-cipher", "DEFAULT@SECLEVEL=0"])
            .await
            .unwrap();
        assert!(!ok, "{old} was accepted: {text}");
        // openssl names the alert it received (protocol_version or handshake_failure).
        assert!(text.contains("alert"), "{old}: {text}");
        let after = t.tls.stats.handshake_failures.load(Ordering::Relaxed);
        assert!(after > before, "{old}: the server saw no refused handshake");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_certificate_is_picked_up_under_load_with_no_failed_request() {
    let t = Arc::new(tls_gateway(false, &[]).await);
    let old = t.served_cert().await;
    assert_eq!(old, t.server.der);
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for i in 0..6 {
        let (t, stop, ok, failed) = (t.clone(), stop.clone(), ok.clone(), failed.clone());
        // Half the workers keep their connections (old certificate), half handshake every time.
        let alpn: &[&[u8]] = if i % 2 == 0 { &[b"h2"] } else { &[b"http/1.1"] };
        let client = https_client(client_config(&t.ca, alpn, None), i % 3 != 0);
        workers.push(tokio::spawn(async move {
            // Bounded: at most 5000 requests per worker. The path is authenticated and then
            // answered 404 by the gateway itself, so Amazon's usage plans do not slow the load.
            for _ in 0..5000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match t.get_path(&client, "/spgate-test/no-such-operation").await {
                    Ok((StatusCode::NOT_FOUND, _, body)) if body.contains("NotFound") => {
                        ok.fetch_add(1, Ordering::Relaxed)
                    }
                    Ok((status, _, body)) => {
                        eprintln!("{status}: {body}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(e) => {
                        eprintln!("{e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    // Let load build up, then rotate: a new key and certificate from the same CA, written the
    // way a certificate manager does (key first, then the chain), picked up by the watcher.
    while ok.load(Ordering::Relaxed) < 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let watcher = t.tls.spawn_watcher(std::future::pending());
    let new = t.ca.server(&t.dir.path().join(""), "server-next");
    std::fs::write(&t.server.key_file, &new.key_pem).unwrap();
    std::fs::write(&t.server.cert_file, &new.cert_pem).unwrap();
    let mut rounds = 0;
    while t.served_cert().await != new.der {
        rounds += 1;
        assert!(rounds < 1000, "the new certificate was never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let at_rotation = ok.load(Ordering::Relaxed);
    while ok.load(Ordering::Relaxed) < at_rotation + 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    watcher.abort();
    assert_eq!(failed.load(Ordering::Relaxed), 0);
    assert!(t.tls.stats.reloads.load(Ordering::Relaxed) >= 1);
    eprintln!(
        "{} requests, 0 failed, {} reload(s), {} refused half-written rotation(s)",
        ok.load(Ordering::Relaxed),
        t.tls.stats.reloads.load(Ordering::Relaxed),
        t.tls.stats.reload_failures.load(Ordering::Relaxed)
    );
}

#[tokio::test]
async fn a_broken_certificate_file_is_refused_and_the_running_one_stays() {
    let t = tls_gateway(false, &[]).await;
    std::fs::write(&t.server.cert_file, "not a certificate").unwrap();
    assert!(t.tls.reload().is_err());
    assert_eq!(t.served_cert().await, t.server.der);
    // A key that does not match the certificate is refused too.
    let other = t.ca.server(t.dir.path(), "other");
    std::fs::write(&t.server.cert_file, &t.server.cert_pem).unwrap();
    std::fs::write(&t.server.key_file, &other.key_pem).unwrap();
    assert!(t.tls.reload().is_err());
    assert_eq!(t.served_cert().await, t.server.der);
    // Unchanged files are no reload at all.
    std::fs::write(&t.server.key_file, &t.server.key_pem).unwrap();
    assert!(t.tls.reload().unwrap());
    assert!(!t.tls.reload().unwrap());
}

#[tokio::test]
async fn a_tool_with_a_pinned_client_certificate_needs_it_besides_its_key() {
    let t = tls_gateway(true, &["label-printer"]).await;
    let dir = tempfile::tempdir().unwrap();
    let good = &t.pinned[0];
    let other = t.ca.client(dir.path(), "someone-else");
    let with_good = https_client(client_config(&t.ca, &[b"h2"], Some(good)), false);
    let (status, _, body) = t.get(&with_good).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");

    for (what, client) in [
        (
            "no certificate",
            https_client(client_config(&t.ca, &[b"h2"], None), false),
        ),
        (
            "another certificate of the CA",
            https_client(client_config(&t.ca, &[b"http/1.1"], Some(&other)), false),
        ),
    ] {
        let (status, _, body) = t.get(&client).await.unwrap();
        assert_eq!(status, StatusCode::FORBIDDEN, "{what}: {body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["errors"][0]["code"], "Unauthorized", "{what}: {body}");
        assert!(v["errors"][0]["message"].is_string());
    }

    // A certificate from a CA the listener does not trust: no handshake at all.
    let stranger = Ca::new(dir.path(), "stranger");
    let foreign = stranger.client(dir.path(), "foreign");
    let with_foreign = https_client(client_config(&t.ca, &[b"h2"], Some(&foreign)), false);
    assert!(t.get(&with_foreign).await.is_err());

    // The plain-HTTP path of the same gateway has no client certificate to check: the pinned
    // tool is refused there (the config check also refuses pins without `[server.tls]`).
    let plain = t.gw.get(PATH).await;
    assert_eq!(plain.status, StatusCode::FORBIDDEN, "{:?}", plain.body);
    assert_eq!(plain.error_code(), "Unauthorized");

    // Pins replaced (a reload): the listener and the gateway use the new set at once.
    t.tls.set_pins(ClientPins::new());
    t.gw.gateway.set_client_pins(ClientPins::new());
    assert_eq!(t.gw.get(PATH).await.status, StatusCode::OK);
    let (status, _, body) = t
        .get(&https_client(client_config(&t.ca, &[b"h2"], None), false))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// The config side: `[server.tls]`, `[admin.tls]` and the tools' pins are validated, with paths.
#[test]
fn tls_settings_are_checked_with_their_key_paths() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.server(dir.path(), "server");
    let client = ca.client(dir.path(), "tool");
    let pin = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(client.pin())
    };
    let base = |extra: &str| {
        format!(
            "[lwa]\nclient_id = \"x\"\nclient_secret = {{ env = \"S\" }}\n[keys]\nmaster_key = {{ env = \"M\" }}\n{extra}"
        )
    };
    let mut env = spgate::config::MapEnv::default();
    env.vars.insert("S".into(), "secret".into());
    env.vars.insert(
        "M".into(),
        spgate::crypto::MasterKey::generate_base64()
            .unwrap()
            .expose()
            .clone(),
    );
    for path in [&server.cert_file, &server.key_file, &ca.cert_file] {
        env.files
            .insert(path.clone(), std::fs::read_to_string(path).unwrap());
    }
    let tls = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\n",
        server.cert_file, server.key_file, ca.cert_file
    );
    let ok = spgate::config::Config::from_toml(
        &base(&format!(
            "[server]\n{}\n[tools.label-printer]\nclient_cert_spki_sha256 = [\"{pin}\"]\n[admin]\n[admin.tls]\ncert_file = {:?}\nkey_file = {:?}\n",
            tls.trim_start_matches("[server]\n"),
            server.cert_file,
            server.key_file
        )),
        &env,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(ok.server.tls.is_some() && ok.admin.unwrap().tls.is_some());
    assert_eq!(ok.tool_client_certs["label-printer"], vec![client.pin()]);

    let check = |toml: &str| match spgate::config::Config::from_toml(&base(toml), &env) {
        Ok(_) => Vec::new(),
        Err(e) => e.0.into_iter().map(|i| i.path).collect::<Vec<_>>(),
    };
    assert_eq!(
        check(&format!(
            "[tools.t]\nclient_cert_spki_sha256 = [\"{pin}\"]\n"
        )),
        vec!["tools.t.client_cert_spki_sha256"]
    );
    assert_eq!(
        check(&format!(
            "{tls}[tools.t]\nclient_cert_spki_sha256 = [\"short\"]\n"
        )),
        vec!["tools.t.client_cert_spki_sha256[0]"]
    );
    assert_eq!(
        check(&format!(
            "[server.tls]\ncert_file = {:?}\n",
            server.cert_file
        )),
        vec!["server.tls.key_file"]
    );
    assert_eq!(
        check("[server.tls]\ncert_file = \"/nonexistent.pem\"\nkey_file = \"/nonexistent.key\"\n"),
        vec!["server.tls"]
    );
    assert_eq!(
        check(&format!(
            "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nrequire_client_cert = true\n",
            server.cert_file, server.key_file
        )),
        vec!["server.tls.require_client_cert"]
    );
}

const BIN: &str = env!("CARGO_BIN_EXE_spgate");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `spgate serve` as deployed: `[server.tls]` and `[admin.tls]` from the config file, the
/// certificates re-read on SIGHUP, the process killed when the test ends.
struct Serve(std::process::Child);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The leaf certificate a fresh handshake on `port` sees.
async fn leaf_on(ca: &Ca, port: u16) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let config = client_config(ca, &[b"http/1.1"], None);
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.ok()?;
    Some(stream.get_ref().1.peer_certificates()?[0].clone())
}

#[tokio::test]
async fn spgate_serve_speaks_tls_on_both_listeners_and_reloads_certificates_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server = ca.server(dir.path(), "server");
    let (proxy_port, admin_port) = (free_port(), free_port());
    let config = dir.path().join("spgate.toml");
    std::fs::write(
        &config,
        format!(
            r#"[server]
listen = "127.0.0.1:{proxy_port}"
[server.tls]
cert_file = {cert:?}
key_file = {key:?}
reload_interval_seconds = 3600
[lwa]
client_id = "amzn1.application-oa2-client.test"
client_secret = {{ env = "SPGATE_LWA_CLIENT_SECRET" }}
[store]
type = "embedded"
data_dir = {data:?}
[keys]
master_key = {{ env = "SPGATE_MASTER_KEY" }}
[admin]
listen = "127.0.0.1:{admin_port}"
[admin.tls]
cert_file = {cert:?}
key_file = {key:?}
"#,
            cert = server.cert_file,
            key = server.key_file,
            data = dir.path().join("data"),
        ),
    )
    .unwrap();
    let child = std::process::Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("SPGATE_LWA_CLIENT_SECRET", "lwa-secret-synthetic")
        .env(
            "SPGATE_MASTER_KEY",
            spgate::crypto::MasterKey::generate_base64()
                .unwrap()
                .expose(),
        )
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let serve = Serve(child);
    // Bounded wait for the listener.
    let mut tries = 0;
    while leaf_on(&ca, proxy_port).await.is_none() {
        tries += 1;
        assert!(tries < 300, "spgate serve did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let client = https_client(client_config(&ca, &[b"h2", b"http/1.1"], None), true);
    // The admin listener over TLS (HTTP/2 too).
    let resp = client
        .get(
            format!("https://localhost:{admin_port}/healthz")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(
        (resp.status(), resp.version()),
        (StatusCode::OK, Version::HTTP_2)
    );
    // The proxy listener over TLS: no key, 401 in SP-API's shape.
    let resp = client
        .get(
            format!("https://localhost:{proxy_port}{PATH}")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Rotate the files, then SIGHUP: both listeners serve the new certificate.
    let next = ca.server(dir.path(), "server-next");
    std::fs::write(&server.key_file, &next.key_pem).unwrap();
    std::fs::write(&server.cert_file, &next.cert_pem).unwrap();
    assert_eq!(
        leaf_on(&ca, proxy_port).await.unwrap(),
        server.der,
        "reloaded before SIGHUP"
    );
    let pid = serve.0.id().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let mut tries = 0;
    while leaf_on(&ca, proxy_port).await.unwrap() != next.der
        || leaf_on(&ca, admin_port).await.unwrap() != next.der
    {
        tries += 1;
        assert!(tries < 200, "SIGHUP did not reload the certificates");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The reloads are counted per listener in the admin metrics.
    let resp = client
        .get(
            format!("https://localhost:{admin_port}/metrics")
                .parse()
                .unwrap(),
        )
        .await
        .unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8_lossy(&body);
    for listener in ["proxy", "admin"] {
        assert!(
            text.contains(&format!(
                "spgate_tls_reloads_total{{listener=\"{listener}\"}} 1"
            )),
            "{text}"
        );
    }
}

/// A one-request HTTP server answering `status`; returns its port.
async fn answer_once(status: &'static str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = s.read(&mut buf).await;
        let reply =
            format!("HTTP/1.1 {status}\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n");
        s.write_all(reply.as_bytes()).await.unwrap();
    });
    port
}

#[tokio::test]
async fn spgate_health_exits_0_only_on_a_200() {
    let run = |port: u16| {
        tokio::process::Command::new(BIN)
            .args([
                "health",
                "--url",
                &format!("http://127.0.0.1:{port}/healthz"),
            ])
            .output()
    };
    assert!(run(answer_once("200 OK").await)
        .await
        .unwrap()
        .status
        .success());
    assert!(!run(answer_once("503 Service Unavailable").await)
        .await
        .unwrap()
        .status
        .success());
    assert!(!run(free_port()).await.unwrap().status.success());
}

#[test]
fn the_openssl_recipe_in_the_example_config_gives_the_gateways_pin() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let tool = ca.client(dir.path(), "tool");
    let recipe = format!(
        "openssl x509 -in {:?} -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64",
        tool.cert_file
    );
    let Ok(out) = std::process::Command::new("sh")
        .args(["-c", &recipe])
        .output()
    else {
        tool_missing("no shell; skipping");
        return;
    };
    if !out.status.success() {
        eprintln!("notice: openssl is not installed; skipping");
        return;
    }
    let printed = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        spgate::server::tls::parse_pin(printed.trim()),
        Some(tool.pin())
    );
}

/// Opens a TLS connection choosing HTTP/2 over ALPN and sends the client preface, an empty
/// SETTINGS frame and `then`; returns once the server closes the connection.
async fn h2_connection_closed_by_server(t: &TlsGateway, then: &[u8]) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = t.connect(b"h2").await;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // SETTINGS, no payload: length 0, type 4, flags 0, stream 0.
    stream
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap();
    stream.write_all(then).await.unwrap();
    stream.flush().await.unwrap();
    // Read (SETTINGS, ACKs, GOAWAY) until the server closes; a safety bound only.
    let mut buf = [0u8; 4096];
    let read_to_end = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_to_end)
        .await
        .is_ok()
}

#[tokio::test]
async fn an_http2_connection_that_sends_no_request_is_closed_after_the_header_read_timeout() {
    let t = tls_gateway_with(false, &[], Duration::from_millis(500)).await;
    assert!(
        h2_connection_closed_by_server(&t, &[]).await,
        "an idle HTTP/2 connection stayed open"
    );
    // The gateway still serves HTTP/2 afterwards.
    let h2 = https_client(client_config(&t.ca, &[b"h2"], None), true);
    let (status, version, _) = t.get(&h2).await.unwrap();
    assert_eq!((status, version), (StatusCode::OK, Version::HTTP_2));
}

#[tokio::test]
async fn an_http2_header_block_that_never_ends_does_not_hold_the_connection() {
    let t = tls_gateway_with(false, &[], Duration::from_millis(500)).await;
    // HEADERS on stream 1 with END_STREAM but not END_HEADERS: ":method: GET" (static index 2),
    // and no CONTINUATION ever follows.
    let headers = [0, 0, 1, 1, 0x1, 0, 0, 0, 1, 0x82];
    assert!(
        h2_connection_closed_by_server(&t, &headers).await,
        "an unfinished header block held the connection"
    );
}

#[tokio::test]
async fn document_links_on_an_https_public_url_are_served_over_http1_and_http2() {
    const DOC: &str = "/reports/2021-06-30/documents/SPGATE-SANDBOX-ORDERS-SHIPPING";
    let t = tls_gateway(false, &[]).await;
    for alpn in [&b"http/1.1"[..], &b"h2"[..]] {
        let client = https_client(client_config(&t.ca, &[alpn], None), false);
        let (status, version, body) = t.get_path(&client, DOC).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{version:?}: {body}");
        let want = if alpn == b"h2" {
            Version::HTTP_2
        } else {
            Version::HTTP_11
        };
        assert_eq!(version, want);
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        let url = json["url"].as_str().unwrap();
        let prefix = format!("{}/", t.url);
        assert!(url.starts_with(&prefix), "{version:?}: {url}");
        let (status, _, doc) = t.get_path(&client, &url[t.url.len()..]).await.unwrap();
        assert_eq!(status, StatusCode::OK, "{version:?}");
        assert!(doc.len() > 1000, "{version:?}: {doc}");
    }
}
