"""Shared helpers of the engine's numerical tests: state enumeration,
brute-force marginals, small fitted models and hand-built region graphs."""

import itertools
import math

import numpy as np
import pytest
from scipy import stats
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity, RegionGraph
from skpc.backend.leaves import PROB_FLOOR

NEG_INF = float("-inf")


def all_states(n_variables, n_states=2):
    """Every joint state of ``n_variables`` variables with values 0..n_states-1.

    Returns
    -------
    ndarray of shape (n_states ** n_variables, n_variables), float64
    """
    return np.array(list(itertools.product(range(n_states), repeat=n_variables)), dtype=np.float64)


def brute_force_log_marginal(model, X, n_states):
    """log p(observed part of each row) by summing the full joint over the
    missing variables' states (each row's NaN entries), via ``score_samples``
    on complete rows only.

    Parameters
    ----------
    model : fitted estimator with discrete leaves
    X : array of shape (n_samples, n_features), NaN = missing
    n_states : int
        Number of values of every variable (0..n_states-1).

    Returns
    -------
    ndarray of shape (n_samples,)
    """
    X = np.asarray(X, dtype=np.float64)
    out = np.empty(X.shape[0])
    for i, row in enumerate(X):
        missing = np.flatnonzero(np.isnan(row))
        completions = np.repeat(row[None, :], n_states ** len(missing), axis=0)
        completions[:, missing] = all_states(len(missing), n_states)
        out[i] = logsumexp(model.score_samples(completions))
    return out


def random_data(n_samples, n_features, n_states, rng, nan_fraction=0.0):
    """Correlated discrete data: a latent class per row picks per-feature
    probabilities, so that fitted models are far from their initialization."""
    n_classes = 3
    probs = rng.dirichlet(np.full(n_states, 0.5), size=(n_classes, n_features))  # (C, D, S)
    z = rng.integers(n_classes, size=n_samples)
    u = rng.random((n_samples, n_features, 1))
    X = (u > probs[z].cumsum(-1)).sum(-1).clip(max=n_states - 1).astype(np.float64)
    if nan_fraction:
        X[rng.random(X.shape) < nan_fraction] = np.nan
    return X


def fit_discrete(leaf, n_features, n_states, *, seed=0, n_samples=200, max_iter=3, **params):
    """A model (float64 unless ``dtype`` is given) with discrete leaves fitted by a few EM epochs on random data."""
    rng = np.random.default_rng(seed)
    X = random_data(n_samples, n_features, n_states, rng)
    defaults = dict(structure="rat", n_sums=3, n_repetitions=2, max_iter=max_iter, batch_size=None, tol=None,
                    dtype="float64", early_stopping=False)
    defaults.update(params)
    extra = {}
    if leaf == "categorical":
        extra["n_categories"] = n_states
    if leaf == "binomial":
        extra["n_trials"] = n_states - 1
    model = EinsumNetworkDensity(leaf=leaf, random_state=seed, **extra, **defaults)
    return model.fit(X), X


def hand_built_graph():
    """4 variables; the root has 4 partitions, one of them 3-way (the compiler
    binarizes it, creating the region {0, 1, 3}), and the inner region
    {1, 2, 3} has 2 partitions of different heights, so the mixing layers
    gather partitions of several levels.
    """
    regions = [
        (0, 1, 2, 3),  # 0 root
        (0, 1),  # 1
        (2, 3),  # 2
        (0, 2),  # 3
        (1, 3),  # 4
        (0,),  # 5
        (1,),  # 6
        (2,),  # 7
        (3,),  # 8
        (1, 2, 3),  # 9
        (1, 2),  # 10
    ]
    partitions = [
        (0, (1, 2)),
        (0, (3, 4)),
        (0, (5, 9)),
        (0, (7, 8, 1)),  # 3-way: becomes (7, {0,1,3}) and ({0,1,3}, (8, 1))
        (1, (5, 6)),
        (2, (7, 8)),
        (3, (5, 7)),
        (4, (6, 8)),
        (9, (10, 8)),
        (9, (6, 2)),
        (10, (6, 7)),
    ]
    return RegionGraph(4, regions, partitions).validate()


def hand_built_graph_5():
    """5 variables: a root with 3 partitions (one 3-way), an inner region
    with 2 partitions, and a leaf region of two variables."""
    regions = [
        (0, 1, 2, 3, 4),  # 0 root
        (0, 1),  # 1 (leaf region of two variables)
        (2, 3, 4),  # 2
        (2,),  # 3
        (3, 4),  # 4
        (0, 1, 2),  # 5
        (3,),  # 6
        (4,),  # 7
        (2, 3),  # 8
    ]
    partitions = [
        (0, (1, 2)),
        (0, (5, 4)),
        (0, (3, 1, 4)),  # 3-way: becomes (3, {0,1,3,4}) and ({0,1,3,4}, (1, 4))
        (2, (3, 4)),
        (2, (8, 7)),
        (4, (6, 7)),
        (5, (1, 3)),
        (8, (3, 6)),
    ]
    return RegionGraph(5, regions, partitions).validate()


# --------------------------------------------------------------------------
# Naive per-node evaluation of a compiled circuit (reference implementation)


def ref_logsumexp(terms):
    """Stable log(sum(exp(terms))) with an exactly rounded sum (math.fsum)."""
    terms = [t for t in terms if t != NEG_INF]
    if not terms:
        return NEG_INF
    m = max(terms)
    return m + math.log(math.fsum(math.exp(t - m) for t in terms))


def _layout(circuit):
    """Where every region and partition of ``circuit.graph`` lives, from the
    circuit's public layout (checked against its index tensors in
    tests/test_circuit.py).

    Returns
    -------
    leaf_row : {region: row}, part_loc : {partition: (height, row)},
    mix_loc : {region: (height, mixing row, {partition: column})}
    """
    graph, layout = circuit.graph, circuit.layout
    parts = graph.region_partitions()
    leaf_row = {r: int(layout.region_row[r]) for r in range(len(graph.regions)) if not parts[r]}
    part_loc = {p: (int(layout.partition_height[p]), int(layout.partition_row[p])) for p in range(len(graph.partitions))}
    mix_loc = {}
    for r in range(len(graph.regions)):
        if len(parts[r]) > 1:
            h, row = layout.region_location(r)
            # the mixing gather lists a region's partitions in graph order
            mix_loc[r] = (h, row - int(layout.n_single[h]), {p: c for c, p in enumerate(parts[r])})
    return leaf_row, part_loc, mix_loc


def _leaf_logpdf(leaf, x, phi):
    """log p(x | phi) of one univariate leaf (numpy/scipy only)."""
    if leaf.name == "gaussian":
        mu = phi[0]
        var = min(max(phi[1] - mu * mu, leaf.min_var), leaf.max_var or np.inf)
        return stats.norm.logpdf(x, mu, math.sqrt(var))
    if leaf.name == "bernoulli":
        return stats.bernoulli.logpmf(x, min(max(phi[0], PROB_FLOOR), 1 - PROB_FLOOR))
    if leaf.name == "binomial":
        p = min(max(phi[0] / leaf.n_trials, PROB_FLOOR), 1 - PROB_FLOOR)
        return stats.binom.logpmf(x, leaf.n_trials, p)
    if leaf.name == "categorical":
        p = np.maximum(phi, PROB_FLOOR)
        return math.log(p[int(x)] / p.sum())
    raise AssertionError(leaf.name)


class NaiveCircuit:
    """Per-node evaluation of a compiled circuit by recursion over its region
    graph, with Python loops and scipy leaf densities (float64).

    Parameters
    ----------
    circuit : CompiledCircuit
    params : CircuitParams
    """

    def __init__(self, circuit, params):
        self.graph = circuit.graph
        self.leaf = circuit.leaf
        self.K = circuit.n_sums
        self.parts = self.graph.region_partitions()
        self.leaf_row, self.part_loc, self.mix_loc = _layout(circuit)
        self.phi = params.leaf.numpy()
        self.weights = {name: w.numpy() for name, w in params.weights.items()}
        self.layer = circuit.layer
        self.multi_output = circuit.multi_output
        self.root = None if self.multi_output else self.weights["root"]

    def _weights(self, p):
        """(fan_in, K_out) weights of partition p: fan_in K*K (einsum) or K (cp)."""
        h, row = self.part_loc[p]
        return self.weights[f"partition.{h}"][row].T  # stored (K_out, fan_in), normalized over fan_in

    def _mix(self, r):
        h, m, cols = self.mix_loc[r]
        return self.weights[f"mixing.{h}"][m], cols  # (P, K), {partition: column}

    def values(self, x, max_product=False):
        """Log-values of every region and partition for one row x (D,), NaN
        marginalized. Returns (regions {r: (K,)}, partitions {p: (K,)}).

        With ``max_product``, every sum is a max and a missing entry
        contributes its leaf's log-density at the mode (the best induced
        tree's value, as the MPE upward pass defines it)."""
        K, graph = self.K, self.graph
        regions, partitions = {}, {}
        combine = max if max_product else ref_logsumexp

        def region(r):
            if r in regions:
                return regions[r]
            if not self.parts[r]:
                vec = np.zeros(K)
                for s, v in enumerate(graph.regions[r]):
                    phis = self.phi[self.leaf_row[r], s]
                    if not np.isnan(x[v]):
                        vec += [_leaf_logpdf(self.leaf, x[v], phis[k]) for k in range(K)]
                    elif max_product:
                        vec += [_leaf_logpdf(self.leaf, _leaf_mode(self.leaf, phis[k]), phis[k]) for k in range(K)]
            elif len(self.parts[r]) == 1:
                vec = partition(self.parts[r][0])
            else:
                V, cols = self._mix(r)
                pvals = {p: partition(p) for p in self.parts[r]}
                vec = np.array(
                    [combine([math.log(V[cols[p], k]) + pv[k] for p, pv in pvals.items()]) for k in range(K)]
                )
            regions[r] = vec
            return vec

        def partition(p):
            if p not in partitions:
                a, b = graph.partitions[p][1]
                va, vb = region(a), region(b)
                W = self._weights(p)
                if self.layer == "cp":  # both children share the component i
                    terms = [[math.log(W[i, k]) + va[i] + vb[i] for i in range(K)] for k in range(K)]
                else:
                    terms = [
                        [math.log(W[i * K + j, k]) + va[i] + vb[j] for i in range(K) for j in range(K)]
                        for k in range(K)
                    ]
                partitions[p] = np.array([combine(t) for t in terms])
            return partitions[p]

        region(graph.root)
        return regions, partitions

    def log_prob(self, X):
        """(n,) log p of each row of X (n, D), or (n, K) the top region's values of a multi-output circuit."""
        out = []
        for x in X:
            regions, _ = self.values(x)
            top = regions[self.graph.root]
            if self.multi_output:
                out.append(top)
            else:
                out.append(ref_logsumexp([math.log(self.root[k]) + top[k] for k in range(self.K)]))
        return np.array(out)

    def best_tree_log_value(self, x):
        """max over induced trees of the tree's log-value for row x (NaN at the modes)."""
        regions, _ = self.values(x, max_product=True)
        top = regions[self.graph.root]
        return max(math.log(self.root[k]) + top[k] for k in range(self.K))

    def mpe_completion(self, x):
        """The max-product MPE, by hand: the upward pass of ``values(x,
        max_product=True)``, then at every sum node the argmax of weight times
        child value, at every reached leaf the mode; returns x (D,) with NaN
        filled."""
        K, graph = self.K, self.graph
        regions, partitions = self.values(x, max_product=True)
        out = x.copy()

        def descend(r, k):
            if not self.parts[r]:
                for s, v in enumerate(graph.regions[r]):
                    if np.isnan(x[v]):
                        out[v] = _leaf_mode(self.leaf, self.phi[self.leaf_row[r], s, k])
                return
            if len(self.parts[r]) == 1:
                p = self.parts[r][0]
            else:
                V, cols = self._mix(r)
                p = max(self.parts[r], key=lambda q: math.log(V[cols[q], k]) + partitions[q][k])
            a, b = graph.partitions[p][1]
            W = self._weights(p)
            if self.layer == "cp":
                i = int(np.argmax([math.log(W[i, k]) + regions[a][i] + regions[b][i] for i in range(K)]))
                descend(a, i)
                descend(b, i)
                return
            scores = [math.log(W[i * K + j, k]) + regions[a][i] + regions[b][j] for i in range(K) for j in range(K)]
            ij = int(np.argmax(scores))
            descend(a, ij // K)
            descend(b, ij % K)

        top = regions[graph.root]
        descend(graph.root, int(np.argmax([math.log(self.root[k]) + top[k] for k in range(K)])))
        return out


def _leaf_mode(leaf, phi):
    if leaf.name == "bernoulli":
        return float(min(max(phi[0], PROB_FLOOR), 1 - PROB_FLOOR) > 0.5)
    if leaf.name == "categorical":
        return float(np.argmax(phi))
    if leaf.name == "gaussian":
        return float(phi[0])
    raise AssertionError(leaf.name)


def naive_circuit_log_prob(circuit, params, X):
    """log p(x) of each row of X (n, D) by the naive recursion: (n,)."""
    return NaiveCircuit(circuit, params).log_prob(X)



@pytest.fixture
def rng():
    """A seeded numpy Generator for tests that draw their own data."""
    return np.random.default_rng(12345)


def small_density(**params):
    """A small, fast, deterministic EinsumNetworkDensity (full-batch EM on all rows, 5 epochs)."""
    settings = dict(n_sums=3, n_repetitions=2, max_iter=5, batch_size=None, tol=None, early_stopping=False,
                    random_state=0)
    settings.update(params)
    return EinsumNetworkDensity(**settings)


def run_gloo_ranks(module, tmp, world, timeout):
    """Every rank's results (a list in rank order) from ``world`` spawned
    processes, each running ``module._worker(rank, store_path, out_path)``
    (which joins a gloo group through a file store and pickles its results
    to ``out_path``); a group that does not finish within ``timeout``
    seconds fails the test (a hang) instead of blocking the suite."""
    import os
    import pickle
    import subprocess
    import sys
    import time
    from pathlib import Path

    here = Path(__file__).resolve().parent
    store = tmp / "store"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(here), str(here.parent)]))
    procs = []
    for rank in range(world):
        code = f"import {module} as t; t._worker({rank}, {str(store)!r}, {str(tmp / f'r{rank}.pkl')!r})"
        procs.append(subprocess.Popen([sys.executable, "-c", code], env=env, cwd=tmp,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + timeout
    outputs = []
    try:
        for p in procs:
            out, _ = p.communicate(timeout=max(1, deadline - time.monotonic()))
            outputs.append(out.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        for p in procs:
            p.kill()
        pytest.fail(f"the process group did not finish within {timeout} s (a hang)")
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out[-4000:]
    results = []
    for rank in range(world):
        with open(tmp / f"r{rank}.pkl", "rb") as f:
            results.append(pickle.load(f))
    return results


def join_gloo_group(rank, store, world):
    """In a spawned worker: one torch thread, and the gloo group of ``world``
    processes through the file ``store`` (60 s timeout per collective)."""
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))


def finish_gloo_worker(rank, results, out):
    """In a spawned worker: one more collective (the group still works after
    any failures), the results pickled to ``out``, the group closed."""
    import pickle

    import torch
    import torch.distributed as dist

    t = torch.tensor([float(rank + 1)])
    dist.all_reduce(t)
    results["after"] = float(t)
    with open(out, "wb") as f:
        pickle.dump(results, f)
    dist.destroy_process_group()


# A RAT model that overfits 30 rows (tests/test_map_em.py, tests/test_softening.py).
SMALL_DATA_MODEL = dict(structure="rat", depth=2, n_repetitions=4, n_sums=4, leaf="bernoulli", batch_size=None,
                        max_iter=30, tol=None, early_stopping=False, dtype="float64", random_state=0)


def small_mixture_data(n_train=30, n_test=2000, seed=0):
    """(X (n_train, 20), X_test (n_test, 20)): binary rows from a mixture of 3
    random product distributions, few training rows: what regularization is for."""
    rng = np.random.default_rng(seed)
    D, K = 20, 3
    centers = rng.uniform(0.05, 0.95, size=(K, D))

    def draw(n):
        return (rng.random((n, D)) < centers[rng.integers(K, size=n)]).astype(float)

    return draw(n_train), draw(n_test)
