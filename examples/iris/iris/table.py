"""Classify a whole table of iris flowers: a CSV file in, the same CSV with a `species` column out."""

from __future__ import annotations

import csv
import math
import os
from typing import Any

import joblib
import numpy as np

from iris.predict import SPECIES
from mlcomponent import InvalidInput

COLUMNS = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
MAX_BYTES = 50 * 1024 * 1024  # a table larger than this is refused, not read into memory


def read_table(path: str) -> tuple[list[str], list[dict[str, str]], np.ndarray]:
    """The header, the rows and their measurements; anything unusable is the client's fault (InvalidInput)."""
    size = os.path.getsize(path)
    if size == 0:
        raise InvalidInput("the table is empty; send a CSV with a header row and one row per flower")
    if size > MAX_BYTES:
        raise InvalidInput(f"the table is {size / 2**20:.0f} MB; at most {MAX_BYTES // 2**20} MB are classified at once")
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            reader = csv.DictReader(stream)
            header = list(reader.fieldnames or [])
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise InvalidInput(f"the table lacks the column(s) {', '.join(missing)}; its header is {header}")
            records = list(reader)
    except UnicodeDecodeError:
        raise InvalidInput("the table is not UTF-8 text; send a CSV file") from None
    except csv.Error as error:
        raise InvalidInput(f"the table is not a readable CSV: {error}") from None
    values = []
    for number, record in enumerate(records, start=2):
        row = []
        for column in COLUMNS:
            try:
                value = float(record[column])
            except (TypeError, ValueError):
                raise InvalidInput(f"line {number}, column {column}: {record[column]!r} is not a number") from None
            if not math.isfinite(value):
                raise InvalidInput(f"line {number}, column {column}: {record[column]!r} is not a finite number")
            row.append(value)
        values.append(row)
    return header, records, np.array(values, dtype=np.float32).reshape(-1, 4)


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
    header, records, features = read_table(table["data"])
    predicted = model.predict(features) if len(records) else []
    outputs = []
    for field in output_fields or [{"name": "predictions", "data": None}, {"name": "rows"}]:
        if field["name"] == "predictions":
            with open(field["data"], "w", newline="", encoding="utf-8") as stream:
                writer = csv.DictWriter(stream, fieldnames=header + ["species"])
                writer.writeheader()
                for record, label in zip(records, predicted, strict=True):
                    writer.writerow({**record, "species": SPECIES[int(label)]})
            outputs.append({"name": "predictions", "datatype": "FILE", "data": field["data"], "shape": [1],
                            "content_type": "text/csv"})
        elif field["name"] == "rows":
            outputs.append({"name": "rows", "datatype": "INT32", "data": [len(records)], "shape": [1]})
    return outputs, model
