"""The two inner layers of an Einsum Network, as pure functions.

Both work in the log domain with the log-einsum-exp trick (Peharz et al. 2020,
section 3.2): subtract the per-vector maximum, exponentiate, contract with
linear-domain weights, take the log, add the maxima back. A vector that is all
-inf (a zero-probability region) yields -inf, never NaN: its maximum is
replaced by a finite stand-in before the subtraction.
"""

import torch


def _finite_max(t, dim):
    """Max over ``dim`` (kept), detached, and never -inf.

    The shift cancels exactly in the result, so it carries no gradient. An
    all -inf vector gets the finite shift -1e30 instead of -inf, so that
    ``t - shift`` is -inf (not NaN) and the layer's output is -inf.
    """
    return t.detach().amax(dim, keepdim=True).clamp_min(-1e30)


def log_einsum_exp(left, right, weight):
    """All partitions of one topological level in one contraction.

    S[l, k, b] = log sum_ij W[l, k, ij] exp(N[l, i, b] + N'[l, j, b])

    The batch is the last axis so that the contraction is a batched matmul
    with a wide output, (K_out, K*K) @ (K*K, B): several times faster on a
    CPU than the (B, K*K) @ (K*K, K_out) orientation for small K.

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
    max_left = _finite_max(left, 1)  # (L, 1, B)
    max_right = _finite_max(right, 1)
    exp_left = torch.exp(left - max_left)
    exp_right = torch.exp(right - max_right)
    # outer product of the children: (L, K, 1, B) * (L, 1, K, B) -> (L, K*K, B)
    outer = (exp_left.unsqueeze(2) * exp_right.unsqueeze(1)).reshape(L, K * K, B)
    prob = torch.bmm(weight, outer)  # (L, K_out, K*K) @ (L, K*K, B) -> (L, K_out, B)
    return torch.log(prob) + (max_left + max_right)


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
