"""Bearer tokens, as both transports check them (RFC 6750; the scheme is case-insensitive)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: bytes | str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` value (HTTP header or gRPC metadata) carries ``token``."""
    value = authorization.encode() if isinstance(authorization, str) else authorization or b""
    scheme, _, credentials = value.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)
