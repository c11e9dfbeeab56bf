import json
import re

import numpy as np
import pytest

from skpc.structure import RegionGraph, random_binary_trees


def _graph(n_variables, regions, partitions):
    return RegionGraph(n_variables, regions, partitions)


# A valid base graph on 3 variables: (0, 1, 2) -> (0, 1) x (2,); (0, 1) -> (0,) x (1,).
BASE_REGIONS = [(0, 1, 2), (0, 1), (2,), (0,), (1,)]
BASE_PARTITIONS = [(0, (1, 2)), (1, (3, 4))]


def test_base_graph_is_valid():
    rg = _graph(3, BASE_REGIONS, BASE_PARTITIONS)
    assert rg.validate() is rg
    assert rg.root == 0
    assert rg.leaves == [2, 3, 4]
    assert rg.region_partitions() == [[0], [1], [], [], []]


def test_constructor_sorts_scopes_and_normalizes_types():
    rg = _graph(
        np.int64(3),
        [[2, 0, 1], np.array([1, 0]), (2,), [0], [1]],
        [[0, [1, 2]], (np.int64(1), np.array([3, 4]))],
    )
    assert rg.regions == BASE_REGIONS
    assert rg.partitions == BASE_PARTITIONS
    assert all(type(v) is int for s in rg.regions for v in s)
    assert rg == _graph(3, BASE_REGIONS, BASE_PARTITIONS).validate()


def test_single_root_leaf_is_valid():
    rg = _graph(3, [(2, 0, 1)], []).validate()
    assert rg.regions == [(0, 1, 2)]
    assert rg.root == 0
    assert rg.leaves == [0]
    assert rg.layers() == []
    region_height, partition_height = rg.heights()
    assert region_height.tolist() == [0]
    assert partition_height.shape == (0,)


@pytest.mark.parametrize(
    "n_variables, regions, partitions, message",
    [
        (0, [], [], "n_variables must be at least 1; got 0"),
        (3, BASE_REGIONS + [()], BASE_PARTITIONS, "region 5 has an empty scope"),
        (
            3,
            BASE_REGIONS + [(0, 5)],
            BASE_PARTITIONS,
            "region (0, 5): variable 5 is out of range for n_variables=3",
        ),
        (
            3,
            BASE_REGIONS + [(-1, 0)],
            BASE_PARTITIONS,
            "region (-1, 0): variable -1 is out of range",
        ),
        (
            3,
            BASE_REGIONS + [(1, 2, 1)],
            BASE_PARTITIONS,
            "region (1, 1, 2): variable 1 appears more than once",
        ),
        (
            3,
            BASE_REGIONS + [(1, 0)],
            BASE_PARTITIONS,
            "region (0, 1): appears twice (regions 1 and 5)",
        ),
        (
            3,
            BASE_REGIONS,
            BASE_PARTITIONS + [(9, (3, 4))],
            "partition 2: parent index 9 is out of range for 5 regions",
        ),
        (
            3,
            BASE_REGIONS,
            BASE_PARTITIONS + [(0, (1, 9))],
            "region (0, 1, 2): partition 2's child index 9 is out of range",
        ),
        (
            3,
            BASE_REGIONS,
            BASE_PARTITIONS + [(1, (1,))],
            "region (0, 1): partition 2 has 1 child(ren); a partition needs at least 2",
        ),
        (
            3,
            [(0, 1, 2), (0, 1), (1, 2), (0,), (1,), (2,)],
            [(0, (1, 2)), (1, (3, 4)), (2, (4, 5))],
            "region (0, 1, 2): partition 0's children (0, 1) and (1, 2) overlap: "
            "not decomposable",
        ),
        (
            3,
            BASE_REGIONS,
            BASE_PARTITIONS + [(0, (3, 4))],
            "region (0, 1, 2): partition 2's children cover (0, 1), not the "
            "region's scope (missing (2,), outside ()): not smooth",
        ),
        (
            3,
            BASE_REGIONS,
            BASE_PARTITIONS + [(1, (3, 2))],
            "region (0, 1): partition 2's children cover (0, 2), not the "
            "region's scope (missing (1,), outside (2,)): not smooth",
        ),
        (
            2,
            [(0, 1), (0,), (1,)],
            [(0, (1, 2)), (1, (0, 2))],
            "lies on a cycle of partitions",
        ),
        (2, [(0,), (1,)], [], "no region covers all 2 variables (0..1)"),
        (
            3,
            BASE_REGIONS + [(0, 2)],
            BASE_PARTITIONS,
            "region (0, 2): not reachable from the root (0, 1, 2)",
        ),
    ],
)
def test_validate_reports_each_defect(n_variables, regions, partitions, message):
    rg = _graph(n_variables, regions, partitions)
    with pytest.raises(ValueError, match=re.escape(message)):
        rg.validate()


def test_cycle_message_names_a_region_on_the_cycle():
    rg = _graph(2, [(0, 1), (0,), (1,)], [(0, (1, 2)), (1, (0, 2))])
    with pytest.raises(ValueError, match=r"region \((0, 1|0,)\)\: lies on a cycle"):
        rg.validate()


def test_root_raises_without_full_region():
    with pytest.raises(ValueError, match="add a root region"):
        _graph(2, [(0,), (1,)], []).root


# A graph on 4 variables where regions (0, 1, 2, 3) and (1, 2, 3) have two
# partitions each, so that heights differ between partitions of one region.
HAND_REGIONS = [
    (0, 1, 2, 3),  # 0
    (0, 1),  # 1
    (2, 3),  # 2
    (0,),  # 3
    (1,),  # 4
    (2,),  # 5
    (3,),  # 6
    (1, 2, 3),  # 7
    (1, 2),  # 8
]
HAND_PARTITIONS = [
    (0, (1, 2)),  # 0: 1 + max(h(0,1)=1, h(2,3)=1) = 2
    (0, (3, 7)),  # 1: 1 + max(0, h(1,2,3)=2) = 3
    (1, (3, 4)),  # 2: 1
    (2, (5, 6)),  # 3: 1
    (7, (4, 2)),  # 4: 1 + max(0, 1) = 2
    (7, (8, 6)),  # 5: 1 + max(h(1,2)=1, 0) = 2
    (8, (4, 5)),  # 6: 1
]


def test_heights_match_hand_computation():
    rg = _graph(4, HAND_REGIONS, HAND_PARTITIONS).validate()
    region_height, partition_height = rg.heights()
    assert region_height.dtype == np.int64 and partition_height.dtype == np.int64
    assert region_height.tolist() == [3, 1, 1, 0, 0, 0, 0, 2, 1]
    assert partition_height.tolist() == [2, 3, 1, 1, 2, 2, 1]
    layers = rg.layers()
    assert [layer.tolist() for layer in layers] == [[2, 3, 6], [0, 4, 5], [1]]
    assert all(layer.dtype == np.int64 for layer in layers)
    assert rg.leaves == [3, 4, 5, 6]
    assert rg.region_partitions() == [[0, 1], [2], [3], [], [], [], [], [4, 5], [6]]


@pytest.mark.parametrize(
    "rg",
    [
        _graph(4, HAND_REGIONS, HAND_PARTITIONS),
        random_binary_trees(13, depth=3, n_repetitions=5, random_state=1),
    ],
    ids=["hand", "random"],
)
def test_layers_respect_dependencies(rg):
    region_height, partition_height = rg.heights()
    for k, (parent, children) in enumerate(rg.partitions):
        assert all(region_height[c] < partition_height[k] for c in children)
        assert partition_height[k] == 1 + max(region_height[c] for c in children)
        assert region_height[parent] >= partition_height[k]
    layers = rg.layers()
    # Every partition appears exactly once, in the layer of its height.
    flat = np.concatenate(layers)
    assert sorted(flat.tolist()) == list(range(len(rg.partitions)))
    for h, layer in enumerate(layers, start=1):
        assert np.all(partition_height[layer] == h)
        assert np.all(np.diff(layer) > 0)
    assert len(layers) == region_height[rg.root] == region_height.max()


def test_binarize_splits_wide_partitions():
    scopes = [
        tuple(range(8)),  # 0 root
        (0, 1),  # 1 A
        (2, 3),  # 2 B (leaf)
        (4, 5, 6, 7),  # 3 C
        (0, 1, 2, 3),  # 4 D = A u B
        (0,),  # 5
        (1,),  # 6
        (4,),  # 7
        (5,),  # 8
        (6,),  # 9
        (7,),  # 10
    ]
    partitions = [
        (0, (3, 1, 2)),  # 3-way: becomes (C, D) with D reused
        (0, (3, 4)),  # the same split as the binarized 3-way: kept once
        (4, (1, 2)),
        (1, (5, 6)),
        (3, (7, 8, 9, 10)),  # 4-way: becomes a chain through (5, 6, 7), (6, 7)
        (0, (1, 2, 3)),  # 3-way: (A, B u C) with B u C created
    ]
    rg = _graph(8, scopes, partitions).validate()
    out = rg.binarize()

    assert out.validate() is out
    assert all(len(children) == 2 for _, children in out.partitions)
    # Original regions keep their indices; new ones are appended.
    assert out.regions[: len(scopes)] == scopes
    assert out.regions[len(scopes) :] == [(5, 6, 7), (6, 7), (2, 3, 4, 5, 6, 7)]
    assert out.regions[out.root] == tuple(range(8))
    assert out.partitions == [
        (0, (3, 4)),
        (4, (1, 2)),
        (1, (5, 6)),
        (3, (7, 11)),
        (11, (8, 12)),
        (12, (9, 10)),
        (0, (1, 13)),
        (13, (2, 3)),
    ]
    # The input is left untouched.
    assert rg.partitions == partitions


def test_binarize_of_binary_graph_is_an_equal_copy():
    rg = random_binary_trees(20, depth=3, n_repetitions=4, random_state=0)
    out = rg.binarize()
    assert out == rg and out is not rg
    assert out.regions is not rg.regions


def test_json_round_trip(tmp_path):
    rg = _graph(4, HAND_REGIONS, HAND_PARTITIONS).validate()
    text = rg.to_json()
    data = json.loads(text)
    assert data["format"] == "skpc.RegionGraph" and data["version"] == 1
    assert data["n_variables"] == 4
    assert data["regions"][7] == [1, 2, 3]
    assert data["partitions"][1] == [0, [3, 7]]
    assert RegionGraph.from_json(text) == rg

    path = tmp_path / "graph.json"
    rg.save(path)
    loaded = RegionGraph.load(str(path))
    assert loaded == rg
    assert loaded.layers()[2].tolist() == [1]


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(format="einet"), "expected a JSON object with format"),
        (lambda d: d.update(version=2), "unsupported skpc.RegionGraph version 2"),
        (lambda d: d.pop("regions"), "missing the keys ['regions']"),
        (lambda d: d.update(regions=[["a"]]), "malformed skpc.RegionGraph JSON"),
        # A well-formed file describing an invalid graph is rejected too.
        (lambda d: d["partitions"].append([0, [3, 4]]), "not smooth"),
    ],
)
def test_from_json_rejects_bad_input(mutate, message):
    data = json.loads(_graph(3, BASE_REGIONS, BASE_PARTITIONS).to_json())
    mutate(data)
    with pytest.raises(ValueError, match=re.escape(message)):
        RegionGraph.from_json(json.dumps(data))


def test_from_json_rejects_non_json_and_non_objects():
    with pytest.raises(ValueError, match="not valid JSON"):
        RegionGraph.from_json("{regions")
    with pytest.raises(ValueError, match="expected a JSON object"):
        RegionGraph.from_json("[1, 2]")


def test_equality_and_repr():
    rg = random_binary_trees(16, depth=4, n_repetitions=1, random_state=0)
    assert (
        repr(rg)
        == "RegionGraph(n_variables=16, n_regions=31, n_partitions=15, depth=4)"
    )
    base = _graph(3, BASE_REGIONS, BASE_PARTITIONS)
    assert base == _graph(3, BASE_REGIONS, BASE_PARTITIONS)
    assert base != _graph(4, BASE_REGIONS, BASE_PARTITIONS)
    assert base != _graph(3, BASE_REGIONS, BASE_PARTITIONS[::-1])
    assert base != "not a graph"
    # repr works (without depth) on a graph that does not validate.
    assert repr(_graph(2, [(0,), (1,)], [])) == (
        "RegionGraph(n_variables=2, n_regions=2, n_partitions=0)"
    )
