"""Reference densities that a model of discrete images must beat."""

import numpy as np


def independent_pixels(train, test, n_levels, smoothings=(0.01, 0.03, 0.1, 0.3, 1.0, 3.0)):
    """(a, mean test log-likelihood) of independent categorical pixels with
    add-a smoothing, a chosen on the last tenth of the training rows, then
    refitted on all of them. ``train``/``test``: (n, D) integer-valued levels
    in 0..n_levels-1."""

    def fit_score(fit_rows, score_rows, a):
        counts = np.stack([np.bincount(col, minlength=n_levels) for col in fit_rows.T.astype(int)])  # (D, C)
        log_p = np.log(counts + a) - np.log(counts.sum(1, keepdims=True) + a * n_levels)
        return float(np.take_along_axis(log_p, score_rows.T.astype(int), 1).sum(0).mean())

    n_fit = int(0.9 * len(train))
    best = max(smoothings, key=lambda a: fit_score(train[:n_fit], train[n_fit:], a))
    return best, fit_score(train, test, best)


def uniform(n_features, n_levels):
    """Mean log-likelihood of the uniform distribution over n_levels ** n_features images."""
    return -n_features * float(np.log(n_levels))
