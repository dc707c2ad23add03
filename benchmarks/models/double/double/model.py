"""Double a tensor; with `copy`, also copy a FILE input to a FILE output (the FILE row)."""

import shutil


def inference(parameters, inputs, output_fields, model_key, model=None):
    """Double x.

    Inputs:
        x (FP32, shape=[-1]): numbers.
        doc (FILE, optional): a file to copy to `copy`.

    Outputs:
        y (FP32, shape=[-1]): x times two.
        copy (FILE, optional): the copied file.
    """
    outputs = []
    for field in output_fields:
        if field["name"] == "y":
            x = next(i for i in inputs if i["name"] == "x")
            outputs.append({"name": "y", "datatype": "FP32", "shape": x["shape"], "data": [v * 2 for v in x["data"]]})
        elif field["name"] == "copy":
            doc = next(i for i in inputs if i["name"] == "doc")
            shutil.copyfile(doc["data"], field["data"])
            outputs.append({"name": "copy", "datatype": "FILE", "shape": [1], "data": field["data"]})
    return outputs, model
