"""The "billion laughs" guard that manifests and docstring specifications share.

Its own module, with nothing but PyYAML below it, so that the worker process (which reads
docstrings) does not import the manifest's pydantic models: that import was 0.14 s of every
worker start.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_NODES = 10_000  # YAML nodes once anchors and aliases are expanded; the spec's example has about 60


def expanded_size(node: Any, memo: dict[int, int]) -> int:
    """How many nodes the document has once every alias is replaced by what it names.

    Aliases share the node they name, so this is cheap to count (each node once, with a
    memo) even when the expansion is astronomically large (the "billion laughs").
    """
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = MAX_NODES + 1  # an alias to an enclosing node (a cycle) expands without end
    if isinstance(node, yaml.MappingNode):
        size = 1 + sum(expanded_size(k, memo) + expanded_size(v, memo) for k, v in node.value)
    elif isinstance(node, yaml.SequenceNode):
        size = 1 + sum(expanded_size(item, memo) for item in node.value)
    else:
        size = 1
    memo[key] = min(size, MAX_NODES + 1)
    return memo[key]


def over_cap(node: Any) -> bool:
    """True when ``node`` (a composed document) expands past ``MAX_NODES``."""
    return expanded_size(node, {}) > MAX_NODES
