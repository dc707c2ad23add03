"""Errors that cross a layer boundary, each carrying the HTTP status it maps to.

The hierarchy, so one handler can render every one of them as ``{"error": ...}``::

    MLComponentError (500)
    ├── BadRequest (400)            the client sent something we cannot serve
    │   ├── SpecViolation (400)     the request breaks the docstring specification
    │   └── InvalidInput (400)      raised by an inference function: "this input is bad"
    │                               (exported as ``mlcomponent.InvalidInput``; also a ValueError)
    ├── NotFound (404)              unknown model, file or route
    ├── MethodNotAllowed (405)      a route that exists, with another method (Allow says which)
    ├── PayloadTooLarge (413)       a body or upload over its limit
    ├── HeadersTooLarge (431)       request headers over their size or count limit
    ├── FunctionFailed (500)        the user's inference function raised
    ├── BadFunctionOutput (500)     the function returned something malformed
    ├── WorkerDied (500)            the worker process running the function died
    │   └── MemoryLimitExceeded (500)  ... because it went over the memory limit
    ├── BoxFailed (502)             the file box (S3) refused or failed an operation
    ├── NotReady (503)              the model is not loaded yet (or overloaded)
    │   ├── Refused (503)           admission refused it before it queued (counted, not logged)
    │   └── BoxUnavailable (503)    the file box (S3) cannot be reached
    ├── Timeout (504)               the call ran past its deadline
    └── DiskFull (507)              the service's disk (request files) is full

``shown`` is how any value a client sent is echoed in a message: short and safe.

``ManifestError`` and ``EntryPointError`` are start-up errors: they are reported by
the CLI and never reach HTTP. Nothing here imports a web framework.
"""

from __future__ import annotations

import reprlib

SHOWN = 80  # characters of a client's value that a message echoes


def _shower() -> reprlib.Repr:
    shower = reprlib.Repr()
    shower.maxlevel, shower.maxstring, shower.maxother = 3, SHOWN, SHOWN
    shower.maxlist = shower.maxtuple = shower.maxdict = shower.maxset = 8
    return shower


_SHOWER = _shower()


def shown(value: object, limit: int = SHOWN) -> str:
    """``repr(value)`` cut to ``limit`` characters (and "…"): a 30 MB or 1,000-deep value stays short."""
    try:
        text = _SHOWER.repr(value)
    except (RecursionError, ValueError):
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


class MLComponentError(Exception):
    """Base of every error we raise on purpose; ``status`` is the HTTP status."""

    status: int = 500

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class BadRequest(MLComponentError):
    status = 400


class SpecViolation(BadRequest):
    status = 400


class InvalidInput(BadRequest, ValueError):
    """Raise it in an inference function to reject the request's input: the client gets a 400.

        from mlcomponent import InvalidInput

        if not rows:
            raise InvalidInput("the table has no rows")

    The message goes to the client as it is (also with ``serve --hide-errors``), so say
    what is wrong with the input and how to fix it. It is a ``ValueError`` too, so code
    that already catches ``ValueError`` keeps working.
    """

    status = 400

    def __init__(self, message: str = "the input is not valid") -> None:
        super().__init__(str(message))


class NotFound(MLComponentError):
    status = 404


class MethodNotAllowed(MLComponentError):
    status = 405

    def __init__(self, message: str, *, allow: str | None = None) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(MLComponentError):
    status = 413


class HeadersTooLarge(MLComponentError):
    status = 431


class FunctionFailed(MLComponentError):
    """The function raised; ``exception_type`` names what (shown alone with ``--hide-errors``)."""

    status = 500

    def __init__(self, message: str, *, exception_type: str = "Exception", where: str | None = None) -> None:
        super().__init__(message)
        self.exception_type = exception_type
        self.where = where  # "predict.py, line 12": the last frame in the module's own code, when known


class BadFunctionOutput(MLComponentError):
    status = 500


class WorkerDied(MLComponentError):
    status = 500


class MemoryLimitExceeded(WorkerDied):
    """The worker went over ``resourceLimits.memory`` (our watch, or the kernel's OOM killer)."""


class NotReady(MLComponentError):
    status = 503

    def __init__(self, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Refused(NotReady):
    """Refused before it queued (busy, over a deadline, not ready): counted by
    ``mlcomponent_refusals_total{reason}`` and logged at DEBUG only, since under overload they
    come by the thousand a second."""


class Timeout(MLComponentError):
    status = 504


class DiskFull(MLComponentError):
    """No space left where request files are written (ENOSPC, EDQUOT): the server's trouble, not the client's."""

    status = 507


class BoxFailed(MLComponentError):
    """The file box answered with an error that is not "no such object" (access denied, a server error)."""

    status = 502


class BoxUnavailable(NotReady, ValueError):
    """A box that cannot be reached or read (an S3 endpoint down, refused credentials): one line.

    A request that needs it gets 503 with ``Retry-After`` (5 s unless said otherwise).
    """

    def __init__(self, message: str, *, retry_after: int | None = 5) -> None:
        super().__init__(message, retry_after=retry_after)


class ManifestError(Exception):
    """A manifest that does not validate; ``problems`` holds one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class EntryPointError(Exception):
    """The entry point cannot be imported, is missing, or has the wrong signature."""
