//! Answers shared between callers, so no Amazon quota is spent twice on one question
//! (`[shared_calls]`, off by default):
//!
//! - **Coalescing** (`coalesce = true`): identical concurrent GETs (same seller, operation, path
//!   and query, and the same headers going up that can change the answer, see [`Key`]; for the
//!   POSTs that only read, [`rules::READ_ONLY_POSTS`], the same body too) of an
//!   operation that is neither restricted nor carries buyer PII
//!   (`data/pii-none.tsv`) make one upstream call. The first is the leader; the others
//!   (followers) wait for its answer, each within its own deadline, and get it with
//!   `x-spgate-cache: coalesced`; only a 2xx answer is shared: after an error answer (or none)
//!   each follower asks Amazon itself.
//! - **Caching** (`[shared_calls.ttl_seconds]`, per operation): a 200 answer of such an
//!   operation is kept that long, per seller, and served with `x-spgate-cache: hit` (the
//!   leader's answer says `miss`).
//!   The cache is bounded by count (`max_entries`) and by bytes (`max_bytes`, an estimate of
//!   body, headers and key per answer): past either, expired answers go first, then the ones
//!   closest to expiry; an expired answer is dropped when it is looked up ([`answers`]).
//! - **Invalidation**: any other request a tool makes for the seller through this gateway
//!   (a write: every method but GET, except the few POSTs that only read, [`rules::READ_ONLY_POSTS`])
//!   drops the seller's cached answers of the same family of operations ([`family`]: the
//!   listings, catalog, pricing, fees, restrictions and feeds APIs are one family, as a listing
//!   change shows in all of them; any other API is its own), once when it is admitted (a write
//!   refused before going upstream, a 429 or a credentials failure, drops nothing) and again
//!   when it ends (however it ends: an error, a timeout, the client gone). Each drop moves the
//!   (seller, family) to a new *generation*: a leader remembers the generation it started in,
//!   a request arriving in a later one never joins it (it goes up itself: a leader that started
//!   before a write may carry a pre-write answer), and its answer is cached only if no write
//!   came meanwhile (checked and stored under one lock, so a write cannot slip between).
//! - **Settling** (`settle_seconds`, default 5): SP-API writes are eventually consistent, so a
//!   read of the family that starts within that long after a write (its start or its end) is
//!   answered but not cached: it may carry Amazon's not-yet-propagated state ([`writes`]).
//! - **Across instances**: with a shared Redis (`[ratelimit.redis]`, else a Redis `[store]`),
//!   every write is announced to the other instances (by every instance, caching or not), which
//!   drop their cached answers of its family as for a local write; while that channel is not
//!   known to be live, or another instance is silent on it (it may be unable to announce), no
//!   cached answer is served or stored; a write whose announcement failed holds its answer
//!   until the others have closed ([`invalidation`]).
//! - **Compat**: a request the Orders v0 translation rewrites is never shared (the key would
//!   name the v0 call while the 2026 call goes up, and the answer is rebuilt per tool); a
//!   translated write drops both operations' families.
//!
//! What a shared answer still goes through, per caller: authentication, authorization and the
//! seller check (before this phase: a revoked tool or seller is refused before a cached answer
//! is looked at), the tool's own rate plan ([`Limiter::acquire_plan`]: an absolute rule is the
//! tool's own bucket, the operator's limit on the tool, and applies to shared answers too; a
//! share only weighs the tool's place in Amazon's bucket, which a shared answer does not use,
//! so it limits nothing here; either way the answer is counted, in the limiter's admissions and
//! per tool in `spgate_shared_calls_tool_total`), the PII policy and safety net of its role,
//! the header allowlist, and its own audit record (reason `coalesced` or `cache_hit`, and
//! `shared_from`: the request id of the leader that fetched the answer). **Invariants:** an answer is shared only between
//! requests for the same seller, operation, path and query and upstream headers (the key holds
//! all five); only 2xx JSON
//! answers of at most `pii.max_response_bytes` (what the policy reads anyway) are shared; the
//! cache holds Amazon's answer as received (the policy runs on every use), in memory, per
//! instance, and never buyer PII (only operations declared free of it).
//!
//! [`Limiter::acquire_plan`]: crate::ratelimit::Limiter::acquire_plan

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::caller::Caller;
use crate::catalog::Operation;
use crate::net::body::{self, Body};
use crate::pii::Role;
use crate::store::SellerRecord;

use super::limit::Wants;
use super::policy::{declares_json, read_capped};
use super::rescue::ProxyError;
use super::{headers, Ctx, Gateway, CACHE_HEADER};

mod answers;
mod invalidation;
mod rules;
mod writes;

use answers::{Answers, Found};
use invalidation::Channel;
pub use invalidation::{ChannelEvent, InvalidationError, RedisLink};
use rules::{family, part, Part};
pub use rules::{RawSharedCalls, SharedCallsConfig};
use writes::{Generation, Writes};

/// What [`SharedCalls`] counted (metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A request answered from the cache.
    Hit,
    /// A cacheable request that went upstream.
    Miss,
    /// A follower answered with its leader's answer.
    Coalesced,
    /// A cached answer dropped by a write.
    Invalidated,
    /// A cached answer dropped because it expired (on lookup, or to make room).
    Expired,
    /// A fresh cached answer dropped to stay within `max_entries` or `max_bytes`.
    Evicted,
    /// An answer not cached because it alone is larger than `max_bytes`.
    TooLarge,
    /// A request that did not join an identical one in flight because that one started before
    /// a write to the seller's family of APIs (it went up itself).
    AfterWrite,
    /// A cacheable request answered without the cache (not looked up, not stored) because the
    /// invalidation channel between instances was not known live.
    NotLive,
    /// A cached answer dropped because the invalidation channel went down or came back (or
    /// brought a message not understood): announcements may have been missed.
    Reset,
    /// An answer not cached because its read started within a write's settle window.
    Settling,
    /// A read not shared because the Orders v0 translation rewrote it.
    Translated,
}

const EVENTS: [(Event, &str); 12] = [
    (Event::Hit, "hit"),
    (Event::Miss, "miss"),
    (Event::Coalesced, "coalesced"),
    (Event::Invalidated, "invalidated"),
    (Event::Expired, "expired"),
    (Event::Evicted, "evicted"),
    (Event::TooLarge, "too_large"),
    (Event::AfterWrite, "after_write"),
    (Event::NotLive, "not_live"),
    (Event::Reset, "reset"),
    (Event::Settling, "settling"),
    (Event::Translated, "translated"),
];

/// The shared answers of one gateway (in memory, per instance).
pub struct SharedCalls {
    config: SharedCallsConfig,
    state: Mutex<State>,
    counts: [AtomicU64; EVENTS.len()],
    /// Answers served without Amazon per tool: (hits, coalesced).
    tools: Mutex<BTreeMap<String, [u64; 2]>>,
    /// Whether other instances' writes reach this cache.
    reach: Reach,
}

/// Where writes come from.
enum Reach {
    /// This instance only (no shared Redis, or nothing cached).
    Alone,
    /// Also the other instances sharing Redis, through the channel.
    Shared(Arc<Channel>),
    /// Other instances, but the channel could not be set up: the cache stays closed.
    Broken,
}

struct State {
    /// Leaders in flight, by key.
    in_flight: HashMap<Key, Flight>,
    /// Cached answers.
    answers: Answers,
    /// The generation of each (seller, family): moved on by every write, at its start and at
    /// its end. A leader is joined, and its answer cached, only within its own generation.
    writes: Writes,
    /// The next leader's ticket (leaders in the order they started).
    next_ticket: u64,
}

/// A leader in flight.
struct Flight {
    rx: watch::Receiver<Option<Arc<Answer>>>,
    /// The generation of its (seller, family) when it started.
    generation: Generation,
}

/// Who asked what: an answer is shared only within one key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Key {
    seller: String,
    operation: &'static str,
    /// The operation's invalidation [`family`] (follows from the operation).
    family: &'static str,
    path_and_query: String,
    /// The headers that go up with the request and can change Amazon's answer
    /// ([`headers::answer_relevant`]: content negotiation, the API's own header parameters).
    headers: Vec<(http::HeaderName, HeaderValue)>,
}

/// Amazon's answer as shared: status, headers, the whole body, and the gateway's request id
/// of the leader that fetched it (in the records of the requests it answers).
pub(super) struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    leader: String,
}

/// When a leader started: its answer is cached only if nothing moved since.
#[derive(Debug, Clone, Copy)]
pub(super) struct Started {
    /// The generation of the key's (seller, family).
    generation: Generation,
    /// The time (within a write's settle window, its answer is not cached).
    at: Instant,
    /// Its place among leaders (a later one's answer is newer).
    ticket: u64,
}

/// Where a request stands with shared answers ([`Gateway::join_shared`]).
pub(super) enum Joined {
    /// Answered from the cache or a leader, through the caller's plan and policy.
    Answered(Response<Body>),
    /// The request goes upstream; [`Lead::publish`] its answer.
    Lead(Lead),
}

/// A request going upstream, and what to do with its answer.
pub(super) enum Lead {
    /// Nothing to share.
    Alone,
    /// The first of identical reads: shares its answer (and caches a 200 with a TTL).
    Reader {
        key: Key,
        tx: watch::Sender<Option<Arc<Answer>>>,
        ttl: Option<Duration>,
        /// When it started, and its place among leaders.
        started: Started,
        /// The gateway's request id of the leader.
        request_id: String,
        calls: Arc<SharedCalls>,
    },
    /// A write: once admitted ([`Lead::admitted`]), the seller's cached answers of its
    /// families (the operation's, and the one sent's when translated) are dropped, and again
    /// when it ends, here and on the other instances.
    Writer {
        seller: String,
        families: Vec<&'static str>,
        calls: Arc<SharedCalls>,
        /// The request's deadline (an answer held for the peers to close waits no longer).
        deadline: Instant,
        /// Where it stands.
        stage: WriteStage,
    },
}

/// Where a write stands for invalidation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WriteStage {
    /// Not admitted yet (refused before going upstream, it invalidates nothing).
    Waiting,
    /// Admitted: invalidated and announced at its start; its end is still to announce.
    Started,
    /// Its end announced (or handed to the background).
    Ended,
}

// === impl SharedCalls ===

impl SharedCalls {
    /// Shared answers as configured; with a shared Redis, announcing its writes to the other
    /// instances and, when it caches anything, subscribed to theirs (in the background:
    /// [`SharedCalls::wait_live`]).
    pub fn new(config: SharedCallsConfig) -> Arc<SharedCalls> {
        let answers = Answers::new(config.max_entries, config.max_bytes);
        // Past the longest TTL and the settle window, no answer cached before a write can be
        // served anywhere: a failed announcement is not worth sending after that.
        let retry_for = config.ttls.values().max().copied().unwrap_or_default() + config.settle;
        let reach = match &config.redis {
            Some(link) => match Channel::new(link, retry_for, !config.ttls.is_empty()) {
                Ok(channel) => Reach::Shared(Arc::new(channel)),
                Err(e) => {
                    tracing::error!(error = %e, "The shared-answer invalidation channel cannot be set up: no cached answer is served.");
                    Reach::Broken
                }
            },
            _ => Reach::Alone,
        };
        let calls = Arc::new(SharedCalls {
            state: Mutex::new(State {
                in_flight: HashMap::new(),
                answers,
                writes: Writes::new(config.settle),
                next_ticket: 0,
            }),
            config,
            counts: Default::default(),
            tools: Mutex::new(BTreeMap::new()),
            reach,
        });
        if let Reach::Shared(channel) = &calls.reach {
            channel.start(Arc::downgrade(&calls));
        }
        calls
    }

    /// Whether cached answers may be served and stored now: alone, always; with other
    /// instances, while the channel bringing their writes is known live.
    fn cache_open(&self) -> bool {
        match &self.reach {
            Reach::Alone => true,
            Reach::Shared(channel) => channel.is_live(),
            Reach::Broken => false,
        }
    }

    /// Waits (at most `within`) until the channel to the other instances is live; whether the
    /// cache is open (always, without other instances).
    pub async fn wait_live(&self, within: Duration) -> bool {
        match &self.reach {
            Reach::Shared(channel) if channel.subscribing() => channel.wait_live(within).await,
            _ => self.cache_open(),
        }
    }

    /// Whether the invalidation channel is live (`None`: there is none, nothing to share it
    /// with, or nothing cached to subscribe for).
    pub fn channel_live(&self) -> Option<bool> {
        match &self.reach {
            Reach::Alone => None,
            Reach::Shared(channel) if !channel.subscribing() => None,
            Reach::Shared(channel) => Some(channel.is_live()),
            Reach::Broken => Some(false),
        }
    }

    /// How many times the invalidation channel counted `event` (0 without a channel).
    pub fn channel_counted(&self, event: ChannelEvent) -> u64 {
        match &self.reach {
            Reach::Shared(channel) => channel.counted(event),
            _ => 0,
        }
    }

    /// Every cached answer dropped and every (seller, family) moved to a new generation: the
    /// channel went down or came back, and announcements may have been missed.
    fn reset(&self) {
        let mut st = self.lock();
        st.writes.new_epoch();
        let dropped = st.answers.clear();
        drop(st);
        self.count_n(Event::Reset, dropped);
    }

    /// Announces a write to the (seller, families) to the other instances, if any; whether
    /// every announcement went.
    async fn announce(&self, seller: &str, families: &[&'static str]) -> bool {
        let mut went = true;
        if let Reach::Shared(channel) = &self.reach {
            for family in families {
                went &= channel.announce(seller, family).await;
            }
        }
        went
    }

    /// [`SharedCalls::announce`] of a write's end, awaited before its answer (or error) goes
    /// back; one that failed holds it until the peers have closed their caches (or `deadline`).
    async fn announce_end(&self, seller: &str, families: &[&'static str], deadline: Instant) {
        if !self.announce(seller, families).await {
            if let Reach::Shared(channel) = &self.reach {
                channel.hold(deadline).await;
            }
        }
    }

    /// [`SharedCalls::announce`] in the background (from a drop, or not to delay a write).
    fn announce_later(self: &Arc<Self>, seller: &str, families: &[&'static str]) {
        if !matches!(self.reach, Reach::Shared(_)) {
            return;
        }
        let (calls, seller, families) = (self.clone(), seller.to_string(), families.to_vec());
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            drop(rt.spawn(async move {
                calls.announce(&seller, &families).await;
            }));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every write to the state is whole under the lock; a panic elsewhere leaves it valid.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count(&self, event: Event) {
        self.count_n(event, 1);
    }

    fn count_n(&self, event: Event, n: u64) {
        if n > 0 {
            self.counts[event as usize].fetch_add(n, Ordering::Relaxed);
        }
    }

    /// How many times `event` happened.
    pub fn counted(&self, event: Event) -> u64 {
        self.counts[event as usize].load(Ordering::Relaxed)
    }

    /// How many answers `tool` was served without Amazon: (from the cache, from a leader).
    pub fn counted_for_tool(&self, tool: &str) -> (u64, u64) {
        let tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        tools
            .get(tool)
            .map_or((0, 0), |[hit, coalesced]| (*hit, *coalesced))
    }

    /// Answers cached now, and the bytes they take (the estimate `max_bytes` bounds).
    pub fn cached(&self) -> (usize, usize) {
        let st = self.lock();
        (st.answers.len(), st.answers.bytes())
    }

    /// Whether anything is shared at all, or writes are announced to other instances.
    fn enabled(&self) -> bool {
        self.config.coalesce
            || !self.config.ttls.is_empty()
            || matches!(self.reach, Reach::Shared(_))
    }

    /// A write to the (seller, family), here or on another instance: moves it to its next
    /// generation, opens its settle window and drops its cached answers.
    fn invalidate(&self, seller: &str, family_: &'static str) {
        let now = Instant::now();
        let mut st = self.lock();
        st.writes.wrote(seller, family_, now);
        let dropped = st.answers.drop_family(seller, family_);
        drop(st);
        self.count_n(Event::Invalidated, dropped);
    }

    /// Counts an answer served to `tool` without Amazon.
    fn count_tool(&self, tool: &str, hit: bool) {
        let mut tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        let counts = match tools.get_mut(tool) {
            Some(c) => c,
            None => tools.entry(tool.to_string()).or_default(),
        };
        counts[usize::from(!hit)] += 1;
    }

    /// The metrics in Prometheus' text format.
    pub fn render_metrics(&self, out: &mut String) {
        use std::fmt::Write as _;
        let name = "spgate_shared_calls_total";
        let _ = writeln!(out, "# HELP {name} Answers shared between callers: served from the cache (hit), fetched for it (miss), given to a coalesced follower; cached answers dropped by a write here or on another instance (invalidated), on expiry (expired), to stay within max_entries/max_bytes (evicted), when the invalidation channel went down or came back (reset); answers too large to cache (too_large); requests that did not join a leader older than a write (after_write); cacheable requests served without the cache while the channel was not live (not_live); answers not cached within a write's settle window (settling); reads not shared because the Orders v0 translation rewrote them (translated).\n# TYPE {name} counter");
        for (event, label) in EVENTS {
            let _ = writeln!(out, "{name}{{event=\"{label}\"}} {}", self.counted(event));
        }
        let (entries, bytes) = self.cached();
        let _ = writeln!(out, "# HELP spgate_shared_calls_cached_answers Answers in the shared-answer cache.\n# TYPE spgate_shared_calls_cached_answers gauge\nspgate_shared_calls_cached_answers {entries}");
        let _ = writeln!(out, "# HELP spgate_shared_calls_cached_bytes Bytes of the shared-answer cache (body, headers and key of each answer; bounded by max_bytes).\n# TYPE spgate_shared_calls_cached_bytes gauge\nspgate_shared_calls_cached_bytes {bytes}");
        match &self.reach {
            Reach::Alone => {}
            Reach::Shared(channel) => channel.render_metrics(out),
            Reach::Broken => invalidation::render_live(out, false),
        }
        let name = "spgate_shared_calls_tool_total";
        let _ = writeln!(out, "# HELP {name} Answers served to a tool without Amazon (from the cache, or a coalesced leader), after its own plan.\n# TYPE {name} counter");
        let tools = self.tools.lock().unwrap_or_else(|p| p.into_inner());
        for (tool, [hit, coalesced]) in tools.iter() {
            let tool = label_value(tool);
            let _ = writeln!(out, "{name}{{tool=\"{tool}\",event=\"hit\"}} {hit}");
            let _ = writeln!(
                out,
                "{name}{{tool=\"{tool}\",event=\"coalesced\"}} {coalesced}"
            );
        }
    }
}

/// A Prometheus label value: backslash, quote and newline escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// What the pipeline knows of a request when it reaches the shared-answer phase.
pub(super) struct Asking<'a> {
    /// The operation asked for (answered).
    pub(super) op: &'static Operation,
    /// The operation sent upstream: `op`, or its Orders 2026-01-01 call when translated.
    pub(super) wire: &'static Operation,
    pub(super) seller: Option<&'a SellerRecord>,
    pub(super) caller: &'a Caller,
    pub(super) role: &'a Role,
    pub(super) params: &'a [(&'static str, String)],
    pub(super) wants: &'a Wants,
    pub(super) deadline: Instant,
    /// The request's body, when it was read whole (a read-only POST is shared by it).
    pub(super) body: Option<&'a Bytes>,
}

/// Where a shared read stands after the lookup.
enum Shared {
    /// A fresh cached answer.
    Hit(Arc<Answer>),
    /// A leader of the same generation is in flight.
    Follow(watch::Receiver<Option<Arc<Answer>>>),
}

impl Gateway {
    /// The shared-answer phase, after the PII cache and before credentials: a cached or
    /// coalesced answer for this request (through the caller's plan and policy), or the lead
    /// to publish its upstream answer with. A write drops the seller's cached answers of its
    /// family here (and again when its [`Lead`] is published).
    pub(super) async fn join_shared(
        &self,
        a: Asking<'_>,
        req: &Request<Body>,
        ctx: &mut Ctx,
    ) -> Result<Joined, ProxyError> {
        let calls = &self.shared_calls;
        let (Some(seller), true) = (a.seller, calls.enabled()) else {
            return Ok(Joined::Lead(Lead::Alone));
        };
        let seller_id = seller.selling_partner_id.as_str();
        let op = a.op;
        match part(op, a.wire) {
            // Invalidated and announced once admitted ([`Lead::admitted`]).
            Part::Write(families) => {
                return Ok(Joined::Lead(Lead::Writer {
                    seller: seller_id.to_string(),
                    families,
                    calls: calls.clone(),
                    deadline: a.deadline,
                    stage: WriteStage::Waiting,
                }));
            }
            Part::Alone(event) => {
                if let Some(event) = event {
                    calls.count(event);
                }
                return Ok(Joined::Lead(Lead::Alone));
            }
            Part::Read => {}
        }
        let ttl = calls.config.ttls.get(op.key).copied();
        if !calls.config.coalesce && ttl.is_none() {
            return Ok(Joined::Lead(Lead::Alone));
        }
        // A GET is shared bodiless; a read-only POST by its whole body (kept for replay).
        let body = match (op.method == http::Method::GET, a.body) {
            (true, _) if http_body::Body::is_end_stream(req.body()) => None,
            (false, Some(body)) => Some(crate::crypto::sha256_hex(body)),
            _ => return Ok(Joined::Lead(Lead::Alone)),
        };
        // Fail closed: while other instances' writes may not reach this cache, it is neither
        // read nor filled (coalescing within the instance goes on).
        let cache_open = calls.cache_open();
        if ttl.is_some() && !cache_open {
            calls.count(Event::NotLive);
        }
        let keep_for = ttl.filter(|_| cache_open);
        let pq = req.uri().path_and_query().map_or("", |pq| pq.as_str());
        let key = Key {
            seller: seller_id.to_string(),
            operation: op.key,
            family: family(op),
            path_and_query: match body {
                Some(digest) => format!("{pq} {digest}"),
                None => pq.to_string(),
            },
            headers: headers::answer_relevant(req.headers(), op.model),
        };
        let now = Instant::now();
        let shared = {
            let mut st = calls.lock();
            let found = match keep_for {
                Some(_) => st.answers.get(&key, now),
                None => Found::Nothing,
            };
            if let Found::Fresh(answer) = found {
                Shared::Hit(answer)
            } else {
                if matches!(found, Found::Expired) {
                    calls.count(Event::Expired);
                }
                let generation = st.writes.generation(&key.seller, key.family);
                match st.in_flight.get(&key) {
                    Some(f) if calls.config.coalesce && f.generation == generation => {
                        Shared::Follow(f.rx.clone())
                    }
                    older => {
                        // A leader that started before a write may carry a pre-write answer.
                        if calls.config.coalesce && older.is_some() {
                            calls.count(Event::AfterWrite);
                        }
                        let (tx, rx) = watch::channel(None);
                        st.in_flight.insert(key.clone(), Flight { rx, generation });
                        let ticket = st.next_ticket;
                        st.next_ticket += 1;
                        drop(st);
                        if ttl.is_some() {
                            calls.count(Event::Miss);
                            ctx.shared_miss = true;
                        }
                        return Ok(Joined::Lead(Lead::Reader {
                            key,
                            tx,
                            ttl: keep_for,
                            started: Started {
                                generation,
                                at: now,
                                ticket,
                            },
                            request_id: ctx.request_id.clone(),
                            calls: calls.clone(),
                        }));
                    }
                }
            }
        };
        let (answer, hit) = match shared {
            Shared::Hit(cached) => (cached, true),
            Shared::Follow(mut rx) => {
                let waited =
                    tokio::time::timeout_at(a.deadline, rx.wait_for(Option::is_some)).await;
                match waited {
                    Ok(Ok(answer)) => match answer.as_ref() {
                        Some(answer) => (answer.clone(), false),
                        None => return Ok(Joined::Lead(Lead::Alone)),
                    },
                    // The leader failed, or took longer than this caller waits: on its own.
                    Ok(Err(_)) | Err(_) => return Ok(Joined::Lead(Lead::Alone)),
                }
            }
        };
        // The tool's own plan still applies (an absolute rule is the tool's own bucket; a
        // share weighs only Amazon's bucket, not touched here); the limiter counts the decision.
        ctx.admission = Some(self.admit_plan(a.caller, op, seller_id, a.wants).await?);
        calls.count(if hit { Event::Hit } else { Event::Coalesced });
        calls.count_tool(&a.caller.client.tool, hit);
        let source = if hit { "hit" } else { "coalesced" };
        ctx.note = Some(crate::audit::Reason::from_static(if hit {
            "cache_hit"
        } else {
            "coalesced"
        }));
        ctx.shared_from = Some(answer.leader.clone());
        ctx.upstream_request_id = answer.upstream_request_id();
        let resp = self
            .minimise(answer.response(), op, a.role, a.seller, a.params, ctx)
            .await?;
        let mut resp = self.respond(resp);
        resp.headers_mut()
            .insert(CACHE_HEADER, HeaderValue::from_static(source));
        Ok(Joined::Answered(resp))
    }
}

// === impl Lead ===

impl Lead {
    /// The request was admitted and goes upstream: a write drops its families' cached
    /// answers and announces its start (in the background; its end is awaited).
    pub(super) fn admitted(&mut self) {
        if let Lead::Writer {
            seller,
            families,
            calls,
            stage,
            ..
        } = self
        {
            if *stage == WriteStage::Waiting {
                for f in families.iter() {
                    calls.invalidate(seller, f);
                }
                calls.announce_later(seller, families);
                *stage = WriteStage::Started;
            }
        }
    }

    /// The request failed after it was admitted (an upstream timeout, a 5xx, a lost
    /// connection: Amazon may have applied a write): a write's end is announced before the
    /// error goes back, as for an answer.
    pub(super) async fn failed(mut self) {
        if let Lead::Writer {
            seller,
            families,
            calls,
            deadline,
            stage: stage @ WriteStage::Started,
        } = &mut self
        {
            calls.announce_end(seller, families, *deadline).await;
            *stage = WriteStage::Ended;
        }
    }

    /// The leader's upstream answer: shared with its followers (and cached: a 200 with a TTL,
    /// no write meanwhile) when it is JSON within `max` bytes, and returned for the leader's own
    /// caller. A write drops its families' cached answers again, and its end is announced to
    /// the other instances before its answer goes back (the tool's next read through any of
    /// them comes after it).
    pub(super) async fn publish(
        mut self,
        resp: Response<Body>,
        max: usize,
    ) -> Result<Response<Body>, ProxyError> {
        // `self` drops when this returns, taking a reader's in-flight entry away.
        match &mut self {
            Lead::Alone => Ok(resp),
            // The write's second local invalidation is its lead's drop, right after this returns.
            Lead::Writer {
                seller,
                families,
                calls,
                deadline,
                stage,
            } => {
                if *stage == WriteStage::Started {
                    calls.announce_end(seller, families, *deadline).await;
                    *stage = WriteStage::Ended;
                }
                Ok(resp)
            }
            Lead::Reader {
                key,
                tx,
                ttl,
                started,
                request_id,
                calls,
            } => {
                // Only a success is shared (an error answer is the leader's own: its followers
                // ask Amazon themselves, with their own retries), and only what the policy would
                // read whole anyway is read whole here; anything else goes to the leader's caller
                // as it is, and followers go on their own (the sender's drop releases them).
                if !resp.status().is_success() || !declares_json(resp.headers()) {
                    return Ok(resp);
                }
                let (parts, body) = resp.into_parts();
                let bytes = read_capped(body, max).await?;
                let answer = Arc::new(Answer {
                    status: parts.status,
                    headers: parts.headers,
                    body: bytes,
                    leader: request_id.clone(),
                });
                if let (Some(ttl), StatusCode::OK) = (ttl, answer.status) {
                    calls.keep(key, &answer, *ttl, *started);
                }
                tx.send_replace(Some(answer.clone()));
                Ok(answer.response())
            }
        }
    }
}

impl SharedCalls {
    /// Caches a leader's answer if no write to its (seller, family) came since it started, it
    /// did not start within a write's settle window, and the cache is open: checked and stored
    /// under one lock, so a write's drop cannot fall between the two.
    fn keep(&self, key: &Key, answer: &Arc<Answer>, ttl: Duration, started: Started) {
        let now = Instant::now();
        let mut st = self.lock();
        if st.writes.generation(&key.seller, key.family) != started.generation {
            return;
        }
        if !self.cache_open() {
            drop(st);
            self.count(Event::NotLive);
            return;
        }
        if st.writes.settling(&key.seller, key.family, started.at) {
            drop(st);
            self.count(Event::Settling);
            return;
        }
        let stored = st
            .answers
            .insert(key, answer.clone(), now + ttl, started.ticket, now);
        drop(st);
        self.count_n(Event::Expired, stored.expired);
        self.count_n(Event::Evicted, stored.evicted);
        if stored.too_large {
            self.count(Event::TooLarge);
        }
    }
}

impl Drop for Lead {
    fn drop(&mut self) {
        match self {
            // A leader that ends without publishing (an error, the client gone) takes its entry
            // with it (unless a later leader took the key over); its followers see the sender
            // closed and go on their own.
            Lead::Reader { key, tx, calls, .. } => {
                let mut st = calls.lock();
                if st
                    .in_flight
                    .get(key)
                    .is_some_and(|f| f.rx.same_channel(&tx.subscribe()))
                {
                    st.in_flight.remove(key);
                }
            }
            // A write ends however it ends (published, an error, a timeout, the client gone, a
            // drain): Amazon may have applied it, so what was read meanwhile goes again, here
            // and (unless its answer already announced it) on the other instances.
            Lead::Writer {
                seller,
                families,
                calls,
                stage,
                ..
            } => {
                if *stage == WriteStage::Waiting {
                    return; // Refused before going upstream: nothing written.
                }
                for f in families.iter() {
                    calls.invalidate(seller, f);
                }
                if *stage == WriteStage::Started {
                    calls.announce_later(seller, families);
                }
            }
            Lead::Alone => {}
        }
    }
}

// === impl Key ===

impl Key {
    /// Bytes it takes (estimate).
    fn size(&self) -> usize {
        self.seller.len()
            + self.path_and_query.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
    }
}

// === impl Answer ===

impl Answer {
    /// A fresh response carrying this answer.
    fn response(&self) -> Response<Body> {
        let mut resp = Response::new(if self.body.is_empty() {
            body::empty()
        } else {
            body::full(self.body.clone())
        });
        *resp.status_mut() = self.status;
        *resp.headers_mut() = self.headers.clone();
        resp
    }

    /// Bytes it takes (estimate).
    fn size(&self) -> usize {
        self.body.len()
            + self.leader.len()
            + self
                .headers
                .iter()
                .map(|(n, v)| n.as_str().len() + v.len() + 32)
                .sum::<usize>()
    }

    /// Amazon's `x-amzn-RequestId` on the answer (as the pipeline takes it for a record).
    fn upstream_request_id(&self) -> Option<String> {
        self.headers
            .get(crate::spapi::REQUEST_ID)
            .and_then(|v| v.to_str().ok())
            .filter(|v| v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(str::to_string)
    }
}
