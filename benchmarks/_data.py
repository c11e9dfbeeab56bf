"""Where the benchmark scripts find the shared data sets, and their loaders.

The data live outside the repository (``../shared/data`` beside it, or the
folder named by ``$SKPC_DATA`` or a script's ``--data``); nothing here
downloads.
"""

import gzip
import os
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def default_data_dir():
    return Path(os.environ.get("SKPC_DATA", REPO.parent / "shared" / "data"))


def _require(path, what):
    if not path.exists():
        raise SystemExit(f"{what} not found at {path}; pass --data DIR or set SKPC_DATA.")
    return path


def load_mnist(data_dir):
    """(x_train (60000, 28, 28) uint8, y_train, x_test (10000, 28, 28), y_test)."""
    with np.load(_require(Path(data_dir) / "mnist" / "mnist.npz", "MNIST")) as f:
        return f["x_train"], f["y_train"], f["x_test"], f["y_test"]


def load_semeion(data_dir):
    with np.load(_require(Path(data_dir) / "semeion" / "semeion.npz", "SEMEION")) as f:
        return f["X"], f["y"]


def load_debd(data_dir, name, dtype=np.float64):
    """(train, valid, test) arrays of one DEBD data set (comma-separated 0/1 rows)."""
    folder = Path(data_dir) / "debd" / name
    splits = []
    for split in ("train", "valid", "test"):
        path = folder / f"{name}.{split}.data.gz"
        if not path.exists():
            raise FileNotFoundError(f"{path} not found: expected the DEBD layout DIR/debd/<name>/<name>.{split}.data.gz")
        with gzip.open(path, "rt") as f:
            splits.append(np.loadtxt(f, delimiter=",", dtype=dtype, ndmin=2))
    return tuple(splits)
