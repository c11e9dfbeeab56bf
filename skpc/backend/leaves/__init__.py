"""Exponential-family leaves in expectation parameters.

A leaf *region* of an Einsum Network is a vector of K densities, each the
product of univariate densities over the region's scope (Peharz et al. 2020,
section 3.3). All leaf regions are evaluated together in a padded layout:
leaf region l has the variables ``scope[l, :]`` (S wide; narrower regions are
padded with a dummy, always-missing variable whose index is D = n_features),
and

    phi    (L, S, K, T) expectation parameters E[T(x)] of the K univariate
                        densities of each (region, variable) pair.

A region's log-density is ``sum_s obs_s * log p(x_s | phi_s)``, so a missing
entry contributes log 1 = 0: it is marginalized exactly.

For a family with natural parameters theta(phi), log normalizer term c(phi)
and base measure h(x),

    log p(x) = T(x) . theta + c + log h(x),

so the whole leaf layer is ONE batched matmul of the stacked natural
parameters against the masked statistics [obs*T(x), obs, obs*log h(x)] of the
batch: ``(L, K, S*F) @ (L, S*F, B) -> (L, K, B)``. No dense (n_features x K x
regions) tensor is formed. Categorical leaves gather log-probabilities instead
of multiplying by one-hot vectors.

EM needs, per leaf, the posterior-weighted statistics ``sum_b p(leaf|x_b)
T(x_b)``; since the region value is a sum over its scope, the posterior of a
univariate leaf equals the gradient of log p(x) with respect to its region's
value, so ``expected_statistics`` takes that gradient G (L, K, B) and needs
one more matmul.

Families, the registry and mixed features
-----------------------------------------
``LEAF_FAMILIES`` maps names to the built-in families; ``resolve_leaf`` turns
an estimator's ``leaf`` parameter (a name, a leaf instance, a dict
``{family: columns}`` or a list with one family per column) into a leaf
object. Dicts and lists that give the columns different families make a
``MixedLeaf``: one family per feature, still ONE phi tensor of shape
(L, S, K, T_max), T_max the largest T of its families, with the columns a
pair's family does not use held at 0.

The life of a leaf object in an estimator: ``resolve_leaf`` (unfitted,
hyper-parameters such as ``n_categories`` may be None) -> ``infer(X)`` (a new,
fitted leaf: the estimator's ``leaf_``; ``validate(X)`` on every later X) ->
``for_scope(scope)`` (the object a compiled circuit uses) ->
``init_from_data``, ``prepare``/``region_log_prob``/``expected_statistics``,
``m_step``, ``sample``/``mode``.

Modules: ``base`` (the contract, ``ExponentialFamilyLeaf``), ``families``
(Gaussian, Bernoulli, Binomial, Categorical, Poisson), ``mixed``
(``MixedLeaf``), ``registry`` (``LEAF_FAMILIES``, ``resolve_leaf``).
"""

from .base import PROB_FLOOR, RATE_FLOOR, ExponentialFamilyLeaf
from .families import BernoulliLeaf, BinomialLeaf, CategoricalLeaf, GaussianLeaf, PoissonLeaf
from .mixed import MixedLeaf
from .registry import LEAF_FAMILIES, LEAF_NAMES, AutoLeaf, make_leaf, resolve_leaf

__all__ = [
    "LEAF_FAMILIES",
    "LEAF_NAMES",
    "AutoLeaf",
    "PROB_FLOOR",
    "RATE_FLOOR",
    "BernoulliLeaf",
    "BinomialLeaf",
    "CategoricalLeaf",
    "ExponentialFamilyLeaf",
    "GaussianLeaf",
    "MixedLeaf",
    "PoissonLeaf",
    "make_leaf",
    "resolve_leaf",
]
