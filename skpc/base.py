"""What the circuit estimators share: device and seed resolution, the epoch
loop's bookkeeping (convergence, progress), and pickling of torch state."""

import sys
import time
import warnings

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.utils import check_random_state, get_tags

from ._compat import validate_data

# Bumped whenever the pickled layout of a fitted estimator changes; a pickle
# of another layout is refused with a clear error instead of misbehaving.
SERIALIZATION_VERSION = 1

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def resolve_device(device):
    """'cpu', 'cuda', 'cuda:N' or 'auto' -> torch.device; clear error without CUDA."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(
            f"device={device!r} was requested but CUDA is not available on this machine "
            "(torch.cuda.is_available() is False); use device='cpu' or device='auto'."
        )
    return torch.device(device)


def resolve_dtype(dtype):
    return _DTYPES[dtype]


def make_generator(random_state, device):
    """One torch.Generator on ``device``, seeded from sklearn's random_state semantics.

    Every random call of a fit draws from it, so equal seeds give equal fits.
    """
    seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return gen


def batches(n_samples, batch_size, generator=None, device="cpu"):
    """Index tensors of consecutive batches; shuffled when a generator is given."""
    if generator is None:
        order = torch.arange(n_samples, device=device)
    else:
        order = torch.randperm(n_samples, generator=generator, device=generator.device).to(device)
    step = n_samples if batch_size is None else batch_size
    return [order[i : i + step] for i in range(0, n_samples, step)]


class ConvergenceMonitor:
    """Tracks the per-epoch training log-likelihood and prints progress.

    Parameters
    ----------
    tol : float or None
        Stop once the mean log-likelihood changes by less than ``tol``
        between epochs; None runs all ``max_iter`` epochs.
    max_iter : int
    verbose : int
        0 silent, 1 one line per epoch, 2 also a line per batch.
    name : str
        Shown in progress lines and the ConvergenceWarning.
    """

    def __init__(self, tol, max_iter, verbose, name, stream=None):
        self.tol, self.max_iter, self.verbose, self.name = tol, max_iter, verbose, name
        self.stream = stream if stream is not None else sys.stdout
        self.history = []
        self.converged = False
        self._start = time.perf_counter()

    def batch(self, epoch, index, n_batches, mean_ll):
        if self.verbose >= 2:
            print(f"[{self.name}] epoch {epoch} batch {index + 1}/{n_batches} ll {mean_ll:.4f}", file=self.stream)

    def epoch(self, mean_ll):
        """Record an epoch; True when training should stop."""
        self.history.append(float(mean_ll))
        change = self.history[-1] - self.history[-2] if len(self.history) > 1 else float("nan")
        if self.verbose:
            elapsed = time.perf_counter() - self._start
            print(
                f"[{self.name}] epoch {len(self.history)}/{self.max_iter}  train ll {mean_ll:.4f}  "
                f"change {change:+.4g}  {elapsed:.1f}s",
                file=self.stream,
                flush=True,
            )
        if self.tol is not None and len(self.history) > 1 and abs(change) < self.tol:
            self.converged = True
        return self.converged

    def finish(self):
        if self.tol is not None and not self.converged:
            warnings.warn(
                f"{self.name} did not converge in max_iter={self.max_iter} epochs (last change in mean "
                f"log-likelihood above tol={self.tol}); increase max_iter, raise tol, or lower learning_rate.",
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


class DensityWrapperMixin:
    """For estimators built on an inner density estimator (``estimator``,
    default ``EinsumNetworkDensity()``): NaN is accepted exactly when the
    inner estimator marginalizes it."""

    def _template(self):
        from .einet import EinsumNetworkDensity  # einet imports this module

        return EinsumNetworkDensity() if self.estimator is None else self.estimator

    def _allow_nan(self):
        return get_tags(self._template()).input_tags.allow_nan

    def _validate(self, X, reset):
        nan = "allow-nan" if self._allow_nan() else True
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=nan)
