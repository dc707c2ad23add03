"""Plain Python values from whatever a function or a caller hands us (numpy included).

Standard library only: the inference worker imports it, and numpy stays optional.
"""

from __future__ import annotations

from typing import Any

from mlcomponent.protocol.packed import Packed

_SCALARS = frozenset({str, int, float, bool, type(None)})


def as_plain(value: Any) -> Any:
    """numpy arrays and scalars (anything with ``tolist``) become lists and numbers, at any depth.

    A list of plain scalars is returned as it is, decided at C speed (``set(map(type, ...))``).
    """
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is Packed:
        return value  # raw bytes already: the fastest form there is
    if kind is list or kind is tuple:
        if set(map(type, value)) <= _SCALARS:
            return value if kind is list else list(value)
        return [as_plain(item) for item in value]
    if isinstance(value, dict):
        return {key: as_plain(item) for key, item in value.items()}
    tolist = getattr(value, "tolist", None)
    return tolist() if callable(tolist) else value
