"""Region graphs: the structure of a smooth, decomposable probabilistic circuit.

A region graph is a bipartite DAG of *regions* (sets of variables, called
scopes) and *partitions* (a split of a region's scope into disjoint child
regions). An Einsum Network (Peharz et al., ICML 2020) attaches a vector of
densities to every region and computes every partition as a product of its
children followed by a sum, so smoothness (children cover their parent) and
decomposability (children are disjoint) of the graph carry over to the circuit.

This module is numpy only; the torch backend compiles a validated
:class:`RegionGraph` into layers using :meth:`RegionGraph.layers`.
"""

import itertools
import json
import operator
import os

import numpy as np

__all__ = ["RegionGraph"]

_FORMAT = "skpc.RegionGraph"
_VERSION = 1


class RegionGraph:
    """A region graph over ``n_variables`` variables indexed ``0..n_variables-1``.

    The constructor only stores (and normalizes) its arguments; call
    :meth:`validate` to check that they form a smooth, decomposable, rooted
    DAG. The structure builders (:func:`skpc.structure.random_binary_trees`,
    :func:`skpc.structure.poon_domingos`) and :meth:`from_json` return
    validated graphs.

    Parameters
    ----------
    n_variables : int
        Number of variables; the root region's scope is all of them.
    regions : sequence of iterables of int
        The scope of each region. Each is stored as a tuple sorted ascending,
        so the order in which variables are listed does not matter.
    partitions : sequence of (int, sequence of int)
        Each partition as ``(parent_region_index, child_region_indices)``.
        The order of the children is kept as given.

    Attributes
    ----------
    n_variables : int
        Number of variables.
    regions : list of tuple of int
        Sorted scope of each region; a region's index is its position here.
    partitions : list of (int, tuple of int)
        ``(parent, children)`` of each partition; a partition's index is its
        position here.

    Notes
    -----
    A region without partitions is a *leaf*: the circuit models it directly
    (a product of univariate leaf distributions over its scope). A graph made
    of a single root region and no partitions is valid.

    Examples
    --------
    >>> rg = RegionGraph(2, regions=[(0, 1), (0,), (1,)], partitions=[(0, (1, 2))])
    >>> rg.validate().root, rg.leaves
    (0, [1, 2])
    """

    def __init__(self, n_variables, regions, partitions):
        self.n_variables = operator.index(n_variables)
        self.regions = [
            tuple(sorted(operator.index(v) for v in scope)) for scope in regions
        ]
        self.partitions = [
            (operator.index(parent), tuple(operator.index(c) for c in children))
            for parent, children in partitions
        ]

    # ------------------------------------------------------------------
    # Basic queries

    @property
    def root(self):
        """Index of the region whose scope is every variable.

        Returns
        -------
        int

        Raises
        ------
        ValueError
            If no region covers all variables.
        """
        full = tuple(range(self.n_variables))
        for i, scope in enumerate(self.regions):
            if scope == full:
                return i
        raise ValueError(
            f"no region covers all {self.n_variables} variables "
            f"(0..{self.n_variables - 1}): add a root region whose scope is "
            "every variable"
        )

    @property
    def leaves(self):
        """Indices of the regions that have no partition, ascending.

        Returns
        -------
        list of int
        """
        has_partition = np.zeros(len(self.regions), dtype=bool)
        for parent, _ in self.partitions:
            has_partition[parent] = True
        return np.flatnonzero(~has_partition).tolist()

    def region_partitions(self):
        """Indices of the partitions of each region.

        Returns
        -------
        list of list of int
            Element ``i`` lists, ascending, the partitions whose parent is
            region ``i``; it is empty for a leaf.
        """
        out = [[] for _ in self.regions]
        for k, (parent, _) in enumerate(self.partitions):
            out[parent].append(k)
        return out

    # ------------------------------------------------------------------
    # Validation

    def validate(self):
        """Check that the graph is a smooth, decomposable, rooted DAG.

        Returns
        -------
        self : RegionGraph

        Raises
        ------
        ValueError
            Naming the offending region's scope, if ``n_variables < 1``; a
            scope is empty, has a variable out of range or a variable twice;
            two regions share a scope; a partition refers to a region index
            out of range or has fewer than 2 children; the partitions form a
            cycle; a partition's children overlap (not decomposable) or do not
            cover exactly their parent's scope (not smooth); no region covers
            all variables; or a region is not reachable from the root.
        """
        n = self.n_variables
        if n < 1:
            raise ValueError(f"n_variables must be at least 1; got {n}")

        seen = {}
        for i, scope in enumerate(self.regions):
            if len(scope) == 0:
                raise ValueError(
                    f"region {i} has an empty scope (): every region needs at "
                    "least one variable"
                )
            if scope[0] < 0 or scope[-1] >= n:
                bad = scope[0] if scope[0] < 0 else scope[-1]
                raise ValueError(
                    f"region {scope}: variable {bad} is out of range for "
                    f"n_variables={n} (valid indices are 0..{n - 1})"
                )
            # Sorted scopes put duplicate variables next to each other.
            for a, b in zip(scope, scope[1:]):
                if a == b:
                    raise ValueError(
                        f"region {scope}: variable {a} appears more than once; "
                        "list each variable once"
                    )
            if scope in seen:
                raise ValueError(
                    f"region {scope}: appears twice (regions {seen[scope]} and "
                    f"{i}); keep one region per scope and give it all the "
                    "partitions"
                )
            seen[scope] = i

        n_regions = len(self.regions)
        for k, (parent, children) in enumerate(self.partitions):
            if not 0 <= parent < n_regions:
                raise ValueError(
                    f"partition {k}: parent index {parent} is out of range for "
                    f"{n_regions} regions"
                )
            pscope = self.regions[parent]
            for c in children:
                if not 0 <= c < n_regions:
                    raise ValueError(
                        f"region {pscope}: partition {k}'s child index {c} is "
                        f"out of range for {n_regions} regions"
                    )
            if len(children) < 2:
                raise ValueError(
                    f"region {pscope}: partition {k} has {len(children)} "
                    "child(ren); a partition needs at least 2 children"
                )

        # Checked before the scope conditions so that a cycle is reported as
        # such (on a cycle some child is never a strict subset of its parent,
        # which would otherwise surface as a less helpful smoothness error).
        self._topological_order()

        scopes = [frozenset(s) for s in self.regions]
        for k, (parent, children) in enumerate(self.partitions):
            pscope = self.regions[parent]
            union = frozenset().union(*(scopes[c] for c in children))
            if sum(len(scopes[c]) for c in children) != len(union):
                a, b = next(
                    (a, b)
                    for a, b in itertools.combinations(children, 2)
                    if scopes[a] & scopes[b]
                )
                raise ValueError(
                    f"region {pscope}: partition {k}'s children "
                    f"{self.regions[a]} and {self.regions[b]} overlap: not "
                    "decomposable"
                )
            if union != scopes[parent]:
                missing = tuple(sorted(scopes[parent] - union))
                extra = tuple(sorted(union - scopes[parent]))
                raise ValueError(
                    f"region {pscope}: partition {k}'s children cover "
                    f"{tuple(sorted(union))}, not the region's scope (missing "
                    f"{missing}, outside {extra}): not smooth"
                )

        root = self.root
        reached = np.zeros(n_regions, dtype=bool)
        reached[root] = True
        stack = [root]
        parts = self.region_partitions()
        while stack:
            r = stack.pop()
            for k in parts[r]:
                for c in self.partitions[k][1]:
                    if not reached[c]:
                        reached[c] = True
                        stack.append(c)
        if not reached.all():
            i = int(np.flatnonzero(~reached)[0])
            raise ValueError(
                f"region {self.regions[i]}: not reachable from the root "
                f"{self.regions[root]}; remove it or make it a child of a "
                "partition"
            )
        return self

    def _topological_order(self):
        """Region indices ordered children before parents.

        Assumes partition indices are in range. Raises ValueError, naming a
        region on the cycle, if the partitions form a cycle.
        """
        parts = self.region_partitions()
        # 0: unvisited, 1: on the current DFS path, 2: finished.
        state = np.zeros(len(self.regions), dtype=np.int8)
        order = []
        for start in range(len(self.regions)):
            if state[start]:
                continue
            state[start] = 1
            # Iterative DFS (deep PD graphs would overflow Python's recursion
            # limit); each frame holds a region and an iterator over its
            # children.
            stack = [
                (start, iter([c for k in parts[start] for c in self.partitions[k][1]]))
            ]
            while stack:
                r, it = stack[-1]
                for c in it:
                    if state[c] == 1:
                        raise ValueError(
                            f"region {self.regions[c]}: lies on a cycle of "
                            "partitions (it is its own descendant); a child "
                            "must have a strictly smaller scope than its parent"
                        )
                    if state[c] == 0:
                        state[c] = 1
                        stack.append(
                            (
                                c,
                                iter(
                                    [g for k in parts[c] for g in self.partitions[k][1]]
                                ),
                            )
                        )
                        break
                else:
                    state[r] = 2
                    order.append(r)
                    stack.pop()
        return order

    # ------------------------------------------------------------------
    # Transformations and layering

    def binarize(self):
        """Return an equivalent graph whose partitions all have 2 children.

        A partition ``(p, (c1, c2, ..., cm))`` with ``m > 2`` becomes
        ``(p, (c1, r))``, where ``r`` is the region with the scope of
        ``c2 ∪ ... ∪ cm`` (an existing region with that scope is reused,
        otherwise one is created), and ``r`` gets the partition
        ``(r, (c2, ..., cm))``, binarized the same way.

        Returns
        -------
        RegionGraph
            A new, validated graph. Existing regions keep their indices; new
            regions are appended. Binary partitions are copied unchanged and
            in order; a split partition is replaced, in place in the order,
            by its binary pieces. A piece is not added twice: if the parent
            already has a partition with the same children, it is reused.

        Notes
        -----
        Reusing an existing region ``r`` adds the partition
        ``(r, (c2, ..., cm))`` to it (unless ``r`` already has a partition
        with exactly these children), so ``c2, ..., cm`` stay reachable; if
        ``r`` was a leaf it becomes an inner region.
        """
        self.validate()
        regions = list(self.regions)
        index = {scope: i for i, scope in enumerate(regions)}
        partitions = []
        # Binary partitions present so far, so that no piece is emitted twice.
        emitted = {(p, frozenset(ch)) for p, ch in self.partitions if len(ch) == 2}
        # (region, children) pairs that are or will be expanded: every
        # original partition (handled on its own turn) and every helper
        # partition started so far.
        expanded = {(p, frozenset(ch)) for p, ch in self.partitions}

        def emit(parent, pair):
            key = (parent, frozenset(pair))
            if key not in emitted:
                emitted.add(key)
                partitions.append((parent, pair))

        for parent, children in self.partitions:
            if len(children) == 2:
                # Copied verbatim so that a binary graph maps to an equal one.
                partitions.append((parent, children))
                continue
            while len(children) > 2:
                first, rest = children[0], children[1:]
                scope = tuple(
                    sorted(itertools.chain.from_iterable(regions[c] for c in rest))
                )
                r = index.get(scope)
                if r is None:
                    r = index[scope] = len(regions)
                    regions.append(scope)
                emit(parent, (first, r))
                if (r, frozenset(rest)) in expanded:
                    break
                expanded.add((r, frozenset(rest)))
                parent, children = r, rest
            else:
                emit(parent, children)
        return RegionGraph(self.n_variables, regions, partitions).validate()

    def heights(self):
        """Topological heights of regions and partitions.

        Leaf regions have height 0, a partition has height one more than its
        highest child, and a region has the height of its highest partition.
        All partitions of one height depend only on lower heights, so they
        can be computed together (Peharz et al. 2020, Algorithm 1).

        Returns
        -------
        region_height : ndarray of shape (n_regions,), dtype int64
        partition_height : ndarray of shape (n_partitions,), dtype int64
        """
        parts = self.region_partitions()
        region_height = np.zeros(len(self.regions), dtype=np.int64)
        partition_height = np.zeros(len(self.partitions), dtype=np.int64)
        for r in self._topological_order():
            for k in parts[r]:
                children = self.partitions[k][1]
                partition_height[k] = 1 + max(region_height[c] for c in children)
            if parts[r]:
                region_height[r] = partition_height[parts[r]].max()
        return region_height, partition_height

    def layers(self):
        """Partition indices grouped by height.

        Returns
        -------
        list of ndarray of int64
            Element ``h - 1`` holds, ascending, the partitions of height
            ``h`` for ``h = 1..H`` (``H`` is the root's height). No element is
            empty. The list is empty for a graph without partitions.
        """
        _, partition_height = self.heights()
        if partition_height.size == 0:
            return []
        # A stable sort keeps partitions ascending within each height.
        order = np.argsort(partition_height, kind="stable").astype(np.int64)
        counts = np.bincount(partition_height)[1:]
        return np.split(order, np.cumsum(counts)[:-1])

    # ------------------------------------------------------------------
    # Serialization

    def to_json(self):
        """Serialize the graph as a JSON string.

        Returns
        -------
        str
            A JSON object with keys ``format`` (``"skpc.RegionGraph"``),
            ``version`` (1), ``n_variables``, ``regions`` (list of scopes) and
            ``partitions`` (list of ``[parent, [children...]]``).
        """
        return json.dumps(
            {
                "format": _FORMAT,
                "version": _VERSION,
                "n_variables": self.n_variables,
                "regions": [list(s) for s in self.regions],
                "partitions": [[p, list(ch)] for p, ch in self.partitions],
            }
        )

    @classmethod
    def from_json(cls, text):
        """Read a graph written by :meth:`to_json`.

        Parameters
        ----------
        text : str

        Returns
        -------
        RegionGraph
            The validated graph.

        Raises
        ------
        ValueError
            If the text is not JSON of this format and version, or the graph
            it describes is invalid.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or data.get("format") != _FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise ValueError(
                f"expected a JSON object with format {_FORMAT!r}; got {got!r}: "
                "write the file with RegionGraph.to_json or RegionGraph.save"
            )
        if data.get("version") != _VERSION:
            raise ValueError(
                f"unsupported {_FORMAT} version {data.get('version')!r}; this "
                f"version of skpc reads version {_VERSION}"
            )
        missing = [k for k in ("n_variables", "regions", "partitions") if k not in data]
        if missing:
            raise ValueError(f"{_FORMAT} JSON is missing the keys {missing}")
        try:
            graph = cls(data["n_variables"], data["regions"], data["partitions"])
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"malformed {_FORMAT} JSON: regions must be lists of integers "
                f"and partitions [parent, [children...]] ({exc})"
            ) from exc
        return graph.validate()

    def save(self, path):
        """Write the graph to ``path`` as JSON (see :meth:`to_json`).

        Parameters
        ----------
        path : str or os.PathLike
        """
        with open(os.fspath(path), "w", encoding="utf-8") as f:
            f.write(self.to_json())

    @classmethod
    def load(cls, path):
        """Read a graph written by :meth:`save`.

        Parameters
        ----------
        path : str or os.PathLike

        Returns
        -------
        RegionGraph
            The validated graph.
        """
        with open(os.fspath(path), encoding="utf-8") as f:
            return cls.from_json(f.read())

    # ------------------------------------------------------------------

    def __eq__(self, other):
        if not isinstance(other, RegionGraph):
            return NotImplemented
        return (
            self.n_variables == other.n_variables
            and self.regions == other.regions
            and self.partitions == other.partitions
        )

    # Mutable containers inside: equal graphs must not be dict keys.
    __hash__ = None

    def __repr__(self):
        fields = (
            f"n_variables={self.n_variables}, n_regions={len(self.regions)}, "
            f"n_partitions={len(self.partitions)}"
        )
        try:
            depth = int(self.heights()[0][self.root])
        except (ValueError, IndexError):
            # repr must not fail on a graph that has not been validated.
            return f"RegionGraph({fields})"
        return f"RegionGraph({fields}, depth={depth})"
