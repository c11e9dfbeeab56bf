"""Benchmark child for SPFlow (spflow 1.1.0), run with the spflow venv's python.

Model: ``spflow.zoo.einet.Einet`` with ``layer_type="einsum"`` (the Einsum
Network layer; SPFlow's default "linsum" is a cheaper linear layer),
``structure="top-down"``, ``depth=D``, ``num_repetitions=R``,
``num_sums=K``, ``num_leaves=K``, ``num_classes=1``, over one ``Normal``
leaf module of all features with K channels and R repetitions (initialized as
SPFlow's own Einet encoder does: loc ~ N(0, 1), log-variance ~ N(0, 1)).

Structure as compared with skpc: SPFlow's ``Factorize`` splits the features
of each repetition into 2**D random groups (a product of univariate Gaussians
per group, K channels), then D einsum layers, the top one with 1 output
(``num_classes``), then a ``RepetitionMixingLayer`` over the R repetitions.
The repetitions are a tensor dimension, not a region graph: no regions are
shared between repetitions (skpc merges identical scopes).

Training: ``adam`` minimizes the negative log-likelihood with
``torch.optim.Adam`` (lr 0.01) in the same loop as the cirkit child;
``em`` calls SPFlow's own ``expectation_maximization_batched`` for one epoch
at a time over a shuffled DataLoader of batch 100 (its EM replaces the
parameters by each batch's M-step: no step size).
"""

import torch
from torch.utils.data import DataLoader, TensorDataset

from _harness import adam_epochs, finish_torch_peer, make_data, run_main, time_training

import spflow
from spflow.learn.expectation_maximization import expectation_maximization_batched
from spflow.modules.leaves.normal import Normal
from spflow.zoo.einet.einet import Einet



def build(config):
    F, K, R = config["n_features"], config["n_sums"], config["n_repetitions"]
    shape = (F, K, R)
    # SPFlow's EM drives the leaf means to NaN within the first epoch at the
    # paper's setting (from this init and from a data-dependent one alike);
    # argument validation would then raise, so it is off for EM: the epochs
    # are still timed, and the record says the parameters went non-finite.
    validate = config["method"] != "em"
    leaf = Normal(
        scope=list(range(F)),
        out_channels=K,
        num_repetitions=R,
        loc=torch.randn(shape),
        scale=torch.exp(0.5 * torch.randn(shape)),
        validate_args=validate,
    )
    return Einet(
        leaf_modules=[leaf],
        num_classes=1,
        num_sums=K,
        num_leaves=K,
        depth=config["depth"],
        num_repetitions=R,
        layer_type="einsum",
        structure="top-down",
    )


def body(config, record):
    X = torch.from_numpy(make_data(config))
    record["spflow"] = getattr(spflow, "__version__", "1.1.0")
    record.set_baseline()
    torch.manual_seed(config["structure_seed"])
    model = build(config)
    generator = torch.Generator().manual_seed(config["data_seed"])

    if config["method"] == "adam":
        # log_likelihood: (B, 1, 1, 1)
        train_epoch = adam_epochs(model, model.log_likelihood, X, config["batch_size"], generator)

    elif config["method"] == "em":
        loader = DataLoader(TensorDataset(X), batch_size=config["batch_size"], shuffle=True, generator=generator)

        def train_epoch():
            return float(expectation_maximization_batched(model, loader, num_epochs=1)[-1])

    else:
        raise ValueError(f"spflow adapter runs 'adam' or 'em', not {config['method']!r}")

    time_training(train_epoch, config, record)
    finite = all(bool(torch.isfinite(p).all()) for p in model.parameters())
    record["nonfinite_params"] = not finite
    finish_torch_peer(model.log_likelihood, X, model, record)
    record["structure"] = (
        "spflow Einet(layer_type='einsum', top-down): Factorize into 2**D random groups per repetition, "
        "D einsum layers (top one with 1 output), RepetitionMixingLayer over R"
    )


if __name__ == "__main__":
    run_main("spflow", body)
