"""MAP-EM: pseudocounts (a symmetric Dirichlet on sum weights, conjugate priors
on leaves) against a closed form, the monotone log posterior, the move of unseen
densities to the prior, the batch scaling of stochastic EM, and its gain on
small data."""

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity
from skpc.backend import CompiledCircuit, e_step, m_step, make_leaf
from skpc.backend.em import _em_update
from skpc.backend.leaves.families import BernoulliLeaf, CategoricalLeaf, GaussianLeaf, PoissonLeaf
from skpc.backend.train import Schedule, Trainer, batches

from conftest import SMALL_DATA_MODEL, random_data, small_mixture_data


def _mixture_circuit(leaf_name, X, K, seed):
    model = EinsumNetworkDensity(
        structure="rat", depth=0, n_repetitions=1, n_sums=K, leaf=leaf_name, max_iter=1, batch_size=None,
        tol=None, early_stopping=False, dtype="float64", random_state=seed,
    ).fit(X)
    assert not model.region_graph_.partitions and len(model.region_graph_.regions) == 1
    return CompiledCircuit(model.region_graph_, K, make_leaf(leaf_name), "cpu"), model.params_


def _numpy_bernoulli_map_em(X, weights, p, step, alpha, floor=1e-6):
    """One MAP-EM step for a Bernoulli mixture, from scratch: weights (n_k + a / K) / (N + a),
    leaves (sum_n r_nk x_nd + a / 2) / (sum_n r_nk obs_nd + a)."""
    obs = ~np.isnan(X)
    Xf = np.where(obs, X, 0.0)
    pc = np.clip(p, floor, 1 - floor)
    logpmf = (Xf[:, :, None] * np.log(pc)[None] + (1 - Xf[:, :, None]) * np.log1p(-pc)[None]) * obs[:, :, None]
    joint = np.log(weights)[None] + logpmf.sum(1)
    resp = np.exp(joint - logsumexp(joint, axis=1)[:, None])  # (N, K)
    K = len(weights)
    w_new = (resp.sum(0) + alpha / K) / (resp.sum() + alpha)  # one prior of strength a per distribution
    p_new = np.clip((Xf.T @ resp + 0.5 * alpha) / (obs.T.astype(float) @ resp + alpha), floor, 1 - floor)
    return (1 - step) * weights + step * w_new, np.clip((1 - step) * p + step * p_new, floor, 1 - floor)


@pytest.mark.parametrize("step", [1.0, 0.3])
def test_map_em_equals_closed_form_bernoulli_mixture(step):
    rng = np.random.default_rng(4)
    X = random_data(60, 6, 2, rng, nan_fraction=0.15)
    circuit, params = _mixture_circuit("bernoulli", X, 3, seed=5)
    _, stats_ = e_step(circuit, torch.tensor(X), params)
    new = m_step(circuit, params, stats_, step, pseudocount=2.5)
    w, p = _numpy_bernoulli_map_em(X, params.root.numpy(), params.leaf[0, ..., 0].numpy(), step, 2.5)
    np.testing.assert_allclose(new.root.numpy(), w, rtol=1e-8)
    np.testing.assert_allclose(new.leaf[0, ..., 0].numpy(), p, rtol=1e-8)
    # and it differs from the maximum-likelihood step
    _, stats_ = e_step(circuit, torch.tensor(X), params)
    plain = m_step(circuit, params, stats_, step)
    assert np.abs(plain.leaf.numpy() - new.leaf.numpy()).max() > 1e-3


def test_estimator_full_batch_map_step_equals_closed_form():
    """fit(max_iter=1, pseudocount=a) with warm_start takes exactly one closed-form MAP-EM step."""
    rng = np.random.default_rng(6)
    X = random_data(40, 5, 2, rng)
    model = EinsumNetworkDensity(structure="rat",
        depth=0, n_repetitions=1, n_sums=3, leaf="bernoulli", max_iter=1, batch_size=None, tol=None,
        early_stopping=False, dtype="float64", random_state=0, warm_start=True, pseudocount=1.5,
    ).fit(X)
    root, p = model.params_.root.numpy(), model.params_.leaf[0, ..., 0].numpy()
    model.fit(X)
    w, p = _numpy_bernoulli_map_em(X, root, p, 1.0, 1.5)
    np.testing.assert_allclose(model.params_.root.numpy(), w, rtol=1e-8)
    np.testing.assert_allclose(model.params_.leaf[0, ..., 0].numpy(), p, rtol=1e-8)


def _log_posterior(model, X, alpha):
    """Training log-likelihood + log prior (up to a constant): Dirichlet(a/n + 1) on
    every weight distribution over n entries, Beta(a/2 + 1, a/2 + 1) on every Bernoulli leaf."""
    ll = model.score_samples(X).sum()
    specs = CompiledCircuit(model.region_graph_, model.n_sums, make_leaf("bernoulli"), "cpu").weight_specs
    weights = 0.0
    for spec, w in zip(specs, model.params_.tensors()):
        # entries per distribution: padding (w == 0) excluded
        n = (w > 0).sum(spec.norm_dim, keepdim=True).to(w.dtype)
        weights += float((alpha / n * torch.log(w.clamp_min(1e-300))).where(w > 0, torch.zeros(())).sum())
    p = model.params_.leaf[..., 0]
    leaves = float((0.5 * alpha * (torch.log(p) + torch.log1p(-p))).sum())
    return ll + weights + leaves


def test_full_batch_map_em_never_lowers_the_log_posterior():
    rng = np.random.default_rng(1)
    X = random_data(50, 8, 2, rng, nan_fraction=0.1)
    alpha = 0.8
    model = EinsumNetworkDensity(structure="rat",
        depth=2, n_repetitions=2, n_sums=3, leaf="bernoulli", max_iter=1, batch_size=None, tol=None,
        early_stopping=False, dtype="float64", random_state=0, warm_start=True, pseudocount=alpha,
    )
    values = []
    for _ in range(15):
        model.fit(X)
        values.append(_log_posterior(model, X, alpha))
    steps = np.diff(values)
    assert (steps >= -1e-9 * np.abs(values[1:])).all(), steps
    assert values[-1] > values[0] + 1.0


def test_unseen_leaves_move_to_the_prior_mean():
    g = torch.Generator().manual_seed(0)
    L, S, K = 2, 3, 4
    counts = torch.rand(L, S, K, generator=g, dtype=torch.float64) * 5
    counts[:, :, 1] = 0.0  # component 1 sees no data
    step = 0.6
    # Bernoulli: to p = 1/2; plain EM keeps the old value
    leaf = BernoulliLeaf()
    phi = leaf.project(torch.rand(L, S, K, 1, generator=g, dtype=torch.float64))
    stats_ = counts.unsqueeze(-1) * torch.rand(L, S, K, 1, generator=g, dtype=torch.float64)
    np.testing.assert_array_equal(leaf.m_step(phi, stats_, counts, step)[:, :, 1], phi[:, :, 1])
    moved = leaf.m_step(phi, stats_, counts, step, pseudocount=1.0)[:, :, 1, 0]
    np.testing.assert_allclose(moved, (1 - step) * phi[:, :, 1, 0] + step * 0.5, rtol=1e-12)
    # Categorical: to the uniform distribution
    leaf = CategoricalLeaf(5)
    phi = leaf.project(torch.rand(L, S, K, 5, generator=g, dtype=torch.float64))
    stats_ = counts.unsqueeze(-1) * leaf.project(torch.rand(L, S, K, 5, generator=g, dtype=torch.float64))
    moved = leaf.m_step(phi, stats_, counts, 1.0, pseudocount=3.0)
    np.testing.assert_allclose(moved[:, :, 1], 0.2, rtol=1e-12)
    # and a seen density gets (n_c + a / C) / (n + a)
    np.testing.assert_allclose(moved[:, :, 0], (stats_[:, :, 0] + 0.6) / (counts[:, :, :1] + 3.0), rtol=1e-10)
    # Gaussian and Poisson: to the pooled (data-wide) statistics of the pair's variable
    for leaf, phi in [
        (GaussianLeaf(min_var=1e-3), torch.stack([torch.randn(L, S, K, generator=g, dtype=torch.float64),
                                                   torch.full((L, S, K), 2.0, dtype=torch.float64)], -1)),
        (PoissonLeaf(), torch.rand(L, S, K, 1, generator=g, dtype=torch.float64) * 4),
    ]:
        phi = leaf.project(phi)
        stats_ = counts.unsqueeze(-1) * leaf.project(phi.flip(2) + 0.5)
        pooled = leaf.project(stats_.sum(2) / counts.sum(2).unsqueeze(-1))  # (L, S, T)
        moved = leaf.m_step(phi, stats_, counts, 1.0, pseudocount=2.0)
        np.testing.assert_allclose(moved[:, :, 1], pooled, rtol=1e-10)
        seen = (stats_[:, :, 2] + 2.0 * pooled) / (counts[:, :, 2:3] + 2.0)
        np.testing.assert_allclose(moved[:, :, 2], leaf.project(seen), rtol=1e-10)


def test_unseen_weights_and_missing_column_in_a_circuit():
    # weights without counts: plain EM keeps them, MAP-EM makes them uniform
    old = torch.tensor([[0.7, 0.2, 0.1]], dtype=torch.float64)
    np.testing.assert_allclose(_em_update(torch.zeros(1, 3, dtype=torch.float64), old, 1, 1.0), old, rtol=1e-12)
    np.testing.assert_allclose(_em_update(torch.zeros(1, 3, dtype=torch.float64), old, 1, 1.0, pseudocount=0.5), 1 / 3)
    # a column missing in every row: its leaves stay put under EM, go to p = 1/2 under MAP-EM
    rng = np.random.default_rng(3)
    X = random_data(40, 4, 2, rng)
    X[:, 2] = np.nan
    circuit, params = _mixture_circuit("bernoulli", np.where(np.isnan(X), 1.0, X), 3, seed=1)
    _, stats_ = e_step(circuit, torch.tensor(X), params)
    np.testing.assert_array_equal(m_step(circuit, params, stats_, 1.0).leaf[0, 2], params.leaf[0, 2])
    _, stats_ = e_step(circuit, torch.tensor(X), params)
    np.testing.assert_allclose(m_step(circuit, params, stats_, 1.0, pseudocount=1.0).leaf[0, 2], 0.5, rtol=1e-12)


@pytest.mark.parametrize("batch_size", [None, 7])
def test_pseudocount_zero_is_plain_em(batch_size):
    rng = np.random.default_rng(5)
    X = random_data(40, 6, 2, rng, nan_fraction=0.1)
    kw = dict(structure="rat", depth=1, n_repetitions=2, n_sums=3, leaf="bernoulli", max_iter=4, batch_size=batch_size, tol=None,
              early_stopping=False, max_full_batch_iter=2, random_state=0)
    # pseudocount=0 runs the trainer's plain-EM path: the same as a schedule without the argument
    a = EinsumNetworkDensity(pseudocount=0.0, **kw)
    schedule = a._schedule()
    a.fit(X)
    b = EinsumNetworkDensity(pseudocount=0.0, **kw).fit(X)
    c = EinsumNetworkDensity(pseudocount=0.5, **kw).fit(X)
    np.testing.assert_array_equal(a.params_.leaf.numpy(), b.params_.leaf.numpy())
    for x, y in zip(a.params_.tensors(), b.params_.tensors()):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    assert np.abs(a.params_.leaf.numpy() - c.params_.leaf.numpy()).max() > 1e-3
    assert schedule.pseudocount == Schedule().pseudocount == 0.0


def test_stochastic_em_adds_the_batch_share_of_the_prior():
    rng = np.random.default_rng(7)
    X = torch.tensor(random_data(23, 5, 2, rng))
    circuit, params = _mixture_circuit("bernoulli", X.numpy(), 3, seed=2)
    alpha, lr = 3.0, 0.5
    trainer = Trainer(circuit, Schedule(batch_size=10, pseudocount=alpha))
    got, _ = trainer._stochastic_em_epoch(X, params, lr, torch.Generator().manual_seed(11), 1)
    want = params
    for idx in batches(23, 10, torch.Generator().manual_seed(11)):  # 10, 10, 3 rows
        _, stats_ = e_step(circuit, X[idx], want, index=idx)
        want = m_step(circuit, want, stats_, lr, pseudocount=alpha * len(idx) / 23)
    np.testing.assert_allclose(got.leaf.numpy(), want.leaf.numpy(), rtol=1e-12)
    np.testing.assert_allclose(got.root.numpy(), want.root.numpy(), rtol=1e-12)


def test_pseudocount_improves_held_out_likelihood_on_small_data():
    X, X_test = small_mixture_data()
    kw = SMALL_DATA_MODEL
    plain = EinsumNetworkDensity(pseudocount=0.0, **kw).fit(X)
    map_em = EinsumNetworkDensity(pseudocount=1.0, **kw).fit(X)
    gain = map_em.score(X_test) - plain.score(X_test)
    # measured: held-out mean log-likelihood -42.79 (EM) vs -12.58 (pseudocount=1); train -5.39 vs -9.98
    # (0.1: -15.71, 0.3: -13.84, 3: -12.69, 10: -13.53)
    assert gain > 10.0, gain
    assert plain.score(X) > map_em.score(X)  # the prior costs training fit


def test_invalid_pseudocount():
    with pytest.raises(ValueError, match="pseudocount"):
        Schedule(pseudocount=-1.0)
    with pytest.raises(ValueError, match="pseudocount"):
        Schedule(pseudocount=float("inf"))
    with pytest.raises(ValueError, match="pseudocount"):
        EinsumNetworkDensity(pseudocount=-0.5).fit(np.zeros((4, 2)))
    circuit, params = _mixture_circuit("bernoulli", np.eye(4), 2, seed=0)
    _, stats_ = e_step(circuit, torch.eye(4, dtype=torch.float64), params)
    with pytest.raises(ValueError, match="pseudocount"):
        m_step(circuit, params, stats_, 1.0, pseudocount=-1.0)


@pytest.mark.parametrize("leaf, X_kind, expected", [
    ("bernoulli", "bits", 0.1),                       # 0.05 x (1 free parameter + 1)
    ("categorical", "levels", 0.05 * 17),             # 17 states: 16 free parameters
    ("binomial", "levels", 0.1),                      # 17 levels, one free parameter
    ("auto", "levels", 0.05 * 17),                    # auto picks categorical for 0..16
    ("gaussian", "levels", 0.0),                      # no prior with continuous leaves
    ({"bernoulli": [0, 2], "gaussian": [1, 3]}, "mixed", 0.0),  # one continuous family: none
])
def test_auto_pseudocount_is_005_per_outcome_of_discrete_leaves(leaf, X_kind, expected):
    rng = np.random.default_rng(0)
    X = {"bits": rng.integers(0, 2, (60, 4)), "levels": np.tile(np.arange(17), (4, 1)).T.repeat(3, 0)}.get(X_kind)
    if X_kind == "mixed":
        X = np.c_[rng.integers(0, 2, 60), rng.normal(size=60), rng.integers(0, 2, 60), rng.normal(size=60)]
    model = EinsumNetworkDensity(leaf=leaf, n_sums=2, max_iter=1, max_full_batch_iter=0, tol=None,
                                 random_state=0).fit(X.astype(float))
    assert model.pseudocount == "auto"
    assert model.pseudocount_ == pytest.approx(expected)
