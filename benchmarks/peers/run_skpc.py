"""Benchmark child for skpc (run with the interpreter that has skpc installed).

Times what a user gets from the public API: ``EinsumNetworkDensity.fit`` with
``verbose=1`` prints one line per epoch right after the epoch's last M-step;
a stream that stamps each such line with ``time.perf_counter()`` gives the
epoch durations as differences of consecutive stamps. They cover exactly the
epoch loop (batching, E-step, M-step, per-batch log-likelihood check) and
nothing of the set-up (validation, compilation, initialization) or of the
final training log-likelihood pass that ``fit`` makes after the last epoch.

Procedure: ``fit(max_iter=1)`` (warm-up, initializes), then
``fit(max_iter=n + 1, warm_start=True)``; the n differences between its n + 1
epoch lines are the timed epochs. Both fits run the stochastic phase alone
at a fixed step (``early_stopping=False``: no validation split and no
validation scoring; ``max_full_batch_iter=0``: no full-batch phase;
``tol=None``: no plateau rule), the epoch loop the peers are timed on. On a
GPU a CUDA event is also recorded at each epoch line, and the epochs are the
elapsed times between those events (the wall-clock differences are kept as
``epoch_wall_times_s``).
"""

import contextlib
import io
import re
import time

import numpy as np
import torch

from _harness import make_data, measure_matmul, median_or_nan, n_epochs_within, run_main

import skpc
from skpc import EinsumNetworkDensity


# "[EinsumNetworkDensity] epoch 3 stochastic EM (step 0.5)  train -12.3456  4.1s"; not the
# per-batch lines "[EinsumNetworkDensity] epoch 3 batch 2/20 train -12.3" of verbose=2
EPOCH_LINE = re.compile(r"\] epoch \d+ (?!batch )\S.*\(step [^)]+\)  train ")


class _StampedLines(io.TextIOBase):
    """A stdout stand-in that records the time at which each epoch line is written."""

    def __init__(self, cuda=False):
        self.cuda = cuda
        self.events = []  # CUDA events at the epoch lines, on a GPU
        self.stamps = []
        self.cpu_stamps = []  # process CPU time: less distorted than wall time on a loaded machine
        self.lines = []

    def write(self, text):
        now, cpu = time.perf_counter(), time.process_time()
        if EPOCH_LINE.search(text):
            self.stamps.append(now)
            self.cpu_stamps.append(cpu)
            if self.cuda:
                self.events.append(torch.cuda.Event(enable_timing=True))
                self.events[-1].record()
            self.lines.append(text.strip())
        return len(text)


def forward_macs_per_sample(graph, n_sums):
    """Multiply-adds of one forward pass for one sample, from the region graph.

    Einsum layers: each (binary) partition contracts a K x K outer product
    with (K*K, K) weights, K * K * K multiply-adds. Mixing layers: P * K for
    a region with P > 1 partitions. Root sum: K.
    """
    K = int(n_sums)
    macs = len(graph.partitions) * K**3
    macs += sum(len(parts) * K for parts in graph.region_partitions() if len(parts) > 1)
    return macs + K


def profile_epoch(est, X, path):
    """One warm-started epoch under torch.profiler; the op table (by self CPU time) goes to ``path``."""
    from torch.profiler import ProfilerActivity, profile

    est.set_params(max_iter=1, warm_start=True, verbose=0)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        est.fit(X)  # one epoch plus fit's final scoring pass over all samples
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    with open(path, "w") as f:
        f.write(f"torch {torch.__version__}, {torch.get_num_threads()} threads; one skpc epoch + final scoring\n")
        f.write(table)


def body(config, record):
    device = config.get("device", "cpu")
    cuda = device == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: torch.cuda.is_available() is False on this machine")
    X = make_data(config)
    record["skpc"] = getattr(skpc, "__version__", "dev")
    record.set_baseline()
    est = EinsumNetworkDensity(
        structure="rat",
        depth=config["depth"],
        n_repetitions=config["n_repetitions"],
        n_sums=config["n_sums"],
        leaf="gaussian",
        batch_size=config["batch_size"],
        optimizer=config["method"],
        learning_rate=0.5 if config["method"] == "em" else 0.01,
        tol=None,
        early_stopping=False,
        max_full_batch_iter=0,
        max_iter=1,
        random_state=config["structure_seed"],
        device=device,
        verbose=1,
    )
    # warm-up epoch (also initialization and the final scoring pass)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(_StampedLines()):
        est.fit(X)
    record["first_fit_s"] = time.perf_counter() - t0
    elapsed = time.perf_counter() - record.start
    n = n_epochs_within(config["time_budget_s"], elapsed, record["first_fit_s"], config["epochs"])
    stream = _StampedLines(cuda=cuda)
    est.set_params(max_iter=n + 1, warm_start=True)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    with contextlib.redirect_stdout(stream):
        est.fit(X)
    if len(stream.stamps) != n + 1 or est.n_iter_ != n + 2:
        raise RuntimeError(
            f"expected {n + 1} epoch lines and n_iter_={n + 2}, got {len(stream.stamps)} and {est.n_iter_}: "
            "the progress format or the schedule changed"
        )
    epochs = np.diff(stream.stamps).tolist()
    if cuda:
        torch.cuda.synchronize()
        record["gpu_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        record["epoch_wall_times_s"] = epochs
        epochs = [a.elapsed_time(b) / 1e3 for a, b in zip(stream.events, stream.events[1:])]
    record["epoch_times_s"] = epochs
    record["epoch_s"] = median_or_nan(epochs)
    record["epoch_cpu_s"] = median_or_nan(np.diff(stream.cpu_stamps).tolist())
    record["train_ll"] = float(est.lower_bound_)

    scores = []
    for _ in range(3):
        t0 = time.perf_counter()
        ll = est.score_samples(X)
        scores.append(time.perf_counter() - t0)
    record["score_s"] = median_or_nan(scores)
    record["score_ll"] = float(np.mean(ll))

    measure_matmul(record, device=device)
    macs = forward_macs_per_sample(est.region_graph_, est.n_sums_) * config["n_samples"]
    record["n_parameters"] = int(est.n_parameters_)
    record["n_parameter_values"] = int(sum(t.numel() for t in [est.params_.leaf, *est.params_.tensors()]))
    record["n_partitions"] = len(est.region_graph_.partitions)
    record["fwd_macs_per_epoch"] = int(macs)
    # A training epoch's arithmetic: the forward matmuls plus the two of the
    # backward pass (gradients of the weights and of the children), each as
    # large as the forward's. This is the "about 10 ms" at the default.
    record["floor_fwd_s"] = 2.0 * macs / (record["matmul_gflops"] * 1e9)
    record["floor_s"] = 3.0 * record["floor_fwd_s"]
    record["epoch_over_floor"] = record["epoch_s"] / record["floor_s"]
    if config.get("profile_path"):
        profile_epoch(est, X, config["profile_path"])
    record["structure"] = (
        f"skpc random_binary_trees: root mixes {config['n_repetitions']} partitions (one per repetition) "
        f"with K={config['n_sums']} outputs, then a root sum over K; every region K densities"
    )


if __name__ == "__main__":
    run_main("skpc", body)
