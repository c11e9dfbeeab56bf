"""Expectation-maximization obtained from autodiff (Peharz et al. 2020, section 3.4).

E-step. With sum weights used directly as probabilities, ``w * dF/dw``
summed over a batch is the expected count of each weight, and the gradient
of F with respect to a leaf region's value is the posterior of each of its
densities; F is the objective, by default log p(x) per row. One backward
pass yields both. With another objective, e.g. the log of output c_n of a
multi-output circuit for row n, the same pass gives the statistics of EM for
that objective: each output's sub-circuit trained on its own rows.

M-step. Weights: normalized expected counts, along each tensor's
normalization axis (``CompiledCircuit.weight_specs``). Leaves: the family's
own ``m_step`` (``phi = sum p_L T(x) / sum p_L``, projected). Stochastic EM
blends the M-step result into the parameters with a step size, the
``learning_rate``.

MAP-EM. With a ``pseudocount`` a > 0 the M-step maximizes the expected
complete log-likelihood plus a log prior worth a pseudo-observations on
every distribution of the circuit: a symmetric Dirichlet on every
distribution of sum weights over n entries that adds a / n to the expected
count of each (``(n_k + a/n) / (sum_j n_j + a)``: the MAP estimate under
Dirichlet(a/n + 1), the posterior mean under Dirichlet(a/n)), and on every
leaf density a conjugate prior worth a pseudo-observations at the family's
``prior_mean`` (``ExponentialFamilyLeaf.m_step``; a categorical leaf over C
states likewise adds a / C to each). The strength is per distribution, not
per entry: an einsum sum node mixes K^2 products, and a per-entry count
would make its prior K^2 times stronger than a leaf's. A density or a
weight distribution that sees no data then moves to the prior's mode
instead of keeping its old value. a = 0 is plain maximum-likelihood EM.
"""

from dataclasses import dataclass

import torch

from .numerics import flushing_subnormals

# Sum weights are kept strictly positive: a zero weight can never recover.
WEIGHT_FLOOR = 1e-8


@dataclass
class ExpectedStatistics:
    """Sufficient statistics of one or several batches, summed.

    leaf_stats (L0, S, K, T), leaf_counts (L0, S, K), weight_counts: one
    tensor per weight tensor, in ``weight_specs`` order.
    """

    leaf_stats: torch.Tensor
    leaf_counts: torch.Tensor
    weight_counts: list

    def tensors(self):
        """Every statistic, e.g. for an all-reduce across processes (summed in place)."""
        return [self.leaf_stats, self.leaf_counts, *self.weight_counts]

    def __iadd__(self, other):
        for mine, theirs in zip(self.tensors(), other.tensors()):
            mine += theirs
        return self


def log_likelihood(output, index):
    """The default objective: the circuit's single output, log p(x) per row (B,)."""
    return output


class SelectedOutput:
    """Objective "log of output c_n of a multi-output circuit for row n".

    targets : (N,) long tensor, the output of every row of the data set;
    ``index`` (B,) selects the batch's rows.
    """

    def __init__(self, targets):
        self.targets = targets

    def __call__(self, output, index):
        return output.gather(1, self.targets[index].unsqueeze(1)).squeeze(1)  # (B, C) -> (B,)


class LatentEvidence:
    """Evidence "materialized latent Z_i = codes[n, i]" on internal regions.

    The K components of region ``regions[i]`` play a categorical latent
    variable Z_i (LVD: the top region of group i's sub-circuit); observing
    Z_i = c keeps only component c of that region for the row. Called with
    a batch's row indices it gives ``CompiledCircuit.forward``'s evidence.

    Parameters
    ----------
    regions : sequence of int, length m
        The region of each latent variable.
    codes : LongTensor (N, m)
        Every row's value of each latent, in 0..K-1; -1: not observed (every
        component allowed).
    n_sums : int
        K, the components of each region.
    """

    def __init__(self, regions, codes, n_sums):
        if codes.dim() != 2 or codes.shape[1] != len(regions):
            raise ValueError(f"codes must have shape (n_rows, {len(regions)}); got {tuple(codes.shape)}.")
        self.regions = list(regions)
        self.codes = codes
        self.n_sums = n_sums

    def __call__(self, index):
        codes = self.codes[index]  # (B, m)
        states = torch.arange(self.n_sums, device=codes.device)
        # (B, m, K): component c allowed where it is the code, or where no code is observed
        allowed = (codes.unsqueeze(2) == states) | (codes.unsqueeze(2) < 0)
        return {region: allowed[:, i] for i, region in enumerate(self.regions)}


@flushing_subnormals
def e_step(circuit, X, params, objective=log_likelihood, index=None, evidence=None, softening=1.0, into=None):
    """Posterior statistics of a batch X (B, D) (NaN = missing).

    ``index`` (B,) are the batch's rows in the data set (for objectives with
    per-row targets, and for ``evidence``, a callable index -> {region:
    (B, K) bool mask}, e.g. :class:`LatentEvidence`: EM then maximizes the
    joint likelihood of X and the observed latents). ``softening`` beta < 1:
    data softening (Liu & Van den Broeck 2021), every observed x_d replaced
    by its state with weight beta and by each other state with (1 - beta) /
    (C - 1): the objective and the posteriors are those of that soft
    evidence, and the leaf statistics are the softened data's
    (``leaf.soft_expected_statistics``); weight counts keep their form,
    w * dF/dw. Returns (objective per row (B,) detached,
    ExpectedStatistics).

    ``into``: an ExpectedStatistics of earlier batches (same circuit) that
    this batch's statistics are added to in place and that is returned:
    summing the chunks of a full-batch pass without a statistics tensor per
    chunk. A leaf with an ``add_expected_statistics(data, grad, stats,
    counts)`` method adds its statistics straight into ``into``'s tensors
    (the HMM's token leaf: its (T, 1, K, V) table per chunk took 1.3 GB at
    K=1024); any other leaf's are computed, then added.
    """
    data = circuit.leaf_inputs(X)
    with torch.no_grad():
        leaf_values = circuit.leaf_values(data, params, softening=softening)  # (L0, K, B)
    leaf_values.requires_grad_(True)
    weights = [w.detach().requires_grad_(True) for w in params.tensors()]
    masks = evidence(index) if evidence is not None else None
    output = circuit.forward(leaf_values, params.with_weights(weights), evidence=masks).output
    value = objective(output, index)
    grads = torch.autograd.grad(value.sum(), [leaf_values, *weights])
    # w * dF/dw, written over the gradients (fresh tensors nobody else holds)
    weight_counts = [g.mul_(w.detach()) for w, g in zip(weights, grads[1:])]
    if into is not None and softening == 1.0 and hasattr(circuit.leaf, "add_expected_statistics"):
        circuit.leaf.add_expected_statistics(data, grads[0], into.leaf_stats, into.leaf_counts)
        for mine, theirs in zip(into.weight_counts, weight_counts):
            mine += theirs
        return value.detach(), into
    if softening != 1.0:
        leaf_stats, leaf_counts = circuit.leaf.soft_expected_statistics(data, params.leaf, grads[0], softening)
    else:
        leaf_stats, leaf_counts = circuit.leaf.expected_statistics(data, grads[0])
    stats = ExpectedStatistics(leaf_stats, leaf_counts, weight_counts)
    if into is None:
        return value.detach(), stats
    into += stats
    return value.detach(), into


def _em_update(counts, old, dim, learning_rate, mask=None, pseudocount=0.0):
    """One stochastic-EM update of the distributions along ``dim``.

    (1 - learning_rate) * old + learning_rate * counts / sum(counts), floored at WEIGHT_FLOOR
    and renormalized; a distribution without any count keeps ``old``; entries
    where ``mask`` is 0 (mixing padding) stay 0. With a ``pseudocount`` a > 0,
    a / n is first added to the count of each of a distribution's n
    (unmasked) entries: the MAP update under a symmetric Dirichlet prior of
    total strength a, ``(n_k + a/n) / (sum_j n_j + a)``. Computed in place in
    ``counts``, which is consumed: at K=40 these tensors hold 10^7 entries,
    and each temporary of that size costs more in page faults and memory
    passes than the arithmetic.
    """
    if pseudocount:
        if mask is None:
            counts.add_(pseudocount / counts.shape[dim])
        else:
            # mask (..., 1) along dim: each distribution's own number of real entries
            counts.add_(mask * (pseudocount / mask.sum(dim, keepdim=True).clamp_min(1.0)))
    total = counts.sum(dim, keepdim=True)  # small: the weights' shape with dim = 1
    # where total is 0 the counts are 0 too, so only ``keep`` needs the case split
    scale = torch.reciprocal(total.clamp_min(torch.finfo(counts.dtype).tiny)).mul_(learning_rate)
    keep = torch.where(total > 0, 1.0 - learning_rate, 1.0)
    new = counts.mul_(scale).addcmul_(old, keep).clamp_min_(WEIGHT_FLOOR)
    if mask is not None:
        new.mul_(mask)
    return new.div_(new.sum(dim, keepdim=True))


def m_step(circuit, params, stats, learning_rate, pseudocount=0.0):
    """Parameters after one (stochastic) EM update with step size ``learning_rate`` in (0, 1].

    ``pseudocount`` >= 0: MAP-EM (see the module docstring); the prior's
    strength for these statistics, i.e. already scaled to the batch in
    stochastic EM. Add it once to statistics summed across processes.
    Consumes ``stats``: its weight counts become the new weights.
    """
    if pseudocount < 0:
        raise ValueError(f"pseudocount={pseudocount!r} must be >= 0 (0: maximum-likelihood EM).")
    args = (params.leaf, stats.leaf_stats, stats.leaf_counts, learning_rate)
    # passed only when set: a leaf whose m_step predates MAP-EM still runs plain EM
    phi = circuit.leaf.m_step(*args, pseudocount=pseudocount) if pseudocount else circuit.leaf.m_step(*args)
    add_weight_priors = getattr(circuit, "add_weight_priors", None)
    if add_weight_priors is not None:  # priors that depend on the statistics (the HMM's position prior)
        add_weight_priors(stats.weight_counts)
    new_weights = [
        _em_update(counts, old, spec.norm_dim, learning_rate, spec.valid_mask(counts.dtype), pseudocount)
        for spec, old, counts in zip(circuit.weight_specs, params.tensors(), stats.weight_counts)
    ]
    out = params.with_weights(new_weights)
    out.leaf = phi
    return out
