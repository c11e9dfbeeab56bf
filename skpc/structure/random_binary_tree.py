"""Random binary trees: the RAT-SPN region graph (Peharz et al., UAI 2019)."""

import numbers

import numpy as np

from .region_graph import RegionGraph

__all__ = ["random_binary_trees"]


def _check_random_state(random_state):
    """Turn ``random_state`` into a numpy random generator.

    Same semantics as :func:`sklearn.utils.check_random_state` (None: numpy's
    global RandomState; int: a new ``RandomState(seed)``; a RandomState:
    itself), and additionally accepts a :class:`numpy.random.Generator`.
    """
    if random_state is None or random_state is np.random:
        return np.random.mtrand._rand
    if isinstance(random_state, numbers.Integral):
        return np.random.RandomState(random_state)
    if isinstance(random_state, (np.random.RandomState, np.random.Generator)):
        return random_state
    raise ValueError(
        f"random_state={random_state!r} cannot be used to seed a random "
        "generator: pass None, an int, a numpy.random.RandomState or a "
        "numpy.random.Generator"
    )


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return int(value)


def random_binary_trees(n_variables, depth, n_repetitions, random_state=None):
    """Region graph of ``n_repetitions`` random balanced binary trees.

    For each repetition, the variables are put in a random order and the
    root scope is split recursively into two halves of that order, of sizes
    ``floor(s / 2)`` and ``ceil(s / 2)`` for a region of ``s`` variables,
    ``depth`` times. Each repetition therefore has ``2**depth`` leaf regions
    that partition the variables and whose sizes differ by at most one. This
    is the RAT-SPN structure (Peharz et al. 2019, "Random sum-product
    networks"), used by Einsum Networks (Peharz et al. 2020).

    Parameters
    ----------
    n_variables : int
        Number of variables, at least ``2**depth``.
    depth : int
        Number of splits from the root to each leaf; 0 gives a single region.
    n_repetitions : int
        Number of random trees, all sharing the root.
    random_state : None, int, numpy.random.RandomState or numpy.random.Generator
        Source of the random orders. An int makes the result reproducible.

    Returns
    -------
    RegionGraph
        A validated graph whose partitions are all binary. Region 0 is the
        root; the other regions appear in the order they are first created
        (breadth first within each repetition, repetitions in order). Each
        partition's children are ordered (first half, second half) of the
        random order. The graph built with ``n_repetitions=R`` contains the
        one built with fewer repetitions from the same seed as a prefix.

    Raises
    ------
    ValueError
        If ``n_variables < 1``, ``depth < 0``, ``n_repetitions < 1``, or
        ``n_variables < 2**depth``.

    Notes
    -----
    A region graph holds one region per scope, so identical scopes drawn in
    different repetitions are merged into one region, and identical
    partitions are kept once; the root always has one partition per
    repetition unless two repetitions draw the same root split. A merged
    region can be an inner region of one tree and a leaf of another; this
    happens only for two-variable regions when ``2**depth < n_variables <
    2**(depth + 1)``, and then the root's height can be ``depth + 1``.
    Otherwise every leaf has height 0 and the root has height ``depth``.

    Examples
    --------
    >>> rg = random_binary_trees(16, depth=2, n_repetitions=3, random_state=0)
    >>> len(rg.region_partitions()[rg.root])
    3
    """
    n_variables = _check_int("n_variables", n_variables, 1)
    depth = _check_int("depth", depth, 0)
    n_repetitions = _check_int("n_repetitions", n_repetitions, 1)
    if n_variables < 2**depth:
        max_depth = n_variables.bit_length() - 1  # floor(log2(n_variables))
        raise ValueError(
            f"depth={depth} needs at least {2**depth} features (2**depth); got "
            f"{n_variables}: lower depth to at most {max_depth}"
        )
    rng = _check_random_state(random_state)

    root = tuple(range(n_variables))
    regions = [root]
    index = {root: 0}
    partitions = []
    seen = set()

    def region_of(block):
        scope = tuple(sorted(block.tolist()))
        i = index.get(scope)
        if i is None:
            i = index[scope] = len(regions)
            regions.append(scope)
        return i

    for _ in range(n_repetitions):
        # Each block is a contiguous piece of the random order; splitting it
        # in the middle keeps every level balanced to within one variable.
        level = [rng.permutation(n_variables)]
        for _ in range(depth):
            next_level = []
            for block in level:
                half = len(block) // 2
                left, right = block[:half], block[half:]
                parent = region_of(block)
                pair = (region_of(left), region_of(right))
                key = (parent, frozenset(pair))
                if key not in seen:
                    seen.add(key)
                    partitions.append((parent, pair))
                next_level.extend((left, right))
            level = next_level

    return RegionGraph(n_variables, regions, partitions).validate()
