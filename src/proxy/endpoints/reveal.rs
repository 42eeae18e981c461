//! `POST /v1/pii/reveal`: decrypts `spgate:v1` field envelopes for a tool whose role may reveal
//! their category, only while the order's retention lasts.
//!
//! An envelope names its data key; the key belongs to one (seller, order). The plaintext inside
//! starts with the category it was encrypted as (`<category>:<value>`), so the category a caller
//! is asking about cannot be lied about. Each value is answered on its own: revealed, or an error
//! code (`Forbidden`, `Expired`, `Invalid`); every attempt is audited by the caller of
//! [`reveal`], never with a value.

use http::{header, HeaderValue, Response};
use http_body::Body as HttpBody;
use serde::Deserialize;

use crate::auth::caller::{self, Caller};
use crate::crypto::{self, DataKey};
use crate::net::body::{self, Body, BoxError};
use crate::pii::{Category, Role};
use crate::proxy::rescue::ProxyError;
use crate::proxy::{unix_now, Ctx, Gateway};
use crate::secret::Secret;
use crate::store::SellerStatus;

/// The path of the reveal endpoint.
pub const PATH: &str = "/v1/pii/reveal";
/// Largest request body.
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Most values per request.
pub const MAX_VALUES: usize = 100;

/// Where the data keys of orders are found (the vault). `None` once the order's retention has
/// ended and its key was destroyed, or for a key id never issued.
#[async_trait::async_trait]
pub trait KeyLookup: Send + Sync {
    /// The (seller, order id, key) a key id belongs to, while it exists.
    async fn key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, LookupError>;
}

#[async_trait::async_trait]
impl KeyLookup for crate::vault::Vault {
    async fn key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, LookupError> {
        match crate::vault::Vault::key_by_id(self, key_id).await {
            Ok(found) => Ok(found.map(|(order, key)| OrderKey {
                seller: order.seller,
                order_id: order.order_id,
                key,
            })),
            Err(e) => Err(LookupError {
                unavailable: matches!(&e, crate::vault::VaultError::Store(s) if s.is_unavailable()),
                message: e.to_string(),
            }),
        }
    }
}

/// An order's data key and what it belongs to.
pub struct OrderKey {
    /// The seller whose order it is.
    pub seller: String,
    /// The order id (the envelope's associated data).
    pub order_id: String,
    /// The key.
    pub key: DataKey,
}

/// The key store failed (message without values).
#[derive(Debug, thiserror::Error)]
#[error("the key store failed: {message}")]
pub struct LookupError {
    /// The store is unreachable or overloaded right now (answered 503 with `Retry-After`), as
    /// opposed to a defect or bad data (500).
    pub unavailable: bool,
    /// What failed.
    pub message: String,
}

/// Why a reveal request was refused as a whole.
#[derive(Debug, thiserror::Error)]
pub enum RevealError {
    /// The body is not `{"values": [...]}` with 1 to 100 strings.
    #[error("bad reveal request: {0}")]
    BadRequest(&'static str),
    /// The key store failed.
    #[error(transparent)]
    Lookup(#[from] LookupError),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    values: Vec<String>,
}

/// The outcome for one value (what is audited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Decrypted and returned.
    Revealed,
    /// The role may not reveal this category, or the tool may not act for the order's seller.
    Forbidden,
    /// The order's retention ended (its key is destroyed) or the key never existed.
    Expired,
    /// Not an envelope, or it does not open.
    Invalid,
}

impl Outcome {
    /// The name used in responses and audit records.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Revealed => "revealed",
            Outcome::Forbidden => "Forbidden",
            Outcome::Expired => "Expired",
            Outcome::Invalid => "Invalid",
        }
    }
}

/// One value's answer, and the facts for its audit record.
pub struct Answer {
    /// What happened.
    pub outcome: Outcome,
    /// The category, when the envelope opened.
    pub category: Option<Category>,
    /// The seller and order the key belongs to, when known.
    pub seller: Option<String>,
    /// The order id, when known.
    pub order_id: Option<String>,
    /// The plaintext, only when revealed.
    pub value: Option<Secret<String>>,
}

/// Answers a reveal request body for this caller and role.
pub async fn reveal(
    body: &[u8],
    caller: &Caller,
    role: &Role,
    keys: &dyn KeyLookup,
) -> Result<Vec<Answer>, RevealError> {
    let req: Request = serde_json::from_slice(body).map_err(|_| {
        RevealError::BadRequest("the body must be {\"values\": [\"spgate:v1:...\"]}")
    })?;
    if req.values.is_empty() || req.values.len() > MAX_VALUES {
        return Err(RevealError::BadRequest("send between 1 and 100 values"));
    }
    let mut answers = Vec::with_capacity(req.values.len());
    for value in &req.values {
        answers.push(one(value, caller, role, keys).await?);
    }
    Ok(answers)
}

async fn one(
    envelope: &str,
    caller: &Caller,
    role: &Role,
    keys: &dyn KeyLookup,
) -> Result<Answer, LookupError> {
    let mut answer = Answer {
        outcome: Outcome::Invalid,
        category: None,
        seller: None,
        order_id: None,
        value: None,
    };
    let Some((key_id, _)) = crypto::parse_field(envelope) else {
        return Ok(answer);
    };
    let Some(found) = keys.key_by_id(key_id).await? else {
        answer.outcome = Outcome::Expired;
        return Ok(answer);
    };
    answer.seller = Some(found.seller.clone());
    answer.order_id = Some(found.order_id.clone());
    let seller_ok = caller.client.allows_seller(&found.seller)
        && caller
            .token_seller
            .as_deref()
            .is_none_or(|bound| bound == found.seller);
    if !seller_ok {
        answer.outcome = Outcome::Forbidden;
        return Ok(answer);
    }
    let Ok((category, value)) = crate::pii::keys::open_value(&found.key, &found.order_id, envelope)
    else {
        return Ok(answer);
    };
    answer.category = Some(category);
    if !role.may_reveal(category) {
        answer.outcome = Outcome::Forbidden;
        return Ok(answer);
    }
    answer.outcome = Outcome::Revealed;
    answer.value = Some(value);
    Ok(answer)
}

/// The response body: one entry per value, in order.
pub fn response_body(answers: &[Answer]) -> serde_json::Value {
    let values: Vec<serde_json::Value> = answers
        .iter()
        .map(|a| match (&a.value, a.outcome) {
            (Some(v), Outcome::Revealed) => serde_json::json!({
                "value": v.expose(),
                "category": a.category.map(Category::as_str),
                "orderId": a.order_id,
            }),
            (_, outcome) => serde_json::json!({
                "error": {
                    "code": outcome.as_str(),
                    "message": match outcome {
                        Outcome::Forbidden => "This tool may not reveal this value.",
                        Outcome::Expired => "The order's retention has ended; the value can no longer be revealed.",
                        _ => "Not a value encrypted by this gateway.",
                    }
                }
            }),
        })
        .collect();
    serde_json::json!({ "values": values })
}

impl Gateway {
    /// `POST /v1/pii/reveal`: decrypts envelopes for a role allowed to, while the order's key
    /// lives; every value asked about is audited (outcome, category, order; never the value).
    pub(in crate::proxy) async fn reveal<B>(
        &self,
        req: http::Request<B>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        use crate::audit::record::{Id, Kind, PiiUse, Reason, Record};
        if req.method() != http::Method::POST {
            return Err(ProxyError::NotFound);
        }
        let caller =
            caller::authenticate_request(&*self.store, &self.client_pins(), &req, unix_now())
                .await?;
        ctx.tool = Some(caller.client.tool.clone());
        ctx.role = Some(caller.client.role.clone());
        let body = crate::server::peers::read_body(
            req.into_body(),
            MAX_BODY_BYTES,
            self.limits.body_read_timeout,
        )
        .await?;
        let role = self.roles.get(&caller.client.role);
        let mut answers = reveal(&body, &caller, role, &self.vault).await?;
        // Only for sellers still connected: a removed or deauthorized seller's data stays sealed.
        for a in answers.iter_mut() {
            if let (Outcome::Revealed, Some(seller)) = (a.outcome, &a.seller) {
                let active = self
                    .store
                    .seller(seller)
                    .await?
                    .is_some_and(|s| s.status != SellerStatus::Deauthorized);
                if !active {
                    a.outcome = Outcome::Forbidden;
                    a.value = None;
                }
            }
        }
        let mut records = Vec::with_capacity(answers.len());
        let mut notes = Vec::with_capacity(answers.len());
        for a in &answers {
            let mut r = Record::new(Kind::Reveal)
                .with_tool(&caller.client.tool)
                .with_role(&caller.client.role)
                .with_reason(match a.outcome {
                    Outcome::Revealed => Reason::from_static("revealed"),
                    Outcome::Forbidden => Reason::from_static("forbidden"),
                    Outcome::Expired => Reason::from_static("expired"),
                    Outcome::Invalid => Reason::from_static("invalid"),
                });
            if let Some(seller) = &a.seller {
                r = r.with_seller(seller);
            }
            r.order_id = a.order_id.as_deref().map(Id::lossy);
            if let (Some(category), Outcome::Revealed) = (a.category, a.outcome) {
                r.pii = vec![PiiUse {
                    category,
                    action: crate::pii::Action::Pass,
                }];
            }
            notes.push(r.withheld_note());
            records.push(self.auditor.record_durable(r));
        }
        // No value goes out before every record of the reveal is written (one group commit).
        let written = futures_util::future::join_all(records).await;
        if written.iter().any(Result::is_err) {
            // The reveal answers 503: a record that was written says "revealed"; a follow-up
            // says it was withheld (the failed ones are rewritten or followed up already).
            for (note, written) in notes.into_iter().zip(&written) {
                if written.is_ok() {
                    self.auditor.record_async(note).await;
                }
            }
            return Err(ProxyError::AuditUnavailable);
        }
        let json = serde_json::to_vec(&response_body(&answers))
            .map_err(|_| ProxyError::UnsafeResponse("unserializable"))?;
        let mut resp = Response::new(body::full(json));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::caller::Via;
    use crate::pii::Action;
    use crate::store::ClientRecord;
    use std::collections::HashMap;

    struct Keys(HashMap<String, (String, String, DataKey)>);

    #[async_trait::async_trait]
    impl KeyLookup for Keys {
        async fn key_by_id(&self, key_id: &str) -> Result<Option<OrderKey>, LookupError> {
            Ok(self.0.get(key_id).map(|(s, o, k)| OrderKey {
                seller: s.clone(),
                order_id: o.clone(),
                key: k.clone(),
            }))
        }
    }

    fn caller(sellers: &[&str], bound: Option<&str>) -> Caller {
        Caller {
            client: ClientRecord {
                id: "cli_test".into(),
                key_prefix: "spg_test".into(),
                tool: "crm".into(),
                role: "crm".into(),
                key_hash: String::new(),
                sellers: sellers.iter().map(|s| s.to_string()).collect(),
                created_at: 0,
                revoked_at: None,
            },
            token_seller: bound.map(str::to_string),
            via: Via::ApiKey,
        }
    }

    #[tokio::test]
    async fn values_are_revealed_only_for_granted_categories_sellers_and_live_keys() {
        let key = DataKey::generate().unwrap();
        let order = "902-0000000-0000001";
        let seal = crate::pii::keys::seal_value;
        let name = seal(&key, order, Category::Name, "Jane Example").unwrap();
        let phone = seal(&key, order, Category::Phone, "+1 206 555 0100").unwrap();
        let other = DataKey::generate().unwrap();
        let gone = seal(&other, order, Category::Name, "Jane Example").unwrap();
        let keys = Keys(HashMap::from([(
            key.id().to_string(),
            ("A1SELLER".to_string(), order.to_string(), key.clone()),
        )]));
        let role = Role::new([(Category::Name, Action::Encrypt)]).with_reveal([Category::Name]);
        let body = serde_json::to_vec(&serde_json::json!({
            "values": [name, phone, gone, "plain text", format!("{name}x")]
        }))
        .unwrap();
        let answers = reveal(&body, &caller(&["A1SELLER"], None), &role, &keys)
            .await
            .unwrap();
        let outcomes: Vec<_> = answers.iter().map(|a| a.outcome).collect();
        assert_eq!(
            outcomes,
            [
                Outcome::Revealed,
                Outcome::Forbidden,
                Outcome::Expired,
                Outcome::Invalid,
                Outcome::Invalid
            ]
        );
        let json = response_body(&answers).to_string();
        assert!(json.contains("Jane Example"));
        assert!(!json.contains("555"), "{json}");
        assert_eq!(answers[1].category, Some(Category::Phone));

        // Another seller's tool, or a drop-in token bound to another seller: forbidden.
        for c in [caller(&["A2OTHER"], None), caller(&["*"], Some("A2OTHER"))] {
            let answers = reveal(&body, &c, &role, &keys).await.unwrap();
            assert_eq!(answers[0].outcome, Outcome::Forbidden);
            assert!(!response_body(&answers).to_string().contains("Jane"));
        }
        for bad in [
            &b"{}"[..],
            b"{\"values\": []}",
            b"not json",
            b"{\"values\": [\"a\"], \"extra\": 1}",
        ] {
            assert!(matches!(
                reveal(bad, &caller(&["*"], None), &role, &keys).await,
                Err(RevealError::BadRequest(_))
            ));
        }
    }
}
