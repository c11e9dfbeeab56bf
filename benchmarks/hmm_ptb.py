"""Penn Treebank test perplexity of HMM language models: LVD against random initialization.

Data: Mikolov's Penn Treebank (``text/ptb/ptb.{train,valid,test}.txt.gz``
under ``--data``), every line followed by ``<eos>`` (929,589 / 73,760 /
82,430 tokens, vocabulary 10,000). Each split is one token stream cut into
non-overlapping windows of 32 tokens (``TokenWindows(window=32,
eos_token="<eos>")``); the last window of a split is padded with missing
tokens (-1), which the HMM marginalizes. The HMM scores every window on its
own: the first token of a window has no context (as in the LVD paper's
windowed setting), so its perplexity is a little above that of a model
reading the stream.

Baselines on the test stream (every token predicted from the token before
it; the first from ``<eos>``): the unigram model and a bigram model
interpolated with the unigram, ``0.7 * p(w | prev) + 0.3 * p(w)``, both
maximum likelihood on the training stream. Reference points measured for
the issue: 640 and 208.

Models: ``HMMLanguageModel(n_states=K, window=32, init=INIT,
homogeneous=--homogeneous, batch_size=--batch-size, position_prior=B, ...)``
for K in ``--states``, INIT in ``--inits`` and B in ``--position-prior`` (a
comma-separated list: shrinkage of the per-position tables toward the
position-pooled ones), fitted on the training windows with
the validation windows for early stopping (``fit(X_train, X_val=X_valid)``).
The number of stochastic EM epochs is bounded by ``--max-iter`` and by
``--budget-minutes`` per fit: one full-batch EM epoch on 2,000 training
windows is timed first for each K (with the same settings), and the epoch
limits are set so that the estimated training time of a fit stays within the
budget (LVD's clustering comes on top and is reported as ``init_s``).

One JSON line per model (with its fit seconds per epoch, LVD included,
and the process's peak RSS so far), then a table; ``--plot FILE`` saves perplexity against the
number of states (matplotlib), as the LVD paper's Figure 1 (right).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hmm_ptb.py [--data DIR] [--states 64,128,256] \\
        [--inits lvd,random] [--position-prior 0,1000] [--budget-minutes 4] [--homogeneous] \\
        [--plot ptb.png] [--out ptb.jsonl]
"""

import argparse
import itertools
import json
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import default_data_dir  # noqa: E402

from skpc.hmm import HMMLanguageModel  # noqa: E402
from skpc.text import SuffixAssigner, TokenWindows, read_lines  # noqa: E402


def load_ptb(data_dir, window):
    root = Path(data_dir) / "text" / "ptb"
    paths = {split: root / f"ptb.{split}.txt.gz" for split in ("train", "valid", "test")}
    for path in paths.values():
        if not path.exists():
            raise SystemExit(f"Penn Treebank not found at {path}; pass --data DIR or set SKPC_DATA.")
    lines = {split: read_lines(path) for split, path in paths.items()}
    tw = TokenWindows(window=window, eos_token="<eos>").fit(lines["train"])
    streams = {split: tw.encode(text) for split, text in lines.items()}
    windows = {split: tw.windows_from_ids(ids) for split, ids in streams.items()}
    return tw, streams, windows


def ngram_baselines(train, test, n_tokens, weight=0.7):
    """Test perplexities of the unigram and the interpolated bigram model (maximum likelihood on train)."""
    unigram = np.bincount(train, minlength=n_tokens) / len(train)
    bigram_counts = np.zeros((n_tokens, n_tokens))
    np.add.at(bigram_counts, (train[:-1], train[1:]), 1.0)
    context = bigram_counts.sum(1, keepdims=True)
    eos = train[-1]  # every line ends in <eos>: the context of the first token
    prev = np.concatenate([[eos], test[:-1]])
    p_bigram = np.where(context[prev, 0] > 0, bigram_counts[prev, test] / np.maximum(context[prev, 0], 1), 0.0)
    p_interpolated = weight * p_bigram + (1 - weight) * unigram[test]
    return float(np.exp(-np.mean(np.log(unigram[test])))), float(np.exp(-np.mean(np.log(p_interpolated))))


def make_model(args, states, init, position_prior, n_tokens, max_iter, max_full_batch_iter, seed):
    assigner = SuffixAssigner(max_windows=args.max_windows, n_components=args.n_components, decay=args.decay)
    return HMMLanguageModel(
        n_states=states, window=args.window, n_tokens=n_tokens, homogeneous=args.homogeneous, init=init,
        assigner=assigner, pseudocount=args.pseudocount, emission_prior=args.emission_prior,
        position_prior=position_prior, max_iter=max_iter, batch_size=args.batch_size,
        learning_rate=args.learning_rate, tol=args.tol, n_iter_no_change=args.n_iter_no_change,
        max_full_batch_iter=max_full_batch_iter, random_state=seed, verbose=args.verbose,
    )


def epoch_seconds(args, states, n_tokens, X_train):
    """Seconds of one training epoch, from a timed full-batch epoch on 2,000 windows."""
    sample = X_train[:2000]
    timings = []
    for max_iter in (1, 2):
        model = HMMLanguageModel(n_states=states, window=args.window, n_tokens=n_tokens,
                                 homogeneous=args.homogeneous, init="random", max_iter=max_iter, batch_size=None,
                                 tol=None, early_stopping=False, random_state=0)
        start = time.perf_counter()
        model.fit(sample)
        timings.append(time.perf_counter() - start)
    per_window = max(timings[1] - timings[0], 1e-3) / len(sample)
    # a stochastic epoch adds one M-step (a pass over the parameters) per batch; counted as 20% more
    stochastic = 1.2 if args.batch_size is not None else 1.0
    return per_window * len(X_train) * stochastic


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--states", default="64,128,256")
    parser.add_argument("--inits", default="lvd,random")
    parser.add_argument("--window", type=int, default=32)
    parser.add_argument("--homogeneous", action="store_true")
    parser.add_argument("--budget-minutes", type=float, default=4.0, help="training time per fit (estimated)")
    parser.add_argument("--max-iter", type=int, default=30)
    parser.add_argument("--max-full-batch-iter", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=2000)
    parser.add_argument("--learning-rate", type=float, default=None)
    parser.add_argument("--tol", type=float, default=1e-2)
    parser.add_argument("--n-iter-no-change", type=int, default=2)
    parser.add_argument("--pseudocount", type=float, default=0.01)
    parser.add_argument("--emission-prior", type=float, default=0.0, help="MAP-EM pseudo-counts per emission row")
    parser.add_argument("--position-prior", default="0",
                        help="comma-separated position_prior values (pseudo-counts of the position-pooled rows); "
                             "default 0, the models of RESULTS section 9 (the estimator's default is 10000)")
    parser.add_argument("--max-windows", type=int, default=10000, help="windows LVD embeds and clusters")
    parser.add_argument("--n-components", type=int, default=64)
    parser.add_argument("--decay", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", type=int, default=0)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    args = parser.parse_args()

    priors = [float(b) for b in args.position_prior.split(",")]
    tw, streams, windows = load_ptb(args.data, args.window)
    V = tw.n_tokens_
    unigram, bigram = ngram_baselines(streams["train"], streams["test"], V)
    records = [dict(model="unigram", test_perplexity=unigram), dict(model="bigram+unigram (0.7)",
                                                                   test_perplexity=bigram)]
    for r in records:
        emit(r, args.out)
    for states in (int(s) for s in args.states.split(",")):
        epoch_s = epoch_seconds(args, states, V, windows["train"])
        epochs = max(1, int(args.budget_minutes * 60 / epoch_s))
        max_iter = max(1, min(args.max_iter, epochs - args.max_full_batch_iter))
        max_full = max(0, min(args.max_full_batch_iter, epochs - max_iter))
        for init, position_prior in itertools.product(args.inits.split(","), priors):
            model = make_model(args, states, init, position_prior, V, max_iter, max_full, args.seed)
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)  # the budget, not convergence, ends a fit
                model.fit(windows["train"], X_val=windows["valid"])
            seconds = time.perf_counter() - start
            first_epoch = model.train_scores_[0]
            record = dict(
                model="hmm", init=init, n_states=states, homogeneous=args.homogeneous,
                test_perplexity=model.perplexity(windows["test"]),
                valid_perplexity=model.perplexity(windows["valid"]),
                train_perplexity=model.perplexity(windows["train"]),
                epochs=model.n_iter_, max_iter=max_iter, max_full_batch_iter=max_full, converged=model.converged_,
                fit_s=seconds, estimated_epoch_s=epoch_s, first_epoch_train_ll=first_epoch,
                n_parameters=model.n_parameters_, batch_size=args.batch_size, pseudocount=args.pseudocount,
                emission_prior=args.emission_prior, position_prior=position_prior,
                fit_s_per_epoch=seconds / model.n_iter_, peak_rss_mb=peak_rss_mb(),  # LVD time included
                max_windows=args.max_windows,
            )
            records.append(record)
            emit(record, args.out)
    print("\n| model | n_states | init | position prior | test ppl | valid ppl | train ppl | epochs | fit (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in records:
        if r["model"] != "hmm":
            print(f"| {r['model']} | | | | {r['test_perplexity']:.1f} | | | | |")
        else:
            kind = "homogeneous HMM" if r["homogeneous"] else "HMM"
            print(f"| {kind} | {r['n_states']} | {r['init']} | {r['position_prior']:g} | {r['test_perplexity']:.1f} | "
                  f"{r['valid_perplexity']:.1f} | {r['train_perplexity']:.1f} | {r['epochs']} | {r['fit_s']:.0f} |")
    if args.plot is not None:
        plot(records, args.plot)


def peak_rss_mb():
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def emit(record, out):
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
        with open(out, "a") as f:
            f.write(line + "\n")


def plot(records, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    priors = sorted({r["position_prior"] for r in records if r["model"] == "hmm"})
    for (init, marker), prior in itertools.product((("lvd", "o"), ("random", "s")), priors):
        rows = sorted((r["n_states"], r["test_perplexity"]) for r in records
                      if r.get("init") == init and r["position_prior"] == prior)
        if rows:
            label = f"HMM, {init} init" + (f", position prior {prior:g}" if len(priors) > 1 else "")
            ax.plot(*zip(*rows), marker=marker, label=label)
    for r, style in zip(records[:2], (":", "--")):
        ax.axhline(r["test_perplexity"], color="gray", linestyle=style, label=f"{r['model']} {r['test_perplexity']:.0f}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("hidden states")
    ax.set_ylabel("PTB test perplexity")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"saved {path}")


if __name__ == "__main__":
    main()
