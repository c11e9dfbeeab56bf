"""benchmarks/density.py runs end to end on a tiny configuration (a smoke test of the script)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"


@pytest.mark.skipif(not (DATA / "debd" / "nltcs").exists(), reason="DEBD data not found at ../shared/data/debd")
def test_density_script_prints_one_json_line_per_dataset():
    out = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "density.py"), "--data", str(DATA), "--datasets", "nltcs",
         "--budget-minutes", "0.05", "--quick", "--max-epochs", "2"],
        capture_output=True, text=True, timeout=300, check=True,
    )
    records = [json.loads(line) for line in out.stdout.splitlines() if line.strip()]
    assert len(records) == 1
    r = records[0]
    assert r["dataset"] == "nltcs"
    # 16 binary variables: a fitted model lies between the best published (-6.0) and uniform (-16 ln 2)
    assert -16 * 0.6932 < r["test_ll"] < -5.5
    assert r["depth"] in (1, 2) and r["n_sums"] in (2, 4) and r["configs_tried"] >= 1 and r["epochs"] >= 1
