"""Mixtures of region graphs over the same variables: one graph whose regions
are the union of theirs (one region per scope) and whose partitions are the
union of theirs, so that the root, and every region the graphs share, mixes
the graphs' splits of it. Used for mixtures of hidden Chow-Liu trees
(``EinsumNetworkDensity(structure="hclt", n_hclt=n)``).

numpy only.
"""

from .region_graph import RegionGraph

__all__ = ["merge_region_graphs"]


def merge_region_graphs(graphs):
    """One region graph that mixes several graphs over the same variables.

    Regions with the same scope become one region, which gets the partitions
    of all of them; a partition that two graphs share (same parent scope,
    same set of child scopes) is kept once. Compiled into a circuit, the
    root's sum then mixes one product per distinct root split (with one
    HCLT per graph: a mixture of HCLTs whose sub-circuits over the same
    scope are shared).

    Parameters
    ----------
    graphs : sequence of RegionGraph
        At least one, all with the same ``n_variables``; each must validate.

    Returns
    -------
    RegionGraph
        A new, validated graph. The regions of ``graphs[0]`` keep their
        indices, the new scopes of each further graph follow in its order;
        partitions follow in the order of the graphs.

    Raises
    ------
    ValueError
        If ``graphs`` is empty, holds something other than a RegionGraph, or
        the graphs differ in ``n_variables``; or as ``RegionGraph.validate``.

    Notes
    -----
    A region that is a leaf in one graph but has partitions in another is an
    inner region of the result (its leaf densities are not kept). The root
    has one partition per distinct root split: graphs whose root partitions
    coincide (e.g. two identical trees) add one.

    Examples
    --------
    >>> a = RegionGraph(3, [(0, 1, 2), (0,), (1, 2), (1,), (2,)], [(0, (1, 2)), (2, (3, 4))])
    >>> b = RegionGraph(3, [(0, 1, 2), (2,), (0, 1), (0,), (1,)], [(0, (1, 2)), (2, (3, 4))])
    >>> merged = merge_region_graphs([a, b])
    >>> merged.regions
    [(0, 1, 2), (0,), (1, 2), (1,), (2,), (0, 1)]
    >>> merged.partitions
    [(0, (1, 2)), (2, (3, 4)), (0, (4, 5)), (5, (1, 3))]
    """
    graphs = list(graphs)
    if not graphs:
        raise ValueError("merge_region_graphs needs at least one RegionGraph; got none.")
    for i, graph in enumerate(graphs):
        if not isinstance(graph, RegionGraph):
            raise ValueError(f"graphs[{i}] is a {type(graph).__name__}, not a RegionGraph.")
    n_variables = graphs[0].n_variables
    for i, graph in enumerate(graphs):
        if graph.n_variables != n_variables:
            raise ValueError(
                f"graphs[{i}] has {graph.n_variables} variables but graphs[0] has {n_variables}; "
                "merge graphs over the same variables."
            )
        graph.validate()
    index, regions = {}, []
    partitions, seen = [], set()
    for graph in graphs:
        for scope in graph.regions:
            if scope not in index:
                index[scope] = len(regions)
                regions.append(scope)
        for parent, children in graph.partitions:
            child_scopes = [graph.regions[c] for c in children]
            key = (graph.regions[parent], frozenset(child_scopes))
            if key in seen:
                continue
            seen.add(key)
            partitions.append((index[graph.regions[parent]], tuple(index[s] for s in child_scopes)))
    return RegionGraph(n_variables, regions, partitions).validate()
