"""EinsumNetworkDensity: the scikit-learn face of the Einsum Networks engine."""

import copy
import dataclasses
import math
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

from ._compat import Interval, StrOptions, _fit_context, validate_data
from .backend.circuit import PARTITION_LAYERS, CompiledCircuit
from .backend.leaves import LEAF_NAMES, AutoLeaf, ExponentialFamilyLeaf, resolve_leaf
from .backend.distributed import (
    agree_on,
    check_same_facts,
    evenly_spaced_rows,
    local_part,
    params_to,
    resolve_process_group,
    row_offsets,
)
from .backend.train import DEFAULT_EM_LEARNING_RATE, ArrayRows, RowShard, Schedule, Trainer, trim_heap
from .base import (
    ProgressPrinter,
    TorchStateMixin,
    check_finite_lower_bound,
    draw_seed,
    resolve_device,
    resolve_dtype,
    torch_generator,
    validation_split,
    warn_not_converged,
)
from .queries import CircuitQueriesMixin, check_no_inf, score_in_batches
from .structure import (
    RegionGraph,
    chow_liu_tree,
    coarsen_states,
    hclt_region_graph,
    merge_region_graphs,
    poon_domingos,
    random_binary_trees,
)


class EinsumNetworkDensity(CircuitQueriesMixin, TorchStateMixin, DensityMixin, BaseEstimator):
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
    structure : {"hclt", "rat", "pd"} or RegionGraph, default="hclt"
        "hclt": a hidden Chow-Liu tree learned from the training rows (the
        maximum spanning tree of pairwise mutual information, from at most
        2**21 values of evenly spaced rows, discrete columns of more than
        16 states binned to 16 for it, see
        :func:`skpc.structure.coarsen_states`; a region per subtree, with
        CP layers by default); the default: at the defaults it fitted
        held-out data better than random binary trees on every set
        measured (scikit-learn's digits -92.7 against -100.6 nats, iris,
        wine, diabetes; 5,000 MNIST digits -758.2 against about -1,000,
        worse than independent pixels' -932.5; benchmarks/RESULTS.md) with
        8 to 66 times fewer parameters. "rat": random binary trees
        (RAT-SPN) of ``depth`` and ``n_repetitions``; "pd": Poon-Domingos
        over ``image_shape``; or a region graph over exactly
        ``n_features`` variables (copied at fit).
    depth : int or None, default=None
        With ``structure="rat"``: split depth D of the random binary trees;
        None picks ``min(4, floor(log2(n_features)))``.
    n_repetitions : int, default=10
        With ``structure="rat"``: R, the number of random binary trees.
    n_hclt : int, default=1
        With ``structure="hclt"``: n > 1 learns n Chow-Liu trees, each on a
        bootstrap resample of the training rows and rooted at a random
        variable (distinct ones while n <= n_features; both drawn from the
        structure seed of ``random_state``), and merges their region graphs
        (:func:`skpc.structure.merge_region_graphs`): the root mixes one
        split per tree (n of them while n <= n_features), regions with the
        same scope are shared and mix the trees' splits of it, so the
        circuit is a mixture of HCLTs. 1: one tree on all the rows, rooted
        at variable 0. Must be 1 with other structures.
    n_sums : int, default=10
        K, the number of densities per region.
    layer : {"auto", "einsum", "cp"}, default="auto"
        Partition layer: "einsum" (Tucker) mixes all K*K pairs of the two
        child vectors (K^3 weights per partition); "cp" (Hadamard) multiplies
        them elementwise, then sums with K x K weights (cheaper, and the
        layer of a hidden Chow-Liu tree: its hidden state is shared by a
        node's children). "auto": "cp" with ``structure="hclt"``, "einsum"
        otherwise; ``layer_`` records the choice.
    leaf : str, leaf instance, dict or list, default="auto"
        Univariate family of the leaves: "auto" (chosen per column from the
        training rows: non-negative integers below 256, such as 8-bit
        pixels, get categorical leaves sharing one number of states, every
        other column Gaussian leaves; see ``skpc.backend.AutoLeaf``),
        "gaussian" (real values),
        "bernoulli" ({0, 1}), "categorical" ({0, ..., n_categories - 1}),
        "binomial" (counts {0, ..., n_trials}), "poisson" (counts
        {0, 1, ...}); or an instance of a subclass of
        ``skpc.backend.ExponentialFamilyLeaf`` (a family of your own).
        Mixed feature types: a dict ``{family: [columns]}`` such as
        ``{"gaussian": [0, 3], "categorical": [1, 2]}``, or a list with one
        family per column.
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
    max_iter : int, default=100
        Epochs of stochastic EM (or Adam, or full-batch EM when
        ``batch_size=None``) at most.
    batch_size : int or None, default=100
        Mini-batch size (stochastic EM or Adam); None is full-batch EM.
    learning_rate : float or None, default=None
        Initial EM step size in (0, 1] (None: 0.5 stochastic, 1.0
        full-batch) or Adam's learning rate (None: 0.01). Halved on every
        plateau of the score, at most 5 times.
    early_stopping : "auto" or bool, default="auto"
        Hold out ``validation_fraction`` of the training rows, score the
        model on them after every epoch, and keep the best parameters on
        them. "auto": enabled when X has at least 20 rows (without it, EM
        overfits small data badly: it can shrink Gaussian leaves onto
        single training points).
    validation_fraction : float, default=0.1
        Share of the rows held out for early stopping.
    n_iter_no_change : int, default=3
        Epochs without an improvement of the score (validation, else the
        training log-likelihood) by more than ``tol`` that make a plateau:
        the step size is halved (at most 5 times), then the phase ends.
    tol : float or None, default=1e-4
        Improvements of the mean log-likelihood by at most ``tol`` nats
        per epoch (since the best epoch) count as none. None: no stop
        rule, every phase runs its full number of epochs.
    max_full_batch_iter : int, default=50
        After stochastic EM, at most this many full-batch EM epochs from
        the best parameters while they improve the score (0: none). They
        bring leaves with many states to the full-batch fixed point, which
        mini-batches of 100 rows cannot reach.
    pseudocount : float or "auto", default="auto"
        MAP-EM (EM only; ignored by Adam): a prior worth ``pseudocount``
        pseudo-observations on every distribution of the circuit. Sum
        weights: a symmetric Dirichlet adding ``pseudocount / n`` to the
        expected count of each of a distribution's n weights (an einsum
        node over K^2 products gets 1/K^2 of it on each). Leaves: a
        conjugate prior worth ``pseudocount`` observations, whose mean is
        the uniform distribution for Bernoulli, binomial (p = 1/2) and
        categorical leaves (``pseudocount / C`` on each of C states), and
        for Gaussian and Poisson leaves the variable's data-wide mean
        statistics (the posterior-weighted mean, and for Gaussians second
        moment, of the variable pooled over the leaf region's densities),
        so means and variances are pulled toward the variable's. A density
        or weight distribution that sees no data moves to the prior instead
        of keeping its value. It is the prior of the whole training set: a
        mini-batch adds its share, ``pseudocount * batch_rows /
        n_train_rows``; a ``partial_fit`` call adds all of it. 0 is
        maximum-likelihood EM. "auto" (``pseudocount_`` holds the value
        used): when every leaf is discrete with finitely many states
        (Bernoulli, binomial, categorical, or ``leaf="auto"`` picking
        categorical), 0.05 per outcome of the leaves' distributions (their
        free parameters plus one: a categorical leaf over C states counts
        C, a Bernoulli or binomial leaf 2; e.g. 0.1 for binary data and for
        binomial leaves, 12.8 for 8-bit pixels), else 0. There the
        prior costs little on large data and keeps small or
        high-cardinality data (tens of rows, 8-bit pixels) from putting
        almost no mass on values a density never saw; with Gaussian or
        Poisson leaves, its pull toward the variable's pooled statistics
        fitted continuous data worse and slowed EM down
        (``benchmarks/RESULTS.md``, section 11). Use 0 for noise-free
        discrete data whose exact patterns the model should reproduce.
    softening : float in (0, 1], default=1.0
        Data softening (Liu & Van den Broeck, "Tractable Regularization of
        Probabilistic Circuits", NeurIPS 2021), a regularizer of EM for
        discrete leaves (Bernoulli, binomial, categorical, or ``"auto"``
        when it picks categorical; others, and Adam, raise ValueError): EM
        learns from softened training rows, in which every observed value
        is kept with weight ``softening`` and replaced by each of the other
        C - 1 states of its variable with weight ``(1 - softening) / (C -
        1)``. A leaf density's estimate is thereby smoothed toward the
        other states in closed form (on rows that all show one value it
        gives that value probability ``softening``, not 1). Only training
        sees it: validation scores, ``score_samples`` and every query use
        the data as given; ``train_scores_`` hold the log-likelihood of the
        soft evidence, ``lower_bound_`` the plain one. Values above 1/C are
        meaningful (1/C makes the evidence uniform); small data sets gain
        from e.g. 0.9 to 0.99. 1.0 is off.
    device : {"cpu", "cuda", "auto"} or "cuda:N", default="cpu"
        Where the circuit runs; "auto" picks CUDA when available. Results are
        always returned as numpy float64 arrays.
    dtype : {"float32", "float64"}, default="float32"
        Precision of the parameters and of training. Queries
        (``score_samples``, ``score``, ``score_conditional``) are computed
        in float64 whatever the dtype: exact to the last digits, and the
        same for a row whatever batch it is scored in.
    random_state : int, RandomState instance or None, default=None
        Seeds the structure, the validation split, the initialization, the
        batch order and sampling; equal seeds give identical fits (and the
        same structure on every device).
    verbose : int, default=0
        1 prints one line per epoch, 2 also one per batch.
    warm_start : bool, default=False
        Continue from the fitted parameters on the next ``fit``. The
        parameters that define the circuit (structure, sizes, leaf) must be
        those of the fitted model.
    distributed : "auto" or bool, default="auto"
        Data-parallel training on ``torch.distributed``: each process of
        an initialized process group calls ``fit`` on its own rows, and
        they train one model, the one a single process would fit on all
        rows (rank 0's rows first, then rank 1's, ...): rank 0's seeds,
        structure and initial parameters are broadcast; the validation
        split and every mini-batch are drawn over all rows, each process
        taking its share; expected statistics and log-likelihood totals
        are summed across processes before every M-step (Adam: the
        gradients); early stopping reads the global validation score. The
        fitted model is identical on every process; ``lower_bound_`` is
        the global mean. Bad input on one process raises the same
        ValueError on all. "auto": data-parallel when a process group with
        more than one process is initialized; True: require one (an error
        if none is); False: fit this process's rows alone. Structure
        learning (``structure="hclt"``) and initialization read an
        initialization sample of the training rows, gathered on rank 0:
        all of them up to 2**21 values (rows x features), else evenly
        spaced rows. See the user guide, "Beyond one machine".

    Attributes
    ----------
    region_graph_ : RegionGraph
        A copy of the graph the circuit was compiled from.
    leaf_ : ExponentialFamilyLeaf
        The fitted leaf family (categories, trials and bounds inferred or
        given at fit).
    pseudocount_ : float
        The MAP-EM prior's strength the fit used (``pseudocount``, "auto" resolved).
    n_sums_ : int
    layer_ : str
    params_ : CircuitParams
        Fitted torch parameters (on ``device_``).
    n_features_in_ : int
    n_iter_ : int
        Epochs run, over all phases (and warm starts).
    converged_ : bool
        True when the last phase of training ended by its plateau rule.
    lower_bound_ : float
        Mean training log-likelihood at the fitted parameters.
    train_scores_ : list of float
        Mean training log-likelihood of each epoch of the last fit.
    validation_scores_ : list of float or None
        Validation score after each epoch, with early stopping.
    best_validation_score_ : float or None
    n_parameters_ : int
        Free parameters of the circuit.
    device_ : torch.device
    n_categories_, n_trials_ : int or None
        Of single-family categorical and binomial leaves.
    """

    _parameter_constraints = {
        "structure": [StrOptions({"rat", "pd", "hclt"}), RegionGraph],
        "depth": [Interval(Integral, 0, None, closed="left"), None],
        "n_repetitions": [Interval(Integral, 1, None, closed="left")],
        "n_hclt": [Interval(Integral, 1, None, closed="left")],
        "n_sums": [Interval(Integral, 1, None, closed="left")],
        "layer": [StrOptions({"auto", *PARTITION_LAYERS})],
        "leaf": [StrOptions(set(LEAF_NAMES)), ExponentialFamilyLeaf, dict, list, tuple],
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
        "early_stopping": [StrOptions({"auto"}), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "max_full_batch_iter": [Interval(Integral, 0, None, closed="left")],
        "pseudocount": [Interval(Real, 0, None, closed="left"), StrOptions({"auto"})],
        "softening": [Interval(Real, 0, 1, closed="right")],
        "device": [str],
        "dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "warm_start": ["boolean"],
        "distributed": [StrOptions({"auto"}), "boolean"],
    }

    # What defines the circuit: a warm start must find these as they were fitted.
    _circuit_parameters = (
        "structure", "depth", "n_repetitions", "n_hclt", "n_sums", "layer", "leaf", "n_categories", "n_trials",
        "min_var", "max_var", "image_shape", "pd_delta", "pd_vertical_only",
    )  # fmt: skip

    _transient_attributes = ("_circuit_cache", "_query_cache")

    def __init__(
        self,
        structure="hclt",
        depth=None,
        n_repetitions=10,
        n_hclt=1,
        n_sums=10,
        layer="auto",
        leaf="auto",
        n_categories=None,
        n_trials=None,
        min_var=1e-4,
        max_var=None,
        image_shape=None,
        pd_delta=None,
        pd_vertical_only=False,
        optimizer="em",
        max_iter=100,
        batch_size=100,
        learning_rate=None,
        early_stopping="auto",
        validation_fraction=0.1,
        n_iter_no_change=3,
        tol=1e-4,
        max_full_batch_iter=50,
        pseudocount="auto",
        softening=1.0,
        device="cpu",
        dtype="float32",
        random_state=None,
        verbose=0,
        warm_start=False,
        distributed="auto",
    ):
        self.structure = structure
        self.depth = depth
        self.n_repetitions = n_repetitions
        self.n_hclt = n_hclt
        self.n_sums = n_sums
        self.layer = layer
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
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.tol = tol
        self.max_full_batch_iter = max_full_batch_iter
        self.pseudocount = pseudocount
        self.softening = softening
        self.device = device
        self.dtype = dtype
        self.random_state = random_state
        self.verbose = verbose
        self.warm_start = warm_start
        self.distributed = distributed

    # ------------------------------------------------------------- helpers
    def _continuing(self, partial=False):
        """Whether this fit continues the fitted circuit (a warm start, or
        ``partial_fit`` after the first call); refuses changed circuit parameters."""
        if not ((partial or self.warm_start) and hasattr(self, "params_")):
            return False
        fitted = self._fitted_circuit_parameters_
        changed = [name for name in self._circuit_parameters if not _same(getattr(self, name), fitted[name])]
        if changed:
            name = changed[0]
            if partial:
                raise ValueError(
                    f"partial_fit continues the fitted circuit, but {name}={getattr(self, name)!r} differs from "
                    f"the fitted {name}={fitted[name]!r}; restore it, or call fit to fit a new circuit."
                )
            raise ValueError(
                f"warm_start=True continues the fitted circuit, but {name}={getattr(self, name)!r} differs from "
                f"the fitted {name}={fitted[name]!r}; restore it, or set warm_start=False to fit a new circuit."
            )
        return True

    def _layer(self):
        """The partition layer: ``layer``, "auto" resolved (CP for a hidden Chow-Liu tree)."""
        if self.layer != "auto":
            return self.layer
        return "cp" if isinstance(self.structure, str) and self.structure == "hclt" else "einsum"

    def _build_graph(self, X, leaf, random_state):
        """The region graph for the training rows X (n_samples, n_features)."""
        n_features = X.shape[1]
        if self.n_hclt != 1 and not (isinstance(self.structure, str) and self.structure == "hclt"):
            raise ValueError(
                f"n_hclt={self.n_hclt} builds a mixture of hidden Chow-Liu trees, which needs structure='hclt'; "
                "use structure='hclt' or n_hclt=1."
            )
        if self.depth is not None and not (isinstance(self.structure, str) and self.structure == "rat"):
            structure = self.structure if isinstance(self.structure, str) else "a RegionGraph"
            raise ValueError(
                f"depth={self.depth} sets the depth of random binary trees, but structure={structure!r} "
                "(the default is 'hclt', a hidden Chow-Liu tree); pass structure='rat' to use depth, "
                "or leave depth=None."
            )
        if isinstance(self.structure, RegionGraph):
            graph = self.structure
            if graph.n_variables != n_features:
                raise ValueError(
                    f"The region graph has {graph.n_variables} variables but X has {n_features} features; "
                    "build the graph over exactly the features of X."
                )
            return copy.deepcopy(graph).validate()
        if self.structure == "pd":
            shape = self._check_image_shape(n_features)
            delta = self.pd_delta
            if delta is None:
                delta = max(1, min(shape[0], shape[1]) // 4)
            return poon_domingos(shape, delta, vertical_only=self.pd_vertical_only)
        if self.structure == "hclt":
            families = getattr(leaf, "families", [leaf] * n_features)  # one per column
            kinds = ["discrete" if family.discrete else "gaussian" for family in families]
            # at most INIT_SAMPLE_ELEMENTS values (the sample data-parallel fits read): the
            # pair counts cost rows x (states x features)^2, 6 min for 55,000 MNIST rows
            X = X[evenly_spaced_rows(np.arange(X.shape[0]), INIT_SAMPLE_ELEMENTS // max(1, n_features))]
            X = coarsen_states(X, kinds)  # e.g. 8-bit pixels: 16 bins for the mutual information
            if self.n_hclt == 1:
                return hclt_region_graph(*chow_liu_tree(X, kind=kinds))
            # one tree per bootstrap resample of the rows, each rooted at another
            # variable (while there are enough): distinct root splits, a mixture of HCLTs
            rng = np.random.default_rng(random_state)
            n_rows = X.shape[0]
            if self.n_hclt <= n_features:
                roots = rng.permutation(n_features)[: self.n_hclt]
            else:
                roots = rng.integers(0, n_features, size=self.n_hclt)
            graphs = [
                hclt_region_graph(*chow_liu_tree(X[rng.integers(0, n_rows, size=n_rows)], kind=kinds, root=int(r)))
                for r in roots
            ]
            return merge_region_graphs(graphs)
        depth = self.depth
        if depth is None:
            depth = min(4, int(math.floor(math.log2(n_features)))) if n_features > 1 else 0
        if n_features < 2**depth:
            max_depth = int(math.floor(math.log2(n_features)))
            raise ValueError(
                f"depth={depth} needs at least 2**depth={2**depth} features, but X has {n_features} feature(s); "
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

    def _schedule(self):
        if self.optimizer == "em" and self.learning_rate is not None and self.learning_rate > 1:
            raise ValueError(
                f"learning_rate={self.learning_rate} is not a valid EM step size: it must lie in (0, 1] "
                "(1 is the full EM update); use optimizer='adam' for gradient steps."
            )
        return Schedule(
            optimizer=self.optimizer,
            max_iter=self.max_iter,
            batch_size=self.batch_size,
            learning_rate=self.learning_rate,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            max_full_batch_iter=self.max_full_batch_iter,
            pseudocount=0.0 if self.pseudocount == "auto" else float(self.pseudocount),  # "auto": see _with_prior
            softening=float(self.softening),
        )

    # ----------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, X_val=None):
        """Fit the circuit: stochastic EM with step-size halving on plateaus,
        then full-batch EM, with early stopping on a validation split (see
        the parameters); or full-batch EM, or Adam.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; NaN entries are missing and marginalized out. A
            ``numpy.memmap`` (any real dtype) is streamed: its rows are read
            a batch at a time, never all at once nor as a float copy.
            Data-parallel (see ``distributed``): this process's rows only.
        y : Ignored
        X_val : array-like of shape (n_val, n_features), default=None
            Validation rows for early stopping, in place of a split of X
            (as ``HistGradientBoostingClassifier.fit``'s ``X_val``); then all
            of X is trained on. Not allowed with ``early_stopping=False``.
            Data-parallel: this process's validation rows (every process
            passes some, or none does).

        Returns
        -------
        self : EinsumNetworkDensity
        """
        comm = resolve_process_group(self.distributed)
        data = self._agreed_data(comm, X, X_val, partial=False)
        start = self._start(comm, data, hold_out=X_val is None)

        progress = ProgressPrinter(type(self).__name__, self.verbose if comm is None or comm.is_root else 0)
        trainer = Trainer(
            start.circuit,
            data.schedule,
            reduce=None if comm is None else comm.reduce,
            on_epoch=progress.epoch,
            on_batch=progress.batch,
            shard=start.shard,
        )
        try:
            result = trainer.fit(start.params, start.X_train, start.generator, X_valid=start.X_valid)
        except FloatingPointError as error:
            raise ValueError(str(error)) from None
        query_params = result.params.map(lambda t: t.to(torch.float64))
        lower_bound = self._lower_bound(comm, data, start, query_params)
        if self.tol is not None and not result.converged:
            warn_not_converged(type(self).__name__, result, data.schedule)

        # Only now is fitted state written: a failure above leaves an earlier fit intact.
        self._store(data, start, result.params, query_params)
        self.n_iter_ = (self.n_iter_ if data.continuing else 0) + result.n_iter
        self.converged_ = result.converged
        self.lower_bound_ = lower_bound
        self.train_scores_ = [record.train for record in result.history]
        self.validation_scores_ = None if start.X_valid is None else [record.valid for record in result.history]
        self.best_validation_score_ = None if start.X_valid is None else result.best_score
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """One stochastic-EM step on the rows of X (out-of-core learning).

        The first call (on an unfitted model, or after a fit with other
        circuit parameters is refused) builds the structure, infers the
        leaves and initializes the parameters from X, exactly as ``fit``
        would from these rows with ``early_stopping=False``, then takes the
        step; every call moves the parameters by one EM update from the
        expected statistics of all rows of X, with step size
        ``learning_rate`` (None: 0.5): ``(1 - lr) * old + lr * M-step(X)``.
        With ``learning_rate=1`` a call is one full-batch EM iteration on X.
        Pass mini-batches of a stream (or of a ``numpy.memmap``, read in
        chunks) in turn, as to ``MiniBatchKMeans.partial_fit``; leaf
        hyper-parameters inferred from the first batch (``n_categories``,
        ``n_trials``) stay fixed, so give them explicitly when later
        batches may exceed it. Nothing is held out: no early stopping.
        Data-parallel (see ``distributed``): each process passes its share
        of the batch; the step is that of the whole batch.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are missing.
        y : Ignored

        Returns
        -------
        self : EinsumNetworkDensity
        """
        comm = resolve_process_group(self.distributed)
        data = self._agreed_data(comm, X, None, partial=True)
        start = self._start(comm, data, hold_out=False)
        learning_rate = self.learning_rate if self.learning_rate is not None else DEFAULT_EM_LEARNING_RATE
        trainer = Trainer(start.circuit, data.schedule, reduce=None if comm is None else comm.reduce, shard=start.shard)
        try:
            params, mean = trainer.em_step(start.X_train, start.params, learning_rate)
        except FloatingPointError as error:
            raise ValueError(str(error)) from None

        self._store(data, start, params, params.map(lambda t: t.to(torch.float64)))
        self.n_iter_ = (self.n_iter_ if data.continuing else 0) + 1
        self.converged_ = False
        self.lower_bound_ = mean
        self.train_scores_ = (list(self.train_scores_) if data.continuing else []) + [mean]
        self.validation_scores_ = None
        self.best_validation_score_ = None
        return self

    # ------------------------------------------------------ fit: the steps
    def _agreed_data(self, comm, X, X_val, partial):
        """Every process's local checks of its rows, agreed on before any
        other collective: the same ValueError on every rank if any fails."""
        data, facts = agree_on(comm, lambda: self._check_data(X, X_val, partial, comm is not None), _FitData.facts)
        if comm is not None:
            flags = (("continuing", "continue a fitted model (warm_start or partial_fit)"), ("has_X_val", "pass X_val"))
            check_same_facts(facts, "n_features", "features", flags)
        data.counts = np.array([f["n_rows"] for f in facts], dtype=np.int64)
        data.offset = int(row_offsets(data.counts)[0 if comm is None else comm.rank])
        if not data.legacy:
            data.leaf = _global_leaf(data, facts)
        data.schedule = dataclasses.replace(data.schedule, pseudocount=self._pseudocount(data.leaf))
        return data

    def _pseudocount(self, leaf):
        """The prior's strength for the (inferred) ``leaf``: ``pseudocount``,
        or for "auto" AUTO_PSEUDOCOUNT_PER_OUTCOME times the largest number
        of outcomes (free parameters + 1) of a family when every family is
        discrete with finitely many states, else 0."""
        if self.pseudocount != "auto":
            return float(self.pseudocount)
        families = getattr(leaf, "families", [leaf])
        if not all(family.n_states is not None for family in families):
            return 0.0
        return AUTO_PSEUDOCOUNT_PER_OUTCOME * max(family.n_free + 1 for family in families)

    def _check_data(self, X, X_val, partial, distributed):
        """This process's rows, validated: a _FitData (raises ValueError)."""
        continuing = self._continuing(partial)
        streaming = isinstance(X, np.memmap)
        if streaming:  # no float copy: rows are converted a batch at a time
            X = validate_data(self, X, reset=not continuing, dtype=None, ensure_all_finite=False)
            _check_real(X, "X")
        else:
            X = validate_data(self, X, reset=not continuing, dtype=np.float64, ensure_all_finite=False)
        data = _FitData(X, streaming, continuing, legacy=not (streaming or distributed))
        if data.legacy:  # one process, in memory: checks on the whole array
            check_no_inf(X)
            if np.isnan(X).all():
                raise ValueError("X has no observed entry (every value is NaN); a circuit cannot be fitted to no data.")
        data.schedule = self._schedule()
        if partial and self.optimizer != "em":
            raise ValueError(
                f"partial_fit takes stochastic-EM steps, but optimizer={self.optimizer!r}; use optimizer='em'."
            )
        base = self.leaf_ if continuing else resolve_leaf(
            self.leaf,
            X.shape[1],
            min_var=self.min_var,
            max_var=self.max_var,
            n_categories=self.n_categories,
            n_trials=self.n_trials,
        )
        if data.legacy:
            if continuing:
                base.validate(X)
                data.leaf = base
            else:
                data.leaf = base.infer(X)
        else:
            data.base_leaf = base
            data.extremes, data.integral = _scan(ArrayRows(X), base, "X")
        data.device = resolve_device(self.device)
        data.dtype = resolve_dtype(self.dtype)
        if X_val is not None:
            data.X_val, data.val_extremes = self._check_validation_rows(X_val, data)
        return data

    def _check_validation_rows(self, X_val, data):
        if self.early_stopping is False:
            raise ValueError("X_val was given but early_stopping=False; set early_stopping=True or 'auto' to use it.")
        if isinstance(X_val, np.memmap):
            X_val = check_array(X_val, dtype=None, ensure_all_finite=False)
            _check_real(X_val, "X_val")
        else:
            X_val = check_array(X_val, dtype=np.float64, ensure_all_finite=False)
        if X_val.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X_val has {X_val.shape[1]} features, but X has {self.n_features_in_}; pass validation rows "
                "with the same features."
            )
        if data.legacy:
            check_no_inf(X_val)
            data.leaf.validate(X_val)
            return X_val, None
        return X_val, _scan(ArrayRows(X_val), data.base_leaf, "X_val", require_observed=False)[0]

    def _start(self, comm, data, hold_out):
        """Seeds, validation split, structure and initial parameters: the
        same on every process (rank 0's, broadcast), and the same as one
        process would draw for all rows together."""
        n_total = int(data.counts.sum())
        n_local = data.X.shape[0]
        seeds = check_random_state(self.random_state)
        if comm is not None:
            seeds = comm.broadcast(seeds)  # rank 0's generator state: the same draws everywhere
        # drawn on the host, in this order: the same structure and split on every device
        structure_seed = draw_seed(seeds)
        if hold_out:
            train_rows, valid_rows = validation_split(n_total, self.early_stopping, self.validation_fraction, seeds)
        else:
            train_rows, valid_rows = np.arange(n_total), None
        generator = torch_generator(draw_seed(seeds), data.device)
        local_train, train_offset = local_part(train_rows, data.offset, n_local)
        local_valid = None if valid_rows is None else local_part(valid_rows, data.offset, n_local)[0]
        start = _FitStart(generator)
        if comm is not None:
            start.shard = RowShard(train_offset, len(train_rows))

        device, dtype = data.device, data.dtype
        if data.legacy:
            X_train = torch.tensor(data.X[local_train], dtype=dtype, device=device)  # a copy: X may be read-only
            X_valid = None if local_valid is None else torch.tensor(data.X[local_valid], dtype=dtype, device=device)
            if data.X_val is not None:
                X_valid = torch.tensor(data.X_val, dtype=dtype, device=device)
        else:
            X_train = _rows(data.X, local_train, data, dtype)
            X_valid = None if local_valid is None else _rows(data.X, local_valid, data, dtype)
            if data.X_val is not None:
                X_valid = _rows(data.X_val, None, data, dtype)
        start.X_train, start.X_valid = X_train, X_valid

        if data.continuing:
            graph, n_sums, layer = self.region_graph_, self.n_sums_, self.layer_
            params = self.params_.map(lambda t: t.to(device=device, dtype=dtype).clone())
            if comm is not None:  # rank 0's parameters, in case the processes' fits differ
                comm.broadcast_tensors([params.leaf, *params.tensors()])
        elif data.legacy:
            graph = self._build_graph(data.X[local_train], data.leaf, random_state=structure_seed)
            n_sums, layer = self.n_sums, self._layer()
        else:
            graph, params = self._initialize(comm, data, train_rows, structure_seed, generator)
            n_sums, layer = self.n_sums, self._layer()
        start.graph, start.n_sums, start.layer = graph, n_sums, layer
        start.circuit = CompiledCircuit(graph, n_sums, data.leaf, device, layer=layer)
        if data.legacy and not data.continuing:
            params = start.circuit.init_params(X_train, generator, dtype)
        start.params = params
        return start

    def _initialize(self, comm, data, train_rows, structure_seed, generator):
        """(graph, initial parameters) from the initialization sample of the
        training rows, on rank 0, broadcast with its generator's state."""
        sample_rows = evenly_spaced_rows(train_rows, INIT_SAMPLE_ELEMENTS // max(1, data.X.shape[1]))
        local_rows = local_part(sample_rows, data.offset, data.X.shape[0])[0]
        block = ArrayRows(data.X).read(local_rows)  # (n, D) float64: this process's part of the sample
        blocks = [block] if comm is None else comm.gather_to_root(block)

        def build():
            # in the global order: the rows one process would read
            X_init = blocks[0] if len(blocks) == 1 else np.concatenate(blocks)
            graph = self._build_graph(X_init, data.leaf, random_state=structure_seed)
            circuit = CompiledCircuit(graph, self.n_sums, data.leaf, data.device, layer=self._layer())
            params = circuit.init_params(torch.tensor(X_init, dtype=data.dtype, device=data.device), generator, data.dtype)
            return graph, params_to(params, "cpu"), generator.get_state()

        if comm is None:
            graph, params, _ = build()
        else:
            graph, params, state = comm.run_on_root(build)
            generator.set_state(state)  # the draws after initialization agree too (batch order)
        blocks = block = None  # freed before the heap is trimmed
        trim_heap()  # the sample and its temporaries: not resident while the rows stream
        return graph, params_to(params, data.device)

    def _lower_bound(self, comm, data, start, query_params):
        """Mean log-likelihood of all training rows (of every process) at the fitted parameters."""
        circuit = start.circuit
        if data.legacy:
            X = torch.tensor(data.X, dtype=torch.float64, device=data.device)
            lower_bound = float(np.mean(score_in_batches(circuit, query_params, X)))
        else:
            rows = _rows(data.X, None, data, torch.float64)
            total = 0.0 if len(rows) == 0 else float(circuit.log_prob_in_chunks(rows, query_params).sum())
            rows.release()
            n = len(rows)
            if comm is not None:
                total, n = comm.sum(total, n)
            lower_bound = total / n
        return check_finite_lower_bound(lower_bound)

    def _store(self, data, start, params, query_params):
        self.region_graph_ = start.graph
        self.leaf_ = data.leaf
        self.pseudocount_ = data.schedule.pseudocount
        self.n_sums_ = start.n_sums
        self.layer_ = start.layer
        self.params_ = params
        self.device_ = data.device
        self._circuit_cache = start.circuit
        self._query_cache = (params, query_params)
        self._fitted_circuit_parameters_ = {
            name: copy.deepcopy(getattr(self, name)) for name in self._circuit_parameters
        }
        self.n_categories_ = getattr(data.leaf, "n_categories", None)
        self.n_trials_ = getattr(data.leaf, "n_trials", None)
        self.n_parameters_ = start.circuit.n_parameters()

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN means "marginalize this entry"
        return tags




def _same(a, b):
    """Parameter equality that also holds for arrays, lists and region graphs."""
    try:
        return bool(np.all(a == b)) if not isinstance(a, (dict, list, tuple)) else a == b
    except (TypeError, ValueError):
        return a is b


# ------------------------------------------------------------- fit helpers
# pseudocount="auto" with discrete leaves: this many pseudo-observations per
# outcome of a leaf distribution, its free parameters + 1 (add-0.05
# smoothing of a categorical leaf; the same total on each sum-weight
# distribution), e.g. 0.1 for binary data, 12.8 for 8-bit pixels: the best or
# near-best strength of every measurement in benchmarks/RESULTS.md, section
# 11. Outcomes, not states: a binomial leaf over 17 levels has one free
# parameter, and 0.05 x 17 = 0.85 cost the digits demo 3.4 nats per image
# (-87.45 at 0, -87.49 at 0.1, -90.87 at 0.85).
AUTO_PSEUDOCOUNT_PER_OUTCOME = 0.05

# Values (rows x features) of the initialization sample: structure learning
# and initialization read at most this many training values when the rows
# stream from a memmap or live in several processes (all of them below it,
# then the fit is exactly that of one process on all rows in memory).
INIT_SAMPLE_ELEMENTS = 2**21


class _FitData:
    """One process's validated rows and what its checks found."""

    def __init__(self, X, streaming, continuing, legacy):
        self.X = X  # (n, D) float64 ndarray, or the memmap (any real dtype) when streaming
        self.streaming = streaming
        self.continuing = continuing
        self.legacy = legacy  # one process, in memory: the in-memory code path
        self.X_val = None
        self.schedule = None
        self.leaf = None  # inferred (after agreement, from the global extremes, unless legacy)
        self.base_leaf = None
        self.extremes = None  # (2, D): column min and max of the observed entries (NaN: none)
        self.integral = None  # (D,) bool: every observed entry of the column an integer
        self.val_extremes = None
        self.device = self.dtype = None
        self.counts = None  # rows of every process
        self.offset = 0

    def facts(self):
        """What the processes compare and share after their checks (picklable)."""
        return {
            "n_rows": int(self.X.shape[0]),
            "n_features": int(self.X.shape[1]),
            "continuing": self.continuing,
            "has_X_val": self.X_val is not None,
            "extremes": self.extremes,
            "integral": self.integral,
            "val_extremes": self.val_extremes,
        }


class _FitStart:
    """What a fit starts from: data views, circuit, parameters, generator, shard."""

    def __init__(self, generator):
        self.generator = generator
        self.shard = None
        self.X_train = self.X_valid = None
        self.graph = self.n_sums = self.layer = self.circuit = self.params = None


def _global_leaf(data, facts):
    """The leaf inferred from every process's column extremes (all that the
    built-in families infer from: the largest count or state)."""
    extremes = _combine_extremes([f["extremes"] for f in facts])
    base = data.base_leaf
    if isinstance(base, AutoLeaf) and not data.continuing:
        integral = np.logical_and.reduce([f["integral"] for f in facts if f["integral"] is not None])
        base = base.resolve_from_summary(extremes[0], extremes[1], integral)
    leaf = base if data.continuing else base.infer(extremes)
    if data.X_val is not None or facts[0]["has_X_val"]:
        val_extremes = _combine_extremes([f["val_extremes"] for f in facts])
        leaf.validate(val_extremes)  # validation values the training rows' leaf cannot model
    return leaf


def _combine_extremes(parts):
    """(2, D): the column-wise min and max over every process's (2, D) extremes (NaN: no observed entry)."""
    stacked = np.stack([p for p in parts if p is not None])  # (P, 2, D)
    return np.stack([np.fmin.reduce(stacked[:, 0], axis=0), np.fmax.reduce(stacked[:, 1], axis=0)])


def _scan(rows, leaf, name, require_observed=True):
    """Check every chunk of ``rows`` (ArrayRows) on the host: no inf, values
    the leaf can model, some observed entry; returns the (2, D) column
    extremes of the observed entries and whether each column's observed
    entries are all integers."""
    low = np.full(rows.shape[1], np.nan)
    high = np.full(rows.shape[1], np.nan)
    integral = np.ones(rows.shape[1], dtype=bool)  # every observed value an integer (for leaf="auto")
    for _, chunk in rows.chunks():
        if np.isinf(chunk).any():
            raise ValueError(f"{name} contains inf; replace it by a finite value, or by NaN to mark it missing.")
        leaf.validate(chunk)
        low = np.fmin(low, np.fmin.reduce(chunk, axis=0))
        high = np.fmax(high, np.fmax.reduce(chunk, axis=0))
        integral &= np.all(np.isnan(chunk) | (chunk == np.round(chunk)), axis=0)
    rows.release()
    if require_observed and np.isnan(low).all():
        raise ValueError(f"{name} has no observed entry (every value is NaN); a circuit cannot be fitted to no data.")
    return np.stack([low, high]), integral


def _check_real(X, name):
    if X.dtype.kind not in "biuf":
        raise ValueError(f"{name} is a memmap of dtype {X.dtype}; pass a memmap of real numbers (int or float).")


def _rows(X, rows, data, dtype):
    """The rows ``rows`` (None: all) of X for training or scoring, converted a batch at a time."""
    return ArrayRows(X, rows, dtype=dtype, device=data.device)
