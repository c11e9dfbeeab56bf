"""Out-of-core fitting: ``partial_fit`` (one stochastic-EM step per call) and
``fit`` on a ``numpy.memmap`` (rows streamed a batch at a time, with
bounded memory, measured)."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity
from skpc.backend.em import e_step, m_step

SMALL = dict(structure="rat", n_sums=3, n_repetitions=2, depth=2, dtype="float64", random_state=0)


def _batches(seed=0, n=(50, 40, 30, 60)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(sum(n), 6))
    X[:, 2] += X[:, 0]
    X[rng.random(X.shape) < 0.1] = np.nan
    return np.split(X, np.cumsum(n)[:-1])


def _params(model):
    return [t.detach().cpu().numpy() for t in [model.params_.leaf, *model.params_.tensors()]]


def _assert_params_close(a, b, rtol=1e-10, atol=1e-12):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


# ---------------------------------------------------------------- partial_fit
def test_partial_fit_equals_stochastic_em_steps_driven_by_fit():
    """partial_fit(B0), partial_fit(B1), ... is stochastic EM over the batches
    B0, B1, ... with step size learning_rate: the same parameters as fitting
    B0 with one EM step of that size, then warm-started one-step fits on B1, ..."""
    batches = _batches()
    lr = 0.3
    incremental = EinsumNetworkDensity(learning_rate=lr, **SMALL)
    driven = EinsumNetworkDensity(learning_rate=lr, batch_size=None, max_iter=1, tol=None, early_stopping=False, **SMALL)
    for i, batch in enumerate(batches):
        incremental.partial_fit(batch)
        driven.set_params(warm_start=i > 0).fit(batch)
        _assert_params_close(_params(incremental), _params(driven))
    assert incremental.n_iter_ == len(batches) == driven.n_iter_
    assert len(incremental.train_scores_) == len(batches)


def test_partial_fit_equals_e_and_m_steps_over_the_batches():
    """The same against the E- and M-steps of the backend, from the first call's initialization."""
    batches = _batches(seed=1)
    lr = 0.5  # the default step size
    model = EinsumNetworkDensity(**SMALL)
    first = EinsumNetworkDensity(batch_size=None, max_iter=1, learning_rate=1e-300, tol=None, early_stopping=False,
                                 **SMALL).fit(batches[0])  # a step of ~0: the initial parameters
    circuit, params = first._circuit, first.params_
    means = []
    for batch in batches:
        model.partial_fit(batch)
        value, stats = e_step(circuit, torch.tensor(batch), params)
        means.append(float(value.mean()))
        # each call adds the whole prior (what the default "auto" resolved to)
        params = m_step(circuit, params, stats, lr, pseudocount=model.pseudocount_)
        _assert_params_close(_params(model), [t.numpy() for t in [params.leaf, *params.tensors()]], rtol=1e-8, atol=1e-10)
    # lower_bound_: the batch's mean log-likelihood before its step
    assert model.lower_bound_ == pytest.approx(means[-1], rel=1e-10)
    assert model.train_scores_ == pytest.approx(means, rel=1e-10)
    assert means[-1] > means[0]  # it learns


def test_partial_fit_after_fit_continues_and_refuses_changed_circuits():
    batches = _batches(seed=2)
    model = EinsumNetworkDensity(batch_size=None, max_iter=2, tol=None, early_stopping=False, **SMALL).fit(batches[0])
    before = _params(model)
    model.partial_fit(batches[1])
    assert model.n_iter_ == 3
    assert any(not np.allclose(a, b) for a, b in zip(before, _params(model)))
    model.set_params(n_sums=4)
    with pytest.raises(ValueError, match="partial_fit continues the fitted circuit, but n_sums=4 differs"):
        model.partial_fit(batches[2])


def test_partial_fit_keeps_the_first_batch_leaves():
    X = np.random.default_rng(0).integers(0, 3, size=(40, 4)).astype(float)
    model = EinsumNetworkDensity(structure="rat", leaf="categorical", n_sums=2, n_repetitions=1, depth=1, random_state=0).partial_fit(X)
    assert model.n_categories_ == 3
    later = X.copy()
    later[0, 0] = 5
    with pytest.raises(ValueError, match="n_categories=3"):
        model.partial_fit(later)


def test_partial_fit_refuses_adam_and_bad_steps():
    X = _batches()[0]
    with pytest.raises(ValueError, match="partial_fit takes stochastic-EM steps, but optimizer='adam'"):
        EinsumNetworkDensity(optimizer="adam").partial_fit(X)
    with pytest.raises(ValueError, match="learning_rate=2 is not a valid EM step size"):
        EinsumNetworkDensity(learning_rate=2).partial_fit(X)
    with pytest.raises(ValueError, match="no observed entry"):
        EinsumNetworkDensity().partial_fit(np.full((5, 3), np.nan))


# --------------------------------------------------------------------- memmap
def _memmap(tmp_path, X, dtype=np.float32, mode="r", name="x.dat"):
    path = tmp_path / name
    X.astype(dtype).tofile(path)
    return np.memmap(path, dtype=dtype, mode=mode, shape=X.shape)


@pytest.mark.parametrize("mode", ["r", "c"])
def test_fit_on_a_memmap_equals_fit_in_memory(tmp_path, mode):
    """Streamed rows make the same fit (early stopping, stochastic then full-batch EM)."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 8))
    X[rng.random(X.shape) < 0.05] = np.nan
    mm = _memmap(tmp_path, X, mode=mode)
    params = dict(structure="rat", n_sums=3, n_repetitions=2, depth=2, batch_size=50, max_iter=3, max_full_batch_iter=2, tol=None,
                  random_state=0)
    in_memory = EinsumNetworkDensity(**params).fit(np.asarray(mm, dtype=np.float64))
    streamed = EinsumNetworkDensity(**params).fit(mm)
    _assert_params_close(_params(streamed), _params(in_memory), rtol=0, atol=0)
    # the same parameters; the final mean over all rows sums its chunks in another order
    assert streamed.lower_bound_ == pytest.approx(in_memory.lower_bound_, rel=1e-12)
    assert streamed.validation_scores_ == in_memory.validation_scores_


def test_fit_on_an_integer_memmap_with_validation_rows(tmp_path):
    rng = np.random.default_rng(1)
    X = rng.integers(0, 4, size=(300, 6))
    X_val = rng.integers(0, 4, size=(60, 6))
    params = dict(structure="rat", leaf="categorical", n_sums=2, n_repetitions=2, depth=1, batch_size=40, max_iter=2, tol=None,
                  random_state=0)
    in_memory = EinsumNetworkDensity(**params).fit(X.astype(float), X_val=X_val.astype(float))
    streamed = EinsumNetworkDensity(**params).fit(_memmap(tmp_path, X, np.uint8),
                                                  X_val=_memmap(tmp_path, X_val, np.uint8, name="v.dat"))
    assert streamed.n_categories_ == 4 == in_memory.n_categories_
    _assert_params_close(_params(streamed), _params(in_memory), rtol=0, atol=0)
    assert streamed.best_validation_score_ == in_memory.best_validation_score_


def test_memmap_input_is_checked_chunk_by_chunk(tmp_path):
    X = np.random.default_rng(0).normal(size=(50, 4))
    X[41, 2] = np.inf
    with pytest.raises(ValueError, match="X contains inf"):
        EinsumNetworkDensity().fit(_memmap(tmp_path, X))
    with pytest.raises(ValueError, match="no observed entry"):
        EinsumNetworkDensity().fit(_memmap(tmp_path, np.full((30, 3), np.nan), name="nan.dat"))
    with pytest.raises(ValueError, match="Bernoulli leaves need binary data"):
        EinsumNetworkDensity(leaf="bernoulli").fit(_memmap(tmp_path, np.full((30, 3), 2.0), name="two.dat"))


def test_partial_fit_on_memmap_batches(tmp_path):
    batches = _batches(seed=3)
    mm = _memmap(tmp_path, np.concatenate(batches), dtype=np.float64)
    a, b = EinsumNetworkDensity(**SMALL), EinsumNetworkDensity(**SMALL)
    start = 0
    for batch in batches:
        a.partial_fit(batch)
        b.partial_fit(mm[start : start + len(batch)])
        start += len(batch)
    _assert_params_close(_params(a), _params(b), rtol=0, atol=0)


# Peak resident memory of a fit on a memmap, measured in a fresh process
# (/proc/self/status: VmHWM, the peak, above VmRSS after a warm-up): the file
# is larger than the memory the fit may take above the baseline.
RSS_CHILD = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch
    from skpc import EinsumNetworkDensity

    torch.set_num_threads(1)
    path, n_rows, n_features = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

    def status_mib(field):
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024

    # the baseline: after imports and a small streamed fit of the same model (the first 1,000
    # rows), so that the code's own pages and torch's allocations are made
    params = dict(structure="rat", n_sums=2, n_repetitions=1, depth=1, max_iter=1, batch_size=None, tol=None, max_full_batch_iter=0,
                  validation_fraction=0.05, random_state=0)
    EinsumNetworkDensity(**params).fit(np.memmap(path, dtype=np.float32, mode="r", shape=(1000, n_features)))
    baseline = status_mib("VmRSS")
    X = np.memmap(path, dtype=np.float32, mode="r", shape=(n_rows, n_features))
    model = EinsumNetworkDensity(**params).fit(X)
    # VmHWM: this process's own peak RSS. (ru_maxrss would do in a process of its own, but a
    # child spawned by a large process inherits the parent's high-water mark through exec.)
    peak = status_mib("VmHWM")
    assert peak >= status_mib("VmRSS")
    print(json.dumps({"baseline": baseline, "peak": peak, "lower_bound": model.lower_bound_,
                      "valid": model.validation_scores_}))
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmRSS and VmHWM are Linux's /proc/self/status")
def test_memmap_fit_has_bounded_peak_memory(tmp_path):
    n_features, budget_mib = 50, 150
    n_rows = 1_000_000  # 200 MB of float32: larger than the budget
    path = tmp_path / "big.dat"
    rng = np.random.default_rng(0)
    with open(path, "wb") as f:  # written in blocks: this process stays small too
        for _ in range(n_rows // 100_000):
            block = rng.normal(size=(100_000, n_features)).astype(np.float32)
            block[:, 1] += block[:, 0]
            block.tofile(f)
    size_mib = os.path.getsize(path) / 2**20
    assert size_mib > budget_mib
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(path), str(n_rows), str(n_features)], env=env,
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr[-4000:]
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    grown = figures["peak"] - figures["baseline"]
    print(f"peak RSS above the baseline: {grown:.0f} MiB")
    assert grown < budget_mib, f"peak RSS grew by {grown:.0f} MiB over the baseline while fitting a {size_mib:.0f} MiB memmap"
    assert np.isfinite(figures["lower_bound"]) and np.isfinite(figures["valid"][0])
    assert figures["lower_bound"] < -50  # 50 correlated N(0, 1)-ish features: a real fit, not an empty one


def test_scoring_a_memmap_streams_and_equals_scoring_in_memory(tmp_path, monkeypatch):
    rng = np.random.default_rng(4)
    X = rng.normal(size=(300, 6))
    X[rng.random(X.shape) < 0.05] = np.nan
    model = EinsumNetworkDensity(structure="rat", n_sums=3, n_repetitions=2, max_iter=3, tol=None, random_state=0).fit(X)
    mm = _memmap(tmp_path, X, mode="r")
    expected = model.score_samples(np.asarray(mm, dtype=np.float64))

    def no_whole_copy(*args, **kwargs):
        raise AssertionError("a memmap was validated (copied) whole")

    import skpc.queries

    monkeypatch.setattr(skpc.queries, "validate_data", no_whole_copy)
    np.testing.assert_array_equal(model.score_samples(mm), expected)
    assert model.score(mm) == pytest.approx(float(np.mean(expected)), abs=1e-12)
    wrong = _memmap(tmp_path, X[:, :5], mode="r", name="narrow.dat")
    with pytest.raises(ValueError, match="6 features"):
        model.score_samples(wrong)
