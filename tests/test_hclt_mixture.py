"""Mixtures of hidden Chow-Liu trees: ``merge_region_graphs`` and
``EinsumNetworkDensity(structure="hclt", n_hclt=n)``."""

import itertools

import numpy as np
import pytest
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity
from skpc.structure import RegionGraph, chow_liu_tree, hclt_region_graph, merge_region_graphs


def _chain_data(rng, n, d):
    """Binary rows of a noisy chain x_j = x_{j-1} xor noise: strong neighbour dependence."""
    X = np.empty((n, d))
    X[:, 0] = rng.random(n) < 0.5
    for j in range(1, d):
        X[:, j] = np.logical_xor(X[:, j - 1], rng.random(n) < 0.2)
    return X


def test_merge_shares_regions_and_mixes_root_splits():
    graphs = [
        hclt_region_graph([-1, 0, 1, 2], 0),  # chain 0-1-2-3: root split {0} | {1, 2, 3}
        hclt_region_graph([-1, 0, 0, 0], 0),  # star: {0} | {1} | {2} | {3}
        hclt_region_graph([-1, 2, 0, 1], 0),  # chain 0-2-1-3: {0} | {1, 2, 3} again
        hclt_region_graph([2, 3, 1, -1], 3),  # chain 3-1-2-0: {3} | {0, 1, 2}
    ]
    merged = merge_region_graphs(graphs)
    merged.validate()
    root = merged.root
    assert merged.regions[root] == (0, 1, 2, 3)
    root_parts = {frozenset(merged.regions[c] for c in merged.partitions[k][1]) for k in merged.region_partitions()[root]}
    assert root_parts == {
        frozenset({(0,), (1, 2, 3)}), frozenset({(0,), (1,), (2,), (3,)}), frozenset({(3,), (0, 1, 2)})
    }  # one per distinct root split
    # one region per scope: the union of the graphs' scopes
    scopes = {s for g in graphs for s in g.regions}
    assert sorted(merged.regions) == sorted(scopes) and len(merged.regions) == len(scopes)
    # every partition of every graph is in the merged graph, by scopes
    merged_parts = {(merged.regions[p], frozenset(merged.regions[c] for c in ch)) for p, ch in merged.partitions}
    for g in graphs:
        for p, ch in g.partitions:
            assert (g.regions[p], frozenset(g.regions[c] for c in ch)) in merged_parts
    # (1, 2, 3) is shared by trees 1 and 3 with different splits: it mixes both
    shared = merged.regions.index((1, 2, 3))
    splits = {frozenset(merged.regions[c] for c in merged.partitions[k][1]) for k in merged.region_partitions()[shared]}
    assert splits == {frozenset({(1,), (2, 3)}), frozenset({(2,), (1, 3)})}


def test_merge_of_identical_graphs_is_the_graph():
    g = hclt_region_graph([-1, 0, 1, 1, 3], 0)
    merged = merge_region_graphs([g, g, g])
    assert merged.regions == g.regions and merged.partitions == g.partitions


def test_merge_errors():
    with pytest.raises(ValueError, match="at least one"):
        merge_region_graphs([])
    with pytest.raises(ValueError, match="same variables"):
        merge_region_graphs([hclt_region_graph([-1, 0], 0), hclt_region_graph([-1, 0, 0], 0)])
    with pytest.raises(ValueError, match="not a RegionGraph"):
        merge_region_graphs([hclt_region_graph([-1, 0], 0), [(0, 1)]])
    bad = RegionGraph(2, [(0, 1), (0,), (0,)], [(0, (1, 2))])
    with pytest.raises(ValueError, match="appears twice"):
        merge_region_graphs([bad])


def _model(n_hclt, **kw):
    return EinsumNetworkDensity(
        structure="hclt", n_hclt=n_hclt, layer="cp", n_sums=3, leaf="bernoulli", batch_size=None, max_iter=20,
        tol=None, early_stopping=False, dtype="float64", random_state=0, **kw,
    )


def test_mixture_of_hclts_is_normalized_and_mixes_at_the_root():
    rng = np.random.default_rng(0)
    X = _chain_data(rng, 80, 6)
    X[rng.random(X.shape) < 0.05] = np.nan
    model = _model(3).fit(X)
    graph = model.region_graph_
    graph.validate()
    assert len(graph.region_partitions()[graph.root]) == 3  # one split per tree: three distinct roots
    grid = np.array(list(itertools.product([0.0, 1.0], repeat=6)))
    total = logsumexp(model.score_samples(grid))
    assert abs(total) < 1e-9, total
    # marginals are normalized too: variable 3 missing
    half = grid[grid[:, 3] == 0].copy()
    half[:, 3] = np.nan
    assert abs(logsumexp(model.score_samples(half))) < 1e-9


def test_n_hclt_one_is_the_single_tree_and_mixtures_differ():
    rng = np.random.default_rng(1)
    X = _chain_data(rng, 60, 6)
    one = _model(1).fit(X)
    single = hclt_region_graph(*chow_liu_tree(X, kind=["discrete"] * 6))
    assert one.region_graph_.regions == single.regions and one.region_graph_.partitions == single.partitions
    # the bootstrap trees are drawn from random_state: the same seed, the same graph
    a, b = _model(4).fit(X), _model(4).fit(X)
    assert a.region_graph_.partitions == b.region_graph_.partitions
    assert len(a.region_graph_.partitions) > len(single.partitions)
    assert a.n_parameters_ > one.n_parameters_


def test_n_hclt_needs_structure_hclt():
    X = _chain_data(np.random.default_rng(2), 20, 4)
    with pytest.raises(ValueError, match="n_hclt=2 .* needs structure='hclt'"):
        EinsumNetworkDensity(structure="rat", n_hclt=2).fit(X)
    with pytest.raises(ValueError, match="n_hclt"):
        EinsumNetworkDensity(structure="hclt", n_hclt=0).fit(X)
