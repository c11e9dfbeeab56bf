"""The quality benchmark scripts run end to end on tiny configurations (smoke tests, not measurements)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


def run_script(name, *args):
    """The JSON lines a benchmark script prints."""
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / name), "--data", str(DATA), *args],
        capture_output=True, text=True, timeout=300, check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


@pytest.mark.skipif(not (DATA / "debd" / "nltcs").exists(), reason="DEBD data not found at ../shared/data/debd")
def test_density_script_prints_one_json_line_per_dataset():
    records = run_script(
        "density.py", "--datasets", "nltcs", "--budget-minutes", "0.05", "--quick", "--max-iter", "2",
        "--max-full-batch-iter", "2",
    )
    assert len(records) == 1
    r = records[0]
    assert r["dataset"] == "nltcs"
    # 16 binary variables: a fitted model lies between the best published (-6.0) and uniform (-16 ln 2)
    assert -16 * 0.6932 < r["test_ll"] < -5.5
    assert r["depth"] in (1, 2) and r["n_sums"] in (2, 4) and r["configs_tried"] >= 1
    # the screening epochs, then the estimator's schedule bounded by max_iter and max_full_batch_iter
    assert 1 <= r["stochastic_epochs"] <= r["max_iter"] <= 2
    assert 0 <= r["full_batch_epochs"] <= r["max_full_batch_iter"] <= 2
    assert r["epochs"] == r["screen_epochs"] + r["stochastic_epochs"] + r["full_batch_epochs"]
    assert r["best_phase"] in ("stochastic EM", "full-batch EM") and r["best_epoch"] >= 1


@pytest.mark.skipif(not (DATA / "mnist" / "mnist.npz").exists(), reason="MNIST not found at ../shared/data/mnist")
def test_mnist_script_prints_bits_per_dim_for_both_structures():
    records = run_script(
        "mnist_bpd.py", "--n-train", "3000", "--n-valid", "200", "--n-test", "300",
        "--n-sums", "2", "--depth", "2", "--n-repetitions", "2", "--pd-delta", "14", "--batch-size", "200",
        "--learning-rate", "0.5", "--max-iter", "2", "--max-full-batch-iter", "1",
    )
    assert [r["model"] for r in records] == ["pd", "rat"]
    for r in records:
        # categorical leaves (the default): far below uniform (8 bits/dim) after two epochs, but a
        # 2-density model is nowhere near the published 1.26
        assert r["leaf"] == "categorical"
        assert 1.3 < r["test_bpd"] < 3.0
        assert r["test_nats_per_image"] == pytest.approx(-r["test_bpd"] * 784 * 0.6931472, rel=1e-3)
        assert r["n_test"] == 300 and r["n_train"] == 3000 and r["n_parameters"] > 0
        # the timed first epoch, two stochastic epochs (no plateau so soon), then one full-batch
        # epoch: with 256-state leaves it improves validation, and the model keeps it
        assert (r["stochastic_epochs"], r["full_batch_epochs"], r["epochs"]) == (2, 1, 4)
        assert r["best_phase"] == "full-batch EM" and r["step_at_best"] == 1.0
