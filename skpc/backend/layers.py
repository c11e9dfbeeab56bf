"""The inner layers of an Einsum Network (einsum, mixing, root), as functions of tensors.

Both work in the log domain with the log-einsum-exp trick (Peharz et al. 2020,
section 3.2): subtract the per-vector maximum, exponentiate, contract with
linear-domain weights, take the log, add the maxima back. A vector that is all
-inf (a zero-probability region) yields -inf, never NaN: its maximum is
replaced by a finite stand-in before the subtraction.
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
        grad = torch.where(prob > 0, grad / prob, 0.0)  # (L, K_out, B)
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


def log_einsum_exp(left, right, weight):
    """All partitions of one topological level in one contraction.

    S[l, k, b] = log sum_ij W[l, k, ij] exp(N[l, i, b] + N'[l, j, b])

    The batch is the last axis so that the contraction is a batched matmul
    with a wide output, (K_out, K*K) @ (K*K, B): several times faster on a
    CPU than the (B, K*K) @ (K*K, K_out) orientation for small K. Levels
    whose outer products exceed a cache-sized chunk go through the chunked
    custom function on the CPU; the others, and everything on a GPU, through
    plain autograd ops.

    Parameters
    ----------
    left, right : Tensor (L, K, B)
        Log-densities of each partition's two child regions.
    weight : Tensor (L, K_out, K*K)
        Linear-domain sum weights, each row summing to one over ij.

    Returns
    -------
    Tensor (L, K_out, B)
    """
    L, K, B = left.shape
    if _uses_plain_ops(left):
        return _log_einsum_exp_autograd(left, right, weight)
    rows = max(1, CPU_CHUNK_ELEMENTS // (K * K * B))
    return _LogEinsumExp.apply(left, right, weight, rows)


def _uses_plain_ops(left):
    L, K, B = left.shape
    return left.device.type != "cpu" or L * K * K * B <= CPU_CHUNK_ELEMENTS


def log_einsum_exp_halves(children, weight):
    """``log_einsum_exp(children[:L], children[L:], weight)`` for a level whose
    left children are the first half of one store and the right children the
    second (a tree level, ordered so by ``CompiledCircuit``).

    The max shift and the exp are taken once over the whole store instead of
    once per half: at small K every op costs far more in dispatch than in
    arithmetic, so halving the op count of a level, forward and backward,
    is what counts there.

    children (2L, K, B), weight (L, K_out, K*K) -> (L, K_out, B)
    """
    L = children.shape[0] // 2
    if not _uses_plain_ops(children[:L]):
        return log_einsum_exp(children[:L], children[L:], weight)
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
    return torch.log(prob) + shift


def log_mix(values, weight):
    """Mixing layer: convex combination of a region's partitions.

    R[m, k, b] = log sum_p V[m, p, k] exp(Y[m, p, k, b])

    Parameters
    ----------
    values : Tensor (M, P, K, B)
        Log-densities of each region's partitions, padded with -inf to the
        widest region's P.
    weight : Tensor (M, P, K)
        Linear-domain mixing weights (zero on padding), summing to one over P.

    Returns
    -------
    Tensor (M, K, B)
    """
    shift = _finite_max(values, 1)  # (M, 1, K, B)
    prob = (torch.exp(values - shift) * weight.unsqueeze(-1)).sum(1)  # (M, K, B)
    return torch.log(prob) + shift.squeeze(1)


def log_root(values, weight):
    """The root sum node: log sum_k w_k exp(v[k, b]); values (K, B), weight (K,) -> (B,)."""
    shift = _finite_max(values, 0)  # (1, B)
    prob = weight @ torch.exp(values - shift)
    return torch.log(prob) + shift.squeeze(0)


# --------------------------------------------------------------------------
# Max-product versions (the upward pass of MPE: no gradients needed)

# Elements of one chunk's (n, K_out, K*K, B) candidate tensor in log_einsum_max.
MAX_PRODUCT_CHUNK_ELEMENTS = 2**22


def log_einsum_max(left, right, weight):
    """S[l, k, b] = max_ij log W[l, k, ij] + N[l, i, b] + N'[l, j, b].

    left, right (L, K, B); weight (L, K_out, K*K) -> (L, K_out, B). Every
    (k, ij) candidate is formed, a chunk of partitions at a time.
    """
    L, K, B = left.shape
    K_out = weight.shape[1]
    log_w = torch.log(weight).unsqueeze(-1)  # (L, K_out, K*K, 1)
    out = left.new_empty(L, K_out, B)
    rows = max(1, MAX_PRODUCT_CHUNK_ELEMENTS // (K_out * K * K * B))
    for s in range(0, L, rows):
        e = slice(s, s + rows)
        pairs = (left[e].unsqueeze(2) + right[e].unsqueeze(1)).view(-1, 1, K * K, B)  # (n, 1, K*K, B)
        torch.amax(log_w[e] + pairs, dim=2, out=out[e])
    return out


def log_mix_max(values, weight):
    """R[m, k, b] = max_p log V[m, p, k] + Y[m, p, k, b]; values (M, P, K, B), weight (M, P, K)."""
    return (values + torch.log(weight).unsqueeze(-1)).amax(1)


def log_root_max(values, weight):
    """max_k log w_k + v[k, b]; values (K, B), weight (K,) -> (B,)."""
    return (values + torch.log(weight).unsqueeze(1)).amax(0)
