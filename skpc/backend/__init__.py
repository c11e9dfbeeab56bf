"""The torch backend: the only package of skpc that imports torch."""

from .circuit import CircuitLayout, CircuitParams, CompiledCircuit, ForwardPass, WeightSpec
from .em import ExpectedStatistics, LatentEvidence, SelectedOutput, e_step, log_likelihood, m_step
from .layers import log_einsum_exp, log_hadamard_exp, log_matmul_exp, log_mix, log_root
from .leaves import (
    LEAF_FAMILIES,
    LEAF_NAMES,
    AutoLeaf,
    BernoulliLeaf,
    BinomialLeaf,
    CategoricalLeaf,
    ExponentialFamilyLeaf,
    GaussianLeaf,
    MixedLeaf,
    PoissonLeaf,
    make_leaf,
    resolve_leaf,
)
from .train import EpochRecord, Schedule, Trainer, TrainingResult

__all__ = [
    "LEAF_FAMILIES",
    "LEAF_NAMES",
    "AutoLeaf",
    "BernoulliLeaf",
    "BinomialLeaf",
    "CategoricalLeaf",
    "CircuitLayout",
    "CircuitParams",
    "CompiledCircuit",
    "EpochRecord",
    "ExpectedStatistics",
    "ExponentialFamilyLeaf",
    "ForwardPass",
    "GaussianLeaf",
    "LatentEvidence",
    "MixedLeaf",
    "PoissonLeaf",
    "Schedule",
    "SelectedOutput",
    "Trainer",
    "TrainingResult",
    "WeightSpec",
    "e_step",
    "log_einsum_exp",
    "log_hadamard_exp",
    "log_likelihood",
    "log_matmul_exp",
    "log_mix",
    "log_root",
    "m_step",
    "make_leaf",
    "resolve_leaf",
]
