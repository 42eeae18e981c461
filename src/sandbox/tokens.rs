//! Tokens the sandbox issues (access tokens, grantless tokens, RDTs) and random identifiers.
//!
//! Tokens carry 256 random bits. The store remembers each token's seller, client, scope, expiry
//! and (for RDTs) restricted resources. Nothing here prints a token: the store has no `Debug`
//! that shows keys, and [`TokenRecord`]'s `Debug` leaves the token out by construction.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::rdt::RdtResource;

/// Which kind of token authorized a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum TokenKind {
    /// An LWA access token from the `refresh_token` or `authorization_code` grant (a seller's).
    Access,
    /// A Restricted Data Token from `createRestrictedDataToken`.
    Rdt,
    /// An LWA access token from the `client_credentials` grant (grantless, no seller).
    Grantless,
}

/// Above this many remembered tokens, issuing a new one first forgets the expired ones.
const PRUNE_ABOVE: usize = 100_000;

/// What the sandbox remembers about one token.
#[derive(Debug, Clone)]
pub(super) struct TokenRecord {
    pub(super) kind: TokenKind,
    /// The selling partner; `None` for grantless tokens.
    pub(super) seller: Option<String>,
    /// The LWA client that obtained it (for RDTs: the client of the access token used).
    pub(super) client_id: String,
    /// The LWA scope of a grantless token.
    pub(super) scope: Option<String>,
    pub(super) expires_at: Instant,
    /// For RDTs: the resources it covers.
    pub(super) resources: Vec<RdtResource>,
}

/// The outcome of looking a token up.
pub(super) enum Lookup<'a> {
    /// Issued here and not expired.
    Valid(&'a TokenRecord),
    /// Issued here, expired.
    Expired,
    /// Not issued here (or forgotten long after it expired).
    Unknown,
}

/// Every token issued, by token string.
#[derive(Default)]
pub(super) struct TokenStore {
    tokens: HashMap<String, TokenRecord>,
}

impl TokenStore {
    /// Issues a new random token for `record` and remembers it.
    pub(super) fn issue(
        &mut self,
        record: TokenRecord,
    ) -> Result<String, ring::error::Unspecified> {
        let prefix = match record.kind {
            TokenKind::Access | TokenKind::Grantless => "Atza|",
            TokenKind::Rdt => "Atz.sprdt|",
        };
        let token = random_token(prefix)?;
        if self.tokens.len() >= PRUNE_ABOVE {
            let now = Instant::now();
            self.tokens.retain(|_, r| r.expires_at > now);
        }
        self.tokens.insert(token.clone(), record);
        Ok(token)
    }

    /// Looks a token up at time `now`.
    pub(super) fn lookup(&self, token: &str, now: Instant) -> Lookup<'_> {
        match self.tokens.get(token) {
            Some(record) if now < record.expires_at => Lookup::Valid(record),
            Some(_) => Lookup::Expired,
            None => Lookup::Unknown,
        }
    }

    /// Makes every token expire at `now` (or earlier, if it already had).
    pub(super) fn expire_all(&mut self, now: Instant) {
        for record in self.tokens.values_mut() {
            record.expires_at = record.expires_at.min(now);
        }
    }

    /// Forgets every token: each is then unknown, as after a restart.
    pub(super) fn forget_all(&mut self) {
        self.tokens.clear();
    }

    /// How many tokens are remembered.
    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }
}

/// `prefix` followed by 256 random bits, base64url-encoded.
pub(super) fn random_token(prefix: &str) -> Result<String, ring::error::Unspecified> {
    let mut bytes = [0u8; 32];
    SystemRandom::new().fill(&mut bytes)?;
    Ok(format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// A fresh request id shaped like Amazon's (a UUID). Falls back to a process-wide counter if the
/// system's random source fails, so a response always has an id.
pub(super) fn request_id() -> String {
    static FALLBACK: AtomicU64 = AtomicU64::new(0);
    let mut b = [0u8; 16];
    if SystemRandom::new().fill(&mut b).is_err() {
        let n = FALLBACK.fetch_add(1, Ordering::Relaxed);
        b = (u128::from(n)).to_be_bytes();
    }
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// Compares two secrets in time independent of where they differ.
pub(super) fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
