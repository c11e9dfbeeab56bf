"""Region graphs (numpy only): the structures that circuits are built on."""

from .compose import compose_region_graphs
from .chow_liu import chow_liu_tree, coarsen_states, hclt_region_graph, mutual_information
from .merge import merge_region_graphs
from .poon_domingos import poon_domingos
from .random_binary_tree import random_binary_trees
from .region_graph import RegionGraph

__all__ = [
    "RegionGraph",
    "chow_liu_tree",
    "coarsen_states",
    "compose_region_graphs",
    "hclt_region_graph",
    "merge_region_graphs",
    "mutual_information",
    "poon_domingos",
    "random_binary_trees",
]
