"""EM: monotone training likelihood, and the autodiff E-step/M-step against an
independent closed-form EM for a one-layer mixture."""

import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity
from skpc.backend import CompiledCircuit, e_step, m_step, make_leaf

from conftest import hand_built_graph_5, random_data

# --------------------------------------------------------------------------
# Full-batch EM never lowers the training log-likelihood


def _em_trace(X, n_steps, **params):
    """Training log-likelihoods after init and after each of n_steps EM epochs."""
    model = EinsumNetworkDensity(
        max_iter=1, batch_size=None, tol=None, early_stopping=False, warm_start=True, dtype="float64", random_state=0, **params
    )
    lls = []
    for _ in range(n_steps):
        model.fit(X)
        lls.append(model.score(X))
        assert model.lower_bound_ == pytest.approx(lls[-1], rel=1e-12)
    return model, np.array(lls)


def _assert_non_decreasing(lls):
    steps = np.diff(lls)
    assert (steps >= -1e-9 * np.abs(lls[1:])).all(), steps
    assert lls[-1] > lls[0]  # and it did move


def _gaussian_data(rng, n=150, d=4):
    centers = rng.normal(scale=3, size=(3, d))
    X = centers[rng.integers(3, size=n)] + rng.normal(scale=[0.3, 1, 2, 4][:d], size=(n, d))
    return X


@pytest.mark.parametrize("with_nan", [False, True])
def test_em_monotone_gaussian_with_active_variance_bounds(with_nan):
    rng = np.random.default_rng(0)
    X = _gaussian_data(rng)
    if with_nan:
        X[rng.random(X.shape) < 0.2] = np.nan
    model, lls = _em_trace(X, 12, leaf="gaussian", n_sums=3, n_repetitions=2, min_var=0.5, max_var=4.0)
    _assert_non_decreasing(lls)
    phi = model.params_.leaf
    var = phi[..., 1] - phi[..., 0] ** 2
    # both bounds bind somewhere (feature scales 0.3 and 4 lie outside [0.5, 4])
    assert torch.isclose(var, torch.tensor(0.5, dtype=var.dtype)).any()
    assert torch.isclose(var, torch.tensor(4.0, dtype=var.dtype)).any()
    assert (var >= 0.5 - 1e-12).all() and (var <= 4.0 + 1e-12).all()


@pytest.mark.parametrize("with_nan", [False, True])
@pytest.mark.parametrize(
    "leaf, n_states, params",
    [
        ("bernoulli", 2, dict(structure="rat", depth=2, n_repetitions=2)),
        ("categorical", 3, dict(structure="rat", depth=1, n_repetitions=3)),
        ("bernoulli", 2, dict(structure="hand5")),
        ("binomial", 3, dict(structure="pd", image_shape=(2, 3), pd_delta=1)),
    ],
)
def test_em_monotone_discrete(leaf, n_states, params, with_nan):
    rng = np.random.default_rng(1)
    d = 5 if params.get("structure") == "hand5" else 6
    if params.get("structure") == "hand5":
        params = {**params, "structure": hand_built_graph_5()}
    X = random_data(150, d, n_states, rng, nan_fraction=0.2 if with_nan else 0.0)
    _, lls = _em_trace(X, 10, leaf=leaf, n_sums=3, **params)
    _assert_non_decreasing(lls)


# --------------------------------------------------------------------------
# One-layer mixture: autodiff EM against closed-form EM
#
# A depth-0 random binary tree is a single leaf region over all variables:
# p(x) = sum_k root[k] prod_j p(x_j | phi[0, j, k]), a mixture of n_sums
# fully factorized distributions. EM for it is textbook (responsibilities,
# weighted moments); missing entries drop out of their feature's sums.


def _mixture_circuit(leaf_name, X, K, seed, **leaf_kw):
    model = EinsumNetworkDensity(
        structure="rat", depth=0, n_repetitions=1, n_sums=K, leaf=leaf_name, max_iter=1, batch_size=None,
        tol=None, early_stopping=False, dtype="float64", random_state=seed, **leaf_kw,
    ).fit(X)
    assert not model.region_graph_.partitions and len(model.region_graph_.regions) == 1
    leaf = make_leaf(leaf_name, **{k: v for k, v in leaf_kw.items() if k in ("min_var", "max_var")})
    circuit = CompiledCircuit(model.region_graph_, K, leaf, "cpu")
    return circuit, model.params_


def _numpy_gaussian_em(X, weights, mean, second, step, min_var, max_var):
    """One (stochastic) EM step for a diagonal Gaussian mixture, from scratch.

    weights (K,), mean and second (D, K) = E[x], E[x^2] of each component.
    Returns (log-likelihood per row, new weights, new mean, new second).
    """
    obs = ~np.isnan(X)
    Xf = np.where(obs, X, 0.0)
    var = np.clip(second - mean**2, min_var, max_var)
    # log N(x_nj; mu_jk, var_jk), 0 where missing: (N, D, K)
    logpdf = stats.norm.logpdf(Xf[:, :, None], mean[None], np.sqrt(var)[None]) * obs[:, :, None]
    joint = np.log(weights)[None] + logpdf.sum(1)  # (N, K)
    ll = logsumexp(joint, axis=1)
    resp = np.exp(joint - ll[:, None])  # (N, K)
    w_new = resp.sum(0) / resp.sum()
    counts = obs.T.astype(float) @ resp  # (D, K)
    m_new = (Xf.T @ resp) / counts
    s_new = ((Xf**2).T @ resp) / counts
    v_new = np.clip(s_new - m_new**2, min_var, max_var)  # project the M-step result
    s_new = v_new + m_new**2
    # blend in expectation parameters, then project again
    w = (1 - step) * weights + step * w_new
    m = (1 - step) * mean + step * m_new
    s = (1 - step) * second + step * s_new
    v = np.clip(s - m**2, min_var, max_var)
    return ll, w, m, v + m**2


@pytest.mark.parametrize("step", [1.0, 0.3])
@pytest.mark.parametrize("with_nan", [False, True])
def test_autodiff_em_equals_closed_form_gaussian_mixture(step, with_nan):
    rng = np.random.default_rng(2)
    X = _gaussian_data(rng, n=120, d=3)
    if with_nan:
        X[rng.random(X.shape) < 0.25] = np.nan
    min_var, max_var = 0.05, 50.0
    K = 4
    circuit, params = _mixture_circuit("gaussian", X, K, seed=3, min_var=min_var, max_var=max_var)
    batch = X[:60] if step < 1 else X  # a stochastic step sees one mini-batch
    log_prob, stats_ = e_step(circuit, torch.tensor(batch), params)
    new = m_step(circuit, params, stats_, step)

    phi = params.leaf[0].numpy()  # (D, K, 2)
    ll, w, mean, second = _numpy_gaussian_em(
        batch, params.root.numpy(), phi[..., 0], phi[..., 1], step, min_var, max_var
    )
    np.testing.assert_allclose(log_prob.numpy(), ll, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(new.root.numpy(), w, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(new.leaf[0, ..., 0].numpy(), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(new.leaf[0, ..., 1].numpy(), second, rtol=1e-8, atol=1e-10)


def _numpy_bernoulli_em(X, weights, p, step, floor=1e-6):
    obs = ~np.isnan(X)
    Xf = np.where(obs, X, 0.0)
    pc = np.clip(p, floor, 1 - floor)
    logpmf = (Xf[:, :, None] * np.log(pc)[None] + (1 - Xf[:, :, None]) * np.log1p(-pc)[None]) * obs[:, :, None]
    joint = np.log(weights)[None] + logpmf.sum(1)
    ll = logsumexp(joint, axis=1)
    resp = np.exp(joint - ll[:, None])
    w_new = resp.sum(0) / resp.sum()
    p_new = np.clip((Xf.T @ resp) / (obs.T.astype(float) @ resp), floor, 1 - floor)
    w = (1 - step) * weights + step * w_new
    return ll, w, np.clip((1 - step) * p + step * p_new, floor, 1 - floor)


@pytest.mark.parametrize("step", [1.0, 0.3])
def test_autodiff_em_equals_closed_form_bernoulli_mixture(step):
    rng = np.random.default_rng(4)
    X = random_data(200, 6, 2, rng, nan_fraction=0.15)
    circuit, params = _mixture_circuit("bernoulli", X, 3, seed=5)
    log_prob, stats_ = e_step(circuit, torch.tensor(X), params)
    new = m_step(circuit, params, stats_, step)
    ll, w, p = _numpy_bernoulli_em(X, params.root.numpy(), params.leaf[0, ..., 0].numpy(), step)
    np.testing.assert_allclose(log_prob.numpy(), ll, rtol=1e-12)
    np.testing.assert_allclose(new.root.numpy(), w, rtol=1e-8)
    np.testing.assert_allclose(new.leaf[0, ..., 0].numpy(), p, rtol=1e-8)


def test_estimator_full_batch_step_equals_closed_form():
    """fit(max_iter=1) with warm_start applies exactly one closed-form EM step."""
    rng = np.random.default_rng(6)
    X = _gaussian_data(rng, n=100, d=2)
    model = EinsumNetworkDensity(structure="rat",
        depth=0, n_repetitions=1, n_sums=3, max_iter=1, batch_size=None, tol=None, early_stopping=False, min_var=0.01,
        dtype="float64", random_state=0, warm_start=True, pseudocount=0.0,  # maximum-likelihood EM
    ).fit(X)
    phi = model.params_.leaf[0].numpy()
    root = model.params_.root.numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # tol=None: no ConvergenceWarning either
        model.fit(X)
    _, w, mean, second = _numpy_gaussian_em(X, root, phi[..., 0], phi[..., 1], 1.0, 0.01, None)
    np.testing.assert_allclose(model.params_.root.numpy(), w, rtol=1e-8)
    np.testing.assert_allclose(model.params_.leaf[0, ..., 0].numpy(), mean, rtol=1e-8, atol=1e-10)
    np.testing.assert_allclose(model.params_.leaf[0, ..., 1].numpy(), second, rtol=1e-8)
    assert model.n_iter_ == 2


@pytest.mark.parametrize("step", [1.0, 0.25])
def test_weight_update_floor_zero_counts_and_padding(step):
    """The in-place weight update: the EM formula where counted, old weights
    where nothing was counted, the floor, zero padding, rows summing to one."""
    from skpc.backend.em import WEIGHT_FLOOR, _em_update

    old = torch.tensor([[0.5, 0.3, 0.2], [0.2, 0.2, 0.6], [0.5, 0.5, 0.0]], dtype=torch.float64)
    counts = torch.tensor([[2.0, 6.0, 0.0], [0.0, 0.0, 0.0], [1.0, 3.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    got = _em_update(counts.clone(), old, 1, step, mask).numpy()
    row0 = (1 - step) * old[0].numpy() + step * np.array([0.25, 0.75, 0.0])
    row0 = np.maximum(row0, WEIGHT_FLOOR)
    np.testing.assert_allclose(got[0], row0 / row0.sum(), rtol=1e-12)
    np.testing.assert_allclose(got[1], old[1].numpy(), rtol=1e-12)  # nothing counted: unchanged
    assert got[2, 2] == 0.0  # padding stays exactly zero
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-12)
    assert (got[:, :2] >= WEIGHT_FLOOR).all()


def test_e_step_into_adds_a_batch_to_earlier_statistics():
    X = np.random.default_rng(4).normal(size=(90, 6))
    model = EinsumNetworkDensity(structure="rat", n_sums=3, n_repetitions=2, depth=2, leaf="gaussian", max_iter=2, batch_size=None,
                                 tol=None, early_stopping=False, dtype="float64", random_state=0).fit(X)
    circuit, params = model._circuit_cache, model.params_
    Xt = torch.tensor(X)
    _, whole = e_step(circuit, Xt, params)
    _, summed = e_step(circuit, Xt[:40], params)
    _, result = e_step(circuit, Xt[40:], params, into=summed)
    assert result is summed
    for a, b in zip(summed.tensors(), whole.tensors()):
        torch.testing.assert_close(a, b)
