"""Classify iris flowers with a scikit-learn model loaded from the model box."""

from __future__ import annotations

import os
from typing import Any

import joblib
import numpy as np

from mlcomponent import InvalidInput

SPECIES = ["setosa", "versicolor", "virginica"]


def inference(parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
              output_fields: list[dict[str, Any]], model_key: str,
              model: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Classify iris flowers from four measurements.

    Inputs:
        features (FP32, shape=[-1, 4], range=[0, 100]): sepal length, sepal width,
            petal length and petal width in cm; one row per flower.

    Outputs:
        label (str, shape=[-1]): the predicted species of each row.
        class_index (INT32, shape=[-1]): the predicted class index (0, 1 or 2).
        probabilities (FP32, shape=[-1, 3], optional): the probability of each species.

    Parameters:
        min_confidence (float, default=0.0, range=[0, 1]): rows whose best probability is
            lower get the label from IRIS_UNSURE_LABEL (spec.env; "?" without it) instead of a species.

    Batching:
        max_batch_size: 64
        max_batch_delay: 2
        data: numpy

    Example:
        inputs:
          features: [[5.1, 3.5, 1.4, 0.2]]
    """
    if model is None:
        model = joblib.load(model_key)
    features = next(i for i in inputs if i["name"] == "features")
    if len(features["data"]) == 0:
        raise InvalidInput(f"features has no rows (shape {features['shape']}); send at least one row of four "
                           "measurements")
    # Batching: concurrent requests arrive merged (their rows one after the other) and each
    # output's rows are split back to them; `data: numpy` gives flat numpy arrays.
    rows = np.asarray(features["data"], dtype=np.float32).reshape(features["shape"])
    probabilities = model.predict_proba(rows)
    best = probabilities.argmax(axis=1)
    threshold = next((p["value"] for p in parameters if p["name"] == "min_confidence"), 0.0)
    unsure = os.environ.get("IRIS_UNSURE_LABEL", "?")
    labels = [SPECIES[i] if probabilities[n, i] >= threshold else unsure for n, i in enumerate(best)]
    values = {
        "label": ("str", labels, [len(rows)]),
        "class_index": ("INT32", best.astype(np.int32), [len(rows)]),
        "probabilities": ("FP32", probabilities.astype(np.float32).ravel(), list(probabilities.shape)),
    }
    outputs = []
    for field in output_fields or [{"name": "label"}, {"name": "class_index"}]:
        datatype, data, shape = values[field["name"]]
        outputs.append({"name": field["name"], "datatype": datatype, "data": data, "shape": shape})
    return outputs, model
