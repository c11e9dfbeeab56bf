"""MNIST test bits per dimension of Einsum Networks, beside the published figures.

Models over the raw 0..255 pixels (``--models``), each trained by the estimator's
default schedule with early stopping on a validation split (the last
``--n-valid`` training images, ``fit(X_train, X_val=X_valid)``): stochastic
EM with the step halved on validation plateaus, then full-batch EM while it
improves. The estimator has no time limit: one stochastic epoch (no
validation, ``max_full_batch_iter=0``) is timed first, and the warm-started
fit gets ``max_iter`` and ``max_full_batch_iter`` sized from it so the model
fits ``--budget-minutes`` (``--full-batch-share`` of the epochs for the
full-batch phase), unless ``--max-iter`` / ``--max-full-batch-iter`` are
given:

- ``pd``: a Poon-Domingos structure over 28x28 (step sizes ``--pd-delta``),
- ``rat``: random binary trees (``--depth``, ``--n-repetitions``),
- ``hclt``: a hidden Chow-Liu tree learned from the training images (CP
  layers; the tree from 2,675 evenly spaced images binned to 16 levels),

with ``--leaf`` binomial (255 trials, one parameter per pixel and density)
or categorical (256 states) leaves. bits/dim = -log p(x) / (784 ln 2) with
p the probability of the discrete image.

Prints one JSON line per model: test and validation bits/dim, nats per test
image, parameters, epochs of each phase and training seconds. Anchors: the Einsum Networks
paper's -686.20 nats per test image (about 1.26 bpd, a 107M-parameter model
trained on a GPU); cirkit's MNIST example 1.255 bpd with 25.7M parameters.

Usage::

    python benchmarks/mnist_bpd.py [--data DIR] [--models pd,rat] [--budget-minutes 20]
"""

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning

from _data import default_data_dir, load_mnist
from _schedule import fit_recorded, phase_summary

from skpc import EinsumNetworkDensity

IMAGE = (28, 28)


def bits_per_dim(mean_log_likelihood, n_dims=IMAGE[0] * IMAGE[1]):
    return -mean_log_likelihood / (n_dims * math.log(2))


STRUCTURE_FIGURES = {  # what each model's JSON line records of its structure
    "pd": lambda args: {"pd_delta": args.pd_delta},
    "rat": lambda args: {"depth": args.depth, "n_repetitions": args.n_repetitions},
    "hclt": lambda args: {"structure": "hclt"},
}


def make_model(name, args):
    common = dict(
        leaf=args.leaf,
        n_sums=args.n_sums,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        tol=args.tol,
        random_state=args.seed,
        **({"n_trials": 255} if args.leaf == "binomial" else {"n_categories": 256}),
    )
    if name == "pd":
        return EinsumNetworkDensity(structure="pd", image_shape=IMAGE, pd_delta=args.pd_delta, **common)
    if name == "hclt":
        return EinsumNetworkDensity(structure="hclt", **common)
    return EinsumNetworkDensity(structure="rat", depth=args.depth, n_repetitions=args.n_repetitions, **common)


def run_model(name, data, args):
    X_train, X_valid, X_test = data
    start = time.perf_counter()
    budget = 60.0 * args.budget_minutes
    model = make_model(name, args)
    # one stochastic epoch, timed (it also initializes); the rest warm-started
    model.set_params(max_iter=1, max_full_batch_iter=0, early_stopping=False)
    first, _ = fit_recorded(model, X_train)
    epoch_s = first[-1]["seconds"] * (1.0 + len(X_valid) / len(X_train))  # + validation scoring
    # epochs that fit the budget, less one for fit's final scoring pass over the training images
    n_epochs = max(2, int((start + budget - time.perf_counter()) / epoch_s) - 1)
    max_iter = args.max_iter or max(1, int(n_epochs * (1.0 - args.full_batch_share)))
    max_full_batch_iter = args.max_full_batch_iter
    if max_full_batch_iter is None:
        max_full_batch_iter = max(1, n_epochs - max_iter)
    model.set_params(
        warm_start=True,
        early_stopping=True,
        max_iter=max_iter,
        max_full_batch_iter=max_full_batch_iter,
        random_state=args.seed + 1,  # another batch order than the first epoch's
    )
    records, _ = fit_recorded(model, X_train, echo=sys.stderr if args.verbose else None, X_val=X_valid)
    train_seconds = time.perf_counter() - start
    test_ll = float(model.score(X_test))
    valid_ll = float(model.best_validation_score_)
    return {
        "model": name,
        "leaf": args.leaf,
        "n_sums": args.n_sums,
        **STRUCTURE_FIGURES[name](args),
        "n_parameters": int(model.n_parameters_),
        "test_bpd": round(bits_per_dim(test_ll), 4),
        "test_nats_per_image": round(test_ll, 2),
        "valid_bpd": round(bits_per_dim(valid_ll), 4),
        "epochs": int(model.n_iter_),
        **phase_summary(records),
        "first_epoch_s": round(epoch_s, 1),
        "max_iter": max_iter,
        "max_full_batch_iter": max_full_batch_iter,
        "converged": bool(model.converged_),
        "learning_rate": args.learning_rate,
        "batch_size": args.batch_size,
        "train_seconds": round(train_seconds, 1),
        "n_train": len(X_train),
        "n_test": len(X_test),
        "threads": torch.get_num_threads(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--models", default="pd,rat", help="comma-separated: pd, rat, hclt")
    parser.add_argument("--leaf", choices=["binomial", "categorical"], default="categorical")
    parser.add_argument("--n-sums", type=int, default=10)
    parser.add_argument("--pd-delta", type=lambda s: [int(v) for v in s.split(",")], default=[7])
    parser.add_argument("--depth", type=int, default=5)
    parser.add_argument("--n-repetitions", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=None, help="initial stochastic EM step size (default: the estimator's, 0.5)")
    parser.add_argument("--n-valid", type=int, default=5000)
    parser.add_argument("--n-train", type=int, default=None, help="use only this many training images")
    parser.add_argument("--n-test", type=int, default=None)
    parser.add_argument("--budget-minutes", type=float, default=20.0, help="training time per model")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true")
    parser.add_argument("--max-iter", type=int, default=None, help="stochastic EM epochs at most after the first (default: sized to the budget)")
    parser.add_argument("--max-full-batch-iter", type=int, default=None, help="full-batch EM epochs at most (default: sized to the budget)")
    # full-batch EM: its first epoch beat ten stochastic ones on MNIST (RESULTS.md section 6)
    parser.add_argument("--full-batch-share", type=float, default=0.3, help="share of the epochs that fit the budget sized for full-batch EM")
    parser.add_argument("--tol", type=float, default=1e-4, help="the estimator's tol (plateau rule)")
    args = parser.parse_args(argv)

    x_train, _, x_test, _ = load_mnist(args.data)
    x_train = x_train.reshape(len(x_train), -1).astype(np.float64)
    x_test = x_test.reshape(len(x_test), -1).astype(np.float64)
    X_valid = x_train[-args.n_valid :]
    X_train = x_train[: -args.n_valid][: args.n_train]
    X_test = x_test[: args.n_test]
    warnings.simplefilter("ignore", category=UserWarning)
    warnings.simplefilter("ignore", category=ConvergenceWarning)  # reported as "converged"
    for name in args.models.split(","):
        print(json.dumps(run_model(name.strip(), (X_train, X_valid, X_test), args)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
