"""Benchmark child for cirkit (libcirkit 0.3.1), run with the cirkit venv's python.

Pipeline as in cirkit's own examples: a ``RandomBinaryTree`` region graph,
a symbolic circuit built from it with Gaussian input layers and Tucker
sum-product layers (a Kronecker product of the two children's K units
followed by a dense sum to K units: the Einsum Network layer), compiled with
the torch backend (``lse-sum`` semiring, folding and optimization on), trained
by minimizing the negative log-likelihood with Adam (lr 0.01).

Structure as compared with skpc:

- leaves: cirkit's region graph keeps multivariate leaf regions and, with
  ``factorize_multivariate=True``, makes each a product (Hadamard layer) of K
  univariate Gaussians per variable, as skpc does;
- every inner region has K units; the root region has R partitions (one per
  repetition), each a Tucker layer with ``num_classes=1`` output, mixed by a
  sum layer over the R partitions. skpc's root partitions keep K outputs, mix
  them, and add a root sum over K (K*K*K instead of K*K weights per root
  partition);
- weights are unconstrained reals through a softmax; the Gaussian standard
  deviation is a scaled sigmoid in [1e-5, 1] (skpc: expectation parameters,
  variance projected into [min_var, inf)).
"""

import functools

import torch

from _harness import adam_epochs, finish_torch_peer, make_data, run_main, time_training

import cirkit
from cirkit.pipeline import PipelineContext
from cirkit.symbolic.parameters import mixing_weight_factory
from cirkit.templates.region_graph import RandomBinaryTree
from cirkit.templates.utils import Parameterization, name_to_input_layer_factory, parameterization_to_factory


def build(config):
    rg = RandomBinaryTree(
        config["n_features"],
        depth=config["depth"],
        num_repetitions=config["n_repetitions"],
        seed=config["structure_seed"],
    )
    weights = parameterization_to_factory(Parameterization(activation="softmax", initialization="normal"))
    symbolic = rg.build_circuit(
        input_factory=name_to_input_layer_factory("gaussian"),
        sum_product="tucker",
        sum_weight_factory=weights,
        nary_sum_weight_factory=functools.partial(mixing_weight_factory, param_factory=weights),
        num_input_units=config["n_sums"],
        num_sum_units=config["n_sums"],
        num_classes=1,
        factorize_multivariate=True,
    )
    ctx = PipelineContext(backend="torch", semiring="lse-sum", fold=True, optimize=True)
    return ctx.compile(symbolic)


def body(config, record):
    X = torch.from_numpy(make_data(config))
    record["cirkit"] = getattr(cirkit, "__version__", "0.3.1")
    record.set_baseline()
    torch.manual_seed(config["structure_seed"])
    circuit = build(config)
    if config["method"] != "adam":
        raise ValueError(f"cirkit adapter runs Adam only, not {config['method']!r}")
    generator = torch.Generator().manual_seed(config["data_seed"])
    train_epoch = adam_epochs(circuit, circuit, X, config["batch_size"], generator)  # circuit(X): (B, 1, 1)

    time_training(train_epoch, config, record)
    finish_torch_peer(circuit, X, circuit, record)
    record["structure"] = (
        "cirkit RandomBinaryTree + tucker layers (Kronecker then dense sum), K units per region, "
        "root: R tucker partitions with 1 output each, mixed over R"
    )


if __name__ == "__main__":
    run_main("cirkit", body)
