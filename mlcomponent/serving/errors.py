"""An error's status and message, decided once for both transports (REST renders them as
``{"error": ...}`` with headers, gRPC as a status code with trailers); 5xx are logged here, except
admission's refusals (503), which the metrics count."""

from __future__ import annotations

import errno
import logging
from dataclasses import dataclass

from mlcomponent.errors import (
    BadFunctionOutput,
    DiskFull,
    FunctionFailed,
    MethodNotAllowed,
    MLComponentError,
    NotReady,
    Refused,
)
from mlcomponent.logs import request_id

log = logging.getLogger("mlcomponent.http")  # the logger name users filter on, kept from before gRPC
MAX_MESSAGE = 2000  # characters; the values a message echoes are cut shorter still (errors.shown)
FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, over quota, over the file-size limit


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


def disk_full(error: Exception) -> DiskFull | None:
    """A full disk (or file-size limit) where request files are written, as a 507 that names no path."""
    if isinstance(error, OSError) and error.errno in FULL:
        return DiskFull("the service has no disk space left for this request's files; retry later, or send "
                        "smaller files")
    return None


def describe(error: Exception, where: str, hide_errors: bool = False) -> Failure:
    """The ``Failure`` for any error; 5xx are logged, but admission's refusals only at DEBUG. An
    unexpected error's own text (often a server path) goes to the log only: the client is told its
    type and the request id."""
    if not isinstance(error, MLComponentError):
        full = disk_full(error)
        if full is None:
            log.error("unexpected error on %s", where, exc_info=error)
            return Failure(500, f"internal error ({type(error).__name__}); the details are in the service's log "
                                f"under request id {request_id.get() or '-'}")
        log.error("%s -> 507: %s", where, error)
        error = full
    hidden = hidden_message(error) if hide_errors else None
    if isinstance(error, Refused):
        # Admission's refusals are counted (mlcomponent_refusals_total{reason}), not logged one by one:
        # under overload that was thousands of identical lines a second, a quarter of the cost of each
        # refusal, just when the server has least to spare. Other 503s (S3 down, the memory budget) are logged.
        log.debug("%s -> %s: %s", where, error.status, error.message)
    elif error.status >= 500:
        log.error("%s -> %s: %s", where, error.status, error.message)
    if hidden is not None:
        return Failure(error.status, hidden)
    message = error.message if len(error.message) <= MAX_MESSAGE else error.message[:MAX_MESSAGE] + "…"
    return Failure(error.status, message,
                   retry_after=error.retry_after if isinstance(error, NotReady) else None,
                   allow=(error.allow or None) if isinstance(error, MethodNotAllowed) else None)
