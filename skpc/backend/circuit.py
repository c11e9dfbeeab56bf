"""A region graph compiled into index tensors, and its forward/backward passes.

Layout. Every tensor of log-densities is region-major with the batch last,
``(rows, K, B)``: the einsum of one level is a single batched matmul over its
partitions with a wide (K, B) output, and gathering children selects
contiguous ``(K, B)`` blocks (or is a zero-copy slice).

Stores. Height 0 holds the leaf regions. For every height h >= 1 (the
topological levels of ``RegionGraph.heights``):

- ``partition_store[h]`` (L_h, K, B): the einsum outputs of the partitions of
  height h. Its first ``n_single[h]`` rows belong, in order, to the regions
  of height h that have a single partition; the rest belong to regions with
  several partitions (of height >= h).
- ``region_store[h]`` (R_h, K, B): the region values of height h: the first
  ``n_single[h]`` rows are those same einsum outputs (a zero-copy slice), the
  rest are the mixing layer's outputs.

The compiled circuit holds no parameters and keeps nothing from the last
batch: parameters come in as a ``CircuitParams``, and a missing-value mask
travels with each batch.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import (
    log_einsum_exp,
    log_einsum_exp_halves,
    log_einsum_max,
    log_mix,
    log_mix_max,
    log_root,
    log_root_max,
)


@dataclass
class CircuitParams:
    """Parameters of a compiled circuit (all on one device and dtype).

    leaf : (L0, S, K, T) expectation parameters of the leaf densities.
    einsum : per height h >= 1, (L_h, K, K*K) sum weights, normalized over the last dim.
    mixing : per height h >= 1, (M_h, P_h, K) mixing weights (0 on padding),
        normalized over dim 1, or None where no region of height h mixes.
    root : (K,) weights of the root sum node.
    """

    leaf: torch.Tensor
    einsum: list
    mixing: list
    root: torch.Tensor

    def tensors(self):
        """All weight tensors after the leaves, in a fixed order."""
        return [*self.einsum, *(m for m in self.mixing if m is not None), self.root]

    def map(self, fn):
        """A new CircuitParams with ``fn`` applied to every tensor."""
        return CircuitParams(
            leaf=fn(self.leaf),
            einsum=[fn(w) for w in self.einsum],
            mixing=[None if m is None else fn(m) for m in self.mixing],
            root=fn(self.root),
        )

    def with_weights(self, weights):
        """Replace the weight tensors (in ``tensors()`` order)."""
        it = iter(weights)
        einsum = [next(it) for _ in self.einsum]
        mixing = [None if m is None else next(it) for m in self.mixing]
        return CircuitParams(leaf=self.leaf, einsum=einsum, mixing=mixing, root=next(it))

    def n_parameters(self, circuit):
        """Free parameters: sum weights minus their normalization, plus leaf parameters."""
        total = 0
        for w in self.einsum:
            total += w.shape[0] * w.shape[1] * (w.shape[2] - 1)
        for h, m in enumerate(self.mixing):
            if m is not None:
                sizes = (~circuit.mix_pad[h + 1]).sum(1)  # partitions per mixing region
                total += int((sizes - 1).sum()) * m.shape[2]
        total += self.root.shape[0] - 1
        n_pairs = int(circuit.n_pairs)
        stats = self.leaf.shape[-1]
        # a categorical leaf's probabilities sum to one: C - 1 free values
        free_per_leaf = stats - 1 if circuit.leaf_is_simplex else stats
        total += n_pairs * self.leaf.shape[2] * free_per_leaf
        return int(total)


@dataclass
class _Gather:
    """Rows taken from one or more stores: ``cat(stores[sources])[index]``."""

    sources: list
    index: torch.Tensor
    row_height: np.ndarray = field(repr=False)  # (n,) height of each gathered row
    row: np.ndarray = field(repr=False)  # (n,) row within that height's store

    start: int = -1  # >= 0 when the rows are one contiguous block of one store

    def __call__(self, stores):
        if self.start >= 0:
            return stores[self.sources[0]][self.start : self.start + len(self.row)]
        if len(self.sources) == 1:
            return stores[self.sources[0]].index_select(0, self.index)
        return torch.cat([stores[s] for s in self.sources], 0).index_select(0, self.index)


def _make_gather(heights, rows, store_sizes, device):
    heights = np.asarray(heights, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    sources = sorted(set(heights.tolist()))
    offset, start = {}, 0
    for s in sources:
        offset[s] = start
        start += store_sizes[s]
    index = np.array([offset[h] + r for h, r in zip(heights, rows)], dtype=np.int64)
    start = -1
    if len(sources) == 1 and len(index) and (np.diff(index) == 1).all():
        start = int(index[0])
    return _Gather(sources, torch.as_tensor(index, device=device), heights, rows, start)


class CompiledCircuit:
    """Index tensors for evaluating a (binary) region graph level by level.

    Parameters
    ----------
    graph : RegionGraph
        Validated; partitions with more than two children are binarized.
    n_sums : int
        K, the number of densities per region.
    leaf : ExponentialFamilyLeaf
    device : torch.device
    """

    def __init__(self, graph, n_sums, leaf, device="cpu"):
        if any(len(children) != 2 for _, children in graph.partitions):
            graph = graph.binarize()
        self.graph = graph
        self.n_sums = int(n_sums)
        self.leaf = leaf
        self.device = torch.device(device)
        self.n_variables = graph.n_variables
        self._compile(graph)

    # ---------------------------------------------------------------- build
    def _compile(self, graph):
        region_h, partition_h = graph.heights()
        region_parts = graph.region_partitions()
        self.height = int(region_h.max()) if len(region_h) else 0
        H = self.height
        root = graph.root
        dev = self.device

        # Row order of every store. Regions of height h come single-partition
        # first, then multi-partition; partitions of height h follow their
        # single-partition regions' order. Where the level below is a plain
        # tree level (each region used by exactly one partition, as in random
        # binary trees), it is ordered [left children..., right children...]
        # so that both gathers become zero-copy slices.
        n_regions = len(graph.regions)
        leaves = [r for r in range(n_regions) if not region_parts[r]]
        uses = np.zeros(n_regions, dtype=np.int64)
        for _, children in graph.partitions:
            uses[list(children)] += 1

        regions_at = [[] for _ in range(H + 1)]
        for r in range(n_regions):
            if region_parts[r]:
                regions_at[region_h[r]].append(r)
        partitions_at = [[] for _ in range(H + 1)]
        for p in range(len(graph.partitions)):
            partitions_at[partition_h[p]].append(p)

        def default_order(h):
            single = [r for r in regions_at[h] if len(region_parts[r]) == 1]
            return single + [r for r in regions_at[h] if len(region_parts[r]) > 1]

        order_regions = {h: default_order(h) for h in range(1, H + 1)}
        order_regions[0] = leaves
        order_parts, mix_regions = {}, {}
        self.n_single = [0] * (H + 1)
        for h in range(H, 0, -1):
            single = [r for r in order_regions[h] if len(region_parts[r]) == 1]
            parts_h = [region_parts[r][0] for r in single]
            taken = set(parts_h)
            parts_h += [p for p in partitions_at[h] if p not in taken]
            order_parts[h], mix_regions[h] = parts_h, order_regions[h][len(single) :]
            self.n_single[h] = len(single)
            lefts = [graph.partitions[p][1][0] for p in parts_h]
            lefts_rights = lefts + [graph.partitions[p][1][1] for p in parts_h]
            level = set(order_regions[h - 1])
            if (
                len(set(lefts_rights)) == len(lefts_rights) == len(level)
                and set(lefts_rights) == level
                and all(uses[r] == 1 for r in lefts_rights)
                and (h == 1 or all(len(region_parts[r]) == 1 for r in lefts_rights))
            ):
                order_regions[h - 1] = lefts_rights

        region_loc, partition_loc = {}, {}
        for h in range(H + 1):
            for row, r in enumerate(order_regions[h]):
                region_loc[r] = (h, row)
        for h in range(1, H + 1):
            for row, p in enumerate(order_parts[h]):
                partition_loc[p] = (h, row)
        leaves = order_regions[0]
        scopes = [graph.regions[r] for r in leaves]
        self.leaf_width = max(len(s) for s in scopes)
        pad = self.n_variables  # index of an all-missing dummy column
        scope = np.full((len(leaves), self.leaf_width), pad, dtype=np.int64)
        for row, s in enumerate(scopes):
            scope[row, : len(s)] = s
        self.leaf_scope = torch.as_tensor(scope, device=dev)  # (L0, S)
        self.n_pairs = int(sum(len(s) for s in scopes))
        self.leaf_is_simplex = self.leaf.name == "categorical"

        self.region_store_sizes = [len(order_regions[h]) for h in range(H + 1)]
        self.partition_store_sizes = [0] + [len(order_parts[h]) for h in range(1, H + 1)]
        self.left, self.right, self.mix_gather = [None], [None], [None]
        self.mix_pad = [None]
        self.mix_padded = [False]
        for h in range(1, H + 1):
            parts = order_parts[h]
            lh, lr = zip(*(region_loc[graph.partitions[p][1][0]] for p in parts))
            rh, rr = zip(*(region_loc[graph.partitions[p][1][1]] for p in parts))
            self.left.append(_make_gather(lh, lr, self.region_store_sizes, dev))
            self.right.append(_make_gather(rh, rr, self.region_store_sizes, dev))
            multi = mix_regions[h]
            if multi:
                width = max(len(region_parts[r]) for r in multi)
                heights, rows = [], []
                pad_mask = np.ones((len(multi), width), dtype=bool)
                for m, r in enumerate(multi):
                    locs = [partition_loc[p] for p in region_parts[r]]
                    locs += [locs[0]] * (width - len(locs))  # padding repeats a real row
                    pad_mask[m, : len(region_parts[r])] = False
                    heights += [a for a, _ in locs]
                    rows += [b for _, b in locs]
                self.mix_gather.append(_make_gather(heights, rows, self.partition_store_sizes, dev))
                self.mix_pad.append(torch.as_tensor(pad_mask, device=dev))
                self.mix_padded.append(bool(pad_mask.any()))
            else:
                self.mix_gather.append(None)
                self.mix_pad.append(None)
                self.mix_padded.append(False)
        self.root_loc = region_loc[root]
        # Levels whose left children are exactly the first half of the store
        # below and the right children the second half (tree levels).
        self.children_are_halves = [False] + [
            self.left[h].start == 0
            and self.left[h].sources == self.right[h].sources == [h - 1]
            and self.right[h].start == len(self.left[h].row)
            and self.region_store_sizes[h - 1] == 2 * len(self.left[h].row)
            for h in range(1, H + 1)
        ]

    def chunk_size(self, budget=2**25):
        """Rows per forward pass so that the widest intermediate tensor
        (the outer products of a level, (L_h, K*K, B), or the leaf
        statistics) stays under ``budget`` elements. Semantics never depend
        on it; memory does."""
        K = self.n_sums
        widest = max([n * K * K for n in self.partition_store_sizes[1:]] + [self.leaf_scope.numel() * 4, 1])
        return int(min(4096, max(16, budget // widest)))

    # --------------------------------------------------------------- params
    def init_params(self, X, generator, dtype):
        """Random sum weights and data-dependent leaves.

        X (N, D) tensor with NaN for missing entries. Each leaf density starts
        at the value of one random training sample (a missing one replaced by
        its feature's mean), as k-means++ style seeding would.
        """
        K, dev = self.n_sums, self.device
        L0, S = self.leaf_scope.shape
        N = X.shape[0]
        rows = torch.randint(0, N, (L0, S, K), generator=generator, device=dev)
        col_fill = torch.nan_to_num(torch.nanmean(X, 0), nan=self.leaf.fill_value())
        Xf = torch.where(torch.isnan(X), col_fill, X)
        Xf = torch.cat([Xf, torch.full((N, 1), self.leaf.fill_value(), dtype=X.dtype, device=dev)], 1)
        values = Xf[rows, self.leaf_scope.unsqueeze(-1).expand(L0, S, K)]  # (L0, S, K)
        if self.leaf.name == "categorical":
            values = values.round()
        col_var = torch.nan_to_num(_nanvar(X), nan=1.0)
        col_var = torch.where(col_var > 0, col_var, torch.ones_like(col_var))
        col_var = torch.cat([col_var, col_var.new_ones(1)])[self.leaf_scope].unsqueeze(-1)  # (L0, S, 1)
        leaf = self.leaf.init_phi(values, col_var, generator)

        def simplex(shape, dim):
            # drawn in float64 whatever the dtype: equal seeds start float32
            # and float64 fits from the same point
            w = torch.rand(shape, generator=generator, device=dev, dtype=torch.float64) + 0.5
            return (w / w.sum(dim, keepdim=True)).to(dtype)

        einsum = [simplex((n, K, K * K), 2) for n in self.partition_store_sizes[1:]]
        mixing = [None]
        for h in range(1, self.height + 1):
            pad = self.mix_pad[h]
            if pad is None:
                mixing.append(None)
                continue
            w = simplex((pad.shape[0], pad.shape[1], K), 1) * (~pad).unsqueeze(-1)
            mixing.append(w / w.sum(1, keepdim=True))
        return CircuitParams(leaf=leaf.to(dtype), einsum=einsum, mixing=mixing[1:], root=simplex((K,), 0))

    # ------------------------------------------------------------- forward
    def leaf_inputs(self, X):
        """Per-batch leaf data of X (B, D) with NaN = missing (see ``leaf.prepare``)."""
        return self.leaf.prepare(X, self.leaf_scope)

    def forward(self, leaf_values, params, keep_trace=False, max_product=False):
        """log p per sample from the leaf region values (L0, K, B).

        Returns (log_prob (B,), trace). ``trace`` holds every store and the
        gathered inputs of every layer when ``keep_trace`` (for sampling),
        else None. With ``max_product`` every sum becomes a max (the upward
        pass of MPE): the result is the log-value of the best induced tree.
        """
        regions = [leaf_values]
        partitions = [None]
        inputs = [None]
        for h in range(1, self.height + 1):
            left = self.left[h](regions)
            right = self.right[h](regions)
            if max_product:
                out = log_einsum_max(left, right, params.einsum[h - 1])  # (L_h, K, B)
            elif self.children_are_halves[h]:
                out = log_einsum_exp_halves(regions[h - 1], params.einsum[h - 1])
            else:
                out = log_einsum_exp(left, right, params.einsum[h - 1])
            partitions.append(out)
            n_single = self.n_single[h]
            mixed = None
            if self.mix_gather[h] is not None:
                M, P = self.mix_pad[h].shape
                gathered = self.mix_gather[h](partitions)  # (M*P, K, B)
                gathered = gathered.view(M, P, *gathered.shape[1:])
                if self.mix_padded[h]:
                    gathered = gathered.masked_fill(self.mix_pad[h].view(M, P, 1, 1), float("-inf"))
                mix = log_mix_max if max_product else log_mix
                mixed = mix(gathered, params.mixing[h - 1])  # (M, K, B)
                region = torch.cat([out[:n_single], mixed], 0) if n_single else mixed
            elif n_single < out.shape[0]:
                region = out[:n_single]
            else:  # a tree level: no slice, so no slice in the backward pass either
                region = out
            regions.append(region)
            if keep_trace:
                inputs.append((left, right, gathered if mixed is not None else None))
        h, row = self.root_loc
        log_prob = (log_root_max if max_product else log_root)(regions[h][row], params.root)
        trace = (regions, partitions, inputs) if keep_trace else None
        return log_prob, trace

    def log_prob(self, X, params):
        """log p(x) per row of X (B, D); NaN entries are marginalized."""
        leaf_values = self.leaf.region_log_prob(self.leaf_inputs(X), params.leaf)
        return self.forward(leaf_values, params)[0]

    # ------------------------------------------------------------ backward
    def backtrack(self, leaf_values, params, generator, greedy):
        """Choose, per sample, an induced tree top-down; return the leaf choices.

        At every sum node the child is drawn from its posterior given the
        evidence in ``leaf_values`` (weight times child likelihood). With
        ``greedy`` the upward pass is max-product and every sum node takes
        its maximizing child: the best induced tree (approximate MPE;
        ``leaf_values`` then from ``leaf.region_log_max``). All samples at once.

        Returns (L0, B) long: the chosen density of each leaf region, -1
        where the region is not in the sample's tree.
        """
        _, (regions, partitions, inputs) = self.forward(leaf_values, params, keep_trace=True, max_product=greedy)
        B = leaf_values.shape[2]
        K = self.n_sums
        dev = leaf_values.device
        H = self.height
        region_k = [torch.full((B, n), -1, dtype=torch.long, device=dev) for n in self.region_store_sizes]
        partition_k = [torch.full((B, n), -1, dtype=torch.long, device=dev) for n in self.partition_store_sizes]

        h, row = self.root_loc
        logits = torch.log(params.root).unsqueeze(1) + regions[h][row]  # (K, B)
        region_k[h][:, row] = _choose(logits, 0, generator, greedy)

        for h in range(H, 0, -1):
            n_single = self.n_single[h]
            partition_k[h][:, :n_single] = region_k[h][:, :n_single]
            left, right, gathered = inputs[h]
            if gathered is not None:
                M, P = self.mix_pad[h].shape
                k = region_k[h][:, n_single:]  # (B, M)
                active = k >= 0
                kk = k.clamp_min(0).t()  # (M, B)
                # log V[m, p, k_mb] + Y[m, p, k_mb, b] -> (M, P, B)
                value = torch.gather(gathered, 2, kk.view(M, 1, 1, B).expand(M, P, 1, B)).squeeze(2)
                log_w = torch.log(params.mixing[h - 1])  # (M, P, K)
                log_w = torch.gather(log_w, 2, kk.unsqueeze(1).expand(M, P, B))
                choice = _choose(value + log_w, 1, generator, greedy)  # (M, B)
                spec = self.mix_gather[h]
                flat = (torch.arange(M, device=dev) * P).unsqueeze(1) + choice  # (M, B) rows of spec
                tgt_h = torch.as_tensor(spec.row_height, device=dev)[flat]
                tgt_row = torch.as_tensor(spec.row, device=dev)[flat]
                val = torch.where(active.t(), k.t(), -1)
                _scatter_choice(partition_k, tgt_h.t(), tgt_row.t(), val.t(), spec.sources)

            k = partition_k[h]  # (B, L_h)
            active = k >= 0
            Lh = k.shape[1]
            # log W[l, k_lb, ij] + N[l, i, b] + N'[l, j, b] -> (L, K*K, B)
            w = params.einsum[h - 1].transpose(1, 2)  # (L, K*K, K_out)
            log_w = torch.log(torch.gather(w, 2, k.clamp_min(0).t().unsqueeze(1).expand(Lh, K * K, B)))
            logits = log_w + (left.unsqueeze(2) + right.unsqueeze(1)).reshape(Lh, K * K, B)
            ij = _choose(logits, 1, generator, greedy)  # (L, B)
            for spec, child_k in ((self.left[h], ij // K), (self.right[h], ij % K)):
                val = torch.where(active, child_k.t(), -1)  # (B, L)
                tgt_h = torch.as_tensor(spec.row_height, device=dev).expand(B, Lh)
                tgt_row = torch.as_tensor(spec.row, device=dev).expand(B, Lh)
                _scatter_choice(region_k, tgt_h, tgt_row, val, spec.sources)
        return region_k[0].t()

    def complete(self, X, params, generator, greedy):
        """Fill the NaN entries of X (B, D): conditional sample, or the MPE of the best induced tree."""
        data = self.leaf_inputs(X)
        if greedy:
            real = (self.leaf_scope < self.n_variables).to(X.dtype)  # (L0, S): 0 on padding
            leaf_values = self.leaf.region_log_max(data, params.leaf, real)
        else:
            leaf_values = self.leaf.region_log_prob(data, params.leaf)
        choice = self.backtrack(leaf_values, params, generator, greedy)  # (L0, B)
        L0, S = self.leaf_scope.shape
        B = X.shape[0]
        active = choice >= 0
        phi = params.leaf  # (L0, S, K, T)
        T = phi.shape[-1]
        index = choice.clamp_min(0).view(L0, 1, B, 1).expand(L0, S, B, T)
        chosen = torch.gather(phi, 2, index)  # (L0, S, B, T)
        values = self.leaf.mode(chosen) if greedy else self.leaf.sample(chosen, generator)
        values = values * active.unsqueeze(1)  # (L0, S, B)
        # exactly one active leaf region covers each variable in a sample's tree
        filled = torch.zeros(self.n_variables + 1, B, dtype=X.dtype, device=X.device)
        filled.index_add_(0, self.leaf_scope.reshape(-1), values.reshape(L0 * S, B).to(X.dtype))
        return torch.where(torch.isnan(X), filled[:-1].t(), X)


def _nanvar(X):
    """Per-column variance of X (N, D) ignoring NaN."""
    mean = torch.nanmean(X, 0)
    return torch.nanmean((X - mean) ** 2, 0)


def _choose(logits, dim, generator, greedy):
    """argmax along ``dim``, of logits plus Gumbel noise unless ``greedy``."""
    if not greedy:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        tiny = torch.finfo(logits.dtype).tiny
        logits = logits - torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))
    return logits.argmax(dim)


def _scatter_choice(stores, tgt_height, tgt_row, value, sources):
    """stores[tgt_height][b, tgt_row] = value where value >= 0.

    Within one sample each region (and partition) is reached at most once, so
    a max-reduction of the -1-initialized stores is exact even when several
    inactive writers share a target.
    """
    for s in sources:
        sel = tgt_height == s
        rows = torch.where(sel, tgt_row, 0)
        vals = torch.where(sel, value, -1)
        stores[s].scatter_reduce_(1, rows, vals, reduce="amax")
