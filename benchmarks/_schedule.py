"""What the quality benchmarks share about the estimator's training schedule.

``EinsumNetworkDensity`` trains by its own schedule (stochastic EM with the
step halved on validation plateaus, then full-batch EM; see
``skpc/backend/train.py``). Its fitted attributes give each epoch's scores
(``train_scores_``, ``validation_scores_``) but not the phase an epoch
belonged to, nor its step size; those are read here from the progress lines
that ``verbose=1`` prints, captured during ``fit``.
"""

import contextlib
import io
import re
import time

# "[EinsumNetworkDensity] epoch 3 stochastic EM (step 0.5)  train -12.3456  valid -12.5000  *  4.1s"
EPOCH_LINE = re.compile(
    r"\] epoch (?P<epoch>\d+) (?P<phase>.+?) \(step (?P<step>[^)]+)\)  train (?P<train>\S+)"
    r"(?:  valid (?P<valid>\S+))?(?P<improved>  \*)?  (?P<seconds>[0-9.]+)s"
)


def parse_epoch_lines(text):
    """The epoch records (dicts) of a fit's ``verbose=1`` output."""
    records = []
    for line in text.splitlines():
        match = EPOCH_LINE.search(line)
        if match is None or " batch " in line:
            continue
        records.append(
            {
                "epoch": int(match["epoch"]),
                "phase": match["phase"],
                "step": float(match["step"]),
                "train": float(match["train"]),
                "valid": None if match["valid"] is None else float(match["valid"]),
                "improved": match["improved"] is not None,
                "seconds": float(match["seconds"]),  # since the fit's training started
            }
        )
    return records


class _Tee(io.StringIO):
    """Keeps what is written, and echoes it to ``echo`` (or nowhere)."""

    def __init__(self, echo=None):
        super().__init__()
        self.echo = echo

    def write(self, text):
        if self.echo is not None:
            self.echo.write(text)
            self.echo.flush()
        return super().write(text)


def fit_recorded(model, X, echo=None, **fit_params):
    """``model.fit(X, **fit_params)`` with its epoch lines captured (and echoed to ``echo``).

    Returns (epoch records, seconds of the whole fit). The model's own
    ``verbose`` is restored. The last record's ``seconds`` is the time the
    epochs took, without the set-up and the final scoring pass of ``fit``.
    """
    verbose = model.verbose
    stream = _Tee(echo)
    model.set_params(verbose=1)
    start = time.perf_counter()
    try:
        with contextlib.redirect_stdout(stream):
            model.fit(X, **fit_params)
    finally:
        model.set_params(verbose=verbose)
    seconds = time.perf_counter() - start
    records = parse_epoch_lines(stream.getvalue())
    if len(records) != len(model.train_scores_):
        raise RuntimeError(
            f"parsed {len(records)} epoch lines but the fit ran {len(model.train_scores_)} epochs: "
            "the progress format changed; update EPOCH_LINE in benchmarks/_schedule.py"
        )
    return records, seconds


def phase_summary(records):
    """Epochs of each phase, step halvings and the epoch (and step) of the best score."""
    stochastic = [r for r in records if r["phase"] != "full-batch EM"]
    full_batch = [r for r in records if r["phase"] == "full-batch EM"]
    steps = [r["step"] for r in stochastic]
    decays = sum(1 for a, b in zip(steps, steps[1:]) if b < a)
    best = max(
        (r for r in records if r["improved"]),
        key=lambda r: r["epoch"],  # the last improvement is the kept (best) epoch
        default=None,
    )
    return {
        "stochastic_epochs": len(stochastic),
        "full_batch_epochs": len(full_batch),
        "full_batch_improving": sum(r["improved"] for r in full_batch),
        "step_decays": decays,
        "best_epoch": None if best is None else best["epoch"],
        "best_phase": None if best is None else best["phase"],
        "step_at_best": None if best is None else best["step"],
    }
