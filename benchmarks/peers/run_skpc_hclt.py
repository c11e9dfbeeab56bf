"""HCLT benchmark child for skpc, run with the interpreter that has skpc installed.

Started by ``benchmarks/hclt_spflow.py`` with the same JSON config as
``run_spflow_hclt.py`` (``data_dir``, ``dataset``, ``n_sums``, ``method``,
``epochs``, ``time_budget_s``, ``batch_size``, ``learning_rate``,
``threads``, ``seed``) and prints one JSON record in the same format as the
last line of stdout.

Structure learning is timed on its own: ``skpc.structure.chow_liu_tree``
(root 0, MI pseudocount 1, as SPFlow's) then ``hclt_region_graph`` on the
training split (``structure_seconds``). The resulting RegionGraph is passed
as ``structure=`` to ``EinsumNetworkDensity(layer="cp", leaf="bernoulli",
n_sums=K)``, so ``fit`` learns no structure and its epochs are only epochs.
The CP layer is the HCLT's: a K x K sum over the elementwise product of a
variable's leaf vector and its children's subtree vectors, which is SPFlow's
circuit with each K x K matrix moved to the parent side of the product.

Training runs one phase at a fixed step, the loop SPFlow is timed on:
``max_iter=epochs``, ``tol=None`` (no plateau rule), ``early_stopping=False``
(no validation split, no validation scoring), ``max_full_batch_iter=0`` (no
full-batch phase); ``optimizer="em"`` is skpc's stochastic EM with its
default step 0.5 (or the config's ``em_step``), ``optimizer="adam"`` Adam at
``learning_rate``.

Timing: ``verbose=1`` prints one line right after each epoch's last update;
a stdout stand-in (``run_skpc._StampedLines``) stamps each line. The first
epoch, measured from the ``fit`` call, also holds fit's set-up (input checks,
circuit compilation, initialization) and is reported apart
(``first_epoch_s``); the ``epochs - 1`` differences between consecutive
stamps are the timed epochs (``epoch_seconds``), without fit's final
training log-likelihood pass. Log-likelihoods are ``score`` (mean nats per
row, computed in float64) of each DEBD split after training.
"""

import contextlib
import sys
import time
from pathlib import Path

import numpy as np

from _harness import maxrss_mib, median_or_nan, run_hclt_child
from run_skpc import _StampedLines

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # benchmarks/: the DEBD loader
from _data import load_debd  # noqa: E402

import skpc  # noqa: E402
from skpc import EinsumNetworkDensity  # noqa: E402
from skpc.structure import chow_liu_tree, hclt_region_graph  # noqa: E402


def body(config, record):
    train, valid, test = load_debd(config["data_dir"], config["dataset"])
    record.update(n_train=int(train.shape[0]), n_features=int(train.shape[1]))
    record["baseline_rss_mb"] = maxrss_mib()
    K = int(config["n_sums"])

    t0 = time.perf_counter()
    parent, root = chow_liu_tree(train, kind="discrete")
    graph = hclt_region_graph(parent, root)
    record["structure_seconds"] = time.perf_counter() - t0
    record["chow_liu_seconds"] = record["structure_seconds"]
    record["tree_edges"] = sorted([min(v, int(p)), max(v, int(p))] for v, p in enumerate(parent) if p >= 0)

    method = config["method"]
    est = EinsumNetworkDensity(
        structure=graph,
        n_sums=K,
        layer="cp",
        leaf="bernoulli",
        optimizer=method,
        # EM: the config's em_step, or None for skpc's default stochastic-EM step 0.5
        learning_rate=config.get("em_step") if method == "em" else config["learning_rate"],
        batch_size=config["batch_size"],
        max_iter=config["epochs"],
        tol=None,
        early_stopping=False,
        max_full_batch_iter=0,
        random_state=config["seed"],
        verbose=1,
    )
    stream = _StampedLines()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(stream):
        est.fit(train)
    record["fit_seconds"] = time.perf_counter() - t0
    if len(stream.stamps) != config["epochs"] or est.n_iter_ != config["epochs"]:
        raise RuntimeError(
            f"expected {config['epochs']} epoch lines, got {len(stream.stamps)} (n_iter_={est.n_iter_}): "
            "the progress format or the schedule changed"
        )
    record["first_epoch_s"] = stream.stamps[0] - t0
    record["epochs_trained"] = int(est.n_iter_)
    record["epoch_seconds"] = np.diff(stream.stamps).tolist()
    record["epoch_s"] = median_or_nan(record["epoch_seconds"])
    record["epoch_cpu_s"] = median_or_nan(np.diff(stream.cpu_stamps).tolist())
    record["train_ll_history"] = [float(s) for s in est.train_scores_]
    record["em_step"] = (est.learning_rate or 0.5) if method == "em" else None
    record["n_params"] = int(est.n_parameters_)  # free parameters (a normalized vector counts one less)
    record["n_param_values"] = int(sum(t.numel() for t in [est.params_.leaf, *est.params_.tensors()]))
    record["n_partitions"] = len(est.region_graph_.partitions)
    for name, X in (("train", train), ("valid", valid), ("test", test)):
        record[f"{name}_ll"] = float(est.score(X))


def main():
    run_hclt_child(
        "run_skpc_hclt.py",
        "skpc",
        {"skpc": getattr(skpc, "__version__", "dev")},
        "skpc hclt_region_graph + layer='cp': per subtree region Sum(K x K)(Bernoulli(K) * children's K-vectors); "
        "root region then root sum over K",
        body,
    )


if __name__ == "__main__":
    main()
