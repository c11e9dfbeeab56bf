"""Data-parallel LVDDensity on torch.distributed: two gloo processes, each
fitting on its own rows, train the model one process fits on all rows (the
assigner, structures and initialization from rank 0's initialization sample,
which holds every training row here; distillation and fine-tuning EM summed
over the processes); bad input on one process makes every process raise the
same ValueError, quickly, instead of hanging in a collective.

The processes are spawned once for the module (one process group, every case
run in turn in it) with a hard timeout, so a hang fails the tests.
"""

import pickle
import time
import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator, TransformerMixin, clone

from skpc.lvd import LVDDensity

from conftest import finish_gloo_worker, join_gloo_group, run_gloo_ranks

WORLD = 2
TIMEOUT = 150  # seconds for the whole group: a hang fails the tests
GROUPS = [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


class MeanCodes(TransformerMixin, BaseEstimator):
    """A deterministic, picklable assigner: the code of a group is its mean
    binned into n_clusters equal bins (NaN entries ignored)."""

    def __init__(self, groups=None, n_clusters=2):
        self.groups = groups
        self.n_clusters = n_clusters

    def fit(self, X, y=None):
        self.groups_ = [np.asarray(g) for g in self.groups]
        return self

    def transform(self, X):
        X = np.asarray(X, dtype=float)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of an all-NaN group
            means = np.stack([np.nanmean(X[:, g], 1) for g in self.groups_], 1)
        means = np.nan_to_num(means, nan=0.0)
        return np.clip((means * self.n_clusters).astype(np.int64), 0, self.n_clusters - 1)


COMMON = dict(n_clusters=2, dtype="float64", random_state=0, tol=None)
MEAN = dict(COMMON, assigner=MeanCodes(GROUPS, 2), leaf="bernoulli")
# name -> (estimator parameters, rows of rank 0, rows of rank 1)
CASES = {
    "hclt_full_batch": (dict(MEAN, batch_size=None, max_iter=4, finetune_max_iter=2, early_stopping=False), 70, 50),
    "hclt_stochastic": (  # a global validation split, the same mini-batches as one process
        dict(MEAN, batch_size=16, max_iter=3, finetune_max_iter=2, max_full_batch_iter=2, early_stopping=True,
             validation_fraction=0.2),
        45, 75,
    ),
    "rat_distill_only": (
        dict(MEAN, sub_structure="rat", batch_size=20, max_iter=3, finetune_max_iter=0, max_full_batch_iter=2,
             early_stopping=False),
        60, 40,
    ),
    "builtin_pixels": (  # LatentAssigner (k-means of the pixels) fitted on rank 0, codes sent back; leaf="auto"
        dict(COMMON, groups=GROUPS, embedder="pixels", leaf="auto", batch_size=25, max_iter=2, finetune_max_iter=2,
             max_full_batch_iter=1, early_stopping=True),
        50, 60,
    ),
    "X_val": (dict(MEAN, batch_size=None, max_iter=3, finetune_max_iter=2), 50, 30),
}
SAMPLED = dict(MEAN, batch_size=30, max_iter=2, finetune_max_iter=1, max_full_batch_iter=1, early_stopping=False)


def _data(n, seed):
    """Binary groups whose bits depend on a per-group latent, latents correlated along a chain."""
    rng = np.random.default_rng(seed)
    z = np.zeros((n, 3), dtype=int)
    z[:, 0] = rng.integers(0, 2, n)
    for i in range(1, 3):
        z[:, i] = np.where(rng.random(n) < 0.8, z[:, i - 1], 1 - z[:, i - 1])
    p = 0.15 + 0.7 * np.repeat(z, 3, axis=1)
    X = (rng.random((n, 9)) < p).astype(float)
    X[rng.random(X.shape) < 0.05] = np.nan
    return X


def _all_rows(name):
    _, n0, n1 = CASES[name]
    X = _data(n0 + n1, seed=len(name))
    if name == "builtin_pixels":
        X[n0 + 3, 4] = 2.0  # a state only rank 1 sees: the auto leaf must have 3 categories on both
    return X, n0


def _X_val():
    return _data(30, seed=99)


def _state(model):
    return {
        "params": [t.detach().cpu().numpy() for t in [model.params_.leaf, *model.params_.tensors()]],
        "lower_bound": model.lower_bound_,
        "n_iter": model.n_iter_,
        "train_scores": model.train_scores_,
        "validation_scores": model.validation_scores_,
        "distillation_train_scores": model.distillation_train_scores_,
        "distillation_validation_scores": model.distillation_validation_scores_,
        "graph": model.region_graph_.to_json(),
        "parents": model.latent_parents_.tolist(),
        "n_categories": model.n_categories_,
        "leaf": repr(model.leaf_),
    }


def _run_case(name, rank):
    params, _, _ = CASES[name]
    X, n0 = _all_rows(name)
    mine = X[:n0] if rank == 0 else X[n0:]
    model = LVDDensity(distributed=True, **params)
    if name == "X_val":
        return model.fit(mine, X_val=_X_val()[:20] if rank == 0 else _X_val()[20:])
    return model.fit(mine)


# rank failures: (estimator parameters, the message every rank must raise)
FAILURES = {
    "nan_only": "no observed entry",
    "wrong_features": "X has 8 features, but rank 0's X has 9",
    "one_dimensional": "Expected 2D array",
    "inf": "contains inf",
    "not_binary": "Bernoulli leaves need binary data",
}


def _failing_fit(kind, rank):
    X = _data(30, seed=rank)
    if rank == 1:
        if kind == "nan_only":
            X = np.full_like(X, np.nan)
        elif kind == "wrong_features":
            X = X[:, :8]
        elif kind == "one_dimensional":
            X = X[:, 0]
        elif kind == "inf":
            X[3, 2] = np.inf
        elif kind == "not_binary":
            X[3, 2] = 3.0
    return LVDDensity(distributed=True, **dict(MEAN, batch_size=None, max_iter=1, finetune_max_iter=0)).fit(X)


def _worker(rank, store, out):
    import skpc.lvd

    join_gloo_group(rank, store, WORLD)
    results = {"rank": rank}
    for name in CASES:
        results[name] = _state(_run_case(name, rank))
    for kind in FAILURES:
        start = time.perf_counter()
        try:
            _failing_fit(kind, rank)
            results[kind] = ("no error", time.perf_counter() - start)
        except ValueError as error:
            results[kind] = (str(error), time.perf_counter() - start)
    # an initialization sample of 40 of the 100 training rows: each process codes its own rows
    skpc.lvd.INIT_SAMPLE_ELEMENTS = 40 * 9
    X = _data(100, seed=5)
    results["sampled"] = _state(LVDDensity(distributed=True, **SAMPLED).fit(X[:45] if rank == 0 else X[45:]))
    finish_gloo_worker(rank, results, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (a list in rank order), from one spawned group of two gloo processes."""
    return run_gloo_ranks("test_distributed_lvd", tmp_path_factory.mktemp("dist_lvd"), WORLD, TIMEOUT)


def _reference(name):
    params, _, _ = CASES[name]
    X, _ = _all_rows(name)
    model = LVDDensity(distributed=False, **params)
    if name == "X_val":
        return _state(model.fit(X, X_val=_X_val()))
    return _state(model.fit(X))


def _assert_same(state, ref, rtol=1e-9, atol=1e-10):
    assert len(state["params"]) == len(ref["params"])
    for a, b in zip(state["params"], ref["params"]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert state["lower_bound"] == pytest.approx(ref["lower_bound"], rel=1e-10)
    for key in ("n_iter", "graph", "parents", "n_categories", "leaf"):
        assert state[key] == ref[key], key
    for key in ("train_scores", "validation_scores", "distillation_train_scores", "distillation_validation_scores"):
        if ref[key] is None:
            assert state[key] is None, key
        else:
            np.testing.assert_allclose(state[key], ref[key], rtol=1e-10, err_msg=key)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_fit_the_one_process_model(ranks, name):
    """Two shards (of unequal sizes) fit the structure, parameters, lower bound,
    epochs and scores of one process on all rows; every rank holds the same model."""
    ref = _reference(name)
    for rank in range(WORLD):
        _assert_same(ranks[rank][name], ref)
    for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"]):
        np.testing.assert_array_equal(a, b)  # bit-identical on every rank


def test_auto_leaf_is_inferred_from_every_rank(ranks):
    assert ranks[0]["builtin_pixels"]["n_categories"] == 3 == ranks[1]["builtin_pixels"]["n_categories"]


def test_a_sampled_initialization_gives_one_model_on_every_rank(ranks):
    """Beyond the initialization sample each process codes its own rows with
    the assigner rank 0 fitted: still one model, trained on every row."""
    a, b = ranks[0]["sampled"], ranks[1]["sampled"]
    for x, y in zip(a["params"], b["params"]):
        np.testing.assert_array_equal(x, y)
    assert a["graph"] == b["graph"] and a["n_iter"] == b["n_iter"] == 2 + 1 + 1
    assert a["lower_bound"] == b["lower_bound"] and np.isfinite(a["lower_bound"])
    X = _data(100, seed=5)
    ref = LVDDensity(distributed=False, **SAMPLED).fit(X)
    assert a["lower_bound"] == pytest.approx(ref.lower_bound_, abs=0.5)  # the same model class, fitted on all rows


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_bad_input_on_one_rank_raises_the_same_error_everywhere(ranks, kind):
    message0, seconds0 = ranks[0][kind]
    message1, seconds1 = ranks[1][kind]
    assert message0 == message1
    assert message0.startswith(f"[rank 1 of {WORLD}]")
    assert FAILURES[kind] in message0
    assert seconds0 < 10 and seconds1 < 10
    assert ranks[0]["after"] == 3.0  # the group is still usable afterwards


def test_the_distributed_parameter_survives_clone_and_pickle():
    model = LVDDensity(distributed=False, **dict(MEAN, batch_size=None, max_iter=1, finetune_max_iter=0))
    assert clone(model).distributed is False
    fitted = pickle.loads(pickle.dumps(model.fit(_data(30, seed=1))))
    assert fitted.get_params()["distributed"] is False
    assert LVDDensity().distributed == "auto"
    with pytest.raises(ValueError, match="distributed=True needs an initialized torch.distributed process group"):
        LVDDensity(distributed=True, **MEAN).fit(_data(30, seed=1))
