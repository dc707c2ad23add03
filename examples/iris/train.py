"""Train the iris classifier and save it into the example's local model box.

The local box for `iris-data` is `<data-root>/boxes/iris-data/`; the manifest mounts
its `users/developer/file_groups/models` at `/home/app/models`, so the model that
`modelPath: /home/app/models/iris.joblib` names lives here:
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

HERE = Path(__file__).resolve().parent
BOX_FOLDER = Path("boxes/iris-data/users/developer/file_groups/models")


def train(data_root: Path) -> Path:
    features, target = load_iris(return_X_y=True)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(features, target)
    out = data_root / BOX_FOLDER / "iris.joblib"
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=HERE / "data")
    print(f"saved {train(parser.parse_args().data_root)}")
