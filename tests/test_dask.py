"""Grid search on a Dask cluster: GridSearchCV with n_jobs=-1 under
joblib's "dask" backend runs with no code change, on worker processes, and
finds what n_jobs=1 finds. Estimators pickle cheaply: no torch state before
fit, CPU tensors after."""

import pickle

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity

distributed = pytest.importorskip("distributed")
joblib = pytest.importorskip("joblib")
from sklearn.model_selection import GridSearchCV  # noqa: E402

GRID = {"n_sums": [1, 4], "leaf": ["gaussian", "bernoulli"]}


def _data():
    rng = np.random.default_rng(0)
    z = rng.integers(0, 2, size=(160, 1))
    X = (rng.random((160, 6)) < np.where(z, 0.85, 0.15)).astype(float)  # two clusters
    return X


def _search():
    base = EinsumNetworkDensity(structure="rat", n_repetitions=2, depth=1, batch_size=None, max_iter=5, tol=None,
                                early_stopping=False, random_state=0)
    return GridSearchCV(base, GRID, cv=2)


def _worker_threads():
    return torch.get_num_threads()


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                       silence_logs=40)
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def test_grid_search_on_a_local_cluster_matches_one_process(client):
    X = _data()
    local = _search().set_params(n_jobs=1).fit(X)
    with joblib.parallel_backend("dask"):
        remote = _search().set_params(n_jobs=-1).fit(X)
    assert remote.best_params_ == local.best_params_
    scores = local.cv_results_["mean_test_score"]
    assert np.ptp(scores) > 1.0  # the candidates differ: the choice means something
    np.testing.assert_allclose(remote.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"],
                               rtol=1e-6)
    # the fits ran on both worker processes, not in this one
    assert len(client.scheduler_info()["workers"]) == 2
    np.testing.assert_allclose(remote.best_estimator_.score_samples(X[:5]), local.best_estimator_.score_samples(X[:5]),
                               rtol=1e-6)


def test_workers_run_torch_on_their_one_thread(client):
    """Dask's nanny sets OMP_NUM_THREADS to the worker's threads: torch takes it."""
    threads = client.run(_worker_threads)
    assert sorted(threads.values()) == [1, 1]


def test_estimators_pickle_cheaply():
    unfitted = EinsumNetworkDensity()
    assert len(pickle.dumps(unfitted)) < 2_000  # parameters only: no torch state before fit
    model = EinsumNetworkDensity(structure="rat", n_sums=2, n_repetitions=1, depth=1, max_iter=1, batch_size=None, tol=None).fit(_data())
    state = model.__getstate__()
    assert "_circuit_cache" not in state and "_query_cache" not in state
    assert state["params_"].leaf.device.type == "cpu"
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.score_samples(_data()[:4]), model.score_samples(_data()[:4]))
