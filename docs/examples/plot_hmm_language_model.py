"""
An HMM language model on the Penn Treebank
===========================================

:class:`~skpc.hmm.HMMLanguageModel` is a hidden Markov model over windows of
tokens: a hidden state per position, a transition matrix and an emission
table per position (non-homogeneous). It is initialized by *latent variable
distillation* (Liu et al., ICLR 2023): :class:`~skpc.text.SuffixAssigner`
embeds the suffix of each window that starts at each position (TF-IDF of its
n-grams, reduced by truncated SVD), clusters each position's embeddings with
k-means, and the HMM whose states are those clusters is fitted in closed
form; EM then fine-tunes it.

We train a small model on a slice of the Penn Treebank (when the data set is
found at ``$SKPC_DATA`` or ``../shared/data``; otherwise on a small generated
corpus), then sample text, predict next words, and fill in masked words.
"""

# %%
# Data: token windows
# -------------------
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from skpc.hmm import HMMLanguageModel
from skpc.text import TokenWindows, read_lines


def find_ptb():
    here = Path(__file__).resolve().parent if "__file__" in globals() else Path.cwd()
    roots = [os.environ.get("SKPC_DATA")] + [str(p / "shared" / "data") for p in here.parents]
    for root in filter(None, roots):
        if (Path(root) / "text" / "ptb" / "ptb.train.txt.gz").exists():
            return Path(root) / "text" / "ptb"
    return None


def toy_corpus(n_lines, rng):
    """Sentences from a tiny grammar, the stand-in when the Penn Treebank is absent."""
    subjects = ["the company", "the market", "the bank", "investors", "analysts", "the government"]
    verbs = ["said", "expects", "reported", "sold", "bought", "raised"]
    objects = ["its shares", "the stock", "new bonds", "higher prices", "a loss", "the plan"]
    tails = ["last year", "in march", "this week", "", "", "on friday"]
    return [" ".join(filter(None, [rng.choice(subjects), rng.choice(verbs), rng.choice(objects), rng.choice(tails)]))
            for _ in range(n_lines)]


ptb = find_ptb()
if ptb is not None:
    train_lines = read_lines(ptb / "ptb.train.txt.gz")[:8000]  # about 170,000 tokens
    test_lines = read_lines(ptb / "ptb.test.txt.gz")[:1000]
else:
    rng = np.random.default_rng(0)
    train_lines, test_lines = toy_corpus(8000, rng), toy_corpus(1000, rng)
    print("Penn Treebank not found: using a generated corpus")

# One stream of tokens, <eos> after every line, cut into windows of 16 tokens;
# the 5,000 most frequent tokens are kept, the others become <unk>.
windows = TokenWindows(window=16, eos_token="<eos>", max_vocab=5000).fit(train_lines)
X_train = windows.transform(train_lines)
X_test = windows.transform(test_lines)
names = windows.get_feature_names_out()
print(f"{X_train.shape[0]} training windows, {X_test.shape[0]} test windows, vocabulary {windows.n_tokens_}")

# %%
# Fit: LVD initialization, then EM
# --------------------------------
# ``init="lvd"`` is the default. On a corpus this small a *homogeneous* HMM
# (one transition matrix and one emission table shared by all positions)
# generalizes far better than the non-homogeneous default, whose per-position
# tables see 1/16 of the tokens each and overfit (on this slice with a
# 2,000-token vocabulary, 32 states: test perplexity 234, worse than the
# unigram model's 193).
# With ``homogeneous=True`` the assigner clusters the suffixes of all
# positions together, so that a state means the same at every position.
# Training: stochastic EM with step-size halving on plateaus of the
# validation score (10% of the windows held out), then full-batch EM.
model = HMMLanguageModel(n_states=48, window=16, n_tokens=windows.n_tokens_, homogeneous=True, max_iter=8,
                         batch_size=1000, max_full_batch_iter=5, tol=0.05, random_state=0)
model.fit(X_train)

unigram = np.bincount(X_train[X_train >= 0], minlength=windows.n_tokens_) + 1.0
unigram /= unigram.sum()
observed = X_test[X_test >= 0]
print(f"test perplexity: HMM {model.perplexity(X_test):.1f}, unigram {np.exp(-np.log(unigram[observed]).mean()):.1f}")

fig, ax = plt.subplots(figsize=(5, 3))
ax.plot(np.arange(1, model.n_iter_ + 1), model.train_scores_, marker="o", label="training (epoch mean)")
ax.plot(np.arange(1, model.n_iter_ + 1), model.validation_scores_, marker="s", label="validation")
ax.set_xlabel("EM epoch")
ax.set_ylabel("log-likelihood per window")
ax.legend()
fig.tight_layout()

# %%
# Sampled text
# ------------
# Ancestral sampling: a state path from the Markov chain, a token from each
# state's emission table.
for row in model.sample(4, random_state=1):
    print(" ".join(names[row]))

# %%
# Next-word predictions
# ---------------------
# ``predict_proba(prefix)`` is p(next token | the prefix) for prefixes of
# any length below the window: the forward message after the prefix, one
# transition, one emission table.
prefixes = [["the", "company", "said"], ["in", "the"], ["the", "stock", "market"]]
ids = [[windows.vocabulary_.get(w, windows.unknown_id_) for w in p] for p in prefixes]
fig, axes = plt.subplots(1, len(prefixes), figsize=(10, 3))
for prefix, row, ax in zip(prefixes, ids, axes):
    proba = model.predict_proba(np.array([row]))[0]
    top = np.argsort(proba)[::-1][:6]
    print(f"{' '.join(prefix)} ... " + ", ".join(f"{names[i]} ({proba[i]:.2f})" for i in top))
    ax.barh([names[i] for i in top[::-1]], proba[top[::-1]])
    ax.set_title(" ".join(prefix) + " ...", fontsize=9)
    ax.set_xlabel("p(next word)")
fig.tight_layout()

# %%
# Infilling masked words
# ----------------------
# Masked tokens are -1. ``impute(method="mpe")`` gives the most probable
# joint completion of the hidden states and the masked words (Viterbi);
# ``method="sample"`` draws them from p(masked | the rest) exactly (forward
# filtering, backward sampling).
masked = X_test[:3].copy()
rng = np.random.default_rng(2)
for row in masked:
    row[rng.choice(16, size=4, replace=False)] = -1
best = model.impute(masked, method="mpe")
drawn = model.impute(masked, method="sample", random_state=3)
for original, m, b, d in zip(X_test[:3], masked, best, drawn):
    print("original:", " ".join(names[original]))
    print("masked:  ", " ".join(names[t] if t >= 0 else "___" for t in m))
    print("Viterbi: ", " ".join(names[t] if m[i] >= 0 else f"[{names[t]}]" for i, t in enumerate(b)))
    print("sampled: ", " ".join(names[t] if m[i] >= 0 else f"[{names[t]}]" for i, t in enumerate(d)))
    print()
