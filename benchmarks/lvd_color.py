"""LVD on colour images: RGB crops of scikit-learn's two sample photographs.

Crops of ``--size`` x ``--size`` pixels (3 channels, Gaussian leaves over
the values scaled to [0, 1]) are cut at random from ``china.jpg`` (training
and validation crops) and ``flower.jpg`` (test crops: another photograph).
``LVDDensity(image_shape=(size, size, 3), patch_size=--patch)`` is compared
with ``EinsumNetworkDensity`` on the same region graph trained by EM alone
for as many epochs. Nothing is downloaded: the photographs ship with
scikit-learn. Prints one JSON line per model (test log-likelihood per crop
and per dimension, seconds per stage).

Usage::

    python benchmarks/lvd_color.py [--size 8] [--patch 4] [--n-clusters 8]
"""

import argparse
import json
import time
import warnings

import numpy as np
from sklearn.datasets import load_sample_images
from sklearn.exceptions import ConvergenceWarning

from skpc import EinsumNetworkDensity, LVDDensity


def crops(image, n, size, rng):
    """n random (size, size, 3) crops of image, flattened and scaled to [0, 1]: (n, size*size*3)."""
    H, W, _ = image.shape
    rows = rng.integers(0, H - size, n)
    cols = rng.integers(0, W - size, n)
    out = np.stack([image[r : r + size, c : c + size] for r, c in zip(rows, cols)])
    return out.reshape(n, -1).astype(np.float64) / 255.0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=8)
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--n-clusters", type=int, default=8)
    parser.add_argument("--embedder", default="mae")
    parser.add_argument("--n-train", type=int, default=4000)
    parser.add_argument("--n-valid", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--max-iter", type=int, default=20)
    parser.add_argument("--finetune-max-iter", type=int, default=10)
    parser.add_argument("--min-var", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    china, flower = load_sample_images().images
    rng = np.random.default_rng(args.seed)
    train = crops(china, args.n_train + args.n_valid, args.size, rng)
    X_train, X_valid = train[: args.n_train], train[args.n_train :]
    X_test = crops(flower, args.n_test, args.size, rng)
    n_dims = X_train.shape[1]
    common = dict(min_var=args.min_var, random_state=args.seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # epoch budgets, recorded below
        start = time.perf_counter()
        lvd = LVDDensity(
            image_shape=(args.size, args.size, 3),
            patch_size=args.patch,
            n_clusters=args.n_clusters,
            embedder=args.embedder,
            max_iter=args.max_iter,
            finetune_max_iter=args.finetune_max_iter,
            **common,
        ).fit(X_train, X_val=X_valid)
        lvd_seconds = time.perf_counter() - start
        start = time.perf_counter()
        em = EinsumNetworkDensity(
            structure=lvd.region_graph_,
            n_sums=args.n_clusters,
            max_iter=args.max_iter + args.finetune_max_iter,
            **common,
        ).fit(X_train, X_val=X_valid)
        em_seconds = time.perf_counter() - start
    for name, model, seconds in (("lvd", lvd, lvd_seconds), ("em", em, em_seconds)):
        test = float(model.score(X_test))
        row = {
            "model": name,
            "image_shape": [args.size, args.size, 3],
            "patch": args.patch,
            "n_clusters": args.n_clusters,
            "n_parameters": int(model.n_parameters_),
            "test_nats_per_crop": round(test, 2),
            "test_nats_per_dim": round(test / n_dims, 4),
            "epochs": int(model.n_iter_),
            "train_seconds": round(seconds, 1),
        }
        if name == "lvd":
            row["stage_seconds"] = {k: round(v, 1) for k, v in lvd.stage_times_.items()}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
