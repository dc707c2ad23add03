"""Boxes: where models and user files live. A local folder by default, or an S3 bucket."""

from mlcomponent.boxes.base import Box, ObjectInfo, check_key
from mlcomponent.boxes.config import BoxesConfig, open_box

__all__ = ["Box", "BoxesConfig", "ObjectInfo", "check_key", "open_box"]
