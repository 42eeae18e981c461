//! A throwaway PKI for the TLS tests: a CA, server and client certificates made with rcgen and
//! written as PEM files into a temporary directory.

#![allow(dead_code)] // each test binary uses a different part of the helper
#![allow(unreachable_pub)] // a test helper module is private to each test crate by construction

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;

/// A CA able to issue certificates.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
    /// Where the CA's PEM certificate was written.
    pub cert_file: PathBuf,
}

/// An issued certificate and its key, as PEM files.
pub struct Issued {
    /// Certificate PEM file.
    pub cert_file: PathBuf,
    /// Private key PEM file.
    pub key_file: PathBuf,
    /// The certificate, DER.
    pub der: CertificateDer<'static>,
    /// Certificate PEM text.
    pub cert_pem: String,
    /// Key PEM text.
    pub key_pem: String,
}

impl Ca {
    /// A new CA whose certificate is written to `dir/<name>.pem`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("spgate test CA {name}"));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let cert_file = dir.join(format!("{name}.pem"));
        std::fs::write(&cert_file, issuer.pem()).unwrap();
        Ca { issuer, cert_file }
    }

    /// The CA certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    /// A server certificate for `localhost` and 127.0.0.1, written to `dir/<name>.{crt,key}`.
    pub fn server(&self, dir: &Path, name: &str) -> Issued {
        self.issue(
            dir,
            name,
            vec!["localhost".into(), "127.0.0.1".into()],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A server certificate for `names` only, written to `dir/<name>.{crt,key}`.
    pub fn server_for(&self, dir: &Path, name: &str, names: &[&str]) -> Issued {
        self.issue(
            dir,
            name,
            names.iter().map(|n| n.to_string()).collect(),
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with common name `name`, written to `dir/<name>.{crt,key}`.
    pub fn client(&self, dir: &Path, name: &str) -> Issued {
        self.issue(dir, name, vec![], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(
        &self,
        dir: &Path,
        name: &str,
        sans: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Issued {
        let mut params = CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let issued = Issued {
            cert_file: dir.join(format!("{name}.crt")),
            key_file: dir.join(format!("{name}.key")),
            der: cert.der().clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&issued.cert_file, &issued.cert_pem).unwrap();
        std::fs::write(&issued.key_file, &issued.key_pem).unwrap();
        issued
    }
}

impl Issued {
    /// The pin `[tools.<name>] client_cert_spki_sha256` takes for this certificate.
    pub fn pin(&self) -> [u8; 32] {
        spgate::server::tls::spki_sha256(&self.der).unwrap()
    }

    /// The certificate chain and key for a rustls client or server.
    pub fn rustls_pair(
        &self,
    ) -> (
        Vec<CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    ) {
        use rustls::pki_types::pem::PemObject;
        (
            vec![self.der.clone()],
            rustls::pki_types::PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).unwrap(),
        )
    }
}

/// A rustls client config trusting `ca`, offering `alpn`, with an optional client certificate.
pub fn client_config(
    ca: &Ca,
    alpn: &[&[u8]],
    client_cert: Option<&Issued>,
) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
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
    config
}
