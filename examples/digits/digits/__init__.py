"""The digits example module."""
