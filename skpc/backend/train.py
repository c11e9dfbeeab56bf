"""One trainer for every circuit estimator.

The schedule (the recipe that beat the Einsum Networks paper's Table 1 on
the DEBD development sets, and the default of the estimators):

1. *Stochastic phase*: stochastic EM (or Adam) epochs over shuffled
   mini-batches. After every epoch the model is scored: the mean objective
   on a validation split when one is given, else the epoch's mean training
   objective. An epoch that does not improve the best score by more than
   ``tol`` counts towards a plateau; after ``n_iter_no_change`` such epochs
   the step size is halved and training resumes from the best parameters,
   at most ``MAX_STEP_DECAYS`` times; the next plateau ends the phase.
   With ``batch_size=None`` the phase is full-batch EM (no step decay: its
   step is exact).
2. *Full-batch phase* (EM only, after a stochastic phase): full-batch EM
   epochs (step 1: each the exact maximizer of the expected complete
   log-likelihood over all training rows, free of mini-batch noise) from
   the best parameters, while they improve the score by more than ``tol``
   (same plateau rule), at most ``max_full_batch_iter`` epochs. This is what
   brings leaves with many states (256-level pixels) to the full-batch fixed
   point: a mini-batch of 100 rows sees at most 100 of a pixel's values.

With a validation split the best parameters on it are returned (early
stopping). The trainer prints nothing: each epoch's record goes to an
``on_epoch`` callback.

Objective: a callable ``(output, index) -> (B,)`` from the circuit's output
for a batch (``(B,)`` or ``(B, K)`` for a multi-output circuit) and the
batch's row indices; the default is the log-likelihood. Reduction hook:
``reduce(tensors)`` sums a list of tensors in place across processes (an
all-reduce for data-parallel training); it is applied to the expected
statistics and objective totals before every M-step, to Adam's gradients,
and to validation totals, so every process takes the same decisions.
"""

import math
import time
from dataclasses import dataclass, field

import torch

from .em import e_step, log_likelihood, m_step
from .gradient import constrain, detach_params, unconstrain

# Step-size halvings on plateaus before the stochastic phase ends.
MAX_STEP_DECAYS = 5
# Default learning rates (step sizes): stochastic EM, Adam.
DEFAULT_EM_LEARNING_RATE = 0.5
DEFAULT_ADAM_LEARNING_RATE = 0.01


@dataclass
class Schedule:
    """What the trainer runs (see the module docstring).

    Attributes
    ----------
    optimizer : {"em", "adam"}
    max_iter : int
        Epochs of the stochastic (or full-batch) phase at most.
    batch_size : int or None
        Rows per mini-batch, or None for full-batch EM.
    learning_rate : float or None
        Initial EM step size in (0, 1] or Adam step; None for the default.
    tol : float or None
        An improvement of the score by at most this much is none; None: no
        plateau rule (every phase runs its full number of epochs).
    n_iter_no_change : int
        Epochs without improvement that make a plateau.
    max_full_batch_iter : int
        Epochs of the full-batch phase at most (0: none).
    """

    optimizer: str = "em"
    max_iter: int = 100
    batch_size: object = 100
    learning_rate: object = None
    tol: object = 1e-4
    n_iter_no_change: int = 3
    max_full_batch_iter: int = 50


@dataclass
class EpochRecord:
    """One epoch of training.

    Attributes
    ----------
    epoch : int
    phase : {"stochastic EM", "full-batch EM", "Adam"}
    train : float
        Mean training objective during the epoch.
    valid : float or None
        Validation score after the epoch.
    improved : bool
        Whether it improved the best score by more than ``tol``.
    learning_rate : float
        The step size of the epoch.
    seconds : float
        Since the start of training.
    """

    epoch: int
    phase: str
    train: float
    valid: object
    improved: bool
    learning_rate: float
    seconds: float


@dataclass
class TrainingResult:
    """What ``Trainer.fit`` returns.

    Attributes
    ----------
    params : CircuitParams
        The trained (best) parameters.
    n_iter : int
        Epochs run.
    converged : bool
        Whether the last phase ended by its plateau rule rather than its epoch limit.
    best_score : float
        The score of ``params``.
    history : list of EpochRecord
    """

    params: object
    n_iter: int
    converged: bool
    best_score: float
    history: list = field(default_factory=list)


def _no_reduce(tensors):
    return None


def batches(n_samples, batch_size, generator=None, device="cpu"):
    """Index tensors of consecutive batches; shuffled when a generator is given."""
    if generator is None:
        order = torch.arange(n_samples, device=device)
    else:
        order = torch.randperm(n_samples, generator=generator, device=generator.device).to(device)
    step = n_samples if batch_size is None else batch_size
    return [order[i : i + step] for i in range(0, n_samples, step)]


def _check_finite(value):
    if not math.isfinite(value):
        raise FloatingPointError(
            "The training log-likelihood became non-finite; lower learning_rate, raise min_var, "
            "or check X for extreme values."
        )


class _Totals:
    """Running (sum of the objective, rows) of one pass, reduced across processes."""

    def __init__(self, reduce, device):
        self.reduce = reduce
        self.device = device

    def mean(self, total, rows):
        figures = torch.tensor([float(total), float(rows)], dtype=torch.float64, device=self.device)
        self.reduce([figures])
        return float(figures[0] / figures[1])


class Trainer:
    """Trains a circuit's parameters on a data set by a :class:`Schedule`.

    Parameters
    ----------
    circuit : CompiledCircuit
    schedule : Schedule
    objective : callable (output, index) -> (B,), default log-likelihood
    valid_objective : callable, default ``objective``; for the validation rows
    reduce : callable(list of tensors), default none (one process)
    on_epoch, on_batch : callbacks for progress (EpochRecord; epoch, batch, n_batches, mean)
    evidence, valid_evidence : callable row indices -> {region: (B, K) bool}, optional
        Evidence on internal regions for the training rows and for the
        validation rows (e.g. ``em.LatentEvidence``: materialized latents,
        LVD's training on the joint likelihood of X and Z).
    """

    def __init__(
        self,
        circuit,
        schedule,
        objective=log_likelihood,
        valid_objective=None,
        reduce=None,
        on_epoch=None,
        on_batch=None,
        evidence=None,
        valid_evidence=None,
    ):
        self.circuit = circuit
        self.schedule = schedule
        self.objective = objective
        self.valid_objective = valid_objective if valid_objective is not None else objective
        self.reduce = reduce if reduce is not None else _no_reduce
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self.evidence = evidence
        self.valid_evidence = valid_evidence

    # ------------------------------------------------------------- scoring
    def score(self, X, params, objective=None, evidence=None):
        """Mean objective over the rows of X (reduced across processes); the
        validation objective and evidence unless others are given."""
        objective = objective if objective is not None else self.valid_objective
        evidence = evidence if evidence is not None else self.valid_evidence
        output = self.circuit.log_prob_in_chunks(X, params, evidence)
        total = float(objective(output, torch.arange(X.shape[0], device=X.device)).sum())
        return _Totals(self.reduce, X.device).mean(total, X.shape[0])

    # -------------------------------------------------------------- epochs
    def _full_batch_em_epoch(self, X, params, learning_rate):
        stats, total = None, 0.0
        for idx in batches(X.shape[0], self.circuit.chunk_size(), device=X.device):
            value, batch_stats = e_step(self.circuit, X[idx], params, self.objective, idx, self.evidence)
            total += float(value.sum())
            if stats is None:
                stats = batch_stats
            else:
                stats += batch_stats
        mean = _Totals(self.reduce, X.device).mean(total, X.shape[0])
        _check_finite(mean)
        self.reduce(stats.tensors())
        return m_step(self.circuit, params, stats, learning_rate), mean

    def _stochastic_em_epoch(self, X, params, learning_rate, generator, epoch):
        parts = batches(X.shape[0], self.schedule.batch_size, generator, X.device)
        total = 0.0
        for i, idx in enumerate(parts):
            value, stats = e_step(self.circuit, X[idx], params, self.objective, idx, self.evidence)
            batch_total = float(value.sum())
            _check_finite(batch_total)
            total += batch_total
            self.reduce(stats.tensors())
            params = m_step(self.circuit, params, stats, learning_rate)
            if self.on_batch is not None:
                self.on_batch(epoch, i, len(parts), batch_total / len(idx))
        return params, _Totals(self.reduce, X.device).mean(total, X.shape[0])

    def _adam_epoch(self, X, state, generator, epoch):
        tensors, optimizer, params_like = state
        parts = batches(X.shape[0], self.schedule.batch_size, generator, X.device)
        total = 0.0
        for i, idx in enumerate(parts):
            optimizer.zero_grad()
            masks = self.evidence(idx) if self.evidence is not None else None
            output = self.circuit.log_prob(X[idx], constrain(self.circuit, params_like, tensors), masks)
            value = self.objective(output, idx)
            batch_total = float(value.detach().sum())
            _check_finite(batch_total)
            rows = torch.tensor([float(len(idx))], dtype=torch.float64, device=X.device)
            self.reduce([rows])
            (-value.sum() / float(rows)).backward()  # the mean over the (global) batch
            self.reduce([t.grad for t in tensors])
            optimizer.step()
            total += batch_total
            if self.on_batch is not None:
                self.on_batch(epoch, i, len(parts), batch_total / len(idx))
        with torch.no_grad():
            params = detach_params(self.circuit, constrain(self.circuit, params_like, tensors))
        return params, _Totals(self.reduce, X.device).mean(total, X.shape[0])

    # ----------------------------------------------------------------- fit
    def fit(self, params, X, generator, X_valid=None):
        """Train from ``params`` on X (N, D) (NaN = missing); X_valid for early stopping.

        Returns
        -------
        TrainingResult
        """
        s = self.schedule
        stochastic = s.batch_size is not None and s.batch_size < X.shape[0]
        run = _Run(self, X, X_valid, generator, params)
        if s.optimizer == "adam":
            learning_rate = s.learning_rate if s.learning_rate is not None else DEFAULT_ADAM_LEARNING_RATE
            run.phase("Adam", learning_rate, s.max_iter, decays=MAX_STEP_DECAYS)
        elif stochastic:
            learning_rate = s.learning_rate if s.learning_rate is not None else DEFAULT_EM_LEARNING_RATE
            run.phase("stochastic EM", learning_rate, s.max_iter, decays=MAX_STEP_DECAYS)
            if s.max_full_batch_iter > 0:
                if X_valid is None:
                    # training scores of the two phases are not comparable: epoch
                    # means under moving parameters, then exact log-likelihoods
                    run.state.best_score = -math.inf
                run.params = run.state.best_params
                run.phase("full-batch EM", 1.0, s.max_full_batch_iter, decays=0)
        else:
            learning_rate = s.learning_rate if s.learning_rate is not None else 1.0
            run.phase("full-batch EM", learning_rate, s.max_iter, decays=0)
        if X_valid is None and run.last_phase == "full-batch EM":
            # EM never lowers the training log-likelihood: its last update is its best
            best = run.params
        else:
            best = run.state.best_params
        return TrainingResult(best, len(run.history), run.converged, run.state.best_score, run.history)

    def _adam_state(self, params, learning_rate):
        tensors = unconstrain(self.circuit, params)
        return tensors, torch.optim.Adam(tensors, lr=learning_rate), params


class _Run:
    """The mutable state of one ``Trainer.fit``: parameters, best so far, history."""

    def __init__(self, trainer, X, X_valid, generator, params):
        self.trainer, self.X, self.X_valid, self.generator = trainer, X, X_valid, generator
        self.params = params
        self.state = _PhaseState(params)
        self.history = []
        self.converged = False
        self.last_phase = None
        self.start = time.perf_counter()

    def _epoch(self, phase, learning_rate, adam_state):
        """One epoch: (new parameters, mean training objective, the parameters that figure scores)."""
        t, X, epoch = self.trainer, self.X, len(self.history) + 1
        if phase == "Adam":
            new, mean = t._adam_epoch(X, adam_state, self.generator, epoch)
            return new, mean, new
        if phase == "stochastic EM":
            new, mean = t._stochastic_em_epoch(X, self.params, learning_rate, self.generator, epoch)
            return new, mean, new  # the epoch mean is a proxy for the end-of-epoch parameters
        new, mean = t._full_batch_em_epoch(X, self.params, learning_rate)
        return new, mean, self.params  # the E-step scores the parameters before the update

    def phase(self, phase, learning_rate, max_epochs, decays):
        """Run epochs until a plateau (after at most ``decays`` halvings of the learning rate) or ``max_epochs``."""
        t = self.trainer
        tol, patience = t.schedule.tol, t.schedule.n_iter_no_change
        self.last_phase, self.converged = phase, False
        self.state.waited = 0
        adam_state = t._adam_state(self.params, learning_rate) if phase == "Adam" else None
        for _ in range(max_epochs):
            new, train_mean, scored = self._epoch(phase, learning_rate, adam_state)
            if self.X_valid is not None:
                valid = t.score(self.X_valid, new)
                improved = self.state.offer(valid, new, tol)
            else:
                valid = None
                improved = self.state.offer(train_mean, scored, tol)
            self.params = new
            record = EpochRecord(
                len(self.history) + 1, phase, train_mean, valid, improved, learning_rate, time.perf_counter() - self.start
            )
            self.history.append(record)
            if t.on_epoch is not None:
                t.on_epoch(record)
            if self.state.waited >= patience:
                if decays > 0:
                    decays -= 1
                    learning_rate *= 0.5
                    self.state.waited = 0
                    self.params = self.state.best_params
                    if adam_state is not None:
                        adam_state = t._adam_state(self.params, learning_rate)
                    continue
                self.converged = True
                return


class _PhaseState:
    """The best score and parameters so far, and epochs since an improvement."""

    def __init__(self, params):
        self.best_score = -math.inf
        self.best_params = params
        self.waited = 0

    def offer(self, score, params, tol):
        """Record a score of ``params``; True when it improves the best by more
        than tol. With tol None nothing counts towards a plateau."""
        improved = score > self.best_score + (0.0 if tol is None else tol)
        if improved:
            self.best_score, self.best_params, self.waited = score, params, 0
        elif tol is not None:
            self.waited += 1
        return improved

