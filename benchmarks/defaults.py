"""What a user gets from the defaults: estimators at their default parameters
on 8-bit-style images, scored on held-out images against the uniform
distribution, with every warning the fit raised.

- ``mnist``: ``EinsumNetworkDensity()`` on ``--n-train`` MNIST digits
  (pixels 0..255), test on ``--n-test`` test digits; uniform = -784 log 256.
- ``digits``: ``EinsumNetworkDensity()`` and ``LVDDensity(image_shape=(8, 8),
  patch_size=4)`` (everything else default) on scikit-learn's 8x8 digits
  (levels 0..16), test on a held-out fifth; uniform = -64 log 17.

Prints one JSON line per fit.

Usage::

    python benchmarks/defaults.py [--data DIR] [--n-train 3000] [--n-test 1000] [--sets mnist,digits]
"""

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from _data import default_data_dir, load_mnist

from skpc import EinsumNetworkDensity, LVDDensity


def run(name, model, X_train, X_test, n_levels):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X_train)
    seconds = time.perf_counter() - start
    uniform = -X_train.shape[1] * np.log(n_levels)
    test = float(model.score(X_test))
    return {
        "data": name,
        "model": type(model).__name__,
        "test_nats_per_image": round(test, 2),
        "uniform_nats_per_image": round(uniform, 2),
        "better_than_uniform": bool(test > uniform),
        "test_bpd": round(-test / (X_train.shape[1] * np.log(2)), 4),
        "epochs": int(model.n_iter_),
        "warnings": [f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught],
        "seconds": round(seconds, 1),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--sets", default="mnist,digits")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sets = args.sets.split(",")
    if "digits" in sets:
        X, _ = load_digits(return_X_y=True)
        X_train, X_test = train_test_split(X, test_size=0.2, random_state=args.seed)
        for model in (EinsumNetworkDensity(random_state=args.seed),
                      LVDDensity(image_shape=(8, 8), patch_size=4, random_state=args.seed)):
            print(json.dumps(run("digits", model, X_train, X_test, 17)), flush=True)
    if "mnist" in sets:
        x_train, _, x_test, _ = load_mnist(args.data)
        X_train = x_train[: args.n_train].reshape(args.n_train, -1).astype(np.float64)
        X_test = x_test[: args.n_test].reshape(args.n_test, -1).astype(np.float64)
        model = EinsumNetworkDensity(random_state=args.seed)
        print(json.dumps(run("mnist", model, X_train, X_test, 256)), flush=True)


if __name__ == "__main__":
    main()
