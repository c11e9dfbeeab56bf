"""Data-parallel EM on torch.distributed: two gloo processes, each fitting on
its own shard of the rows, train the model one process fits on all rows;
bad input on one process makes every process raise the same ValueError,
quickly, instead of hanging in a collective.

The processes are spawned once for the module (one process group, every case
run in turn in it) with a hard timeout, so a hang fails the tests instead of
blocking the run.
"""

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity
from skpc.backend.distributed import local_part, resolve_process_group, row_offsets, shard_rows

from conftest import finish_gloo_worker, join_gloo_group, run_gloo_ranks

HERE = Path(__file__).resolve().parent
WORLD = 2
TIMEOUT = 120  # seconds for the whole group: a hang fails the tests

SMALL = dict(structure="rat", n_sums=3, n_repetitions=2, depth=2, dtype="float64", random_state=3)
# name -> (estimator parameters, data kind, rows of rank 0, rows of rank 1)
CASES = {
    "full_batch": (dict(SMALL, batch_size=None, max_iter=6, tol=None, early_stopping=False), "gaussian", 70, 50),
    "stochastic": (
        dict(SMALL, batch_size=16, max_iter=3, max_full_batch_iter=2, tol=None, validation_fraction=0.2,
             early_stopping=True),
        "gaussian", 45, 75,
    ),
    "plateau": (  # early stopping and step halving decided on the global validation score
        dict(SMALL, batch_size=25, max_iter=12, max_full_batch_iter=3, tol=0.05, n_iter_no_change=1), "gaussian", 60, 60,
    ),
    "adam": (dict(SMALL, optimizer="adam", batch_size=20, max_iter=3, tol=None, early_stopping=False), "gaussian", 50, 40),
    "hclt_categorical": (  # leaves inferred from both ranks' states, the tree from all rows
        dict(SMALL, structure="hclt", depth=None, layer="cp", leaf="categorical", batch_size=None, max_iter=3, tol=None,
             early_stopping=False),
        "categorical", 40, 40,
    ),
    "X_val": (dict(SMALL, batch_size=None, max_iter=4, tol=None), "gaussian", 50, 30),
}
PARTIAL = dict(SMALL, learning_rate=0.3)


def _data(kind, n, seed):
    rng = np.random.default_rng(seed)
    if kind == "categorical":
        X = rng.integers(0, 3, size=(n, 6)).astype(float)
        X[:, 1] = (X[:, 0] + rng.integers(0, 2, size=n)) % 3  # a dependency for the tree to find
        return X
    X = rng.normal(size=(n, 6))
    X[:, 1] += X[:, 0]
    X[rng.random(X.shape) < 0.1] = np.nan
    return X


def _all_rows(name):
    _, kind, n0, n1 = CASES[name]
    X = _data(kind, n0 + n1, seed=len(name))
    if kind == "categorical":
        X[n0:, 2] = np.maximum(X[n0:, 2], 0)
        X[n0 + 3, 4] = 3  # a state only rank 1 sees: n_categories must be 4 on both
    return X, n0


def _state(model):
    return {
        "params": [t.detach().cpu().numpy() for t in [model.params_.leaf, *model.params_.tensors()]],
        "lower_bound": model.lower_bound_,
        "n_iter": model.n_iter_,
        "train_scores": model.train_scores_,
        "validation_scores": model.validation_scores_,
        "n_categories": model.n_categories_,
        "graph": model.region_graph_.to_json(),
    }


def _warm_start(model, rank=None):
    """Continue a full_batch fit with two epochs of stochastic EM."""
    X, n0 = _all_rows("full_batch")
    mine = X if rank is None else (X[:n0] if rank == 0 else X[n0:])
    return model.set_params(warm_start=True, max_iter=2, batch_size=30, max_full_batch_iter=0).fit(mine)


def _run_case(name, rank):
    params, _, _, _ = CASES[name]
    X, n0 = _all_rows(name)
    mine = X[:n0] if rank == 0 else X[n0:]
    model = EinsumNetworkDensity(distributed=True, **params)
    if name == "X_val":
        X_val = _data("gaussian", 30, seed=99)
        return model.fit(mine, X_val=X_val[:20] if rank == 0 else X_val[20:])
    return model.fit(mine)


# rank failures: (what rank 1 passes, the message every rank must raise)
FAILURES = {
    "nan_only": "no observed entry",
    "wrong_features": "X has 5 features, but rank 0's X has 6",
    "one_dimensional": "Expected 2D array",
    "inf": "contains inf",
}


def _failing_rows(kind, rank):
    X = _data("gaussian", 30, seed=rank)
    if rank == 0:
        return X
    if kind == "nan_only":
        return np.full_like(X, np.nan)
    if kind == "wrong_features":
        return X[:, :5]
    if kind == "one_dimensional":
        return X[:, 0]
    if kind == "inf":
        X[3, 2] = np.inf
        return X
    raise AssertionError(kind)


def _partial_batches():
    X = _data("gaussian", 90, seed=7)
    return [X[:40], X[40:70], X[70:]]


def _worker(rank, store, out):
    join_gloo_group(rank, store, WORLD)
    results = {"rank": rank, "handle": repr(resolve_process_group("auto"))}
    for name in CASES:
        results[name] = _state(_run_case(name, rank))
    results["warm_start"] = _state(_warm_start(_run_case("full_batch", rank), rank))
    for kind in FAILURES:
        start = time.perf_counter()
        try:
            EinsumNetworkDensity(distributed=True, **CASES["full_batch"][0]).fit(_failing_rows(kind, rank))
            results[kind] = ("no error", time.perf_counter() - start)
        except ValueError as error:
            results[kind] = (str(error), time.perf_counter() - start)
    # partial_fit: each rank its share of every batch (rank 0 the first 60%)
    model = EinsumNetworkDensity(distributed=True, **PARTIAL)
    for batch in _partial_batches():
        cut = int(0.6 * len(batch))
        model.partial_fit(batch[:cut] if rank == 0 else batch[cut:])
    results["partial_fit"] = _state(model)
    finish_gloo_worker(rank, results, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (a list in rank order), from one spawned group of two gloo processes."""
    return run_gloo_ranks("test_distributed", tmp_path_factory.mktemp("dist"), WORLD, TIMEOUT)


def _reference(name):
    params, _, _, _ = CASES[name]
    X, _ = _all_rows(name)
    model = EinsumNetworkDensity(distributed=False, **params)
    if name == "X_val":
        return _state(model.fit(X, X_val=_data("gaussian", 30, seed=99)))
    return _state(model.fit(X))


def _assert_same(state, ref, rtol=1e-9, atol=1e-10):
    assert len(state["params"]) == len(ref["params"])
    for a, b in zip(state["params"], ref["params"]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert state["lower_bound"] == pytest.approx(ref["lower_bound"], rel=1e-10)
    assert state["n_iter"] == ref["n_iter"]
    np.testing.assert_allclose(state["train_scores"], ref["train_scores"], rtol=1e-10)
    if ref["validation_scores"] is None:
        assert state["validation_scores"] is None
    else:
        np.testing.assert_allclose(state["validation_scores"], ref["validation_scores"], rtol=1e-10)
    assert state["graph"] == ref["graph"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_fit_the_one_process_model(ranks, name):
    """Two shards (of unequal sizes) fit the parameters, lower bound, epochs and
    scores of one process on all rows; every rank holds the same model."""
    ref = _reference(name)
    for rank in range(WORLD):
        _assert_same(ranks[rank][name], ref)
    for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"]):
        np.testing.assert_array_equal(a, b)  # bit-identical on every rank


def test_warm_start_continues_on_every_rank(ranks):
    model = EinsumNetworkDensity(distributed=False, **CASES["full_batch"][0]).fit(_all_rows("full_batch")[0])
    ref = _state(_warm_start(model))
    assert ref["n_iter"] == 6 + 2
    for rank in range(WORLD):
        _assert_same(ranks[rank]["warm_start"], ref)


def test_leaves_are_inferred_from_every_rank(ranks):
    assert ranks[0]["hclt_categorical"]["n_categories"] == 4 == ranks[1]["hclt_categorical"]["n_categories"]


def test_the_plateau_rule_ran(ranks):
    """The plateau case stopped early (fewer epochs than allowed): the same
    early-stopping decision on both ranks as in one process."""
    state = ranks[0]["plateau"]
    assert state["n_iter"] < 12 + 3
    assert state["n_iter"] == ranks[1]["plateau"]["n_iter"]


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_bad_input_on_one_rank_raises_the_same_error_everywhere(ranks, kind):
    message0, seconds0 = ranks[0][kind]
    message1, seconds1 = ranks[1][kind]
    assert message0 == message1
    assert message0.startswith(f"[rank 1 of {WORLD}]")
    assert FAILURES[kind] in message0
    assert seconds0 < 10 and seconds1 < 10
    assert ranks[0]["after"] == 3.0  # the group is still usable afterwards


def test_partial_fit_of_shared_batches_equals_one_process(ranks):
    model = EinsumNetworkDensity(distributed=False, **PARTIAL)
    for batch in _partial_batches():
        model.partial_fit(batch)
    ref = _state(model)
    for rank in range(WORLD):
        _assert_same(ranks[rank]["partial_fit"], ref)


def test_auto_is_data_parallel_only_in_a_group(ranks):
    assert ranks[0]["handle"] == "DataParallel(rank=0, world_size=2, backend='gloo')"
    assert resolve_process_group("auto") is None  # no group in this process
    assert resolve_process_group(False) is None
    with pytest.raises(ValueError, match="distributed=True needs an initialized torch.distributed process group"):
        EinsumNetworkDensity(distributed=True).fit(np.zeros((5, 2)))


def test_shards_cover_the_rows_once():
    for n, world in [(10, 3), (2, 4), (1000, 7)]:
        parts = [shard_rows(n, rank, world) for rank in range(world)]
        covered = np.concatenate([np.arange(n)[s] for s in parts])
        np.testing.assert_array_equal(covered, np.arange(n))
        sizes = [s.stop - s.start for s in parts]
        assert max(sizes) - min(sizes) <= 1
    np.testing.assert_array_equal(row_offsets([3, 0, 5]), [0, 3, 3])
    local, first = local_part(np.array([1, 4, 6, 9]), 4, 5)
    np.testing.assert_array_equal(local, [0, 2])
    assert first == 1
    with pytest.raises(ValueError, match="rank=3 must lie in"):
        shard_rows(10, 3, 3)


def _run_gpu_group(tmp_path, backend):
    store = tmp_path / "store"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent)]))
    procs = [
        subprocess.Popen([sys.executable, "-c", f"import test_distributed as t; t._gpu_worker({r}, {str(store)!r}, "
                          f"{str(tmp_path / f'r{r}.pkl')!r}, {backend!r})"], env=env)
        for r in range(WORLD)
    ]
    try:
        for p in procs:
            assert p.wait(timeout=TIMEOUT) == 0
    finally:
        for p in procs:
            p.kill()
    ref = _reference("full_batch")
    for r in range(WORLD):
        with open(tmp_path / f"r{r}.pkl", "rb") as f:
            _assert_same(pickle.load(f), ref, rtol=1e-7, atol=1e-8)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL data-parallel needs two CUDA devices")
def test_nccl_two_gpus_fit_the_cpu_model(tmp_path):  # pragma: no cover - needs two GPUs
    _run_gpu_group(tmp_path, "nccl")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gloo_sums_cuda_statistics_through_the_host(tmp_path):  # pragma: no cover - needs a GPU
    """Two processes on one GPU with gloo: statistics on the device are staged through the host."""
    _run_gpu_group(tmp_path, "gloo")


def _gpu_worker(rank, store, out, backend):  # pragma: no cover - needs a GPU
    import torch.distributed as dist

    device = rank if backend == "nccl" else 0
    torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=f"file://{store}", rank=rank, world_size=WORLD)
    params, _, _, _ = CASES["full_batch"]
    X, n0 = _all_rows("full_batch")
    model = EinsumNetworkDensity(distributed=True, device=f"cuda:{device}", **params)
    model.fit(X[:n0] if rank == 0 else X[n0:])
    with open(out, "wb") as f:
        pickle.dump(_state(model), f)
    dist.destroy_process_group()


def test_torchrun_launcher_fits_the_one_process_model(tmp_path):
    """``torchrun --nproc_per_node=2 -m skpc fit rows.npy``: each process reads its shard of the file;
    the figures are those of ``python -m skpc fit`` on all rows."""
    X = _data("gaussian", 300, seed=5)
    np.save(tmp_path / "rows.npy", X)
    common = ["fit", str(tmp_path / "rows.npy"), "--full-batch", "--max-iter", "3", "--n-sums", "2",
              "--structure", "rat", "--n-repetitions", "2", "--depth", "2", "--dtype", "float64", "--output", str(tmp_path / "model.joblib")]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    runs = {}
    for world, prefix in [(1, [sys.executable, "-m", "skpc"]),
                          (2, [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                               "-m", "skpc"])]:
        out = subprocess.run(prefix + common, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=TIMEOUT)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        records = [line for line in out.stdout.splitlines() if line.startswith("{")]
        assert len(records) == 1  # rank 0 only
        runs[world] = json.loads(records[0])
    assert runs[2]["world_size"] == 2 and runs[2]["rows_per_process"] == 150 and runs[2]["rows"] == 300
    assert runs[2]["lower_bound"] == pytest.approx(runs[1]["lower_bound"], rel=1e-10)
    import joblib

    model = joblib.load(tmp_path / "model.joblib")  # written by rank 0 of the second run
    assert model.lower_bound_ == pytest.approx(runs[2]["lower_bound"], rel=1e-12)
