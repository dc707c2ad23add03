"""mlcomponent: turn one Python inference function into an Open Inference Protocol service."""

__version__ = "0.1.0"

__all__ = ["__version__"]
