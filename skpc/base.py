"""What the circuit estimators share: device and seed resolution, progress
lines and convergence warnings, and pickling of torch state."""

import sys
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array

# Bumped whenever the pickled layout of a fitted estimator changes; a pickle
# of another layout is refused with a clear error instead of misbehaving.
SERIALIZATION_VERSION = 4  # 2: named weight tensors, leaf_, fitted circuit parameters; 3: n_hclt, pseudocount, distributed; 4: softening, pseudocount per distribution

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device):
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> torch.device; a clear ValueError otherwise or without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        resolved = None
    if resolved is None or resolved.type not in ("cpu", "cuda"):
        raise ValueError(f"device={device!r} is not supported; use 'cpu', 'cuda', 'cuda:N' or 'auto'.")
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='cpu' or device='auto'."
        )
    return resolved


def resolve_dtype(dtype):
    return _DTYPES[dtype]


def torch_generator(seed, device):
    """A torch.Generator on ``device`` seeded with the int ``seed``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def make_generator(random_state, device):
    """One torch.Generator on ``device``, seeded from sklearn's random_state semantics.

    Every random call of a query draws from it, so equal seeds give equal results.
    """
    return torch_generator(draw_seed(check_random_state(random_state)), device)


def draw_seed(random_state):
    """An int seed drawn on the host from a numpy RandomState: the same on every device."""
    return int(random_state.randint(np.iinfo(np.int32).max))


# Rows (or windows) from which early_stopping="auto" holds out a validation
# split. Even small data gains: without it, EM drives Gaussian leaves of a
# 10 x 10-sum circuit onto single training points (30 rows of N(0, I_3):
# held-out log-likelihood -80.9 nats, with a 3-row split -4.5, the truth -4.3).
AUTO_EARLY_STOPPING_ROWS = 20


def validation_split(n_samples, early_stopping, validation_fraction, seeds, unit="rows"):
    """(train rows, validation rows or None) of ``n_samples`` training rows.

    ``early_stopping`` "auto" holds out rows from ``AUTO_EARLY_STOPPING_ROWS``
    on; ``seeds`` is the fit's numpy RandomState (drawn on the host);
    ``unit`` names the rows in the error message ("windows" for an HMM).
    """
    enabled = early_stopping
    if enabled == "auto":
        enabled = n_samples >= AUTO_EARLY_STOPPING_ROWS
    if not enabled:
        return np.arange(n_samples), None
    n_valid = int(round(validation_fraction * n_samples))
    if n_valid < 1 or n_valid >= n_samples:
        raise ValueError(
            f"early_stopping with validation_fraction={validation_fraction} leaves {n_valid} of "
            f"{n_samples} {unit} for validation; use more {unit}, another validation_fraction, or "
            "early_stopping=False."
        )
    order = seeds.permutation(n_samples)
    return np.sort(order[n_valid:]), np.sort(order[:n_valid])


def check_no_inf(X):
    """Refuse inf in X (NaN marks a missing entry; inf is a value no leaf models)."""
    if np.isinf(X).any():
        raise ValueError("X contains inf; replace it by a finite value, or by NaN to mark it missing.")


def check_validation_rows(X_val, n_features, early_stopping, leaf):
    """``fit``'s X_val: a float64 array (n_val, n_features) the fitted leaf can model."""
    if early_stopping is False:
        raise ValueError("X_val was given but early_stopping=False; set early_stopping=True or 'auto' to use it.")
    X_val = check_array(X_val, dtype=np.float64, ensure_all_finite=False)
    if X_val.shape[1] != n_features:
        raise ValueError(
            f"X_val has {X_val.shape[1]} features, but X has {n_features}; pass validation rows "
            "with the same features."
        )
    check_no_inf(X_val)
    leaf.validate(X_val)
    return X_val


class ProgressPrinter:
    """Prints one line per training epoch (verbose >= 1) and per batch (verbose >= 2).

    Nothing of it is pickled: estimators build one per ``fit``.
    """

    def __init__(self, name, verbose, stream=None):
        self.name, self.verbose = name, verbose
        self.stream = stream if stream is not None else sys.stdout

    def epoch(self, record):
        if not self.verbose:
            return
        valid = "" if record.valid is None else f"  valid {record.valid:.4f}"
        mark = "  *" if record.improved else ""
        print(
            f"[{self.name}] epoch {record.epoch} {record.phase} (step {record.learning_rate:.3g})  "
            f"train {record.train:.4f}{valid}{mark}  {record.seconds:.1f}s",
            file=self.stream,
            flush=True,
        )

    def batch(self, epoch, index, n_batches, mean):
        if self.verbose >= 2:
            print(f"[{self.name}] epoch {epoch} batch {index + 1}/{n_batches} train {mean:.4f}", file=self.stream)

    def stage(self, message):
        """A line for a stage of a longer fit (structure learning, clustering, ...)."""
        if self.verbose:
            print(f"[{self.name}] {message}", file=self.stream, flush=True)


def check_finite_lower_bound(lower_bound):
    """``lower_bound`` (the final mean training log-likelihood), or the
    ValueError of a fit whose parameters give a non-finite one."""
    if not np.isfinite(lower_bound):
        raise ValueError(
            "Training ended with a non-finite log-likelihood; lower learning_rate, raise min_var, "
            "or check X for extreme values."
        )
    return lower_bound


def warn_not_converged(name, result, schedule):
    """The ConvergenceWarning of a fit that ran out of epochs while still improving."""
    last = result.history[-1].phase if result.history else "training"
    limit = "max_full_batch_iter" if last == "full-batch EM" and schedule.batch_size is not None else "max_iter"
    value = getattr(schedule, limit)
    warnings.warn(
        f"{name} stopped after {limit}={value} epochs of {last} while still improving by more than "
        f"tol={schedule.tol}; increase {limit}, or raise tol.",
        ConvergenceWarning,
        stacklevel=3,
    )


class TorchStateMixin:
    """Pickling for estimators that hold torch tensors in fitted attributes.

    Tensors are stored on the CPU; on load they go back to ``device_``, or to
    the CPU with a warning when that device is not available here. Cached,
    derived objects (named in ``_transient_attributes``) are not pickled.
    """

    _transient_attributes = ()

    def __getstate__(self):
        state = super().__getstate__() if hasattr(super(), "__getstate__") else dict(self.__dict__)
        state = dict(state)
        for name in self._transient_attributes:
            state.pop(name, None)
        for name, value in list(state.items()):
            if hasattr(value, "map") and name.endswith("_"):
                state[name] = value.map(lambda t: t.detach().cpu())
        state["_skpc_serialization_version"] = SERIALIZATION_VERSION
        return state

    def __setstate__(self, state):
        version = state.pop("_skpc_serialization_version", None)
        if version != SERIALIZATION_VERSION:
            raise ValueError(
                f"This {type(self).__name__} was saved with skpc serialization version {version}, but this "
                f"skpc reads version {SERIALIZATION_VERSION}; refit the model with this version of skpc."
            )
        device = state.get("device_")
        if device is not None and device.type == "cuda" and not torch.cuda.is_available():
            warnings.warn(
                f"This {type(self).__name__} was fitted on {device} but CUDA is not available here; "
                "it was loaded on the CPU.",
                UserWarning,
                stacklevel=2,
            )
            state["device_"] = torch.device("cpu")
        if device is not None:
            for name, value in list(state.items()):
                if hasattr(value, "map") and name.endswith("_"):
                    state[name] = value.map(lambda t: t.to(state["device_"]))
        super_setstate = getattr(super(), "__setstate__", None)
        if super_setstate is not None:
            super_setstate(state)
        else:
            self.__dict__.update(state)
