"""Mixed feature types: one leaf family per column, in one phi tensor."""

import copy

import torch

from .base import ExponentialFamilyLeaf, _as_2d


class MixedLeaf(ExponentialFamilyLeaf):
    """One family per feature: mixed data types (real, binary, categorical,
    counts) in one circuit.

    The parameters stay ONE tensor, phi (L, S, K, T_max) with T_max the
    largest T of the families: a pair (region l, variable s) keeps its
    family's T statistics in ``phi[l, s, :, :T]`` and 0 in the columns after
    them, which every method keeps at 0; padding pairs are 0 throughout and
    contribute 0 to every result. Every method runs each family's own code
    over all (L, S) pairs with the other pairs at a safe value (the
    family's ``safe_phi``, the fill value, or u = 0), then keeps the
    family's pairs with ``torch.where``: nothing non-finite appears even in
    the discarded branches, which Adam differentiates through.

    The cost is one pass per distinct family over the whole layout, and a
    T_max wide phi everywhere (a 256-state categorical column makes every
    pair 256 wide).

    Parameters
    ----------
    families : sequence of ExponentialFamilyLeaf, one per feature
        Columns whose families compare equal form one group and share its
        hyper-parameters: ``infer`` fills a None ``n_categories`` from all
        the group's columns. Give the columns separate instances with
        different settings (e.g. ``CategoricalLeaf(3)``, ``CategoricalLeaf(5)``)
        to make them differ.

    Notes
    -----
    The methods on phi need the layout of the leaf regions: call
    ``for_scope(scope)`` first (the compiled circuit does). ``natural`` and
    ``write_statistics`` do not exist for a mixture of families: it is
    evaluated through its families' ``prepare`` and ``region_log_prob``.
    """

    name = "mixed"

    def __init__(self, families):
        families = list(families)
        if not families:
            raise ValueError("MixedLeaf needs one family per feature; got an empty list.")
        for j, family in enumerate(families):
            if not isinstance(family, ExponentialFamilyLeaf) or isinstance(family, MixedLeaf):
                raise ValueError(
                    f"The family of column {j} is {family!r}; give one ExponentialFamilyLeaf per column "
                    "(a MixedLeaf cannot be nested)."
                )
        self.families = families
        # distinct families in order of their first column, and their columns
        self._groups, self._columns = [], []
        for j, family in enumerate(families):
            for g, seen in enumerate(self._groups):
                if seen == family:
                    self._columns[g].append(j)
                    break
            else:
                self._groups.append(family)
                self._columns.append([j])
        self._layout = None  # set on the copy ``for_scope`` returns

    # -------------------------------------------------- configuration, data
    @property
    def n_features(self):
        """D, the number of columns the leaf gives families for."""
        return len(self.families)

    @property
    def groups(self):
        """[(family, columns)] for each distinct family."""
        return [(family, list(cols)) for family, cols in zip(self._groups, self._columns)]

    @property
    def n_stats(self):
        """T_max, the width of phi's last axis."""
        return max(family.n_stats for family in self._groups)

    def get_config(self):
        return {"family": self.name, "families": [family.get_config() for family in self.families]}

    def __repr__(self):
        return "MixedLeaf({" + ", ".join(f"{family!r}: {cols}" for family, cols in self.groups) + "})"

    def _check_inferred(self):
        for family in self._groups:
            family._check_inferred()

    def validate(self, X, columns=None):
        X = _as_2d(X)
        if X.shape[1] != self.n_features:
            raise ValueError(
                f"X has {X.shape[1]} features but the leaf gives families for {self.n_features} columns; "
                "give one family per feature of X."
            )
        super().validate(X, columns)
        for family, cols in self.groups:
            named = cols if columns is None else [columns[c] for c in cols]
            family.validate(X[:, cols], columns=named)

    def infer(self, X):
        self.validate(X)
        X = _as_2d(X)
        fitted = list(self.families)
        for family, cols in self.groups:
            inferred = family.infer(X[:, cols])
            for c in cols:
                fitted[c] = inferred
        return MixedLeaf(fitted)

    def for_scope(self, scope):
        """A copy bound to the leaf regions ``scope`` (L, S): it knows the
        family of every (region, variable) pair."""
        self._check_inferred()
        bound = copy.copy(self)
        bound._layout = self._build_layout(scope)
        return bound

    def n_free_parameters(self, scope, n_variables=None):
        if n_variables is not None and n_variables != self.n_features:
            raise ValueError(f"n_variables={n_variables} but the leaf has families for {self.n_features} columns.")
        layout = self._layout_for(scope)
        # each family counts its own pairs: the others are its padding there
        return sum(
            family.n_free_parameters(local, len(cols))
            for family, cols, local in zip(self._groups, self._columns, layout.local)
        )

    # ---------------------------------------------------------------- layout
    def _build_layout(self, scope):
        D = self.n_features
        if scope.numel() and int(scope.max()) > D:
            raise ValueError(
                f"scope indexes variable {int(scope.max())}, but the leaf has families for {D} columns "
                f"(0..{D - 1}, and {D} for padding); bind it to the scope of a circuit over X's features."
            )
        dev = scope.device
        group_of = torch.full((D + 1,), -1, dtype=torch.long, device=dev)  # -1: the padding variable
        local, columns = [], []
        for g, cols in enumerate(self._columns):
            index = torch.as_tensor(cols, dtype=torch.long, device=dev)
            group_of[index] = g
            # the family sees only its columns: X[:, cols] with the other
            # pairs at its own padding index len(cols)
            table = torch.full((D + 1,), len(cols), dtype=torch.long, device=dev)
            table[index] = torch.arange(len(cols), device=dev)
            local.append(table[scope])  # (L, S)
            columns.append(index)
        pair_group = group_of[scope]  # (L, S)
        masks = [pair_group == g for g in range(len(self._columns))]
        return _MixedLayout(scope, masks, local, columns)

    def _layout_for(self, scope):
        if self._layout is not None and self._layout.scope is scope:
            return self._layout
        return self._build_layout(scope)

    def _bound(self):
        if self._layout is None:
            raise ValueError(
                "A MixedLeaf needs the layout of the leaf regions for this: use leaf.for_scope(scope) "
                "(what a compiled circuit holds)."
            )
        return self._layout

    def _parts(self):
        """(family, mask (L, S) bool) per group."""
        return zip(self._groups, self._bound().masks)

    def _own(self, family, mask, phi):
        """phi (L, S, ..., T_max) -> the family's (L, S, ..., T), other pairs at its safe phi."""
        own = phi[..., : family.n_stats]
        return torch.where(_expand(mask, own.dim()), own, family.safe_phi(own))

    def _widen(self, value):
        """(..., T) -> (..., T_max), zeros after T."""
        extra = self.n_stats - value.shape[-1]
        return torch.nn.functional.pad(value, (0, extra)) if extra else value

    def _combine(self, phi, fn):
        """fn(family, own phi) per family, widened to T_max and kept on its pairs; 0 elsewhere."""
        out = phi.new_zeros(phi.shape)
        for family, mask in self._parts():
            out = torch.where(_expand(mask, phi.dim()), self._widen(fn(family, self._own(family, mask, phi))), out)
        return out

    def _combine_values(self, phi, fn):
        """fn(family, own phi) -> (...) per family (one value per entry), kept on its pairs; 0 elsewhere."""
        out = phi.new_zeros(phi.shape[:-1])
        for family, mask in self._parts():
            out = torch.where(_expand(mask, out.dim()), fn(family, self._own(family, mask, phi)), out)
        return out

    # --------------------------------------------------------------- forward
    def project(self, phi):
        return self._combine(phi, lambda family, own: family.project(own))

    def prior_mean(self, phi, stats, counts):
        """Each family's ``prior_mean`` on its own pairs (0 on padding)."""
        out = phi.new_zeros(phi.shape)
        for family, mask in self._parts():
            where = _expand(mask, phi.dim())
            own = self._own(family, mask, phi)
            own_stats = torch.where(where, stats[..., : family.n_stats], 0.0)
            own_counts = torch.where(_expand(mask, counts.dim()), counts, 0.0)
            value = family.prior_mean(own, own_stats, own_counts).expand_as(own)
            out = torch.where(where, self._widen(value), out)
        return out

    def prepare(self, X, scope):
        """A tuple with each family's ``prepare`` of its own columns."""
        layout = self._layout_for(scope)
        return tuple(
            family.prepare(X.index_select(1, cols), local)
            for family, cols, local in zip(self._groups, layout.columns, layout.local)
        )

    def observed(self, data):
        # each family's data is missing on the other families' pairs
        return sum(family.observed(d) for family, d in zip(self._groups, data))

    def region_log_prob(self, data, phi):
        out = None
        for (family, mask), d in zip(self._parts(), data):
            value = family.region_log_prob(d, self._own(family, mask, phi))  # (L, K, B)
            out = value if out is None else out + value
        return out

    def expected_statistics(self, data, grad):
        return self._statistics(data, grad, lambda family, mask, d: family.expected_statistics(d, grad))

    def _statistics(self, data, grad, fn):
        """fn(family, mask, its data) -> (stats (L, S, K, T), counts (L, S, K)) per
        family, kept on its pairs and widened to T_max."""
        L, S = self._bound().masks[0].shape
        K = grad.shape[1]
        stats = grad.new_zeros(L, S, K, self.n_stats)
        counts = grad.new_zeros(L, S, K)
        for (family, mask), d in zip(self._parts(), data):
            s, c = fn(family, mask, d)  # (L, S, K, T), (L, S, K)
            stats = torch.where(_expand(mask, 4), self._widen(s), stats)
            counts = torch.where(_expand(mask, 3), c, counts)
        return stats, counts

    # ------------------------------------------------------ data softening
    def check_softening(self, softening, columns=None):
        """Every family must allow it: the message names the columns of one that does not."""
        for family, cols in self.groups:
            family.check_softening(softening, cols if columns is None else [columns[c] for c in cols])

    def soft_region_log_prob(self, data, phi, softening):
        self.check_softening(softening)
        out = None
        for (family, mask), d in zip(self._parts(), data):
            value = family.soft_region_log_prob(d, self._own(family, mask, phi), softening)  # (L, K, B)
            out = value if out is None else out + value
        return out

    def soft_expected_statistics(self, data, phi, grad, softening):
        self.check_softening(softening)
        return self._statistics(
            data, grad, lambda family, mask, d: family.soft_expected_statistics(d, self._own(family, mask, phi), grad, softening)
        )

    # ------------------------------------------------------ sampling, mode
    def sample(self, phi, generator):
        return self._combine_values(phi, lambda family, own: family.sample(own, generator))

    def mode(self, phi):
        return self._combine_values(phi, lambda family, own: family.mode(own))

    def mode_log_density(self, phi):
        return self._combine_values(phi, lambda family, own: family.mode_log_density(own))

    # --------------------------------------------------------- Adam support
    def to_unconstrained(self, phi):
        return self._combine(phi, lambda family, own: family.to_unconstrained(own))

    def from_unconstrained(self, u):
        out = u.new_zeros(u.shape)
        for family, mask in self._parts():
            where = _expand(mask, u.dim())
            own = torch.where(where, u[..., : family.n_stats], 0.0)  # u = 0 is valid for every family
            out = torch.where(where, self._widen(family.from_unconstrained(own)), out)
        return out

    # ---------------------------------------------------------- init, data
    def init_from_data(self, X, scope, n_sums, generator):
        """Each family's ``init_from_data`` on its own columns, kept on its pairs."""
        self._check_inferred()
        layout = self._layout_for(scope)
        L, S = scope.shape
        out = X.new_zeros(L, S, n_sums, self.n_stats)
        for family, mask, cols, local in zip(self._groups, layout.masks, layout.columns, layout.local):
            phi = family.init_from_data(X.index_select(1, cols), local, n_sums, generator)
            out = torch.where(_expand(mask, 4), self._widen(phi), out)
        return out

    def init_phi(self, x_values, spread, generator):
        """(L, S, K) values and (L, S, 1) spreads -> phi (L, S, K, T_max): each
        family's ``init_phi`` with the other pairs at its fill value."""
        out = x_values.new_zeros(x_values.shape + (self.n_stats,))
        for family, mask in self._parts():
            own = torch.where(mask.unsqueeze(-1), x_values, family.fill_value())
            out = torch.where(_expand(mask, 4), self._widen(family.init_phi(own, spread, generator)), out)
        return out


class _MixedLayout:
    """A MixedLeaf's view of the leaf regions: scope (L, S); per family, its
    pairs (mask (L, S) bool), its columns of X (long), and the scope in those
    columns (local (L, S), its padding index = its number of columns)."""

    def __init__(self, scope, masks, local, columns):
        self.scope = scope
        self.masks = masks
        self.local = local
        self.columns = columns


# --------------------------------------------------------------- helpers


def _expand(mask, ndim):
    """mask (L, S) -> (L, S, 1, ..., 1) with ``ndim`` dims, to broadcast over K/B and T."""
    return mask.view(mask.shape + (1,) * (ndim - mask.dim()))
