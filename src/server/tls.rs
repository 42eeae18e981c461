//! TLS on the gateway's listeners: rustls (ring) with TLS 1.2 and 1.3 only, HTTP/2 and
//! HTTP/1.1 offered over ALPN, certificates reloaded without dropping connections, and optional
//! client certificates (mTLS) pinned per tool.
//!
//! [`TlsListener`] holds the current `rustls::ServerConfig` behind a lock. Each accepted
//! connection takes the config current at that moment, so a reload (SIGHUP, or the files'
//! contents changing, polled every `reload_interval`) applies to new handshakes while
//! established connections keep theirs. A reload that fails (unreadable file, a key that does
//! not match its certificate, half of a rotation written) keeps the running certificate and
//! says so in the log and in [`TlsStats`].
//!
//! Files are read through [`Env`], like every file the gateway reads. With a client CA, the
//! verified client certificate's public key (SHA-256 of its SubjectPublicKeyInfo, the same pin
//! as `curl --pinnedpubkey sha256//...`) travels with each request as a [`PeerCert`]
//! extension; the caller phase compares it with the tool's `client_cert_spki_sha256` pins.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

use crate::config::Env;

/// SHA-256 of a certificate's DER SubjectPublicKeyInfo.
pub type SpkiPin = [u8; 32];

/// The client-certificate pins per tool name (`[tools.<name>] client_cert_spki_sha256`).
pub type ClientPins = BTreeMap<String, Vec<SpkiPin>>;

/// `[server.tls]` / `[admin.tls]`, resolved.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM CA certificates that client certificates must chain to; `None`: no client certificates.
    pub client_ca_file: Option<PathBuf>,
    /// With a client CA: refuse handshakes without a client certificate (else per-tool pins decide).
    pub require_client_cert: bool,
    /// How often the files are checked for new contents.
    pub reload_interval: Duration,
}

/// Why TLS could not be set up or a handshake failed. Never carries key material.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file holds no PEM item of the kind expected.
    #[error("{path}: no {what} found in PEM")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What was looked for.
        what: &'static str,
    },
    /// rustls refused the certificate, key or CA (e.g. the key does not match the certificate).
    #[error("TLS configuration refused: {0}")]
    Config(String),
    /// The handshake failed.
    #[error("TLS handshake failed: {0}")]
    Handshake(std::io::Error),
    /// The client did not finish the handshake in time.
    #[error("TLS handshake timed out")]
    HandshakeTimeout,
}

/// The client certificate a request came with, and the listener's pins to check it against.
#[derive(Debug, Clone)]
pub struct PeerCert {
    /// SHA-256 of the verified client certificate's SubjectPublicKeyInfo, if one was presented.
    pub spki_sha256: Option<SpkiPin>,
    /// The pins per tool configured for this listener.
    pub pins: Arc<ClientPins>,
}

/// Counters of one TLS listener (exposed for metrics and tests).
#[derive(Debug, Default)]
pub struct TlsStats {
    /// Certificates loaded after the first (SIGHUP or changed files).
    pub reloads: AtomicU64,
    /// Reload attempts refused (the running certificate stayed).
    pub reload_failures: AtomicU64,
    /// Handshakes that failed or timed out.
    pub handshake_failures: AtomicU64,
}

/// A TLS listener's state: the current server config, the files' fingerprint, the pins.
pub struct TlsListener {
    name: &'static str,
    config: TlsConfig,
    env: Arc<dyn Env + Send + Sync>,
    current: RwLock<Arc<rustls::ServerConfig>>,
    /// SHA-256 over the files' contents last loaded (or last refused, so a bad file is
    /// reported once, not on every poll).
    seen: Mutex<[u8; 32]>,
    pins: RwLock<Arc<ClientPins>>,
    /// Counters.
    pub stats: TlsStats,
}

/// A finished handshake.
pub struct Accepted {
    /// The decrypted stream.
    pub stream: TlsStream<TcpStream>,
    /// The client chose HTTP/2 over ALPN.
    pub h2: bool,
    /// What to attach to every request on this connection.
    pub peer: PeerCert,
}

// === impl TlsListener ===

impl TlsListener {
    /// Loads the certificate (and client CA) for the listener called `name` (`proxy`, `admin`).
    pub fn load(
        name: &'static str,
        config: TlsConfig,
        pins: ClientPins,
        env: Arc<dyn Env + Send + Sync>,
    ) -> Result<Arc<TlsListener>, TlsError> {
        let files = Files::read(&config, &*env)?;
        let server = files.server_config()?;
        Ok(Arc::new(TlsListener {
            name,
            config,
            env,
            current: RwLock::new(Arc::new(server)),
            seen: Mutex::new(files.fingerprint()),
            pins: RwLock::new(Arc::new(pins)),
            stats: TlsStats::default(),
        }))
    }

    /// The listener's name (`proxy`, `admin`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The tools' client-certificate pins new connections are checked against.
    pub fn pins(&self) -> Arc<ClientPins> {
        self.pins.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Replaces the pins (config reload); connections opened from now on use them.
    pub fn set_pins(&self, pins: ClientPins) {
        *self.pins.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pins);
    }

    /// Re-reads the files; when their contents changed, new handshakes use them. Returns
    /// whether anything changed. On an error the running certificate stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        let files = Files::read(&self.config, &*self.env)?;
        let fingerprint = files.fingerprint();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if *seen == fingerprint {
            return Ok(false);
        }
        // Remember these contents even if they are refused: the next poll reports a problem
        // only when the files change again.
        *seen = fingerprint;
        let server = files.server_config()?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(server);
        self.stats.reloads.fetch_add(1, Ordering::Relaxed);
        Ok(true)
    }

    /// Reloads and logs the outcome (SIGHUP and the file watcher).
    pub fn reload_logged(&self, why: &'static str) {
        match self.reload() {
            Ok(true) => tracing::info!(
                listener = self.name,
                trigger = why,
                "TLS certificate reloaded."
            ),
            Ok(false) => {}
            Err(e) => {
                self.stats.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(listener = self.name, trigger = why, error = %e, "TLS certificate reload refused; the running certificate stays.");
            }
        }
    }

    /// Polls the files every `reload_interval` until `stop` completes.
    pub fn spawn_watcher(
        self: &Arc<Self>,
        stop: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            tokio::pin!(stop);
            let mut tick = tokio::time::interval(this.config.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => this.reload_logged("file change"),
                    () = &mut stop => break,
                }
            }
        })
    }

    /// The server config new handshakes use.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Runs the handshake on an accepted connection, within `timeout`.
    pub async fn accept(&self, tcp: TcpStream, timeout: Duration) -> Result<Accepted, TlsError> {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.server_config());
        let result = match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(TlsError::Handshake(e)),
            Err(_) => Err(TlsError::HandshakeTimeout),
        };
        let stream = result.inspect_err(|_| {
            self.stats
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
        })?;
        let (_, conn) = stream.get_ref();
        let h2 = conn.alpn_protocol() == Some(b"h2");
        let spki_sha256 = conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(spki_sha256);
        Ok(Accepted {
            stream,
            h2,
            peer: PeerCert {
                spki_sha256,
                pins: self.pins(),
            },
        })
    }
}

/// Appends the listeners' counters in Prometheus' text format (the admin `/metrics`).
pub fn render_metrics(listeners: &[Arc<TlsListener>], out: &mut String) {
    use std::fmt::Write;
    if listeners.is_empty() {
        return;
    }
    for (name, help, pick) in [
        (
            "spgate_tls_reloads_total",
            "TLS certificates loaded after start (SIGHUP or changed files).",
            0,
        ),
        (
            "spgate_tls_reload_failures_total",
            "TLS certificate reloads refused (the running certificate stayed).",
            1,
        ),
        (
            "spgate_tls_handshake_failures_total",
            "TLS handshakes that failed or timed out.",
            2,
        ),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for l in listeners {
            let s = &l.stats;
            let v = [&s.reloads, &s.reload_failures, &s.handshake_failures][pick]
                .load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{listener=\"{}\"}} {v}", l.name);
        }
    }
}

/// SHA-256 of a certificate's SubjectPublicKeyInfo (`None` if it cannot be parsed).
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<SpkiPin> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok()
}

/// Parses a pin as written in the config: base64 of the SHA-256 of the SubjectPublicKeyInfo,
/// optionally prefixed `sha256//` as curl writes it.
pub fn parse_pin(text: &str) -> Option<SpkiPin> {
    use base64::Engine;
    let b64 = text.trim().trim_start_matches("sha256//");
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    bytes.try_into().ok()
}

/// Checks that the files load (for `spgate check` and startup), without keeping anything.
pub fn check(config: &TlsConfig, env: &dyn Env) -> Result<(), TlsError> {
    Files::read(config, env)?.server_config().map(drop)
}

/// The files' contents, read once.
struct Files {
    cert: String,
    key: crate::secret::Secret<String>,
    client_ca: Option<String>,
    require_client_cert: bool,
    paths: (PathBuf, PathBuf, Option<PathBuf>),
}

impl Files {
    fn read(config: &TlsConfig, env: &dyn Env) -> Result<Files, TlsError> {
        let read = |path: &Path| {
            env.read_file(path).map_err(|source| TlsError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(Files {
            cert: read(&config.cert_file)?,
            key: crate::secret::Secret::new(read(&config.key_file)?),
            client_ca: config.client_ca_file.as_deref().map(read).transpose()?,
            require_client_cert: config.require_client_cert,
            paths: (
                config.cert_file.clone(),
                config.key_file.clone(),
                config.client_ca_file.clone(),
            ),
        })
    }

    fn fingerprint(&self) -> [u8; 32] {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        for part in [
            self.cert.as_bytes(),
            self.key.expose().as_bytes(),
            self.client_ca.as_deref().unwrap_or("").as_bytes(),
        ] {
            ctx.update(&(part.len() as u64).to_be_bytes());
            ctx.update(part);
        }
        let mut out = [0; 32];
        out.copy_from_slice(ctx.finish().as_ref());
        out
    }

    fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let (cert_path, key_path, ca_path) = &self.paths;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert.as_bytes())
                .collect::<Result<_, _>>()
                .ok()
                .filter(|c: &Vec<_>| !c.is_empty())
                .ok_or_else(|| TlsError::Pem {
                    path: cert_path.clone(),
                    what: "certificate",
                })?;
        let key = PrivateKeyDer::from_pem_slice(self.key.expose().as_bytes()).map_err(|_| {
            TlsError::Pem {
                path: key_path.clone(),
                what: "private key",
            }
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| TlsError::Config(e.to_string()))?;
        let builder = match (&self.client_ca, ca_path) {
            (Some(pem), Some(path)) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|_| TlsError::Pem {
                        path: path.clone(),
                        what: "CA certificate",
                    })?;
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Config(format!("{}: {e}", path.display())))?;
                }
                if roots.is_empty() {
                    return Err(TlsError::Pem {
                        path: path.clone(),
                        what: "CA certificate",
                    });
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if self.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_base64_of_32_bytes_with_or_without_curls_prefix() {
        let b64 = "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        assert_eq!(parse_pin(b64), parse_pin(&format!("sha256//{b64}")));
        assert!(parse_pin(b64).is_some());
        assert_eq!(parse_pin("c2hvcnQ="), None);
        assert_eq!(parse_pin("not base64!"), None);
    }
}
