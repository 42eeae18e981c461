//! Report documents with buyer PII: `getReportDocument`'s `url` is rewritten to the gateway's
//! own short-lived signed link, and `GET /v1/documents/{token}` streams the download through the
//! role's policy ([`crate::documents::redact`]) with memory flat in the document's size.
//!
//! The link is only good for the tool it was issued to, for a seller that tool may still act
//! for, until it expires (5 minutes). `encrypt` needs an order's data key, which is I/O; inside
//! a streamed document it falls back to `drop` (fail closed), like any encrypt without a key.

use std::sync::Arc;

use crate::crypto::MasterKey;
use crate::documents::{self, link, DocumentError, Redactor};
use crate::pii::keys::{Keys, NoOrderKeys, PseudonymKey};
use crate::pii::transform::{apply_value, FieldOut};
use crate::pii::{Action, Category, Role};

/// Where the signed links live.
pub const PREFIX: &str = "/v1/documents/";

/// The operation whose response carries a document URL.
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

/// Rewrites a getReportDocument response so its `url` points at the gateway.
pub fn rewrite(
    body: &[u8],
    base: &str,
    master: &MasterKey,
    claims: impl FnOnce(String, Option<String>) -> link::LinkClaims,
    now: i64,
) -> Result<Vec<u8>, DocumentError> {
    let link_base = format!("{}{PREFIX}", base.trim_end_matches('/'));
    documents::rewrite_report_document(body, &link_base, |url, compression| {
        link::issue(
            master,
            &claims(url.to_string(), compression.map(str::to_string)),
            now,
        )
    })
}
