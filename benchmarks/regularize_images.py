"""The issue's overfitting recipe on small 8-bit images, with and without regularization.

A Poon-Domingos circuit with K=16 categorical leaves (256 states per pixel)
trained by full-batch EM on few images puts almost no mass on pixel values a
density never saw, and scores far worse on test images than on its training
images. Here: scikit-learn's 8x8 digits made 8-bit (level * 15 plus uniform
noise in 0..15, so that most of a pixel's 256 values are rare), the first
``--n-train`` images for training (the estimator's own early stopping splits
off a tenth), images 1000 on for testing. Reference points: the uniform
distribution and independent categorical pixels with add-``a`` smoothing, ``a``
chosen on the last tenth of the training images. One line per fit: the
regularization settings, mean train and test log-likelihood (nats per image),
epochs, seconds.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/regularize_images.py [--n-train 600]
"""

import argparse
import json
import time
import warnings

import numpy as np
from sklearn.datasets import load_digits

from skpc import EinsumNetworkDensity

SETTINGS = [
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


def independent_pixels(train, test, smoothings=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0)):
    """(a, mean test log-likelihood) of add-a smoothed independent 256-state pixels."""

    def fit_score(fit_rows, score_rows, a):
        counts = np.stack([np.bincount(col, minlength=256) for col in fit_rows.T.astype(int)])  # (D, 256)
        log_p = np.log(counts + a) - np.log(counts.sum(1, keepdims=True) + 256 * a)
        return float(np.take_along_axis(log_p, score_rows.T.astype(int), 1).sum(0).mean())

    n_fit = int(0.9 * len(train))
    best = max(smoothings, key=lambda a: fit_score(train[:n_fit], train[n_fit:], a))
    return best, fit_score(train, test, best)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    X, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(args.seed)
    X8 = np.clip(X * 15 + rng.integers(0, 16, size=X.shape), 0, 255)
    train, test = X8[: args.n_train], X8[1000:]
    smoothing, independent = independent_pixels(train, test)
    print(json.dumps({"model": "uniform", "test_ll": round(-64 * np.log(256), 2)}))
    print(json.dumps({"model": "independent pixels", "smoothing": smoothing, "test_ll": round(independent, 2)}))
    for setting in SETTINGS:
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model = EinsumNetworkDensity(structure="pd", image_shape=(8, 8), n_sums=16, batch_size=None,
                                         random_state=args.seed, **setting).fit(train)
        print(json.dumps({"model": "PD K=16, full-batch EM", **setting, "train_ll": round(model.score(train), 2),
                          "test_ll": round(model.score(test), 2), "epochs": model.n_iter_,
                          "warnings": sorted({w.category.__name__ for w in caught}),
                          "seconds": round(time.perf_counter() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
