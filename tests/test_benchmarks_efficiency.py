"""The efficiency benchmark runs end to end on a tiny configuration (skpc only)."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "efficiency.py"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("efficiency")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--libraries", "skpc", "--threads", "1", "--no-plots",
         "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, proc.stdout


def test_quick_record_has_positive_finite_measurements(quick_run):
    out, _ = quick_run
    records = [json.loads(line) for line in (out / "efficiency.jsonl").read_text().splitlines() if line]
    assert len(records) == 1
    rec = records[0]
    assert (rec["library"], rec["method"], rec["status"]) == ("skpc", "em", "ok"), rec.get("error")
    assert (rec["n_sums"], rec["depth"], rec["n_repetitions"], rec["n_features"]) == (2, 2, 2, 64)
    assert rec["threads"] == 1
    for key in ("epoch_s", "score_s", "rss_peak_mib", "rss_baseline_mib", "floor_s", "matmul_gflops"):
        assert math.isfinite(rec[key]) and rec[key] > 0, key
    assert rec["rss_model_mib"] >= 0
    assert rec["rss_peak_mib"] >= rec["rss_baseline_mib"]
    assert len(rec["epoch_times_s"]) == 1
    assert len(rec["loadavg_start"]) == 3
    # 64 features, D=2, R=2, K=2: 2 trees of 4 leaf regions of 16 variables.
    # Leaves: 64 variables x 2 trees x K=2 densities x 2 Gaussian parameters = 512.
    # Einsum weights: 3 partitions per tree, each (K*K - 1) * K = 6 free -> 36;
    # root mixing over 2 partitions: (2 - 1) * K = 2; root sum: K - 1 = 1.
    assert rec["n_parameters"] == 512 + 36 + 2 + 1
    # Forward multiply-adds per sample: 6 partitions * K^3 + mixing 1*2*K + root K = 48 + 4 + 2.
    assert rec["fwd_macs_per_epoch"] == 200 * (6 * 8 + 4 + 2)
    assert math.isfinite(rec["train_ll"])


def test_quick_prints_markdown_table(quick_run):
    _, stdout = quick_run
    rows = [line for line in stdout.splitlines() if line.startswith("| K=2 D=2 R=2 | skpc:em |")]
    assert len(rows) == 1
    assert rows[0].rstrip().endswith("| ok |")


def test_quick_cuda_run_times_skpc_on_the_gpu_or_says_why(tmp_path):
    """With --device cuda: skpc's record has GPU figures where CUDA exists, else a clear error; peers are skipped."""
    import torch

    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--libraries", "skpc,cirkit", "--threads", "1", "--no-plots",
         "--device", "cuda", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = {r["library"]: r for r in map(json.loads, (tmp_path / "efficiency.jsonl").read_text().splitlines())}
    assert records["cirkit"]["status"] == "skipped" and "CPU only" in records["cirkit"]["error"]
    skpc_record = records["skpc"]
    if torch.cuda.is_available():
        assert skpc_record["status"] == "ok", skpc_record.get("error")
        assert skpc_record["gpu_peak_mib"] > 0 and len(skpc_record["epoch_wall_times_s"]) == 1
        assert all(t > 0 for t in skpc_record["epoch_times_s"])
    else:
        assert skpc_record["status"] == "error" and "cuda" in skpc_record["error"].lower()
    assert "skpc:em@cuda" in proc.stdout
