"""The docstring specification: parse it, and the model of what it declares."""
