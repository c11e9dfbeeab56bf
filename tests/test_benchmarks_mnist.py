"""benchmarks/mnist_bpd.py runs end to end on a tiny configuration (a smoke test of the script)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "mnist" / "mnist.npz").exists(), reason="MNIST not found at ../shared/data/mnist")
def test_mnist_script_prints_bits_per_dim_for_both_structures():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "mnist_bpd.py"), "--data", str(DATA), "--n-train", "3000",
         "--n-valid", "200", "--n-test", "300", "--max-epochs", "2", "--n-sums", "2", "--depth", "2",
         "--n-repetitions", "2", "--pd-delta", "14", "--batch-size", "200", "--learning-rate", "0.5"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert [r["model"] for r in records] == ["pd", "rat"]
    for r in records:
        # categorical leaves (the default): far below uniform (8 bits/dim) after two epochs, but a
        # 2-density model is nowhere near the published 1.26
        assert r["leaf"] == "categorical"
        assert 1.3 < r["test_bpd"] < 3.0
        assert r["test_nats_per_image"] == pytest.approx(-r["test_bpd"] * 784 * 0.6931472, rel=1e-3)
        assert r["n_test"] == 300 and r["n_train"] == 3000 and 1 <= r["epochs"] <= 2 and r["n_parameters"] > 0
