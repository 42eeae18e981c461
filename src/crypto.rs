//! Cryptographic primitives, all from `ring`: randomness, SHA-256, and sealing secrets at rest.
//!
//! Secrets at rest (refresh tokens, the LWA client secret) are sealed with AES-256-GCM under the
//! master key before they reach any store. A sealed value reads `v1:<key id>:<base64url(nonce ||
//! ciphertext || tag)>`; the key id lets the master key rotate while old values stay readable.
//! The associated data binds a ciphertext to its purpose (e.g. the seller it belongs to), so a
//! value copied to another record does not decrypt.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use crate::secret::Secret;

/// Why a cryptographic operation failed. Never carries key material or plaintext.
#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    /// The operating system's random source failed.
    #[error("the system random source failed")]
    Random,
    /// A master key was not 32 bytes of base64.
    #[error("master key must be 32 bytes encoded as base64 (got {0} bytes)")]
    BadKeyLength(usize),
    /// A master key was not valid base64.
    #[error("master key is not valid base64")]
    BadKeyEncoding,
    /// A key id is empty or contains characters other than `[A-Za-z0-9_-]`.
    #[error("key id must be 1-32 characters of [A-Za-z0-9_-]")]
    BadKeyId,
    /// A sealed value is not in the `v1:<kid>:<b64>` format.
    #[error("sealed value is malformed")]
    Malformed,
    /// A sealed value names a key id that is not configured.
    #[error("sealed value uses unknown key id {0}")]
    UnknownKeyId(String),
    /// Authentication failed: wrong key, wrong associated data, or tampered ciphertext.
    #[error("sealed value failed authentication")]
    Unauthentic,
}

/// Fills a fresh array with random bytes from the OS.
pub fn random_bytes<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| CryptoError::Random)?;
    Ok(out)
}

/// A random token of `N` bytes, base64url without padding.
pub fn random_token<const N: usize>() -> Result<String, CryptoError> {
    Ok(URL_SAFE_NO_PAD.encode(random_bytes::<N>()?))
}

/// SHA-256 of the input, lowercase hex.
pub fn sha256_hex(input: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, input);
    hex(digest.as_ref())
}

/// Whether two byte strings are equal, in time that depends only on their lengths (no early
/// exit at the first difference): every comparison of a presented token, CSRF token or digest
/// with a stored one goes through here.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq as _;
    bool::from(a.ct_eq(b))
}

/// Lowercase hex of bytes.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 0xf) as usize] as char);
    }
    s
}

/// The master key: AES-256-GCM, with an id so it can be rotated.
///
/// Old keys stay configured (read-only) during rotation; new values are always sealed under the
/// current key. Cloning shares no state (the vault holds its own handle).
#[derive(Clone)]
pub struct MasterKey {
    current: (String, LessSafeKey),
    previous: Vec<(String, LessSafeKey)>,
    /// HMAC key derived from the current key (HKDF-SHA256), for signing links and tokens.
    signing: ring::hmac::Key,
}

// === impl MasterKey ===

impl MasterKey {
    /// Builds a master key from its id and base64 (standard or url-safe) encoding of 32 bytes.
    pub fn from_base64(id: &str, encoded: &Secret<String>) -> Result<MasterKey, CryptoError> {
        let bytes = decode_key(encoded)?;
        Ok(MasterKey {
            current: (check_key_id(id)?, aead_key(&bytes)?),
            signing: signing_key(&bytes),
            previous: Vec::new(),
        })
    }

    /// Adds an older key that may still open values sealed before a rotation.
    pub fn with_previous(
        mut self,
        id: &str,
        encoded: &Secret<String>,
    ) -> Result<MasterKey, CryptoError> {
        self.previous
            .push((check_key_id(id)?, aead_key(&decode_key(encoded)?)?));
        Ok(self)
    }

    /// An HMAC-SHA256 tag (base64url) over `data`, bound to `purpose` so a tag made for one use
    /// is worthless for another.
    pub fn sign(&self, purpose: &str, data: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(self.tag(purpose, data).as_ref())
    }

    /// Checks a tag made by [`MasterKey::sign`] (constant time).
    pub fn verify(&self, purpose: &str, data: &[u8], tag_b64: &str) -> bool {
        let Ok(tag) = URL_SAFE_NO_PAD.decode(tag_b64) else {
            return false;
        };
        let mut msg = Vec::with_capacity(purpose.len() + 1 + data.len());
        msg.extend_from_slice(purpose.as_bytes());
        msg.push(0);
        msg.extend_from_slice(data);
        ring::hmac::verify(&self.signing, &msg, &tag).is_ok()
    }

    fn tag(&self, purpose: &str, data: &[u8]) -> ring::hmac::Tag {
        let mut ctx = ring::hmac::Context::with_key(&self.signing);
        ctx.update(purpose.as_bytes());
        ctx.update(&[0]);
        ctx.update(data);
        ctx.sign()
    }

    /// A fresh random key, base64-encoded (for `spgate demo` and key generation).
    pub fn generate_base64() -> Result<Secret<String>, CryptoError> {
        Ok(Secret::new(
            base64::engine::general_purpose::STANDARD.encode(random_bytes::<32>()?),
        ))
    }

    /// The id of the key new values are sealed under.
    pub fn current_id(&self) -> &str {
        &self.current.0
    }

    /// Seals `plaintext`, binding it to `aad` (e.g. `"refresh_token:A1B2C3"`).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<String, CryptoError> {
        let (id, key) = &self.current;
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut buf = plaintext.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Unauthentic)?;
        let mut out = Vec::with_capacity(NONCE_LEN + buf.len());
        out.extend_from_slice(&nonce_bytes);
        out.extend_from_slice(&buf);
        Ok(format!("v1:{id}:{}", URL_SAFE_NO_PAD.encode(out)))
    }

    /// Opens a value sealed by [`MasterKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &str, aad: &[u8]) -> Result<Secret<Vec<u8>>, CryptoError> {
        let mut parts = sealed.splitn(3, ':');
        let (Some("v1"), Some(id), Some(b64)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(CryptoError::Malformed);
        };
        let key = std::iter::once(&self.current)
            .chain(self.previous.iter())
            .find(|(kid, _)| kid == id)
            .map(|(_, k)| k)
            .ok_or_else(|| CryptoError::UnknownKeyId(id.to_string()))?;
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CryptoError::Malformed)?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = key
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Unauthentic)?;
        Ok(Secret::new(plain.to_vec()))
    }

    /// Seals a UTF-8 secret.
    pub fn seal_str(&self, plaintext: &Secret<String>, aad: &[u8]) -> Result<String, CryptoError> {
        self.seal(plaintext.expose().as_bytes(), aad)
    }

    /// Opens a sealed UTF-8 secret.
    pub fn open_str(&self, sealed: &str, aad: &[u8]) -> Result<Secret<String>, CryptoError> {
        let bytes = self.open(sealed, aad)?;
        String::from_utf8(bytes.expose().clone())
            .map(Secret::new)
            .map_err(|_| CryptoError::Unauthentic)
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey")
            .field("current_id", &self.current.0)
            .field("key", &"**REDACTED**")
            .finish()
    }
}

/// A per-order data key: AES-256-GCM, 32 random bytes, identified by a random key id.
///
/// Each order's buyer PII (cached responses, `encrypt`ed fields handed to tools) is sealed under
/// its own data key. The key is stored only wrapped by the master key; destroying it when the
/// order's retention ends makes every copy unreadable (crypto-shredding).
#[derive(Clone)]
pub struct DataKey {
    id: String,
    bytes: Secret<[u8; 32]>,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("id", &self.id)
            .field("bytes", &"**REDACTED**")
            .finish()
    }
}

/// The prefix of a field encrypted by [`DataKey::seal_field`].
pub const FIELD_PREFIX: &str = "spgate:v1:";

impl DataKey {
    /// A fresh random key with a fresh random id (`k` + 16 hex digits).
    pub fn generate() -> Result<DataKey, CryptoError> {
        Ok(DataKey {
            id: format!("k{}", hex(&random_bytes::<8>()?)),
            bytes: Secret::new(random_bytes::<32>()?),
        })
    }

    /// A key from its id and raw bytes (after unwrapping).
    pub fn from_parts(id: &str, bytes: &[u8]) -> Result<DataKey, CryptoError> {
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| CryptoError::BadKeyLength(bytes.len()))?;
        Ok(DataKey {
            id: check_key_id(id)?,
            bytes: Secret::new(bytes),
        })
    }

    /// The key id (appears in envelopes; not secret).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The raw key, to be wrapped by the master key. Never log it.
    pub fn expose_bytes(&self) -> &[u8; 32] {
        self.bytes.expose()
    }

    /// The key wrapped by the master key, bound to its id.
    pub fn wrap(&self, master: &MasterKey) -> Result<String, CryptoError> {
        master.seal(
            self.bytes.expose(),
            format!("data_key:{}", self.id).as_bytes(),
        )
    }

    /// Unwraps a key sealed by [`DataKey::wrap`].
    pub fn unwrap(id: &str, wrapped: &str, master: &MasterKey) -> Result<DataKey, CryptoError> {
        let bytes = master.open(wrapped, format!("data_key:{id}").as_bytes())?;
        DataKey::from_parts(id, bytes.expose())
    }

    fn aead(&self) -> Result<LessSafeKey, CryptoError> {
        UnboundKey::new(&AES_256_GCM, self.bytes.expose())
            .map(LessSafeKey::new)
            .map_err(|_| CryptoError::BadKeyLength(32))
    }

    /// Seals bytes bound to `aad` (e.g. the order id): base64url(nonce || ciphertext || tag).
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let nonce_bytes = random_bytes::<NONCE_LEN>()?;
        let mut buf = Vec::with_capacity(NONCE_LEN + plaintext.len() + AES_256_GCM.tag_len());
        buf.extend_from_slice(&nonce_bytes);
        buf.extend_from_slice(plaintext);
        let tag = self
            .aead()?
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut buf[NONCE_LEN..],
            )
            .map_err(|_| CryptoError::Unauthentic)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(buf)
    }

    /// Opens bytes sealed by [`DataKey::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Secret<Vec<u8>>, CryptoError> {
        if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(CryptoError::Malformed);
        }
        let (nonce, ct) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| CryptoError::Malformed)?;
        let mut buf = ct.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(aad), &mut buf)
            .map_err(|_| CryptoError::Unauthentic)?;
        Ok(Secret::new(plain.to_vec()))
    }

    /// A field envelope: `spgate:v1:<key id>:<base64url(nonce || ciphertext || tag)>`, bound
    /// to the order id as associated data.
    pub fn seal_field(&self, order_id: &str, plaintext: &str) -> Result<String, CryptoError> {
        let sealed = self.seal(plaintext.as_bytes(), order_id.as_bytes())?;
        Ok(format!(
            "{FIELD_PREFIX}{}:{}",
            self.id,
            URL_SAFE_NO_PAD.encode(sealed)
        ))
    }

    /// Opens a field envelope made by [`DataKey::seal_field`] for the same order.
    pub fn open_field(
        &self,
        order_id: &str,
        envelope: &str,
    ) -> Result<Secret<String>, CryptoError> {
        let (id, b64) = parse_field(envelope).ok_or(CryptoError::Malformed)?;
        if id != self.id {
            return Err(CryptoError::UnknownKeyId(id.to_string()));
        }
        let raw = URL_SAFE_NO_PAD
            .decode(b64)
            .map_err(|_| CryptoError::Malformed)?;
        let plain = self.open(&raw, order_id.as_bytes())?;
        String::from_utf8(plain.expose().clone())
            .map(Secret::new)
            .map_err(|_| CryptoError::Unauthentic)
    }
}

/// The key id and payload of a field envelope, if `value` is one.
pub fn parse_field(value: &str) -> Option<(&str, &str)> {
    let rest = value.strip_prefix(FIELD_PREFIX)?;
    let (id, b64) = rest.split_once(':')?;
    (!id.is_empty() && !b64.is_empty()).then_some((id, b64))
}

fn check_key_id(id: &str) -> Result<String, CryptoError> {
    let ok = !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    ok.then(|| id.to_string()).ok_or(CryptoError::BadKeyId)
}

fn decode_key(encoded: &Secret<String>) -> Result<Secret<Vec<u8>>, CryptoError> {
    let text = encoded.expose().trim();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(text)
        .or_else(|_| URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')))
        .map_err(|_| CryptoError::BadKeyEncoding)?;
    if bytes.len() != 32 {
        return Err(CryptoError::BadKeyLength(bytes.len()));
    }
    Ok(Secret::new(bytes))
}

fn aead_key(bytes: &Secret<Vec<u8>>) -> Result<LessSafeKey, CryptoError> {
    let bytes = bytes.expose();
    let unbound = UnboundKey::new(&aead::AES_256_GCM, bytes)
        .map_err(|_| CryptoError::BadKeyLength(bytes.len()))?;
    Ok(LessSafeKey::new(unbound))
}

/// An HMAC-SHA256 key derived from the master key with HKDF, so signing never reuses the
/// encryption key itself.
fn signing_key(bytes: &Secret<Vec<u8>>) -> ring::hmac::Key {
    let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, b"spgate-v1");
    let prk = salt.extract(bytes.expose());
    let okm = prk
        .expand(&[b"signing"], ring::hmac::HMAC_SHA256)
        .expect("HMAC_SHA256 output length is valid for HKDF-SHA256");
    ring::hmac::Key::from(okm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> MasterKey {
        MasterKey::from_base64(id, &MasterKey::generate_base64().unwrap()).unwrap()
    }

    #[test]
    fn sealed_values_open_only_with_the_same_key_and_associated_data() {
        let k = key("k1");
        let sealed = k.seal(b"Atzr|refresh", b"seller:A1").unwrap();
        assert!(sealed.starts_with("v1:k1:"));
        assert!(!sealed.contains("Atzr"));
        assert_eq!(
            k.open(&sealed, b"seller:A1").unwrap().expose(),
            b"Atzr|refresh"
        );
        assert!(matches!(
            k.open(&sealed, b"seller:A2"),
            Err(CryptoError::Unauthentic)
        ));
        let other = key("k1");
        assert!(matches!(
            other.open(&sealed, b"seller:A1"),
            Err(CryptoError::Unauthentic)
        ));
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push(if sealed.ends_with('A') { 'B' } else { 'A' });
        assert!(k.open(&tampered, b"seller:A1").is_err());
    }

    #[test]
    fn rotated_keys_still_open_old_values_and_seal_under_the_new_id() {
        let old_b64 = MasterKey::generate_base64().unwrap();
        let old = MasterKey::from_base64("old", &old_b64).unwrap();
        let sealed = old.seal(b"x", b"a").unwrap();
        let new = MasterKey::from_base64("new", &MasterKey::generate_base64().unwrap())
            .unwrap()
            .with_previous("old", &old_b64)
            .unwrap();
        assert_eq!(new.open(&sealed, b"a").unwrap().expose(), b"x");
        assert!(new.seal(b"y", b"a").unwrap().starts_with("v1:new:"));
        assert!(matches!(
            key("other").open(&sealed, b"a"),
            Err(CryptoError::UnknownKeyId(_))
        ));
    }

    #[test]
    fn bad_master_keys_and_malformed_values_are_rejected() {
        let short = Secret::new(base64::engine::general_purpose::STANDARD.encode([0u8; 16]));
        assert!(matches!(
            MasterKey::from_base64("k", &short),
            Err(CryptoError::BadKeyLength(16))
        ));
        assert!(MasterKey::from_base64("k", &Secret::new("!!".into())).is_err());
        assert!(MasterKey::from_base64("bad id", &MasterKey::generate_base64().unwrap()).is_err());
        let k = key("k1");
        for bad in ["", "v1", "v2:k1:AAAA", "v1:k1:!!!", "v1:k1:AAAA"] {
            assert!(k.open(bad, b"").is_err(), "{bad}");
        }
        assert!(format!("{k:?}").contains("REDACTED"), "{k:?}");
    }

    #[test]
    fn signatures_verify_only_for_the_same_key_purpose_and_data() {
        let k = key("k1");
        let tag = k.sign("invite", b"abc");
        assert!(k.verify("invite", b"abc", &tag));
        assert!(!k.verify("state", b"abc", &tag), "bound to its purpose");
        assert!(!k.verify("invite", b"abd", &tag));
        assert!(!key("k1").verify("invite", b"abc", &tag), "another key");
        assert!(!k.verify("invite", b"abc", "not base64!"));
    }

    #[test]
    fn field_envelopes_open_only_with_their_data_key_and_order() {
        let k = DataKey::generate().unwrap();
        let env = k.seal_field("902-0000000-0000001", "Jane Example").unwrap();
        assert!(env.starts_with(&format!("spgate:v1:{}:", k.id())), "{env}");
        assert!(!env.contains("Jane"));
        assert_eq!(
            k.open_field("902-0000000-0000001", &env).unwrap().expose(),
            "Jane Example"
        );
        assert!(k.open_field("902-0000000-0000002", &env).is_err());
        let other = DataKey::generate().unwrap();
        assert!(other.open_field("902-0000000-0000001", &env).is_err());
        let master = key("m1");
        let wrapped = k.wrap(&master).unwrap();
        let back = DataKey::unwrap(k.id(), &wrapped, &master).unwrap();
        assert_eq!(
            back.open_field("902-0000000-0000001", &env)
                .unwrap()
                .expose(),
            "Jane Example"
        );
        assert!(DataKey::unwrap(other.id(), &wrapped, &master).is_err());
        assert!(!format!("{k:?}").contains(&format!("{:?}", &k.expose_bytes()[..4])));
        assert_eq!(parse_field("spgate:v1::x"), None);
        assert_eq!(parse_field("plain"), None);
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn sha256_hex_matches_a_known_vector() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
