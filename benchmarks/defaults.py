"""What a user gets from the defaults: estimators at their default parameters
on 8-bit-style images, scored on held-out images against the uniform
distribution, with every warning the fit raised.

- ``mnist``: ``EinsumNetworkDensity()`` on ``--n-train`` MNIST digits
  (pixels 0..255), test on ``--n-test`` test digits; uniform = -784 log 256;
  also the independent-pixel model (one categorical per pixel, its
  add-``a`` smoothing chosen on the last tenth of the training rows, then
  refitted on all of them), the reference a density of images must beat.
- ``digits``: ``EinsumNetworkDensity()`` and ``LVDDensity(image_shape=(8, 8),
  patch_size=4)`` (everything else default) on scikit-learn's 8x8 digits
  (levels 0..16), test on a held-out fifth; uniform = -64 log 17.

Prints one JSON line per fit.

Usage::

    python benchmarks/defaults.py [--data DIR] [--n-train 3000] [--n-test 1000] [--sets mnist,digits] \
        [--set-param pseudocount=0]   # a default overridden, to compare against it
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
from _references import independent_pixels, uniform

from skpc import EinsumNetworkDensity, LVDDensity


def run(name, model, X_train, X_test, n_levels):
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(X_train)
    seconds = time.perf_counter() - start
    reference = uniform(X_train.shape[1], n_levels)
    test = float(model.score(X_test))
    return {
        "data": name,
        "model": type(model).__name__,
        "test_nats_per_image": round(test, 2),
        "uniform_nats_per_image": round(reference, 2),
        "better_than_uniform": bool(test > reference),
        "test_bpd": round(-test / (X_train.shape[1] * np.log(2)), 4),
        "epochs": int(model.n_iter_),
        "warnings": [f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught],
        "seconds": round(seconds, 1),
    }


def parse_overrides(items):
    """``name=value`` pairs (numbers parsed) for the estimators' parameters."""
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name] = json.loads(value)
        except json.JSONDecodeError:
            out[name] = value
    return out


def override(model, overrides):
    """The model with those overrides that name its parameters set."""
    return model.set_params(**{k: v for k, v in overrides.items() if k in model.get_params()})


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--n-train", type=int, default=3000)
    parser.add_argument("--n-test", type=int, default=1000)
    parser.add_argument("--sets", default="mnist,digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--set-param", action="append", default=[], metavar="NAME=VALUE",
                        help="override one default of the estimators (repeatable), e.g. pseudocount=0")
    args = parser.parse_args(argv)
    overrides = parse_overrides(args.set_param)
    sets = args.sets.split(",")
    if "digits" in sets:
        X, _ = load_digits(return_X_y=True)
        X_train, X_test = train_test_split(X, test_size=0.2, random_state=args.seed)
        for model in (EinsumNetworkDensity(random_state=args.seed),
                      LVDDensity(image_shape=(8, 8), patch_size=4, random_state=args.seed)):
            override(model, overrides)
            print(json.dumps(run("digits", model, X_train, X_test, 17)), flush=True)
    if "mnist" in sets:
        x_train, _, x_test, _ = load_mnist(args.data)
        X_train = x_train[: args.n_train].reshape(args.n_train, -1).astype(np.float64)
        X_test = x_test[: args.n_test].reshape(args.n_test, -1).astype(np.float64)
        smoothing, independent = independent_pixels(X_train, X_test, 256)
        print(json.dumps({"data": "mnist", "model": "independent pixels", "smoothing": smoothing,
                          "test_nats_per_image": round(independent, 2),
                          "test_bpd": round(-independent / (784 * np.log(2)), 4)}), flush=True)
        model = override(EinsumNetworkDensity(random_state=args.seed), overrides)
        record = run("mnist", model, X_train, X_test, 256)
        record["better_than_independent"] = bool(record["test_nats_per_image"] > independent)
        print(json.dumps(dict(record, overrides=overrides)), flush=True)


if __name__ == "__main__":
    main()
