//! The cross-instance fairness of the Redis script (`fair.rs`), against the real server on
//! 127.0.0.1:6379 under a fresh key prefix per test: first the script's decisions one call at a
//! time (each call stands for any instance: the script knows no instances), then three limiters
//! sharing one Redis, as three gateway processes would.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fair::{increment, Candidate, ACTIVE_MARGIN};
use super::redis::{RedisBackend, Reply, Take, Verdict};
use super::*;
use crate::catalog::{Catalog, Operation, UsagePlan};

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Settings under a fresh random prefix; fails the test when Redis is not running.
fn settings() -> RedisSettings {
    let prefix = crate::crypto::hex(&crate::crypto::random_bytes::<8>().unwrap());
    RedisSettings {
        key_prefix: format!("spgate-fair-test-{prefix}:"),
        ..RedisSettings::new(REDIS_URL)
    }
}

/// One seller bucket in Redis, asked directly.
struct Script {
    backend: RedisBackend,
    key: String,
    interval: Duration,
    burst: u32,
}

impl Script {
    async fn new(interval: Duration, burst: u32) -> Script {
        Script::on(settings(), interval, burst).await
    }

    /// The bucket a limiter with these settings uses for `A1FAIR`'s getOrderAddress.
    async fn on(settings: RedisSettings, interval: Duration, burst: u32) -> Script {
        let backend = RedisBackend::connect(settings).await.unwrap();
        assert!(
            backend.available(Instant::now()),
            "Redis must run on 127.0.0.1:6379 for these tests"
        );
        let key = backend.key("A1FAIR", "ordersV0.getOrderAddress");
        Script {
            backend,
            key,
            interval,
            burst,
        }
    }

    /// A bucket that always has a token: only fairness decides.
    async fn roomy() -> Script {
        Script::new(Duration::from_micros(1), 1_000_000).await
    }

    async fn ask(&self, candidates: &[Candidate<'_>]) -> Verdict {
        self.reply(candidates).await.verdict
    }

    /// The whole answer: the verdict and the candidates refused on the spot.
    async fn reply(&self, candidates: &[Candidate<'_>]) -> Reply {
        self.reply_with(&[], candidates).await
    }

    /// The whole answer of a decision taking these application buckets too.
    async fn reply_with(&self, apps: &[Take<'_>], candidates: &[Candidate<'_>]) -> Reply {
        let mut takes = vec![Take {
            key: &self.key,
            interval: self.interval,
            burst: self.burst,
        }];
        takes.extend_from_slice(apps);
        self.backend.take(&takes, candidates).await.unwrap()
    }

    async fn redis(&self) -> ::redis::aio::MultiplexedConnection {
        let client = ::redis::Client::open(REDIS_URL).unwrap();
        client.get_multiplexed_async_connection().await.unwrap()
    }
}

/// A waiting request of `tool` in `lane` with `share`, more of it waiting behind.
fn waiting(tool: &str, lane: usize, share: f64) -> Candidate<'_> {
    Candidate {
        tool,
        lane,
        increment: increment(share),
        max_wait: Duration::from_secs(10),
        backlogged: true,
    }
}

fn granted(v: Verdict) -> Option<usize> {
    match v {
        Verdict::Granted { index, .. } => Some(index),
        _ => None,
    }
}

fn deferred(v: Verdict) -> bool {
    matches!(v, Verdict::Deferred { .. })
}

#[tokio::test]
async fn a_tool_one_grant_ahead_of_another_waiting_tool_is_deferred_until_it_catches_up() {
    let s = Script::roomy().await;
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    assert_eq!(granted(s.ask(&[a]).await), Some(0), "a alone");
    // b (say, through two other instances) may draw level and go one ahead, no further.
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
    let v = s.ask(&[b]).await;
    assert!(deferred(v), "b is a grant ahead of a, which waits: {v:?}");
    assert!(deferred(s.ask(&[b]).await), "and stays deferred");
    assert_eq!(granted(s.ask(&[a]).await), Some(0), "a catches up");
    assert_eq!(granted(s.ask(&[a]).await), Some(0), "and may go one ahead");
    assert!(deferred(s.ask(&[a]).await));
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
}

#[tokio::test]
async fn the_retry_hint_is_half_an_interval_within_one_and_250_ms() {
    let s = Script::new(Duration::from_millis(100), 1_000).await;
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    s.ask(&[a]).await;
    s.ask(&[b]).await;
    s.ask(&[b]).await;
    // And the estimate: a token at hand, then one interval for a, which goes first.
    assert_eq!(
        s.ask(&[b]).await,
        Verdict::Deferred {
            retry: Duration::from_millis(50),
            estimate: Duration::from_millis(100),
        }
    );
    assert_eq!(
        fair::retry_hint(Duration::from_secs(60)),
        Duration::from_millis(250)
    );
    assert_eq!(
        fair::retry_hint(Duration::from_micros(10)),
        Duration::from_millis(1)
    );
}

#[tokio::test]
async fn the_first_eligible_candidate_goes_even_when_the_local_head_is_ahead() {
    let s = Script::roomy().await;
    let (a, b, c) = (
        waiting("a", 1, 0.5),
        waiting("b", 1, 0.5),
        waiting("c", 1, 0.5),
    );
    s.ask(&[a, b, c]).await; // a
    s.ask(&[a, b, c]).await; // b: a is one ahead of c, which waits
    assert_eq!(granted(s.ask(&[a, b, c]).await), Some(2), "c, not a or b");
    assert_eq!(granted(s.ask(&[a, b, c]).await), Some(0), "then a again");
}

#[tokio::test]
async fn shares_hold_however_often_each_tool_asks() {
    let s = Script::roomy().await;
    let (small, large) = (waiting("small", 1, 0.3), waiting("large", 1, 0.7));
    // The large tool asks through many instances (four calls for each of the small tool's):
    // its share, not its number of asks, decides.
    let mut grants: HashMap<&str, u32> = HashMap::new();
    for round in 0..1000 {
        let who = if round % 5 == 0 { small } else { large };
        if granted(s.ask(&[who]).await).is_some() {
            *grants.entry(who.tool).or_default() += 1;
        }
    }
    let (n_small, n_large) = (grants["small"], grants["large"]);
    let f = f64::from(n_small) / f64::from(n_small + n_large);
    assert!((f - 0.3).abs() <= 0.01, "small got {f}: {grants:?}");
}

#[tokio::test]
async fn a_lower_lane_waits_while_a_higher_lane_tool_waits_on_any_instance() {
    let s = Script::roomy().await;
    let (high, low) = (waiting("h", 0, 0.1), waiting("l", 2, 1.0));
    assert_eq!(granted(s.ask(&[high]).await), Some(0));
    for _ in 0..3 {
        assert!(deferred(s.ask(&[low]).await), "high still waits");
        assert_eq!(granted(s.ask(&[high]).await), Some(0), "high never waits");
    }
    // A high request offered together with a low one (one instance) goes first, too.
    assert_eq!(granted(s.ask(&[low, high]).await), Some(1));
    // High's last request: nothing more of it waits, and low goes as soon as its slot passed.
    let last = Candidate {
        backlogged: false,
        ..high
    };
    assert_eq!(granted(s.ask(&[last]).await), Some(0));
    tokio::time::sleep(ACTIVE_MARGIN + Duration::from_millis(50)).await;
    assert_eq!(granted(s.ask(&[low]).await), Some(0));
}

#[tokio::test]
async fn a_tool_that_stops_asking_stops_holding_others_back_after_the_margin() {
    let s = Script::roomy().await;
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    s.ask(&[a]).await;
    s.ask(&[b]).await;
    s.ask(&[b]).await;
    assert!(deferred(s.ask(&[b]).await));
    // a's instance went away without a word.
    tokio::time::sleep(ACTIVE_MARGIN + Duration::from_millis(50)).await;
    for _ in 0..5 {
        assert_eq!(granted(s.ask(&[b]).await), Some(0), "b alone takes all");
    }
}

#[tokio::test]
async fn a_returning_tool_keeps_no_credit_from_its_absence() {
    let s = Script::roomy().await;
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    for _ in 0..10 {
        assert_eq!(granted(s.ask(&[b]).await), Some(0), "b alone");
    }
    // a comes (b still waiting): it draws level and goes one ahead, not ten.
    assert_eq!(granted(s.ask(&[a]).await), Some(0));
    assert_eq!(granted(s.ask(&[a]).await), Some(0));
    assert!(deferred(s.ask(&[a]).await), "a has no saved-up credit");
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
}

#[tokio::test]
async fn a_slot_past_the_chosen_candidates_deadline_is_refused_with_the_slot_as_retry_after() {
    let s = Script::new(Duration::from_secs(1), 1).await;
    let a = waiting("a", 1, 0.5);
    assert_eq!(granted(s.ask(&[a]).await), Some(0));
    let hurried = Candidate {
        max_wait: Duration::from_millis(100),
        ..a
    };
    let reply = s.reply(&[hurried]).await;
    assert_eq!(reply.verdict, Verdict::NoneLeft);
    assert!(reply.refused.contains(0), "{reply:?}");
    let wait = reply.refused.wait;
    assert!(
        wait > Duration::from_millis(900) && wait <= Duration::from_secs(1),
        "{wait:?}"
    );
    // The refusal took nothing: a patient one gets that same slot.
    match s.ask(&[a]).await {
        Verdict::Granted { index: 0, wait } => assert!(wait <= Duration::from_secs(1)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_tool_an_application_bucket_keeps_from_ever_being_served_holds_no_one_back() {
    // The application bucket (every seller's) gives one token every 50 ms, and sets every slot
    // (the seller's bucket is roomy). r can wait 1 ms: never enough. r was never granted, so its
    // tag is the smallest; it must not keep b waiting for a turn it cannot take.
    let s = Script::roomy().await;
    let app_key = s.backend.app_key("ordersV0.getOrderAddress", None);
    let app = Take {
        key: &app_key,
        interval: Duration::from_millis(50),
        burst: 1,
    };
    let b = waiting("b", 1, 0.5);
    let r = Candidate {
        max_wait: Duration::from_millis(1),
        ..waiting("r", 1, 0.5)
    };
    assert_eq!(granted(s.reply_with(&[app], &[b]).await.verdict), Some(0));
    for _ in 0..5 {
        let reply = s.reply_with(&[app], &[r]).await;
        assert_eq!(reply.verdict, Verdict::NoneLeft, "{reply:?}");
        assert!(reply.app_bound, "{reply:?}");
        assert!(reply.refused.contains(0) && reply.refused.wait > Duration::ZERO);
        let v = s.reply_with(&[app], &[b]).await.verdict;
        assert_eq!(granted(v), Some(0), "r holds b back: {v:?}");
    }
    // Offered together by one instance: r refused and b granted, in one decision.
    let reply = s.reply_with(&[app], &[r, b]).await;
    assert!(
        reply.refused.contains(0) && !reply.refused.contains(1),
        "{reply:?}"
    );
    assert_eq!(granted(reply.verdict), Some(1));
}

#[tokio::test]
async fn a_deferral_estimate_counts_in_the_interval_of_the_application_bucket_that_binds() {
    // The seller's bucket is roomy; the application bucket gives a token every 100 ms.
    let s = Script::roomy().await;
    let app_key = s.backend.app_key("ordersV0.getOrderAddress", None);
    let app = Take {
        key: &app_key,
        interval: Duration::from_millis(100),
        burst: 1,
    };
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    assert_eq!(granted(s.reply_with(&[app], &[a]).await.verdict), Some(0));
    assert_eq!(granted(s.reply_with(&[app], &[b]).await.verdict), Some(0));
    assert_eq!(granted(s.reply_with(&[app], &[b]).await.verdict), Some(0));
    // b is a grant ahead of a: deferred. The next slot is ~300 ms away (three reserved), and a
    // goes first: one more application interval, not one of the seller's (1 us).
    let reply = s.reply_with(&[app], &[b]).await;
    assert!(reply.app_bound, "{reply:?}");
    match reply.verdict {
        Verdict::Deferred { estimate, .. } => {
            let slot = reply.refused.wait;
            assert!(slot > Duration::from_millis(250), "{reply:?}");
            assert!(
                estimate >= slot + Duration::from_millis(99),
                "estimate {estimate:?}, slot in {slot:?}"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_tool_refused_at_the_sellers_bucket_still_waits_and_gets_its_turn_when_it_refills() {
    // The seller's bucket alone, one token every 100 ms. y may wait long and asks at each slot
    // (reserving the next); x may wait 20 ms, so each of its requests, asking in between, finds
    // the next slot too far and is refused. Counted as waiting all the same (more of it wait),
    // x holds y back, the bucket refills, and x's next request goes.
    let s = Script::new(Duration::from_millis(100), 1).await;
    let y = waiting("y", 1, 0.5);
    let x = Candidate {
        max_wait: Duration::from_millis(20),
        ..waiting("x", 1, 0.5)
    };
    assert_eq!(granted(s.ask(&[y]).await), Some(0), "the burst token");
    let reply = s.reply(&[x, y]).await;
    assert!(reply.refused.contains(0), "{reply:?}");
    assert!(!reply.app_bound);
    assert!(deferred(reply.verdict), "x waits, y is ahead: {reply:?}");
    let v = s.ask(&[y]).await;
    assert!(deferred(v), "x still waits: {v:?}");
    tokio::time::sleep(Duration::from_millis(110)).await;
    assert_eq!(granted(s.ask(&[x, y]).await), Some(0), "x's turn");
    // Not backlogged (nothing more of it waits), a refused tool counts for nothing.
    let s = Script::new(Duration::from_millis(100), 1).await;
    let last = Candidate {
        backlogged: false,
        ..x
    };
    assert_eq!(granted(s.ask(&[y]).await), Some(0));
    let reply = s.reply(&[last, y]).await;
    assert!(reply.refused.contains(0), "{reply:?}");
    assert_eq!(granted(reply.verdict), Some(1), "{reply:?}");
}

#[tokio::test]
async fn on_a_slow_operation_a_candidate_not_chosen_keeps_waiting_until_its_instances_next_ask() {
    // One token a second. An instance offers a and b; a gets the slot a second away, and the
    // instance sleeps until then before it offers b again: b waits all that time.
    let s = Script::new(Duration::from_secs(1), 1).await;
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    let spent = Candidate {
        backlogged: false,
        ..waiting("z", 1, 0.5)
    };
    assert_eq!(granted(s.ask(&[spent]).await), Some(0), "the burst token");
    match s.ask(&[a, b]).await {
        Verdict::Granted { index: 0, wait } => assert!(wait > Duration::from_millis(900)),
        other => panic!("{other:?}"),
    }
    // Past the deferral's horizon (hint + margin, 0.5 s), well before the slot (1 s).
    tokio::time::sleep(Duration::from_millis(800)).await;
    let v = s.ask(&[a]).await;
    assert!(deferred(v), "b still waits, a is a grant ahead: {v:?}");
    assert_eq!(granted(s.ask(&[b]).await), Some(0), "b's turn");
}

#[tokio::test]
async fn a_request_deferred_until_its_deadline_is_refused_as_deferred_with_an_estimate() {
    let settings = settings();
    let limiter = Limiter::redis(LimiterConfig::default(), settings.clone())
        .await
        .unwrap();
    let s = Script::on(settings, Duration::from_micros(1), 1_000_000).await;
    // Tools without a plan: the default share, normal lane, as the limiter offers them.
    let inc = increment(LimiterConfig::default().default_share);
    let (a, b) = (
        Candidate {
            increment: inc,
            ..waiting("a", 1, 1.0)
        },
        Candidate {
            increment: inc,
            ..waiting("b", 1, 1.0)
        },
    );
    // Through other instances: a waits (for the margin, 250 ms), b is a grant ahead of it.
    assert_eq!(granted(s.ask(&[a]).await), Some(0));
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
    assert_eq!(granted(s.ask(&[b]).await), Some(0));
    let operation = custom_op(1e6, 1_000_000);
    let req = Acquire {
        seller: "A1FAIR",
        operation,
        tool: "b",
        plan: None,
        priority: Priority::Normal,
        max_wait: Some(Duration::from_millis(100)),
    };
    match limiter.acquire(req).await {
        Err(RateLimitError::Deferred { retry_after, .. }) => {
            assert!(retry_after > Duration::ZERO, "{retry_after:?}");
        }
        other => panic!("{other:?}"),
    }
    let m = limiter.metrics();
    assert_eq!((m.rejected_deferred, m.rejected_throttled), (1, 0));
}

#[tokio::test]
async fn the_fairness_state_lives_next_to_the_bucket_expires_and_forgets_idle_tools() {
    let s = Script::roomy().await;
    let fair_key = RedisBackend::fair_key(&s.key);
    assert!(fair_key.contains("{A1FAIR}"), "same hash tag: {fair_key}");
    let (a, b) = (waiting("a", 1, 0.5), waiting("b", 1, 0.5));
    s.ask(&[a]).await;
    s.ask(&[b]).await;
    s.ask(&[b]).await; // b one grant ahead: the virtual time is now level with a
    let mut conn = s.redis().await;
    let ttl: i64 = ::redis::cmd("PTTL")
        .arg(&fair_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 0 && ttl <= 1_500, "expires: {ttl} ms");
    let fields: Vec<String> = ::redis::cmd("HKEYS")
        .arg(&fair_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(fields.contains(&"f1:a".to_string()), "{fields:?}");
    // Both idle past the margin: a, level with the virtual time, is forgotten at the next
    // decision, while b (a grant ahead of it) is kept.
    tokio::time::sleep(ACTIVE_MARGIN + Duration::from_millis(50)).await;
    let c = Candidate {
        backlogged: false,
        ..waiting("c", 1, 0.5)
    };
    s.ask(&[c]).await;
    let fields: Vec<String> = ::redis::cmd("HKEYS")
        .arg(&fair_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(!fields.iter().any(|f| f.ends_with(":a")), "{fields:?}");
    assert!(fields.contains(&"f1:b".to_string()), "{fields:?}");
}

// === three limiters on one Redis (three gateway instances) ===

fn custom_op(rate_per_second: f64, burst: u32) -> &'static Operation {
    let mut o = Catalog::builtin()
        .by_key("ordersV0.getOrderAddress")
        .unwrap()
        .clone();
    o.usage_plan = Some(UsagePlan {
        rate_per_second,
        burst,
    });
    Box::leak(Box::new(o))
}

async fn instances(plans_toml: &str) -> Vec<Limiter> {
    let settings = settings();
    let plans = config::from_toml(plans_toml, Catalog::builtin())
        .expect("valid plans")
        .limiter
        .plans;
    let mut out = Vec::new();
    for _ in 0..3 {
        let config = LimiterConfig {
            plans: plans.clone(),
            ..LimiterConfig::default()
        };
        out.push(Limiter::redis(config, settings.clone()).await.unwrap());
    }
    out
}

/// Closed-loop workers (instance, tool, priority, count), each request waiting up to 3 s, for
/// `run`; the grants each got, in order, with the instant of each.
async fn contend(
    limiters: &[Limiter],
    operation: &'static Operation,
    workers: &[(usize, &'static str, Priority, usize)],
    run: Duration,
) -> Vec<(&'static str, std::time::Instant)> {
    let workers: Vec<_> = (workers.iter())
        .map(|&(i, tool, priority, n)| (i, tool, priority, n, Duration::from_secs(3)))
        .collect();
    contend_waiting(limiters, operation, &workers, run).await
}

/// [`contend`] with each worker's own max wait (instance, tool, priority, count, max wait).
async fn contend_waiting(
    limiters: &[Limiter],
    operation: &'static Operation,
    workers: &[(usize, &'static str, Priority, usize, Duration)],
    run: Duration,
) -> Vec<(&'static str, std::time::Instant)> {
    let granted: Arc<Mutex<Vec<(&'static str, std::time::Instant)>>> = Arc::default();
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for &(i, tool, priority, n, max_wait) in workers {
        for _ in 0..n {
            let (limiter, granted) = (limiters[i].clone(), Arc::clone(&granted));
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < run {
                    let req = Acquire {
                        seller: "A1FAIR",
                        operation,
                        tool,
                        plan: Some("p"),
                        priority,
                        max_wait: Some(max_wait),
                    };
                    match limiter.acquire(req).await {
                        Ok(_) => granted
                            .lock()
                            .unwrap()
                            .push((tool, std::time::Instant::now())),
                        Err(e) => {
                            let pause = e.retry_after().expect("a 429");
                            tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
                        }
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut out = granted.lock().unwrap().clone();
    out.sort_by_key(|(_, at)| *at);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tools_get_equal_shares_across_instances_however_their_requests_are_spread() {
    let limiters = instances("[ratelimit.plans.p]\ndefault = { share = 0.5 }\n").await;
    let operation = custom_op(40.0, 5);
    // a only through the first instance, b through the other two.
    let normal = Priority::Normal;
    let grants = contend(
        &limiters,
        operation,
        &[
            (0, "a", normal, 4),
            (1, "b", normal, 4),
            (2, "b", normal, 4),
        ],
        Duration::from_secs(4),
    )
    .await;
    let a = grants.iter().filter(|(t, _)| *t == "a").count() as f64;
    let total = grants.len() as f64;
    assert!(
        (a / total - 0.5).abs() <= 0.05,
        "a got {a} of {total} grants"
    );
    // Work-conserving: together they use the plan (its burst and 4 s of its rate as the
    // limiter enforces it, less start-up).
    let rate = limiters[0]
        .bucket_status("A1FAIR", operation)
        .expect("used")
        .rate_per_second;
    assert!(
        total >= 0.9 * (5.0 + rate * 4.0),
        "only {total} grants at {rate}/s"
    );
    for l in &limiters {
        assert_eq!(l.metrics().redis_fallbacks, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_priority_tool_on_one_instance_goes_before_a_low_one_on_two_others() {
    let limiters =
        instances("[ratelimit.plans.p]\nmax_priority = \"high\"\ndefault = { share = 0.5 }\n")
            .await;
    let operation = custom_op(20.0, 2);
    let grants = contend(
        &limiters,
        operation,
        &[
            (0, "high", Priority::High, 3),
            (1, "low", Priority::Low, 3),
            (2, "low", Priority::Low, 3),
        ],
        Duration::from_secs(3),
    )
    .await;
    let highs: Vec<usize> = (grants.iter().enumerate())
        .filter(|(_, (t, _))| *t == "high")
        .map(|(i, _)| i)
        .collect();
    assert!(highs.len() >= 40, "high is served: {}", highs.len());
    // While high waits (between its first and its last grant), low gets at most what it had
    // reserved before high first asked: one slot per instance.
    let (first, last) = (highs[0], highs[highs.len() - 1]);
    let low_between = grants[first..=last]
        .iter()
        .filter(|(t, _)| *t == "low")
        .count();
    assert!(
        low_between <= 2,
        "low got {low_between} grants while high waited ({} high grants)",
        highs.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_that_may_wait_less_than_an_interval_still_gets_its_share_of_a_sellers_bucket() {
    // One instance, the seller's bucket alone (~10/s, burst 1). y's requests may wait 3 s, x's
    // 50 ms (half an interval): y, asking at each slot, always reserves the next one, and x's
    // requests find it too far. Both have half the bucket.
    let limiters = instances("[ratelimit.plans.p]\ndefault = { share = 0.5 }\n").await;
    let operation = custom_op(10.0, 1);
    let normal = Priority::Normal;
    let grants = contend_waiting(
        &limiters[..1],
        operation,
        &[
            (0, "x", normal, 4, Duration::from_millis(50)),
            (0, "y", normal, 4, Duration::from_secs(3)),
        ],
        Duration::from_secs(4),
    )
    .await;
    let x = grants.iter().filter(|(t, _)| *t == "x").count() as f64;
    let total = grants.len() as f64;
    assert!(
        (x / total - 0.5).abs() <= 0.1,
        "x got {x} of {total} grants"
    );
    assert!(total >= 20.0, "only {total} grants");
}

#[tokio::test]
async fn a_refused_tool_s_queued_waiters_that_cannot_wait_for_the_slot_are_refused_in_one_decision()
{
    let limiter = Limiter::redis(LimiterConfig::default(), settings())
        .await
        .unwrap();
    let redis = limiter.inner.redis.as_ref().unwrap();
    let operation = custom_op(2.0, 1);
    let ask = |tool, max_wait| Acquire {
        seller: "A1FAIR",
        operation,
        tool,
        plan: None,
        priority: Priority::Normal,
        max_wait: Some(max_wait),
    };
    // y takes the burst token, then reserves the next slot (~0.5 s away): the bucket is busy
    // until then, so x's requests queue.
    limiter
        .acquire(ask("y", Duration::from_secs(5)))
        .await
        .unwrap();
    let y = tokio::spawn({
        let limiter = limiter.clone();
        async move { limiter.acquire(ask("y", Duration::from_secs(5))).await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let before = redis.calls();
    // Ten requests of x that may wait 550 ms: when the dispatcher asks (at y's slot), the next
    // slot is an interval away, past all their deadlines.
    let xs: Vec<_> = (0..10)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(ask("x", Duration::from_millis(550))).await })
        })
        .collect();
    for x in xs {
        match x.await.unwrap() {
            Err(RateLimitError::Throttled { .. }) => {}
            other => panic!("{other:?}"),
        }
    }
    y.await.unwrap().unwrap();
    let calls = redis.calls() - before;
    assert!(calls <= 2, "{calls} decisions to refuse x's ten requests");
}
