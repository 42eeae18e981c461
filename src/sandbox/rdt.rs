//! Restricted Data Tokens: validating `createRestrictedDataToken` requests and checking whether
//! an RDT covers a request.
//!
//! A restricted resource names a method and a path, either specific
//! (`/orders/v0/orders/123-1234567-1234567/address`) or generic
//! (`/orders/v0/orders/{orderId}/address`). The path must route to a restricted operation.
//! `dataElements` (`buyerInfo`, `shippingAddress`, `buyerTaxInformation`) grant buyer PII in
//! Orders v0 `getOrder`, `getOrders` and `getOrderItems` responses.

use http::Method;
use serde_json::Value;

use super::orders::PiiGrants;
use crate::catalog::Catalog;

/// The catalog key of the operation this module serves.
pub(super) const OPERATION: &str = "tokens_2021-03-01.createRestrictedDataToken";

/// Amazon's limit on resources per RDT.
const MAX_RESOURCES: usize = 50;

/// One resource an RDT covers.
#[derive(Debug, Clone)]
pub(super) struct RdtResource {
    method: Method,
    /// Path segments, percent-decoded; `None` for a generic `{param}` segment.
    segments: Vec<Option<String>>,
    /// The PII the resource grants.
    pub(super) grants: PiiGrants,
}

impl RdtResource {
    /// Whether this resource covers a request: same method, and a path equal to the resource's
    /// or matching it where the resource has `{param}` segments.
    pub(super) fn covers(&self, method: &Method, path: &str) -> bool {
        if *method != self.method {
            return false;
        }
        let mut request = path.split('/');
        for expected in &self.segments {
            let Some(actual) = request.next() else {
                return false;
            };
            match expected {
                None => {
                    if actual.is_empty() {
                        return false;
                    }
                }
                Some(expected) => {
                    if decode(actual).as_deref() != Some(expected.as_str()) {
                        return false;
                    }
                }
            }
        }
        request.next().is_none()
    }
}

fn decode(segment: &str) -> Option<String> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .ok()
        .map(|s| s.into_owned())
}

/// Validates a `createRestrictedDataToken` body; the message explains what is wrong.
pub(super) fn parse_request(body: Option<&Value>) -> Result<Vec<RdtResource>, &'static str> {
    let body = body
        .and_then(Value::as_object)
        .ok_or("The request body must be a JSON object.")?;
    if body
        .get("targetApplication")
        .is_some_and(|v| !v.is_string())
    {
        return Err("targetApplication must be a string.");
    }
    let resources = body
        .get("restrictedResources")
        .and_then(Value::as_array)
        .ok_or("restrictedResources is required.")?;
    if resources.is_empty() || resources.len() > MAX_RESOURCES {
        return Err("restrictedResources must have between 1 and 50 entries.");
    }
    resources.iter().map(parse_resource).collect()
}

fn parse_resource(value: &Value) -> Result<RdtResource, &'static str> {
    let resource = value
        .as_object()
        .ok_or("Each restricted resource must be an object.")?;
    let method = match resource.get("method").and_then(Value::as_str) {
        Some("GET") => Method::GET,
        Some("PUT") => Method::PUT,
        Some("POST") => Method::POST,
        Some("DELETE") => Method::DELETE,
        _ => return Err("method must be one of GET, PUT, POST, DELETE."),
    };
    let path = resource
        .get("path")
        .and_then(Value::as_str)
        .filter(|p| p.starts_with('/'))
        .ok_or("path must be an absolute path.")?;
    let path = path.split('?').next().unwrap_or(path);
    let route = Catalog::builtin()
        .route(&method, path)
        .ok_or("path does not name a Selling Partner API operation.")?;
    if !route.operation.restricted {
        return Err("path does not name a restricted operation.");
    }
    let mut grants = PiiGrants::default();
    match resource.get("dataElements") {
        None | Some(Value::Null) => {}
        Some(Value::Array(elements)) => {
            for element in elements {
                match element.as_str() {
                    Some("buyerInfo") => grants.buyer_info = true,
                    Some("shippingAddress") => grants.shipping_address = true,
                    Some("buyerTaxInformation") => grants.buyer_tax_information = true,
                    _ => {
                        return Err("dataElements may contain only buyerInfo, shippingAddress and buyerTaxInformation.")
                    }
                }
            }
        }
        Some(_) => return Err("dataElements must be an array."),
    }
    let segments = path
        .split('/')
        .map(|segment| {
            if segment.starts_with('{') && segment.ends_with('}') {
                Ok(None)
            } else {
                decode(segment)
                    .map(Some)
                    .ok_or("path is not valid percent-encoded UTF-8.")
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RdtResource {
        method,
        segments,
        grants,
    })
}
