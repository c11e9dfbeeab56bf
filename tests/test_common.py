"""scikit-learn's estimator checks over every public estimator of skpc, at
sizes small enough that the whole module runs in well under a minute."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from skpc import CircuitOutlierDetector, EinsumNetworkClassifier, EinsumNetworkDensity, LatentAssigner, LVDDensity


def _small_density(**params):
    # Few, tiny sums and a fixed number of full-batch epochs: fast, and
    # deterministic given the seed (check_fit_idempotent and friends).
    settings = dict(n_sums=2, n_repetitions=2, max_iter=3, batch_size=None, tol=None, early_stopping=False, random_state=0)
    settings.update(params)
    return EinsumNetworkDensity(**settings)


ESTIMATORS = [
    _small_density(),
    CircuitOutlierDetector(_small_density()),
    EinsumNetworkClassifier(_small_density()),
    LVDDensity(embedder="pixels", n_clusters=2, max_iter=3, finetune_max_iter=1, batch_size=None, tol=None,
               early_stopping=False, random_state=0),
    LatentAssigner(groups="features", embedder="pixels", n_clusters=2, random_state=0),
    # at their default parameters (the checks seed random_state)
    EinsumNetworkDensity(),
    CircuitOutlierDetector(),
    EinsumNetworkClassifier(),
    LVDDensity(),
]

# Checks that fail because of a documented design choice or the engine; each
# with its reason. Filled from running the checks, see the report.
EXPECTED_FAILED = {
    "LVDDensity": {
        "check_n_features_in_after_fitting": (
            "at the default n_clusters=16, k-means needs at least 16 training rows; the check fits 15 "
            "(after early stopping's split), and fit says so in a clear ValueError"
        ),
    },
}


def _expected_failed_checks(estimator):
    if isinstance(estimator, LVDDensity) and estimator.n_clusters <= 2:
        return {}
    return EXPECTED_FAILED.get(type(estimator).__name__, {})


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=_expected_failed_checks)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
