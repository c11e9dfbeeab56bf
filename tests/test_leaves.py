"""The leaf layer's batch layout against a naive per-pair reference."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from skpc.backend.leaves import make_leaf

LEAVES = [
    ("gaussian", {}),
    ("bernoulli", {}),
    ("binomial", {"n_trials": 255}),  # large n: log h(0) is 0 only up to float32 rounding
]


def _batch(name, rng, n_rows=7, n_features=5):
    if name == "gaussian":
        X = rng.normal(size=(n_rows, n_features))
    elif name == "bernoulli":
        X = rng.integers(0, 2, size=(n_rows, n_features)).astype(float)
    else:
        X = rng.integers(0, 256, size=(n_rows, n_features)).astype(float)
    X[rng.random(X.shape) < 0.3] = np.nan
    return torch.tensor(X, dtype=torch.float32)


def _naive_columns(leaf, x):
    """[T(x), obs, (log h(x))] for one entry, written out by hand; zeros when missing."""
    if math.isnan(x):
        return [0.0] * leaf.n_columns
    T = [x, x * x] if leaf.name == "gaussian" else [x]
    cols = T + [1.0]
    if leaf.has_base_measure:
        n = leaf.n_trials
        cols.append(math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1))
    return cols


@pytest.mark.parametrize("name, kwargs", LEAVES)
def test_prepare_equals_naive_columns_and_is_zero_where_missing(name, kwargs):
    rng = np.random.default_rng(0)
    leaf = make_leaf(name, **kwargs)
    X = _batch(name, rng)
    B, D = X.shape
    scope = torch.tensor([[0, 3, D], [4, 1, 2], [D, D, 1]])  # index D: the padding variable
    data = leaf.prepare(X, scope)  # (L, S*F, B)
    F = leaf.n_columns
    L, S = scope.shape
    assert data.shape == (L, S * F, B)
    got = data.view(L, S, F, B)
    for l in range(L):
        for s in range(S):
            d = int(scope[l, s])
            for b in range(B):
                x = float("nan") if d == D else float(X[b, d])
                want = _naive_columns(leaf, x)
                np.testing.assert_allclose(got[l, s, :, b].numpy(), want, rtol=1e-5, atol=1e-4)
                if math.isnan(x):  # exactly zero: a missing entry must contribute nothing
                    assert (got[l, s, :, b] == 0).all()


@pytest.mark.parametrize("name, kwargs", LEAVES)
def test_region_log_prob_equals_scipy(name, kwargs):
    """The one-matmul leaf layer against scipy's densities summed over each region's observed entries."""
    rng = np.random.default_rng(1)
    leaf = make_leaf(name, **kwargs)
    X = _batch(name, rng).double()
    B, D = X.shape
    scope = torch.tensor([[0, 3, D], [4, 1, 2]])
    L, S = scope.shape
    K = 3
    if name == "gaussian":
        mu = torch.tensor(rng.normal(size=(L, S, K)))
        var = torch.tensor(rng.uniform(0.5, 2.0, size=(L, S, K)))
        phi = torch.stack([mu, var + mu**2], -1)
    else:
        n = kwargs.get("n_trials", 1)
        p = torch.tensor(rng.uniform(0.1, 0.9, size=(L, S, K)))
        phi = (p * n).unsqueeze(-1)
    got = leaf.region_log_prob(leaf.prepare(X, scope), phi).numpy()  # (L, K, B)
    want = np.zeros((L, K, B))
    for l in range(L):
        for s in range(S):
            d = int(scope[l, s])
            if d == D:
                continue
            x = X[:, d].numpy()
            seen = ~np.isnan(x)
            for k in range(K):
                if name == "gaussian":
                    logpdf = stats.norm.logpdf(x[seen], mu[l, s, k].item(), math.sqrt(var[l, s, k].item()))
                else:
                    logpdf = stats.binom.logpmf(x[seen], kwargs.get("n_trials", 1), p[l, s, k].item())
                want[l, k, seen] += logpdf
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
