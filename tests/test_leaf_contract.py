"""The leaf plug-in contract: validation and its messages, inference of
hyper-parameters, the registry and its resolver, configuration, equality
and pickling, free-parameter counts, data-dependent initialization, the
M-step, and a user-defined family going through all of it."""

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from scipy import stats

from skpc.backend.leaves import (
    LEAF_FAMILIES,
    PROB_FLOOR,
    BernoulliLeaf,
    BinomialLeaf,
    CategoricalLeaf,
    ExponentialFamilyLeaf,
    GaussianLeaf,
    MixedLeaf,
    PoissonLeaf,
    make_leaf,
    resolve_leaf,
)

# -------------------------------------------------------------- validate


@pytest.mark.parametrize(
    "leaf, value, match",
    [
        (BernoulliLeaf(), 2.0, r"outside \{0, 1\} in column 3: Bernoulli .*use leaf='categorical' or leaf='gaussian'"),
        (BernoulliLeaf(), 0.5, r"outside \{0, 1\} in column 3"),
        (CategoricalLeaf(), -1.0, r"negative or non-integer values in column 3: categorical .*leaf='gaussian'"),
        (CategoricalLeaf(), 1.5, r"negative or non-integer values in column 3"),
        (CategoricalLeaf(4), 4.0, r"value 4 in column 3, but categorical leaves have n_categories=4 .*raise "
                                  r"n_categories"),
        (BinomialLeaf(), -2.0, r"negative or non-integer values in column 3: binomial"),
        (BinomialLeaf(3), 5.0, r"value 5 in column 3, but binomial leaves have n_trials=3 .*raise n_trials"),
        (PoissonLeaf(), -1.0, r"negative or non-integer values in column 3: Poisson leaves need integers >= 0; "
                              r"use leaf='gaussian'"),
        (PoissonLeaf(), 2.5, r"negative or non-integer values in column 3: Poisson"),
        (GaussianLeaf(), np.inf, r"inf in column 3; .*NaN to mark it missing"),
        (PoissonLeaf(), -np.inf, r"inf in column 3"),
    ],
)
def test_validate_names_the_column_and_the_fix(leaf, value, match):
    X = np.array([[0.0, 1.0, np.nan, 1.0], [1.0, 0.0, 1.0, np.nan]])
    leaf.validate(X)  # binary, NaN-holed data is valid for every family
    leaf.infer(X)
    X[0, 3] = value
    with pytest.raises(ValueError, match=match):
        leaf.validate(X)
    with pytest.raises(ValueError, match=match):
        leaf.infer(X)  # infer validates first


def test_validate_lists_every_bad_column():
    X = np.zeros((3, 14))
    X[1, [2, 5]] = 0.5
    with pytest.raises(ValueError, match=r"columns 2, 5: Bernoulli"):
        BernoulliLeaf().validate(X)
    X[0, :12] = -1.0
    with pytest.raises(ValueError, match=r"columns 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, \.\.\.: Poisson"):
        PoissonLeaf().validate(X)


def test_mixed_validate_names_the_columns_and_the_spec_fix():
    leaf = resolve_leaf({"gaussian": [0], "bernoulli": [1, 4], CategoricalLeaf(3): [2], "poisson": [3]}, 5)
    X = np.array([[-1.5, 1.0, 2.0, 4.0, 0.0], [np.nan, 0.0, 0.0, np.nan, 1.0]])
    leaf.validate(X)
    cases = [
        ((0, 4), 3.0, r"outside \{0, 1\} in column 4: Bernoulli .*give those columns the 'categorical' or 'gaussian' "
                      r"family in the leaf spec"),
        ((1, 2), 3.0, r"value 3 in column 2, but categorical leaves have n_categories=3"),
        ((0, 3), 0.5, r"non-integer values in column 3: Poisson .*give those columns the 'gaussian' family"),
        ((0, 0), np.inf, r"inf in column 0"),
    ]
    for (row, col), value, match in cases:
        bad = X.copy()
        bad[row, col] = value
        with pytest.raises(ValueError, match=match):
            leaf.validate(bad)
    with pytest.raises(ValueError, match=r"X has 4 features but the leaf gives families for 5 columns"):
        leaf.validate(X[:, :4])


# ----------------------------------------------------------------- infer


@pytest.mark.parametrize(
    "leaf, X, key, want",
    [
        (CategoricalLeaf(), [[0.0, 4.0], [np.nan, 1.0]], "n_categories", 5),
        (CategoricalLeaf(), [[0.0, 0.0], [np.nan, 0.0]], "n_categories", 2),  # at least 2 states
        (CategoricalLeaf(), [[np.nan, np.nan]], "n_categories", 2),  # nothing observed
        (CategoricalLeaf(7), [[0.0, 4.0]], "n_categories", 7),  # given: kept
        (BinomialLeaf(), [[0.0, 6.0], [np.nan, 2.0]], "n_trials", 6),
        (BinomialLeaf(), [[0.0, 0.0]], "n_trials", 1),
        (BinomialLeaf(), [[np.nan, np.nan]], "n_trials", 1),
        (BinomialLeaf(9), [[0.0, 6.0]], "n_trials", 9),
    ],
)
def test_infer_fills_hyper_parameters_in_a_new_leaf(leaf, X, key, want):
    before = leaf.get_config()
    fitted = leaf.infer(np.array(X))
    assert getattr(fitted, key) == want
    assert fitted is not leaf and leaf.get_config() == before  # never mutated
    assert type(fitted) is type(leaf)


@pytest.mark.parametrize("leaf", [GaussianLeaf(0.3, 2.0), BernoulliLeaf(), PoissonLeaf()])
def test_infer_without_hyper_parameters_returns_an_equal_copy(leaf):
    fitted = leaf.infer(np.array([[0.0, 1.0]]))
    assert fitted == leaf and fitted is not leaf


def test_mixed_infer_fits_each_family_on_its_own_columns():
    leaf = resolve_leaf(["categorical", "gaussian", "categorical", CategoricalLeaf(), "binomial"], 5)
    X = np.array([[0.0, -2.0, 3.0, 1.0, 2.0], [1.0, 0.5, np.nan, 6.0, 7.0]])
    fitted = leaf.infer(X)
    assert isinstance(fitted, MixedLeaf) and fitted is not leaf
    # equal entries form one group: columns 0, 2 and 3 share max + 1 = 7
    assert [f.get_config() for f in fitted.families] == [
        {"family": "categorical", "n_categories": 7},
        {"family": "gaussian", "min_var": 1e-4, "max_var": None},
        {"family": "categorical", "n_categories": 7},
        {"family": "categorical", "n_categories": 7},
        {"family": "binomial", "n_trials": 7},
    ]
    # separate settings stay separate groups
    leaf = resolve_leaf({CategoricalLeaf(3): [0], CategoricalLeaf(): [1], "gaussian": [2]}, 3)
    fitted = leaf.infer(np.array([[2.0, 4.0, 0.1]]))
    assert [f.n_categories for f in fitted.families[:2]] == [3, 5]
    assert leaf.families[1].n_categories is None


def test_unfitted_hyper_parameters_are_reported_with_the_fix():
    scope = torch.tensor([[0, 1]])
    for leaf in (CategoricalLeaf(), BinomialLeaf(), resolve_leaf(["gaussian", "categorical"], 2)):
        with pytest.raises(ValueError, match=r"=None: fit it to data first with leaf.infer\(X\)"):
            leaf.for_scope(scope)
        with pytest.raises(ValueError, match=r"infer\(X\)"):
            leaf.init_from_data(torch.zeros(3, 2), scope, 2, torch.Generator())


# -------------------------------------------------------- resolve_leaf


def test_resolve_leaf_names_and_keywords():
    kw = dict(min_var=0.2, max_var=3.0, n_categories=4, n_trials=6)
    assert resolve_leaf("gaussian", 3, **kw) == GaussianLeaf(0.2, 3.0)
    assert resolve_leaf("categorical", 3, **kw) == CategoricalLeaf(4)
    assert resolve_leaf("binomial", 3, **kw) == BinomialLeaf(6)
    assert resolve_leaf("bernoulli", 3, **kw) == BernoulliLeaf()
    assert resolve_leaf("poisson", 3, **kw) == PoissonLeaf()
    assert resolve_leaf("categorical", 3) == CategoricalLeaf(None)
    assert set(LEAF_FAMILIES) == {"gaussian", "bernoulli", "categorical", "binomial", "poisson"}
    for name, cls in LEAF_FAMILIES.items():
        assert isinstance(make_leaf(name), cls) and make_leaf(name).name == name


def test_resolve_leaf_instances_are_copied_and_keywords_ignored():
    leaf = GaussianLeaf(0.5)
    got = resolve_leaf(leaf, 4, min_var=0.01)
    assert got == leaf and got is not leaf and got.min_var == 0.5


def test_resolve_leaf_dicts_and_lists():
    spec = {"gaussian": [0, 3], "categorical": [1, 2], PoissonLeaf(): 4}
    got = resolve_leaf(spec, 5, min_var=0.1, n_categories=3)
    assert isinstance(got, MixedLeaf)
    assert got.families == [GaussianLeaf(0.1), CategoricalLeaf(3), CategoricalLeaf(3), GaussianLeaf(0.1), PoissonLeaf()]
    assert got.groups == [(GaussianLeaf(0.1), [0, 3]), (CategoricalLeaf(3), [1, 2]), (PoissonLeaf(), [4])]
    listed = resolve_leaf(["gaussian", "categorical", "categorical", "gaussian", PoissonLeaf()], 5, min_var=0.1,
                          n_categories=3)
    assert listed == got
    # one family for every column: that family alone (the same model, without per-family passes)
    assert resolve_leaf({"poisson": [0, 1, 2]}, 3) == PoissonLeaf()
    assert resolve_leaf(("bernoulli", BernoulliLeaf()), 2) == BernoulliLeaf()


@pytest.mark.parametrize(
    "spec, match",
    [
        ("student", r"leaf='student' is not a leaf family; use one of 'gaussian', 'bernoulli', 'categorical', "
                    r"'binomial', 'poisson'"),
        ({"gaussian": [0, 1], "poisson": [1, 2]}, r"Column 1 is listed twice \(under 'gaussian' and 'poisson'\)"),
        ({"gaussian": [0, 0, 1, 2]}, r"Column 0 is listed twice"),
        ({"gaussian": [0]}, r"Columns 1, 2 of X have no leaf family"),
        ({"gaussian": [0, 1], "poisson": [2, 3]}, r"Column 3 of 'poisson' is out of range: X has 3 features"),
        ({"gaussian": [-1, 0, 1, 2]}, r"Column -1 of 'gaussian' is out of range"),
        ({"gaussian": [0, 1], "poisson": [2.0]}, r"column indices must be integers"),
        ({"gamma": [0, 1, 2]}, r"'gamma' is not a leaf family"),
        (["gaussian", "poisson"], r"The leaf list has 2 entries but X has 3 features; give one family per column"),
        (["gaussian", "poisson", 3], r"The leaf of column 2 is 3; give a family name"),
        (["gaussian", "poisson", MixedLeaf([PoissonLeaf()])], r"cannot be nested"),
        (MixedLeaf([PoissonLeaf(), GaussianLeaf()]), r"families for 2 columns but X has 3 features"),
        (3.5, r"leaf=3.5 is not understood"),
    ],
)
def test_resolve_leaf_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        resolve_leaf(spec, 3)


def test_family_constructors_reject_bad_hyper_parameters():
    with pytest.raises(ValueError, match=r"n_categories >= 2"):
        CategoricalLeaf(1)
    with pytest.raises(ValueError, match=r"n_trials >= 1"):
        BinomialLeaf(0)
    with pytest.raises(ValueError, match=r"positive variance floor"):
        GaussianLeaf(min_var=0.0)
    with pytest.raises(ValueError, match=r"max_var=0.5 must exceed min_var=1.0"):
        GaussianLeaf(min_var=1.0, max_var=0.5)
    with pytest.raises(ValueError, match=r"one ExponentialFamilyLeaf per column"):
        MixedLeaf([GaussianLeaf(), "poisson"])


# --------------------------------------------- config, equality, pickle

ALL_LEAVES = [
    GaussianLeaf(0.2, 5.0),
    GaussianLeaf(),
    BernoulliLeaf(),
    CategoricalLeaf(4),
    CategoricalLeaf(),
    BinomialLeaf(7),
    PoissonLeaf(),
    MixedLeaf([GaussianLeaf(), CategoricalLeaf(3), PoissonLeaf(), GaussianLeaf()]),
]


@pytest.mark.parametrize("leaf", ALL_LEAVES, ids=repr)
def test_config_equality_and_pickle_round_trip(leaf):
    config = leaf.get_config()
    assert config["family"] == leaf.name
    assert eval(repr(config)) == config  # plain python data
    for twin in (pickle.loads(pickle.dumps(leaf)), copy.deepcopy(leaf)):
        assert twin == leaf and twin is not leaf
        assert twin.get_config() == config and repr(twin) == repr(leaf) and hash(twin) == hash(leaf)
    others = [other for other in ALL_LEAVES if other is not leaf]
    assert all(other != leaf for other in others)


def test_config_and_repr_by_family():
    assert GaussianLeaf(0.2, 5.0).get_config() == {"family": "gaussian", "min_var": 0.2, "max_var": 5.0}
    assert CategoricalLeaf(4).get_config() == {"family": "categorical", "n_categories": 4}
    assert BinomialLeaf().get_config() == {"family": "binomial", "n_trials": None}
    assert PoissonLeaf().get_config() == {"family": "poisson"}
    assert repr(GaussianLeaf(0.2)) == "GaussianLeaf(min_var=0.2, max_var=None)"
    assert repr(CategoricalLeaf(4)) == "CategoricalLeaf(n_categories=4)"
    mixed = MixedLeaf([PoissonLeaf(), CategoricalLeaf(3), PoissonLeaf()])
    assert repr(mixed) == "MixedLeaf({PoissonLeaf(): [0, 2], CategoricalLeaf(n_categories=3): [1]})"
    # the repr is a valid dict spec again
    assert resolve_leaf({PoissonLeaf(): [0, 2], CategoricalLeaf(n_categories=3): [1]}, 3) == mixed
    assert GaussianLeaf() != PoissonLeaf() and GaussianLeaf(0.1) != GaussianLeaf(0.2)


def test_bound_mixed_leaf_pickles_and_equals_unbound():
    leaf = MixedLeaf([GaussianLeaf(), PoissonLeaf()])
    bound = leaf.for_scope(torch.tensor([[0, 1], [1, 2]]))
    assert bound == leaf and bound is not leaf
    phi = torch.tensor([[[[0.5, 1.5]], [[2.0, 0.0]]], [[[3.0, 0.0]], [[0.0, 0.0]]]], dtype=torch.float64)
    twin = pickle.loads(pickle.dumps(bound))
    np.testing.assert_array_equal(twin.project(phi).numpy(), bound.project(phi).numpy())
    with pytest.raises(ValueError, match=r"for_scope\(scope\)"):
        leaf.project(phi)  # the unbound leaf does not know which pair is which


# ---------------------------------------------------- n_free_parameters


def test_n_free_parameters_by_hand():
    D = 5
    scope = torch.tensor([[0, 1, 2], [3, 4, D], [1, D, D]])  # 6 real pairs, 3 padding
    assert GaussianLeaf().n_free_parameters(scope, D) == 6 * 2
    assert BernoulliLeaf().n_free_parameters(scope, D) == 6
    assert BinomialLeaf(9).n_free_parameters(scope, D) == 6
    assert PoissonLeaf().n_free_parameters(scope, D) == 6
    assert CategoricalLeaf(4).n_free_parameters(scope, D) == 6 * 3
    # gaussian 0, 3; categorical (3 states) 1, 2; Poisson 4.
    # pairs: 0 G 2, 1 C 2, 2 C 2, 3 G 2, 4 P 1, 1 C 2
    mixed = MixedLeaf([GaussianLeaf(), CategoricalLeaf(3), CategoricalLeaf(3), GaussianLeaf(), PoissonLeaf()])
    assert mixed.n_free_parameters(scope, D) == 11
    assert mixed.n_free_parameters(scope) == 11
    assert mixed.for_scope(scope).n_free_parameters(scope) == 11
    # the padding index comes from the data infer saw
    fitted = CategoricalLeaf().infer(np.array([[0.0, 1.0, 3.0, 0.0, 1.0]]))
    assert fitted.n_free_parameters(scope) == 6 * 3
    with pytest.raises(ValueError, match=r"pass n_variables"):
        PoissonLeaf().n_free_parameters(scope)


# ------------------------------------------------------- init_from_data


def _init_data(rng, n_rows=30):
    X = np.column_stack(
        [
            rng.normal(2.0, 3.0, n_rows),  # gaussian
            rng.integers(0, 2, n_rows),  # bernoulli
            rng.integers(0, 3, n_rows),  # categorical, 3 states
            rng.poisson(0.4, n_rows),  # poisson, many zeros
            np.full(n_rows, np.nan),  # nothing observed
        ]
    ).astype(float)
    X[rng.random(X.shape) < 0.2] = np.nan
    return X


def _among(values, allowed, tol=1e-4):
    """Every value equals one of ``allowed`` up to float32 rounding."""
    return (np.abs(np.asarray(values, dtype=float)[..., None] - allowed).min(-1) < tol).all()


SINGLE = [
    (GaussianLeaf(0.01), 0),
    (BernoulliLeaf(), 1),
    (CategoricalLeaf(3), 2),
    (PoissonLeaf(), 3),
    (BinomialLeaf(2), 2),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("leaf, column", SINGLE, ids=[repr(leaf) for leaf, _ in SINGLE])
def test_init_from_data_single_family(leaf, column, dtype):
    rng = np.random.default_rng(0)
    X = _init_data(rng)[:, [column, column, 4]]  # the family's column twice, and an all-missing one
    D, K = 3, 4
    scope = torch.tensor([[0, 2], [1, D], [2, 0]])
    Xt = torch.tensor(X, dtype=dtype)
    phi = leaf.init_from_data(Xt, scope, K, torch.Generator().manual_seed(7))
    again = leaf.init_from_data(Xt, scope, K, torch.Generator().manual_seed(7))
    other = leaf.init_from_data(Xt, scope, K, torch.Generator().manual_seed(8))
    assert phi.shape == (3, 2, K, leaf.n_stats) and phi.dtype == dtype
    assert torch.equal(phi, again)  # deterministic given the generator
    assert not torch.equal(phi, other)
    assert torch.isfinite(phi).all()
    assert torch.equal(leaf.project(phi), phi) or torch.allclose(leaf.project(phi), phi)
    observed = X[:, 0][~np.isnan(X[:, 0])]
    starts = np.append(observed, observed.mean())  # a training value, or the mean for a missing one
    real = phi[scope < 2]  # pairs of the two data columns: (n, K, T)
    if leaf.name == "gaussian":
        assert _among(real[..., 0].numpy(), starts)
        var = (real[..., 1] - real[..., 0] ** 2).numpy()
        np.testing.assert_allclose(var, observed.var(), rtol=1e-4)
    elif leaf.name == "categorical":
        np.testing.assert_allclose(phi.sum(-1).numpy(), 1.0, rtol=1e-6)
        assert (phi >= PROB_FLOOR * 0.99).all()
        # the densities lean to their sampled state: it has probability >= 1/2
        assert (real.amax(-1) >= 0.5 - 1e-6).all()
    elif leaf.name == "poisson":
        assert (phi > 0).all()
        # halfway between a sampled count and the column mean
        mean = observed.mean()
        assert _among(2 * real[..., 0].numpy() - mean, starts)
    else:  # Bernoulli, Binomial: halfway between the value and a random p in [0.3, 0.7], never 0 or 1
        p = real[..., 0].numpy() / getattr(leaf, "n_trials", 1)
        assert ((p >= 0.15 - 1e-6) & (p <= 0.85 + 1e-6)).all()
        # no two densities of a pair start equal (equal ones would stay equal under EM)
        flat = p.reshape(p.shape[0], -1)
        assert all(len(np.unique(row)) == row.size for row in flat)


# --------------------------------------------------------------- m_step


@pytest.mark.parametrize("leaf", [GaussianLeaf(0.05), BernoulliLeaf(), CategoricalLeaf(3)], ids=repr)
def test_m_step_equals_weighted_moments(leaf):
    """One full EM step (step 1) on posterior weights from a hand-written
    E-step gives each density the weighted mean of T(x) over its observed
    entries, then the family's projection."""
    rng = np.random.default_rng(4)
    B, D, K = 50, 3, 2
    if leaf.name == "gaussian":
        X = rng.normal(size=(B, D))
        X[:4, 1] = 7.0  # one density nearly constant: the variance floor applies somewhere
    else:
        X = rng.integers(0, 2 if leaf.name == "bernoulli" else 3, size=(B, D)).astype(float)
    X[rng.random(X.shape) < 0.25] = np.nan
    scope = torch.tensor([[0, 1], [2, D]])
    data = leaf.prepare(torch.tensor(X), scope)
    grad = torch.tensor(rng.uniform(0, 1, size=(2, K, B)))
    grad[0, 1, 4:] = 0.0  # density (0, ., 1) sees only the first 4 rows
    stats_, counts = leaf.expected_statistics(data, grad)
    old = leaf.init_from_data(torch.tensor(X), scope, K, torch.Generator().manual_seed(0))
    new = leaf.m_step(old, stats_, counts, 1.0)
    for l in range(2):
        for s in range(2):
            d = int(scope[l, s])
            for k in range(K):
                if d == D:
                    torch.testing.assert_close(new[l, s, k], old[l, s, k])
                    continue
                seen = ~np.isnan(X[:, d])
                w = grad[l, k].numpy()[seen]
                x = X[seen, d]
                if leaf.name == "gaussian":
                    mean = (w * x).sum() / w.sum()
                    var = max((w * (x - mean) ** 2).sum() / w.sum(), 0.05)
                    want = [mean, var + mean**2]
                elif leaf.name == "bernoulli":
                    want = [np.clip((w * x).sum() / w.sum(), PROB_FLOOR, 1 - PROB_FLOOR)]
                else:
                    p = np.maximum([(w * (x == c)).sum() / w.sum() for c in range(3)], PROB_FLOOR)
                    want = p / p.sum()
                np.testing.assert_allclose(new[l, s, k].numpy(), want, rtol=1e-9, atol=1e-12)


# ------------------------------------------------- a user-defined family


class ExponentialLeaf(ExponentialFamilyLeaf):
    """Exponential distribution on x >= 0, phi = the mean m: T(x) = x,
    theta = -1/m, c = -log m, h = 1. Written from the module docstring's list."""

    name = "exponential"
    n_stats = 1

    def __init__(self, min_mean=1e-3):
        self.min_mean = min_mean

    def _mean(self, phi):
        return phi[..., 0].clamp_min(self.min_mean)

    def validate(self, X, columns=None):
        super().validate(X, columns)
        if (np.nan_to_num(X) < 0).any():
            raise ValueError("negative values: exponential leaves need x >= 0")

    def natural(self, phi):
        m = self._mean(phi)
        return [-1.0 / m], -torch.log(m)

    def project(self, phi):
        return self._mean(phi).unsqueeze(-1)

    def sample(self, phi, generator):
        m = self._mean(phi)
        u = torch.rand(m.shape, generator=generator, dtype=m.dtype)
        return -m * torch.log1p(-u)

    def mode(self, phi):
        return torch.zeros_like(phi[..., 0])

    def mode_log_density(self, phi):
        return -torch.log(self._mean(phi))

    def to_unconstrained(self, phi):
        return torch.log(self.project(phi))

    def from_unconstrained(self, u):
        return torch.exp(u)

    def init_phi(self, x_values, spread, generator):
        return self.project((0.5 * x_values + 0.5 * spread.sqrt()).unsqueeze(-1))


def test_a_user_family_plugs_in_alone_and_in_a_mixed_leaf():
    rng = np.random.default_rng(5)
    B = 12
    X = np.column_stack([rng.exponential(2.0, B), rng.normal(size=B)])
    X[3, 0] = np.nan
    leaf = resolve_leaf({ExponentialLeaf(0.01): [0], "gaussian": [1]}, 2).infer(X)
    assert leaf.get_config()["families"][0] == {"family": "exponential", "min_mean": 0.01}
    assert pickle.loads(pickle.dumps(leaf)) == leaf
    with pytest.raises(ValueError, match="exponential leaves need x >= 0"):
        leaf.validate(-np.abs(X))
    scope = torch.tensor([[0, 1], [0, 2]])
    bound = leaf.for_scope(scope)
    Xt = torch.tensor(X)
    phi = bound.init_from_data(Xt, scope, 2, torch.Generator().manual_seed(0))
    assert phi.shape == (2, 2, 2, 2) and (phi[:, 0, :, 0] > 0).all() and (phi[:, 0, :, 1] == 0).all()
    got = bound.region_log_prob(bound.prepare(Xt, scope), phi).numpy()  # (L, K, B)
    seen = ~np.isnan(X[:, 0])
    for l in range(2):
        for k in range(2):
            m = phi[l, 0, k, 0].item()
            want = np.where(seen, stats.expon.logpdf(np.nan_to_num(X[:, 0]), scale=m), 0.0)
            if l == 0:
                mu, second = phi[0, 1, k].tolist()
                want = want + stats.norm.logpdf(X[:, 1], mu, math.sqrt(second - mu**2))
            np.testing.assert_allclose(got[l, k], want, rtol=1e-10)
    assert ExponentialLeaf().n_free_parameters(scope, 2) == 3
