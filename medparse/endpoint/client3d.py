"""The MedImageParse 3D client: the same ``EndpointClient`` with the 3-D settings and answer parser.

``endpoint_3d_*`` settings override the 2-D ones; unset URI and key fall back to the 2-D endpoint's,
where the ``azureml-model-deployment`` header (``endpoint_3d_deployment``) selects the 3-D deployment.
On the same endpoint the two clients share the in-flight cap; a separate 3-D endpoint gets its own.
"""

from __future__ import annotations

import functools

import redis

from medparse.endpoint.client import EndpointClient
from medparse.endpoint.limiter import InFlightLimiter, make_in_flight_limiter
from medparse.endpoint.protocol3d import parse_3d_response
from medparse.settings import Settings


def settings_3d(settings: Settings) -> Settings:
    """``settings`` with the ``endpoint_*`` fields the 3-D client uses."""
    return settings.model_copy(update={
        "endpoint_scoring_uri": settings.endpoint_3d_scoring_uri or settings.endpoint_scoring_uri,
        "endpoint_key": settings.endpoint_3d_key or settings.endpoint_key,
        "endpoint_deployment": settings.endpoint_3d_deployment,
        "endpoint_read_timeout_s": settings.endpoint_3d_read_timeout_s,
        "endpoint_max_total_s": max(settings.endpoint_max_total_s, 2 * settings.endpoint_3d_read_timeout_s),
    })


def make_client_3d(
    settings: Settings, shared_limiter: InFlightLimiter, redis_client: redis.Redis | None
) -> EndpointClient | None:
    """The 3-D client, or None when no usable scoring URI is configured (3-D jobs then fail clearly)."""
    s3 = settings_3d(settings)
    limiter = shared_limiter
    if settings.endpoint_3d_scoring_uri and settings.endpoint_3d_scoring_uri != settings.endpoint_scoring_uri:
        own = s3.model_copy(update={"redis_namespace": f"{settings.redis_namespace}:3d"})
        limiter = make_in_flight_limiter(own, redis_client, lease_s=settings.endpoint_in_flight_lease_s)
    try:
        return EndpointClient(
            s3, limiter=limiter, parser=functools.partial(parse_3d_response, max_voxels=settings.max_volume_voxels)
        )
    except ValueError:
        return None
