"""CircuitOutlierDetector: outlier detection by the log-likelihood of a density.

A point is an outlier when the fitted density finds it unlikely. With a
probabilistic circuit the log-likelihood is exact, also for rows with missing
entries (NaN), which are marginalized out rather than imputed: a partially
observed row is judged by the probability of what was observed.
"""

from numbers import Real

import numpy as np
from sklearn.base import BaseEstimator, OutlierMixin, clone
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, Interval, _fit_context
from .wrapper import DensityWrapperMixin


class CircuitOutlierDetector(DensityWrapperMixin, OutlierMixin, BaseEstimator):
    """Unsupervised outlier detection with a density estimator's log-likelihood.

    The score of a sample is its log-density ``log p(x)`` under a density
    estimator fitted to the training data (an Einsum Network by default);
    the threshold is the ``contamination`` quantile of the training scores,
    as in :class:`~sklearn.ensemble.IsolationForest` and
    :class:`~sklearn.covariance.EllipticEnvelope`::

        offset_ = np.percentile(score_samples(X_train), 100 * contamination)
        decision_function(X) = score_samples(X) - offset_
        predict(X) = -1 where decision_function(X) < 0, else +1

    NaN entries are missing values: the inner circuit marginalizes them out
    exactly, per row, so a row is scored by the probability of its observed
    entries (NaN is accepted only when the inner estimator accepts it).
    A marginal over fewer entries is a larger number, so scores of rows
    with different numbers of missing entries are not on one scale: rank
    rows that miss the same entries against each other, or fit with a
    similar share of missing entries so that ``offset_`` reflects it.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``score_samples``, default=None
        The density estimator; it is cloned in ``fit``. None uses
        ``EinsumNetworkDensity()``. Any scikit-learn density estimator works
        (``KernelDensity``, ``GaussianMixture``, a ``Pipeline`` ending in
        one); its parameters are reachable as ``estimator__<name>``, e.g. for
        ``GridSearchCV(detector, {"estimator__n_sums": [4, 8]})``.
    contamination : float in (0, 0.5], default=0.1
        Expected fraction of outliers in the training data; it sets the
        threshold ``offset_`` on the log-likelihood.
    random_state : int, RandomState instance or None, default=None
        Seeds the clone of ``estimator`` (when it has a ``random_state``):
        equal seeds give identical fits. When not None it overrides the
        inner estimator's own ``random_state``; None keeps the inner seed
        as set (``EinsumNetworkDensity()``'s default None makes every fit
        differ).

    Attributes
    ----------
    estimator_ : estimator
        The fitted clone of ``estimator``.
    offset_ : float
        The ``100 * contamination`` percentile of the training log-likelihoods.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Only when X has feature names (string column names).

    Notes
    -----
    Model selection without labels: ``score(X)`` is the mean log-likelihood,
    so ``GridSearchCV(detector, grid)`` with the default scoring picks the
    density that generalizes best. With labels, score the ranking instead::

        GridSearchCV(detector, grid, scoring="roc_auc").fit(X, y)

    where ``y`` marks inliers with the larger label (``+1`` versus ``-1``,
    or ``1`` versus ``0``): the scorer ranks by ``decision_function``, which
    is high for inliers. ``make_scorer(roc_auc_score,
    response_method="decision_function")`` is the same scorer spelled out.
    The labels only score the candidates; every fit is unsupervised.

    Examples
    --------
    >>> import numpy as np
    >>> from skpc import CircuitOutlierDetector, EinsumNetworkDensity
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(200, 4))
    >>> density = EinsumNetworkDensity(structure="rat", n_sums=4, n_repetitions=2, max_iter=5, tol=None, random_state=0)
    >>> detector = CircuitOutlierDetector(density, contamination=0.05).fit(X)
    >>> detector.predict([[0.0, 0.0, 0.0, 0.0], [8.0, 8.0, 8.0, 8.0]])
    array([ 1, -1])
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit", "score_samples"]), None],
        "contamination": [Interval(Real, 0, 0.5, closed="right")],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, contamination=0.1, random_state=None):
        self.estimator = estimator
        self.contamination = contamination
        self.random_state = random_state

    # The inner estimator validates its own parameters and data.
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y=None):
        """Fit the density to X and set the threshold ``offset_``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; NaN entries are missing (when the density
            estimator allows NaN).
        y : ignored
            Accepted for API consistency (e.g. labels that only a scorer uses).

        Returns
        -------
        self
        """
        X = self._validate(X, reset=True)
        (estimator,) = self._seed_clones([clone(self._template())])
        estimator.fit(X)
        scores = np.asarray(estimator.score_samples(X), dtype=np.float64)
        self.estimator_ = estimator
        self.offset_ = float(np.percentile(scores, 100.0 * self.contamination))
        return self

    def score_samples(self, X):
        """Log-likelihood of each row under the fitted density (higher = more normal).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out (when the density allows NaN).

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        check_is_fitted(self, "offset_")
        X = self._validate(X, reset=False)
        return np.asarray(self.estimator_.score_samples(X), dtype=np.float64)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for outliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """-1 for outliers, +1 for inliers.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        ndarray of shape (n_samples,), int
        """
        return np.where(self.decision_function(X) < 0, -1, 1)

    def score(self, X, y=None):
        """Mean log-likelihood of X under the fitted density.

        What ``GridSearchCV`` maximizes when no scoring is given; ``y`` is
        ignored (pass ``scoring="roc_auc"`` to use labels). The mean, not
        the inner estimator's ``score``, so that every density is judged
        alike (``KernelDensity.score`` returns the sum).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : ignored

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        # NaN means "marginalize this entry" exactly when the density says so.
        tags.input_tags.allow_nan = self._allow_nan()
        return tags
