//! `includedData` of Orders 2026-01-01 names only Amazon's datasets: a value the gateway does not
//! know is refused with 400 InvalidInput in SP-API shape and never sent up (issue 11 item 7).

mod common;

use common::*;
use http::StatusCode;

#[tokio::test]
async fn an_unknown_included_data_value_is_refused_before_it_is_sent() {
    let gw = start_gateway(Options::default()).await;
    for query in [
        "includedData=BUYER,SECRETS",
        "IncludedData[]=recipientx",
        "includedData=",
    ] {
        let reply = gw
            .get(&format!(
                "/orders/2026-01-01/orders?marketplaceIds=A1PA6795UKMFR9&{query}"
            ))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{query}: {:?}",
            reply.body
        );
        let body = reply.json();
        assert_eq!(body["errors"][0]["code"], "InvalidInput", "{body}");
        assert!(body["errors"][0]["message"].is_string(), "{body}");
    }
    assert_eq!(
        gw.sandbox.received("orders_2026-01-01.searchOrders").len(),
        0,
        "nothing was sent up"
    );
    // Amazon's datasets still go up.
    let reply = gw
        .get("/orders/2026-01-01/orders?marketplaceIds=A1PA6795UKMFR9&includedData=BUYER,PROCEEDS")
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(
        gw.sandbox.received("orders_2026-01-01.searchOrders").len(),
        1
    );
}
