"""A fitted model reads only its fitted attributes: set_params after fit
changes nothing until the next fit (queries, pickling), and a warm start
whose circuit parameters changed is refused."""

import copy
import pickle

import numpy as np
import pytest
from conftest import random_data

from skpc import EinsumNetworkDensity, RegionGraph
from skpc.structure import random_binary_trees

# A different valid value for every parameter.
CHANGED = {
    "structure": "pd",
    "depth": 1,
    "n_repetitions": 5,
    "n_hclt": 3,
    "n_sums": 7,
    "layer": "cp",
    "leaf": "bernoulli",
    "n_categories": 9,
    "n_trials": 9,
    "min_var": 10.0,
    "max_var": 0.5,
    "image_shape": (2, 4),
    "pd_delta": 1,
    "pd_vertical_only": True,
    "optimizer": "adam",
    "max_iter": 1,
    "batch_size": 3,
    "learning_rate": 0.9,
    "early_stopping": True,
    "validation_fraction": 0.5,
    "n_iter_no_change": 9,
    "tol": 5.0,
    "max_full_batch_iter": 0,
    "pseudocount": 2.0,
    "softening": 0.9,
    "device": "cpu",
    "dtype": "float64",
    "random_state": 99,
    "verbose": 0,
    "warm_start": True,
    "distributed": False,
}


def test_changed_covers_every_parameter():
    assert set(CHANGED) == set(EinsumNetworkDensity().get_params())


def _fitted(leaf="gaussian"):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(120, 8))
    if leaf == "categorical":
        X = rng.integers(0, 4, size=(120, 8)).astype(float)
    model = EinsumNetworkDensity(structure="rat", leaf=leaf, n_sums=3, n_repetitions=2, max_iter=4, batch_size=None, tol=None, early_stopping=False,
                                 random_state=0).fit(X)
    return model, X


@pytest.mark.parametrize("name", sorted(CHANGED))
def test_set_params_after_fit_changes_no_query(name):
    leaf = "categorical" if name == "n_categories" else "gaussian"
    model, X = _fitted(leaf)
    Xq = X[:20].copy()
    Xq[::2, 3] = np.nan
    before = model.score_samples(Xq)
    samples = model.sample(5, random_state=1)
    model.set_params(**{name: CHANGED[name]})
    np.testing.assert_array_equal(model.score_samples(Xq), before)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(Xq), before)
    np.testing.assert_array_equal(restored.sample(5, random_state=1), samples)
    np.testing.assert_array_equal(copy.deepcopy(model).score_samples(Xq), before)


CIRCUIT_CHANGES = ["structure", "depth", "n_repetitions", "n_sums", "layer", "leaf", "min_var", "max_var", "n_categories"]


@pytest.mark.parametrize("name", CIRCUIT_CHANGES)
def test_warm_start_with_other_circuit_parameters_is_refused(name):
    model, X = _fitted()
    model.set_params(warm_start=True, **{name: CHANGED[name]})
    before = model.score_samples(X[:10])
    with pytest.raises(ValueError, match=f"warm_start=True continues the fitted circuit, but {name}="):
        model.fit(X)
    np.testing.assert_array_equal(model.score_samples(X[:10]), before)  # the fitted model is intact


def test_warm_start_with_other_training_parameters_continues():
    model, X = _fitted()
    model.set_params(warm_start=True, max_iter=2, learning_rate=0.5, batch_size=40, tol=None, max_full_batch_iter=0)
    n_iter = model.n_iter_
    model.fit(X)
    assert model.n_iter_ == n_iter + 2


def test_fitted_leaf_and_graph_are_fitted_attributes():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 5, size=(100, 4)).astype(float)
    graph = random_binary_trees(4, 1, 2, random_state=0)
    model = EinsumNetworkDensity(structure=graph, leaf="categorical", n_sums=2, max_iter=2, batch_size=None,
                                 tol=None, random_state=0).fit(X)
    assert model.leaf_.n_categories == 5 and model.n_categories_ == 5
    assert model.region_graph_ == graph and model.region_graph_ is not graph
    graph.regions.append((0,))  # the user's object changes: the model does not
    assert model.region_graph_ != graph
    assert isinstance(model.region_graph_, RegionGraph)


def test_structure_seed_is_drawn_on_the_host():
    """The same random_state builds the same structure on every device: the
    structure seed is the first draw of the numpy RandomState."""
    from sklearn.utils import check_random_state

    from skpc.base import draw_seed

    X = np.random.default_rng(0).normal(size=(60, 8))
    model = EinsumNetworkDensity(structure="rat", n_sums=2, depth=2, n_repetitions=3, max_iter=1, batch_size=None, tol=None, early_stopping=False,
                                 random_state=5).fit(X)
    seed = draw_seed(check_random_state(5))
    assert model.region_graph_ == random_binary_trees(8, 2, 3, random_state=seed)


def test_pickle_without_cuda_and_warm_start_round_trip(rng):
    X = random_data(150, 6, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=2, n_repetitions=2, max_iter=2, batch_size=None,
                                 tol=None, random_state=0).fit(X)
    restored = pickle.loads(pickle.dumps(model))
    restored.set_params(warm_start=True)
    restored.fit(X)
    assert restored.n_iter_ == 4
