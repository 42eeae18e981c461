//! Console sessions: kept server-side, found by the SHA-256 of the cookie's random id (the id
//! itself is never stored), ended after [`IDLE`] without a request by the admin or [`ABSOLUTE`]
//! after sign-in. Background requests (the overview's live refresh) find a session without
//! restarting its idle clock ([`Activity::Background`]), so an open tab nobody looks at still
//! times out. Each session carries its own CSRF token, compared in constant time.
//!
//! The table is bounded: one admin token's holder keeps at most [`MAX_PER_HOLDER`] sessions (a
//! further sign-in ends that holder's least recently used one), and the table at most
//! [`MAX_SESSIONS`] (expired sessions are dropped first; then a sign-in is refused with
//! [`SessionError::Full`]), so no token holder can lock the others out.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::AdminRole;
use crate::crypto;

/// A session ends after this long without a request by the admin.
pub const IDLE: Duration = Duration::from_secs(15 * 60);
/// A session ends this long after sign-in, however busy.
pub const ABSOLUTE: Duration = Duration::from_secs(8 * 3600);
/// Sessions kept at most (expired ones are dropped first; then sign-ins are refused).
pub const MAX_SESSIONS: usize = 1024;
/// Sessions one admin token's holder keeps at most (a further sign-in ends the least recently
/// used one).
pub const MAX_PER_HOLDER: usize = 16;

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

/// Whether a request is the admin's own doing (it restarts the session's idle clock) or the
/// page's background refresh (it does not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// A page the admin opened or a form they sent.
    Admin,
    /// An automatic request (the overview's live refresh).
    Background,
}

/// Why a session could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// No randomness.
    #[error("no randomness for a session id: {0}")]
    Random(#[from] crypto::CryptoError),
    /// Too many live sessions.
    #[error("too many console sessions ({MAX_SESSIONS} live)")]
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
        table.retain(|_, s| live(s, now));
        // The holder's own least recently used sessions make room for this one.
        loop {
            let mine = table.iter().filter(|(_, s)| s.name == name);
            if mine.clone().count() < MAX_PER_HOLDER {
                break;
            }
            let Some(oldest) = mine.min_by_key(|(_, s)| s.seen).map(|(h, _)| h.clone()) else {
                break;
            };
            table.remove(&oldest);
        }
        if table.len() >= MAX_SESSIONS {
            return Err(SessionError::Full);
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

    /// The live session of this cookie id; an expired one is ended. Only the admin's own
    /// requests restart its idle clock.
    pub fn get(&self, id: &str, activity: Activity) -> Option<Session> {
        let hash = crypto::sha256_hex(id.as_bytes());
        let now = Instant::now();
        let mut table = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        let session = table.get_mut(&hash)?;
        if !live(session, now) {
            table.remove(&hash);
            return None;
        }
        if activity == Activity::Admin {
            session.seen = now;
        }
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

    /// Moves every session's clocks back by `by` (tests: time passing).
    #[cfg(test)]
    pub(crate) fn age(&self, by: Duration) {
        let mut table = self.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        for s in table.values_mut() {
            s.seen = s.seen.checked_sub(by).unwrap_or(s.seen);
            s.created = s.created.checked_sub(by).unwrap_or(s.created);
        }
    }

    /// Live and expired sessions held (tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.by_hash.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

fn live(s: &Session, now: Instant) -> bool {
    now.duration_since(s.seen) < IDLE && now.duration_since(s.created) < ABSOLUTE
}

/// Whether two tokens are equal, in time independent of where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    crypto::constant_time_eq(a.as_bytes(), b.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(sessions: &Sessions, name: &str) -> String {
        let id = sessions.create(name, AdminRole::Ops);
        assert!(id.is_ok(), "{id:?}");
        id.unwrap_or_default()
    }

    #[test]
    fn a_session_is_found_by_its_id_only_and_ends() {
        let sessions = Sessions::default();
        let id = sessions.create("alice", AdminRole::Security);
        assert!(id.is_ok());
        let id = id.unwrap_or_default();
        assert_eq!(id.len(), 43);
        let found = sessions.get(&id, Activity::Admin);
        assert_eq!(found.as_ref().map(|s| s.role), Some(AdminRole::Security));
        // Stored by hash: the id itself is no key.
        let table = sessions.by_hash.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!table.contains_key(&id));
        assert!(table.contains_key(&crypto::sha256_hex(id.as_bytes())));
        drop(table);
        assert!(sessions.get("not-a-session", Activity::Admin).is_none());
        sessions.end(&id);
        assert!(sessions.get(&id, Activity::Admin).is_none());
    }

    #[test]
    fn idle_sessions_expire() {
        let sessions = Sessions::default();
        let id = make(&sessions, "bob");
        assert!(sessions.get(&id, Activity::Admin).is_some());
        sessions.age(IDLE + Duration::from_secs(1));
        assert!(sessions.get(&id, Activity::Admin).is_none());
        assert_eq!(sessions.len(), 0);
    }

    #[test]
    fn background_requests_do_not_keep_a_session_alive() {
        let sessions = Sessions::default();
        let (polled, used) = (make(&sessions, "carol"), make(&sessions, "dave"));
        // Two thirds of the idle time pass; the live refresh polls one tab, the admin uses the
        // other.
        sessions.age(IDLE * 2 / 3);
        assert!(sessions.get(&polled, Activity::Background).is_some());
        assert!(sessions.get(&used, Activity::Admin).is_some());
        sessions.age(IDLE * 2 / 3);
        // The polled tab timed out; the used one did not.
        assert!(sessions.get(&polled, Activity::Background).is_none());
        assert!(sessions.get(&used, Activity::Background).is_some());
    }

    #[test]
    fn one_holder_cannot_fill_the_table() {
        let sessions = Sessions::default();
        let first = make(&sessions, "eve");
        let mut ids = vec![first.clone()];
        for _ in 0..MAX_PER_HOLDER + 5 {
            ids.push(make(&sessions, "eve"));
        }
        assert_eq!(sessions.len(), MAX_PER_HOLDER);
        // The oldest went first; the newest live.
        assert!(sessions.get(&first, Activity::Admin).is_none());
        assert!(ids
            .iter()
            .rev()
            .take(MAX_PER_HOLDER)
            .all(|id| sessions.get(id, Activity::Background).is_some()));
        // Another holder still signs in.
        assert!(sessions.create("frank", AdminRole::Security).is_ok());
    }

    #[test]
    fn a_full_table_refuses_cleanly_after_dropping_expired_sessions() {
        let sessions = Sessions::default();
        for i in 0..MAX_SESSIONS {
            make(&sessions, &format!("holder-{i}"));
        }
        assert!(matches!(
            sessions.create("late", AdminRole::Ops),
            Err(SessionError::Full)
        ));
        assert_eq!(
            SessionError::Full.to_string(),
            "too many console sessions (1024 live)"
        );
        // Expired sessions make room.
        sessions.age(IDLE + Duration::from_secs(1));
        assert!(sessions.create("late", AdminRole::Ops).is_ok());
        assert_eq!(sessions.len(), 1);
    }

    #[test]
    fn tokens_compare_exactly() {
        assert!(same_token("abc", "abc"));
        assert!(!same_token("abc", "abd"));
        assert!(!same_token("abc", "abcd"));
        assert!(!same_token("", "a"));
    }
}
