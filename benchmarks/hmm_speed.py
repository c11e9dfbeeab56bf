"""Seconds per EM iteration and peak memory: skpc's HMM beside hmmlearn's CategoricalHMM.

The setting of issue 12: a homogeneous HMM over the first ``--n-windows``
(2,000) windows of 32 tokens of the Penn Treebank training text (``<eos>``
appended to every line, vocabulary 10,000), ``n_states`` in ``--states``
(64 and 256), full-batch EM.

- ``skpc``: ``HMMLanguageModel(homogeneous=True, init="random",
  batch_size=None, tol=None, early_stopping=False, dtype="float32")``,
  timed through the public API: ``fit(max_iter=1)`` and
  ``fit(max_iter=1 + n)``; the difference over n is the time of one EM
  iteration (E-step by autodiff through the forward pass, M-step), without
  the setup and final scoring both fits share.
- ``hmmlearn``: ``CategoricalHMM(n_components=K, n_features=10000,
  n_iter=n, tol=-inf, init_params="", params="ste")`` from random
  parameters (so no initialization is timed), its default
  ``implementation="log"``; ``--hmmlearn-implementation scaling`` times the
  other one. Its fit time over n iterations.

Every (library, n_states) runs in a fresh process (``--worker``) with
``OMP_NUM_THREADS``, ``MKL_NUM_THREADS`` and torch's threads set to
``--threads``; its peak memory is the process's maximum resident set size
(``VmHWM`` in ``/proc/self/status``), printed beside the resident size right after
importing the library and loading the windows from a ``.npy`` file
(``base_rss_mb``), so that the growth is
what fitting costs. Wall seconds and the process's CPU seconds
(``time.process_time``; on a loaded machine the less distorted figure at one
thread) are both recorded. One JSON line per run, then a table with the
ratios.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hmm_speed.py [--data DIR] [--states 64,256] \\
        [--threads 1] [--iters 3] [--hmmlearn-iters 64:2,256:1] [--out results.jsonl]
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import default_data_dir  # noqa: E402


def rss_mb(field="VmHWM"):
    """Peak (VmHWM) or current (VmRSS) resident memory of this process in MB.

    Not ``resource.getrusage``: Linux carries ru_maxrss across exec, so a
    worker would inherit the parent's peak (the parsed text).
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def load_windows(data_dir, n_windows, window=32):
    from skpc.text import TokenWindows, read_lines

    path = Path(data_dir) / "text" / "ptb" / "ptb.train.txt.gz"
    if not path.exists():
        raise SystemExit(f"Penn Treebank not found at {path}; pass --data DIR or set SKPC_DATA.")
    lines = read_lines(path)
    tw = TokenWindows(window=window, eos_token="<eos>").fit(lines)
    return tw.transform(lines)[:n_windows], tw.n_tokens_


def worker(args):
    import numpy as np

    X = np.load(args.windows)
    n_tokens = args.n_tokens
    if args.worker == "skpc":
        import torch

        torch.set_num_threads(args.threads)
        from skpc.hmm import HMMLanguageModel
    else:
        from hmmlearn import hmm
    base = rss_mb("VmRSS")  # after the imports and the data: the growth is what fitting costs
    K = args.states
    if args.worker == "skpc":

        def fit(n):
            model = HMMLanguageModel(n_states=K, window=X.shape[1], n_tokens=n_tokens, homogeneous=True,
                                     init="random", max_iter=n, batch_size=None, tol=None, early_stopping=False,
                                     dtype="float32", random_state=0)
            start, cpu = time.perf_counter(), time.process_time()
            model.fit(X)
            return time.perf_counter() - start, time.process_time() - cpu, model

        one, one_cpu, _ = fit(1)
        more, more_cpu, model = fit(1 + args.iters)
        per_iter = (more - one) / args.iters
        cpu_per_iter = (more_cpu - one_cpu) / args.iters
        record = dict(iterations=args.iters, fit_1_s=one, fit_n_s=more, train_ll=model.train_scores_[-1])
    else:
        import warnings

        rng = np.random.default_rng(0)
        n_iter = args.iters
        model = hmm.CategoricalHMM(n_components=K, n_features=n_tokens, n_iter=n_iter, tol=-np.inf,
                                   init_params="", params="ste", implementation=args.hmmlearn_implementation)
        model.startprob_ = rng.dirichlet(np.ones(K))
        model.transmat_ = rng.dirichlet(np.ones(K), size=K)
        freq = np.bincount(X.ravel(), minlength=n_tokens) + 1.0
        emission = freq * rng.uniform(0.5, 1.5, size=(K, n_tokens))
        model.emissionprob_ = emission / emission.sum(1, keepdims=True)
        lengths = [X.shape[1]] * len(X)
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model.fit(X.reshape(-1, 1), lengths)
        total = time.perf_counter() - start
        per_iter = total / n_iter
        cpu_per_iter = (time.process_time() - cpu) / n_iter
        record = dict(iterations=n_iter, fit_n_s=total, train_ll=float(model.monitor_.history[-1]) / len(X),
                      implementation=args.hmmlearn_implementation)
    record.update(library=args.worker, n_states=K, n_windows=len(X), n_tokens=n_tokens, threads=args.threads,
                  seconds_per_iteration=per_iter, cpu_seconds_per_iteration=cpu_per_iter, peak_rss_mb=rss_mb(), base_rss_mb=base)
    print(json.dumps(record), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=default_data_dir())
    parser.add_argument("--states", default="64,256")
    parser.add_argument("--n-windows", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--iters", type=int, default=3, help="timed skpc EM iterations")
    parser.add_argument("--hmmlearn-iters", default="64:2,256:1", help="hmmlearn iterations per n_states")
    parser.add_argument("--hmmlearn-implementation", default="log", choices=["log", "scaling"])
    parser.add_argument("--libraries", default="skpc,hmmlearn")
    parser.add_argument("--out", type=Path, default=None, help="append the JSON lines here")
    parser.add_argument("--worker", choices=["skpc", "hmmlearn"], help=argparse.SUPPRESS)
    parser.add_argument("--windows", help=argparse.SUPPRESS)
    parser.add_argument("--n-tokens", type=int, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    if args.worker:
        args.states = int(args.states)
        worker(args)
        return
    hmmlearn_iters = dict(item.split(":") for item in args.hmmlearn_iters.split(","))
    import tempfile

    import numpy as np

    # the windows go to the workers as a .npy file: a worker's memory is then
    # the library and the fit, not the parsing of the text
    X, n_tokens = load_windows(args.data, args.n_windows)
    folder = tempfile.mkdtemp(prefix="hmm_speed_")
    windows_path = os.path.join(folder, "windows.npy")
    np.save(windows_path, X)
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads),
               OPENBLAS_NUM_THREADS=str(args.threads))
    records = []
    for states in args.states.split(","):
        for library in args.libraries.split(","):
            iters = args.iters if library == "skpc" else int(hmmlearn_iters.get(states, 1))
            command = [sys.executable, __file__, "--worker", library, "--states", states, "--windows", windows_path,
                       "--n-tokens", str(n_tokens), "--threads", str(args.threads), "--iters", str(iters),
                       "--hmmlearn-implementation", args.hmmlearn_implementation]
            out = subprocess.run(command, capture_output=True, text=True, env=env)
            if out.returncode:
                raise SystemExit(f"{library} at {states} states failed:\n{out.stderr}")
            record = json.loads(out.stdout.strip().splitlines()[-1])
            records.append(record)
            print(json.dumps(record), flush=True)
            if args.out is not None:
                with open(args.out, "a") as f:
                    f.write(json.dumps(record) + "\n")
    print("\n| n_states | library | s / EM iteration (wall) | CPU s / iteration | peak RSS (MB) | RSS after "
          "loading (MB) | speed-up (wall) | speed-up (CPU) |")
    print("|---|---|---|---|---|---|---|---|")
    for states in sorted({r["n_states"] for r in records}):
        rows = {r["library"]: r for r in records if r["n_states"] == states}
        for library, r in rows.items():
            ratio = cpu_ratio = ""
            if library == "skpc" and "hmmlearn" in rows:
                ratio = f"{rows['hmmlearn']['seconds_per_iteration'] / r['seconds_per_iteration']:.0f}x"
                cpu_ratio = f"{rows['hmmlearn']['cpu_seconds_per_iteration'] / r['cpu_seconds_per_iteration']:.0f}x"
            print(f"| {states} | {library} | {r['seconds_per_iteration']:.3f} | {r['cpu_seconds_per_iteration']:.3f} | "
                  f"{r['peak_rss_mb']:.0f} | {r['base_rss_mb']:.0f} | {ratio} | {cpu_ratio} |")


if __name__ == "__main__":
    main()
