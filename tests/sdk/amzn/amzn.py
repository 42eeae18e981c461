"""Amazon's own Python SDK (amzn-sp-api), unmodified, against spgate: only the two endpoint URLs
change (`SPAPIClient(config, oauth_endpoint=..., endpoint=...)`, which the SDK offers).

Usage: amzn.py flow | rdt. Prints one JSON object: each step's outcome ({"ok": true, "ms": ...}
or {"ok": false, "status": ..., "code": ...}).

flow: getOrders, getOrderAddress (the gateway obtains the RDT), a 429 backed off from (the SDK
has no retry of its own; the urllib3 it sends with retries a GET answered 429 with Retry-After,
after sleeping that long), createReport -> getReport -> getReportDocument -> download (the SDK has
no download helper: a plain GET of the returned URL with no credentials, gunzipped only if
compressionAlgorithm says so).
rdt: the SDK's Tokens API mints an RDT (the gateway's own), then the SDK's Orders API uses it
as the access token on the resource it names, and on another one.

Environment: SPGATE_URL, SPGATE_LWA_CLIENT_ID, SPGATE_LWA_CLIENT_SECRET, SPGATE_REFRESH_TOKEN,
SPGATE_MARKETPLACE, SPGATE_REPORT_DOCUMENT (the sandbox's own gzip document: Amazon's static
getReport example names a document on Amazon's CDN).
"""
import gzip
import json
import os
import sys
import time

import requests
from spapi import ApiClient, ApiException, Configuration, SPAPIClient, SPAPIConfig
from spapi.api.orders_v0.orders_v0_api import OrdersV0Api
from spapi.api.reports_v2021_06_30.reports_api import ReportsApi
from spapi.api.tokens_v2021_03_01.tokens_api import TokensApi
from spapi.models.reports_v2021_06_30.create_report_specification import CreateReportSpecification
from spapi.models.tokens_v2021_03_01.create_restricted_data_token_request import (
    CreateRestrictedDataTokenRequest,
)
from spapi.models.tokens_v2021_03_01.restricted_resource import RestrictedResource

URL = os.environ["SPGATE_URL"].rstrip("/")
MARKETPLACE = os.environ["SPGATE_MARKETPLACE"]


def client():
    """The SDK's client with the gateway's drop-in credentials and URLs."""
    config = SPAPIConfig(
        client_id=os.environ["SPGATE_LWA_CLIENT_ID"],
        client_secret=os.environ["SPGATE_LWA_CLIENT_SECRET"],
        refresh_token=os.environ["SPGATE_REFRESH_TOKEN"],
        region="EU",
    )
    return SPAPIClient(config, oauth_endpoint=URL + "/auth/o2/token", endpoint=URL)


def step(fn):
    """Runs one step: {"ok": true, "ms", ...result} or {"ok": false, "ms", "status", "code"}."""
    started = time.monotonic()
    ms = lambda: int((time.monotonic() - started) * 1000)
    try:
        return {"ok": True, **fn(), "ms": ms()}
    except ApiException as e:
        try:
            code = json.loads(e.body)["errors"][0]["code"]
        except Exception:
            code = None
        return {"ok": False, "ms": ms(), "status": e.status, "code": code}


def flow(api_client):
    orders = OrdersV0Api(api_client)
    reports = ReportsApi(api_client)
    out = {"access_token": api_client.default_headers["x-amz-access-token"]}
    order_id = None

    def get_orders():
        nonlocal order_id
        listed = orders.get_orders([MARKETPLACE], created_after="2020-01-01T00:00:00Z")
        order_id = listed.payload.orders[0].amazon_order_id
        history = api_client.last_response.urllib3_response.retries.history
        return {"orders": len(listed.payload.orders), "orderId": order_id,
                "statuses": [h.status for h in history]}

    out["getOrders"] = step(get_orders)

    def get_order_address():
        address = orders.get_order_address(order_id).payload.shipping_address
        return {"addressLine1": address.address_line1}

    out["getOrderAddress"] = step(get_order_address)

    def throttled():
        # The tool's plan allows one getOrders per four seconds: this call meets the gateway's
        # 429. The SDK has no retry of its own; urllib3 under it retries an idempotent request
        # answered 429 with Retry-After (up to 3 times), after sleeping that long.
        listed = orders.get_orders([MARKETPLACE], created_after="2020-01-01T00:00:00Z")
        history = api_client.last_response.urllib3_response.retries.history
        return {"orders": len(listed.payload.orders), "statuses": [h.status for h in history]}

    out["throttled"] = step(throttled)

    stage = "createReport"
    url = None

    def report():
        nonlocal stage, url
        # The body of Amazon's static sandbox example, which the sandbox matches.
        spec = CreateReportSpecification(report_type="GET_MERCHANT_LISTINGS_ALL_DATA",
                                         data_start_time="2024-03-10T20:11:24.000Z",
                                         marketplace_ids=["A1PA6795UKMFR9", "ATVPDKIKX0DER"])
        created = reports.create_report(spec)
        stage = "getReport"
        got = reports.get_report(created.report_id)
        stage = "getReportDocument"
        document_id = os.environ.get("SPGATE_REPORT_DOCUMENT") or got.report_document_id
        document = reports.get_report_document(document_id)
        url = document.url
        stage = "download"
        # No credentials: the link is the credential.
        resp = requests.get(url, timeout=30)
        if resp.status_code != 200:
            raise ApiException(status=resp.status_code, reason=resp.text[:200])
        data = resp.content
        if (document.compression_algorithm or "").upper() == "GZIP":
            data = gzip.decompress(data)
        text = data.decode("utf-8")
        stage = "done"
        return {"reportId": created.report_id, "compressionAlgorithm": document.compression_algorithm,
                "lines": len(text.splitlines()), "header": text.splitlines()[0] if text else ""}

    out["report"] = step(report)
    out["report"].update({"stage": stage, "url": url})
    return out


class Token:
    """What the SDK's Configuration asks of its token source (`access_token_cache`): here a
    Restricted Data Token minted through the SDK's own Tokens API."""

    def __init__(self, token):
        self.token = token

    def get_lwa_access_token(self):
        return self.token


def rdt(api_client):
    orders = OrdersV0Api(api_client)
    order_id = orders.get_orders([MARKETPLACE], created_after="2020-01-01T00:00:00Z").payload.orders[0].amazon_order_id
    out = {"orderId": order_id}
    token = None

    def mint():
        nonlocal token
        body = CreateRestrictedDataTokenRequest(restricted_resources=[
            RestrictedResource(method="GET", path="/orders/v0/orders/" + order_id + "/address"),
        ])
        minted = TokensApi(api_client).create_restricted_data_token(body)
        token = minted.restricted_data_token
        return {"expiresIn": minted.expires_in, "gatewayToken": not token.startswith("Atz")}

    out["mint"] = step(mint)
    if token is None:
        return out
    config = Configuration()
    config.host = URL
    config.access_token_cache = Token(token)
    with_rdt = OrdersV0Api(ApiClient(configuration=config))

    def address():
        return {"addressLine1": with_rdt.get_order_address(order_id).payload.shipping_address.address_line1}

    out["address"] = step(address)

    def elsewhere():
        with_rdt.get_order_items(order_id)
        return {}

    out["otherResource"] = step(elsewhere)
    return out


if __name__ == "__main__":
    mode = sys.argv[1]
    api_client = client().api_client
    print(json.dumps({"flow": flow, "rdt": rdt}[mode](api_client)))
