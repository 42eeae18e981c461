"""The setup every SDK script shares: python-amazon-sp-api, unmodified, pointed at spgate.

Only two things change from a normal setup: the SP-API endpoint (a marketplace object whose
endpoint is the gateway) and the LWA token host (the SDK's own token client class, pointed at the
gateway). The SDK sends its usual headers, including a Host derived from the endpoint that is
mangled for plain-http URLs; the gateway ignores Host.

Environment: SPGATE_URL, SPGATE_LWA_CLIENT_ID, SPGATE_LWA_CLIENT_SECRET, SPGATE_REFRESH_TOKEN.
"""
import os
import types

from sp_api.api import Orders
from sp_api.auth.access_token_client import AccessTokenClient


def orders_client(**kwargs):
    """The SDK's Orders client (Orders v0), talking to the gateway in drop-in mode. `kwargs` go to
    the client as they are (e.g. `restricted_data_token=`)."""
    return client(Orders, **kwargs)


def client(cls, **kwargs):
    """One of the SDK's API clients (`sp_api.api.*`), talking to the gateway in drop-in mode."""
    url = os.environ["SPGATE_URL"].rstrip("/")
    scheme, hostport = url.split("://", 1)

    class GatewayTokenClient(AccessTokenClient):
        """The SDK's own LWA client, with the token host pointed at the gateway."""

    GatewayTokenClient.scheme = scheme + "://"
    GatewayTokenClient.host = hostport
    marketplace = types.SimpleNamespace(endpoint=url, marketplace_id="ATVPDKIKX0DER", region="us-east-1")
    credentials = {
        "refresh_token": os.environ["SPGATE_REFRESH_TOKEN"],
        "lwa_app_id": os.environ["SPGATE_LWA_CLIENT_ID"],
        "lwa_client_secret": os.environ["SPGATE_LWA_CLIENT_SECRET"],
    }
    return cls(marketplace=marketplace, credentials=credentials, auth_token_client_class=GatewayTokenClient, **kwargs)
