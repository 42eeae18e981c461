//! Operations keyed by a seller id answer only that seller's token, as Amazon's do: a token of
//! seller A asking for seller B's listings is refused 403. `searchListingsItems` for the
//! token's own seller answers an empty page when no static example matches, so the gateway's
//! onboarding can confirm which seller a freshly exchanged refresh token belongs to.

use http::StatusCode;

use super::{body, json_response, lock, spapi_error_details, BoxBody, Inner};
use crate::catalog::Operation;

/// The operation the gateway's onboarding uses to confirm a seller id.
pub(super) const CONFIRM_OPERATION: &str = "listingsItems_2021-08-01.searchListingsItems";

/// A refusal or an answer for an operation keyed by `sellerId`; `None` to continue as usual
/// (no seller id in the path, or one the sandbox does not know: the static examples use
/// placeholders such as `SellerId`).
pub(super) fn answer(
    inner: &Inner,
    op: &Operation,
    params: &[(&str, String)],
    caller_seller: Option<&str>,
) -> Option<http::Response<BoxBody>> {
    let asked = params
        .iter()
        .find(|(k, _)| *k == "sellerId")
        .map(|(_, v)| v.as_str())?;
    if caller_seller == Some(asked) {
        return (op.key == CONFIRM_OPERATION).then(|| {
            json_response(
                StatusCode::OK,
                body::full(r#"{"numberOfResults":0,"items":[]}"#),
                Some(op),
            )
        });
    }
    let known = {
        let lwa = lock(&inner.lwa);
        lwa.sellers.values().any(|s| s == asked) || lwa.codes.values().any(|(s, _)| s == asked)
    };
    known.then(|| {
        spapi_error_details(
            StatusCode::FORBIDDEN,
            "Unauthorized",
            "Access to requested resource is denied.",
            "",
        )
    })
}
