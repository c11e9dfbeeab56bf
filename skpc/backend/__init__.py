"""The torch backend: the only package of skpc that imports torch."""

from .circuit import CircuitParams, CompiledCircuit
from .em import ExpectedStatistics, e_step, m_step
from .leaves import (
    BernoulliLeaf,
    BinomialLeaf,
    CategoricalLeaf,
    ExponentialFamilyLeaf,
    GaussianLeaf,
    make_leaf,
)

__all__ = [
    "BernoulliLeaf",
    "BinomialLeaf",
    "CategoricalLeaf",
    "CircuitParams",
    "CompiledCircuit",
    "ExpectedStatistics",
    "ExponentialFamilyLeaf",
    "GaussianLeaf",
    "e_step",
    "m_step",
    "make_leaf",
]
