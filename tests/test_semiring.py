"""The layers in both semirings against naive references (Python loops in
float64), and their gradients where an output is -inf, on every path."""

import math

import numpy as np
import pytest
import torch

from skpc.backend import layers
from skpc.backend.layers import (
    log_einsum_exp,
    log_einsum_exp_halves,
    log_hadamard_exp,
    log_hadamard_exp_halves,
    log_matmul_exp,
    log_mix,
    log_root,
)

from conftest import ref_logsumexp

NEG_INF = float("-inf")
SEMIRINGS = ["sum", "max"]


def _reduce(terms, semiring):
    """log-sum-exp or max of a list of log-terms; -inf for none."""
    if semiring == "sum":
        return ref_logsumexp(terms)
    return max(terms, default=NEG_INF)


def _log(w):
    return math.log(w) if w > 0 else NEG_INF


def _simplex(rng, shape, dim):
    w = rng.random(shape) + 0.05
    return w / w.sum(dim, keepdims=True)


def _t(a, requires_grad=False):
    return torch.tensor(a, dtype=torch.float64, requires_grad=requires_grad)


def _assert_same_log_values(got, expected, rtol=1e-12):
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else got
    assert not np.isnan(got).any()
    np.testing.assert_array_equal(np.isneginf(got), np.isneginf(expected))
    finite = np.isfinite(expected)
    np.testing.assert_allclose(got[finite], expected[finite], rtol=rtol, atol=1e-12)


# --------------------------------------------------------------------------
# Naive references: one output at a time, every term listed


def naive_matmul(log_x, weight, semiring):
    """log_x (L, N, B), weight (L, M, N) -> (L, M, B)."""
    L, N, B = log_x.shape
    M = weight.shape[1]
    out = np.empty((L, M, B))
    for l in range(L):
        for m in range(M):
            for b in range(B):
                terms = [_log(weight[l, m, n]) + log_x[l, n, b] for n in range(N)]
                out[l, m, b] = _reduce(terms, semiring)
    return out


def naive_einsum(left, right, weight, semiring):
    """left, right (L, K, B), weight (L, K_out, K*K) -> (L, K_out, B)."""
    L, K, B = left.shape
    out = np.empty((L, weight.shape[1], B))
    for l in range(L):
        for k in range(weight.shape[1]):
            for b in range(B):
                terms = [
                    _log(weight[l, k, i * K + j]) + left[l, i, b] + right[l, j, b] for i in range(K) for j in range(K)
                ]
                out[l, k, b] = _reduce(terms, semiring)
    return out


def naive_hadamard(left, right, weight, semiring):
    """left, right (L, K, B), weight (L, K_out, K) -> (L, K_out, B)."""
    L, K, B = left.shape
    out = np.empty((L, weight.shape[1], B))
    for l in range(L):
        for k in range(weight.shape[1]):
            for b in range(B):
                terms = [_log(weight[l, k, i]) + left[l, i, b] + right[l, i, b] for i in range(K)]
                out[l, k, b] = _reduce(terms, semiring)
    return out


def naive_mix(values, weight, semiring):
    """values (M, P, K, B), weight (M, P, K) -> (M, K, B)."""
    M, P, K, B = values.shape
    out = np.empty((M, K, B))
    for m in range(M):
        for k in range(K):
            for b in range(B):
                out[m, k, b] = _reduce([_log(weight[m, p, k]) + values[m, p, k, b] for p in range(P)], semiring)
    return out


def _log_values(rng, shape, scale=3.0):
    """Random log-values with -inf entries, an all -inf column (axis 1) and
    entries far apart (exp would under- and overflow without the shift)."""
    x = rng.normal(size=shape) * scale
    x[0, :, 0] = NEG_INF  # a whole input vector at -inf: its outputs are -inf
    x[0, 1, 1] = NEG_INF  # partially -inf: finite outputs
    x[-1, :, -1] -= 2000.0
    x[-1, 0, -1] += 900.0
    return x


# --------------------------------------------------------------------------
# log_matmul_exp


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_log_matmul_exp_equals_naive_loops(semiring):
    rng = np.random.default_rng(0)
    L, N, M, B = 3, 4, 5, 3
    log_x = _log_values(rng, (L, N, B))
    weight = _simplex(rng, (L, M, N), 2)
    weight[1, 2, 3] = 0.0  # a zero weight is a -inf term
    # row m = 4 of l = 2 weighs input 3 only, which is -inf at b = 2: an
    # output at -inf although the other inputs of that column are finite
    weight[2, 4, :] = [0.0, 0.0, 0.0, 1.0]
    log_x[2, 3, 2] = NEG_INF
    expected = naive_matmul(log_x, weight, semiring)
    assert np.isneginf(expected[2, 4, 2]) and np.isneginf(expected[0, :, 0]).all()
    _assert_same_log_values(log_matmul_exp(_t(log_x), _t(weight), semiring), expected)
    # float32: the shift keeps the -2000 column finite
    got32 = log_matmul_exp(_t(log_x).float(), _t(weight).float(), semiring)
    _assert_same_log_values(got32.double(), expected, rtol=1e-5)


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_log_matmul_exp_broadcast_weight_and_two_dimensional_form(semiring):
    """A (M, N) weight shared by all L; (N, B) log-values with an (M, N)
    weight, the HMM forward step: each equals the (L, M, N) form."""
    rng = np.random.default_rng(1)
    L, N, M, B = 3, 4, 2, 5
    log_x = _log_values(rng, (L, N, B))
    weight = _simplex(rng, (M, N), 1)
    expected = naive_matmul(log_x, np.broadcast_to(weight, (L, M, N)), semiring)
    got = log_matmul_exp(_t(log_x), _t(weight), semiring)
    assert got.shape == (L, M, B)
    _assert_same_log_values(got, expected)
    for l in range(L):
        got2 = log_matmul_exp(_t(log_x[l]), _t(weight), semiring)
        assert got2.shape == (M, B)
        _assert_same_log_values(got2, expected[l])


def test_log_matmul_exp_sum_equals_torch_logsumexp():
    rng = np.random.default_rng(2)
    log_x = _t(rng.normal(size=(4, 6, 7)) * 10)
    weight = _t(_simplex(rng, (4, 3, 6), 2))
    expected = torch.logsumexp(torch.log(weight).unsqueeze(-1) + log_x.unsqueeze(1), dim=2)
    np.testing.assert_allclose(log_matmul_exp(log_x, weight).numpy(), expected.numpy(), rtol=1e-13)


@pytest.mark.parametrize("budget", [1, 2 * 6 * 7 + 1, 2**22])
def test_max_semiring_chunks_give_the_same_values(monkeypatch, budget):
    """One (l, m) row per chunk, ragged chunks of 2 rows of M (M = 5), and
    everything in one chunk: the same maxima, exactly, also with gradients on."""
    rng = np.random.default_rng(3)
    log_x = _log_values(rng, (3, 6, 7))
    weight = _simplex(rng, (3, 5, 6), 2)
    expected = naive_matmul(log_x, weight, "max")
    monkeypatch.setattr(layers, "MAX_PRODUCT_CHUNK_ELEMENTS", budget)
    got = log_matmul_exp(_t(log_x), _t(weight), "max")
    _assert_same_log_values(got, expected, rtol=0)
    with_grad = log_matmul_exp(_t(log_x, True), _t(weight, True), "max")
    np.testing.assert_array_equal(with_grad.detach().numpy(), got.numpy())


@pytest.mark.parametrize(
    "call",
    [
        lambda s: log_matmul_exp(torch.zeros(2, 3), torch.ones(2, 2), s),
        lambda s: log_einsum_exp(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2, 4), s),
        lambda s: log_einsum_exp_halves(torch.zeros(2, 2, 3), torch.ones(1, 2, 4), s),
        lambda s: log_hadamard_exp(torch.zeros(1, 2, 3), torch.zeros(1, 2, 3), torch.ones(1, 2, 2), s),
        lambda s: log_mix(torch.zeros(1, 2, 2, 3), torch.ones(1, 2, 2), s),
        lambda s: log_root(torch.zeros(2, 3), torch.ones(2), s),
    ],
)
def test_unknown_semiring_is_a_clear_error(call):
    with pytest.raises(ValueError, match="semiring='min' is not supported: use 'sum'.*or 'max'"):
        call("min")


# --------------------------------------------------------------------------
# Partition layers, mixing, root


def _children(rng, L, K, B):
    left = rng.normal(size=(L, K, B)) * 3
    right = rng.normal(size=(L, K, B)) * 3
    left[0, :, 0] = NEG_INF  # an all -inf child vector: every output of (l=0, b=0) is -inf
    right[1, :, 2] = NEG_INF
    left[1, 1, 0] = NEG_INF  # partially -inf
    right[2, 0, [0, 2]] = NEG_INF
    left[2, :, 1] -= 1000.0
    right[2, :, 1] -= 2000.0
    return left, right


@pytest.mark.parametrize("chunk_elements", [2**20, 1])
def test_log_einsum_exp_max_semiring_equals_brute_force(monkeypatch, chunk_elements):
    monkeypatch.setattr(layers, "MAX_PRODUCT_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(4)
    L, K, K_out, B = 3, 3, 4, 3
    left, right = _children(rng, L, K, B)
    weight = _simplex(rng, (L, K_out, K * K), 2)
    weight[1, 0, 4] = 0.0
    expected = naive_einsum(left, right, weight, "max")
    assert np.isneginf(expected[0, :, 0]).all() and np.isfinite(expected[2, :, 1]).all()
    _assert_same_log_values(log_einsum_exp(_t(left), _t(right), _t(weight), "max"), expected)
    store = _t(np.concatenate([left, right]))
    _assert_same_log_values(log_einsum_exp_halves(store, _t(weight), "max"), expected)


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_log_hadamard_exp_equals_naive_loops(semiring):
    rng = np.random.default_rng(5)
    L, K, K_out, B = 3, 4, 3, 3
    left, right = _children(rng, L, K, B)
    weight = _simplex(rng, (L, K_out, K), 2)
    weight[2, 1, 3] = 0.0
    expected = naive_hadamard(left, right, weight, semiring)
    assert np.isneginf(expected[0, :, 0]).all() and np.isneginf(expected[1, :, 2]).all()
    assert np.isfinite(expected[2, :, 1]).all() and (expected[2, :, 1] < -2900).all()
    _assert_same_log_values(log_hadamard_exp(_t(left), _t(right), _t(weight), semiring), expected)
    store = _t(np.concatenate([left, right]))
    _assert_same_log_values(log_hadamard_exp_halves(store, _t(weight), semiring), expected)


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_log_hadamard_exp_gradcheck(semiring):
    """Finite differences in float64 (no ties, so the max semiring is
    differentiable at these points)."""
    rng = np.random.default_rng(6)
    L, K, K_out, B = 2, 3, 2, 3
    inputs = (
        _t(rng.normal(size=(L, K, B)), True),
        _t(rng.normal(size=(L, K, B)), True),
        _t(_simplex(rng, (L, K_out, K), 2), True),
    )
    assert torch.autograd.gradcheck(lambda l, r, w: log_hadamard_exp(l, r, w, semiring), inputs)


def test_log_einsum_exp_max_semiring_gradcheck():
    rng = np.random.default_rng(7)
    L, K, B = 2, 2, 3
    inputs = (
        _t(rng.normal(size=(L, K, B)), True),
        _t(rng.normal(size=(L, K, B)), True),
        _t(_simplex(rng, (L, 3, K * K), 2), True),
    )
    assert torch.autograd.gradcheck(lambda l, r, w: log_einsum_exp(l, r, w, "max"), inputs)


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_log_mix_and_log_root_equal_naive_loops(semiring):
    rng = np.random.default_rng(8)
    M, P, K, B = 3, 3, 2, 4
    values = rng.normal(size=(M, P, K, B)) * 4
    weight = _simplex(rng, (M, P, K), 1)
    values[0, 2] = NEG_INF  # region 0 has 2 partitions: padding at -inf, weight 0
    weight[0, 2] = 0.0
    values[1, :, 0, 1] = NEG_INF  # every partition -inf
    values[2, :, 1, 3] -= 1500.0
    expected = naive_mix(values, weight, semiring)
    assert np.isneginf(expected[1, 0, 1]) and np.isfinite(expected[0]).all()
    _assert_same_log_values(log_mix(_t(values), _t(weight), semiring), expected)

    root_values = rng.normal(size=(5, B)) * 4  # (K, B)
    root_values[:, 0] = NEG_INF
    root_values[1, 1] = NEG_INF
    root_weight = _simplex(rng, (5,), 0)
    expected_root = naive_matmul(root_values[None], root_weight[None, None], semiring)[0, 0]
    assert np.isneginf(expected_root[0]) and np.isfinite(expected_root[1:]).all()
    _assert_same_log_values(log_root(_t(root_values), _t(root_weight), semiring), expected_root)


# --------------------------------------------------------------------------
# Gradients where an output is -inf: 0 for what reaches only -inf outputs,
# and finite, on every path. The reference gradient is that of a torch
# logsumexp / amax over all terms, with the -inf outputs left out of the loss
# (they are where torch's own gradients are NaN).


def _reference_gradients(terms_fn, inputs, upstream, semiring):
    """Output and gradients of sum(upstream * out) over the finite outputs of
    a plain torch implementation, ``terms_fn(*inputs)`` (..., n_terms, B)
    reduced over its n_terms axis."""
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    terms = terms_fn(*inputs)
    dead = torch.isneginf(terms.detach()).all(-2, keepdim=True)  # the outputs at -inf
    terms = terms.masked_fill(dead, 0.0)  # keeps torch's NaN (exp(-inf + inf)) out of their gradient
    out = torch.logsumexp(terms, -2) if semiring == "sum" else terms.amax(-2)
    live = ~dead.squeeze(-2)
    (upstream[live] * out[live]).sum().backward()
    return out.detach().masked_fill(~live, NEG_INF), [x.grad for x in inputs]


def _check_gradients_at_neg_inf(layer, terms_fn, inputs, semiring, seed=0):
    inputs = [x.detach().clone().requires_grad_() for x in inputs]
    out = layer(*inputs)
    upstream = _upstream(out, seed)  # nonzero at the -inf outputs too
    want_out, want_grads = _reference_gradients(terms_fn, inputs, upstream, semiring)
    assert torch.isneginf(out).any(), "the test needs an output at -inf"
    np.testing.assert_array_equal(torch.isneginf(out).numpy(), torch.isneginf(want_out).numpy())
    np.testing.assert_allclose(out.detach().numpy(), want_out.numpy(), rtol=1e-12)
    grads = torch.autograd.grad(out, inputs, upstream)
    for got, want in zip(grads, want_grads):
        assert torch.isfinite(got).all()
        np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-10, atol=1e-13)
    return grads


def _upstream(out, seed):
    return torch.tensor(np.random.default_rng(seed).normal(size=out.shape)) + 2.0


def _einsum_terms(left, right, weight):
    # (L, K_out, K*K, 1) + (L, 1, K*K, B), entry i*K + j
    pairs = (left.unsqueeze(2) + right.unsqueeze(1)).flatten(1, 2)
    return torch.log(weight).unsqueeze(-1) + pairs.unsqueeze(1)


def _grad_inputs(rng, L=3, K=3, B=4):
    left, right = _children(rng, L, K, B)
    return _t(left), _t(right)


@pytest.mark.parametrize("chunk_elements", [2**20, 1])  # plain autograd ops; chunked custom function
@pytest.mark.parametrize("halves", [False, True])
def test_einsum_gradients_at_neg_inf_outputs(monkeypatch, chunk_elements, halves):
    monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", chunk_elements)
    rng = np.random.default_rng(9)
    left, right = _grad_inputs(rng)
    weight = _t(_simplex(rng, (3, 2, 9), 2))
    if halves:
        L = left.shape[0]
        layer = lambda store, w: log_einsum_exp_halves(store, w)
        terms = lambda store, w: _einsum_terms(store[:L], store[L:], w)
        inputs = [torch.cat([left, right]), weight]
    else:
        layer, terms, inputs = log_einsum_exp, _einsum_terms, [left, right, weight]
    grads = _check_gradients_at_neg_inf(layer, terms, inputs, "sum")
    # the right child of (l=0, b=0) reaches only -inf outputs: no gradient at all
    grad_right = grads[0][3:] if halves else grads[1]
    assert (grad_right[0, :, 0] == 0).all()
    assert (grads[-1] != 0).any()


def test_einsum_gradients_at_neg_inf_agree_between_paths(monkeypatch):
    rng = np.random.default_rng(10)
    left, right = _grad_inputs(rng)
    weight = _t(_simplex(rng, (3, 2, 9), 2))
    grads = {}
    for budget in (2**20, 1):
        monkeypatch.setattr(layers, "CPU_CHUNK_ELEMENTS", budget)
        inputs = [x.clone().requires_grad_() for x in (left, right, weight)]
        out = log_einsum_exp(*inputs)
        grads[budget] = torch.autograd.grad(out, inputs, _upstream(out, 0))
    for plain, chunked in zip(grads[2**20], grads[1]):
        np.testing.assert_allclose(plain.numpy(), chunked.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_einsum_max_gradients_at_neg_inf_outputs(semiring):
    rng = np.random.default_rng(11)
    left, right = _grad_inputs(rng)
    weight = _t(_simplex(rng, (3, 2, 9), 2))
    layer = lambda l, r, w: log_einsum_exp(l, r, w, semiring)
    grads = _check_gradients_at_neg_inf(layer, _einsum_terms, [left, right, weight], semiring)
    assert (grads[1][0, :, 0] == 0).all()


def _hadamard_terms(left, right, weight):
    return torch.log(weight).unsqueeze(-1) + (left + right).unsqueeze(1)  # (L, K_out, K, B)


@pytest.mark.parametrize("semiring", SEMIRINGS)
@pytest.mark.parametrize("halves", [False, True])
def test_hadamard_gradients_at_neg_inf_outputs(semiring, halves):
    rng = np.random.default_rng(12)
    left, right = _grad_inputs(rng)
    weight = _t(_simplex(rng, (3, 2, 3), 2))
    if halves:
        layer = lambda store, w: log_hadamard_exp_halves(store, w, semiring)
        terms = lambda store, w: _hadamard_terms(store[:3], store[3:], w)
        inputs = [torch.cat([left, right]), weight]
    else:
        layer = lambda l, r, w: log_hadamard_exp(l, r, w, semiring)
        terms, inputs = _hadamard_terms, [left, right, weight]
    grads = _check_gradients_at_neg_inf(layer, terms, inputs, semiring)
    grad_right = grads[0][3:] if halves else grads[1]
    assert (grad_right[0, :, 0] == 0).all()


@pytest.mark.parametrize("semiring", SEMIRINGS)
@pytest.mark.parametrize("form", ["batched", "broadcast", "2d"])
def test_matmul_gradients_at_neg_inf_outputs(semiring, form):
    rng = np.random.default_rng(13)
    log_x = _t(_log_values(rng, (3, 4, 5)))
    weight = _t(_simplex(rng, (3, 2, 4), 2))
    if form == "broadcast":
        weight = weight[0]
    elif form == "2d":
        log_x, weight = log_x[0], weight[0]
    terms = lambda x, w: torch.log(w).unsqueeze(-1) + x.unsqueeze(-3)  # (..., M, N, B)
    layer = lambda x, w: log_matmul_exp(x, w, semiring)
    grads = _check_gradients_at_neg_inf(layer, terms, [log_x, weight], semiring)
    grad_x = grads[0] if form == "2d" else grads[0][0]  # (N, B), column 0 all -inf
    assert (grad_x[:, 0] == 0).all()


@pytest.mark.parametrize("semiring", SEMIRINGS)
def test_mix_and_root_gradients_at_neg_inf_outputs(semiring):
    rng = np.random.default_rng(14)
    values = rng.normal(size=(2, 3, 2, 4))
    values[1, :, 0, 2] = NEG_INF  # every partition of (m=1, k=0, b=2)
    values[0, 2] = NEG_INF  # one partition -inf everywhere: finite outputs
    weight = _simplex(rng, (2, 3, 2), 1)
    mix = lambda v, w: log_mix(v, w, semiring)
    mix_terms = lambda v, w: (torch.log(w).unsqueeze(-1) + v).transpose(1, 2)  # (M, K, P, B), reduced over P
    grads = _check_gradients_at_neg_inf(mix, mix_terms, [_t(values), _t(weight)], semiring)
    assert (grads[0][1, :, 0, 2] == 0).all()

    root_values = _t(values[1, 1])  # (K=2, B=4), column 3 made all -inf
    root_values[:, 3] = NEG_INF
    root_weight = _t(_simplex(rng, (2,), 0))
    root = lambda v, w: log_root(v, w, semiring)
    root_terms = lambda v, w: torch.log(w).unsqueeze(-1) + v  # (K, B), reduced over K
    grads = _check_gradients_at_neg_inf(root, root_terms, [root_values, root_weight], semiring)
    assert (grads[0][:, 3] == 0).all()
