"""One full-batch EM step of a 1,024-state HMM on 2,000 PTB training windows:
seconds per step (twice) and the process's peak RSS. Run it with
``PYTHONPATH`` at two checkouts to compare them.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hmm_full_batch_step.py
"""
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import default_data_dir  # noqa: E402
from hmm_ptb import load_ptb, peak_rss_mb  # noqa: E402

import skpc  # noqa: E402
from skpc.backend.hmm import HMMCircuit  # noqa: E402
from skpc.backend.train import Schedule, Trainer  # noqa: E402


def main():
    torch.set_num_threads(1)
    _, _, windows = load_ptb(default_data_dir(), 32)
    X = torch.as_tensor(np.ascontiguousarray(windows["train"][:2000], dtype=np.int64))
    circuit = HMMCircuit(1024, 32, 10000, False)
    params = circuit.init_params(X, torch.Generator().manual_seed(0), torch.float32)
    trainer = Trainer(circuit, Schedule(batch_size=None, max_iter=1))
    before = peak_rss_mb()
    seconds = []
    for _ in range(2):
        start = time.perf_counter()
        _, mean = trainer.em_step(X, params, 1.0)
        seconds.append(round(time.perf_counter() - start, 2))
    print(json.dumps({"skpc": str(Path(skpc.__file__).parent), "chunk_windows": circuit.chunk_size(),
                      "seconds_per_step": seconds, "mean_log_likelihood": mean,
                      "peak_rss_mb": round(peak_rss_mb()), "rss_before_steps_mb": round(before)}))


if __name__ == "__main__":
    main()
