//! Error answers of operations with buyer PII, for roles that do not pass every category of the
//! operation: Amazon's error messages and details are free text that may echo a buyer's name or
//! address, so only each error's `code` passes, with a generic message for the code and no
//! details ([`generic`]).
//!
//! A code is passed only when it looks like one (`[A-Za-z0-9_.:-]`, at most 64 characters);
//! otherwise, and when the body has no `errors` array, the code comes from the HTTP status.

use http::StatusCode;

use crate::spapi::{ErrorBody, ErrorItem};

/// The message for a code not in [`MESSAGES`].
pub const FALLBACK_MESSAGE: &str = "The request could not be completed.";

/// Generic messages by SP-API error code (the codes Amazon's models and docs name most).
const MESSAGES: [(&str, &str); 10] = [
    (
        "InvalidInput",
        "The request has missing or invalid parameters and cannot be parsed.",
    ),
    ("InvalidRequest", "The request is not valid."),
    (
        "Unauthorized",
        "Access to the requested resource is denied.",
    ),
    (
        "Forbidden",
        "Access to the requested resource is forbidden.",
    ),
    ("NotFound", "The requested resource does not exist."),
    (
        "QuotaExceeded",
        "You exceeded your quota for the requested resource.",
    ),
    (
        "Conflict",
        "The request conflicts with the resource's state.",
    ),
    (
        "InternalFailure",
        "An unexpected condition prevented Amazon from fulfilling the request.",
    ),
    (
        "ServiceUnavailable",
        "The service is temporarily overloaded or in maintenance.",
    ),
    (
        "RequestTimeout",
        "Amazon did not complete the request in time.",
    ),
];

/// The error body a role that does not pass every category of the operation receives: each
/// error's code, its generic message, empty details. `None` when the body is not JSON.
pub fn generic(status: StatusCode, body: &[u8]) -> Option<Vec<u8>> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let codes: Vec<String> = match value.get("errors").and_then(|e| e.as_array()) {
        Some(errors) if !errors.is_empty() => errors
            .iter()
            .map(|e| match e.get("code").and_then(|c| c.as_str()) {
                Some(code) if is_code(code) => code.to_string(),
                _ => code_for(status).to_string(),
            })
            .collect(),
        _ => vec![code_for(status).to_string()],
    };
    let out = ErrorBody {
        errors: codes
            .into_iter()
            .map(|code| ErrorItem {
                message: message_for(&code).to_string(),
                code,
                details: String::new(),
            })
            .collect(),
    };
    Some(out.to_bytes().to_vec())
}

/// Every `errors` member of a successful answer, at any depth, for a role that may not read
/// Amazon's free text: each error keeps its code (or `InvalidInput`), its message becomes the
/// generic one for the code and its details are emptied; an `errors` member that is not an
/// array (a string, an object) is replaced the same way; everything else in the body is left
/// as it is. `None` when the body is not JSON or has no `errors` member (nothing to do).
pub fn generic_errors_in(body: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !generalise_errors(&mut value) {
        return None;
    }
    serde_json::to_vec(&value).ok()
}

/// Rewrites every `errors` member under `value`; whether there was one.
fn generalise_errors(value: &mut serde_json::Value) -> bool {
    match value {
        serde_json::Value::Object(map) => {
            let mut found = false;
            for (key, member) in map.iter_mut() {
                if key == "errors" {
                    found = true;
                    *member = generic_list(member);
                } else {
                    found |= generalise_errors(member);
                }
            }
            found
        }
        serde_json::Value::Array(items) => items
            .iter_mut()
            .fold(false, |found, item| generalise_errors(item) | found),
        _ => false,
    }
}

/// An `errors` member with codes and generic messages only.
fn generic_list(errors: &serde_json::Value) -> serde_json::Value {
    let one = |e: &serde_json::Value| {
        let code = match e.get("code").and_then(|c| c.as_str()) {
            Some(code) if is_code(code) => code.to_string(),
            _ => "InvalidInput".to_string(),
        };
        serde_json::json!({
            "code": code,
            "message": message_for(&code),
            "details": "",
        })
    };
    match errors {
        serde_json::Value::Array(items) => items.iter().map(one).collect(),
        other => serde_json::Value::Array(vec![one(other)]),
    }
}

/// The generic message for a code.
pub fn message_for(code: &str) -> &'static str {
    MESSAGES
        .iter()
        .find(|(c, _)| *c == code)
        .map_or(FALLBACK_MESSAGE, |(_, m)| m)
}

/// Whether a string is shaped like an error code (and so cannot carry free text).
fn is_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'))
}

/// The code for a status when the body names none.
fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 | 403 => "Unauthorized",
        404 => "NotFound",
        429 => "QuotaExceeded",
        503 => "ServiceUnavailable",
        504 => "RequestTimeout",
        s if s >= 500 => "InternalFailure",
        _ => "InvalidInput",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(status: u16, input: &str, expect: serde_json::Value) {
        let out = generic(StatusCode::from_u16(status).unwrap(), input.as_bytes());
        let out: serde_json::Value = serde_json::from_slice(&out.unwrap()).unwrap();
        assert_eq!(out, expect, "{input}");
    }

    #[test]
    fn errors_in_a_successful_answer_keep_their_codes_only() {
        let body = br#"{"payload":{"AmazonOrderId":"111-1"},"errors":[{"code":"Partial","message":"Cannot ship to Jane Example, 1 Synthetic Way","details":"Jane"},{"message":"x"}]}"#;
        let out: serde_json::Value =
            serde_json::from_slice(&generic_errors_in(body).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"payload":{"AmazonOrderId":"111-1"},"errors":[
                {"code":"Partial","message":FALLBACK_MESSAGE,"details":""},
                {"code":"InvalidInput","message":message_for("InvalidInput"),"details":""}
            ]})
        );
        assert!(generic_errors_in(br#"{"payload":{}}"#).is_none());
        assert!(generic_errors_in(b"not json").is_none());
    }

    #[test]
    fn errors_at_any_depth_and_of_any_shape_keep_their_codes_only() {
        let body = br#"{"payload":{"Orders":[{"AmazonOrderId":"111-1","errors":[{"code":"Partial","message":"Jane Example","details":"1 Synthetic Way"}]}],"Summary":{"errors":{"code":"Odd","message":"Jane Example"}}},"x":{"errors":"Jane Example"}}"#;
        let out = String::from_utf8(generic_errors_in(body).unwrap()).unwrap();
        assert!(!out.contains("Jane") && !out.contains("Synthetic"), "{out}");
        let out: serde_json::Value = serde_json::from_str(&out).unwrap();
        let generic = |code: &str| serde_json::json!([{"code":code,"message":message_for(code),"details":""}]);
        assert_eq!(out["payload"]["Orders"][0]["errors"], generic("Partial"));
        assert_eq!(out["payload"]["Orders"][0]["AmazonOrderId"], "111-1");
        assert_eq!(out["payload"]["Summary"]["errors"], generic("Odd"));
        assert_eq!(out["x"]["errors"], generic("InvalidInput"));
    }

    #[test]
    fn only_codes_pass_with_generic_messages_and_no_details() {
        check(
            400,
            r#"{"errors":[{"code":"InvalidInput","message":"Jane Example at 1 Synthetic Way","details":"Jane"},{"code":"Custom.Code","message":"x"}],"payload":{"Name":"Jane"}}"#,
            serde_json::json!({"errors":[
                {"code":"InvalidInput","message":"The request has missing or invalid parameters and cannot be parsed.","details":""},
                {"code":"Custom.Code","message":FALLBACK_MESSAGE,"details":""}
            ]}),
        );
        check(
            404,
            r#"{"errors":[{"code":"Jane Example, 1 Synthetic Way","message":"m"}]}"#,
            serde_json::json!({"errors":[{"code":"NotFound","message":"The requested resource does not exist.","details":""}]}),
        );
        check(
            503,
            r#"{"message":"Jane Example"}"#,
            serde_json::json!({"errors":[{"code":"ServiceUnavailable","message":"The service is temporarily overloaded or in maintenance.","details":""}]}),
        );
        assert!(generic(StatusCode::BAD_REQUEST, b"Jane Example").is_none());
    }
}
