"""Gradient training (Adam) on an unconstrained reparameterization.

Sum weights become logits normalized by a softmax over the axis the EM
M-step normalizes (``WeightSpec.norm_dim``; padding of mixing regions gets
-inf); leaves use their family's ``to_unconstrained`` map. The M-step
projections are thereby built in, and ``constrain`` turns the result back
into the expectation parameters that EM, sampling and pickling use.
"""

import torch


def unconstrain(circuit, params):
    """Leaf tensor and weight logits, detached and requiring grad."""
    leaf = circuit.leaf.to_unconstrained(params.leaf).detach().requires_grad_(True)
    logits = [torch.log(w).detach().requires_grad_(True) for w in params.tensors()]
    return [leaf, *logits]


def constrain(circuit, params_like, tensors):
    """CircuitParams from ``unconstrain``'s tensors (differentiable)."""
    leaf, *logits = tensors
    weights = []
    for spec, z in zip(circuit.weight_specs, logits):
        if spec.pad is not None:
            z = z.masked_fill(spec.pad.unsqueeze(-1), float("-inf"))  # padding gets weight 0
        weights.append(torch.softmax(z, dim=spec.norm_dim))
    out = params_like.with_weights(weights)
    out.leaf = circuit.leaf.from_unconstrained(leaf)
    return out


def detach_params(circuit, params):
    """Detached, projected copy after gradient training."""
    out = params.map(lambda t: t.detach())
    out.leaf = circuit.leaf.project(out.leaf)
    return out
