//! Leaf certificates for Amazon's hosts, minted from the operator's CA (forward-proxy mode), and
//! the CA itself (`spgate ca init`).
//!
//! A tool that trusts the operator's CA and tunnels through the gateway (`CONNECT
//! sellingpartnerapi-na.amazon.com:443`) gets a certificate for exactly the host it named, signed by
//! that CA, valid for [`LEAF_VALIDITY`] (never past the CA's own expiry). Each host's TLS
//! configuration is cached (at most `certificate_cache_size` hosts, at least as many as
//! `allowed_hosts`, the oldest minted dropped first) and minted again once half of its validity
//! has passed, so a long-running gateway never serves an expired leaf. Only the hosts
//! `[forward_proxy] allowed_hosts` lists ever reach [`Minter::server_config`], and at load every
//! one of them must verify under the CA (its key and its name constraints).
//!
//! The CA `spgate ca init` makes can do nothing but this: X.509 name constraints permit only
//! Amazon's hosts the forward proxy may serve ([`super::forward::AMAZON_HOSTS`]; a client
//! rejects a leaf for any other name even if the key leaks), `pathLenConstraint` 0 (no
//! intermediate CAs), and it expires after [`CA_VALIDITY_DAYS`] days. From
//! [`CA_EXPIRY_WARNING`] before that, loading it and minting under it log a warning, and
//! `spgate_forward_ca_expiry_timestamp_seconds` shows the date to alert on. Its key is written
//! to a temporary file (0600), synced, and linked into place only when complete.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, CidrSubnet, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, Issuer, KeyPair, KeyUsagePurpose, NameConstraints,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::Env;
use crate::secret::Secret;

/// How long a minted leaf certificate is valid (its `notBefore` is an hour back, for clocks
/// that run behind): a day, so a leaf copied off a gateway is of little use; minted again
/// after half of it.
pub const LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// How long `spgate ca init`'s CA certificate is valid: two years.
pub const CA_VALIDITY_DAYS: u64 = 730;

/// How long before the CA's expiry the gateway starts warning (log) about it.
pub const CA_EXPIRY_WARNING: Duration = Duration::from_secs(30 * 24 * 3600);

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
    /// The CA certificate has expired: nothing minted under it would verify.
    #[error("{path}: the CA certificate expired at {expired}; make a new one with `spgate ca init` and give the tools its certificate")]
    CaExpired {
        /// The CA certificate file.
        path: PathBuf,
        /// Its `notAfter` (RFC 3339).
        expired: String,
    },
    /// The CA may not issue for an allowed host (its name constraints exclude it).
    #[error("{path}: the CA's name constraints do not permit {host}; remove it from [forward_proxy] allowed_hosts or use a CA that may issue for it")]
    HostNotPermitted {
        /// The CA certificate file.
        path: PathBuf,
        /// The host.
        host: String,
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
    /// The CA certificate file (named in errors).
    cert_file: PathBuf,
    /// The CA's `notAfter`: no leaf outlives it, and none is minted after it.
    ca_not_after: time::OffsetDateTime,
    cache: Mutex<Cache>,
    capacity: usize,
    minted: std::sync::atomic::AtomicU64,
}

/// Minted configurations per host (with the moment each is minted again), and the order they
/// were minted in (for eviction).
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
    /// Loads the CA certificate and key (PEM) through `env` and checks that every one of
    /// `hosts` gets a leaf that verifies under it (the key belongs to the certificate, the name
    /// constraints permit the host, the CA has not expired). The cache keeps at least
    /// `hosts.len()` hosts.
    pub fn load(
        cert_file: &Path,
        key_file: &Path,
        capacity: usize,
        hosts: &[String],
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
        let ca_not_after = not_after(&cert).ok_or_else(|| MintError::Ca {
            path: cert_file.to_path_buf(),
            what: "not a PEM X.509 certificate".into(),
        })?;
        let minter = Minter {
            issuer,
            cert_file: cert_file.to_path_buf(),
            ca_not_after,
            cache: Mutex::new(Cache::default()),
            capacity: capacity.max(hosts.len()).max(1),
            minted: std::sync::atomic::AtomicU64::new(0),
        };
        minter.check_expiry()?;
        // A key that does not belong to the certificate, or a host the CA may not issue for,
        // would mint leaves no client accepts: found now, at startup, not at the first tunnel.
        minter.check_hosts(&cert, hosts)?;
        Ok(minter)
    }

    /// The CA's expiry, in seconds since the epoch (`spgate_forward_ca_expiry_timestamp_seconds`).
    pub fn ca_expires_at(&self) -> i64 {
        self.ca_not_after.unix_timestamp()
    }

    /// An error once the CA has expired; a warning (at most one per 10 s) within
    /// [`CA_EXPIRY_WARNING`] of it.
    fn check_expiry(&self) -> Result<(), MintError> {
        let left = self.ca_not_after - time::OffsetDateTime::now_utc();
        let expires = rfc3339(self.ca_not_after);
        if left <= time::Duration::ZERO {
            return Err(MintError::CaExpired {
                path: self.cert_file.clone(),
                expired: expires,
            });
        }
        if left < CA_EXPIRY_WARNING {
            if let Some(repeats) = crate::proxy::rescue::log_limit::admit("forward ca expiry") {
                tracing::warn!(
                    ca_cert_file = %self.cert_file.display(),
                    expires = %expires,
                    days_left = left.whole_days(),
                    repeats,
                    "The forward-proxy CA expires soon: make a new one with `spgate ca init` and give the tools its certificate."
                );
            }
        }
        Ok(())
    }

    /// The TLS configuration for `host` (lower case, one of the allowed hosts): cached, or
    /// minted now.
    pub fn server_config(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, MintError> {
        if let Some((refresh_at, config)) = self.lock().configs.get(host) {
            if Instant::now() < *refresh_at {
                return Ok(config.clone());
            }
        }
        self.check_expiry()?;
        let (config, lifetime) = self.mint(host)?;
        let config = Arc::new(config);
        let refresh_at = Instant::now() + lifetime / 2;
        let mut cache = self.lock();
        if cache
            .configs
            .insert(host.to_owned(), (refresh_at, config.clone()))
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

    /// A leaf for `host` and its TLS configuration, and how long the leaf is valid from now.
    fn mint(&self, host: &str) -> Result<(rustls::ServerConfig, Duration), MintError> {
        let fail = |what: String| MintError::Mint {
            host: host.to_owned(),
            what,
        };
        let (cert, key, lifetime) = self.leaf(host).map_err(|e| fail(e.to_string()))?;
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
        Ok((config, lifetime))
    }

    /// A leaf certificate for `host` under the CA, its key, and its lifetime from now
    /// ([`LEAF_VALIDITY`], cut at the CA's expiry).
    fn leaf(&self, host: &str) -> Result<(rcgen::Certificate, KeyPair, Duration), rcgen::Error> {
        let mut params = CertificateParams::new(vec![host.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, host);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = (now + LEAF_VALIDITY).min(self.ca_not_after);
        let lifetime = Duration::try_from(params.not_after - now).unwrap_or_default();
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert, key, lifetime))
    }

    /// Mints a throwaway leaf for each host and verifies it as a client would: the CA
    /// certificate as the only trust anchor (its key, its name constraints), the host's name.
    fn check_hosts(&self, ca_pem: &str, hosts: &[String]) -> Result<(), MintError> {
        use rustls::pki_types::pem::PemObject;
        let bad = |what: &str| MintError::Ca {
            path: self.cert_file.clone(),
            what: what.into(),
        };
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| bad("no PEM certificate"))?;
        let anchor =
            webpki::anchor_from_trusted_cert(&ca).map_err(|_| bad("not a usable trust anchor"))?;
        let now = rustls::pki_types::UnixTime::now();
        for host in hosts {
            let (leaf, _, _) = self
                .leaf(host)
                .map_err(|_| bad("the key cannot sign under this certificate"))?;
            let leaf_cert = webpki::EndEntityCert::try_from(leaf.der())
                .map_err(|_| bad("cannot read a minted certificate"))?;
            let name = rustls::pki_types::ServerName::try_from(host.as_str())
                .map_err(|_| bad("an allowed host is not a DNS name"))?;
            let verified = leaf_cert
                .verify_for_usage(
                    webpki::ALL_VERIFICATION_ALGS,
                    std::slice::from_ref(&anchor),
                    &[],
                    now,
                    webpki::KeyUsage::server_auth(),
                    None,
                    None,
                )
                .and_then(|_| leaf_cert.verify_is_valid_for_subject_name(&name));
            match verified {
                Ok(()) => {}
                Err(webpki::Error::NameConstraintViolation) => {
                    return Err(MintError::HostNotPermitted {
                        path: self.cert_file.clone(),
                        host: host.clone(),
                    })
                }
                Err(_) => return Err(bad("the key file does not belong to this CA certificate")),
            }
        }
        Ok(())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Cache> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// `spgate ca init --out <dir>`: a new CA (ECDSA P-256, [`CA_VALIDITY_DAYS`], name-constrained to
/// Amazon's hosts, path length 0) whose key is written 0600 and certificate 0644; refuses to
/// overwrite either. Returns the two paths (certificate, key).
pub fn ca_init(dir: &Path) -> Result<(PathBuf, PathBuf), MintError> {
    ca_init_valid_for(dir, Duration::from_secs(CA_VALIDITY_DAYS * 24 * 3600))
}

/// [`ca_init`] with another lifetime (tests make CAs that expire in seconds).
pub fn ca_init_valid_for(dir: &Path, validity: Duration) -> Result<(PathBuf, PathBuf), MintError> {
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
    // Leaves for Amazon's hosts (and their subdomains) only: a leaked key cannot impersonate
    // any other site to the tools that trust this CA. Permitted DNS names say nothing about IP
    // addresses (RFC 5280 4.2.1.10: constraints bind only their own name type), so every IPv4
    // and IPv6 address is excluded too.
    params.name_constraints = Some(NameConstraints {
        permitted_subtrees: super::forward::AMAZON_HOSTS
            .iter()
            .map(|h| GeneralSubtree::DnsName((*h).to_owned()))
            .collect(),
        excluded_subtrees: vec![
            GeneralSubtree::IpAddress(CidrSubnet::V4([0; 4], [0; 4])),
            GeneralSubtree::IpAddress(CidrSubnet::V6([0; 16], [0; 16])),
        ],
    });
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + validity;
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

/// Creates `path` with `mode` holding `bytes`, whole or not at all: written to a temporary file
/// beside it (created with `mode`, so a key is never readable by others), synced, then linked
/// to `path`, which fails if `path` exists (never replaced); the temporary name is removed
/// either way.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), MintError> {
    use std::io::Write;
    let err = |source| MintError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let suffix = crate::crypto::random_bytes::<8>()
        .map(|b| crate::crypto::hex(&b))
        .map_err(|_| err(std::io::Error::other("no randomness for a temporary name")))?;
    let tmp = dir.join(format!(".{name}.{suffix}.tmp"));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let written = options.open(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    let linked = written.and_then(|()| std::fs::hard_link(&tmp, path));
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            // The new name is durable once the directory is synced.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            Err(MintError::Exists(path.to_path_buf()))
        }
        Err(e) => Err(err(e)),
    }
}

/// The `notAfter` of the first certificate in `pem`.
fn not_after(pem: &str) -> Option<time::OffsetDateTime> {
    use rustls::pki_types::pem::PemObject;
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).ok()?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der).ok()?;
    Some(cert.validity().not_after.to_datetime())
}

/// `t` as RFC 3339.
fn rfc3339(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.unix_timestamp().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ProcessEnv;

    fn hosts() -> Vec<String> {
        super::super::forward::AMAZON_HOSTS
            .iter()
            .map(|h| (*h).to_owned())
            .collect()
    }

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
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names.len(), 2, "no temporary file left: {names:?}");
        // A cache of 2 with no hosts to check: the oldest host is evicted by a third.
        let minter = Minter::load(&cert, &key, 2, &[], &ProcessEnv).unwrap();
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
        // With the allowed hosts named, the cache holds them all whatever the size asked.
        let minter = Minter::load(&cert, &key, 2, &hosts(), &ProcessEnv).unwrap();
        let first: Vec<_> = hosts()
            .iter()
            .map(|h| minter.server_config(h).unwrap())
            .collect();
        for (h, config) in hosts().iter().zip(&first) {
            assert!(
                Arc::ptr_eq(config, &minter.server_config(h).unwrap()),
                "{h}"
            );
        }
    }

    #[test]
    fn the_ca_is_name_constrained_to_amazons_hosts_path_length_0_and_valid_two_years() {
        use x509_parser::extensions::{GeneralName, ParsedExtension};
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca_init(dir.path()).unwrap();
        let pem = std::fs::read_to_string(&cert).unwrap();
        let der = {
            use rustls::pki_types::pem::PemObject;
            CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
        };
        let (_, x509) = x509_parser::parse_x509_certificate(&der).unwrap();
        let mut permitted = Vec::new();
        let mut path_len = None;
        for ext in x509.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::NameConstraints(nc) => {
                    assert!(ext.critical, "name constraints are critical");
                    // Every IP address excluded (0.0.0.0/0 and ::/0): DNS constraints do not
                    // bind IP-address names.
                    let excluded: Vec<_> = nc
                        .excluded_subtrees
                        .as_deref()
                        .unwrap_or_default()
                        .iter()
                        .map(|sub| match &sub.base {
                            GeneralName::IPAddress(ip) => ip.to_vec(),
                            other => panic!("only IP ranges are excluded: {other:?}"),
                        })
                        .collect();
                    assert_eq!(excluded, vec![vec![0u8; 8], vec![0u8; 32]]);
                    for sub in nc.permitted_subtrees.as_deref().unwrap_or_default() {
                        match &sub.base {
                            GeneralName::DNSName(d) => permitted.push(d.to_string()),
                            other => panic!("only DNS names are permitted: {other:?}"),
                        }
                    }
                }
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(bc.ca);
                    path_len = bc.path_len_constraint;
                }
                _ => {}
            }
        }
        permitted.sort();
        let mut expect = hosts();
        expect.sort();
        assert_eq!(permitted, expect);
        assert_eq!(path_len, Some(0));
        let validity = x509.validity();
        let days =
            (validity.not_after.to_datetime() - time::OffsetDateTime::now_utc()).whole_days();
        assert!((729..=730).contains(&days), "{days} days");

        // A host outside the constraints is refused at load, by name.
        let outside = vec![
            "sellingpartnerapi-na.amazon.com".to_owned(),
            "example.com".to_owned(),
        ];
        let err = Minter::load(&cert, &key, 8, &outside, &ProcessEnv).unwrap_err();
        assert!(
            matches!(&err, MintError::HostNotPermitted { host, .. } if host == "example.com"),
            "{err}"
        );
    }

    #[test]
    fn leaves_are_short_lived_and_never_outlive_the_ca_and_an_expired_ca_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = ca_init_valid_for(dir.path(), Duration::from_secs(3600)).unwrap();
        let minter = Minter::load(&cert, &key, 8, &hosts(), &ProcessEnv).unwrap();
        let (_, _, lifetime) = minter.leaf("api.amazon.com").unwrap();
        assert!(lifetime <= Duration::from_secs(3600), "{lifetime:?}");
        let long = tempfile::tempdir().unwrap();
        let (cert, key) = ca_init(long.path()).unwrap();
        let minter = Minter::load(&cert, &key, 8, &hosts(), &ProcessEnv).unwrap();
        let (_, _, lifetime) = minter.leaf("api.amazon.com").unwrap();
        assert!(
            lifetime <= LEAF_VALIDITY && lifetime > LEAF_VALIDITY - Duration::from_secs(60),
            "{lifetime:?}"
        );
        let expired = tempfile::tempdir().unwrap();
        let (cert, key) = ca_init_valid_for(expired.path(), Duration::ZERO).unwrap();
        let err = Minter::load(&cert, &key, 8, &hosts(), &ProcessEnv).unwrap_err();
        assert!(matches!(err, MintError::CaExpired { .. }), "{err}");
        assert!(err.to_string().contains("spgate ca init"), "{err}");
    }

    #[test]
    fn a_key_of_another_ca_is_refused_at_load() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (cert_a, _) = ca_init(a.path()).unwrap();
        let (_, key_b) = ca_init(b.path()).unwrap();
        let err = Minter::load(&cert_a, &key_b, 8, &hosts(), &ProcessEnv).unwrap_err();
        assert!(
            err.to_string().contains("does not belong"),
            "unexpected error: {err}"
        );
        let err = Minter::load(&key_b, &key_b, 8, &hosts(), &ProcessEnv).unwrap_err();
        assert!(matches!(err, MintError::Ca { .. }), "{err}");
    }
}
