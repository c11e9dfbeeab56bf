"""The epoch loop the quality benchmarks share: early stopping on a
validation split with a decaying stochastic-EM step size."""

import copy
import math
import sys
import time


def add_training_arguments(parser, max_epochs, polish_epochs=0, full_batch_share=0.0):
    parser.add_argument("--max-epochs", type=int, default=max_epochs)
    parser.add_argument("--patience", type=int, default=3, help="epochs without a validation gain before the step size decays")
    parser.add_argument("--step-decay", type=float, default=0.5)
    parser.add_argument("--max-decays", type=int, default=5, help="stop at the next plateau after this many decays")
    parser.add_argument(
        "--polish-epochs",
        type=int,
        default=polish_epochs,
        help="then at most this many full-batch EM epochs (step 1) from the best model, while they improve on validation",
    )
    parser.add_argument(
        "--full-batch-share",
        type=float,
        default=full_batch_share,
        help="share of the remaining time kept for those full-batch epochs (the stochastic phase stops earlier)",
    )


def train_with_early_stopping(model, train, valid, args, deadline):
    """Fit one epoch at a time (warm start), keeping the best model on the validation split.

    Stochastic EM at a fixed step size ends in a noise floor; when the
    validation log-likelihood has not improved for ``args.patience`` epochs,
    training resumes from the best model with the step size multiplied by
    ``args.step_decay``, at most ``args.max_decays`` times. Each epoch draws
    its own batch order (a warm-started fit with a fixed seed would replay
    the same one).

    Then, if ``args.polish_epochs`` and time allow (``args.full_batch_share``
    of the time to ``deadline`` is kept for them), full-batch EM epochs
    (step size 1: each M-step the exact maximizer of the expected complete
    log-likelihood over all training samples, free of mini-batch noise) go on
    from the best model while each one improves the validation
    log-likelihood.

    Returns (best model, its validation log-likelihood, epochs run, step
    decays, full-batch epochs kept).
    """
    model.set_params(max_iter=1, warm_start=True)
    now = time.perf_counter()
    stochastic_deadline = now + (deadline - now) * (1.0 - args.full_batch_share if args.polish_epochs else 1.0)
    best, best_ll, epochs, waited, decays = None, -math.inf, 0, 0, 0
    while epochs < args.max_epochs and (epochs == 0 or time.perf_counter() < stochastic_deadline):
        model.set_params(random_state=args.seed * 100_003 + epochs)
        model.fit(train)
        epochs += 1
        ll = model.score(valid)
        if ll > best_ll + 1e-4:
            best, best_ll, waited = copy.deepcopy(model), ll, 0
        else:
            waited += 1
            if waited >= args.patience:
                if decays == args.max_decays:
                    break
                decays += 1
                step = model.learning_rate * args.step_decay
                model = copy.deepcopy(best).set_params(learning_rate=step)
                waited = 0
        if args.verbose:
            print(f"  epoch {epochs}: valid {ll:.4f} (best {best_ll:.4f}, step {model.learning_rate:.3g})", file=sys.stderr, flush=True)
    polished = 0
    if args.polish_epochs:
        model = copy.deepcopy(best).set_params(batch_size=None, learning_rate=1.0)
    while polished < args.polish_epochs and time.perf_counter() < deadline:
        model.fit(train)
        epochs += 1
        ll = model.score(valid)
        if args.verbose:
            print(f"  full-batch epoch: valid {ll:.4f} (best {best_ll:.4f})", file=sys.stderr, flush=True)
        if ll <= best_ll + 1e-4:
            break
        best, best_ll = copy.deepcopy(model), ll
        polished += 1
    return best, best_ll, epochs, decays, polished
