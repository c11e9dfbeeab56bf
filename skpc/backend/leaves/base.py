"""The leaf contract: ``ExponentialFamilyLeaf``, the base class of every
family, and the data helpers the families share.

Writing a new family
--------------------
A user family is a subclass of ``ExponentialFamilyLeaf`` passed as an
instance (alone, or as a dict key / list entry for some columns).
``PoissonLeaf`` (``families.py``) is the worked example. It must define:

- ``name`` (str), ``n_stats`` (T), ``has_base_measure``, and ``discrete``
  (False for a family of real values);
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
- for data softening (``Schedule.softening``), a discrete family with
  finitely many states defines ``n_states`` (C); the inherited
  ``soft_region_log_prob`` and ``soft_expected_statistics`` then work
  through ``pair_log_prob`` and ``pair_statistics``, which a family that
  overrides ``prepare`` overrides too (as ``CategoricalLeaf`` does);
- ``validate(X, columns=None)`` when not every finite value is a valid
  observation (call ``super().validate``), ``infer(X)`` and ``inferred`` when
  a hyper-parameter may be left None for the data to fill, and ``n_free``
  when a density has fewer free parameters than T.
"""

import copy
import inspect

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
    # discrete (counts, states) or continuous values: how structure learners
    # (skpc.structure.mutual_information) treat the family's columns
    discrete = True
    # hyper-parameters that may be left None for ``infer`` to fill from data
    inferred = ()
    # C, the number of states of a discrete family with finitely many (what
    # data softening needs); None: real values or unbounded counts
    n_states = None
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

    # ------------------------------------------------------ data softening
    def pair_log_prob(self, data, phi):
        """log p(x_s) of every density of every (region, variable) pair: (L, S, K, B).

        Unsummed over the scope, unlike ``region_log_prob``; 0 where x is
        missing (families may leave any finite value there: callers mask
        with ``observed``).
        """
        L, SF, B = data.shape
        F = self.n_columns
        lhs = self._stacked_natural(phi)  # (L, K, S*F)
        K = lhs.shape[1]
        # per pair, [theta, c, 1] (F,) . [obs T(x), obs, obs log h] (F,): (L, K, S, F) x (L, S, F, B)
        return torch.einsum("lksf,lsfb->lskb", lhs.view(L, K, SF // F, F), data.view(L, SF // F, F, B))

    def pair_statistics(self, data, weights):
        """``sum_b weights * T(x_b)`` per pair and density: (L, S, K, T).

        ``weights`` (L, S, K, B), per pair (not per region as the gradient of
        ``expected_statistics``), 0 where x is missing.
        """
        L, SF, B = data.shape
        F = self.n_columns
        acc = torch.einsum("lskb,lsfb->lskf", weights, data.view(L, SF // F, F, B))  # (L, S, K, F)
        return acc[..., : self.n_stats]

    def check_softening(self, softening, columns=None):
        """Raise ValueError unless data softening with beta = ``softening``
        applies to this family (a finite number of states); 1 (off) always does.

        ``columns``: the columns of X that use the family (given by
        ``MixedLeaf``), for the message.
        """
        if softening == 1.0 or self.n_states is not None:
            return
        kind = "real values" if not self.discrete else "counts without an upper bound"
        where = "" if columns is None else f" (used in {_columns_text(columns, np.ones(len(columns), bool))})"
        raise ValueError(
            f"softening={softening!r} needs discrete leaves with finitely many states (bernoulli, binomial, "
            f"categorical), but the {self.name} family{where} models {kind}; use softening=1.0 (off)"
            + (" or a discrete leaf." if columns is None else f", or {_fix(columns, 'categorical')}.")
        )

    def _soft_evidence(self, softening):
        """(eps, gain) of the soft evidence ``q(c | x) = eps + gain * [c == x]``:
        x kept with probability beta = ``softening``, each of the other C - 1
        states taken with eps = (1 - beta) / (C - 1)."""
        self.check_softening(softening)
        eps = (1.0 - softening) / (self.n_states - 1)
        return eps, softening - eps

    def soft_region_log_prob(self, data, phi, softening):
        """Leaf region log-values under softened evidence: (L, K, B).

        Each observed x_s contributes ``log sum_c q(c | x_s) p(c) = log(eps +
        gain * p(x_s))`` (see ``_soft_evidence``) in place of log p(x_s): the
        log-likelihood of the soft evidence, exact for a smooth decomposable
        circuit (Liu & Van den Broeck 2021); a missing one still
        contributes 0. Differentiable in phi (Adam trains on it).
        """
        eps, gain = self._soft_evidence(softening)
        obs = self.observed(data).unsqueeze(2)  # (L, S, 1, B)
        # eps + gain * p >= min(eps, beta) > 0: finite even where x is missing (masked)
        soft = torch.log(torch.exp(self.pair_log_prob(data, phi)) * gain + eps)  # (L, S, K, B)
        return (soft * obs).sum(1)

    def soft_expected_statistics(self, data, phi, grad, softening):
        """``expected_statistics`` of the softened data: (stats (L, S, K, T), counts (L, S, K)).

        The softened data set replaces an observed x by every state c with
        weight ``q(c | x) = eps + gain * [c == x]``, so a density's expected
        statistics at x are ``E_q[T] = eps * sum_c T(c) + gain * T(x)``
        (Liu & Van den Broeck 2021): its maximum-likelihood estimate on
        data that always shows x is q itself, not a point mass (for a
        Bernoulli leaf, p(x) = beta), which is what regularizes the leaves
        in closed form. The density's posterior weight per row is
        ``grad`` (L, K, B), the gradient of the softened objective (the
        log-likelihood of the soft evidence, ``soft_region_log_prob``) with
        respect to the leaf region values, as for sum weights; counts are
        unchanged in form. ``phi`` is not read: the statistics of q do not
        depend on the density.
        """
        eps, gain = self._soft_evidence(softening)
        obs = self.observed(data).unsqueeze(2)  # (L, S, 1, B)
        weight = grad.unsqueeze(1) * obs  # (L, S, K, B): the density's posterior at pair s
        counts = weight.sum(-1)  # (L, S, K)
        stats = self.pair_statistics(data, weight * gain)  # (L, S, K, T): the term at x
        # the dense term: (T,) * (L, S, K, 1)
        stats += eps * self.state_statistics_sum().to(stats) * counts.unsqueeze(-1)
        return stats, counts

    def state_statistics_sum(self):
        """``sum_c T(c)`` over the family's C states (T,): the sufficient
        statistics of every state, summed (data softening). Default: T(c) = c
        (Bernoulli, binomial)."""
        C = self.n_states
        return torch.tensor([C * (C - 1) / 2.0], dtype=torch.float64)

    # ---------------------------------------------------------------- M-step
    def m_step(self, phi, stats, counts, learning_rate, pseudocount=0.0):
        """phi after one (stochastic) EM update with step size ``learning_rate`` in (0, 1].

        Parameters
        ----------
        phi : (L, S, K, T) tensor
            The current parameters.
        stats : (L, S, K, T) tensor
            ``sum_b obs * p(leaf | x_b) * T(x_b)``.
        counts : (L, S, K) tensor
            ``sum_b obs * p(leaf | x_b)``.
        learning_rate : float
        pseudocount : float >= 0, default=0.0
            a: MAP-EM under the conjugate prior worth a pseudo-observations
            whose mean statistics are ``prior_mean(phi, stats, counts)``
            (see ``_maximize``); 0: maximum likelihood.

        Returns
        -------
        (L, S, K, T) tensor
            ``project(lerp(phi, project(stats / counts), learning_rate))``;
            a density without any count (<= 1e-12) keeps its old value.
            With a > 0, ``(stats + a phi0) / (counts + a)`` in place of
            ``stats / counts``: a density without any count moves to phi0.
        """
        estimate, seen = self._maximize(stats, counts, pseudocount, phi)
        return self.project(torch.lerp(phi, torch.where(seen, estimate, phi), learning_rate))

    def _maximize(self, stats, counts, pseudocount=0.0, phi=None):
        """The maximum-likelihood estimate ``stats / counts`` (projected), and
        where it exists: ``(phi_hat (L, S, K, T), seen (L, S, K, 1) bool)``.

        With ``pseudocount`` a > 0 the MAP estimate: the conjugate prior of an
        exponential family, ``p(theta) ~ exp(a <theta, phi0> - a A(theta))``
        (a pseudo-observations with mean sufficient statistics phi0), adds
        a * phi0 to stats and a to counts, giving ``(stats + a phi0) /
        (counts + a)``; phi0 is ``prior_mean(phi, stats, counts)``.
        """
        if pseudocount:
            stats = stats + pseudocount * self.prior_mean(phi, stats, counts)
            counts = counts + pseudocount
        counts = counts.unsqueeze(-1)  # (L, S, K, 1)
        estimate = stats / counts.clamp_min(torch.finfo(counts.dtype).tiny)
        return self.project(estimate), counts > 1e-12

    def prior_mean(self, phi, stats, counts):
        """phi0 (L, S, K, T) or broadcastable: the mean sufficient statistics of
        the MAP-EM prior's pseudo-observations (see ``_maximize``).

        Default (Gaussian, Poisson): the pair's data-wide mean, i.e. the
        posterior-weighted mean statistics of the pair's variable pooled
        over its K densities, ``sum_k stats / sum_k counts`` (for a Gaussian
        the pooled mean and second moment, so the prior pulls each density's
        mean and variance toward the variable's); a pair without any count
        uses the density's current ``phi`` (no pull). Families with a natural
        uniform distribution (Bernoulli, Binomial, Categorical) override it.
        """
        total = counts.sum(2, keepdim=True).unsqueeze(-1)  # (L, S, 1, 1)
        pooled = stats.sum(2, keepdim=True) / total.clamp_min(torch.finfo(stats.dtype).tiny)
        return torch.where(total > 1e-12, self.project(pooled), phi)

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


def _check_bounded_counts(X, columns, family, name, bound, largest):
    """Counts (integers >= 0) no larger than ``largest``, which the
    hyper-parameter ``name`` = ``bound`` allows (None: not set yet)."""
    observed, X = _check_counts(_as_2d(X), columns, family)
    if bound is None:
        return
    too_big = observed & (X > largest)
    if too_big.any():
        raise ValueError(
            f"X contains the value {int(X[too_big].max())} in {_columns_text(columns, too_big.any(0))}, but "
            f"{family} leaves have {name}={bound} (values 0..{largest}); raise {name}."
        )


def _infer_bound(leaf, X, name, from_largest):
    """A fitted copy of ``leaf`` whose hyper-parameter ``name``, when None, is
    ``from_largest(the largest observed value)`` (0 when nothing is observed)."""
    leaf.validate(X)
    if getattr(leaf, name) is not None:
        return _fitted_on(copy.deepcopy(leaf), X)
    X = _as_2d(X)
    observed = X[~np.isnan(X)]
    largest = int(observed.max()) if observed.size else 0
    return _fitted_on(type(leaf)(**{name: from_largest(largest)}), X)
