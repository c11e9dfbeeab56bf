"""Beyond one process: data-parallel EM, out-of-core fitting, grid search on Dask.

Four measurements, each in fresh processes with one torch thread per process
(``OMP_NUM_THREADS=1``), over the public API only:

1. *Data-parallel EM*: seconds per epoch with 1 process (no process group)
   and with 2 processes (``torchrun --nproc_per_node=2``, gloo), each process
   reading its half of the rows, ``EinsumNetworkDensity(distributed="auto")``,
   and the speed-up; and the machine's ceiling for it: two independent single
   processes started together, each fitting one half of the rows (no
   process group, nothing exchanged), timed the same way. Settings: the efficiency benchmark's default (Gaussian
   noise N=2000 x 512, depth 4, R=10, K=10, mini-batches of 100) and MNIST
   (Poon-Domingos over 28x28 with ``--pd-delta``, K=``--mnist-n-sums``,
   256-state categorical leaves, ``--mnist-rows`` training images), each
   with stochastic EM (global batches of 100) and full-batch EM. An epoch is
   timed as a warm-started fit of ``--epochs`` epochs after a one-epoch fit
   (which builds and initializes the model), divided by the epochs: it
   includes the fit's one scoring pass for ``lower_bound_``. Wall time, and
   the CPU time of the busiest process: on a machine shared with other jobs
   the wall-clock speed-up measures the CPU share two processes get; the
   CPU-time ratio is the speed-up on otherwise idle cores.
2. *Out-of-core*: peak resident memory (``VmHWM`` above the baseline ``VmRSS``
   after imports) of one full-batch EM epoch on a float32 ``numpy.memmap``
   of ``--memmap-mb`` MB, against the same fit on the array loaded in memory.
3. *Grid search*: wall time of ``GridSearchCV(..., n_jobs=-1)`` under
   ``joblib.parallel_backend("dask")`` on a ``LocalCluster`` of 1 and of 2
   worker processes (one thread each), and with ``n_jobs=1`` in-process.
4. The scaling model (``model``): bytes all-reduced per M-step (the sizes
   of ``ExpectedStatistics.tensors()``, exactly), compute per row, and the
   predicted efficiency on 8 and 64 GPUs under the assumptions stated at
   ``GPU_FLOPS`` below.
5. The load: ``uptime`` before and after (the machine may be shared).

Usage::

    python benchmarks/distributed.py [--out DIR] [--quick] [--parts dp,memory,grid,model]

Writes ``DIR/distributed.jsonl`` (one record per line) and prints each record.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

EFFICIENCY = dict(kind="noise", n_samples=2000, n_features=512, structure="rat", depth=4, n_repetitions=10, n_sums=10)
QUICK_EFFICIENCY = dict(kind="noise", n_samples=400, n_features=64, structure="rat", depth=2, n_repetitions=2, n_sums=3)


# ------------------------------------------------------------------ workers
def _worker(config):
    """One process of a data-parallel timing (under torchrun, or alone): prints a JSON record on rank 0."""
    import torch

    torch.set_num_threads(1)
    from skpc import EinsumNetworkDensity
    from skpc.backend.distributed import finalize, init_from_environment, shard_rows

    rank, world_size, _ = init_from_environment("cpu", "gloo")
    if config["kind"] == "noise":
        X = np.random.default_rng(0).normal(size=(config["n_samples"], config["n_features"]))
        params = dict(structure="rat", depth=config["depth"], n_repetitions=config["n_repetitions"], leaf="gaussian")
    else:
        from _data import default_data_dir, load_mnist

        x_train = load_mnist(config.get("data") or default_data_dir())[0]
        X = x_train[: config["n_samples"]].reshape(config["n_samples"], -1)
        params = dict(structure="pd", image_shape=(28, 28), pd_delta=config["pd_delta"], leaf="categorical",
                      n_categories=256)
    if config.get("independent_half") is not None:  # the ceiling: half the rows, no process group
        X = X[shard_rows(len(X), config["independent_half"], 2)]
    X = X[shard_rows(len(X), rank, world_size)]
    model = EinsumNetworkDensity(n_sums=config["n_sums"], batch_size=config["batch_size"], max_iter=1, tol=None,
                                 early_stopping=False, max_full_batch_iter=0, random_state=0, **params)
    model.fit(X)  # builds, initializes, one epoch (warm-up)
    model.set_params(warm_start=True, max_iter=config["epochs"])
    _barrier(world_size)
    start, cpu_start = time.perf_counter(), time.process_time()
    model.fit(X)
    cpu = time.process_time() - cpu_start  # this process's CPU time: its work, whatever else runs
    _barrier(world_size)
    seconds = time.perf_counter() - start
    cpus = _gather_floats(cpu, world_size)
    if rank == 0:
        print(json.dumps({"seconds_per_epoch": seconds / config["epochs"], "lower_bound": model.lower_bound_,
                          "cpu_seconds_per_epoch": max(cpus) / config["epochs"],
                          "n_parameters": model.n_parameters_, "world_size": world_size}), flush=True)
    finalize()


def _gather_floats(value, world_size):
    if world_size == 1:
        return [value]
    import torch.distributed as dist

    out = [None] * world_size
    dist.all_gather_object(out, value)
    return out


def _barrier(world_size):
    if world_size > 1:
        import torch.distributed as dist

        dist.barrier()


MEMORY_CHILD = """
import json, sys
import numpy as np
import torch
torch.set_num_threads(1)
from skpc import EinsumNetworkDensity
path, n_rows, n_features, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
def status_mib(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(field + ":")) / 1024
params = dict(n_sums=4, n_repetitions=2, depth=2, max_iter=1, batch_size=None, tol=None, early_stopping=False,
              random_state=0)
EinsumNetworkDensity(**params).fit(np.random.default_rng(0).normal(size=(64, n_features)))
baseline = status_mib("VmRSS")
X = np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, n_features))
if mode == "memory":
    X = np.array(X)  # loaded: what a fit of an in-memory array holds
model = EinsumNetworkDensity(**params).fit(X)
peak = status_mib("VmHWM")  # this process's own peak (ru_maxrss keeps a parent's through exec)
print(json.dumps({"baseline_mib": baseline, "peak_mib": peak, "lower_bound": model.lower_bound_}))
"""


# ------------------------------------------------------------------- parts
def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))


def _last_json(text):
    return json.loads([line for line in text.splitlines() if line.startswith("{")][-1])


def _worker_command(config):
    """The command line of one timing worker (``_worker``) for ``config``."""
    return [sys.executable, __file__, "worker", json.dumps(config)]


def data_parallel(setting, args):
    records = []
    for world_size in (1, 2):
        config = dict(setting, epochs=args.epochs, data=str(args.data) if args.data else None)
        if world_size == 1:
            cmd = _worker_command(config)
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port",
                   str(29500 + os.getpid() % 1000), *_worker_command(config)[1:]]
        out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(out.stdout[-3000:] + out.stderr[-3000:])
        record = _last_json(out.stdout)
        records.append(record)
    # the machine's ceiling: two independent single processes, one per half of the rows, at once
    # (no process group, nothing exchanged): what two processes can gain here at best
    halves = [
        subprocess.Popen(_worker_command(dict(config, independent_half=half)), env=_env(), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
        for half in (0, 1)
    ]
    pair = []
    for child in halves:
        stdout, stderr = child.communicate(timeout=1800)
        if child.returncode != 0:
            raise SystemExit(stdout[-3000:] + stderr[-3000:])
        pair.append(_last_json(stdout))
    one, two = records
    ceiling = max(record["seconds_per_epoch"] for record in pair)
    return {
        "part": "data_parallel",
        "setting": {k: v for k, v in setting.items() if k != "data"},
        "epochs_timed": args.epochs,
        "n_parameters": one["n_parameters"],
        "seconds_per_epoch_1": round(one["seconds_per_epoch"], 3),
        "seconds_per_epoch_2": round(two["seconds_per_epoch"], 3),
        "speedup": round(one["seconds_per_epoch"] / two["seconds_per_epoch"], 2),
        # CPU seconds per epoch of the busiest process: the speed-up on otherwise idle cores
        # (blocking waits in collectives cost no CPU time)
        "cpu_seconds_per_epoch_1": round(one["cpu_seconds_per_epoch"], 3),
        "cpu_seconds_per_epoch_2": round(two["cpu_seconds_per_epoch"], 3),
        "cpu_speedup": round(one["cpu_seconds_per_epoch"] / two["cpu_seconds_per_epoch"], 2),
        # two independent half-size fits at once, the slower one: the speed-up two processes
        # could reach on this machine with free communication
        "seconds_per_epoch_2_independent_halves": round(ceiling, 3),
        "ceiling_speedup": round(one["seconds_per_epoch"] / ceiling, 2),
        "share_of_ceiling": round(ceiling / two["seconds_per_epoch"], 2),
        "lower_bound_1": one["lower_bound"],
        "lower_bound_2": two["lower_bound"],
    }


def memory(args):
    n_features = 100
    n_rows = int(args.memmap_mb * 1e6 / (4 * n_features))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rows.dat"
        rng = np.random.default_rng(0)
        with open(path, "wb") as f:
            for start in range(0, n_rows, 100_000):
                rng.normal(size=(min(100_000, n_rows - start), n_features)).astype(np.float32).tofile(f)
        out = {}
        for mode in ("memmap", "memory"):
            run = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(path), str(n_rows), str(n_features), mode],
                                 env=_env(), capture_output=True, text=True, timeout=1800)
            if run.returncode != 0:
                raise SystemExit(run.stderr[-3000:])
            out[mode] = _last_json(run.stdout)
    return {
        "part": "out_of_core",
        "file_mb": round(os.path.getsize(path) / 1e6 if path.exists() else n_rows * n_features * 4 / 1e6, 1),
        "rows": n_rows,
        "n_features": n_features,
        "peak_above_baseline_mib_memmap": round(out["memmap"]["peak_mib"] - out["memmap"]["baseline_mib"], 1),
        "peak_above_baseline_mib_in_memory": round(out["memory"]["peak_mib"] - out["memory"]["baseline_mib"], 1),
        "lower_bound_memmap": out["memmap"]["lower_bound"],
        "lower_bound_in_memory": out["memory"]["lower_bound"],
    }


GRID_CHILD = """
import json, sys, time
import joblib
import numpy as np
from distributed import Client, LocalCluster
from sklearn.model_selection import GridSearchCV
from skpc import EinsumNetworkDensity

if __name__ == "__main__":  # the workers import this file: they must not rerun it
    rows, epochs = int(sys.argv[1]), int(sys.argv[2])
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 32))
    X[:, 1::2] += X[:, ::2]
    base = EinsumNetworkDensity(structure="rat", depth=3, n_repetitions=4, batch_size=100, max_iter=epochs, tol=None,
                                max_full_batch_iter=0, early_stopping=False, random_state=0)
    grid = {"n_sums": [2, 4, 8], "learning_rate": [0.2, 0.5]}
    record = {"part": "grid_search", "candidates": 6, "cv": 3, "rows": rows, "epochs": epochs}
    start = time.perf_counter()
    best = GridSearchCV(base, grid, cv=3, n_jobs=1).fit(X).best_params_
    record["seconds_n_jobs_1"] = round(time.perf_counter() - start, 2)
    for workers in (1, 2):
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                          silence_logs=40) as cluster, Client(cluster):
            start = time.perf_counter()
            with joblib.parallel_backend("dask"):
                found = GridSearchCV(base, grid, cv=3, n_jobs=-1).fit(X).best_params_
            record[f"seconds_dask_{workers}_workers"] = round(time.perf_counter() - start, 2)
            record[f"same_best_params_{workers}"] = found == best
    record["best_params"] = best
    print(json.dumps(record))
"""


def grid(args):
    # a child process away from this folder: this script's name shadows dask's ``distributed``
    with tempfile.TemporaryDirectory() as tmp:
        child = Path(tmp) / "grid_child.py"
        child.write_text(GRID_CHILD)
        run = subprocess.run([sys.executable, str(child), str(args.grid_rows), str(args.grid_epochs)], env=_env(),
                             cwd=tmp, capture_output=True, text=True, timeout=1800)
    if run.returncode != 0:
        raise SystemExit(run.stderr[-3000:])
    return _last_json(run.stdout)


# ------------------------------------------------------------ scaling model
# Assumptions of the predicted efficiencies (stated in the record): a GPU
# sustains GPU_FLOPS on the circuit's batched contractions; a ring
# all-reduce of b bytes over p GPUs takes 2 (p - 1) / p * b / bandwidth
# + 2 (p - 1) * LATENCY, with NVLink bandwidth inside a node of 8 GPUs and
# the per-GPU network share across nodes; the M-step (repeated on every GPU)
# streams the parameters and statistics M_STEP_PASSES times at HBM speed.
GPU_FLOPS = 50e12
NVLINK_BYTES_PER_S = 150e9
NETWORK_BYTES_PER_S = 25e9
LATENCY_S = 10e-6
HBM_BYTES_PER_S = 3e12
M_STEP_PASSES = 6
SCALING_MODELS = {
    "efficiency (F=512, D=4, R=10, K=10, Gaussian)": dict(kind="rat", n_features=512, depth=4, n_repetitions=10,
                                                          n_sums=10, leaf="gaussian"),
    "MNIST PD delta=7, K=10, 256-state categorical": dict(kind="pd", pd_delta=7, n_sums=10, leaf="categorical"),
    "MNIST RAT D=5, R=40, K=40, 256-state categorical": dict(kind="rat", n_features=784, depth=5, n_repetitions=40,
                                                             n_sums=40, leaf="categorical"),
}


def _circuit_figures(spec):
    """(bytes all-reduced per M-step in float32, multiply-adds per row forward, parameters) of a model."""
    import torch

    from skpc.backend import CompiledCircuit, e_step, resolve_leaf
    from skpc.structure import poon_domingos, random_binary_trees

    if spec["kind"] == "pd":
        graph, n_features = poon_domingos((28, 28), spec["pd_delta"]), 784
    else:
        n_features = spec["n_features"]
        graph = random_binary_trees(n_features, spec["depth"], spec["n_repetitions"], random_state=0)
    X = np.zeros((1, n_features))
    X[0, 0] = 255.0 if spec["leaf"] == "categorical" else 0.0
    leaf = resolve_leaf(spec["leaf"], n_features, n_categories=256 if spec["leaf"] == "categorical" else None).infer(X)
    K = spec["n_sums"]
    circuit = CompiledCircuit(graph, K, leaf)
    Xt = torch.tensor(X, dtype=torch.float32)
    params = circuit.init_params(Xt, torch.Generator().manual_seed(0), torch.float32)
    _, stats = e_step(circuit, Xt, params)
    stat_bytes = sum(t.numel() * 4 for t in stats.tensors()) + 16  # + the (total, rows) figures, float64
    fan_in = K * K if circuit.layer == "einsum" else K
    macs = sum(spec_.shape[0] * K * fan_in for spec_ in circuit.weight_specs if spec_.name.startswith("partition"))
    macs += sum(int(np.prod(s.shape)) for s in circuit.weight_specs if not s.name.startswith("partition"))
    macs += stats.leaf_stats.numel()  # leaves: <theta, T(x)> per density (categorical: a gather, counted as T)
    return stat_bytes, macs, circuit.n_parameters(), [tuple(t.shape) for t in stats.tensors()][:3]


def _allreduce_seconds(nbytes, p):
    if p == 1:
        return 0.0
    bandwidth = NVLINK_BYTES_PER_S if p <= 8 else NETWORK_BYTES_PER_S
    return 2 * (p - 1) / p * nbytes / bandwidth + 2 * (p - 1) * LATENCY_S


def scaling_model():
    records = []
    for name, spec in SCALING_MODELS.items():
        nbytes, macs, n_params, shapes = _circuit_figures(spec)
        flops_per_row = 6 * macs  # forward multiply-adds x 2 FLOPs, backward twice the forward
        m_step = M_STEP_PASSES * nbytes / HBM_BYTES_PER_S
        record = {"part": "scaling_model", "model": name, "parameters": n_params, "bytes_per_m_step": nbytes,
                  "flops_per_row": flops_per_row, "leaf_stat_shapes": shapes}
        # (schedule, rows per M-step on p GPUs)
        schedules = {
            "full-batch EM, N=60000": lambda p: 60000,
            "stochastic EM, 1000 rows per GPU": lambda p: 1000 * p,
            "stochastic EM, global batch 100": lambda p: 100,
        }
        for label, rows in schedules.items():
            for p in (8, 64):
                compute_1 = rows(p) * flops_per_row / GPU_FLOPS
                step_p = compute_1 / p + m_step + _allreduce_seconds(nbytes, p)
                record[f"efficiency {label}, p={p}"] = round((compute_1 + m_step) / (p * step_p), 3)
        records.append(record)
    return records


def _uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE / "out")
    parser.add_argument("--data", type=Path, default=None, help="folder holding mnist/mnist.npz")
    parser.add_argument("--parts", default="dp,memory,grid,model")
    parser.add_argument("--epochs", type=int, default=2, help="epochs timed after the warm-up epoch")
    parser.add_argument("--mnist-rows", type=int, default=6000)
    parser.add_argument("--pd-delta", type=int, default=7)
    parser.add_argument("--mnist-n-sums", type=int, default=10)
    parser.add_argument("--memmap-mb", type=float, default=400)
    parser.add_argument("--grid-rows", type=int, default=3000)
    parser.add_argument("--grid-epochs", type=int, default=3)
    parser.add_argument("--dp-kinds", default="noise,mnist", help="data-parallel settings: noise (efficiency), mnist")
    parser.add_argument("--dp-batches", default="100,full", help="data-parallel schedules: global batch sizes, full")
    parser.add_argument("--quick", action="store_true", help="tiny settings, for a smoke test")
    args = parser.parse_args(argv)
    parts = args.parts.split(",")
    if args.quick:
        args.epochs, args.mnist_rows, args.pd_delta, args.mnist_n_sums = 1, 200, 14, 2
        args.memmap_mb, args.grid_rows, args.grid_epochs = 20, 300, 1
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / "distributed.jsonl"
    settings = []
    if "dp" in parts:
        efficiency = QUICK_EFFICIENCY if args.quick else EFFICIENCY
        mnist = dict(kind="mnist", n_samples=args.mnist_rows, pd_delta=args.pd_delta, n_sums=args.mnist_n_sums)
        bases = {"noise": efficiency, "mnist": mnist}
        for kind in args.dp_kinds.split(","):
            for batch in args.dp_batches.split(","):
                settings.append(dict(bases[kind], batch_size=None if batch == "full" else int(batch)))
    with open(path, "a") as out:
        def emit(record):
            print(json.dumps(record), flush=True)
            out.write(json.dumps(record) + "\n")
            out.flush()

        emit({"part": "load", "when": "before", "uptime": _uptime(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        for setting in settings:
            emit(data_parallel(setting, args))
        if "memory" in parts:
            emit(memory(args))
        if "grid" in parts:
            emit(grid(args))
        if "model" in parts:
            for record in scaling_model():
                emit(record)
        emit({"part": "load", "when": "after", "uptime": _uptime(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "worker":
        _worker(json.loads(sys.argv[2]))
    else:
        main()
