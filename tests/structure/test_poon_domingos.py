import itertools
import re

import numpy as np
import pytest

from skpc.structure import poon_domingos


def _rect(scope, shape):
    """(h0, h1, w0, w1) of a region; asserts it is a rectangle with all channels."""
    H, W, C = shape
    scope = np.asarray(scope)
    pixel, channel = np.divmod(scope, C)
    h, w = np.divmod(pixel, W)
    h0, h1, w0, w1 = h.min(), h.max() + 1, w.min(), w.max() + 1
    expected = np.arange(H * W * C).reshape(H, W, C)[h0:h1, w0:w1].ravel()
    assert np.array_equal(np.sort(scope), expected), "region is not a full rectangle"
    return int(h0), int(h1), int(w0), int(w1)


def _brute_force(H, W, delta):
    """All grid rectangles and all their one-cut splits, for a single delta.

    Independent of the builder's search: with one step size every rectangle
    whose edges lie on the cut grid (plus the image border) is produced, and
    each is split at every grid line strictly inside it.
    """
    hs = [0] + list(range(delta, H, delta)) + [H]
    ws = [0] + list(range(delta, W, delta)) + [W]
    rects = {
        (h0, h1, w0, w1)
        for h0, h1 in itertools.combinations(hs, 2)
        for w0, w1 in itertools.combinations(ws, 2)
    }
    splits = set()
    for h0, h1, w0, w1 in rects:
        for c in hs:
            if h0 < c < h1:
                splits.add(
                    ((h0, h1, w0, w1), frozenset({(h0, c, w0, w1), (c, h1, w0, w1)}))
                )
        for c in ws:
            if w0 < c < w1:
                splits.add(
                    ((h0, h1, w0, w1), frozenset({(h0, h1, w0, c), (h0, h1, c, w1)}))
                )
    return rects, splits


def _as_rects(rg, shape):
    rects = [_rect(s, shape) for s in rg.regions]
    splits = {(rects[p], frozenset(rects[c] for c in ch)) for p, ch in rg.partitions}
    return rects, splits


def test_mnist_delta_7_leaves_are_the_16_cells():
    rg = poon_domingos((28, 28), delta=7)
    pixels = np.arange(28 * 28).reshape(28, 28)
    cells = {
        tuple(pixels[h : h + 7, w : w + 7].ravel())
        for h in range(0, 28, 7)
        for w in range(0, 28, 7)
    }
    assert {rg.regions[i] for i in rg.leaves} == cells
    assert len(rg.leaves) == 16
    # Rectangles with edges on {0, 7, 14, 21, 28} along both axes.
    assert len(rg.regions) == 10 * 10
    assert rg.root == 0
    assert rg.regions[0] == tuple(range(784))
    for scope in rg.regions:
        _rect(scope, (28, 28, 1))
    # Longest chain of splits: 3 cuts per axis, 6 in all.
    assert rg.heights()[0][rg.root] == 6


@pytest.mark.parametrize(
    "shape, delta", [((4, 6), 2), ((5, 7), 2), ((3, 4), 1), ((7, 5), 3)]
)
def test_regions_and_partitions_match_brute_force(shape, delta):
    rg = poon_domingos(shape, delta)
    rects, splits = _as_rects(rg, shape + (1,))
    expected_rects, expected_splits = _brute_force(*shape, delta)
    assert len(rects) == len(expected_rects)
    assert set(rects) == expected_rects
    assert len(rg.partitions) == len(expected_splits)
    assert splits == expected_splits


def test_small_count_by_hand():
    # (4, 6) with delta 2: row edges {0, 2, 4}, column edges {0, 2, 4, 6}:
    # C(3, 2) * C(4, 2) = 18 rectangles.
    rg = poon_domingos((4, 6), 2)
    assert len(rg.regions) == 18
    assert all(len(ch) == 2 for _, ch in rg.partitions)


def test_non_integer_delta_uses_ceil_cut_points():
    # delta 2.5 on a length-8 axis: cuts at ceil(2.5)=3, 5, ceil(7.5)=8 -> 3 and 5 only
    # (floor(7 / 2.5) = 2 cuts).
    rg = poon_domingos((1, 8), 2.5)
    leaves = sorted(_rect(rg.regions[i], (1, 8, 1))[2:] for i in rg.leaves)
    assert leaves == [(0, 3), (3, 5), (5, 8)]


def test_vertical_only_cuts_columns():
    shape = (6, 8)
    rg = poon_domingos(shape, 2, vertical_only=True)
    rects, _ = _as_rects(rg, shape + (1,))
    for parent, (left, right) in rg.partitions:
        ph0, ph1, pw0, pw1 = rects[parent]
        assert rects[left][:2] == rects[right][:2] == (ph0, ph1) == (0, 6)
        assert rects[left][2] == pw0 and rects[left][3] == rects[right][2]
        assert rects[right][3] == pw1
    assert sorted(rects[i] for i in rg.leaves) == [
        (0, 6, w, w + 2) for w in (0, 2, 4, 6)
    ]
    # Intervals with ends on {0, 2, 4, 6, 8}.
    assert len(rg.regions) == 10


def test_channels_stay_together():
    rg = poon_domingos((4, 4, 3), 2)
    flat = poon_domingos((4, 4), 2)
    assert len(rg.regions) == len(flat.regions)
    assert len(rg.partitions) == len(flat.partitions)
    for scope, flat_scope in zip(rg.regions, flat.regions):
        pixels = np.asarray(flat_scope)
        expected = (3 * pixels[:, None] + np.arange(3)).ravel()
        assert scope == tuple(expected.tolist())
        _rect(scope, (4, 4, 3))
    leaves = [rg.regions[i] for i in rg.leaves]
    assert len(leaves) == 4 and all(len(s) == 2 * 2 * 3 for s in leaves)
    # The leaves partition the variables, and the 3 channels of every pixel
    # fall in the same leaf.
    leaf_of = {v: i for i, s in enumerate(leaves) for v in s}
    assert sorted(leaf_of) == list(range(48))
    for pixel in range(16):
        assert leaf_of[3 * pixel] == leaf_of[3 * pixel + 1] == leaf_of[3 * pixel + 2]


def _split_depth(rg):
    """Breadth-first distance from the root of each region."""
    parts = rg.region_partitions()
    dist = np.full(len(rg.regions), -1)
    dist[rg.root] = 0
    frontier = [rg.root]
    while frontier:
        nxt = []
        for r in frontier:
            for k in parts[r]:
                for c in rg.partitions[k][1]:
                    if dist[c] < 0:
                        dist[c] = dist[r] + 1
                        nxt.append(c)
        frontier = nxt
    return dist


@pytest.mark.parametrize("max_split_depth", [0, 1, 2, 3])
def test_max_split_depth_stops_splitting(max_split_depth):
    shape = (8, 8)
    full = poon_domingos(shape, 2)
    rg = poon_domingos(shape, 2, max_split_depth=max_split_depth)
    parts = rg.region_partitions()
    dist = _split_depth(rg)
    for r in range(len(rg.regions)):
        h0, h1, w0, w1 = _rect(rg.regions[r], shape + (1,))
        can_split = (h1 - h0) > 2 or (w1 - w0) > 2
        if dist[r] >= max_split_depth:
            assert not parts[r]
        else:
            assert bool(parts[r]) == can_split
    assert len(rg.regions) < len(full.regions)
    assert set(rg.regions) <= set(full.regions)
    height = rg.heights()[0][rg.root]
    if max_split_depth <= 1:
        assert height == max_split_depth
    # Deeper regions may be reached through shared children, so the height
    # can exceed max_split_depth, but never the unlimited graph's.
    assert height <= full.heights()[0][full.root]


def test_list_of_deltas_is_applied_coarse_to_fine():
    shape = (8, 8)
    rg = poon_domingos(shape, [4, 2])
    rects, splits = _as_rects(rg, shape + (1,))
    # Root: only the delta-4 cut at 4 on each axis.
    root_children = [
        frozenset(rects[c] for c in rg.partitions[k][1])
        for k in rg.region_partitions()[rg.root]
    ]
    assert root_children == [
        frozenset({(0, 4, 0, 8), (4, 8, 0, 8)}),
        frozenset({(0, 8, 0, 4), (0, 8, 4, 8)}),
    ]
    # 9 rectangles on the coarse grid {0, 4, 8}, plus in each 4x4 quadrant
    # the 8 other rectangles of the fine grid: 9 + 4 * 8.
    assert len(rg.regions) == 41
    assert sorted(rects[i] for i in rg.leaves) == sorted(
        (h, h + 2, w, w + 2) for h in range(0, 8, 2) for w in range(0, 8, 2)
    )
    # A fine cut never crosses a region that a coarse cut still splits.
    assert (0, 2, 0, 8) not in rects
    # The fine delta alone gives a larger graph.
    assert len(poon_domingos(shape, 2).regions) == 10 * 10


def test_single_pixel_is_a_single_leaf():
    rg = poon_domingos((1, 1, 4), 3)
    assert rg.regions == [(0, 1, 2, 3)]
    assert rg.partitions == []


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(image_shape=(28,), delta=7), "image_shape must be (height, width)"),
        (dict(image_shape=(0, 5), delta=1), "image_shape must be"),
        (dict(image_shape=(2, 2, 2, 2), delta=1), "image_shape must be"),
        (dict(image_shape=(2.5, 3), delta=1), "image_shape must be"),
        (dict(image_shape=28, delta=7), "image_shape must be"),
        (dict(image_shape=(4, 4), delta=0), "delta=0 is not a valid step size"),
        (
            dict(image_shape=(4, 4), delta=[2, 0.5]),
            "delta=0.5 is not a valid step size",
        ),
        (dict(image_shape=(4, 4), delta=[]), "delta is an empty list"),
        (
            dict(image_shape=(28, 28), delta=30),
            "delta=30 makes no cut in a 28x28 image: use a delta smaller than 28",
        ),
        (dict(image_shape=(28, 28), delta=[30, 7]), "delta=30 makes no cut"),
        (
            dict(image_shape=(28, 5), delta=6, vertical_only=True),
            "delta=6 makes no cut in a 28x5 image along the width: use a delta "
            "smaller than 5",
        ),
        (
            dict(image_shape=(5, 1), delta=1, vertical_only=True),
            "cannot split an image of width 1 (image_shape=(5, 1)): "
            "set vertical_only=False",
        ),
        (
            dict(image_shape=(4, 4), delta=2, max_split_depth=-1),
            "max_split_depth must be None or >= 0",
        ),
    ],
)
def test_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        poon_domingos(**kwargs)
