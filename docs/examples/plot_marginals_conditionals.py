"""
Exact marginals and conditionals of a 2-D density
=================================================

A probabilistic circuit integrates out any set of variables exactly, in one
forward pass: a ``NaN`` entry makes every leaf over that variable return 1
(log 0), which is the integral of a normalized leaf density, and sums and
products pass this through unchanged because the circuit is smooth and
decomposable.

Here an Einsum Network with Gaussian leaves is fitted to a 2-D mixture of
three Gaussian blobs. We plot the joint density, then check the marginal
``p(x0)``, obtained with ``score_samples`` on rows whose ``x1`` is ``NaN``,
against a numerical integral of the joint over ``x1``; and we plot the
conditionals ``p(x1 | x0)`` from ``score_conditional``.
"""

# %%
# Data and model
# --------------
import matplotlib.pyplot as plt
import numpy as np
from scipy.integrate import trapezoid

from skpc import EinsumNetworkDensity

rng = np.random.default_rng(0)
means = np.array([[-2.0, -1.0], [1.5, 2.0], [2.0, -2.0]])
covs = [
    [[0.6, 0.4], [0.4, 0.6]],
    [[0.4, -0.2], [-0.2, 0.8]],
    [[0.3, 0.0], [0.0, 0.3]],
]
X = np.vstack([rng.multivariate_normal(m, c, size=400) for m, c in zip(means, covs)])

pc = EinsumNetworkDensity(structure="rat",
    depth=1,  # the 2 variables split into {x0} and {x1}
    n_repetitions=1,
    n_sums=12,  # K = 12 densities per region: a mixture of products
    batch_size=None,  # full-batch EM
    max_iter=200,
    tol=1e-4,
    dtype="float64",
    random_state=0,
)
pc.fit(X)
print(f"mean log-likelihood: {pc.lower_bound_:.3f} after {pc.n_iter_} EM iterations")

# %%
# The joint density and exact marginals
# -------------------------------------
grid = np.linspace(-5, 5, 301)
step = grid[1] - grid[0]
g0, g1 = np.meshgrid(grid, grid, indexing="ij")
joint = np.exp(pc.score_samples(np.column_stack([g0.ravel(), g1.ravel()]))).reshape(g0.shape)

# Marginal p(x0): x1 is missing (NaN) and integrated out by the circuit itself.
rows = np.column_stack([grid, np.full_like(grid, np.nan)])
marginal_x0 = np.exp(pc.score_samples(rows))
# The same marginal by numerical integration of the joint over x1.
integrated_x0 = trapezoid(joint, dx=step, axis=1)
marginal_x1 = np.exp(pc.score_samples(np.column_stack([np.full_like(grid, np.nan), grid])))

print(f"integral of the joint over the grid: {trapezoid(integrated_x0, dx=step):.5f}")
print(f"max |exact marginal - numerical integral|: {np.abs(marginal_x0 - integrated_x0).max():.2e}")

fig = plt.figure(figsize=(7, 7))
ax_joint = fig.add_axes([0.1, 0.1, 0.6, 0.6])
ax_top = fig.add_axes([0.1, 0.72, 0.6, 0.2], sharex=ax_joint)
ax_right = fig.add_axes([0.72, 0.1, 0.2, 0.6], sharey=ax_joint)
ax_joint.contourf(g0, g1, joint, levels=20, cmap="viridis")
ax_joint.scatter(X[::6, 0], X[::6, 1], s=3, c="white", alpha=0.5)
ax_joint.set_xlabel("x0")
ax_joint.set_ylabel("x1")
ax_top.plot(grid, marginal_x0, lw=3, color="C1", label="score_samples, x1 = NaN")
ax_top.plot(grid, integrated_x0, "k--", lw=1, label="numerical integral of joint")
ax_top.legend(fontsize=7, loc="upper left")
ax_top.set_ylabel("p(x0)")
ax_top.tick_params(labelbottom=False)
ax_right.plot(marginal_x1, grid, lw=3, color="C1")
ax_right.set_xlabel("p(x1)")
ax_right.tick_params(labelleft=False)
plt.show()

# %%
# Conditionals
# ------------
# ``score_conditional(X, query)`` is ``log p(x_query | other observed entries)``:
# here ``log p(x1 | x0)`` for three values of ``x0``. Each curve integrates
# to one.
fig, ax = plt.subplots(figsize=(6, 3.5))
for x0 in (-2.0, 0.0, 2.0):
    rows = np.column_stack([np.full_like(grid, x0), grid])
    cond = np.exp(pc.score_conditional(rows, query=[1]))
    area = trapezoid(cond, dx=step)
    ax.plot(grid, cond, label=f"x0 = {x0:+.0f} (area {area:.3f})")
ax.set_xlabel("x1")
ax.set_ylabel("p(x1 | x0)")
ax.legend()
fig.tight_layout()
plt.show()

# %%
# Conditional samples
# -------------------
# ``impute`` draws the ``NaN`` entries from their exact conditional: a
# histogram of draws of ``x1`` given ``x0 = 2`` matches the curve above.
rows = np.column_stack([np.full(5000, 2.0), np.full(5000, np.nan)])
draws = pc.impute(rows, random_state=0)[:, 1]
fig, ax = plt.subplots(figsize=(6, 3.5))
ax.hist(draws, bins=80, density=True, alpha=0.5, label="impute: draws of x1 | x0 = 2")
rows = np.column_stack([np.full_like(grid, 2.0), grid])
ax.plot(grid, np.exp(pc.score_conditional(rows, query=[1])), "k", label="p(x1 | x0 = 2)")
ax.set_xlim(-5, 5)
ax.legend()
fig.tight_layout()
plt.show()
