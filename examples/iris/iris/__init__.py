"""The iris example module."""
