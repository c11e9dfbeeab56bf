"""The inner layers of an Einsum Network (einsum, Hadamard, mixing, root), as functions of tensors.

Every layer is a contraction with linear-domain weights in one of two
semirings, chosen by a ``semiring`` argument:

- ``"sum"``: log sum_n W[m, n] exp(x[n]), the likelihood. Computed with the
  log-einsum-exp trick (Peharz et al. 2020, section 3.2): subtract the
  per-vector maximum, exponentiate, contract with the weights, take the log,
  add the maxima back.
- ``"max"``: max_n log W[m, n] + x[n], the max-product (Viterbi) semiring of
  MPE. Its gradient goes to one maximizing term per output.

``log_matmul_exp`` is the primitive; the partition layers (``log_einsum_exp``,
Tucker; ``log_hadamard_exp``, CP), ``log_mix`` and ``log_root`` are its
special cases, some with their own tuned paths.

A vector that is all -inf (a zero-probability region) yields -inf, never NaN,
and an output at -inf passes no gradient down: every input that reaches only
-inf outputs gets gradient 0, on every path.
"""

import math

import torch
from torch.autograd.function import once_differentiable


def _finite_max(t, dim):
    """Max over ``dim`` (kept), detached, and never -inf.

    The shift cancels exactly in the result, so it carries no gradient. An
    all -inf vector gets the finite shift -1e30 instead of -inf, so that
    ``t - shift`` is -inf (not NaN) and the layer's output is -inf.
    """
    return t.detach().amax(dim, keepdim=True).clamp_min(-1e30)


SEMIRINGS = ("sum", "max")


def _check_semiring(semiring):
    if semiring not in SEMIRINGS:
        raise ValueError(
            f"semiring={semiring!r} is not supported: use 'sum' (log-sum-exp: likelihoods, "
            "marginals, EM) or 'max' (max-product: MPE, Viterbi)."
        )


class _LogPlus(torch.autograd.Function):
    """log(p) + shift, whose gradient is 0 where p = 0 instead of g / 0.

    An output at -inf (p = 0: every term is zero) would otherwise send an
    infinite gradient into the contraction below, where inf times the zero
    entries of the other factor is NaN: in the weights' gradient and in every
    child of that output. The chunked ``_LogEinsumExp`` does the same in its
    backward pass. ``shift`` (detached, broadcast onto p) gets no gradient.
    """

    @staticmethod
    def forward(ctx, prob, shift):
        ctx.save_for_backward(prob)
        out = torch.log(prob)
        return out if shift is None else out.add_(shift)

    @staticmethod
    def backward(ctx, grad):
        (prob,) = ctx.saved_tensors
        return _log_grad(grad, prob), None


def _log_plus(prob, shift=None):
    """``log(prob) + shift`` with gradient 0 at ``prob == 0`` (see ``_LogPlus``)."""
    if torch.is_grad_enabled() and prob.requires_grad:
        return _LogPlus.apply(prob, shift)
    out = torch.log(prob)  # no graph to protect: skip the custom function's Python overhead
    return out if shift is None else out.add_(shift)


def _log_grad(grad, prob):
    """grad / prob, the gradient through log(prob), with 0 where prob = 0.

    There grad / 0 is +-inf or NaN; elsewhere the quotient is finite (prob is
    at least the weight on the largest input, whose scaled value is 1: it is
    subnormal only if that weight is zero or subnormal and every other term
    tiny). So zeroing the non-finite quotients is the mask, in one vectorized
    pass: ``torch.where(prob > 0, grad / prob, 0)`` costs four times more on
    a CPU (the comparison alone is slower than the division). Every path of
    every layer uses this one, so that they agree.
    """
    return (grad / prob).nan_to_num_(0.0, 0.0, 0.0)


def _no_gradient_at_neg_inf(out):
    """``out``, with no gradient passed down from its -inf entries.

    In the max semiring an output at -inf has only -inf candidates, one of
    which would get the gradient: cut there, as the sum semiring does.
    """
    if not out.requires_grad:
        return out
    return out.masked_fill(out.detach() == float("-inf"), float("-inf"))


# Elements of one chunk's outer product (K*K*B floats) on the CPU: small
# enough that it stays in the shared cache between being written and being
# read by the matmul (32 MiB L3, 1 MiB L2 per core on the development
# machine; 2^18 to 2^20 measured fastest there).
CPU_CHUNK_ELEMENTS = 2**20


def _exp_shifted(t, shift):
    """exp(t - shift), with results below e times the smallest normal number flushed to 0.

    torch's vectorized exp takes a path about ten times slower for inputs
    whose result underflows (including -inf), and log-densities of K
    components routinely lie hundreds of nats apart. Clamping the input and
    zeroing those entries afterwards gives the same result up to the flushed
    denormals, and exact zeros where t is -inf.
    """
    z = t - shift
    # one nat above the smallest normal: exp right at log(tiny) is itself 40x slow
    lowest = math.log(torch.finfo(z.dtype).tiny) + 1.0
    underflow = z < lowest
    return z.clamp_min_(lowest).exp_().masked_fill_(underflow, 0.0)


class _LogEinsumExp(torch.autograd.Function):
    """S[l, k, b] = log sum_ij W[l, k, ij] exp(N[l, i, b] + N'[l, j, b]).

    With a = exp(N - max N), c = exp(N' - max N') and the bilinear form
    P = sum_ij W[k, ij] a[i] c[j], S = log P + max N + max N'. Its gradients:
    dS/dW[k, ij] = a[i] c[j] / P[k], dS/dN[i] = a[i] sum_kj W[k, ij] c[j] / P[k]
    (and symmetrically for N'): the shifts cancel.

    Why a custom function: the obvious autograd graph (outer product, then
    bmm) stores the (L, K*K, B) outer product for the backward pass and makes
    three more passes over tensors of that size for the broadcasting
    multiply's gradient, all through main memory; at K=40 those elementwise
    passes cost as much as the matmuls. Here the outer product is built a
    chunk of partitions at a time into one reused buffer (a fresh multi-MiB
    tensor per chunk costs more in page faults than the multiply), consumed
    by the matmul while still in cache, and rebuilt in the backward pass
    instead of stored. Nothing of size K*K*B outlives the call.
    """

    @staticmethod
    def forward(ctx, left, right, weight, rows):
        # left, right (L, K, B); weight (L, K_out, K*K) -> (L, K_out, B)
        L, K, B = left.shape
        max_left = _finite_max(left, 1)  # (L, 1, B)
        max_right = _finite_max(right, 1)
        a = _exp_shifted(left, max_left)
        c = _exp_shifted(right, max_right)
        prob = a.new_empty(L, weight.shape[1], B)
        outer = a.new_empty(min(rows, L), K, K, B)
        for s in range(0, L, rows):
            e = slice(s, s + rows)
            torch.bmm(weight[e], _outer(a[e], c[e], outer), out=prob[e])
        ctx.save_for_backward(a, c, weight, prob)
        ctx.rows = rows
        return torch.log(prob) + (max_left + max_right)

    @staticmethod
    @once_differentiable  # EM and Adam need first derivatives only
    def backward(ctx, grad):
        a, c, weight, prob = ctx.saved_tensors
        need_left, need_right, need_w = ctx.needs_input_grad[:3]
        L, K, B = a.shape
        rows = ctx.rows
        # dS/dP = 1 / P; an output at -inf (P = 0) passes no gradient down
        grad = _log_grad(grad, prob)  # (L, K_out, B)
        grad_a = torch.empty_like(a) if need_left else None
        grad_c = torch.empty_like(c) if need_right else None
        grad_w = torch.empty_like(weight) if need_w else None
        buffer = a.new_empty(min(rows, L), K, K, B)  # the outer product, then its gradient
        product = torch.empty_like(buffer) if need_left or need_right else None
        for s in range(0, L, rows):
            e = slice(s, s + rows)
            n = a[e].shape[0]
            g = grad[e]  # (n, K_out, B)
            if need_w:  # g @ outer^T: (n, K_out, B) @ (n, B, K*K)
                torch.bmm(g, _outer(a[e], c[e], buffer).transpose(1, 2), out=grad_w[e])
            if need_left or need_right:
                # gradient of the outer product: W^T @ g, (n, K*K, B) viewed as (n, K, K, B)
                grad_outer = buffer[:n]
                torch.bmm(weight[e].transpose(1, 2), g, out=grad_outer.view(n, K * K, B))
                if need_left:  # sum_j dO[i, j] c[j]
                    torch.sum(torch.mul(grad_outer, c[e].unsqueeze(1), out=product[:n]), 2, out=grad_a[e])
                if need_right:  # sum_i dO[i, j] a[i]
                    torch.sum(torch.mul(grad_outer, a[e].unsqueeze(2), out=product[:n]), 1, out=grad_c[e])
        grad_left = grad_a.mul_(a) if need_left else None  # d a / d N = a
        grad_right = grad_c.mul_(c) if need_right else None
        return grad_left, grad_right, grad_w, None


def _outer(a, c, buffer):
    """(n, K, B) x (n, K, B) -> (n, K*K, B), entry [i*K + j] = a[i] * c[j], written into ``buffer``."""
    n, K, B = a.shape
    return torch.mul(a.unsqueeze(2), c.unsqueeze(1), out=buffer[:n]).view(n, K * K, B)


# --------------------------------------------------------------------------
# The primitive: a (batched) matrix product in the sum or max semiring


def log_matmul_exp(log_x, weight, semiring="sum"):
    """A linear layer on log-values: out = log(W @ exp(x)), in either semiring.

    "sum": out[l, m, b] = log sum_n W[l, m, n] exp(x[l, n, b])
    "max": out[l, m, b] = max_n log W[l, m, n] + x[l, n, b]

    Every other layer here is a special case: the Hadamard (CP) partition
    layer contracts the sum of two children, the root a single row of
    weights; the chain forward pass of an HMM (``log_x`` (N, B), ``weight``
    (M, N)) is one call per position. In the sum semiring
    ``w * d out / d w`` is the posterior of each term (EM's expected counts);
    in the max semiring the gradient goes to one maximizing n per output.

    Parameters
    ----------
    log_x : Tensor (L, N, B) or (N, B)
        Log-values, the batch last.
    weight : Tensor (L, M, N) or (M, N)
        Linear-domain, non-negative weights; a 2-D weight is shared by all L.
    semiring : {"sum", "max"}, default="sum"

    Returns
    -------
    Tensor (L, M, B), or (M, B) when both inputs are 2-D
        An output whose terms are all zero (all -inf column of ``log_x``,
        zero weights) is -inf, never NaN, and passes no gradient down.
    """
    _check_semiring(semiring)
    if semiring == "max":
        return _log_matmul_max(log_x, weight)
    shift = _finite_max(log_x, -2)  # (L, 1, B) or (1, B)
    # (L or 1, M, N) @ (L or 1, N, B) -> (L, M, B); a 2-D weight broadcasts over L
    prob = torch.matmul(weight, torch.exp(log_x - shift))
    return _log_plus(prob, shift)


def _log_matmul_max(log_x, weight):
    squeeze = log_x.dim() == 2 and weight.dim() == 2
    x = log_x if log_x.dim() == 3 else log_x.unsqueeze(0)  # (L or 1, N, B)
    log_w = _log_plus(weight)  # log 0 = -inf, with no NaN in its gradient
    w = log_w if log_w.dim() == 3 else log_w.unsqueeze(0)  # (L or 1, M, N)
    L = max(x.shape[0], w.shape[0])
    (_, N, B), M = x.shape, w.shape[1]
    x, w = x.expand(L, N, B), w.expand(L, M, N)  # views: a shared operand is not copied
    need_grad = torch.is_grad_enabled() and (log_x.requires_grad or weight.requires_grad)
    with torch.no_grad():
        out, index = _max_plus(w, lambda e: x[e], L, N, B, argmax=need_grad)  # (L, M, B) each
    if need_grad:
        # The winning terms again, now through autograd: each output's gradient
        # goes to its argmax only, and nothing of size M*N*B is kept for it.
        l, m, b = _grid(L, M, B, x.device)
        out = _no_gradient_at_neg_inf(w[l, m, index] + x[l, index, b])
    return out.squeeze(0) if squeeze else out


def _grid(L, M, B, device):
    """Index tensors (L, 1, 1), (1, M, 1), (B,) that broadcast to (L, M, B)."""
    return (
        torch.arange(L, device=device).view(L, 1, 1),
        torch.arange(M, device=device).view(1, M, 1),
        torch.arange(B, device=device),
    )


# Elements of one chunk's (n, M, N, B) candidate tensor in the max semiring.
MAX_PRODUCT_CHUNK_ELEMENTS = 2**22


def _max_plus(log_w, x_rows, L, N, B, argmax):
    """Max over n of log_w[l, m, n] + x[l, n, b], (L, M, B), and with
    ``argmax`` its argmax over n, (L, M, B) (else None).

    log_w (L, M, N), possibly a broadcast view; ``x_rows(e)`` gives x[e],
    (n, N, B), for a slice e of the L axis (built per chunk by the einsum
    layer). Every candidate is formed, a cache-sized chunk of (l, m) at a
    time: over L first, then over M when one l alone is too big (a wide HMM).
    The argmax only when asked: ``torch.max`` with indices is 2.5 times
    slower than ``amax`` on a CPU.
    """
    M = log_w.shape[1]
    out = log_w.new_empty(L, M, B)
    index = torch.empty(L, M, B, dtype=torch.long, device=log_w.device) if argmax else None
    m_rows = min(M, max(1, MAX_PRODUCT_CHUNK_ELEMENTS // (N * B)))
    l_rows = max(1, MAX_PRODUCT_CHUNK_ELEMENTS // (m_rows * N * B))
    for s in range(0, L, l_rows):
        e = slice(s, s + l_rows)
        x = x_rows(e).unsqueeze(1)  # (n, 1, N, B)
        for t in range(0, M, m_rows):
            f = slice(t, t + m_rows)
            candidates = log_w[e, f].unsqueeze(-1) + x  # (n, m, N, 1) + (n, 1, N, B) -> (n, m, N, B)
            if argmax:
                torch.max(candidates, dim=2, out=(out[e, f], index[e, f]))  # (n, m, B) each
            else:
                torch.amax(candidates, dim=2, out=out[e, f])
    return out, index


# --------------------------------------------------------------------------
# Partition layers: einsum (Tucker) and Hadamard (CP)


def log_einsum_exp(left, right, weight, semiring="sum"):
    """All partitions of one topological level in one contraction (Tucker layer).

    "sum": S[l, k, b] = log sum_ij W[l, k, ij] exp(N[l, i, b] + N'[l, j, b])
    "max": S[l, k, b] = max_ij log W[l, k, ij] + N[l, i, b] + N'[l, j, b]

    The batch is the last axis so that the contraction is a batched matmul
    with a wide output, (K_out, K*K) @ (K*K, B): several times faster on a
    CPU than the (B, K*K) @ (K*K, K_out) orientation for small K. In the sum
    semiring, levels whose outer products exceed a cache-sized chunk go
    through the chunked custom function on the CPU; the others, and
    everything on a GPU, through plain autograd ops. Both give the same
    values and gradients.

    Parameters
    ----------
    left, right : Tensor (L, K, B)
        Log-densities of each partition's two child regions.
    weight : Tensor (L, K_out, K*K)
        Linear-domain sum weights, each row summing to one over ij.
    semiring : {"sum", "max"}, default="sum"

    Returns
    -------
    Tensor (L, K_out, B)
    """
    _check_semiring(semiring)
    if semiring == "max":
        return _log_einsum_max(left, right, weight)
    L, K, B = left.shape
    if _uses_plain_ops(left):
        return _log_einsum_exp_autograd(left, right, weight)
    rows = max(1, CPU_CHUNK_ELEMENTS // (K * K * B))
    return _LogEinsumExp.apply(left, right, weight, rows)


def _uses_plain_ops(left):
    L, K, B = left.shape
    return left.device.type != "cpu" or L * K * K * B <= CPU_CHUNK_ELEMENTS


def log_einsum_exp_halves(children, weight, semiring="sum"):
    """``log_einsum_exp(children[:L], children[L:], weight, semiring)`` for a
    level whose left children are the first half of one store and the right
    children the second (a tree level, ordered so by ``CompiledCircuit``).

    The max shift and the exp are taken once over the whole store instead of
    once per half: at small K every op costs far more in dispatch than in
    arithmetic, so halving the op count of a level, forward and backward,
    is what counts there.

    children (2L, K, B), weight (L, K_out, K*K) -> (L, K_out, B)
    """
    L = children.shape[0] // 2
    if semiring != "sum" or not _uses_plain_ops(children[:L]):
        return log_einsum_exp(children[:L], children[L:], weight, semiring)
    shift = _finite_max(children, 1)  # (2L, 1, B)
    scaled = torch.exp(children - shift)
    return _contract(scaled[:L], scaled[L:], shift[:L] + shift[L:], weight)


def _log_einsum_exp_autograd(left, right, weight):
    """The same layer as plain autograd ops, the outer product materialized.

    Used where that costs nothing: on a GPU (bandwidth to spare) and for CPU
    levels small enough to be one chunk anyway, where the custom function's
    Python overhead (about 0.2 ms a call) would dominate.
    """
    max_left = _finite_max(left, 1)  # (L, 1, B)
    max_right = _finite_max(right, 1)
    return _contract(torch.exp(left - max_left), torch.exp(right - max_right), max_left + max_right, weight)


def _contract(a, c, shift, weight):
    """log(W @ (a outer c)) + shift: a, c (L, K, B) scaled densities, shift (L, 1, B)."""
    L, K, B = a.shape
    outer = (a.unsqueeze(2) * c.unsqueeze(1)).view(L, K * K, B)
    prob = torch.bmm(weight, outer)  # (L, K_out, K*K) @ (L, K*K, B) -> (L, K_out, B)
    return _log_plus(prob, shift)


def _log_einsum_max(left, right, weight):
    # log_matmul_exp's max over the (L, K*K, B) pairs N[i] + N'[j], with the
    # pairs built one chunk of partitions at a time instead of all at once
    L, K, B = left.shape
    log_w = _log_plus(weight)  # (L, K_out, K*K)

    def pairs(e):  # (n, K*K, B), entry i*K + j = N[i] + N'[j]
        return (left[e].unsqueeze(2) + right[e].unsqueeze(1)).flatten(1, 2)

    need_grad = torch.is_grad_enabled() and (left.requires_grad or right.requires_grad or weight.requires_grad)
    with torch.no_grad():
        out, index = _max_plus(log_w, pairs, L, K * K, B, argmax=need_grad)  # (L, K_out, B) each
    if need_grad:
        # the winning (i, j) of each output through autograd, added in the
        # candidates' order so that the values are bitwise the same
        l, k, b = _grid(L, weight.shape[1], B, left.device)
        out = _no_gradient_at_neg_inf(log_w[l, k, index] + (left[l, index // K, b] + right[l, index % K, b]))
    return out


def log_hadamard_exp(left, right, weight, semiring="sum"):
    """All partitions of one level as Hadamard (CP) products.

    "sum": S[l, k, b] = log sum_i W[l, k, i] exp(N[l, i, b] + N'[l, i, b])
    "max": S[l, k, b] = max_i log W[l, k, i] + N[l, i, b] + N'[l, i, b]

    The two child vectors are multiplied elementwise (added in the log
    domain), then mixed by a dense K_out x K sum: ``log_matmul_exp(left +
    right, weight, semiring)``. K weights per output instead of the einsum
    layer's K*K, so K can be far larger for the same cost.

    Parameters
    ----------
    left, right : Tensor (L, K, B)
        Log-densities of each partition's two child regions.
    weight : Tensor (L, K_out, K)
        Linear-domain sum weights, each row summing to one over i.
    semiring : {"sum", "max"}, default="sum"

    Returns
    -------
    Tensor (L, K_out, B)
    """
    return log_matmul_exp(left + right, weight, semiring)


def log_hadamard_exp_halves(children, weight, semiring="sum"):
    """``log_hadamard_exp(children[:L], children[L:], weight, semiring)``: a
    tree level's store, left children first; children (2L, K, B), weight
    (L, K_out, K) -> (L, K_out, B)."""
    L = children.shape[0] // 2
    return log_matmul_exp(children[:L] + children[L:], weight, semiring)


# --------------------------------------------------------------------------
# Mixing and root


def log_mix(values, weight, semiring="sum"):
    """Mixing layer: convex combination of a region's partitions.

    "sum": R[m, k, b] = log sum_p V[m, p, k] exp(Y[m, p, k, b])
    "max": R[m, k, b] = max_p log V[m, p, k] + Y[m, p, k, b]

    Parameters
    ----------
    values : Tensor (M, P, K, B)
        Log-densities of each region's partitions, padded with -inf to the
        widest region's P.
    weight : Tensor (M, P, K)
        Linear-domain mixing weights (zero on padding), summing to one over P.
    semiring : {"sum", "max"}, default="sum"

    Returns
    -------
    Tensor (M, K, B)
    """
    _check_semiring(semiring)
    if semiring == "max":
        # one weight per (p, k), not a matrix: a broadcast add, not a log_matmul_exp
        candidates = values + _log_plus(weight).unsqueeze(-1)  # (M, P, K, B)
        if not (torch.is_grad_enabled() and candidates.requires_grad):
            return candidates.amax(1)  # 2.5 times faster than max with indices
        # max over a dim (unlike amax) sends the gradient to one argmax, as log_matmul_exp does
        return _no_gradient_at_neg_inf(torch.max(candidates, 1).values)
    shift = _finite_max(values, 1)  # (M, 1, K, B)
    prob = (torch.exp(values - shift) * weight.unsqueeze(-1)).sum(1)  # (M, K, B)
    return _log_plus(prob, shift.squeeze(1))


def log_root(values, weight, semiring="sum"):
    """The root sum node: log sum_k w_k exp(v[k, b]) (or max_k log w_k + v[k, b]).

    values (K, B), weight (K,) -> (B,): ``log_matmul_exp`` with one row of weights.
    """
    return log_matmul_exp(values, weight.unsqueeze(0), semiring).squeeze(0)  # (1, K) @ (K, B) -> (B,)
