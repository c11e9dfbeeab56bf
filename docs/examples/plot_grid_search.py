"""
Model selection with GridSearchCV
=================================

:class:`~skpc.EinsumNetworkDensity` is a scikit-learn estimator, so its
hyper-parameters are chosen the usual way. Its ``score`` is the mean
log-likelihood of the rows, which is what ``GridSearchCV`` maximizes when no
``scoring`` is given: the search picks the model that predicts held-out data
best.

Here a ``Pipeline`` standardizes the 30 features of the breast cancer data set and
fits a circuit with Gaussian leaves; the grid crosses the number of
densities per region ``n_sums`` (K) with the depth of the random binary
trees. Standardizing changes every log-density of a row by the same
constant (the log-determinant of the scaling), so within a fold all
candidates are compared on equal terms.
"""

# %%
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skpc import EinsumNetworkDensity

X, _ = load_breast_cancer(return_X_y=True)  # (569, 30); the labels are not used

pipe = Pipeline(
    [
        ("scale", StandardScaler()),
        (
            "pc",
            EinsumNetworkDensity(structure="rat",
                n_repetitions=5,
                batch_size=None,  # full-batch EM on 90% of the ~380 training rows of a fold:
                max_iter=20,  # 20 epochs (tol=None: no plateau rule), keeping the epoch
                tol=None,  # that scores best on the other 10% (early stopping)
                min_var=0.05,  # variances of standardized features: keep leaves from collapsing
                random_state=0,
            ),
        ),
    ]
)
grid = {"pc__n_sums": [1, 2, 4, 8], "pc__depth": [1, 2, 3]}
search = GridSearchCV(pipe, grid, cv=KFold(3, shuffle=True, random_state=0))
search.fit(X)

print(f"best parameters: {search.best_params_}")
print(f"best held-out mean log-likelihood: {search.best_score_:.2f}")

# %%
# The results table
# -----------------
# ``cv_results_`` holds one entry per candidate (``pandas.DataFrame(search.cv_results_)``
# turns it into a table).
results = search.cv_results_
print(f"{'n_sums':>6} {'depth':>5} {'fit time (s)':>13} {'held-out LL':>12} {'std':>6}")
for params, fit_time, mean, std in zip(
    results["params"], results["mean_fit_time"], results["mean_test_score"], results["std_test_score"]
):
    print(f"{params['pc__n_sums']:>6} {params['pc__depth']:>5} {fit_time:>13.2f} {mean:>12.2f} {std:>6.2f}")

# %%
# Held-out log-likelihood against K, one line per depth. With ``n_sums=1``
# every region holds a single product of leaves, so the circuit is only a
# mixture of ``n_repetitions`` factorized Gaussians; larger K and deeper trees
# capture more dependencies between the features until, with a few hundred
# training rows, the extra parameters start to overfit.
fig, ax = plt.subplots(figsize=(6, 4))
n_sums = np.array(grid["pc__n_sums"])
for depth in grid["pc__depth"]:
    chosen = [p["pc__depth"] == depth for p in results["params"]]
    ax.errorbar(
        n_sums,
        results["mean_test_score"][chosen],
        yerr=results["std_test_score"][chosen],
        marker="o",
        capsize=3,
        label=f"depth = {depth}",
    )
ax.set_xscale("log", base=2)
ax.set_xticks(n_sums, [str(k) for k in n_sums])
ax.set_xlabel("n_sums (K)")
ax.set_ylabel("held-out mean log-likelihood")
ax.legend()
fig.tight_layout()
plt.show()
