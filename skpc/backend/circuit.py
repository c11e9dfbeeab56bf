"""A region graph compiled into a public layout, index tensors and passes.

Layout. Every tensor of log-densities is region-major with the batch last,
``(rows, K, B)``: the partition layer of one level is a single batched
matmul over its partitions with a wide (K, B) output, and gathering children
selects contiguous ``(K, B)`` blocks (or is a zero-copy slice).

Stores. Height 0 holds the leaf regions. For every height h >= 1 (the
topological levels of ``RegionGraph.heights``):

- ``partition_store[h]`` (L_h, K, B): the outputs of the partitions of
  height h. Its first ``n_single[h]`` rows belong, in order, to the regions
  of height h that have a single partition; the rest belong to regions with
  several partitions (of height >= h).
- ``region_store[h]`` (R_h, K, B): the region values of height h: the first
  ``n_single[h]`` rows are those same partition outputs (a zero-copy slice),
  the rest are the mixing layer's outputs.

Where every region and partition lives is public, as numpy data:
``CompiledCircuit.layout`` (a :class:`CircuitLayout`).

Weights. Every sum-weight tensor has a name and the axis along which its
distributions sum to one (:class:`WeightSpec`, ``CompiledCircuit.weight_specs``);
initialization, the EM M-step and the unconstrained map for gradient
training all read that one list.

The compiled circuit holds no parameters and keeps nothing from the last
batch: parameters come in as a ``CircuitParams``, and a missing-value mask
travels with each batch.
"""

from dataclasses import dataclass, field

import numpy as np
import torch

from .layers import SEMIRINGS, log_einsum_exp, log_einsum_exp_halves, log_hadamard_exp, log_mix, log_root
from .numerics import flushing_subnormals

PARTITION_LAYERS = ("einsum", "cp")


@dataclass(frozen=True)
class WeightSpec:
    """One sum-weight tensor of a compiled circuit.

    Attributes
    ----------
    name : str
        "partition.h", "mixing.h" (h the height) or "root".
    shape : tuple of int
        The tensor's shape.
    norm_dim : int
        The axis along which each distribution sums to one.
    pad : Tensor of shape (M, P), bool, or None
        True on the padding of mixing regions with fewer partitions than
        the widest (those weights are 0); None where there is no padding.
    """

    name: str
    shape: tuple
    norm_dim: int
    pad: object = None

    def valid_mask(self, dtype):
        """1 on real weights, 0 on padding, broadcastable to the tensor; None without padding."""
        if self.pad is None:
            return None
        return (~self.pad).unsqueeze(-1).to(dtype)  # (M, P, 1)

    def n_free(self):
        """Free parameters: the entries minus one per distribution, padding excluded."""
        if self.pad is None:
            n = int(np.prod(self.shape))
            return n - n // self.shape[self.norm_dim]
        sizes = (~self.pad).sum(1)  # real partitions per mixing region
        return int((sizes - 1).sum()) * self.shape[2]


class CircuitParams:
    """Parameters of a compiled circuit (all on one device and dtype).

    Parameters
    ----------
    leaf : Tensor (L0, S, K, T)
        Expectation parameters of the leaf densities.
    weights : dict name -> Tensor
        The sum weights, in the order of ``CompiledCircuit.weight_specs``:
        ``partition.h`` (L_h, K, K*K) for einsum layers or (L_h, K, K) for
        CP layers, normalized over the last axis; ``mixing.h`` (M_h, P_h, K),
        0 on padding, normalized over axis 1; ``root`` (K,) unless the
        circuit has one output per component of its top region.
    """

    def __init__(self, leaf, weights):
        self.leaf = leaf
        self.weights = dict(weights)

    @property
    def root(self):
        return self.weights.get("root")

    def tensors(self):
        """The weight tensors, in ``weight_specs`` order."""
        return list(self.weights.values())

    def map(self, fn):
        """A new CircuitParams with ``fn`` applied to every tensor."""
        return CircuitParams(fn(self.leaf), {name: fn(w) for name, w in self.weights.items()})

    def with_weights(self, weights):
        """Replace the weight tensors (a list in ``tensors()`` order)."""
        weights = list(weights)
        if len(weights) != len(self.weights):
            raise ValueError(f"expected {len(self.weights)} weight tensors, got {len(weights)}")
        return CircuitParams(self.leaf, dict(zip(self.weights, weights)))

    def __repr__(self):
        shapes = ", ".join(f"{n}={tuple(w.shape)}" for n, w in self.weights.items())
        return f"CircuitParams(leaf={tuple(self.leaf.shape)}, {shapes})"


@dataclass
class CircuitLayout:
    """Where every region and partition of the region graph lives (numpy data).

    Attributes
    ----------
    region_height, region_row : ndarray of shape (n_regions,)
        The store (height) and row holding each region's K values.
    partition_height, partition_row : ndarray of shape (n_partitions,)
        The partition store and row of each partition.
    n_single : ndarray of shape (H + 1,)
        Rows of partition store h that are also region rows (single-partition regions).
    root : int
        The root region's index in the graph.
    leaf_scope : ndarray of shape (L0, S)
        Variables of each leaf region row, padded with ``n_variables``.
    """

    region_height: np.ndarray
    region_row: np.ndarray
    partition_height: np.ndarray
    partition_row: np.ndarray
    n_single: np.ndarray
    root: int
    leaf_scope: np.ndarray

    def region_location(self, region):
        """(height, row) of a region."""
        return int(self.region_height[region]), int(self.region_row[region])


@dataclass
class ForwardPass:
    """What ``CompiledCircuit.forward`` computed.

    Attributes
    ----------
    output : Tensor of shape (B,) or (B, K)
        log p of each row, or the log-values of the K sums of the top
        region for a multi-output circuit.
    regions : dict
        Region index -> (B, K) values of the regions asked for.
    trace : tuple or None
        Every store and every layer's gathered inputs (for backtracking).
    """

    output: torch.Tensor
    regions: dict = field(default_factory=dict)
    trace: tuple = None


@dataclass
class _Part:
    """The rows a gather takes from one store, in the gather's order within that store."""

    source: int  # the store's height
    rows: torch.Tensor  # (m,) rows of the store
    start: int = -1  # >= 0 when the rows are one contiguous block
    piece: int = -1  # >= 0: this piece of the store's shared read (see _SharedRead)

    def __call__(self, stores, shared):
        if self.piece >= 0:
            return shared[self.source].pieces(stores)[self.piece]
        if self.start >= 0:
            return stores[self.source][self.start : self.start + len(self.rows)]
        return stores[self.source].index_select(0, self.rows)


@dataclass
class _Gather:
    """Rows taken from one or more stores: the rows of each source store
    (``parts``), concatenated, then put in the gather's order (``order``)."""

    sources: list
    parts: list  # one _Part per source
    order: object  # (n,) tensor: positions in cat(parts) of the gathered rows; None when in order
    row_height: np.ndarray = field(repr=False)  # (n,) height of each gathered row
    row: np.ndarray = field(repr=False)  # (n,) row within that height's store

    @property
    def start(self):
        """>= 0 when the rows are one contiguous block of one store."""
        return self.parts[0].start if len(self.parts) == 1 and self.order is None else -1

    def __call__(self, stores, shared=None):
        """The gathered rows (n, K, B); ``shared``: this pass's shared reads (height -> _SharedRead)."""
        pieces = [part(stores, shared) for part in self.parts]
        out = pieces[0] if len(pieces) == 1 else torch.cat(pieces, 0)
        # the reorder gathers n rows, never a whole store: its backward is as small
        return out if self.order is None else out.index_select(0, self.order)


class _SharedRead:
    """One read of a store for every gather part that takes rows from it.

    A part is a slice or an ``index_select``, and the backward pass of
    either fills a gradient the size of the whole store. When many levels
    read one store (the leaf store of a deep hidden Chow-Liu tree: each of
    its up to D levels reads a few leaf regions), that is height x
    store-size work and memory. Reading all their rows with one
    ``index_select`` and splitting the result costs one store-sized
    gradient, whatever the number of readers. Built per forward pass
    (``pieces`` caches).
    """

    def __init__(self, height, index, sizes):
        self.height = height
        self.index = index  # (sum(sizes),) rows of the store, reader after reader
        self.sizes = sizes
        self._pieces = None

    def pieces(self, stores):
        if self._pieces is None:
            # the store is complete: its readers are all at greater heights
            self._pieces = torch.split(stores[self.height].index_select(0, self.index), self.sizes)
        return self._pieces


# A store read by at least this many gather parts is read once and split
# (_SharedRead); one or two readers keep their slices, free in the forward pass.
SHARED_READ_MIN_READERS = 3


def _share_reads(gathers):
    """Mark the parts of ``gathers`` that read a store read by at least
    SHARED_READ_MIN_READERS parts; returns {height: (index, sizes)}."""
    readers = {}
    for g in gathers:
        for part in g.parts:
            if len(part.rows):
                readers.setdefault(part.source, []).append(part)
    shared = {}
    for height, group in readers.items():
        if len(group) < SHARED_READ_MIN_READERS:
            continue
        for i, part in enumerate(group):
            part.piece = i
        shared[height] = (torch.cat([part.rows for part in group]), [len(part.rows) for part in group])
    return shared


def _make_gather(heights, rows, device):
    heights = np.asarray(heights, dtype=np.int64)
    rows = np.asarray(rows, dtype=np.int64)
    sources = sorted(set(heights.tolist()))
    parts, positions = [], []
    for s in sources:
        mine = np.flatnonzero(heights == s)  # the gathered rows from store s, in gather order
        positions.append(mine)
        r = rows[mine]
        start = int(r[0]) if len(r) and (np.diff(r) == 1).all() else -1
        parts.append(_Part(s, torch.as_tensor(r, device=device), start))
    concatenated = np.concatenate(positions) if positions else np.zeros(0, np.int64)
    order = None
    if (concatenated != np.arange(len(heights))).any():
        # position in cat(parts) of gathered row i
        inverse = np.empty(len(heights), dtype=np.int64)
        inverse[concatenated] = np.arange(len(heights))
        order = torch.as_tensor(inverse, device=device)
    return _Gather(sources, parts, order, heights, rows)


# Elements of the widest intermediate tensor of one pass (float32: 128 MiB).
CHUNK_BUDGET = 2**25


class CompiledCircuit:
    """Index tensors for evaluating a (binary) region graph level by level.

    Parameters
    ----------
    graph : RegionGraph
        Validated; partitions with more than two children are binarized.
    n_sums : int
        K, the number of densities per region.
    leaf : ExponentialFamilyLeaf
        The (fitted) leaf family; bound to the leaf layout here.
    device : torch.device
    layer : {"einsum", "cp"}
        Partition layer: "einsum" (Tucker) mixes all K*K pairs of the two
        child vectors, "cp" (Hadamard) their elementwise product, then a
        dense K x K sum.
    multi_output : bool
        False: one output, a root sum over the K values of the top region.
        True: the K values of the top region are the outputs (no root sum).
    """

    def __init__(self, graph, n_sums, leaf, device="cpu", layer="einsum", multi_output=False):
        if layer not in PARTITION_LAYERS:
            raise ValueError(f"layer={layer!r} is not supported; use one of {PARTITION_LAYERS}.")
        if any(len(children) != 2 for _, children in graph.partitions):
            graph = graph.binarize()
        self.graph = graph
        self.n_sums = int(n_sums)
        self.device = torch.device(device)
        self.layer = layer
        self.multi_output = bool(multi_output)
        self.n_variables = graph.n_variables
        self._compile(graph)
        self.leaf = leaf.for_scope(self.leaf_scope)
        self.weight_specs = self._weight_specs()

    # ---------------------------------------------------------------- build
    def _compile(self, graph):
        region_height, partition_height = graph.heights()
        region_parts = graph.region_partitions()
        self.height = int(region_height.max()) if len(region_height) else 0
        H = self.height
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
                regions_at[region_height[r]].append(r)
        partitions_at = [[] for _ in range(H + 1)]
        for p in range(len(graph.partitions)):
            partitions_at[partition_height[p]].append(p)

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

        layout_region = np.zeros((2, n_regions), dtype=np.int64)  # (height, row) of each region
        layout_partition = np.zeros((2, len(graph.partitions)), dtype=np.int64)
        for h in range(H + 1):
            for row, r in enumerate(order_regions[h]):
                layout_region[:, r] = (h, row)
        for h in range(1, H + 1):
            for row, p in enumerate(order_parts[h]):
                layout_partition[:, p] = (h, row)

        leaves = order_regions[0]
        scopes = [graph.regions[r] for r in leaves]
        self.leaf_width = max(len(s) for s in scopes)
        pad = self.n_variables  # index of an all-missing dummy column
        scope = np.full((len(leaves), self.leaf_width), pad, dtype=np.int64)
        for row, s in enumerate(scopes):
            scope[row, : len(s)] = s
        self.leaf_scope = torch.as_tensor(scope, device=dev)  # (L0, S)
        self.layout = CircuitLayout(
            region_height=layout_region[0],
            region_row=layout_region[1],
            partition_height=layout_partition[0],
            partition_row=layout_partition[1],
            n_single=np.asarray(self.n_single, dtype=np.int64),
            root=int(graph.root),
            leaf_scope=scope,
        )

        def location(region):
            return self.layout.region_location(region)

        self.region_store_sizes = [len(order_regions[h]) for h in range(H + 1)]
        self.partition_store_sizes = [0] + [len(order_parts[h]) for h in range(1, H + 1)]
        self.left, self.right, self.mix_gather = [None], [None], [None]
        self.mix_pad = [None]
        self.mix_padded = [False]
        for h in range(1, H + 1):
            parts = order_parts[h]
            left_heights, left_rows = zip(*(location(graph.partitions[p][1][0]) for p in parts))
            right_heights, right_rows = zip(*(location(graph.partitions[p][1][1]) for p in parts))
            self.left.append(_make_gather(left_heights, left_rows, dev))
            self.right.append(_make_gather(right_heights, right_rows, dev))
            multi = mix_regions[h]
            if multi:
                width = max(len(region_parts[r]) for r in multi)
                heights, rows = [], []
                pad_mask = np.ones((len(multi), width), dtype=bool)
                for m, r in enumerate(multi):
                    locations = [tuple(layout_partition[:, p]) for p in region_parts[r]]
                    locations += [locations[0]] * (width - len(locations))  # padding repeats a real row
                    pad_mask[m, : len(region_parts[r])] = False
                    heights += [a for a, _ in locations]
                    rows += [b for _, b in locations]
                self.mix_gather.append(_make_gather(heights, rows, dev))
                self.mix_pad.append(torch.as_tensor(pad_mask, device=dev))
                self.mix_padded.append(bool(pad_mask.any()))
            else:
                self.mix_gather.append(None)
                self.mix_pad.append(None)
                self.mix_padded.append(False)
        self.root_loc = location(graph.root)
        # Levels whose left children are exactly the first half of the store
        # below and the right children the second half (tree levels).
        self.children_are_halves = [False] + [
            self.left[h].start == 0
            and self.left[h].sources == self.right[h].sources == [h - 1]
            and self.right[h].start == len(self.left[h].row)
            and self.region_store_sizes[h - 1] == 2 * len(self.left[h].row)
            for h in range(1, H + 1)
        ]
        # (halves levels read their store whole, so their slices stay views)
        self.shared_reads = _share_reads(
            [g for h in range(1, H + 1) if not self.children_are_halves[h] for g in (self.left[h], self.right[h])]
        )

    def _weight_specs(self):
        K = self.n_sums
        fan_in = K * K if self.layer == "einsum" else K
        specs = [WeightSpec(f"partition.{h}", (n, K, fan_in), 2) for h, n in enumerate(self.partition_store_sizes) if h]
        for h in range(1, self.height + 1):
            pad = self.mix_pad[h]
            if pad is not None:
                # the padding mask only where some region has fewer partitions than the widest
                mask = pad if self.mix_padded[h] else None
                specs.append(WeightSpec(f"mixing.{h}", (pad.shape[0], pad.shape[1], K), 1, mask))
        if not self.multi_output:
            specs.append(WeightSpec("root", (K,), 0))
        return specs

    @property
    def n_outputs(self):
        return self.n_sums if self.multi_output else 1

    def chunk_size(self, budget=None, per_row=None):
        """Rows per pass so that the widest intermediate tensor (the outer
        products of a level, (L_h, K*K, B), or the leaf statistics) stays
        under ``budget`` elements, or, given ``per_row`` (elements a row
        needs in all), so that one chunk needs at most ``budget``.
        Semantics never depend on it; memory does."""
        budget = CHUNK_BUDGET if budget is None else budget
        if per_row is None:
            K = self.n_sums
            per_row = max([n * K * K for n in self.partition_store_sizes[1:]] + [self.leaf_scope.numel() * 4, 1])
        return int(min(4096, max(16, budget // per_row)))

    def sampling_chunk_size(self, budget=2**23):
        """Rows per backtracking pass: it keeps every store, every layer's
        inputs and one level's (L_h, K*K, B) choice logits at a time, so a
        row costs about twice the circuit's stored values plus the widest level."""
        K = self.n_sums
        fan_in = K * K if self.layer == "einsum" else K
        stored = sum(self.region_store_sizes) * K + sum(self.partition_store_sizes) * K
        widest = max([n * fan_in for n in self.partition_store_sizes[1:]] + [1])
        return self.chunk_size(budget, per_row=3 * stored + widest + self.leaf_scope.numel() * 4)

    # --------------------------------------------------------------- params
    def init_params(self, X, generator, dtype):
        """Data-dependent leaves and random sum weights.

        X (N, D) tensor with NaN for missing entries (see the leaf's
        ``init_from_data``). Weights are drawn in float64 whatever the dtype,
        so equal seeds start float32 and float64 fits from the same point.
        """
        leaf = self.leaf.init_from_data(X, self.leaf_scope, self.n_sums, generator).to(dtype)
        weights = {}
        for spec in self.weight_specs:
            w = torch.rand(spec.shape, generator=generator, device=self.device, dtype=torch.float64) + 0.5
            mask = spec.valid_mask(w.dtype)
            if mask is not None:
                w = w * mask
            weights[spec.name] = (w / w.sum(spec.norm_dim, keepdim=True)).to(dtype)
        return CircuitParams(leaf, weights)

    def n_parameters(self):
        """Free parameters: sum weights minus their normalization, plus the leaves'."""
        total = sum(spec.n_free() for spec in self.weight_specs)
        return int(total + self.n_sums * self.leaf.n_free_parameters(self.leaf_scope, self.n_variables))

    # ------------------------------------------------------------- forward
    def leaf_inputs(self, X):
        """Per-batch leaf data of X (B, D) with NaN = missing (see ``leaf.prepare``)."""
        return self.leaf.prepare(X, self.leaf_scope)

    def leaf_values(self, data, params, semiring="sum", softening=1.0):
        """Leaf region log-values (L0, K, B): densities, or for the max
        semiring with missing entries at their modes (MPE's upward pass).
        ``softening`` beta < 1 (sum semiring): the log-likelihoods of softened
        evidence (``leaf.soft_region_log_prob``; training only)."""
        if semiring == "sum":
            if softening != 1.0:
                return self.leaf.soft_region_log_prob(data, params.leaf, softening)
            return self.leaf.region_log_prob(data, params.leaf)
        real = (self.leaf_scope < self.n_variables).to(params.leaf.dtype)  # (L0, S): 0 on padding
        return self.leaf.region_log_max(data, params.leaf, real)

    def forward(self, leaf_values, params, semiring="sum", evidence=None, regions=(), keep_trace=False):
        """Evaluate the circuit from the leaf region values (L0, K, B).

        Parameters
        ----------
        leaf_values : Tensor (L0, K, B)
        params : CircuitParams
        semiring : {"sum", "max"}
            "max" turns every sum into a max (the upward pass of MPE): the
            result is the log-value of the best induced tree.
        evidence : dict region -> Tensor (B, K) bool, optional
            Evidence on (internal or leaf) regions: the components allowed
            for each row; the others are set to -inf. With a materialized
            latent variable at a region, this conditions on its value.
        regions : iterable of region indices
            Regions whose values to return as well.
        keep_trace : bool
            Keep every store and layer input (for backtracking).

        Returns
        -------
        ForwardPass
        """
        if semiring not in SEMIRINGS:
            raise ValueError(f"semiring={semiring!r} is not supported; use 'sum' or 'max'.")
        masks = self._evidence_masks(evidence, leaf_values)
        stores = [self._apply_evidence(leaf_values, masks, 0)]
        partition_stores = [None]
        inputs = [None]
        shared = {height: _SharedRead(height, *read) for height, read in self.shared_reads.items()}
        for h in range(1, self.height + 1):
            weight = params.weights[f"partition.{h}"]
            left = self.left[h](stores, shared)
            right = self.right[h](stores, shared)
            out = self._partition_layer(h, stores, left, right, weight, semiring)  # (L_h, K, B)
            partition_stores.append(out)
            n_single = self.n_single[h]
            gathered = None
            if self.mix_gather[h] is not None:
                M, P = self.mix_pad[h].shape
                gathered = self.mix_gather[h](partition_stores)  # (M*P, K, B)
                gathered = gathered.view(M, P, *gathered.shape[1:])
                if self.mix_padded[h]:
                    gathered = gathered.masked_fill(self.mix_pad[h].view(M, P, 1, 1), float("-inf"))
                mixed = log_mix(gathered, params.weights[f"mixing.{h}"], semiring)  # (M, K, B)
                level = torch.cat([out[:n_single], mixed], 0) if n_single else mixed
            elif n_single < out.shape[0]:
                level = out[:n_single]
            else:  # a tree level: no slice, so no slice in the backward pass either
                level = out
            stores.append(self._apply_evidence(level, masks, h))
            if keep_trace:
                inputs.append((left, right, gathered))
        height, row = self.root_loc
        top = stores[height][row]  # (K, B)
        output = top.t() if self.multi_output else log_root(top, params.weights["root"], semiring)
        values = {}
        for r in regions:
            h, row = self.layout.region_location(r)
            values[r] = stores[h][row].t()
        trace = (stores, partition_stores, inputs) if keep_trace else None
        return ForwardPass(output, values, trace)

    def _partition_layer(self, h, stores, left, right, weight, semiring):
        if self.layer == "cp":
            return log_hadamard_exp(left, right, weight, semiring)
        if semiring == "sum" and self.children_are_halves[h]:
            return log_einsum_exp_halves(stores[h - 1], weight)
        return log_einsum_exp(left, right, weight, semiring)

    def _evidence_masks(self, evidence, leaf_values):
        """{height: (rows, mask (n, K, B))} from {region: (B, K) bool}."""
        if not evidence:
            return {}
        B = leaf_values.shape[2]
        grouped = {}
        for region, allowed in evidence.items():
            allowed = torch.as_tensor(allowed, device=leaf_values.device, dtype=torch.bool)
            if allowed.shape != (B, self.n_sums):
                raise ValueError(
                    f"evidence on region {region} must be a (n_rows, n_sums) = ({B}, {self.n_sums}) boolean "
                    f"mask; got shape {tuple(allowed.shape)}."
                )
            h, row = self.layout.region_location(region)
            grouped.setdefault(h, []).append((row, allowed.t()))
        return grouped

    @staticmethod
    def _apply_evidence(level, masks, h):
        """level (R_h, K, B) with disallowed components of evidence rows at -inf."""
        if h not in masks:
            return level
        keep = torch.ones(level.shape, dtype=torch.bool, device=level.device)
        for row, allowed in masks[h]:
            keep[row] &= allowed
        return level.masked_fill(~keep, float("-inf"))

    def log_prob(self, X, params, evidence=None, softening=1.0):
        """The circuit's output per row of X (B, D) (NaN entries marginalized):
        log p(x) (B,), or (B, K) for a multi-output circuit; with ``softening``
        beta < 1 that of the softened evidence (see ``leaf_values``)."""
        leaf_values = self.leaf_values(self.leaf_inputs(X), params, softening=softening)
        return self.forward(leaf_values, params, evidence=evidence).output

    @flushing_subnormals
    def log_prob_in_chunks(self, X, params, evidence=None):
        """``log_prob`` of every row of X (N, D) without gradients, ``chunk_size()``
        rows per pass so that memory stays bounded: (N,) or (N, K).
        ``evidence``: None or a callable row indices -> {region: (B, K) mask}.
        The chunk holds as many bytes in float64 as in float32 (queries and
        the final training score run in float64: at the efficiency setting a
        float32-sized chunk of float64 values added 118 MiB to a fit's peak)."""
        step = self.chunk_size(budget=CHUNK_BUDGET * 4 // params.leaf.element_size())
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], step):
                index = torch.arange(start, min(start + step, X.shape[0]), device=X.device)
                masks = evidence(index) if evidence is not None else None
                out.append(self.log_prob(X[index], params, evidence=masks))
        return torch.cat(out)

    def region_posteriors(self, X, params, regions):
        """Posterior of the components of each of ``regions`` given the rows of X.

        For a region used by exactly one partition above it (any region of a
        tree-shaped graph; the top regions of LVD's sub-circuits), choosing
        one of its K components in an induced tree is a categorical latent
        variable Z, and p(Z = k | x) = d log p(x) / d log v_k, the gradient of
        the output with respect to the region's log-values (the flow through
        component k). Single-output circuits; NaN entries marginalized.

        Returns
        -------
        Tensor (B, len(regions), K), rows summing to 1 over K
        """
        if self.multi_output:
            raise ValueError("region_posteriors needs a single-output circuit.")
        locations = [self.layout.region_location(r) for r in regions]
        heights = sorted({h for h, _ in locations})
        with torch.enable_grad():
            leaf_values = self.leaf_values(self.leaf_inputs(X), params).detach().requires_grad_(True)
            result = self.forward(leaf_values, params, keep_trace=True)
            stores = result.trace[0]  # stores[h]: (R_h, K, B), on the path to the output
            grads = torch.autograd.grad(result.output.sum(), [stores[h] for h in heights])
        by_height = dict(zip(heights, grads))
        return torch.stack([by_height[h][row].t() for h, row in locations], 1)  # (B, R, K)

    # ------------------------------------------------------------ backward
    def backtrack(self, leaf_values, params, generator, method, evidence=None, start=None):
        """Choose, per sample, an induced tree top-down; return the leaf choices.

        method "sample": at every sum node the child is drawn from its
        posterior given the evidence in ``leaf_values`` (weight times child
        likelihood). method "mpe": the upward pass is max-product and every
        sum node takes its maximizing child: the best induced tree
        (approximate MPE; ``leaf_values`` then from ``leaf_values(...,
        semiring="max")``). All samples at once.

        start : (B,) long, the component of the top region to start from;
            required for multi-output circuits, chosen by the root sum otherwise.

        Returns (L0, B) long: the chosen density of each leaf region, -1
        where the region is not in the sample's tree.
        """
        mpe = method == "mpe"
        semiring = "max" if mpe else "sum"
        stores, partition_stores, inputs = self.forward(
            leaf_values, params, semiring=semiring, evidence=evidence, keep_trace=True
        ).trace
        B = leaf_values.shape[2]
        K = self.n_sums
        dev = leaf_values.device
        region_choice = [torch.full((B, n), -1, dtype=torch.long, device=dev) for n in self.region_store_sizes]
        partition_choice = [torch.full((B, n), -1, dtype=torch.long, device=dev) for n in self.partition_store_sizes]

        height, row = self.root_loc
        if start is not None:
            region_choice[height][:, row] = torch.as_tensor(start, device=dev, dtype=torch.long)
        elif self.multi_output:
            raise ValueError("a multi-output circuit needs the top region's component of every row (start=...).")
        else:
            logits = torch.log(params.weights["root"]).unsqueeze(1) + stores[height][row]  # (K, B)
            region_choice[height][:, row] = _choose(logits, 0, generator, mpe)

        for h in range(self.height, 0, -1):
            n_single = self.n_single[h]
            partition_choice[h][:, :n_single] = region_choice[h][:, :n_single]
            left, right, gathered = inputs[h]
            if gathered is not None:
                self._backtrack_mixing(h, gathered, params, region_choice, partition_choice, generator, mpe)
            chosen = partition_choice[h]  # (B, L_h): the output component of each partition, -1 if unused
            active = chosen >= 0
            n_parts = chosen.shape[1]
            weight = params.weights[f"partition.{h}"].transpose(1, 2)  # (L, fan_in, K_out)
            fan_in = weight.shape[1]
            component = chosen.clamp_min(0).t().unsqueeze(1).expand(n_parts, fan_in, B)
            log_w = torch.log(torch.gather(weight, 2, component))  # (L, fan_in, B)
            if self.layer == "einsum":
                # log W[l, k_lb, ij] + N[l, i, b] + N'[l, j, b] -> (L, K*K, B)
                logits = log_w + (left.unsqueeze(2) + right.unsqueeze(1)).reshape(n_parts, K * K, B)
                pair = _choose(logits, 1, generator, mpe)  # (L, B)
                left_k, right_k = pair // K, pair % K
            else:
                # CP: both children share the chosen component i
                logits = log_w + left + right  # (L, K, B)
                left_k = right_k = _choose(logits, 1, generator, mpe)
            for gather, child_k in ((self.left[h], left_k), (self.right[h], right_k)):
                value = torch.where(active, child_k.t(), -1)  # (B, L)
                target_height = torch.as_tensor(gather.row_height, device=dev).expand(B, n_parts)
                target_row = torch.as_tensor(gather.row, device=dev).expand(B, n_parts)
                _scatter_choice(region_choice, target_height, target_row, value, gather.sources)
        return region_choice[0].t()

    def _backtrack_mixing(self, h, gathered, params, region_choice, partition_choice, generator, mpe):
        """Choose the partition of every mixing region of height h reached by a sample."""
        M, P = self.mix_pad[h].shape
        n_single = self.n_single[h]
        B = gathered.shape[-1]
        dev = gathered.device
        component = region_choice[h][:, n_single:]  # (B, M)
        active = component >= 0
        index = component.clamp_min(0).t()  # (M, B)
        # log V[m, p, k_mb] + Y[m, p, k_mb, b] -> (M, P, B)
        value = torch.gather(gathered, 2, index.view(M, 1, 1, B).expand(M, P, 1, B)).squeeze(2)
        log_w = torch.log(params.weights[f"mixing.{h}"])  # (M, P, K)
        log_w = torch.gather(log_w, 2, index.unsqueeze(1).expand(M, P, B))
        choice = _choose(value + log_w, 1, generator, mpe)  # (M, B)
        gather = self.mix_gather[h]
        flat = (torch.arange(M, device=dev) * P).unsqueeze(1) + choice  # (M, B) rows of the gather
        target_height = torch.as_tensor(gather.row_height, device=dev)[flat]
        target_row = torch.as_tensor(gather.row, device=dev)[flat]
        value = torch.where(active.t(), component.t(), -1)
        _scatter_choice(partition_choice, target_height.t(), target_row.t(), value.t(), gather.sources)

    def complete(self, X, params, generator, method, evidence=None, start=None):
        """Fill the NaN entries of X (B, D): a conditional sample (method
        "sample"), or the completion of the best induced tree ("mpe")."""
        if method not in ("sample", "mpe"):
            raise ValueError(f"method={method!r} is not supported; use 'sample' or 'mpe'.")
        data = self.leaf_inputs(X)
        semiring = "max" if method == "mpe" else "sum"
        leaf_values = self.leaf_values(data, params, semiring)
        choice = self.backtrack(leaf_values, params, generator, method, evidence, start)  # (L0, B)
        L0, S = self.leaf_scope.shape
        B = X.shape[0]
        active = choice >= 0
        phi = params.leaf  # (L0, S, K, T)
        T = phi.shape[-1]
        index = choice.clamp_min(0).view(L0, 1, B, 1).expand(L0, S, B, T)
        chosen = torch.gather(phi, 2, index)  # (L0, S, B, T)
        values = self.leaf.mode(chosen) if method == "mpe" else self.leaf.sample(chosen, generator)
        values = values * active.unsqueeze(1)  # (L0, S, B)
        # exactly one active leaf region covers each variable in a sample's tree
        filled = torch.zeros(self.n_variables + 1, B, dtype=X.dtype, device=X.device)
        filled.index_add_(0, self.leaf_scope.reshape(-1), values.reshape(L0 * S, B).to(X.dtype))
        return torch.where(torch.isnan(X), filled[:-1].t(), X)


def _choose(logits, dim, generator, mpe):
    """argmax along ``dim`` of the logits (MPE), or of logits plus Gumbel noise (a posterior draw)."""
    if not mpe:
        u = torch.rand(logits.shape, generator=generator, device=logits.device, dtype=logits.dtype)
        tiny = torch.finfo(logits.dtype).tiny
        logits = logits - torch.log(-torch.log(u.clamp(tiny, 1.0 - 1e-7)))
    return logits.argmax(dim)


def _scatter_choice(stores, target_height, target_row, value, sources):
    """stores[target_height][b, target_row] = value where value >= 0.

    Within one sample each region (and partition) is reached at most once, so
    a max-reduction of the -1-initialized stores is exact even when several
    inactive writers share a target.
    """
    for s in sources:
        selected = target_height == s
        rows = torch.where(selected, target_row, 0)
        values = torch.where(selected, value, -1)
        stores[s].scatter_reduce_(1, rows, values, reduce="amax")
