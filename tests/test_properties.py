"""Properties of random small circuits (hypothesis): normalization by
enumeration, marginalizing everything gives log 1, and the marginal of a
random subset equals the sum over the other variables' states."""

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity, random_binary_trees

from conftest import all_states, brute_force_log_marginal, random_data

SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def rat_structures(draw):
    n_variables = draw(st.integers(2, 7))
    depth = draw(st.integers(0, int(math.floor(math.log2(n_variables)))))
    n_repetitions = draw(st.integers(1, 3))
    seed = draw(st.integers(0, 2**31 - 1))
    # half of the time hand the graph over as a RegionGraph, half as "rat"
    as_graph = draw(st.booleans())
    if as_graph:
        graph = random_binary_trees(n_variables, depth, n_repetitions, random_state=seed)
        return n_variables, dict(structure=graph)
    return n_variables, dict(structure="rat", depth=depth, n_repetitions=n_repetitions)


@st.composite
def pd_structures(draw):
    h = draw(st.integers(1, 3))
    w = draw(st.integers(2 if h == 1 else 1, 7 // h))
    c = draw(st.sampled_from([1, 2])) if h * w <= 3 else 1
    shape = (h, w) if c == 1 else (h, w, c)
    vertical_only = draw(st.booleans()) if w >= 2 else False
    # a step must cut the image somewhere: below the longest cuttable side
    longest = w if vertical_only else max(h, w)
    delta = draw(st.integers(1, longest - 1))
    return h * w * c, dict(structure="pd", image_shape=shape, pd_delta=delta, pd_vertical_only=vertical_only)


def _random_model(n_variables, params, n_sums, seed):
    X = random_data(30, n_variables, 2, np.random.default_rng(seed))
    model = EinsumNetworkDensity(
        leaf="bernoulli", n_sums=n_sums, max_iter=1, batch_size=None, tol=None, early_stopping=False, dtype="float64",
        random_state=seed, **params,
    )
    return model.fit(X)


def _check_invariants(model, n_variables, seed):
    states = all_states(n_variables)
    np.testing.assert_allclose(np.exp(logsumexp(model.score_samples(states))), 1.0, rtol=1e-9)
    np.testing.assert_allclose(model.score_samples(np.full((2, n_variables), np.nan)), 0.0, atol=1e-12)
    rng = np.random.default_rng(seed)
    X = states[rng.integers(len(states), size=4)].copy()
    for row in X:
        row[rng.random(n_variables) < rng.random()] = np.nan  # a random subset per row
    np.testing.assert_allclose(
        model.score_samples(X), brute_force_log_marginal(model, X, 2), rtol=1e-10, atol=1e-12
    )


@SETTINGS
@given(structure=rat_structures(), n_sums=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_random_binary_trees_invariants(structure, n_sums, seed):
    n_variables, params = structure
    _check_invariants(_random_model(n_variables, params, n_sums, seed), n_variables, seed)


@SETTINGS
@given(structure=pd_structures(), n_sums=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_poon_domingos_invariants(structure, n_sums, seed):
    n_variables, params = structure
    _check_invariants(_random_model(n_variables, params, n_sums, seed), n_variables, seed)
