"""Drives spgate in drop-in mode with an unmodified python-amazon-sp-api (set up in spgate_sdk.py):
getOrders, getOrder and getOrderAddress.

Prints one JSON object with what the SDK received.
"""
import json

from spgate_sdk import orders_client

orders = orders_client()

listed = orders.get_orders(CreatedAfter="2020-01-01T00:00:00Z", MarketplaceIds=["ATVPDKIKX0DER"])
order_id = listed.payload["Orders"][0]["AmazonOrderId"]
one = orders.get_order(order_id)
address = orders.get_order_address(order_id)
print(json.dumps({
    "orders": len(listed.payload["Orders"]),
    "order_id": order_id,
    "get_order_id": one.payload["AmazonOrderId"],
    "address": address.payload,
    "access_token": orders.auth.access_token,
}))
