"""The ``python -m skpc demo`` command, at its --quick settings."""

import math
import re
import sys

import numpy as np
import pytest

from skpc.__main__ import main
from skpc.demo import bits_per_dimension

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _reported(pattern, text):
    match = re.search(pattern, text, flags=re.MULTILINE)
    assert match is not None, f"no line matching {pattern!r} in the demo's output:\n{text}"
    return float(match.group(1).replace(",", ""))


def test_demo_writes_png_and_reports_plausible_numbers(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path = tmp_path / "d.png"
    status = main(["demo", "--quick", "--output", str(path), "--device", "cpu", "--seed", "0"])
    out = capsys.readouterr().out
    assert status == 0

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    # A grid of 40 digit panels is tens of kilobytes; a blank or truncated
    # file would be far smaller.
    assert len(data) > 5_000

    train_ll = _reported(r"^train: log-likelihood (-?[\d.]+) nats/image", out)
    test_ll = _reported(r"^test: +log-likelihood (-?[\d.]+) nats/image", out)
    test_bpd = _reported(r"^test: .*, ([\d.]+) bits/dim", out)
    n_params = _reported(r"^parameters: ([\d,]+)", out)
    assert math.isfinite(test_bpd)
    # References on this split: uniform over the 17 levels is 4.09 bits/dim,
    # independent binomial pixels 5.7, independent categorical pixels 2.43;
    # the quick model reaches about 2.34 and the full demo about 2.03.
    # Nothing models 8x8 digits below 1 bit/dim.
    assert 1.0 < test_bpd < 3.0
    assert test_bpd == pytest.approx(float(bits_per_dimension(test_ll, 64)), abs=2e-3)
    assert test_ll < 0 and train_ll < 0
    assert n_params > 0
    # One progress line per epoch (verbose=1): at --quick, three of
    # stochastic EM, then one of full-batch EM.
    assert len(re.findall(r"epoch \d+ stochastic EM", out)) == 3
    assert len(re.findall(r"epoch 4 full-batch EM", out)) == 1
    assert f"picture: {path}" in out


def test_bits_per_dimension():
    assert bits_per_dimension(-64 * math.log(2), 64) == pytest.approx(1.0)
    np.testing.assert_allclose(bits_per_dimension(np.array([0.0, -2 * math.log(2)]), 2), [0.0, 1.0])


def test_demo_without_matplotlib_still_prints_numbers(tmp_path, capsys, monkeypatch):
    # A None entry in sys.modules makes `import matplotlib` raise ImportError.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "d.png"
    status = main(["demo", "--quick", "--output", str(path), "--device", "cpu"])
    captured = capsys.readouterr()
    assert status == 0
    assert not path.exists()
    assert "pip install matplotlib" in captured.err
    assert math.isfinite(_reported(r"^test: .*, ([\d.]+) bits/dim", captured.out))


def test_demo_rejects_a_bad_max_iter(capsys):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--max-iter", "0"])
    assert info.value.code == 2
    assert "positive integer" in capsys.readouterr().err
