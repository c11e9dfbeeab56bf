"""LatentAssigner (skpc.latent) and its masked autoencoder (skpc.backend.mae):
groups, embedders against scikit-learn run by hand, the maximum-spanning-tree
context against brute force, the autoencoder's attention mask, training and
determinism, missing values, bad input, persistence and scikit-learn's checks."""

import io
import itertools
import pickle
from contextlib import redirect_stdout

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpc.latent import LatentAssigner, ancestor_matrix, check_groups, image_patches

# A small, fast autoencoder for tests (a fit on a few hundred rows takes ~0.1 s).
TINY_MAE = dict(embedder="mae", mae_dim=16, mae_depth=1, mae_heads=2, mae_epochs=2, mae_batch_size=64)


def prototype_data(n_samples, n_groups, group_size, rng, n_prototypes=3, resample=0.2, noise=0.05):
    """Rows whose every group is one of ``n_prototypes`` well-separated
    prototypes plus small noise. A row's class picks every group's prototype,
    except that each group re-draws it with probability ``resample`` (so the
    groups are correlated but not copies).

    Returns
    -------
    X : (n_samples, n_groups * group_size); labels : (n_samples, n_groups) the prototype of each group
    """
    prototypes = rng.normal(0.0, 3.0, size=(n_groups, n_prototypes, group_size))
    row_class = rng.integers(n_prototypes, size=n_samples)
    labels = np.where(
        rng.random((n_samples, n_groups)) < resample,
        rng.integers(n_prototypes, size=(n_samples, n_groups)),
        row_class[:, None],
    )
    X = prototypes[np.arange(n_groups), labels] + noise * rng.normal(size=(n_samples, n_groups, group_size))
    return X.reshape(n_samples, -1), labels


# ----------------------------------------------------------------------
# Groups


def test_image_patches_grey_against_hand_built_reference():
    # a 4 x 6 image, 2 x 3 patches: feature (r, c) has index 6 r + c
    expected = [
        [0, 1, 2, 6, 7, 8],
        [3, 4, 5, 9, 10, 11],
        [12, 13, 14, 18, 19, 20],
        [15, 16, 17, 21, 22, 23],
    ]
    assert [g.tolist() for g in image_patches((4, 6), (2, 3))] == expected
    X = np.random.default_rng(0).random((20, 24))
    model = LatentAssigner(image_shape=(4, 6), patch_size=(2, 3), embedder="pixels", n_clusters=2, random_state=0)
    model.fit(X)
    assert [g.tolist() for g in model.groups_] == expected
    assert all(g.dtype == np.int64 for g in model.groups_)
    assert model.n_groups_ == 4 and model.n_features_in_ == 24


def test_image_patches_colour_cover_all_channels():
    # (H, W, C) = (4, 4, 3) in C-order: feature (r, c, ch) has index (4 r + c) * 3 + ch
    H, W, C, p = 4, 4, 3, 2
    expected = []
    for pr in range(0, H, p):
        for pc in range(0, W, p):
            expected.append(
                sorted((4 * r + c) * 3 + ch for r in range(pr, pr + p) for c in range(pc, pc + p) for ch in range(C))
            )
    assert expected[0] == [0, 1, 2, 3, 4, 5, 12, 13, 14, 15, 16, 17]
    groups = image_patches((H, W, C), p)
    assert [g.tolist() for g in groups] == expected
    # every group holds whole pixels: all channels of each of its 4 pixels
    image = np.arange(48).reshape(4, 4, 3)
    assert np.array_equal(image[2:4, 0:2, :].reshape(-1), groups[2])


def test_grouping_errors_say_what_to_pass():
    X = np.random.default_rng(0).random((10, 16))
    cases = [
        (dict(image_shape=(4, 4), patch_size=3), "does not tile"),
        (dict(image_shape=(4, 5), patch_size=2), "describes 20 features but X has 16"),
        (dict(), "pass image_shape"),
        (dict(image_shape=(4, 4)), "patch_size is missing"),
        (dict(image_shape=(4, 4), patch_size=2, groups=[list(range(16))]), "not both"),
        (dict(groups=[[0, 1, 2], [2, 3]] + [[i] for i in range(4, 16)]), "Feature 2 is in groups\\[1\\] and also in groups\\[0\\]"),
        (dict(groups=[[0, 1], [2, 16]] + [[i] for i in range(3, 16)]), "feature 16, out of range"),
        (dict(groups=[[0, 1]] + [[i] for i in range(4, 16)]), "Feature\\(s\\) 2, 3 .* are in no group"),
        (dict(groups=[[0, 0, 1]] + [[i] for i in range(2, 16)]), "twice"),
        (dict(groups=[[]] + [[i] for i in range(16)]), "non-empty"),
    ]
    for params, message in cases:
        with pytest.raises(ValueError, match=message):
            LatentAssigner(embedder="pixels", n_clusters=2, **params).fit(X)
    assert [g.tolist() for g in check_groups([[3, 1], [0, 2]], 4)] == [[3, 1], [0, 2]]


# ----------------------------------------------------------------------
# Embedders against scikit-learn run by hand


@pytest.mark.parametrize("kmeans, Estimator", [("full", KMeans), ("minibatch", MiniBatchKMeans)])
def test_pixels_codes_equal_kmeans_on_each_group(kmeans, Estimator):
    rng = np.random.default_rng(1)
    X = rng.normal(size=(200, 12))
    groups = [[0, 5, 7], [1, 2], [3, 4, 6, 8, 9, 10, 11]]
    model = LatentAssigner(groups=groups, embedder="pixels", n_clusters=4, kmeans=kmeans, random_state=7)
    codes = model.fit_transform(X)
    assert codes.dtype == np.int64 and codes.shape == (200, 3)
    assert np.array_equal(model.embedding_dims_, [3, 2, 7])
    for i, g in enumerate(groups):
        seed = model.kmeans_[i].random_state
        assert isinstance(model.kmeans_[i], Estimator) and isinstance(seed, int)
        reference = Estimator(n_clusters=4, n_init="auto", random_state=seed).fit(X[:, g])
        assert np.array_equal(codes[:, i], reference.predict(X[:, g]))
        assert np.allclose(model.cluster_centers_[i], reference.cluster_centers_, rtol=0, atol=1e-12)
    # embed: each group's raw columns, zero-padded to the widest group
    E = model.embed(X)
    assert E.shape == (200, 3, 7) and E.dtype == np.float64
    assert np.array_equal(E[:, 0, :3], X[:, groups[0]]) and np.all(E[:, 0, 3:] == 0)
    assert np.array_equal(E[:, 2], X[:, groups[2]])
    # the k-means seeds come from random_state alone
    again = LatentAssigner(groups=groups, embedder="pixels", n_clusters=4, kmeans=kmeans, random_state=7).fit(X)
    assert [k.random_state for k in again.kmeans_] == [k.random_state for k in model.kmeans_]
    assert len({k.random_state for k in model.kmeans_}) == 3


def test_pca_equals_pca_and_kmeans_by_hand():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(150, 16)) @ rng.normal(size=(16, 16))
    model = LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pca", n_components=3, n_clusters=5,
                           kmeans="full", random_state=3)
    codes = model.fit_transform(X)
    patches = image_patches((4, 4), 2)
    E = model.embed(X)
    assert E.shape == (150, 4, 3)
    for i, g in enumerate(patches):
        Z = PCA(n_components=3, random_state=model.embedders_[i].random_state).fit_transform(X[:, g])
        assert np.allclose(E[:, i], Z, rtol=0, atol=1e-10)
        reference = KMeans(n_clusters=5, n_init="auto", random_state=model.kmeans_[i].random_state).fit(Z)
        assert np.array_equal(codes[:, i], reference.predict(Z))
    # n_components is capped at the group's width
    wide = LatentAssigner(groups=[[0, 1], list(range(2, 16))], embedder="pca", n_components=4, n_clusters=2,
                          random_state=0).fit(X)
    assert np.array_equal(wide.embedding_dims_, [2, 4])


def test_transformer_embedder_is_cloned_and_fitted_per_group():
    rng = np.random.default_rng(3)
    X = rng.normal(loc=5.0, scale=[1, 2, 3, 4, 5], size=(120, 5))
    groups = [[0, 1, 2], [3, 4]]
    scaler = StandardScaler()
    model = LatentAssigner(groups=groups, embedder=scaler, n_clusters=3, kmeans="full", random_state=0)
    codes = model.fit_transform(X)
    assert not hasattr(scaler, "mean_")  # the given transformer stays unfitted
    assert [type(e) for e in model.embedders_] == [StandardScaler, StandardScaler]
    assert np.allclose(model.embedders_[1].mean_, X[:, [3, 4]].mean(axis=0))
    E = model.embed(X)
    assert E.shape == (120, 2, 3) and np.array_equal(model.embedding_dims_, [3, 2])
    assert np.allclose(E[:, 1, :2], (X[:, [3, 4]] - X[:, [3, 4]].mean(0)) / X[:, [3, 4]].std(0))
    assert np.all(E[:, 1, 2] == 0)  # padding
    for i, g in enumerate(groups):
        Z = StandardScaler().fit_transform(X[:, g])
        reference = KMeans(n_clusters=3, n_init="auto", random_state=model.kmeans_[i].random_state).fit(Z)
        assert np.array_equal(codes[:, i], reference.predict(Z))


def _group_summary(X, groups):
    """(N, T, 2): mean and max of every group (the callable embedder of the tests)."""
    return np.stack([np.stack([X[:, g].mean(1), X[:, g].max(1)], axis=1) for g in groups], axis=1)


class _GroupSummary(torch.nn.Module):
    """The same summary as a torch module (mean by a fixed averaging matrix)."""

    def __init__(self, groups, n_features):
        super().__init__()
        self.groups = groups
        average = torch.zeros(n_features, len(groups), dtype=torch.float32)
        for t, g in enumerate(groups):
            average[g, t] = 1.0 / len(g)
        self.register_buffer("average", average)

    def forward(self, X):
        means = X @ self.average  # (N, F) @ (F, T) -> (N, T)
        maxima = torch.stack([X[:, g].max(dim=1).values for g in self.groups], dim=1)  # (N, T)
        return torch.stack([means, maxima], dim=2)  # (N, T, 2)


def test_callable_and_module_embedders():
    rng = np.random.default_rng(4)
    X, labels = prototype_data(1500, 3, 4, rng)
    groups = [list(range(4 * t, 4 * t + 4)) for t in range(3)]
    calls = []

    def summary(rows):
        calls.append((rows.shape, rows.dtype))
        return _group_summary(rows, groups)

    model = LatentAssigner(groups=groups, embedder=summary, n_clusters=3, kmeans="full", random_state=0)
    codes = model.fit_transform(X)
    # chunks of at most 1024 float32 rows of all features
    assert calls[:2] == [((1024, 12), np.float32), ((476, 12), np.float32)]
    E = model.embed(X)
    assert E.shape == (1500, 3, 2) and E.dtype == np.float32
    assert np.allclose(E, _group_summary(X.astype(np.float32), groups), atol=1e-6)
    for i in range(3):
        reference = KMeans(n_clusters=3, n_init="auto", random_state=model.kmeans_[i].random_state).fit(E[:, i])
        assert np.array_equal(codes[:, i], reference.predict(E[:, i]))
        assert adjusted_rand_score(labels[:, i], codes[:, i]) > 0.99
    module = LatentAssigner(groups=groups, embedder=_GroupSummary(groups, 12), n_clusters=3, kmeans="full",
                            random_state=0).fit(X)
    assert np.allclose(module.embed(X), E, atol=1e-5)
    assert np.array_equal(module.transform(X), codes)
    with pytest.raises(ValueError, match=r"must return per-group features of shape \(n_rows, n_groups, d\)"):
        LatentAssigner(groups=groups, embedder=lambda rows: rows, n_clusters=3).fit(X)
    with pytest.raises(ValueError, match="use context=None"):
        LatentAssigner(groups=groups, embedder=summary, context="mst", n_clusters=3).fit(X)


# ----------------------------------------------------------------------
# Context: the maximum spanning tree


def _brute_force_mst_parents(weights):
    """Parents (BFS from 0) of the maximum-weight spanning tree, by trying every set of n - 1 edges."""
    n = weights.shape[0]
    edges = list(itertools.combinations(range(n), 2))
    best, best_tree = -np.inf, None
    for tree in itertools.combinations(edges, n - 1):
        root = list(range(n))

        def find(a):
            while root[a] != a:
                a = root[a]
            return a

        acyclic = True
        for a, b in tree:
            ra, rb = find(a), find(b)
            if ra == rb:
                acyclic = False
                break
            root[ra] = rb
        total = sum(weights[a, b] for a, b in tree)
        if acyclic and total > best:
            best, best_tree = total, tree
    parents, frontier, seen = np.full(n, -1), [0], {0}
    while frontier:
        v = frontier.pop(0)
        for a, b in sorted(best_tree):
            for u, w in ((a, b), (b, a)):
                if u == v and w not in seen:
                    parents[w] = v
                    seen.add(w)
                    frontier.append(w)
    return parents


def test_mst_context_is_the_brute_force_maximum_spanning_tree():
    rng = np.random.default_rng(5)
    n, T = 400, 5
    # group means with a random correlation structure (distinct |rho|)
    latent = rng.normal(size=(n, T)) @ rng.normal(size=(T, T))
    X = np.repeat(latent, 3, axis=1) + 0.3 * rng.normal(size=(n, 3 * T))
    groups = [list(range(3 * t, 3 * t + 3)) for t in range(T)]
    model = LatentAssigner(groups=groups, embedder="pixels", context="mst", n_clusters=2, random_state=0).fit(X)
    parents = model.context_parents_
    # a tree: one root (group 0), every group reaches it without a cycle
    assert parents.dtype == np.int64 and parents[0] == -1 and np.sum(parents == -1) == 1
    for g in range(T):
        node, steps = g, 0
        while node != 0:
            node, steps = parents[node], steps + 1
            assert steps < T
    means = np.stack([X[:, g].mean(1) for g in groups], axis=1)
    weights = np.abs(np.corrcoef(means, rowvar=False))
    assert np.array_equal(parents, _brute_force_mst_parents(weights))
    # pixels with context: the group's columns, then its ancestors' (parent first)
    for g in range(T):
        chain, node = list(groups[g]), parents[g]
        while node >= 0:
            chain += groups[node]
            node = parents[node]
        assert model.input_columns_[g].tolist() == chain
        assert np.array_equal(model.embed(X)[:, g, : len(chain)], X[:, chain])
    allowed = ancestor_matrix(parents)
    assert allowed[3].tolist() == [g == 3 or g in _chain(parents, 3) for g in range(T)]
    assert LatentAssigner(groups=groups, embedder="pixels", n_clusters=2).fit(X).context_parents_ is None


def _chain(parents, g):
    out, node = [], parents[g]
    while node >= 0:
        out.append(int(node))
        node = parents[node]
    return out


def test_mae_context_token_sees_only_itself_and_its_ancestors():
    rng = np.random.default_rng(6)
    X, _ = prototype_data(300, 5, 3, rng)
    groups = [list(range(3 * t, 3 * t + 3)) for t in range(5)]
    model = LatentAssigner(groups=groups, context="mst", n_clusters=3, random_state=0, **{**TINY_MAE, "mae_depth": 2})
    model.fit(X)
    parents = model.context_parents_
    E = model.embed(X[:50])
    checked = 0
    for i in range(5):
        ancestors = _chain(parents, i)
        others = [j for j in range(5) if j != i and j not in ancestors]
        for j in others:  # a non-ancestor's values do not reach token i
            X2 = X[:50].copy()
            X2[:, groups[j]] += rng.normal(0.0, 5.0, size=(50, 3))
            E2 = model.embed(X2)
            assert np.allclose(E2[:, i], E[:, i], rtol=0, atol=1e-6)
            assert np.abs(E2[:, j] - E[:, j]).max() > 1e-2
            checked += 1
        for a in ancestors:  # an ancestor's do
            X2 = X[:50].copy()
            X2[:, groups[a]] += rng.normal(0.0, 5.0, size=(50, 3))
            assert np.abs(model.embed(X2)[:, i] - E[:, i]).max() > 1e-3
            checked += 1
    assert checked >= 5
    # context="all": every token sees every group; None: only itself
    X2 = X[:50].copy()
    X2[:, groups[4]] += 5.0
    every = LatentAssigner(groups=groups, context="all", n_clusters=3, random_state=0, **TINY_MAE).fit(X)
    assert every.visible_.all()
    assert np.abs(every.embed(X2)[:, :4] - every.embed(X[:50])[:, :4]).min(axis=(0, 2)).max() > 1e-3
    alone = LatentAssigner(groups=groups, n_clusters=3, random_state=0, **TINY_MAE).fit(X)
    assert np.array_equal(alone.visible_, np.eye(5, dtype=bool)) and alone.context_parents_ is None
    assert np.allclose(alone.embed(X2)[:, :4], alone.embed(X[:50])[:, :4], rtol=0, atol=1e-6)
    assert np.abs(alone.embed(X2)[:, 4] - alone.embed(X[:50])[:, 4]).max() > 1e-2


# ----------------------------------------------------------------------
# The masked autoencoder


def test_mae_loss_decreases_on_repeated_patterns():
    # 8 x 8 images tiled by one random 2 x 2 pattern out of 6: a masked
    # patch is any visible patch, so the reconstruction error can vanish
    rng = np.random.default_rng(7)
    patterns = rng.normal(size=(6, 2, 2))
    X = np.tile(patterns[rng.integers(6, size=600)], (1, 4, 4)).reshape(600, 64)
    model = LatentAssigner(image_shape=(8, 8), patch_size=2, n_clusters=6, random_state=0,
                           **{**TINY_MAE, "mae_epochs": 8, "mae_learning_rate": 3e-3})
    codes = model.fit_transform(X)
    curve = model.mae_loss_curve_
    assert len(curve) == 8 and all(np.isfinite(curve))
    # predicting the mean scores about 1 (standardized entries); the model learns far better
    assert curve[-1] < 0.5 * curve[0] and curve[-1] < 0.3
    assert codes.min() >= 0 and codes.max() < 6 and codes.shape == (600, 16)


def test_mae_is_deterministic_given_the_seed():
    rng = np.random.default_rng(8)
    X, _ = prototype_data(300, 4, 4, rng)
    params = dict(image_shape=(4, 4), patch_size=2, n_clusters=3, **TINY_MAE)
    a = LatentAssigner(random_state=11, **params).fit(X)
    b = LatentAssigner(random_state=11, **params).fit(X)
    c = LatentAssigner(random_state=12, **params).fit(X)
    state_a, state_b = a.mae_state_["state_dict"], b.mae_state_["state_dict"]
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert all(t.device.type == "cpu" for t in state_a.values())
    assert a.mae_loss_curve_ == b.mae_loss_curve_
    assert np.array_equal(a.transform(X), b.transform(X))
    assert np.array_equal(a.embed(X), b.embed(X))
    assert not torch.equal(state_a["embed_weight"], c.mae_state_["state_dict"]["embed_weight"])
    # torch's global RNG is neither used nor advanced by a fit
    before = torch.random.get_rng_state()
    LatentAssigner(random_state=11, **params).fit(X)
    assert torch.equal(before, torch.random.get_rng_state())


@pytest.mark.parametrize("embedder", ["pixels", "mae"])
def test_codes_recover_well_separated_prototypes(embedder):
    rng = np.random.default_rng(9)
    X, labels = prototype_data(600, 4, 4, rng)
    extra = TINY_MAE if embedder == "mae" else {}
    model = LatentAssigner(image_shape=(4, 4, 1), patch_size=(1, 4), n_clusters=3, kmeans="full",
                           random_state=0, **{**extra, "embedder": embedder})
    codes = model.fit_transform(X)
    assert codes.shape == (600, 4) and codes.min() >= 0 and codes.max() <= 2
    scores = [adjusted_rand_score(labels[:, i], codes[:, i]) for i in range(4)]
    assert min(scores) > 0.98, scores


def test_fit_transform_agrees_with_fit_then_transform():
    rng = np.random.default_rng(10)
    X, _ = prototype_data(1300, 4, 4, rng)
    params = dict(image_shape=(4, 4), patch_size=2, n_clusters=4, random_state=0, **TINY_MAE)
    model = LatentAssigner(**params)
    assert np.array_equal(model.fit_transform(X), model.transform(X))
    assert np.array_equal(LatentAssigner(**params).fit(X).transform(X), model.transform(X))
    # max_samples: the embedder and k-means see a subset; codes cover every row
    sub = LatentAssigner(max_samples=200, **params)
    codes = sub.fit_transform(X)
    assert sub.kmeans_[0].labels_.shape == (200,)
    assert codes.shape == (1300, 4) and np.array_equal(codes, sub.transform(X))


def test_n_clusters_capped_at_distinct_embeddings():
    rng = np.random.default_rng(11)
    X = rng.normal(size=(50, 4))
    X[:, :2] = rng.integers(2, size=(50, 1))  # group 0 has only 2 distinct rows
    model = LatentAssigner(groups=[[0, 1], [2, 3]], embedder="pixels", n_clusters=4, random_state=0)
    codes = model.fit_transform(X)  # no ConvergenceWarning (an error in this test suite)
    assert np.array_equal(model.n_clusters_, [2, 4])
    assert model.cluster_centers_[0].shape == (2, 2) and model.cluster_centers_[1].shape == (4, 2)
    assert adjusted_rand_score(X[:, 0], codes[:, 0]) == 1.0
    with pytest.raises(ValueError, match="n_clusters=51 is more than the training rows: X has 50 samples"):
        LatentAssigner(groups=[[0, 1], [2, 3]], embedder="pixels", n_clusters=51).fit(X)


# ----------------------------------------------------------------------
# Missing values and bad input


def test_nan_entries_get_the_training_mean():
    rng = np.random.default_rng(12)
    X, _ = prototype_data(300, 4, 4, rng)
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.1] = np.nan
    X_nan[0] = np.nan  # a row with nothing observed
    model = LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pixels", n_clusters=3, random_state=0)
    codes = model.fit_transform(X_nan)
    assert np.allclose(model.feature_means_, np.nanmean(X_nan, axis=0), rtol=0, atol=1e-12)
    filled = np.where(np.isnan(X_nan), model.feature_means_, X_nan)
    assert np.array_equal(codes, model.transform(filled))
    assert codes.min() >= 0 and codes.max() < 3
    # a feature never observed in training is filled with 0
    X_nan[:, 5] = np.nan
    assert model.fit(X_nan).feature_means_[5] == 0.0


def test_mae_hides_groups_with_missing_entries():
    rng = np.random.default_rng(13)
    X, _ = prototype_data(300, 4, 4, rng)
    groups = [list(range(4 * t, 4 * t + 4)) for t in range(4)]
    X_nan = X.copy()
    X_nan[rng.random(X.shape) < 0.05] = np.nan
    model = LatentAssigner(groups=groups, context="all", n_clusters=3, random_state=0, **TINY_MAE)
    codes = model.fit_transform(X_nan)
    assert np.isfinite(model.mae_loss_curve_).all()
    assert codes.min() >= 0 and codes.max() < 3
    # two rows that differ only in group 2, which has a missing entry: the
    # other groups' embeddings are equal (group 2 is hidden from them,
    # though with context="all" they see every observed group)
    A = X[:20].copy()
    B = A.copy()
    B[:, groups[2]] += 3.0
    A[:, groups[2][0]] = B[:, groups[2][0]] = np.nan
    EA, EB = model.embed(A), model.embed(B)
    assert np.allclose(EA[:, [0, 1, 3]], EB[:, [0, 1, 3]], rtol=0, atol=1e-6)
    assert np.abs(EA[:, 2] - EB[:, 2]).max() > 1e-2
    full = model.transform(np.full((3, 16), np.nan))
    assert full.shape == (3, 4) and full.min() >= 0


def test_bad_input_is_refused_clearly():
    rng = np.random.default_rng(14)
    X = rng.normal(size=(40, 16))
    model = LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pixels", n_clusters=3, random_state=0)
    X_inf = X.copy()
    X_inf[3, 4] = np.inf
    with pytest.raises(ValueError, match="X contains inf"):
        clone(model).fit(X_inf)
    model.fit(X)
    with pytest.raises(ValueError, match="X contains inf"):
        model.transform(X_inf)
    with pytest.raises(ValueError, match="X has 15 features, but LatentAssigner is expecting 16"):
        model.transform(X[:, :15])
    with pytest.raises(ValueError, match="mae_heads=3 does not divide mae_dim=16"):
        LatentAssigner(image_shape=(4, 4), patch_size=2, mae_dim=16, mae_heads=3).fit(X)
    with pytest.raises(ValueError, match="0 < low <= high < 1"):
        LatentAssigner(image_shape=(4, 4), patch_size=2, mae_mask_ratio=(0.5, 1.0)).fit(X)
    with pytest.raises(ValueError, match="embedder"):
        LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="vae").fit(X)
    with pytest.raises(ValueError, match="X has 1 sample"):
        LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pixels", n_clusters=2).fit(X[:1])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_mae_on_cuda_recovers_prototypes_and_pickles():
    rng = np.random.default_rng(9)
    X, labels = prototype_data(600, 4, 4, rng)
    model = LatentAssigner(image_shape=(4, 4), patch_size=(1, 4), n_clusters=3, kmeans="full", device="cuda",
                           random_state=0, **TINY_MAE)
    codes = model.fit_transform(X)
    assert model.device_.type == "cuda"
    assert all(t.device.type == "cpu" for t in model.mae_state_["state_dict"].values())
    assert min(adjusted_rand_score(labels[:, i], codes[:, i]) for i in range(4)) > 0.98
    assert np.array_equal(pickle.loads(pickle.dumps(model)).transform(X), codes)


# ----------------------------------------------------------------------
# Persistence, clone, Pipeline, GridSearchCV, progress


def test_pickle_clone_and_pipeline_round_trip(tmp_path):
    rng = np.random.default_rng(15)
    X, _ = prototype_data(300, 4, 4, rng)
    model = LatentAssigner(image_shape=(4, 4), patch_size=2, n_clusters=3, context="mst", random_state=0, **TINY_MAE)
    codes = model.fit_transform(X)
    E = model.embed(X)
    loaded = pickle.loads(pickle.dumps(model))
    assert getattr(loaded, "_mae_cache", None) is None  # the built network is not pickled
    assert np.array_equal(loaded.transform(X), codes) and np.array_equal(loaded.embed(X), E)
    joblib.dump(model, tmp_path / "assigner.joblib")
    assert np.array_equal(joblib.load(tmp_path / "assigner.joblib").transform(X), codes)
    copy = clone(model)
    assert not hasattr(copy, "kmeans_") and copy.get_params() == model.get_params()
    assert np.array_equal(copy.fit_transform(X), codes)
    pipe = make_pipeline(StandardScaler(), clone(model))
    piped = pipe.fit_transform(X)
    scaled = StandardScaler().fit_transform(X)
    assert np.array_equal(piped, clone(model).fit_transform(scaled))
    assert np.array_equal(pickle.loads(pickle.dumps(pipe)).transform(X), piped)
    assert model.get_feature_names_out().tolist() == [f"latentassigner{i}" for i in range(4)]


def test_grid_search_over_n_clusters_with_a_downstream_classifier():
    rng = np.random.default_rng(16)
    X, labels = prototype_data(240, 4, 4, rng, resample=0.0)
    y = labels[:, 0]
    pipe = make_pipeline(
        LatentAssigner(image_shape=(4, 4), patch_size=2, embedder="pixels", random_state=0),
        OneHotEncoder(handle_unknown="ignore"),
        LogisticRegression(),
    )
    search = GridSearchCV(pipe, {"latentassigner__n_clusters": [1, 3]}, cv=3).fit(X, y)
    assert search.best_params_ == {"latentassigner__n_clusters": 3}
    assert search.cv_results_["mean_test_score"][1] == 1.0
    assert search.cv_results_["mean_test_score"][0] < 0.5  # one cluster carries no information


def test_verbose_reports_every_stage():
    rng = np.random.default_rng(17)
    X, _ = prototype_data(100, 4, 4, rng)
    out = io.StringIO()
    with redirect_stdout(out):
        LatentAssigner(image_shape=(4, 4), patch_size=2, context="mst", n_clusters=2, random_state=0, verbose=1,
                       **TINY_MAE).fit(X)
    text = out.getvalue()
    assert "context: maximum spanning tree over 4 groups" in text
    assert "embedding: MAE epoch 1/2" in text and "embedding: MAE epoch 2/2" in text
    assert "clustering: group 4/4" in text
    quiet = io.StringIO()
    with redirect_stdout(quiet):
        LatentAssigner(image_shape=(4, 4), patch_size=2, n_clusters=2, random_state=0, **TINY_MAE).fit(X)
    assert quiet.getvalue() == ""


# ----------------------------------------------------------------------
# scikit-learn's checks: groups="features" adapts to any number of features


@parametrize_with_checks(
    [
        LatentAssigner(groups="features", embedder="pixels", n_clusters=2, random_state=0),
        LatentAssigner(groups="features", n_clusters=2, context="mst", random_state=0,
                       **{**TINY_MAE, "mae_dim": 8, "mae_epochs": 1}),
    ]
)
def test_sklearn_compatible(estimator, check):
    check(estimator)
