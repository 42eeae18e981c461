//! Documents with buyer PII: every document URL the field map marks as a `link` (report
//! documents, invoices, labels, delivery photos, Data Kiosk documents, RMA pages...) is rewritten
//! to the gateway's own short-lived signed link, and `GET /v1/documents/{token}` streams the
//! download through the role's policy ([`crate::documents::redact`]) with memory flat in the
//! document's size: structured files field by field, opaque files (PDF, images) only for roles
//! passing `document`.
//!
//! The link is only good for the tool it was issued to, for a seller that tool may still act
//! for, until it expires (5 minutes). `encrypt` needs an order's data key, which is I/O; inside
//! a streamed document it falls back to `drop` (fail closed), like any encrypt without a key.

use std::sync::Arc;
use std::time::Duration;

use http::{header, HeaderValue, Request, Response};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;

use crate::auth::caller;
use crate::crypto::MasterKey;
use crate::documents::{Decision, DocumentError, Redactor};
use crate::net::body::{Body, BoxError};
use crate::pii::keys::{Keys, NoOrderKeys, PseudonymKey};
use crate::pii::map::{parse_path, LinkSpec, Segment};
use crate::pii::transform::{apply_value, FieldOut};
use crate::pii::{Action, Category, Role};
use crate::proxy::rescue::ProxyError;
use crate::proxy::{accounting, unix_now, Ctx, Gateway};
use crate::store::SellerStatus;

/// Where the signed links live.
pub const PREFIX: &str = "/v1/documents/";

/// The operation whose response carries a report document URL.
pub const OPERATION: &str = "reports_2021-06-30.getReportDocument";

/// The role's policy for one seller, value by value.
pub struct RolePolicy {
    role: Role,
    pseudonym: PseudonymKey,
}

impl RolePolicy {
    /// The policy of `role` for documents of `seller`.
    pub fn new(role: Role, master: &MasterKey, seller: &str) -> Arc<RolePolicy> {
        Arc::new(RolePolicy {
            role,
            pseudonym: PseudonymKey::derive(master, seller),
        })
    }
}

impl Redactor for RolePolicy {
    fn redact(&self, category: Category, value: &str, order_id: Option<&str>) -> Decision {
        let keys = Keys {
            pseudonym: &self.pseudonym,
            orders: &NoOrderKeys,
        };
        match apply_value(category, self.role.action(category), value, order_id, &keys) {
            FieldOut::Keep => Decision::Unchanged,
            FieldOut::Replace(v) => Decision::Replace(v),
            FieldOut::Drop => Decision::Drop,
        }
    }

    fn action(&self, category: Category) -> Action {
        match self.role.action(category) {
            // No data keys inside a stream: encrypt falls back to drop.
            Action::Encrypt => Action::Drop,
            a => a,
        }
    }
}

/// Whether a role may receive an opaque buyer document (a label, invoice or photo cannot be
/// redacted field by field): only when it passes `document` in clear.
pub fn passes_opaque(role: &Role) -> bool {
    role.action(Category::Document) == Action::Pass
}

/// Rewrites every document URL at `links` in a JSON response to `base` + `/v1/documents/` + the
/// token `token_for(url, compression, opaque)` returns; each link's compression member is removed (the
/// gateway serves documents decompressed). Absent or null URLs stay as they are; a URL that is
/// not a string, or a body that is not JSON, is an error (fail closed).
pub fn rewrite_links(
    body: &[u8],
    links: &[LinkSpec],
    base: &str,
    mut token_for: impl FnMut(&str, Option<&str>, bool) -> Result<String, DocumentError>,
) -> Result<Vec<u8>, DocumentError> {
    let mut doc: serde_json::Value =
        serde_json::from_slice(body).map_err(|_| DocumentError::NotAReportDocument)?;
    let link_base = format!("{}{PREFIX}", base.trim_end_matches('/'));
    for link in links {
        let segments = parse_path(link.path).ok_or(DocumentError::NotAReportDocument)?;
        let Some((last, parents)) = segments.split_last() else {
            return Err(DocumentError::NotAReportDocument);
        };
        let Segment::Member(name) = *last else {
            return Err(DocumentError::NotAReportDocument);
        };
        let mut objects = Vec::new();
        collect_parents(&mut doc, parents, &mut objects)?;
        for object in objects {
            let compression = match link.compression.and_then(|c| object.remove(c)) {
                None | Some(serde_json::Value::Null) => None,
                Some(serde_json::Value::String(c)) => Some(c),
                Some(_) => return Err(DocumentError::NotAReportDocument),
            };
            match object.get_mut(name) {
                None | Some(serde_json::Value::Null) => {}
                Some(serde_json::Value::String(url)) => {
                    let token = token_for(url, compression.as_deref(), link.opaque)?;
                    *url = format!("{link_base}{token}");
                }
                Some(_) => return Err(DocumentError::NotAReportDocument),
            }
        }
    }
    serde_json::to_vec(&doc).map_err(|_| DocumentError::NotAReportDocument)
}

/// The objects at `path` (array elements expanded); absent or null steps yield nothing, any
/// other shape than the model's is an error.
fn collect_parents<'v>(
    value: &'v mut serde_json::Value,
    path: &[Segment<'_>],
    out: &mut Vec<&'v mut serde_json::Map<String, serde_json::Value>>,
) -> Result<(), DocumentError> {
    let Some((first, rest)) = path.split_first() else {
        return match value {
            serde_json::Value::Object(map) => {
                out.push(map);
                Ok(())
            }
            serde_json::Value::Null => Ok(()),
            _ => Err(DocumentError::NotAReportDocument),
        };
    };
    match (first, value) {
        (_, serde_json::Value::Null) => Ok(()),
        (Segment::Member(name), serde_json::Value::Object(map)) => match map.get_mut(*name) {
            Some(child) => collect_parents(child, rest, out),
            None => Ok(()),
        },
        (Segment::Items, serde_json::Value::Array(items)) => {
            for item in items {
                collect_parents(item, rest, out)?;
            }
            Ok(())
        }
        _ => Err(DocumentError::NotAReportDocument),
    }
}

impl Gateway {
    /// `GET /v1/documents/{token}`: the report document behind a link this gateway issued,
    /// downloaded and streamed through the caller's role policy.
    pub(in crate::proxy) async fn document<B>(
        &self,
        req: Request<B>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use futures_util::StreamExt;
        if req.method() != http::Method::GET {
            return Err(ProxyError::NotFound);
        }
        // The link is the credential, as Amazon's presigned URL is: no header is needed, and
        // any the SDK sends is ignored. Forged, tampered or expired: refused (and audited).
        ctx.document_link = true;
        let token = &req.uri().path()[PREFIX.len()..];
        let claims = crate::documents::link::open(&self.master_key, token, unix_now())?;
        ctx.tool = Some(claims.tool.clone());
        ctx.seller = Some(claims.seller_id.clone());
        // Served while the tool it was issued to exists, is not revoked, still may act for
        // the seller, and (if pinned) presents its client certificate.
        let client = self
            .store
            .client(&claims.client_id)
            .await?
            .filter(|c| c.revoked_at.is_none() && c.tool == claims.tool)
            .ok_or(ProxyError::Document(
                crate::documents::DocumentError::LinkInvalid,
            ))?;
        ctx.client_id = Some(client.id.clone());
        ctx.role = Some(client.role.clone());
        // Credentials are not needed, but a request that names another tool is refused: a link
        // is the tool's own, not something to pass between tools.
        let h = req.headers();
        if h.contains_key(header::AUTHORIZATION) || h.contains_key(crate::spapi::ACCESS_TOKEN) {
            if let Ok(presenter) = caller::authenticate(&*self.store, h, unix_now()).await {
                if presenter.client.id != client.id {
                    return Err(caller::CallerError::SellerNotAllowed.into());
                }
            }
        }
        let caller = caller::Caller {
            client,
            token_seller: None,
            via: caller::Via::DocumentLink,
        };
        caller::check_client_cert(
            &caller,
            &self.client_pins(),
            req.extensions().get::<crate::server::tls::PeerCert>(),
        )?;
        if !caller.client.allows_seller(&claims.seller_id) {
            return Err(caller::CallerError::SellerNotAllowed.into());
        }
        match self.store.seller(&claims.seller_id).await? {
            None => return Err(ProxyError::UnknownSeller),
            Some(s) if s.status == SellerStatus::Deauthorized => {
                return Err(ProxyError::SellerDeauthorized)
            }
            Some(_) => {}
        }
        if claims.opaque && !passes_opaque(self.roles.get(&caller.client.role)) {
            return Err(ProxyError::DocumentNotForRole);
        }
        let role = self.roles.get(&caller.client.role).clone();
        let policy = RolePolicy::new(role, &self.master_key, &claims.seller_id);
        // Audited by `handle` when the stream ends: the categories the redactor emitted. Set
        // before the fetch, so that a record of a download cut short names it too. The whole
        // download, body included, ends at the deadline.
        let deadline = tokio::time::Instant::now() + self.outbound.document_timeout();
        let (policy, emitted) = accounting::Noting::new(policy, deadline);
        ctx.upstream_called = true;
        ctx.document = Some((claims.document_id.clone(), emitted));
        // Only https to Amazon's document hosts, public addresses, no redirects.
        let resp = self
            .outbound
            .get(&claims.url, DOCUMENT_HEADER_TIMEOUT)
            .await?;
        let input = resp.into_body().into_data_stream();
        let redacted = crate::documents::redact(
            input,
            claims.compression.is_some(),
            policy,
            crate::documents::Limits::default(),
        )
        .map(|chunk| {
            chunk
                .map(http_body::Frame::data)
                .map_err(|e| Box::new(e) as BoxError)
        });
        let mut out = Response::new(BodyExt::boxed(http_body_util::StreamBody::new(redacted)));
        out.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/octet-stream"),
        );
        out.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(out)
    }

    /// The document URLs of a response (the map's `link`s) replaced by the gateway's signed
    /// links, each good for this tool, seller and role for 5 minutes.
    pub(in crate::proxy) fn link_documents(
        &self,
        bytes: &[u8],
        op_map: &crate::pii::OpMap,
        seller_id: &str,
        params: &[(&'static str, String)],
        ctx: &Ctx,
    ) -> Result<Vec<u8>, ProxyError> {
        // Never from the request's Host: SDKs send Amazon's host or a mangled one. A tool in a
        // forward-proxy tunnel reaches only Amazon's hosts: its links name the tunnel's host,
        // so it fetches them back through the forward proxy.
        let base = match &ctx.tunnel {
            Some(tunnel) => format!("https://{}", tunnel.0),
            None => self.public_url.clone().ok_or(ProxyError::NoPublicUrl)?,
        };
        let now = unix_now();
        // The document's id: the request's path parameters (e.g. the report document id).
        let document_id = params
            .iter()
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
            .join("/");
        let (client_id, tool, role_name) = (
            ctx.client_id.clone().unwrap_or_default(),
            ctx.tool.clone().unwrap_or_default(),
            ctx.role.clone().unwrap_or_default(),
        );
        rewrite_links(bytes, &op_map.links, &base, |url, compression, opaque| {
            let claims = crate::documents::link::LinkClaims {
                opaque,
                url: url.to_string(),
                compression: compression.map(str::to_string),
                seller_id: seller_id.to_string(),
                tool: tool.clone(),
                client_id: client_id.clone(),
                role: role_name.clone(),
                document_id: document_id.clone(),
                expires_at: now + crate::documents::link::DEFAULT_TTL_SECONDS,
            };
            crate::documents::link::issue(&self.master_key, &claims, now)
        })
        .map_err(|_| ProxyError::UnsafeResponse("document links not in the model's shape"))
    }
}

/// Longest wait for a report document's response headers.
const DOCUMENT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;

    fn links(spec: &[(&'static str, Option<&'static str>)]) -> Vec<LinkSpec> {
        spec.iter()
            .map(|(path, compression)| LinkSpec {
                path,
                compression: *compression,
                opaque: false,
            })
            .collect()
    }

    #[test]
    fn every_link_of_the_map_becomes_a_gateway_link_and_nothing_else_changes() {
        let body = br#"{"a":[{"url":"https://s3.example/1","zip":"GZIP","keep":1},{"url":null},{}],
            "b":{"c":{"u":"https://s3.example/2"}},"other":"https://elsewhere.example/x"}"#;
        let mut seen = Vec::new();
        let out = rewrite_links(
            body,
            &links(&[
                ("a[].url", Some("zip")),
                ("b.c.u", None),
                ("missing.u", None),
            ]),
            "https://gw.example/",
            |url, compression, _| {
                seen.push((url.to_string(), compression.map(str::to_string)));
                Ok(format!("T{}", seen.len()))
            },
        )
        .unwrap();
        let out: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"a":[{"url":"https://gw.example/v1/documents/T1","keep":1},{"url":null},{}],
                "b":{"c":{"u":"https://gw.example/v1/documents/T2"}},"other":"https://elsewhere.example/x"})
        );
        assert_eq!(
            seen,
            vec![
                ("https://s3.example/1".to_string(), Some("GZIP".to_string())),
                ("https://s3.example/2".to_string(), None)
            ]
        );
    }

    #[test]
    fn a_link_in_an_unexpected_shape_fails_closed() {
        let spec = links(&[("a[].url", None)]);
        for bad in [
            &br#"{"a":[{"url":7}]}"#[..],
            br#"{"a":{"url":"https://s3.example/1"}}"#,
            br#"{"a":["https://s3.example/1"]}"#,
            b"not json",
        ] {
            let out = rewrite_links(bad, &spec, "https://gw", |_, _, _| Ok("T".into()));
            assert!(out.is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }
}
