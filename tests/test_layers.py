"""The einsum, mixing and root layers, and a whole compiled circuit, against
naive per-node reference implementations written with Python loops."""

import math

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity
from skpc.backend import layers
from skpc.backend.layers import log_einsum_exp, log_mix, log_root

from conftest import (
    fit_discrete,
    hand_built_graph,
    hand_built_graph_5,
    naive_circuit_log_prob,
    random_data,
    ref_logsumexp,
)

NEG_INF = float("-inf")
# log_einsum_exp has two CPU paths: plain autograd ops for a level that fits
# one chunk (the default budget, for these small inputs) and the chunked custom
# function (a budget of 1 element: one partition per chunk).
BOTH_PATHS = [2**20, 1]


def _random_inputs(rng, L, B, K, shift=0.0):
    left = rng.normal(size=(L, B, K)) * 3 + shift
    right = rng.normal(size=(L, B, K)) * 3 + shift
    return left, right


def _children(rng, L, B, K, special):
    left, right = _random_inputs(rng, L, B, K)
    return _with_special_entries(left, right) if special else (left, right)


def _with_special_entries(left, right):
    left, right = left.copy(), right.copy()
    left[0, 0, :] = NEG_INF  # a whole child vector at -inf: the output must be -inf
    right[1, 2, :] = NEG_INF
    left[1, 1, 0] = NEG_INF  # partially -inf: fine, finite output
    right[2, 1, [0, 2]] = NEG_INF
    left[2, 3] -= 1000.0  # exp would underflow without the max shift
    right[2, 3] -= 2000.0
    left[0, 3] += 800.0  # and overflow
    return left, right


# --------------------------------------------------------------------------
# The layers take batch-last tensors: children (L, K, B), einsum weights
# (L, K_out, K*K), mixing values (M, P, K, B), root values (K, B). The naive
# references below index (l, b, k) and W[l, ij, k] instead; these wrappers
# only transpose.


def _einsum(left, right, weight, dtype=torch.float64):
    out = log_einsum_exp(
        torch.tensor(np.swapaxes(left, 1, 2), dtype=dtype),
        torch.tensor(np.swapaxes(right, 1, 2), dtype=dtype),
        torch.tensor(np.swapaxes(weight, 1, 2), dtype=dtype),
    )
    return np.swapaxes(out.numpy(), 1, 2)


def _mix(values, weight):
    out = log_mix(torch.tensor(np.swapaxes(values, 2, 3)), torch.tensor(weight))
    return np.swapaxes(out.numpy(), 1, 2)


def _root(values, weight):
    return log_root(torch.tensor(values.T), torch.tensor(weight)).numpy()


# --------------------------------------------------------------------------
# log_einsum_exp


def naive_einsum(left, right, weight):
    L, B, K = left.shape
    K_out = weight.shape[2]
    out = np.empty((L, B, K_out))
    for l in range(L):
        for b in range(B):
            for k in range(K_out):
                terms = []
                for i in range(K):
                    for j in range(K):
                        w = weight[l, i * K + j, k]
                        terms.append(math.log(w) + left[l, b, i] + right[l, b, j] if w > 0 else NEG_INF)
                out[l, b, k] = ref_logsumexp(terms)
    return out


def _simplex(rng, shape, dim):
    w = rng.random(shape) + 0.05
    return w / w.sum(dim, keepdims=True)


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("chunk_elements", BOTH_PATHS)
def test_log_einsum_exp_equals_naive_loops(special, monkeypatch, chunk_elements):
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(0)
    L, B, K = 3, 4, 3
    left, right = _children(rng, L, B, K, special)
    weight = _simplex(rng, (L, K * K, K), 1)
    weight[1, 4, 2] = 0.0  # a zero weight is allowed (log 0 = -inf term)
    weight[1, :, 2] /= weight[1, :, 2].sum()
    got = _einsum(left, right, weight)
    expected = naive_einsum(left, right, weight)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)
    if special:
        assert np.isneginf(got[0, 0]).all() and np.isneginf(got[1, 2]).all()
        assert np.isfinite(got[1, 1]).all() and np.isfinite(got[2, 3]).all()
        np.testing.assert_allclose(got[2, 3], expected[2, 3], rtol=1e-14)  # about -3000, not -inf
        assert (got[2, 3] < -2900).all()


@pytest.mark.parametrize("chunk_elements", BOTH_PATHS)
def test_log_einsum_exp_rectangular_output_and_float32(monkeypatch, chunk_elements):
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(1)
    left, right = _random_inputs(rng, 2, 3, 4, shift=-500.0)
    weight = _simplex(rng, (2, 16, 5), 1)
    expected = naive_einsum(left, right, weight)
    got64 = _einsum(left, right, weight)
    np.testing.assert_allclose(got64, expected, rtol=1e-12)
    got32 = _einsum(left, right, weight, dtype=torch.float32)
    np.testing.assert_allclose(got32, expected, rtol=1e-5)


@pytest.mark.parametrize("chunk_elements", BOTH_PATHS)
def test_log_einsum_exp_gradients_finite_with_partial_neg_inf(monkeypatch, chunk_elements):
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    """EM reads expected counts off gradients: -inf entries must not make them NaN."""
    rng = np.random.default_rng(2)
    left, right = _random_inputs(rng, 2, 3, 3)
    left[0, 1, 0] = NEG_INF
    right[1, 2, [1, 2]] = NEG_INF
    # batch-last layout: (L, K, B) children, (L, K_out, K*K) weights
    lt = torch.tensor(np.swapaxes(left, 1, 2), requires_grad=True)
    rt = torch.tensor(np.swapaxes(right, 1, 2), requires_grad=True)
    wt = torch.tensor(_simplex(rng, (2, 3, 9), 2), requires_grad=True)
    out = log_einsum_exp(lt, rt, wt)
    assert torch.isfinite(out).all()
    out.sum().backward()
    for g in (lt.grad, rt.grad, wt.grad):
        assert torch.isfinite(g).all()
    assert lt.grad[0, 0, 1] == 0.0  # a zero-probability child gets no posterior mass
    # the posterior over (i, j) of one output sums to one: sum_ij w * d out / d w = 1
    w = wt.detach().clone().requires_grad_(True)
    log_einsum_exp(lt.detach(), rt.detach(), w)[0, 1, 0].backward()
    np.testing.assert_allclose(float((w.detach() * w.grad).sum()), 1.0, rtol=1e-12)


def _outer_product_reference(left, right, weight):
    """The plain autograd graph the custom function replaces: exp, outer product, bmm, log."""
    L, K, B = left.shape
    max_left = left.detach().amax(1, keepdim=True)
    max_right = right.detach().amax(1, keepdim=True)
    outer = (torch.exp(left - max_left).unsqueeze(2) * torch.exp(right - max_right).unsqueeze(1)).reshape(L, K * K, B)
    return torch.log(torch.bmm(weight, outer)) + max_left + max_right


@pytest.mark.parametrize("chunk_elements", [1, 2 * 9 * 5, 2**20])
def test_log_einsum_exp_chunks_give_the_same_values_and_gradients(monkeypatch, chunk_elements):
    """1 partition per chunk, ragged chunks of 2 (5 = 2 + 2 + 1), and the plain
    graph used for a level that fits one chunk: all equal the reference."""
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(5)
    L, K, K_out, B = 5, 3, 4, 5
    left = torch.tensor(rng.normal(size=(L, K, B)) * 3, requires_grad=True)
    right = torch.tensor(rng.normal(size=(L, K, B)) * 3, requires_grad=True)
    weight = torch.tensor(_simplex(rng, (L, K_out, K * K), 2), requires_grad=True)
    upstream = torch.tensor(rng.normal(size=(L, K_out, B)))
    got = log_einsum_exp(left, right, weight)
    want = _outer_product_reference(left, right, weight)
    np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(), rtol=1e-13)
    for g, w in zip(
        torch.autograd.grad(got, [left, right, weight], upstream),
        torch.autograd.grad(want, [left, right, weight], upstream),
    ):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("which", [(True, True, True), (False, False, True), (True, False, False), (False, True, True)])
def test_log_einsum_exp_gradcheck(monkeypatch, which):
    """Finite differences, for any subset of inputs that needs a gradient, across chunks."""
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", 2 * 4 * 3)
    rng = np.random.default_rng(6)
    L, K, B = 3, 2, 3
    inputs = [
        torch.tensor(rng.normal(size=(L, K, B)), requires_grad=which[0]),
        torch.tensor(rng.normal(size=(L, K, B)), requires_grad=which[1]),
        torch.tensor(_simplex(rng, (L, 3, K * K), 2), requires_grad=which[2]),
    ]
    assert torch.autograd.gradcheck(log_einsum_exp, inputs)


@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("chunk_elements", BOTH_PATHS)
def test_log_einsum_exp_halves_equals_two_inputs(special, monkeypatch, chunk_elements):
    """One store holding the left children then the right ones: the same values and gradients."""
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(8)
    L, B, K = 3, 4, 3
    left, right = _children(rng, L, B, K, special)
    store = torch.tensor(np.swapaxes(np.concatenate([left, right]), 1, 2), requires_grad=True)  # (2L, K, B)
    weight = torch.tensor(_simplex(rng, (L, K, K * K), 2), requires_grad=True)
    upstream = torch.tensor(rng.normal(size=(L, K, B)))
    got = layers.log_einsum_exp_halves(store, weight)
    want = log_einsum_exp(store[:L], store[L:], weight)
    np.testing.assert_array_equal(got.detach().numpy(), want.detach().numpy())
    for g, w in zip(torch.autograd.grad(got, [store, weight], upstream), torch.autograd.grad(want, [store, weight], upstream)):
        assert torch.isfinite(g).all()  # also at an all -inf child vector, on either path
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=1e-12, atol=1e-300)


def test_tree_levels_take_the_halves_path():
    """A random binary tree orders every level's store as [left children, right children]."""
    X = np.random.default_rng(0).normal(size=(40, 16))
    model = EinsumNetworkDensity(structure="rat", depth=3, n_repetitions=1, n_sums=2, max_iter=1, tol=None, random_state=0).fit(X)
    assert model._circuit.children_are_halves == [False, True, True, True]


def test_exp_shifted_flushes_only_underflow():
    shift = torch.zeros(1)
    # kept: down to one nat above log(smallest normal); flushed to exactly 0 below
    for dtype, kept, flushed in ((torch.float32, -86.0, -86.5), (torch.float64, -707.0, -707.5)):
        t = torch.tensor([0.0, -1.0, kept, flushed, -1e4, NEG_INF], dtype=dtype)
        got = layers._exp_shifted(t, shift.to(dtype))
        np.testing.assert_allclose(got[:3].numpy(), np.exp(t[:3].numpy()), rtol=1e-6 if dtype == torch.float32 else 1e-15)
        assert got[2] > 0
        assert (got[3:] == 0).all()  # not a denormal


# --------------------------------------------------------------------------
# log_mix and log_root


def naive_mix(values, weight):
    M, P, B, K = values.shape
    out = np.empty((M, B, K))
    for m in range(M):
        for b in range(B):
            for k in range(K):
                out[m, b, k] = ref_logsumexp(
                    [math.log(weight[m, p, k]) + values[m, p, b, k] for p in range(P) if weight[m, p, k] > 0]
                )
    return out


def test_log_mix_equals_naive_loops():
    rng = np.random.default_rng(3)
    M, P, B, K = 3, 3, 4, 2
    values = rng.normal(size=(M, P, B, K)) * 4
    weight = _simplex(rng, (M, P, K), 1)
    # region 0 has only 2 partitions: padding is -inf with weight 0
    values[0, 2] = NEG_INF
    weight[0, 2] = 0.0
    weight[0] /= weight[0].sum(0, keepdims=True)
    values[1, :, 1, 0] = NEG_INF  # every partition -inf: -inf
    values[1, 0, 2, 1] = NEG_INF  # one partition -inf: finite
    values[2, :, 3] -= 1500.0
    values[2, 1, 0] += 900.0
    got = _mix(values, weight)
    expected = naive_mix(values, weight)
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    assert np.isneginf(got[1, 1, 0]) and np.isfinite(got[1, 2, 1])
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=1e-12, atol=1e-12)


def test_log_root_equals_naive_loops():
    rng = np.random.default_rng(4)
    B, K = 6, 4
    values = rng.normal(size=(B, K)) * 5
    values[0] = NEG_INF
    values[1, :3] = NEG_INF
    values[2] -= 3000.0
    values[3] += 700.0
    weight = _simplex(rng, (K,), 0)
    got = _root(values, weight)
    expected = np.array([ref_logsumexp([math.log(weight[k]) + values[b, k] for k in range(K)]) for b in range(B)])
    assert np.isneginf(got[0]) and not np.isnan(got).any()
    np.testing.assert_allclose(got[1:], expected[1:], rtol=1e-13)


# --------------------------------------------------------------------------
# A whole compiled circuit against a naive recursive evaluation


@pytest.mark.parametrize(
    "leaf, n_states, n_features, params",
    [
        ("bernoulli", 2, 4, dict(structure="hand4")),
        ("categorical", 3, 5, dict(structure="hand5")),
        ("binomial", 3, 6, dict(structure="pd", image_shape=(2, 3), pd_delta=1)),
        ("bernoulli", 2, 7, dict(structure="rat", depth=2, n_repetitions=3)),
        ("gaussian", None, 5, dict(structure="hand5", min_var=0.3, max_var=2.0)),
    ],
)
def test_circuit_equals_naive_recursive_evaluation(leaf, n_states, n_features, params):
    if params.get("structure") == "hand4":
        params = {**params, "structure": hand_built_graph()}
    elif params.get("structure") == "hand5":
        params = {**params, "structure": hand_built_graph_5()}
    if leaf == "gaussian":
        rng = np.random.default_rng(0)
        Xtrain = rng.normal(size=(100, n_features)) * 2
        model = EinsumNetworkDensity(
            leaf="gaussian", n_sums=3, max_iter=3, batch_size=None, tol=None, early_stopping=False, dtype="float64", random_state=0, **params
        ).fit(Xtrain)
        X = rng.normal(size=(6, n_features)) * 2
    else:
        model, _ = fit_discrete(leaf, n_features, n_states, **params)
        X = random_data(6, n_features, n_states, np.random.default_rng(1))
    X[1, ::2] = np.nan
    X[2, :] = np.nan
    X[3, 0] = np.nan
    circuit = model._circuit
    expected = naive_circuit_log_prob(circuit, model.params_, X)
    np.testing.assert_allclose(model.score_samples(X), expected, rtol=1e-11, atol=1e-12)
    got = circuit.log_prob(torch.tensor(X), model.params_).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("optimizer, batch_size", [("em", 40), ("adam", 40), ("em", None)])
def test_fits_through_the_chunked_layer_equal_fits_through_plain_ops(monkeypatch, rng, optimizer, batch_size):
    """Whole training runs (stochastic EM, Adam, full-batch EM) take the same
    path through either implementation of the einsum layer."""
    X = rng.normal(size=(120, 8))
    params = dict(structure="rat", n_sums=3, n_repetitions=2, depth=2, max_iter=3, tol=None, random_state=0, dtype="float64",
                  optimizer=optimizer, batch_size=batch_size)
    plain = EinsumNetworkDensity(**params).fit(X)  # these levels fit one chunk: plain autograd ops
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", 1)  # every level through the custom function
    chunked = EinsumNetworkDensity(**params).fit(X)
    np.testing.assert_allclose(chunked.score_samples(X), plain.score_samples(X), rtol=1e-10)
    for got, want in zip(chunked.params_.tensors(), plain.params_.tensors()):
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-8, atol=1e-12)
