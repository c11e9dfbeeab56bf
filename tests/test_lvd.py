"""LVDDensity: the materialized latent circuit is exact, the distillation stage
is Lemma 1's closed form where one exists, and every query holds up."""

import itertools
import pickle
import warnings

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, TransformerMixin, clone
from sklearn.model_selection import GridSearchCV

from skpc.backend import LatentEvidence
from skpc.lvd import LVDDensity
from skpc.structure import RegionGraph, hclt_region_graph
from skpc.structure.compose import compose_region_graphs

GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


class MeanCodes(TransformerMixin, BaseEstimator):
    """A deterministic assigner for exactness tests: the code of a group is its
    mean binned into n_clusters equal bins (NaN entries ignored)."""

    def __init__(self, groups=None, n_clusters=2):
        self.groups = groups
        self.n_clusters = n_clusters

    def fit(self, X, y=None):
        groups = self.groups if self.groups is not None else [[j] for j in range(np.asarray(X).shape[1])]
        self.groups_ = [np.asarray(g) for g in groups]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN group
            means = np.stack([np.nanmean(X[:, g], 1) for g in self.groups_], 1)
        means = np.nan_to_num(means, nan=0.0)
        return np.clip((means * self.n_clusters).astype(np.int64), 0, self.n_clusters - 1)


def latent_binary_data(n=300, n_groups=3, size=3, seed=0):
    """Binary groups whose bits depend on a per-group latent, latents correlated along a chain."""
    rng = np.random.default_rng(seed)
    z = np.zeros((n, n_groups), dtype=int)
    z[:, 0] = rng.integers(0, 2, n)
    for i in range(1, n_groups):
        z[:, i] = np.where(rng.random(n) < 0.8, z[:, i - 1], 1 - z[:, i - 1])
    p = 0.15 + 0.7 * np.repeat(z, size, axis=1)
    return (rng.random((n, n_groups * size)) < p).astype(float)


def all_binary(n):
    return np.array(list(itertools.product([0.0, 1.0], repeat=n)))


def fit_binary(sub_structure="hclt", groups=GROUPS, n_clusters=2, **kw):
    X = latent_binary_data(n_groups=len(groups), size=len(groups[0]))
    params = dict(
        assigner=MeanCodes(groups, n_clusters),
        n_clusters=n_clusters,
        leaf="bernoulli",
        sub_structure=sub_structure,
        dtype="float64",
        random_state=0,
        max_iter=15,
        finetune_max_iter=5,
        tol=None,
    )
    params.update(kw)
    return LVDDensity(**params).fit(X), X


# ----------------------------------------------------------------- structure
def test_compose_region_graphs_keeps_latent_regions_and_maps_sub_scopes():
    latent = hclt_region_graph([-1, 0, 0], root=0)
    sub = RegionGraph(2, [(0, 1), (0,), (1,)], [(0, (1, 2))])
    groups = [[4, 5], [0, 1], [2, 3]]
    graph, roots = compose_region_graphs(latent, [sub, sub, sub], groups)
    assert roots == [0, 1, 2]
    for i, g in enumerate(groups):
        assert graph.regions[roots[i]] == tuple(sorted(g))
    assert graph.regions[graph.root] == tuple(range(6))
    # each sub-graph's leaves are its group's single features
    assert sorted(graph.leaves) == sorted(graph.regions.index((v,)) for v in range(6))


def test_compose_region_graphs_refuses_groups_that_do_not_partition():
    latent = hclt_region_graph([-1, 0], root=0)
    sub = RegionGraph(1, [(0,)], [])
    with pytest.raises(ValueError, match="partition the features"):
        compose_region_graphs(latent, [sub, sub], [[0], [0]])


# --------------------------------------------------------------- exactness
@pytest.mark.parametrize("sub_structure", ["factorized", "hclt", "rat"])
def test_normalized_by_enumeration(sub_structure):
    model, _ = fit_binary(sub_structure)
    total = np.exp(model.score_samples(all_binary(9))).sum()
    assert total == pytest.approx(1.0, abs=1e-10)


def test_joint_over_all_codes_sums_to_the_marginal():
    model, X = fit_binary("hclt")
    circuit, params = model._circuit, model._query_params()
    Xt = torch.tensor(X[:20], dtype=torch.float64)
    joints = []
    for z in itertools.product(range(2), repeat=3):
        codes = torch.tensor([z] * 20)
        evidence = LatentEvidence(model.group_regions_, codes, 2)(torch.arange(20))
        joints.append(circuit.log_prob(Xt, params, evidence=evidence).numpy())
    np.testing.assert_allclose(logsumexp(np.stack(joints), 0), model.score_samples(X[:20]), rtol=0, atol=1e-10)


def test_marginals_equal_brute_force_sums():
    model, X = fit_binary("rat")
    rows = X[:6].copy()
    rows[:, [1, 4, 8]] = np.nan
    full = all_binary(3)
    for row, value in zip(rows, model.score_samples(rows)):
        completions = np.repeat(row[None], len(full), 0)
        completions[:, [1, 4, 8]] = full
        assert value == pytest.approx(logsumexp(model.score_samples(completions)), abs=1e-10)


def test_score_conditional_is_joint_minus_marginal():
    model, X = fit_binary("hclt")
    query = [0, 5]
    evidence = X[:10].copy()
    evidence[:, query] = np.nan
    expected = model.score_samples(X[:10]) - model.score_samples(evidence)
    np.testing.assert_allclose(model.score_conditional(X[:10], query), expected, atol=1e-12)


def test_samples_match_the_density():
    model, _ = fit_binary("hclt", groups=[[0, 1, 2], [3, 4, 5]])
    samples = model.sample(20000, random_state=1)
    states = all_binary(6)
    probs = np.exp(model.score_samples(states))
    index = (samples @ (2 ** np.arange(5, -1, -1))).astype(int)
    observed = np.bincount(index, minlength=64)
    expected = probs * len(samples)
    keep = expected >= 5  # chi-square validity; the rest pooled
    chi2 = ((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum()
    pooled_o, pooled_e = observed[~keep].sum(), expected[~keep].sum()
    if pooled_e > 0:
        chi2 += (pooled_o - pooled_e) ** 2 / pooled_e
    dof = keep.sum() + (pooled_e > 0) - 1
    assert stats.chi2.sf(chi2, dof) > 1e-3


def test_impute_keeps_evidence_and_mpe_is_deterministic():
    model, X = fit_binary("hclt")
    rows = X[:8].copy()
    rows[:, :4] = np.nan
    sampled = model.impute(rows, random_state=0)
    np.testing.assert_array_equal(sampled[:, 4:], X[:8, 4:])
    assert set(np.unique(sampled[:, :4])) <= {0.0, 1.0}
    np.testing.assert_array_equal(model.impute(rows, method="mpe"), model.impute(rows, method="mpe"))


# ---------------------------------------------------------- latent queries
def test_latent_proba_equals_brute_force_posteriors():
    model, X = fit_binary("hclt")
    rows = X[:10].copy()
    rows[3, :3] = np.nan  # a group with nothing observed
    proba = model.latent_proba(rows)
    assert proba.shape == (10, 3, 2)
    circuit, params = model._circuit, model._query_params()
    Xt = torch.tensor(rows, dtype=torch.float64)
    marginal = model.score_samples(rows)
    for i, region in enumerate(model.group_regions_):
        for c in range(2):
            allowed = torch.zeros(10, 2, dtype=torch.bool)
            allowed[:, c] = True
            joint = circuit.log_prob(Xt, params, evidence={region: allowed}).numpy()
            np.testing.assert_allclose(proba[:, i, c], np.exp(joint - marginal), atol=1e-10)
    np.testing.assert_array_equal(model.transform(rows), proba.argmax(-1))


# ------------------------------------------------------------- the stages
def test_single_group_without_finetuning_is_the_closed_form_mixture():
    # one group of all features, a product of leaves per cluster: the EiNet
    # paper's recipe; full-batch EM on (X, Z) reaches its closed form in one step
    X = latent_binary_data(n_groups=1, size=6)
    model = LVDDensity(
        assigner=MeanCodes([list(range(6))], 3),
        n_clusters=3,
        leaf="bernoulli",
        sub_structure="factorized",
        finetune_max_iter=0,
        batch_size=None,
        early_stopping=False,
        max_iter=3,
        tol=None,
        dtype="float64",
        random_state=0,
    ).fit(X)
    codes = model.assigner_.transform(X)
    proportions = np.bincount(codes[:, 0], minlength=3) / len(X)
    np.testing.assert_allclose(model.params_.root.numpy(), proportions, atol=1e-6)
    leaf = model.params_.leaf.numpy()  # (1, 6, K, 1): Bernoulli means
    for c in range(3):
        if proportions[c] > 0:
            expected = np.clip(X[codes[:, 0] == c].mean(0), 1e-6, 1 - 1e-6)
            np.testing.assert_allclose(leaf[0, :, c, 0], expected, atol=1e-5)
    density = np.zeros(len(X))
    for c in range(3):
        p = np.clip(leaf[0, :, c, 0], 0, 1)
        density += model.params_.root.numpy()[c] * np.prod(np.where(X == 1, p, 1 - p), 1)
    np.testing.assert_allclose(model.score_samples(X), np.log(density), atol=1e-8)


@pytest.mark.parametrize("pseudocount, softening", [(0.0, 1.0), (1.5, 1.0), (0.0, 0.9), (1.5, 0.9)])
def test_distillation_map_and_softened_step_is_the_closed_form(pseudocount, softening):
    """With every row's code observed, one full-batch distillation step of MAP-EM on softened data
    is the closed form: mixture weights (n_c + a / K) / (N + a), Bernoulli means
    ((2 beta - 1) sum x + (1 - beta) n_c + a / 2) / (n_c + a)."""
    X = latent_binary_data(n_groups=1, size=6)
    K = 3
    model = LVDDensity(
        assigner=MeanCodes([list(range(6))], K), n_clusters=K, leaf="bernoulli", sub_structure="factorized",
        finetune_max_iter=0, batch_size=None, early_stopping=False, max_iter=1, max_full_batch_iter=0, tol=None,
        dtype="float64", random_state=0, pseudocount=pseudocount, softening=softening,
    ).fit(X)
    codes = model.assigner_.transform(X)[:, 0]
    n = np.bincount(codes, minlength=K).astype(float)
    np.testing.assert_allclose(model.params_.root.numpy(), (n + pseudocount / K) / (len(X) + pseudocount), rtol=1e-9)
    leaf = model.params_.leaf.numpy()  # (1, 6, K, 1): Bernoulli means
    for c in range(K):
        ones = X[codes == c].sum(0)
        want = ((2 * softening - 1) * ones + (1 - softening) * n[c] + pseudocount / 2) / (n[c] + pseudocount)
        if n[c] + pseudocount > 0:
            np.testing.assert_allclose(leaf[0, :, c, 0], np.clip(want, 1e-6, 1 - 1e-6), rtol=1e-6)


def test_distillation_trains_each_sub_circuit_output_on_its_rows_only():
    # Lemma 1: with the codes observed, the leaves of group i's output c see
    # exactly the rows assigned c (here: their closed-form means)
    X = latent_binary_data()
    model = LVDDensity(
        assigner=MeanCodes(GROUPS, 2),
        n_clusters=2,
        leaf="bernoulli",
        sub_structure="factorized",
        finetune_max_iter=0,
        batch_size=None,
        early_stopping=False,
        max_iter=2,
        tol=None,
        dtype="float64",
        random_state=0,
    ).fit(X)
    codes = model.assigner_.transform(X)
    circuit = model._circuit
    leaf = model.params_.leaf.numpy()  # (L0, S, K, 1)
    for i, region in enumerate(model.group_regions_):
        h, row = circuit.layout.region_location(region)
        assert h == 0
        scope = circuit.leaf_scope[row].numpy()
        for c in range(2):
            expected = np.clip(X[codes[:, i] == c][:, scope].mean(0), 1e-6, 1 - 1e-6)
            np.testing.assert_allclose(leaf[row, :, c, 0], expected, atol=1e-5)


def test_finetuning_never_lowers_the_full_batch_training_likelihood():
    X = latent_binary_data()
    common = dict(
        assigner=MeanCodes(GROUPS, 2),
        n_clusters=2,
        leaf="bernoulli",
        sub_structure="hclt",
        batch_size=None,
        early_stopping=False,
        max_iter=10,
        tol=None,
        dtype="float64",
        random_state=0,
    )
    distilled = LVDDensity(finetune_max_iter=0, **common).fit(X)
    tuned = LVDDensity(finetune_max_iter=8, **common).fit(X)
    scores = np.array(tuned.train_scores_)
    assert scores[0] == pytest.approx(distilled.lower_bound_, abs=1e-10)  # fine-tuning starts where distillation ended
    assert np.all(np.diff(scores) >= -1e-10)
    assert tuned.lower_bound_ >= scores[-1] - 1e-10


def test_empty_clusters_never_give_nan():
    X = latent_binary_data()
    # codes use only 2 of 4 states: two outputs of every sub-circuit see no row
    model = LVDDensity(
        assigner=MeanCodes(GROUPS, 2), n_clusters=2, leaf="bernoulli", dtype="float64", random_state=0, max_iter=5,
        finetune_max_iter=2, tol=None,
    )
    model.set_params(assigner=_Widened(MeanCodes(GROUPS, 2), 4), n_clusters=4).fit(X)
    assert np.isfinite(model.score_samples(X)).all()
    assert np.isfinite(model.latent_proba(X)).all()


class _Widened(TransformerMixin, BaseEstimator):
    """An assigner whose codes use fewer states than n_clusters."""

    def __init__(self, inner=None, n_clusters=4):
        self.inner = inner
        self.n_clusters = n_clusters

    def fit(self, X, y=None):
        self.inner_ = clone(self.inner).fit(X)
        self.groups_ = self.inner_.groups_
        return self

    def transform(self, X):
        return self.inner_.transform(X)


# ------------------------------------------------------ estimator contract
def test_pickle_round_trip_and_fitted_state_only():
    model, X = fit_binary("hclt")
    before = model.score_samples(X[:20])
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(X[:20]), before)
    model.set_params(n_clusters=5, sub_structure="rat")
    np.testing.assert_array_equal(model.score_samples(X[:20]), before)
    np.testing.assert_array_equal(restored.transform(X[:20]), model.transform(X[:20]))


def test_grid_search_over_n_clusters():
    X = latent_binary_data(n=240)
    search = GridSearchCV(
        LVDDensity(assigner=MeanCodes(GROUPS), leaf="bernoulli", max_iter=5, finetune_max_iter=2, tol=None,
                   random_state=0),
        {"n_clusters": [2, 3], "assigner__n_clusters": [2, 3]},
        cv=2,
        error_score="raise",
    )
    with pytest.raises(ValueError, match="must agree"):
        search.fit(X)
    search = GridSearchCV(
        LVDDensity(assigner=MeanCodes(GROUPS), leaf="bernoulli", max_iter=5, finetune_max_iter=2, tol=None,
                   random_state=0),
        [{"n_clusters": [k], "assigner__n_clusters": [k]} for k in (2, 3)],
        cv=2,
    ).fit(X)
    assert search.best_params_["n_clusters"] in (2, 3)
    assert np.isfinite(search.best_score_)


def test_stage_times_and_scores_are_recorded():
    model, _ = fit_binary("hclt", verbose=0)
    assert set(model.stage_times_) == {"assignment", "structure", "distillation", "finetuning"}
    builtin = LVDDensity(groups=GROUPS, embedder="pixels", n_clusters=2, leaf="bernoulli", max_iter=2,
                         finetune_max_iter=1, tol=None, random_state=0).fit(latent_binary_data())
    assert set(builtin.stage_times_) == {"embedding", "clustering", "structure", "distillation", "finetuning"}
    assert len(model.distillation_train_scores_) >= 1 and len(model.train_scores_) >= 1
    assert model.n_iter_ == len(model.distillation_train_scores_) + len(model.train_scores_)


def test_verbose_prints_every_stage(capsys):
    fit_binary("hclt", verbose=1, max_iter=2, finetune_max_iter=1)
    out = capsys.readouterr().out
    for stage in ("assigning latents", "circuit:", "distillation", "fine-tuning"):
        assert stage in out


def test_bad_input_is_refused_clearly():
    X = latent_binary_data()
    with pytest.raises(ValueError, match="inf"):
        LVDDensity(assigner=MeanCodes(GROUPS), n_clusters=2, leaf="bernoulli").fit(np.where(X == 1, np.inf, X))
    with pytest.raises(ValueError, match="together with"):
        LVDDensity(assigner=MeanCodes(GROUPS), groups=GROUPS, n_clusters=2).fit(X)
    model, X = fit_binary("factorized", max_iter=2, finetune_max_iter=0)
    with pytest.raises(ValueError, match="features"):
        model.score_samples(X[:, :5])
    with pytest.raises(ValueError, match="codes outside"):
        LVDDensity(assigner=_Widened(MeanCodes(GROUPS, 3), 2), n_clusters=2, leaf="bernoulli").fit(X)


# ------------------------------------------------ with the built-in assigner
def test_image_patches_with_the_builtin_assigner_grey_and_colour():
    rng = np.random.default_rng(0)
    grey = (rng.random((120, 4, 4)) < np.linspace(0.2, 0.8, 120)[:, None, None]).astype(float)
    model = LVDDensity(
        image_shape=(4, 4), patch_size=2, embedder="pixels", n_clusters=2, leaf="bernoulli", max_iter=3,
        finetune_max_iter=1, tol=None, dtype="float64", random_state=0,
    ).fit(grey.reshape(120, -1))
    assert [g.tolist() for g in model.groups_] == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert np.exp(model.score_samples(all_binary(16))).sum() == pytest.approx(1.0, abs=1e-9)
    colour = rng.normal(size=(150, 4, 4, 3)) + np.linspace(-2, 2, 150)[:, None, None, None]
    model = LVDDensity(
        image_shape=(4, 4, 3), patch_size=2, embedder="pca", n_clusters=3, max_iter=3, finetune_max_iter=1,
        tol=None, random_state=0,
    ).fit(colour.reshape(150, -1))
    assert len(model.groups_) == 4 and all(len(g) == 12 for g in model.groups_)
    codes = model.transform(colour.reshape(150, -1))
    assert codes.shape == (150, 4) and codes.max() < 3
    assert np.isfinite(model.score_samples(colour.reshape(150, -1))).all()


def test_validation_rows_given_train_on_all_rows():
    X = latent_binary_data()
    model = LVDDensity(
        assigner=MeanCodes(GROUPS), n_clusters=2, leaf="bernoulli", max_iter=3, finetune_max_iter=2, tol=None,
        random_state=0,
    ).fit(X[:250], X_val=X[250:])
    assert len(model.distillation_validation_scores_) == len(model.distillation_train_scores_)
    assert len(model.validation_scores_) == len(model.train_scores_) >= 1
    with pytest.raises(ValueError, match="early_stopping=False"):
        clone(model).set_params(early_stopping=False).fit(X[:250], X_val=X[250:])


def test_groups_are_independent_given_the_codes():
    # the materialization behind Lemma 1: log p(x | z) = sum_i log p(x_i | z_i),
    # each group scored alone (the others marginalized) under the same codes
    model, X = fit_binary("rat")
    circuit, params = model._circuit, model._query_params()
    rows = torch.tensor(X[:12], dtype=torch.float64)
    codes = torch.tensor(np.random.default_rng(3).integers(0, 2, (12, 3)))
    evidence = LatentEvidence(model.group_regions_, codes, 2)(torch.arange(12))

    def log_joint(data):
        return circuit.log_prob(data, params, evidence=evidence).numpy()

    log_codes = log_joint(torch.full_like(rows, float("nan")))  # log p(z): every feature marginalized
    conditional = log_joint(rows) - log_codes
    per_group = np.zeros(12)
    for group in model.groups_:
        alone = torch.full_like(rows, float("nan"))
        alone[:, group] = rows[:, group]
        per_group += log_joint(alone) - log_codes
    np.testing.assert_allclose(conditional, per_group, atol=1e-10)
