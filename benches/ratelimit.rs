//! Cost of one rate-limit decision: an immediate local admission (target: under 1 µs) and a
//! Redis decision (one EVALSHA round trip to the server on 127.0.0.1:6379), each for the
//! seller's bucket alone and together with an application-wide bucket (both taken at once).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use spgate::catalog::{Catalog, Operation, UsagePlan};
use spgate::ratelimit::{Acquire, Limiter, LimiterConfig, Priority, RedisSettings};

/// An operation whose bucket never runs dry during a benchmark (every decision is immediate).
fn roomy_operation() -> &'static Operation {
    let mut op = Catalog::builtin()
        .by_key("ordersV0.getOrderAddress")
        .expect("catalogued")
        .clone();
    op.usage_plan = Some(UsagePlan {
        rate_per_second: 1e9,
        burst: 1_000_000,
    });
    Box::leak(Box::new(op))
}

/// The same with a roomy application-wide bucket as well.
fn roomy_app_operation() -> &'static Operation {
    let mut op = roomy_operation().clone();
    op.app_plan = Some(UsagePlan {
        rate_per_second: 1e9,
        burst: 1_000_000,
    });
    Box::leak(Box::new(op))
}

fn request(operation: &'static Operation) -> Acquire<'static> {
    Acquire {
        seller: "A1BENCHSELLER",
        operation,
        tool: "bench-tool",
        plan: None,
        priority: Priority::Normal,
        max_wait: Some(Duration::ZERO),
    }
}

fn local_decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let _guard = rt.enter();
    let limiter = Limiter::local(LimiterConfig::default());
    for (name, operation) in [
        ("local immediate admission", roomy_operation()),
        (
            "local immediate admission, seller + application bucket",
            roomy_app_operation(),
        ),
    ] {
        c.bench_function(name, |b| {
            b.iter(|| {
                let admission = limiter
                    .acquire(black_box(request(operation)))
                    .now_or_never()
                    .expect("an immediate admission completes without waiting");
                black_box(admission.expect("admitted"))
            })
        });
    }
}

fn redis_decision(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let settings = RedisSettings {
        key_prefix: format!("spgate-bench-{}:", std::process::id()),
        ..RedisSettings::new("redis://127.0.0.1:6379")
    };
    let limiter = rt
        .block_on(Limiter::redis(LimiterConfig::default(), settings))
        .expect("redis limiter");
    let operation = roomy_operation();
    rt.block_on(limiter.acquire(request(operation)))
        .expect("Redis must run on 127.0.0.1:6379");
    c.bench_function("redis admission (one EVALSHA)", |b| {
        b.iter(|| black_box(rt.block_on(limiter.acquire(black_box(request(operation))))))
    });
    let both = roomy_app_operation();
    c.bench_function(
        "redis admission, seller + application bucket (one EVALSHA)",
        |b| b.iter(|| black_box(rt.block_on(limiter.acquire(black_box(request(both)))))),
    );
    assert_eq!(
        limiter.metrics().redis_fallbacks,
        0,
        "every decision went to Redis"
    );
}

criterion_group!(benches, local_decision, redis_decision);
criterion_main!(benches);
