"""Client side of the MedImageParse Azure ML endpoint: wire format, auth, retries, in-flight cap.

No Celery here: workers call ``EndpointClient.score`` from their threads.
"""

from medparse.endpoint.auth import AadTokenProvider, StaticBearer, TokenProvider, make_token_provider
from medparse.endpoint.client import EndpointClient
from medparse.endpoint.errors import (
    EndpointAuthFailed,
    EndpointBadResponse,
    EndpointError,
    EndpointNotFound,
    EndpointRejectedInput,
    EndpointTimeout,
    EndpointUnavailable,
)
from medparse.endpoint.limiter import (
    InFlightLimiter,
    InFlightSlotTimeout,
    LocalInFlightLimiter,
    RedisInFlightLimiter,
    in_flight_limit,
    make_in_flight_limiter,
)
from medparse.endpoint.protocol import RowResult, ScoreResult, ScoreRow, split_prompts

__all__ = [
    "AadTokenProvider",
    "EndpointAuthFailed",
    "EndpointBadResponse",
    "EndpointClient",
    "EndpointError",
    "EndpointNotFound",
    "EndpointRejectedInput",
    "EndpointTimeout",
    "EndpointUnavailable",
    "InFlightLimiter",
    "InFlightSlotTimeout",
    "LocalInFlightLimiter",
    "RedisInFlightLimiter",
    "RowResult",
    "ScoreResult",
    "ScoreRow",
    "StaticBearer",
    "TokenProvider",
    "in_flight_limit",
    "make_in_flight_limiter",
    "make_token_provider",
    "split_prompts",
]
