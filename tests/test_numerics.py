"""Subnormal floats are flushed to zero inside training and scoring only
(skpc.backend.numerics): same numbers, the caller's flag restored."""

import numpy as np
import pytest
import torch

from skpc import EinsumNetworkDensity
from skpc.backend import em as em_module
from skpc.backend.numerics import flush_subnormals, subnormals_flushed

SUPPORTED = torch.set_flush_denormal(False)  # False where the CPU has no such mode


def _fit(X, **params):
    settings = dict(structure="rat", n_sums=4, n_repetitions=3, depth=2, leaf="gaussian", batch_size=None, max_iter=4, tol=None,
                    early_stopping=False, random_state=0)
    return EinsumNetworkDensity(**{**settings, **params}).fit(X)


@pytest.mark.skipif(not SUPPORTED, reason="this CPU cannot flush subnormals")
def test_training_flushes_and_restores_the_callers_flag(monkeypatch):
    seen = []
    e_step = em_module.e_step.__wrapped__

    def recording_e_step(*args, **kwargs):
        seen.append(subnormals_flushed())
        return e_step(*args, **kwargs)

    monkeypatch.setattr("skpc.backend.train.e_step", recording_e_step)
    X = np.random.default_rng(0).normal(size=(200, 8))
    assert not subnormals_flushed()
    model = _fit(X)
    assert seen and all(seen)  # every E-step ran flushed
    assert not subnormals_flushed()  # and the user's IEEE behaviour is back
    assert torch.tensor([1e-40], dtype=torch.float32).mul(1.0).item() > 0.0
    model.score_samples(X)
    assert not subnormals_flushed()


@pytest.mark.skipif(not SUPPORTED, reason="this CPU cannot flush subnormals")
def test_an_enclosing_flush_stays_on():
    with flush_subnormals():
        with flush_subnormals():
            assert subnormals_flushed()
        assert subnormals_flushed()  # the inner block did not turn it off
    assert not subnormals_flushed()


@pytest.mark.skipif(not SUPPORTED, reason="this CPU cannot flush subnormals")
def test_flushing_changes_no_log_likelihood(monkeypatch):
    # 512 features, 10 trees of depth 4: after 2 epochs the E-step's statistics hold subnormals
    X = np.random.default_rng(0).normal(size=(300, 512))
    settings = dict(structure="rat", n_sums=10, n_repetitions=10, depth=4, max_iter=2)
    flushed = _fit(X, **settings)
    circuit, params = flushed._circuit_cache, flushed.params_
    Xt = torch.tensor(X, dtype=torch.float32)
    plain_value, plain_stats = em_module.e_step.__wrapped__(circuit, Xt, params)  # IEEE subnormals
    flushed_value, flushed_stats = em_module.e_step(circuit, Xt, params)
    tiny = torch.finfo(torch.float32).tiny
    assert sum(int(((t != 0) & (t.abs() < tiny)).sum()) for t in plain_stats.tensors()) > 0
    for a, b in zip(plain_stats.tensors(), flushed_stats.tensors()):
        assert float((a - b).abs().max()) < 1e-36  # only sums of subnormals differ
    torch.testing.assert_close(plain_value, flushed_value, rtol=0, atol=0)

    monkeypatch.setattr(torch, "set_flush_denormal", lambda on: False)  # as on a CPU without the mode
    plain = _fit(X, **settings)
    np.testing.assert_allclose(flushed.score_samples(X), plain.score_samples(X), rtol=1e-6)
    assert flushed.lower_bound_ == pytest.approx(plain.lower_bound_, rel=1e-7)
