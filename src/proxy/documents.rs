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

use crate::crypto::MasterKey;
use crate::documents::{DocumentError, Redactor};
use crate::pii::keys::{Keys, NoOrderKeys, PseudonymKey};
use crate::pii::map::{parse_path, LinkSpec, Segment};
use crate::pii::transform::{apply_value, FieldOut};
use crate::pii::{Action, Category, Role};

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
    fn redact(&self, category: Category, value: &str, order_id: Option<&str>) -> Option<String> {
        let keys = Keys {
            pseudonym: &self.pseudonym,
            orders: &NoOrderKeys,
        };
        match apply_value(category, self.role.action(category), value, order_id, &keys) {
            FieldOut::Keep => Some(value.to_string()),
            FieldOut::Replace(v) => Some(v),
            FieldOut::Drop => None,
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
