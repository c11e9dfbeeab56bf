"""EinsumNetworkClassifier: Bayes' rule over per-class circuits, priors, labels
of any type, classification with missing features, and seeding of the class
densities."""

import itertools
import pickle

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.mixture import GaussianMixture
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KernelDensity
from sklearn.utils import get_tags

from skpc import EinsumNetworkClassifier, EinsumNetworkDensity

from conftest import small_density





def _blobs(rng, n_per_class=(60, 60, 60), n_features=8, separation=1.5):
    """One Gaussian per class whose mean differs from the others' in every
    feature, so that any half of the features still tells the classes apart."""
    means = separation * rng.normal(size=(len(n_per_class), n_features))
    X = np.vstack([m + rng.normal(size=(n, n_features)) for m, n in zip(means, n_per_class)])
    y = np.repeat(np.arange(len(n_per_class)), n_per_class)
    return X, y, means


def test_bayes_rule_over_the_class_densities(rng):
    X, y, _ = _blobs(rng, n_per_class=(50, 30, 20))
    clf = EinsumNetworkClassifier(small_density()).fit(X, y)
    np.testing.assert_array_equal(clf.classes_, [0, 1, 2])
    np.testing.assert_allclose(clf.class_count_, [50, 30, 20])
    np.testing.assert_allclose(clf.class_prior_, [0.5, 0.3, 0.2])
    # Each class density is the template fitted on that class's rows only.
    for c, estimator in zip(clf.classes_, clf.estimators_):
        reference = small_density().fit(X[y == c])
        np.testing.assert_allclose(estimator.score_samples(X), reference.score_samples(X))
    joint = np.column_stack([e.score_samples(X) for e in clf.estimators_]) + np.log([0.5, 0.3, 0.2])
    expected = joint - logsumexp(joint, axis=1, keepdims=True)
    np.testing.assert_allclose(clf.predict_log_proba(X), expected, atol=1e-10)
    np.testing.assert_allclose(clf.predict_proba(X), np.exp(expected), atol=1e-10)
    np.testing.assert_allclose(clf.predict_proba(X).sum(axis=1), 1.0)
    np.testing.assert_array_equal(clf.predict(X), np.argmax(expected, axis=1))
    assert clf.score(X, y) > 0.95


def test_equals_gaussian_naive_bayes_with_a_diagonal_gaussian_template(rng):
    # A one-component diagonal Gaussian per class is exactly Gaussian naive
    # Bayes: an independent reference for the priors and the normalization.
    X, y, _ = _blobs(rng, n_per_class=(40, 25, 35), n_features=4, separation=0.7)
    gmm = GaussianMixture(n_components=1, covariance_type="diag", reg_covar=1e-12)
    ours = EinsumNetworkClassifier(gmm).fit(X, y)
    nb = GaussianNB(var_smoothing=0.0).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), nb.predict_proba(X), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(ours.class_prior_, nb.class_prior_)


def test_string_labels(rng):
    X, y, _ = _blobs(rng, n_per_class=(40, 40))
    labels = np.array(["setosa", "virginica"])[y]
    clf = EinsumNetworkClassifier(small_density()).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, ["setosa", "virginica"])
    predicted = clf.predict(X)
    assert predicted.dtype.kind == "U"
    assert np.mean(predicted == labels) > 0.95
    # Same fit as with integer labels: the label type changes nothing else.
    by_int = EinsumNetworkClassifier(small_density()).fit(X, y)
    np.testing.assert_allclose(clf.predict_proba(X), by_int.predict_proba(X))


def test_priors(rng):
    X, y, _ = _blobs(rng, n_per_class=(60, 20), n_features=2, separation=0.3)
    empirical = EinsumNetworkClassifier(small_density()).fit(X, y)
    uniform = EinsumNetworkClassifier(small_density(), priors="uniform").fit(X, y)
    given = EinsumNetworkClassifier(small_density(), priors=[0.9, 0.1]).fit(X, y)
    np.testing.assert_allclose(empirical.class_prior_, [0.75, 0.25])
    np.testing.assert_allclose(uniform.class_prior_, [0.5, 0.5])
    np.testing.assert_allclose(given.class_prior_, [0.9, 0.1])
    # The priors only shift the log-odds: log-odds(priors) - log-odds(uniform) = log(p0 / p1).
    def log_odds(clf):
        log_proba = clf.predict_log_proba(X)
        return log_proba[:, 0] - log_proba[:, 1]

    np.testing.assert_allclose(log_odds(given) - log_odds(uniform), np.log(9.0), atol=1e-9)
    np.testing.assert_allclose(log_odds(empirical) - log_odds(uniform), np.log(3.0), atol=1e-9)
    # A zero prior rules a class out.
    never = EinsumNetworkClassifier(small_density(), priors=[1.0, 0.0]).fit(X, y)
    assert (never.predict(X) == 0).all()
    np.testing.assert_array_equal(never.predict_proba(X), np.c_[np.ones(len(X)), np.zeros(len(X))])


@pytest.mark.parametrize(
    "priors, match",
    [([0.5, 0.3, 0.2], "2 classes"), ([0.7, 0.7], "sum to 1"), ([1.5, -0.5], "non-negative")],
)
def test_invalid_priors(rng, priors, match):
    X, y, _ = _blobs(rng, n_per_class=(10, 10), n_features=2)
    with pytest.raises(ValueError, match=match):
        EinsumNetworkClassifier(small_density(), priors=priors).fit(X, y)


def test_half_the_features_missing_stays_accurate(rng):
    X, y, _ = _blobs(rng, n_per_class=(80, 80, 80), n_features=8, separation=1.2)
    train = rng.permutation(len(y))[:150]
    test = np.setdiff1d(np.arange(len(y)), train)
    clf = EinsumNetworkClassifier(small_density(n_sums=4)).fit(X[train], y[train])
    X_test = X[test].copy()
    full_accuracy = clf.score(X_test, y[test])
    # A different half of the features is missing in every row.
    for row in X_test:
        row[rng.permutation(8)[:4]] = np.nan
    proba = clf.predict_proba(X_test)
    assert np.isfinite(proba).all()
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    half_accuracy = np.mean(clf.predict(X_test) == y[test])
    assert full_accuracy > 0.95
    assert half_accuracy > 0.8  # chance is 1/3


def test_missing_features_are_marginalized_exactly(rng):
    # Binary features: the posterior of a row with NaNs must equal Bayes' rule
    # over the joint p(c, x) summed over every completion of the missing entries.
    n = 300
    y = rng.integers(2, size=n)
    X = (rng.random((n, 6)) < np.where(y[:, None] == 1, 0.8, 0.25)).astype(float)
    clf = EinsumNetworkClassifier(small_density(leaf="bernoulli", dtype="float64")).fit(X, y)
    row = np.array([1.0, np.nan, 0.0, np.nan, np.nan, 1.0])
    missing = np.flatnonzero(np.isnan(row))
    completions = np.repeat(row[None], 2 ** len(missing), axis=0)
    completions[:, missing] = list(itertools.product([0.0, 1.0], repeat=len(missing)))
    joint = np.column_stack([e.score_samples(completions) for e in clf.estimators_]) + np.log(clf.class_prior_)
    marginal_joint = logsumexp(joint, axis=0)  # (n_classes,): log p(c, x_observed)
    expected = marginal_joint - logsumexp(marginal_joint)
    np.testing.assert_allclose(clf.predict_log_proba(row[None])[0], expected, atol=1e-9)
    # An all-missing row carries no evidence: the posterior is the prior.
    np.testing.assert_allclose(clf.predict_proba(np.full((1, 6), np.nan))[0], clf.class_prior_, atol=1e-9)


def test_training_with_missing_entries(rng):
    X, y, _ = _blobs(rng, n_per_class=(60, 60), n_features=6)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < 0.3] = np.nan
    clf = EinsumNetworkClassifier(small_density()).fit(X_missing, y)
    assert clf.score(X, y) > 0.95


def test_row_impossible_under_every_class_gets_the_prior(rng):
    # Tophat kernels give log p = -inf far from the data: no class explains the row.
    X, y, _ = _blobs(rng, n_per_class=(30, 10), n_features=2)
    clf = EinsumNetworkClassifier(KernelDensity(kernel="tophat", bandwidth=0.5)).fit(X, y)
    far = np.array([[100.0, 100.0]])
    np.testing.assert_allclose(clf.predict_proba(far)[0], [0.75, 0.25])
    assert clf.predict(far)[0] == 0


def test_nan_support_follows_the_template(rng):
    assert get_tags(EinsumNetworkClassifier()).input_tags.allow_nan
    clf = EinsumNetworkClassifier(KernelDensity())
    assert not get_tags(clf).input_tags.allow_nan
    X, y, _ = _blobs(rng, n_per_class=(10, 10), n_features=2)
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        clf.fit(X, y)


def test_default_template_is_an_einsum_network(rng):
    X, y, _ = _blobs(rng, n_per_class=(30, 30), n_features=4)
    clf = EinsumNetworkClassifier().fit(X, y)
    assert all(isinstance(e, EinsumNetworkDensity) for e in clf.estimators_)
    assert clf.estimator is None
    assert clf.score(X, y) > 0.9


@pytest.mark.parametrize("labels, shown", [(0, "0"), ("setosa", "'setosa'")])
def test_a_single_class_is_refused(rng, labels, shown):
    X = rng.normal(size=(20, 3))
    y = np.full(20, labels)
    with pytest.raises(ValueError, match=f"at least 2 classes .* only one class: {shown}"):
        EinsumNetworkClassifier(small_density()).fit(X, y)


# Seeding: the wrapper's random_state seeds one inner clone per class.


def _unseeded_density():
    """A small density whose own random_state is None: unseeded, every fit differs."""
    return EinsumNetworkDensity(structure="rat", n_sums=2, n_repetitions=2, max_iter=2, max_full_batch_iter=1, tol=None)


def test_random_state_makes_refits_identical(rng):
    X, y, _ = _blobs(rng, n_per_class=(30, 30, 30), n_features=4, separation=0.5)
    template = _unseeded_density()
    first = EinsumNetworkClassifier(template, random_state=0).fit(X, y)
    second = EinsumNetworkClassifier(template, random_state=0).fit(X, y)
    np.testing.assert_array_equal(first.predict_proba(X), second.predict_proba(X))
    # One seed per class, drawn in the order of classes_, distinct; the
    # template keeps its None.
    draws = np.random.RandomState(0)
    seeds = [draws.randint(np.iinfo(np.int32).max) for _ in range(3)]
    assert [e.random_state for e in first.estimators_] == seeds
    assert len(set(seeds)) == 3
    assert template.random_state is None
    for c, seed, estimator in zip(first.classes_, seeds, first.estimators_):
        reference = clone(template).set_params(random_state=seed).fit(X[y == c])
        np.testing.assert_array_equal(estimator.score_samples(X), reference.score_samples(X))
    # Another seed, other circuits.
    other = EinsumNetworkClassifier(template, random_state=1).fit(X, y)
    assert np.max(np.abs(other.predict_log_proba(X) - first.predict_log_proba(X))) > 1e-3


def test_explicit_inner_seed_is_kept_without_a_wrapper_seed(rng):
    X, y, _ = _blobs(rng, n_per_class=(30, 30), n_features=4)
    template = _unseeded_density().set_params(random_state=7)
    clf = EinsumNetworkClassifier(template).fit(X, y)
    assert [e.random_state for e in clf.estimators_] == [7, 7]
    for c, estimator in zip(clf.classes_, clf.estimators_):
        reference = clone(template).fit(X[y == c])
        np.testing.assert_array_equal(estimator.score_samples(X), reference.score_samples(X))
    # A wrapper seed, when given, takes precedence over the inner one.
    overridden = EinsumNetworkClassifier(template, random_state=0).fit(X, y)
    assert all(e.random_state != 7 for e in overridden.estimators_)


def test_seeded_classifier_survives_clone_and_pickle(rng):
    X, y, _ = _blobs(rng, n_per_class=(30, 30), n_features=4, separation=0.5)
    clf = EinsumNetworkClassifier(_unseeded_density(), priors="uniform", random_state=3).fit(X, y)
    copy = clone(clf)
    assert copy.get_params()["random_state"] == 3
    assert not hasattr(copy, "estimators_")
    np.testing.assert_array_equal(copy.fit(X, y).predict_proba(X), clf.predict_proba(X))
    restored = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(restored.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(restored.predict(X), clf.predict(X))


def test_classes_share_the_leaf_inferred_from_all_rows():
    # class 0 only shows levels 0..3, class 1 levels 2..7: with leaf="auto" (and
    # with "categorical", n_categories=None) every class's density must still
    # score the other class's levels
    rng = np.random.default_rng(0)
    X = np.r_[rng.integers(0, 4, (60, 3)), rng.integers(2, 8, (60, 3))].astype(float)
    y = np.r_[np.zeros(60), np.ones(60)]
    for leaf in ("auto", "categorical"):
        density = EinsumNetworkDensity(structure="rat", leaf=leaf, n_sums=2, n_repetitions=2, max_iter=5, tol=None, random_state=0)
        clf = EinsumNetworkClassifier(density, random_state=0).fit(X, y)
        assert all(est.leaf_.n_categories == 8 for est in clf.estimators_)
        assert clf.score(X, y) > 0.9
