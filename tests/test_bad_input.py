"""Bad input: a ValueError that says what to fix, and a fitted model left
exactly as it was."""

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity, RegionGraph, random_binary_trees

from conftest import all_states, random_data


def _snapshot(model, X_ref):
    p = model.params_
    return (
        model.score_samples(X_ref),
        [t.clone() for t in (p.leaf, *p.tensors())],
        model.n_iter_,
        model.lower_bound_,
        model.n_features_in_,
    )


def _assert_untouched(model, X_ref, snap):
    scores, tensors, n_iter, lower_bound, n_features = snap
    np.testing.assert_array_equal(model.score_samples(X_ref), scores)
    p = model.params_
    for before, after in zip(tensors, (p.leaf, *p.tensors())):
        assert torch.equal(before, after)
    assert model.n_iter_ == n_iter and model.lower_bound_ == lower_bound
    assert model.n_features_in_ == n_features


def _fitted(leaf, n_states=2, d=5, **params):
    rng = np.random.default_rng(0)
    X = random_data(80, d, n_states, rng) if leaf != "gaussian" else rng.normal(size=(80, d))
    kw = dict(leaf=leaf, n_sums=2, n_repetitions=2, max_iter=2, tol=None, dtype="float64", random_state=0)
    kw.update(params)
    return EinsumNetworkDensity(**kw).fit(X), X


def _queries(model):
    """Every query that validates X, as callables."""
    return [
        model.score_samples,
        model.score,
        lambda X: model.impute(X, method="sample"),
        lambda X: model.impute(X, method="mpe"),
        lambda X: model.score_conditional(X, [0]),
    ]


def _check_rejected(model, X_ref, X_bad, match):
    snap = _snapshot(model, X_ref)
    for query in _queries(model):
        with pytest.raises(ValueError, match=match):
            query(X_bad)
    # a warm refit on the bad data is refused and keeps the earlier fit
    model.set_params(warm_start=True)
    with pytest.raises(ValueError, match=match):
        model.fit(X_bad)
    model.set_params(warm_start=False)
    _assert_untouched(model, X_ref, snap)


def test_bernoulli_rejects_non_binary():
    model, X = _fitted("bernoulli")
    bad = X[:4].copy()
    bad[1, 2] = 2.0
    _check_rejected(model, X[:10], bad, r"outside \{0, 1\}.*leaf='categorical'")
    bad[1, 2] = 0.5
    _check_rejected(model, X[:10], bad, r"outside \{0, 1\}")
    with pytest.raises(ValueError, match=r"Bernoulli leaves need binary data"):
        EinsumNetworkDensity(leaf="bernoulli").fit(np.where(X == 1, 3.0, X))


@pytest.mark.parametrize("value, match", [(-1.0, "negative or non-integer"), (1.5, "negative or non-integer"),
                                           (3.0, r"n_categories=3.*raise n_categories")])
def test_categorical_rejects_bad_values(value, match):
    model, X = _fitted("categorical", n_states=3)
    assert model.n_categories_ == 3  # inferred from the data
    bad = X[:4].copy()
    bad[2, 0] = value
    _check_rejected(model, X[:10], bad, match)


def test_categorical_explicit_n_categories_too_small_at_fit():
    X = random_data(50, 4, 3, np.random.default_rng(1))
    with pytest.raises(ValueError, match=r"value 2.*n_categories=2.*raise n_categories"):
        EinsumNetworkDensity(leaf="categorical", n_categories=2).fit(X)


@pytest.mark.parametrize("value, match", [(-1.0, "negative or non-integer"), (0.5, "negative or non-integer"),
                                           (3.0, r"n_trials=2.*raise n_trials")])
def test_binomial_rejects_bad_values(value, match):
    model, X = _fitted("binomial", n_states=3)
    assert model.n_trials_ == 2
    bad = X[:4].copy()
    bad[0, 3] = value
    _check_rejected(model, X[:10], bad, match)


@pytest.mark.parametrize("leaf", ["gaussian", "bernoulli"])
def test_inf_rejected_at_fit_and_score(leaf):
    model, X = _fitted(leaf)
    bad = X[:4].copy()
    bad[3, 1] = np.inf
    _check_rejected(model, X[:10], bad, r"inf.*NaN")
    bad[3, 1] = -np.inf
    _check_rejected(model, X[:10], bad, r"inf.*NaN")
    with pytest.raises(ValueError, match="inf"):
        EinsumNetworkDensity(leaf=leaf).fit(bad)


def test_wrong_number_of_features():
    model, X = _fitted("gaussian")
    snap = _snapshot(model, X[:10])
    for query in _queries(model):
        with pytest.raises(ValueError, match=r"4 features.*expecting 5 features"):
            query(X[:3, :4])
    model.set_params(warm_start=True)
    with pytest.raises(ValueError, match=r"6 features.*expecting 5"):
        model.fit(np.hstack([X, X[:, :1]]))
    model.set_params(warm_start=False)
    _assert_untouched(model, X[:10], snap)


def test_pd_image_shape_inconsistent():
    X = random_data(40, 6, 2, np.random.default_rng(0))
    with pytest.raises(ValueError, match=r"image_shape=\(2, 4\) describes 8 features but X has 6"):
        EinsumNetworkDensity(structure="pd", image_shape=(2, 4), leaf="bernoulli").fit(X)
    with pytest.raises(ValueError, match=r"needs image_shape"):
        EinsumNetworkDensity(structure="pd", leaf="bernoulli").fit(X)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(H, W, C\)"):
        EinsumNetworkDensity(structure="pd", image_shape=(6,), leaf="bernoulli").fit(X)


def test_depth_deeper_than_features_allow():
    X = np.random.default_rng(0).normal(size=(30, 5))
    with pytest.raises(ValueError, match=r"depth=3 needs at least 2\*\*depth=8 features.*use depth <= 2"):
        EinsumNetworkDensity(structure="rat", depth=3).fit(X)
    EinsumNetworkDensity(structure="rat", depth=2, max_iter=1, tol=None).fit(X)  # the suggested fix works


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when CUDA is missing")
def test_cuda_without_cuda():
    X = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match=r"CUDA is not available.*device='cpu'"):
        EinsumNetworkDensity(device="cuda").fit(X)


def test_warm_start_refit_on_bad_data_keeps_earlier_fit():
    model, X = _fitted("bernoulli", warm_start=True)
    snap = _snapshot(model, X[:10])
    bad = X.copy()
    bad[5, 0] = 7.0
    with pytest.raises(ValueError, match=r"outside \{0, 1\}"):
        model.fit(bad)
    _assert_untouched(model, X[:10], snap)
    # and the model still continues from its parameters afterwards
    model.fit(X)
    assert model.n_iter_ == snap[2] + 2


def test_region_graph_over_wrong_number_of_variables():
    X = np.random.default_rng(0).normal(size=(30, 5))
    graph = random_binary_trees(4, 1, 2, random_state=0)
    with pytest.raises(ValueError, match=r"region graph has 4 variables but X has 5 features"):
        EinsumNetworkDensity(structure=graph).fit(X)
    # an invalid hand-built graph is reported by its validation
    broken = RegionGraph(5, [(0, 1, 2, 3, 4), (0, 1), (2, 3)], [(0, (1, 2))])
    with pytest.raises(ValueError, match="not smooth"):
        EinsumNetworkDensity(structure=broken).fit(X)


def test_score_conditional_empty_or_bad_query():
    model, X = _fitted("bernoulli")
    snap = _snapshot(model, X[:10])
    with pytest.raises(ValueError, match="query selects no feature"):
        model.score_conditional(X[:3], np.zeros(5, dtype=bool))
    with pytest.raises(ValueError, match="query selects no feature"):
        model.score_conditional(X[:3], [])
    with pytest.raises(ValueError, match=r"one entry per feature \(5\)"):
        model.score_conditional(X[:3], np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match=r"query indices must lie in \[0, 5\)"):
        model.score_conditional(X[:3], [0, 5])
    _assert_untouched(model, X[:10], snap)


def test_impute_unknown_method():
    model, X = _fitted("bernoulli")
    snap = _snapshot(model, X[:10])
    with pytest.raises(ValueError, match=r"method='median' is not supported; use 'sample' or 'mpe'"):
        model.impute(X[:3], method="median")
    _assert_untouched(model, X[:10], snap)


def test_nan_rows_fit_fine():
    rng = np.random.default_rng(3)
    X = random_data(100, 6, 2, rng, nan_fraction=0.3)
    X[:10] = np.nan  # fully missing rows
    model = EinsumNetworkDensity(structure="rat",
        leaf="bernoulli", n_sums=3, n_repetitions=2, max_iter=3, tol=None, dtype="float64", random_state=0
    ).fit(X)
    assert np.isfinite(model.lower_bound_)
    np.testing.assert_allclose(np.exp(model.score_samples(all_states(6))).sum(), 1.0, rtol=1e-9)
    np.testing.assert_allclose(model.score_samples(X[:10]), 0.0, atol=1e-12)
    # Gaussian, with a feature missing in most rows
    G = rng.normal(size=(80, 3))
    G[rng.random(80) < 0.8, 1] = np.nan
    G[:5] = np.nan
    gauss = EinsumNetworkDensity(n_sums=2, max_iter=3, tol=None, dtype="float64", random_state=0).fit(G)
    assert np.isfinite(gauss.score_samples(np.nan_to_num(G))).all()


@pytest.mark.parametrize("leaf", ["bernoulli", "gaussian", "categorical"])
def test_all_nan_data_is_rejected_with_the_reason(leaf):
    """A data set without a single observed value is refused, not "fitted"."""
    X = np.full((20, 4), np.nan)
    with pytest.raises(ValueError, match="no observed entry"):
        EinsumNetworkDensity(leaf=leaf, max_iter=2, tol=None, random_state=0).fit(X)


def test_em_learning_rate_above_one_is_rejected():
    X = np.random.default_rng(0).normal(size=(50, 4))
    with pytest.raises(ValueError, match=r"learning_rate=1.5 is not a valid EM step size.*\(0, 1\]"):
        EinsumNetworkDensity(learning_rate=1.5, max_iter=1).fit(X)
    # a gradient step may be larger than 1
    EinsumNetworkDensity(optimizer="adam", learning_rate=1.5, max_iter=1, tol=None, random_state=0).fit(X)


@pytest.mark.parametrize("device", ["tpu", "gpu", "cuda:x", "mps"])
def test_unknown_device_is_a_clear_value_error(device):
    X = np.random.default_rng(0).normal(size=(30, 4))
    with pytest.raises(ValueError, match=f"device={device!r} is not supported"):
        EinsumNetworkDensity(device=device, max_iter=1).fit(X)


def test_depth_on_one_feature_says_one_feature():
    with pytest.raises(ValueError, match=r"1 feature\(s\)"):
        EinsumNetworkDensity(structure="rat", depth=1, max_iter=1).fit(np.ones((10, 1)))


def test_depth_with_another_structure_says_to_pass_rat():
    X = np.random.default_rng(0).normal(size=(20, 8))
    with pytest.raises(ValueError, match="pass structure='rat' to use depth"):
        EinsumNetworkDensity(depth=2, max_iter=1).fit(X)
