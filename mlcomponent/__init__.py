"""mlcomponent: turn one Python inference function into an Open Inference Protocol service.

For inference functions: ``from mlcomponent import InvalidInput`` and raise it to reject
a request's input with a 400 (see docs/serving.md).
"""

from mlcomponent.errors import InvalidInput

__version__ = "0.1.0"

__all__ = ["InvalidInput", "__version__"]
