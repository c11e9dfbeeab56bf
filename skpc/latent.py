"""LatentAssigner: groups of features -> embeddings -> k-means codes.

The first two steps of latent variable distillation (Liu, Zhang, Van den
Broeck, Niepert, "Understanding the distillation of large latent variable
models into tractable probabilistic circuits", ICLR 2023 (LVD), section 4):

1. partition the features into groups X_1..X_m (image patches, or any
   explicit partition);
2. embed every group of every row with a deep model (a masked autoencoder
   trained here, or a user's model) that sees the group alone, or with the
   group's ancestors in a maximum spanning tree of group correlations as
   context;
3. cluster each group's embeddings with scikit-learn's k-means: the cluster
   index is the row's value of the group's latent Z_i.

The codes are what ``LVDDensity`` materializes as latent variables. This
module is numpy and scikit-learn only; the autoencoder lives in
``skpc.backend.mae``.
"""

import time
from numbers import Integral, Real

import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, TransformerMixin, clone
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, StrOptions, _fit_context, validate_data
from .backend.mae import INFERENCE_CHUNK, build_mae, fit_mae, is_torch_module, mae_embed, module_embed
from .base import ProgressPrinter, TorchStateMixin, check_no_inf, draw_seed, resolve_device
from .structure import chow_liu_tree

__all__ = ["LatentAssigner", "ancestor_matrix", "check_groups", "image_patches"]

# Rows embedded and coded at a time in transform: bounds memory (MNIST with
# the MAE: 16384 x 49 x 64 float32 = 200 MB). A multiple of the backend's
# chunk, so a row meets the network in the same batch in fit and transform.
TRANSFORM_CHUNK = 16 * INFERENCE_CHUNK
# A scale below this share of the typical (RMS) feature scale is raised to
# it before the autoencoder: near-constant features (MNIST's border pixels,
# almost always 0) would otherwise be blown up to values in the hundreds and
# dominate the squared error.
MIN_RELATIVE_SCALE = 0.1


# ----------------------------------------------------------------------
# Groups


def image_patches(image_shape, patch_size):
    """Feature indices of the non-overlapping patches of an image.

    Parameters
    ----------
    image_shape : (H, W) or (H, W, C)
        Layout of the features: a row is ``image.reshape(-1)`` of an (H, W)
        or (H, W, C) array (C-order, channels last).
    patch_size : int or (ph, pw)
        Patch height and width; they must divide H and W. A patch of a
        colour image covers all C channels.

    Returns
    -------
    groups : list of (ph * pw * C,) int64 arrays
        Patches in row-major order of the patch grid; within a patch, the
        features in increasing order (row, column, channel).

    Examples
    --------
    >>> [g.tolist() for g in image_patches((2, 4), 2)]
    [[0, 1, 4, 5], [2, 3, 6, 7]]
    """
    shape = tuple(int(s) for s in image_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(
            f"image_shape={tuple(image_shape)!r} is not an image layout; pass (H, W) for grey or (H, W, C) "
            "for colour images, with positive sizes."
        )
    H, W = shape[:2]
    C = shape[2] if len(shape) == 3 else 1
    if isinstance(patch_size, (Integral, np.integer)):
        ph = pw = int(patch_size)
    else:
        size = tuple(patch_size)
        if len(size) != 2:
            raise ValueError(f"patch_size={patch_size!r} must be an int or a pair (ph, pw).")
        ph, pw = (int(s) for s in size)
    if ph < 1 or pw < 1 or H % ph or W % pw:
        raise ValueError(
            f"patch_size=({ph}, {pw}) does not tile the {H} x {W} image: the patch height must divide "
            f"H={H} and the width W={W} (e.g. patch_size={_divisor_hint(H, W)})."
        )
    grid = np.arange(H * W * C, dtype=np.int64).reshape(H, W, C)
    return [
        grid[i : i + ph, j : j + pw, :].reshape(-1) for i in range(0, H, ph) for j in range(0, W, pw)
    ]


def _divisor_hint(H, W):
    """A patch side dividing both H and W, near 4 (for error messages)."""
    common = [d for d in range(1, min(H, W) + 1) if H % d == 0 and W % d == 0]
    return min(common, key=lambda d: (abs(d - 4), -d))


def check_groups(groups, n_features):
    """Validate an explicit partition of the features into groups.

    Parameters
    ----------
    groups : sequence of sequences of int
        Feature indices of each group.
    n_features : int

    Returns
    -------
    list of int64 arrays, in the given order (indices within a group too)

    Raises
    ------
    ValueError
        When a group is empty, an index is not an integer in
        [0, n_features), a feature is in two groups (or twice in one), or a
        feature is in no group; the message names the feature.
    """
    if isinstance(groups, (str, bytes)) or not hasattr(groups, "__len__") or len(groups) == 0:
        raise ValueError(
            f"groups={groups!r} must be a non-empty list of lists of feature indices (a partition of the "
            f"{n_features} features), or 'features' for one group per feature."
        )
    out, owner = [], np.full(n_features, -1, dtype=np.int64)
    for number, group in enumerate(groups):
        values = np.asarray(group)
        if values.ndim != 1 or values.size == 0:
            raise ValueError(f"groups[{number}]={group!r} must be a non-empty list of feature indices.")
        if values.dtype == bool or not (
            np.issubdtype(values.dtype, np.integer)
            or (np.issubdtype(values.dtype, np.floating) and np.all(values == np.round(values)))
        ):
            raise ValueError(f"groups[{number}]={group!r} must hold integer feature indices.")
        values = values.astype(np.int64)
        bad = values[(values < 0) | (values >= n_features)]
        if bad.size:
            raise ValueError(
                f"groups[{number}] holds feature {int(bad[0])}, out of range for X with {n_features} features "
                f"(valid indices are 0..{n_features - 1})."
            )
        for feature in values.tolist():
            if owner[feature] >= 0:
                where = "twice" if owner[feature] == number else f"also in groups[{int(owner[feature])}]"
                raise ValueError(
                    f"Feature {feature} is in groups[{number}] and {where}; groups must be disjoint: put every "
                    "feature in exactly one group."
                )
            owner[feature] = number
        out.append(values)
    missing = np.flatnonzero(owner < 0)
    if missing.size:
        listed = ", ".join(str(f) for f in missing[:10]) + (", ..." if missing.size > 10 else "")
        raise ValueError(
            f"Feature(s) {listed} ({missing.size} in all) are in no group; groups must cover every one of the "
            f"{n_features} features: add them to a group."
        )
    return out


# ----------------------------------------------------------------------
# Context: the maximum spanning tree over groups (LVD, section 4)


def _context_parents(group_features):
    """Parents of the maximum spanning tree of the absolute correlations.

    Parameters
    ----------
    group_features : ndarray of shape (n_samples, n_groups)
        One summary value per group and row (the group's mean).

    Returns
    -------
    parents : (n_groups,) int64, -1 at the root (group 0)
    """
    # chow_liu_tree with Gaussian features weighs a pair by its mutual
    # information -0.5 log(1 - rho^2), an increasing function of |rho|: its
    # maximum spanning tree is that of the absolute correlations (a spanning
    # tree's optimality depends only on the order of the edge weights).
    parents, _ = chow_liu_tree(group_features, kind="gaussian", root=0)
    return parents.astype(np.int64)


def _ancestors(parents, group):
    """Ancestors of ``group``, nearest first (parent, grandparent, ..., root)."""
    out = []
    node = int(parents[group])
    while node >= 0:
        out.append(node)
        node = int(parents[node])
    return out


def ancestor_matrix(parents):
    """Which groups each group sees under the tree context.

    Parameters
    ----------
    parents : array of shape (n_groups,)
        Parent of every group, -1 at the root.

    Returns
    -------
    allowed : ndarray of shape (n_groups, n_groups), bool
        ``allowed[i, j]`` is True when j is i or an ancestor of i.
    """
    n = len(parents)
    allowed = np.eye(n, dtype=bool)
    for group in range(n):
        allowed[group, _ancestors(parents, group)] = True
    return allowed


# ----------------------------------------------------------------------
# The estimator


_EMBEDDERS = ("mae", "pixels", "pca")


class LatentAssigner(TorchStateMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator):
    """Latent assignments of latent variable distillation (Liu et al., ICLR 2023).

    Partitions the features into groups (image patches or explicit lists),
    embeds every group of every row, and clusters each group's embeddings
    with scikit-learn's k-means. ``transform`` returns, per row and group,
    the cluster index: the value of the group's latent variable Z_i that
    ``LVDDensity`` materializes.

    Parameters
    ----------
    image_shape : (H, W) or (H, W, C), default=None
        Image layout of the features: a row of X is ``image.reshape(-1)`` of
        an (H, W) grey or (H, W, C) colour array (C-order, channels last).
        Needs ``patch_size``.
    patch_size : int or (ph, pw), default=None
        The groups are the non-overlapping ph x pw patches of the image, in
        row-major order of the patch grid; a colour patch covers all C
        channels (ph * pw * C features). ph and pw must divide H and W.
    groups : list of lists of int, or "features", default=None
        Explicit groups: feature indices of each group, a partition of the
        features (each feature in exactly one group). "features": one group
        per feature. Give either ``groups`` or ``image_shape`` and
        ``patch_size``; with neither, ``fit`` raises.
    embedder : {"mae", "pixels", "pca"}, transformer, callable or torch.nn.Module, default="mae"
        What the groups are clustered by:

        - "mae": the encoder of a small masked autoencoder trained in
          ``fit`` (see ``mae_*`` and the Notes); d = ``mae_dim``.
        - "pixels": the group's raw values (d = its size).
        - "pca": a PCA per group (``n_components`` components, fewer when
          the group is smaller).
        - a scikit-learn transformer (has ``fit`` and ``transform``): cloned
          and fitted per group on the group's columns; it keeps its own
          ``random_state``.
        - a callable ``f(X) -> E`` taking a float32 numpy array X of shape
          (N, n_features) (whole rows, missing entries filled with the
          training means) and returning per-group features E of shape
          (N, n_groups, d); it is called on chunks of at most 1024 rows and
          is not trained.
        - a ``torch.nn.Module`` with the same signature on tensors: called
          under ``torch.no_grad()`` in its current mode, on the device of
          its parameters; not trained.
    n_components : int, default=8
        Components of each group's PCA (``embedder="pca"``), capped at the
        group's width (with context: its input width) and the training rows.
    context : {None, "mst", "all"}, default=None
        What else a group is embedded with (``input_columns_`` and the
        autoencoder's attention pattern, ``visible_``):

        - None: nothing; each group is embedded alone (the autoencoder's
          encoder is trained and used with every token attending only to
          itself, so it is a per-group network; its one-block decoder
          learns the dependencies between groups).
        - "mst": the paper's context. Groups are linked by the maximum
          spanning tree of the absolute correlations of the groups' mean
          values over the training rows (rooted at group 0), and each group
          is embedded together with its ancestors in that tree. The
          autoencoder's encoder (in training and after) lets token i attend
          only to itself and its ancestors: as the ancestors of an ancestor
          are ancestors of i, at every layer token i has seen only group i
          and its ancestors.
        - "all": every group (the encoder attends over all groups; the
          embedding then mixes in the rest of the row).

        "pixels", "pca" and transformers read the group's columns followed
        by the other visible groups' (ancestors parent first; with "all"
        the others in group order). Callables and modules see whole rows
        and decide their own context: context must be None for them.
    n_clusters : int, default=16
        States of each latent: k of each group's k-means. A group with fewer
        distinct embeddings gets that many clusters (``n_clusters_``).
    kmeans : {"minibatch", "full"}, default="minibatch"
        scikit-learn's ``MiniBatchKMeans`` or ``KMeans`` (k-means++ init,
        ``n_init="auto"``), seeded from ``random_state``.
    max_samples : int or None, default=None
        Train the embedder and k-means on at most this many training rows
        (a random subset without replacement): bounds the time of ``fit`` on
        large data. None uses every row.
    mae_dim : int, default=64
        Width of the autoencoder's tokens (the embedding dimension).
    mae_depth : int, default=2
        Transformer blocks of the encoder (the decoder has one).
    mae_heads : int, default=4
        Attention heads; must divide ``mae_dim``.
    mae_epochs : int, default=5
        Passes of Adam over the shuffled training rows.
    mae_batch_size : int, default=256
        Rows per Adam step.
    mae_learning_rate : float, default=1e-3
        Adam's step size.
    mae_mask_ratio : (float, float), default=(0.25, 0.85)
        The masking ratio of every training step is drawn uniformly from this
        range (LVD draws it at random rather than fixing MAE's 0.75);
        0 < low <= high < 1.
    random_state : int, RandomState instance or None, default=None
        Seeds the row subset, the autoencoder (initialization, batch order,
        masking), the PCAs and every k-means; equal seeds give identical
        codes (on the CPU).
    device : {"cpu", "cuda", "auto"} or "cuda:N", default="cpu"
        Where the autoencoder trains and runs; "auto" picks CUDA when
        available.
    verbose : int, default=0
        1 prints progress per stage: the context tree, each autoencoder
        epoch (mean masked reconstruction error, time), each group's
        clustering.

    Attributes
    ----------
    groups_ : list of int64 ndarray
        Feature indices of each group, in group order.
    n_groups_ : int
    n_features_in_ : int
    input_columns_ : list of int64 ndarray
        The features each group's embedding reads with "pixels", "pca" or a
        transformer: the group's own, then the other visible groups' (see
        ``context``).
    context_parents_ : int64 ndarray of shape (n_groups_,) or None
        Parent group of every group in the context tree, -1 at the root;
        None unless ``context="mst"``.
    visible_ : bool ndarray of shape (n_groups_, n_groups_)
        ``visible_[i, j]``: group j is part of group i's context (the
        diagonal is True); the autoencoder's encoder attention pattern.
    feature_means_ : ndarray of shape (n_features_in_,)
        Training mean of every feature (NaN ignored; 0 for a feature never
        observed): what a missing entry is replaced with.
    feature_scales_ : ndarray of shape (n_features_in_,)
        Standard deviation of every feature, raised to at least a tenth of
        the typical one: the autoencoder's inputs are
        ``(x - feature_means_) / feature_scales_``.
    embedder_kind_ : str
        What embeds the groups: "mae", "pixels", "pca", "transformer",
        "callable" or "module".
    embedders_ : list of fitted transformers or None
        Per group, with "pca" or a transformer.
    mae_state_ : dict or None
        With "mae": ``{"config": dict, "state_dict": dict of CPU tensors}``,
        the autoencoder's architecture and weights.
    mae_loss_curve_ : list of float or None
        With "mae": mean training loss per epoch (squared error of the
        standardized masked entries).
    embedding_dims_ : int64 ndarray of shape (n_groups_,)
        Width d_i of each group's embedding (``embed`` pads to the widest).
    kmeans_ : list of fitted KMeans or MiniBatchKMeans
        The k-means of each group.
    cluster_centers_ : list of ndarray
        Per group, the centers, shape (n_clusters_[i], embedding_dims_[i]).
    stage_times_ : dict
        Seconds of the "embedding" (fitting the embedder and embedding the
        training rows) and "clustering" stages of ``fit``.
    n_clusters_ : int64 ndarray of shape (n_groups_,)
        Clusters of each group: ``n_clusters``, or the number of distinct
        training embeddings of the group when that is smaller.
    device_ : torch.device

    Notes
    -----
    **Missing entries (NaN)** are allowed in ``fit`` and ``transform``: every
    embedder sees them replaced by the training mean of their feature. The
    autoencoder also hides a group with a missing entry from the other
    groups' attention (as its training hides masked groups), so an imputed
    group never changes the other groups' embeddings; it trains with such
    groups always masked and leaves missing entries out of its loss. Codes
    are never NaN. Infinite values are refused.

    **The autoencoder** is ViT-style over the groups as tokens: each group's
    standardized values, padded with zeros to the widest group, go through
    the group's own linear map plus a learned group embedding; ``mae_depth``
    pre-LayerNorm transformer blocks encode the visible groups; a one-block
    decoder reconstructs the masked groups, trained on the squared error of
    the masked groups only (as in MAE). The embedding of a group is the
    encoder's output token for it when nothing is masked: a function of the
    group alone (context=None), of the group and its ancestors ("mst"), or
    of the whole row ("all"). Measured on MNIST (60,000 rows, 4 x 4
    patches: 49 groups) at the defaults, on one CPU thread: about 42 s per
    epoch on a lightly loaded machine (63-135 s on a shared, overloaded
    one), so a default ``fit`` takes about 4-5 minutes, of which the 49
    k-means take about 15 s.

    Examples
    --------
    >>> import numpy as np
    >>> from skpc.latent import LatentAssigner
    >>> X = np.random.default_rng(0).random((100, 16))
    >>> codes = LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pixels",
    ...                        n_clusters=3, random_state=0).fit_transform(X)
    >>> codes.shape, codes.dtype.name, int(codes.max()) < 3
    ((100, 4), 'int64', True)
    """

    _parameter_constraints = {
        "image_shape": [tuple, list, None],
        "patch_size": [Interval(Integral, 1, None, closed="left"), tuple, list, None],
        "groups": [list, tuple, np.ndarray, StrOptions({"features"}), None],
        "embedder": [StrOptions(set(_EMBEDDERS)), HasMethods(["fit", "transform"]), callable],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "context": [StrOptions({"mst", "all"}), None],
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "kmeans": [StrOptions({"minibatch", "full"})],
        "max_samples": [Interval(Integral, 1, None, closed="left"), None],
        "mae_dim": [Interval(Integral, 1, None, closed="left")],
        "mae_depth": [Interval(Integral, 1, None, closed="left")],
        "mae_heads": [Interval(Integral, 1, None, closed="left")],
        "mae_epochs": [Interval(Integral, 1, None, closed="left")],
        "mae_batch_size": [Interval(Integral, 1, None, closed="left")],
        "mae_learning_rate": [Interval(Real, 0, None, closed="neither")],
        "mae_mask_ratio": [tuple, list],
        "random_state": ["random_state"],
        "device": [str],
        "verbose": ["verbose"],
    }

    _transient_attributes = ("_mae_cache",)

    def __init__(
        self,
        image_shape=None,
        patch_size=None,
        groups=None,
        embedder="mae",
        n_components=8,
        context=None,
        n_clusters=16,
        kmeans="minibatch",
        max_samples=None,
        mae_dim=64,
        mae_depth=2,
        mae_heads=4,
        mae_epochs=5,
        mae_batch_size=256,
        mae_learning_rate=1e-3,
        mae_mask_ratio=(0.25, 0.85),
        random_state=None,
        device="cpu",
        verbose=0,
    ):
        self.image_shape = image_shape
        self.patch_size = patch_size
        self.groups = groups
        self.embedder = embedder
        self.n_components = n_components
        self.context = context
        self.n_clusters = n_clusters
        self.kmeans = kmeans
        self.max_samples = max_samples
        self.mae_dim = mae_dim
        self.mae_depth = mae_depth
        self.mae_heads = mae_heads
        self.mae_epochs = mae_epochs
        self.mae_batch_size = mae_batch_size
        self.mae_learning_rate = mae_learning_rate
        self.mae_mask_ratio = mae_mask_ratio
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    # ------------------------------------------------------------- helpers
    def _resolve_groups(self, n_features):
        image = self.image_shape is not None or self.patch_size is not None
        if self.groups is not None and image:
            raise ValueError(
                "Both groups and image_shape/patch_size were given; pass either groups (explicit feature "
                "indices) or image_shape and patch_size (image patches), not both."
            )
        if self.groups is None and not image:
            raise ValueError(
                "LatentAssigner needs a grouping of the features: pass image_shape=(H, W) or (H, W, C) with "
                "patch_size (image patches), or groups=[[feature indices], ...] (a partition of the features), "
                "or groups='features' (one group per feature)."
            )
        if self.groups is not None:
            if isinstance(self.groups, str):  # "features", the only string the constraints let through
                return [np.array([f], dtype=np.int64) for f in range(n_features)]
            return check_groups(self.groups, n_features)
        if self.image_shape is None or self.patch_size is None:
            missing = "patch_size" if self.patch_size is None else "image_shape"
            raise ValueError(
                f"Image patches need both image_shape and patch_size; {missing} is missing "
                "(or pass groups instead)."
            )
        size = int(np.prod([int(s) for s in self.image_shape]))
        if size != n_features:
            raise ValueError(
                f"image_shape={tuple(self.image_shape)} describes {size} features but X has {n_features}; "
                "pass (H, W) or (H, W, C) with H * W * C == n_features (rows are images flattened in C-order)."
            )
        return image_patches(self.image_shape, self.patch_size)

    def _embedder_kind(self):
        embedder = self.embedder
        if isinstance(embedder, str):
            return embedder
        if is_torch_module(embedder):
            return "module"
        if hasattr(embedder, "fit") and hasattr(embedder, "transform"):
            return "transformer"
        return "callable"

    def _check_mae_parameters(self):
        if self.mae_dim % self.mae_heads:
            raise ValueError(
                f"mae_heads={self.mae_heads} does not divide mae_dim={self.mae_dim}; choose mae_dim as a "
                "multiple of mae_heads."
            )
        ratio = tuple(self.mae_mask_ratio)
        if len(ratio) != 2 or not all(isinstance(r, Real) for r in ratio) or not 0 < ratio[0] <= ratio[1] < 1:
            raise ValueError(
                f"mae_mask_ratio={self.mae_mask_ratio!r} must be a pair (low, high) with 0 < low <= high < 1, "
                "e.g. (0.25, 0.85)."
            )
        return ratio

    @property
    def _n_features_out(self):
        """Output columns of ``transform`` (for ``get_feature_names_out``)."""
        return self.n_groups_

    def _mae_model(self):
        """The fitted autoencoder on ``device_`` (built once, then cached; not pickled)."""
        model = getattr(self, "_mae_cache", None)
        if model is None:
            model = build_mae(self.mae_state_["config"], self.mae_state_["state_dict"], self.device_)
            self._mae_cache = model
        return model

    # ----------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the embedder and each group's k-means.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training rows; NaN marks a missing entry (see Notes).
        y : Ignored

        Returns
        -------
        self : LatentAssigner
        """
        self._fit(X)
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def fit_transform(self, X, y=None):
        """Fit, then return the codes of X (equal to ``fit(X).transform(X)``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : Ignored

        Returns
        -------
        codes : ndarray of shape (n_samples, n_groups_), int64
        """
        return self._fit(X, return_codes=True)

    def _fit(self, X, return_codes=False):
        X = validate_data(self, X, dtype=np.float64, ensure_all_finite=False)
        check_no_inf(X)
        n_samples, n_features = X.shape
        groups = self._resolve_groups(n_features)
        kind = self._embedder_kind()
        mask_ratio = self._check_mae_parameters()
        if self.context is not None and kind in ("callable", "module"):
            raise ValueError(
                f"context={self.context!r} applies to the built-in embedders and scikit-learn transformers; a "
                "callable or torch module sees whole rows and decides its own context: use context=None."
            )
        device = resolve_device(self.device)
        progress = ProgressPrinter(type(self).__name__, self.verbose)

        # Host-side draws, always in this order: equal seeds, equal fits.
        seeds = check_random_state(self.random_state)
        if self.max_samples is not None and self.max_samples < n_samples:
            rows = np.sort(seeds.choice(n_samples, self.max_samples, replace=False))
        else:
            rows = np.arange(n_samples)
        embedder_seed = draw_seed(seeds)
        kmeans_seeds = [draw_seed(seeds) for _ in groups]
        n_train = rows.size
        if self.n_clusters > n_train:
            raise ValueError(
                f"n_clusters={self.n_clusters} is more than the training rows: X has {n_train} "
                f"sample{'s' if n_train != 1 else ''}{' (after max_samples)' if n_train < n_samples else ''}; "
                "k-means needs at least n_clusters rows: lower n_clusters or pass more rows."
            )
        if kind == "pca" and n_train < 2:
            raise ValueError("embedder='pca' needs at least 2 training rows; X has 1 sample.")

        observed = ~np.isnan(X)
        n_observed = observed.sum(axis=0)
        # Means and scales over every row (cheap), 0 and 0 for a never-observed feature.
        means = np.where(n_observed > 0, np.where(observed, X, 0.0).sum(axis=0) / np.maximum(n_observed, 1), 0.0)
        centered = np.where(observed, X - means, 0.0)
        stds = np.sqrt((centered**2).sum(axis=0) / np.maximum(n_observed, 1))
        typical = float(np.sqrt(np.mean(stds**2)))
        scales = np.maximum(stds, MIN_RELATIVE_SCALE * typical) if typical > 0 else np.ones(n_features)
        X_train = X[rows]
        imputed_train = np.where(np.isnan(X_train), means, X_train)

        parents = None
        T = len(groups)
        if self.context == "mst":
            summaries = np.stack([imputed_train[:, g].mean(axis=1) for g in groups], axis=1)  # (n_train, T)
            parents = _context_parents(summaries)
            progress.stage(f"context: maximum spanning tree over {T} groups, depth {_depth(parents)}")
            visible = ancestor_matrix(parents)
            context_of = [_ancestors(parents, i) for i in range(T)]
        elif self.context == "all":
            visible = np.ones((T, T), dtype=bool)
            context_of = [[j for j in range(T) if j != i] for i in range(T)]
        else:
            visible = np.eye(T, dtype=bool)
            context_of = [[] for _ in range(T)]
        input_columns = [np.concatenate([g] + [groups[j] for j in context_of[i]]) for i, g in enumerate(groups)]

        # Fitted state from here on (a failed validation above leaves an earlier
        # fit intact); without kmeans_ the model reads as unfitted until the end.
        self.__dict__.pop("kmeans_", None)
        self.groups_ = groups
        self.n_groups_ = len(groups)
        self.input_columns_ = input_columns
        self.context_parents_ = parents
        self.visible_ = visible
        self.feature_means_ = means
        self.feature_scales_ = scales
        self.device_ = device
        self.embedders_ = None
        self.mae_state_ = None
        self.mae_loss_curve_ = None
        self._mae_cache = None
        self.embedder_kind_ = kind

        start = embedding_start = time.perf_counter()
        if kind == "pca":
            self.embedders_ = [
                PCA(n_components=min(self.n_components, cols.size, n_train), random_state=embedder_seed).fit(
                    imputed_train[:, cols]
                )
                for cols in input_columns
            ]
        elif kind == "transformer":
            self.embedders_ = [clone(self.embedder).fit(imputed_train[:, cols]) for cols in input_columns]
        elif kind == "mae":
            def on_epoch(epoch, loss, seconds):
                progress.stage(f"embedding: MAE epoch {epoch}/{self.mae_epochs}  loss {loss:.4f}  {seconds:.1f}s")

            config, state_dict, loss_curve = fit_mae(
                X_train,
                groups,
                visible,
                means,
                scales,
                dim=self.mae_dim,
                depth=self.mae_depth,
                heads=self.mae_heads,
                epochs=self.mae_epochs,
                batch_size=self.mae_batch_size,
                learning_rate=self.mae_learning_rate,
                mask_ratio=mask_ratio,
                seed=embedder_seed,
                device=device,
                on_epoch=on_epoch,
            )
            self.mae_state_ = {"config": config, "state_dict": state_dict}
            self.mae_loss_curve_ = loss_curve
        if kind in ("pca", "transformer"):
            progress.stage(f"embedding: {kind} fitted on {len(groups)} groups  {time.perf_counter() - start:.1f}s")

        embeddings, dims = self._embed_rows(X_train, dims=None)  # (n_train, T, d_max)
        self.embedding_dims_ = dims
        clustering_start = time.perf_counter()
        self.kmeans_, self.cluster_centers_ = [], []
        n_clusters = np.empty(len(groups), dtype=np.int64)
        for i in range(len(groups)):
            start = time.perf_counter()
            E = np.ascontiguousarray(embeddings[:, i, : dims[i]])  # (n_train, d_i)
            # k-means cannot find more clusters than distinct points (and
            # warns): cap k at the group's number of distinct embeddings.
            n_clusters[i] = min(self.n_clusters, _n_distinct_rows(E))
            Estimator = KMeans if self.kmeans == "full" else MiniBatchKMeans
            model = Estimator(n_clusters=int(n_clusters[i]), n_init="auto", random_state=kmeans_seeds[i]).fit(E)
            self.kmeans_.append(model)
            self.cluster_centers_.append(model.cluster_centers_)
            progress.stage(
                f"clustering: group {i + 1}/{len(groups)}  {n_clusters[i]} clusters  inertia "
                f"{model.inertia_ / n_train:.4g} per row  {time.perf_counter() - start:.1f}s"
            )
        self.n_clusters_ = n_clusters
        self.stage_times_ = {
            "embedding": clustering_start - embedding_start,
            "clustering": time.perf_counter() - clustering_start,
        }
        if not return_codes:
            return None
        if rows.size == n_samples:
            # the training rows are X itself, embedded in the same chunks as transform would
            return self._codes(embeddings)
        return self.transform(X)

    # ------------------------------------------------------------- queries
    def _validate_fitted(self, X):
        check_is_fitted(self, "kmeans_")
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=False)
        check_no_inf(X)
        return X

    def embed(self, X):
        """Per-group embeddings of the rows of X.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN marks a missing entry.

        Returns
        -------
        embeddings : ndarray of shape (n_samples, n_groups_, d)
            d = ``max(embedding_dims_)``: group i's embedding is
            ``embeddings[:, i, :embedding_dims_[i]]``, zeros beyond (the
            padding adds the same zeros to every row, so it does not change
            k-means distances). float64 for "pixels", "pca" and
            transformers; float32 (the network's precision) for "mae",
            callables and modules.
        """
        X = self._validate_fitted(X)
        return self._embed_rows(X, dims=self.embedding_dims_)[0]

    def transform(self, X):
        """Latent codes: each group's k-means cluster of its embedding.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN marks a missing entry.

        Returns
        -------
        codes : ndarray of shape (n_samples, n_groups_), int64
            Values in ``[0, n_clusters_[i])`` in column i (within
            ``[0, n_clusters)``).
        """
        X = self._validate_fitted(X)
        out = [np.zeros((0, self.n_groups_), dtype=np.int64)]
        for first in range(0, X.shape[0], TRANSFORM_CHUNK):
            embeddings, _ = self._embed_rows(X[first : first + TRANSFORM_CHUNK], dims=self.embedding_dims_)
            out.append(self._codes(embeddings))
        return np.concatenate(out)

    def _codes(self, embeddings):
        """(n, T) int64 codes of embeddings (n, T, d_max)."""
        codes = np.empty(embeddings.shape[:2], dtype=np.int64)
        for i, model in enumerate(self.kmeans_):
            codes[:, i] = model.predict(np.ascontiguousarray(embeddings[:, i, : self.embedding_dims_[i]]))
        return codes

    def _embed_rows(self, X, dims):
        """Embeddings of validated rows X (n, F) (NaN allowed) with the fitted embedder.

        Parameters
        ----------
        X : ndarray of shape (n, n_features), float64
        dims : int64 array of shape (n_groups,) or None
            The fitted widths; None at fit, where they are measured.

        Returns
        -------
        embeddings : (n, T, d_max), zero-padded; dims : (T,) int64
        """
        kind = self.embedder_kind_
        T = self.n_groups_
        imputed = np.where(np.isnan(X), self.feature_means_, X)
        if kind == "mae":
            embeddings = mae_embed(self._mae_model(), X, self.device_)  # (n, T, D) float32
            dims = np.full(T, embeddings.shape[2], dtype=np.int64)
        elif kind in ("callable", "module"):
            embeddings, dims = self._embed_external(imputed, dims)
        else:
            if kind == "pixels":
                parts = [imputed[:, cols] for cols in self.input_columns_]
            else:
                parts = [self._transform_group(model, imputed[:, cols]) for model, cols in zip(self.embedders_, self.input_columns_)]
            widths = np.array([p.shape[1] for p in parts], dtype=np.int64)
            if dims is not None and not np.array_equal(widths, dims):
                raise ValueError(
                    f"The embedder now gives widths {widths.tolist()} per group, but {dims.tolist()} at fit; "
                    "a transformer embedder must give the same number of output columns every time."
                )
            embeddings = np.zeros((X.shape[0], T, int(widths.max())), dtype=np.float64)
            for i, part in enumerate(parts):
                embeddings[:, i, : part.shape[1]] = part
            dims = widths
        if not np.isfinite(embeddings).all():
            raise ValueError(
                f"The {kind} embedder gave non-finite embeddings; X may hold values far outside the training "
                "range (rescale X), or the embedder itself fails on these rows."
            )
        return embeddings, dims

    @staticmethod
    def _transform_group(model, columns):
        out = model.transform(columns)
        out = out.toarray() if hasattr(out, "toarray") else np.asarray(out)
        if out.ndim != 2 or out.shape[0] != columns.shape[0]:
            raise ValueError(
                f"The transformer embedder returned shape {out.shape} for {columns.shape[0]} rows; it must "
                "return a 2D array with one row per input row."
            )
        return out.astype(np.float64)

    def _embed_external(self, imputed, dims):
        """A user's callable or module on chunks of imputed rows: (n, T, d) float32."""
        T = self.n_groups_
        call = module_embed if is_torch_module(self.embedder) else None
        out = []
        for first in range(0, imputed.shape[0], INFERENCE_CHUNK):
            rows = imputed[first : first + INFERENCE_CHUNK].astype(np.float32)
            E = call(self.embedder, rows) if call is not None else np.asarray(self.embedder(rows))
            if E.ndim != 3 or E.shape[:2] != (rows.shape[0], T) or (dims is not None and E.shape[2] != dims[0]):
                width = "d" if dims is None else str(int(dims[0]))
                raise ValueError(
                    f"The embedder returned an array of shape {E.shape} for {rows.shape[0]} rows; it must return "
                    f"per-group features of shape (n_rows, n_groups, {width}) = ({rows.shape[0]}, {T}, {width})."
                )
            if dims is None:
                dims = np.full(T, E.shape[2], dtype=np.int64)
            out.append(E.astype(np.float32))
        if not out:
            return np.zeros((0, T, int(dims[0]) if dims is not None else 0), dtype=np.float32), dims
        return np.concatenate(out), dims

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = True  # a missing entry gets its feature's training mean
        tags.transformer_tags.preserves_dtype = []  # codes are int64 whatever X's dtype
        return tags


# ----------------------------------------------------------------------
# Small helpers


def _n_distinct_rows(E):
    """Number of distinct rows of a 2D array (up to the first exact duplicates)."""
    rows = np.ascontiguousarray(E + 0.0)  # + 0.0 turns -0.0 into 0.0: equal values, equal bytes
    return int(np.unique(rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1])))).size)


def _depth(parents):
    return max(len(_ancestors(parents, g)) for g in range(len(parents)))
