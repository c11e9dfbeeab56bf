"""CUDA against CPU: the same parameters give the same numbers on both
devices. Skipped without a GPU."""

import copy

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity

from conftest import all_states, brute_force_log_marginal, fit_discrete, hand_built_graph_5, random_data

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")


def _to_cuda(model_cpu):
    """A CUDA copy of a fitted CPU model: the same fitted state, its tensors on the GPU."""
    model = copy.deepcopy(model_cpu).set_params(device="cuda")
    model.device_ = torch.device("cuda")
    model.params_ = model_cpu.params_.map(lambda t: t.to("cuda"))
    model._circuit_cache = model._query_cache = None  # derived state, rebuilt on the GPU
    assert model.params_.root.is_cuda
    return model


def test_cuda_builds_the_same_structure_and_split_as_the_cpu():
    X = np.random.default_rng(0).normal(size=(300, 8))
    kw = dict(n_sums=3, n_repetitions=4, max_iter=2, tol=None, max_full_batch_iter=1, random_state=7)
    cpu = EinsumNetworkDensity(**kw).fit(X)
    gpu = EinsumNetworkDensity(device="cuda", **kw).fit(X)
    assert gpu.region_graph_ == cpu.region_graph_
    assert gpu.device_.type == "cuda" and gpu.params_.root.is_cuda


@pytest.mark.parametrize(
    "leaf, n_states, n_features, params",
    [
        ("bernoulli", 2, 8, dict(structure="rat", depth=2, n_repetitions=3)),
        ("categorical", 3, 5, dict(structure=hand_built_graph_5())),
        ("bernoulli", 2, 6, dict(structure="pd", image_shape=(2, 3), pd_delta=1)),
    ],
)
def test_cuda_scores_and_marginals_match_cpu(leaf, n_states, n_features, params):
    cpu, X = fit_discrete(leaf, n_features, n_states, **params)
    gpu = _to_cuda(cpu)
    rng = np.random.default_rng(0)
    Xq = random_data(50, n_features, n_states, rng)
    Xq[rng.random(Xq.shape) < 0.3] = np.nan
    np.testing.assert_allclose(gpu.score_samples(Xq), cpu.score_samples(Xq), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(gpu.score_samples(Xq), brute_force_log_marginal(cpu, Xq, n_states), rtol=1e-10)
    total = np.exp(logsumexp(gpu.score_samples(all_states(n_features, n_states))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)
    query = np.zeros(n_features, dtype=bool)
    query[0] = True
    Xc = np.nan_to_num(Xq)
    np.testing.assert_allclose(gpu.score_conditional(Xc, query), cpu.score_conditional(Xc, query), rtol=1e-10)


def test_cuda_fit_matches_cpu_closely():
    """Fitting on CUDA from the same initial parameters follows the CPU fit."""
    X = random_data(300, 8, 2, np.random.default_rng(1))
    kw = dict(leaf="bernoulli", n_sums=3, n_repetitions=2, batch_size=None, tol=None, early_stopping=False, dtype="float64", random_state=0)
    cpu = EinsumNetworkDensity(max_iter=1, **kw).fit(X)
    gpu = _to_cuda(cpu)
    cpu.set_params(warm_start=True, max_iter=3)
    gpu.set_params(warm_start=True, max_iter=3)
    cpu.fit(X)
    gpu.fit(X)
    np.testing.assert_allclose(gpu.score_samples(X), cpu.score_samples(X), rtol=1e-8)
    assert gpu.params_.root.is_cuda


def test_cuda_sampling_and_imputation():
    cpu, X = fit_discrete("bernoulli", 6, 2, depth=1, n_repetitions=2)
    gpu = _to_cuda(cpu)
    samples = gpu.sample(20000, random_state=0)
    assert samples.shape == (20000, 6) and set(np.unique(samples)) <= {0.0, 1.0}
    np.testing.assert_array_equal(samples, gpu.sample(20000, random_state=0))
    # frequencies of the 64 states against the density (chi-square, rare cells pooled)
    log_p = cpu.score_samples(all_states(6))
    counts = np.bincount((samples @ (2 ** np.arange(5, -1, -1))).astype(int), minlength=64)
    expected = np.exp(log_p) * len(samples)
    big = expected >= 5
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    rows = X[:40].copy()
    rows[::2, :3] = np.nan
    observed = ~np.isnan(rows)
    for method in ("sample", "mpe"):
        out = gpu.impute(rows, method=method, random_state=0)
        np.testing.assert_array_equal(out[observed], rows[observed])
        assert not np.isnan(out).any()
    np.testing.assert_array_equal(gpu.impute(rows, method="mpe"), cpu.impute(rows, method="mpe"))


def test_cuda_gaussian_float32_matches_cpu():
    X = np.random.default_rng(2).normal(size=(200, 4))
    cpu = EinsumNetworkDensity(structure="rat", n_sums=3, n_repetitions=2, max_iter=3, tol=None, random_state=0).fit(X)
    gpu = _to_cuda(cpu)
    np.testing.assert_allclose(gpu.score_samples(X), cpu.score_samples(X), rtol=1e-5, atol=1e-5)
