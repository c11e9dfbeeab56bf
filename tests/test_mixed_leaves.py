"""MixedLeaf at the backend level: one family per feature in one phi tensor.

A hand-built layout of 3 leaf regions of 2 variables (one padding pair)
over 4 features of 4 families (Gaussian, Bernoulli, categorical with 3
states, Poisson), checked against scipy per pair: densities, max-product
values, EM statistics and updates, projections and the unconstrained map,
sampling (goodness of fit), modes (brute force), gradients (gradcheck and
finiteness where other families' values would overflow), initialization,
and EM on a small mixture never lowering the likelihood.
"""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp

from skpc.backend.leaves import (
    PROB_FLOOR,
    GaussianLeaf,
    MixedLeaf,
    PoissonLeaf,
    resolve_leaf,
)

MIN_VAR = 0.05
FAMILY = {0: "gaussian", 1: "bernoulli", 2: "categorical", 3: "poisson"}  # feature -> family
D = 4
SCOPE = torch.tensor([[0, 2], [3, 1], [2, D]])  # (L, S); (2, 1) is the padding pair
L, S = SCOPE.shape
K = 3
T_MAX = 3  # the categorical family's 3 statistics


def _leaf():
    leaf = resolve_leaf(
        {"gaussian": [0], "bernoulli": [1], "categorical": [2], "poisson": [3]}, D, min_var=MIN_VAR, n_categories=3
    )
    assert isinstance(leaf, MixedLeaf) and leaf.n_stats == T_MAX
    return leaf.for_scope(SCOPE)


def _pairs():
    """(l, s, feature or None for padding) for every pair."""
    return [(l, s, None if int(SCOPE[l, s]) == D else int(SCOPE[l, s])) for l in range(L) for s in range(S)]


def _phi(rng, n=K):
    """Valid random parameters (L, S, n, T_MAX), 0 in unused columns and on padding."""
    phi = np.zeros((L, S, n, T_MAX))
    for l, s, d in _pairs():
        family = FAMILY.get(d)
        if family == "gaussian":
            mu, var = rng.normal(size=n), rng.uniform(0.5, 2.0, size=n)
            phi[l, s, :, :2] = np.column_stack([mu, var + mu**2])
        elif family == "bernoulli":
            phi[l, s, :, 0] = rng.uniform(0.1, 0.9, size=n)
        elif family == "categorical":
            phi[l, s] = rng.dirichlet(np.ones(3), size=n)
        elif family == "poisson":
            phi[l, s, :, 0] = rng.uniform(0.3, 6.0, size=n)
    return torch.tensor(phi)


def _data(rng, n_rows=25, missing=0.25):
    X = np.column_stack(
        [rng.normal(size=n_rows), rng.integers(0, 2, n_rows), rng.integers(0, 3, n_rows), rng.poisson(2.0, n_rows)]
    ).astype(float)
    X[rng.random(X.shape) < missing] = np.nan
    return X


def _logpdf(family, x, p):
    """scipy's log-density of one family at x (array) under phi vector p (T_MAX,)."""
    if family == "gaussian":
        return stats.norm.logpdf(x, p[0], math.sqrt(p[1] - p[0] ** 2))
    if family == "bernoulli":
        return stats.bernoulli.logpmf(x, p[0])
    if family == "categorical":
        return np.log(np.asarray(p)[np.asarray(x, dtype=int)])
    return stats.poisson.logpmf(x, p[0])


def _brute_mode(family, p):
    """(mode, log-density there) by enumeration; the Gaussian's is its mean."""
    if family == "gaussian":
        return p[0], _logpdf(family, p[0], p)
    support = np.arange({"bernoulli": 2, "categorical": 3, "poisson": 60}[family])
    logp = _logpdf(family, support, p)
    return support[np.argmax(logp)], logp.max()


# -------------------------------------------------------------- forward


def test_region_log_prob_is_the_sum_of_scipy_log_densities():
    rng = np.random.default_rng(0)
    leaf, phi, X = _leaf(), _phi(rng), _data(rng)
    data = leaf.prepare(torch.tensor(X), SCOPE)
    got = leaf.region_log_prob(data, phi).numpy()  # (L, K, B)
    want = np.zeros((L, K, X.shape[0]))
    for l, s, d in _pairs():
        if d is None:
            continue
        seen = ~np.isnan(X[:, d])
        for k in range(K):
            want[l, k, seen] += _logpdf(FAMILY[d], X[seen, d], phi[l, s, k].numpy())
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)
    # observed: 1 on observed entries of real pairs, 0 on missing ones and padding
    obs = leaf.observed(data).numpy()
    for l, s, d in _pairs():
        want_obs = np.zeros(X.shape[0]) if d is None else (~np.isnan(X[:, d])).astype(float)
        np.testing.assert_array_equal(obs[l, s], want_obs)


def test_unbound_leaf_prepares_from_the_scope_it_is_given():
    rng = np.random.default_rng(10)
    X = torch.tensor(_data(rng))
    unbound = resolve_leaf(["gaussian", "bernoulli", "categorical", "poisson"], D, n_categories=3)
    bound = _leaf()
    for a, b in zip(unbound.prepare(X, SCOPE), bound.prepare(X, SCOPE)):
        for ta, tb in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)):
            assert torch.equal(ta, tb)


def test_region_log_max_uses_modes_for_missing_entries_and_skips_padding():
    rng = np.random.default_rng(1)
    leaf, phi, X = _leaf(), _phi(rng), _data(rng, missing=0.4)
    real = (SCOPE < D).double()
    got = leaf.region_log_max(leaf.prepare(torch.tensor(X), SCOPE), phi, real).numpy()
    want = np.zeros((L, K, X.shape[0]))
    for l, s, d in _pairs():
        if d is None:
            continue
        seen = ~np.isnan(X[:, d])
        for k in range(K):
            p = phi[l, s, k].numpy()
            want[l, k, seen] += _logpdf(FAMILY[d], X[seen, d], p)
            want[l, k, ~seen] += _brute_mode(FAMILY[d], p)[1]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


# --------------------------------------------------------------- E/M-step


@pytest.mark.parametrize("step", [1.0, 0.4])
def test_m_step_gives_each_family_its_weighted_means(step):
    rng = np.random.default_rng(2)
    leaf, old, X = _leaf(), _phi(rng), _data(rng, n_rows=60)
    B = X.shape[0]
    data = leaf.prepare(torch.tensor(X), SCOPE)
    grad = torch.tensor(rng.uniform(0.0, 1.0, size=(L, K, B)))  # posterior weights of a full-weight E-step
    stats_, counts = leaf.expected_statistics(data, grad)
    assert stats_.shape == (L, S, K, T_MAX) and counts.shape == (L, S, K)
    new = leaf.m_step(old, stats_, counts, step)
    for l, s, d in _pairs():
        if d is None:  # padding: no statistics, parameters stay 0
            assert (stats_[l, s] == 0).all() and (counts[l, s] == 0).all() and (new[l, s] == 0).all()
            continue
        family = FAMILY[d]
        seen = ~np.isnan(X[:, d])
        x = X[seen, d]
        for k in range(K):
            w = grad[l, k].numpy()[seen]
            np.testing.assert_allclose(counts[l, s, k].item(), w.sum(), rtol=1e-12)
            mean = (w * x).sum() / w.sum()
            if family == "gaussian":
                var = max((w * (x - mean) ** 2).sum() / w.sum(), MIN_VAR)
                estimate = np.array([mean, var + mean**2, 0.0])
            elif family == "categorical":
                p = np.maximum([(w * (x == c)).sum() / w.sum() for c in range(3)], PROB_FLOOR)
                estimate = p / p.sum()
            else:
                if family == "bernoulli":
                    mean = np.clip(mean, PROB_FLOOR, 1 - PROB_FLOOR)
                estimate = np.array([mean, 0.0, 0.0])
            want = (1 - step) * old[l, s, k].numpy() + step * estimate
            if family == "gaussian":  # the blend is projected again: its variance is at least MIN_VAR
                var = max(want[1] - want[0] ** 2, MIN_VAR)
                want[1] = var + want[0] ** 2
            np.testing.assert_allclose(new[l, s, k].numpy(), want, rtol=1e-9, atol=1e-12)
            used = 2 if family == "gaussian" else 3 if family == "categorical" else 1
            assert (stats_[l, s, k, used:] == 0).all() and (new[l, s, k, used:] == 0).all()


def test_projection_and_unconstrained_round_trip_keep_unused_columns_zero():
    rng = np.random.default_rng(3)
    leaf, phi = _leaf(), _phi(rng)
    unused = phi == 0  # unused columns and the padding pair (the random phi is nonzero elsewhere)
    assert unused.any()
    projected = leaf.project(phi)
    torch.testing.assert_close(projected, phi, rtol=1e-12, atol=1e-15)
    u = leaf.to_unconstrained(phi)
    back = leaf.from_unconstrained(u)
    torch.testing.assert_close(back, phi, rtol=1e-9, atol=1e-12)
    for t in (projected, u, back):
        assert (t[unused] == 0).all()
    # garbage in the unused columns and on padding is cleared by the projection
    dirty = phi + unused * torch.tensor(rng.normal(size=phi.shape))
    assert (leaf.project(dirty)[unused] == 0).all()
    torch.testing.assert_close(leaf.project(dirty), phi, rtol=1e-12, atol=1e-15)


# ------------------------------------------------------- sampling, mode


def test_samples_of_every_family_fit_their_distribution():
    rng = np.random.default_rng(4)
    leaf, phi = _leaf(), _phi(rng, n=1)
    B = 20000
    chosen = phi.expand(L, S, B, T_MAX)  # every draw from density 0 of its pair
    draws = leaf.sample(chosen, torch.Generator().manual_seed(0))
    assert draws.shape == (L, S, B)
    for l, s, d in _pairs():
        x = draws[l, s].numpy()
        if d is None:
            assert (x == 0).all()
            continue
        family, p = FAMILY[d], phi[l, s, 0].numpy()
        if family == "gaussian":
            pvalue = stats.kstest(x, stats.norm(p[0], math.sqrt(p[1] - p[0] ** 2)).cdf).pvalue
        else:
            top = {"bernoulli": 1, "categorical": 2, "poisson": int(stats.poisson.ppf(1 - 1e-3, p[0]))}[family]
            assert (x == np.round(x)).all() and x.min() >= 0
            support = np.arange(top + 1)
            expected = B * np.exp(_logpdf(family, support, p))
            if family == "poisson":
                expected[-1] += B * stats.poisson.sf(top, p[0])
            observed = np.bincount(np.minimum(x.astype(int), top), minlength=top + 1)
            assert len(observed) == top + 1
            pvalue = stats.chisquare(observed, expected).pvalue
        assert pvalue > 1e-3, (family, pvalue)


def test_mode_and_its_log_density_by_brute_force():
    rng = np.random.default_rng(5)
    leaf, phi = _leaf(), _phi(rng, n=40)
    # integer and near-integer Poisson rates, Bernoulli p on both sides of 1/2
    phi[1, 0, :4, 0] = torch.tensor([1.0, 3.0, 2.999, 0.2], dtype=phi.dtype)
    mode = leaf.mode(phi).numpy()  # (L, S, B=40): sample and mode take chosen parameters (L, S, B, T)
    at_mode = leaf.mode_log_density(phi).numpy()
    for l, s, d in _pairs():
        if d is None:
            assert (mode[l, s] == 0).all() and (at_mode[l, s] == 0).all()
            continue
        for k in range(phi.shape[2]):
            p = phi[l, s, k].numpy()
            best, best_logp = _brute_mode(FAMILY[d], p)
            # ties (a Poisson with an integer rate) have two modes: compare densities
            np.testing.assert_allclose(_logpdf(FAMILY[d], mode[l, s, k], p), best_logp, rtol=1e-9, atol=1e-9)
            np.testing.assert_allclose(at_mode[l, s, k], best_logp, rtol=1e-9, atol=1e-9)


# ------------------------------------------------------------- gradients


def test_gradients_through_the_unconstrained_map_are_correct():
    rng = np.random.default_rng(6)
    leaf, X = _leaf(), _data(rng, n_rows=8)
    data = leaf.prepare(torch.tensor(X), SCOPE)
    u = leaf.to_unconstrained(_phi(rng, n=2)).requires_grad_(True)
    real = (SCOPE < D).double()

    def objective(u):
        phi = leaf.from_unconstrained(u)
        return leaf.region_log_prob(data, phi).sum() + 0.5 * leaf.region_log_max(data, phi, real).sum()

    assert torch.autograd.gradcheck(objective, (u,), eps=1e-6, atol=1e-5)


def test_gradients_are_finite_where_other_families_would_overflow():
    """u holds, on each pair, values that are fine for its own family but
    overflow (exp(800) = inf) or are invalid for the others: no NaN may leak
    into the gradient from branches ``torch.where`` discards."""
    rng = np.random.default_rng(7)
    leaf, X = _leaf(), _data(rng, n_rows=10)
    data = leaf.prepare(torch.tensor(X), SCOPE)
    u = leaf.to_unconstrained(_phi(rng))
    u[0, 0, :, 0] = 800.0  # a Gaussian mean: exp(800) would be a Poisson rate of inf
    u[1, 0, :, 0] = -800.0  # a Poisson log-rate at the floor's far side
    u[0, 1, :, :] = torch.tensor([900.0, -900.0, 0.0], dtype=u.dtype)  # extreme categorical logits
    u.requires_grad_(True)
    phi = leaf.from_unconstrained(u)
    assert torch.isfinite(phi).all()
    real = (SCOPE < D).double()
    total = leaf.region_log_prob(data, phi).sum() + leaf.region_log_max(data, phi, real).sum()
    total.backward()
    assert torch.isfinite(u.grad).all()
    unused = leaf.to_unconstrained(_phi(rng)) == 0
    assert (u.grad[unused] == 0).all()  # unused columns and padding get no gradient
    assert (u.grad[~unused] != 0).any()


class _TrustingPoisson(PoissonLeaf):
    """A Poisson family that, as a plug-in may, trusts phi to be valid: no
    clamp outside ``project``, so log of a negative rate is NaN and
    torch.poisson rejects it."""

    def _rate(self, phi):
        return phi[..., 0]

    def project(self, phi):
        return phi[..., :1].clamp_min(1e-6)


def test_a_family_that_trusts_its_input_never_sees_other_families_parameters():
    rng = np.random.default_rng(12)
    X = np.column_stack([rng.normal(size=10), rng.poisson(2.0, 10)]).astype(float)
    X[2] = np.nan
    scope = torch.tensor([[0, 1], [1, 2]])
    leaf = MixedLeaf([GaussianLeaf(), _TrustingPoisson()]).for_scope(scope)
    mu = torch.tensor([-3.0, -0.5])  # negative means: invalid Poisson rates
    phi = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    phi[0, 0] = torch.stack([mu, 1.0 + mu**2], -1)
    phi[0, 1, :, 0] = phi[1, 0, :, 0] = torch.tensor([1.5, 4.0])
    u = leaf.to_unconstrained(phi).requires_grad_(True)
    data = leaf.prepare(torch.tensor(X), scope)
    values = leaf.region_log_prob(data, leaf.from_unconstrained(u))
    real = (scope < 2).double()
    (values.sum() + leaf.region_log_max(data, leaf.from_unconstrained(u), real).sum()).backward()
    assert torch.isfinite(values).all() and torch.isfinite(u.grad).all()
    seen = ~np.isnan(X[:, 0])
    for k in range(2):
        want = stats.poisson.logpmf(X[:, 1], phi[0, 1, k, 0].item()) + stats.norm.logpdf(X[:, 0], mu[k].item(), 1.0)
        np.testing.assert_allclose(values[0, k, seen].detach().numpy(), want[seen], rtol=1e-9)
    draws = leaf.sample(phi[:, :, :1].expand(2, 2, 5, 2), torch.Generator().manual_seed(0))  # (L, S, B)
    assert torch.isfinite(draws).all() and (draws[0, 1] >= 0).all() and (draws[1, 1] == 0).all()
    assert torch.isfinite(leaf.mode_log_density(phi)).all()


# ---------------------------------------------------------- initialization


def test_init_from_data_puts_each_family_in_its_pairs():
    rng = np.random.default_rng(8)
    leaf, X = _leaf(), _data(rng, n_rows=40)
    Xt = torch.tensor(X)
    phi = leaf.init_from_data(Xt, SCOPE, 5, torch.Generator().manual_seed(3))
    assert phi.shape == (L, S, 5, T_MAX) and phi.dtype == torch.float64
    assert torch.equal(phi, leaf.init_from_data(Xt, SCOPE, 5, torch.Generator().manual_seed(3)))
    assert not torch.equal(phi, leaf.init_from_data(Xt, SCOPE, 5, torch.Generator().manual_seed(4)))
    assert torch.equal(leaf.init_from_data(Xt.float(), SCOPE, 5, torch.Generator().manual_seed(3)).double().round(
        decimals=4), phi.round(decimals=4))
    for l, s, d in _pairs():
        p = phi[l, s].numpy()  # (5, T_MAX)
        if d is None:
            assert (p == 0).all()
            continue
        column = X[:, d][~np.isnan(X[:, d])]
        starts = np.append(column, column.mean())
        family = FAMILY[d]
        if family == "gaussian":
            assert (np.abs(p[:, :1] - starts).min(1) < 1e-9).all()  # a training value or the mean
            np.testing.assert_allclose(p[:, 1] - p[:, 0] ** 2, column.var(), rtol=1e-9)
            assert (p[:, 2] == 0).all()
        elif family == "bernoulli":
            assert ((p[:, 0] >= 0.15) & (p[:, 0] <= 0.85)).all() and (p[:, 1:] == 0).all()
        elif family == "categorical":
            np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
            assert (p.max(1) >= 0.5).all()
        else:
            assert (p[:, 0] > 0).all() and (p[:, 1:] == 0).all()
            assert (np.abs(2 * p[:, :1] - column.mean() - starts).min(1) < 1e-9).all()


# --------------------------------------------------------------- EM loop


def test_em_on_a_mixed_mixture_never_lowers_the_likelihood():
    """A mixture of K fully factorized densities over the 4 mixed features
    (one leaf region), EM assembled from the leaf's methods: posteriors by
    autograd, expected_statistics, m_step."""
    rng = np.random.default_rng(9)
    X = _data(rng, n_rows=80, missing=0.1)
    X[:40, 0] += 4.0  # two clusters
    X[:40, 3] += 5.0
    scope = torch.tensor([[0, 1, 2, 3]])
    leaf = _leaf().for_scope(scope)
    Xt = torch.tensor(X)
    data = leaf.prepare(Xt, scope)
    phi = leaf.init_from_data(Xt, scope, 2, torch.Generator().manual_seed(0))
    log_w = torch.log(torch.tensor([0.5, 0.5], dtype=torch.float64))
    history = []
    for _ in range(8):
        values = leaf.region_log_prob(data, phi).requires_grad_(True)  # (1, K, B)
        log_p = torch.logsumexp(log_w[:, None] + values[0], 0)  # (B,)
        (grad,) = torch.autograd.grad(log_p.sum(), values)
        history.append(log_p.sum().item())
        stats_, counts = leaf.expected_statistics(data, grad)
        phi = leaf.m_step(phi, stats_, counts, 1.0)
        log_w = torch.log(grad[0].sum(1) / X.shape[0])
    assert np.all(np.diff(history) >= -1e-9), history
    assert history[-1] > history[0] + 1.0
    # the same log-likelihood by scipy at the final parameters
    values = leaf.region_log_prob(data, phi)[0].numpy()
    want = np.zeros((2, X.shape[0]))
    for d in range(D):
        seen = ~np.isnan(X[:, d])
        for k in range(2):
            want[k, seen] += _logpdf(FAMILY[d], X[seen, d], phi[0, d, k].numpy())
    np.testing.assert_allclose(values, want, rtol=1e-10)
    assert math.isfinite(logsumexp(log_w.numpy()[:, None] + want, axis=0).sum())


def test_groups_of_one_family_keep_their_own_settings():
    """Gaussian columns with two different variance floors form two groups:
    densities equal the plain family's where no floor binds, and each
    group's projection applies its own floor."""
    rng = np.random.default_rng(11)
    X = torch.tensor(rng.normal(size=(12, 3)))
    scope = torch.tensor([[0, 1], [2, 3]])
    mixed = MixedLeaf([GaussianLeaf(0.05), GaussianLeaf(0.5), GaussianLeaf(0.05)]).for_scope(scope)
    assert len(mixed.groups) == 2 and mixed.n_stats == 2
    mu = torch.tensor(rng.normal(size=(2, 2, 2)))
    var = torch.tensor(rng.uniform(0.6, 2.0, size=(2, 2, 2)))
    phi = torch.stack([mu, var + mu**2], -1)
    phi[1, 1] = 0.0  # padding
    plain = GaussianLeaf()
    want = plain.region_log_prob(plain.prepare(X, scope), torch.where(phi == 0, 1.0, phi))
    torch.testing.assert_close(mixed.region_log_prob(mixed.prepare(X, scope), phi), want, rtol=1e-12, atol=1e-12)
    small = torch.stack([mu, 0.1 + mu**2], -1)  # variance 0.1: above one floor, below the other
    projected = mixed.project(small)
    variance = (projected[..., 1] - projected[..., 0] ** 2).numpy()
    np.testing.assert_allclose(variance[0, 0], 0.1, rtol=1e-9)  # column 0: floor 0.05
    np.testing.assert_allclose(variance[0, 1], 0.5, rtol=1e-9)  # column 1: floor 0.5
    np.testing.assert_allclose(variance[1, 0], 0.1, rtol=1e-9)  # column 2: floor 0.05
    assert (projected[1, 1] == 0).all()  # padding
