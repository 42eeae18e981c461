//! The pipeline's side of Orders v0 compatibility ([`crate::compat`]): a v0 call the tool's
//! mode translates is rewritten to its 2026-01-01 call before credentials, so every later phase
//! (credentials, the 2026 operation's rate limit, upstream, retries) runs for the 2026
//! operation; its successful answer is rebuilt in v0's shape before the v0 operation's PII
//! policy; error answers keep their shape (v0's and 2026's error lists are the same).

use http::{header, HeaderValue, Request, Response};

use crate::auth::caller::Caller;
use crate::auth::rdt::{self, Need};
use crate::catalog::{Catalog, Operation};
use crate::compat::{self, Kind, Plan};
use crate::net::body::{self, Body};
use crate::pii::Role;
use crate::store::SellerRecord;

use super::rescue::ProxyError;
use super::{unix_now, Ctx, Gateway};

/// A v0 call being answered from Orders 2026-01-01.
pub(super) struct Translation {
    /// The 2026 operation sent upstream.
    pub(super) target: &'static Operation,
    plan: Plan,
}

impl Gateway {
    /// Compat: when the tool's mode translates this v0 call, the request becomes its 2026 call
    /// (path and query; `includedData` reduced to the role) and the translation is returned.
    /// A role the v0 operation refuses is refused here too, as the v0 call would be.
    pub(super) fn translate<B>(
        &self,
        req: Request<B>,
        (op, params): (&'static Operation, &[(&'static str, String)]),
        caller: &Caller,
        seller: Option<&SellerRecord>,
        role: &Role,
    ) -> Result<(Request<B>, Option<Translation>), ProxyError> {
        let now = unix_now();
        let Some(seller) = seller else {
            return Ok((req, None));
        };
        let Some(kind) = self
            .compat
            .translates(op.key, &caller.client.tool, seller.region, now)
        else {
            return Ok((req, None));
        };
        if matches!(rdt::need(op, role), Need::Refused) {
            return Err(ProxyError::RoleMayNotReceive);
        }
        let target =
            Catalog::builtin()
                .by_key(kind.target_key())
                .ok_or(compat::CompatError::Internal(
                    "the 2026 operation is not in the catalog",
                ))?;
        let order_id = params
            .iter()
            .find(|(k, _)| *k == "orderId")
            .map(|(_, v)| v.as_str());
        let who = compat::Caller {
            tool: &caller.client.tool,
            seller: &seller.selling_partner_id,
            role,
            now,
        };
        let plan = compat::request::plan(
            kind,
            order_id,
            req.uri().query(),
            &who,
            self.compat.map(),
            &self.master_key,
        )?;
        let (mut parts, body) = req.into_parts();
        parts.uri = plan
            .path_and_query
            .parse()
            .map_err(|_| compat::CompatError::Internal("the 2026 path does not parse"))?;
        Ok((
            Request::from_parts(parts, body),
            Some(Translation { target, plan }),
        ))
    }

    /// Compat: a translated call's successful answer rebuilt in v0's shape (buffered, up to
    /// `pii.max_response_bytes`); any other answer as it is. For a v0 call that was passed
    /// through, Amazon's answer is checked for the removal of v0 (mode `auto`).
    pub(super) async fn translated_answer(
        &self,
        resp: Response<Body>,
        (op, translation): (&'static Operation, Option<&Translation>),
        caller: &Caller,
        seller: Option<&SellerRecord>,
        role: &Role,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        let Some(t) = translation else {
            if let (Some(kind), Some(seller)) = (Kind::of(op.key), seller) {
                let seen = (seller.region, seller.selling_partner_id.as_str());
                if let Some(switched) =
                    self.compat
                        .observe_v0(kind, resp.status(), seen, unix_now())
                {
                    self.audit_compat_switch(switched, op, seller);
                }
            }
            return Ok(resp);
        };
        let Some(seller) = seller else {
            return Err(compat::CompatError::Internal("a translated call without a seller").into());
        };
        if !resp.status().is_success() {
            return Ok(resp);
        }
        let (mut parts, body) = resp.into_parts();
        if parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(ProxyError::UnsafeResponse("encoded"));
        }
        let bytes = super::policy::read_capped(body, self.pii.max_response_bytes).await?;
        let who = compat::Caller {
            tool: &caller.client.tool,
            seller: &seller.selling_partner_id,
            role,
            now: unix_now(),
        };
        let (out, unconverted) = self
            .compat
            .answer(&t.plan, &bytes, &who, &self.master_key)?;
        ctx.unconverted = Some(unconverted);
        parts.headers.remove(header::CONTENT_LENGTH);
        parts.headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        Ok(Response::from_parts(parts, body::full(out)))
    }

    /// `auto` switched a region to translation: a record naming the region (in `reason`), the
    /// seller whose answer tipped it, the operation and how many sellers were answered so.
    fn audit_compat_switch(
        &self,
        switched: compat::Switched,
        op: &'static Operation,
        seller: &SellerRecord,
    ) {
        let mut record = crate::audit::Record::new(crate::audit::Kind::CompatSwitch)
            .with_operation(op)
            .with_seller(&seller.selling_partner_id)
            .with_reason(crate::audit::Reason::from_static(match switched.region {
                crate::store::Region::Na => "orders_v0_removed_na",
                crate::store::Region::Eu => "orders_v0_removed_eu",
                crate::store::Region::Fe => "orders_v0_removed_fe",
            }));
        record.count = Some(switched.sellers as u64);
        self.auditor.record(record);
    }

    /// The Orders v0 translator (modes, removal seen, counters).
    pub fn compat(&self) -> &compat::Compat {
        &self.compat
    }
}
