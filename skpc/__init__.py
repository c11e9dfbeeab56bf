"""skpc: probabilistic circuits for scikit-learn, on torch."""

from .einet import EinsumNetworkDensity
from .structure import RegionGraph, poon_domingos, random_binary_trees

__version__ = "0.1.0"

__all__ = ["EinsumNetworkDensity", "RegionGraph", "poon_domingos", "random_binary_trees", "__version__"]
