"""Composition of region graphs: a latent graph over groups of variables,
with a sub-graph over each group in place of the group's leaf region.

This is the structure of latent variable distillation (Liu et al., ICLR
2023; DESIGN.md, "LVD as one circuit"): the latent graph (e.g. a hidden
Chow-Liu tree over the group latents Z_1..Z_m) treats group i as one
variable; its leaf region ``{i}`` becomes the root region of group i's
sub-graph, whose K densities play p(X_i | Z_i = c). The result is one
region graph over all variables, compiled into one circuit.

numpy only.
"""

import numpy as np

from .region_graph import RegionGraph

__all__ = ["compose_region_graphs"]


def compose_region_graphs(latent_graph, sub_graphs, groups):
    """One region graph from a latent graph over groups and a graph per group.

    Parameters
    ----------
    latent_graph : RegionGraph
        Over ``m`` variables, one per group; region ``(i,)`` must be a leaf
        region for every group ``i`` (as in ``hclt_region_graph``).
    sub_graphs : sequence of RegionGraph, length m
        ``sub_graphs[i]`` is over ``len(groups[i])`` variables; its variable
        ``j`` is feature ``groups[i][j]``.
    groups : sequence of sequences of int, length m
        Disjoint feature indices covering ``0..n_features-1``.

    Returns
    -------
    graph : RegionGraph
        Validated, over ``n_features`` variables. Regions of the latent graph
        keep their indices (a leaf ``(i,)`` now has the scope of group i);
        the other regions of each sub-graph follow, group by group.
    group_regions : list of int, length m
        The region of each group's sub-graph root in ``graph``: the region
        whose K components are the group latent's states.

    Examples
    --------
    >>> from skpc.structure import RegionGraph
    >>> latent = RegionGraph(2, [(0, 1), (0,), (1,)], [(0, (1, 2))])
    >>> sub = RegionGraph(2, [(0, 1), (0,), (1,)], [(0, (1, 2))])
    >>> graph, roots = compose_region_graphs(latent, [sub, sub], [[0, 1], [2, 3]])
    >>> graph.regions, roots
    ([(0, 1, 2, 3), (0, 1), (2, 3), (0,), (1,), (2,), (3,)], [1, 2])
    """
    latent_graph.validate()
    m = latent_graph.n_variables
    groups = [np.asarray(g, dtype=np.int64).ravel() for g in groups]
    if len(groups) != m or len(sub_graphs) != m:
        raise ValueError(
            f"the latent graph has {m} variables, but {len(groups)} groups and {len(sub_graphs)} sub-graphs "
            "were given; give one group and one sub-graph per latent variable."
        )
    n_features = int(sum(g.size for g in groups))
    covered = np.concatenate(groups) if groups else np.array([], dtype=np.int64)
    if np.unique(covered).size != n_features or covered.min() < 0 or covered.max() >= n_features:
        raise ValueError(
            f"the groups must partition the features 0..{n_features - 1}: every feature in exactly one group."
        )
    leaf_region = {}
    index = {scope: r for r, scope in enumerate(latent_graph.regions)}
    has_partition = {p for p, _ in latent_graph.partitions}
    for i in range(m):
        r = index.get((i,))
        if r is None or r in has_partition:
            raise ValueError(f"the latent graph needs a leaf region (i,) for every group; group {i} has none.")
        leaf_region[i] = r

    # Latent regions: the union of their groups' features.
    regions = [sorted(int(v) for i in scope for v in groups[i]) for scope in latent_graph.regions]
    partitions = list(latent_graph.partitions)
    group_regions = []
    for i, (sub, group) in enumerate(zip(sub_graphs, groups)):
        sub.validate()
        if sub.n_variables != group.size:
            raise ValueError(
                f"sub-graph {i} has {sub.n_variables} variables but group {i} has {group.size} features."
            )
        # the sub-graph's root takes the latent leaf's index; its other regions are appended
        new_index = {}
        for r, scope in enumerate(sub.regions):
            if r == sub.root:
                new_index[r] = leaf_region[i]
            else:
                new_index[r] = len(regions)
                regions.append(sorted(int(group[v]) for v in scope))
        partitions.extend((new_index[p], tuple(new_index[c] for c in children)) for p, children in sub.partitions)
        group_regions.append(leaf_region[i])
    return RegionGraph(n_features, regions, partitions).validate(), group_regions
