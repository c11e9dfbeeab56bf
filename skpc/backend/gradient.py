"""Gradient training (Adam) on an unconstrained reparameterization.

Sum weights become log-weights normalized by a softmax over the same axis the
EM M-step normalizes; leaves use their family's ``to_unconstrained`` map
(means and softplus/sigmoid variances, logits). The M-step projections are
thereby built in, and ``constrain`` turns the result back into the
expectation parameters that EM, sampling and pickling use.
"""

import torch

from .circuit import CircuitParams


def unconstrain(circuit, params):
    """Leaf tensors and weight logits, detached and requiring grad."""
    leaf = circuit.leaf.to_unconstrained(params.leaf).detach().requires_grad_(True)
    logits = [torch.log(w).detach().requires_grad_(True) for w in params.tensors()]
    return [leaf, *logits]


def constrain(circuit, params_like, tensors):
    """CircuitParams from ``unconstrain``'s tensors (differentiable)."""
    leaf, *logits = tensors
    n_einsum = len(params_like.einsum)
    pads = [pad for pad in circuit.mix_pad[1:] if pad is not None]
    weights = []
    for i, z in enumerate(logits):
        if i < n_einsum:
            weights.append(torch.softmax(z, dim=2))
        elif i < len(logits) - 1:
            pad = pads[i - n_einsum].unsqueeze(-1)  # (M, P, 1): padding gets weight 0
            weights.append(torch.softmax(z.masked_fill(pad, float("-inf")), dim=1))
        else:
            weights.append(torch.softmax(z, dim=0))
    out = params_like.with_weights(weights)
    out.leaf = circuit.leaf.from_unconstrained(leaf)
    return out


def detach_params(circuit, params):
    """Detached, projected copy after gradient training."""
    out = params.map(lambda t: t.detach())
    out.leaf = circuit.leaf.project(out.leaf)
    return out
