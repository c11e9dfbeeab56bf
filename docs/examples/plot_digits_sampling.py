"""
Sampling and inpainting handwritten digits
==========================================

An Einsum Network over the 8x8 images of scikit-learn's ``load_digits``,
with a Poon-Domingos structure (rectangular image regions split
horizontally and vertically) and categorical leaves over the 17 grey levels
0..16 of each pixel.

Once fitted, the same circuit answers two questions exactly:

- ``sample(n)`` draws new images by ancestral sampling;
- ``impute(X)`` fills the ``NaN`` pixels of each image with a draw from
  ``p(missing pixels | observed pixels)``: here the bottom half of every
  test image is hidden and the model paints it in.

``method="mpe"`` instead returns an approximate most probable completion
(a maximum instead of a sum at every sum node on the way down), which
looks smoother but is not an exact query.
"""

# %%
# Fit the circuit
# ---------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skpc import EinsumNetworkDensity

X, y = load_digits(return_X_y=True)  # X: (1797, 64), integer grey levels 0..16
X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)

pc = EinsumNetworkDensity(
    structure="pd",
    image_shape=(8, 8),
    pd_delta=[4, 2],  # coarse cuts every 4 pixels first, then every 2
    leaf="categorical",
    n_categories=17,
    n_sums=10,
    max_iter=20,  # at most 20 epochs of stochastic EM, then the default full-batch EM phase
    batch_size=200,
    random_state=0,
)
pc.fit(X_train)
print(f"train log-likelihood: {pc.lower_bound_:.1f} nats per image")
print(f"test  log-likelihood: {pc.score(X_test):.1f} nats per image")
print(f"{pc.n_parameters_} parameters")

# %%
# Samples and inpainting
# ----------------------
# The bottom four rows (32 pixels) of each test image are set to ``NaN``
# (orange below).
samples = pc.sample(8, random_state=0)

real = X_test[:8]
half = real.copy()
half[:, 32:] = np.nan
inpainted = pc.impute(half, random_state=0)
mpe = pc.impute(half, method="mpe")

rows = [
    ("real", real),
    ("bottom half hidden", half),
    ("inpainted (sample)", inpainted),
    ("inpainted (MPE)", mpe),
    ("unconditional samples", samples),
]
cmap = plt.get_cmap("gray_r").with_extremes(bad="tab:orange")  # hidden (NaN) pixels
fig, axes = plt.subplots(len(rows), 8, figsize=(8, 5.6))
for (title, images), ax_row in zip(rows, axes):
    for image, ax in zip(images, ax_row):
        ax.imshow(image.reshape(8, 8), cmap=cmap, vmin=0, vmax=16)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_row[0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
fig.suptitle("Einsum Network on 8x8 digits")
fig.tight_layout()
plt.show()

# %%
# The observed top halves are returned unchanged: only the ``NaN`` entries
# are filled.
assert np.array_equal(inpainted[:, :32], real[:, :32])

# %%
# How good is the inpainting?
# ---------------------------
# ``score_conditional`` gives the exact conditional log-likelihood of the
# true bottom halves given the top halves, a number to compare models by.
bottom = np.arange(32, 64)
cond = pc.score_conditional(X_test, query=bottom)
print(f"mean log p(bottom half | top half) on test images: {cond.mean():.1f} nats")
