"""
Classification with missing features
====================================

:class:`~skpc.EinsumNetworkClassifier` is a generative classifier: it fits
one circuit ``p(x | y = c)`` per class and predicts by Bayes' rule,
``p(y | x) ∝ p(y) p(x | y)``. Because every class density is a probabilistic
circuit, a feature missing at prediction time (``NaN``) is integrated out
of every ``p(x | y = c)`` exactly: the classifier uses what was observed and
nothing else, with no imputation.

A discriminative model cannot do this; the usual remedy is to impute the
missing features, e.g. by their training means. Below, both are trained on
complete 8x8 digits and tested with a growing fraction of the pixels of
every test image removed at random.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skpc import EinsumNetworkClassifier, EinsumNetworkDensity

X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.4, stratify=y, random_state=0)

density = EinsumNetworkDensity(
    structure="pd",
    image_shape=(8, 8),
    pd_delta=[4, 2],
    leaf="binomial",
    n_trials=16,
    n_sums=8,
    max_iter=15,
    batch_size=100,
    tol=None,
    random_state=0,
)
pc_clf = EinsumNetworkClassifier(density).fit(X_train, y_train)
lr_clf = make_pipeline(
    SimpleImputer(strategy="mean"), StandardScaler(), LogisticRegression(max_iter=2000)
).fit(X_train, y_train)

print(f"complete test images: circuit {pc_clf.score(X_test, y_test):.3f}, "
      f"logistic regression {lr_clf.score(X_test, y_test):.3f}")

# %%
# Accuracy as pixels go missing
# -----------------------------
rng = np.random.default_rng(0)
fractions = [0.0, 0.2, 0.4, 0.6, 0.7, 0.8, 0.9, 0.95]
acc_pc, acc_lr = [], []
for fraction in fractions:
    X_missing = np.where(rng.random(X_test.shape) < fraction, np.nan, X_test)
    acc_pc.append(pc_clf.score(X_missing, y_test))
    acc_lr.append(lr_clf.score(X_missing, y_test))
    print(f"{fraction:4.0%} missing: circuit {acc_pc[-1]:.3f}, logistic regression + mean imputation {acc_lr[-1]:.3f}")

fig, ax = plt.subplots(figsize=(6, 4))
ax.plot(fractions, acc_pc, "o-", label="EinsumNetworkClassifier (marginalizes)")
ax.plot(fractions, acc_lr, "s-", label="LogisticRegression + mean imputation")
ax.axhline(0.1, color="gray", ls=":", label="chance")
ax.set_xlabel("fraction of pixels missing at test time")
ax.set_ylabel("test accuracy")
ax.set_ylim(0, 1.02)
ax.legend()
fig.tight_layout()
plt.show()

# %%
# Posterior probabilities
# -----------------------
# ``predict_proba`` is the exact posterior given the observed pixels. With
# only the top half of an image visible, the classifier hedges between the
# digits that share that top half.
top_half = X_test[:4].copy()
top_half[:, 32:] = np.nan
proba = pc_clf.predict_proba(top_half)
cmap = plt.get_cmap("gray_r").with_extremes(bad="tab:orange")  # missing (NaN) pixels
fig, axes = plt.subplots(2, 4, figsize=(8, 3.6), gridspec_kw={"height_ratios": [1.3, 1]})
for i in range(4):
    axes[0, i].imshow(top_half[i].reshape(8, 8), cmap=cmap, vmin=0, vmax=16)
    axes[0, i].set_title(f"true label {y_test[i]}")
    axes[0, i].axis("off")
    axes[1, i].bar(pc_clf.classes_, proba[i])
    axes[1, i].set_xticks(pc_clf.classes_)
    axes[1, i].set_ylim(0, 1)
axes[1, 0].set_ylabel("p(y | top half)")
fig.tight_layout()
plt.show()
