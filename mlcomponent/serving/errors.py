"""An error's status and message, decided once for both transports (REST renders them as
``{"error": ...}`` with headers, gRPC as a status code with trailers); 5xx are logged here."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from mlcomponent.errors import BadFunctionOutput, FunctionFailed, MethodNotAllowed, MLComponentError, NotReady
from mlcomponent.logs import request_id

log = logging.getLogger("mlcomponent.http")  # the logger name users filter on, kept from before gRPC


@dataclass(frozen=True)
class Failure:
    """What a client is told about an error: HTTP status, message, and the hints that go with it."""

    status: int
    message: str
    retry_after: int | None = None  # seconds (503 while starting or full)
    allow: str | None = None  # the methods a 405's route takes


def hidden_message(error: Exception) -> str | None:
    """Under ``--hide-errors``: what a 500 tells the client instead of its message (None: shown as it is).

    The function's own words (an exception's message, a malformed output) stay in the
    log; the client gets the exception's type and the request id to quote.
    """
    if isinstance(error, FunctionFailed):
        what = f"inference raised {error.exception_type}"
    elif isinstance(error, BadFunctionOutput):
        what = "inference returned a malformed output"
    elif not isinstance(error, MLComponentError):
        what = f"internal error ({type(error).__name__})"
    else:
        return None  # our own messages (a worker that died, the memory limit) carry nothing of the module's
    return f"{what}; the details are in the service's log under request id {request_id.get() or '-'}"


def describe(error: Exception, where: str, hide_errors: bool = False) -> Failure:
    """The ``Failure`` for any error (an unexpected one is a 500 naming its type); 5xx are logged."""
    hidden = hidden_message(error) if hide_errors else None
    if not isinstance(error, MLComponentError):
        log.error("unexpected error on %s", where, exc_info=error)
        return Failure(500, hidden or f"internal error: {type(error).__name__}: {error}")
    if error.status >= 500:
        log.error("%s -> %s: %s", where, error.status, error.message)
    if hidden is not None:
        return Failure(error.status, hidden)
    return Failure(error.status, error.message,
                   retry_after=error.retry_after if isinstance(error, NotReady) else None,
                   allow=(error.allow or None) if isinstance(error, MethodNotAllowed) else None)
