"""One measured fit at 1,024 states on PTB training windows: seconds per epoch
(verbose log) and the process's peak RSS (ru_maxrss).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hmm_memory.py
"""
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import default_data_dir  # noqa: E402
from hmm_ptb import load_ptb, peak_rss_mb  # noqa: E402

from skpc.hmm import HMMLanguageModel  # noqa: E402
from skpc.text import SuffixAssigner  # noqa: E402


homogeneous = "--homogeneous" in sys.argv
_, _, windows = load_ptb(default_data_dir(), 32)
before = peak_rss_mb()
model = HMMLanguageModel(n_states=1024, window=32, n_tokens=10000, homogeneous=homogeneous,
                         assigner=SuffixAssigner(max_windows=5000), max_iter=1, batch_size=2000,
                         max_full_batch_iter=1, tol=None, random_state=0, verbose=1)
start = time.perf_counter()
model.fit(windows["train"], X_val=windows["valid"])
record = dict(n_states=1024, homogeneous=homogeneous, fit_s=time.perf_counter() - start, epochs=model.n_iter_,
              peak_rss_mb=peak_rss_mb(), rss_before_fit_mb=before, n_parameters=model.n_parameters_,
              valid_perplexity=model.perplexity(windows["valid"]), test_perplexity=model.perplexity(windows["test"]),
              peak_rss_after_scoring_mb=peak_rss_mb())
print(json.dumps(record), flush=True)
with open(Path(__file__).with_name("hmm_1024_memory.jsonl"), "a") as f:
    f.write(json.dumps(record) + "\n")
