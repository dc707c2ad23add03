"""The worker protocol's messages, one type each, and the allow-list the parent reads them with.

Standard library only (the worker imports this before the user's module). Messages are
``NamedTuple``s: they pickle as small as the tuples they replace and are matched by type,
never unpacked by position. ``frames.py`` carries them; ``isolated.py`` (parent) and
``worker.py`` (worker) are the two ends.

The parent never runs ``pickle.loads`` on a reply: ``AllowList`` rebuilds only the types
the protocol uses (builtin containers and scalars, these messages, the function
specification, ``Packed`` buffers, numpy arrays, dtypes and scalars), so an object whose
``__reduce__`` names ``time.sleep`` or ``os._exit`` is refused before anything runs, and
fails only its own call (``Refused``).
"""

from __future__ import annotations

import pickle
from typing import Any, NamedTuple

# --------------------------------------------------------------------------- parent → worker


class Call(NamedTuple):
    """Run the function once. ``deadline``: the wall-clock time after which the worker skips it."""

    parameters: list[dict[str, Any]]
    inputs: list[dict[str, Any]]
    output_fields: list[dict[str, Any]]
    deadline: float | None


# --------------------------------------------------------------------------- worker → parent, once at start


class Ready(NamedTuple):
    """The function is imported; its specification (``spec.model.FunctionSpec``)."""

    spec: Any


class Fatal(NamedTuple):
    """The function could not be loaded (the message says why and how to fix it)."""

    message: str


# --------------------------------------------------------------------------- worker → parent, one per call, in order


class Done(NamedTuple):
    outputs: Any


class Raised(NamedTuple):
    exception_type: str
    message: str
    traceback: str


class Invalid(NamedTuple):
    """The function raised ``InvalidInput``: the client's mistake (400)."""

    message: str


class BadReturn(NamedTuple):
    message: str


class Expired(NamedTuple):
    """The call's deadline had passed when the worker reached it: never started."""


class OverMemory(NamedTuple):
    """Past the memory limit (the worker exits after sending this).

    ``between_calls``: it grew while no call ran (threads an earlier call left behind):
    the call this answers never started and is sent again to a new worker.
    ``stray_threads``: threads earlier calls left running while this call ran (they may
    have used the memory; the message says so).
    """

    peak: int
    between_calls: bool = False
    stray_threads: int = 0


Reply = Done | Raised | Invalid | BadReturn | Expired | OverMemory
Hello = Ready | Fatal
REPLIES = (Done, Raised, Invalid, BadReturn, Expired, OverMemory)

# --------------------------------------------------------------------------- the parent's allow-list

_BUILTINS = frozenset({"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "bytearray", "int", "float",
                       "complex", "bool", "slice", "range"})
_OURS = {
    "mlcomponent.runtime.messages": frozenset({"Call", "Ready", "Fatal", "Done", "Raised", "Invalid", "BadReturn",
                                               "Expired", "OverMemory"}),
    "mlcomponent.spec.model": frozenset({"FunctionSpec", "TensorSpec", "ParameterSpec", "BatchingSpec"}),
    "mlcomponent.protocol.packed": frozenset({"_rebuild"}),
}
# numpy's own names for what an array, a dtype and a scalar pickle as (numpy 1 and 2 spell the module differently)
_NUMPY = {
    "numpy": frozenset({"ndarray", "dtype"}),
    "numpy.core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy._core.multiarray": frozenset({"_reconstruct", "scalar"}),
    "numpy.core.numeric": frozenset({"_frombuffer"}),
    "numpy._core.numeric": frozenset({"_frombuffer"}),
}
_NUMPY_DTYPE_CLASSES = ("numpy.dtypes",)  # numpy 2 pickles a dtype as its class (numpy.dtypes.Float64DType)


class Refused(pickle.UnpicklingError):
    """A reply named a type outside the protocol's allow-list; ``where`` is ``module.name``."""

    def __init__(self, where: str) -> None:
        super().__init__(f"{where} is not a type the worker protocol carries")
        self.where = where


def allowed(module: str, name: str) -> bool:
    if module == "builtins":
        return name in _BUILTINS
    if module in _OURS:
        return name in _OURS[module]
    if module in _NUMPY:
        return name in _NUMPY[module]
    return module in _NUMPY_DTYPE_CLASSES and name.endswith("DType") and name.isidentifier()


class AllowList(pickle.Unpickler):
    """Rebuilds only the protocol's types; anything else raises ``Refused`` (nothing is imported or run)."""

    def find_class(self, module: str, name: str) -> Any:
        if not allowed(module, name):
            raise Refused(f"{module}.{name}")
        return super().find_class(module, name)


class _Foreign:
    """Stands in for a refused type, only to name it in a message."""

    where = "?"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __call__(self, *args: Any, **kwargs: Any) -> _Foreign:
        return self


class Lenient(pickle.Unpickler):
    """For the message only: every refused type becomes a ``_Foreign`` stand-in (still nothing imported or run)."""

    def find_class(self, module: str, name: str) -> Any:
        if allowed(module, name):
            return super().find_class(module, name)
        return type(name, (_Foreign,), {"where": f"{module}.{name}"})


def foreign_in(value: Any, depth: int = 0) -> str | None:
    """The ``module.name`` of the first stand-in inside ``value`` (a ``Lenient`` result), if any."""
    if isinstance(value, _Foreign):
        return value.where
    if depth > 20:
        return None
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for item in items:
        found = foreign_in(item, depth + 1)
        if found:
            return found
    return None
