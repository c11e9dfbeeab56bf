"""Regularization on small DEBD data sets: MAP-EM pseudocounts and data softening.

For each data set, one fixed model (``--structure``, ``--depth``,
``--n-repetitions``, ``--n-sums``) is fitted with maximum-likelihood EM and
with each regularization strength of the grid (``pseudocount`` in
``--pseudocounts``, ``softening`` in ``--softenings``), everything else at the
estimator's defaults (early stopping on the DEBD validation split:
``fit(train, X_val=valid)``). The strength of each kind is chosen on the
validation log-likelihood only; the test split is read once per fit and
reported beside it. One JSON line per fit, then a markdown table per kind:
plain EM, the chosen strength, and the test gain. ``--skip`` leaves out fits
already recorded in the ``--out`` file, and the tables are made from all the
file holds, so that runs can be split across processes and resumed.

Usage::

    python benchmarks/regularization.py --data ../shared/data \\
        --datasets dna,nips,moviereview,voting,mushrooms --pseudocounts 1,10,100 --softenings 0.999,0.99 \\
        --out out/regularization.jsonl --skip
"""

import argparse
import json
import time
import warnings
from pathlib import Path

from _data import default_data_dir, load_debd

from skpc import EinsumNetworkDensity

SMALL_SETS = "dna,nips,moviereview,voting,mushrooms"


def fit_one(name, splits, args, **regularization):
    """Fit one model on the train split; its train/valid/test mean log-likelihoods."""
    train, valid, test = splits
    model = EinsumNetworkDensity(
        structure=args.structure, depth=args.depth, n_repetitions=args.n_repetitions, n_sums=args.n_sums,
        max_iter=args.max_iter, max_full_batch_iter=args.max_full_batch_iter, random_state=args.seed,
        **regularization,
    )
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(train, X_val=valid)
    return {
        "dataset": name,
        **{k: float(v) for k, v in regularization.items()},
        "train_ll": round(float(model.score(train)), 3),
        "valid_ll": round(float(model.score(valid)), 3),
        "test_ll": round(float(model.score(test)), 3),
        "n_parameters": int(model.n_parameters_) if hasattr(model, "n_parameters_") else None,
        "epochs": int(model.n_iter_),
        "seconds": round(time.perf_counter() - start, 1),
        "warnings": sorted({w.category.__name__ for w in caught}),
    }


def _same_fit(record, name, regularization):
    """Whether a recorded fit is that of data set ``name`` with these strengths."""
    settings = {"pseudocount": 0.0, "softening": 1.0}
    return record["dataset"] == name and all(
        record.get(k, v) == regularization.get(k, v) for k, v in settings.items())


def floats(text):
    return [float(x) for x in text.split(",") if x]


def table(records, kind, off):
    """Markdown rows: plain EM against the strength of ``kind`` chosen on validation."""
    rows = [f"| data set | plain EM test (valid) | {kind} chosen on valid | its test (valid) | test gain |",
            "|---|---|---|---|---|"]
    for name in dict.fromkeys(r["dataset"] for r in records):
        mine = [r for r in records if r["dataset"] == name]
        plain = next(r for r in mine if r.get("pseudocount", 0.0) == 0.0 and r.get("softening", 1.0) == 1.0)
        tried = [r for r in mine if kind in r and r[kind] != off] + [plain]
        best = max(tried, key=lambda r: r["valid_ll"])
        chosen = best.get(kind, off)
        rows.append(f"| {name} | {plain['test_ll']:.2f} ({plain['valid_ll']:.2f}) | {chosen:g} | "
                    f"{best['test_ll']:.2f} ({best['valid_ll']:.2f}) | {best['test_ll'] - plain['test_ll']:+.2f} |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--datasets", default=SMALL_SETS)
    parser.add_argument("--pseudocounts", default="0.1,1,10,100", help="MAP-EM strengths tried (0 always runs)")
    parser.add_argument("--softenings", default="", help="data-softening strengths tried, e.g. 0.999,0.99,0.95")
    parser.add_argument("--structure", default="rat")
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--n-repetitions", type=int, default=10)
    parser.add_argument("--n-sums", type=int, default=20)
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--max-full-batch-iter", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also append the JSON lines to this file")
    parser.add_argument("--skip", action="store_true", help="skip the fits --out already holds; tables from all of it")
    args = parser.parse_args(argv)
    done = []
    if args.out is not None and args.out.exists():
        done = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    grids = [("pseudocount", 0.0, floats(args.pseudocounts)), ("softening", 1.0, floats(args.softenings))]
    records = list(done) if args.skip else []
    for name in args.datasets.split(","):
        splits = load_debd(args.data, name)
        # softening runs without the MAP prior, so that each kind is measured alone
        runs = [{"pseudocount": 0.0}] + [{"pseudocount": 0.0, kind: v} if kind == "softening" else {kind: v}
                                         for kind, off, values in grids for v in values if v != off]
        for regularization in runs:
            if args.skip and any(_same_fit(r, name, regularization) for r in done):
                continue
            record = fit_one(name, splits, args, **regularization)
            records.append(record)
            line = json.dumps(record)
            print(line, flush=True)
            if args.out is not None:
                with open(args.out, "a") as f:
                    f.write(line + "\n")
    for kind, off, values in grids:
        if values:
            print(f"\n{kind}:\n" + table(records, kind, off))


if __name__ == "__main__":
    main()
