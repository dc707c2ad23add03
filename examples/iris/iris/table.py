"""Classify a whole table of iris flowers: a CSV file in, the same CSV with a `species` column out."""

from __future__ import annotations

import csv
from typing import Any

import joblib
import numpy as np

from iris.predict import SPECIES

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]


def inference(parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
              output_fields: list[dict[str, Any]], model_key: str,
              model: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Add a predicted `species` column to a CSV table of iris measurements.

    Inputs:
        table (FILE, shape=[1], content_type=text/csv): a CSV with a header row and the
            columns sepal_length, sepal_width, petal_length, petal_width (cm); other columns are kept.

    Outputs:
        predictions (FILE, shape=[1], content_type=text/csv): the input table with a
            `species` column added.
        rows (INT32, shape=[1]): how many rows were classified.

    Example:
        inputs:
          table: sample.csv
    """
    if model is None:
        model = joblib.load(model_key)
    table = next(i for i in inputs if i["name"] == "table")
    with open(table["data"], newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        header = list(reader.fieldnames or [])
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"the table lacks the column(s) {', '.join(missing)}; its header is {header}")
        records = list(reader)
    features = np.array([[float(r[c]) for c in COLUMNS] for r in records], dtype=np.float32).reshape(-1, 4)
    predicted = model.predict(features) if len(records) else []
    outputs = []
    for field in output_fields or [{"name": "predictions", "data": None}, {"name": "rows"}]:
        if field["name"] == "predictions":
            with open(field["data"], "w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=header + ["species"])
                writer.writeheader()
                for record, label in zip(records, predicted):
                    writer.writerow({**record, "species": SPECIES[int(label)]})
            outputs.append({"name": "predictions", "datatype": "FILE", "data": field["data"], "shape": [1],
                            "content_type": "text/csv"})
        elif field["name"] == "rows":
            outputs.append({"name": "rows", "datatype": "INT32", "data": [len(records)], "shape": [1]})
    return outputs, model
