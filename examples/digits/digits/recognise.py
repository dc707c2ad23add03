"""Recognise one handwritten digit in an image, with a classifier trained on scikit-learn's digits."""

from __future__ import annotations

import os
import warnings
from typing import Any

import joblib
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mlcomponent import InvalidInput

MAX_BYTES = 20 * 1024 * 1024
MAX_PIXELS = 4096 * 4096  # a small PNG can claim billions of pixels (a decompression bomb)
Image.MAX_IMAGE_PIXELS = MAX_PIXELS  # Pillow's own guard, for any other path that opens an image


def open_image(path: str) -> Image.Image:
    """The image, checked before its pixels are decoded; anything unusable is the client's fault."""
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidInput("the image file is empty")
    if size > MAX_BYTES:
        raise InvalidInput(f"the image file is {size / 2**20:.0f} MB; at most {MAX_BYTES // 2**20} MB")
    too_large = f"the image is too large: at most {MAX_PIXELS:,} pixels (e.g. 4096x4096) are accepted"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below
            image = Image.open(path)
    except Image.DecompressionBombError:
        raise InvalidInput(too_large) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidInput("the file is not an image this model can read (send a PNG or JPEG)") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise InvalidInput(f"{too_large}; this one is {width}x{height}")
    try:
        image.load()
    except (OSError, ValueError, SyntaxError):
        image.close()
        raise InvalidInput("the image is damaged or truncated and cannot be decoded") from None
    return image


def to_features(path: str) -> np.ndarray:
    """An image of any size -> the 8x8, 0..16 ink intensities the digits dataset uses."""
    with open_image(path) as image:
        gray = ImageOps.grayscale(image)
    if np.asarray(gray).mean() > 127:  # dark ink on a light background: invert to light-on-dark
        gray = ImageOps.invert(gray)
    small = gray.resize((8, 8), Image.Resampling.BOX)
    return (np.asarray(small, dtype=np.float32) / 255.0 * 16.0).reshape(1, 64)


def inference(parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
              output_fields: list[dict[str, Any]], model_key: str,
              model: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Recognise the handwritten digit in an image.

    Inputs:
        image (FILE, shape=[1], content_type=image/png): a picture of one digit, light ink
            on dark or dark ink on light; any size (it is scaled to 8x8).

    Outputs:
        label (INT32, shape=[1]): the digit, 0 to 9.
        probabilities (FP32, shape=[10]): the probability of each digit 0..9.
        preview (FILE, shape=[1], content_type=image/png, optional): what the model saw:
            the image scaled to 8x8, shown large.

    Example:
        inputs:
          image: sample-digit.png
    """
    if model is None:
        model = joblib.load(model_key)
    image = next(i for i in inputs if i["name"] == "image")
    features = to_features(image["data"])
    probabilities = model.predict_proba(features)[0]
    results = {
        "label": ("INT32", [int(probabilities.argmax())], [1]),
        "probabilities": ("FP32", probabilities.astype(np.float32).tolist(), [10]),
    }
    outputs = []
    for field in output_fields:
        if field["name"] == "preview":
            pixels = (255 - features.reshape(8, 8) / 16.0 * 255).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").resize((128, 128), Image.Resampling.NEAREST).save(field["data"])
            outputs.append({"name": "preview", "datatype": "FILE", "data": field["data"], "shape": [1],
                            "content_type": "image/png"})
            continue
        datatype, data, shape = results[field["name"]]
        outputs.append({"name": field["name"], "datatype": datatype, "data": data, "shape": shape})
    return outputs, model
