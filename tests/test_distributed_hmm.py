"""Data-parallel EM for HMMLanguageModel on torch.distributed: two gloo
processes, each fitting on its own windows, train the model one process fits
on all windows (random and LVD initialization, full-batch and stochastic EM);
bad input on one process makes every process raise the same ValueError,
quickly, instead of hanging in a collective.

The processes are spawned once for the module (one process group, every case
run in turn in it) with a hard timeout, so a hang fails the tests.
"""

import pickle
import time

import numpy as np
import pytest
from sklearn.base import BaseEstimator, clone

from skpc.hmm import HMMLanguageModel
from skpc.text import SuffixAssigner

from conftest import finish_gloo_worker, join_gloo_group, run_gloo_ranks

WORLD = 2
TIMEOUT = 120  # seconds for the whole group: a hang fails the tests
T, V = 6, 5

SMALL = dict(n_states=3, window=T, dtype="float64", random_state=4)


class ShiftCodes(BaseEstimator):
    """A deterministic assigner without ``sample_indices_``: ``fit`` learns a
    shift from the data, ``transform`` codes every position of its windows
    (so a data-parallel fit sends it to every process, which codes its own)."""

    def __init__(self, n_clusters=2, per_position=True, random_state=None):
        self.n_clusters = n_clusters
        self.per_position = per_position
        self.random_state = random_state

    def fit(self, X, y=None):
        self.shift_ = int(np.bincount(np.asarray(X)[np.asarray(X) >= 0]).argmax())
        return self

    def transform(self, X):
        X = np.asarray(X)
        t = np.arange(X.shape[1]) if self.per_position else 0
        return (np.maximum(X, 0) + self.shift_ + t) % self.n_clusters


# name -> (estimator parameters, rows of rank 0, rows of rank 1)
CASES = {
    "random_full_batch": (
        dict(SMALL, init="random", batch_size=None, max_iter=5, tol=None, early_stopping=False), 70, 50,
    ),
    "random_stochastic": (
        dict(SMALL, init="random", batch_size=16, max_iter=3, max_full_batch_iter=2, tol=None, early_stopping=True,
             validation_fraction=0.2, emission_prior=0.5),
        45, 75,
    ),
    "random_plateau": (  # early stopping and step halving decided on the global validation score
        dict(SMALL, init="random", batch_size=25, max_iter=12, max_full_batch_iter=3, tol=0.05, n_iter_no_change=1),
        60, 60,
    ),
    "lvd_suffix": (  # SuffixAssigner fitted on rank 0 on every training window; its labels_ counted there
        dict(SMALL, init="lvd", assigner=SuffixAssigner(n_components=4, batch_size=64), batch_size=None, max_iter=3,
             tol=None, early_stopping=True),
        50, 40,
    ),
    "lvd_transform": (  # ShiftCodes fitted on rank 0, sent to both; each codes its windows, counts summed
        dict(SMALL, init="lvd", assigner=ShiftCodes(), batch_size=20, max_iter=2, max_full_batch_iter=1, tol=None,
             early_stopping=False, pseudocount=0.3),
        40, 55,
    ),
    "lvd_homogeneous": (
        dict(SMALL, init="lvd", homogeneous=True, assigner=ShiftCodes(), batch_size=None, max_iter=3, tol=None,
             early_stopping=False),
        30, 35,
    ),
    "X_val": (dict(SMALL, init="random", batch_size=None, max_iter=4, tol=None), 50, 30),
}


def _windows(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.integers(0, V - 1, size=(n, T))
    X[:, 1::2] = (X[:, ::2] + rng.integers(0, 2, size=(n, T // 2))) % V  # a dependency for the states
    X[rng.random(X.shape) < 0.1] = -1
    X[:, 0] = np.maximum(X[:, 0], 0)  # every window has an observed token
    return X


def _all_rows(name):
    _, n0, n1 = CASES[name]
    X = _windows(n0 + n1, seed=len(name))
    X[n0 + 2, 3] = V - 1  # the largest token only rank 1 sees: n_tokens must be V on both
    return X, n0


def _state(model):
    return {
        "params": [t.detach().cpu().numpy() for t in [model.params_.leaf, *model.params_.tensors()]],
        "lower_bound": model.lower_bound_,
        "n_iter": model.n_iter_,
        "train_scores": model.train_scores_,
        "validation_scores": model.validation_scores_,
        "n_tokens": model.n_tokens_,
    }


def _X_val():
    return _windows(30, seed=99)


def _run_case(name, rank):
    params, _, _ = CASES[name]
    X, n0 = _all_rows(name)
    mine = X[:n0] if rank == 0 else X[n0:]
    model = HMMLanguageModel(distributed=True, **params)
    if name == "X_val":
        return model.fit(mine, X_val=_X_val()[:20] if rank == 0 else _X_val()[20:])
    return model.fit(mine)


# rank failures: (estimator parameters, what rank 1 passes, the message every rank must raise)
FAILURES = {
    "no_observed_token": (dict(window=T), "window(s) without any observed token"),
    "wrong_window": (dict(window=T), f"X has windows of {T - 1} tokens but window={T}"),
    "window_mismatch": (dict(window=None), f"X has {T - 1} tokens per window, but rank 0's X has {T}"),
    "one_dimensional": (dict(window=T), "Expected 2D array"),
    "negative": (dict(window=T), "Negative values"),
    "X_val_only_on_rank_1": (dict(window=T), "Only ranks [1] of 2 pass X_val"),
}


def _failing_fit(kind, rank):
    params, _ = FAILURES[kind]
    model = HMMLanguageModel(**dict(SMALL, init="random", batch_size=None, max_iter=2, tol=None, distributed=True,
                                    **params))
    X = _windows(30, seed=rank)
    if rank == 1:
        if kind == "no_observed_token":
            X[4] = -1
        elif kind in ("wrong_window", "window_mismatch"):
            X = X[:, : T - 1]
        elif kind == "one_dimensional":
            X = X[:, 0]
        elif kind == "negative":
            X[2, 2] = -3
        elif kind == "X_val_only_on_rank_1":
            return model.fit(X, X_val=_X_val())
    return model.fit(X)


def _worker(rank, store, out):
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
    finish_gloo_worker(rank, results, out)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    """Both ranks' results (a list in rank order), from one spawned group of two gloo processes."""
    return run_gloo_ranks("test_distributed_hmm", tmp_path_factory.mktemp("dist_hmm"), WORLD, TIMEOUT)


def _reference(name):
    params, _, _ = CASES[name]
    X, _ = _all_rows(name)
    model = HMMLanguageModel(distributed=False, **params)
    if name == "X_val":
        return _state(model.fit(X, X_val=_X_val()))
    return _state(model.fit(X))


def _assert_same(state, ref, rtol=1e-9, atol=1e-10):
    assert len(state["params"]) == len(ref["params"])
    for a, b in zip(state["params"], ref["params"]):
        np.testing.assert_allclose(a, b, rtol=rtol, atol=atol)
    assert state["lower_bound"] == pytest.approx(ref["lower_bound"], rel=1e-10)
    assert state["n_iter"] == ref["n_iter"]
    assert state["n_tokens"] == ref["n_tokens"] == V
    np.testing.assert_allclose(state["train_scores"], ref["train_scores"], rtol=1e-10)
    if ref["validation_scores"] is None:
        assert state["validation_scores"] is None
    else:
        np.testing.assert_allclose(state["validation_scores"], ref["validation_scores"], rtol=1e-10)


@pytest.mark.parametrize("name", sorted(CASES))
def test_two_processes_fit_the_one_process_model(ranks, name):
    """Two shards (of unequal sizes) fit the parameters, lower bound, epochs and
    scores of one process on all windows; every rank holds the same model."""
    ref = _reference(name)
    for rank in range(WORLD):
        _assert_same(ranks[rank][name], ref)
    for a, b in zip(ranks[0][name]["params"], ranks[1][name]["params"]):
        np.testing.assert_array_equal(a, b)  # bit-identical on every rank


def test_the_plateau_rule_ran(ranks):
    """The plateau case stopped early: the same decision on both ranks as in one process."""
    state = ranks[0]["random_plateau"]
    assert state["n_iter"] < 12 + 3
    assert state["n_iter"] == ranks[1]["random_plateau"]["n_iter"]


def test_lvd_starts_from_the_codes_of_every_window(ranks):
    """The LVD cases are not the random start: the closed-form counts differ
    from what rank 0's windows alone would give."""
    params, n0, _ = CASES["lvd_transform"]
    X, _ = _all_rows("lvd_transform")
    alone = _state(HMMLanguageModel(distributed=False, **params).fit(X[:n0]))
    assert not np.allclose(alone["params"][0], ranks[0]["lvd_transform"]["params"][0])


@pytest.mark.parametrize("kind", sorted(FAILURES))
def test_bad_input_on_one_rank_raises_the_same_error_everywhere(ranks, kind):
    message0, seconds0 = ranks[0][kind]
    message1, seconds1 = ranks[1][kind]
    assert message0 == message1
    assert message0.startswith(f"[rank 1 of {WORLD}]") or kind == "X_val_only_on_rank_1"
    assert FAILURES[kind][1] in message0
    assert seconds0 < 10 and seconds1 < 10
    assert ranks[0]["after"] == 3.0  # the group is still usable afterwards


def test_the_distributed_parameter_survives_clone_and_pickle():
    model = HMMLanguageModel(distributed=False, n_states=2, window=T, max_iter=1, init="random", tol=None,
                             random_state=0)
    assert clone(model).distributed is False
    fitted = pickle.loads(pickle.dumps(model.fit(_windows(20, seed=1))))
    assert fitted.distributed is False and fitted.get_params()["distributed"] is False
    assert HMMLanguageModel().distributed == "auto"
    with pytest.raises(ValueError, match="distributed=True needs an initialized torch.distributed process group"):
        HMMLanguageModel(distributed=True, n_states=2, window=T).fit(_windows(20, seed=1))
    with pytest.raises(ValueError, match="distributed"):
        HMMLanguageModel(distributed="yes").fit(_windows(20, seed=1))
