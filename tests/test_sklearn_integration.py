"""skpc inside scikit-learn's machinery: pipelines, grid search (also in
parallel), cross-validation, clone/set_params, pickling and its failure modes,
and progress output."""

import io
import pickle

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import skpc.base
from skpc import CircuitOutlierDetector, EinsumNetworkClassifier, EinsumNetworkDensity
from skpc.base import ProgressPrinter

from conftest import small_density



def _density(**params):
    return small_density(**{"max_iter": 4, **params})


def _data(rng, n_samples=200, n_features=8):
    """Correlated features on very different scales (what a scaler is for)."""
    latent = rng.normal(size=(n_samples, 2))
    X = latent @ rng.normal(size=(2, n_features)) + 0.3 * rng.normal(size=(n_samples, n_features))
    return X * np.logspace(-2, 2, n_features)


def _fitted_estimators(rng):
    X = _data(rng)
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    return X, [
        _density().fit(X),
        CircuitOutlierDetector(_density()).fit(X),
        EinsumNetworkClassifier(_density()).fit(X, y),
    ]


def _outputs(estimator, X):
    """The numbers that must survive a round trip, per kind of estimator."""
    if isinstance(estimator, EinsumNetworkClassifier):
        return estimator.predict_log_proba(X)
    return estimator.score_samples(X)


# ------------------------------------------------------------------ pipelines
@pytest.mark.parametrize("transformer", [StandardScaler(), PCA(n_components=4, random_state=0)])
def test_pipeline_scores_through_the_transformer(rng, transformer):
    X = _data(rng)
    pipe = make_pipeline(transformer, _density()).fit(X)
    Z = clone(transformer).fit_transform(X)
    density = _density().fit(Z)
    np.testing.assert_allclose(pipe.score_samples(X), density.score_samples(Z))
    assert pipe.score(X) == pytest.approx(density.score(Z))
    assert pipe.score(X) == pytest.approx(np.mean(pipe.score_samples(X)))


def test_pipeline_keeps_nan_for_marginalization(rng):
    # StandardScaler passes NaN through, so the circuit marginalizes it.
    X = _data(rng)
    pipe = make_pipeline(StandardScaler(), _density()).fit(X)
    X_nan = X[:5].copy()
    X_nan[:, :4] = np.nan
    scores = pipe.score_samples(X_nan)
    assert np.isfinite(scores).all()
    assert (scores > pipe.score_samples(X[:5])).all()  # a marginal over fewer variables


# ------------------------------------------------------- model selection
GRID = {"structure": ["rat"], "n_sums": [1, 4], "depth": [1, 2], "n_repetitions": [1, 3]}


def test_grid_search_over_circuit_parameters(rng):
    X = _data(rng)
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(_density(), GRID, cv=cv).fit(X)
    assert len(search.cv_results_["params"]) == 8
    # Every candidate's score is the mean held-out log-likelihood over the folds.
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        folds = [_density(**params).fit(X[tr]).score(X[te]) for tr, te in cv.split(X)]
        assert score == pytest.approx(np.mean(folds), rel=1e-6)
    # K=1 is a product of independent leaves; the data is correlated.
    assert search.best_params_["n_sums"] == 4
    assert search.best_estimator_.n_sums_ == 4


def test_grid_search_in_parallel_matches_serial(rng):
    # Seeds make every fit deterministic, so two worker processes must give
    # the serial numbers exactly (joblib's loky workers run torch on 1 thread).
    X = _data(rng)
    grid = {"n_sums": [2, 4]}
    serial = GridSearchCV(_density(), grid, cv=2, n_jobs=1).fit(X)
    parallel = GridSearchCV(_density(), grid, cv=2, n_jobs=2).fit(X)
    np.testing.assert_allclose(parallel.cv_results_["mean_test_score"], serial.cv_results_["mean_test_score"])
    assert parallel.best_params_ == serial.best_params_


def test_grid_search_through_nested_parameters(rng):
    X = _data(rng)
    y = (X[:, 0] > np.median(X[:, 0])).astype(int)
    search = GridSearchCV(EinsumNetworkClassifier(_density()), {"estimator__n_sums": [1, 3]}, cv=2).fit(X, y)
    assert search.best_estimator_.estimators_[0].n_sums_ == search.best_params_["estimator__n_sums"]
    assert search.best_score_ > 0.8


def test_cross_val_score_is_the_held_out_likelihood(rng):
    X = _data(rng)
    cv = KFold(4, shuffle=True, random_state=1)
    scores = cross_val_score(_density(), X, cv=cv)
    expected = [_density().fit(X[tr]).score(X[te]) for tr, te in cv.split(X)]
    np.testing.assert_allclose(scores, expected, rtol=1e-6)
    assert np.all(scores < _density().fit(X).score(X) + 1.0)  # held-out is not better than training


def test_clone_and_set_params(rng):
    X, estimators = _fitted_estimators(rng)
    for estimator in estimators:
        copy = clone(estimator)
        assert copy.get_params(deep=False).keys() == estimator.get_params(deep=False).keys()
        assert not any(name.endswith("_") and not name.startswith("_") for name in vars(copy))
    detector = CircuitOutlierDetector(_density()).set_params(estimator__n_sums=5, contamination=0.2)
    assert detector.estimator.n_sums == 5
    assert detector.get_params()["estimator__n_sums"] == 5
    density = _density().set_params(n_sums=5, n_repetitions=1)
    assert density.fit(X).n_sums_ == 5
    assert density.region_graph_.n_variables == X.shape[1]


# ------------------------------------------------------------------ pickling
@pytest.mark.parametrize("how", ["pickle", "joblib"])
def test_round_trip_gives_identical_scores(rng, tmp_path, how):
    X, estimators = _fitted_estimators(rng)
    for estimator in estimators:
        if how == "pickle":
            loaded = pickle.loads(pickle.dumps(estimator))
        else:
            path = tmp_path / f"{type(estimator).__name__}.joblib"
            joblib.dump(estimator, path)
            loaded = joblib.load(path)
        np.testing.assert_array_equal(_outputs(loaded, X), _outputs(estimator, X))


def test_pickled_cuda_model_loads_on_cpu_with_a_warning(rng):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the fallback to the CPU cannot be exercised.")
    X = _data(rng)
    model = _density().fit(X)
    expected = model.score_samples(X)
    # A model fitted on a GPU machine: device_ says cuda; its tensors are
    # pickled as CPU tensors either way.
    model.device_ = torch.device("cuda", 0)
    data = pickle.dumps(model)
    with pytest.warns(UserWarning, match="CUDA is not available"):
        loaded = pickle.loads(data)
    assert loaded.device_ == torch.device("cpu")
    assert loaded.params_.root.device.type == "cpu"
    np.testing.assert_array_equal(loaded.score_samples(X), expected)


def test_pickle_of_another_serialization_version_is_refused(rng, monkeypatch):
    X = _data(rng)
    model = _density().fit(X)
    monkeypatch.setattr(skpc.base, "SERIALIZATION_VERSION", skpc.base.SERIALIZATION_VERSION + 1)
    data = pickle.dumps(model)  # written by a "newer" skpc
    wrapped = pickle.dumps(CircuitOutlierDetector(_density()).fit(X))
    monkeypatch.undo()
    with pytest.raises(ValueError, match=r"serialization version \d+.*refit"):
        pickle.loads(data)
    with pytest.raises(ValueError, match="serialization version"):
        pickle.loads(wrapped)  # also when the circuit is nested in another estimator
    # A pickle without any version (an old layout) is refused too.
    state = model.__getstate__()
    del state["_skpc_serialization_version"]
    with pytest.raises(ValueError, match="version None"):
        EinsumNetworkDensity.__new__(EinsumNetworkDensity).__setstate__(state)


# ------------------------------------------------------------------ progress
def test_verbose_prints_epochs_and_pickles_no_progress(rng, capsys):
    X = _data(rng)
    model = _density(max_iter=3, verbose=1).fit(X)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if "epoch" in line]
    assert [line.split()[2] for line in lines] == ["1", "2", "3"]
    assert all("full-batch EM" in line and " train -" in line for line in lines)
    # Nothing about progress travels with the model: no monitor, no stream,
    # and pickling works while stdout is captured by pytest.
    state = model.__getstate__()
    for value in state.values():
        assert not isinstance(value, (ProgressPrinter, io.IOBase))
    # Only parameters, fitted attributes and version stamps.
    assert all(name in model.get_params() or name.endswith("_") or "version" in name for name in state), state.keys()
    data = pickle.dumps(model)
    assert b"ProgressPrinter" not in data and b"stdout" not in data
    loaded = pickle.loads(data)
    assert capsys.readouterr().out == ""  # loading prints nothing
    np.testing.assert_array_equal(loaded.score_samples(X), model.score_samples(X))


def test_verbose_two_prints_batches(rng, capsys):
    X = _data(rng)
    _density(max_iter=2, batch_size=50, max_full_batch_iter=0, verbose=2).fit(X)
    out = capsys.readouterr().out
    assert out.count("batch ") == 2 * 4  # 200 rows / 50 per batch, 2 epochs
    assert out.count("stochastic EM") == 2
