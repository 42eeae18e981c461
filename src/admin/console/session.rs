//! Console sessions: kept server-side, found by the SHA-256 of the cookie's random id (the id
//! itself is never stored), ended after [`IDLE`] without a request or [`ABSOLUTE`] after
//! sign-in. Each carries its own CSRF token, compared in constant time.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AdminRole;
use crate::crypto;

/// A session ends after this long without a request.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (expired ones are dropped first; then sign-ins are refused).
pub const MAX_SESSIONS: usize = 1024;

/// Who a session belongs to.
#[derive(Clone)]
pub struct Session {
    /// The admin token's holder.
    pub name: String,
    /// Its role.
    pub role: AdminRole,
    /// The CSRF token every form of this session carries.
    pub csrf: String,
    created: Instant,
    seen: Instant,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("name", &self.name)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No randomness.
    #[error("no randomness for a session id: {0}")]
    Random(#[from] crypto::CryptoError),
    /// Too many live sessions.
    #[error("too many console sessions")]
    Full,
}

/// The session table.
#[derive(Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Starts a session; returns the cookie's id (shown once, only its hash is kept).
    pub fn create(&self, name: &str, role: AdminRole) -> Result<String, SessionError> {
        let id = crypto::random_token::<32>()?;
        let csrf = crypto::random_token::<32>()?;
        let now = Instant::now();
        let mut table = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        if table.len() >= MAX_SESSIONS {
            table.retain(|_, s| live(s, now));
            if table.len() >= MAX_SESSIONS {
                return Err(SessionError::Full);
            }
        }
        table.insert(
            crypto::sha256_hex(id.as_bytes()),
            Session {
                name: name.to_string(),
                role,
                csrf,
                created: now,
                seen: now,
            },
        );
        Ok(id)
    }

    /// The live session of this cookie id (its idle clock restarts); an expired one is ended.
    pub fn get(&self, id: &str) -> Option<Session> {
        let hash = crypto::sha256_hex(id.as_bytes());
        let now = Instant::now();
        let mut table = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let session = table.get_mut(&hash)?;
        if !live(session, now) {
            table.remove(&hash);
            return None;
        }
        session.seen = now;
        Some(session.clone())
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        let hash = crypto::sha256_hex(id.as_bytes());
        self.by_hash
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&hash);
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.create("alice", AdminRole::Security);
        let id = id.unwrap_or_default();
        assert_eq!(id.len(), 43);
        let found = sessions.get(&id);
        assert_eq!(found.as_ref().map(|s| s.role), Some(AdminRole::Security));
        // Stored by hash: the id itself is no key.
        let table = sessions.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!table.contains_key(&id));
        drop(table);
        assert!(sessions.get("not-a-session").is_none());
        sessions.end(&id);
        assert!(sessions.get(&id).is_none());
    }

    #[test]
    fn idle_sessions_expire() {
        let sessions = Sessions::default();
        let id = sessions.create("bob", AdminRole::Ops).unwrap_or_default();
        {
            let mut table = sessions.by_hash.lock().unwrap_or_else(|p| p.into_inner());
            for s in table.values_mut() {
                s.seen = Instant::now()
                    .checked_sub(IDLE + Duration::from_secs(1))
                    .unwrap_or(s.seen);
            }
        }
        assert!(sessions.get(&id).is_none());
        assert!(sessions
            .by_hash
            .lock()
            .map(|t| t.is_empty())
            .unwrap_or(false));
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }
}
