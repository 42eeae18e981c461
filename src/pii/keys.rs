//! The keys the response policy needs: a per-seller pseudonym key (HMAC-SHA256) and a lookup of
//! per-order data keys (AES-256-GCM, [`DataKey`]).
//!
//! Fetching or creating data keys is I/O and happens before the transform: the caller asks
//! [`super::transform::order_ids`] which orders a response holds, loads their keys, and hands
//! them over through [`OrderKeys`].

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::Category;
use crate::crypto::{DataKey, MasterKey};

/// How many bytes of the HMAC a pseudonym keeps (128 bits: collisions are negligible).
const PSEUDONYM_BYTES: usize = 16;

/// The prefix of a pseudonym.
pub const PSEUDONYM_PREFIX: &str = "psn_";

/// Encrypts one PII value for an order: a `spgate:v1` envelope (AAD: the order id) whose
/// plaintext starts with the category (`<category>:<value>`), so a reveal knows what it opens.
pub fn seal_value(
    key: &DataKey,
    order_id: &str,
    category: Category,
    value: &str,
) -> Result<String, crate::crypto::CryptoError> {
    key.seal_field(order_id, &format!("{}:{value}", category.as_str()))
}

/// Opens an envelope made by [`seal_value`]: its category and value.
pub fn open_value(
    key: &DataKey,
    order_id: &str,
    envelope: &str,
) -> Result<(Category, crate::secret::Secret<String>), crate::crypto::CryptoError> {
    let plain = key.open_field(order_id, envelope)?;
    let (category, value) = plain
        .expose()
        .split_once(':')
        .and_then(|(c, v)| Some((c.parse::<Category>().ok()?, v)))
        .ok_or(crate::crypto::CryptoError::Malformed)?;
    Ok((category, crate::secret::Secret::new(value.to_string())))
}

/// The keys one transform uses.
#[derive(Clone, Copy)]
pub struct Keys<'a> {
    /// The seller's pseudonym key.
    pub pseudonym: &'a PseudonymKey,
    /// The data keys of the orders in the response.
    pub orders: &'a dyn OrderKeys,
}

/// Per-order data keys, looked up by order id.
pub trait OrderKeys {
    /// The data key of an order; `None` when there is none (the field is then dropped).
    fn key(&self, order_id: &str) -> Option<&DataKey>;
}

/// No data keys at all: every `encrypt` falls back to `drop`.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoOrderKeys;

/// A per-seller HMAC-SHA256 key for pseudonyms: the same value gives the same pseudonym for one
/// seller, and different pseudonyms for different sellers.
pub struct PseudonymKey {
    key: KeySource,
}

/// Where a [`PseudonymKey`]'s HMAC key comes from.
enum KeySource {
    /// Made up front.
    Ready(ring::hmac::Key),
    /// Derived on first use: most answers pseudonymize nothing (the safety net finds no
    /// e-mail), and a derivation costs about as much as the safety net's scan of a small answer.
    Lazy {
        master: Arc<MasterKey>,
        seller_id: String,
        key: OnceLock<ring::hmac::Key>,
    },
}

// === impl PseudonymKey ===

impl PseudonymKey {
    /// A key from raw bytes (at least 32 for full strength).
    pub fn from_bytes(bytes: &[u8]) -> PseudonymKey {
        PseudonymKey {
            key: KeySource::Ready(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, bytes)),
        }
    }

    /// The seller's key, derived from the master key (an HMAC under the master key's signing
    /// key, bound to the purpose `pii-pseudonym` and the seller id).
    pub fn derive(master: &MasterKey, seller_id: &str) -> PseudonymKey {
        PseudonymKey {
            key: KeySource::Ready(derive_key(master, seller_id)),
        }
    }

    /// [`PseudonymKey::derive`], done when the first value is pseudonymized (if ever).
    pub fn derive_lazily(master: &Arc<MasterKey>, seller_id: &str) -> PseudonymKey {
        PseudonymKey {
            key: KeySource::Lazy {
                master: Arc::clone(master),
                seller_id: seller_id.to_string(),
                key: OnceLock::new(),
            },
        }
    }

    fn hmac_key(&self) -> &ring::hmac::Key {
        match &self.key {
            KeySource::Ready(key) => key,
            KeySource::Lazy {
                master,
                seller_id,
                key,
            } => key.get_or_init(|| derive_key(master, seller_id)),
        }
    }

    /// `psn_` + base64url of the first 128 bits of HMAC-SHA256(key, category || 0 || normalized
    /// value). Normalization: trimmed; e-mail lowercased; phone reduced to its digits (and a
    /// leading `+`); postal code uppercased without spaces; names, companies, address lines and
    /// locations lowercased with runs of whitespace collapsed; everything else only trimmed.
    pub fn pseudonymize(&self, category: Category, value: &str) -> String {
        let mut ctx = ring::hmac::Context::with_key(self.hmac_key());
        ctx.update(category.as_str().as_bytes());
        ctx.update(&[0]);
        ctx.update(normalize(category, value).as_bytes());
        let tag = ctx.sign();
        let mut out = String::with_capacity(PSEUDONYM_PREFIX.len() + 22);
        out.push_str(PSEUDONYM_PREFIX);
        URL_SAFE_NO_PAD.encode_string(&tag.as_ref()[..PSEUDONYM_BYTES], &mut out);
        out
    }
}

impl std::fmt::Debug for PseudonymKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PseudonymKey(**REDACTED**)")
    }
}

/// The HMAC key of [`PseudonymKey::derive`].
fn derive_key(master: &MasterKey, seller_id: &str) -> ring::hmac::Key {
    let tag = master.sign("pii-pseudonym", seller_id.as_bytes());
    // `sign` returns base64url of the 32-byte tag; decoding our own output cannot fail, but
    // fall back to the encoded bytes (same secret material) rather than panic.
    let bytes = URL_SAFE_NO_PAD
        .decode(&tag)
        .unwrap_or_else(|_| tag.into_bytes());
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &bytes)
}

fn normalize(category: Category, value: &str) -> String {
    let value = value.trim();
    match category {
        Category::Email => value.to_lowercase(),
        Category::Phone => value
            .char_indices()
            .filter(|&(i, c)| c.is_ascii_digit() || (i == 0 && c == '+'))
            .map(|(_, c)| c)
            .collect(),
        Category::PostalCode => value
            .chars()
            .filter(|c| !c.is_whitespace())
            .flat_map(char::to_uppercase)
            .collect(),
        Category::Name
        | Category::Company
        | Category::Address
        | Category::CoarseLocation
        | Category::TaxId => value
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
        Category::GiftMessage
        | Category::CustomizationUrl
        | Category::DeliveryInstructions
        | Category::RegulatedInfo
        | Category::Document => value.to_string(),
    }
}

// === impl OrderKeys ===

impl OrderKeys for NoOrderKeys {
    fn key(&self, _order_id: &str) -> Option<&DataKey> {
        None
    }
}

impl OrderKeys for HashMap<String, DataKey> {
    fn key(&self, order_id: &str) -> Option<&DataKey> {
        self.get(order_id)
    }
}

impl OrderKeys for BTreeMap<String, DataKey> {
    fn key(&self, order_id: &str) -> Option<&DataKey> {
        self.get(order_id)
    }
}

impl OrderKeys for [(String, DataKey)] {
    fn key(&self, order_id: &str) -> Option<&DataKey> {
        self.iter().find(|(id, _)| id == order_id).map(|(_, k)| k)
    }
}

impl OrderKeys for Vec<(String, DataKey)> {
    fn key(&self, order_id: &str) -> Option<&DataKey> {
        self.as_slice().key(order_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    #[test]
    fn pseudonyms_are_stable_per_seller_and_normalized() {
        let k = PseudonymKey::from_bytes(&[7; 32]);
        let a = k.pseudonymize(Category::Email, "Jane@Example.invalid ");
        assert!(a.starts_with("psn_") && a.len() == 26, "{a}");
        assert_eq!(a, k.pseudonymize(Category::Email, "jane@example.invalid"));
        assert_ne!(a, k.pseudonymize(Category::Name, "jane@example.invalid"));
        assert_eq!(
            k.pseudonymize(Category::Phone, "+1 (206) 555-0100"),
            k.pseudonymize(Category::Phone, "+12065550100")
        );
        assert_eq!(
            k.pseudonymize(Category::Name, "Jane  Example"),
            k.pseudonymize(Category::Name, "jane example")
        );
        let other = PseudonymKey::from_bytes(&[8; 32]);
        assert_ne!(
            a,
            other.pseudonymize(Category::Email, "jane@example.invalid")
        );
    }

    #[test]
    fn derived_keys_differ_per_seller_and_never_print() {
        let master = MasterKey::from_base64(
            "m1",
            &Secret::new(base64::engine::general_purpose::STANDARD.encode([3u8; 32])),
        )
        .unwrap();
        let a = PseudonymKey::derive(&master, "A1SELLER");
        let a2 = PseudonymKey::derive(&master, "A1SELLER");
        let b = PseudonymKey::derive(&master, "A2SELLER");
        let v = "jane@example.invalid";
        assert_eq!(
            a.pseudonymize(Category::Email, v),
            a2.pseudonymize(Category::Email, v)
        );
        assert_ne!(
            a.pseudonymize(Category::Email, v),
            b.pseudonymize(Category::Email, v)
        );
        assert_eq!(format!("{a:?}"), "PseudonymKey(**REDACTED**)");
        // Derived on first use, the same key.
        let lazy = PseudonymKey::derive_lazily(&std::sync::Arc::new(master), "A1SELLER");
        assert_eq!(
            lazy.pseudonymize(Category::Email, v),
            a.pseudonymize(Category::Email, v)
        );
        assert_eq!(format!("{lazy:?}"), "PseudonymKey(**REDACTED**)");
    }
}
