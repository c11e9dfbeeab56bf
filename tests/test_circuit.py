"""The compiled circuit's public layout, outputs inside the circuit,
multi-output circuits, evidence on internal regions and the CP layer,
against the naive per-node reference."""

import numpy as np
import pytest
import torch
from conftest import NaiveCircuit, all_states, hand_built_graph, hand_built_graph_5
from scipy.special import logsumexp

from skpc import EinsumNetworkDensity
from skpc.backend import CompiledCircuit, make_leaf
from skpc.structure import poon_domingos, random_binary_trees

GRAPHS = {
    "rat": lambda: random_binary_trees(8, 2, 3, random_state=0),
    "pd": lambda: poon_domingos((2, 4), 1),
    "hand": hand_built_graph,
    "hand5": hand_built_graph_5,
}


def _circuit(graph, K=3, layer="einsum", multi_output=False, seed=0):
    circuit = CompiledCircuit(graph, K, make_leaf("bernoulli"), layer=layer, multi_output=multi_output)
    gen = torch.Generator().manual_seed(seed)
    X = torch.randint(0, 2, (20, graph.n_variables), generator=gen).double()
    return circuit, circuit.init_params(X, gen, torch.float64)


@pytest.mark.parametrize("name", sorted(GRAPHS))
def test_layout_matches_index_tensors(name):
    """The public layout says where each region and partition lives; the
    gathers must read exactly the children the graph gives each partition."""
    circuit, _ = _circuit(GRAPHS[name]())
    graph, layout = circuit.graph, circuit.layout
    assert layout.region_location(graph.root) == circuit.root_loc
    parts = graph.region_partitions()
    for r in range(len(graph.regions)):
        h, row = layout.region_location(r)
        if not parts[r]:
            assert h == 0
            scope = [v for v in layout.leaf_scope[row] if v < graph.n_variables]
            assert tuple(scope) == graph.regions[r]
        elif len(parts[r]) == 1:  # a single-partition region is its partition's row
            p = parts[r][0]
            assert (layout.partition_height[p], layout.partition_row[p]) == (h, row)
            assert row < layout.n_single[h]
        else:
            assert row >= layout.n_single[h]
    for p, (_, (a, b)) in enumerate(graph.partitions):
        h, i = int(layout.partition_height[p]), int(layout.partition_row[p])
        for gather, child in ((circuit.left[h], a), (circuit.right[h], b)):
            assert (int(gather.row_height[i]), int(gather.row[i])) == layout.region_location(child)


@pytest.mark.parametrize("name", sorted(GRAPHS))
@pytest.mark.parametrize("layer", ["einsum", "cp"])
def test_forward_equals_naive_reference(name, layer):
    circuit, params = _circuit(GRAPHS[name](), layer=layer)
    X = all_states(circuit.n_variables)[::7].copy()
    X[1::3, 0] = np.nan
    got = circuit.log_prob(torch.tensor(X), params).numpy()
    np.testing.assert_allclose(got, NaiveCircuit(circuit, params).log_prob(X), rtol=1e-10)


@pytest.mark.parametrize("layer", ["einsum", "cp"])
def test_circuit_normalizes(layer):
    circuit, params = _circuit(GRAPHS["rat"](), K=4, layer=layer)
    X = torch.tensor(all_states(8))
    assert abs(logsumexp(circuit.log_prob(X, params).numpy())) < 1e-10


def test_region_outputs_equal_the_naive_region_values():
    graph = hand_built_graph()
    circuit, params = _circuit(graph)
    X = all_states(4)[:5]
    wanted = list(range(len(graph.regions)))
    leaf_values = circuit.leaf.region_log_prob(circuit.leaf_inputs(torch.tensor(X)), params.leaf)
    regions = circuit.forward(leaf_values, params, regions=wanted).regions
    naive = NaiveCircuit(circuit, params)
    for b, x in enumerate(X):
        expected, _ = naive.values(x)
        for r in wanted:
            np.testing.assert_allclose(regions[r][b].numpy(), expected[r], rtol=1e-10)


@pytest.mark.parametrize("layer", ["einsum", "cp"])
def test_multi_output_circuit_returns_the_top_region(layer):
    graph = GRAPHS["pd"]()
    single, params = _circuit(graph, K=3, layer=layer)
    multi = CompiledCircuit(graph, 3, make_leaf("bernoulli"), layer=layer, multi_output=True)
    assert [s.name for s in multi.weight_specs] == [s.name for s in single.weight_specs if s.name != "root"]
    weights = {n: w for n, w in params.weights.items() if n != "root"}
    from skpc.backend import CircuitParams

    multi_params = CircuitParams(params.leaf, weights)
    X = torch.tensor(all_states(8))
    out = multi.log_prob(X, multi_params)  # (B, K)
    assert out.shape == (256, 3)
    # every output is a normalized density over X
    np.testing.assert_allclose(logsumexp(out.numpy(), axis=0), 0.0, atol=1e-10)
    # the single-output circuit is the root mixture of those outputs
    mixed = logsumexp(out.numpy() + np.log(params.root.numpy()), axis=1)
    np.testing.assert_allclose(mixed, single.log_prob(X, params).numpy(), rtol=1e-10)
    np.testing.assert_allclose(out.numpy(), NaiveCircuit(multi, multi_params).log_prob(X.numpy()), rtol=1e-10)


def test_evidence_on_an_internal_region_selects_components():
    """Evidence (a mask of allowed components per row) on a region: the
    output equals the naive evaluation with the other components at -inf,
    and summing over one-hot evidence recovers the unconditioned value."""
    graph = random_binary_trees(8, 2, 1, random_state=0)  # one tree: every region has one parent
    circuit, params = _circuit(graph, K=3)
    parts = graph.region_partitions()
    inner = next(r for r in range(len(graph.regions)) if parts[r] and r != graph.root)
    X = torch.tensor(all_states(8)[::40])
    n = X.shape[0]
    leaf_values = circuit.leaf.region_log_prob(circuit.leaf_inputs(X), params.leaf)
    total = circuit.forward(leaf_values, params).output
    pieces = []
    for k in range(3):
        allowed = torch.zeros(n, 3, dtype=torch.bool)
        allowed[:, k] = True
        pieces.append(circuit.forward(leaf_values, params, evidence={inner: allowed}).output)
    # the region enters the root through one path (a tree): its components add up
    np.testing.assert_allclose(torch.logsumexp(torch.stack(pieces), 0).numpy(), total.numpy(), rtol=1e-10)
    # all allowed changes nothing; none allowed gives -inf, never NaN
    everything = torch.ones(n, 3, dtype=torch.bool)
    np.testing.assert_allclose(circuit.forward(leaf_values, params, evidence={inner: everything}).output, total)
    nothing = circuit.forward(leaf_values, params, evidence={inner: ~everything}).output
    assert torch.isneginf(nothing).all()
    with pytest.raises(ValueError, match="boolean"):
        circuit.forward(leaf_values, params, evidence={inner: torch.ones(n, 2, dtype=torch.bool)})


def test_evidence_on_the_top_region_of_a_multi_output_circuit():
    graph = GRAPHS["rat"]()
    circuit, params = _circuit(graph, K=3, multi_output=True)
    X = torch.tensor(all_states(8)[:10])
    leaf_values = circuit.leaf.region_log_prob(circuit.leaf_inputs(X), params.leaf)
    out = circuit.forward(leaf_values, params).output  # (10, 3)
    allowed = torch.zeros(10, 3, dtype=torch.bool)
    allowed[torch.arange(10), torch.arange(10) % 3] = True
    masked = circuit.forward(leaf_values, params, evidence={graph.root: allowed}).output
    np.testing.assert_array_equal(masked[allowed].numpy(), out[allowed].numpy())
    assert torch.isneginf(masked[~allowed]).all()


@pytest.mark.parametrize("layer", ["einsum", "cp"])
def test_mpe_completion_equals_the_naive_max_product_descent(layer):
    circuit, params = _circuit(GRAPHS["hand5"](), K=3, layer=layer, seed=3)
    X = all_states(5)[::3].copy()
    X[:, [1, 3]] = np.nan
    gen = torch.Generator().manual_seed(0)
    got = circuit.complete(torch.tensor(X), params, gen, "mpe").numpy()
    naive = NaiveCircuit(circuit, params)
    expected = np.array([naive.mpe_completion(x) for x in X])
    np.testing.assert_array_equal(got, expected)


def test_cp_sampling_matches_the_density():
    """Samples of a CP circuit: empirical frequencies against exp(log p) (chi-square)."""
    from scipy import stats

    circuit, params = _circuit(GRAPHS["hand"](), K=3, layer="cp", seed=5)
    gen = torch.Generator().manual_seed(1)
    n = 20000
    samples = circuit.complete(torch.full((n, 4), float("nan"), dtype=torch.float64), params, gen, "sample")
    codes = (samples.numpy() @ (2 ** np.arange(3, -1, -1))).astype(int)
    observed = np.bincount(codes, minlength=16)
    expected = np.exp(circuit.log_prob(torch.tensor(all_states(4)), params).numpy()) * n
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_cp_estimator_option_fits_and_normalizes():
    X = np.random.default_rng(0).integers(0, 2, size=(300, 6)).astype(float)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", layer="cp", n_sums=4, depth=2, n_repetitions=2,
                                 batch_size=None, max_iter=10, tol=None, random_state=0).fit(X)
    assert model.layer_ == "cp"
    assert model.params_.weights["partition.1"].shape[2] == 4  # K x K, not K x K*K
    assert abs(logsumexp(model.score_samples(all_states(6)))) < 1e-5
    einsum = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, depth=2, n_repetitions=2, random_state=0).fit(X)
    assert model.n_parameters_ < einsum.n_parameters_


def test_shared_store_reads_change_no_value_or_gradient(monkeypatch):
    """A chain-shaped hidden Chow-Liu tree reads its leaf store at every level: those reads are one
    index_select split into pieces (circuit._SharedRead); values and gradients equal per-level gathers."""
    import skpc.backend.circuit as circuit_module
    from skpc.structure import hclt_region_graph

    D, K = 12, 3
    graph = hclt_region_graph(np.array([-1] + list(range(D - 1))), 0)  # a chain: height D - 1
    rng = np.random.default_rng(0)
    X = torch.tensor((rng.random((20, D)) < 0.4).astype(float))
    X[rng.random(X.shape) < 0.1] = float("nan")

    def value_and_grads(min_readers):
        monkeypatch.setattr(circuit_module, "SHARED_READ_MIN_READERS", min_readers)
        circuit = CompiledCircuit(graph, K, make_leaf("bernoulli"), "cpu", layer="cp")
        params = circuit.init_params(X.nan_to_num(0.0), torch.Generator().manual_seed(1), torch.float64)
        weights = [w.detach().requires_grad_(True) for w in params.tensors()]
        leaf = params.leaf.detach().requires_grad_(True)
        p = params.with_weights(weights)
        p.leaf = leaf
        out = circuit.log_prob(X, p)
        grads = torch.autograd.grad(out.sum(), [leaf, *weights])
        return circuit, out.detach(), grads

    shared, out, grads = value_and_grads(3)
    assert 0 in shared.shared_reads and len(shared.shared_reads[0][1]) >= D - 2  # the leaf store, read by every level
    plain, out_plain, grads_plain = value_and_grads(10**9)
    assert not plain.shared_reads
    np.testing.assert_allclose(out.numpy(), out_plain.numpy(), rtol=1e-13)
    for a, b in zip(grads, grads_plain):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-14)
