"""HCLT benchmark child for SPFlow (spflow 1.1.0), run with the spflow venv's python.

Started by ``benchmarks/hclt_spflow.py`` as

    python benchmarks/peers/run_spflow_hclt.py '<config as JSON>'

and prints one JSON record as the last line of stdout. The config holds
``data_dir`` (the DEBD root), ``dataset``, ``n_sums`` (K, SPFlow's
``num_hidden_cats``), ``method`` ("em" or "adam"), ``epochs``,
``time_budget_s``, ``batch_size``, ``learning_rate`` (Adam), ``threads`` and
``seed``.

Model: ``spflow.zoo.hclt.learn_hclt_binary(train, num_hidden_cats=K)`` with
its defaults (one Chow-Liu tree rooted at variable 0, MI pseudocount 1,
``init="uniform"``: uniform sum weights, SPFlow's random Bernoulli logits).
The circuit is a recursive module tree: per variable a ``Bernoulli`` leaf
with K channels, times (``ElementwiseProduct``) one K x K ``Sum`` per child
subtree; a K -> 1 ``Sum`` at the root.

Training (``method``):

- ``em``: SPFlow's own ``expectation_maximization_batched`` called once per
  epoch over a shuffled DataLoader (each batch's M-step *replaces* the
  parameters: there is no step size);
- ``adam``: ``torch.optim.Adam`` on -mean log-likelihood over shuffled
  mini-batches (``benchmarks/peers/_harness.adam_epochs``, the loop the
  RAT-SPN peer children use).

Timing: ``structure_seconds`` is the wall time of ``learn_hclt_binary`` (the
Chow-Liu tree *and* the construction of the torch modules);
``chow_liu_seconds`` is a separate call of the tree learner alone (its edges
are recorded for the driver to compare with skpc's tree). The first epoch is
reported apart (``first_epoch_s``) and the remaining ``epochs - 1`` epochs
are the timed ones (``epoch_seconds``), so both libraries train exactly
``epochs`` epochs and are timed on the same ones. Log-likelihoods are mean
nats per row of each DEBD split after training, scored without gradients in
batches of 1000. ``peak_rss_mb`` is ``ru_maxrss`` at the end (data loading
included); ``baseline_rss_mb`` the same after imports and data loading.

This file imports no skpc: SPFlow's venv does not have it. The DEBD loader
comes from ``benchmarks/_data.py`` (numpy only).
"""

import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from _harness import adam_epochs, maxrss_mib, median_or_nan, run_hclt_child

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the DEBD loader (numpy only)
from _data import load_debd  # noqa: E402

import spflow  # noqa: E402
from spflow.learn.expectation_maximization import expectation_maximization_batched  # noqa: E402
from spflow.zoo.hclt import learn_hclt_binary  # noqa: E402
from spflow.zoo.hclt.chow_liu import learn_chow_liu_trees_binary  # noqa: E402


def mean_ll(model, X, batch=1000):
    """Mean log-likelihood (nats per row) of X; SPFlow returns (B, 1, 1, 1)."""
    with torch.no_grad():
        lls = [model.log_likelihood(X[i : i + batch]).reshape(-1) for i in range(0, X.shape[0], batch)]
    return float(torch.cat(lls).double().mean())


def body(config, record):
    train, valid, test = (torch.from_numpy(a) for a in load_debd(config["data_dir"], config["dataset"], np.float32))
    record.update(n_train=int(train.shape[0]), n_features=int(train.shape[1]))
    record["baseline_rss_mb"] = maxrss_mib()
    K = int(config["n_sums"])

    # The tree alone (edges for the driver's comparison with skpc's tree) ...
    t0 = time.perf_counter()
    edges = learn_chow_liu_trees_binary(train, num_trees=1)[0]
    record["chow_liu_seconds"] = time.perf_counter() - t0
    record["tree_edges"] = sorted([min(int(a), int(b)), max(int(a), int(b))] for a, b in edges)
    # ... and the whole learner, as a user calls it (tree + module construction).
    torch.manual_seed(config["seed"])
    t0 = time.perf_counter()
    model = learn_hclt_binary(train, num_hidden_cats=K)
    record["structure_seconds"] = time.perf_counter() - t0
    record["n_params"] = int(sum(p.numel() for p in model.parameters()))

    generator = torch.Generator().manual_seed(config["seed"])
    if config["method"] == "adam":
        train_epoch = adam_epochs(
            model, model.log_likelihood, train, config["batch_size"], generator, lr=config["learning_rate"]
        )
    elif config["method"] == "em":
        loader = DataLoader(TensorDataset(train), batch_size=config["batch_size"], shuffle=True, generator=generator)

        def train_epoch():
            return float(expectation_maximization_batched(model, loader, num_epochs=1)[-1])

    else:
        raise ValueError(f"method must be 'em' or 'adam', not {config['method']!r}")

    deadline = record["_start"] + config["time_budget_s"]
    times, cpu, history = [], [], []
    for epoch in range(config["epochs"]):
        t0, c0 = time.perf_counter(), time.process_time()
        history.append(train_epoch())
        wall = time.perf_counter() - t0
        if epoch == 0:
            record["first_epoch_s"] = wall  # warm-up: first-touch allocations, lazy set-up
        else:
            times.append(wall)
            cpu.append(time.process_time() - c0)
        # stop early only when the next epoch would overrun the budget: the record says so
        if time.perf_counter() + wall > deadline and epoch + 1 < config["epochs"]:
            record["status"] = "budget"
            break
    record["epochs_trained"] = len(history)
    record["epoch_seconds"] = times
    record["epoch_s"] = median_or_nan(times)
    record["epoch_cpu_s"] = median_or_nan(cpu)
    record["train_ll_history"] = history  # mean LL during each epoch (moving parameters)
    record["nonfinite_params"] = not all(bool(torch.isfinite(p).all()) for p in model.parameters())
    for name, X in (("train", train), ("valid", valid), ("test", test)):
        record[f"{name}_ll"] = mean_ll(model, X)


def main():
    run_hclt_child(
        "run_spflow_hclt.py",
        "spflow",
        {"spflow": getattr(spflow, "__version__", "1.1.0")},
        "spflow learn_hclt_binary: per variable Bernoulli(K) * prod over children of Sum(K x K)(child subtree); "
        "root Sum(K -> 1)",
        body,
    )


if __name__ == "__main__":
    main()
