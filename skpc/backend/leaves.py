"""Exponential-family leaves in expectation parameters.

A leaf *region* of an Einsum Network is a vector of K densities, each the
product of univariate densities over the region's scope (Peharz et al. 2020,
section 3.3). All leaf regions are evaluated together in a padded layout:
leaf region l has the variables ``scope[l, :]`` (S wide; narrower regions are
padded with a dummy, always-missing variable whose index is D = n_features),
and

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

Families, the registry and mixed features
-----------------------------------------
``LEAF_FAMILIES`` maps names to the built-in families; ``resolve_leaf`` turns
an estimator's ``leaf`` parameter (a name, a leaf instance, a dict
``{family: columns}`` or a list with one family per column) into a leaf
object. Dicts and lists that give the columns different families make a
``MixedLeaf``: one family per feature, still ONE phi tensor of shape
(L, S, K, T_max), T_max the largest T of its families, with the columns a
pair's family does not use held at 0.

The life of a leaf object in an estimator: ``resolve_leaf`` (unfitted,
hyper-parameters such as ``n_categories`` may be None) -> ``infer(X)`` (a new,
fitted leaf: the estimator's ``leaf_``; ``validate(X)`` on every later X) ->
``for_scope(scope)`` (the object a compiled circuit uses) ->
``init_from_data``, ``prepare``/``region_log_prob``/``expected_statistics``,
``m_step``, ``sample``/``mode``.

Writing a new family
--------------------
A user family is a subclass of ``ExponentialFamilyLeaf`` passed as an
instance (alone, or as a dict key / list entry for some columns).
``PoissonLeaf`` below is the worked example. It must define:

- ``name`` (str), ``n_stats`` (T) and ``has_base_measure``;
- ``__init__`` storing each argument under its own name, as scikit-learn
  estimators do: ``get_config``, ``==``, ``repr``, pickling and the
  registry's keyword routing read them from there;
- ``natural(phi)``, and ``write_statistics(x, obs, out)`` for the columns
  after the first (plus ``base_measure(x)`` when ``has_base_measure``):
  with these the inherited ``prepare``, ``region_log_prob``,
  ``region_log_max``, ``expected_statistics`` and ``m_step`` work. A family
  whose first statistic is not x itself overwrites ``out[:, 0]`` too; one
  that is cheaper to evaluate otherwise overrides ``prepare``,
  ``observed``, ``region_log_prob`` and ``expected_statistics`` together
  (as ``CategoricalLeaf`` does);
- ``project(phi)``: into the valid set, from ANY finite phi: zeros included,
  since ``safe_phi`` (what ``MixedLeaf`` substitutes on the pairs of other
  families) is ``project(0)`` unless overridden;
- ``sample(phi, generator)``, ``mode(phi)``, ``mode_log_density(phi)``;
- ``to_unconstrained(phi)`` and ``from_unconstrained(u)``, both keeping the
  shape (..., T), with ``from_unconstrained`` finite on all of R^T;
- ``init_phi(x_values, spread, generator)``;
- ``validate(X, columns=None)`` when not every finite value is a valid
  observation (call ``super().validate``), ``infer(X)`` and ``inferred`` when
  a hyper-parameter may be left None for the data to fill, and ``n_free``
  when a density has fewer free parameters than T.
"""

import copy
import inspect
import math

import numpy as np
import torch

# Probabilities of discrete leaves are kept in [PROB_FLOOR, 1 - PROB_FLOOR]:
# a zero probability would give -inf on unseen test data.
PROB_FLOOR = 1e-6

# Poisson rates are kept >= RATE_FLOOR: a rate of 0 has log-rate -inf (a NaN
# in the matmul as 0 * -inf) and gives -inf to any positive count in test
# data. At 1e-6 a count of 1 still costs a finite ~14.8 nats, and the floor
# is far above float32's tiny, so log(rate) and its gradient stay finite.
RATE_FLOOR = 1e-6


class ExponentialFamilyLeaf:
    """Base class: one univariate exponential family, vectorized over pairs.

    Subclasses define the sufficient statistics, the map from expectation to
    natural parameters, the M-step projection, sampling, the mode, and an
    unconstrained reparameterization for gradient training (see the module
    docstring for the full list a new family must define).
    """

    name = "base"
    n_stats = 1
    has_base_measure = False
    # hyper-parameters that may be left None for ``infer`` to fill from data
    inferred = ()
    # columns of the X ``infer`` saw (None before): the padding index D of
    # ``n_free_parameters`` when not given; not part of the configuration
    _n_features = None

    # -------------------------------------------------- configuration, data
    def get_config(self):
        """The family name and hyper-parameters, as plain python data.

        Read from the ``__init__`` arguments, which every family stores under
        their own names. Equality, ``repr`` and hashing derive from it.
        """
        return {"family": self.name, **{key: getattr(self, key) for key in _init_arguments(type(self))}}

    def __eq__(self, other):
        if not isinstance(other, ExponentialFamilyLeaf):
            return NotImplemented
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self):
        # a leaf is a dict key in resolve_leaf's {family: columns} specs
        return hash((type(self).__name__, repr(self.get_config())))

    def __repr__(self):
        config = self.get_config()
        config.pop("family")
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in config.items())})"

    def validate(self, X, columns=None):
        """Raise ValueError if X holds values this family cannot model.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_columns), float64
            NaN marks a missing entry (always valid).
        columns : sequence of int or None
            The indices of X's columns in the estimator's data, for the
            messages; given by ``MixedLeaf``, whose messages then tell the
            user to change those columns' family in the leaf spec. None: X
            is the whole data and the fix is another ``leaf=``.
        """
        X = _as_2d(X)
        bad = np.isinf(X)
        if bad.any():
            raise ValueError(
                f"X contains inf in {_columns_text(columns, bad.any(0))}; replace it by a finite value, "
                "or by NaN to mark it missing."
            )

    def infer(self, X):
        """A NEW leaf with every hyper-parameter left None filled from X.

        Validates X first. Families with nothing to infer return a copy;
        ``self`` is never changed.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_features), float64, NaN = missing
        """
        self.validate(X)
        return _fitted_on(copy.deepcopy(self), X)

    def for_scope(self, scope):
        """The leaf object a circuit with leaf regions ``scope`` (L, S) uses.

        A single family works with any layout: ``self``. Raises if a
        hyper-parameter is still None (``infer`` was not called).
        """
        self._check_inferred()
        return self

    @property
    def n_free(self):
        """Free parameters of one univariate density (T unless constrained)."""
        return self.n_stats

    def n_free_parameters(self, scope, n_variables=None):
        """Free parameters of ONE of the K densities of every leaf region.

        Parameters
        ----------
        scope : (L, S) int64 tensor
            Variable indices of the leaf regions.
        n_variables : int or None
            D; index D is the padding of narrower regions, which has no
            parameters. None: the number of features ``infer`` saw (the
            scope alone cannot tell whether its largest index is padding).

        Returns
        -------
        int : the sum over the real (region, variable) pairs; the circuit
        multiplies it by K.
        """
        self._check_inferred()
        if n_variables is None:
            n_variables = self._n_features
        if n_variables is None:
            raise ValueError(
                f"{self!r} was not fitted with infer(X), so the padding index is unknown; pass n_variables."
            )
        return self.n_free * int((scope < n_variables).sum())

    def _check_inferred(self):
        unset = [key for key in self.inferred if getattr(self, key) is None]
        if unset:
            raise ValueError(
                f"{self!r} has {', '.join(unset)}=None: fit it to data first with leaf.infer(X) "
                f"(the estimators do this in fit), or pass {unset[0]}."
            )

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

    def safe_phi(self, like):
        """A valid phi (T,) in ``like``'s dtype and device.

        ``MixedLeaf`` writes it over the pairs of other families before it
        calls this family's functions, so that branches it then discards
        hold no NaN or inf (Adam differentiates through them).
        """
        return self.project(like.new_zeros(self.n_stats))

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

    # ---------------------------------------------------------------- M-step
    def m_step(self, phi, stats, counts, step_size):
        """phi after one (stochastic) EM update with step size in (0, 1].

        Parameters
        ----------
        phi : (L, S, K, T) tensor, the current parameters
        stats : (L, S, K, T) tensor, ``sum_b obs * p(leaf | x_b) * T(x_b)``
        counts : (L, S, K) tensor, ``sum_b obs * p(leaf | x_b)``
        step_size : float

        Returns
        -------
        (L, S, K, T) tensor: ``project(lerp(phi, project(stats / counts),
        step_size))``, where a density without any count (<= 1e-12) keeps
        its old value.
        """
        estimate, seen = self._maximize(stats, counts)
        return self.project(torch.lerp(phi, torch.where(seen, estimate, phi), step_size))

    def _maximize(self, stats, counts):
        """The maximum-likelihood estimate ``stats / counts`` (projected), and
        where it exists: ``(phi_hat (L, S, K, T), seen (L, S, K, 1) bool)``.

        This is where a MAP M-step would enter, as a further argument: a
        conjugate prior's pseudo-statistics a * phi0 and pseudo-counts a
        added to stats and counts give ``(stats + a phi0) / (counts + a)``.
        """
        counts = counts.unsqueeze(-1)  # (L, S, K, 1)
        estimate = stats / counts.clamp_min(torch.finfo(counts.dtype).tiny)
        return self.project(estimate), counts > 1e-12

    # ------------------------------------------------------ sampling, mode
    def sample(self, phi, generator):
        """One draw per entry of phi (..., T) -> (...), e.g. (L, S, B, T) -> (L, S, B)."""
        raise NotImplementedError

    def mode(self, phi):
        """The most probable value per entry of phi (..., T) -> (...)."""
        raise NotImplementedError

    def mode_log_density(self, phi):
        """log p(mode) per entry of phi (..., T) -> (...): the largest log-density."""
        raise NotImplementedError

    # --------------------------------------------------------- Adam support
    def to_unconstrained(self, phi):
        """phi (..., T) -> u (..., T), unconstrained; inverse of ``from_unconstrained`` on projected phi."""
        raise NotImplementedError

    def from_unconstrained(self, u):
        """u (..., T), any real values -> a valid phi (..., T) (differentiable)."""
        raise NotImplementedError

    # ---------------------------------------------------------- init, data
    def init_from_data(self, X, scope, n_sums, generator):
        """Data-dependent initial phi (L, S, K, T), in X's dtype.

        Each of the K densities of a pair starts from the value of one random
        training row (a missing one replaced by its feature's mean), as
        k-means++ style seeding would, with the feature's variance as
        spread; ``init_phi`` turns these into parameters.

        Parameters
        ----------
        X : (N, D) tensor, NaN = missing
        scope : (L, S) int64 tensor, index D = padding
        n_sums : int, K
        generator : torch.Generator, the only source of randomness
            (draws are made on its device).
        """
        self._check_inferred()
        seeds = _data_seeds(X, scope, n_sums, generator, self.fill_value())
        return self.init_phi(seeds.values, seeds.variance, generator)

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
        observed, X = _check_counts(_as_2d(X), columns, "binomial")
        too_big = observed & (X > self.n_trials) if self.n_trials is not None else None
        if too_big is not None and too_big.any():
            raise ValueError(
                f"X contains the value {int(X[too_big].max())} in {_columns_text(columns, too_big.any(0))}, but "
                f"binomial leaves have n_trials={self.n_trials} (values 0..{self.n_trials}); raise n_trials."
            )

    def infer(self, X):
        self.validate(X)
        if self.n_trials is not None:
            return _fitted_on(copy.deepcopy(self), X)
        X = _as_2d(X)
        observed = X[~np.isnan(X)]
        return _fitted_on(BinomialLeaf(max(1, int(observed.max()) if observed.size else 1)), X)

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

    def validate(self, X, columns=None):
        super().validate(X, columns)
        observed, X = _check_counts(_as_2d(X), columns, "categorical")
        C = self.n_categories
        too_big = observed & (X >= C) if C is not None else None
        if too_big is not None and too_big.any():
            raise ValueError(
                f"X contains the value {int(X[too_big].max())} in {_columns_text(columns, too_big.any(0))}, but "
                f"categorical leaves have n_categories={C} states (0..{C - 1}); raise n_categories."
            )

    def infer(self, X):
        self.validate(X)
        if self.n_categories is not None:
            return _fitted_on(copy.deepcopy(self), X)
        X = _as_2d(X)
        observed = X[~np.isnan(X)]
        return _fitted_on(CategoricalLeaf(max(2, int(observed.max()) + 1 if observed.size else 2)), X)

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


class MixedLeaf(ExponentialFamilyLeaf):
    """One family per feature: mixed data types (real, binary, categorical,
    counts) in one circuit.

    The parameters stay ONE tensor, phi (L, S, K, T_max) with T_max the
    largest T of the families: a pair (region l, variable s) keeps its
    family's T statistics in ``phi[l, s, :, :T]`` and 0 in the columns after
    them, which every method keeps at 0; padding pairs are 0 throughout and
    contribute 0 to every result. Every method runs each family's own code
    over all (L, S) pairs with the other pairs at a safe value (the
    family's ``safe_phi``, the fill value, or u = 0), then keeps the
    family's pairs with ``torch.where``: nothing non-finite appears even in
    the discarded branches, which Adam differentiates through.

    The cost is one pass per distinct family over the whole layout, and a
    T_max wide phi everywhere (a 256-state categorical column makes every
    pair 256 wide).

    Parameters
    ----------
    families : sequence of ExponentialFamilyLeaf, one per feature
        Columns whose families compare equal form one group and share its
        hyper-parameters: ``infer`` fills a None ``n_categories`` from all
        the group's columns. Give the columns separate instances with
        different settings (e.g. ``CategoricalLeaf(3)``, ``CategoricalLeaf(5)``)
        to make them differ.

    Notes
    -----
    The methods on phi need the layout of the leaf regions: call
    ``for_scope(scope)`` first (the compiled circuit does). ``natural`` and
    ``write_statistics`` do not exist for a mixture of families: it is
    evaluated through its families' ``prepare`` and ``region_log_prob``.
    """

    name = "mixed"

    def __init__(self, families):
        families = list(families)
        if not families:
            raise ValueError("MixedLeaf needs one family per feature; got an empty list.")
        for j, family in enumerate(families):
            if not isinstance(family, ExponentialFamilyLeaf) or isinstance(family, MixedLeaf):
                raise ValueError(
                    f"The family of column {j} is {family!r}; give one ExponentialFamilyLeaf per column "
                    "(a MixedLeaf cannot be nested)."
                )
        self.families = families
        # distinct families in order of their first column, and their columns
        self._groups, self._columns = [], []
        for j, family in enumerate(families):
            for g, seen in enumerate(self._groups):
                if seen == family:
                    self._columns[g].append(j)
                    break
            else:
                self._groups.append(family)
                self._columns.append([j])
        self._layout = None  # set on the copy ``for_scope`` returns

    # -------------------------------------------------- configuration, data
    @property
    def n_features(self):
        """D, the number of columns the leaf gives families for."""
        return len(self.families)

    @property
    def groups(self):
        """[(family, columns)] for each distinct family."""
        return [(family, list(cols)) for family, cols in zip(self._groups, self._columns)]

    @property
    def n_stats(self):
        """T_max, the width of phi's last axis."""
        return max(family.n_stats for family in self._groups)

    def get_config(self):
        return {"family": self.name, "families": [family.get_config() for family in self.families]}

    def __repr__(self):
        return "MixedLeaf({" + ", ".join(f"{family!r}: {cols}" for family, cols in self.groups) + "})"

    def _check_inferred(self):
        for family in self._groups:
            family._check_inferred()

    def validate(self, X, columns=None):
        X = _as_2d(X)
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"X has {X.shape[1]} features but the leaf gives families for {self.n_features} columns; "
                "give one family per feature of X."
            )
        super().validate(X, columns)
        for family, cols in self.groups:
            named = cols if columns is None else [columns[c] for c in cols]
            family.validate(X[:, cols], columns=named)

    def infer(self, X):
        self.validate(X)
        X = _as_2d(X)
        fitted = list(self.families)
        for family, cols in self.groups:
            inferred = family.infer(X[:, cols])
            for c in cols:
                fitted[c] = inferred
        return MixedLeaf(fitted)

    def for_scope(self, scope):
        """A copy bound to the leaf regions ``scope`` (L, S): it knows the
        family of every (region, variable) pair."""
        self._check_inferred()
        bound = copy.copy(self)
        bound._layout = self._build_layout(scope)
        return bound

    def n_free_parameters(self, scope, n_variables=None):
        if n_variables is not None and n_variables != self.n_features:
            raise ValueError(f"n_variables={n_variables} but the leaf has families for {self.n_features} columns.")
        layout = self._layout_for(scope)
        # each family counts its own pairs: the others are its padding there
        return sum(
            family.n_free_parameters(local, len(cols))
            for family, cols, local in zip(self._groups, self._columns, layout.local)
        )

    # ---------------------------------------------------------------- layout
    def _build_layout(self, scope):
        D = self.n_features
        if scope.numel() and int(scope.max()) > D:
            raise ValueError(
                f"scope indexes variable {int(scope.max())}, but the leaf has families for {D} columns "
                f"(0..{D - 1}, and {D} for padding); bind it to the scope of a circuit over X's features."
            )
        dev = scope.device
        group_of = torch.full((D + 1,), -1, dtype=torch.long, device=dev)  # -1: the padding variable
        local, columns = [], []
        for g, cols in enumerate(self._columns):
            index = torch.as_tensor(cols, dtype=torch.long, device=dev)
            group_of[index] = g
            # the family sees only its columns: X[:, cols] with the other
            # pairs at its own padding index len(cols)
            table = torch.full((D + 1,), len(cols), dtype=torch.long, device=dev)
            table[index] = torch.arange(len(cols), device=dev)
            local.append(table[scope])  # (L, S)
            columns.append(index)
        pair_group = group_of[scope]  # (L, S)
        masks = [pair_group == g for g in range(len(self._columns))]
        return _MixedLayout(scope, masks, local, columns)

    def _layout_for(self, scope):
        if self._layout is not None and self._layout.scope is scope:
            return self._layout
        return self._build_layout(scope)

    def _bound(self):
        if self._layout is None:
            raise ValueError(
                "A MixedLeaf needs the layout of the leaf regions for this: use leaf.for_scope(scope) "
                "(what a compiled circuit holds)."
            )
        return self._layout

    def _parts(self):
        """(family, mask (L, S) bool) per group."""
        return zip(self._groups, self._bound().masks)

    def _own(self, family, mask, phi):
        """phi (L, S, ..., T_max) -> the family's (L, S, ..., T), other pairs at its safe phi."""
        own = phi[..., : family.n_stats]
        return torch.where(_expand(mask, own.dim()), own, family.safe_phi(own))

    def _widen(self, value):
        """(..., T) -> (..., T_max), zeros after T."""
        extra = self.n_stats - value.shape[-1]
        return torch.nn.functional.pad(value, (0, extra)) if extra else value

    def _combine(self, phi, fn):
        """fn(family, own phi) per family, widened to T_max and kept on its pairs; 0 elsewhere."""
        out = phi.new_zeros(phi.shape)
        for family, mask in self._parts():
            out = torch.where(_expand(mask, phi.dim()), self._widen(fn(family, self._own(family, mask, phi))), out)
        return out

    def _combine_values(self, phi, fn):
        """fn(family, own phi) -> (...) per family (one value per entry), kept on its pairs; 0 elsewhere."""
        out = phi.new_zeros(phi.shape[:-1])
        for family, mask in self._parts():
            out = torch.where(_expand(mask, out.dim()), fn(family, self._own(family, mask, phi)), out)
        return out

    # --------------------------------------------------------------- forward
    def project(self, phi):
        return self._combine(phi, lambda family, own: family.project(own))

    def prepare(self, X, scope):
        """A tuple with each family's ``prepare`` of its own columns."""
        layout = self._layout_for(scope)
        return tuple(
            family.prepare(X.index_select(1, cols), local)
            for family, cols, local in zip(self._groups, layout.columns, layout.local)
        )

    def observed(self, data):
        # each family's data is missing on the other families' pairs
        return sum(family.observed(d) for family, d in zip(self._groups, data))

    def region_log_prob(self, data, phi):
        out = None
        for (family, mask), d in zip(self._parts(), data):
            value = family.region_log_prob(d, self._own(family, mask, phi))  # (L, K, B)
            out = value if out is None else out + value
        return out

    def expected_statistics(self, data, grad):
        L, S = self._bound().masks[0].shape
        K = grad.shape[1]
        stats = grad.new_zeros(L, S, K, self.n_stats)
        counts = grad.new_zeros(L, S, K)
        for (family, mask), d in zip(self._parts(), data):
            s, c = family.expected_statistics(d, grad)  # (L, S, K, T), (L, S, K)
            stats = torch.where(_expand(mask, 4), self._widen(s), stats)
            counts = torch.where(_expand(mask, 3), c, counts)
        return stats, counts

    # ------------------------------------------------------ sampling, mode
    def sample(self, phi, generator):
        return self._combine_values(phi, lambda family, own: family.sample(own, generator))

    def mode(self, phi):
        return self._combine_values(phi, lambda family, own: family.mode(own))

    def mode_log_density(self, phi):
        return self._combine_values(phi, lambda family, own: family.mode_log_density(own))

    # --------------------------------------------------------- Adam support
    def to_unconstrained(self, phi):
        return self._combine(phi, lambda family, own: family.to_unconstrained(own))

    def from_unconstrained(self, u):
        out = u.new_zeros(u.shape)
        for family, mask in self._parts():
            where = _expand(mask, u.dim())
            own = torch.where(where, u[..., : family.n_stats], 0.0)  # u = 0 is valid for every family
            out = torch.where(where, self._widen(family.from_unconstrained(own)), out)
        return out

    # ---------------------------------------------------------- init, data
    def init_from_data(self, X, scope, n_sums, generator):
        """Each family's ``init_from_data`` on its own columns, kept on its pairs."""
        self._check_inferred()
        layout = self._layout_for(scope)
        L, S = scope.shape
        out = X.new_zeros(L, S, n_sums, self.n_stats)
        for family, mask, cols, local in zip(self._groups, layout.masks, layout.columns, layout.local):
            phi = family.init_from_data(X.index_select(1, cols), local, n_sums, generator)
            out = torch.where(_expand(mask, 4), self._widen(phi), out)
        return out

    def init_phi(self, x_values, spread, generator):
        """(L, S, K) values and (L, S, 1) spreads -> phi (L, S, K, T_max): each
        family's ``init_phi`` with the other pairs at its fill value."""
        out = x_values.new_zeros(x_values.shape + (self.n_stats,))
        for family, mask in self._parts():
            own = torch.where(mask.unsqueeze(-1), x_values, family.fill_value())
            out = torch.where(_expand(mask, 4), self._widen(family.init_phi(own, spread, generator)), out)
        return out


class _MixedLayout:
    """A MixedLeaf's view of the leaf regions: scope (L, S); per family, its
    pairs (mask (L, S) bool), its columns of X (long), and the scope in those
    columns (local (L, S), its padding index = its number of columns)."""

    def __init__(self, scope, masks, local, columns):
        self.scope = scope
        self.masks = masks
        self.local = local
        self.columns = columns


# --------------------------------------------------------------- helpers


def _expand(mask, ndim):
    """mask (L, S) -> (L, S, 1, ..., 1) with ``ndim`` dims, to broadcast over K/B and T."""
    return mask.view(mask.shape + (1,) * (ndim - mask.dim()))


def _init_arguments(cls):
    """Names of the arguments of ``cls.__init__`` (not self, *args, **kwargs)."""
    if cls.__init__ is object.__init__:
        return []
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    parameters = list(inspect.signature(cls.__init__).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in kinds]


def _fitted_on(leaf, X):
    """``leaf`` after recording the number of columns of X (see ``_n_features``)."""
    leaf._n_features = np.shape(X)[1]
    return leaf


def _is_integer(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _as_2d(X):
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"X must be 2-D, (n_samples, n_features); got shape {X.shape}.")
    return X


def _columns_text(columns, flagged):
    """'column 3' or 'columns 1, 4' (at most 10 shown) for the flagged (n,) columns of X."""
    index = np.flatnonzero(flagged)
    if columns is not None:
        index = np.asarray(columns)[index]
    shown = ", ".join(str(int(i)) for i in index[:10]) + (", ..." if len(index) > 10 else "")
    return f"column {shown}" if len(index) == 1 else f"columns {shown}"


def _fix(columns, *families):
    """The remedy of a validation message: another ``leaf=``, or (in a mixed leaf) another family for those columns."""
    if columns is None:
        return "use " + " or ".join(f"leaf={family!r}" for family in families)
    return "give those columns the " + " or ".join(repr(family) for family in families) + " family in the leaf spec"


def _check_counts(X, columns, family):
    """Reject observed values that are not integers >= 0; returns (observed mask, X with 0 where missing)."""
    observed = ~np.isnan(X)
    X = np.where(observed, X, 0.0)
    bad = observed & ((X != np.round(X)) | (X < 0))
    if bad.any():
        raise ValueError(
            f"X contains negative or non-integer values in {_columns_text(columns, bad.any(0))}: {family} leaves "
            f"need integers >= 0; {_fix(columns, 'gaussian')} for real-valued data."
        )
    return observed, X


class _Seeds:
    """What ``init_from_data`` draws, per pair: values (L, S, K) of random
    training rows (missing ones at the column mean), and the column's
    variance and mean (L, S, 1)."""

    def __init__(self, values, variance, mean):
        self.values = values
        self.variance = variance
        self.mean = mean


def _data_seeds(X, scope, n_sums, generator, fill):
    """One random training row per leaf density; see ``_Seeds``.

    X (N, D) with NaN = missing; scope (L, S), index D = padding (its value
    ``fill``, its variance 1). All-missing columns get mean ``fill`` and
    variance 1, constant ones variance 1.
    """
    L, S = scope.shape
    N = X.shape[0]
    rows = torch.randint(0, N, (L, S, n_sums), generator=generator, device=generator.device).to(X.device)
    col_mean = torch.nan_to_num(torch.nanmean(X, 0), nan=fill)  # (D,)
    Xf = torch.where(torch.isnan(X), col_mean, X)
    Xf = torch.cat([Xf, X.new_full((N, 1), fill)], 1)  # column D: the padding variable
    values = Xf[rows, scope.unsqueeze(-1).expand(L, S, n_sums)]  # (L, S, K)
    col_var = torch.nan_to_num(_nanvar(X), nan=1.0)
    col_var = torch.where(col_var > 0, col_var, torch.ones_like(col_var))
    variance = torch.cat([col_var, col_var.new_ones(1)])[scope].unsqueeze(-1)  # (L, S, 1)
    mean = torch.cat([col_mean, col_mean.new_full((1,), fill)])[scope].unsqueeze(-1)  # (L, S, 1)
    return _Seeds(values, variance, mean)


def _nanvar(X):
    """Per-column variance of X (N, D) ignoring NaN."""
    mean = torch.nanmean(X, 0)
    return torch.nanmean((X - mean) ** 2, 0)


# -------------------------------------------------------------- registry

LEAF_FAMILIES = {
    "gaussian": GaussianLeaf,
    "bernoulli": BernoulliLeaf,
    "categorical": CategoricalLeaf,
    "binomial": BinomialLeaf,
    "poisson": PoissonLeaf,
}


def _named_family(name, options):
    """The family registered as ``name``, given the options its ``__init__`` takes."""
    if not isinstance(name, str) or name not in LEAF_FAMILIES:
        valid = ", ".join(repr(n) for n in LEAF_FAMILIES)
        raise ValueError(
            f"leaf={name!r} is not a leaf family; use one of {valid}, an ExponentialFamilyLeaf instance, "
            "a dict {family: [columns]} or a list with one family per column."
        )
    cls = LEAF_FAMILIES[name]
    return cls(**{key: options[key] for key in _init_arguments(cls) if key in options})


def _family_entry(entry, options, where):
    """A dict key or list entry: a family name or a single-family instance."""
    if isinstance(entry, MixedLeaf):
        raise ValueError(f"{where} is a MixedLeaf; give a single family per column (MixedLeaf cannot be nested).")
    if isinstance(entry, ExponentialFamilyLeaf):
        return copy.deepcopy(entry)
    if isinstance(entry, str):
        return _named_family(entry, options)
    raise ValueError(
        f"{where} is {entry!r}; give a family name ({', '.join(map(repr, LEAF_FAMILIES))}) "
        "or an ExponentialFamilyLeaf."
    )


def resolve_leaf(spec, n_features, *, min_var=1e-4, max_var=None, n_categories=None, n_trials=None):
    """The (unfitted) leaf object for an estimator's ``leaf`` parameter.

    Parameters
    ----------
    spec : str, ExponentialFamilyLeaf, dict or list
        - a family name of ``LEAF_FAMILIES``: configured by the keywords;
        - a leaf instance: a copy is returned, the keywords are ignored;
        - a dict ``{family: columns}``, family a name or an instance,
          columns a list of column indices (an int for one column), e.g.
          ``{"gaussian": [0, 3], "categorical": [1, 2]}``: every column in
          exactly one entry;
        - a list or tuple with one family (name or instance) per column.
        Names in dicts and lists are configured by the keywords too, and
        equal entries share their hyper-parameters (see ``MixedLeaf``).
        When dict or list give every column the same family the result is
        that family alone: the same model as a ``MixedLeaf`` of one family,
        without its per-family passes.
    n_features : int
        Columns of X (the length of a list, the range of a dict's indices).
    min_var, max_var : float, float or None
        Gaussian variance bounds.
    n_categories, n_trials : int or None
        Categorical states and binomial trials; None leaves them to
        ``infer``.

    Returns
    -------
    ExponentialFamilyLeaf
    """
    options = dict(min_var=min_var, max_var=max_var, n_categories=n_categories, n_trials=n_trials)
    if isinstance(spec, MixedLeaf):
        if spec.n_features != n_features:
            raise ValueError(
                f"The MixedLeaf gives families for {spec.n_features} columns but X has {n_features} features; "
                "give one family per feature of X."
            )
        return MixedLeaf([copy.deepcopy(family) for family in spec.families])
    if isinstance(spec, ExponentialFamilyLeaf):
        return copy.deepcopy(spec)
    if isinstance(spec, str):
        return _named_family(spec, options)
    if isinstance(spec, dict):
        per_column = _columns_of_dict(spec, n_features, options)
    elif isinstance(spec, (list, tuple)):
        if len(spec) != n_features:
            raise ValueError(
                f"The leaf list has {len(spec)} entries but X has {n_features} features; give one family per column."
            )
        per_column = [_family_entry(entry, options, f"The leaf of column {j}") for j, entry in enumerate(spec)]
    else:
        raise ValueError(
            f"leaf={spec!r} is not understood; give a family name, an ExponentialFamilyLeaf instance, "
            "a dict {family: [columns]} or a list with one family per column."
        )
    if all(family == per_column[0] for family in per_column):
        return per_column[0]
    return MixedLeaf(per_column)


def _columns_of_dict(spec, n_features, options):
    """[family per column] from a {family: columns} spec, every column exactly once."""
    per_column = [None] * n_features
    owner = {}
    for key, cols in spec.items():
        family = _family_entry(key, options, f"The leaf dict key {key!r}")
        cols = [cols] if _is_integer(cols) else cols
        try:
            cols = list(cols)
        except TypeError:
            raise ValueError(f"The columns of {key!r} are {cols!r}; give a list of column indices.") from None
        for col in cols:
            if not _is_integer(col):
                raise ValueError(f"The columns of {key!r} hold {col!r}; column indices must be integers.")
            if not 0 <= col < n_features:
                raise ValueError(
                    f"Column {col} of {key!r} is out of range: X has {n_features} features "
                    f"(columns 0..{n_features - 1})."
                )
            if col in owner:
                raise ValueError(
                    f"Column {col} is listed twice (under {owner[col]!r} and {key!r}); give every column one family."
                )
            owner[col] = key
            per_column[int(col)] = family
    missing = [j for j, family in enumerate(per_column) if family is None]
    if missing:
        flagged = np.zeros(n_features, dtype=bool)
        flagged[missing] = True
        verb = "has" if len(missing) == 1 else "have"
        raise ValueError(
            f"{_columns_text(None, flagged).capitalize()} of X {verb} no leaf family; give every column one "
            "(add them to an entry of the leaf dict)."
        )
    return per_column


def make_leaf(name, *, min_var=1e-4, max_var=None, n_categories=None, n_trials=None):
    """Build the leaf family object registered as ``name`` (see ``resolve_leaf`` for specs of several families)."""
    return _named_family(name, dict(min_var=min_var, max_var=max_var, n_categories=n_categories, n_trials=n_trials))
