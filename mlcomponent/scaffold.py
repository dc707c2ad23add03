"""`mlcomponent init DIR`: a module that works as written — validate, serve and test it at once.

The scaffold uses a tiny linear model stored as JSON in the local model box, so it has
no dependencies beyond mlcomponent; replace it with your own model and keep the shape.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

MODEL_FOLDER = "users/developer/file_groups/models"


def names_for(folder: Path) -> tuple[str, str]:
    """(component name: a DNS-1123 label, package name: a Python identifier) from the folder name."""
    base = folder.resolve().name.lower()
    label = re.sub(r"[^a-z0-9-]+", "-", base).strip("-")[:63].strip("-") or "my-module"
    if not label[0].isalpha():
        label = f"m-{label}"[:63]
    package = re.sub(r"\W+", "_", label).strip("_")
    return label, package


def files_for(name: str, package: str) -> dict[str, str]:
    box = f"{name}-data"[:63]
    return {
        "mlcomponent.yaml": MANIFEST.format(name=name, package=package, box=box),
        f"{package}/__init__.py": f'"""The {name} module."""\n',
        f"{package}/predict.py": PREDICT,
        "build_model.py": BUILD_MODEL.format(box=box, folder=MODEL_FOLDER),
        f"data/boxes/{box}/{MODEL_FOLDER}/model.json": json.dumps(DEFAULT_MODEL, indent=2) + "\n",
        "tests/test_service.py": TEST.format(name=name),
        "README.md": README.format(name=name, package=package, box=box, folder=MODEL_FOLDER),
        ".gitignore": GITIGNORE.format(box=box),
    }


def scaffold(folder: Path, force: bool = False) -> list[Path]:
    """Write the module; refuse (listing them) to overwrite existing files unless ``force``."""
    name, package = names_for(folder)
    planned = {folder / relative: text for relative, text in files_for(name, package).items()}
    existing = [path for path in planned if path.exists()]
    if existing and not force:
        listed = ", ".join(str(p) for p in existing)
        raise FileExistsError(f"refusing to overwrite {listed}; pass --force to replace them")
    for path, text in planned.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return list(planned)


# Everything under data/ is local state (the secret that signs download links, uploads and
# outputs in the file box, caches), except the model box the module ships with.
GITIGNORE = """\
__pycache__/
data/*
!data/boxes/
data/boxes/*
!data/boxes/{box}/
"""

DEFAULT_MODEL = {"weights": [0.4, -0.2, 0.1], "bias": 0.05}

MANIFEST = """\
# An MLComponent scaffolded by `mlcomponent init`.
# Check it:  mlcomponent validate mlcomponent.yaml
# Serve it:  mlcomponent serve mlcomponent.yaml   (then open http://127.0.0.1:8080/)
apiVersion: "unified-platform.cs.hse.ru/v1"
kind: MLComponent
metadata:
  name: {name}
spec:
  image:
    existingImageName: registry.example.com/you/{name}:0.1.0
    resourceLimits:
      cpu: "1"
      memory: 512M
  env:
    - name: SCORE_LABELS
      value: "low,high"
  mlService:
    packageRegistryName: python-package-registry
    inference:
      fileExchange:
        fileBox: user-box
        inferenceFilesPath: /home/app/users/tmp
      model:
        modelBox: model-box
        modelPath: /home/app/models/model.json
      entryPoint:
        pythonPath: .
        pythonFunction: {package}.predict.inference
  connectedBoxes:
    - name: model-box
      path: /home/app/models
      mountS3Box:
        subPath: users/developer/file_groups/models
        s3BoxName: {box}
    - name: user-box
      copyS3Box:
        s3BoxName: users
"""

PREDICT = '''\
"""Score rows of three features with a linear model; replace it with your own."""

from __future__ import annotations

import json
import os
from typing import Any


def inference(parameters: list[dict[str, Any]], inputs: list[dict[str, Any]],
              output_fields: list[dict[str, Any]], model_key: str,
              model: Any = None) -> tuple[list[dict[str, Any]], Any]:
    """Score rows of three features.

    Inputs:
        features (FP32, shape=[-1, 3]): three numbers per row.

    Outputs:
        score (FP32, shape=[-1]): the linear score of each row.
        label (str, shape=[-1]): "high" when the score passes the threshold, else "low".

    Parameters:
        threshold (float, default=0.0): the score from which a row is "high".

    Example:
        inputs:
          features: [[1.0, 2.0, 3.0]]
    """
    if model is None:  # loaded once per worker, then passed back in on every call
        with open(model_key, encoding="utf-8") as stream:
            model = json.load(stream)
    features = next(item for item in inputs if item["name"] == "features")
    threshold = next((p["value"] for p in parameters if p["name"] == "threshold"), 0.0)
    low, high = os.environ.get("SCORE_LABELS", "low,high").split(",")
    values, rows = features["data"], features["shape"][0]
    weights, bias = model["weights"], model["bias"]
    scores = [sum(w * x for w, x in zip(weights, values[r * 3:r * 3 + 3])) + bias for r in range(rows)]
    results = {
        "score": {"datatype": "FP32", "data": scores, "shape": [rows]},
        "label": {"datatype": "str", "data": [high if s >= threshold else low for s in scores], "shape": [rows]},
    }
    return [{"name": field["name"], **results[field["name"]]} for field in output_fields], model
'''

BUILD_MODEL = '''\
"""Write the model into the local model box (data/boxes/{box}/{folder}/model.json).

Replace this with your training script; upload the result to the platform box
`{box}` under `{folder}/` for the cluster.
"""

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
target = HERE / "data" / "boxes" / "{box}" / "{folder}" / "model.json"
target.parent.mkdir(parents=True, exist_ok=True)
target.write_text(json.dumps({{"weights": [0.4, -0.2, 0.1], "bias": 0.05}}, indent=2) + "\\n")
print(f"saved {{target}}")
'''

TEST = '''\
"""Serve this module as the platform would and call it over HTTP."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from mlcomponent.client import Client

HERE = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_the_service_scores_rows() -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "mlcomponent", "serve", str(HERE / "mlcomponent.yaml"),
                               "--port", str(port)], start_new_session=True)
    try:
        with Client(f"http://127.0.0.1:{{port}}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while not client.ready():
                assert server.poll() is None, "the service exited"
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.1)
            result = client.infer({{"features": [[1.0, 2.0, 3.0], [-5.0, 0.0, 0.0]]}}, parameters={{"threshold": 0.2}})
        assert list(result["label"]) == ["high", "low"]
        assert abs(float(result["score"][0]) - 0.35) < 1e-6
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
'''

README = """\
# {name}

An MLComponent module scaffolded by `mlcomponent init`.

| file | what it is |
|---|---|
| `mlcomponent.yaml` | the manifest (`kind: MLComponent`) |
| `{package}/predict.py` | the `inference` function and its docstring specification |
| `build_model.py` | writes the model into the local model box |
| `data/boxes/{box}/{folder}/model.json` | the model, where `modelPath` finds it locally |
| `tests/test_service.py` | serves the module and calls it |
| `.gitignore` | keeps `data/` out of git (the secret `data/files.key`, uploads, outputs), all but the model box |

```bash
mlcomponent validate mlcomponent.yaml      # the manifest, the docstring spec, and the Example run once
mlcomponent serve mlcomponent.yaml --reload  # http://127.0.0.1:8080/ is a playground
mlcomponent infer http://127.0.0.1:8080 -i features=1,2,3 -p threshold=0.2
python -m pytest tests                     # the module's own test
```

To deploy, build an image with this folder as its working directory, upload the model
to the box `{box}` under `{folder}/`, and `kubectl apply -f mlcomponent.yaml` where the
mlcomponent operator runs.
"""
