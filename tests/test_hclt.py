"""EinsumNetworkDensity(structure="hclt"): a hidden Chow-Liu tree learned
from the training rows, with CP or einsum layers: exact queries, sampling,
MPE and EM as for the other structures."""

import pickle

import numpy as np
import pytest
from conftest import NaiveCircuit, all_states, brute_force_log_marginal, random_data
from scipy import stats
from scipy.integrate import trapezoid
from scipy.special import logsumexp
from sklearn.model_selection import GridSearchCV

from skpc import EinsumNetworkDensity
from skpc.structure import chow_liu_tree, coarsen_states, hclt_region_graph


def _chain_data(n, rng, flip=0.1):
    """Binary chain 0 -> 1 -> ... -> 5 with a branch 2 -> 6 (a tree-shaped Bayesian network)."""
    X = np.empty((n, 7))
    X[:, 0] = rng.random(n) < 0.5
    for child, parent in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 2)]:
        X[:, child] = np.where(rng.random(n) < flip, 1 - X[:, parent], X[:, parent])
    return X


def _hclt(leaf="bernoulli", layer="cp", X=None, **params):
    settings = dict(structure="hclt", layer=layer, leaf=leaf, n_sums=3, max_iter=6, batch_size=None, tol=None,
                    early_stopping=False, dtype="float64", random_state=0)
    settings.update(params)
    return EinsumNetworkDensity(**settings).fit(X)


def test_hclt_structure_is_the_chow_liu_tree_of_the_training_rows():
    rng = np.random.default_rng(0)
    X = _chain_data(5000, rng)
    model = _hclt(X=X)
    parent, root = chow_liu_tree(X, kind="discrete")
    assert model.region_graph_ == hclt_region_graph(parent, root)
    edges = {frozenset((v, int(p))) for v, p in enumerate(parent) if p >= 0}
    assert edges == {frozenset(e) for e in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 2)]}


@pytest.mark.parametrize("layer", ["cp", "einsum"])
@pytest.mark.parametrize("leaf, n_states", [("bernoulli", 2), ("categorical", 3)])
def test_hclt_normalizes_and_marginals_equal_brute_force(layer, leaf, n_states):
    rng = np.random.default_rng(1)
    X = random_data(400, 6, n_states, rng)
    extra = {"n_categories": n_states} if leaf == "categorical" else {}
    model = _hclt(leaf=leaf, layer=layer, X=X, **extra)
    assert logsumexp(model.score_samples(all_states(6, n_states))) == pytest.approx(0.0, abs=1e-9)
    rows = random_data(12, 6, n_states, rng, nan_fraction=0.4)
    np.testing.assert_allclose(model.score_samples(rows), brute_force_log_marginal(model, rows, n_states), rtol=1e-9)
    np.testing.assert_allclose(model.score_samples(X[:20]),
                               NaiveCircuit(model._circuit, model.params_).log_prob(X[:20]), rtol=1e-9)


def test_gaussian_hclt_integrates_to_one():
    rng = np.random.default_rng(2)
    z = rng.normal(size=400)
    X = np.column_stack([z + 0.3 * rng.normal(size=400), -z + 0.5 * rng.normal(size=400)])
    model = _hclt(leaf="gaussian", X=X, min_var=0.05)
    grid = np.linspace(-8, 8, 401)
    xx, yy = np.meshgrid(grid, grid, indexing="ij")
    density = np.exp(model.score_samples(np.column_stack([xx.ravel(), yy.ravel()]))).reshape(xx.shape)
    assert trapezoid(trapezoid(density, grid, axis=1), grid) == pytest.approx(1.0, abs=1e-4)


def test_hclt_samples_match_the_density_and_mpe_equals_the_naive_descent():
    rng = np.random.default_rng(3)
    X = _chain_data(2000, rng)[:, :6]
    model = _hclt(X=X)
    samples = model.sample(20000, random_state=0)
    codes = (samples @ (2 ** np.arange(5, -1, -1))).astype(int)
    expected = np.exp(model.score_samples(all_states(6))) * len(samples)
    big = expected >= 5  # rare cells pooled into one
    observed = np.bincount(codes, minlength=64)
    obs, exp = observed[big], expected[big]
    if not big.all():
        obs, exp = np.append(obs, observed[~big].sum()), np.append(exp, expected[~big].sum())
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3
    rows = X[:15].copy()
    rows[:, [1, 4]] = np.nan
    naive = NaiveCircuit(model._circuit, model.params_)
    np.testing.assert_array_equal(model.impute(rows, method="mpe"), [naive.mpe_completion(r) for r in rows])


def test_hclt_full_batch_em_is_monotone_and_the_model_beats_independence():
    rng = np.random.default_rng(4)
    X = _chain_data(3000, rng)
    model = _hclt(X=X, max_iter=15)
    assert np.all(np.diff(model.train_scores_) >= -1e-9)
    independent = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=1, n_repetitions=1, depth=0, batch_size=None,
                                       max_iter=2, tol=None, early_stopping=False, random_state=0).fit(X)
    assert model.lower_bound_ > independent.lower_bound_ + 1.0  # the chain's dependencies are learned


def test_hclt_with_default_training_pickles_and_grid_searches():
    rng = np.random.default_rng(5)
    X = _chain_data(600, rng)
    model = EinsumNetworkDensity(structure="hclt", layer="cp", leaf="bernoulli", n_sums=4, random_state=0).fit(X)
    assert model.converged_
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(X[:20]), model.score_samples(X[:20]))
    search = GridSearchCV(
        EinsumNetworkDensity(structure="hclt", layer="cp", leaf="bernoulli", max_iter=5, max_full_batch_iter=2,
                             tol=None, random_state=0),
        {"n_sums": [1, 4]}, cv=2,
    ).fit(X)
    assert search.best_params_ == {"n_sums": 4}


def test_default_layer_is_cp_for_hclt_and_einsum_otherwise():
    X = _chain_data(200, np.random.default_rng(6))
    hclt = EinsumNetworkDensity(structure="hclt", leaf="bernoulli", n_sums=4, max_iter=1, max_full_batch_iter=0,
                                tol=None, random_state=0).fit(X)
    explicit = _hclt(X=X, n_sums=4, max_iter=1, dtype="float32", batch_size=100, max_full_batch_iter=0,
                     early_stopping="auto")
    assert hclt.layer == "auto" and hclt.layer_ == "cp"
    assert hclt.n_parameters_ == explicit.n_parameters_  # K x K weights per partition, as layer="cp"
    rat = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, n_repetitions=2, max_iter=1, max_full_batch_iter=0,
                               tol=None, random_state=0).fit(X)
    assert rat.layer_ == "einsum"


def test_hclt_on_8bit_pixels_learns_its_tree_from_binned_values():
    # 256-state columns: the mutual information of the raw values would need a
    # 150 GiB table at 784 pixels; the estimator bins them to 16 states first
    rng = np.random.default_rng(7)
    X = _chain_data(400, rng) * 200 + rng.integers(0, 40, size=(400, 7))  # chain bits as dark/bright pixels
    model = EinsumNetworkDensity(structure="hclt", n_sums=3, max_iter=2, max_full_batch_iter=0, tol=None,
                                 random_state=0).fit(X)
    assert model.n_categories_ == int(X.max()) + 1  # categorical leaves over the raw levels
    kinds = ["discrete"] * 7
    assert model.region_graph_ == hclt_region_graph(*chow_liu_tree(coarsen_states(X, kinds), kind=kinds))
    edges = {frozenset((v, int(p))) for v, p in enumerate(chow_liu_tree(coarsen_states(X, kinds))[0]) if p >= 0}
    assert edges == {frozenset(e) for e in [(1, 0), (2, 1), (3, 2), (4, 3), (5, 4), (6, 2)]}
    assert np.isfinite(model.score_samples(X[:5])).all()


def test_hclt_tree_reads_at_most_the_initialization_sample(monkeypatch):
    import skpc.einet as einet_module
    from skpc.backend.distributed import evenly_spaced_rows

    rng = np.random.default_rng(8)
    X = _chain_data(900, rng, flip=0.3)
    monkeypatch.setattr(einet_module, "INIT_SAMPLE_ELEMENTS", 7 * 50)  # 50 rows of 7 features
    model = _hclt(X=X, max_iter=1)
    sample = X[evenly_spaced_rows(np.arange(900), 50)]
    assert len(sample) == 50
    assert model.region_graph_ == hclt_region_graph(*chow_liu_tree(sample, kind="discrete"))
