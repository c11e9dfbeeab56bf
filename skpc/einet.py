"""EinsumNetworkDensity: the scikit-learn face of the Einsum Networks engine."""

import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context, validate_data
from .backend import CompiledCircuit, e_step, m_step, make_leaf
from .backend.gradient import constrain, detach_params, unconstrain
from .base import (
    ConvergenceMonitor,
    TorchStateMixin,
    batches,
    make_generator,
    resolve_device,
    resolve_dtype,
)
from .structure import RegionGraph, poon_domingos, random_binary_trees


class EinsumNetworkDensity(TorchStateMixin, DensityMixin, BaseEstimator):
    """Einsum Network density estimator (Peharz et al., ICML 2020).

    A smooth, decomposable probabilistic circuit laid out as a region graph
    (random binary trees or Poon-Domingos), evaluated one topological level
    at a time by a single log-einsum-exp contraction, with exponential-family
    leaves, trained by EM obtained from autodiff (full-batch or stochastic)
    or by Adam. Every query is exact: likelihoods, marginals with any entries
    missing (NaN), conditionals; sampling and inpainting are exact ancestral
    draws from the (conditional) distribution.

    Parameters
    ----------
    structure : {"rat", "pd"} or RegionGraph, default="rat"
        "rat": random binary trees (RAT-SPN) of ``depth`` and
        ``n_repetitions``; "pd": Poon-Domingos over ``image_shape``; or a
        region graph over exactly ``n_features`` variables.
    depth : int or None, default=None
        Split depth D of the random binary trees; None picks
        ``min(4, floor(log2(n_features)))``.
    n_repetitions : int, default=10
        R, the number of random binary trees.
    n_sums : int, default=10
        K, the number of densities per region.
    leaf : {"gaussian", "bernoulli", "categorical", "binomial"}, default="gaussian"
        Univariate exponential family of the leaves: real values, {0, 1},
        {0, ..., n_categories - 1}, or counts {0, ..., n_trials}.
    n_categories : int or None, default=None
        States of categorical leaves; None infers ``max(X) + 1`` at fit.
    n_trials : int or None, default=None
        Trials of binomial leaves; None infers ``max(X)`` at fit.
    min_var, max_var : float, default=1e-4 and None
        Bounds of Gaussian leaf variances (None: no upper bound); variances
        are projected into them after every M-step.
    image_shape : tuple (H, W) or (H, W, C), default=None
        Image layout of the features (row-major, channels last); required
        for ``structure="pd"``.
    pd_delta : int or list of int, default=None
        Poon-Domingos step sizes, applied in the given order (coarse first);
        None uses ``max(1, min(H, W) // 4)``.
    pd_vertical_only : bool, default=False
        Poon-Domingos with vertical cuts only (the paper's SVHN/CelebA setting).
    optimizer : {"em", "adam"}, default="em"
        EM obtained from autodiff (stochastic when ``batch_size`` is set), or
        Adam on an unconstrained reparameterization.
    max_iter : int, default=30
        Epochs.
    batch_size : int or None, default=100
        Mini-batch size (stochastic EM or Adam); None is full-batch.
    learning_rate : float or None, default=None
        EM step size in (0, 1] (None: 1.0 full-batch, 0.5 stochastic) or
        Adam's learning rate (None: 0.01).
    tol : float or None, default=1e-4
        Stop when the mean training log-likelihood changes by less.
    device : {"cpu", "cuda", "auto"}, default="cpu"
        Where the circuit runs; "auto" picks CUDA when available. Results are
        always returned as numpy float64 arrays.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the parameters and of the computation.
    random_state : int, RandomState instance or None, default=None
        Seeds the structure, the initialization, the batch order and
        sampling; equal seeds give identical fits.
    verbose : int, default=0
        1 prints one line per epoch, 2 also one per batch.
    warm_start : bool, default=False
        Continue from the fitted parameters on the next ``fit``.

    Attributes
    ----------
    region_graph_ : RegionGraph
    params_ : CircuitParams
        Fitted torch parameters (on ``device_``).
    n_features_in_ : int
    n_iter_ : int
    converged_ : bool
    lower_bound_ : float
        Mean training log-likelihood at the fitted parameters.
    n_parameters_ : int
        Free parameters of the circuit.
    device_ : torch.device
    n_categories_, n_trials_ : int or None
    """

    _parameter_constraints = {
        "structure": [StrOptions({"rat", "pd"}), RegionGraph],
        "depth": [Interval(Integral, 0, None, closed="left"), None],
        "n_repetitions": [Interval(Integral, 1, None, closed="left")],
        "n_sums": [Interval(Integral, 1, None, closed="left")],
        "leaf": [StrOptions({"gaussian", "bernoulli", "categorical", "binomial"})],
        "n_categories": [Interval(Integral, 2, None, closed="left"), None],
        "n_trials": [Interval(Integral, 1, None, closed="left"), None],
        "min_var": [Interval(Real, 0, None, closed="neither")],
        "max_var": [Interval(Real, 0, None, closed="neither"), None],
        "image_shape": [tuple, list, None],
        "pd_delta": [Interval(Integral, 1, None, closed="left"), list, tuple, None],
        "pd_vertical_only": ["boolean"],
        "optimizer": [StrOptions({"em", "adam"})],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, None, closed="neither"), None],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "device": [StrOptions({"cpu", "cuda", "auto"}), str],
        "dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
    }

    _transient_attributes = ("_circuit_cache",)

    def __init__(
        self,
        structure="rat",
        depth=None,
        n_repetitions=10,
        n_sums=10,
        leaf="gaussian",
        n_categories=None,
        n_trials=None,
        min_var=1e-4,
        max_var=None,
        image_shape=None,
        pd_delta=None,
        pd_vertical_only=False,
        optimizer="em",
        max_iter=30,
        batch_size=100,
        learning_rate=None,
        tol=1e-4,
        device="cpu",
        dtype="float32",
        random_state=None,
        verbose=0,
        warm_start=False,
    ):
        self.structure = structure
        self.depth = depth
        self.n_repetitions = n_repetitions
        self.n_sums = n_sums
        self.leaf = leaf
        self.n_categories = n_categories
        self.n_trials = n_trials
        self.min_var = min_var
        self.max_var = max_var
        self.image_shape = image_shape
        self.pd_delta = pd_delta
        self.pd_vertical_only = pd_vertical_only
        self.optimizer = optimizer
        self.max_iter = max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.tol = tol
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start

    # ------------------------------------------------------------- helpers
    def _continuing(self):
        return self.warm_start and hasattr(self, "params_")

    def _build_graph(self, n_features, random_state):
        if isinstance(self.structure, RegionGraph):
            graph = self.structure
            if graph.n_variables != n_features:
                raise ValueError(
                    f"The region graph has {graph.n_variables} variables but X has {n_features} features; "
                    "build the graph over exactly the features of X."
                )
            return graph.validate()
        if self.structure == "pd":
            shape = self._check_image_shape(n_features)
            delta = self.pd_delta
            if delta is None:
                delta = max(1, min(shape[0], shape[1]) // 4)
            return poon_domingos(shape, delta, vertical_only=self.pd_vertical_only)
        depth = self.depth
        if depth is None:
            depth = min(4, int(math.floor(math.log2(n_features)))) if n_features > 1 else 0
        if n_features < 2**depth:
            max_depth = int(math.floor(math.log2(n_features)))
            raise ValueError(
                f"depth={depth} needs at least 2**depth={2**depth} features, but X has {n_features}; "
                f"use depth <= {max_depth}."
            )
        return random_binary_trees(n_features, depth, self.n_repetitions, random_state=random_state)

    def _check_image_shape(self, n_features):
        shape = self.image_shape
        if shape is None:
            raise ValueError("structure='pd' needs image_shape=(H, W) or (H, W, C) matching the features of X.")
        shape = tuple(int(s) for s in shape)
        if len(shape) not in (2, 3) or int(np.prod(shape)) != n_features:
            raise ValueError(
                f"image_shape={tuple(self.image_shape)} describes {int(np.prod(shape))} features but X has "
                f"{n_features}; pass (H, W) or (H, W, C) with H*W*C == n_features."
            )
        return shape

    def _check_values(self, X, n_categories=None, n_trials=None):
        """Reject values the leaf cannot model (NaN is allowed: missing)."""
        if np.isinf(X).any():
            raise ValueError("X contains inf; replace it by a finite value, or by NaN to mark it missing.")
        observed = X[~np.isnan(X)]
        if self.leaf == "gaussian" or observed.size == 0:
            return
        if self.leaf == "bernoulli":
            if not np.isin(observed, (0.0, 1.0)).all():
                raise ValueError(
                    "X contains values outside {0, 1}: Bernoulli leaves need binary data; "
                    "use leaf='categorical' or leaf='gaussian'."
                )
            return
        if (observed != np.round(observed)).any() or observed.min() < 0:
            raise ValueError(
                f"X contains negative or non-integer values: {self.leaf} leaves need integers >= 0; "
                "use leaf='gaussian' for real-valued data."
            )
        if self.leaf == "categorical" and n_categories is not None and observed.max() >= n_categories:
            raise ValueError(
                f"X contains the value {int(observed.max())}, but categorical leaves have n_categories="
                f"{n_categories} states (0..{n_categories - 1}); raise n_categories."
            )
        if self.leaf == "binomial" and n_trials is not None and observed.max() > n_trials:
            raise ValueError(
                f"X contains the value {int(observed.max())}, but binomial leaves have n_trials={n_trials} "
                f"(values 0..{n_trials}); raise n_trials."
            )

    def _make_leaf(self, n_categories, n_trials):
        return make_leaf(
            self.leaf, min_var=self.min_var, max_var=self.max_var, n_categories=n_categories, n_trials=n_trials
        )

    @property
    def _circuit(self):
        """The compiled circuit; rebuilt after unpickling (it is derived state)."""
        cache = getattr(self, "_circuit_cache", None)
        if cache is None:
            leaf = self._make_leaf(self.n_categories_, self.n_trials_)
            cache = CompiledCircuit(self.region_graph_, self.n_sums_, leaf, self.device_)
            self._circuit_cache = cache
        return cache

    def _to_tensor(self, X):
        # torch.tensor copies: X may be a read-only (memory-mapped) array
        return torch.tensor(X, dtype=self.params_.root.dtype, device=self.device_)

    def _validate_fitted(self, X):
        check_is_fitted(self, "params_")
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=False)
        self._check_values(X, self.n_categories_, self.n_trials_)
        return X

    # ----------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the circuit by (stochastic) EM or Adam.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; NaN entries are missing and marginalized out.
        y : Ignored

        Returns
        -------
        self : EinsumNetworkDensity
        """
        continuing = self._continuing()
        X = validate_data(self, X, reset=not continuing, dtype=np.float64, ensure_all_finite=False)
        n_samples, n_features = X.shape
        if continuing:
            n_categories, n_trials = self.n_categories_, self.n_trials_
        else:
            n_categories, n_trials = self.n_categories, self.n_trials
        self._check_values(X, n_categories, n_trials)
        observed = X[~np.isnan(X)]
        if self.leaf == "categorical" and n_categories is None:
            n_categories = max(2, int(observed.max()) + 1 if observed.size else 2)
        if self.leaf == "binomial" and n_trials is None:
            n_trials = max(1, int(observed.max()) if observed.size else 1)

        device = resolve_device(self.device)
        dtype = resolve_dtype(self.dtype)
        generator = make_generator(self.random_state, device)
        if continuing:
            graph, n_sums = self.region_graph_, self.n_sums_
        else:
            structure_seed = int(torch.randint(2**31 - 1, (1,), generator=generator, device=device))
            graph = self._build_graph(n_features, random_state=structure_seed)
            n_sums = self.n_sums
        leaf = self._make_leaf(n_categories, n_trials)
        circuit = CompiledCircuit(graph, n_sums, leaf, device)
        Xt = torch.tensor(X, dtype=dtype, device=device)  # a copy: X may be read-only
        if continuing:
            params = self.params_.map(lambda t: t.to(device=device, dtype=dtype).clone())
        else:
            params = circuit.init_params(Xt, generator, dtype)

        monitor = ConvergenceMonitor(self.tol, self.max_iter, self.verbose, type(self).__name__)
        if self.optimizer == "em":
            params = self._fit_em(circuit, Xt, params, generator, monitor)
        else:
            params = self._fit_adam(circuit, Xt, params, generator, monitor)
        with torch.no_grad():
            lower_bound = float(np.mean(_score_in_batches(circuit, params, Xt)))
        if not math.isfinite(lower_bound):
            raise ValueError(
                "Training ended with a non-finite log-likelihood; lower learning_rate, raise min_var, "
                "or check X for extreme values."
            )
        monitor.finish()

        # Only now is fitted state written: a failure above leaves an earlier fit intact.
        self.region_graph_ = graph
        self.params_ = params
        self.n_sums_ = n_sums
        self.n_categories_ = n_categories
        self.n_trials_ = n_trials
        self.device_ = device
        self._circuit_cache = circuit
        self.n_iter_ = (self.n_iter_ if continuing else 0) + len(monitor.history)
        self.converged_ = monitor.converged
        self.lower_bound_ = lower_bound
        self.n_parameters_ = params.n_parameters(circuit)
        return self

    def _fit_em(self, circuit, Xt, params, generator, monitor):
        n_samples = Xt.shape[0]
        full_batch = self.batch_size is None or self.batch_size >= n_samples
        step = self.learning_rate if self.learning_rate is not None else (1.0 if full_batch else 0.5)
        step = min(float(step), 1.0)
        for epoch in range(self.max_iter):
            total = 0.0
            if full_batch:
                stats = None
                for idx in batches(n_samples, circuit.chunk_size(), device=Xt.device):
                    log_prob, batch_stats = e_step(circuit, Xt[idx], params)
                    total += float(log_prob.sum())
                    if stats is None:
                        stats = batch_stats
                    else:
                        stats += batch_stats
                _check_finite(total)
                params = m_step(circuit, params, stats, step)
            else:
                parts = batches(n_samples, self.batch_size, generator, Xt.device)
                for i, idx in enumerate(parts):
                    log_prob, stats = e_step(circuit, Xt[idx], params)
                    batch_ll = float(log_prob.sum())
                    _check_finite(batch_ll)
                    total += batch_ll
                    params = m_step(circuit, params, stats, step)
                    monitor.batch(epoch + 1, i, len(parts), batch_ll / len(idx))
            if monitor.epoch(total / n_samples):
                break
        return params

    def _fit_adam(self, circuit, Xt, params, generator, monitor):
        n_samples = Xt.shape[0]
        tensors = unconstrain(circuit, params)
        lr = self.learning_rate if self.learning_rate is not None else 0.01
        optimizer = torch.optim.Adam(tensors, lr=lr)
        for epoch in range(self.max_iter):
            total = 0.0
            parts = batches(n_samples, self.batch_size, generator, Xt.device)
            for i, idx in enumerate(parts):
                optimizer.zero_grad()
                log_prob = circuit.log_prob(Xt[idx], constrain(circuit, params, tensors))
                batch_ll = float(log_prob.detach().sum())
                _check_finite(batch_ll)
                (-log_prob.mean()).backward()
                optimizer.step()
                total += batch_ll
                monitor.batch(epoch + 1, i, len(parts), batch_ll / len(idx))
            if monitor.epoch(total / n_samples):
                break
        with torch.no_grad():
            return detach_params(circuit, constrain(circuit, params, tensors))

    # ------------------------------------------------------------- queries
    def score_samples(self, X):
        """Log-density of each row of X (n_samples, n_features).

        NaN entries are missing and marginalized out exactly, per row.

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        X = self._validate_fitted(X)
        return _score_in_batches(self._circuit, self.params_, self._to_tensor(X))

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X (what GridSearchCV maximizes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out.
        y : Ignored

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def score_conditional(self, X, query):
        """log p(x_query | the other observed entries), per row.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            Query entries must be observed; other NaN entries are
            marginalized out (neither evidence nor query).
        query : boolean mask of shape (n_features,) or array of feature indices

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validate_fitted(X)
        mask = np.zeros(self.n_features_in_, dtype=bool)
        query = np.asarray(query)
        if query.dtype == bool:
            if query.shape != (self.n_features_in_,):
                raise ValueError(
                    f"A boolean query must have one entry per feature ({self.n_features_in_}); got shape {query.shape}."
                )
            mask = query
        else:
            if query.size and (query.min() < -self.n_features_in_ or query.max() >= self.n_features_in_):
                raise ValueError(f"query indices must lie in [0, {self.n_features_in_}); got {query.tolist()}.")
            mask[query.astype(int)] = True
        if not mask.any():
            raise ValueError("query selects no feature; pass a non-empty mask or index list.")
        if np.isnan(X[:, mask]).any():
            raise ValueError("X has NaN in query features; a queried value must be observed.")
        evidence = X.copy()
        evidence[:, mask] = np.nan
        joint = _score_in_batches(self._circuit, self.params_, self._to_tensor(X))
        marginal = _score_in_batches(self._circuit, self.params_, self._to_tensor(evidence))
        return joint - marginal

    def sample(self, n_samples=1, random_state=None):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None
            None uses the estimator's ``random_state``.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "params_")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}.")
        X = np.full((int(n_samples), self.n_features_in_), np.nan)
        return self._complete(X, random_state, greedy=False)

    def impute(self, X, method="sample", random_state=None):
        """Fill every NaN in X from p(missing | observed).

        Parameters
        ----------
        X : array of shape (n_samples, n_features), NaN = missing
        method : {"sample", "mpe"}
            "sample" draws the missing entries from their exact conditional
            distribution; "mpe" takes the approximate most probable
            completion: that of the best single induced tree, found by a
            max-product pass (missing entries at their leaves' modes).
        random_state : int, RandomState instance or None

        Returns
        -------
        ndarray of shape (n_samples, n_features); observed entries unchanged.
        """
        if method not in ("sample", "mpe"):
            raise ValueError(f"method={method!r} is not supported; use 'sample' or 'mpe'.")
        X = self._validate_fitted(X)
        return self._complete(X, random_state, greedy=method == "mpe")

    def _complete(self, X, random_state, greedy):
        seed = self.random_state if random_state is None else random_state
        generator = make_generator(seed, self.device_)
        circuit, params = self._circuit, self.params_
        out = []
        with torch.no_grad():
            for idx in batches(X.shape[0], circuit.chunk_size()):
                out.append(circuit.complete(self._to_tensor(X[idx.numpy()]), params, generator, greedy))
        result = torch.cat(out).cpu().double().numpy()
        observed = ~np.isnan(X)
        result[observed] = X[observed]  # exact evidence, not a float32 round trip
        return result

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN means "marginalize this entry"
        return tags


def _check_finite(value):
    if not math.isfinite(value):
        raise ValueError(
            "The training log-likelihood became non-finite; lower learning_rate, raise min_var, "
            "or check X for extreme values."
        )


def _score_in_batches(circuit, params, Xt):
    out = []
    with torch.no_grad():
        for idx in batches(Xt.shape[0], circuit.chunk_size(), device=Xt.device):
            out.append(circuit.log_prob(Xt[idx], params))
    return torch.cat(out).cpu().double().numpy()
