"""Command line: ``python -m skpc <command>`` (also installed as ``skpc``).

Commands
--------
demo
    Fit an Einsum Network on scikit-learn's 8x8 digits, print train and test
    log-likelihoods, and write a picture of real, sampled and inpainted
    digits. See :mod:`skpc.demo`.
"""

import argparse
import sys


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
    return parser


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
