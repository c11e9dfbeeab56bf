"""Latent variable distillation against EM alone on MNIST: the LVD paper's Figure 1, in small.

For each size ``n_clusters`` (K, the densities per region and the states of
each patch latent), two models with the SAME circuit:

- ``lvd``: ``LVDDensity`` (patches of ``--patch`` x ``--patch`` pixels,
  embedder ``--embedder``, k-means codes, a hidden Chow-Liu tree over the
  codes, an HCLT sub-circuit per patch), distilled for ``--max-iter``
  epochs on (X, Z), then fine-tuned on X for ``--finetune-max-iter``
  epochs;
- ``em``: ``EinsumNetworkDensity(structure=lvd.region_graph_, n_sums=K)``,
  the same region graph and layers from a random initialization, trained by
  EM alone for as many epochs as LVD's two EM stages together
  (``--max-iter + --finetune-max-iter``).

Both use the estimators' default schedule (stochastic EM with the step
halved on validation plateaus, then full-batch EM) with early stopping on
the validation images (``fit(X, X_val=...)``). Pixels are 256-state
categorical leaves (``--leaf``). Prints one JSON line per model (test
bits/dim, parameters, epochs, seconds per stage) and, with ``--plot PATH``,
saves test bits/dim against parameters and against training seconds.

Usage::

    python benchmarks/lvd_mnist.py [--sizes 4,8,16] [--n-train 10000] [--embedder mae]
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

from skpc import EinsumNetworkDensity, LVDDensity

IMAGE = (28, 28)


def bits_per_dim(mean_log_likelihood, n_dims=IMAGE[0] * IMAGE[1]):
    return -mean_log_likelihood / (n_dims * math.log(2))


def load(args):
    x_train, _, x_test, _ = load_mnist(args.data)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(x_train))
    flat = x_train.reshape(len(x_train), -1).astype(np.float64)
    train = flat[order[: args.n_train]]
    valid = flat[order[args.n_train : args.n_train + args.n_valid]]
    test = x_test.reshape(len(x_test), -1).astype(np.float64)[: args.n_test]
    return train, valid, test


def leaf_params(args):
    return {"leaf": args.leaf, **({"n_trials": 255} if args.leaf == "binomial" else {"n_categories": 256})}


def run_lvd(K, data, args):
    X_train, X_valid, X_test = data
    model = LVDDensity(
        image_shape=IMAGE,
        patch_size=args.patch,
        n_clusters=K,
        embedder=args.embedder,
        sub_structure=args.sub_structure,
        max_iter=args.max_iter,
        finetune_max_iter=args.finetune_max_iter,
        batch_size=args.batch_size,
        random_state=args.seed,
        verbose=args.verbose,
        **leaf_params(args),
    )
    start = time.perf_counter()
    model.fit(X_train, X_val=X_valid)
    seconds = time.perf_counter() - start
    test_ll = float(model.score(X_test))
    return model, {
        "model": "lvd",
        "n_clusters": K,
        "n_parameters": int(model.n_parameters_),
        "test_bpd": round(bits_per_dim(test_ll), 4),
        "distilled_valid_joint_nats": round(max(model.distillation_validation_scores_), 2),
        "valid_bpd": round(bits_per_dim(max(model.validation_scores_ or [-np.inf])), 4)
        if model.validation_scores_
        else None,
        "epochs_distillation": len(model.distillation_train_scores_),
        "epochs_finetuning": len(model.train_scores_),
        "stage_seconds": {k: round(v, 1) for k, v in model.stage_times_.items()},
        "train_seconds": round(seconds, 1),
    }


def run_em(K, graph, data, args):
    X_train, X_valid, X_test = data
    model = EinsumNetworkDensity(
        structure=graph,
        n_sums=K,
        layer="einsum",
        max_iter=args.max_iter + args.finetune_max_iter,
        batch_size=args.batch_size,
        random_state=args.seed,
        verbose=args.verbose,
        **leaf_params(args),
    )
    start = time.perf_counter()
    model.fit(X_train, X_val=X_valid)
    seconds = time.perf_counter() - start
    test_ll = float(model.score(X_test))
    return {
        "model": "em",
        "n_clusters": K,
        "n_parameters": int(model.n_parameters_),
        "test_bpd": round(bits_per_dim(test_ll), 4),
        "valid_bpd": round(bits_per_dim(model.best_validation_score_), 4),
        "epochs": int(model.n_iter_),
        "train_seconds": round(seconds, 1),
    }


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, marker in (("em", "o"), ("lvd", "s")):
        sel = [r for r in rows if r["model"] == name]
        label = "EM alone" if name == "em" else "LVD"
        axes[0].plot([r["n_parameters"] for r in sel], [r["test_bpd"] for r in sel], marker=marker, label=label)
        axes[1].plot([r["train_seconds"] for r in sel], [r["test_bpd"] for r in sel], marker=marker, label=label)
    axes[0].set(xscale="log", xlabel="parameters", ylabel="test bits/dim")
    axes[1].set(xscale="log", xlabel="training seconds", ylabel="test bits/dim")
    for ax in axes:
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("MNIST: LVD against EM alone on the same circuit")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=[4, 8, 16])
    parser.add_argument("--patch", type=int, default=4)
    parser.add_argument("--embedder", default="mae", help="mae, pca or pixels")
    parser.add_argument("--sub-structure", default="hclt", choices=["hclt", "rat", "factorized"])
    parser.add_argument("--leaf", choices=["binomial", "categorical"], default="categorical")
    parser.add_argument("--max-iter", type=int, default=10, help="distillation epochs at most")
    parser.add_argument("--finetune-max-iter", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--n-train", type=int, default=10000)
    parser.add_argument("--n-valid", type=int, default=2000)
    parser.add_argument("--n-test", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", default="lvd,em")
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)

    data = load(args)
    rows = []
    with warnings.catch_warnings():
        # budgets in epochs end before convergence by design; the record says so
        warnings.simplefilter("ignore", ConvergenceWarning)
        for K in args.sizes:
            model, row = run_lvd(K, data, args)
            row["threads"] = torch.get_num_threads()
            rows.append(row)
            print(json.dumps(row), flush=True)
            if "em" in args.models.split(","):
                row = run_em(K, model.region_graph_, data, args)
                row["threads"] = torch.get_num_threads()
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.plot is not None:
        plot(rows, args.plot)
        print(f"plot: {args.plot}", file=sys.stderr)


if __name__ == "__main__":
    main()
