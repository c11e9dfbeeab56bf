"""Expectation-maximization obtained from autodiff (Peharz et al. 2020, section 3.4).

E-step. With sum weights used directly as probabilities, ``w * dlogP/dw``
summed over a batch is the expected count of each weight, and the gradient
of log P with respect to a leaf region's value is the posterior of each of
its densities. One backward pass yields both.

M-step. Weights: normalized expected counts. Leaves: ``phi = sum p_L T(x) /
sum p_L``, then projected (variance bounds, probability floor). Stochastic EM
blends the M-step result into the parameters with a step size.
"""

from dataclasses import dataclass

import torch

# Sum weights are kept strictly positive: a zero weight can never recover.
WEIGHT_FLOOR = 1e-8


@dataclass
class ExpectedStatistics:
    """Sufficient statistics of one or several batches, summed.

    leaf_stats (L0, S, K, T), leaf_counts (L0, S, K), weight_counts: one
    tensor per weight tensor in ``CircuitParams.tensors()`` order.
    """

    leaf_stats: torch.Tensor
    leaf_counts: torch.Tensor
    weight_counts: list

    def __iadd__(self, other):
        self.leaf_stats += other.leaf_stats
        self.leaf_counts += other.leaf_counts
        for mine, theirs in zip(self.weight_counts, other.weight_counts):
            mine += theirs
        return self


def e_step(circuit, X, params):
    """Posterior statistics of a batch X (B, D) (NaN = missing).

    Returns (log_prob (B,) detached, ExpectedStatistics).
    """
    data = circuit.leaf_inputs(X)
    with torch.no_grad():
        leaf_values = circuit.leaf.region_log_prob(data, params.leaf)  # (L0, K, B)
    leaf_values.requires_grad_(True)
    weights = [w.detach().requires_grad_(True) for w in params.tensors()]
    log_prob, _ = circuit.forward(leaf_values, params.with_weights(weights))
    grads = torch.autograd.grad(log_prob.sum(), [leaf_values, *weights])
    leaf_stats, leaf_counts = circuit.leaf.expected_statistics(data, grads[0])
    weight_counts = [w.detach() * g for w, g in zip(weights, grads[1:])]
    return log_prob.detach(), ExpectedStatistics(leaf_stats, leaf_counts, weight_counts)


def _normalize_counts(counts, old, dim, mask=None):
    """New weights from expected counts, keeping ``old`` where nothing was counted."""
    total = counts.sum(dim, keepdim=True)
    new = counts / total.clamp_min(torch.finfo(counts.dtype).tiny)
    new = new.clamp_min(WEIGHT_FLOOR)
    if mask is not None:
        new = new * mask
    new = new / new.sum(dim, keepdim=True)
    return torch.where(total > 0, new, old)


def m_step(circuit, params, stats, step_size):
    """Parameters after one (stochastic) EM update with step size in (0, 1]."""
    leaf = circuit.leaf
    counts = stats.leaf_counts.unsqueeze(-1)  # (L0, S, K, 1)
    phi_new = stats.leaf_stats / counts.clamp_min(torch.finfo(counts.dtype).tiny)
    phi_new = torch.where(counts > 1e-12, leaf.project(phi_new), params.leaf)
    phi = leaf.project(torch.lerp(params.leaf, phi_new, step_size))

    new_weights = []
    tensors = params.tensors()
    n_einsum = len(params.einsum)
    mixing_masks = [(~pad).unsqueeze(-1).to(phi.dtype) for pad in circuit.mix_pad[1:] if pad is not None]
    for i, (old, cnt) in enumerate(zip(tensors, stats.weight_counts)):
        if i < n_einsum:
            new = _normalize_counts(cnt, old, 2)
        elif i < len(tensors) - 1:
            new = _normalize_counts(cnt, old, 1, mixing_masks[i - n_einsum])
        else:
            new = _normalize_counts(cnt, old, 0)
        new_weights.append(torch.lerp(old, new, step_size))
    out = params.with_weights(new_weights)
    out.leaf = phi
    return out
