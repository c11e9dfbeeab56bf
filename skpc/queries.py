"""The queries every fitted circuit estimator answers, from its fitted state.

``CircuitQueriesMixin`` needs the fitted attributes ``region_graph_``,
``n_sums_``, ``leaf_``, ``layer_``, ``params_`` (CircuitParams), ``device_``
and ``n_features_in_``; ``EinsumNetworkDensity`` and ``LVDDensity`` both end
their ``fit`` with one compiled circuit over X and answer every query
through it (DESIGN.md, "Queries every circuit estimator answers").
"""

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from ._compat import validate_data
from .backend.circuit import CompiledCircuit
from .backend.train import ArrayRows
from .base import check_no_inf, make_generator


__all__ = ["CircuitQueriesMixin", "check_no_inf", "score_in_batches"]


class CircuitQueriesMixin:
    """score_samples, score, score_conditional, sample, impute of a fitted circuit."""

    @property
    def _circuit(self):
        """The compiled circuit; rebuilt after unpickling (it is derived state)."""
        cache = getattr(self, "_circuit_cache", None)
        if cache is None:
            cache = CompiledCircuit(self.region_graph_, self.n_sums_, self.leaf_, self.device_, layer=self.layer_)
            self._circuit_cache = cache
        return cache

    def _query_params(self):
        """The fitted parameters in float64, for exact, batch-independent queries (cached)."""
        cache = getattr(self, "_query_cache", None)
        if cache is None or cache[0] is not self.params_:
            cache = (self.params_, self.params_.map(lambda t: t.to(torch.float64)))
            self._query_cache = cache
        return cache[1]

    def _validate_fitted(self, X):
        check_is_fitted(self, "params_")
        X = validate_data(self, X, reset=False, dtype=np.float64, ensure_all_finite=False)
        check_no_inf(X)
        self.leaf_.validate(X)
        return X

    # ------------------------------------------------------------- queries
    def score_samples(self, X):
        """Log-density of each row of X (n_samples, n_features).

        NaN entries are missing and marginalized out exactly, per row.
        Computed in float64 whatever ``dtype``.

        A ``numpy.memmap`` is read a chunk at a time (scoring data larger
        than memory).

        Returns
        -------
        ndarray of shape (n_samples,), float64
        """
        if isinstance(X, np.memmap):
            return self._score_streamed(X)
        X = self._validate_fitted(X)
        return score_in_batches(self._circuit, self._query_params(), self._to_query_tensor(X))

    def _score_streamed(self, X):
        """score_samples of a numpy.memmap: checked and scored a chunk at a
        time, never materializing the array or a float64 copy of it."""
        check_is_fitted(self, "params_")
        if X.ndim != 2 or X.shape[1] != self.n_features_in_ or X.dtype.kind not in "biuf":
            raise ValueError(
                f"X is a memmap of shape {X.shape} and dtype {X.dtype}, but this model was fitted on "
                f"{self.n_features_in_} features; pass a 2-D memmap of real numbers with that many columns."
            )
        rows = ArrayRows(X, dtype=torch.float64, device=self.device_)
        for _, chunk in rows.chunks():
            check_no_inf(chunk)
            self.leaf_.validate(chunk)
        rows.release()
        return score_in_batches(self._circuit, self._query_params(), rows)

    def _to_query_tensor(self, X):
        return torch.tensor(X, dtype=torch.float64, device=self.device_)  # a copy: X may be read-only

    def score(self, X, y=None):
        """Mean log-likelihood of the rows of X (what GridSearchCV maximizes).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            NaN entries are marginalized out.
        y : Ignored

        Returns
        -------
        float
        """
        return float(np.mean(self.score_samples(X)))

    def score_conditional(self, X, query):
        """log p(x_query | the other observed entries), per row.

        Parameters
        ----------
        X : array of shape (n_samples, n_features)
            Query entries must be observed; other NaN entries are
            marginalized out (neither evidence nor query).
        query : boolean mask of shape (n_features,) or array of feature indices

        Returns
        -------
        ndarray of shape (n_samples,)
        """
        X = self._validate_fitted(X)
        mask = np.zeros(self.n_features_in_, dtype=bool)
        query = np.asarray(query)
        if query.dtype == bool:
            if query.shape != (self.n_features_in_,):
                raise ValueError(
                    f"A boolean query must have one entry per feature ({self.n_features_in_}); got shape {query.shape}."
                )
            mask = query
        else:
            if query.size and (query.min() < -self.n_features_in_ or query.max() >= self.n_features_in_):
                raise ValueError(f"query indices must lie in [0, {self.n_features_in_}); got {query.tolist()}.")
            mask[query.astype(int)] = True
        if not mask.any():
            raise ValueError("query selects no feature; pass a non-empty mask or index list.")
        if np.isnan(X[:, mask]).any():
            raise ValueError("X has NaN in query features; a queried value must be observed.")
        evidence = X.copy()
        evidence[:, mask] = np.nan
        circuit, params = self._circuit, self._query_params()
        joint = score_in_batches(circuit, params, self._to_query_tensor(X))
        marginal = score_in_batches(circuit, params, self._to_query_tensor(evidence))
        return joint - marginal

    def sample(self, n_samples=1, random_state=None):
        """Draw samples from the fitted density.

        Parameters
        ----------
        n_samples : int, default=1
        random_state : int, RandomState instance or None
            None uses the estimator's ``random_state``.

        Returns
        -------
        ndarray of shape (n_samples, n_features)
        """
        check_is_fitted(self, "params_")
        if int(n_samples) < 1:
            raise ValueError(f"n_samples must be >= 1; got {n_samples}.")
        X = np.full((int(n_samples), self.n_features_in_), np.nan)
        return self._complete(X, random_state, method="sample")

    def impute(self, X, method="sample", random_state=None):
        """Fill every NaN in X from p(missing | observed).

        Parameters
        ----------
        X : array of shape (n_samples, n_features), NaN = missing
        method : {"sample", "mpe"}
            "sample" draws the missing entries from their exact conditional
            distribution; "mpe" takes the approximate most probable
            completion: that of the best single induced tree, found by a
            max-product pass (missing entries at their leaves' modes).
        random_state : int, RandomState instance or None

        Returns
        -------
        ndarray of shape (n_samples, n_features); observed entries unchanged.
        """
        if method not in ("sample", "mpe"):
            raise ValueError(f"method={method!r} is not supported; use 'sample' or 'mpe'.")
        X = self._validate_fitted(X)
        return self._complete(X, random_state, method=method)

    def _complete(self, X, random_state, method):
        seed = self.random_state if random_state is None else random_state
        generator = make_generator(seed, self.device_)
        circuit, params = self._circuit, self.params_
        dtype = params.leaf.dtype
        out = []
        with torch.no_grad():
            # in chunks: backtracking keeps every store of the circuit for its rows
            step = circuit.sampling_chunk_size()
            for start in range(0, X.shape[0], step):
                rows = X[start : start + step]
                Xt = torch.tensor(rows, dtype=dtype, device=self.device_)
                out.append(circuit.complete(Xt, params, generator, method).cpu().double().numpy())
        result = np.concatenate(out)
        observed = ~np.isnan(X)
        result[observed] = X[observed]  # exact evidence, not a float32 round trip
        return result


def score_in_batches(circuit, params, Xt):
    """log p of every row of Xt (N, D), a memory-bounded chunk at a time: (N,) float64 numpy."""
    return circuit.log_prob_in_chunks(Xt, params).cpu().double().numpy()
