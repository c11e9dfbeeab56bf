"""The built-in univariate families: Gaussian, Bernoulli, Binomial,
Categorical and Poisson (the worked example of a plug-in family)."""

import math
import weakref

import numpy as np
import torch

from .base import (
    PROB_FLOOR,
    RATE_FLOOR,
    ExponentialFamilyLeaf,
    _as_2d,
    _check_bounded_counts,
    _check_counts,
    _columns_text,
    _data_seeds,
    _fix,
    _infer_bound,
    _is_integer,
)


class GaussianLeaf(ExponentialFamilyLeaf):
    """Univariate normal; phi = (E[x], E[x^2]), variance kept in [min_var, max_var]."""

    name = "gaussian"
    n_stats = 2
    discrete = False

    def __init__(self, min_var=1e-4, max_var=None):
        if not min_var > 0:
            raise ValueError(f"min_var={min_var!r}: Gaussian leaves need a positive variance floor, e.g. 1e-4.")
        if max_var is not None and not max_var > min_var:
            raise ValueError(f"max_var={max_var!r} must exceed min_var={min_var!r}; raise max_var or pass None.")
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

    @property
    def n_states(self):
        """C = n_trials + 1: the values 0..n_trials (data softening)."""
        self._check_inferred()
        return self.n_trials + 1

    def _p(self, phi):
        return (phi[..., 0] / self.n_trials).clamp(PROB_FLOOR, 1 - PROB_FLOOR)

    def natural(self, phi):
        p = self._p(phi)
        return [torch.logit(p)], self.n_trials * torch.log1p(-p)

    def project(self, phi):
        return (self._p(phi) * self.n_trials).unsqueeze(-1)

    def prior_mean(self, phi, stats, counts):
        """p = 1/2: a Beta prior toward the uniform distribution, worth
        ``pseudocount`` trials of ``n_trials`` each, half of them successes."""
        return phi.new_full((1,), 0.5 * self.n_trials)

    def mode_log_density(self, phi):
        p, x = self._p(phi), self.mode(phi)
        log_p = x * torch.log(p) + (self.n_trials - x) * torch.log1p(-p)
        return log_p + self.base_measure(x) if self.has_base_measure else log_p

    def to_unconstrained(self, phi):
        return torch.logit(self._p(phi)).unsqueeze(-1)

    def from_unconstrained(self, u):
        return (torch.sigmoid(u[..., 0]) * self.n_trials).unsqueeze(-1)

    def init_phi(self, x_values, spread, generator):
        # Halfway between the sample's value and a random probability in
        # [0.3, 0.7]: no zero probabilities, and no two densities of a region
        # start equal. Binary samples alone give only two starting points, and
        # densities that start equal stay equal under EM (their posteriors
        # differ by a factor that does not depend on x): wasted capacity.
        u = torch.rand(x_values.shape, generator=generator, device=generator.device, dtype=torch.float64)
        p = 0.5 * (x_values / self.n_trials) + 0.5 * (0.3 + 0.4 * u.to(device=x_values.device, dtype=x_values.dtype))
        return self.project((p * self.n_trials).unsqueeze(-1))


class BernoulliLeaf(_BinaryLogitLeaf):
    """Bernoulli on {0, 1}; phi = p."""

    name = "bernoulli"

    def validate(self, X, columns=None):
        super().validate(X, columns)
        X = _as_2d(X)
        bad = ~np.isnan(X) & (X != 0.0) & (X != 1.0)
        if bad.any():
            raise ValueError(
                f"X contains values outside {{0, 1}} in {_columns_text(columns, bad.any(0))}: Bernoulli leaves "
                f"need binary data; {_fix(columns, 'categorical', 'gaussian')}."
            )

    def sample(self, phi, generator):
        p = self._p(phi)
        u = torch.rand(p.shape, generator=generator, device=p.device, dtype=p.dtype)
        return (u < p).to(p.dtype)

    def mode(self, phi):
        return (self._p(phi) > 0.5).to(phi.dtype)


class BinomialLeaf(_BinaryLogitLeaf):
    """Binomial on {0, ..., n_trials}; phi = E[x] = n_trials * p.

    Parameters
    ----------
    n_trials : int >= 1 or None
        None: ``infer`` takes ``max(1, max(X))``.
    """

    name = "binomial"
    has_base_measure = True
    inferred = ("n_trials",)

    def __init__(self, n_trials=None):
        if n_trials is not None and not (_is_integer(n_trials) and n_trials >= 1):
            raise ValueError(f"n_trials={n_trials!r}: binomial leaves need an integer n_trials >= 1, or None.")
        self.n_trials = None if n_trials is None else int(n_trials)

    def validate(self, X, columns=None):
        super().validate(X, columns)
        largest = self.n_trials
        _check_bounded_counts(X, columns, "binomial", "n_trials", self.n_trials, largest)

    def infer(self, X):
        # n_trials: the largest count seen (at least 1)
        return _infer_bound(self, X, "n_trials", lambda largest: max(1, largest))

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


class _LastTable:
    """The table ``compute(phi)`` of the parameter tensor evaluated last,
    reused while the same tensor, unchanged, is evaluated again.

    A pass over many chunks (scoring 55,000 images, a full-batch E-step)
    evaluates the leaves once per chunk with the same parameters; for
    categorical leaves the log of the projected table (L, S, K, C) cost more
    than the chunk itself: scoring MNIST with an HCLT (K=64, 12.8M leaf
    probabilities, 54-row float64 chunks) spent 0.2 s per chunk on it. The
    entry is keyed by the tensor's identity and its in-place version
    counter, is dropped with the tensor (a weak reference), and is never
    used for tensors that require gradients (Adam's). One entry in all:
    memory for one table at most.
    """

    def __init__(self):
        self._entry = None  # (weak reference to phi, phi._version, table)

    def get(self, phi, compute):
        if phi.requires_grad or phi.is_inference():  # inference tensors keep no version counter
            return compute(phi)
        entry = self._entry
        if entry is not None and entry[0]() is phi and entry[1] == phi._version:
            return entry[2]
        table = compute(phi)

        def drop(reference, owner=self):
            if owner._entry is not None and owner._entry[0] is reference:
                owner._entry = None

        self._entry = (weakref.ref(phi, drop), phi._version, table)
        return table


_LOG_TABLES = _LastTable()


class CategoricalLeaf(ExponentialFamilyLeaf):
    """Categorical on {0, ..., n_categories - 1}; phi = the probability vector.

    Evaluated by gathering log-probabilities (cost L*S*B*K) rather than by a
    one-hot matmul (cost L*S*C*B*K), which matters for 256-state pixels.

    Parameters
    ----------
    n_categories : int >= 2 or None
        C; None: ``infer`` takes ``max(2, max(X) + 1)``.
    """

    name = "categorical"
    inferred = ("n_categories",)

    def __init__(self, n_categories=None):
        if n_categories is not None and not (_is_integer(n_categories) and n_categories >= 2):
            raise ValueError(
                f"n_categories={n_categories!r}: categorical leaves need an integer n_categories >= 2, or None."
            )
        self.n_categories = None if n_categories is None else int(n_categories)

    @property
    def n_stats(self):
        self._check_inferred()
        return self.n_categories

    @property
    def n_free(self):
        # the probabilities sum to one: C - 1 free values
        return self.n_stats - 1

    @property
    def n_states(self):
        """C = n_categories (data softening)."""
        return self.n_stats

    def state_statistics_sum(self):
        """sum_c onehot(c): ones (C,) (data softening)."""
        return torch.ones(self.n_categories, dtype=torch.float64)

    def validate(self, X, columns=None):
        super().validate(X, columns)
        largest = None if self.n_categories is None else self.n_categories - 1
        _check_bounded_counts(X, columns, "categorical", "n_categories", self.n_categories, largest)

    def infer(self, X):
        # n_categories: one more than the largest state seen (at least 2)
        return _infer_bound(self, X, "n_categories", lambda largest: max(2, largest + 1))

    def project(self, phi):
        phi = phi.clamp_min(PROB_FLOOR)
        return phi / phi.sum(-1, keepdim=True)

    def prior_mean(self, phi, stats, counts):
        """The uniform distribution: a symmetric Dirichlet prior adding
        ``pseudocount / n_categories`` to the count of every state."""
        return phi.new_full((1,), 1.0 / self.n_categories)

    def prepare(self, X, scope):
        """(x (L, S, B) long with missing entries set to 0, obs (L, S, B))."""
        B = X.shape[0]
        padded = torch.cat([X, X.new_full((B, 1), float("nan"))], 1)  # column D: the padding variable
        x = padded.t()[scope]  # (D+1, B)[scope] -> (L, S, B)
        missing = torch.isnan(x)
        return x.masked_fill(missing, 0).long(), (~missing).to(X.dtype)

    def pair_log_prob(self, data, phi):
        """log p(x) per pair by a gather: (L, S, K, B), log p(0) where x is missing."""
        x, obs = data
        L, S, B = x.shape
        K = phi.shape[2]
        log_p = _LOG_TABLES.get(phi, lambda p: torch.log(self.project(p)))  # (L, S, K, C)
        return torch.gather(log_p, 3, x.unsqueeze(2).expand(L, S, K, B))  # (L, S, K, B)

    def pair_statistics(self, data, weights):
        """Weighted one-hot counts (L, S, K, C): state x[l, s, b] accumulates
        weights[l, s, k, b] (0 where x is missing), by a scatter."""
        x, obs = data
        L, S, K, B = weights.shape
        stats = torch.zeros(L, S, K, self.n_categories, dtype=weights.dtype, device=weights.device)
        return stats.scatter_add_(3, x.unsqueeze(2).expand(L, S, K, B), weights)

    def region_log_prob(self, data, phi):
        obs = data[1]
        return (self.pair_log_prob(data, phi) * obs.unsqueeze(2)).sum(1)  # (L, K, B)

    def expected_statistics(self, data, grad):
        x, obs = data
        counts = torch.bmm(obs, grad.transpose(1, 2))  # (L, S, B) @ (L, B, K) -> (L, S, K)
        weighted = obs.unsqueeze(2) * grad.unsqueeze(1)  # (L, S, K, B)
        return self.pair_statistics(data, weighted), counts

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
        # a missing value was replaced by its feature's mean: the nearest state
        onehot = torch.nn.functional.one_hot(x_values.round().long(), self.n_categories).to(x_values.dtype)
        noise = torch.rand(onehot.shape, generator=generator, device=generator.device, dtype=torch.float64)
        noise = noise.to(x_values)
        return self.project(0.5 * onehot + 0.5 * noise / noise.sum(-1, keepdim=True))


class PoissonLeaf(ExponentialFamilyLeaf):
    """Poisson on the counts {0, 1, 2, ...}; phi = E[x] = the rate lambda.

    T(x) = x, theta = log(lambda), c = -lambda and log h(x) = -log(x!), so
    ``log p(x) = x log(lambda) - lambda - lgamma(x + 1)``. Rates are kept
    >= ``RATE_FLOOR``. The worked example of a plug-in family: it defines
    exactly what the module docstring lists, and inherits the forward pass,
    the E-step and the M-step (phi = the posterior-weighted mean count).
    """

    name = "poisson"
    n_stats = 1
    has_base_measure = True

    def _rate(self, phi):
        return phi[..., 0].clamp_min(RATE_FLOOR)

    def validate(self, X, columns=None):
        super().validate(X, columns)
        _check_counts(_as_2d(X), columns, "Poisson")

    def base_measure(self, x):
        return -torch.lgamma(x + 1)

    def write_statistics(self, x, obs, out):
        # -lgamma(1) is 0 at the fill value, but mask explicitly as Binomial does
        torch.mul(self.base_measure(x), obs, out=out[:, 2])

    def natural(self, phi):
        rate = self._rate(phi)
        return [torch.log(rate)], -rate

    def project(self, phi):
        return self._rate(phi).unsqueeze(-1)

    def sample(self, phi, generator):
        return torch.poisson(self._rate(phi), generator=generator)

    def mode(self, phi):
        # p(x) / p(x - 1) = lambda / x: the pmf rises while x < lambda, so
        # floor(lambda) is a mode; at an integer lambda, lambda - 1 ties with it
        return torch.floor(self._rate(phi))

    def mode_log_density(self, phi):
        rate = self._rate(phi)
        x = torch.floor(rate)
        return x * torch.log(rate) - rate - torch.lgamma(x + 1)

    def to_unconstrained(self, phi):
        return torch.log(self._rate(phi)).unsqueeze(-1)

    def from_unconstrained(self, u):
        return torch.exp(u)

    def init_from_data(self, X, scope, n_sums, generator):
        """As the base class, with the column mean as the centre ``init_phi`` pulls toward."""
        seeds = _data_seeds(X, scope, n_sums, generator, self.fill_value())
        return self.init_phi(seeds.values, seeds.mean, generator)

    def init_phi(self, x_values, spread, generator):
        """Rates halfway between each sampled count and ``spread`` (L, S, 1),
        a typical rate of the feature: the column mean from ``init_from_data``
        (a Poisson variable's variance equals its mean, so the variance the
        base class passes estimates it too). A sampled 0 thus starts at a
        positive rate, and no rate starts below ``RATE_FLOOR``."""
        return self.project((0.5 * (x_values + spread)).unsqueeze(-1))
