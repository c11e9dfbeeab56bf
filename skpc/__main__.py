"""Command line: ``python -m skpc <command>`` (also installed as ``skpc``).

Commands
--------
demo
    Fit an Einsum Network on scikit-learn's 8x8 digits, print train and test
    log-likelihoods, and write a picture of real, sampled and inpainted
    digits. See :mod:`skpc.demo`.
fit
    Fit an Einsum Network density to the rows of a ``.npy`` file (memory
    mapped: streamed, never loaded whole) or to MNIST; under ``torchrun``
    every process reads its own shard of the rows and they train one model
    (data-parallel EM)::

        torchrun --nproc_per_node=2 -m skpc fit mnist --structure pd --max-iter 3

    Rank 0 prints the figures (and writes ``--output``).
"""

import argparse
import json
import os
import sys
import time


def _positive_int(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {text}")
    return value


def _build_parser():
    parser = argparse.ArgumentParser(
        prog="skpc", description="Probabilistic circuits (Einsum Networks) for scikit-learn, on torch."
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    demo = commands.add_parser(
        "demo",
        help="fit an Einsum Network on 8x8 digits; print log-likelihoods, write a PNG",
        description=(
            "Fit an EinsumNetworkDensity on scikit-learn's bundled 8x8 digits (no download), print train and "
            "test log-likelihood (nats per image and bits per dimension), the parameter count and the fit "
            "time, and write a PNG of real test digits, samples and inpainted digits."
        ),
    )
    demo.add_argument("--output", default="skpc_demo.png", help="PNG to write (default: %(default)s)")
    demo.add_argument(
        "--max-iter", type=_positive_int, default=None, help="epochs of stochastic EM (default: 20; 3 with --quick)"
    )
    demo.add_argument(
        "--device",
        choices=("cpu", "cuda", "auto"),
        default="auto",
        help="where to compute; auto uses CUDA when available (default: %(default)s)",
    )
    demo.add_argument("--seed", type=int, default=0, help="seed of the split, the model and sampling (default: 0)")
    demo.add_argument("--quick", action="store_true", help="tiny settings that run in seconds (for smoke tests)")
    demo.set_defaults(handler=_run_demo, subparser=demo)

    fit = commands.add_parser(
        "fit",
        help="fit an Einsum Network density to a .npy file or MNIST (data-parallel under torchrun)",
        description=(
            "Fit an EinsumNetworkDensity to the rows of DATA: a .npy file of shape (n_samples, n_features), "
            "memory-mapped and streamed, or 'mnist' (the 60,000 training images of --data-dir/mnist/mnist.npz, "
            "784 pixels 0..255). Under torchrun (RANK, WORLD_SIZE set) every process reads its own contiguous "
            "shard of the rows and the processes train one model by data-parallel EM; rank 0 prints the "
            "figures as one JSON line and writes --output."
        ),
    )
    fit.add_argument("data", help="a .npy file, or 'mnist'")
    fit.add_argument("--data-dir", default=os.environ.get("SKPC_DATA", os.path.join("..", "shared", "data")),
                     help="folder holding mnist/mnist.npz (default: $SKPC_DATA or ../shared/data)")
    fit.add_argument("--structure", choices=("hclt", "rat", "pd"), default="hclt", help="(default: %(default)s, the estimator's)")
    fit.add_argument("--leaf", default=None, help="leaf family (default: categorical for mnist, else gaussian)")
    fit.add_argument("--n-sums", type=_positive_int, default=10)
    fit.add_argument("--depth", type=_positive_int, default=None)
    fit.add_argument("--n-repetitions", type=_positive_int, default=10)
    fit.add_argument("--image-shape", default=None, help="H,W for --structure pd (default: 28,28 for mnist)")
    fit.add_argument("--pd-delta", type=_positive_int, default=None)
    fit.add_argument("--batch-size", type=_positive_int, default=100, help="global mini-batch size (default: 100)")
    fit.add_argument("--full-batch", action="store_true", help="full-batch EM instead of stochastic EM")
    fit.add_argument("--max-iter", type=_positive_int, default=10)
    fit.add_argument("--max-full-batch-iter", type=int, default=0)
    fit.add_argument("--n-rows", type=_positive_int, default=None, help="use only the first N rows")
    fit.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    fit.add_argument("--device", choices=("cpu", "cuda", "auto"), default="cpu",
                     help="cuda: one GPU per process, cuda:LOCAL_RANK, with NCCL (default: %(default)s)")
    fit.add_argument("--backend", choices=("auto", "gloo", "nccl"), default="auto")
    fit.add_argument("--seed", type=int, default=0)
    fit.add_argument("--output", default=None, help="write the fitted model here (joblib), from rank 0")
    fit.add_argument("--verbose", action="store_true", help="one line per epoch (rank 0)")
    fit.set_defaults(handler=_run_fit, subparser=fit)
    return parser


def _load_rows(args, rank, world_size):
    """This process's shard of the rows of DATA (a memmap for .npy files)."""
    import numpy as np

    from .backend.distributed import shard_rows

    if args.data == "mnist":
        path = os.path.join(args.data_dir, "mnist", "mnist.npz")
        if not os.path.exists(path):
            args.subparser.error(f"MNIST not found at {path}; pass --data-dir DIR or set SKPC_DATA.")
        with np.load(path) as f:
            X = f["x_train"].reshape(len(f["x_train"]), -1)
    else:
        if not os.path.exists(args.data):
            args.subparser.error(f"{args.data} does not exist; pass a .npy file of shape (n_samples, n_features).")
        X = np.load(args.data, mmap_mode="r")
        if X.ndim != 2:
            args.subparser.error(f"{args.data} holds an array of shape {X.shape}; it must be 2-D.")
    if args.n_rows is not None:
        X = X[: args.n_rows]
    return X[shard_rows(X.shape[0], rank, world_size)], X.shape[0]


def _run_fit(args):
    from .backend.distributed import finalize, init_from_environment

    rank, world_size, device = init_from_environment(args.device, args.backend)
    try:
        import numpy as np

        from . import EinsumNetworkDensity

        X, n_total = _load_rows(args, rank, world_size)
        mnist = args.data == "mnist"
        image_shape = args.image_shape
        if image_shape is not None:
            image_shape = tuple(int(v) for v in image_shape.split(","))
        elif mnist and args.structure == "pd":
            image_shape = (28, 28)
        model = EinsumNetworkDensity(
            structure=args.structure,
            leaf=args.leaf or ("categorical" if mnist else "gaussian"),
            n_categories=256 if mnist and (args.leaf in (None, "categorical")) else None,
            n_sums=args.n_sums,
            depth=args.depth,
            n_repetitions=args.n_repetitions,
            image_shape=image_shape,
            pd_delta=args.pd_delta,
            batch_size=None if args.full_batch else args.batch_size,
            max_iter=args.max_iter,
            max_full_batch_iter=args.max_full_batch_iter,
            tol=None,
            early_stopping=False,
            dtype=args.dtype,
            device=device,
            random_state=args.seed,
            verbose=int(args.verbose),
        )
        start = time.perf_counter()
        model.fit(X)
        seconds = time.perf_counter() - start
        if rank == 0:
            record = {
                "world_size": world_size,
                "rows": int(n_total),
                "rows_per_process": int(X.shape[0]),
                "n_features": int(model.n_features_in_),
                "n_parameters": int(model.n_parameters_),
                "epochs": int(model.n_iter_),
                "fit_seconds": round(seconds, 3),
                "lower_bound": float(model.lower_bound_),
                "bits_per_dim": float(-model.lower_bound_ / (model.n_features_in_ * np.log(2))) if mnist else None,
                "device": device,
            }
            print(json.dumps(record), flush=True)
            if args.output:
                import joblib

                joblib.dump(model, args.output)
    finally:
        finalize()
    return 0


def _run_demo(args):
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            args.subparser.error("--device cuda was requested but CUDA is not available here; use --device cpu or auto.")
    from .demo import run_demo

    run_demo(output=args.output, max_iter=args.max_iter, device=args.device, seed=args.seed, quick=args.quick)
    return 0


def main(argv=None):
    """Run the ``skpc`` command line.

    Parameters
    ----------
    argv : list of str or None
        Arguments without the program name; None reads ``sys.argv[1:]``.

    Returns
    -------
    int
        Exit status (0 on success). Usage errors exit through argparse (2).
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
