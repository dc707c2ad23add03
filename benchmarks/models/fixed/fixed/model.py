"""A model with a fixed cost per call: 5 ms whatever the batch size (as a GPU kernel launch costs).

FIXED_COST (seconds) changes the cost: benchmarks/admission.py runs it at 100 ms a call.
"""

import os
import time

COST = float(os.environ.get("FIXED_COST", "0.005"))


def inference(parameters, inputs, output_fields, model_key, model=None):
    """Sum each row, after a fixed cost (5 ms unless FIXED_COST says).

    Inputs:
        x (FP32, shape=[-1, 4]): rows.

    Outputs:
        y (FP32, shape=[-1]): the sum of each row.

    Batching:
        max_batch_size: 64
        max_batch_delay: 2
        data: numpy
    """
    x = inputs[0]
    time.sleep(COST)
    rows = x["data"].reshape(x["shape"])
    return [{"name": "y", "datatype": "FP32", "shape": [len(rows)], "data": rows.sum(axis=1)}], model
