"""Drives spgate in drop-in mode with an unmodified python-amazon-sp-api (set up in spgate_sdk.py):
createReport -> getReport -> getReportDocument, the document downloaded and decompressed by the
SDK's own helper (`download=True`, a plain GET of the link with no credentials), then back-to-back
getOrders under a plan that lets one through per 2 s: the second meets the gateway's 429 and the
SDK's own `throttle_retry` backs off and retries it.

Prints one JSON object with what the SDK received.
"""
import json
import os
import time

from sp_api.api import ReportsV2
from sp_api.base import SellingApiRequestThrottledException
from sp_api.util import throttle_retry

from spgate_sdk import client, orders_client

reports = client(ReportsV2)
# The body of Amazon's model example (the sandbox answers the examples of Amazon's models).
created = reports.create_report(
    reportType="GET_MERCHANT_LISTINGS_ALL_DATA",
    dataStartTime="2024-03-10T20:11:24.000Z",
    marketplaceIds=["A1PA6795UKMFR9", "ATVPDKIKX0DER"],
)
report = reports.get_report(created.payload["reportId"])
# Amazon's static getReport example names a document on Amazon's CDN: the sandbox's own is used.
document_id = os.environ.get("SPGATE_REPORT_DOCUMENT") or report.payload["reportDocumentId"]
document = reports.get_report_document(document_id, download=True)

orders = orders_client()
throttled = []


@throttle_retry(tries=5, delay=2.5, rate=1.0)
def get_orders():
    try:
        return orders.get_orders(CreatedAfter="2020-01-01T00:00:00Z", MarketplaceIds=["ATVPDKIKX0DER"])
    except SellingApiRequestThrottledException as e:
        throttled.append({"code": e.error[0]["code"] if e.error else None})
        raise


first = get_orders()
started = time.monotonic()
second = get_orders()
waited = time.monotonic() - started

print(json.dumps({
    "report": {
        "report_id": created.payload["reportId"],
        "url": document.payload["url"],
        "compression": document.payload.get("compressionAlgorithm"),
        "first_line": document.payload["document"].splitlines()[0],
        "lines": len(document.payload["document"].splitlines()),
    },
    "throttled": throttled,
    "orders": [len(first.payload["Orders"]), len(second.payload["Orders"])],
    "waited_ms": int(waited * 1000),
}))
