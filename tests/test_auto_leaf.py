"""leaf="auto": each column's family chosen from the training data, and a
default fit on 8-bit images that beats the uniform distribution on test data."""

import numpy as np
import pytest
from sklearn.datasets import load_digits

from skpc import LVDDensity
from skpc.backend import AutoLeaf, CategoricalLeaf, GaussianLeaf, MixedLeaf, resolve_leaf


@pytest.mark.parametrize(
    "column, family",
    [
        ([0, 1, 1, np.nan], "categorical"),
        ([0, 0, 0], "categorical"),
        ([0, 3, 255], "categorical"),
        ([0, 3, 256], "gaussian"),  # 257 states: past AUTO_MAX_CATEGORIES
        ([0, 1.5, 2], "gaussian"),
        ([-1, 0, 1], "gaussian"),
        ([np.nan, np.nan], "gaussian"),
    ],
)
def test_family_of_a_column(column, family):
    assert AutoLeaf.family_of(np.array(column, dtype=float)) == family


def test_auto_resolves_to_the_families_of_the_columns():
    rng = np.random.default_rng(0)
    X = np.c_[rng.integers(0, 2, 40), rng.integers(0, 17, 40), rng.normal(size=40), rng.integers(0, 17, 40)]
    leaf = resolve_leaf("auto", 4).infer(X.astype(float))
    assert isinstance(leaf, MixedLeaf)
    families = leaf.families
    assert isinstance(families[2], GaussianLeaf)
    # the integer columns share one categorical family (a binary column included)
    assert isinstance(families[1], CategoricalLeaf) and families[0] == families[1] == families[3]
    assert families[1].n_categories == int(X[:, [0, 1, 3]].max()) + 1
    # one family for every column: that family alone
    assert isinstance(resolve_leaf("auto", 2).infer(rng.normal(size=(10, 2))), GaussianLeaf)
    # n_categories given: used by the categorical columns
    assert resolve_leaf("auto", 1, n_categories=40).infer(X[:, [1]].astype(float)).n_categories == 40


def test_default_lvd_on_8_bit_style_digits_beats_the_uniform_distribution():
    X, _ = load_digits(return_X_y=True)  # grey levels 0..16
    model = LVDDensity(image_shape=(8, 8), patch_size=4, embedder="pca", n_clusters=4, max_iter=5,
                       finetune_max_iter=2, tol=None, random_state=0).fit(X[:1200])
    uniform = -64 * np.log(17)
    # every pixel categorical over 0..16, the always-0 border pixels too
    assert isinstance(model.leaf_, CategoricalLeaf) and model.leaf_.n_categories == 17
    assert model.score(X[1200:]) > uniform + 50
