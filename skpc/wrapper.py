"""What the estimators built on an inner density estimator share (the
outlier detector and the classifier)."""

import numpy as np
from sklearn.base import clone
from sklearn.utils import check_random_state, get_tags

from ._compat import validate_data
from .backend.leaves import resolve_leaf
from .einet import EinsumNetworkDensity


class DensityWrapperMixin:
    """For estimators built on an inner density estimator (``estimator``,
    default ``EinsumNetworkDensity()``) and a ``random_state``: NaN is
    accepted exactly when the inner estimator marginalizes it, and the
    wrapper's seed, when not None, seeds every inner clone."""

    def _seed_clones(self, estimators):
        """Give each unfitted clone its own seed from ``self.random_state``, in order.

        One integer is drawn per clone, whether or not the clone has a
        ``random_state`` (so a clone's seed depends only on its position), a
        repeat redrawn so that no two clones share a seed, and set on the
        clones whose ``get_params()`` has a ``random_state``. None leaves
        every clone with the seed the user gave the template: the wrapper's
        seed, when given, takes precedence over the inner estimator's.

        Parameters
        ----------
        estimators : list of unfitted estimators

        Returns
        -------
        estimators : the same list, seeded in place
        """
        if self.random_state is None:
            return estimators
        random_state = check_random_state(self.random_state)
        used = set()
        for estimator in estimators:
            seed = int(random_state.randint(np.iinfo(np.int32).max))
            while seed in used:
                seed = int(random_state.randint(np.iinfo(np.int32).max))
            used.add(seed)
            if "random_state" in estimator.get_params(deep=False):
                estimator.set_params(random_state=seed)
        return estimators

    def _template(self):
        return EinsumNetworkDensity() if self.estimator is None else self.estimator

    @staticmethod
    def _with_shared_leaf(template, X):
        """A copy of ``template`` whose ``leaf`` is the family inferred from all
        rows X (n_samples, n_features), when it has a ``leaf`` parameter.

        Inner clones fitted on parts of X (a class's rows) would otherwise
        infer their own categories, trials or families ("auto") and refuse
        the rows of another part at prediction time.
        """
        params = template.get_params(deep=False)
        if "leaf" not in params:
            return clone(template)
        options = {key: params[key] for key in ("min_var", "max_var", "n_categories", "n_trials") if key in params}
        leaf = resolve_leaf(params["leaf"], X.shape[1], **options).infer(X)
        return clone(template).set_params(leaf=leaf)

    def _allow_nan(self):
        return get_tags(self._template()).input_tags.allow_nan

    def _validate(self, X, reset):
        nan = "allow-nan" if self._allow_nan() else True
        return validate_data(self, X, reset=reset, dtype=np.float64, ensure_all_finite=nan)
