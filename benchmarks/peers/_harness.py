"""What every per-library benchmark child shares: settings, data, clocks, memory.

This module runs inside each library's own virtual environment (skpc's, or a
peer's), so it imports only the standard library, numpy and torch, never skpc.
A child is started once per (library, configuration) as

    python benchmarks/peers/run_<library>.py '<config as JSON>'

and prints exactly one JSON line (its record) as the last line of stdout.
"""

import json
import math
import os
import platform
import resource
import statistics
import sys
import time
import traceback

import numpy as np
import torch


def parse_config(argv=None):
    """The configuration dict passed by efficiency.py as the first argument."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        raise SystemExit("usage: run_<library>.py '<config JSON>' (started by benchmarks/efficiency.py)")
    return json.loads(argv[0])


def setup_threads(n_threads):
    """Pin torch's intra-op pool: every library is timed with the same count."""
    torch.set_num_threads(int(n_threads))


def make_data(config):
    """The benchmark data: standard normal, seeded, float32.

    Returns
    -------
    ndarray of shape (n_samples, n_features), float32
        Identical in every venv: numpy's PCG64 stream is stable across versions.
    """
    rng = np.random.default_rng(config["data_seed"])
    return rng.standard_normal((config["n_samples"], config["n_features"])).astype(np.float32)


def maxrss_mib():
    """High-water mark of this process's resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure_matmul(record, device="cpu"):
    """Freeze the memory peak, then measure the matmul rate (its 48 MiB stay out of the peak)."""
    record.mark_peak()
    n = int(record.config.get("matmul_size", 2048))
    record["matmul_size"] = n
    record["matmul_gflops"] = matmul_gflops(n, device=device)


def matmul_gflops(n=2048, repeats=5, device="cpu"):
    """Rate of a dense float32 torch.matmul at the current thread count (or on the GPU), GFLOP/s.

    One warm-up product, then the median of ``repeats`` timed products of two
    (n, n) matrices, counted as 2 n^3 floating-point operations each. On a
    GPU each product is timed between synchronizations.
    """
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device)
    b = torch.randn(n, n, generator=gen).to(device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    torch.matmul(a, b)
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        torch.matmul(a, b)
        sync()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / statistics.median(times) / 1e9


def n_epochs_within(budget_s, elapsed_s, warmup_epoch_s, wanted):
    """How many timed epochs fit into what is left of the time budget (>= 1)."""
    left = budget_s - elapsed_s
    if warmup_epoch_s <= 0:
        return wanted
    return max(1, min(wanted, int(left / (1.2 * warmup_epoch_s))))


def median_or_nan(values):
    return float(statistics.median(values)) if values else float("nan")


class Record:
    """The JSON record of one child: configuration, environment, measurements."""

    def __init__(self, library, method, config):
        self.start = time.perf_counter()
        self.config = config
        self.data = {
            "library": library,
            "method": method,
            "status": "ok",
            "sweep": config.get("sweep"),
            "n_samples": config["n_samples"],
            "n_features": config["n_features"],
            "depth": config["depth"],
            "n_repetitions": config["n_repetitions"],
            "n_sums": config["n_sums"],
            "batch_size": config["batch_size"],
            "device": config.get("device", "cpu"),
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "loadavg_start": list(os.getloadavg()),
        }

    def set_baseline(self):
        """Memory after imports and data creation: what the model itself adds is measured from here."""
        self.data["rss_baseline_mib"] = maxrss_mib()

    def __setitem__(self, key, value):
        self.data[key] = value

    def __getitem__(self, key):
        return self.data[key]

    def mark_peak(self):
        """Freeze the peak before measurements that are not the model's (the matmul rate)."""
        self.data["rss_peak_mib"] = maxrss_mib()

    def emit(self):
        self.data.setdefault("rss_peak_mib", maxrss_mib())
        if "rss_baseline_mib" in self.data:
            self.data["rss_model_mib"] = self.data["rss_peak_mib"] - self.data["rss_baseline_mib"]
        self.data["loadavg_end"] = list(os.getloadavg())
        self.data["child_wall_s"] = time.perf_counter() - self.start
        print(json.dumps(finite_or_none(self.data)), flush=True)


def finite_or_none(obj):
    """JSON has no NaN/inf: write null instead."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [finite_or_none(v) for v in obj]
    return obj


def _run_body(body, config, record):
    """``body(config, record)``; a crash is a result too: recorded, not raised."""
    try:
        body(config, record)
    except Exception as exc:
        record["status"] = "error"
        record["error"] = f"{type(exc).__name__}: {exc}"[:2000]
        traceback.print_exc(file=sys.stderr)


def run_main(library, body):
    """Run ``body(config, record)``; on any exception emit a record saying why.

    ``config["method"]`` names the training method ("em" or "adam").
    """
    config = parse_config()
    setup_threads(config["threads"])
    record = Record(library, config["method"], config)
    _run_body(body, config, record)
    record.emit()


def batch_orders(n_samples, batch_size, generator):
    """Shuffled index tensors of consecutive mini-batches (one epoch)."""
    order = torch.randperm(n_samples, generator=generator)
    return [order[i : i + batch_size] for i in range(0, n_samples, batch_size)]


def time_training(train_epoch, config, record):
    """Warm-up epoch, then as many timed epochs as the budget allows (at most config['epochs']).

    ``train_epoch()`` runs one full pass over the data and returns the mean
    training log-likelihood of that pass (for a sanity check, not timed apart).
    """
    t0 = time.perf_counter()
    record["warmup_ll"] = float(train_epoch())
    record["warmup_epoch_s"] = time.perf_counter() - t0
    elapsed = time.perf_counter() - record.start
    n = n_epochs_within(config["time_budget_s"], elapsed, record["warmup_epoch_s"], config["epochs"])
    times, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        ll = train_epoch()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    record["epoch_times_s"] = times
    record["epoch_s"] = median_or_nan(times)
    # process CPU time (all threads): less distorted than wall time on a loaded machine
    record["epoch_cpu_s"] = median_or_nan(cpu)
    record["train_ll"] = float(ll)


def adam_epochs(module, log_likelihood, X, batch_size, generator, lr=0.01):
    """A ``train_epoch()`` for ``time_training``: one pass of Adam on -mean
    log-likelihood over X in shuffled batches; returns the epoch's mean
    log-likelihood. ``log_likelihood(X_batch)`` may return any shape with B
    entries."""
    optimizer = torch.optim.Adam(module.parameters(), lr=lr)

    def train_epoch():
        total = 0.0
        for idx in batch_orders(X.shape[0], batch_size, generator):
            optimizer.zero_grad()
            ll = log_likelihood(X[idx]).reshape(-1)  # (B,)
            (-ll.mean()).backward()
            optimizer.step()
            total += float(ll.detach().sum())
        return total / X.shape[0]

    return train_epoch


def finish_torch_peer(log_likelihood, X, module, record, batch=1000):
    """What the peer runners record after training: the median time to score
    all of X in batches of ``batch`` with ``log_likelihood(X_batch)``, the
    parameter count of the torch ``module``, and the matmul rate."""
    time_scoring(
        lambda: torch.cat([log_likelihood(X[i : i + batch]).reshape(-1) for i in range(0, X.shape[0], batch)]),
        record,
    )
    record["n_parameters"] = int(sum(p.numel() for p in module.parameters()))
    record["n_parameter_values"] = record["n_parameters"]
    measure_matmul(record)


def time_scoring(score_all, record, repeats=3):
    """Median seconds of ``score_all()`` (log-likelihood of every sample, no gradient)."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        with torch.no_grad():
            ll = score_all()
        times.append(time.perf_counter() - t0)
    record["score_s"] = median_or_nan(times)
    record["score_ll"] = float(ll.mean())


def run_hclt_child(script, library, versions, structure, body):
    """The main of an HCLT benchmark child (``run_{skpc,spflow}_hclt.py``,
    started by ``benchmarks/hclt_spflow.py``): read the JSON config from
    argv, run ``body(config, record)`` (which sets ``baseline_rss_mb`` after
    loading its data) and print the record as one JSON line, with the peak
    RSS and the model's share of it.
    ``record["_start"]`` is the child's start (for budgets; dropped before
    printing); a crash is recorded, not raised."""
    if len(sys.argv) != 2:
        raise SystemExit(f"usage: {script} '<config JSON>' (started by benchmarks/hclt_spflow.py)")
    config = json.loads(sys.argv[1])
    torch.set_num_threads(int(config["threads"]))
    record = {
        "library": library,
        "method": config["method"],
        "dataset": config["dataset"],
        "n_sums": config["n_sums"],
        "status": "ok",
        **versions,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "batch_size": config["batch_size"],
        "learning_rate": config["learning_rate"] if config["method"] == "adam" else None,
        "loadavg_start": list(os.getloadavg()),
        "_start": time.perf_counter(),
    }
    _run_body(body, config, record)
    record["child_wall_s"] = time.perf_counter() - record.pop("_start")
    record["loadavg_end"] = list(os.getloadavg())
    record["peak_rss_mb"] = maxrss_mib()  # after training and scoring
    if record["status"] != "error":
        record["model_rss_mb"] = record["peak_rss_mb"] - record["baseline_rss_mb"]
    record["structure"] = structure
    print(json.dumps(finite_or_none(record)), flush=True)
