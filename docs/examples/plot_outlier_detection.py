"""
Outlier detection with exact log-likelihoods
============================================

:class:`~skpc.CircuitOutlierDetector` scores a row by its log-likelihood
under a density fitted to the training data, and calls it an outlier when
the score falls below ``offset_``, the ``contamination`` quantile of the
training scores (the contract of scikit-learn's ``IsolationForest``).

We fit it on the digits 0-4 of ``load_digits`` and ask it to tell held-out
digits 0-4 (inliers) from the digits 5-9 it has never seen (outliers), and
from images of uniform noise.

Binomial leaves (a grey level is a count out of 16) have one parameter
each, against 16 for categorical leaves over 17 grey levels: with a few
hundred training images the smaller model generalizes better, which is what
an outlier detector needs, since its threshold comes from training scores. Rows with missing pixels are scored too: the
circuit integrates the missing pixels out instead of imputing them.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import train_test_split

from skpc import CircuitOutlierDetector, EinsumNetworkDensity

X, y = load_digits(return_X_y=True)
X_in, X_out = X[y <= 4], X[y >= 5]
X_train, X_test_in = train_test_split(X_in, test_size=0.3, random_state=0)
rng = np.random.default_rng(0)
X_noise = rng.integers(0, 17, size=(300, 64)).astype(float)

density = EinsumNetworkDensity(
    structure="pd",
    image_shape=(8, 8),
    pd_delta=[4, 2],
    leaf="binomial",  # grey level 0..16 = successes out of 16 trials: 1 parameter per leaf
    n_trials=16,
    n_sums=16,
    max_iter=15,
    batch_size=200,
    tol=None,
    random_state=0,
)
detector = CircuitOutlierDetector(density, contamination=0.05).fit(X_train)
print(f"threshold offset_ = {detector.offset_:.1f} (5% quantile of the training log-likelihoods)")

# %%
# Scores of inliers and outliers
# ------------------------------
s_in = detector.score_samples(X_test_in)
s_out = detector.score_samples(X_out)
s_noise = detector.score_samples(X_noise)

labels = np.r_[np.ones(len(s_in)), np.zeros(len(s_out))]
auroc = roc_auc_score(labels, np.r_[s_in, s_out])
print(f"AUROC, held-out digits 0-4 vs digits 5-9: {auroc:.3f}")
print(f"flagged as outliers: {np.mean(detector.predict(X_test_in) == -1):.1%} of held-out inliers, "
      f"{np.mean(detector.predict(X_out) == -1):.1%} of digits 5-9, "
      f"{np.mean(detector.predict(X_noise) == -1):.1%} of noise images")

fig, ax = plt.subplots(figsize=(7, 4))
bins = np.linspace(min(s_in.min(), s_out.min()), max(s_in.max(), s_out.max()), 50)
ax.hist(s_in, bins=bins, alpha=0.6, density=True, label="held-out digits 0-4 (inliers)")
ax.hist(s_out, bins=bins, alpha=0.6, density=True, label="digits 5-9 (outliers)")
ax.axvline(detector.offset_, color="k", ls="--", label="offset_ (contamination=0.05)")
ax.set_xlabel("log p(x)")
ax.set_ylabel("density")
ax.set_title(f"AUROC = {auroc:.3f}; uniform noise scores about {np.median(s_noise):.0f}, off the chart")
ax.legend(fontsize=8)
fig.tight_layout()
plt.show()

# %%
# Missing pixels
# --------------
# Hide a random 30% of the pixels of each test image. The scores are
# marginal log-likelihoods of the observed pixels, so they are larger than
# those of complete images: compare rows with the same share of missing
# entries against each other, as here.
mask_in = rng.random(X_test_in.shape) < 0.3
mask_out = rng.random(X_out.shape) < 0.3
X_in_missing = np.where(mask_in, np.nan, X_test_in)
X_out_missing = np.where(mask_out, np.nan, X_out)
auroc_missing = roc_auc_score(
    labels, np.r_[detector.score_samples(X_in_missing), detector.score_samples(X_out_missing)]
)
print(f"AUROC with 30% of the pixels missing: {auroc_missing:.3f}")
