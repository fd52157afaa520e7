"""The App Service managed-identity token endpoint, as azure-identity / MSAL call it.

With ``IDENTITY_ENDPOINT=<base>/msi/token`` and ``IDENTITY_HEADER=<secret>`` in the environment,
``ManagedIdentityCredential`` (and so ``DefaultAzureCredential``) sends::

    GET <IDENTITY_ENDPOINT>?api-version=2019-08-01&resource=<resource>[&client_id=|mi_res_id=|object_id=]
    X-IDENTITY-HEADER: <secret>

and expects ``{"access_token", "expires_on" (epoch seconds, a string), "resource", "token_type"}``; on
failure a JSON ``{"statusCode", "message"}``, which MSAL turns into a credential error. The resource for
scope ``https://ml.azure.com/.default`` is ``https://ml.azure.com``.
"""

from __future__ import annotations

import hmac
import logging
import math

from aiohttp import web

from emulator.state import CONFIG, STATE

MSI_TOKEN_PATH = "/msi/token"
IDENTITY_HEADER_NAME = "X-IDENTITY-HEADER"
APP_SERVICE_API_VERSION = "2019-08-01"
#: Client id reported for the emulated system-assigned identity.
EMULATED_CLIENT_ID = "00000000-0000-0000-0000-0000000e0001"

log = logging.getLogger(__name__)


def _failure(status: int, message: str) -> web.Response:
    return web.json_response({"statusCode": status, "message": message}, status=status)


async def managed_identity_token(request: web.Request) -> web.Response:
    config = request.app[CONFIG]
    expected = config.identity_header or ""
    presented = request.headers.get(IDENTITY_HEADER_NAME, "")
    if not expected or not hmac.compare_digest(presented.encode(), expected.encode()):
        log.info("managed-identity token refused: missing or wrong %s", IDENTITY_HEADER_NAME)
        return _failure(401, f"missing or invalid {IDENTITY_HEADER_NAME}")
    api_version = request.query.get("api-version")
    if api_version != APP_SERVICE_API_VERSION:
        return _failure(400, f"api-version must be {APP_SERVICE_API_VERSION}")
    resource = request.query.get("resource", "").strip()
    if not resource:
        return _failure(400, "resource is required")
    # Any resource gets a token, as a real identity endpoint would; /score checks the audience.
    issued = request.app[STATE].tokens.issue(resource, config.token_ttl_s)
    return web.json_response(
        {
            "access_token": issued.access_token,
            # Rounded down: a client trusting expires_on never holds a token this server deems expired.
            "expires_on": str(math.floor(issued.expires_on)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": request.query.get("client_id", EMULATED_CLIENT_ID),
        }
    )
