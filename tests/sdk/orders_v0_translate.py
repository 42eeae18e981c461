"""Drives spgate in Orders v0 compat mode (translate) with an unmodified python-amazon-sp-api
(set up in spgate_sdk.py, as for drop-in mode).

The gateway sits in front of a sandbox whose Orders v0 is switched off (answers as removed), so
every answer the SDK's v0 Orders client gets was built by the gateway from Orders 2026-01-01.
Prints one JSON object with what the SDK received.
"""
import json

from sp_api.base import SellingApiException
from sp_api.util import load_all_pages

from spgate_sdk import orders_client

orders = orders_client()

# Paginate getOrders the way tools do: the same call again with the NextToken it got.
ids = []
tokens = []
page = orders.get_orders(
    CreatedAfter="2000-01-01T00:00:00Z",
    MarketplaceIds=["ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"],
    MaxResultsPerPage=9,
)
while True:
    ids.extend(o["AmazonOrderId"] for o in page.payload["Orders"])
    if not page.next_token:
        break
    tokens.append(page.next_token)
    page = orders.get_orders(NextToken=page.next_token)

# The SDK's own paging helper: every later page sends the first page's filters again with the
# NextToken (Amazon's v0 applies filters sent with a token).
@load_all_pages(throttle_by_seconds=0)
def all_orders(**kwargs):
    return orders.get_orders(**kwargs)


paged_ids = [
    o["AmazonOrderId"]
    for p in all_orders(
        CreatedAfter="2000-01-01T00:00:00Z",
        MarketplaceIds=["ATVPDKIKX0DER", "A2EUQ1WTGCTBG2"],
        MaxResultsPerPage=9,
    )
    for o in p.payload["Orders"]
]

# A filter changed on a later page is refused by name, never ignored.
try:
    orders.get_orders(NextToken=tokens[0], CreatedAfter="2001-01-01T00:00:00Z")
    changed_filter = {"status": 200}
except SellingApiException as e:
    changed_filter = {"status": e.code, "details": e.error[0].get("details")}

business = next(o for o in orders.get_orders(
    CreatedAfter="2000-01-01T00:00:00Z", MarketplaceIds=["ATVPDKIKX0DER"]
).payload["Orders"] if o["IsBusinessOrder"])
order_id = business["AmazonOrderId"]
address = orders.get_order_address(order_id)
buyer = orders.get_order_buyer_info(order_id)
items = orders.get_order_items(order_id)
print(json.dumps({
    "ids": ids,
    "paged_ids": paged_ids,
    "changed_filter": changed_filter,
    "tokens": tokens,
    "order_id": order_id,
    "order": business,
    "address": address.payload,
    "buyer": buyer.payload,
    "items": items.payload,
}))
