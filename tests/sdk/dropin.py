"""Drives spgate in drop-in mode with an unmodified python-amazon-sp-api.

Only two things change from a normal setup: the SP-API endpoint (a marketplace object whose
endpoint is the gateway) and the LWA token host (the SDK's own token client class, pointed at the
gateway). The SDK sends its usual headers, including a Host derived from the endpoint that is
mangled for plain-http URLs; the gateway ignores Host.

Environment: SPGATE_URL, SPGATE_LWA_CLIENT_ID, SPGATE_LWA_CLIENT_SECRET, SPGATE_REFRESH_TOKEN.
Prints one JSON object with what the SDK received.
"""
import json
import os
import types

from sp_api.api import Orders
from sp_api.auth.access_token_client import AccessTokenClient

url = os.environ["SPGATE_URL"].rstrip("/")
scheme, hostport = url.split("://", 1)


class GatewayTokenClient(AccessTokenClient):
    """The SDK's own LWA client, with the token host pointed at the gateway."""

    scheme = scheme + "://"
    host = hostport


marketplace = types.SimpleNamespace(endpoint=url, marketplace_id="ATVPDKIKX0DER", region="us-east-1")
credentials = {
    "refresh_token": os.environ["SPGATE_REFRESH_TOKEN"],
    "lwa_app_id": os.environ["SPGATE_LWA_CLIENT_ID"],
    "lwa_client_secret": os.environ["SPGATE_LWA_CLIENT_SECRET"],
}
orders = Orders(marketplace=marketplace, credentials=credentials, auth_token_client_class=GatewayTokenClient)

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
