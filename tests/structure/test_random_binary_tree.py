import re

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from skpc.structure import RegionGraph, random_binary_trees


def _bfs_levels(rg):
    """Level (number of splits from the root) of each region of a single tree."""
    parts = rg.region_partitions()
    level = {rg.root: 0}
    frontier = [rg.root]
    while frontier:
        nxt = []
        for r in frontier:
            for k in parts[r]:
                for c in rg.partitions[k][1]:
                    assert c not in level, "a single tree must not share regions"
                    level[c] = level[r] + 1
                    nxt.append(c)
        frontier = nxt
    return level


def _tree_leaves(rg, partition):
    """Leaves under one root partition (each region below has one partition)."""
    parts = rg.region_partitions()
    leaves, stack = [], list(rg.partitions[partition][1])
    while stack:
        r = stack.pop()
        if parts[r]:
            assert len(parts[r]) == 1
            stack.extend(rg.partitions[parts[r][0]][1])
        else:
            leaves.append(rg.regions[r])
    return leaves


@pytest.mark.parametrize(
    "n_variables, depth", [(16, 4), (20, 2), (37, 3), (7, 2), (5, 0)]
)
def test_single_tree_leaves_partition_the_variables(n_variables, depth):
    rg = random_binary_trees(n_variables, depth, n_repetitions=1, random_state=3)
    leaves = [rg.regions[i] for i in rg.leaves]
    assert len(leaves) == 2**depth
    flat = np.concatenate(leaves)
    assert np.array_equal(
        np.sort(flat), np.arange(n_variables)
    )  # disjoint and covering
    sizes = [len(s) for s in leaves]
    assert set(sizes) <= {n_variables // 2**depth, -(-n_variables // 2**depth)}
    assert max(sizes) - min(sizes) <= 1
    assert len(rg.regions) == 2 ** (depth + 1) - 1
    assert len(rg.partitions) == 2**depth - 1

    # Within every level the region sizes differ by at most one, and every
    # split is into floor / ceil halves.
    level = _bfs_levels(rg)
    for d in range(depth + 1):
        sizes = [len(rg.regions[r]) for r, lv in level.items() if lv == d]
        assert len(sizes) == 2**d
        assert max(sizes) - min(sizes) <= 1
    for parent, (left, right) in rg.partitions:
        s = len(rg.regions[parent])
        assert (len(rg.regions[left]), len(rg.regions[right])) == (s // 2, s - s // 2)

    region_height, _ = rg.heights()
    assert region_height[rg.root] == depth
    assert all(region_height[r] == depth - lv for r, lv in level.items())


def test_repetitions_share_only_the_root():
    n, depth, reps = 64, 3, 4
    rg = random_binary_trees(n, depth, reps, random_state=0)
    assert rg.root == 0
    parts = rg.region_partitions()
    assert len(parts[rg.root]) == reps
    # With 64 variables, distinct random halves essentially never coincide,
    # so nothing below the root is merged: 1 + reps * (2 + 4 + 8) regions.
    assert len(rg.regions) == 1 + reps * (2 + 4 + 8)
    assert len(rg.leaves) == reps * 2**depth
    for k in parts[rg.root]:
        leaves = _tree_leaves(rg, k)
        assert len(leaves) == 2**depth
        assert all(len(s) == n // 2**depth for s in leaves)
        assert np.array_equal(np.sort(np.concatenate(leaves)), np.arange(n))
    assert rg.heights()[0][rg.root] == depth


def test_seeding_is_reproducible():
    a = random_binary_trees(30, 3, 5, random_state=7)
    assert a == random_binary_trees(30, 3, 5, random_state=7)
    assert a == random_binary_trees(30, 3, 5, random_state=np.random.RandomState(7))
    assert a != random_binary_trees(30, 3, 5, random_state=8)
    g1 = random_binary_trees(30, 3, 5, random_state=np.random.default_rng(7))
    g2 = random_binary_trees(30, 3, 5, random_state=np.random.default_rng(7))
    assert g1 == g2
    # The global RandomState is used for None, like scikit-learn.
    np.random.seed(7)
    assert random_binary_trees(30, 3, 5) == a


def test_more_repetitions_extend_fewer():
    one = random_binary_trees(40, 3, 1, random_state=11)
    three = random_binary_trees(40, 3, 3, random_state=11)
    assert three.regions[: len(one.regions)] == one.regions
    assert three.partitions[: len(one.partitions)] == one.partitions


def test_pairs_merged_across_levels_lift_the_root():
    # 5 variables at depth 2: one tree splits a pair at level 1 that another
    # tree keeps as a leaf at level 2; the merged region is then inner.
    rg = random_binary_trees(5, 2, 10, random_state=0)
    region_height, _ = rg.heights()
    assert region_height[rg.root] == 3
    parts = rg.region_partitions()
    lifted = [r for r, scope in enumerate(rg.regions) if len(scope) == 2 and parts[r]]
    # Such a pair is a child of a 3-variable region (level 1 of a tree) and
    # is itself split into two single variables.
    assert any(
        len(rg.regions[parent]) == 3 and set(children) & set(lifted)
        for parent, children in rg.partitions
    )


def test_depth_zero_is_a_single_leaf():
    rg = random_binary_trees(6, 0, 3, random_state=0)
    assert rg == RegionGraph(6, [range(6)], [])
    assert rg.layers() == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (
            dict(n_variables=20, depth=5, n_repetitions=2),
            "depth=5 needs at least 32 features (2**depth); got 20: lower depth "
            "to at most 4",
        ),
        (
            dict(n_variables=1, depth=1, n_repetitions=1),
            "depth=1 needs at least 2 features (2**depth); got 1: lower depth to "
            "at most 0",
        ),
        (
            dict(n_variables=0, depth=0, n_repetitions=1),
            "n_variables must be at least 1; got 0",
        ),
        (
            dict(n_variables=8, depth=-1, n_repetitions=1),
            "depth must be at least 0; got -1",
        ),
        (
            dict(n_variables=8, depth=2, n_repetitions=0),
            "n_repetitions must be at least 1; got 0",
        ),
        (
            dict(n_variables=8, depth=2.0, n_repetitions=1),
            "depth must be an integer; got 2.0",
        ),
        (
            dict(n_variables=8, depth=2, n_repetitions=1, random_state="seed"),
            "random_state='seed' cannot be used to seed",
        ),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        random_binary_trees(**kwargs)


@settings(max_examples=60, deadline=None)
@given(
    n_variables=st.integers(1, 40),
    depth=st.integers(0, 5),
    n_repetitions=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_random_graphs_are_valid_binary_and_balanced(
    n_variables, depth, n_repetitions, seed
):
    assume(2**depth <= n_variables)
    rg = random_binary_trees(n_variables, depth, n_repetitions, random_state=seed)
    assert rg.validate() is rg
    assert rg.regions[rg.root] == tuple(range(n_variables))
    n_root_partitions = len(rg.region_partitions()[rg.root])
    if depth == 0:
        assert n_root_partitions == 0
    else:
        assert 1 <= n_root_partitions <= n_repetitions
    for parent, children in rg.partitions:
        assert len(children) == 2
        left, right = (set(rg.regions[c]) for c in children)
        assert not left & right
        assert left | right == set(rg.regions[parent])
        assert abs(len(left) - len(right)) <= 1
    # Leaves hold floor(n / 2**depth) or ceil(...) variables, or 2 variables
    # when a pair merged across levels is a leaf of one tree.
    region_height, _ = rg.heights()
    root_height = region_height[rg.root]
    if root_height != depth:
        # Only a pair that is split in one tree and a leaf in another lifts
        # the root by one (see the Notes of random_binary_trees).
        assert root_height == depth + 1
        assert 2**depth < n_variables < 2 ** (depth + 1)
    lo, hi = n_variables // 2**depth, -(-n_variables // 2**depth)
    for leaf in rg.leaves:
        assert lo <= len(rg.regions[leaf]) <= hi
