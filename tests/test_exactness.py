"""Exactness of the engine's densities: normalization by enumeration and by
numerical integration, marginals and conditionals against brute force, and
reproducibility across seeds and dtypes."""

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity

from conftest import (
    all_states,
    brute_force_log_marginal,
    fit_discrete,
    hand_built_graph,
    hand_built_graph_5,
    random_data,
)

# --------------------------------------------------------------------------
# Normalization by enumeration (discrete leaves)

RAT_CASES = [
    # (leaf, n_features, n_states, extra estimator parameters)
    ("bernoulli", 10, 2, dict(structure="rat", depth=1, n_repetitions=3)),
    ("bernoulli", 10, 2, dict(structure="rat", depth=3, n_repetitions=2)),
    ("bernoulli", 10, 2, dict(structure="rat", depth=0, n_repetitions=1, n_sums=4)),
    ("categorical", 7, 3, dict(structure="rat", depth=2, n_repetitions=3)),
    ("categorical", 7, 3, dict(structure="rat", depth=1, n_repetitions=1)),
    ("binomial", 6, 3, dict(structure="rat", depth=2, n_repetitions=2)),
]


@pytest.mark.parametrize("leaf, n_features, n_states, params", RAT_CASES)
def test_rat_normalizes_by_enumeration(leaf, n_features, n_states, params):
    model, _ = fit_discrete(leaf, n_features, n_states, **params)
    total = np.exp(logsumexp(model.score_samples(all_states(n_features, n_states))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)


PD_CASES = [
    # (leaf, n_states, image_shape, pd_delta)
    ("bernoulli", 2, (3, 4), 1),
    ("bernoulli", 2, (3, 4), 2),
    ("bernoulli", 2, (2, 3, 2), 1),
    ("categorical", 3, (2, 3), 1),
    ("binomial", 3, (2, 3), [2, 1]),
]


@pytest.mark.parametrize("leaf, n_states, image_shape, pd_delta", PD_CASES)
def test_pd_normalizes_by_enumeration(leaf, n_states, image_shape, pd_delta):
    n_features = int(np.prod(image_shape))
    model, _ = fit_discrete(
        leaf, n_features, n_states, structure="pd", image_shape=image_shape, pd_delta=pd_delta, n_sums=2
    )
    total = np.exp(logsumexp(model.score_samples(all_states(n_features, n_states))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)


def test_pd_vertical_only_normalizes():
    model, _ = fit_discrete(
        "bernoulli", 8, 2, structure="pd", image_shape=(2, 4), pd_delta=1, pd_vertical_only=True, n_sums=3
    )
    total = np.exp(logsumexp(model.score_samples(all_states(8, 2))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)


@pytest.mark.parametrize("graph_fn", [hand_built_graph, hand_built_graph_5])
@pytest.mark.parametrize("leaf, n_states", [("bernoulli", 2), ("categorical", 3), ("binomial", 3)])
def test_hand_built_graph_normalizes(graph_fn, leaf, n_states):
    graph = graph_fn()
    model, _ = fit_discrete(leaf, graph.n_variables, n_states, structure=graph, n_sums=3)
    # the compiled circuit really has mixing layers (regions with several partitions)
    assert any(name.startswith("mixing") for name in model.params_.weights)
    total = np.exp(logsumexp(model.score_samples(all_states(graph.n_variables, n_states))))
    np.testing.assert_allclose(total, 1.0, rtol=1e-9)


def test_fitted_parameters_moved_away_from_init():
    """The normalization tests above use fitted, not initial, parameters."""
    rng = np.random.default_rng(0)
    X = random_data(200, 6, 2, rng)
    kw = dict(leaf="bernoulli", n_sums=3, n_repetitions=2, batch_size=None, tol=None, early_stopping=False, dtype="float64", random_state=0)
    init = EinsumNetworkDensity(max_iter=1, **kw).fit(X)
    fitted = EinsumNetworkDensity(max_iter=3, **kw).fit(X)
    moved = [(a - b).abs().max() for a, b in zip(init.params_.tensors(), fitted.params_.tensors())]
    assert max(moved) > 1e-2
    assert (init.params_.leaf - fitted.params_.leaf).abs().max() > 1e-2
    assert fitted.score(X) > init.score(X)


def test_float32_normalizes_loosely():
    model, _ = fit_discrete("bernoulli", 8, 2, depth=2, n_repetitions=3, dtype="float32")
    model_cat, _ = fit_discrete("categorical", 5, 3, structure=hand_built_graph_5(), dtype="float32")
    for m, d, s in ((model, 8, 2), (model_cat, 5, 3)):
        total = np.exp(logsumexp(m.score_samples(all_states(d, s))))
        np.testing.assert_allclose(total, 1.0, rtol=1e-4)


# --------------------------------------------------------------------------
# Gaussian leaves: numerical integration


def _gaussian_data(n_samples, n_features, seed):
    rng = np.random.default_rng(seed)
    centers = rng.normal(scale=3.0, size=(3, n_features))
    z = rng.integers(3, size=n_samples)
    return centers[z] + rng.normal(scale=[0.5, 1.0, 2.0][: n_features] if n_features <= 3 else 1.0,
                                   size=(n_samples, n_features))


def _fit_gaussian(n_features, seed=0, **params):
    X = _gaussian_data(300, n_features, seed)
    kw = dict(leaf="gaussian", n_sums=4, n_repetitions=2, max_iter=5, batch_size=None, tol=None, early_stopping=False,
              min_var=0.05, dtype="float64", random_state=seed)
    kw.update(params)
    return EinsumNetworkDensity(**kw).fit(X), X


def _grid_1d(X, n=8001, pad=12.0):
    return np.linspace(X.min() - pad, X.max() + pad, n)


def test_gaussian_1d_integrates_to_one():
    model, X = _fit_gaussian(1)
    f = lambda x: float(np.exp(model.score_samples(np.array([[x]])))[0])  # noqa: E731
    # component means as break points, so quad cannot step over a narrow bump
    means = model.params_.leaf[..., 0].flatten().numpy()
    lo, hi = X.min() - 20, X.max() + 20
    value, _ = integrate.quad(f, lo, hi, points=np.sort(means), limit=200, epsabs=1e-12, epsrel=1e-10)
    np.testing.assert_allclose(value, 1.0, rtol=1e-6)
    # and a fine grid (trapezoid is spectrally accurate on smooth, decaying integrands)
    grid = _grid_1d(X)
    np.testing.assert_allclose(np.trapezoid(np.exp(model.score_samples(grid[:, None])), grid), 1.0, rtol=1e-6)


@pytest.mark.parametrize("dtype, rtol", [("float64", 1e-4), ("float32", 1e-3)])
def test_gaussian_2d_integrates_to_one(dtype, rtol):
    model, X = _fit_gaussian(2, dtype=dtype)
    assert model.region_graph_.partitions  # depth 1: a real product of two leaves
    gx = np.linspace(X[:, 0].min() - 8, X[:, 0].max() + 8, 500)
    gy = np.linspace(X[:, 1].min() - 8, X[:, 1].max() + 8, 500)
    xx, yy = np.meshgrid(gx, gy, indexing="ij")
    dens = np.exp(model.score_samples(np.column_stack([xx.ravel(), yy.ravel()]))).reshape(xx.shape)
    total = np.trapezoid(np.trapezoid(dens, gy, axis=1), gx)
    np.testing.assert_allclose(total, 1.0, rtol=rtol)


def test_single_gaussian_equals_scipy_norm():
    rng = np.random.default_rng(3)
    X = rng.normal(loc=2.0, scale=1.5, size=(100, 1))
    model = EinsumNetworkDensity(structure="rat",
        depth=0, n_repetitions=1, n_sums=1, leaf="gaussian", max_iter=2, batch_size=None, tol=None, early_stopping=False,
        dtype="float64", random_state=0,
    ).fit(X)
    phi = model.params_.leaf.reshape(-1).numpy()
    mean, var = phi[0], phi[1] - phi[0] ** 2
    # one component: one EM step already lands on the maximum-likelihood fit
    np.testing.assert_allclose(mean, X.mean(), rtol=1e-12)
    np.testing.assert_allclose(var, X.var(), rtol=1e-10)
    grid = np.linspace(-5, 9, 57)[:, None]
    np.testing.assert_allclose(
        model.score_samples(grid), stats.norm.logpdf(grid[:, 0], mean, np.sqrt(var)), rtol=1e-12, atol=1e-12
    )
    # a missing value marginalizes to log 1
    np.testing.assert_allclose(model.score_samples(np.array([[np.nan]])), [0.0], atol=1e-15)


def test_gaussian_marginal_equals_integral():
    """Marginalizing one Gaussian feature (NaN) equals integrating it out."""
    model, X = _fit_gaussian(2, seed=2)
    x0 = X[:3, 0]
    gy = np.linspace(X[:, 1].min() - 10, X[:, 1].max() + 10, 6001)
    for x in x0:
        pts = np.column_stack([np.full_like(gy, x), gy])
        integral = np.trapezoid(np.exp(model.score_samples(pts)), gy)
        marg = model.score_samples(np.array([[x, np.nan]]))[0]
        np.testing.assert_allclose(marg, np.log(integral), atol=1e-7)


# --------------------------------------------------------------------------
# Marginals against brute force

MARGINAL_CASES = [
    ("bernoulli", 2, dict(structure="rat", depth=2, n_repetitions=3), 8),
    ("categorical", 3, dict(structure="rat", depth=2, n_repetitions=2), 6),
    ("bernoulli", 2, dict(structure="pd", image_shape=(2, 4), pd_delta=1), 8),
    ("categorical", 3, dict(structure="pd", image_shape=(2, 3), pd_delta=1), 6),
    ("bernoulli", 2, dict(structure="hand4"), 4),
    ("categorical", 3, dict(structure="hand5"), 5),
]


def _structure(params):
    params = dict(params)
    if params.get("structure") == "hand4":
        params["structure"] = hand_built_graph()
    elif params.get("structure") == "hand5":
        params["structure"] = hand_built_graph_5()
    return params


@pytest.mark.parametrize("leaf, n_states, params, n_features", MARGINAL_CASES)
def test_marginals_equal_brute_force(leaf, n_states, params, n_features):
    model, _ = fit_discrete(leaf, n_features, n_states, **_structure(params))
    rng = np.random.default_rng(7)
    X = random_data(40, n_features, n_states, rng)
    X[rng.random(X.shape) < 0.4] = np.nan
    X[0] = np.nan  # fully missing
    X[1, 0] = 0.0  # a single observed entry
    X[1, 1:] = np.nan
    expected = brute_force_log_marginal(model, X, n_states)
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.score_samples(X[:1]), [0.0], atol=1e-12)


def test_fully_missing_rows_give_zero():
    for leaf, d, s in (("bernoulli", 6, 2), ("categorical", 5, 3), ("binomial", 4, 3)):
        model, _ = fit_discrete(leaf, d, s, depth=2)
        np.testing.assert_allclose(model.score_samples(np.full((3, d), np.nan)), 0.0, atol=1e-12)
    gauss, _ = _fit_gaussian(3)
    np.testing.assert_allclose(gauss.score_samples(np.full((2, 3), np.nan)), 0.0, atol=1e-12)


def test_float32_marginals_loosely():
    model, _ = fit_discrete("categorical", 5, 3, structure=hand_built_graph_5(), dtype="float32")
    rng = np.random.default_rng(8)
    X = random_data(20, 5, 3, rng)
    X[rng.random(X.shape) < 0.5] = np.nan
    np.testing.assert_allclose(model.score_samples(X), brute_force_log_marginal(model, X, 3), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# Conditionals


@pytest.mark.parametrize("leaf, n_states, params, n_features", MARGINAL_CASES[:1] + MARGINAL_CASES[3:5])
def test_score_conditional_equals_brute_force(leaf, n_states, params, n_features):
    model, _ = fit_discrete(leaf, n_features, n_states, **_structure(params))
    rng = np.random.default_rng(11)
    X = random_data(25, n_features, n_states, rng)
    query = np.zeros(n_features, dtype=bool)
    query[[0, n_features - 1]] = True
    # extra NaN entries that are neither query nor evidence
    other = rng.random(X.shape) < 0.3
    other[:, query] = False
    X[other] = np.nan
    joint = brute_force_log_marginal(model, X, n_states)
    evidence = X.copy()
    evidence[:, query] = np.nan
    expected = joint - brute_force_log_marginal(model, evidence, n_states)
    np.testing.assert_allclose(model.score_conditional(X, query), expected, rtol=1e-10, atol=1e-12)
    # index form of the same query
    np.testing.assert_allclose(
        model.score_conditional(X, np.flatnonzero(query)), expected, rtol=1e-10, atol=1e-12
    )
    # conditional distribution sums to one over the query states, per row
    row = X[2].copy()
    states = all_states(2, n_states)
    rows = np.repeat(row[None], len(states), 0)
    rows[:, query] = states
    np.testing.assert_allclose(np.exp(logsumexp(model.score_conditional(rows, query))), 1.0, rtol=1e-10)


def test_score_conditional_rejects_nan_in_query():
    model, X = fit_discrete("bernoulli", 6, 2, depth=1)
    Xq = X[:4].copy()
    Xq[2, 1] = np.nan
    before = model.score_samples(X[:10])
    with pytest.raises(ValueError, match="NaN in query"):
        model.score_conditional(Xq, [1, 3])
    np.testing.assert_array_equal(model.score_samples(X[:10]), before)


# --------------------------------------------------------------------------
# Reproducibility


@pytest.mark.parametrize("leaf", ["gaussian", "bernoulli"])
def test_seeded_fits_are_identical(leaf):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(150, 6)) if leaf == "gaussian" else random_data(150, 6, 2, rng)
    kw = dict(leaf=leaf, n_sums=3, n_repetitions=3, max_iter=3, batch_size=50, tol=None, random_state=42)
    a, b = EinsumNetworkDensity(**kw).fit(X), EinsumNetworkDensity(**kw).fit(X)
    np.testing.assert_array_equal(a.score_samples(X), b.score_samples(X))
    for ta, tb in zip([a.params_.leaf, *a.params_.tensors()], [b.params_.leaf, *b.params_.tensors()]):
        assert torch.equal(ta, tb)
    c = EinsumNetworkDensity(**{**kw, "random_state": 43}).fit(X)
    assert not np.array_equal(a.score_samples(X), c.score_samples(X))


def test_float32_and_float64_evaluate_the_same_parameters_alike():
    """Same parameters, both precisions: the computation agrees closely."""
    model64, X = fit_discrete("categorical", 5, 3, structure=hand_built_graph_5())
    model32, _ = fit_discrete("categorical", 5, 3, structure=hand_built_graph_5(), dtype="float32")
    model32.params_ = model64.params_.map(lambda t: t.to(torch.float32))
    np.testing.assert_allclose(model32.score_samples(X), model64.score_samples(X), rtol=1e-5)


@pytest.mark.parametrize("leaf", ["gaussian", "bernoulli"])
def test_float32_and_float64_fits_agree_on_same_seed(leaf):
    """Two precisions, one seed: the same fit up to rounding."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 4)) if leaf == "gaussian" else random_data(200, 4, 2, rng)
    kw = dict(leaf=leaf, n_sums=3, n_repetitions=2, max_iter=3, batch_size=None, tol=None, early_stopping=False, random_state=0)
    a = EinsumNetworkDensity(dtype="float32", **kw).fit(X)
    b = EinsumNetworkDensity(dtype="float64", **kw).fit(X)
    np.testing.assert_allclose(a.score_samples(X), b.score_samples(X), rtol=1e-4)
