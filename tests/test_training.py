"""The backend trainer and the estimator's default schedule: the stop rule,
step-size halving, early stopping, the full-batch phase, convergence
reporting, objectives and the reduction hook."""

import pickle
import warnings

import numpy as np
import pytest
import torch
from conftest import random_data
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state

from skpc import EinsumNetworkDensity
from skpc.backend import CompiledCircuit, Schedule, SelectedOutput, Trainer, make_leaf
from skpc.backend.train import MAX_STEP_DECAYS
from skpc.base import draw_seed
from skpc.structure import random_binary_trees


def _expected_stop(scores, tol, patience):
    """The epoch (1-based) at which the plateau rule stops, or None: an epoch
    counts when it does not beat the best score so far by more than tol per
    epoch since the best."""
    best, waited = -np.inf, 0
    for epoch, score in enumerate(scores, 1):
        if score > best + tol * (waited + 1):
            best, waited = score, 0
        else:
            waited += 1
            if waited >= patience:
                return epoch
    return None


@pytest.mark.parametrize("tol", [1e-3, 0.5])
@pytest.mark.parametrize("patience", [1, 3])
def test_full_batch_stop_rule_and_n_iter(rng, tol, patience):
    X = random_data(400, 6, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, n_repetitions=2, batch_size=None, max_iter=200,
                                 tol=tol, n_iter_no_change=patience, early_stopping=False, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(X)
    scores = model.train_scores_
    assert model.n_iter_ == len(scores) < 200
    assert _expected_stop(scores, tol, patience) == model.n_iter_
    assert model.converged_
    # full-batch EM never lowers the training log-likelihood
    assert np.all(np.diff(scores) >= -1e-4)


def test_a_creep_slower_than_tol_per_epoch_is_a_plateau():
    from skpc.backend.train import _PhaseState

    state = _PhaseState(params=None)
    scores = [0.0 + 0.6e-4 * i for i in range(10)]  # 0.6 tol per epoch, for ever
    improved = [state.offer(score, None, tol=1e-4) for score in scores]
    assert improved[0] and not any(improved[1:])  # two epochs gain 1.2 tol, but 0.6 tol per epoch
    assert state.waited == 9


def test_not_converged_warns_and_says_what_to_change(rng):
    X = random_data(300, 6, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, n_repetitions=2, batch_size=None, max_iter=2,
                                 tol=1e-12, random_state=0)
    with pytest.warns(ConvergenceWarning, match="increase max_iter"):
        model.fit(X)
    assert not model.converged_
    assert model.n_iter_ == 2


def test_tol_none_runs_every_epoch_without_warning(rng):
    X = random_data(200, 6, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=2, n_repetitions=2, batch_size=None, max_iter=7,
                                 tol=None, random_state=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model.fit(X)
    assert model.n_iter_ == 7 and not model.converged_


def test_warm_start_accumulates_n_iter(rng):
    X = random_data(200, 6, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=2, n_repetitions=2, batch_size=None, max_iter=3,
                                 tol=None, warm_start=True, random_state=0)
    model.fit(X)
    first = model.lower_bound_
    model.fit(X)
    assert model.n_iter_ == 6
    assert model.lower_bound_ >= first - 1e-6


def test_default_fit_converges_without_warning():
    """A fit at default parameters (stochastic EM, early stopping on a
    validation split, then full-batch EM) stops by its own rule."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=3, size=(4, 8))
    X = centers[rng.integers(4, size=1500)] + rng.normal(size=(1500, 8))
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        model = EinsumNetworkDensity(random_state=0).fit(X)
    assert model.converged_
    assert model.validation_scores_ is not None  # "auto" enables it at 1500 rows
    assert model.best_validation_score_ == pytest.approx(max(model.validation_scores_))
    phases = [r for r in model.train_scores_]
    assert len(phases) == model.n_iter_ < model.max_iter + model.max_full_batch_iter


def _split(n_samples, random_state, fraction=0.1):
    """The estimator's validation split, reproduced from its documented seed order."""
    seeds = check_random_state(random_state)
    draw_seed(seeds)  # the structure seed comes first
    order = seeds.permutation(n_samples)
    n_valid = int(round(fraction * n_samples))
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def test_early_stopping_keeps_the_best_parameters_on_the_validation_rows(rng):
    X = random_data(1200, 8, 2, rng)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=6, n_repetitions=3, max_iter=15,
                                 max_full_batch_iter=5, tol=None, random_state=3).fit(X)
    _, valid = _split(1200, 3)
    assert model.best_validation_score_ == pytest.approx(max(model.validation_scores_), abs=1e-9)
    # the returned parameters are the best ones on the held-out rows (float64 query vs float32 training)
    assert model.score(X[valid]) == pytest.approx(model.best_validation_score_, abs=1e-3)
    assert model.lower_bound_ == pytest.approx(model.score(X), abs=1e-9)


def _trainer_setup(rng, n=600, K=4):
    X = random_data(n, 8, 2, rng)
    graph = random_binary_trees(8, 2, 2, random_state=0)
    circuit = CompiledCircuit(graph, K, make_leaf("bernoulli"))
    gen = torch.Generator().manual_seed(0)
    Xt = torch.tensor(X)
    return circuit, Xt, circuit.init_params(Xt, gen, torch.float64), gen


def test_step_size_halves_on_plateaus_and_restarts_from_the_best(rng):
    circuit, X, params, gen = _trainer_setup(rng)
    records = []
    schedule = Schedule(batch_size=50, learning_rate=0.8, max_iter=60, tol=1e-2, n_iter_no_change=2,
                        max_full_batch_iter=0)
    result = Trainer(circuit, schedule, on_epoch=records.append).fit(params, X, gen)
    steps = [r.learning_rate for r in records]
    assert steps[0] == 0.8
    assert all(b in (a, a / 2) for a, b in zip(steps, steps[1:]))  # only halvings
    halvings = [i for i in range(1, len(steps)) if steps[i] < steps[i - 1]]
    assert 1 <= len(halvings) <= MAX_STEP_DECAYS
    for i in halvings:  # each after n_iter_no_change epochs without improvement
        assert not records[i - 1].improved and not records[i - 2].improved
    assert result.converged == (len(records) < 60)


def test_full_batch_phase_reaches_the_closed_form_of_independent_categorical_pixels():
    """K=1, one repetition: independent categorical features, whose maximum
    likelihood is the empirical frequency. With 64 states, mini-batches of 100
    rows see few of them; the default schedule must still end at the closed
    form (the issue's 8-bit image failure: worse than uniform)."""
    rng = np.random.default_rng(0)
    n, d, C = 3000, 12, 64
    probs = rng.dirichlet(np.full(C, 0.3), size=d)
    X = np.stack([rng.choice(C, size=n, p=p) for p in probs], 1).astype(float)
    counts = np.stack([np.bincount(X[:, j].astype(int), minlength=C) for j in range(d)])
    freq = counts / n
    with np.errstate(divide="ignore"):
        closed_form = float(np.sum(counts * np.where(counts > 0, np.log(freq), 0.0)) / n)
    # the maximum-likelihood closed form: no prior (the default "auto" would add 0.05 per outcome)
    model = EinsumNetworkDensity(structure="rat", leaf="categorical", n_categories=C, n_sums=1, n_repetitions=1, depth=2,
                                 early_stopping=False, pseudocount=0.0, random_state=0).fit(X)
    assert model.lower_bound_ == pytest.approx(closed_form, abs=1e-3)
    # default (with the validation split): within 1% of the training rows' closed form
    default = EinsumNetworkDensity(structure="rat", leaf="categorical", n_categories=C, n_sums=1, n_repetitions=1, depth=2,
                                   random_state=0).fit(X)
    assert default.lower_bound_ >= closed_form * 1.01
    uniform = -d * np.log(C)
    assert default.lower_bound_ > uniform


def test_selected_output_objective_is_monotone_under_full_batch_em(rng):
    """EM for "log of output c_n for row n" of a multi-output circuit (LVD's
    sub-circuits): full-batch EM never lowers that objective."""
    X = random_data(400, 8, 2, rng)
    graph = random_binary_trees(8, 2, 2, random_state=1)
    circuit = CompiledCircuit(graph, 3, make_leaf("bernoulli"), multi_output=True)
    gen = torch.Generator().manual_seed(0)
    Xt = torch.tensor(X)
    targets = torch.as_tensor(rng.integers(0, 3, size=400))
    objective = SelectedOutput(targets)
    params = circuit.init_params(Xt, gen, torch.float64)
    records = []
    schedule = Schedule(batch_size=None, max_iter=8, tol=None)
    result = Trainer(circuit, schedule, objective=objective, on_epoch=records.append).fit(params, Xt, gen)
    scores = [r.train for r in records]
    assert np.all(np.diff(scores) >= -1e-9)
    final = objective(circuit.log_prob(Xt, result.params), torch.arange(400)).mean()
    assert float(final) >= scores[-1] - 1e-9
    assert scores[-1] > scores[0] + 0.05


def test_reduction_hook_sees_every_statistic_and_duplicated_ranks_change_nothing(rng):
    """Two identical ranks (the hook doubles every sum) give the same fit as one."""
    circuit, X, params, _ = _trainer_setup(rng, n=300)
    calls = []

    def double(tensors):
        calls.append(len(tensors))
        for t in tensors:
            t.mul_(2)

    schedule = Schedule(batch_size=None, max_iter=4, tol=None)
    one = Trainer(circuit, schedule).fit(params, X, torch.Generator().manual_seed(0))
    two = Trainer(circuit, schedule, reduce=double).fit(params, X, torch.Generator().manual_seed(0))
    for a, b in zip([one.params.leaf, *one.params.tensors()], [two.params.leaf, *two.params.tensors()]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    assert [r.train for r in one.history] == pytest.approx([r.train for r in two.history], rel=1e-12)
    n_stats = 2 + len(circuit.weight_specs)
    assert n_stats in calls and 1 in calls  # the statistics, and the objective totals


def test_adam_raises_the_likelihood(rng):
    """Adam minimizes the negative log-likelihood (a flipped sign would lower it)."""
    X = random_data(400, 6, 2, rng)
    init = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, n_repetitions=2, optimizer="adam", max_iter=1,
                                batch_size=400, learning_rate=1e-9, tol=None, random_state=0).fit(X)
    model = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=4, n_repetitions=2, optimizer="adam", max_iter=30,
                                 batch_size=50, learning_rate=0.05, tol=None, random_state=0).fit(X)
    assert model.lower_bound_ > init.lower_bound_ + 0.1
    assert np.all(np.diff(model.train_scores_[:5]) > 0)


def test_verbose_prints_one_clean_line_per_epoch(rng, capsys):
    X = random_data(300, 6, 2, rng)
    EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=2, n_repetitions=2, batch_size=100, max_iter=3,
                         max_full_batch_iter=2, tol=None, verbose=1, random_state=0).fit(X)
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 5
    assert "epoch 1 stochastic EM" in lines[0] and "epoch 4 full-batch EM" in lines[3]
    assert not any("nan" in line for line in lines)


def test_trainer_state_is_not_pickled_and_refits_are_identical(rng):
    X = random_data(1100, 6, 2, rng)
    a = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=3, n_repetitions=2, max_iter=4, max_full_batch_iter=2,
                             tol=None, random_state=0).fit(X)
    b = pickle.loads(pickle.dumps(a))
    np.testing.assert_array_equal(a.score_samples(X[:50]), b.score_samples(X[:50]))
    c = EinsumNetworkDensity(structure="rat", leaf="bernoulli", n_sums=3, n_repetitions=2, max_iter=4, max_full_batch_iter=2,
                             tol=None, random_state=0).fit(X)
    np.testing.assert_array_equal(a.score_samples(X[:50]), c.score_samples(X[:50]))
