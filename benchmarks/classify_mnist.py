"""Generative classification of digits with EinsumNetworkClassifier, with and
without the bottom half of every test image missing.

One Einsum Network per class, Bayes' rule with the empirical class priors.
The missing half is NaN and marginalized out exactly by every class density
(no imputation), so the same fitted classifier handles both cases.

Settings:

- ``digits`` (scikit-learn's 8x8 digits, values 0..16): binomial leaves with
  16 trials, Poon-Domingos over 8x8 with step 2, K=10, full-batch EM; a
  stratified 2/3 - 1/3 train/test split.
- ``mnist``: pixels binarized at 127 and Bernoulli leaves, Poon-Domingos over
  28x28 with step 7, K=10, stochastic EM (batch 500); a random subset of
  ``--n-train`` training digits (default 20000; ``--quick``: 3000) and the
  first ``--n-test`` test digits (default 10000; ``--quick``: 2000).

Prints one JSON line with the accuracies.

Usage::

    python benchmarks/classify_mnist.py [--data DIR] [--quick]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from _data import default_data_dir, load_mnist

from skpc import EinsumNetworkClassifier, EinsumNetworkDensity


def bottom_half_missing(X, image_shape):
    """A copy of X (n_samples, H*W) with the image rows H//2..H-1 set to NaN."""
    height, width = image_shape
    out = np.asarray(X, dtype=np.float64).copy().reshape(-1, height, width)
    out[:, height // 2 :, :] = np.nan
    return out.reshape(len(X), -1)


def evaluate(classifier, X_train, y_train, X_test, y_test, image_shape):
    start = time.perf_counter()
    classifier.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    X_half = bottom_half_missing(X_test, image_shape)
    proba_half = classifier.predict_proba(X_half)
    return {
        "n_train": len(y_train),
        "n_test": len(y_test),
        "accuracy": round(float(classifier.score(X_test, y_test)), 4),
        "accuracy_bottom_half_missing": round(float(np.mean(classifier.classes_[proba_half.argmax(1)] == y_test)), 4),
        "max_abs_proba_row_sum_error": float(np.abs(proba_half.sum(1) - 1).max()),
        "chance": round(float(np.max(np.bincount(y_test)) / len(y_test)), 4),
        "fit_seconds": round(fit_seconds, 1),
    }


def digits_result(seed):
    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=1 / 3, stratify=y, random_state=seed)
    density = EinsumNetworkDensity(
        structure="pd",
        image_shape=(8, 8),
        pd_delta=2,
        n_sums=10,
        leaf="binomial",
        n_trials=16,
        max_iter=30,
        batch_size=None,
        tol=None,
        random_state=seed,
    )
    result = evaluate(EinsumNetworkClassifier(density), X_train, y_train, X_test, y_test, (8, 8))
    result["setting"] = "PD delta=2, K=10, binomial(16) leaves, 30 full-batch EM epochs"
    return result


def mnist_result(data_dir, n_train, n_test, epochs, seed):
    x_train, y_train, x_test, y_test = load_mnist(data_dir)
    rng = np.random.default_rng(seed)
    train = rng.permutation(len(x_train))[:n_train]
    X_train = (x_train[train] > 127).astype(np.float64)
    X_test = (x_test[:n_test] > 127).astype(np.float64)
    density = EinsumNetworkDensity(
        structure="pd",
        image_shape=(28, 28),
        pd_delta=7,
        n_sums=10,
        leaf="bernoulli",
        max_iter=epochs,
        batch_size=500,
        tol=None,
        random_state=seed,
    )
    result = evaluate(EinsumNetworkClassifier(density), X_train, y_train[train], X_test, y_test[:n_test], (28, 28))
    result["setting"] = (
        f"PD delta=7, K=10, Bernoulli on pixels>127, {epochs} epochs of stochastic EM (batch 500), "
        f"{n_train} random training digits, first {n_test} test digits"
    )
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--quick", action="store_true", help="3000 training and 2000 test digits, 3 epochs")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n_train = args.n_train or (3000 if args.quick else 20000)
    n_test = args.n_test or (2000 if args.quick else 10000)
    epochs = args.epochs or (3 if args.quick else 8)
    result = {
        "benchmark": "classify_mnist",
        "digits": digits_result(args.seed),
        "mnist": mnist_result(args.data, n_train, n_test, epochs, args.seed),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
