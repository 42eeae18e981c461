//! Leaf certificates for Amazon's hosts, minted from the operator's CA (forward-proxy mode), and
//! the CA itself (`spgate ca init`).
//!
//! A tool that trusts the operator's CA and tunnels through the gateway (`CONNECT
//! sellingpartnerapi-na.amazon.com:443`) gets a certificate for exactly the host it named, signed by
//! that CA, valid for [`LEAF_VALIDITY`]. Each host's TLS configuration is cached (at most
//! `certificate_cache_size` hosts, the oldest minted dropped first) and minted again once half
//! of its validity has passed, so a long-running gateway never serves an expired leaf. Only the
//! hosts `[forward_proxy] allowed_hosts` lists ever reach [`Minter::server_config`].

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Env;
use crate::secret::Secret;

/// How long a minted leaf certificate is valid (its `notBefore` is an hour back, for clocks
/// that run behind).
pub const LEAF_VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long `spgate ca init`'s CA certificate is valid.
const CA_VALIDITY_DAYS: i64 = 3650;

/// The file names `spgate ca init` writes.
pub const CA_CERT_FILE: &str = "spgate-forward-ca.pem";
/// See [`CA_CERT_FILE`].
pub const CA_KEY_FILE: &str = "spgate-forward-ca.key";

/// Why the CA could not be loaded or a certificate not minted or written.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The CA certificate or key is not usable (bad PEM, not a CA, key unsupported).
    #[error("{path}: {what}")]
    Ca {
        /// The file.
        path: PathBuf,
        /// What is wrong (never key material).
        what: String,
    },
    /// rcgen or rustls refused a minted certificate.
    #[error("minting a certificate for {host} failed: {what}")]
    Mint {
        /// The host.
        host: String,
        /// Why.
        what: String,
    },
    /// `spgate ca init` would overwrite a file.
    #[error("{0} exists; refusing to overwrite it (move it away or choose another --out)")]
    Exists(PathBuf),
    /// `spgate ca init` could not write a file.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Issues leaf certificates under the operator's CA, cached per host.
pub struct Minter {
    issuer: Issuer<'static, KeyPair>,
    cache: Mutex<Cache>,
    capacity: usize,
    minted: std::sync::atomic::AtomicU64,
}

/// Minted configurations per host, and the order they were minted in (for eviction).
#[derive(Default)]
struct Cache {
    configs: HashMap<String, (Instant, Arc<rustls::ServerConfig>)>,
    order: VecDeque<String>,
}

impl std::fmt::Debug for Minter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Minter")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Minter {
    /// Loads the CA certificate and key (PEM) through `env`.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        capacity: usize,
        env: &dyn Env,
    ) -> Result<Minter, MintError> {
        let read = |path: &Path| {
            env.read_file(path).map_err(|source| MintError::Read {
                path: path.to_path_buf(),
                source,
            })
        };
        let cert = read(cert_file)?;
        let key = Secret::new(read(key_file)?);
        let key = KeyPair::from_pem(key.expose()).map_err(|e| MintError::Ca {
            path: key_file.to_path_buf(),
            what: format!("not a usable PEM private key ({e})"),
        })?;
        let issuer = Issuer::from_ca_cert_pem(&cert, key).map_err(|e| MintError::Ca {
            path: cert_file.to_path_buf(),
            what: format!("not a PEM CA certificate ({e})"),
        })?;
        if !issuer.key_usages().is_empty()
            && !issuer.key_usages().contains(&KeyUsagePurpose::KeyCertSign)
        {
            return Err(MintError::Ca {
                path: cert_file.to_path_buf(),
                what: "the certificate's key usage does not allow signing certificates".into(),
            });
        }
        let minter = Minter {
            issuer,
            cache: Mutex::new(Cache::default()),
            capacity: capacity.max(1),
            minted: std::sync::atomic::AtomicU64::new(0),
        };
        // A key that does not belong to the certificate would mint leaves no client accepts:
        // found now, at startup, not at the first tunnel.
        minter.check_key_matches(&cert, cert_file)?;
        Ok(minter)
    }

    /// The TLS configuration for `host` (lower case, one of the allowed hosts): cached, or
    /// minted now.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, MintError> {
        let fresh_for = LEAF_VALIDITY / 2;
        if let Some((at, config)) = self.lock().configs.get(host) {
            if at.elapsed() < fresh_for {
                return Ok(config.clone());
            }
        }
        let config = Arc::new(self.mint(host)?);
        let mut cache = self.lock();
        if cache
            .configs
            .insert(host.to_owned(), (Instant::now(), config.clone()))
            .is_none()
        {
            cache.order.push_back(host.to_owned());
        }
        while cache.order.len() > self.capacity {
            if let Some(old) = cache.order.pop_front() {
                cache.configs.remove(&old);
            }
        }
        Ok(config)
    }

    /// Leaf certificates minted since start.
    pub fn minted(&self) -> u64 {
        self.minted.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn mint(&self, host: &str) -> Result<rustls::ServerConfig, MintError> {
        let fail = |what: String| MintError::Mint {
            host: host.to_owned(),
            what,
        };
        let mut params =
            CertificateParams::new(vec![host.to_owned()]).map_err(|e| fail(e.to_string()))?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + LEAF_VALIDITY;
        let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|e| fail(e.to_string()))?;
        let key_der = PrivateKeyDer::try_from(key.serialize_der()).map_err(|e| fail(e.into()))?;
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| fail(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], key_der)
        .map_err(|e| fail(e.to_string()))?;
        // HTTP/1.1 inside the tunnel (what the SDKs speak through a proxy).
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        self.minted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(config)
    }

    /// Mints a throwaway leaf and checks its signature with the CA certificate's public key.
    fn check_key_matches(&self, ca_pem: &str, cert_file: &Path) -> Result<(), MintError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str| MintError::Ca {
            path: cert_file.to_path_buf(),
            what: what.into(),
        };
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| bad("no PEM certificate"))?;
        let params = CertificateParams::new(vec!["check.invalid".to_owned()])
            .map_err(|_| bad("cannot build a check certificate"))?;
        let key = KeyPair::generate().map_err(|_| bad("cannot generate a key"))?;
        let leaf = params
            .signed_by(&key, &self.issuer)
            .map_err(|_| bad("the key cannot sign under this certificate"))?;
        let anchor =
            webpki::anchor_from_trusted_cert(&ca).map_err(|_| bad("not a usable trust anchor"))?;
        let leaf_cert = webpki::EndEntityCert::try_from(leaf.der())
            .map_err(|_| bad("cannot read a minted certificate"))?;
        let now = rustls::pki_types::UnixTime::now();
        leaf_cert
            .verify_for_usage(
                webpki::ALL_VERIFICATION_ALGS,
                &[anchor],
                &[],
                now,
                webpki::KeyUsage::server_auth(),
                None,
                None,
            )
            .map_err(|_| bad("the key file does not belong to this CA certificate"))?;
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `spgate ca init --out <dir>`: a new CA (ECDSA P-256, 10 years) whose key is written 0600 and
/// certificate 0644; refuses to overwrite either. Returns the two paths (certificate, key).
pub fn ca_init(dir: &Path) -> Result<(PathBuf, PathBuf), MintError> {
    let cert_path = dir.join(CA_CERT_FILE);
    let key_path = dir.join(CA_KEY_FILE);
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(MintError::Exists(p.clone()));
        }
    }
    let fail = |what: String| MintError::Ca {
        path: cert_path.clone(),
        what,
    };
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| fail(e.to_string()))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "spgate forward-proxy CA");
    params
        .distinguished_name
        .push(DnType::OrganizationName, "spgate");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(CA_VALIDITY_DAYS);
    let key = KeyPair::generate().map_err(|e| fail(e.to_string()))?;
    let cert = params.self_signed(&key).map_err(|e| fail(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| MintError::Write {
        path: dir.to_path_buf(),
        source,
    })?;
    let key_pem = Secret::new(key.serialize_pem());
    write_new(&key_path, key_pem.expose().as_bytes(), 0o600)?;
    if let Err(e) = write_new(&cert_path, cert.pem().as_bytes(), 0o644) {
        // No key without its certificate: the next `ca init` would refuse to overwrite it.
        let _ = std::fs::remove_file(&key_path);
        return Err(e);
    }
    Ok((cert_path, key_path))
}

/// Creates `path` (never replacing an existing file) with `mode`, and writes `bytes`.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MintError> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let err = |source| MintError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            MintError::Exists(path.to_path_buf())
        } else {
            err(e)
        }
    })?;
    file.write_all(bytes).map_err(err)?;
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessEnv;

    #[test]
    fn ca_init_writes_a_private_key_and_a_certificate_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca_init(dir.path()).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode(&key), 0o600);
            assert_eq!(mode(&cert), 0o644);
        }
        let before = std::fs::read(&key).unwrap();
        assert!(matches!(ca_init(dir.path()), Err(MintError::Exists(_))));
        assert_eq!(
            std::fs::read(&key).unwrap(),
            before,
            "the key was not touched"
        );
        let minter = Minter::load(&cert, &key, 2, &ProcessEnv).unwrap();
        let first = minter
            .server_config("sellingpartnerapi-na.amazon.com")
            .unwrap();
        let again = minter
            .server_config("sellingpartnerapi-na.amazon.com")
            .unwrap();
        assert!(Arc::ptr_eq(&first, &again), "cached");
        assert_eq!(minter.minted(), 1);
        minter.server_config("api.amazon.com").unwrap();
        minter
            .server_config("sellingpartnerapi-eu.amazon.com")
            .unwrap();
        let evicted = minter
            .server_config("sellingpartnerapi-na.amazon.com")
            .unwrap();
        assert!(
            !Arc::ptr_eq(&first, &evicted),
            "the oldest host was evicted"
        );
        assert_eq!(minter.minted(), 4);
    }

    #[test]
    fn a_key_of_another_ca_is_refused_at_load() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert_a, _) = ca_init(a.path()).unwrap();
        let (_, key_b) = ca_init(b.path()).unwrap();
        let err = Minter::load(&cert_a, &key_b, 8, &ProcessEnv).unwrap_err();
        assert!(
            err.to_string().contains("does not belong"),
            "unexpected error: {err}"
        );
        let err = Minter::load(&key_b, &key_b, 8, &ProcessEnv).unwrap_err();
        assert!(matches!(err, MintError::Ca { .. }), "{err}");
    }
}
