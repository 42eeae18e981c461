//! Phase 8, respond (PII): every response of an operation that may carry buyer PII is
//! buffered and put through the caller's role; every other JSON answer through the safety net.
//! `apply_policy` is the one place responses meet the PII transform.

use http::{header, HeaderValue, Response};
use http_body_util::BodyExt;

use crate::catalog::Operation;
use crate::net::body::{self, Body};
use crate::pii::Role;
use crate::store::SellerRecord;

use super::rescue::ProxyError;
use super::{error_body, Ctx, Gateway, APPLICATION_BUCKET};

impl Gateway {
    /// Phase 8 (PII): a response of an operation that may carry buyer PII is buffered (up to
    /// `pii.max_response_bytes`) and parsed before anything reaches the caller. A body that is
    /// too large, cannot be read in full, is encoded, or is not JSON is refused with 502:
    /// restricted data fails closed, never open. Every other JSON response (success or error)
    /// goes through the safety net the same way; only non-JSON answers (and empty bodies) of
    /// operations declared to carry no buyer PII pass untouched. Error answers of PII
    /// operations go through the role's policy ([`Self::minimise_error`]).
    pub(super) async fn minimise(
        &self,
        resp: Response<Body>,
        op: &'static Operation,
        role: &Role,
        seller: Option<&SellerRecord>,
        params: &[(&'static str, String)],
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        let mapped = match op.pii_class() {
            crate::pii::Classification::Mapped(_) => true,
            crate::pii::Classification::NoPii(_) => false,
            crate::pii::Classification::Unclassified => return Err(ProxyError::Unclassified),
        };
        if !mapped && !declares_json(resp.headers()) {
            return Ok(resp);
        }
        // A translated call's words are judged by both operations' categories: the v0 one asked
        // and the 2026 one that answered (whose errors may echo what its answer holds).
        let passes_all = passes_every_category(op, role)
            && ctx
                .translated_to
                .is_none_or(|wire| passes_every_category(wire, role));
        if !resp.status().is_success() {
            return self.minimise_error(resp, op, role, passes_all, ctx).await;
        }
        let (parts, body) = resp.into_parts();
        if parts
            .headers
            .get(header::CONTENT_ENCODING)
            .is_some_and(|v| v.as_bytes() != b"identity")
        {
            return Err(ProxyError::UnsafeResponse("encoded"));
        }
        let bytes = read_capped(body, self.pii.max_response_bytes).await?;
        if !mapped && bytes.is_empty() {
            return Ok(Response::from_parts(parts, body::empty()));
        }
        let mut out = self
            .apply_policy(&bytes, op, role, seller, params, ctx)
            .await?;
        // Errors inside a successful answer (partial results) are free text like an error
        // answer's: their codes pass, their words only to a role that passes everything (and
        // then the answer may carry any category of the operation).
        if mapped && memchr::memmem::find(&out, b"\"errors\"").is_some() {
            if !passes_all {
                if let Some(generic) = error_body::generic_errors_in(&out) {
                    out = generic;
                }
            } else {
                note_free_text(ctx, op, role);
            }
        }
        // Only a response the policy could read is cached (sealed under the order's key), and
        // never one carrying `errors`: a hit goes through the policy alone, and the errors'
        // words are judged here, per role, on every answer.
        let has_errors = memchr::memmem::find(&bytes, b"\"errors\"").is_some();
        if let (Some((order_id, key)), Some(seller), false) = (&ctx.cache, seller, has_errors) {
            self.vault
                .cache_put(&seller.selling_partner_id, order_id, key, &bytes)
                .await?;
        }
        Ok(with_body(parts, out))
    }

    /// A JSON error answer (any operation) or an error answer of an operation with buyer PII:
    /// Amazon's errors may echo what was sent or found. Each error's `code` passes; `message`
    /// and `details` only for a role that passes every category of the operation (`passes_all`;
    /// of a translated call, of both operations), and then through the role's policy and the
    /// safety net like a success (no keys: nothing is encrypted), and the answer is taken to
    /// carry every category of the operation (its record names them, and it goes out only once
    /// recorded: [`note_free_text`]). Other roles get a generic message for the code and no
    /// details ([`error_body::generic`]). Not JSON: withheld (502).
    pub(super) async fn minimise_error(
        &self,
        resp: Response<Body>,
        op: &'static Operation,
        role: &Role,
        passes_all: bool,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError> {
        use crate::pii::{keys, transform};
        let (parts, body) = resp.into_parts();
        let bytes = read_capped(body, self.pii.max_response_bytes).await?;
        if bytes.is_empty() {
            return Ok(Response::from_parts(parts, body::empty()));
        }
        if !passes_all {
            let out = error_body::generic(parts.status, &bytes)
                .ok_or(ProxyError::UnsafeResponse("error body not JSON"))?;
            return Ok(with_body(parts, out));
        }
        let pseudonym = keys::PseudonymKey::derive_lazily(&self.master_key, "error-bodies");
        let keys = keys::Keys {
            pseudonym: &pseudonym,
            orders: &keys::NoOrderKeys,
        };
        let (out, report) =
            transform::apply_bytes(op.key, role, &bytes, &[], &keys, &self.pii_policy())
                .map_err(|_| ProxyError::UnsafeResponse("error body not JSON"))?;
        ctx.pii = Some(report);
        note_free_text(ctx, op, role);
        Ok(with_body(parts, out))
    }

    /// The transform's limits and safety-net action, from `[pii]`.
    pub(super) fn pii_policy(&self) -> crate::pii::transform::Policy {
        crate::pii::transform::Policy {
            max_bytes: self.pii.max_response_bytes,
            safety_net: self.pii.safety_net,
        }
    }

    /// The role's PII policy over a whole response: the orders it holds get their data keys
    /// (for `encrypt`) and retention facts first (I/O), then the pure transform runs.
    pub(super) async fn apply_policy(
        &self,
        bytes: &[u8],
        op: &'static Operation,
        role: &Role,
        seller: Option<&SellerRecord>,
        params: &[(&'static str, String)],
        ctx: &mut Ctx,
    ) -> Result<Vec<u8>, ProxyError> {
        use crate::pii::{keys, transform};
        let policy = self.pii_policy();
        let seller_id = seller.map_or(APPLICATION_BUCKET, |s| s.selling_partner_id.as_str());
        let pseudonym = keys::PseudonymKey::derive_lazily(&self.master_key, seller_id);
        let op_map = match op.pii_class() {
            crate::pii::Classification::Mapped(map) => map,
            // No buyer PII by declaration: only the safety net runs.
            _ => {
                let keys = keys::Keys {
                    pseudonym: &pseudonym,
                    orders: &keys::NoOrderKeys,
                };
                let (out, report) =
                    transform::apply_bytes(op.key, role, bytes, &[], &keys, &policy)
                        .map_err(|_| ProxyError::UnsafeResponse("not JSON"))?;
                ctx.pii = Some(report);
                return Ok(out);
            }
        };
        // Document URLs become the gateway's signed links first, so the presigned URLs (bearer
        // credentials) never meet the transform and never leave.
        let linked;
        let bytes = if op_map.links.is_empty() {
            bytes
        } else {
            linked = self.link_documents(bytes, op_map, seller_id, params, ctx)?;
            &linked[..]
        };
        let params: Vec<(&str, &str)> = params.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let encrypts = crate::pii::Category::ALL
            .iter()
            .any(|c| role.action(*c) == crate::pii::Action::Encrypt);
        // Facts and pseudonyms of a cached response were recorded when it was fetched.
        let fresh = !ctx.cache_hit;
        // The parsed tree is only needed for the vault's work (order keys, facts, pseudonyms);
        // the transform itself runs over the bytes.
        let value = if seller.is_some() && (encrypts || fresh) && !op_map.records.is_empty() {
            transform::parse(bytes, &policy).map_err(|_| ProxyError::UnsafeResponse("not JSON"))?
        } else {
            serde_json::Value::Null
        };
        let mut order_keys: Vec<(String, crate::crypto::DataKey)> = Vec::new();
        if encrypts && seller.is_some() {
            for id in transform::order_ids(op.key, &value, &params) {
                let key = self.vault.order_key(seller_id, &id).await?;
                order_keys.push((id, key));
            }
        }
        if seller.is_some() && fresh {
            for facts in transform::orders(op.key, &value, &params) {
                let facts = crate::vault::OrderFacts {
                    latest_delivery: facts
                        .latest_delivery
                        .as_deref()
                        .and_then(crate::vault::parse_rfc3339),
                    delivered_at: facts.delivered.then(|| self.vault.now()),
                    status: facts.status,
                    order_id: facts.order_id,
                };
                self.vault.observe(seller_id, &facts).await?;
            }
        }
        if seller.is_some() && fresh && (encrypts || ctx.cache.is_some()) {
            // Orders the vault holds PII of are found again by the buyer's e-mail pseudonym
            // (data-subject requests).
            for (order_id, email) in transform::order_emails(op.key, &value, &params) {
                let psn = pseudonym.pseudonymize(crate::pii::Category::Email, &email);
                let key = order_keys
                    .iter()
                    .find(|(id, _)| *id == order_id)
                    .map(|(_, k)| k);
                self.vault
                    .link_pseudonym(seller_id, &order_id, &psn, key)
                    .await?;
            }
        }
        let keys = keys::Keys {
            pseudonym: &pseudonym,
            orders: &order_keys,
        };
        let (out, report) = transform::apply_bytes(op.key, role, bytes, &params, &keys, &policy)
            .map_err(|_| ProxyError::UnsafeResponse("not JSON"))?;
        ctx.pii = Some(report);
        Ok(out)
    }
}

/// Whether a response says it is JSON (or says nothing, so it is checked as JSON): the safety
/// net reads every such body.
pub(super) fn declares_json(headers: &http::HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE) {
        None => true,
        Some(v) => {
            // A type that is not even text is treated as JSON: the safety net decides.
            let Ok(v) = v.to_str() else { return true };
            let v = v.to_ascii_lowercase();
            let essence = v.split(';').next().unwrap_or("").trim();
            essence.ends_with("/json") || essence.ends_with("+json")
        }
    }
}

/// Whether a role passes every category an operation's answers may carry: only such a role
/// reads Amazon's free text (error messages and details) about it. An operation declared free
/// of buyer PII has no category to withhold (its text still meets the safety net); one with
/// document links carries `document`; an unclassified one never passes.
fn passes_every_category(op: &Operation, role: &Role) -> bool {
    use crate::pii::{Action, Category, Classification};
    match op.pii_class() {
        Classification::Mapped(map) => {
            map.categories()
                .iter()
                .all(|c| role.action(*c) == Action::Pass)
                && (map.links.is_empty() || role.action(Category::Document) == Action::Pass)
        }
        Classification::NoPii(_) => true,
        Classification::Unclassified => false,
    }
}

/// Amazon's free text (error messages and details) reached a role that passes every category
/// of the operation: it may echo any of them (of both operations of a translated call), so the
/// answer counts as carrying each, with the role's action. Its record names them, and it goes
/// out only once recorded ([`super::accounting::carries_pii`]).
fn note_free_text(ctx: &mut Ctx, op: &'static Operation, role: &Role) {
    use crate::pii::{Category, Classification};
    let report = ctx.pii.get_or_insert_with(Default::default);
    for op in std::iter::once(op).chain(ctx.translated_to) {
        let Classification::Mapped(map) = op.pii_class() else {
            continue;
        };
        let document = (!map.links.is_empty()).then_some(Category::Document);
        for c in map.categories().into_iter().chain(document) {
            report.returned.entry(c).or_insert_with(|| role.action(c));
        }
    }
}

/// The response with a new, complete body (and its length).
pub(super) fn with_body(mut parts: http::response::Parts, out: Vec<u8>) -> Response<Body> {
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(out.len() as u64));
    Response::from_parts(parts, body::full(out))
}

/// Reads a whole body of at most `max` bytes; more, or a broken body, is an unsafe response.
pub(super) async fn read_capped(mut body: Body, max: usize) -> Result<bytes::Bytes, ProxyError> {
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ProxyError::UnsafeResponse("unreadable"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > max {
                return Err(ProxyError::UnsafeResponse("too large"));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}
