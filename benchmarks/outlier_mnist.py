"""Out-of-distribution detection on digits (Einsum Networks paper, section 4.3).

A CircuitOutlierDetector is fitted on MNIST training digits; the log-likelihoods
of the MNIST test set (inliers) are compared with those of SEMEION digits
(another handwriting set, brought to MNIST's format) and of uniform noise.

Setting (chosen for a CPU budget of a few minutes):

- pixels binarized at 127 (MNIST values > 127 -> 1) and Bernoulli leaves
  (``--pixels grey``: the 0..255 grey levels, rounded, with 256-state
  categorical leaves);
- a Poon-Domingos structure over the 28x28 image with step size 7, K=10;
- stochastic EM on a random subset of the training digits (``--n-train``,
  default 20000; ``--quick``: 3000) for a few epochs (``--epochs``).

SEMEION digits are 16x16 binary images; like MNIST's preprocessing they are
resized to 20x20 (``scipy.ndimage.zoom``, linear), scaled to 0..255, placed in
a 28x28 frame with their centre of mass at the centre, then binarized like
MNIST. Noise images have uniform pixel values in 0..255 (binarized alike).

Figures (printed as one JSON line):

- ``auroc_semeion``, ``auroc_noise``: ROC AUC of telling MNIST test digits
  (positive) from the outliers by log-likelihood;
- ``hist_overlap_*``: overlap of the two normalized histograms of
  log-likelihoods on common bins, sum_b min(p_b, q_b) in [0, 1]; 0 means the
  histograms do not overlap;
- ``frac_above_min_inlier_*``: fraction of outliers whose log-likelihood is
  above the lowest MNIST test log-likelihood (0 = perfectly separated);
- mean log-likelihoods (nats per image) of every set.

Usage::

    python benchmarks/outlier_mnist.py [--data DIR] [--out DIR] [--quick]
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from _data import REPO, default_data_dir, load_mnist, load_semeion

from skpc import CircuitOutlierDetector, EinsumNetworkDensity


# ------------------------------------------------------------------ data
def semeion_as_mnist(X):
    """16x16 binary digits -> 28x28 images in 0..255, framed like MNIST.

    Parameters
    ----------
    X : ndarray of shape (n_samples, 256), values in {0, 1}

    Returns
    -------
    ndarray of shape (n_samples, 784), float64 in [0, 255]
    """
    out = np.zeros((X.shape[0], 28, 28))
    for i, digit in enumerate(X.reshape(-1, 16, 16).astype(np.float64)):
        small = np.clip(ndimage.zoom(digit, 20 / 16, order=1), 0, 1) * 255  # (20, 20)
        frame = np.zeros((28, 28))
        frame[4:24, 4:24] = small
        # MNIST digits are centred by their centre of mass in the 28x28 frame.
        cy, cx = ndimage.center_of_mass(frame)
        out[i] = ndimage.shift(frame, (13.5 - cy, 13.5 - cx), order=1, mode="constant")
    return np.clip(out, 0, 255).reshape(-1, 784)


def binarize(X):
    return (np.asarray(X) > 127).astype(np.float64)


# --------------------------------------------------------------- figures
def histogram_overlap(a, b, bins=60):
    """sum_b min(p_b, q_b) of the two normalized histograms on common bins."""
    edges = np.histogram_bin_edges(np.r_[a, b], bins=bins)
    p = np.histogram(a, edges)[0] / len(a)
    q = np.histogram(b, edges)[0] / len(b)
    return float(np.minimum(p, q).sum())


def separation(inliers, outliers):
    y = np.r_[np.ones(len(inliers)), np.zeros(len(outliers))]
    return {
        "auroc": float(roc_auc_score(y, np.r_[inliers, outliers])),
        "hist_overlap": histogram_overlap(inliers, outliers),
        "frac_above_min_inlier": float(np.mean(outliers > inliers.min())),
    }


def plot_histograms(scores, path, inlier="MNIST test"):
    """One panel per outlier set against the inliers (their scales differ by 10x)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [name for name in scores if name != inlier]
    fig, axes = plt.subplots(1, len(others), figsize=(5 * len(others), 3.8))
    for ax, name in zip(np.atleast_1d(axes), others):
        edges = np.histogram_bin_edges(np.r_[scores[inlier], scores[name]], bins=80)
        ax.hist(scores[inlier], bins=edges, density=True, alpha=0.6, label=inlier)
        ax.hist(scores[name], bins=edges, density=True, alpha=0.6, label=name)
        ax.set_xlabel("log-likelihood (nats per image)")
        ax.set_ylabel("density")
        ax.set_title(f"{inlier} vs {name}")
        ax.legend()
    fig.suptitle("Einsum Network fitted on MNIST training digits")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out")
    parser.add_argument("--quick", action="store_true", help="3000 training digits, 3 epochs")
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--n-sums", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pixels", choices=["binary", "grey"], default="binary")
    args = parser.parse_args(argv)
    n_train = args.n_train or (3000 if args.quick else 20000)
    epochs = args.epochs or (3 if args.quick else 8)

    x_train, _, x_test, _ = load_mnist(args.data)
    semeion, _ = load_semeion(args.data)
    rng = np.random.default_rng(args.seed)
    # binary: pixels > 127 with Bernoulli leaves; grey: the 0..255 values with 256-state categorical leaves
    pixels = binarize if args.pixels == "binary" else (lambda X: np.rint(X).astype(np.float64).reshape(len(X), -1))
    leaf = {"leaf": "bernoulli"} if args.pixels == "binary" else {"leaf": "categorical", "n_categories": 256}
    train = pixels(x_train[rng.permutation(len(x_train))[:n_train]])
    sets = {
        "MNIST test": pixels(x_test),
        "SEMEION": pixels(semeion_as_mnist(semeion)),
        "uniform noise": pixels(rng.integers(0, 256, size=(2000, 784))),
    }

    density = EinsumNetworkDensity(
        structure="pd",
        image_shape=(28, 28),
        pd_delta=7,
        n_sums=args.n_sums,
        **leaf,
        max_iter=epochs,
        batch_size=500,
        tol=None,
        random_state=args.seed,
        verbose=1,
    )
    start = time.perf_counter()
    detector = CircuitOutlierDetector(density, contamination=0.01).fit(train)
    fit_seconds = time.perf_counter() - start
    scores = {name: detector.score_samples(X) for name, X in sets.items()}

    inliers = scores["MNIST test"]
    result = {
        "benchmark": "outlier_mnist",
        "setting": f"PD delta=7, K={args.n_sums}, "
        + ("Bernoulli on pixels>127" if args.pixels == "binary" else "categorical(256) on grey levels")
        + f", {n_train} training digits, "
        f"{epochs} epochs of stochastic EM (batch 500)",
        "n_train": n_train,
        "epochs": epochs,
        "fit_seconds": round(fit_seconds, 1),
        "mean_ll": {name: round(float(np.mean(s)), 2) for name, s in scores.items()},
        "flagged_at_1pct_contamination": {
            name: round(float(np.mean(detector.predict(X) == -1)), 4) for name, X in sets.items()
        },
    }
    for name, key in (("SEMEION", "semeion"), ("uniform noise", "noise")):
        for figure, value in separation(inliers, scores[name]).items():
            result[f"{figure}_{key}"] = round(value, 4)
    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / ("outlier_mnist_hist.png" if args.pixels == "binary" else "outlier_mnist_hist_grey.png")
    plot_histograms(scores, png)
    result["histogram_png"] = str(png)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
