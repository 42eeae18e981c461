//! The PII cache (`x-spgate-cache`): a repeat read of one order's restricted data within the
//! TTL is answered from the vault (sealed under the order's key) before credentials, so it
//! spends no Amazon quota; the role's policy runs on every hit.

use http::{header, HeaderValue, Request, Response};

use crate::auth::caller::Caller;
use crate::auth::rdt;
use crate::catalog::Operation;
use crate::net::body::{self, Body};
use crate::pii::Role;
use crate::store::SellerRecord;

use super::limit::Wants;
use super::rescue::ProxyError;
use super::{Ctx, Gateway};

/// `hit` when a response came from the PII cache, `miss` when it could have and did not.
pub const CACHE_HEADER: &str = "x-spgate-cache";

impl Gateway {
    /// The cached answer to this request, through the tool's own plan (as a shared answer:
    /// [`Gateway::admit_plan`]) and the role's policy, if the PII cache holds one; on a miss,
    /// notes in `ctx` where the answer will be cached.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn cached<B>(
        &self,
        op: &'static Operation,
        role: &Role,
        seller: Option<&SellerRecord>,
        req: &Request<B>,
        params: &[(&'static str, String)],
        (caller, wants): (&Caller, &Wants),
        ctx: &mut Ctx,
    ) -> Result<Option<Response<Body>>, ProxyError> {
        if let (Some(seller), Some(key)) = (seller, self.cache_key(op, role, req, params)) {
            if let Some(cached) = self
                .vault
                .cache_get(&seller.selling_partner_id, &key.1)
                .await?
            {
                ctx.admission = Some(
                    self.admit_plan(caller, op, &seller.selling_partner_id, wants)
                        .await?,
                );
                ctx.cache_hit = true;
                let out = self
                    .apply_policy(&cached, op, role, Some(seller), params, ctx)
                    .await?;
                let mut resp = Response::new(body::full(out));
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp.headers_mut()
                    .insert(CACHE_HEADER, HeaderValue::from_static("hit"));
                return Ok(Some(resp));
            }
            ctx.cache = Some(key);
        }
        Ok(None)
    }

    /// The PII cache key of a request, when its response may be cached: a GET of one order's
    /// restricted data (an `orderId` path parameter), while the cache is on. The key names the
    /// operation, the path and query, and the categories the role receives (which decide the
    /// Restricted Data Token, hence what Amazon answered).
    pub(super) fn cache_key<B>(
        &self,
        op: &Operation,
        role: &Role,
        req: &Request<B>,
        params: &[(&'static str, String)],
    ) -> Option<(String, String)> {
        let links = match op.pii_class() {
            crate::pii::Classification::Mapped(map) => !map.links.is_empty(),
            _ => return None,
        };
        // A response with document links is never cached: its links expire in minutes.
        if !self.vault.config().cache_enabled
            || links
            || op.method != http::Method::GET
            || !role.receives_any(rdt::categories(op))
        {
            return None;
        }
        let order_id = params.iter().find(|(k, _)| *k == "orderId")?.1.clone();
        let receives: Vec<&str> = crate::pii::Category::ALL
            .iter()
            .filter(|c| role.receives(**c))
            .map(|c| c.as_str())
            .collect();
        let pq = req.uri().path_and_query().map_or("", |pq| pq.as_str());
        Some((order_id, format!("{}|{pq}|{}", op.key, receives.join(","))))
    }
}
