"""Drives spgate in drop-in mode with an unmodified python-amazon-sp-api (set up in spgate_sdk.py):
getOrders, getOrder and getOrderAddress, then the SDK's own Restricted Data Token flows, both
answered with gateway RDTs: `RestrictedResources=` on getOrder (the SDK mints a token for the
order and uses it), and Tokens().create_restricted_data_token with a client built with
`restricted_data_token=`, which is then refused on a resource the token does not name.

Prints one JSON object with what the SDK received.
"""
import json

from sp_api.api import Tokens
from sp_api.base import SellingApiException

from spgate_sdk import client, orders_client

orders = orders_client()

listed = orders.get_orders(CreatedAfter="2020-01-01T00:00:00Z", MarketplaceIds=["ATVPDKIKX0DER"])
order_id = listed.payload["Orders"][0]["AmazonOrderId"]
one = orders.get_order(order_id)
address = orders.get_order_address(order_id)

# The SDK's shortcut: it asks createRestrictedDataToken for this order's path, then calls with it.
restricted = orders.get_order(order_id, RestrictedResources=["buyerInfo", "shippingAddress"])

# The Tokens API by hand, then a client holding the token.
token = client(Tokens).create_restricted_data_token(
    restrictedResources=[{"method": "GET", "path": f"/orders/v0/orders/{order_id}/address"}]
).payload
with_token = orders_client(restricted_data_token=token["restrictedDataToken"])
token_address = with_token.get_order_address(order_id)
try:
    with_token.get_order_buyer_info(order_id)
    other_resource = {"ok": True}
except SellingApiException as e:
    other_resource = {"ok": False, "status": e.code, "error": e.error}

print(json.dumps({
    "orders": len(listed.payload["Orders"]),
    "order_id": order_id,
    "get_order_id": one.payload["AmazonOrderId"],
    "address": address.payload,
    "access_token": orders.auth.access_token,
    "restricted_order": {
        "order_id": restricted.payload["AmazonOrderId"],
        "address_line1": restricted.payload.get("ShippingAddress", {}).get("AddressLine1"),
        "buyer_email": bool(restricted.payload.get("BuyerInfo", {}).get("BuyerEmail")),
    },
    "rdt": {
        "prefix": token["restrictedDataToken"][:7],
        "expires_in": token["expiresIn"],
        "address_line1": token_address.payload["ShippingAddress"]["AddressLine1"],
    },
    "rdt_other_resource": other_resource,
}))
