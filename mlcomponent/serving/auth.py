"""Bearer tokens, as both transports check them (RFC 6750; the scheme is case-insensitive)."""

from __future__ import annotations

import hmac


def bearer_matches(authorization: bytes | str | None, token: bytes) -> bool:
    """Whether an ``Authorization`` value (HTTP header or gRPC metadata) carries ``token``."""
    value = authorization.encode() if isinstance(authorization, str) else authorization or b""
    scheme, _, credentials = value.strip().partition(b" ")
    return scheme.lower() == b"bearer" and hmac.compare_digest(credentials.strip(), token)


# The open-endpoint policy, by endpoint label (the metrics' ``endpoint``): probes, metrics and the
# playground page answer without a token on both transports; everything else needs it.
OPEN_ENDPOINTS = frozenset({"health", "metrics", "playground"})


class Auth:
    """One process's bearer token (or none) and the open-endpoint policy."""

    def __init__(self, token: str | None) -> None:
        self.token = token.encode() if token else None

    def allows(self, endpoint: str, authorization: bytes | str | None) -> bool:
        """Whether a call to ``endpoint`` carrying this ``Authorization`` value may go on."""
        return self.token is None or endpoint in OPEN_ENDPOINTS or bearer_matches(authorization, self.token)
