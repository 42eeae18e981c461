//! Gateway Restricted Data Tokens: a tool's `createRestrictedDataToken` (Tokens API 2021-03-01,
//! `POST /tokens/2021-03-01/restrictedDataToken`) is answered by the gateway with its own token,
//! in Amazon's shape (`{"restrictedDataToken", "expiresIn": 3600}`), so SDKs' RDT flows work
//! unchanged while no Amazon RDT ever reaches a tool.
//!
//! A gateway RDT is `spgrdt_` followed by its claims sealed under the master key (AES-256-GCM,
//! associated data `gateway-rdt`): the tool's client id and name, the seller, the restricted
//! resources asked for (each routed to its catalogued operation, specific or generic path, and
//! the `dataElements` the tool's role may receive) and the expiry. It cannot be forged or
//! altered without the master key, and any instance holding that key accepts it (no shared
//! state). Presented in `x-amz-access-token` on one of its resources, for its seller, by its tool
//! (when the request also carries an API key, that key's tool), it stands for the tool like a
//! drop-in token: the request runs through the whole pipeline, the gateway obtains the real RDT
//! itself ([`crate::auth::rdt`]), asking for no more `dataElements` than the token names, and the
//! role's policy, narrowed to what those elements cover, applies. Anywhere else it is refused
//! with Amazon's answers (403 `Unauthorized`, "Access to requested resource is denied.", with
//! Amazon's details for an expired or invalid token), and audited.

use http::{header, HeaderValue, Method, Request, Response};
use http_body::Body as HttpBody;
use serde::{Deserialize, Serialize};

use crate::auth::caller::{self, Caller, Via};
use crate::auth::rdt::{self as amazon_rdt, Need};
use crate::catalog::{Catalog, Operation};
use crate::crypto::{CryptoError, MasterKey};
use crate::net::body::{self, Body, BoxError};
use crate::pii::{Category, Role};
use crate::proxy::rescue::ProxyError;
use crate::proxy::{unix_now, Ctx, Gateway};
use crate::store::SellerRecord;

/// How every gateway RDT begins (Amazon's begin `Atz.sprdt|`).
pub const TOKEN_PREFIX: &str = "spgrdt_";

/// A gateway RDT's lifetime, in seconds: Amazon's (`expiresIn` 3600).
pub const LIFETIME_SECONDS: i64 = 3600;

/// Amazon's limit on restricted resources per token.
pub const MAX_RESOURCES: usize = 50;

/// The longest resource path accepted (SP-API paths are far shorter): 50 of them still make a
/// token that fits in `server.max_header_bytes`' default (32 KiB).
pub const MAX_PATH_BYTES: usize = 256;

/// The longest `createRestrictedDataToken` body the gateway reads (50 resources fit easily).
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// The associated data every gateway RDT is sealed with.
const AAD: &[u8] = b"gateway-rdt";

/// The `dataElements` Amazon defines (Orders v0 getOrders, getOrder, getOrderItems).
pub const DATA_ELEMENTS: [&str; 3] = ["buyerInfo", "shippingAddress", "buyerTaxInformation"];

/// Why a gateway RDT was not issued or not accepted. Never carries the token.
#[derive(Debug, thiserror::Error)]
pub enum GatewayRdtError {
    /// The body is not JSON, or not a createRestrictedDataToken request.
    #[error("the body is not a createRestrictedDataToken request")]
    Malformed,
    /// `restrictedResources` is missing or empty.
    #[error("restrictedResources is missing or empty")]
    NoResources,
    /// More than [`MAX_RESOURCES`] resources.
    #[error("more than {MAX_RESOURCES} restricted resources")]
    TooManyResources,
    /// A resource lacks a method of GET, PUT, POST or DELETE, or an absolute path.
    #[error("a restricted resource has no valid method or path")]
    BadResource,
    /// `dataElements` names something Amazon does not define.
    #[error("dataElements names an element Amazon does not define")]
    BadDataElements,
    /// `targetApplication` asks to delegate to another application, which the gateway does not.
    #[error("targetApplication delegation is not supported")]
    Delegation,
    /// A resource is no restricted operation, or the tool's role may receive nothing it returns.
    #[error("a resource is not a restricted operation the tool's role may receive")]
    NotRestricted,
    /// The token's lifetime is over.
    #[error("the gateway RDT has expired")]
    Expired,
    /// Not a token this gateway sealed (forged, altered, malformed, or under an unknown key),
    /// or its tool was revoked.
    #[error("the gateway RDT is revoked, malformed or invalid")]
    Invalid,
    /// The request is not one of the token's resources.
    #[error("the gateway RDT does not cover this resource")]
    WrongResource,
    /// The request acts for another seller than the token's.
    #[error("the gateway RDT was issued for another seller")]
    WrongSeller,
    /// The request's API key belongs to another tool than the token's.
    #[error("the gateway RDT was issued to another tool")]
    WrongTool,
    /// No randomness, or sealing failed.
    #[error("the gateway RDT could not be sealed: {0}")]
    Crypto(#[from] CryptoError),
}

/// What a gateway RDT grants. Holds ids and names only, never a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The tool's client id: the token is good while this client exists unrevoked.
    #[serde(rename = "c")]
    pub client_id: String,
    /// The tool's name.
    #[serde(rename = "t")]
    pub tool: String,
    /// The seller the token acts for.
    #[serde(rename = "s")]
    pub seller: String,
    /// The restricted resources it covers.
    #[serde(rename = "r")]
    pub resources: Vec<Resource>,
    /// Expiry, unix seconds.
    #[serde(rename = "e")]
    pub expires_at: i64,
}

/// One restricted resource of a gateway RDT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resource {
    /// The catalogued operation the resource's method and path route to.
    #[serde(rename = "o")]
    pub operation: String,
    /// The resource's path as asked: specific (`/orders/v0/orders/123-.../address`) or generic
    /// (`{orderId}` segments match any value).
    #[serde(rename = "p")]
    pub path: String,
    /// The `dataElements` granted: those asked for that the tool's role may receive (Orders v0
    /// getOrders, getOrder and getOrderItems only; empty elsewhere).
    #[serde(rename = "d", default, skip_serializing_if = "Vec::is_empty")]
    pub data_elements: Vec<String>,
}

/// A gateway RDT accepted for one request: the resource that covers it.
#[derive(Debug, Clone)]
pub struct Grant {
    /// The operation's `dataElements` granted, for operations that take them (`None` elsewhere).
    elements: Option<Vec<&'static str>>,
}

/// A presented gateway RDT whose claims are authentic and current, before the route is known.
pub struct Presented {
    claims: Claims,
}

/// The createRestrictedDataToken request body (Amazon's model).
#[derive(Deserialize)]
struct RdtRequest {
    #[serde(rename = "targetApplication")]
    target_application: Option<String>,
    #[serde(rename = "restrictedResources")]
    restricted_resources: Option<Vec<serde_json::Value>>,
}

/// Seals `claims` into a gateway RDT (no check of the expiry: [`open`] does that).
pub fn seal(key: &MasterKey, claims: &Claims) -> Result<String, GatewayRdtError> {
    let plain = serde_json::to_vec(claims).map_err(|_| GatewayRdtError::Malformed)?;
    Ok(format!("{TOKEN_PREFIX}{}", key.seal(&plain, AAD)?))
}

/// Opens a gateway RDT. Forged, altered, malformed or foreign tokens are
/// [`GatewayRdtError::Invalid`]; authentic ones are returned even when expired, so the refusal
/// can name the tool (the caller checks `expires_at`).
pub fn open(key: &MasterKey, token: &str) -> Result<Claims, GatewayRdtError> {
    let sealed = token
        .strip_prefix(TOKEN_PREFIX)
        .ok_or(GatewayRdtError::Invalid)?;
    let plain = key
        .open(sealed, AAD)
        .map_err(|_| GatewayRdtError::Invalid)?;
    serde_json::from_slice(plain.expose()).map_err(|_| GatewayRdtError::Invalid)
}

/// The gateway RDT a request presents in `x-amz-access-token`, if any (with an API key too, the
/// RDT's checks make sure both name the same tool).
pub fn presented<B>(req: &Request<B>) -> Option<&str> {
    req.headers()
        .get(crate::spapi::ACCESS_TOKEN)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| t.starts_with(TOKEN_PREFIX))
}

/// The resources a createRestrictedDataToken `body` asks for, validated as Amazon validates
/// them, each bound to what `role` may receive. Pure: catalog, role and bytes in, resources out.
pub fn resources(
    catalog: &Catalog,
    role: &Role,
    body: &[u8],
) -> Result<Vec<Resource>, GatewayRdtError> {
    let req: RdtRequest = serde_json::from_slice(body).map_err(|_| GatewayRdtError::Malformed)?;
    if req.target_application.is_some_and(|t| !t.is_empty()) {
        return Err(GatewayRdtError::Delegation);
    }
    let asked = req.restricted_resources.unwrap_or_default();
    if asked.is_empty() {
        return Err(GatewayRdtError::NoResources);
    }
    if asked.len() > MAX_RESOURCES {
        return Err(GatewayRdtError::TooManyResources);
    }
    asked.iter().map(|r| resource(catalog, role, r)).collect()
}

fn resource(
    catalog: &Catalog,
    role: &Role,
    value: &serde_json::Value,
) -> Result<Resource, GatewayRdtError> {
    let object = value.as_object().ok_or(GatewayRdtError::BadResource)?;
    let method = match object.get("method").and_then(|m| m.as_str()) {
        Some("GET") => Method::GET,
        Some("PUT") => Method::PUT,
        Some("POST") => Method::POST,
        Some("DELETE") => Method::DELETE,
        _ => return Err(GatewayRdtError::BadResource),
    };
    let path = object
        .get("path")
        .and_then(|p| p.as_str())
        .filter(|p| p.starts_with('/') && p.len() <= MAX_PATH_BYTES && !p.contains(['?', '#']))
        .ok_or(GatewayRdtError::BadResource)?;
    let asked: Vec<&str> = match object.get("dataElements") {
        None | Some(serde_json::Value::Null) => Vec::new(),
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().ok_or(GatewayRdtError::BadDataElements))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(GatewayRdtError::BadDataElements),
    };
    if !asked.iter().all(|e| DATA_ELEMENTS.contains(e)) {
        return Err(GatewayRdtError::BadDataElements);
    }
    // A generic path routes too: `{orderId}` is a value like any other to the router.
    let op = catalog
        .route(&method, path)
        .map(|r| r.operation)
        .filter(|op| op.restricted)
        .ok_or(GatewayRdtError::NotRestricted)?;
    let data_elements = match amazon_rdt::need(op, role) {
        Need::Refused => return Err(GatewayRdtError::NotRestricted),
        _ if !takes_data_elements(op) => Vec::new(),
        Need::Plain => Vec::new(),
        Need::Rdt(allowed) => DATA_ELEMENTS
            .iter()
            .filter(|e| asked.contains(e) && allowed.contains(e))
            .map(|e| e.to_string())
            .collect(),
    };
    Ok(Resource {
        operation: op.key.to_string(),
        path: path.to_string(),
        data_elements,
    })
}

/// Whether Amazon grants `op`'s buyer data by `dataElements` (Orders v0 getOrders, getOrder,
/// getOrderItems) rather than by the resource alone.
fn takes_data_elements(op: &Operation) -> bool {
    op.model == "ordersV0" && matches!(op.operation_id, "getOrders" | "getOrder" | "getOrderItems")
}

/// The buyer-PII categories one `dataElements` value covers in `op`'s responses.
fn element_categories(op: &Operation, element: &str) -> &'static [Category] {
    use Category::*;
    match (op.operation_id, element) {
        ("getOrderItems", "buyerInfo") => &[GiftMessage, CustomizationUrl],
        (_, "buyerInfo") => &[Name, Email, Company, TaxId, CoarseLocation],
        (_, "shippingAddress") => &[
            Name,
            Address,
            PostalCode,
            CoarseLocation,
            Phone,
            DeliveryInstructions,
        ],
        (_, "buyerTaxInformation") => &[TaxId, Company],
        _ => &[],
    }
}

/// Whether a resource path covers a request path: segment by segment equal (percent-decoded),
/// a `{param}` segment matching any non-empty one.
fn covers(resource: &str, request: &str) -> bool {
    let mut want = resource.split('/');
    let mut got = request.split('/');
    loop {
        match (want.next(), got.next()) {
            (None, None) => return true,
            (Some(w), Some(g)) => {
                let generic = w.starts_with('{') && w.ends_with('}') && w.len() > 2;
                if generic {
                    if g.is_empty() {
                        return false;
                    }
                } else {
                    // A segment that does not decode matches nothing (not even another one).
                    match (decode(w), decode(g)) {
                        (Some(w), Some(g)) if w == g => {}
                        _ => return false,
                    }
                }
            }
            _ => return false,
        }
    }
}

fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

// === impl Presented ===

impl Presented {
    /// The seller the token acts for.
    pub fn seller(&self) -> &str {
        &self.claims.seller
    }

    /// The grant for a request to `op` at `path`, if one of the token's resources covers it.
    pub fn covering(&self, op: &Operation, path: &str) -> Result<Grant, GatewayRdtError> {
        let resource = self
            .claims
            .resources
            .iter()
            .find(|r| r.operation == op.key && covers(&r.path, path))
            .ok_or(GatewayRdtError::WrongResource)?;
        let elements = takes_data_elements(op).then(|| {
            DATA_ELEMENTS
                .iter()
                .copied()
                .filter(|e| resource.data_elements.iter().any(|d| d == e))
                .collect()
        });
        Ok(Grant { elements })
    }
}

// === impl Grant ===

impl Grant {
    /// The `dataElements` the real RDT may ask for (`None`: the operation takes none).
    pub fn elements(&self) -> Option<&[&'static str]> {
        self.elements.as_deref()
    }

    /// `role` for a request under this grant: for operations that take `dataElements`, only the
    /// categories the granted elements cover (everything else dropped, as Amazon would not
    /// return it); elsewhere the role itself.
    pub fn narrow(&self, op: &Operation, role: &Role) -> Role {
        match &self.elements {
            None => role.clone(),
            Some(elements) => {
                let keep: Vec<Category> = elements
                    .iter()
                    .flat_map(|e| element_categories(op, e).iter().copied())
                    .collect();
                role.only(&keep)
            }
        }
    }
}

// === impl Gateway ===

impl Gateway {
    /// `createRestrictedDataToken`, answered by the gateway: the tool's own gateway RDT for the
    /// resources asked, bound to the tool, the seller and what the tool's role may receive.
    pub(in crate::proxy) async fn create_restricted_data_token<B>(
        &self,
        req: Request<B>,
        caller: &Caller,
        seller: Option<&SellerRecord>,
        ctx: &mut Ctx,
    ) -> Result<Response<Body>, ProxyError>
    where
        B: HttpBody<Data = bytes::Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let seller = seller.ok_or(ProxyError::UnknownSeller)?;
        if caller.via == Via::GatewayRdt {
            // An RDT never mints another (Amazon refuses an RDT on the Tokens API too).
            return Err(GatewayRdtError::WrongResource.into());
        }
        let body = crate::server::peers::read_body(
            req.into_body(),
            MAX_REQUEST_BYTES,
            self.limits.body_read_timeout,
        )
        .await?;
        let role = self.roles.get(&caller.client.role);
        let resources = resources(self.catalog, role, &body)?;
        let now = unix_now();
        let claims = Claims {
            client_id: caller.client.id.clone(),
            tool: caller.client.tool.clone(),
            seller: seller.selling_partner_id.clone(),
            resources,
            expires_at: now + LIFETIME_SECONDS,
        };
        let token = seal(&self.master_key, &claims)?;
        ctx.gateway_rdt = true;
        let json = serde_json::json!({
            "restrictedDataToken": token,
            "expiresIn": LIFETIME_SECONDS,
        });
        let mut resp = Response::new(body::full(json.to_string()));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp.headers_mut()
            .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        Ok(resp)
    }

    /// Phase 2 for a request presenting a gateway RDT: the tool it was issued to, if the token
    /// is authentic, current, its tool unrevoked (and, with an API key too, that key's tool), and
    /// the request names no other seller. Which resource it is good for is checked after route.
    pub(in crate::proxy) async fn rdt_caller<B>(
        &self,
        req: &Request<B>,
        token: &str,
        ctx: &mut Ctx,
    ) -> Result<(Caller, Presented), ProxyError> {
        let claims = open(&self.master_key, token)?;
        // Authentic: the refusals below name the tool and seller in the audit record.
        ctx.client_id = Some(claims.client_id.clone());
        ctx.tool = Some(claims.tool.clone());
        ctx.seller = Some(claims.seller.clone());
        ctx.gateway_rdt = true;
        if unix_now() >= claims.expires_at {
            return Err(GatewayRdtError::Expired.into());
        }
        let client = self
            .store
            .client(&claims.client_id)
            .await?
            .filter(|c| c.revoked_at.is_none() && c.tool == claims.tool)
            .ok_or(GatewayRdtError::Invalid)?;
        let h = req.headers();
        let has_key = h
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|a| a.trim_start().get(7..))
            .is_some_and(|k| k.trim_start().starts_with(caller::KEY_PREFIX));
        if has_key {
            let other = caller::authenticate(&*self.store, h, unix_now()).await?;
            if other.client.id != client.id {
                return Err(GatewayRdtError::WrongTool.into());
            }
        }
        let named = h
            .get(caller::SELLER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if named.is_some_and(|s| s != claims.seller) {
            return Err(GatewayRdtError::WrongSeller.into());
        }
        let caller = Caller {
            client,
            token_seller: Some(claims.seller.clone()),
            via: Via::GatewayRdt,
        };
        caller::check_client_cert(
            &caller,
            &self.client_pins(),
            req.extensions().get::<crate::server::tls::PeerCert>(),
        )?;
        Ok((caller, Presented { claims }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pii::Action;

    fn role(cats: &[Category]) -> Role {
        Role::new(cats.iter().map(|c| (*c, Action::Pass)))
    }

    /// `body` asked by a tool of `role`: the resources granted, as (operation, path, elements),
    /// or the error's name.
    /// Resources granted: (operation, path, data elements).
    type Granted<'a> = &'a [(&'a str, &'a str, &'a [&'a str])];

    fn check(cats: &[Category], body: &str, expect: Result<Granted<'_>, &str>) {
        let got = resources(Catalog::builtin(), &role(cats), body.as_bytes());
        match (got, expect) {
            (Ok(got), Ok(want)) => {
                let got: Vec<(&str, &str, Vec<&str>)> = got
                    .iter()
                    .map(|r| {
                        (
                            r.operation.as_str(),
                            r.path.as_str(),
                            r.data_elements.iter().map(String::as_str).collect(),
                        )
                    })
                    .collect();
                let want: Vec<(&str, &str, Vec<&str>)> =
                    want.iter().map(|(o, p, e)| (*o, *p, e.to_vec())).collect();
                assert_eq!(got, want, "{body}");
            }
            (Err(e), Err(name)) => assert_eq!(format!("{e:?}"), name, "{body}"),
            (got, want) => panic!("{body}: got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn a_token_request_is_validated_as_amazon_does_and_bound_to_the_role() {
        use Category::*;
        let all = &Category::ALL[..];
        let address = &[Name, Address, PostalCode][..];
        check(
            all,
            r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]}"#,
            Ok(&[(
                "ordersV0.getOrderAddress",
                "/orders/v0/orders/{orderId}/address",
                &[],
            )]),
        );
        // dataElements: only those the role may receive; ignored where Amazon ignores them.
        check(
            address,
            r#"{"targetApplication":null,"restrictedResources":[
                {"method":"GET","path":"/orders/v0/orders/123-1234567-1234567","dataElements":["buyerInfo","shippingAddress"]},
                {"method":"GET","path":"/orders/v0/orders/123-1234567-1234567/address","dataElements":["buyerInfo"]}]}"#,
            Ok(&[
                (
                    "ordersV0.getOrder",
                    "/orders/v0/orders/123-1234567-1234567",
                    &["buyerInfo", "shippingAddress"],
                ),
                (
                    "ordersV0.getOrderAddress",
                    "/orders/v0/orders/123-1234567-1234567/address",
                    &[],
                ),
            ]),
        );
        check(
            &[Address],
            r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo","shippingAddress","buyerTaxInformation"]}]}"#,
            Ok(&[(
                "ordersV0.getOrders",
                "/orders/v0/orders",
                &["shippingAddress"],
            )]),
        );
        check(
            &[],
            r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["buyerInfo"]}]}"#,
            Ok(&[("ordersV0.getOrders", "/orders/v0/orders", &[])]),
        );
        let bad: &[(&[Category], &str, &str)] = &[
            (all, "not json", "Malformed"),
            (all, "[]", "Malformed"),
            (all, "{}", "NoResources"),
            (all, r#"{"restrictedResources":[]}"#, "NoResources"),
            (
                all,
                r#"{"restrictedResources":{"method":"GET","path":"/orders/v0/orders"}}"#,
                "Malformed",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"","path":"/orders/v0/orders"}]}"#,
                "BadResource",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"PATCH","path":"/orders/v0/orders"}]}"#,
                "BadResource",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET"}]}"#,
                "BadResource",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"orders/v0/orders"}]}"#,
                "BadResource",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders?x=1"}]}"#,
                "BadResource",
            ),
            (all, r#"{"restrictedResources":[7]}"#, "BadResource"),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":["everything"]}]}"#,
                "BadDataElements",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders","dataElements":"buyerInfo"}]}"#,
                "BadDataElements",
            ),
            (
                all,
                r#"{"targetApplication":"amzn1.sellerapps.app.other","restrictedResources":[{"method":"GET","path":"/orders/v0/orders"}]}"#,
                "Delegation",
            ),
            // Not restricted, not an operation, the wrong method, a role that receives nothing of it.
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"/catalog/2022-04-01/items"}]}"#,
                "NotRestricted",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"GET","path":"/nowhere"}]}"#,
                "NotRestricted",
            ),
            (
                all,
                r#"{"restrictedResources":[{"method":"POST","path":"/orders/v0/orders/{orderId}/address"}]}"#,
                "NotRestricted",
            ),
            (
                &[Email],
                r#"{"restrictedResources":[{"method":"GET","path":"/orders/v0/orders/{orderId}/address"}]}"#,
                "NotRestricted",
            ),
        ];
        for (cats, body, name) in bad {
            check(cats, body, Err(name));
        }
        let many: Vec<String> = (0..=MAX_RESOURCES)
            .map(|i| format!(r#"{{"method":"GET","path":"/orders/v0/orders/{i}/address"}}"#))
            .collect();
        check(
            all,
            &format!(r#"{{"restrictedResources":[{}]}}"#, many.join(",")),
            Err("TooManyResources"),
        );
    }

    #[test]
    fn a_resource_covers_its_own_path_and_generic_segments_any_value() {
        let cases = [
            (
                "/orders/v0/orders/{orderId}/address",
                "/orders/v0/orders/1-2-3/address",
                true,
            ),
            (
                "/orders/v0/orders/1-2-3/address",
                "/orders/v0/orders/1-2-3/address",
                true,
            ),
            (
                "/orders/v0/orders/1-2-3/address",
                "/orders/v0/orders/1%2D2-3/address",
                true,
            ),
            (
                "/orders/v0/orders/1-2-3/address",
                "/orders/v0/orders/1-2-4/address",
                false,
            ),
            (
                "/orders/v0/orders/{orderId}/address",
                "/orders/v0/orders//address",
                false,
            ),
            (
                "/orders/v0/orders/{orderId}",
                "/orders/v0/orders/1-2-3/address",
                false,
            ),
            (
                "/orders/v0/orders/{orderId}/address",
                "/orders/v0/orders/1-2-3",
                false,
            ),
            // Segments that are not UTF-8 once decoded match nothing, not even each other.
            ("/orders/v0/orders/%FF", "/orders/v0/orders/%FE", false),
            ("/orders/v0/orders/%FF", "/orders/v0/orders/%FF", false),
        ];
        for (resource, request, expect) in cases {
            assert_eq!(covers(resource, request), expect, "{resource} {request}");
        }
    }

    fn claims(resources: &str) -> Claims {
        Claims {
            client_id: "cli_1".into(),
            tool: "tool".into(),
            seller: "A1".into(),
            resources: serde_json::from_str::<Vec<(String, String, Vec<String>)>>(resources)
                .unwrap()
                .into_iter()
                .map(|(operation, path, data_elements)| Resource {
                    operation,
                    path,
                    data_elements,
                })
                .collect(),
            expires_at: 2_000_000_000,
        }
    }

    #[test]
    fn a_token_is_good_only_for_its_resources_and_elements() {
        let catalog = Catalog::builtin();
        let op = |k: &str| catalog.by_key(k).unwrap();
        let presented = Presented {
            claims: claims(
                r#"[["ordersV0.getOrderAddress","/orders/v0/orders/{orderId}/address",[]],
                    ["ordersV0.getOrder","/orders/v0/orders/1-2-3",["shippingAddress"]]]"#,
            ),
        };
        let address = op("ordersV0.getOrderAddress");
        let grant = presented
            .covering(address, "/orders/v0/orders/9-9-9/address")
            .unwrap();
        assert_eq!(grant.elements(), None);
        let get = op("ordersV0.getOrder");
        let grant = presented.covering(get, "/orders/v0/orders/1-2-3").unwrap();
        assert_eq!(grant.elements(), Some(&["shippingAddress"][..]));
        // The narrowed role keeps the address, drops the e-mail.
        let narrowed = grant.narrow(get, &role(&Category::ALL));
        assert!(narrowed.receives(Category::Address));
        assert!(!narrowed.receives(Category::Email));
        for (key, path) in [
            ("ordersV0.getOrder", "/orders/v0/orders/9-9-9"),
            (
                "ordersV0.getOrderBuyerInfo",
                "/orders/v0/orders/1-2-3/buyerInfo",
            ),
            ("ordersV0.getOrders", "/orders/v0/orders"),
        ] {
            assert!(
                matches!(
                    presented.covering(op(key), path),
                    Err(GatewayRdtError::WrongResource)
                ),
                "{key} {path}"
            );
        }
    }

    #[test]
    fn a_token_cannot_be_forged_or_altered_and_opens_only_under_its_key() {
        let key = MasterKey::from_base64("k1", &MasterKey::generate_base64().unwrap()).unwrap();
        let other = MasterKey::from_base64("k1", &MasterKey::generate_base64().unwrap()).unwrap();
        let c =
            claims(r#"[["ordersV0.getOrderAddress","/orders/v0/orders/{orderId}/address",[]]]"#);
        let token = seal(&key, &c).unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        assert_eq!(open(&key, &token).unwrap(), c);
        // Nothing about the claims can be read from the token.
        assert!(!token.contains("getOrderAddress") && !token.contains("cli_1"));
        let mut altered = token.clone().into_bytes();
        let last = altered.len() - 3;
        altered[last] = if altered[last] == b'A' { b'B' } else { b'A' };
        let altered = String::from_utf8(altered).unwrap();
        for bad in [
            altered.as_str(),
            &token[..token.len() - 4],
            "spgrdt_v1:k1:AAAA",
            "spgrdt_",
            "Atz.sprdt|IQEBLjAsAhRmHjNgHpi0U",
            &token[TOKEN_PREFIX.len()..],
        ] {
            assert!(
                matches!(open(&key, bad), Err(GatewayRdtError::Invalid)),
                "{bad}"
            );
        }
        assert!(matches!(
            open(&other, &token),
            Err(GatewayRdtError::Invalid)
        ));
    }
}
