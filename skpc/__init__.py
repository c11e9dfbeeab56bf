"""skpc: probabilistic circuits for scikit-learn, on torch."""

from .classifier import EinsumNetworkClassifier
from .einet import EinsumNetworkDensity
from .hmm import HMMLanguageModel
from .latent import LatentAssigner
from .lvd import LVDDensity
from .outlier import CircuitOutlierDetector
from .structure import RegionGraph, poon_domingos, random_binary_trees
from .text import SuffixAssigner, TokenWindows

__version__ = "0.1.0"

__all__ = [
    "CircuitOutlierDetector",
    "EinsumNetworkClassifier",
    "EinsumNetworkDensity",
    "HMMLanguageModel",
    "LatentAssigner",
    "LVDDensity",
    "RegionGraph",
    "SuffixAssigner",
    "TokenWindows",
    "poon_domingos",
    "random_binary_trees",
    "__version__",
]
