//! Phase 6, rate limit: a token of Amazon's bucket for (seller, operation) and of the tool's
//! plan, as the caller's headers ask; Amazon's answers fed back into the limiter.

use std::time::Duration;

use http::Response;

use crate::auth::caller::Caller;
use crate::catalog::{CallKind, Operation};
use crate::net::body::Body;
use crate::ratelimit::{Acquire, Priority};

use super::rescue::ProxyError;
use super::Gateway;

impl Gateway {
    /// Phase 5: a token from Amazon's bucket for (seller, operation) and from the tool's plan,
    /// waiting up to the deadline; otherwise 429 with Retry-After.
    pub(super) async fn admit(
        &self,
        caller: &Caller,
        op: &'static Operation,
        bucket: &str,
        wants: &Wants,
    ) -> Result<crate::ratelimit::Admission, ProxyError> {
        let plan = self.tool_plan(&caller.client.tool);
        let acquire = Acquire {
            seller: bucket,
            operation: op,
            tool: &caller.client.tool,
            plan: plan.as_deref(),
            priority: wants.priority,
            max_wait: wants.max_wait,
        };
        Ok(self.limiter.acquire_kind(acquire, wants.kind).await?)
    }

    /// For an answer the gateway has without Amazon (a PII cache hit, a shared answer): only
    /// the tool's own plan ([`crate::ratelimit::Limiter::acquire_plan`]: an absolute rule is
    /// the tool's own bucket, the operator's limit on the tool; a share limits nothing, as no
    /// token of Amazon's bucket is taken), counted as every decision is.
    pub(super) async fn admit_plan(
        &self,
        caller: &Caller,
        op: &'static Operation,
        seller: &str,
        wants: &Wants,
    ) -> Result<crate::ratelimit::Admission, ProxyError> {
        let plan = self.tool_plan(&caller.client.tool);
        let acquire = Acquire {
            seller,
            operation: op,
            tool: &caller.client.tool,
            plan: plan.as_deref(),
            priority: wants.priority,
            max_wait: wants.max_wait,
        };
        Ok(self.limiter.acquire_plan(acquire).await?)
    }

    /// The rate plan assigned to a tool, if any.
    pub(super) fn tool_plan(&self, tool: &str) -> Option<String> {
        self.tool_plans
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(tool)
            .cloned()
    }

    /// Feeds Amazon's answer back into the limiter: its stated rate, and its 429s.
    pub(super) fn observe(&self, bucket: &str, op: &Operation, resp: &Response<Body>) {
        if resp.status() == http::StatusCode::TOO_MANY_REQUESTS {
            self.limiter.observe_throttled(bucket, op);
        } else if let Some(rate) = resp
            .headers()
            .get(crate::spapi::RATE_LIMIT_LIMIT)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            self.limiter.observe_rate(bucket, op, rate);
        }
    }
}

/// What the caller asked of the limiter in its headers.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wants {
    pub(super) priority: Priority,
    pub(super) max_wait: Option<Duration>,
    /// The kind of call, where the request shows one with its own application-wide sub-limit
    /// (a Listings Items validation preview).
    pub(super) kind: Option<CallKind>,
}

impl Wants {
    /// Reads `x-spgate-priority` (high, normal, low) and `x-spgate-max-wait-ms`, and the kind
    /// of call from the query.
    pub(super) fn from_request<B>(req: &http::Request<B>) -> Result<Wants, ProxyError> {
        let headers = req.headers();
        let priority =
            match headers.get("x-spgate-priority") {
                None => Priority::Normal,
                Some(v) => v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(
                    ProxyError::BadHeader("x-spgate-priority must be high, normal or low"),
                )?,
            };
        let max_wait = match headers.get("x-spgate-max-wait-ms") {
            None => None,
            Some(v) => Some(Duration::from_millis(
                v.to_str().ok().and_then(|v| v.trim().parse().ok()).ok_or(
                    ProxyError::BadHeader("x-spgate-max-wait-ms must be a number of milliseconds"),
                )?,
            )),
        };
        Ok(Wants {
            priority,
            max_wait,
            kind: crate::catalog::kind_from_query(req.uri().query()),
        })
    }
}
