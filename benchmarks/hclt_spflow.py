"""Hidden Chow-Liu trees (HCLT): skpc beside SPFlow 1.1's HCLT learner, on DEBD data.

For each DEBD data set and each K (hidden states per variable: skpc's
``n_sums``, SPFlow's ``num_hidden_cats``), four children run one after the
other, each a fresh process with its library's own interpreter (never two at
once):

- ``skpc:em``, ``skpc:adam``: ``benchmarks/peers/run_skpc_hclt.py``
  (``skpc.structure.chow_liu_tree`` + ``hclt_region_graph``, timed, then
  ``EinsumNetworkDensity(structure=<that graph>, layer="cp",
  leaf="bernoulli", n_sums=K)``; stochastic EM at skpc's default step 0.5
  (``--em-step`` changes it), or Adam);
- ``spflow:em``, ``spflow:adam``: ``benchmarks/peers/run_spflow_hclt.py``
  (``spflow.zoo.hclt.learn_hclt_binary(train, num_hidden_cats=K)``, timed;
  SPFlow's ``expectation_maximization_batched``, or Adam in the RAT-SPN
  peers' loop).

Every child trains exactly ``--epochs`` epochs over the DEBD training split
in shuffled mini-batches of ``--batch-size``, with ``--threads`` torch threads
(and ``OMP_NUM_THREADS``/``MKL_NUM_THREADS``); the first epoch is reported
apart (set-up, first-touch allocations), the other ``epochs - 1`` are the
timed ones (median: ``epoch_s``). Each child records structure-learning
seconds, the epoch times, peak resident memory (``ru_maxrss``; ``model_rss_mb``
is the peak less the level after imports and data loading), the parameter
count, the Chow-Liu tree's edges, and the mean train/valid/test
log-likelihood (nats per row) after training. A child that exceeds its
``--time-limit`` budget stops after the epoch that reached it (status
``budget``); one still running at twice the limit plus 60 s is killed
(``timeout``); a missing peer venv gives ``skipped``.

The markdown table pairs the libraries per (data set, K): SPFlow epoch s /
skpc epoch s (the speed-up; also from the process CPU time of the
same epochs, less distorted by other load on the machine), SPFlow peak RSS / skpc peak RSS, and test LL of
skpc minus SPFlow (positive: skpc better). JSONL records go to
``--out/hclt_spflow.jsonl``, the table to ``--out/hclt_spflow.md``.

Usage::

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/hclt_spflow.py --datasets nltcs,plants \\
        --n-sums 16,32 --epochs 10 --threads 1 --out benchmarks/out --peer-venvs /work/peer-venvs
"""

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from _children import fmt, interpreter, ratio, run_json_child
from _data import default_data_dir

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"
RUNS = [("skpc", "em"), ("skpc", "adam"), ("spflow", "em"), ("spflow", "adam")]
# The pairs of the table: like for like, and SPFlow's Adam beside skpc's default (EM),
# since SPFlow's mini-batch EM may leave non-finite parameters (then its LL is "-").
PAIRS = [("em", "em"), ("adam", "adam"), ("em", "adam")]  # (skpc method, spflow method)


def run_child(library, method, dataset, n_sums, args):
    """One fresh process for one (library, method, data set, K); returns its record."""
    base = {"library": library, "method": method, "dataset": dataset, "n_sums": n_sums}
    python = interpreter(library, args)
    if not Path(python).exists():
        return dict(base, status="skipped", error=f"no interpreter at {python}; create the venv (benchmarks/README.md)")
    config = {
        "data_dir": str(args.data),
        "dataset": dataset,
        "n_sums": n_sums,
        "method": method,
        "epochs": args.epochs,
        "time_budget_s": args.time_limit,
        "batch_size": args.batch_size,
        "learning_rate": args.learning_rate,
        "threads": args.threads,
        "seed": args.seed,
        "em_step": args.em_step,  # skpc only (SPFlow's EM has no step size)
    }
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.pop("PYTHONPATH", None)  # each venv sees only its own packages
    cmd = [python, str(PEERS / f"run_{library}_hclt.py"), json.dumps(config)]
    # The child stops at its budget after the epoch that reached it; the kill leaves room for that epoch.
    return run_json_child(cmd, env, base, 2 * args.time_limit + 60, f"limit {args.time_limit} s")


# ------------------------------------------------------------------ reporting
def _diff(a, b):
    if a is None or b is None:
        return None
    return a - b


def _same_tree(a, b):
    if not a.get("tree_edges") or not b.get("tree_edges"):
        return "-"
    shared = len({tuple(e) for e in a["tree_edges"]} & {tuple(e) for e in b["tree_edges"]})
    return f"{shared}/{len(a['tree_edges'])}"


def markdown(records, args):
    """Two tables: one row per pair of runs (ratios), one per run (raw numbers)."""
    by_key = {(r["library"], r["method"], r["dataset"], r["n_sums"]): r for r in records}
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    ks = list(dict.fromkeys(r["n_sums"] for r in records))
    lines = [
        f"{args.epochs} epochs (first one untimed), batch {args.batch_size}, Adam lr {args.learning_rate}, "
        f"skpc EM step {args.em_step or 0.5}, {args.threads} thread(s), seed {args.seed}.",
        "",
        "| data set | K | skpc vs SPFlow | structure s (SPFlow / skpc) | epoch s (SPFlow / skpc) | "
        "**speed-up** | CPU s speed-up | peak RSS MB (SPFlow / skpc) | RSS ratio | test LL (SPFlow / skpc) | **LL skpc - SPFlow** |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dataset in datasets:
        for k in ks:
            for mine, theirs in PAIRS:
                s = by_key.get(("skpc", mine, dataset, k), {})
                p = by_key.get(("spflow", theirs, dataset, k), {})
                if not s or not p:
                    continue
                lines.append(
                    f"| {dataset} | {k} | {mine} vs {theirs} "
                    f"| {fmt(p.get('structure_seconds'))} / {fmt(s.get('structure_seconds'))} "
                    f"| {fmt(p.get('epoch_s'))} / {fmt(s.get('epoch_s'))} "
                    f"| **{fmt(ratio(p.get('epoch_s'), s.get('epoch_s')))}x** "
                    f"| {fmt(ratio(p.get('epoch_cpu_s'), s.get('epoch_cpu_s')))}x "
                    f"| {fmt(p.get('peak_rss_mb'), 4)} / {fmt(s.get('peak_rss_mb'), 4)} "
                    f"| {fmt(ratio(p.get('peak_rss_mb'), s.get('peak_rss_mb')))} "
                    f"| {fmt(p.get('test_ll'), 5)} / {fmt(s.get('test_ll'), 5)} "
                    f"| **{fmt(_diff(s.get('test_ll'), p.get('test_ll')), 3)}** |"
                )
    lines += [
        "",
        "| run | data set | K | status | params | first epoch s | epoch s | epoch CPU s | model RSS MB "
        "| train LL | valid LL | test LL | same tree edges as skpc | load avg (start / end) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        s = by_key.get(("skpc", r["method"], r["dataset"], r["n_sums"]), {})
        load = f"{fmt((r.get('loadavg_start') or [None])[0], 2)} / {fmt((r.get('loadavg_end') or [None])[0], 2)}"
        note = r.get("status", "?")
        if r.get("nonfinite_params"):
            note += " (non-finite parameters)"
        if r.get("error"):
            note += f": {r['error'][:80]}"
        lines.append(
            f"| {r['library']}:{r['method']} | {r['dataset']} | {r['n_sums']} | {note} | {fmt(r.get('n_params'))} "
            f"| {fmt(r.get('first_epoch_s'))} | {fmt(r.get('epoch_s'))} | {fmt(r.get('epoch_cpu_s'))} "
            f"| {fmt(r.get('model_rss_mb'), 4)} | {fmt(r.get('train_ll'), 5)} | {fmt(r.get('valid_ll'), 5)} "
            f"| {fmt(r.get('test_ll'), 5)} | {_same_tree(s, r) if r['library'] != 'skpc' else '-'} | {load} |"
        )
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default="nltcs,plants", help="comma-separated DEBD names")
    parser.add_argument("--n-sums", default="16,32", help="comma-separated K (hidden states per variable)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs per run, the first untimed")
    parser.add_argument("--time-limit", type=float, default=300.0, help="seconds per run (the child stops after the epoch that passes it)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads in every child")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--learning-rate", type=float, default=0.01, help="Adam's, in both libraries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--em-step", type=float, default=None, help="skpc's stochastic-EM step size (default: skpc's own, 0.5)"
    )
    parser.add_argument("--methods", default="skpc:em,skpc:adam,spflow:em,spflow:adam", help="runs, library:method")
    parser.add_argument("--out", default=str(HERE / "out"))
    parser.add_argument("--data", default=str(default_data_dir()), help="folder holding debd/<name>/")
    parser.add_argument(
        "--peer-venvs",
        default=os.environ.get("SKPC_PEER_VENVS", "/work/peer-venvs"),
        help="folder holding one venv per peer (spflow/); env SKPC_PEER_VENVS",
    )
    parser.add_argument("--skpc-python", default=sys.executable, help="interpreter with skpc installed")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not timed")
    runs = [tuple(m.split(":")) for m in args.methods.split(",")]
    unknown = [r for r in runs if r not in RUNS]
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {[':'.join(r) for r in RUNS]}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jsonl = out / "hclt_spflow.jsonl"
    records = []
    with open(jsonl, "w") as f:
        for dataset in args.datasets.split(","):
            for k in (int(x) for x in args.n_sums.split(",")):
                for library, method in runs:
                    record = run_child(library, method, dataset, k, args)
                    records.append(record)
                    f.write(json.dumps(record) + "\n")
                    f.flush()
                    print(
                        f"{library}:{method} {dataset} K={k}: {record.get('status')} "
                        f"epoch {fmt(record.get('epoch_s'))} s, test LL {fmt(record.get('test_ll'), 5)}",
                        file=sys.stderr,
                        flush=True,
                    )
    table = markdown(records, args)
    (out / "hclt_spflow.md").write_text(table + "\n")
    print(table)
    loads = [r["loadavg_start"][0] for r in records if r.get("loadavg_start")]
    if loads:
        print(f"\n1-minute load average at the children's starts: median {statistics.median(loads):.2f}, max {max(loads):.2f}")


if __name__ == "__main__":
    main()
