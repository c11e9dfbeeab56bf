"""The leaf layer's batch layout against a naive per-pair reference, and
the Poisson family against scipy."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from skpc.backend.leaves import RATE_FLOOR, PoissonLeaf, make_leaf

LEAVES = [
    ("gaussian", {}),
    ("bernoulli", {}),
    ("binomial", {"n_trials": 255}),  # large n: log h(0) is 0 only up to float32 rounding
    ("poisson", {}),
]


def _batch(name, rng, n_rows=7, n_features=5):
    if name == "gaussian":
        X = rng.normal(size=(n_rows, n_features))
    elif name == "bernoulli":
        X = rng.integers(0, 2, size=(n_rows, n_features)).astype(float)
    elif name == "poisson":
        X = rng.poisson(4.0, size=(n_rows, n_features)).astype(float)
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
    if leaf.name == "poisson":
        cols.append(-math.lgamma(x + 1))
    elif leaf.has_base_measure:
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
    elif name == "poisson":
        rate = torch.tensor(rng.uniform(0.2, 9.0, size=(L, S, K)))
        phi = rate.unsqueeze(-1)
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
                elif name == "poisson":
                    logpdf = stats.poisson.logpmf(x[seen], rate[l, s, k].item())
                else:
                    logpdf = stats.binom.logpmf(x[seen], kwargs.get("n_trials", 1), p[l, s, k].item())
                want[l, k, seen] += logpdf
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# ---------------------------------------------------------------- Poisson


@pytest.mark.parametrize("rate", [0.3, 2.5, 7.0, 20.0])
def test_poisson_samples_fit_the_pmf(rate):
    """Chi-square goodness of fit of 20000 draws against scipy's pmf (bins
    merged in the tail so that every expected count is >= 5)."""
    leaf = PoissonLeaf()
    n = 20000
    phi = torch.full((4, 5000, 1), rate, dtype=torch.float64)  # any leading shape: (..., T) -> (...)
    draws = leaf.sample(phi, torch.Generator().manual_seed(0))
    assert draws.shape == (4, 5000) and draws.dtype == torch.float64
    draws = draws.reshape(-1).numpy()
    assert (draws == np.round(draws)).all() and draws.min() >= 0
    top = int(stats.poisson.ppf(1 - 1e-4, rate))
    support = np.arange(top + 1)
    expected = n * stats.poisson.pmf(support, rate)
    expected[-1] += n * stats.poisson.sf(top, rate)  # the last bin takes the tail
    observed = np.bincount(np.minimum(draws.astype(int), top), minlength=top + 1).astype(float)
    # merge bins from the right until each expects >= 5
    obs_bins, exp_bins, acc_o, acc_e = [], [], 0.0, 0.0
    for o, e in zip(observed[::-1], expected[::-1]):
        acc_o, acc_e = acc_o + o, acc_e + e
        if acc_e >= 5:
            obs_bins.append(acc_o)
            exp_bins.append(acc_e)
            acc_o = acc_e = 0.0
    obs_bins[-1] += acc_o
    exp_bins[-1] += acc_e
    assert len(obs_bins) >= 2
    assert stats.chisquare(obs_bins, exp_bins).pvalue > 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poisson_mode_is_the_argmax_of_the_pmf(dtype):
    """Integer rates have two modes (lambda - 1 and lambda): the mode must
    reach the largest pmf value, and mode_log_density must equal it."""
    rates = np.array([1e-3, 0.2, 0.999, 1.0, 2.0, 2.5, 3.0, 7.9, 10.0, 25.5, 30.0])
    leaf = PoissonLeaf()
    phi = torch.tensor(rates, dtype=dtype).unsqueeze(-1)
    mode = leaf.mode(phi).numpy()
    at_mode = leaf.mode_log_density(phi).numpy()
    support = np.arange(51)
    for rate, m, lp in zip(rates, mode, at_mode):
        logpmf = stats.poisson.logpmf(support, rate)
        assert m == round(m)
        np.testing.assert_allclose(stats.poisson.logpmf(m, rate), logpmf.max(), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(lp, logpmf.max(), rtol=1e-5, atol=1e-5)


def test_poisson_m_step_is_the_weighted_mean_count():
    """expected_statistics from posterior weights, then m_step with step 1:
    each density's rate is its weighted mean over the observed counts; a
    density without weight keeps its rate; a smaller step blends."""
    rng = np.random.default_rng(3)
    leaf = PoissonLeaf()
    B, D, K = 40, 3, 2
    X = rng.poisson(3.0, size=(B, D)).astype(float)
    X[rng.random(X.shape) < 0.3] = np.nan
    X[:, 2] = np.nan  # a feature with no observation: its densities keep their rate
    scope = torch.tensor([[0, 2], [1, D]])
    data = leaf.prepare(torch.tensor(X), scope)
    grad = torch.tensor(rng.uniform(0.0, 1.0, size=(2, K, B)))  # posterior weights (L, K, B)
    stats_, counts = leaf.expected_statistics(data, grad)
    old = torch.tensor(rng.uniform(0.5, 5.0, size=(2, 2, K, 1)))
    for step in (1.0, 0.3):
        new = leaf.m_step(old, stats_, counts, step).numpy()
        for l in range(2):
            for s in range(2):
                d = int(scope[l, s])
                for k in range(K):
                    if d == D or d == 2:
                        want = old[l, s, k, 0].item()  # no observation: unchanged
                    else:
                        seen = ~np.isnan(X[:, d])
                        w = grad[l, k].numpy()[seen]
                        mean = (w * X[seen, d]).sum() / w.sum()
                        want = (1 - step) * old[l, s, k, 0].item() + step * mean
                    np.testing.assert_allclose(new[l, s, k, 0], want, rtol=1e-12)


def test_poisson_rates_stay_positive_and_unconstrained_round_trips():
    leaf = PoissonLeaf()
    phi = torch.tensor([[0.0], [-3.0], [1e-9], [0.5], [40.0]], dtype=torch.float64)
    projected = leaf.project(phi)
    np.testing.assert_array_equal(projected[:, 0].numpy(), [RATE_FLOOR, RATE_FLOOR, RATE_FLOOR, 0.5, 40.0])
    u = leaf.to_unconstrained(projected)
    np.testing.assert_allclose(u[:, 0].numpy(), np.log(projected[:, 0].numpy()))
    np.testing.assert_allclose(leaf.from_unconstrained(u).numpy(), projected.numpy(), rtol=1e-12)
    thetas, c = leaf.natural(phi)  # finite even at rate 0: the floor
    assert torch.isfinite(thetas[0]).all() and torch.isfinite(c).all()


# ------------------------------------------------------- modes, unconstrained maps


@pytest.mark.parametrize("n_trials", [1, 2, 7, 16, 255])
def test_binomial_and_bernoulli_modes_are_the_argmax_of_the_pmf(n_trials):
    """Including probabilities where (n + 1) p is an integer (two modes: either is a maximum)."""
    leaf = make_leaf("binomial", n_trials=n_trials) if n_trials > 1 else make_leaf("bernoulli")
    p = np.concatenate([np.linspace(0.01, 0.99, 37), np.arange(1, n_trials + 1) / (n_trials + 1)])
    phi = torch.tensor(p * n_trials, dtype=torch.float64).unsqueeze(-1)  # (N, 1): E[x] = n p
    mode = leaf.mode(phi).numpy()
    support = np.arange(n_trials + 1)
    pmf = stats.binom.logpmf(support[None, :], n_trials, p[:, None])  # (N, n + 1)
    best = pmf.max(1)
    got = stats.binom.logpmf(mode, n_trials, p)
    np.testing.assert_allclose(got, best, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(leaf.mode_log_density(phi).numpy(), best, rtol=1e-9, atol=1e-9)


def test_categorical_and_gaussian_modes():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(5), size=20)
    leaf = make_leaf("categorical", n_categories=5)
    phi = torch.tensor(probs)
    np.testing.assert_array_equal(leaf.mode(phi).numpy(), probs.argmax(1))
    np.testing.assert_allclose(leaf.mode_log_density(phi).numpy(), np.log(probs.max(1)), rtol=1e-9)
    gauss = make_leaf("gaussian", min_var=0.01)
    mu, var = rng.normal(size=20), rng.uniform(0.05, 3.0, size=20)
    phi = torch.tensor(np.stack([mu, var + mu**2], -1))
    np.testing.assert_allclose(gauss.mode(phi).numpy(), mu)
    np.testing.assert_allclose(gauss.mode_log_density(phi).numpy(), stats.norm.logpdf(mu, mu, np.sqrt(var)), rtol=1e-9)


@pytest.mark.parametrize("max_var", [None, 5.0])
def test_gaussian_unconstrained_map_round_trips_and_respects_the_bounds(max_var):
    """from_unconstrained(to_unconstrained(phi)) == project(phi), and every real
    u maps to a variance inside [min_var, max_var] (what Adam relies on)."""
    leaf = make_leaf("gaussian", min_var=0.1, max_var=max_var)
    rng = np.random.default_rng(1)
    mu = rng.normal(scale=3, size=200)
    var = rng.uniform(0.0, 8.0, size=200)
    phi = torch.tensor(np.stack([mu, var + mu**2], -1))
    back = leaf.from_unconstrained(leaf.to_unconstrained(phi))
    torch.testing.assert_close(back, leaf.project(phi), rtol=1e-6, atol=1e-6)
    u = torch.tensor(rng.normal(scale=10, size=(500, 2)))
    phi_u = leaf.from_unconstrained(u)
    var_u = phi_u[:, 1] - phi_u[:, 0] ** 2
    torch.testing.assert_close(phi_u[:, 0], u[:, 0])  # the mean is the first coordinate itself
    assert (var_u >= 0.1 - 1e-9).all()
    if max_var is not None:
        assert (var_u <= max_var + 1e-9).all()
    # the variance increases with the second coordinate (a monotone map, not a constant)
    grid = torch.stack([torch.zeros(50, dtype=torch.float64), torch.linspace(-5, 5, 50, dtype=torch.float64)], -1)
    var_grid = leaf.from_unconstrained(grid)[:, 1]
    assert (torch.diff(var_grid) > 0).all()


def test_categorical_log_table_is_reused_only_for_the_same_unchanged_tensor():
    import gc

    from skpc.backend.leaves import families

    leaf = families.CategoricalLeaf(n_categories=4)
    x = torch.tensor([[[0, 1, 3]]])  # (L=1, S=1, B=3)
    data = (x, torch.ones(1, 1, 3))
    phi = torch.tensor([[[[0.1, 0.2, 0.3, 0.4]]]])  # (L, S, K=1, C)
    first = leaf.pair_log_prob(data, phi)
    torch.testing.assert_close(first[0, 0, 0], torch.log(torch.tensor([0.1, 0.2, 0.4])))
    table = families._LOG_TABLES._entry[2]
    leaf.pair_log_prob(data, phi)
    assert families._LOG_TABLES._entry[2] is table  # reused for the same tensor
    phi.copy_(torch.tensor([0.4, 0.3, 0.2, 0.1]))  # changed in place: its version moves on
    torch.testing.assert_close(leaf.pair_log_prob(data, phi)[0, 0, 0], torch.log(torch.tensor([0.4, 0.3, 0.1])))
    other = phi.clone()  # equal values, another tensor
    leaf.pair_log_prob(data, other)
    assert families._LOG_TABLES._entry[0]() is other
    del other
    gc.collect()
    assert families._LOG_TABLES._entry is None  # dropped with its tensor
    grad_phi = phi.clone().requires_grad_(True)
    leaf.pair_log_prob(data, grad_phi).sum().backward()  # Adam's parameters: computed afresh, differentiable
    assert grad_phi.grad is not None and families._LOG_TABLES._entry is None
