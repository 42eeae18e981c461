//! Limiter tests on tokio's paused clock (local buckets), plus Redis tests against the real
//! server on 127.0.0.1:6379 (each under its own random key prefix).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use super::*;
use crate::catalog::{Catalog, Operation, UsagePlan};

/// `ordersV0.getOrderAddress`: 0.5/s, burst 30.
const ADDRESS: &str = "ordersV0.getOrderAddress";
const SELLER: &str = "A1SELLER";

fn op(key: &str) -> &'static Operation {
    Catalog::builtin().by_key(key).expect("catalogued")
}

/// An operation with a made-up usage plan (for short real-time Redis tests).
fn custom_op(rate_per_second: f64, burst: u32) -> &'static Operation {
    let mut o = op(ADDRESS).clone();
    o.usage_plan = Some(UsagePlan {
        rate_per_second,
        burst,
    });
    Box::leak(Box::new(o))
}

fn ask<'a>(operation: &'static Operation, tool: &'a str, plan: Option<&'a str>) -> Acquire<'a> {
    Acquire {
        seller: SELLER,
        operation,
        tool,
        plan,
        priority: Priority::Normal,
        max_wait: None,
    }
}

fn now_only<'a>(operation: &'static Operation, tool: &'a str) -> Acquire<'a> {
    Acquire {
        max_wait: Some(Duration::ZERO),
        ..ask(operation, tool, None)
    }
}

fn plans(toml: &str) -> Plans {
    config::from_toml(toml, Catalog::builtin())
        .expect("valid plans")
        .limiter
        .plans
}

fn limiter_with(plans_toml: &str, default_max_wait: Duration) -> Limiter {
    Limiter::local(LimiterConfig {
        default_max_wait,
        plans: plans(plans_toml),
        ..LimiterConfig::default()
    })
}

/// Takes every token of the bucket.
async fn empty_bucket(limiter: &Limiter, operation: &'static Operation) {
    while limiter
        .acquire(now_only(operation, "drainer"))
        .await
        .is_ok()
    {}
}

fn tokens(limiter: &Limiter, operation: &Operation) -> f64 {
    limiter
        .bucket_status(SELLER, operation)
        .expect("bucket exists")
        .tokens
}

// === buckets ===

#[tokio::test(start_paused = true)]
async fn a_full_bucket_admits_exactly_burst_then_one_token_per_interval() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    for i in 0..30 {
        let a = limiter.acquire(now_only(address, "t")).await;
        assert_eq!(a.map(|a| a.decision), Ok(Decision::Immediate), "token {i}");
    }
    assert_eq!(
        limiter.acquire(now_only(address, "t")).await,
        Err(RateLimitError::Throttled {
            retry_after: Duration::from_secs(2),
            rate_per_second: 0.5
        })
    );
    tokio::time::advance(Duration::from_millis(1999)).await;
    assert!(limiter.acquire(now_only(address, "t")).await.is_err());
    tokio::time::advance(Duration::from_millis(1)).await;
    assert!(limiter.acquire(now_only(address, "t")).await.is_ok());
    assert!(limiter.acquire(now_only(address, "t")).await.is_err());
    tokio::time::advance(Duration::from_secs(20)).await;
    for _ in 0..10 {
        assert!(limiter.acquire(now_only(address, "t")).await.is_ok());
    }
    assert!(limiter.acquire(now_only(address, "t")).await.is_err());
}

#[tokio::test(start_paused = true)]
async fn five_hundred_concurrent_acquirers_never_exceed_burst_plus_rate_times_elapsed() {
    let limiter = Limiter::local(LimiterConfig {
        max_queue: 1000,
        ..LimiterConfig::default()
    });
    let address = op(ADDRESS);
    let start = Instant::now();
    let admitted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..500 {
        let limiter = limiter.clone();
        let admitted = Arc::clone(&admitted);
        tasks.push(tokio::spawn(async move {
            let tool = format!("tool-{}", i % 7);
            loop {
                match limiter.acquire(ask(address, &tool, None)).await {
                    Ok(_) => admitted.lock().unwrap().push(Instant::now()),
                    Err(e) => {
                        let pause = e
                            .retry_after()
                            .expect("a 429")
                            .max(Duration::from_millis(1));
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }));
    }
    // Advance in steps, checking the bound at every step and every admission.
    for _ in 0..400 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let times = admitted.lock().unwrap().clone();
        for (n, t) in times.iter().enumerate() {
            let elapsed = t.duration_since(start).as_secs_f64();
            assert!(
                (n + 1) as f64 <= 30.0 + 0.5 * elapsed + 1e-9,
                "{} admitted after {elapsed} s",
                n + 1
            );
        }
    }
    for t in tasks {
        t.abort();
    }
    // And the limiter is not merely strict: it hands out (almost) everything the plan allows.
    let total = admitted.lock().unwrap().len();
    assert!(total >= 30 + 100 - 1, "only {total} admitted in 200 s");
}

#[tokio::test(start_paused = true)]
async fn operations_without_a_usage_plan_pass_at_once() {
    let limiter = Limiter::local(LimiterConfig::default());
    let free = Catalog::builtin()
        .operations()
        .iter()
        .find(|o| o.usage_plan.is_none())
        .expect("some operation has no plan");
    for _ in 0..1000 {
        assert_eq!(
            limiter
                .acquire(now_only(free, "t"))
                .await
                .map(|a| a.decision),
            Ok(Decision::Immediate)
        );
    }
    assert!(limiter.status(None, None).is_empty());
}

#[tokio::test(start_paused = true)]
async fn sandbox_mode_applies_five_per_second_burst_fifteen_to_every_operation() {
    let limiter = Limiter::local(LimiterConfig {
        sandbox: true,
        ..LimiterConfig::default()
    });
    let free = Catalog::builtin()
        .operations()
        .iter()
        .find(|o| o.usage_plan.is_none())
        .expect("some operation has no plan");
    for _ in 0..15 {
        assert!(limiter.acquire(now_only(free, "t")).await.is_ok());
    }
    assert_eq!(
        limiter.acquire(now_only(free, "t")).await,
        Err(RateLimitError::Throttled {
            retry_after: Duration::from_millis(200),
            rate_per_second: 5.0
        })
    );
}

#[tokio::test(start_paused = true)]
async fn the_safety_factor_scales_rate_and_burst() {
    let limiter = Limiter::local(LimiterConfig {
        safety_factor: 0.5,
        ..LimiterConfig::default()
    });
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let status = limiter.bucket_status(SELLER, address).unwrap();
    assert_eq!((status.rate_per_second, status.burst), (0.25, 15));
    assert_eq!(status.tools[0].admitted, 15);
}

// === deadlines ===

#[tokio::test(start_paused = true)]
async fn a_request_waits_for_its_slot_and_reports_the_wait() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let a = limiter.acquire(ask(address, "t", None)).await.unwrap();
    assert_eq!(
        a,
        Admission {
            waited: Duration::from_secs(2),
            decision: Decision::Waited
        }
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_whose_wait_exceeds_its_deadline_is_rejected_at_once() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let before = Instant::now();
    let result = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_millis(1500)),
            ..ask(address, "t", None)
        })
        .await;
    assert_eq!(Instant::now(), before, "rejected without sleeping");
    assert_eq!(
        result,
        Err(RateLimitError::Throttled {
            retry_after: Duration::from_secs(2),
            rate_per_second: 0.5
        })
    );
    // One from emptying the bucket, one here.
    assert_eq!(limiter.metrics().rejected_throttled, 2);
}

#[tokio::test(start_paused = true)]
async fn the_retry_after_counts_the_requests_already_waiting() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(ask(address, "t", None)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(
        limiter.bucket_status(SELLER, address).unwrap().queue_depth,
        3
    );
    // Slots at 2, 4 and 6 s are taken: the next is at 8 s.
    let result = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_secs(7)),
            ..ask(address, "t", None)
        })
        .await;
    assert_eq!(
        result.unwrap_err().retry_after(),
        Some(Duration::from_secs(8))
    );
    for w in waiting {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn the_callers_max_wait_lowers_the_plans_but_never_raises_it() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.patient]
        max_wait_ms = 10000
        [ratelimit.plans.hurried]
        max_wait_ms = 1000
        "#,
        Duration::from_secs(10),
    );
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    // The next slot is 2 s away.
    let lowered = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_secs(1)),
            ..ask(address, "a", Some("patient"))
        })
        .await;
    assert!(matches!(lowered, Err(RateLimitError::Throttled { .. })));
    let not_raised = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_secs(60)),
            ..ask(address, "b", Some("hurried"))
        })
        .await;
    assert!(matches!(not_raised, Err(RateLimitError::Throttled { .. })));
    let within = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_secs(3)),
            ..ask(address, "a", Some("patient"))
        })
        .await;
    assert_eq!(within.map(|a| a.waited), Ok(Duration::from_secs(2)));
}

#[tokio::test(start_paused = true)]
async fn a_later_request_never_pushes_a_queued_one_past_its_deadline() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.vip]
        max_priority = "high"
        "#,
        Duration::from_secs(10),
    );
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let low = {
        let limiter = limiter.clone();
        tokio::spawn(async move {
            limiter
                .acquire(Acquire {
                    priority: Priority::Low,
                    max_wait: Some(Duration::from_millis(2500)),
                    ..ask(address, "low", None)
                })
                .await
        })
    };
    tokio::task::yield_now().await;
    // High priority would go first, but that would make the low request miss its deadline.
    let high = limiter
        .acquire(Acquire {
            priority: Priority::High,
            ..ask(address, "vip", Some("vip"))
        })
        .await;
    assert_eq!(high.map(|a| a.waited), Ok(Duration::from_secs(4)));
    assert_eq!(
        low.await.unwrap().map(|a| a.waited),
        Ok(Duration::from_secs(2))
    );
}

// === queue order ===

/// Spawns one waiting request per label (1 ms apart, so they arrive in order) and returns the
/// labels in the order they were granted.
async fn grant_order(
    limiter: &Limiter,
    requests: Vec<(&'static str, Acquire<'static>)>,
) -> Vec<&'static str> {
    let order: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let mut tasks = Vec::new();
    for (label, req) in requests {
        let limiter = limiter.clone();
        let order = Arc::clone(&order);
        tasks.push(tokio::spawn(async move {
            limiter.acquire(req).await.expect("granted");
            order.lock().unwrap().push(label);
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for t in tasks {
        t.await.unwrap();
    }
    let order = order.lock().unwrap().clone();
    order
}

#[tokio::test(start_paused = true)]
async fn high_priority_is_served_before_normal_and_normal_before_low() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.vip]
        max_priority = "high"
        "#,
        Duration::from_secs(60),
    );
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let with = |priority, tool| Acquire {
        priority,
        ..ask(address, tool, Some("vip"))
    };
    let order = grant_order(
        &limiter,
        vec![
            ("low", with(Priority::Low, "a")),
            ("normal", with(Priority::Normal, "a")),
            ("high", with(Priority::High, "a")),
        ],
    )
    .await;
    assert_eq!(order, ["high", "normal", "low"]);
}

#[tokio::test(start_paused = true)]
async fn requests_in_one_lane_are_served_first_in_first_out() {
    let limiter = Limiter::local(LimiterConfig {
        default_max_wait: Duration::from_secs(60),
        ..LimiterConfig::default()
    });
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let labels = ["1", "2", "3", "4", "5"];
    let order = grant_order(
        &limiter,
        labels
            .iter()
            .map(|l| (*l, ask(address, "t", None)))
            .collect(),
    )
    .await;
    assert_eq!(order, labels);
}

#[tokio::test(start_paused = true)]
async fn a_plan_without_high_priority_cannot_jump_the_queue() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.plain]
        max_priority = "normal"
        "#,
        Duration::from_secs(60),
    );
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let order = grant_order(
        &limiter,
        vec![
            ("first", ask(address, "a", Some("plain"))),
            (
                "pushy",
                Acquire {
                    priority: Priority::High,
                    ..ask(address, "a", Some("plain"))
                },
            ),
        ],
    )
    .await;
    assert_eq!(order, ["first", "pushy"]);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_rejects_with_queue_full() {
    let limiter = Limiter::local(LimiterConfig {
        max_queue: 3,
        default_max_wait: Duration::from_secs(60),
        ..LimiterConfig::default()
    });
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(ask(address, "t", None)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    let full = limiter.acquire(ask(address, "t", None)).await;
    assert!(
        matches!(full, Err(RateLimitError::QueueFull { rate_per_second, .. }) if rate_per_second == 0.5),
        "{full:?}"
    );
    assert_eq!(limiter.metrics().rejected_queue_full, 1);
    for w in waiting {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_goes_away_leaves_the_queue() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let waiter = {
        let limiter = limiter.clone();
        tokio::spawn(async move { limiter.acquire(ask(address, "t", None)).await })
    };
    tokio::task::yield_now().await;
    assert_eq!(
        limiter.bucket_status(SELLER, address).unwrap().queue_depth,
        1
    );
    waiter.abort();
    let _ = waiter.await;
    assert_eq!(
        limiter.bucket_status(SELLER, address).unwrap().queue_depth,
        0
    );
    // Its slot goes to the next request.
    let next = limiter.acquire(ask(address, "t", None)).await;
    assert_eq!(next.map(|a| a.waited), Ok(Duration::from_secs(2)));
}

// === shares ===

/// Runs closed-loop workers per tool for `duration`; returns admissions after a wait, per tool.
async fn contend(
    limiter: &Limiter,
    operation: &'static Operation,
    workers: &[(&'static str, Option<&'static str>, usize)],
    duration: Duration,
) -> HashMap<&'static str, u64> {
    let counts: Arc<Mutex<HashMap<&'static str, u64>>> = Arc::default();
    let mut tasks = Vec::new();
    for &(tool, plan, n) in workers {
        for _ in 0..n {
            let limiter = limiter.clone();
            let counts = Arc::clone(&counts);
            tasks.push(tokio::spawn(async move {
                loop {
                    match limiter.acquire(ask(operation, tool, plan)).await {
                        Ok(a) => {
                            if a.decision == Decision::Waited {
                                *counts.lock().unwrap().entry(tool).or_default() += 1;
                            }
                        }
                        Err(e) => {
                            let pause = e.retry_after().unwrap_or(Duration::from_secs(1));
                            tokio::time::sleep(pause.max(Duration::from_millis(1))).await;
                        }
                    }
                }
            }));
        }
    }
    tokio::time::sleep(duration).await;
    for t in tasks {
        t.abort();
    }
    let counts = counts.lock().unwrap().clone();
    counts
}

fn fraction(counts: &HashMap<&str, u64>, tool: &str) -> f64 {
    let total: u64 = counts.values().sum();
    counts.get(tool).copied().unwrap_or(0) as f64 / total as f64
}

#[tokio::test(start_paused = true)]
async fn two_tools_with_equal_shares_get_half_each_however_many_requests_they_send() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.half]
        default = { share = 0.5 }
        "#,
        Duration::from_secs(600),
    );
    let counts = contend(
        &limiter,
        op(ADDRESS),
        &[("greedy", Some("half"), 20), ("modest", Some("half"), 3)],
        Duration::from_secs(1000),
    )
    .await;
    let greedy = fraction(&counts, "greedy");
    assert!(
        (greedy - 0.5).abs() <= 0.05,
        "greedy got {greedy}: {counts:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_thirty_seventy_split_is_respected_under_contention() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.small]
        apis.orders = { share = 0.3 }
        [ratelimit.plans.large]
        operations."ordersV0.getOrderAddress" = { share = 0.7 }
        "#,
        Duration::from_secs(600),
    );
    let counts = contend(
        &limiter,
        op(ADDRESS),
        &[("small", Some("small"), 10), ("large", Some("large"), 10)],
        Duration::from_secs(1000),
    )
    .await;
    let small = fraction(&counts, "small");
    assert!((small - 0.3).abs() <= 0.05, "small got {small}: {counts:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lone_tool_uses_the_whole_idle_budget_whatever_its_share() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.small]
        default = { share = 0.1 }
        "#,
        Duration::from_secs(600),
    );
    let address = op(ADDRESS);
    let counts = contend(
        &limiter,
        address,
        &[("alone", Some("small"), 5)],
        Duration::from_secs(400),
    )
    .await;
    let status = limiter.bucket_status(SELLER, address).unwrap();
    let admitted = status.tools[0].admitted as f64;
    let allowed = 30.0 + 0.5 * 400.0;
    assert!(
        admitted >= 0.95 * allowed,
        "{admitted} of {allowed} ({counts:?})"
    );
}

#[tokio::test(start_paused = true)]
async fn tools_without_a_plan_share_equally() {
    let limiter = Limiter::local(LimiterConfig {
        default_max_wait: Duration::from_secs(600),
        ..LimiterConfig::default()
    });
    let counts = contend(
        &limiter,
        op(ADDRESS),
        &[("a", None, 12), ("b", None, 2), ("c", None, 5)],
        Duration::from_secs(900),
    )
    .await;
    for tool in ["a", "b", "c"] {
        let f = fraction(&counts, tool);
        assert!((f - 1.0 / 3.0).abs() <= 0.05, "{tool} got {f}: {counts:?}");
    }
}

// === absolute plans ===

#[tokio::test(start_paused = true)]
async fn an_absolute_plan_limits_the_tool_even_when_amazons_bucket_is_full() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.printer]
        operations."ordersV0.getOrderAddress" = { rate_per_second = 0.2, burst = 2 }
        "#,
        Duration::from_secs(10),
    );
    let address = op(ADDRESS);
    for _ in 0..2 {
        let a = limiter
            .acquire(ask(address, "printer", Some("printer")))
            .await;
        assert_eq!(a.map(|a| a.decision), Ok(Decision::Immediate));
    }
    let refused = limiter
        .acquire(Acquire {
            max_wait: Some(Duration::from_secs(1)),
            ..ask(address, "printer", Some("printer"))
        })
        .await;
    assert_eq!(
        refused,
        Err(RateLimitError::Throttled {
            retry_after: Duration::from_secs(5),
            rate_per_second: 0.2
        })
    );
    let waited = limiter
        .acquire(ask(address, "printer", Some("printer")))
        .await;
    assert_eq!(waited.map(|a| a.waited), Ok(Duration::from_secs(5)));
    // Another tool still finds Amazon's bucket nearly full: 30 (refilled to the burst) - 2.
    assert!(limiter.acquire(now_only(address, "other")).await.is_ok());
    assert!(
        (tokens(&limiter, address) - 28.0).abs() < 1e-6,
        "{}",
        tokens(&limiter, address)
    );
}

#[tokio::test(start_paused = true)]
async fn an_absolute_plan_limits_the_tool_on_an_operation_without_amazons_plan_answered_or_not() {
    let free = Catalog::builtin()
        .operations()
        .iter()
        .find(|o| o.usage_plan.is_none())
        .expect("some operation has no plan");
    let limiter = limiter_with(
        &format!(
            "[ratelimit.plans.printer]\noperations.\"{}\" = {{ rate_per_second = 0.2, burst = 2 }}\n",
            free.key
        ),
        Duration::from_secs(10),
    );
    // Through Amazon (acquire) and answered without it (acquire_plan): one bucket of the tool.
    let first = limiter.acquire(ask(free, "printer", Some("printer"))).await;
    assert_eq!(first.map(|a| a.decision), Ok(Decision::Immediate));
    let second = (limiter.acquire_plan(ask(free, "printer", Some("printer")))).await;
    assert_eq!(second.map(|a| a.decision), Ok(Decision::Immediate));
    let hurried = Acquire {
        max_wait: Some(Duration::from_secs(1)),
        ..ask(free, "printer", Some("printer"))
    };
    let refused = Err(RateLimitError::Throttled {
        retry_after: Duration::from_secs(5),
        rate_per_second: 0.2,
    });
    assert_eq!(limiter.acquire_plan(hurried).await, refused);
    assert_eq!(limiter.acquire(hurried).await, refused);
    let waited = limiter
        .acquire_plan(ask(free, "printer", Some("printer")))
        .await;
    assert_eq!(waited.map(|a| a.waited), Ok(Duration::from_secs(5)));
    // Amazon's side has no bucket: another tool passes at once, and none is listed.
    assert!(limiter.acquire(now_only(free, "other")).await.is_ok());
    assert!(limiter.status(None, None).is_empty());
    assert_eq!(limiter.metrics().rejected_throttled, 2);
}

#[tokio::test(start_paused = true)]
async fn the_tools_own_buckets_on_operations_without_amazons_plan_are_dropped_once_full_again() {
    let free = Catalog::builtin()
        .operations()
        .iter()
        .find(|o| o.usage_plan.is_none())
        .expect("some operation has no plan");
    let limiter = limiter_with(
        &format!(
            "[ratelimit.plans.printer]\noperations.\"{}\" = {{ rate_per_second = 1, burst = 2 }}\n",
            free.key
        ),
        Duration::from_secs(10),
    );
    let sellers: Vec<String> = (0..4000).map(|i| format!("A{i}")).collect();
    let run = |sellers: &'static [String]| {
        let limiter = limiter.clone();
        async move {
            for seller in sellers {
                let req = Acquire {
                    seller,
                    ..ask(free, "printer", Some("printer"))
                };
                assert!(limiter.acquire(req).await.is_ok());
            }
        }
    };
    let sellers: &'static [String] = sellers.leak();
    // 2,000 sellers, each bucket a token short for a second: all kept.
    run(&sellers[..2000]).await;
    let size = || limiter.inner.unplanned.lock().unwrap().map.len();
    assert_eq!(size(), 2000);
    // Full again, they go as 2,000 others come.
    tokio::time::advance(Duration::from_secs(2)).await;
    run(&sellers[2000..]).await;
    assert!(size() <= 2000, "{} buckets kept", size());
    // A dropped bucket comes back full: the first seller has its burst again.
    for _ in 0..2 {
        let req = Acquire {
            seller: &sellers[0],
            ..ask(free, "printer", Some("printer"))
        };
        let admitted = limiter.acquire(req).await;
        assert_eq!(admitted.map(|a| a.decision), Ok(Decision::Immediate));
    }
}

// === observations ===

#[tokio::test(start_paused = true)]
async fn observe_rate_raises_and_lowers_the_refill() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    limiter.observe_rate(SELLER, address, 2.0);
    let faster = limiter.acquire(ask(address, "t", None)).await;
    assert_eq!(faster.map(|a| a.waited), Ok(Duration::from_millis(500)));
    limiter.observe_rate(SELLER, address, 0.1);
    let slower = limiter.acquire(ask(address, "t", None)).await;
    assert_eq!(slower.map(|a| a.waited), Ok(Duration::from_secs(10)));
    assert_eq!(
        limiter
            .bucket_status(SELLER, address)
            .unwrap()
            .rate_per_second,
        0.1
    );
}

#[tokio::test(start_paused = true)]
async fn observe_throttled_empties_the_bucket() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    assert!(limiter.acquire(now_only(address, "t")).await.is_ok());
    assert!((tokens(&limiter, address) - 29.0).abs() < 1e-9);
    limiter.observe_throttled(SELLER, address);
    assert_eq!(tokens(&limiter, address), 0.0);
    assert!(limiter.acquire(now_only(address, "t")).await.is_err());
    assert_eq!(limiter.metrics().upstream_throttled, 1);
}

#[tokio::test(start_paused = true)]
async fn waiters_that_can_no_longer_make_their_deadline_after_a_429_are_refused_at_once() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    let before = Instant::now();
    // Slots at 2, 4, 6 and 8 s, all within the 10 s default.
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(ask(address, "t", None)).await })
        })
        .collect();
    tokio::task::yield_now().await;
    // Amazon says 429 anyway: the bucket restarts empty and the rate drops to 0.25/s, so the
    // slots are now 4, 8, 12 and 16 s: the last two cannot be served by 10 s.
    limiter.observe_rate(SELLER, address, 0.25);
    limiter.observe_throttled(SELLER, address);
    let mut results = Vec::new();
    for w in waiting {
        results.push(w.await.unwrap());
    }
    assert_eq!(
        results[0].clone().map(|a| a.waited),
        Ok(Duration::from_secs(4))
    );
    assert_eq!(
        results[1].clone().map(|a| a.waited),
        Ok(Duration::from_secs(8))
    );
    assert!(matches!(results[2], Err(RateLimitError::Throttled { .. })));
    assert!(matches!(results[3], Err(RateLimitError::Throttled { .. })));
    assert_eq!(
        Instant::now().duration_since(before),
        Duration::from_secs(8)
    );
}

// === status, metrics, reload ===

#[tokio::test(start_paused = true)]
async fn status_reports_tokens_queue_and_per_tool_use() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    let other = op("ordersV0.getOrder");
    for _ in 0..3 {
        limiter.acquire(now_only(address, "printer")).await.unwrap();
    }
    limiter
        .acquire(now_only(address, "repricer"))
        .await
        .unwrap();
    limiter.acquire(now_only(other, "printer")).await.unwrap();
    let status = limiter.status(Some(SELLER), Some(ADDRESS));
    assert_eq!(
        status,
        vec![BucketStatus {
            seller: SELLER.into(),
            operation: ADDRESS.into(),
            rate_per_second: 0.5,
            burst: 30,
            tokens: 26.0,
            queue_depth: 0,
            tools: vec![
                ToolStatus {
                    tool: "printer".into(),
                    admitted: 3,
                    waiting: 0
                },
                ToolStatus {
                    tool: "repricer".into(),
                    admitted: 1,
                    waiting: 0
                },
            ],
        }]
    );
    assert_eq!(limiter.status(None, None).len(), 2);
    assert_eq!(limiter.status(Some("nobody"), None).len(), 0);
    let json = serde_json::to_value(&status[0]).unwrap();
    assert_eq!(json["tools"][0]["tool"], "printer");
}

#[tokio::test(start_paused = true)]
async fn metrics_count_each_outcome_and_the_wait_time() {
    let limiter = Limiter::local(LimiterConfig::default());
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await; // 30 immediate, 1 throttled
    limiter.acquire(ask(address, "t", None)).await.unwrap(); // waits 2 s
    let m = limiter.metrics();
    assert_eq!(
        (
            m.admitted_immediate,
            m.admitted_waited,
            m.rejected_throttled
        ),
        (30, 1, 1)
    );
    assert_eq!((m.wait_count, m.wait_seconds_sum), (31, 2.0));
}

#[tokio::test(start_paused = true)]
async fn reloaded_plans_apply_to_the_next_request() {
    let limiter = limiter_with(
        r#"
        [ratelimit.plans.p]
        max_wait_ms = 10000
        "#,
        Duration::from_secs(10),
    );
    let address = op(ADDRESS);
    empty_bucket(&limiter, address).await;
    limiter.reload_plans(plans(
        r#"
        [ratelimit.plans.p]
        max_wait_ms = 500
        "#,
    ));
    let r = limiter.acquire(ask(address, "t", Some("p"))).await;
    assert!(matches!(r, Err(RateLimitError::Throttled { .. })));
}

#[test]
fn priorities_parse_from_lowercase_names_only() {
    assert_eq!("high".parse(), Ok(Priority::High));
    assert_eq!("normal".parse(), Ok(Priority::Normal));
    assert_eq!("low".parse(), Ok(Priority::Low));
    assert!("HIGH".parse::<Priority>().is_err());
    assert_eq!(Priority::High.capped(Priority::Normal), Priority::Normal);
    assert_eq!(Priority::Low.capped(Priority::High), Priority::Low);
}

// === config ===

const EXAMPLE: &str = r#"
[ratelimit]
safety_factor = 1.0
fail_mode = "local"
expected_instances = 1
default_max_wait_ms = 10000
max_queue = 1000
[ratelimit.redis]
url = "redis://127.0.0.1:6379"
key_prefix = "spgate:"
[ratelimit.plans.label-printer]
max_wait_ms = 2000
max_priority = "normal"
default = { share = 0.3 }
apis.orders = { share = 0.5 }
operations."ordersV0.getOrderAddress" = { rate_per_second = 0.2, burst = 5 }
"#;

#[test]
fn the_documented_example_resolves_to_the_plan_it_describes() {
    let settings = config::from_toml(EXAMPLE, Catalog::builtin()).expect("valid");
    let plan = settings.limiter.plans.get("label-printer").expect("plan");
    assert_eq!(plan.max_wait, Some(Duration::from_secs(2)));
    assert_eq!(plan.max_priority, Priority::Normal);
    assert_eq!(
        plan.rule_for(op("ordersV0.getOrder")),
        Some(Rule::Share(0.5))
    );
    assert_eq!(
        plan.rule_for(op(ADDRESS)),
        Some(Rule::Absolute {
            rate_per_second: 0.2,
            burst: 5
        })
    );
    let reports = op("reports_2021-06-30.getReport");
    assert_eq!(plan.rule_for(reports), Some(Rule::Share(0.3)));
    assert_eq!(settings.redis.expect("redis").key_prefix, "spgate:");
    assert_eq!(settings.limiter.fail_mode, FailMode::Local);
}

#[test]
fn an_absent_section_resolves_to_the_defaults() {
    let settings = config::from_toml("", Catalog::builtin()).expect("valid");
    assert_eq!(settings.limiter.default_max_wait, Duration::from_secs(10));
    assert_eq!(settings.limiter.max_queue, 1000);
    assert!(settings.redis.is_none());
}

/// Resolves `[ratelimit]` TOML and compares the issues as `path: message-fragment` pairs.
fn check(toml: &str, expect: &[(&str, &str)]) {
    let issues = match config::from_toml(toml, Catalog::builtin()) {
        Ok(_) => Vec::new(),
        Err(crate::config::ConfigError(issues)) => issues,
    };
    assert_eq!(issues.len(), expect.len(), "{issues:#?}");
    for (path, fragment) in expect {
        assert!(
            issues
                .iter()
                .any(|i| i.path == *path && i.message.contains(fragment)),
            "no issue {path}: {fragment} in {issues:#?}"
        );
    }
}

#[test]
fn every_invalid_plan_input_is_reported_with_its_key_path() {
    check(
        r#"
        [ratelimit.plans.p]
        max_priority = "urgent"
        default = { share = 0.0 }
        apis.orders = { share = 1.5 }
        apis.nonsense = { share = 0.5 }
        operations."ordersV0.getOrderAddress" = { share = 0.5, rate_per_second = 1.0, burst = 2 }
        operations."ordersV0.noSuchThing" = { rate_per_second = 1.0 }
        "#,
        &[
            ("ratelimit.plans.p.max_priority", "unknown priority"),
            ("ratelimit.plans.p.default.share", "greater than 0"),
            ("ratelimit.plans.p.apis.orders.share", "at most 1"),
            ("ratelimit.plans.p.apis.nonsense", "unknown API"),
            (
                "ratelimit.plans.p.operations.\"ordersV0.getOrderAddress\"",
                "not both",
            ),
            (
                "ratelimit.plans.p.operations.\"ordersV0.noSuchThing\"",
                "unknown operation",
            ),
            (
                "ratelimit.plans.p.operations.\"ordersV0.noSuchThing\".burst",
                "required with rate_per_second",
            ),
        ],
    );
}

#[test]
fn unknown_keys_and_bad_limiter_settings_are_reported_with_their_paths() {
    check(
        r#"
        [ratelimit]
        safety_factor = 1.5
        fail_mode = "open"
        expected_instances = 0
        max_queue = 0
        colour = "blue"
        [ratelimit.redis]
        key_prefix = "{x}"
        [ratelimit.plans.p]
        default = { share = 0.5, weight = 2 }
        "#,
        &[
            ("ratelimit.colour", "unknown key"),
            ("ratelimit.plans.p.default.weight", "unknown key"),
            ("ratelimit.safety_factor", "at most 1"),
            ("ratelimit.fail_mode", "unknown mode"),
            ("ratelimit.expected_instances", "at least 1"),
            ("ratelimit.max_queue", "at least 1"),
            ("ratelimit.redis.url", "required"),
            ("ratelimit.redis.key_prefix", "must not contain"),
        ],
    );
}

#[test]
fn a_value_of_the_wrong_type_is_reported_with_its_path() {
    check(
        r#"
        [ratelimit.plans.p]
        default = { share = "half" }
        "#,
        &[("ratelimit.plans.p.default.share", "invalid type")],
    );
}

// === Redis (real server on 127.0.0.1:6379, real time) ===

const REDIS_URL: &str = "redis://127.0.0.1:6379";

/// Settings under a fresh random prefix; fails the test when Redis is not running.
async fn redis_settings() -> RedisSettings {
    let client = ::redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("Redis must run on 127.0.0.1:6379 for these tests");
    let pong: String = ::redis::cmd("PING").query_async(&mut conn).await.unwrap();
    assert_eq!(pong, "PONG");
    let prefix = crate::crypto::hex(&crate::crypto::random_bytes::<8>().unwrap());
    RedisSettings {
        key_prefix: format!("spgate-test-{prefix}:"),
        ..RedisSettings::new(REDIS_URL)
    }
}

async fn redis_key_exists(key: &str) -> bool {
    let client = ::redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    ::redis::cmd("EXISTS")
        .arg(key)
        .query_async::<i64>(&mut conn)
        .await
        .unwrap()
        == 1
}

#[tokio::test]
async fn the_redis_script_admits_exactly_burst_at_once_then_the_rate() {
    let settings = redis_settings().await;
    let prefix = settings.key_prefix.clone();
    let limiter = Limiter::redis(LimiterConfig::default(), settings)
        .await
        .unwrap();
    let fast = custom_op(10.0, 5);
    for i in 0..5 {
        let a = limiter.acquire(now_only(fast, "t")).await;
        assert_eq!(a.map(|a| a.decision), Ok(Decision::Immediate), "token {i}");
    }
    let refused = limiter.acquire(now_only(fast, "t")).await;
    let retry = refused.unwrap_err().retry_after().unwrap();
    assert!(
        retry > Duration::ZERO && retry <= Duration::from_millis(100),
        "{retry:?}"
    );
    // The next one waits for its reserved slot, one interval (100 ms) after the burst.
    let started = std::time::Instant::now();
    let waited = limiter.acquire(ask(fast, "t", None)).await.unwrap();
    assert_eq!(waited.decision, Decision::Waited);
    assert!(waited.waited <= Duration::from_millis(150), "{waited:?}");
    assert!(started.elapsed() >= waited.waited);
    let key = format!("{prefix}rl:{{{SELLER}}}:{}", fast.key);
    assert!(redis_key_exists(&key).await, "bucket lives at {key}");
    assert_eq!(limiter.metrics().redis_fallbacks, 0);
}

#[tokio::test]
async fn three_instances_sharing_redis_never_exceed_burst_plus_rate_times_elapsed() {
    let settings = redis_settings().await;
    let operation = custom_op(20.0, 5);
    let mut limiters = Vec::new();
    for _ in 0..3 {
        limiters.push(
            Limiter::redis(LimiterConfig::default(), settings.clone())
                .await
                .unwrap(),
        );
    }
    let start = std::time::Instant::now();
    let admitted: Arc<Mutex<Vec<std::time::Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for (i, limiter) in limiters.iter().enumerate() {
        for w in 0..4 {
            let limiter = limiter.clone();
            let admitted = Arc::clone(&admitted);
            let tool = format!("tool-{i}-{w}");
            tasks.push(tokio::spawn(async move {
                while start.elapsed() < Duration::from_millis(1000) {
                    let req = Acquire {
                        max_wait: Some(Duration::from_millis(200)),
                        ..ask(operation, &tool, None)
                    };
                    match limiter.acquire(req).await {
                        Ok(_) => admitted.lock().unwrap().push(std::time::Instant::now()),
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
    let mut times = admitted.lock().unwrap().clone();
    times.sort();
    for (n, t) in times.iter().enumerate() {
        let elapsed = t.duration_since(start).as_secs_f64();
        assert!(
            (n + 1) as f64 <= 5.0 + 20.0 * elapsed,
            "{} admitted after {elapsed} s",
            n + 1
        );
    }
    // Not merely strict: together they use most of the plan (5 + 20/s for about a second).
    assert!(times.len() >= 20, "only {} admitted", times.len());
    for l in &limiters {
        assert_eq!(l.metrics().redis_fallbacks, 0);
    }
}

#[tokio::test]
async fn with_redis_unreachable_and_fail_mode_local_each_instance_continues_at_its_share() {
    let limiter = Limiter::redis(
        LimiterConfig {
            expected_instances: 2,
            ..LimiterConfig::default()
        },
        RedisSettings::new("redis://127.0.0.1:1/"),
    )
    .await
    .unwrap();
    let address = op(ADDRESS);
    // Plan 0.5/s burst 30, two instances: this one takes 0.25/s burst 15, but starts the outage
    // with its bucket empty (what the other instance spent is unknown): no burst, one token
    // every 4 s from the moment the outage began.
    match limiter.acquire(now_only(address, "t")).await {
        Err(RateLimitError::Throttled {
            retry_after,
            rate_per_second,
        }) => {
            assert_eq!(rate_per_second, 0.25);
            assert!(
                retry_after > Duration::from_millis(3500) && retry_after <= Duration::from_secs(4),
                "{retry_after:?}"
            );
        }
        other => panic!("expected a 429, got {other:?}"),
    }
    // Waiting for it, the caller gets that token at its slot, not earlier.
    let started = std::time::Instant::now();
    let wait = Acquire {
        max_wait: Some(Duration::from_secs(5)),
        ..now_only(address, "t")
    };
    limiter.acquire(wait).await.unwrap();
    let waited = started.elapsed();
    assert!(
        waited > Duration::from_millis(3400) && waited < Duration::from_millis(4600),
        "{waited:?}"
    );
    let m = limiter.metrics();
    assert!(m.redis_fallbacks >= 2, "every decision was local: {m:?}");
    assert!(m.redis_errors >= 1);
}

#[tokio::test]
async fn with_redis_unreachable_and_fail_mode_closed_requests_are_unavailable() {
    let limiter = Limiter::redis(
        LimiterConfig {
            fail_mode: FailMode::Closed,
            ..LimiterConfig::default()
        },
        RedisSettings::new("redis://127.0.0.1:1/"),
    )
    .await
    .unwrap();
    let result = limiter.acquire(ask(op(ADDRESS), "t", None)).await;
    assert!(
        matches!(result, Err(RateLimitError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(limiter.metrics().rejected_unavailable, 1);
}

#[tokio::test]
async fn after_a_redis_failure_decisions_return_to_redis_once_the_back_off_has_passed() {
    let settings = RedisSettings {
        retry_backoff: Duration::from_millis(50),
        ..redis_settings().await
    };
    let prefix = settings.key_prefix.clone();
    let limiter = Limiter::redis(LimiterConfig::default(), settings)
        .await
        .unwrap();
    let address = op(ADDRESS);
    let key = format!("{prefix}rl:{{{SELLER}}}:{ADDRESS}");
    limiter
        .inner
        .redis
        .as_ref()
        .unwrap()
        .failed("simulated outage");
    // Decided locally: the fallback bucket starts the outage empty.
    let refused = limiter.acquire(now_only(address, "t")).await;
    assert!(
        matches!(refused, Err(RateLimitError::Throttled { .. })),
        "{refused:?}"
    );
    assert_eq!(limiter.metrics().redis_fallbacks, 1);
    assert!(
        !redis_key_exists(&key).await,
        "decided locally during the back-off"
    );
    tokio::time::sleep(Duration::from_millis(60)).await;
    limiter.acquire(now_only(address, "t")).await.unwrap();
    assert!(
        redis_key_exists(&key).await,
        "decided in Redis after the back-off"
    );
}

#[tokio::test]
async fn observe_throttled_empties_the_shared_bucket_in_redis() {
    let settings = redis_settings().await;
    let a = Limiter::redis(LimiterConfig::default(), settings.clone())
        .await
        .unwrap();
    let b = Limiter::redis(LimiterConfig::default(), settings)
        .await
        .unwrap();
    let operation = custom_op(1.0, 10);
    assert!(a.acquire(now_only(operation, "t")).await.is_ok());
    assert!(b.acquire(now_only(operation, "t")).await.is_ok());
    a.observe_throttled(SELLER, operation);
    // The drain runs in the background: give it a moment, then B finds the bucket empty too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let r = b.acquire(now_only(operation, "t")).await;
    assert!(matches!(r, Err(RateLimitError::Throttled { .. })), "{r:?}");
}

#[tokio::test]
async fn a_request_dropped_during_its_redis_call_does_not_stall_the_bucket() {
    let settings = redis_settings().await;
    let limiter = Limiter::redis(LimiterConfig::default(), settings)
        .await
        .unwrap();
    let operation = custom_op(10.0, 5);
    for _ in 0..3 {
        let pending = {
            let limiter = limiter.clone();
            tokio::spawn(async move { limiter.acquire(ask(operation, "gone", None)).await })
        };
        tokio::task::yield_now().await;
        pending.abort();
        let _ = pending.await;
    }
    let next = tokio::time::timeout(
        Duration::from_secs(1),
        limiter.acquire(ask(operation, "t", None)),
    )
    .await;
    assert!(matches!(next, Ok(Ok(_))), "{next:?}");
}

// === application-wide buckets ===

/// An operation with a per-seller plan and an application-wide one (across all sellers).
fn app_op(pair: (f64, u32), app: (f64, u32)) -> &'static Operation {
    let mut o = custom_op(pair.0, pair.1).clone();
    o.app_plan = Some(UsagePlan {
        rate_per_second: app.0,
        burst: app.1,
    });
    Box::leak(Box::new(o))
}

fn for_seller<'a>(operation: &'static Operation, seller: &'a str, wait: Duration) -> Acquire<'a> {
    Acquire {
        seller,
        max_wait: Some(wait),
        ..ask(operation, "t", None)
    }
}

/// Every seller asks at its own plan's rate, retrying after each refusal; returns the admission
/// times (every seller's bucket alone would allow far more than the application bucket).
async fn many_sellers(
    limiters: &[Limiter],
    operation: &'static Operation,
    sellers: usize,
    for_ms: u64,
) -> Vec<Instant> {
    let admitted: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..sellers {
        let limiter = limiters[s % limiters.len()].clone();
        let admitted = Arc::clone(&admitted);
        tasks.push(tokio::spawn(async move {
            let seller = format!("A{s:05}");
            while start.elapsed() < Duration::from_millis(for_ms) {
                match limiter
                    .acquire(for_seller(operation, &seller, Duration::from_millis(300)))
                    .await
                {
                    Ok(_) => admitted.lock().unwrap().push(Instant::now()),
                    Err(e) => {
                        let pause = e.retry_after().expect("a 429");
                        tokio::time::sleep(pause.max(Duration::from_millis(5))).await;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut times = admitted.lock().unwrap().clone();
    times.sort();
    times
}

fn assert_app_bound(times: &[Instant], start: Instant, rate: f64, burst: f64) {
    for (n, t) in times.iter().enumerate() {
        let elapsed = t.duration_since(start).as_secs_f64();
        assert!(
            (n + 1) as f64 <= burst + rate * elapsed + 1e-9,
            "{} admitted after {elapsed} s (application plan {rate}/s, burst {burst})",
            n + 1
        );
    }
}

#[tokio::test(start_paused = true)]
async fn sellers_together_never_exceed_the_application_wide_limit() {
    let limiter = Limiter::local(LimiterConfig::default());
    // Each seller alone could send 2/s; 200 sellers together may send 50/s.
    let operation = app_op((2.0, 2), (50.0, 5));
    let start = Instant::now();
    let times = many_sellers(std::slice::from_ref(&limiter), operation, 200, 4000).await;
    assert_app_bound(&times, start, 50.0, 5.0);
    assert!(
        times.len() >= 5 + 50 * 4 - 10,
        "only {} admitted in 4 s",
        times.len()
    );
    assert!(limiter.metrics().app_limited > 0);
    let status = limiter.app_status(Some(operation.key));
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].plan_rate_per_second, 50.0);
    assert_eq!(status[0].kind, None);
}

#[tokio::test(start_paused = true)]
async fn a_request_held_by_the_application_bucket_still_keeps_its_sellers_spacing() {
    let limiter = Limiter::local(LimiterConfig::default());
    // The seller's bucket: 10/s burst 1; the application's: 1/s burst 1.
    let operation = app_op((10.0, 1), (1.0, 1));
    let seller_times: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let mut tasks = Vec::new();
    for i in 0..6 {
        let limiter = limiter.clone();
        let seller_times = Arc::clone(&seller_times);
        tasks.push(tokio::spawn(async move {
            let seller = if i % 2 == 0 { "A1" } else { "B2" };
            let got = limiter
                .acquire(for_seller(operation, seller, Duration::from_secs(10)))
                .await;
            assert!(got.is_ok(), "{got:?}");
            seller_times.lock().unwrap().push(Instant::now());
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut times = seller_times.lock().unwrap().clone();
    times.sort();
    // Whatever the seller: one a second, as the application bucket says.
    for pair in times.windows(2) {
        assert!(pair[1] - pair[0] >= Duration::from_millis(999), "{times:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn a_kind_of_call_takes_its_sub_limit_as_well_as_the_operations_limit() {
    let limiter = Limiter::local(LimiterConfig::default());
    let patch = op("listingsItems_2021-08-01.patchListingsItem");
    // Validation previews: 20/s, burst 1, across sellers; the operation: 500/s, burst 5.
    let mut admitted = 0;
    for s in 0..10 {
        let seller = format!("S{s}");
        let got = limiter
            .acquire_kind(
                for_seller(patch, &seller, Duration::ZERO),
                Some(CallKind::ValidationPreview),
            )
            .await;
        admitted += usize::from(got.is_ok());
    }
    assert_eq!(admitted, 1, "the preview sub-limit has a burst of 1");
    // Plain patches of other sellers still pass: the operation's bucket has tokens left.
    let plain = limiter
        .acquire(for_seller(patch, "OTHER", Duration::ZERO))
        .await;
    assert!(plain.is_ok(), "{plain:?}");
    let kinds: Vec<Option<CallKind>> = limiter
        .app_status(Some(patch.key))
        .into_iter()
        .map(|s| s.kind)
        .collect();
    assert_eq!(kinds, vec![None, Some(CallKind::ValidationPreview)]);
}

#[tokio::test(start_paused = true)]
async fn the_operator_overrides_the_published_application_limit() {
    let settings = config::from_toml(
        r#"
[ratelimit.application."catalogItems_2022-04-01.getCatalogItem"]
rate_per_second = 1
burst = 3
"#,
        Catalog::builtin(),
    )
    .unwrap();
    let limiter = Limiter::local(settings.limiter);
    let get = op("catalogItems_2022-04-01.getCatalogItem");
    let mut admitted = 0;
    for s in 0..10 {
        let seller = format!("S{s}");
        let got = limiter
            .acquire(for_seller(get, &seller, Duration::ZERO))
            .await;
        admitted += usize::from(got.is_ok());
    }
    assert_eq!(admitted, 3);
    assert_eq!(limiter.app_status(None)[0].plan_rate_per_second, 1.0);
}

#[tokio::test(start_paused = true)]
async fn sandbox_mode_has_no_application_buckets() {
    let limiter = Limiter::local(LimiterConfig {
        sandbox: true,
        ..LimiterConfig::default()
    });
    let get = op("catalogItems_2022-04-01.getCatalogItem");
    for s in 0..20 {
        let seller = format!("S{s}");
        assert!(limiter
            .acquire(for_seller(get, &seller, Duration::ZERO))
            .await
            .is_ok());
    }
    assert!(limiter.app_status(None).is_empty());
}

#[test]
fn application_overrides_are_checked_with_their_key_paths() {
    check(
        r#"
[ratelimit.application."nope.getNothing"]
rate_per_second = 1
[ratelimit.application."catalogItems_2022-04-01.getCatalogItem"]
rate_per_second = 0
[ratelimit.application."listingsItems_2021-08-01.patchListingsItem"]
kinds.bulk = { rate_per_second = 1 }
kinds.variations = { burst = 2 }
"#,
        &[
            (
                "ratelimit.application.\"nope.getNothing\"",
                "unknown operation",
            ),
            (
                "ratelimit.application.\"catalogItems_2022-04-01.getCatalogItem\".rate_per_second",
                "greater than 0",
            ),
            (
                "ratelimit.application.\"listingsItems_2021-08-01.patchListingsItem\".kinds.bulk",
                "unknown kind",
            ),
            (
                "ratelimit.application.\"listingsItems_2021-08-01.patchListingsItem\".kinds.variations.rate_per_second",
                "required",
            ),
        ],
    );
}

#[tokio::test]
async fn instances_sharing_redis_keep_the_application_limit_together() {
    let settings = redis_settings().await;
    let prefix = settings.key_prefix.clone();
    let operation = app_op((5.0, 5), (40.0, 4));
    let mut limiters = Vec::new();
    for _ in 0..3 {
        limiters.push(
            Limiter::redis(LimiterConfig::default(), settings.clone())
                .await
                .unwrap(),
        );
    }
    let start = Instant::now();
    let times = many_sellers(&limiters, operation, 60, 1500).await;
    assert_app_bound(&times, start, 40.0, 4.0);
    assert!(times.len() >= 40, "only {} admitted in 1.5 s", times.len());
    for l in &limiters {
        assert_eq!(l.metrics().redis_fallbacks, 0);
    }
    let key = format!("{prefix}rl:{{app}}:{}", operation.key);
    assert!(
        redis_key_exists(&key).await,
        "the application bucket lives at {key}"
    );
    let status = limiters[0].app_status(None);
    assert_eq!(status.len(), 1);
    assert!(status[0].tokens <= 4.0);
}

// === restarts ===

#[tokio::test(start_paused = true)]
async fn a_restarted_instance_does_not_hand_out_a_burst_it_already_spent() {
    let dir = tempfile::tempdir().unwrap();
    let fast = custom_op(10.0, 5);
    // First start: no marker, the bucket is full.
    let first = Limiter::local(LimiterConfig::default());
    first.guard_restarts(dir.path()).unwrap();
    for i in 0..5 {
        assert!(
            first.acquire(now_only(fast, "t")).await.is_ok(),
            "token {i}"
        );
    }
    assert!(dir.path().join(restart::FILE).exists());
    // Killed and started again at once: the previous run may have spent everything up to the
    // end of its lease, so nothing is there yet.
    drop(first);
    let second = Limiter::local(LimiterConfig::default());
    second.guard_restarts(dir.path()).unwrap();
    assert!(second.acquire(now_only(fast, "t")).await.is_err());
    // A limiter that does not guard restarts would have handed out the burst again.
    let unguarded = Limiter::local(LimiterConfig::default());
    assert!(unguarded.acquire(now_only(fast, "t")).await.is_ok());
    // Refilled at the plan's rate from the previous run's lease on: all 5 after the lease plus
    // burst / rate.
    tokio::time::advance(restart::LEASE + Duration::from_millis(500)).await;
    for i in 0..5 {
        assert!(
            second.acquire(now_only(fast, "t")).await.is_ok(),
            "token {i}"
        );
    }
}

#[tokio::test]
async fn after_redis_loses_its_data_buckets_start_spent_not_full() {
    let settings = redis_settings().await;
    let prefix = settings.key_prefix.clone();
    let limiter = Limiter::redis(LimiterConfig::default(), settings)
        .await
        .unwrap();
    let fast = custom_op(10.0, 5);
    // A fresh deployment: full.
    for i in 0..5 {
        assert!(
            limiter.acquire(now_only(fast, "t")).await.is_ok(),
            "token {i}"
        );
    }
    // Redis restarts without persistence: every key of the deployment is gone.
    let client = ::redis::Client::open(REDIS_URL).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = ::redis::cmd("KEYS")
        .arg(format!("{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(keys.iter().any(|k| k.ends_with("rl:epoch")), "{keys:?}");
    let _: i64 = ::redis::cmd("DEL")
        .arg(&keys)
        .query_async(&mut conn)
        .await
        .unwrap();
    // The burst already spent is not handed out again...
    assert!(limiter.acquire(now_only(fast, "t")).await.is_err());
    // ...and the bucket refills at the plan's rate (one token per 100 ms).
    let waited = limiter.acquire(ask(fast, "t", None)).await.unwrap();
    assert!(waited.waited <= Duration::from_millis(150), "{waited:?}");
    assert_eq!(limiter.metrics().redis_fallbacks, 0);
}
