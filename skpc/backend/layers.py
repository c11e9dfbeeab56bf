"""The two inner layers of an Einsum Network, as pure functions.

Both work in the log domain with the log-einsum-exp trick (Peharz et al. 2020,
section 3.2): subtract the per-vector maximum, exponentiate, contract with
linear-domain weights, take the log, add the maxima back. A vector that is all
-inf (a zero-probability region) yields -inf, never NaN: its maximum is
replaced by 0 before the subtraction.
"""

import torch


def _finite_max(t, dim):
    """Max over ``dim`` (kept), with -inf replaced by 0; detached.

    The shift cancels exactly in the result, so it carries no gradient.
    """
    m = t.detach().amax(dim, keepdim=True)
    return torch.where(torch.isfinite(m), m, torch.zeros_like(m))


def log_einsum_exp(left, right, weight):
    """All partitions of one topological level in one contraction.

    S[l, b, k] = log sum_ij W[l, ij, k] exp(N[l, b, i] + N'[l, b, j])

    Parameters
    ----------
    left, right : Tensor (L, B, K)
        Log-densities of each partition's two child regions.
    weight : Tensor (L, K*K, K_out)
        Linear-domain sum weights, each column summing to one over ij.

    Returns
    -------
    Tensor (L, B, K_out)
    """
    L, B, K = left.shape
    max_left = _finite_max(left, -1)  # (L, B, 1)
    max_right = _finite_max(right, -1)
    exp_left = torch.exp(left - max_left)
    exp_right = torch.exp(right - max_right)
    # outer product of the children: (L, B, K, 1) * (L, B, 1, K) -> (L, B, K*K)
    outer = (exp_left.unsqueeze(-1) * exp_right.unsqueeze(-2)).reshape(L, B, K * K)
    prob = torch.bmm(outer, weight)  # (L, B, K*K) @ (L, K*K, K_out) -> (L, B, K_out)
    return torch.log(prob) + (max_left + max_right)


def log_mix(values, weight):
    """Mixing layer: convex combination of a region's partitions.

    R[m, b, k] = log sum_p V[m, p, k] exp(Y[m, p, b, k])

    Parameters
    ----------
    values : Tensor (M, P, B, K)
        Log-densities of each region's partitions, padded with -inf to the
        widest region's P.
    weight : Tensor (M, P, K)
        Linear-domain mixing weights (zero on padding), summing to one over P.

    Returns
    -------
    Tensor (M, B, K)
    """
    shift = _finite_max(values, 1)  # (M, 1, B, K)
    prob = (torch.exp(values - shift) * weight.unsqueeze(2)).sum(1)  # (M, B, K)
    return torch.log(prob) + shift.squeeze(1)


def log_root(values, weight):
    """The root sum node: log sum_k w_k exp(v[b, k]); values (B, K), weight (K,) -> (B,)."""
    shift = _finite_max(values, -1)  # (B, 1)
    prob = torch.exp(values - shift) @ weight
    return torch.log(prob) + shift.squeeze(-1)
