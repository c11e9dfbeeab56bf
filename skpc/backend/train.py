"""One trainer for every circuit estimator.

The schedule (the recipe that beat the Einsum Networks paper's Table 1 on
the DEBD development sets, and the default of the estimators):

1. *Stochastic phase*: stochastic EM (or Adam) epochs over shuffled
   mini-batches. After every epoch the model is scored: the mean objective
   on a validation split when one is given, else the epoch's mean training
   objective. An epoch that does not improve the best score by more than
   ``tol`` per epoch since the best counts towards a plateau (a slow creep
   is a plateau too); after ``n_iter_no_change`` such epochs
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

Data-parallel training (``skpc.backend.distributed``): each process holds a
shard of the rows and passes its ``reduce`` and a :class:`RowShard`, where
its rows sit in the global order. Mini-batches are then drawn as ONE global
permutation of all training rows (the same generator on every process, the
same draws as one process on all rows), and each process takes its share of
every global batch, possibly none of it: every process joins every
collective, and the statistics summed across processes are those of the
global batch. Every figure a decision reads (epoch means, validation scores,
non-finite checks) is reduced first, so every process stops at the same
epoch with the same parameters.

Data: the trainer reads rows through ``X[index]`` (an index tensor),
``X.shape`` and ``X.device``: a torch tensor, or an :class:`ArrayRows`, which
streams the rows of a numpy array (a ``numpy.memmap``) to the device a batch
at a time, never materializing the array or a float copy of it.
"""

import math
import mmap
import numbers
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .em import e_step, log_likelihood, m_step
from .gradient import constrain, detach_params, unconstrain
from .numerics import flushing_subnormals

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
    pseudocount : float >= 0
        MAP-EM (``em.m_step``): a symmetric Dirichlet pseudocount on every sum
        weight and a conjugate prior worth this many pseudo-observations on
        every leaf density; 0 is maximum-likelihood EM. The prior is that of
        all training rows: a mini-batch of B of the N training rows adds
        ``pseudocount * B / N`` (after the statistics are summed across
        processes), so one epoch adds it once. Ignored by Adam.
    softening : float in (0, 1]
        Data softening (Liu & Van den Broeck 2021), beta: EM learns from the
        softened training rows, in which every observed value x is replaced
        by each state c of its leaf with weight q(c | x), beta for x itself
        and (1 - beta) / (C - 1) for each of the other C - 1 states. The
        posteriors (and so the sum weights' statistics) are those of that
        soft evidence; a leaf's statistics are the softened data's, E_q[T]
        (``leaf.soft_expected_statistics``), so its estimate is smoothed in
        closed form (a Bernoulli leaf on rows that all show 1 gets p =
        beta). Only training steps see it: validation scores use the data
        as it is, so early stopping judges the model itself. A training
        epoch's mean (``EpochRecord.train``) is the log-likelihood of the
        soft evidence. It needs discrete leaves with finitely many states
        (Bernoulli, binomial, categorical; ``Trainer`` raises ValueError
        for others) and EM (ValueError with Adam), and only beta > 1/C
        keeps the observed state the most likely; 0.9 to 0.99 are
        typical. 1: off.
    """

    optimizer: str = "em"
    max_iter: int = 100
    batch_size: object = 100
    learning_rate: object = None
    tol: object = 1e-4
    n_iter_no_change: int = 3
    max_full_batch_iter: int = 50
    pseudocount: float = 0.0
    softening: float = 1.0

    def __post_init__(self):
        value = self.pseudocount
        if not (isinstance(value, numbers.Real) and math.isfinite(value) and value >= 0):
            raise ValueError(f"pseudocount={self.pseudocount!r} must be a finite number >= 0 (0: plain EM).")
        value = self.softening
        if not (isinstance(value, numbers.Real) and 0 < value <= 1):
            raise ValueError(
                f"softening={self.softening!r} must be a number in (0, 1]: the probability of keeping each "
                "observed value (1: no softening; e.g. 0.95)."
            )
        if value != 1.0 and self.optimizer != "em":
            raise ValueError(
                f"softening={value!r} is a training option of EM (optimizer='em'), not of {self.optimizer!r}: "
                "use optimizer='em' or softening=1.0."
            )


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


@dataclass
class RowShard:
    """Where one process's rows sit among all processes' rows (data-parallel training).

    Attributes
    ----------
    offset : int
        The global position of this process's first row (rank 0's rows come first).
    n_total : int
        Rows of all processes together.
    """

    offset: int
    n_total: int


def batches(n_samples, batch_size, generator=None, device="cpu", shard=None):
    """Index tensors of consecutive batches; shuffled when a generator is given.

    With a :class:`RowShard`, the batches of a permutation of all
    ``shard.n_total`` rows, each restricted to this process's ``n_samples``
    rows (local indices; some may be empty): every process draws the same
    permutation, so together they take the batches one process would.
    """
    n_total = n_samples if shard is None else shard.n_total
    if generator is None:
        order = torch.arange(n_total, device=device)
    else:
        order = torch.randperm(n_total, generator=generator, device=generator.device).to(device)
    step = n_total if batch_size is None else batch_size
    parts = [order[i : i + step] for i in range(0, n_total, step)]
    if shard is None:
        return parts
    return [part[(part >= shard.offset) & (part < shard.offset + n_samples)] - shard.offset for part in parts]


def _chunks(n_samples, chunk_size, device):
    """Consecutive index chunks of ``n_samples`` rows; one empty chunk when there is no row
    (a process without rows still joins the collectives with zero statistics)."""
    parts = batches(n_samples, chunk_size, device=device)
    return parts if parts else [torch.arange(0, device=device)]


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


def _figures(total, rows, device):
    """(objective total, rows) as a float64 tensor, to reduce with the statistics."""
    return torch.tensor([float(total), float(rows)], dtype=torch.float64, device=device)


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
    shard : RowShard or None
        This process's place among all processes' training rows
        (data-parallel training with ``reduce``); None: X holds every row.
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
        shard=None,
    ):
        # before any work: the leaves must allow the schedule's softening
        circuit.leaf.check_softening(schedule.softening)
        self.circuit = circuit
        self.shard = shard
        self.schedule = schedule
        self.objective = objective
        self.valid_objective = valid_objective if valid_objective is not None else objective
        self.reduce = reduce if reduce is not None else _no_reduce
        self.on_epoch = on_epoch
        self.on_batch = on_batch
        self.evidence = evidence
        self.valid_evidence = valid_evidence

    # ------------------------------------------------------------- scoring
    @flushing_subnormals
    def score(self, X, params, objective=None, evidence=None):
        """Mean objective over the rows of X (reduced across processes); the
        validation objective and evidence unless others are given."""
        objective = objective if objective is not None else self.valid_objective
        evidence = evidence if evidence is not None else self.valid_evidence
        total = 0.0
        if X.shape[0] > 0:  # a process may hold no validation row; it still joins the reduction
            output = self.circuit.log_prob_in_chunks(X, params, evidence)
            total = float(objective(output, torch.arange(X.shape[0], device=X.device)).sum())
        return _Totals(self.reduce, X.device).mean(total, X.shape[0])

    # -------------------------------------------------------------- epochs
    @flushing_subnormals
    def em_step(self, X, params, learning_rate):
        """One EM update from the statistics of all rows of X (reduced across
        processes), with step size ``learning_rate`` in (0, 1]: full-batch EM
        (step 1), or one stochastic-EM step on the batch X (``partial_fit``).
        The schedule's full ``pseudocount`` is added: X is taken for the
        whole training set (``partial_fit`` cannot know the stream's size),
        and the schedule's ``softening`` applies: X is training data.

        Returns (new parameters, mean objective of the rows at ``params``).
        """
        stats, total = None, 0.0
        for idx in _chunks(X.shape[0], self.circuit.chunk_size(), X.device):
            # the first chunk's statistics are the sum that later chunks add to in place
            value, stats = e_step(
                self.circuit, X[idx], params, self.objective, idx, self.evidence, self.schedule.softening, into=stats
            )
            total += float(value.sum())
        figures = _figures(total, X.shape[0], X.device)
        self.reduce([figures])
        self.reduce(stats.tensors())
        mean = float(figures[0] / figures[1])
        _check_finite(mean)
        return m_step(self.circuit, params, stats, learning_rate, self.schedule.pseudocount), mean

    def _full_batch_em_epoch(self, X, params, learning_rate):
        return self.em_step(X, params, learning_rate)

    def _stochastic_em_epoch(self, X, params, learning_rate, generator, epoch):
        parts = batches(X.shape[0], self.schedule.batch_size, generator, X.device, self.shard)
        n_total = X.shape[0] if self.shard is None else self.shard.n_total
        total, rows = 0.0, 0.0
        for i, idx in enumerate(parts):
            value, stats = e_step(self.circuit, X[idx], params, self.objective, idx, self.evidence, self.schedule.softening)
            figures = _figures(value.sum(), len(idx), X.device)
            self.reduce([figures])  # the global batch's totals and statistics
            self.reduce(stats.tensors())
            batch_total, batch_rows = float(figures[0]), float(figures[1])
            _check_finite(batch_total)
            total, rows = total + batch_total, rows + batch_rows
            # the batch's share of the prior, added once to the summed statistics
            pseudocount = self.schedule.pseudocount * batch_rows / n_total
            params = m_step(self.circuit, params, stats, learning_rate, pseudocount)
            if self.on_batch is not None:
                self.on_batch(epoch, i, len(parts), batch_total / batch_rows)
        return params, float(total / rows)

    def _adam_epoch(self, X, state, generator, epoch):
        tensors, optimizer, params_like = state
        parts = batches(X.shape[0], self.schedule.batch_size, generator, X.device, self.shard)
        total, rows = 0.0, 0.0
        for i, idx in enumerate(parts):
            optimizer.zero_grad()
            masks = self.evidence(idx) if self.evidence is not None else None
            params = constrain(self.circuit, params_like, tensors)
            output = self.circuit.log_prob(X[idx], params, masks)
            value = self.objective(output, idx)
            figures = _figures(value.detach().sum(), len(idx), X.device)
            self.reduce([figures])
            batch_total, batch_rows = float(figures[0]), float(figures[1])
            _check_finite(batch_total)
            (-value.sum() / batch_rows).backward()  # the mean over the (global) batch
            for t in tensors:  # a process without rows in the batch contributes zeros
                if t.grad is None:
                    t.grad = torch.zeros_like(t)
            self.reduce([t.grad for t in tensors])
            optimizer.step()
            total, rows = total + batch_total, rows + batch_rows
            if self.on_batch is not None:
                self.on_batch(epoch, i, len(parts), batch_total / batch_rows)
        with torch.no_grad():
            params = detach_params(self.circuit, constrain(self.circuit, params_like, tensors))
        return params, float(total / rows)

    # ----------------------------------------------------------------- fit
    @flushing_subnormals
    def fit(self, params, X, generator, X_valid=None):
        """Train from ``params`` on X (N, D) (NaN = missing); X_valid for early stopping.

        Returns
        -------
        TrainingResult
        """
        s = self.schedule
        n_total = X.shape[0] if self.shard is None else self.shard.n_total
        stochastic = s.batch_size is not None and s.batch_size < n_total
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
        than tol per epoch since the best: ``tol * (waited + 1)``, so that a
        creep slower than tol per epoch ends the phase (compared with the
        best alone, 0.6 tol per epoch passed every second epoch and a
        12-row fit ran into max_full_batch_iter). With tol None nothing
        counts towards a plateau."""
        improved = score > self.best_score + (0.0 if tol is None else tol * (self.waited + 1))
        if improved:
            self.best_score, self.best_params, self.waited = score, params, 0
        elif tol is not None:
            self.waited += 1
        return improved



# ---------------------------------------------------------------- data
# File pages of a memory map that were read are released from this process
# once this many bytes were read since the last release: they stay in the
# page cache (a second epoch reads them from memory), but not in the
# process's resident set, which a memory-mapped file would otherwise fill.
RELEASE_BYTES = 2**25
# Elements (rows x features) per chunk when a whole array is scanned on the host.
SCAN_ELEMENTS = 2**20


def _malloc_trim():
    """glibc's ``malloc_trim(0)``, or None elsewhere.

    Streaming allocates and frees a chunk-sized array per batch; glibc then
    raises its mmap threshold to that size and serves the chunks from the
    heap, which fragments and keeps growing (measured: 100 to 250 MiB more
    peak RSS, run to run, over a 200 MB memmap). Trimming when the memory
    map's pages are released hands the free heap pages back as well.
    """
    try:
        import ctypes

        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    return trim


_TRIM = _malloc_trim() if sys.platform.startswith("linux") else None


def trim_heap():
    """Hand the C heap's free pages back to the system (glibc; a no-op elsewhere): after the
    large temporaries of a streaming fit's initialization, so that they do not stay resident."""
    if _TRIM is not None:
        _TRIM(0)


def _find_mmap(array):
    """(the mmap.mmap under a numpy array, whether its pages may be released), or (None, False)."""
    releasable, node = True, array
    while node is not None:
        if isinstance(node, mmap.mmap):
            return node, releasable
        if getattr(node, "mode", None) == "c":  # a private (copy-on-write) map: releasing drops writes
            releasable = False
        node = getattr(node, "base", None)
    return None, False


class ArrayRows:
    """The rows of a 2-D numpy array (e.g. a ``numpy.memmap``), read on demand.

    ``rows[index]`` (an index tensor) converts just those rows to a (B, D)
    tensor of ``dtype`` on ``device``; ``shape`` and ``device`` are those of
    the tensor the rows would make. What the trainer and
    ``CompiledCircuit.log_prob_in_chunks`` read: a full-batch pass reads
    ``chunk_size()`` rows at a time, a stochastic epoch one mini-batch at a
    time, so a data set larger than memory streams through. Pages of a
    memory map are released every ``RELEASE_BYTES`` read (see there).

    Parameters
    ----------
    array : ndarray of shape (n_rows, n_features), any real dtype
    rows : int ndarray of shape (n,) or None
        The rows of ``array`` this view holds, in order; None: all.
    dtype : torch.dtype
    device : torch.device or str
    """

    def __init__(self, array, rows=None, dtype=torch.float32, device="cpu"):
        self.array = array
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        self.dtype = dtype
        self.device = torch.device(device)
        n = array.shape[0] if rows is None else len(self.rows)
        self.shape = (n, array.shape[1])
        self._mmap, self._releasable = _find_mmap(array)
        self._unreleased = 0

    def __len__(self):
        return self.shape[0]

    def _source_rows(self, index):
        index = np.asarray(index.cpu() if torch.is_tensor(index) else index, dtype=np.int64)
        return index if self.rows is None else self.rows[index]

    def read(self, index, dtype=np.float64):
        """The rows ``index`` (local positions) as a new numpy array of ``dtype``."""
        source = self._source_rows(index)
        if self._mmap is None or not self._releasable:
            return self._gather(source, dtype)
        # a memory map: in pieces of at most RELEASE_BYTES of pages, released in between
        row_bytes = max(self.array.shape[1] * self.array.dtype.itemsize, mmap.PAGESIZE)
        step = max(1, RELEASE_BYTES // row_bytes)
        if len(source) <= step:
            block = self._gather(source, dtype)
            self._account(len(source))
            return block
        block = np.empty((len(source), self.array.shape[1]), dtype=dtype)
        for start in range(0, len(source), step):
            block[start : start + step] = self._gather(source[start : start + step], dtype)
            self._account(min(step, len(source) - start))
        return block

    def _gather(self, source, dtype):
        if len(source) and source[-1] - source[0] + 1 == len(source) and np.all(np.diff(source) == 1):
            return np.array(self.array[source[0] : source[-1] + 1], dtype=dtype)  # contiguous: one slice
        return np.asarray(self.array[source], dtype=dtype)  # fancy indexing copies just these rows

    def __getitem__(self, index):
        block = self.read(index, dtype=torch.empty(0, dtype=self.dtype).numpy().dtype)
        return torch.from_numpy(block).to(self.device)

    def chunks(self, n_rows=None):
        """(start, float64 ndarray) of consecutive chunks of the rows, for checks on the host."""
        n_rows = n_rows or max(1, SCAN_ELEMENTS // max(1, self.shape[1]))
        for start in range(0, self.shape[0], n_rows):
            yield start, self.read(np.arange(start, min(start + n_rows, self.shape[0])))

    def subset(self, positions):
        """The view of the rows at ``positions`` (local) of this one."""
        rows = np.asarray(positions, dtype=np.int64) if self.rows is None else self.rows[positions]
        return ArrayRows(self.array, rows, self.dtype, self.device)

    def _account(self, n_read):
        if self._mmap is None or not self._releasable:
            return
        row_bytes = self.array.shape[1] * self.array.dtype.itemsize
        self._unreleased += n_read * max(row_bytes, mmap.PAGESIZE)
        if self._unreleased >= RELEASE_BYTES:
            self.release()

    def release(self):
        """Drop the memory map's pages from this process's resident set (they stay in the page cache)."""
        if self._mmap is not None and self._releasable and hasattr(self._mmap, "madvise"):
            self._mmap.madvise(mmap.MADV_DONTNEED)
            if _TRIM is not None:
                _TRIM(0)
        self._unreleased = 0
