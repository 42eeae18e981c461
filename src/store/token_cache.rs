//! An LWA access-token cache shared by several gateway instances.
//!
//! Each instance keeps its own in-process cache with a per-subject async mutex
//! ([`crate::auth::lwa`]), which makes refreshes single-flight within one process. With several
//! instances behind a load balancer, each would still call LWA for the same subject. A
//! [`SharedTokenCache`] lets them share the token and elect one refresher:
//!
//! 1. [`get`](SharedTokenCache::get): another instance may already hold a fresh token.
//! 2. If not, [`try_lock`](SharedTokenCache::try_lock) the subject for at most the LWA timeout.
//!    The winner calls LWA, [`put`](SharedTokenCache::put)s the token and
//!    [`unlock`](SharedTokenCache::unlock)s; the others poll `get` until the token appears or the
//!    lock expires (then they try to take it themselves).
//!
//! Tokens arrive sealed by the caller with the master key; implementations never see plaintext
//! and must not log what they store. A lock is advisory and bounded by its ttl, so an instance
//! that dies while holding it delays the others by at most that ttl.

use std::time::Duration;

use async_trait::async_trait;

use super::StoreError;

/// A cache of sealed access tokens, with a refresh lock per subject, shared between instances.
#[async_trait]
pub trait SharedTokenCache: Send + Sync {
    /// A cached sealed token for `subject_key` and its remaining lifetime, if present.
    async fn get(&self, subject_key: &str) -> Result<Option<(String, Duration)>, StoreError>;
    /// Stores a sealed token for `ttl`, replacing any previous one. A zero `ttl` removes it.
    async fn put(&self, subject_key: &str, sealed: &str, ttl: Duration) -> Result<(), StoreError>;
    /// Tries to take the refresh lock for `subject_key` for at most `ttl`; returns a lock token
    /// if taken, `None` if another holder has it.
    async fn try_lock(
        &self,
        subject_key: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;
    /// Releases the lock only if it is still held with `lock_token`; a lock that expired and was
    /// taken by someone else is left alone.
    async fn unlock(&self, subject_key: &str, lock_token: &str) -> Result<(), StoreError>;
}
