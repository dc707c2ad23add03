"""Train the digit classifier into the example's local model box; write sample PNGs.

`--samples DIR` also writes one PNG per digit (64x64, from the dataset's held-out
images) for trying the service: `digit-<label>.png`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
from PIL import Image
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

HERE = Path(__file__).resolve().parent
BOX_FOLDER = Path("boxes/digits-data/users/developer/file_groups/models")


def digit_png(pixels: np.ndarray, path: Path) -> None:
    """8x8 intensities 0..16 -> a 64x64 dark-ink-on-white PNG."""
    image = Image.fromarray((255 - pixels / 16.0 * 255).astype(np.uint8), mode="L")
    image.resize((64, 64), Image.Resampling.NEAREST).save(path)


def train(data_root: Path, samples: Path | None = None) -> Path:
    digits = load_digits()
    held_out = np.arange(len(digits.target)) % 10 == 0
    model = LogisticRegression(max_iter=5000)
    model.fit(digits.data[~held_out], digits.target[~held_out])
    out = data_root / BOX_FOLDER / "digits.joblib"
    out.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model, out)
    if samples is not None:
        samples.mkdir(parents=True, exist_ok=True)
        for label in range(10):
            index = np.flatnonzero(held_out & (digits.target == label))[0]
            digit_png(digits.images[index], samples / f"digit-{label}.png")
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-root", type=Path, default=HERE / "data")
    parser.add_argument("--samples", type=Path, default=None)
    arguments = parser.parse_args()
    print(f"saved {train(arguments.data_root, arguments.samples)}")
