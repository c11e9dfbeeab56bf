"""LVDDensity: latent variable distillation (Liu et al., ICLR 2023) as one circuit."""

import math
import pickle
import time
import warnings
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin, TransformerMixin, clone
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from ._compat import Interval, StrOptions, _fit_context, validate_data
from .backend.circuit import CompiledCircuit
from .backend.distributed import (
    check_same_facts,
    evenly_spaced_rows,
    agree_on,
    local_part,
    params_to,
    resolve_process_group,
    row_offsets,
)
from .backend.em import LatentEvidence
from .backend.leaves import LEAF_NAMES, AutoLeaf, ExponentialFamilyLeaf, resolve_leaf
from .backend.train import RowShard, Schedule, Trainer
from .base import (
    ProgressPrinter,
    TorchStateMixin,
    check_finite_lower_bound,
    check_validation_rows,
    draw_seed,
    resolve_device,
    resolve_dtype,
    torch_generator,
    validation_split,
)
from .queries import CircuitQueriesMixin, check_no_inf, score_in_batches
from .structure import RegionGraph, chow_liu_tree, coarsen_states, hclt_region_graph, random_binary_trees
from .structure.compose import compose_region_graphs

# The partition layer of every LVD circuit (see the class docstring).
LAYER = "einsum"
# Values (rows x features) of the initialization sample of a data-parallel
# fit: the assigner, the structures and the initial parameters come from at
# most this many training values gathered on rank 0 (all training rows below
# it: then the fit is exactly that of one process on all rows).
INIT_SAMPLE_ELEMENTS = 2**21


class LVDDensity(CircuitQueriesMixin, TorchStateMixin, TransformerMixin, DensityMixin, BaseEstimator):
    """Latent variable distillation (Liu et al., ICLR 2023): a probabilistic
    circuit whose group latents are assigned by clustering a deep model's
    embeddings, then trained on X.

    The features are split into groups X_1..X_m (image patches, or given
    lists). Every group gets a categorical latent Z_i with ``n_clusters``
    states, materialized in the circuit: group i's sub-circuit has
    ``n_clusters`` outputs p(X_i | Z_i = c), and a latent circuit (a hidden
    Chow-Liu tree over Z_1..Z_m learned from the codes) combines them, so
    that the circuit is p(X, Z) = p(Z) prod_i p(X_i | Z_i), and its marginal
    over Z is one ordinary circuit over X. ``fit`` runs the paper's stages:

    1. *Assignment*: a :class:`~skpc.latent.LatentAssigner` embeds every
       group of every training row (a small masked autoencoder by default)
       and clusters each group's embeddings with k-means: the codes Z.
    2. *Distillation*: EM on the joint likelihood of (X, Z), the codes given
       as evidence on the sub-circuits' top regions. By the paper's Lemma 1
       this is, in one pass, each sub-circuit output c trained only on the
       rows assigned c and the latent circuit trained on the codes alone.
    3. *Fine-tuning*: EM on the likelihood of X itself (Z marginalized),
       ``finetune_max_iter`` epochs at most (0: none).

    Partitions are einsum (Tucker) layers: each mixes all K x K pairs of its
    children's states, which is what materialized latents need (a CP layer
    multiplies the vectors of sibling groups elementwise, so it would only
    give mass to equal codes of neighbouring groups).

    Every query is then exact and answered by the one compiled circuit, at
    the speed of an :class:`EinsumNetworkDensity` of the same size.

    With a single group (``groups=[all features]``), ``embedder="pixels"``
    and ``finetune_max_iter=0`` this is the Einsum Networks paper's recipe
    for SVHN and CelebA (section 4.2): k-means over whole images, one
    circuit per cluster trained on its cluster's rows, the cluster
    proportions as mixture weights (a mixture of circuits is a circuit).
    There the components are sub-circuits that share their lower regions
    (one region graph with ``n_clusters`` densities per region) rather than
    disjoint networks; each output is trained on its own cluster's rows.

    Parameters
    ----------
    image_shape : tuple (H, W) or (H, W, C), default=None
        Image layout of the features (row-major, channels last); with
        ``patch_size``, groups are the image's patches (all channels).
    patch_size : int or (int, int), default=None
    groups : list of lists of int or "features", default=None
        Explicit groups: disjoint, covering every feature; "features": one
        group per feature. Give either ``groups`` or ``image_shape`` and
        ``patch_size``; with neither, every feature is its own group (a
        hidden Chow-Liu tree over the features whose hidden states are
        distilled from the embeddings).
    n_clusters : int, default=16
        States of each group latent, and the number of densities of every
        region of the circuit (K).
    embedder : str, transformer or callable, default="mae"
        How groups are embedded before k-means (see
        :class:`~skpc.latent.LatentAssigner`): "mae" (a masked autoencoder
        trained in ``fit``), "pca", "pixels", a scikit-learn transformer, or
        a callable / ``torch.nn.Module``.
    context : {None, "mst", "all"}, default=None
        What the embedder sees of a group's row: the group alone (None),
        the group and its ancestors in a maximum spanning tree of group
        correlations ("mst", the paper's context), or every group ("all").
    assigner : transformer or None, default=None
        A ready latent assigner (cloned and fitted in ``fit``) in place of
        the one built from the grouping, ``embedder`` and ``context``
        parameters (which must then be left at None / their defaults): any
        transformer whose ``transform`` gives int codes (n_samples, m) in
        0..n_clusters-1 and that has ``groups_`` after fitting.
    sub_structure : {"hclt", "rat", "factorized"}, default="hclt"
        Structure of each group's sub-circuit: a hidden Chow-Liu tree of the
        group's features learned from the training rows, random binary
        trees of ``depth`` and ``n_repetitions``, or a product of
        independent leaves per latent state (a mixture of fully factorized
        densities per group).
    latent_structure : {"hclt"}, default="hclt"
        The latent circuit over the codes: a hidden Chow-Liu tree (the
        Chow-Liu tree of the codes, one region per subtree).
    depth : int or None, default=None
        Split depth of "rat" sub-circuits; None: ``min(3, floor(log2(size)))``
        per group.
    n_repetitions : int, default=1
        Random binary trees per "rat" sub-circuit.
    leaf : str, leaf instance, dict or list, default="auto"
        The leaf families, as in :class:`~skpc.EinsumNetworkDensity`;
        "auto" picks each column's family from the training data
        (non-negative integers below 256: categorical with one number of
        states for all such columns; else Gaussian; see
        ``skpc.backend.AutoLeaf``).
    n_categories, n_trials, min_var, max_var
        Hyper-parameters of the leaf families.
    max_iter : int, default=100
        Epochs of the distillation stage (stochastic EM on (X, Z)) at most.
    finetune_max_iter : int, default=20
        Epochs of stochastic EM on X at most after distillation (0: none).
    batch_size : int or None, default=100
        Mini-batch size of both EM stages; None: full-batch EM.
    learning_rate, finetune_learning_rate : float or None, default=None
        Initial EM step sizes in (0, 1] of the two stages (None: 0.5
        stochastic, 1.0 full batch), halved on plateaus.
    early_stopping : "auto" or bool, default="auto"
        Hold out ``validation_fraction`` of the rows and keep each stage's
        best parameters on them (the joint likelihood of the held-out rows
        and their codes during distillation, their likelihood during
        fine-tuning). "auto": from 20 rows on.
    validation_fraction : float, default=0.1
    n_iter_no_change : int, default=3
    tol : float or None, default=1e-4
    max_full_batch_iter : int, default=50
        Full-batch EM epochs at most after the last stochastic stage
        (fine-tuning, or distillation when ``finetune_max_iter=0``), as in
        :class:`~skpc.EinsumNetworkDensity`; distillation followed by
        fine-tuning ends with its stochastic phase.
    pseudocount : float, default=0.0
        MAP-EM in both EM stages, as :class:`~skpc.EinsumNetworkDensity`'s
        ``pseudocount``: a prior worth this many pseudo-observations on every
        distribution of the circuit (sum weights and leaves); 0 is
        maximum-likelihood EM. The default stays 0 here (the estimator
        above defaults to 1): with Gaussian leaves the prior's pull toward
        the pooled statistics kept the full-batch fine-tuning of small data
        sets improving by more than ``tol`` for all of its 50 epochs.
    softening : float in (0, 1], default=1.0
        Data softening in both EM stages, as :class:`~skpc.EinsumNetworkDensity`'s
        ``softening`` (discrete leaves only); 1.0 is off.
    device : {"cpu", "cuda", "auto"} or "cuda:N", default="cpu"
    dtype : {"float32", "float64"}, default="float32"
    random_state : int, RandomState instance or None, default=None
        Seeds the assigner, the structures, the split, the initialization
        and the batch order.
    verbose : int, default=0
        1 prints a line per stage and per epoch (on rank 0 only when
        data-parallel).
    distributed : "auto" or bool, default="auto"
        Data-parallel training on ``torch.distributed``: each process of
        the group passes its own rows to ``fit``. The assigner, the
        structures and the initial parameters come from rank 0, fitted on
        the training rows gathered from every process (an evenly spaced
        sample of them beyond 2^21 values); the fitted assigner is sent to
        every process (it must pickle), which codes its own rows (with all
        training rows in the sample, rank 0 sends their codes instead).
        Both EM stages then sum their statistics over the processes and
        draw one global split and batch order, so every process ends with
        the model one process would fit on all rows (rank 0's first) when
        the sample holds every training row. "auto": data-parallel when a
        process group of more than one process is initialized; True:
        require one; False: never. See :ref:`distributed`.

    Attributes
    ----------
    assigner_ : transformer
        The fitted latent assigner.
    groups_ : list of ndarray of int
        Feature indices of each group.
    group_regions_ : list of int
        The region of ``region_graph_`` whose components are each group's
        latent states.
    latent_parents_ : ndarray of int, shape (n_groups,)
        The Chow-Liu tree over the group latents (parent group, -1 at the root).
    region_graph_, leaf_, n_sums_, layer_, params_, device_, n_features_in_
        The fitted circuit, as in :class:`~skpc.EinsumNetworkDensity`.
    distillation_train_scores_, distillation_validation_scores_ : list of float
        Mean joint log-likelihood of (X, Z) per distillation epoch
        (validation: None without early stopping).
    train_scores_, validation_scores_ : list of float
        Mean log-likelihood of X per fine-tuning epoch (empty without it).
    stage_times_ : dict
        Seconds of each stage: "embedding" and "clustering" (or
        "assignment" for an assigner that does not break its time down),
        "structure", "distillation", "finetuning".
    n_iter_ : int
        Epochs of both EM stages.
    converged_ : bool
        Whether the last EM stage ended by its plateau rule.
    lower_bound_ : float
        Mean training log-likelihood of X at the fitted parameters.
    n_parameters_ : int
    """

    _parameter_constraints = {
        "image_shape": [tuple, list, None],
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "groups": [list, tuple, StrOptions({"features"}), None],
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "embedder": [str, object],
        "context": [StrOptions({"mst", "all"}), None],
        "assigner": [object, None],
        "sub_structure": [StrOptions({"hclt", "rat", "factorized"})],
        "latent_structure": [StrOptions({"hclt"})],
        "depth": [Interval(Integral, 0, None, closed="left"), None],
        "n_repetitions": [Interval(Integral, 1, None, closed="left")],
        "leaf": [StrOptions(set(LEAF_NAMES)), ExponentialFamilyLeaf, dict, list, tuple],
        "n_categories": [Interval(Integral, 2, None, closed="left"), None],
        "n_trials": [Interval(Integral, 1, None, closed="left"), None],
        "min_var": [Interval(Real, 0, None, closed="neither")],
        "max_var": [Interval(Real, 0, None, closed="neither"), None],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "finetune_max_iter": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left"), None],
        "learning_rate": [Interval(Real, 0, 1, closed="right"), None],
        "finetune_learning_rate": [Interval(Real, 0, 1, closed="right"), None],
        "early_stopping": [StrOptions({"auto"}), "boolean"],
        "validation_fraction": [Interval(Real, 0, 1, closed="neither")],
        "n_iter_no_change": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="left"), None],
        "max_full_batch_iter": [Interval(Integral, 0, None, closed="left")],
        "pseudocount": [Interval(Real, 0, None, closed="left")],
        "softening": [Interval(Real, 0, 1, closed="right")],
        "device": [str],
        "dtype": [StrOptions({"float32", "float64"})],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
        "distributed": [StrOptions({"auto"}), "boolean"],
    }

    _transient_attributes = ("_circuit_cache", "_query_cache")

    def __init__(
        self,
        image_shape=None,
        patch_size=None,
        groups=None,
        n_clusters=16,
        embedder="mae",
        context=None,
        assigner=None,
        sub_structure="hclt",
        latent_structure="hclt",
        depth=None,
        n_repetitions=1,
        leaf="auto",
        n_categories=None,
        n_trials=None,
        min_var=1e-4,
        max_var=None,
        max_iter=100,
        finetune_max_iter=20,
        batch_size=100,
        learning_rate=None,
        finetune_learning_rate=None,
        early_stopping="auto",
        validation_fraction=0.1,
        n_iter_no_change=3,
        tol=1e-4,
        max_full_batch_iter=50,
        pseudocount=0.0,
        softening=1.0,
        device="cpu",
        dtype="float32",
        random_state=None,
        verbose=0,
        distributed="auto",
    ):
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.groups = groups
        self.n_clusters = n_clusters
        self.embedder = embedder
        self.context = context
        self.assigner = assigner
        self.sub_structure = sub_structure
        self.latent_structure = latent_structure
        self.depth = depth
        self.n_repetitions = n_repetitions
        self.leaf = leaf
        self.n_categories = n_categories
        self.n_trials = n_trials
        self.min_var = min_var
        self.max_var = max_var
        self.max_iter = max_iter
        self.finetune_max_iter = finetune_max_iter
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.finetune_learning_rate = finetune_learning_rate
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
        self.distributed = distributed

    # ------------------------------------------------------------- stages
    def _make_assigner(self, seed, device):
        """The (unfitted) latent assigner of this fit."""
        if self.assigner is not None:
            given = [name for name in ("image_shape", "patch_size", "groups", "context") if getattr(self, name) is not None]
            if given or not (isinstance(self.embedder, str) and self.embedder == "mae"):
                raise ValueError(
                    f"assigner was given together with {given or ['embedder']}; set the grouping and the "
                    "embedder on the assigner itself, or leave assigner=None."
                )
            assigner = clone(self.assigner)
            params = assigner.get_params()
            if "n_clusters" in params and params["n_clusters"] != self.n_clusters:
                raise ValueError(
                    f"the assigner has n_clusters={params['n_clusters']} but n_clusters={self.n_clusters}; "
                    "they must agree (the latent states are the clusters)."
                )
            if "random_state" in params and params["random_state"] is None:
                assigner.set_params(random_state=seed)
            return assigner
        from .latent import LatentAssigner  # numpy/sklearn side; torch only for the MAE

        image = self.image_shape is not None or self.patch_size is not None
        return LatentAssigner(
            image_shape=self.image_shape,
            patch_size=self.patch_size,
            groups="features" if self.groups is None and not image else self.groups,
            embedder=self.embedder,
            context=self.context,
            n_clusters=self.n_clusters,
            random_state=seed,
            device=str(device),
            verbose=max(0, int(self.verbose) - 1),
        )

    def _check_codes(self, codes, n_rows, n_groups):
        codes = np.asarray(codes)
        if codes.shape != (n_rows, n_groups) or not np.issubdtype(codes.dtype, np.integer):
            raise ValueError(
                f"the assigner's transform must give int codes of shape (n_samples, n_groups) = "
                f"({n_rows}, {n_groups}); got {codes.dtype} {codes.shape}."
            )
        if codes.size and (codes.min() < 0 or codes.max() >= self.n_clusters):
            raise ValueError(f"the assigner gave codes outside 0..{self.n_clusters - 1} (n_clusters).")
        return codes

    def _sub_graph(self, X_group, kinds, seed):
        """Region graph of one group's sub-circuit over its columns X_group (n, size)."""
        size = X_group.shape[1]
        if size == 1 or self.sub_structure == "factorized":
            return RegionGraph(size, [tuple(range(size))], []).validate()
        if self.sub_structure == "hclt":
            return hclt_region_graph(*chow_liu_tree(coarsen_states(X_group, kinds), kind=kinds))
        max_depth = int(math.floor(math.log2(size)))
        depth = min(3, max_depth) if self.depth is None else min(self.depth, max_depth)
        return random_binary_trees(size, depth, self.n_repetitions, random_state=seed)

    def _build_graph(self, X, codes, groups, leaf, seeds):
        """(composed graph, group regions, latent parents) for the training rows."""
        n_groups = len(groups)
        if n_groups == 1:
            latent, parents = RegionGraph(1, [(0,)], []).validate(), np.array([-1])
        else:
            parents, root = chow_liu_tree(codes.astype(np.float64), kind="discrete", n_states=self.n_clusters)
            latent = hclt_region_graph(parents, root)
        families = getattr(leaf, "families", [leaf] * X.shape[1])
        kinds = ["discrete" if family.discrete else "gaussian" for family in families]
        subs = [self._sub_graph(X[:, g], [kinds[v] for v in g], draw_seed(seeds)) for g in groups]
        graph, group_regions = compose_region_graphs(latent, subs, groups)
        return graph, group_regions, np.asarray(parents)

    def _schedule(self, max_iter, learning_rate, full_batch):
        return Schedule(
            optimizer="em",
            max_iter=max_iter,
            batch_size=self.batch_size,
            learning_rate=learning_rate,
            tol=self.tol,
            n_iter_no_change=self.n_iter_no_change,
            max_full_batch_iter=self.max_full_batch_iter if full_batch else 0,
            pseudocount=float(self.pseudocount),
            softening=float(self.softening),
        )

    # ----------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None, X_val=None):
        """Assign the group latents, distill, fine-tune (see the class docstring).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are missing: marginalized by the circuit (the
            assigner documents how it embeds them).
        y : Ignored
        X_val : array-like of shape (n_val, n_features), default=None
            Validation rows for early stopping in place of a split of X
            (their codes come from the fitted assigner); then all of X is
            trained on. Not allowed with ``early_stopping=False``.

        Returns
        -------
        self : LVDDensity
        """
        comm = resolve_process_group(self.distributed)
        if comm is not None:
            return self._fit_distributed(comm, X, X_val)
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        n_samples, n_features = X.shape
        check_no_inf(X)
        if np.isnan(X).all():
            raise ValueError("X has no observed entry (every value is NaN); a circuit cannot be fitted to no data.")
        leaf = resolve_leaf(
            self.leaf,
            n_features,
            min_var=self.min_var,
            max_var=self.max_var,
            n_categories=self.n_categories,
            n_trials=self.n_trials,
        ).infer(X)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        seeds = check_random_state(self.random_state)
        assigner_seed, structure_seeds = draw_seed(seeds), np.random.RandomState(draw_seed(seeds))
        if X_val is None:
            train_rows, valid_rows = validation_split(
                n_samples, self.early_stopping, self.validation_fraction, seeds
            )
            X_fit, X_held = X[train_rows], None if valid_rows is None else X[valid_rows]
        else:
            X_fit, X_held = X, check_validation_rows(X_val, n_features, self.early_stopping, leaf)
        generator = torch_generator(draw_seed(seeds), device)
        progress = ProgressPrinter(type(self).__name__, self.verbose)
        times = {}

        start = time.perf_counter()
        progress.stage(f"assigning latents: {n_samples} rows, n_clusters={self.n_clusters}")
        assigner = self._make_assigner(assigner_seed, device)
        codes = np.asarray(assigner.fit_transform(X_fit))  # one embedding pass of the training rows
        groups = [np.asarray(g, dtype=np.int64) for g in getattr(assigner, "groups_", [])]
        if not groups:
            raise ValueError("the assigner has no groups_ after fitting; it must say which features each code covers.")
        codes = self._check_codes(codes, X_fit.shape[0], len(groups))
        codes_held = None if X_held is None else self._check_codes(assigner.transform(X_held), len(X_held), len(groups))
        # the assigner's own breakdown (embedding, clustering) when it keeps one
        times.update(getattr(assigner, "stage_times_", None) or {"assignment": time.perf_counter() - start})

        start = time.perf_counter()
        graph, group_regions, parents = self._build_graph(X_fit, codes, groups, leaf, structure_seeds)
        circuit = CompiledCircuit(graph, self.n_clusters, leaf, device, layer=LAYER)
        times["structure"] = time.perf_counter() - start
        progress.stage(
            f"circuit: {len(groups)} groups, {len(graph.regions)} regions, {circuit.n_parameters()} parameters"
        )

        X_train = torch.tensor(X_fit, dtype=dtype, device=device)  # a copy: X may be read-only
        X_valid = None if X_held is None else torch.tensor(X_held, dtype=dtype, device=device)
        params = circuit.init_params(X_train, generator, dtype)

        results = self._train_stages(
            circuit, params, X_train, X_valid, generator, codes, codes_held, group_regions, progress, times
        )
        result = results[-1][2]

        query_params = result.params.map(lambda t: t.to(torch.float64))
        all_rows = torch.tensor(X, dtype=torch.float64, device=device)
        lower_bound = float(np.mean(score_in_batches(circuit, query_params, all_rows)))
        check_finite_lower_bound(lower_bound)
        self._warn_stages(results)

        # Only now is fitted state written: a failure above leaves an earlier fit intact.
        self._store(assigner, groups, group_regions, parents, graph, leaf, device, circuit, results, query_params,
                    X_valid is not None, times, lower_bound)
        return self

    def _train_stages(self, circuit, params, X_train, X_valid, generator, codes, codes_held, group_regions, progress,
                      times, reduce=None, shard=None):
        """Distillation (EM on the joint likelihood of X and the codes), then
        fine-tuning (EM on X): [(limit name, schedule, TrainingResult)] per stage.

        Data-parallel: ``reduce`` and ``shard`` of the process group; X_train,
        X_valid and their codes are this process's rows (local indices)."""
        device = X_train.device

        def evidence(rows_codes):
            return LatentEvidence(group_regions, torch.as_tensor(rows_codes, device=device), self.n_clusters)

        start = time.perf_counter()
        progress.stage("distillation: EM on the joint likelihood of X and the latent codes")
        # the full-batch phase polishes the final objective: that of fine-tuning when there is one
        schedule = self._schedule(self.max_iter, self.learning_rate, full_batch=self.finetune_max_iter == 0)
        trainer = Trainer(
            circuit,
            schedule,
            reduce=reduce,
            on_epoch=progress.epoch,
            on_batch=progress.batch,
            evidence=evidence(codes),
            valid_evidence=None if codes_held is None else evidence(codes_held),
            shard=shard,
        )
        distilled = _train(trainer, params, X_train, generator, X_valid)
        times["distillation"] = time.perf_counter() - start
        results = [("max_iter", schedule, distilled)]

        start = time.perf_counter()
        if self.finetune_max_iter > 0:
            progress.stage("fine-tuning: EM on the likelihood of X")
            schedule = self._schedule(self.finetune_max_iter, self.finetune_learning_rate, full_batch=True)
            trainer = Trainer(
                circuit, schedule, reduce=reduce, on_epoch=progress.epoch, on_batch=progress.batch, shard=shard
            )
            result = _train(trainer, distilled.params, X_train, generator, X_valid)
            results.append(("finetune_max_iter", schedule, result))
        times["finetuning"] = time.perf_counter() - start
        return results

    def _warn_stages(self, results):
        if self.tol is not None:
            for limit, schedule, stage in results:
                if not stage.converged:
                    _warn_stage(limit, schedule, stage)

    def _store(self, assigner, groups, group_regions, parents, graph, leaf, device, circuit, results, query_params,
               validated, times, lower_bound):
        distilled, result = results[0][2], results[-1][2]
        self.assigner_ = assigner
        self.groups_ = groups
        self.group_regions_ = list(group_regions)
        self.latent_parents_ = parents
        self.region_graph_ = graph
        self.leaf_ = leaf
        self.n_sums_ = self.n_clusters
        self.layer_ = LAYER
        self.params_ = result.params
        self.device_ = device
        self._circuit_cache = circuit
        self._query_cache = (result.params, query_params)
        self.distillation_train_scores_ = [r.train for r in distilled.history]
        self.distillation_validation_scores_ = [r.valid for r in distilled.history] if validated else None
        finetuned = results[1][2].history if len(results) > 1 else []
        self.train_scores_ = [r.train for r in finetuned]
        self.validation_scores_ = [r.valid for r in finetuned] if validated else None
        self.stage_times_ = times
        self.n_iter_ = sum(len(stage.history) for _, _, stage in results)
        self.converged_ = result.converged
        self.lower_bound_ = lower_bound
        self.n_parameters_ = circuit.n_parameters()
        self.n_categories_ = getattr(leaf, "n_categories", None)
        self.n_trials_ = getattr(leaf, "n_trials", None)

    # ------------------------------------------------------- data-parallel
    def _fit_distributed(self, comm, X, X_val):
        """``fit`` with the rows spread over the processes of ``comm`` (see ``distributed``)."""
        checked, facts = agree_on(comm, lambda: self._check_local(X, X_val), _local_facts)
        X, X_val, base, device, dtype = checked
        n_local, n_features = X.shape
        check_same_facts(facts, "n_features", "features")
        leaf = _agreed_leaf(base, facts)
        counts = [f["n_rows"] for f in facts]
        n_total = int(sum(counts))
        offset = int(row_offsets(counts)[comm.rank])

        seeds = comm.broadcast(check_random_state(self.random_state))  # rank 0's: the same draws everywhere
        assigner_seed, structure_seeds = draw_seed(seeds), np.random.RandomState(draw_seed(seeds))
        if X_val is None:
            train_rows, valid_rows = validation_split(
                n_total, self.early_stopping, self.validation_fraction, seeds
            )
        else:
            train_rows, valid_rows = np.arange(n_total), None
        generator = torch_generator(draw_seed(seeds), device)
        local_train, train_offset = local_part(train_rows, offset, n_local)
        X_fit = X[local_train]
        if valid_rows is not None:
            X_held = X[local_part(valid_rows, offset, n_local)[0]]
        else:
            X_held = X_val
        progress = ProgressPrinter(type(self).__name__, self.verbose if comm.is_root else 0)
        times = {}

        start = time.perf_counter()
        progress.stage(f"assigning latents: {n_total} rows, n_clusters={self.n_clusters}")
        sample_rows = evenly_spaced_rows(train_rows, INIT_SAMPLE_ELEMENTS // max(1, n_features))
        whole = len(sample_rows) == len(train_rows)  # every training row in the sample
        blocks = comm.gather_to_root(X[local_part(sample_rows, offset, n_local)[0]])

        def build():
            # in the global order: the rows one process would fit on
            X_init = np.concatenate(blocks)
            assigner = self._make_assigner(assigner_seed, device)
            codes = np.asarray(assigner.fit_transform(X_init))
            groups = [np.asarray(g, dtype=np.int64) for g in getattr(assigner, "groups_", [])]
            if not groups:
                raise ValueError(
                    "the assigner has no groups_ after fitting; it must say which features each code covers."
                )
            codes = self._check_codes(codes, X_init.shape[0], len(groups))
            stage_times = dict(getattr(assigner, "stage_times_", None) or {"assignment": time.perf_counter() - start})
            begin = time.perf_counter()
            graph, group_regions, parents = self._build_graph(X_init, codes, groups, leaf, structure_seeds)
            circuit = CompiledCircuit(graph, self.n_clusters, leaf, device, layer=LAYER)
            params = circuit.init_params(torch.tensor(X_init, dtype=dtype, device=device), generator, dtype)
            stage_times["structure"] = time.perf_counter() - begin
            try:
                assigner_bytes = pickle.dumps(assigner)
            except Exception as error:  # noqa: BLE001 - any pickling failure, reported on every rank
                raise ValueError(
                    f"The fitted {type(assigner).__name__} cannot be pickled ({type(error).__name__}: {error}); a "
                    "data-parallel LVD fit sends it to every process to code its rows. Use a picklable assigner "
                    "and embedder (a module-level function, not a lambda)."
                ) from error
            return (assigner_bytes, groups, codes if whole else None, graph, list(group_regions), parents,
                    params_to(params, "cpu"), generator.get_state(), stage_times)

        built = comm.run_on_root(build)
        blocks = None
        assigner_bytes, groups, all_codes, graph, group_regions, parents, params, state, root_times = built
        generator.set_state(state)  # the draws after initialization agree too (batch order)
        assigner = pickle.loads(assigner_bytes)
        times.update(root_times)

        def code():
            """This process's codes of its training rows (from rank 0's fit when
            it coded them all) and of its validation rows."""
            if all_codes is not None:
                codes = all_codes[train_offset : train_offset + len(local_train)]
            else:
                codes = self._transform_rows(assigner, X_fit, len(groups))
            held = None if X_held is None else self._transform_rows(assigner, X_held, len(groups))
            return codes, held

        (codes, codes_held), _ = agree_on(comm, code)  # a failure on one process: the same error on all
        circuit = CompiledCircuit(graph, self.n_clusters, leaf, device, layer=LAYER)
        progress.stage(
            f"circuit: {len(groups)} groups, {len(graph.regions)} regions, {circuit.n_parameters()} parameters"
        )
        params = params_to(params, device)
        X_train = torch.tensor(X_fit, dtype=dtype, device=device)  # a copy: X may be read-only
        X_valid = None if X_held is None else torch.tensor(X_held, dtype=dtype, device=device)
        results = self._train_stages(
            circuit, params, X_train, X_valid, generator, codes, codes_held, group_regions, progress, times,
            reduce=comm.reduce, shard=RowShard(train_offset, len(train_rows)),
        )
        result = results[-1][2]

        query_params = result.params.map(lambda t: t.to(torch.float64))
        all_rows = torch.tensor(X, dtype=torch.float64, device=device)
        total, n = comm.sum(float(np.sum(score_in_batches(circuit, query_params, all_rows))), n_local)
        lower_bound = total / n
        check_finite_lower_bound(lower_bound)
        self._warn_stages(results)
        self._store(assigner, groups, group_regions, parents, graph, leaf, device, circuit, results, query_params,
                    X_valid is not None, times, lower_bound)
        return self

    def _check_local(self, X, X_val):
        """This process's rows (and validation rows), validated: raises ValueError."""
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        check_no_inf(X)
        if np.isnan(X).all():
            raise ValueError("X has no observed entry (every value is NaN); a circuit cannot be fitted to no data.")
        base = resolve_leaf(
            self.leaf,
            X.shape[1],
            min_var=self.min_var,
            max_var=self.max_var,
            n_categories=self.n_categories,
            n_trials=self.n_trials,
        )
        base.validate(X)
        device, dtype = resolve_device(self.device), resolve_dtype(self.dtype)
        if X_val is not None:
            X_val = check_validation_rows(X_val, X.shape[1], self.early_stopping, base)
        return X, X_val, base, device, dtype

    def _transform_rows(self, assigner, X, n_groups):
        if len(X) == 0:
            return np.zeros((0, n_groups), dtype=np.int64)
        return self._check_codes(assigner.transform(X), len(X), n_groups)

    # ------------------------------------------------------------- latents
    def latent_proba(self, X):
        """p(Z_i = c | x) for every row and group, under the fitted circuit.

        Exact: the flow through component c of group i's top region (one
        backward pass; NaN entries of X marginalized).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples, n_groups, n_clusters), rows summing to 1
        """
        X = self._validate_fitted(X)
        circuit, params = self._circuit, self._query_params()
        Xt = self._to_query_tensor(X)
        step = circuit.sampling_chunk_size()  # a pass that keeps every store, as backtracking does
        out = [
            circuit.region_posteriors(Xt[i : i + step], params, self.group_regions_).cpu().numpy()
            for i in range(0, Xt.shape[0], step)
        ]
        return np.concatenate(out)

    def transform(self, X):
        """The most probable state of each group latent: argmax_c p(Z_i = c | x).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), NaN = missing

        Returns
        -------
        ndarray of shape (n_samples, n_groups), int64
        """
        return self.latent_proba(X).argmax(-1).astype(np.int64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # NaN means "marginalize this entry"
        tags.transformer_tags.preserves_dtype = []  # transform gives int codes
        return tags


def _train(trainer, params, X_train, generator, X_valid):
    try:
        return trainer.fit(params, X_train, generator, X_valid=X_valid)
    except FloatingPointError as error:
        raise ValueError(str(error)) from None


def _warn_stage(limit, schedule, result):
    """The ConvergenceWarning of a stage that ran out of epochs; ``limit`` names
    the parameter of its stochastic phase (max_iter or finetune_max_iter)."""
    last = result.history[-1].phase if result.history else "training"
    value = schedule.max_iter
    if last == "full-batch EM" and schedule.batch_size is not None:
        limit, value = "max_full_batch_iter", schedule.max_full_batch_iter
    warnings.warn(
        f"LVDDensity stopped after {limit}={value} epochs of {last} while still improving by more than "
        f"tol={schedule.tol}; increase {limit}, or raise tol.",
        ConvergenceWarning,
        stacklevel=3,
    )


def _summary(X):
    """(2, D) column min and max of the observed entries (NaN: none), (D,) whether they are all integers."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        extremes = np.stack([np.nanmin(X, axis=0), np.nanmax(X, axis=0)]) if len(X) else np.full((2, X.shape[1]), np.nan)
    integral = np.all(np.isnan(X) | (X == np.round(X)), axis=0)
    return extremes, integral


def _local_facts(checked):
    """What the processes compare and share after their checks (picklable)."""
    X, X_val = checked[0], checked[1]
    extremes, integral = _summary(X)
    return {
        "n_rows": int(X.shape[0]),
        "n_features": int(X.shape[1]),
        "extremes": extremes,
        "integral": integral,
        "has_X_val": X_val is not None,
        "val_extremes": None if X_val is None else _summary(X_val)[0],
    }


def _combine(parts):
    """(2, D): the column-wise min and max over every process's (2, D) extremes (NaN: none observed)."""
    stacked = np.stack([p for p in parts if p is not None])  # (P, 2, D)
    return np.stack([np.fmin.reduce(stacked[:, 0], axis=0), np.fmax.reduce(stacked[:, 1], axis=0)])


def _agreed_leaf(base, facts):
    """The leaf inferred from every process's column summaries (all that the
    built-in families infer from: the largest count or state); validation
    rows checked against it (the same figures, so the same error, everywhere)."""
    extremes = _combine([f["extremes"] for f in facts])
    if isinstance(base, AutoLeaf):
        integral = np.logical_and.reduce([f["integral"] for f in facts])
        base = base.resolve_from_summary(extremes[0], extremes[1], integral)
    leaf = base.infer(extremes)
    if facts[0]["has_X_val"]:
        leaf.validate(_combine([f["val_extremes"] for f in facts]))
    return leaf
