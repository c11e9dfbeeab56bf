"""Training and scoring efficiency of skpc beside the peer libraries.

The setting of the Einsum Networks paper, section 4.1 (Peharz et al., ICML
2020): Gaussian noise data (N=2000, 512 features, standard normal, seeded),
random binary trees of depth D=4 with R=10 repetitions, K=10 densities per
region, univariate Gaussian leaves, mini-batches of 100. Sweeps vary one of K,
D, R at a time, the others at those defaults.

Every configuration of every library runs in its own fresh process, started
with that library's own interpreter (peers live in separate virtual
environments, see benchmarks/README.md), and prints one JSON record: seconds
per training epoch (median after a warm-up epoch), seconds to score all
samples, peak resident memory (absolute and above the baseline after imports
and data creation), parameter count, the load average. skpc's record also
carries the FLOP floor: three times the forward multiply-adds of the einsum,
mixing and root layers per epoch (forward plus the backward's two matmuls),
at the rate of a 2048 x 2048 float32 torch.matmul measured
in the same process with the same thread count.

Usage::

    python benchmarks/efficiency.py [--sweep default|K|D|R|all]
        [--libraries skpc,cirkit,spflow] [--epochs N] [--out DIR] [--quick]

With ``--device cuda`` skpc trains and scores on the GPU: epochs are timed
with CUDA events recorded at the epoch boundaries, memory is the GPU's
allocation peak (``gpu_peak_mib``), and the floor uses a matmul timed on the
GPU. The peers are then skipped (their virtual environments hold CPU builds
of torch).

Writes ``DIR/efficiency.jsonl`` (one record per line), ``DIR/efficiency.md``
(the table that is also printed) and ``DIR/efficiency_{K,D,R}.png``.
"""

import argparse
import json
import os
import sys
from pathlib import Path

from _children import fmt, interpreter, ratio, run_json_child

HERE = Path(__file__).resolve().parent
PEERS = HERE / "peers"

# The paper's default setting (section 4.1) and the sweeps around it.
DEFAULT = {"n_samples": 2000, "n_features": 512, "depth": 4, "n_repetitions": 10, "n_sums": 10, "batch_size": 100}
QUICK = {"n_samples": 200, "n_features": 64, "depth": 2, "n_repetitions": 2, "n_sums": 2, "batch_size": 100}
SWEEPS = {"K": ("n_sums", [1, 5, 10, 20, 40]), "D": ("depth", [1, 2, 4, 6, 8]), "R": ("n_repetitions", [1, 10, 20, 40])}
SYMBOL = {"n_sums": "K", "depth": "D", "n_repetitions": "R"}

# Training methods run for each library name given to --libraries.
DEFAULT_METHODS = {"skpc": ["em"], "cirkit": ["adam"], "spflow": ["adam", "em"]}
METHODS = {"skpc": {"em", "adam"}, "cirkit": {"adam"}, "spflow": {"adam", "em"}}


# --------------------------------------------------------------- configuration
def configurations(sweep, quick):
    """The list of configuration dicts to run, each tagged with its sweep."""
    if quick:
        return [dict(QUICK, sweep="quick")]
    names = ["K", "D", "R"] if sweep == "all" else ([] if sweep == "default" else [sweep])
    out = [dict(DEFAULT, sweep="default")]
    seen = {_key(out[0])}
    for name in names:
        param, values = SWEEPS[name]
        for v in values:
            cfg = dict(DEFAULT, sweep=name, **{param: v})
            if _key(cfg) not in seen:
                seen.add(_key(cfg))
                out.append(cfg)
    return out


def _key(cfg):
    return tuple(cfg[k] for k in DEFAULT)


def parse_libraries(text):
    """'skpc,cirkit,spflow:em' -> [(library, method), ...]."""
    out = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        lib, _, method = item.partition(":")
        if lib not in METHODS:
            raise SystemExit(f"unknown library {lib!r}; choose from {sorted(METHODS)} (optionally lib:method)")
        methods = [method] if method else DEFAULT_METHODS[lib]
        for m in methods:
            if m not in METHODS[lib]:
                raise SystemExit(f"{lib} has no method {m!r} here; choose from {sorted(METHODS[lib])}")
            out.append((lib, m))
    return out


# ------------------------------------------------------------------ running
def run_child(library, method, config, args):
    """One fresh process for one (library, method, configuration); returns its record."""
    base = {
        "library": library,
        "method": method,
        **{k: config[k] for k in DEFAULT},
        "sweep": config["sweep"],
        "device": args.device,
    }
    if args.device != "cpu" and library != "skpc":
        return dict(base, status="skipped", error="peers are timed on the CPU only (their venvs hold CPU builds of torch)")
    python = interpreter(library, args)
    if not Path(python).exists():
        return dict(base, status="skipped", error=f"no interpreter at {python}; create the venv (benchmarks/README.md)")
    child_cfg = dict(
        config,
        method=method,
        threads=args.threads,
        data_seed=0,
        structure_seed=1,
        epochs=args.epochs,
        time_budget_s=args.time_limit,
        matmul_size=512 if args.quick else 2048,  # the quick run is a smoke test: keep it short
        device=args.device,
    )
    if args.profile and library == "skpc":
        tag = f"K{config['n_sums']}_D{config['depth']}_R{config['n_repetitions']}"
        child_cfg["profile_path"] = str(Path(args.out) / f"skpc_{method}_profile_{tag}.txt")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    env.pop("PYTHONPATH", None)  # each venv sees only its own packages
    cmd = [python, str(PEERS / f"run_{library}.py"), json.dumps(child_cfg)]
    # The child budgets its epochs to time_limit; the hard kill leaves room for one slow epoch.
    record = run_json_child(cmd, env, base, 2 * args.time_limit + 30, f"limit {args.time_limit} s per configuration")
    record["sweep"] = config["sweep"]
    return record


# ------------------------------------------------------------------ reporting
def _label(r):
    device = r.get("device", "cpu")
    return f"{r['library']}:{r['method']}" + ("" if device == "cpu" else f"@{device}")


def _cfg_label(r):
    return f"K={r['n_sums']} D={r['depth']} R={r['n_repetitions']}"


def markdown_table(records):
    """Per configuration and library, with ratios skpc:em / library (time and memory)."""
    lines = [
        "| config | library:method | s/epoch | CPU s/epoch | score s | model MiB | peak MiB | params | skpc/it time | "
        "skpc/it mem | floor s | epoch/floor | load | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_cfg = {}
    for r in records:
        by_cfg.setdefault(_cfg_label(r), []).append(r)
    for cfg, rs in by_cfg.items():
        ref = next((r for r in rs if _label(r) == "skpc:em" and r.get("status") == "ok"), None)
        for r in rs:
            ok = r.get("status") == "ok"
            t_ratio = ratio(ref.get("epoch_s"), r.get("epoch_s")) if ref and ok else None
            m_ratio = ratio(ref.get("rss_model_mib"), r.get("rss_model_mib")) if ref and ok else None
            load = r.get("loadavg_end") or r.get("loadavg_start")
            status = r.get("status", "?")
            if ok and r.get("nonfinite_params"):
                status += " (parameters went NaN)"
            if not ok:
                status += ": " + str(r.get("error", ""))[:80].replace("|", "/").replace("\n", " ")
            lines.append(
                "| "
                + " | ".join(
                    [
                        cfg,
                        _label(r),
                        fmt(r.get("epoch_s")),
                        fmt(r.get("epoch_cpu_s")),
                        fmt(r.get("score_s")),
                        fmt(r.get("rss_model_mib"), 4),
                        fmt(r.get("rss_peak_mib"), 4),
                        fmt(r.get("n_parameters")),
                        fmt(t_ratio, 2),
                        fmt(m_ratio, 2),
                        fmt(r.get("floor_s")),
                        fmt(r.get("epoch_over_floor"), 3),
                        fmt(load[0], 2) if load else "-",
                        status,
                    ]
                )
                + " |"
            )
    return "\n".join(lines)


def plot(records, out_dir):
    """Time and memory against K, D and R (log scale), one line per library:method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for name, (param, _) in SWEEPS.items():
        others = [k for k in ("n_sums", "depth", "n_repetitions") if k != param]
        rs = [
            r
            for r in records
            if r.get("status") == "ok"
            and all(r[k] == DEFAULT[k] for k in others)
            and r["n_samples"] == DEFAULT["n_samples"]
            and r["n_features"] == DEFAULT["n_features"]
        ]
        if len({r[param] for r in rs}) < 2:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for label in sorted({_label(r) for r in rs}):
            pts = sorted((r[param], r["epoch_s"], r["rss_model_mib"]) for r in rs if _label(r) == label)
            xs = [p[0] for p in pts]
            axes[0].plot(xs, [p[1] for p in pts], marker="o", label=label)
            axes[1].plot(xs, [max(p[2], 1e-1) for p in pts], marker="o", label=label)
        floor = sorted((r[param], r["floor_s"]) for r in rs if _label(r) == "skpc:em" and r.get("floor_s"))
        if floor:
            axes[0].plot([p[0] for p in floor], [p[1] for p in floor], "k:", label="FLOP floor (fwd+bwd)")
        axes[0].set_ylabel("seconds per epoch")
        axes[1].set_ylabel("peak RSS above baseline (MiB)")
        for ax in axes:
            ax.set_yscale("log")
            if name != "D":  # K and R grow geometrically; D is already a log size
                ax.set_xscale("log", base=2)
            ax.set_xlabel(f"{name} ({param})")
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"Einsum Networks setting, sweep over {name} (others K=10, D=4, R=10; N=2000 x 512)")
        fig.tight_layout()
        path = Path(out_dir) / f"efficiency_{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ------------------------------------------------------------------ main
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweep", choices=["default", "K", "D", "R", "all"], default="default")
    parser.add_argument(
        "--libraries",
        default="skpc,cirkit,spflow",
        help="comma-separated; a name runs its default methods (spflow: adam and em), lib:method picks one",
    )
    parser.add_argument("--epochs", type=int, default=5, help="timed epochs after the warm-up epoch")
    parser.add_argument("--out", default=str(HERE / "out"))
    parser.add_argument("--quick", action="store_true", help="one tiny configuration, 1 epoch (for tests)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every child")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where skpc runs (peers: CPU only)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per configuration and library")
    parser.add_argument(
        "--peer-venvs",
        default=os.environ.get("SKPC_PEER_VENVS", "/work/peer-venvs"),
        help="folder holding one venv per peer (cirkit/, spflow/); env SKPC_PEER_VENVS",
    )
    parser.add_argument("--skpc-python", default=sys.executable, help="interpreter with skpc installed")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="run nothing: rebuild the table and plots from an existing DIR/efficiency.jsonl (e.g. a partial run)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also write a torch.profiler op table of one skpc epoch to DIR"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.epochs = 1
    if args.epochs < 1:
        parser.error("--epochs must be >= 1")

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    jsonl = out_dir / "efficiency.jsonl"
    if args.report_only:
        records = [json.loads(line) for line in jsonl.read_text().splitlines() if line.strip()]
        report(records, out_dir, args)
        return records
    jsonl.write_text("")
    variants = parse_libraries(args.libraries)
    records = []
    for config in configurations(args.sweep, args.quick):
        for library, method in variants:
            print(f"# {library}:{method} K={config['n_sums']} D={config['depth']} R={config['n_repetitions']} "
                  f"load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
            record = run_child(library, method, config, args)
            records.append(record)
            with jsonl.open("a") as f:
                f.write(json.dumps(record) + "\n")
    report(records, out_dir, args)
    print(f"wrote {jsonl}")
    return records


def report(records, out_dir, args):
    """Print the markdown table, write it to DIR/efficiency.md, and draw the plots."""
    table = markdown_table(records)
    print(f"torch threads per process: {args.threads}; times in seconds; memory = ru_maxrss high-water mark")
    print(table)
    (out_dir / "efficiency.md").write_text(table + "\n")
    if not args.no_plots:
        for path in plot(records, out_dir):
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
