"""Data-parallel training on ``torch.distributed``: the only module of skpc
that imports it.

Every process (rank) of an initialized process group holds its own shard of
the rows and calls ``fit`` on it. What keeps the ranks one model:

- :func:`resolve_process_group` turns an estimator's ``distributed``
  parameter into a :class:`DataParallel` handle (or None: one process);
- :meth:`DataParallel.agree` runs before any training collective: every rank
  reports its local validation error (or None) and a few facts about its
  rows in ONE ``all_gather_object``; when any rank failed, every rank raises
  the same ``ValueError`` (the message of the lowest failing rank, prefixed
  by its rank), so bad input on one rank never leaves the others waiting in a
  collective;
- :meth:`DataParallel.run_on_root` runs a step on rank 0 only (structure
  learning, initialization) and broadcasts its result, or its error;
- :meth:`DataParallel.reduce` is the trainer's ``reduce`` hook: it sums a list
  of tensors in place across ranks (expected statistics, objective totals,
  Adam gradients, validation totals), small tensors coalesced into one
  buffer per dtype;
- :func:`shard_rows` gives a process its contiguous block of a data set's
  rows; :func:`row_offsets` places each rank's block in the global order
  (rank 0's rows first), which is how the ranks draw the same global
  permutations (validation split, mini-batches) as one process on all rows.

Backends: gloo for CPU tensors, NCCL for CUDA ones (one device per rank: call
``torch.cuda.set_device(local_rank)`` before ``init_process_group``; tensors
on another device than the backend's are staged through it).
"""

import numpy as np
import torch
import torch.distributed as dist

# Tensors up to this many elements are summed together in one flat buffer
# per dtype (one collective instead of one per tensor: the latency of a
# collective, not its bandwidth, dominates small tensors); larger ones are
# summed in place, without the copy.
COALESCE_ELEMENTS = 2**22


def is_initialized():
    """Whether a torch.distributed process group is initialized here."""
    return dist.is_available() and dist.is_initialized()


def resolve_process_group(distributed):
    """The :class:`DataParallel` handle of an estimator's ``distributed`` parameter, or None.

    Parameters
    ----------
    distributed : {"auto", True, False}
        "auto": data-parallel when a process group is initialized with more
        than one process; True: require an initialized process group (any
        size); False: never (each process fits on its own rows alone).
    """
    if distributed is False:
        return None
    if distributed == "auto":
        if is_initialized() and dist.get_world_size() > 1:
            return DataParallel()
        return None
    if not is_initialized():
        raise ValueError(
            "distributed=True needs an initialized torch.distributed process group; call "
            "torch.distributed.init_process_group(...) in every process first (torchrun sets its environment), "
            "or use distributed='auto' (data-parallel only when a group is initialized) or False."
        )
    return DataParallel()


def shard_rows(n_rows, rank=None, world_size=None):
    """The contiguous block of ``n_rows`` rows that process ``rank`` reads: a slice.

    Blocks differ in size by at most one row; rank 0 holds the first. With no
    ``rank``/``world_size``, those of the initialized process group (else
    the whole range).
    """
    if rank is None or world_size is None:
        rank, world_size = (dist.get_rank(), dist.get_world_size()) if is_initialized() else (0, 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank={rank} must lie in [0, world_size={world_size}).")
    base, extra = divmod(int(n_rows), int(world_size))
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (1 if rank < extra else 0))


def row_offsets(counts):
    """Where each rank's rows start in the global order (rank 0's first): (world_size,) int64."""
    counts = np.asarray(counts, dtype=np.int64)
    return np.concatenate([[0], np.cumsum(counts)[:-1]])


def local_part(global_rows, offset, n_local):
    """The entries of sorted ``global_rows`` that fall in [offset, offset + n_local), minus offset.

    Returns (local rows, position of the first of them in ``global_rows``).
    """
    global_rows = np.asarray(global_rows)
    lo, hi = np.searchsorted(global_rows, [offset, offset + n_local])
    return global_rows[lo:hi] - offset, int(lo)


def evenly_spaced_rows(rows, limit):
    """``rows`` (sorted ids) when at most ``limit`` of them, else ``limit``
    (at least 1) evenly spaced ones: the sample of the training rows that
    initialization reads from every process."""
    limit = max(1, int(limit))
    if len(rows) <= limit:
        return rows
    positions = np.unique(np.linspace(0, len(rows) - 1, limit).round().astype(np.int64))
    return rows[positions]


class DistributedError(ValueError):
    """The error every rank raises when some rank's input was refused."""


def check_same_facts(facts, size_key, size_name, flags=(("has_X_val", "pass X_val"),)):
    """Refuse processes whose data disagree, with the same error on every
    process (``facts`` are every rank's, shared by ``agree_on``).

    Parameters
    ----------
    facts : list of dict, one per rank
    size_key : str
        The fact every rank must share, e.g. "n_features".
    size_name : str
        What it counts, for the message, e.g. "features" or "tokens per window".
    flags : sequence of (key, what)
        Boolean facts that every rank must share: all or none "what".
    """
    sizes = [f[size_key] for f in facts]
    for rank, size in enumerate(sizes):
        if size != sizes[0]:
            raise DistributedError(
                f"[rank {rank} of {len(facts)}] X has {size} {size_name}, but rank 0's X has {sizes[0]} "
                f"({size_name} of every rank: {sizes}); every process must pass rows with the same {size_name}."
            )
    for key, what in flags:
        values = [f[key] for f in facts]
        if len(set(values)) > 1:
            ranks = [rank for rank, value in enumerate(values) if value]
            raise DistributedError(f"Only ranks {ranks} of {len(facts)} {what}; every process must do so, or none.")


class DataParallel:
    """The collectives data-parallel training needs, over a process group.

    Parameters
    ----------
    group : ProcessGroup or None
        None: the default group.
    """

    def __init__(self, group=None):
        self.group = group
        self.rank = dist.get_rank(group)
        self.world_size = dist.get_world_size(group)
        self.backend = dist.get_backend(group)
        if self.backend == "nccl":
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

    def __repr__(self):
        return f"DataParallel(rank={self.rank}, world_size={self.world_size}, backend={self.backend!r})"

    @property
    def is_root(self):
        return self.rank == 0

    # ------------------------------------------------------------ tensors
    def reduce(self, tensors):
        """Sum every tensor of the list in place across ranks (the trainer's ``reduce`` hook).

        Every rank must pass tensors of the same shapes and dtypes, in the
        same order. None entries (e.g. a parameter without a gradient) are
        skipped, on every rank alike.
        """
        small = {}
        for t in tensors:
            if t is None:
                continue
            if t.numel() <= COALESCE_ELEMENTS:
                small.setdefault(t.dtype, []).append(t)
            else:
                self._all_reduce_in_place(t)
        for group in small.values():
            # one flat buffer per dtype: (sum of numel,)
            flat = torch.cat([t.reshape(-1).to(self.device) for t in group])
            dist.all_reduce(flat, group=self.group)
            start = 0
            for t in group:
                n = t.numel()
                t.copy_(flat[start : start + n].view_as(t))
                start += n

    def _all_reduce_in_place(self, t):
        if t.device == self.device and t.is_contiguous():
            dist.all_reduce(t, group=self.group)
            return
        staged = t.to(self.device).contiguous()
        dist.all_reduce(staged, group=self.group)
        t.copy_(staged)

    def broadcast_tensors(self, tensors, src=0):
        """Overwrite every tensor of the list by rank ``src``'s, in place."""
        for t in tensors:
            staged = t if (t.device == self.device and t.is_contiguous()) else t.to(self.device).contiguous()
            dist.broadcast(staged, src=src, group=self.group)
            if staged is not t:
                t.copy_(staged)

    # ------------------------------------------------------------ objects
    def all_gather(self, obj):
        """Every rank's ``obj`` (picklable), in rank order."""
        out = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def gather_to_root(self, obj):
        """Every rank's ``obj`` on rank 0 (a list in rank order); None on the others."""
        out = [None] * self.world_size if self.is_root else None
        dist.gather_object(obj, out, dst=0, group=self.group)
        return out

    def broadcast(self, obj=None, src=0):
        """Rank ``src``'s ``obj`` (picklable) on every rank."""
        box = [obj if self.rank == src else None]
        dist.broadcast_object_list(box, src=src, group=self.group, device=self.device)
        return box[0]

    # ----------------------------------------------------------- agreement
    def agree(self, error, facts=None):
        """Agree on validity before any training collective; every rank's ``facts``.

        Every rank must call it, with the exception its local checks raised
        (or None) and any picklable ``facts`` about its data. If any rank
        failed, every rank raises the same :class:`DistributedError` (a
        ValueError): the first failing rank's message, prefixed by that
        rank; the failing rank chains its own exception. Otherwise returns
        the list of every rank's facts, in rank order.
        """
        report = None if error is None else (type(error).__name__, str(error))
        gathered = self.all_gather((report, facts))
        for rank, (failure, _) in enumerate(gathered):
            if failure is not None:
                name, message = failure
                kind = "" if name in ("ValueError", "DistributedError") else f"{name}: "
                agreed = DistributedError(f"[rank {rank} of {self.world_size}] {kind}{message}")
                if error is not None:
                    raise agreed from error
                raise agreed
        return [facts for _, facts in gathered]

    def run_on_root(self, fn):
        """``fn()`` on rank 0, its result (picklable) broadcast to every rank.

        An exception of ``fn`` is raised on every rank (as in :meth:`agree`),
        so the other ranks never wait for a result that will not come.
        """
        result, report, failure = None, None, None
        if self.is_root:
            try:
                result = fn()
            except Exception as error:  # noqa: BLE001 - re-raised on every rank below
                report, failure = (type(error).__name__, str(error)), error
        result, report = self.broadcast((result, report))
        if report is not None:
            name, message = report
            kind = "" if name in ("ValueError", "DistributedError") else f"{name}: "
            agreed = DistributedError(f"[rank 0 of {self.world_size}] {kind}{message}")
            if self.is_root:
                raise agreed from failure
            raise agreed
        return result

    def sum(self, *values):
        """The float64 sums of a few numbers across ranks: a tuple of floats."""
        figures = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(figures, group=self.group)
        return tuple(float(v) for v in figures.cpu())


def agree_on(comm, fn, facts_fn=None):
    """Run the local checks ``fn()``; with a process group, agree on them.

    One process (``comm`` None): ``fn()``'s result, its exceptions raised
    unchanged. With a :class:`DataParallel` ``comm``: every rank runs ``fn``,
    then :meth:`DataParallel.agree` on its error and on ``facts_fn(result)``
    (None when ``facts_fn`` is None); returns (result, every rank's facts).
    """
    if comm is None:
        result = fn()
        return result, [None if facts_fn is None else facts_fn(result)]
    result, error, facts = None, None, None
    try:
        result = fn()
        facts = None if facts_fn is None else facts_fn(result)
    except Exception as caught:  # noqa: BLE001 - agreed on, then raised on every rank
        error = caught
    return result, comm.agree(error, facts)


def params_to(params, device, dtype=None):
    """A copy of CircuitParams on ``device`` (and ``dtype``)."""
    return params.map(lambda t: t.detach().to(device=device, dtype=dtype or t.dtype).clone())


# ------------------------------------------------------------ launching
def init_from_environment(device="cpu", backend="auto", timeout_s=600):
    """Join the process group that ``torchrun`` describes in the environment.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (and, through
    ``init_method="env://"``, ``MASTER_ADDR``/``MASTER_PORT``); without
    them (a plain ``python`` run) nothing is initialized: one process.

    Parameters
    ----------
    device : {"cpu", "cuda", "auto"}
        "cuda" (or "auto" with CUDA available): one device per process,
        ``cuda:LOCAL_RANK``, made current before the group is initialized.
    backend : {"auto", "gloo", "nccl"}
        "auto": NCCL with CUDA, gloo on CPUs.
    timeout_s : float
        How long a collective may wait for the other processes before it
        fails (a process that died leaves the others waiting that long).

    Returns
    -------
    (rank, world_size, device) : int, int, str
        ``device`` for the estimators of this process ("cpu" or "cuda:N").
    """
    import datetime
    import os

    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        if not torch.cuda.is_available():
            raise ValueError("device='cuda' was requested but CUDA is not available here; use device='cpu'.")
        torch.cuda.set_device(local_rank)
        resolved = f"cuda:{local_rank}"
    else:
        resolved = "cpu"
    if backend == "auto":
        backend = "nccl" if use_cuda else "gloo"
    if world_size > 1 and not is_initialized():
        dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world_size,
                                timeout=datetime.timedelta(seconds=timeout_s))
    return rank, world_size, resolved


def finalize():
    """Leave the process group, if one is initialized."""
    if is_initialized():
        dist.destroy_process_group()
