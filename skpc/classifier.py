"""EinsumNetworkClassifier: a generative classifier with one circuit per class.

Bayes' rule over class-conditional densities, ``p(y | x) ∝ p(y) p(x | y)``.
Because each ``p(x | y)`` is a probabilistic circuit, features missing at
prediction time (NaN) are marginalized out exactly, per row, so the
classifier predicts from whatever part of a row was observed.
"""

import numpy as np
from scipy.special import logsumexp
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted

from ._compat import HasMethods, StrOptions, _fit_context, validate_data
from .wrapper import DensityWrapperMixin


class EinsumNetworkClassifier(DensityWrapperMixin, ClassifierMixin, BaseEstimator):
    """Generative classifier: one Einsum Network density per class, Bayes' rule.

    ``fit`` fits a clone of ``estimator`` to the rows of each class;
    ``predict_proba`` returns ``p(y | x) = p(y) p(x | y) / sum_c p(c) p(x | c)``
    computed in the log domain (log-sum-exp normalization). Missing entries
    (NaN) in X are marginalized out of every ``p(x | c)``, per row, both in
    training and in prediction.

    Parameters
    ----------
    estimator : estimator with ``fit`` and ``score_samples``, default=None
        Template of the class-conditional density, cloned once per class.
        None uses ``EinsumNetworkDensity()``. Its parameters are grid-searched
        as ``estimator__<name>`` (``{"estimator__n_sums": [4, 8]}``). Any
        density estimator works (``KernelDensity``, ``GaussianMixture``).
    priors : {"empirical", "uniform"} or array-like of shape (n_classes,), \
default="empirical"
        Class priors ``p(y)``: the class frequencies of the training labels,
        equal priors, or given probabilities in the order of ``classes_``
        (non-negative, summing to 1).
    random_state : int, RandomState instance or None, default=None
        Seeds the class densities: one seed is drawn per class, in the order
        of ``classes_``, for the clones that have a ``random_state``, so
        equal seeds give identical fits and the classes get distinct seeds.
        When not None it overrides the inner estimator's own
        ``random_state``; None keeps the inner seed as set (then every class
        gets that same seed; ``EinsumNetworkDensity()``'s default None makes
        every fit differ).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
        The class labels, sorted (any type numpy can sort: ints, strings).
    estimators_ : list of n_classes fitted estimators
        ``estimators_[i]`` is the density of class ``classes_[i]``.
    class_prior_ : ndarray of shape (n_classes,)
        The priors used.
    class_count_ : ndarray of shape (n_classes,)
        Training rows per class.
    n_features_in_ : int
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Only when X has feature names (string column names).

    Notes
    -----
    A row that every class density finds impossible (log-likelihood -inf
    everywhere, e.g. a category never seen in training under categorical
    leaves) gets the priors as its posterior rather than NaN.

    Examples
    --------
    >>> import numpy as np
    >>> from skpc import EinsumNetworkClassifier, EinsumNetworkDensity
    >>> rng = np.random.default_rng(0)
    >>> X = np.vstack([rng.normal(-2, 1, (50, 4)), rng.normal(2, 1, (50, 4))])
    >>> y = np.repeat(["neg", "pos"], 50)
    >>> density = EinsumNetworkDensity(structure="rat", n_sums=2, n_repetitions=2, max_iter=5, tol=None, random_state=0)
    >>> clf = EinsumNetworkClassifier(density).fit(X, y)
    >>> clf.predict([[-2.0, -2.0, np.nan, np.nan], [np.nan, 2.0, 2.0, np.nan]])
    array(['neg', 'pos'], dtype='<U3')
    """

    _parameter_constraints = {
        "estimator": [HasMethods(["fit", "score_samples"]), None],
        "priors": [StrOptions({"empirical", "uniform"}), "array-like"],
        "random_state": ["random_state"],
    }

    def __init__(self, estimator=None, priors="empirical", random_state=None):
        self.estimator = estimator
        self.priors = priors
        self.random_state = random_state

    def _class_prior(self, class_count):
        n_classes = len(class_count)
        if isinstance(self.priors, str):
            if self.priors == "uniform":
                return np.full(n_classes, 1.0 / n_classes)
            return class_count / class_count.sum()
        prior = np.asarray(self.priors, dtype=np.float64)
        if prior.shape != (n_classes,):
            raise ValueError(
                f"priors has shape {prior.shape} but y has {n_classes} classes; pass one probability per "
                "class, in the order of the sorted labels (classes_)."
            )
        if not np.all(np.isfinite(prior)) or (prior < 0).any() or not np.isclose(prior.sum(), 1.0):
            raise ValueError(f"priors must be non-negative and sum to 1; got {prior.tolist()}.")
        return prior

    # The inner estimators validate their own parameters and data.
    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Fit one density per class.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are missing (when the density estimator allows NaN).
        y : array-like of shape (n_samples,)
            Class labels of any sortable type.

        Returns
        -------
        self
        """
        nan = "allow-nan" if self._allow_nan() else True
        X, y = validate_data(self, X, y, dtype=np.float64, ensure_all_finite=nan)
        check_classification_targets(y)
        classes, y_index = np.unique(y, return_inverse=True)
        if len(classes) < 2:
            raise ValueError(
                "EinsumNetworkClassifier needs samples of at least 2 classes in the data, but the data "
                f"contains only one class: {classes.tolist()[0]!r}. To model one class, fit "
                "CircuitOutlierDetector or the density estimator itself."
            )
        class_count = np.bincount(y_index, minlength=len(classes)).astype(np.float64)
        class_prior = self._class_prior(class_count)
        # one leaf for every class, inferred from all rows
        template = self._with_shared_leaf(self._template(), X)
        estimators = self._seed_clones([clone(template) for _ in classes])
        # Each class's density sees only that class's rows: p(x | y = c).
        for i, estimator in enumerate(estimators):
            estimator.fit(X[y_index == i])
        self.classes_ = classes
        self.class_count_ = class_count
        self.class_prior_ = class_prior
        self.estimators_ = estimators
        return self

    def _joint_log_likelihood(self, X):
        """log p(y = c) + log p(x | y = c), shape (n_samples, n_classes)."""
        check_is_fitted(self, "estimators_")
        X = self._validate(X, reset=False)
        with np.errstate(divide="ignore"):  # a zero prior is a legitimate -inf
            log_prior = np.log(self.class_prior_)
        columns = [np.asarray(est.score_samples(X), dtype=np.float64) for est in self.estimators_]
        return np.column_stack(columns) + log_prior

    def predict_log_proba(self, X):
        """Log posterior class probabilities, ``log p(y | x)``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
            Columns in the order of ``classes_``.
        """
        joint = self._joint_log_likelihood(X)
        with np.errstate(invalid="ignore"):
            log_evidence = logsumexp(joint, axis=1, keepdims=True)  # log p(x)
            log_proba = joint - log_evidence
        # A row with p(x | c) = 0 for every class carries no evidence: keep the prior.
        impossible = ~np.isfinite(log_evidence[:, 0])
        if impossible.any():
            with np.errstate(divide="ignore"):
                log_proba[impossible] = np.log(self.class_prior_)
        return log_proba

    def predict_proba(self, X):
        """Posterior class probabilities, ``p(y | x)``; rows sum to 1.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)
        """
        return np.exp(self.predict_log_proba(X))

    def predict(self, X):
        """The class of highest posterior probability for each row.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out.

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        log_proba = self.predict_log_proba(X)  # first: it checks that self is fitted
        return self.classes_[np.argmax(log_proba, axis=1)]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = self._allow_nan()  # NaN = marginalize, if the density says so
        return tags
