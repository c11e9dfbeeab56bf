"""
Latent variable distillation on digit patches
=============================================

:class:`~skpc.LVDDensity` (Liu et al., ICLR 2023) cuts each 8x8 digit of
scikit-learn's ``load_digits`` into four 4x4 patches and gives every patch a
latent variable with ``n_clusters`` states. The states are first
*assigned*: each patch of each training image is embedded (here by PCA of
the patch; the default is a small masked autoencoder) and k-means clusters
the embeddings. The circuit materializes those latents, is trained on the
images together with their codes (each patch's sub-circuit output ``c``
sees only the patches assigned ``c``; a hidden Chow-Liu tree learns how the
patch codes go together), and is then fine-tuned on the images alone.

The result is one ordinary probabilistic circuit over the 64 pixels: it
scores, samples and inpaints exactly like an
:class:`~skpc.EinsumNetworkDensity`, and ``transform`` tells the most
probable state of each patch latent of an image, even one with pixels
missing.
"""

# %%
# Fit the model
# -------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from skpc import LVDDensity

X, y = load_digits(return_X_y=True)  # X: (1797, 64), integer grey levels 0..16
X_train, X_test = train_test_split(X, test_size=0.2, random_state=0)

lvd = LVDDensity(
    image_shape=(8, 8),
    patch_size=4,
    n_clusters=8,
    embedder="pca",
    leaf="categorical",
    n_categories=17,
    tol=0.01,  # a plateau: three epochs that gain at most 0.01 nats per image
    random_state=0,
)
lvd.fit(X_train)
print(f"test log-likelihood: {lvd.score(X_test):.1f} nats per image, {lvd.n_parameters_} parameters")
print("seconds per stage:", {stage: round(s, 1) for stage, s in lvd.stage_times_.items()})

# %%
# The learned patch clusters
# --------------------------
# For the top-left and bottom-right patches, a few training patches assigned
# to each latent state by the fitted circuit (``transform``): each state
# gathers one kind of stroke.
codes = lvd.transform(X_train)  # (n_train, 4): the most probable state of each patch latent
images = X_train.reshape(-1, 8, 8)
corners = {"top-left patch": (0, slice(0, 4), slice(0, 4)), "bottom-right patch": (3, slice(4, 8), slice(4, 8))}
fig, axes = plt.subplots(2 * 8, 6, figsize=(4.5, 12))
for block, (title, (group, rows, cols)) in enumerate(corners.items()):
    for state in range(8):
        members = np.flatnonzero(codes[:, group] == state)[:6]
        ax_row = axes[block * 8 + state]
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
        for ax, index in zip(ax_row, members):
            ax.imshow(images[index, rows, cols], cmap="gray_r", vmin=0, vmax=16)
        ax_row[0].set_ylabel(f"{title.split()[0]} {state}", rotation=0, ha="right", va="center", fontsize=7)
fig.suptitle("Patches per latent state")
fig.tight_layout()

# %%
# Samples and inpainting
# ----------------------
# The bottom half of each test image is hidden (orange) and drawn from
# ``p(missing | observed)``.
half = X_test[:8].copy()
half[:, 32:] = np.nan
rows = [
    ("real", X_test[:8]),
    ("bottom half hidden", half),
    ("inpainted", lvd.impute(half, random_state=0)),
    ("samples", lvd.sample(8, random_state=0)),
]
cmap = plt.get_cmap("gray_r").with_extremes(bad="tab:orange")
fig, axes = plt.subplots(len(rows), 8, figsize=(8, 4.6))
for (title, batch), ax_row in zip(rows, axes):
    for image, ax in zip(batch, ax_row):
        ax.imshow(image.reshape(8, 8), cmap=cmap, vmin=0, vmax=16)
        ax.set_xticks([])
        ax.set_yticks([])
    ax_row[0].set_ylabel(title, rotation=0, ha="right", va="center", fontsize=9)
fig.suptitle("LVDDensity on 8x8 digits")
fig.tight_layout()
plt.show()
