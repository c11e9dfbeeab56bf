"""The issue's overfitting recipe on small 8-bit images, with and without regularization.

A Poon-Domingos circuit with K=16 categorical leaves (256 states per pixel)
trained by full-batch EM on few images puts almost no mass on pixel values a
density never saw, and scores far worse on test images than on its training
images. Here: scikit-learn's 8x8 digits made 8-bit (level * 15 plus uniform
noise in 0..15, so that most of a pixel's 256 values are rare), the first
``--n-train`` images for training (the estimator's own early stopping splits
off a tenth), images 1000 on for testing; or, with ``--images mnist``, the
first ``--n-train`` MNIST training digits (28x28, PD step ``--pd-delta``) and
the first ``--n-test`` test digits (the issue's check: 5,000 rows).
Reference points: the uniform
distribution and independent categorical pixels with add-``a`` smoothing, ``a``
chosen on the last tenth of the training images. One line per fit: the
regularization settings, mean train and test log-likelihood (nats per image),
epochs, seconds.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/regularize_images.py [--n-train 600]
    OMP_NUM_THREADS=1 python benchmarks/regularize_images.py --images mnist --n-train 5000 \
        --settings 'pseudocount=0;pseudocount=auto'
"""

import argparse
import json
import time
import warnings

from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from _data import default_data_dir, load_mnist
from _references import independent_pixels, uniform
from defaults import parse_overrides

from skpc import EinsumNetworkDensity

SETTINGS = [
    {"pseudocount": "auto"},  # the default
    {"pseudocount": 0.0},
    {"pseudocount": 0.1},
    {"pseudocount": 1.0},
    {"pseudocount": 10.0},
    {"pseudocount": 100.0},
    {"pseudocount": 0.0, "softening": 0.99},
    {"pseudocount": 0.0, "softening": 0.9},
    {"pseudocount": 0.0, "softening": 0.8},
    {"pseudocount": 10.0, "softening": 0.9},
]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", choices=["digits8", "mnist"], default="digits8")
    parser.add_argument("--data", type=Path, default=default_data_dir(), help="folder holding mnist/ (--images mnist)")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=10000, help="test digits (--images mnist)")
    parser.add_argument("--pd-delta", type=int, default=7, help="Poon-Domingos step (--images mnist)")
    parser.add_argument("--settings", default=None,
                        help="';'-separated settings, each ','-separated name=value (default: the built-in list)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.images == "mnist":
        x_train, _, x_test, _ = load_mnist(args.data)
        train = x_train[: args.n_train].reshape(args.n_train, -1).astype(np.float64)
        test = x_test[: args.n_test].reshape(len(x_test[: args.n_test]), -1).astype(np.float64)
        shape = dict(image_shape=(28, 28), pd_delta=args.pd_delta)
    else:
        X, _ = load_digits(return_X_y=True)
        rng = np.random.default_rng(args.seed)
        X8 = np.clip(X * 15 + rng.integers(0, 16, size=X.shape), 0, 255)
        train, test = X8[: args.n_train], X8[1000:]
        shape = dict(image_shape=(8, 8))
    settings = SETTINGS if args.settings is None else [parse_overrides(p.strip() for p in item.split(",") if p.strip()) for item in args.settings.split(";")]
    smoothing, independent = independent_pixels(train, test, 256)
    print(json.dumps({"model": "uniform", "test_ll": round(uniform(train.shape[1], 256), 2)}))
    print(json.dumps({"model": "independent pixels", "smoothing": smoothing, "test_ll": round(independent, 2)}))
    for setting in settings:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = EinsumNetworkDensity(structure="pd", n_sums=16, batch_size=None, random_state=args.seed,
                                         **shape, **setting).fit(train)
        print(json.dumps({"images": args.images, "n_train": len(train), "model": "PD K=16, full-batch EM", **setting,
                          "pseudocount_": model.pseudocount_, "train_ll": round(model.score(train), 2),
                          "test_ll": round(model.score(test), 2), "epochs": model.n_iter_,
                          "warnings": sorted({w.category.__name__ for w in caught}),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
