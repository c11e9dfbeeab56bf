"""A default HMMLanguageModel() (but position_prior from argv) fitted on PTB training windows:
the warnings it raises, its epochs and perplexities.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/hmm_default.py                            # the defaults
    OMP_NUM_THREADS=1 python benchmarks/hmm_default.py '{"position_prior": 0.0}'  # one overridden
"""
import json
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _data import default_data_dir  # noqa: E402
from hmm_ptb import load_ptb, peak_rss_mb  # noqa: E402

from skpc.hmm import HMMLanguageModel  # noqa: E402

settings = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
_, _, windows = load_ptb(default_data_dir(), 32)
model = HMMLanguageModel(random_state=0, verbose=1, **settings)
start = time.perf_counter()
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model.fit(windows["train"])
seconds = time.perf_counter() - start
record = dict(settings=settings, params={k: v for k, v in model.get_params().items() if k != "assigner"},
              warnings=[f"{w.category.__name__}: {w.message}" for w in caught], n_iter=model.n_iter_,
              converged=model.converged_, fit_s=seconds,
              valid_perplexity=model.perplexity(windows["valid"]), test_perplexity=model.perplexity(windows["test"]),
              train_perplexity=model.perplexity(windows["train"]),
              peak_rss_mb=peak_rss_mb())
print(json.dumps(record, default=str), flush=True)
with open(Path(__file__).with_name("default_check.jsonl"), "a") as f:
    f.write(json.dumps(record, default=str) + "\n")
