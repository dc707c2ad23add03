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
    ├── FunctionFailed (500)        the user's inference function raised
    ├── BadFunctionOutput (500)     the function returned something malformed
    ├── WorkerDied (500)            the worker process running the function died
    │   └── MemoryLimitExceeded (500)  ... because it went over the memory limit
    ├── NotReady (503)              the model is not loaded yet (or overloaded)
    └── Timeout (504)               the call ran past its deadline

``ManifestError`` and ``EntryPointError`` are start-up errors: they are reported by
the CLI and never reach HTTP. Nothing here imports a web framework.
"""

from __future__ import annotations


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


class Timeout(MLComponentError):
    status = 504


class ManifestError(Exception):
    """A manifest that does not validate; ``problems`` holds one line per fault."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class BoxUnavailable(MLComponentError, ValueError):
    """A box that cannot be reached or read (an S3 endpoint down, refused credentials): one line."""

    status = 503


class EntryPointError(Exception):
    """The entry point cannot be imported, is missing, or has the wrong signature."""
