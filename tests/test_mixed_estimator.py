"""EinsumNetworkDensity with mixed feature types (one leaf family per
column) and with Poisson leaves: normalization by enumeration and
integration, marginals, sampling, MPE and EM, as for a single family."""

import itertools
import pickle

import numpy as np
import pytest
from scipy import stats
from scipy.integrate import trapezoid
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity

# column 0 binary, 1 real, 2 three states, 3 binary
MIXED = {"bernoulli": [0, 3], "gaussian": [1], "categorical": [2]}
DISCRETE = [0, 2, 3]
STATES = [2, 3, 2]


def _mixed_data(n, seed=0):
    rng = np.random.default_rng(seed)
    z = rng.integers(0, 2, size=n)  # a latent class couples the columns
    X = np.empty((n, 4))
    X[:, 0] = rng.random(n) < np.where(z, 0.8, 0.2)
    X[:, 1] = rng.normal(np.where(z, 2.0, -1.0), 0.7)
    X[:, 2] = np.where(z, rng.choice(3, n, p=[0.1, 0.2, 0.7]), rng.choice(3, n, p=[0.6, 0.3, 0.1]))
    X[:, 3] = rng.random(n) < np.where(z, 0.3, 0.9)
    return X


def _fit(leaf=MIXED, X=None, **params):
    X = _mixed_data(400) if X is None else X
    settings = dict(structure="rat", n_sums=3, n_repetitions=2, depth=1, max_iter=6, batch_size=None, tol=None, early_stopping=False,
                    dtype="float64", random_state=0)
    settings.update(params)
    return EinsumNetworkDensity(leaf=leaf, **settings).fit(X), X


def _discrete_states():
    return np.array(list(itertools.product(*(range(s) for s in STATES))), dtype=float)  # (12, 3)


def _grid(n=6001, low=-12.0, high=14.0):
    return np.linspace(low, high, n)


def test_mixed_model_normalizes_by_enumeration_and_integration():
    model, _ = _fit()
    grid = _grid()
    total = []
    for state in _discrete_states():
        rows = np.empty((len(grid), 4))
        rows[:, DISCRETE] = state
        rows[:, 1] = grid
        total.append(trapezoid(np.exp(model.score_samples(rows)), grid))
    assert sum(total) == pytest.approx(1.0, abs=1e-6)


def test_mixed_marginals_equal_sums_and_integrals():
    model, X = _fit()
    grid = _grid()
    rows = X[:5].copy()
    # the real column missing: the integral over it
    missing_real = rows.copy()
    missing_real[:, 1] = np.nan
    for row, got in zip(rows, model.score_samples(missing_real)):
        full = np.repeat(row[None], len(grid), 0)
        full[:, 1] = grid
        assert got == pytest.approx(np.log(trapezoid(np.exp(model.score_samples(full)), grid)), abs=1e-6)
    # the discrete columns missing: the sum over their states
    missing_discrete = rows.copy()
    missing_discrete[:, DISCRETE] = np.nan
    for row, got in zip(rows, model.score_samples(missing_discrete)):
        full = np.repeat(row[None], 12, 0)
        full[:, DISCRETE] = _discrete_states()
        assert got == pytest.approx(logsumexp(model.score_samples(full)), abs=1e-10)


def test_mixed_samples_match_the_density():
    """The discrete columns' joint frequencies of many samples against the
    model's marginal (chi-square); the real column against its marginal CDF (KS)."""
    model, _ = _fit()
    samples = model.sample(20000, random_state=1)
    assert set(np.unique(samples[:, 0])) <= {0.0, 1.0} and set(np.unique(samples[:, 2])) <= {0.0, 1.0, 2.0}
    states = _discrete_states()
    query = np.full((12, 4), np.nan)
    query[:, DISCRETE] = states
    expected = np.exp(model.score_samples(query)) * len(samples)
    codes = (samples[:, 0] * 6 + samples[:, 2] * 2 + samples[:, 3]).astype(int)
    assert stats.chisquare(np.bincount(codes, minlength=12), expected).pvalue > 1e-3
    grid = _grid()
    marginal = np.full((len(grid), 4), np.nan)
    marginal[:, 1] = grid
    density = np.exp(model.score_samples(marginal))
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(grid))])
    assert stats.kstest(samples[:, 1], lambda x: np.interp(x, grid, cdf)).pvalue > 1e-3
    assert stats.kstest(samples[:, 1] + 0.2, lambda x: np.interp(x, grid, cdf)).pvalue < 1e-3


def test_mixed_conditional_samples_keep_the_evidence():
    model, X = _fit()
    rows = X[:50].copy()
    rows[::2, 1] = np.nan
    rows[1::2, 2] = np.nan
    out = model.impute(rows, random_state=0)
    observed = ~np.isnan(rows)
    np.testing.assert_array_equal(out[observed], rows[observed])
    assert set(np.unique(out[:, 2])) <= {0.0, 1.0, 2.0} and np.isfinite(out).all()


def test_mixed_mpe_of_a_single_product_is_the_modes():
    """K=1 and one repetition: the circuit is a product of univariate leaves,
    so the MPE is exact: each missing entry at its leaf's mode; brute force
    over the discrete states (the Gaussian's mode is its mean)."""
    model, X = _fit(n_sums=1, n_repetitions=1, depth=0)
    rows = X[:6].copy()
    rows[:, [1, 2, 3]] = np.nan
    out = model.impute(rows, method="mpe")
    for row, completed in zip(rows, out):
        candidates = np.repeat(row[None], 6, 0)
        candidates[:, [2, 3]] = np.array(list(itertools.product(range(3), range(2))))
        candidates[:, 1] = completed[1]
        best = candidates[np.argmax(model.score_samples(candidates))]
        np.testing.assert_array_equal(completed[[2, 3]], best[[2, 3]])
        # the real entry sits at the maximum of its density: a step either way scores lower
        nudged = np.repeat(completed[None], 2, 0)
        nudged[:, 1] += [-1e-3, 1e-3]
        assert (model.score_samples(nudged) < model.score_samples(completed[None])[0]).all()


def test_mixed_full_batch_em_is_monotone_and_moves():
    model, X = _fit(max_iter=12)
    scores = np.array(model.train_scores_)
    assert np.all(np.diff(scores) >= -1e-9)
    assert scores[-1] > scores[0] + 0.05


def test_mixed_leaf_as_a_list_equals_the_dict():
    a, X = _fit()
    b, _ = _fit(leaf=["bernoulli", "gaussian", "categorical", "bernoulli"])
    np.testing.assert_allclose(a.score_samples(X[:20]), b.score_samples(X[:20]), rtol=1e-12)


def test_mixed_model_pickles_and_refuses_values_its_families_cannot_model():
    model, X = _fit()
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(X[:10]), model.score_samples(X[:10]))
    bad = X[:3].copy()
    bad[0, 0] = 0.5
    with pytest.raises(ValueError, match="column"):
        model.score_samples(bad)
    bad = X[:3].copy()
    bad[0, 2] = 7
    with pytest.raises(ValueError, match="column"):
        model.score_samples(bad)


def test_mixed_adam_and_stochastic_em_raise_the_likelihood():
    X = _mixed_data(600)
    start, _ = _fit(X=X, max_iter=1, learning_rate=1e-9, batch_size=600)
    for params in (dict(optimizer="adam", learning_rate=0.05, batch_size=50, max_iter=15),
                   dict(batch_size=50, learning_rate=0.3, max_iter=6, max_full_batch_iter=0)):
        model, _ = _fit(X=X, **params)
        assert model.lower_bound_ > start.lower_bound_ + 0.1, params


# ----------------------------------------------------------------- Poisson


def test_poisson_model_normalizes_by_enumeration():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.poisson(1.5, 300), rng.poisson(3.0, 300)]).astype(float)
    model = EinsumNetworkDensity(structure="rat", leaf="poisson", n_sums=3, n_repetitions=2, depth=1, max_iter=5, batch_size=None,
                                 tol=None, early_stopping=False, dtype="float64", random_state=0).fit(X)
    grid = np.array(list(itertools.product(range(60), range(60))), dtype=float)  # the tail beyond 60 is < 1e-30
    assert logsumexp(model.score_samples(grid)) == pytest.approx(0.0, abs=1e-9)
    # a marginal is the sum over the missing count
    row = np.array([[2.0, np.nan]])
    full = np.column_stack([np.full(60, 2.0), np.arange(60.0)])
    assert model.score_samples(row)[0] == pytest.approx(logsumexp(model.score_samples(full)), abs=1e-9)
    with pytest.raises(ValueError, match="poisson|Poisson"):
        model.score_samples(np.array([[1.5, 2.0]]))
