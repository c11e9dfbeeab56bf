"""Exponential-family leaves in expectation parameters.

A leaf *region* of an Einsum Network is a vector of K densities, each the
product of univariate densities over the region's scope (Peharz et al. 2020,
section 3.3). All leaf regions are evaluated together in a padded layout:

    x      (L, S, B)   the value of the s-th variable of leaf region l, per sample
    obs    (L, S, B)   1.0 where that value is observed, 0.0 where it is missing
                       or where (l, s) is padding (regions narrower than S)
    phi    (L, S, K, T) expectation parameters E[T(x)] of the K univariate
                       densities of each (region, variable) pair

so a leaf region's log-density is ``sum_s obs * log p(x_s | phi_s)`` and a
missing entry contributes log 1 = 0: it is marginalized exactly.

For a family with natural parameters theta(phi), log normalizer term c(phi)
and base measure h(x),

    log p(x) = T(x) . theta + c + h(x),

so the whole leaf layer is ONE batched matmul of the (masked) sufficient
statistics against the stacked natural parameters: ``(L, B, S*(T+1)) @
(L, S*(T+1), K)``. No dense (n_features x K x regions) tensor is formed.
Categorical leaves with many states use a gather instead of a one-hot matmul.

EM needs, per leaf, the posterior-weighted statistics ``sum_b p(leaf|x_b)
T(x_b)``; since the region value is a sum over its scope, the posterior of a
univariate leaf equals the gradient of log p(x) with respect to its region's
value, so ``expected_statistics`` takes that gradient G (L, B, K).
"""

import math

import torch

# Probabilities of discrete leaves are kept in [PROB_FLOOR, 1 - PROB_FLOOR]:
# a zero probability would give -inf on unseen test data.
PROB_FLOOR = 1e-6


class ExponentialFamilyLeaf:
    """Base class: one univariate exponential family, vectorized over pairs.

    Subclasses define the sufficient statistics, the map from expectation to
    natural parameters, the M-step projection, sampling, the mode, and an
    unconstrained reparameterization for gradient training.
    """

    name = "base"
    n_stats = 1

    # ----------------------------------------------------------- statistics
    def sufficient_statistics(self, x):
        """T(x): (L, S, B) -> (L, S, B, T)."""
        raise NotImplementedError

    def base_measure(self, x):
        """log h(x): (L, S, B) -> (L, S, B), or None when h = 1."""
        return None

    def natural(self, phi):
        """(theta (L, S, K, T), c (L, S, K)) from phi (L, S, K, T)."""
        raise NotImplementedError

    def project(self, phi):
        """Map an M-step result back into the valid parameter set."""
        return phi

    # ------------------------------------------------------------ forward
    def region_log_prob(self, x, obs, phi):
        """Log-densities of all leaf regions: (L, B, K).

        One matmul: [obs * T(x), obs] (L, B, S*(T+1)) @ [theta; c]
        (L, S*(T+1), K), plus the base measure summed over the scope.
        """
        L, S, B = x.shape
        K = phi.shape[2]
        theta, c = self.natural(phi)
        stats = self.sufficient_statistics(x) * obs.unsqueeze(-1)  # (L, S, B, T)
        lhs = torch.cat([stats, obs.unsqueeze(-1)], dim=-1)  # (L, S, B, T+1)
        lhs = lhs.permute(0, 2, 1, 3).reshape(L, B, S * (self.n_stats + 1))
        rhs = torch.cat([theta, c.unsqueeze(-1)], dim=-1)  # (L, S, K, T+1)
        rhs = rhs.permute(0, 1, 3, 2).reshape(L, S * (self.n_stats + 1), K)
        out = torch.bmm(lhs, rhs)  # (L, B, K)
        h = self.base_measure(x)
        if h is not None:
            out = out + (h * obs).sum(1).unsqueeze(-1)
        return out

    def expected_statistics(self, x, obs, grad):
        """Posterior-weighted statistics for the M-step.

        grad (L, B, K) is d log p / d(leaf region value) summed into each
        sample's row. Returns (stats (L, S, K, T), counts (L, S, K)) where
        stats = sum_b obs * grad * T(x) and counts = sum_b obs * grad.
        """
        L, S, B = x.shape
        stats = self.sufficient_statistics(x) * obs.unsqueeze(-1)  # (L, S, B, T)
        lhs = torch.cat([stats, obs.unsqueeze(-1)], dim=-1)
        lhs = lhs.permute(0, 1, 3, 2).reshape(L, S * (self.n_stats + 1), B)
        acc = torch.bmm(lhs, grad).reshape(L, S, self.n_stats + 1, -1)  # (L, S, T+1, K)
        acc = acc.permute(0, 1, 3, 2)  # (L, S, K, T+1)
        return acc[..., :-1], acc[..., -1]

    # ------------------------------------------------------ sampling, mode
    def sample(self, phi, generator):
        """One draw per entry of phi (N, T) -> (N,)."""
        raise NotImplementedError

    def mode(self, phi):
        """The most probable value per entry of phi (N, T) -> (N,)."""
        raise NotImplementedError

    # --------------------------------------------------------- Adam support
    def to_unconstrained(self, phi):
        raise NotImplementedError

    def from_unconstrained(self, u):
        raise NotImplementedError

    # ---------------------------------------------------------- init, data
    def init_phi(self, x_values, spread, generator):
        """Data-dependent initialization.

        x_values (L, S, K) holds, for each leaf density, the value of one
        random training sample (missing values already replaced); spread
        (L, S, 1) the variance of each pair's feature. Returns phi (L, S, K, T).
        """
        raise NotImplementedError

    def fill_value(self):
        """A valid stand-in written where x is missing (it is masked out)."""
        return 0.0


class GaussianLeaf(ExponentialFamilyLeaf):
    """Univariate normal; phi = (E[x], E[x^2]), variance kept in [min_var, max_var]."""

    name = "gaussian"
    n_stats = 2

    def __init__(self, min_var=1e-4, max_var=None):
        self.min_var = float(min_var)
        self.max_var = None if max_var is None else float(max_var)

    def _variance(self, phi):
        var = phi[..., 1] - phi[..., 0] ** 2
        return var.clamp(self.min_var, self.max_var)

    def sufficient_statistics(self, x):
        return torch.stack([x, x * x], dim=-1)

    def natural(self, phi):
        mu = phi[..., 0]
        var = self._variance(phi)
        theta = torch.stack([mu / var, -0.5 / var], dim=-1)
        c = -0.5 * mu * mu / var - 0.5 * torch.log(2 * math.pi * var)
        return theta, c

    def project(self, phi):
        mu = phi[..., 0]
        var = self._variance(phi)
        return torch.stack([mu, var + mu * mu], dim=-1)

    def sample(self, phi, generator):
        mu = phi[..., 0]
        std = self._variance(phi).sqrt()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + std * noise

    def mode(self, phi):
        return phi[..., 0]

    def to_unconstrained(self, phi):
        mu = phi[..., 0]
        var = self._variance(phi)
        if self.max_var is None:
            # var = min_var + softplus(u)  =>  u = log(expm1(var - min_var))
            excess = (var - self.min_var).clamp_min(1e-12)
            u = torch.where(excess > 20, excess, torch.log(torch.expm1(excess)))
        else:
            frac = ((var - self.min_var) / (self.max_var - self.min_var)).clamp(1e-6, 1 - 1e-6)
            u = torch.logit(frac)
        return torch.stack([mu, u], dim=-1)

    def from_unconstrained(self, u):
        mu = u[..., 0]
        if self.max_var is None:
            var = self.min_var + torch.nn.functional.softplus(u[..., 1])
        else:
            var = self.min_var + (self.max_var - self.min_var) * torch.sigmoid(u[..., 1])
        return torch.stack([mu, var + mu * mu], dim=-1)

    def init_phi(self, x_values, spread, generator):
        var = spread.clamp(self.min_var, self.max_var).expand_as(x_values)
        return self.project(torch.stack([x_values, var + x_values**2], dim=-1))


class _BinaryLogitLeaf(ExponentialFamilyLeaf):
    """Shared parts of Bernoulli and Binomial: T(x) = x, theta = logit(p)."""

    n_stats = 1
    n_trials = 1

    def _p(self, phi):
        return (phi[..., 0] / self.n_trials).clamp(PROB_FLOOR, 1 - PROB_FLOOR)

    def sufficient_statistics(self, x):
        return x.unsqueeze(-1)

    def natural(self, phi):
        p = self._p(phi)
        return torch.logit(p).unsqueeze(-1), self.n_trials * torch.log1p(-p)

    def project(self, phi):
        return (self._p(phi) * self.n_trials).unsqueeze(-1)

    def to_unconstrained(self, phi):
        return torch.logit(self._p(phi)).unsqueeze(-1)

    def from_unconstrained(self, u):
        return (torch.sigmoid(u[..., 0]) * self.n_trials).unsqueeze(-1)

    def init_phi(self, x_values, spread, generator):
        # Halfway between the sample's value and 1/2: a spread of starting
        # points without zero probabilities.
        p = 0.5 * (x_values / self.n_trials) + 0.25
        return self.project((p * self.n_trials).unsqueeze(-1))


class BernoulliLeaf(_BinaryLogitLeaf):
    """Bernoulli on {0, 1}; phi = p."""

    name = "bernoulli"

    def sample(self, phi, generator):
        p = self._p(phi)
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(p.dtype)

    def mode(self, phi):
        return (self._p(phi) > 0.5).to(phi.dtype)


class BinomialLeaf(_BinaryLogitLeaf):
    """Binomial on {0, ..., n_trials}; phi = E[x] = n_trials * p."""

    name = "binomial"

    def __init__(self, n_trials):
        self.n_trials = int(n_trials)

    def base_measure(self, x):
        n = self.n_trials
        return math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)

    def sample(self, phi, generator):
        p = self._p(phi)
        u = torch.rand(p.shape + (self.n_trials,), generator=generator, device=p.device, dtype=p.dtype)
        return (u < p.unsqueeze(-1)).sum(-1).to(p.dtype)

    def mode(self, phi):
        p = self._p(phi)
        return torch.floor((self.n_trials + 1) * p).clamp(0, self.n_trials)


class CategoricalLeaf(ExponentialFamilyLeaf):
    """Categorical on {0, ..., n_categories - 1}; phi = the probability vector.

    Evaluated by gathering log-probabilities (cost L*S*B*K) rather than by a
    one-hot matmul (cost L*S*C*B*K), which matters for 256-state pixels.
    """

    name = "categorical"

    def __init__(self, n_categories):
        self.n_categories = int(n_categories)
        self.n_stats = self.n_categories

    def project(self, phi):
        phi = phi.clamp_min(PROB_FLOOR)
        return phi / phi.sum(-1, keepdim=True)

    def region_log_prob(self, x, obs, phi):
        L, S, B = x.shape
        K = phi.shape[2]
        log_p = torch.log(self.project(phi)).transpose(2, 3)  # (L, S, C, K)
        index = x.long().unsqueeze(-1).expand(L, S, B, K)
        ll = torch.gather(log_p, 2, index)  # (L, S, B, K)
        return (ll * obs.unsqueeze(-1)).sum(1)

    def expected_statistics(self, x, obs, grad):
        L, S, B = x.shape
        K = grad.shape[-1]
        C = self.n_categories
        counts = torch.bmm(obs, grad)  # (L, S, K)
        # weighted one-hot counts: rows (l, s, x) accumulate obs * grad[l, b]
        weighted = obs.unsqueeze(-1) * grad.unsqueeze(1)  # (L, S, B, K)
        rows = (torch.arange(L * S, device=x.device).view(L, S, 1) * C + x.long()).reshape(-1)
        stats = torch.zeros(L * S * C, K, dtype=grad.dtype, device=grad.device)
        stats.index_add_(0, rows, weighted.reshape(-1, K))
        return stats.view(L, S, C, K).transpose(2, 3), counts

    def sample(self, phi, generator):
        p = self.project(phi)
        u = torch.rand(p.shape[:-1] + (1,), generator=generator, device=p.device, dtype=p.dtype)
        cdf = p.cumsum(-1)
        return (cdf < u * cdf[..., -1:]).sum(-1).clamp_max(self.n_categories - 1).to(p.dtype)

    def mode(self, phi):
        return phi.argmax(-1).to(phi.dtype)

    def to_unconstrained(self, phi):
        return torch.log(self.project(phi))

    def from_unconstrained(self, u):
        return torch.softmax(u, dim=-1)

    def init_phi(self, x_values, spread, generator):
        onehot = torch.nn.functional.one_hot(x_values.long(), self.n_categories).to(x_values.dtype)
        noise = torch.rand(onehot.shape, generator=generator, device=x_values.device, dtype=x_values.dtype)
        return self.project(0.5 * onehot + 0.5 * noise / noise.sum(-1, keepdim=True))


def make_leaf(name, *, min_var=1e-4, max_var=None, n_categories=None, n_trials=None):
    """Build the leaf family object for an estimator's ``leaf`` parameter."""
    if name == "gaussian":
        return GaussianLeaf(min_var=min_var, max_var=max_var)
    if name == "bernoulli":
        return BernoulliLeaf()
    if name == "categorical":
        return CategoricalLeaf(n_categories)
    if name == "binomial":
        return BinomialLeaf(n_trials)
    raise ValueError(
        f"leaf={name!r} is not supported; use 'gaussian', 'bernoulli', 'categorical' or 'binomial'."
    )
