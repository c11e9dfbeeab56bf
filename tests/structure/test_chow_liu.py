import itertools
import time

import numpy as np
import pytest

import skpc.structure.chow_liu as chow_liu_module
from skpc.structure import (
    RegionGraph,
    chow_liu_tree,
    coarsen_states,
    hclt_region_graph,
    mutual_information,
)

# ----------------------------------------------------------------------
# Reference implementations


def _direct_discrete_mi(X, n_states, pseudocount):
    """MI of each pair from its own count table (rows where both observed)."""
    D = X.shape[1]
    out = np.zeros((D, D))
    for i, j in itertools.permutations(range(D), 2):
        ok = ~np.isnan(X[:, i]) & ~np.isnan(X[:, j])
        counts, _, _ = np.histogram2d(
            X[ok, i],
            X[ok, j],
            bins=[np.arange(n_states[i] + 1) - 0.5, np.arange(n_states[j] + 1) - 0.5],
        )
        P = (counts + pseudocount) / (counts + pseudocount).sum()
        p_i = P.sum(axis=1, keepdims=True)
        p_j = P.sum(axis=0, keepdims=True)
        nz = P > 0
        out[i, j] = np.sum(P[nz] * np.log((P / (p_i * p_j))[nz]))
    return out


def _direct_gaussian_mi(X):
    D = X.shape[1]
    out = np.zeros((D, D))
    for i, j in itertools.permutations(range(D), 2):
        ok = ~np.isnan(X[:, i]) & ~np.isnan(X[:, j])
        rho = np.corrcoef(X[ok, i], X[ok, j])[0, 1]
        out[i, j] = -0.5 * np.log(1 - rho**2)
    return out


def _direct_eta_mi(x, y):
    """-0.5 log(1 - eta^2), eta^2 the correlation ratio of y grouped by x."""
    ok = ~np.isnan(x) & ~np.isnan(y)
    x, y = x[ok], y[ok]
    total = np.sum((y - y.mean()) ** 2)
    between = sum(
        np.sum(x == a) * (y[x == a].mean() - y.mean()) ** 2 for a in np.unique(x)
    )
    return -0.5 * np.log(1 - between / total)


def _prufer_trees(n):
    """Edge sets of all n^(n-2) labelled trees on n nodes (Prüfer decoding)."""
    for seq in itertools.product(range(n), repeat=n - 2):
        degree = np.ones(n, dtype=int)
        for v in seq:
            degree[v] += 1
        edges = []
        for v in seq:
            leaf = int(np.flatnonzero(degree == 1)[0])
            edges.append((leaf, v))
            degree[leaf] -= 1
            degree[v] -= 1
        u, w = np.flatnonzero(degree == 1)
        edges.append((int(u), int(w)))
        yield edges


def _edges(parent):
    return {frozenset((v, int(p))) for v, p in enumerate(parent) if p >= 0}


def _assert_spanning_tree(parent, root):
    n = len(parent)
    assert parent[root] == -1
    assert np.sum(parent == -1) == 1
    assert len(_edges(parent)) == n - 1
    # Every variable reaches the root by following parents.
    for v in range(n):
        seen = set()
        while v != root:
            assert v not in seen
            seen.add(v)
            v = parent[v]


def _sample_tree_bn(parent, order, n_samples, flip, rng):
    """Binary tree BN: root uniform, each child copies its parent w.p. 1-flip."""
    X = np.zeros((n_samples, len(parent)), dtype=np.int64)
    for v in order:
        if parent[v] < 0:
            X[:, v] = rng.random(n_samples) < 0.5
        else:
            X[:, v] = X[:, parent[v]] ^ (rng.random(n_samples) < flip[v])
    return X


# ----------------------------------------------------------------------
# mutual_information


@pytest.mark.parametrize("pseudocount", [0.0, 0.5, 1.0])
def test_discrete_mi_matches_direct_counts_with_nan(pseudocount):
    rng = np.random.default_rng(0)
    n_states = [3, 2, 4, 3, 2]
    X = np.stack([rng.integers(0, c, 80) for c in n_states], axis=1).astype(float)
    X[:, 3] = (X[:, 0] + (rng.random(80) < 0.3)) % 3  # a dependent pair
    X[rng.random(X.shape) < 0.2] = np.nan
    mi = mutual_information(
        X, kind="discrete", n_states=n_states, pseudocount=pseudocount
    )
    expected = _direct_discrete_mi(X, n_states, pseudocount)
    np.testing.assert_allclose(mi, expected, atol=1e-12)
    assert mi[0, 3] > 0.1  # the dependent pair stands out
    assert np.all(np.diag(mi) == 0)


def test_discrete_mi_inferred_and_unused_states():
    rng = np.random.default_rng(1)
    X = rng.integers(0, 3, (60, 4)).astype(float)
    # Inferred n_states is max + 1 per feature.
    np.testing.assert_allclose(
        mutual_information(X), _direct_discrete_mi(X, [3, 3, 3, 3], 1.0), atol=1e-12
    )
    # An unused state still gets the pseudocount, which lowers the MI.
    mi5 = mutual_information(X, n_states=np.array([5, 3, 3, 3]))
    expected = _direct_discrete_mi(X, [5, 3, 3, 3], 1.0)
    np.testing.assert_allclose(mi5, expected, atol=1e-12)
    assert not np.allclose(mi5[0], mutual_information(X)[0])


def test_discrete_mi_blockwise_equals_single_block(monkeypatch):
    # Unequal state counts and tiny blocks exercise the segment-sum path
    # and the blocking of the (states x states) table.
    rng = np.random.default_rng(2)
    n_states = [2, 5, 3, 1, 4, 2, 3]
    X = np.stack([rng.integers(0, c, 120) for c in n_states], axis=1).astype(float)
    X[:, 4] = np.minimum(X[:, 1], 3)
    X[rng.random(X.shape) < 0.1] = np.nan
    expected = _direct_discrete_mi(X, n_states, 1.0)
    mi = mutual_information(X, n_states=n_states)
    np.testing.assert_allclose(mi, expected, atol=1e-12)
    monkeypatch.setattr(chow_liu_module, "_BLOCK_ELEMENTS", 20)
    blocked = mutual_information(X, n_states=n_states)
    np.testing.assert_allclose(blocked, expected, atol=1e-12)


def test_binary_mi_known_value():
    # x1 = x0 exactly, balanced: MI = log 2 with no smoothing.
    X = np.array([[0, 0], [1, 1]] * 10)
    mi = mutual_information(X, pseudocount=0.0)
    np.testing.assert_allclose(mi, [[0, np.log(2)], [np.log(2), 0]], atol=1e-14)
    # Independent and balanced: MI = 0 exactly (no negative rounding).
    Y = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 5)
    assert np.all(mutual_information(Y) == 0)


def test_gaussian_mi_matches_corrcoef_with_nan():
    rng = np.random.default_rng(3)
    cov = np.array([[1.0, 0.8, 0.1], [0.8, 1.0, -0.5], [0.1, -0.5, 1.0]])
    X = rng.multivariate_normal([5.0, -3.0, 100.0], cov, size=200)
    X = np.column_stack([X, rng.normal(size=200)])
    X[rng.random(X.shape) < 0.15] = np.nan
    mi = mutual_information(X, kind="gaussian")
    np.testing.assert_allclose(mi, _direct_gaussian_mi(X), rtol=1e-10, atol=1e-14)
    assert mi[0, 1] > 0.3
    # Real data: inferred as Gaussian.
    np.testing.assert_array_equal(mutual_information(X), mi)


def test_gaussian_constant_and_duplicate_columns():
    rng = np.random.default_rng(4)
    x = rng.normal(size=50)
    X = np.column_stack([x, np.full(50, 0.1), x, -x + 1e-3 * rng.normal(size=50)])
    mi = mutual_information(X, kind="gaussian")
    assert np.all(mi[1] == 0) and np.all(mi[:, 1] == 0)  # constant: MI 0
    assert np.isfinite(mi).all()
    np.testing.assert_allclose(mi[0, 2], -0.5 * np.log(1e-12), rtol=1e-6)  # clipped
    assert mi[0, 3] > 5


def test_mixed_mi_correlation_ratio():
    rng = np.random.default_rng(5)
    n = 300
    z = rng.integers(0, 3, n)
    b = rng.integers(0, 2, n)
    y = np.array([-1.0, 0.5, 2.0])[z] + rng.normal(size=n)
    w = 0.7 * b + rng.normal(size=n)
    X = np.column_stack([z, y, b, w]).astype(float)
    X[rng.random(X.shape) < 0.1] = np.nan
    kinds = ["discrete", "gaussian", "discrete", "gaussian"]
    mi = mutual_information(X, kind=kinds)
    np.testing.assert_allclose(mi, mi.T)
    for i, j in itertools.product([0, 2], [1, 3]):
        expected = _direct_eta_mi(X[:, i], X[:, j])
        np.testing.assert_allclose(mi[i, j], expected, rtol=1e-10)
    # Binary x: the point-biserial correlation in the Gaussian formula.
    ok = ~np.isnan(X[:, 2]) & ~np.isnan(X[:, 3])
    rho = np.corrcoef(X[ok, 2], X[ok, 3])[0, 1]
    np.testing.assert_allclose(mi[2, 3], -0.5 * np.log(1 - rho**2), rtol=1e-10)
    # The other blocks are the pure estimators.
    np.testing.assert_allclose(
        mi[np.ix_([1, 3], [1, 3])], _direct_gaussian_mi(X[:, [1, 3]]), rtol=1e-10
    )
    np.testing.assert_allclose(
        mi[np.ix_([0, 2], [0, 2])], _direct_discrete_mi(X[:, [0, 2]], [3, 2], 1.0)
    )
    # Inferred kinds: the integer columns are discrete, the rest Gaussian.
    np.testing.assert_array_equal(mutual_information(X), mi)


def test_mi_permutation_equivariant():
    rng = np.random.default_rng(6)
    X = rng.integers(0, 3, (100, 6)).astype(float)
    X[:, 5] = X[:, 2]
    X[rng.random(X.shape) < 0.1] = np.nan
    perm = rng.permutation(6)
    np.testing.assert_allclose(
        mutual_information(X[:, perm]), mutual_information(X)[np.ix_(perm, perm)]
    )


@pytest.mark.parametrize(
    "kwargs, X, match",
    [
        ({"kind": "discrete"}, [[0.5, 1.0], [1.0, 0.0]], "integers 0..n_states-1"),
        ({"kind": "discrete"}, [[-1.0, 1.0], [1.0, 0.0]], "integers 0..n_states-1"),
        ({"n_states": 2}, [[2, 1], [1, 0]], "n_states=2"),
        ({"n_states": [2, 2, 2]}, [[1, 1], [1, 0]], "3 entries"),
        ({"kind": "poisson"}, [[1, 1], [1, 0]], "kind='poisson'"),
        ({"kind": ["discrete"]}, [[1, 1], [1, 0]], "1 entries"),
        ({"pseudocount": -1.0}, [[1, 1], [1, 0]], "pseudocount"),
        ({}, [[1, np.inf], [1, 0]], "infinite"),
        ({}, [1, 0, 1], "2D"),
        ({}, [[0, 0], [40_000, 1]], "kind='gaussian'"),
    ],
)
def test_mi_errors_name_the_fix(kwargs, X, match):
    with pytest.raises(ValueError, match=match):
        mutual_information(np.asarray(X, dtype=float), **kwargs)


# ----------------------------------------------------------------------
# chow_liu_tree


@pytest.mark.parametrize("n_features", [2, 3, 4, 5, 6])
@pytest.mark.parametrize("kind", ["discrete", "gaussian"])
def test_tree_is_maximum_over_all_spanning_trees(n_features, kind):
    rng = np.random.default_rng(10 * n_features + (kind == "gaussian"))
    if kind == "discrete":
        X = rng.integers(0, 3, (150, n_features)).astype(float)
        # Noisy copies give a spread of MI values.
        for v in range(1, n_features):
            copy = rng.random(150) < rng.uniform(0.1, 0.8)
            X[copy, v] = X[copy, rng.integers(0, v)]
    else:
        mixing = rng.normal(size=(n_features, n_features))
        X = rng.normal(size=(150, n_features)) @ mixing
    mi = mutual_information(X, kind=kind)
    root = int(rng.integers(0, n_features))
    parent, got_root = chow_liu_tree(X, kind=kind, root=root)
    assert got_root == root
    assert parent.dtype == np.int64 and parent.shape == (n_features,)
    _assert_spanning_tree(parent, root)
    total = sum(mi[a, b] for a, b in map(tuple, _edges(parent)))
    best = max(sum(mi[a, b] for a, b in t) for t in _prufer_trees(n_features))
    assert total == pytest.approx(best, rel=1e-12, abs=1e-15)


def test_prufer_enumeration_is_complete():
    # Cayley: n^(n-2) distinct labelled trees.
    trees = {frozenset(map(frozenset, t)) for t in _prufer_trees(5)}
    assert len(trees) == 5**3


def test_tree_recovers_tree_bayesian_network():
    rng = np.random.default_rng(11)
    true_parent = np.array([3, 3, 0, -1, 1, 1, 0, 4])
    order = [3, 0, 1, 2, 4, 5, 6, 7]
    flip = rng.uniform(0.05, 0.15, 8)
    X = _sample_tree_bn(true_parent, order, 20_000, flip, rng)
    for root in (3, 0, 7):
        parent, _ = chow_liu_tree(X, root=root)
        assert _edges(parent) == _edges(true_parent)
        _assert_spanning_tree(parent, root)
    # Rooted at the true root, the parents are the true parents.
    np.testing.assert_array_equal(chow_liu_tree(X, root=3)[0], true_parent)
    # Missing entries, skipped pairwise, do not change the answer.
    Xn = X.astype(float)
    Xn[rng.random(Xn.shape) < 0.2] = np.nan
    assert _edges(chow_liu_tree(Xn, root=3)[0]) == _edges(true_parent)


def test_tree_recovers_gaussian_chain():
    rng = np.random.default_rng(12)
    n, D = 5000, 6
    perm = rng.permutation(D)  # chain in a shuffled order
    X = np.zeros((n, D))
    X[:, perm[0]] = rng.normal(size=n)
    for a, b in zip(perm, perm[1:]):
        X[:, b] = 0.9 * X[:, a] + 0.45 * rng.normal(size=n)
    parent, _ = chow_liu_tree(X, root=int(perm[0]))
    assert _edges(parent) == {frozenset(map(int, e)) for e in zip(perm, perm[1:])}


def test_tree_without_dependence_is_still_spanning():
    # All MI are zero: every pair must remain an edge candidate.
    for X in (np.zeros((10, 5)), np.ones((1, 4))):
        parent, root = chow_liu_tree(X, root=2)
        _assert_spanning_tree(parent, 2)
        assert root == 2
    parent, _ = chow_liu_tree(np.full((6, 4), np.nan), kind="gaussian")
    _assert_spanning_tree(parent, 0)
    np.testing.assert_array_equal(chow_liu_tree([[1.0], [0.0]])[0], [-1])


def test_tree_root_errors():
    X = np.zeros((4, 3))
    for root in (3, -1, 1.0, True):
        with pytest.raises(ValueError, match="root"):
            chow_liu_tree(X, root=root)


def test_vectorized_speed():
    rng = np.random.default_rng(13)
    X = (rng.random((2000, 300)) < 0.3).astype(float)
    start = time.perf_counter()
    mi = mutual_information(X)
    parent, _ = chow_liu_tree(X)
    elapsed = time.perf_counter() - start
    # About 0.1 s on one core; a per-pair loop would take minutes.
    assert elapsed < 5.0, f"MI + tree of 300 binary features took {elapsed:.2f} s"
    # Spot-check a few pairs of the large run against the direct counts.
    pairs = [0, 17, 123, 299]
    np.testing.assert_allclose(
        mi[np.ix_(pairs, pairs)],
        _direct_discrete_mi(X[:, pairs], [2] * 4, 1.0),
        atol=1e-12,
    )
    _assert_spanning_tree(parent, 0)


# ----------------------------------------------------------------------
# hclt_region_graph


def _scope_index(rg):
    return {scope: i for i, scope in enumerate(rg.regions)}


def _random_tree(n, rng):
    parent = np.full(n, -1)
    order = rng.permutation(n)
    for k in range(1, n):
        parent[order[k]] = order[rng.integers(0, k)]
    return parent, int(order[0])


def _subtree(parent, v):
    out = {v}
    changed = True
    while changed:
        new = {u for u in range(len(parent)) if parent[u] in out} - out
        changed = bool(new)
        out |= new
    return tuple(sorted(out))


@pytest.mark.parametrize("seed", range(5))
def test_hclt_structure_on_random_trees(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    parent, root = _random_tree(n, rng)
    rg = hclt_region_graph(parent, root)
    assert isinstance(rg, RegionGraph)
    rg.validate()
    assert rg.regions[rg.root] == tuple(range(n))
    # Region v is the leaf {v}; all leaf regions are singletons.
    assert rg.regions[:n] == [(v,) for v in range(n)]
    assert all(len(rg.regions[r]) == 1 for r in rg.leaves)
    index = _scope_index(rg)
    children_of = {
        rg.regions[p]: [rg.regions[c] for c in ch] for p, ch in rg.partitions
    }
    # One region (with one partition) per variable that has children.
    inner = [v for v in range(n) if (parent == v).any()]
    assert len(rg.partitions) == len(inner) == len(rg.regions) - n
    for v in inner:
        kids = sorted(np.flatnonzero(parent == v).tolist())
        assert children_of[_subtree(parent, v)] == [(v,)] + [
            _subtree(parent, c) for c in kids
        ]
    # Every tree edge is a parent-child relation of some partition.
    for v in range(n):
        if v != root:
            assert _subtree(parent, v) in children_of[_subtree(parent, int(parent[v]))]
            assert _subtree(parent, v) in index
    # Binarizing keeps a valid graph with the same leaves.
    binary = rg.binarize()
    assert all(len(ch) == 2 for _, ch in binary.partitions)
    assert sorted(binary.regions[r] for r in binary.leaves) == [(v,) for v in range(n)]


def test_hclt_chain():
    rg = hclt_region_graph([-1, 0, 1, 2], root=0)
    assert rg.regions == [(0,), (1,), (2,), (3,), (0, 1, 2, 3), (1, 2, 3), (2, 3)]
    assert rg.partitions == [(4, (0, 5)), (5, (1, 6)), (6, (2, 3))]
    assert rg.root == 4
    region_height, _ = rg.heights()
    assert region_height[rg.root] == 3
    # The same chain rooted in the middle: 2 is the root, 1 -> 0, 3.
    rg = hclt_region_graph([1, 2, -1, 2], root=2)
    assert rg.regions == [(0,), (1,), (2,), (3,), (0, 1, 2, 3), (0, 1)]
    assert rg.partitions == [(4, (2, 5, 3)), (5, (1, 0))]


def test_hclt_star():
    rg = hclt_region_graph([-1, 0, 0, 0, 0], root=0)
    assert rg.regions == [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)]
    assert rg.partitions == [(5, (0, 1, 2, 3, 4))]
    rg = hclt_region_graph([2, 2, -1], root=2)
    assert rg.partitions == [(3, (2, 0, 1))]


def test_hclt_single_variable_and_from_data():
    rg = hclt_region_graph([-1], root=0)
    assert rg.regions == [(0,)] and rg.partitions == []
    rng = np.random.default_rng(14)
    X = _sample_tree_bn(np.array([-1, 0, 0, 1]), [0, 1, 2, 3], 2000, [0.1] * 4, rng)
    rg = hclt_region_graph(*chow_liu_tree(X))
    assert rg.regions[rg.root] == (0, 1, 2, 3)
    assert rg.partitions == [(4, (0, 5, 2)), (5, (1, 3))]


@pytest.mark.parametrize(
    "parent, root, match",
    [
        ([0, 0, 1], 0, r"parent\[root\] must be -1"),
        ([-1, -1, 1], 0, r"parent\[1\]=-1"),
        ([-1, 2, 1], 0, "not reachable"),
        ([-1, 5, 1], 0, r"parent\[1\]=5"),
        ([-1, 1], 0, r"parent\[1\]=1"),
        ([-1, 0], 2, "root=2"),
        ([[-1, 0]], 0, "1D integer"),
        ([-1.0, 0.0], 0, "1D integer"),
    ],
)
def test_hclt_rejects_invalid_trees(parent, root, match):
    with pytest.raises(ValueError, match=match):
        hclt_region_graph(np.asarray(parent), root)


def test_coarsen_states_bins_many_state_columns_only():
    X = np.array([[0, 255, 3, 0.5], [17, 16, np.nan, -1.2], [255, 0, 15, 2.0]])
    out = coarsen_states(X, ["discrete", "discrete", "discrete", "gaussian"], max_states=16)
    # 256 states -> bins of width 16; a 16-state column (max 15) and Gaussian columns are kept
    np.testing.assert_array_equal(out[:, 0], [0, 1, 15])
    np.testing.assert_array_equal(out[:, 1], [15, 1, 0])
    np.testing.assert_array_equal(out[:, 2], X[:, 2])
    np.testing.assert_array_equal(out[:, 3], X[:, 3])
    assert X[0, 1] == 255  # the input is not changed
    with pytest.raises(ValueError, match="bin them"):  # what the estimator avoids by binning first
        mutual_information(np.tile(np.arange(256.0)[:, None], (1, 130)), kind="discrete")  # 130 x 255 columns


def test_tree_spans_every_feature_when_all_mutual_information_is_tiny():
    # independent features: every MI about 1e-30 (found by a fit of 4 independent columns)
    weights = np.array([[0.0, 1.2e-30, 1.6e-31, 4.3e-31], [1.2e-30, 0.0, 7.6e-32, 3.2e-30],
                        [1.6e-31, 7.6e-32, 0.0, 6.2e-30], [4.3e-31, 3.2e-30, 6.2e-30, 0.0]])
    parent = chow_liu_module._maximum_spanning_tree(weights, 0)
    assert (parent >= 0).sum() == 3
    # the maximum tree of these weights (Kruskal: 6.2, 3.2, then 1.2 joins 0)
    assert {frozenset((v, int(p))) for v, p in enumerate(parent) if p >= 0} == {
        frozenset((2, 3)), frozenset((1, 3)), frozenset((0, 1))}
    X = np.random.default_rng(0).normal(size=(40, 4))
    assert (chow_liu_tree(X, kind="gaussian")[0] >= 0).sum() == 3
