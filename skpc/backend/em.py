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
    # w * dlogP/dw, written over the gradients (fresh tensors nobody else holds)
    weight_counts = [g.mul_(w.detach()) for w, g in zip(weights, grads[1:])]
    return log_prob.detach(), ExpectedStatistics(leaf_stats, leaf_counts, weight_counts)


def _em_update(counts, old, dim, step_size, mask=None):
    """One stochastic-EM update of the distributions along ``dim``.

    (1 - step) * old + step * counts / sum(counts), floored at WEIGHT_FLOOR
    and renormalized; a distribution without any count keeps ``old``; entries
    where ``mask`` is 0 (mixing padding) stay 0. Computed in place in
    ``counts``, which is consumed: at K=40 these tensors hold 10^7 entries,
    and each temporary of that size costs more in page faults and memory
    passes than the arithmetic.
    """
    total = counts.sum(dim, keepdim=True)  # small: the weights' shape with dim = 1
    # where total is 0 the counts are 0 too, so only ``keep`` needs the case split
    scale = torch.reciprocal(total.clamp_min(torch.finfo(counts.dtype).tiny)).mul_(step_size)
    keep = torch.where(total > 0, 1.0 - step_size, 1.0)
    new = counts.mul_(scale).addcmul_(old, keep).clamp_min_(WEIGHT_FLOOR)
    if mask is not None:
        new.mul_(mask)
    return new.div_(new.sum(dim, keepdim=True))


def m_step(circuit, params, stats, step_size):
    """Parameters after one (stochastic) EM update with step size in (0, 1].

    Consumes ``stats``: its weight counts become the new weights.
    """
    leaf = circuit.leaf
    counts = stats.leaf_counts.unsqueeze(-1)  # (L0, S, K, 1)
    phi_new = stats.leaf_stats / counts.clamp_min(torch.finfo(counts.dtype).tiny)
    phi_new = torch.where(counts > 1e-12, leaf.project(phi_new), params.leaf)
    phi = leaf.project(torch.lerp(params.leaf, phi_new, step_size))

    new_weights = []
    tensors = params.tensors()
    n_einsum = len(params.einsum)
    # (M, P, 1) zero on padding, or None where every mixing region has the same number of partitions
    mixing_masks = [
        (~pad).unsqueeze(-1).to(phi.dtype) if padded else None
        for pad, padded in zip(circuit.mix_pad[1:], circuit.mix_padded[1:])
        if pad is not None
    ]
    for i, (old, cnt) in enumerate(zip(tensors, stats.weight_counts)):
        if i < n_einsum:
            new = _em_update(cnt, old, 2, step_size)
        elif i < len(tensors) - 1:
            new = _em_update(cnt, old, 1, step_size, mixing_masks[i - n_einsum])
        else:
            new = _em_update(cnt, old, 0, step_size)
        new_weights.append(new)
    out = params.with_weights(new_weights)
    out.leaf = phi
    return out
