"""Exponential-family leaves in expectation parameters.

A leaf *region* of an Einsum Network is a vector of K densities, each the
product of univariate densities over the region's scope (Peharz et al. 2020,
section 3.3). All leaf regions are evaluated together in a padded layout:
leaf region l has the variables ``scope[l, :]`` (S wide; narrower regions are
padded with a dummy, always-missing variable), and

    phi    (L, S, K, T) expectation parameters E[T(x)] of the K univariate
                        densities of each (region, variable) pair.

A region's log-density is ``sum_s obs_s * log p(x_s | phi_s)``, so a missing
entry contributes log 1 = 0: it is marginalized exactly.

For a family with natural parameters theta(phi), log normalizer term c(phi)
and base measure h(x),

    log p(x) = T(x) . theta + c + log h(x),

so the whole leaf layer is ONE batched matmul of the stacked natural
parameters against the masked statistics [obs*T(x), obs, obs*log h(x)] of the
batch: ``(L, K, S*F) @ (L, S*F, B) -> (L, K, B)``. No dense (n_features x K x
regions) tensor is formed. Categorical leaves gather log-probabilities instead
of multiplying by one-hot vectors.

EM needs, per leaf, the posterior-weighted statistics ``sum_b p(leaf|x_b)
T(x_b)``; since the region value is a sum over its scope, the posterior of a
univariate leaf equals the gradient of log p(x) with respect to its region's
value, so ``expected_statistics`` takes that gradient G (L, K, B) and needs
one more matmul.
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
    has_base_measure = False

    # ----------------------------------------------------------- statistics
    def write_statistics(self, x, obs, out):
        """Fill the statistics columns of ``prepare``'s per-variable layout.

        x (D, B) holds the batch with missing entries at ``fill_value()``,
        obs (D, B) the observed indicator; out (D, F, B) already holds x in
        column 0 (the first statistic is x itself for every family here) and
        obs in column ``n_stats``. Write the other columns so that every
        column is 0 where obs is 0.
        """

    def base_measure(self, x):
        """log h(x), same shape as x (only when ``has_base_measure``)."""
        raise NotImplementedError

    def natural(self, phi):
        """(thetas, c) from phi (L, S, K, T): a list of the T natural parameters, each (L, S, K), and c (L, S, K)."""
        raise NotImplementedError

    def project(self, phi):
        """Map an M-step result back into the valid parameter set."""
        return phi

    # ------------------------------------------------------------ forward
    def prepare(self, X, scope):
        """Per-batch data in the layout the leaf layer contracts against.

        X (B, D) with NaN = missing (and no inf); scope (L, S) variable
        indices, where index D is the padding variable of narrower regions
        (missing in every row). Returns the masked statistics (L, S*F, B)
        with F = ``n_columns``: [T(x), obs, (log h(x))] per pair, all 0
        where x is missing. Built once per batch, it serves both the forward
        matmul and the E-step.

        Built variable-major, (D+1, F, B), with every column written in
        place: at the sizes of one mini-batch, ops that stack along a short
        last axis or cast bool masks cost several times more than the
        arithmetic: the former version took 1.4 of the 5.5 ms of a training
        step at K=10, R=1.
        """
        B, D = X.shape
        T = self.n_stats
        columns = X.new_empty(D + 1, self.n_columns, B)
        columns[D].zero_()  # the padding variable
        x, obs = columns[:D, 0], columns[:D, T]  # (D, B) views with unit stride over B
        x.copy_(X.t())
        # x - x is 0 where x is finite and NaN where it is missing
        torch.sub(x, x, out=obs).nan_to_num_(nan=-1.0).add_(1.0)
        x.nan_to_num_(nan=self.fill_value())
        self.write_statistics(x, obs, columns[:D])
        L, S = scope.shape
        # index_select copies contiguous (F, B) blocks: far faster than indexing
        return columns.index_select(0, scope.reshape(-1)).view(L, S * self.n_columns, B)

    def _stacked_natural(self, phi):
        """[theta, c, (1)] per pair, laid out to match ``prepare``: (L, K, S*F).

        Written column by column into one (L, K, S, F) tensor through copy_,
        which autograd supports (Adam differentiates through this).
        """
        thetas, c = self.natural(phi)
        L, S, K = c.shape
        T = self.n_stats
        lhs = c.new_empty(L, K, S, self.n_columns)
        view = lhs.permute(0, 2, 1, 3)  # (L, S, K, F)
        for t, theta in enumerate(thetas):
            view[..., t].copy_(theta)
        view[..., T].copy_(c)
        if self.has_base_measure:
            view[..., T + 1].fill_(1.0)
        return lhs.view(L, K, S * self.n_columns)

    def observed(self, data):
        """The observed indicator (L, S, B) of ``prepare``'s output."""
        L, SF, B = data.shape
        return data.view(L, SF // self.n_columns, self.n_columns, B)[:, :, self.n_stats]

    def region_log_max(self, data, phi, real):
        """Leaf region values for a max-product pass: (L, K, B).

        Observed entries contribute their log-density, missing ones the
        log-density at their mode (the max over the missing value, where
        ``region_log_prob`` takes the sum, 0). ``real`` (L, S) is 1 on the
        pairs of real variables, 0 on the padding of narrower regions (which
        is missing but must contribute nothing).
        """
        missing = (1.0 - self.observed(data)) * real.unsqueeze(-1)  # (L, S, B)
        at_mode = self.mode_log_density(phi).transpose(1, 2)  # (L, K, S)
        return self.region_log_prob(data, phi) + torch.bmm(at_mode, missing)

    def region_log_prob(self, data, phi):
        """Log-densities of all leaf regions: (L, K, B).

        One matmul: [theta, c, 1] (L, K, S*F) @ [obs * T(x); obs; obs * log h]
        (L, S*F, B): a missing entry contributes 0, i.e. it is marginalized.
        """
        return torch.bmm(self._stacked_natural(phi), data)

    def expected_statistics(self, data, grad):
        """Posterior-weighted statistics for the M-step.

        grad (L, K, B) is d log p / d(leaf region value) for each sample.
        Returns (stats (L, S, K, T), counts (L, S, K)) where
        stats = sum_b obs * grad * T(x) and counts = sum_b obs * grad.
        """
        L, SF, B = data.shape
        F = self.n_columns
        K = grad.shape[1]
        acc = torch.bmm(grad, data.transpose(1, 2))  # (L, K, B) @ (L, B, S*F) -> (L, K, S*F)
        acc = acc.view(L, K, SF // F, F).transpose(1, 2)  # (L, S, K, F)
        return acc[..., : self.n_stats], acc[..., self.n_stats]

    @property
    def n_columns(self):
        """F: statistics, the observed indicator, and log h(x) when h != 1."""
        return self.n_stats + 1 + int(self.has_base_measure)

    # ------------------------------------------------------ sampling, mode
    def sample(self, phi, generator):
        """One draw per entry of phi (N, T) -> (N,)."""
        raise NotImplementedError

    def mode(self, phi):
        """The most probable value per entry of phi (N, T) -> (N,)."""
        raise NotImplementedError

    def mode_log_density(self, phi):
        """log p(mode) per entry of phi (..., T) -> (...): the largest log-density."""
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
        """A valid stand-in written where x is missing; T(fill_value) must be 0 (see ``write_statistics``)."""
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

    def write_statistics(self, x, obs, out):
        torch.mul(x, x, out=out[:, 1])  # missing entries are 0

    def natural(self, phi):
        mu = phi[..., 0]
        var = self._variance(phi)
        c = -0.5 * mu * mu / var - 0.5 * torch.log(2 * math.pi * var)
        return [mu / var, -0.5 / var], c

    def project(self, phi):
        mu = phi[..., 0]
        var = self._variance(phi)
        out = torch.empty_like(phi)  # column writes: a stack along the last axis is several times slower
        out[..., 0].copy_(mu)
        out[..., 1].copy_(var + mu * mu)
        return out

    def sample(self, phi, generator):
        mu = phi[..., 0]
        std = self._variance(phi).sqrt()
        noise = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        return mu + std * noise

    def mode(self, phi):
        return phi[..., 0]

    def mode_log_density(self, phi):
        return -0.5 * torch.log(2 * math.pi * self._variance(phi))

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

    def natural(self, phi):
        p = self._p(phi)
        return [torch.logit(p)], self.n_trials * torch.log1p(-p)

    def project(self, phi):
        return (self._p(phi) * self.n_trials).unsqueeze(-1)

    def mode_log_density(self, phi):
        p, x = self._p(phi), self.mode(phi)
        log_p = x * torch.log(p) + (self.n_trials - x) * torch.log1p(-p)
        return log_p + self.base_measure(x) if self.has_base_measure else log_p

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
    has_base_measure = True

    def __init__(self, n_trials):
        self.n_trials = int(n_trials)

    def base_measure(self, x):
        n = self.n_trials
        return math.lgamma(n + 1) - torch.lgamma(x + 1) - torch.lgamma(n - x + 1)

    def write_statistics(self, x, obs, out):
        # log h(0) is 0 only up to rounding: masked explicitly
        torch.mul(self.base_measure(x), obs, out=out[:, 2])

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

    def prepare(self, X, scope):
        """(x (L, S, B) long with missing entries set to 0, obs (L, S, B))."""
        B = X.shape[0]
        padded = torch.cat([X, X.new_full((B, 1), float("nan"))], 1)  # column D: the padding variable
        x = padded.t()[scope]  # (D+1, B)[scope] -> (L, S, B)
        missing = torch.isnan(x)
        return x.masked_fill(missing, 0).long(), (~missing).to(X.dtype)

    def region_log_prob(self, data, phi):
        x, obs = data
        L, S, B = x.shape
        K = phi.shape[2]
        log_p = torch.log(self.project(phi))  # (L, S, K, C)
        ll = torch.gather(log_p, 3, x.unsqueeze(2).expand(L, S, K, B))  # (L, S, K, B)
        return (ll * obs.unsqueeze(2)).sum(1)  # (L, K, B)

    def expected_statistics(self, data, grad):
        x, obs = data
        L, S, B = x.shape
        K = grad.shape[1]
        counts = torch.bmm(obs, grad.transpose(1, 2))  # (L, S, B) @ (L, B, K) -> (L, S, K)
        # weighted one-hot counts: state x[l, s, b] accumulates obs * grad[l, k, b]
        weighted = obs.unsqueeze(2) * grad.unsqueeze(1)  # (L, S, K, B)
        stats = torch.zeros(L, S, K, self.n_categories, dtype=grad.dtype, device=grad.device)
        stats.scatter_add_(3, x.unsqueeze(2).expand(L, S, K, B), weighted)
        return stats, counts

    def sample(self, phi, generator):
        p = self.project(phi)
        u = torch.rand(p.shape[:-1] + (1,), generator=generator, device=p.device, dtype=p.dtype)
        cdf = p.cumsum(-1)
        return (cdf < u * cdf[..., -1:]).sum(-1).clamp_max(self.n_categories - 1).to(p.dtype)

    def mode(self, phi):
        return phi.argmax(-1).to(phi.dtype)

    def mode_log_density(self, phi):
        return torch.log(self.project(phi).amax(-1))

    def observed(self, data):
        return data[1]

    def to_unconstrained(self, phi):
        return torch.log(self.project(phi))

    def from_unconstrained(self, u):
        return torch.softmax(u, dim=-1)

    def init_phi(self, x_values, spread, generator):
        onehot = torch.nn.functional.one_hot(x_values.long(), self.n_categories).to(x_values.dtype)
        noise = torch.rand(onehot.shape, generator=generator, device=x_values.device, dtype=torch.float64)
        noise = noise.to(x_values.dtype)
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
