//! The invalidation channel between gateway instances sharing Redis: each write a tool makes
//! through one instance reaches every other instance's shared-answer cache, so a tool never
//! reads its own write back stale through another instance behind a load balancer.
//!
//! DESIGN: a write is announced on the Redis pub/sub channel `<prefix>shared-calls:writes`
//! (`<instance> <family> <seller>`) once admitted (in the background) and when it ends, with an
//! answer or an error (awaited before either goes back to the tool, so the tool's next read
//! anywhere comes after the announcement reached Redis, which hands it to every subscriber in
//! that same step). Every instance with a shared Redis announces its writes; one that caches
//! answers also subscribes on its own connection and moves the (seller, family) to its next
//! generation on each announcement (dropping its cached answers of the family, as a local write
//! does), with no round trip on a cache hit. No generation is kept in Redis: one subscription
//! delivers every announcement in order while its connection lives, and what can lose one is
//! seen here and closes the cache instead:
//!
//! - **This instance's subscription**: every instance publishes `<instance> alive` every
//!   [`HEARTBEAT`]; the subscription counts as live while this instance's own heartbeat comes
//!   back through it within [`LIVENESS`] (a round trip through Redis, not just a ping: a
//!   subscriber left on an isolated old primary that still answers pings hears no heartbeat)
//!   and its pings are answered.
//! - **A peer that cannot announce**: a write whose announcement fails (within
//!   [`ANNOUNCE_TIMEOUT`]; always tried, even while others wait to be sent again) stops the
//!   writer's heartbeat until every failed announcement is sent again (every second) or given
//!   up (past the longest TTL and the settle window after its last write: nothing cached before
//!   it can still be served anywhere), and its answer (or error) is held for [`LIVENESS`] (at
//!   most until the request's deadline). Every subscriber remembers the peers it heard; while a
//!   known peer is silent for [`LIVENESS`], it serves and stores no cached answer (every one is
//!   dropped when the peer goes silent and again when it is heard back). A peer leaving cleanly
//!   says `<instance> bye`; one silent past the longest TTL and settle window is forgotten.
//!
//! While the cache is closed for either reason (not yet subscribed, the connection lost, no
//! heartbeat back within [`LIVENESS`], a silent peer) no cached answer is served and none is
//! stored; every cached answer is dropped when it goes down and again when it comes back (a new
//! epoch, [`super::writes`]); each event is logged, counted
//! (`spgate_shared_calls_invalidation_total`) and shown in
//! `spgate_shared_calls_invalidation_live`. Coalescing within the instance goes on.
//!
//! What this does not cover: an instance killed in the middle of a write announces only its
//! start (its peers close only after [`LIVENESS`]); a peer never heard from (it could not reach
//! Redis since it started) is not waited for; the stale window is up to [`LIVENESS`] (plus
//! the write's hold margin) when the path from Redis to a subscriber goes half-dead without an
//! error, as liveness is judged by what last came through; a held answer is cut short by a
//! request deadline under [`LIVENESS`]; and between Redis handing an announcement out and the
//! subscriber task reading it (a scheduling delay, well under a millisecond on an idle
//! machine) a hit may still be served.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::catalog::Catalog;
use crate::config::{Config, RedisAccess, StoreConfig};
use crate::secret::Secret;

use super::SharedCalls;

/// How often the subscription is pinged, and this instance's heartbeat published.
const HEARTBEAT: Duration = Duration::from_secs(1);

/// The longest wait for a write's announcement (the write's answer waits for it).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(1);

/// Added to [`LIVENESS`] when a write's answer is held after its announcement failed (the
/// peers' clocks of this instance's last heartbeat start when they read it, a little later).
const HOLD_MARGIN: Duration = Duration::from_millis(500);

/// The longest wait for a ping's answer, a connection or an announcement.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The subscription counts as live this long after the last answer it gave (a ping's, or the
/// subscription's own): past it, the cache closes even if the connection did not report a loss.
pub(super) const LIVENESS: Duration = Duration::from_secs(3);

/// The wait before subscribing again after a loss, and between sends of a failed announcement.
const RETRY: Duration = Duration::from_secs(1);

/// The Redis the instances share, for the channel: `[ratelimit.redis]` if configured, else a
/// Redis `[store]`.
#[derive(Debug, Clone)]
pub struct RedisLink {
    url: Secret<String>,
    access: RedisAccess,
    key_prefix: String,
    /// The config section it comes from (for the log).
    section: &'static str,
}

/// Why the channel could not be used.
#[derive(Debug, thiserror::Error)]
pub enum InvalidationError {
    /// The Redis URL or its TLS settings were refused.
    #[error("the Redis of {section} is not usable: {reason}")]
    Client {
        /// The config section.
        section: &'static str,
        /// What was wrong (no values).
        reason: String,
    },
    /// A Redis command failed.
    #[error("Redis {op} failed: {reason}")]
    Redis {
        /// Which step.
        op: &'static str,
        /// What went wrong (no values).
        reason: String,
    },
    /// Redis did not answer in time.
    #[error("Redis did not answer {op} within {ANSWER_TIMEOUT:?}")]
    Timeout {
        /// Which step.
        op: &'static str,
    },
    /// The process has no async runtime to run the subscription on.
    #[error("no async runtime to subscribe on")]
    NoRuntime,
}

/// What the channel counted (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelEvent {
    /// A write announced to the other instances.
    Published,
    /// Another instance's write applied here.
    Received,
    /// An announcement that could not be sent (it is sent again in the background).
    PublishFailed,
    /// A failed announcement sent later.
    Republished,
    /// A failed announcement given up once no answer cached before its write can be served.
    Abandoned,
    /// The subscription went down (or could not be made).
    Lost,
    /// A message not understood (another version's family?): every cached answer dropped.
    Unreadable,
    /// A write's answer held back for [`LIVENESS`] (its announcement failed: the peers close
    /// their caches when they stop hearing this instance's heartbeat).
    Held,
    /// A peer instance went silent (no heartbeat for [`LIVENESS`]): every cached answer here
    /// dropped, none served until it is heard again.
    PeerSilent,
    /// A silent peer forgotten (silent past the longest TTL and settle window).
    PeerForgotten,
    /// A heartbeat not published (Redis did not take it, or announcements wait to be sent).
    HeartbeatWithheld,
}

const CHANNEL_EVENTS: [(ChannelEvent, &str); 11] = [
    (ChannelEvent::Published, "published"),
    (ChannelEvent::Received, "received"),
    (ChannelEvent::PublishFailed, "publish_failed"),
    (ChannelEvent::Republished, "republished"),
    (ChannelEvent::Abandoned, "abandoned"),
    (ChannelEvent::Lost, "lost"),
    (ChannelEvent::Unreadable, "unreadable"),
    (ChannelEvent::Held, "held"),
    (ChannelEvent::PeerSilent, "peer_silent"),
    (ChannelEvent::PeerForgotten, "peer_forgotten"),
    (ChannelEvent::HeartbeatWithheld, "heartbeat_withheld"),
];

/// One instance's end of the channel.
pub(super) struct Channel {
    client: redis::Client,
    section: &'static str,
    /// `<prefix>shared-calls:writes`.
    name: String,
    /// This instance's id in its announcements (its own are not applied twice).
    instance: String,
    /// How long a failed announcement is still worth sending (and a silent peer remembered).
    retry_for: Duration,
    /// Whether this instance caches answers (and so subscribes to the others' writes).
    subscribing: bool,
    /// Announcements to send again, per (seller, family), since the last write that failed.
    pending: std::sync::Mutex<HashMap<(String, &'static str), Instant>>,
    /// Held by a heartbeat from deciding to publish until published, and by a failed
    /// announcement while it joins the pending ones: no heartbeat goes out after a failure.
    beat: tokio::sync::Mutex<()>,
    /// The peers heard from: when each last sent its heartbeat (ms since `base`).
    peers: std::sync::Mutex<HashMap<String, u64>>,
    /// The oldest of those (`u64::MAX`: none), read on every lookup.
    oldest_peer_ms: AtomicU64,
    /// A peer is known silent (its drop of every cached answer done).
    peer_silent: AtomicBool,
    /// The sender of pending announcements runs.
    resending: AtomicBool,
    /// Subscribed (and not yet known lost).
    subscribed: watch::Sender<bool>,
    /// When the subscription last answered (ms since `base`).
    confirmed_ms: AtomicU64,
    base: Instant,
    publisher: tokio::sync::OnceCell<ConnectionManager>,
    counts: [AtomicU64; CHANNEL_EVENTS.len()],
}

// === impl RedisLink ===

impl RedisLink {
    /// The Redis the config's instances share, if any (`[ratelimit.redis]` first: like the
    /// channel, it holds rebuildable state only; else a Redis store). With a TTL configured and
    /// no shared Redis, a config that names several instances (a PostgreSQL store, or
    /// `ratelimit.expected_instances` above 1) is told at startup that cached answers stay per
    /// instance.
    pub fn of(config: &Config) -> Option<RedisLink> {
        let link = match (&config.ratelimit.redis, &config.store) {
            (Some(r), _) => Some(RedisLink {
                url: r.url.clone(),
                access: r.access.clone(),
                key_prefix: r.key_prefix.clone(),
                section: "[ratelimit.redis]",
            }),
            (
                None,
                StoreConfig::Redis {
                    url,
                    key_prefix,
                    access,
                },
            ) => Some(RedisLink {
                url: url.clone(),
                access: access.clone(),
                key_prefix: key_prefix.clone(),
                section: "[store]",
            }),
            (None, _) => None,
        };
        if let Some(named) = unshared(config, link.as_ref()) {
            tracing::warn!(named, "[shared_calls.ttl_seconds] caches answers per instance, and this config names several instances without a shared Redis: a write through another instance is seen here only when the TTL ends. Configure [ratelimit.redis] so writes reach every instance's cache.");
        }
        link
    }
}

/// What in a config that caches answers, with no Redis to share writes on, names several
/// instances (the cache then stays per instance), if anything.
fn unshared(config: &Config, link: Option<&RedisLink>) -> Option<&'static str> {
    if link.is_some() || config.shared_calls.ttls.is_empty() {
        return None;
    }
    if matches!(config.store, StoreConfig::Postgres(_)) {
        Some("a postgres store")
    } else if config.ratelimit.limiter.expected_instances > 1 {
        Some("ratelimit.expected_instances above 1")
    } else {
        None
    }
}

// === impl Channel ===

impl Channel {
    /// The channel on `link` (nothing connects yet: [`Channel::start`]).
    pub(super) fn new(
        link: &RedisLink,
        retry_for: Duration,
        subscribing: bool,
    ) -> Result<Channel, InvalidationError> {
        let client =
            link.access
                .client(link.url.expose())
                .map_err(|e| InvalidationError::Client {
                    section: link.section,
                    reason: crate::store::redis::describe(&e),
                })?;
        let instance =
            crate::crypto::random_token::<9>().map_err(|_| InvalidationError::Client {
                section: link.section,
                reason: "no randomness for the instance id".into(),
            })?;
        Ok(Channel {
            client,
            section: link.section,
            name: format!("{}shared-calls:writes", link.key_prefix),
            instance,
            retry_for,
            subscribing,
            beat: tokio::sync::Mutex::new(()),
            peers: std::sync::Mutex::new(HashMap::new()),
            oldest_peer_ms: AtomicU64::new(u64::MAX),
            peer_silent: AtomicBool::new(false),
            subscribed: watch::Sender::new(false),
            confirmed_ms: AtomicU64::new(0),
            base: Instant::now(),
            publisher: tokio::sync::OnceCell::new(),
            pending: std::sync::Mutex::new(HashMap::new()),
            resending: AtomicBool::new(false),
            counts: Default::default(),
        })
    }

    /// Publishes this instance's heartbeat and (when it caches) subscribes, in the
    /// background, for as long as `calls` lives.
    pub(super) fn start(self: &Arc<Self>, calls: Weak<SharedCalls>) {
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                drop(rt.spawn(self.clone().heartbeat(calls.clone())));
                if self.subscribing {
                    drop(rt.spawn(self.clone().run(calls)));
                }
            }
            Err(_) => {
                self.count(ChannelEvent::Lost);
                tracing::error!(error = %InvalidationError::NoRuntime, "The shared-answer invalidation channel is down: no cached answer is served.");
            }
        }
    }

    /// Whether the subscription is known to be live: subscribed, this instance's own
    /// heartbeat came back through it within [`LIVENESS`], and every peer heard from is still
    /// heard (not silent for [`LIVENESS`]: one that cannot reach Redis cannot announce its
    /// writes either).
    pub(super) fn is_live(&self) -> bool {
        let now = self.ms_now();
        let liveness = LIVENESS.as_millis() as u64;
        self.subscribing
            && *self.subscribed.borrow()
            && now.saturating_sub(self.confirmed_ms.load(Ordering::Acquire)) < liveness
            && now.saturating_sub(self.oldest_peer_ms.load(Ordering::Acquire)) < liveness
    }

    /// Whether this instance subscribes to the others' writes (it caches answers).
    pub(super) fn subscribing(&self) -> bool {
        self.subscribing
    }

    /// Waits until the subscription is live, at most `within`; whether it is.
    pub(super) async fn wait_live(&self, within: Duration) -> bool {
        let mut rx = self.subscribed.subscribe();
        let _ = tokio::time::timeout(within, rx.wait_for(|s| *s)).await;
        self.is_live()
    }

    /// Announces a write to the (seller, family) to the other instances (always tried, within
    /// [`ANNOUNCE_TIMEOUT`], even while others wait to be sent again); whether it went. One
    /// that fails joins the pending ones, sent again in the background, and this instance's
    /// heartbeat stops until they are all sent: the peers close their caches.
    pub(super) async fn announce(self: &Arc<Self>, seller: &str, family: &'static str) -> bool {
        match self
            .publish(&self.message(seller, family), ANNOUNCE_TIMEOUT)
            .await
        {
            Ok(()) => {
                self.count(ChannelEvent::Published);
                true
            }
            Err(e) => {
                self.count(ChannelEvent::PublishFailed);
                tracing::error!(error = %e, section = self.section, "A write could not be announced to the other instances: this instance stops its heartbeat (they close their caches) until it is sent (again every second).");
                let _beat = self.beat.lock().await;
                self.pend(seller, family);
                false
            }
        }
    }

    /// Holds a write's answer whose announcement failed until the peers, no longer hearing
    /// this instance's heartbeat, have closed their caches ([`LIVENESS`]), or the request's
    /// `deadline`.
    pub(super) async fn hold(&self, deadline: Instant) {
        self.count(ChannelEvent::Held);
        let until = (Instant::now() + LIVENESS + HOLD_MARGIN).min(deadline);
        tokio::time::sleep_until(until).await;
    }

    /// Publishes `<instance> alive` every [`HEARTBEAT`] while no announcement waits to be
    /// sent, for as long as `calls` lives; then `<instance> bye`, if nothing waits.
    async fn heartbeat(self: Arc<Self>, calls: Weak<SharedCalls>) {
        let alive = format!("{} alive", self.instance);
        while calls.strong_count() > 0 {
            {
                let _beat = self.beat.lock().await;
                if self.failing() || self.publish(&alive, ANNOUNCE_TIMEOUT).await.is_err() {
                    self.count(ChannelEvent::HeartbeatWithheld);
                }
            }
            tokio::time::sleep(HEARTBEAT).await;
        }
        let _beat = self.beat.lock().await;
        if !self.failing() {
            let bye = format!("{} bye", self.instance);
            let _ = self.publish(&bye, ANNOUNCE_TIMEOUT).await;
        }
    }

    fn message(&self, seller: &str, family: &'static str) -> String {
        format!("{} {family} {seller}", self.instance)
    }

    fn pending(&self) -> std::sync::MutexGuard<'_, HashMap<(String, &'static str), Instant>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether announcements are waiting to be sent again.
    fn failing(&self) -> bool {
        !self.pending().is_empty()
    }

    /// Keeps an announcement to send again (one per (seller, family): it stands for every
    /// write to it that failed, and is worth sending for `retry_for` after the last), and
    /// starts the sender if it is not running.
    fn pend(self: &Arc<Self>, seller: &str, family: &'static str) {
        self.pending()
            .insert((seller.to_string(), family), Instant::now());
        if !self.resending.swap(true, Ordering::AcqRel) {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                drop(rt.spawn(self.clone().resend()));
            }
        }
    }

    /// Sends the pending announcements again every [`RETRY`] until each goes through or is no
    /// longer needed (past `retry_for` since its last write, no answer cached before it can
    /// still be served anywhere).
    async fn resend(self: Arc<Self>) {
        loop {
            tokio::time::sleep(RETRY).await;
            let waiting: Vec<_> = self
                .pending()
                .iter()
                .map(|((seller, family), since)| (seller.clone(), *family, *since))
                .collect();
            for (seller, family, since) in waiting {
                if since.elapsed() > self.retry_for {
                    self.pending().remove(&(seller, family));
                    self.count(ChannelEvent::Abandoned);
                    continue;
                }
                let message = self.message(&seller, family);
                if self.publish(&message, ANSWER_TIMEOUT).await.is_err() {
                    break; // Redis still does not take them: the next round.
                }
                // Unless a write failed again meanwhile (its own round is next).
                let mut pending = self.pending();
                if pending.get(&(seller.clone(), family)) == Some(&since) {
                    pending.remove(&(seller, family));
                }
                drop(pending);
                self.count(ChannelEvent::Republished);
            }
            let pending = self.pending();
            if pending.is_empty() {
                // Under the lock: a `pend` after this starts a new sender.
                self.resending.store(false, Ordering::Release);
                drop(pending);
                tracing::info!(
                    section = self.section,
                    "No write waits to be announced to the other instances any more."
                );
                return;
            }
        }
    }

    async fn publish(&self, message: &str, within: Duration) -> Result<(), InvalidationError> {
        let send = async {
            let conn = self
                .publisher
                .get_or_try_init(|| async {
                    let config = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(ANSWER_TIMEOUT))
                        .set_response_timeout(Some(ANSWER_TIMEOUT))
                        .set_number_of_retries(1)
                        .set_max_delay(RETRY);
                    ConnectionManager::new_with_config(self.client.clone(), config)
                        .await
                        .map_err(redis_failed("connect"))
                })
                .await?;
            redis::cmd("PUBLISH")
                .arg(&self.name)
                .arg(message)
                .query_async::<i64>(&mut conn.clone())
                .await
                .map_err(redis_failed("PUBLISH"))
        };
        tokio::time::timeout(within, send)
            .await
            .map_err(|_| InvalidationError::Timeout { op: "PUBLISH" })?
            .map(drop)
    }

    /// The subscription, made again after each loss, while `calls` lives.
    async fn run(self: Arc<Self>, calls: Weak<SharedCalls>) {
        let mut outage_logged = false;
        loop {
            match self.subscribe().await {
                Ok((sink, stream)) => {
                    let Some(live) = calls.upgrade() else { return };
                    self.confirm();
                    // Announcements missed while down: everything cached before goes.
                    live.reset();
                    self.subscribed.send_replace(true);
                    if outage_logged {
                        tracing::info!(
                            section = self.section,
                            "The shared-answer invalidation channel is live again."
                        );
                    }
                    outage_logged = false;
                    drop(live);
                    let Some(why) = self.listen(&calls, sink, stream).await else {
                        return;
                    };
                    self.went_down(&calls, &why, &mut outage_logged);
                }
                Err(e) => self.went_down(&calls, &e, &mut outage_logged),
            }
            tokio::time::sleep(RETRY).await;
            if calls.strong_count() == 0 {
                return;
            }
        }
    }

    fn went_down(
        &self,
        calls: &Weak<SharedCalls>,
        why: &InvalidationError,
        outage_logged: &mut bool,
    ) {
        let was = self.subscribed.send_replace(false);
        if let Some(calls) = calls.upgrade() {
            calls.reset();
        }
        if was || !*outage_logged {
            self.count(ChannelEvent::Lost);
        }
        if !*outage_logged {
            *outage_logged = true;
            tracing::error!(error = %why, section = self.section, "The shared-answer invalidation channel is down: no cached answer is served until it is back (other instances' writes could be missed).");
        }
    }

    async fn subscribe(
        &self,
    ) -> Result<(redis::aio::PubSubSink, redis::aio::PubSubStream), InvalidationError> {
        let connect = async {
            let pubsub = self
                .client
                .get_async_pubsub()
                .await
                .map_err(redis_failed("connect"))?;
            let (mut sink, stream) = pubsub.split();
            sink.subscribe(&self.name)
                .await
                .map_err(redis_failed("SUBSCRIBE"))?;
            Ok((sink, stream))
        };
        tokio::time::timeout(ANSWER_TIMEOUT, connect)
            .await
            .map_err(|_| InvalidationError::Timeout { op: "SUBSCRIBE" })?
    }

    /// Applies other instances' announcements until the subscription is lost (why), or
    /// `calls` is gone (`None`).
    async fn listen(
        &self,
        calls: &Weak<SharedCalls>,
        sink: redis::aio::PubSubSink,
        mut stream: redis::aio::PubSubStream,
    ) -> Option<InvalidationError> {
        // Pinged from its own task, so announcements are applied while a ping waits.
        let (beat_tx, mut beat_rx) = tokio::sync::mpsc::channel::<Result<(), InvalidationError>>(1);
        let beat = tokio::spawn(async move {
            let mut sink = sink;
            loop {
                tokio::time::sleep(HEARTBEAT).await;
                let pong = tokio::time::timeout(ANSWER_TIMEOUT, sink.ping::<redis::Value>()).await;
                let result = match pong {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(redis_failed("PING")(e)),
                    Err(_) => Err(InvalidationError::Timeout { op: "PING" }),
                };
                if beat_tx.send(result).await.is_err() {
                    return;
                }
            }
        });
        let _stop = AbortOnDrop(beat);
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else {
                        return Some(InvalidationError::Redis { op: "SUBSCRIBE", reason: "the connection closed".into() });
                    };
                    let calls = calls.upgrade()?;
                    self.apply(&calls, msg.get_payload_bytes());
                }
                beat = beat_rx.recv() => match beat {
                    Some(Ok(())) => {
                        let calls = calls.upgrade()?;
                        self.check_peers(&calls);
                    }
                    Some(Err(e)) => return Some(e),
                    None => return Some(InvalidationError::Timeout { op: "PING" }),
                },
            }
        }
    }

    /// Applies one message: another instance's write moves its (seller, family) here; a
    /// heartbeat confirms the subscription (this instance's own) or the peer; a goodbye
    /// forgets the peer; a message not understood drops everything.
    fn apply(&self, calls: &SharedCalls, payload: &[u8]) {
        let text = std::str::from_utf8(payload).ok();
        let control = text.and_then(|m| {
            let (instance, word) = m.split_once(' ')?;
            matches!(word, "alive" | "bye").then_some((instance, word))
        });
        match control {
            Some((instance, "alive")) if instance == self.instance => return self.confirm(),
            Some((instance, _)) if instance == self.instance => return,
            Some((peer, "alive")) => return self.heard(calls, peer),
            Some((peer, _)) => {
                self.peers().remove(peer);
                return self.check_peers(calls);
            }
            None => {}
        }
        let parsed = text.and_then(|m| {
            let mut parts = m.splitn(3, ' ');
            let (instance, family, seller) = (parts.next()?, parts.next()?, parts.next()?);
            Some((instance, family_named(family)?, seller))
        });
        match parsed {
            Some((instance, _, _)) if instance == self.instance => {}
            Some((_, family, seller)) if !seller.is_empty() => {
                self.count(ChannelEvent::Received);
                calls.invalidate(seller, family);
            }
            _ => {
                self.count(ChannelEvent::Unreadable);
                tracing::warn!("A shared-answer invalidation message was not understood (another version?): every cached answer is dropped.");
                calls.reset();
            }
        }
    }

    fn peers(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.peers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A peer's heartbeat: one back from silence finds every cached answer dropped (what it
    /// wrote meanwhile may not have been announced) before the cache opens again.
    fn heard(&self, calls: &SharedCalls, peer: &str) {
        let now = self.ms_now();
        let liveness = LIVENESS.as_millis() as u64;
        let mut peers = self.peers();
        if peers
            .get(peer)
            .is_some_and(|at| now.saturating_sub(*at) >= liveness)
        {
            calls.reset();
        }
        match peers.get_mut(peer) {
            Some(at) => *at = now,
            None => drop(peers.insert(peer.to_string(), now)),
        }
        self.oldest_peer_ms.store(
            peers.values().copied().min().unwrap_or(u64::MAX),
            Ordering::Release,
        );
        drop(peers);
        self.check_peers(calls);
    }

    /// Forgets the peers silent past `retry_for` (nothing they could have invalidated is
    /// still cached), and drops every cached answer when one goes silent.
    fn check_peers(&self, calls: &SharedCalls) {
        let now = self.ms_now();
        let liveness = LIVENESS.as_millis() as u64;
        let forget = self.retry_for.as_millis() as u64;
        let mut peers = self.peers();
        let before = peers.len();
        peers.retain(|_, at| now.saturating_sub(*at) <= forget.max(liveness));
        let forgotten = before - peers.len();
        let oldest = peers.values().copied().min().unwrap_or(u64::MAX);
        self.oldest_peer_ms.store(oldest, Ordering::Release);
        let silent = now.saturating_sub(oldest) >= liveness;
        if silent && !self.peer_silent.swap(true, Ordering::AcqRel) {
            calls.reset();
            self.count(ChannelEvent::PeerSilent);
            tracing::error!(section = self.section, "Another instance sharing Redis went silent (no heartbeat): it may be unable to announce its writes, so no cached answer is served until it is heard again.");
        } else if !silent && self.peer_silent.swap(false, Ordering::AcqRel) {
            tracing::info!(
                section = self.section,
                "Every other instance sharing Redis is heard again."
            );
        }
        drop(peers);
        self.count_n(ChannelEvent::PeerForgotten, forgotten as u64);
    }

    fn confirm(&self) {
        self.confirmed_ms.store(self.ms_now(), Ordering::Release);
    }

    fn ms_now(&self) -> u64 {
        self.base.elapsed().as_millis() as u64
    }

    fn count(&self, event: ChannelEvent) {
        self.count_n(event, 1);
    }

    fn count_n(&self, event: ChannelEvent, n: u64) {
        self.counts[event as usize].fetch_add(n, Ordering::Relaxed);
    }

    /// How many times `event` happened.
    pub(super) fn counted(&self, event: ChannelEvent) -> u64 {
        self.counts[event as usize].load(Ordering::Relaxed)
    }

    /// The channel's metrics in Prometheus' text format.
    pub(super) fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "spgate_shared_calls_invalidation_total";
        let _ = writeln!(out, "# HELP {name} Writes announced to the other instances sharing Redis (published), other instances' writes applied here (received), announcements that failed (publish_failed; sent again: republished, given up once no longer needed: abandoned), subscription losses (lost), messages not understood (unreadable), write answers held for the peers to close after a failed announcement (held), peers gone silent (peer_silent) or forgotten (peer_forgotten), heartbeats not published (heartbeat_withheld).\n# TYPE {name} counter");
        for (event, label) in CHANNEL_EVENTS {
            let _ = writeln!(out, "{name}{{event=\"{label}\"}} {}", self.counted(event));
        }
        if self.subscribing {
            render_live(out, self.is_live());
        }
    }
}

/// The gauge saying whether the channel is live.
pub(super) fn render_live(out: &mut String, live: bool) {
    use std::fmt::Write as _;
    let live = u8::from(live);
    let _ = writeln!(out, "# HELP spgate_shared_calls_invalidation_live Whether the invalidation channel between instances is known live (0: no cached answer is served).\n# TYPE spgate_shared_calls_invalidation_live gauge\nspgate_shared_calls_invalidation_live {live}");
}

/// Aborts a task when dropped (the heartbeat ends with its subscription).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn redis_failed(op: &'static str) -> impl Fn(redis::RedisError) -> InvalidationError {
    move |e| InvalidationError::Redis {
        op,
        reason: crate::store::redis::describe(&e),
    }
}

/// The family of that name, if any operation has it.
fn family_named(name: &str) -> Option<&'static str> {
    static FAMILIES: OnceLock<HashSet<&'static str>> = OnceLock::new();
    let families = FAMILIES.get_or_init(|| {
        Catalog::builtin()
            .operations()
            .iter()
            .map(super::rules::family)
            .collect()
    });
    families.get(name).copied()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The Redis link of a config of `toml` (after the minimal sections), and what is said.
    fn check(toml: &str, expect: (Option<&str>, Option<&str>)) {
        let mut env = crate::config::MapEnv::default();
        env.vars.insert("LWA".into(), "synthetic".into());
        env.vars.insert(
            "MASTER".into(),
            "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=".into(),
        );
        let text = format!("[lwa]\nclient_id = \"amzn1.application-oa2-client.synthetic\"\nclient_secret = {{ env = \"LWA\" }}\n[keys]\nmaster_key = {{ env = \"MASTER\" }}\n{toml}");
        let config = Config::from_toml(&text, &env).unwrap_or_else(|e| panic!("{e}"));
        let link = RedisLink::of(&config);
        let got = (
            link.as_ref().map(|l| l.section),
            unshared(&config, link.as_ref()),
        );
        assert_eq!(got, expect, "{toml}");
    }

    #[test]
    fn a_config_naming_several_instances_without_a_shared_redis_is_told_so() {
        const TTL: &str =
            "[shared_calls.ttl_seconds]\n\"catalogItems_2022-04-01.getCatalogItem\" = 60\n";
        let several = "[ratelimit]\nexpected_instances = 3\n";
        let redis = "[ratelimit.redis]\nurl = \"redis://127.0.0.1:6379\"\n";
        let store = "[store]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n";
        check(
            &format!("{several}{TTL}"),
            (None, Some("ratelimit.expected_instances above 1")),
        );
        check(
            &format!("{several}{redis}{TTL}"),
            (Some("[ratelimit.redis]"), None),
        );
        check(&format!("{store}{TTL}"), (Some("[store]"), None));
        check(several, (None, None));
        check(TTL, (None, None));
    }

    #[test]
    fn a_failed_announcement_is_worth_sending_counting_from_the_last_write_that_failed() {
        let link = RedisLink {
            url: Secret::new("redis://127.0.0.1:6379".to_string()),
            access: RedisAccess::default(),
            key_prefix: "spgate-test-m2:".into(),
            section: "[ratelimit.redis]",
        };
        let channel = Arc::new(
            Channel::new(&link, Duration::from_secs(10), true).unwrap_or_else(|e| panic!("{e}")),
        );
        // No runtime here: nothing is sent again, the pending set is what is looked at.
        channel.pend("A1SELLER", "listings");
        let first = channel.pending()[&("A1SELLER".to_string(), "listings")];
        std::thread::sleep(Duration::from_millis(20));
        channel.pend("A1SELLER", "listings");
        let last = channel.pending()[&("A1SELLER".to_string(), "listings")];
        assert!(
            last > first,
            "the second failed write moves the time the announcement is given up from"
        );
        assert_eq!(channel.pending().len(), 1, "one per (seller, family)");
    }

    #[test]
    fn every_family_is_known_by_its_name_and_nothing_else_is() {
        for op in Catalog::builtin().operations() {
            assert_eq!(
                family_named(super::super::rules::family(op)),
                Some(super::super::rules::family(op))
            );
        }
        assert_eq!(family_named("listings"), Some("listings"));
        assert_eq!(
            family_named("listings-items"),
            None,
            "one of the listings family"
        );
        assert_eq!(family_named(""), None);
    }
}
