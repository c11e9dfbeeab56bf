"""The registry of built-in families and the resolver of an estimator's
``leaf`` parameter."""

import copy

import numpy as np

from .base import ExponentialFamilyLeaf, _columns_text, _init_arguments, _is_integer
from .families import BernoulliLeaf, BinomialLeaf, CategoricalLeaf, GaussianLeaf, PoissonLeaf
from .mixed import MixedLeaf


LEAF_FAMILIES = {
    "gaussian": GaussianLeaf,
    "bernoulli": BernoulliLeaf,
    "categorical": CategoricalLeaf,
    "binomial": BinomialLeaf,
    "poisson": PoissonLeaf,
}


# leaf="auto": columns of non-negative integers below this get categorical leaves.
AUTO_MAX_CATEGORIES = 256
# Every name an estimator's ``leaf`` parameter accepts.
LEAF_NAMES = (*LEAF_FAMILIES, "auto")


class AutoLeaf:
    """``leaf="auto"``: each column's family chosen from the training data.

    ``infer(X)`` returns the concrete leaf (one family, or a ``MixedLeaf``):

    - columns of non-negative integers below ``AUTO_MAX_CATEGORIES`` (256):
      categorical, all such columns with one number of states, the largest
      value seen in any of them plus one (8-bit pixels, ordinal codes, small
      counts, binary flags; a binary column is a 2-state categorical, the
      Bernoulli model);
    - anything else: Gaussian.

    Why: a Gaussian leaf on discrete data shrinks its variance onto a value
    that fills a column (the 0 of an image's background) until min_var, and a
    test value one grey level away costs thousands of nats: a default fit of
    3,000 MNIST digits scored -53,979 nats per test image against -4,347 for
    the uniform distribution; categorical leaves are the standard recipe.
    The shared number of states keeps a column that was constant in training
    (an image border) able to score any grey level seen elsewhere. NaN
    entries are ignored; an all-NaN column is Gaussian.
    """

    def __init__(self, options):
        self.options = options

    @staticmethod
    def family_of(column):
        """The family name for one column (n_samples,) of float values, NaN = missing."""
        observed = column[~np.isnan(column)]
        if observed.size == 0:
            return "gaussian"
        integral = bool(np.all(observed == np.round(observed)))
        return AutoLeaf._family(observed.min(), observed.max(), integral)

    @staticmethod
    def _family(low, high, integral):
        if np.isnan(low) or not integral or low < 0 or high >= AUTO_MAX_CATEGORIES:
            return "gaussian"
        return "categorical"

    def validate(self, X, columns=None):
        """Every finite value is modelled by some family: nothing to refuse here."""
        return None

    def infer(self, X):
        """The concrete leaf for the training rows X (n_samples, n_features)."""
        X = np.asarray(X, dtype=np.float64)
        families = [self.family_of(X[:, j]) for j in range(X.shape[1])]
        return resolve_leaf(families, X.shape[1], **self.options).infer(X)

    def resolve_from_summary(self, low, high, integral):
        """The (unfitted) concrete leaf from column summaries, for data seen a
        chunk or a process at a time: low, high (n_features,) the smallest and
        largest observed values (NaN: none), integral (n_features,) bool,
        whether every observed value is an integer."""
        families = [self._family(lo, hi, bool(ok)) for lo, hi, ok in zip(low, high, integral)]
        return resolve_leaf(families, len(families), **self.options)


def _named_family(name, options):
    """The family registered as ``name``, given the options its ``__init__`` takes."""
    if not isinstance(name, str) or name not in LEAF_FAMILIES:
        valid = ", ".join(repr(n) for n in LEAF_FAMILIES)
        raise ValueError(
            f"leaf={name!r} is not a leaf family; use one of {valid}, an ExponentialFamilyLeaf instance, "
            "a dict {family: [columns]} or a list with one family per column."
        )
    cls = LEAF_FAMILIES[name]
    return cls(**{key: options[key] for key in _init_arguments(cls) if key in options})


def _family_entry(entry, options, where):
    """A dict key or list entry: a family name or a single-family instance."""
    if isinstance(entry, MixedLeaf):
        raise ValueError(f"{where} is a MixedLeaf; give a single family per column (MixedLeaf cannot be nested).")
    if isinstance(entry, ExponentialFamilyLeaf):
        return copy.deepcopy(entry)
    if isinstance(entry, str):
        return _named_family(entry, options)
    raise ValueError(
        f"{where} is {entry!r}; give a family name ({', '.join(map(repr, LEAF_FAMILIES))}) "
        "or an ExponentialFamilyLeaf."
    )


def resolve_leaf(spec, n_features, *, min_var=1e-4, max_var=None, n_categories=None, n_trials=None):
    """The (unfitted) leaf object for an estimator's ``leaf`` parameter.

    Parameters
    ----------
    spec : str, ExponentialFamilyLeaf, dict or list
        - a family name of ``LEAF_FAMILIES``: configured by the keywords;
        - "auto": an :class:`AutoLeaf`, whose ``infer(X)`` picks each
          column's family from the data;
        - a leaf instance: a copy is returned, the keywords are ignored;
        - a dict ``{family: columns}``, family a name or an instance,
          columns a list of column indices (an int for one column), e.g.
          ``{"gaussian": [0, 3], "categorical": [1, 2]}``: every column in
          exactly one entry;
        - a list or tuple with one family (name or instance) per column.

        Names in dicts and lists are configured by the keywords too, and
        equal entries share their hyper-parameters (see ``MixedLeaf``).
        When dict or list give every column the same family the result is
        that family alone: the same model as a ``MixedLeaf`` of one family,
        without its per-family passes.
    n_features : int
        Columns of X (the length of a list, the range of a dict's indices).
    min_var, max_var : float, float or None
        Gaussian variance bounds.
    n_categories, n_trials : int or None
        Categorical states and binomial trials; None leaves them to
        ``infer``.

    Returns
    -------
    ExponentialFamilyLeaf
    """
    options = dict(min_var=min_var, max_var=max_var, n_categories=n_categories, n_trials=n_trials)
    if isinstance(spec, MixedLeaf):
        if spec.n_features != n_features:
            raise ValueError(
                f"The MixedLeaf gives families for {spec.n_features} columns but X has {n_features} features; "
                "give one family per feature of X."
            )
        return MixedLeaf([copy.deepcopy(family) for family in spec.families])
    if isinstance(spec, ExponentialFamilyLeaf):
        return copy.deepcopy(spec)
    if isinstance(spec, str) and spec == "auto":
        return AutoLeaf(options)
    if isinstance(spec, str):
        return _named_family(spec, options)
    if isinstance(spec, dict):
        per_column = _columns_of_dict(spec, n_features, options)
    elif isinstance(spec, (list, tuple)):
        if len(spec) != n_features:
            raise ValueError(
                f"The leaf list has {len(spec)} entries but X has {n_features} features; give one family per column."
            )
        per_column = [_family_entry(entry, options, f"The leaf of column {j}") for j, entry in enumerate(spec)]
    else:
        raise ValueError(
            f"leaf={spec!r} is not understood; give a family name, an ExponentialFamilyLeaf instance, "
            "a dict {family: [columns]} or a list with one family per column."
        )
    if all(family == per_column[0] for family in per_column):
        return per_column[0]
    return MixedLeaf(per_column)


def _columns_of_dict(spec, n_features, options):
    """[family per column] from a {family: columns} spec, every column exactly once."""
    per_column = [None] * n_features
    owner = {}
    for key, cols in spec.items():
        family = _family_entry(key, options, f"The leaf dict key {key!r}")
        cols = [cols] if _is_integer(cols) else cols
        try:
            cols = list(cols)
        except TypeError:
            raise ValueError(f"The columns of {key!r} are {cols!r}; give a list of column indices.") from None
        for col in cols:
            if not _is_integer(col):
                raise ValueError(f"The columns of {key!r} hold {col!r}; column indices must be integers.")
            if not 0 <= col < n_features:
                raise ValueError(
                    f"Column {col} of {key!r} is out of range: X has {n_features} features "
                    f"(columns 0..{n_features - 1})."
                )
            if col in owner:
                raise ValueError(
                    f"Column {col} is listed twice (under {owner[col]!r} and {key!r}); give every column one family."
                )
            owner[col] = key
            per_column[int(col)] = family
    missing = [j for j, family in enumerate(per_column) if family is None]
    if missing:
        flagged = np.zeros(n_features, dtype=bool)
        flagged[missing] = True
        verb = "has" if len(missing) == 1 else "have"
        raise ValueError(
            f"{_columns_text(None, flagged).capitalize()} of X {verb} no leaf family; give every column one "
            "(add them to an entry of the leaf dict)."
        )
    return per_column


def make_leaf(name, *, min_var=1e-4, max_var=None, n_categories=None, n_trials=None):
    """Build the leaf family object registered as ``name`` (see ``resolve_leaf`` for specs of several families)."""
    return _named_family(name, dict(min_var=min_var, max_var=max_var, n_categories=n_categories, n_trials=n_trials))
