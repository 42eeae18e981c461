//! Amazon's application-wide buckets: one per (operation, kind of call) across every seller of
//! this application, taken together with the seller's bucket ("whichever threshold you reach
//! first").
//!
//! A request takes its seller's bucket and every application bucket that applies to it (the
//! operation's, plus the sub-limit of its kind when the request shows one) at one instant: the
//! latest of their next slots. Taking them at different instants would not do: a request held
//! back by the application bucket after its seller's token was dated earlier could reach Amazon
//! right before the seller's next request, closer together than the seller's plan allows.
//! Locally that is [`joint_slot`]/[`take_joint`] under the seller bucket's lock (an application
//! bucket's own lock is only ever taken inside it, never the other way round); with Redis it is
//! one Lua script over all the keys (`redis.rs`).

use std::sync::{Arc, Mutex, MutexGuard};

use tokio::time::Instant;

use super::bucket::{amazon_interval, spawn_redis_drain, Limits};
use super::gcra::Gcra;
use super::Inner;
use crate::catalog::{CallKind, Operation, UsagePlan};

/// One application-wide bucket.
#[derive(Debug)]
pub(crate) struct AppBucket {
    pub(crate) operation: &'static Operation,
    pub(crate) kind: Option<CallKind>,
    pub(crate) plan: UsagePlan,
    pub(crate) redis_key: Option<String>,
    state: Mutex<AppState>,
}

#[derive(Debug)]
pub(crate) struct AppState {
    /// Amazon's limit after the safety factor.
    pub(crate) amazon: Limits,
    /// The bucket as this instance enforces it: all of it (local mode) or its fallback share.
    pub(crate) local: Gcra,
    /// Tokens as of this instance's last Redis decision.
    pub(crate) redis_view: Option<(f64, Instant)>,
}

impl AppBucket {
    pub(crate) fn new(
        inner: &Inner,
        operation: &'static Operation,
        kind: Option<CallKind>,
        plan: UsagePlan,
        now: Instant,
    ) -> AppBucket {
        let amazon = inner.effective(plan, None);
        let local = inner.local_share(amazon);
        AppBucket {
            operation,
            kind,
            plan,
            redis_key: inner.redis.as_ref().map(|r| r.app_key(operation.key, kind)),
            state: Mutex::new(AppState {
                amazon,
                local: inner.new_gcra(local, now),
                redis_view: None,
            }),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, AppState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Amazon answered 429 to a call of this operation. Its answer does not say which limit
    /// was hit, so the application bucket is emptied too: that costs every seller at most one
    /// burst of the application's rate (8 ms for getCatalogItem), while a retry into an
    /// application limit that is really spent would make Amazon answer 429 again.
    pub(crate) fn drain(&self, inner: &Arc<Inner>) {
        let now = Instant::now();
        let limits = {
            let mut st = self.lock();
            st.local.drain(now);
            st.redis_view = Some((0.0, now));
            st.amazon
        };
        if let Some(key) = &self.redis_key {
            spawn_redis_drain(inner, key, amazon_interval(limits), limits.burst);
        }
    }
}

/// The application buckets one request takes: the operation's and its kind's (either absent).
#[derive(Debug, Clone, Default)]
pub(crate) struct Apps([Option<Arc<AppBucket>>; 2]);

impl Apps {
    pub(crate) fn new(main: Option<Arc<AppBucket>>, sub: Option<Arc<AppBucket>>) -> Apps {
        Apps([main, sub])
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &Arc<AppBucket>> {
        self.0.iter().flatten()
    }

    /// Whether both take the same application buckets.
    pub(crate) fn same(&self, other: &Apps) -> bool {
        self.0.iter().zip(&other.0).all(|(a, b)| match (a, b) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        })
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }
}

/// The earliest instant at which the seller's bucket and every application bucket all have a
/// token, and whether an application bucket is what sets it.
pub(crate) fn joint_slot(pair: &Gcra, apps: &Apps, now: Instant) -> (Instant, bool) {
    let mut slot = pair.next_slot(now);
    let mut app_bound = false;
    for app in apps.iter() {
        let s = app.lock().local.next_slot(now);
        if s > slot {
            slot = s;
            app_bound = true;
        }
    }
    (slot, app_bound)
}

/// Takes a token of every bucket now if all have one; otherwise takes none.
pub(crate) fn take_joint(pair: &mut Gcra, apps: &Apps, now: Instant) -> bool {
    if apps.is_empty() {
        return pair.try_take(now);
    }
    let mut guards: Vec<MutexGuard<'_, AppState>> = apps.iter().map(|a| a.lock()).collect();
    if pair.next_slot(now) > now || guards.iter().any(|g| g.local.next_slot(now) > now) {
        return false;
    }
    pair.try_take(now);
    for g in &mut guards {
        g.local.try_take(now);
    }
    true
}

/// Reserves a token of every bucket for `at`, an instant not before their joint slot.
pub(crate) fn reserve_joint(pair: &mut Gcra, apps: &Apps, at: Instant) {
    pair.reserve_at(at);
    for app in apps.iter() {
        app.lock().local.reserve_at(at);
    }
}
