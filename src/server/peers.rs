//! Bounded work before authentication: what one client address may cost the gateway before it
//! has shown a credential.
//!
//! - A per-address connection cap ([`Peers::connect`]): connections past
//!   `server.max_connections_per_address` are closed at accept, so one address holding
//!   connections open (slowloris) cannot take all of `server.max_connections`.
//! - A per-address rate limit ([`Peers::admit`], governor's keyed GCRA) on requests without
//!   credentials, on requests the gateway refused (401, 408, 413, 431; any 4xx of the token
//!   endpoint, onboarding and admin routes, where an `Authorization` header is no credential
//!   or is checked by the gateway itself) and on failed TLS handshakes: past it the address
//!   gets 429 with `Retry-After` for every request until it slows down.
//! - Body-read deadlines ([`read_body`]) for the endpoints the gateway answers itself.
//!
//! Each refusal is counted ([`render_metrics`]) and logged at most once per interval.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;

use super::Handler;
use crate::net::body::Body;

/// The `[server]` keys of this module.
#[derive(Debug, Clone, Copy)]
pub struct PeerLimits {
    /// Connections one address may hold at once.
    pub max_connections_per_address: usize,
    /// Unauthenticated or failed requests a second one address may make.
    pub unauthenticated_rate_per_second: u32,
    /// The burst of such requests.
    pub unauthenticated_burst: u32,
}

/// Why a connection or a request was refused before it reached the handler.
#[derive(Debug, Clone, thiserror::Error)]
pub enum PeerError {
    /// The address already holds its share of connections.
    #[error("too many connections from one address (limit {limit})")]
    TooManyConnections {
        /// `server.max_connections_per_address`.
        limit: usize,
    },
    /// The address sends too many unauthenticated or failing requests.
    #[error("too many unauthenticated or failed requests from one address")]
    TooManyRequests {
        /// When the address may send again.
        retry_after: Duration,
    },
}

/// Why a body could not be read within its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BodyReadError {
    /// Larger than allowed, or the connection failed mid-body.
    #[error("the body is larger than {limit} bytes or unreadable")]
    TooLarge {
        /// The limit.
        limit: usize,
    },
    /// Not received within the deadline.
    #[error("the body did not arrive within {0:?}")]
    Timeout(Duration),
}

/// Per-address state of one listener.
pub struct Peers {
    limits: PeerLimits,
    /// Open connections per address (absent: none).
    open: Mutex<HashMap<IpAddr, usize>>,
    /// One cell per unauthenticated or failed request.
    strikes: DefaultKeyedRateLimiter<IpAddr>,
    /// Addresses over their rate, until when.
    blocked: Mutex<HashMap<IpAddr, Instant>>,
    /// Requests since the last sweep of idle addresses.
    since_sweep: AtomicU64,
}

/// One admitted connection; dropping it frees the address's slot.
pub struct PeerConnection {
    peers: Arc<Peers>,
    ip: IpAddr,
}

/// Process-wide counters (one Prometheus series each).
static CONNECTIONS_REFUSED: AtomicU64 = AtomicU64::new(0);
static REQUESTS_REFUSED: AtomicU64 = AtomicU64::new(0);
static BODY_READ_TIMEOUTS: AtomicU64 = AtomicU64::new(0);

/// Requests between sweeps of addresses that no longer hold state.
const SWEEP_EVERY: u64 = 4096;

/// Reads a whole body of at most `limit` bytes within `deadline`.
pub async fn read_body<B>(body: B, limit: usize, deadline: Duration) -> Result<Bytes, BodyReadError>
where
    B: http_body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let read = http_body_util::Limited::new(body, limit).collect();
    match tokio::time::timeout(deadline, read).await {
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(_)) => Err(BodyReadError::TooLarge { limit }),
        Err(_) => {
            BODY_READ_TIMEOUTS.fetch_add(1, Ordering::Relaxed);
            Err(BodyReadError::Timeout(deadline))
        }
    }
}

/// Marks a response that refused the request's credential without a 401 (a drop-in token
/// answered as Amazon answers a bad access token, 403): counted against the address as a 401.
#[derive(Debug, Clone, Copy)]
pub struct CredentialRefused;

/// Answers one request for an address: refused at once when the address is over its rate,
/// else handled, and counted against the address when it failed.
pub async fn call<H: Handler>(
    peers: &Peers,
    ip: IpAddr,
    handler: Arc<H>,
    req: http::Request<hyper::body::Incoming>,
) -> http::Response<Body> {
    let path = req.uri().path().to_owned();
    if let Err(e) = peers.admit(ip, &path, req.headers()) {
        return handler.refused(ip, &e);
    }
    let resp = handler.call(req).await;
    // A refused credential the gateway answers with Amazon's 403 (a bad drop-in token) is a
    // strike like a 401.
    let status = match resp.extensions().get::<CredentialRefused>() {
        Some(_) => StatusCode::UNAUTHORIZED,
        None => resp.status(),
    };
    peers.answered(ip, &path, status);
    resp
}

/// Paths answered without looking at `Authorization` or `x-amz-access-token` (the token
/// endpoint authenticates with the body, onboarding with its invite and state, the probes not
/// at all): there such a header is no credential, and any 4xx is a strike.
fn header_is_no_credential(path: &str) -> bool {
    matches!(
        path,
        crate::auth::drop_in::TOKEN_PATH
            | crate::auth::onboarding::START_PATH
            | crate::auth::onboarding::CALLBACK_PATH
            | "/readyz"
            | "/healthz"
            | "/metrics"
    )
}

/// Whether every 4xx on `path` counts against the address: the paths above and the admin
/// routes (a wrong ops or security token is a 401 or 403).
fn every_4xx_strikes(path: &str) -> bool {
    header_is_no_credential(path) || path.starts_with("/admin/")
}

/// Appends this module's counters in Prometheus text format.
pub fn render_metrics(out: &mut String) {
    for (name, help, v) in [
        (
            "spgate_peer_connections_refused_total",
            "Connections closed at accept: the address held server.max_connections_per_address.",
            &CONNECTIONS_REFUSED,
        ),
        (
            "spgate_peer_requests_refused_total",
            "Requests answered 429: the address exceeded its rate of unauthenticated or failed requests.",
            &REQUESTS_REFUSED,
        ),
        (
            "spgate_body_read_timeouts_total",
            "Request bodies not received within server.body_read_timeout_ms.",
            &BODY_READ_TIMEOUTS,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
}

// === impl Peers ===

impl Peers {
    /// The state of one listener.
    pub fn new(limits: PeerLimits) -> Arc<Peers> {
        let rate =
            NonZeroU32::new(limits.unauthenticated_rate_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.unauthenticated_burst).unwrap_or(NonZeroU32::MIN);
        Arc::new(Peers {
            limits,
            open: Mutex::new(HashMap::new()),
            strikes: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            blocked: Mutex::new(HashMap::new()),
            since_sweep: AtomicU64::new(0),
        })
    }

    /// Takes one of the address's connection slots.
    pub fn connect(self: &Arc<Self>, ip: IpAddr) -> Result<PeerConnection, PeerError> {
        let limit = self.limits.max_connections_per_address;
        let mut open = lock(&self.open);
        let n = open.entry(ip).or_insert(0);
        if *n >= limit {
            drop(open);
            CONNECTIONS_REFUSED.fetch_add(1, Ordering::Relaxed);
            let err = PeerError::TooManyConnections { limit };
            if let Some(repeats) = crate::proxy::rescue::log_limit::admit("peer connections") {
                tracing::warn!(error = %err, repeats, "Connection refused at accept.");
            }
            return Err(err);
        }
        *n += 1;
        Ok(PeerConnection {
            peers: Arc::clone(self),
            ip,
        })
    }

    /// Whether a request may be handled: not when the address is over its rate, and a request
    /// without credentials (or with a header that is no credential on `path`) spends one cell.
    pub fn admit(&self, ip: IpAddr, path: &str, headers: &HeaderMap) -> Result<(), PeerError> {
        self.sweep();
        let now = Instant::now();
        if let Some(until) = lock(&self.blocked).get(&ip).copied() {
            if now < until {
                return Err(self.refused(until - now));
            }
        }
        let credentialed = !header_is_no_credential(path)
            && (headers.contains_key(http::header::AUTHORIZATION)
                || headers.contains_key(crate::spapi::ACCESS_TOKEN));
        if credentialed {
            return Ok(());
        }
        self.strike(ip).map_err(|wait| self.refused(wait))
    }

    /// Counts a failed request against its address.
    pub fn answered(&self, ip: IpAddr, path: &str, status: StatusCode) {
        // The gateway's own refusals of a caller: a bad or missing key (401), a slow or
        // oversized request, and any 4xx where the gateway authenticates by itself (token
        // endpoint, onboarding, admin). Amazon's 400s and 403s for a tool's valid requests
        // do not count.
        let failed = matches!(
            status,
            StatusCode::UNAUTHORIZED
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::PAYLOAD_TOO_LARGE
                | StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
        ) || (status.is_client_error() && every_4xx_strikes(path));
        if failed {
            // Over the rate: the address is refused from its next request on.
            let _ = self.strike(ip);
        }
    }

    /// Counts a failed or timed-out TLS handshake against its address.
    pub fn handshake_failed(&self, ip: IpAddr) {
        let _ = self.strike(ip);
    }

    /// Spends one cell; `Err(wait)` when none is left (the address is then blocked for `wait`).
    fn strike(&self, ip: IpAddr) -> Result<(), Duration> {
        match self.strikes.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until
                    .wait_time_from(DefaultClock::default().now())
                    .max(Duration::from_millis(1));
                lock(&self.blocked).insert(ip, Instant::now() + wait);
                Err(wait)
            }
        }
    }

    fn refused(&self, retry_after: Duration) -> PeerError {
        REQUESTS_REFUSED.fetch_add(1, Ordering::Relaxed);
        PeerError::TooManyRequests { retry_after }
    }

    /// Forgets addresses whose limits have fully recovered, now and then.
    fn sweep(&self) {
        if self.since_sweep.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY != SWEEP_EVERY - 1 {
            return;
        }
        self.strikes.retain_recent();
        let now = Instant::now();
        lock(&self.blocked).retain(|_, until| *until > now);
    }
}

// === impl PeerConnection ===

impl Drop for PeerConnection {
    fn drop(&mut self) {
        let mut open = lock(&self.peers.open);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A poisoned map only means a panic mid-update; the counts stay usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> PeerLimits {
        PeerLimits {
            max_connections_per_address: 2,
            unauthenticated_rate_per_second: 1,
            unauthenticated_burst: 3,
        }
    }

    #[test]
    fn an_address_gets_its_connection_cap_and_others_are_unaffected() {
        let peers = Peers::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let first = peers.connect(a).unwrap();
        let _second = peers.connect(a).unwrap();
        assert!(matches!(
            peers.connect(a),
            Err(PeerError::TooManyConnections { limit: 2 })
        ));
        assert!(peers.connect(b).is_ok());
        drop(first);
        assert!(
            peers.connect(a).is_ok(),
            "a closed connection frees its slot"
        );
    }

    #[test]
    fn unauthenticated_and_failed_requests_are_limited_per_address_and_credentials_are_not() {
        let peers = Peers::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        let b: IpAddr = "127.0.0.2".parse().unwrap();
        let none = HeaderMap::new();
        let mut keyed = HeaderMap::new();
        keyed.insert(http::header::AUTHORIZATION, "Bearer spg_x".parse().unwrap());
        for _ in 0..3 {
            peers.admit(a, PATH, &keyed).unwrap();
            peers.answered(a, PATH, StatusCode::OK);
        }
        peers.admit(a, PATH, &none).unwrap();
        peers.admit(a, PATH, &none).unwrap();
        peers.answered(a, PATH, StatusCode::UNAUTHORIZED);
        peers.answered(a, PATH, StatusCode::UNAUTHORIZED);
        // The burst of 3 is spent: even a request with credentials is refused now.
        assert!(matches!(
            peers.admit(a, PATH, &keyed),
            Err(PeerError::TooManyRequests { .. })
        ));
        assert!(
            peers.admit(b, PATH, &none).is_ok(),
            "another address is unaffected"
        );
    }

    const PATH: &str = "/orders/v0/orders/1/address";

    /// Refused after `n` admitted requests to `path` answered `status`.
    fn refused_after(path: &str, headers: &HeaderMap, status: StatusCode) -> usize {
        let peers = Peers::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for n in 0..10 {
            if peers.admit(a, path, headers).is_err() {
                return n;
            }
            peers.answered(a, path, status);
        }
        10
    }

    #[test]
    fn an_authorization_header_is_no_credential_where_the_gateway_does_not_read_it() {
        let mut keyed = HeaderMap::new();
        keyed.insert(
            http::header::AUTHORIZATION,
            "Bearer anything".parse().unwrap(),
        );
        for path in [
            crate::auth::drop_in::TOKEN_PATH,
            crate::auth::onboarding::START_PATH,
            crate::auth::onboarding::CALLBACK_PATH,
            "/readyz",
        ] {
            // Each request spends a cell (burst 3); a 4xx answer spends another.
            assert_eq!(refused_after(path, &keyed, StatusCode::OK), 3, "{path}");
            assert_eq!(
                refused_after(path, &keyed, StatusCode::BAD_REQUEST),
                2,
                "{path}"
            );
        }
        // Where the header authenticates, a served request costs nothing, and a 4xx of the
        // admin routes (wrong token) is a strike: the fourth blocks the address.
        assert_eq!(refused_after(PATH, &keyed, StatusCode::OK), 10);
        assert_eq!(refused_after(PATH, &keyed, StatusCode::BAD_REQUEST), 10);
        assert_eq!(
            refused_after("/admin/reload", &keyed, StatusCode::FORBIDDEN),
            4
        );
    }

    #[test]
    fn failed_tls_handshakes_are_strikes() {
        let peers = Peers::new(limits());
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        for _ in 0..4 {
            peers.handshake_failed(a);
        }
        assert!(matches!(
            peers.admit(a, PATH, &HeaderMap::new()),
            Err(PeerError::TooManyRequests { .. })
        ));
    }
}
