"""The hidden Markov model as a circuit: the chain forward pass on ``log_matmul_exp``.

An HMM over a window of T tokens with K hidden states is a probabilistic
circuit whose leaves are the emission distributions (one categorical over V
tokens per position and state) and whose sums are the initial distribution
and the transitions. :class:`HMMCircuit` exposes exactly the protocol that
:class:`~skpc.backend.train.Trainer` and :func:`~skpc.backend.em.e_step` use
on a :class:`~skpc.backend.circuit.CompiledCircuit` (``leaf``,
``weight_specs``, ``leaf_inputs``, ``leaf_values``, ``forward``,
``log_prob``, ``log_prob_in_chunks``, ``chunk_size``, ``init_params``), so
that the engine's one trainer fits it: full-batch or stochastic EM with step
decay, early stopping, or Adam.

Forward pass (the alpha recursion, all windows of a batch at once)::

    alpha_1 = log pi + e_1                                  (K, B)
    alpha_t = log_matmul_exp(alpha_{t-1}, A_{t-1}^T) + e_t  (K, K) x (K, B) -> (K, B)
    log p(x) = logsumexp_k alpha_T[k]                       (B,)

where ``e_t[k, b] = log B_t[k, x_tb]`` is a gather of the emission table,
never a one-hot product, and 0 where the token is missing (marginalized).
EM comes from autodiff (Peharz et al. 2020, section 3.4): ``d log p /
d e_t[k]`` is the posterior of state k at position t (gamma), and ``A * d
log p / d A`` the expected transition counts (xi summed over the batch): one
backward pass is the Baum-Welch E-step. The max semiring gives Viterbi: the
gradient of the max-product value reaches exactly one state per position,
the most probable path.

Position prior (MAP-EM, non-homogeneous): each M-step adds to every
position's emission row k a multiple of row k pooled over positions from the
same step's statistics (``shrink_to_pooled_``): a hierarchical prior between
the non-homogeneous model and the homogeneous one. It costs one (K, V)
temporary. The transition rows are pooled likewise by
``HMMCircuit.add_weight_priors``, which ``em.m_step`` calls before it
updates the sum weights, and the LVD closed form pools both.

Memory. The parameters are the emission tables (T, K, V) (or (K, V) for a
homogeneous HMM), the transitions (T-1, K, K) and the initial (K,). A
full-batch EM epoch holds the parameters, the summed expected statistics
(their size) and one chunk's statistics (their size again), plus the
activations of a chunk of windows (about 8 T K floats a window, bounded by
``chunk_size``: 2^25 floats, 128 MiB); with a validation split the trainer
keeps the best parameters too. So a fit needs about four to five times the
parameter size. At K=1024, V=10,000, T=32 in float32 the parameters take
1.44 GB (emissions 1.31 GB, transitions 0.13 GB) and a fit about 7 GB: it
fits in 24 GB. K=2048 (5.2 GB of parameters, about 26 GB for
a fit) does not; a homogeneous HMM at K=4096 (0.16 GB emissions, 0.07 GB
transitions) does. The windows themselves are streamed through the pass a
chunk at a time.
"""

import math

import torch

from .circuit import CircuitParams, ForwardPass, WeightSpec
from .layers import log_matmul_exp, log_root
from .leaves import CategoricalLeaf
from .numerics import flushing_subnormals
from .leaves.base import PROB_FLOOR

# Elements of a chunk's activations (about 8 T K floats a window): 2^25
# floats (128 MiB in float32): 512 windows a chunk at K=256, T=32, 128 at
# K=1024. Measured at K=256 (homogeneous, 2,000 PTB windows, one thread):
# the same 0.69 s per EM iteration as with 2^26 and 2^27, and a peak memory
# growth of 0.17 GB instead of 0.31 and 0.54 GB.
ACTIVATION_BUDGET = 2**25
MAX_CHUNK_ROWS = 8192


class TokenEmissions(CategoricalLeaf):
    """Categorical leaves over V tokens, one variable per window position.

    The leaf parameters ``phi`` are the emission tables, (T, 1, K, V) (one
    per position), or (1, 1, K, V) with ``tied=True`` (one table shared by
    every position: a homogeneous HMM, whose statistics sum over positions).
    Leaf values are gathers of log-emissions, (T, K, B); a missing token
    contributes 0. The M-step works in place on the statistics, so that an
    EM update needs no temporary of the parameters' size.

    Parameters
    ----------
    n_categories : int
        V, the number of tokens.
    tied : bool, default=False
        Share one emission table across positions.

    Attributes
    ----------
    prior : Tensor (V,) or None
        Dirichlet pseudo-counts added to every emission row by the M-step
        (MAP-EM; see ``set_prior``), for the whole training set.
    position_prior : float
        Pseudo-counts pulling every position's row k toward the row k pooled
        over positions (see ``shrink_to_pooled_``), for the whole training
        set; 0: none. Without effect on a tied table (its pooled row is its own).
    prior_tokens : Tensor (P, 1, 1) or None
        Observed training tokens of each table: a batch's share of the
        priors is its share of those tokens, so that stochastic EM steps see
        the priors in proportion and a full-batch step sees all of them.
    """

    name = "token"
    prior = None
    position_prior = 0.0
    prior_tokens = None

    def __init__(self, n_categories=None, tied=False):
        super().__init__(n_categories)
        self.tied = bool(tied)

    def set_prior(self, pseudocounts, tokens, position_prior=0.0):
        """MAP-EM: ``pseudocounts`` (V,) (or None) added to every emission
        row's counts and ``position_prior`` pseudo-counts of the row pooled
        over positions, both over the whole training set, whose tables hold
        ``tokens`` (P,) observed tokens."""
        self.prior = pseudocounts
        self.position_prior = float(position_prior)
        self.prior_tokens = tokens.view(-1, 1, 1)

    # data: (x (T, B) long with missing tokens at 0, obs (T, B) bool)
    def region_log_prob(self, data, phi):
        """log B_t[k, x_tb], 0 where x_tb is missing: (T, K, B)."""
        x, obs = data
        T, B = x.shape
        K = phi.shape[2]
        if self.tied:
            # (K, V) -> columns of every position's tokens (K, T*B) -> (T, K, B)
            picked = phi[0, 0].index_select(1, x.reshape(-1)).view(K, T, B).transpose(0, 1)
        else:
            # (T, K, V) gathered at x (T, 1 -> K, B) -> (T, K, B)
            picked = torch.gather(phi[:, 0], 2, x.unsqueeze(1).expand(T, K, B))
        # log after the gather: T*K*B logarithms instead of T*K*V
        return torch.where(obs.unsqueeze(1), torch.log(picked), picked.new_zeros(()))  # (T, 1, B) mask

    def region_log_max(self, data, phi, real=None):
        """As ``region_log_prob``, with a missing token at its most probable value:
        max_v log B_t[k, v] (MPE's upward pass): (T, K, B)."""
        values = self.region_log_prob(data, phi)
        x, obs = data
        T = x.shape[0]
        at_mode = torch.log(phi[:, 0].amax(-1))  # (T or 1, K)
        missing = (~obs).unsqueeze(1)  # (T, 1, B)
        return values + at_mode.unsqueeze(-1).expand(T, -1, -1) * missing

    def expected_statistics(self, data, grad):
        """Posterior-weighted token counts.

        grad (T, K, B) is d log p / d e_t[k] per window: the posterior of
        state k at position t. Returns stats (P, 1, K, V) and counts
        (P, 1, K), P = T (or 1 when tied, summed over positions); missing
        tokens count nowhere.
        """
        T, K, _ = grad.shape
        P = 1 if self.tied else T
        stats = grad.new_zeros(P, 1, K, self.n_categories)
        counts = grad.new_zeros(P, 1, K)
        self.add_expected_statistics(data, grad, stats, counts)
        return stats, counts

    def add_expected_statistics(self, data, grad, stats, counts):
        """``expected_statistics`` added in place to ``stats`` (P, 1, K, V)
        and ``counts`` (P, 1, K): a full-batch pass sums its chunks into one
        table instead of allocating and adding one per chunk."""
        x, obs = data
        T, K, B = grad.shape
        weighted = grad * obs.unsqueeze(1)  # (T, K, B), 0 where the token is missing
        if self.tied:
            # every (position, window) is one column: (K, T*B) added at its token
            stats[0, 0].index_add_(1, x.reshape(-1), weighted.transpose(0, 1).reshape(K, T * B))
            counts += weighted.sum((0, 2)).view(1, 1, K)
        else:
            stats[:, 0].scatter_add_(2, x.unsqueeze(1).expand(T, K, B), weighted)
            counts += weighted.sum(2).unsqueeze(1)  # (T, 1, K)

    def m_step(self, phi, stats, counts, learning_rate, pseudocount=0.0):
        """``project(lerp(phi, project(stats / counts), learning_rate))``, a
        table without counts keeping ``phi`` (the base class's update),
        computed in place in ``stats`` (consumed); with priors, their share
        is added to stats and counts first (MAP-EM): the position prior's
        pooled rows come from these statistics (summed across processes
        before the M-step: a data-parallel fit pools every process's
        windows). ``pseudocount``: the trainer's symmetric Dirichlet prior
        (``Schedule.pseudocount``), as the categorical leaf's: pseudocount /
        V added to every token's count."""
        if pseudocount:
            stats.add_(pseudocount / stats.shape[-1])
            counts = counts + pseudocount
        # a row without counts in this batch keeps phi, priors or not
        seen = (counts.unsqueeze(-1) > 1e-12).to(stats.dtype)  # (P, 1, K, 1)
        if self.prior_tokens is not None:
            # the batch's share of the training tokens of each table: (P, 1, 1)
            share = counts.sum(2, keepdim=True) / self.prior_tokens.to(counts).clamp_min(1.0)
        if self.position_prior and stats.shape[0] > 1:
            counts = shrink_to_pooled_(stats, counts, share * self.position_prior)
        if self.prior is not None:
            stats.add_(share.unsqueeze(-1) * self.prior.to(stats))  # (P, 1, 1, 1) x (V,)
            counts = counts + share * self.prior.sum().to(counts)
        counts = counts.unsqueeze(-1)  # (P, 1, K, 1)
        new = stats.div_(counts.clamp_min(torch.finfo(stats.dtype).tiny))
        new = _project_(new)
        # phi + lr * seen * (estimate - phi): an unseen table keeps phi
        new.sub_(phi).mul_(seen * learning_rate).add_(phi)
        return _project_(new)

    def mode_log_density(self, phi):
        return torch.log(phi.amax(-1))


def shrink_to_pooled_(stats, counts, strength):
    """Add ``strength[p]`` pseudo-counts of the position-pooled row to every
    row of table p, in place in ``stats``: a hierarchical (empirical-Bayes)
    Dirichlet prior whose mean is the estimate pooled over the P tables.

    Parameters
    ----------
    stats : Tensor (P, ..., R, C)
        Expected counts of P tables (positions) of R rows over C outcomes;
        modified in place.
    counts : Tensor (P, ..., R)
        Their row sums.
    strength : Tensor broadcastable to (P, ..., 1), or float
        Pseudo-counts per row of each table (the prior's strength, or a
        stochastic step's share of it).

    Returns
    -------
    Tensor (P, ..., R)
        The row sums after the addition: ``counts + strength`` on every row
        that has counts in some table; a row unseen in every table (no
        pooled estimate) gets nothing.

    Notes
    -----
    ``pooled[r] = sum_p stats[p, r] / sum_p counts[p, r]`` (one table's
    size: (..., R, C)). With strength b, row r of table p becomes
    ``(stats[p, r] + b pooled[r]) / (counts[p, r] + b)``: b = 0 is each
    table's own estimate, b -> infinity the pooled one (the tied model's),
    in between a table is pulled toward the pooled row the more, the fewer
    counts it has.
    """
    pooled_counts = counts.sum(0, keepdim=True)  # (1, ..., R)
    pooled = stats.sum(0, keepdim=True).div_(pooled_counts.clamp_min(torch.finfo(stats.dtype).tiny).unsqueeze(-1))
    strength = torch.as_tensor(strength, dtype=stats.dtype, device=stats.device)
    # (P, ..., 1, 1) x (1, ..., R, C) added in place: no temporary of stats' size
    stats.addcmul_(strength.unsqueeze(-1), pooled)
    return counts + strength * (pooled_counts > 0).to(counts.dtype)


def _project_(phi):
    """Floor at PROB_FLOOR and renormalize over the last axis, in place."""
    phi.clamp_min_(PROB_FLOOR)
    return phi.div_(phi.sum(-1, keepdim=True))


class HMMCircuit:
    """A (non-)homogeneous HMM over windows of T tokens, as a circuit.

    Parameters
    ----------
    n_states : int
        K, hidden states.
    window : int >= 2
        T, positions of a window.
    n_tokens : int >= 2
        V, the vocabulary size.
    homogeneous : bool, default=False
        One transition matrix and one emission table for all positions;
        else one per position.
    device : torch.device or str

    Notes
    -----
    Parameters (a :class:`CircuitParams`): ``leaf`` the emission tables
    (T, 1, K, V) or (1, 1, K, V), rows summing to one over V; weights
    ``initial`` (K,) and ``transition`` (T-1, K, K) or (K, K), with
    ``transition[t, i, j] = p(z_{t+1} = j | z_t = i)`` (rows sum to one).
    Input windows are (B, T) tensors of token ids, -1 (or NaN in a float
    tensor) marking a missing token.
    """

    multi_output = False
    n_outputs = 1
    # training windows, for the batch's share of the position prior on the transitions
    prior_windows = None

    def __init__(self, n_states, window, n_tokens, homogeneous=False, device="cpu"):
        if window < 2:
            raise ValueError(f"window={window}: an HMM circuit needs windows of at least 2 positions.")
        self.n_sums = int(n_states)
        self.window = int(window)
        self.n_tokens = int(n_tokens)
        self.homogeneous = bool(homogeneous)
        self.device = torch.device(device)
        self.leaf = TokenEmissions(self.n_tokens, tied=self.homogeneous)
        K, T = self.n_sums, self.window
        transition = (K, K) if self.homogeneous else (T - 1, K, K)
        self.weight_specs = [
            WeightSpec("initial", (K,), 0),
            WeightSpec("transition", transition, len(transition) - 1),
        ]

    def set_emission_prior(self, X, strength, reduce=None, position_strength=0.0):
        """Priors on every emission row for EM (MAP-EM), over the training
        windows X (N, T) (long, -1 = missing).

        ``strength`` pseudo-counts spread over the tokens by their
        add-one-smoothed frequency in X (a Dirichlet prior), and
        ``position_strength`` pseudo-counts of the same state's row pooled
        over positions in each M-step (``shrink_to_pooled_``; ignored when
        homogeneous: there the pooled row is the table's own). Both 0 remove
        them (plain EM). ``reduce`` (data-parallel: the process group's
        in-place sum) makes the frequencies and token counts those of every
        process's windows.
        """
        position_strength = 0.0 if self.homogeneous else position_strength
        if not strength and not position_strength:
            self.leaf.prior = self.leaf.prior_tokens = self.prior_windows = None
            self.leaf.position_prior = 0.0
            return
        x, obs = self.leaf_inputs(X)  # (T, N) each
        counts = torch.zeros(self.n_tokens, dtype=torch.float64, device=self.device)
        counts.index_add_(0, x.reshape(-1), obs.reshape(-1).to(torch.float64))
        tokens = obs.sum(1, dtype=torch.float64)  # (T,) observed tokens per position
        windows = torch.full((1,), float(X.shape[0]), dtype=torch.float64, device=self.device)
        if reduce is not None:
            reduce([counts, tokens, windows])
        unigram = counts + 1.0  # add-one smoothed
        if self.homogeneous:
            tokens = tokens.sum().view(1)
        pseudocounts = strength * unigram / unigram.sum() if strength else None
        self.leaf.set_prior(pseudocounts, tokens, position_strength)
        self.prior_windows = float(windows) if position_strength else None

    def add_weight_priors(self, weight_counts):
        """The position prior on the transitions (MAP-EM), in place on the
        summed expected counts before their M-step: ``position_prior``
        pseudo-counts of the transition row pooled over positions
        (``shrink_to_pooled_``), a batch adding its share of the training
        windows (each window adds 1 to every position's counts).

        ``weight_counts``: the counts of ``weight_specs`` (initial (K,),
        transition (T-1, K, K)), summed across processes; ``em.m_step``
        calls it before the weights' update.
        """
        beta = self.leaf.position_prior
        if not beta or self.homogeneous or self.prior_windows is None:
            return
        counts = weight_counts[1]  # (T-1, K, K)
        share = counts.sum((1, 2)).unsqueeze(1) / self.prior_windows  # (T-1, 1): the batch's windows
        shrink_to_pooled_(counts, counts.sum(-1), share * beta)

    @property
    def emission_shape(self):
        P = 1 if self.homogeneous else self.window
        return (P, 1, self.n_sums, self.n_tokens)

    # ------------------------------------------------------------- sizes
    def n_parameters(self):
        """Free parameters: every distribution's entries minus one."""
        P = self.emission_shape[0]
        total = sum(spec.n_free() for spec in self.weight_specs)
        return int(total + P * self.n_sums * (self.n_tokens - 1))

    def parameter_bytes(self, dtype=torch.float32):
        """Bytes of the parameters in ``dtype``."""
        K = self.n_sums
        n = math.prod(self.emission_shape) + K + sum(math.prod(s.shape) for s in self.weight_specs[1:])
        return n * torch.finfo(dtype).bits // 8

    def chunk_size(self, budget=None):
        """Windows per pass: a chunk's activations (about 8 T K floats a
        window: the alphas, the scaled copies the matmuls keep for the
        backward pass, leaf values and their gradients) stay under
        ``budget`` elements (default ``ACTIVATION_BUDGET``). Semantics never
        depend on it; memory does."""
        budget = ACTIVATION_BUDGET if budget is None else budget
        per_row = 8 * self.window * self.n_sums
        return int(min(MAX_CHUNK_ROWS, max(16, budget // per_row)))

    # --------------------------------------------------------------- data
    def leaf_inputs(self, X):
        """(x (T, B) long, missing tokens at 0; obs (T, B) bool, True where observed)
        from windows X (B, T): long with -1 = missing, or float with NaN = missing."""
        if X.is_floating_point():
            X = torch.nan_to_num(X, nan=-1.0).long()
        x = X.t()
        return x.clamp_min(0), x >= 0

    def leaf_values(self, data, params, semiring="sum", softening=1.0):
        """Leaf values (T, K, B): log-emissions of the observed tokens (0 where
        missing), or for the max semiring the log-emission of a missing
        token's most probable value. ``softening``: the engine's data
        softening (``Schedule.softening``), which this circuit does not
        implement: only 1.0 (off) is accepted."""
        if softening != 1.0:
            raise ValueError(f"softening={softening!r}: the HMM circuit has no data softening; use softening=1.0.")
        if semiring == "sum":
            return self.leaf.region_log_prob(data, params.leaf)
        return self.leaf.region_log_max(data, params.leaf)

    # ------------------------------------------------------------ forward
    def _transitions(self, params):
        """The T-1 transition matrices, each (K_next, K_prev) as
        ``log_matmul_exp`` takes them: views of the parameters."""
        A = params.weights["transition"]
        if self.homogeneous:
            return [A.t()] * (self.window - 1)
        # unbind, not A[t]: its backward stacks the T-1 gradients once instead
        # of adding T-1 zero-padded copies of the whole tensor
        return [a.t() for a in A.unbind(0)]

    def forward(self, leaf_values, params, semiring="sum", evidence=None, keep_alphas=False):
        """The chain forward pass from leaf values (T, K, B).

        Parameters
        ----------
        leaf_values : Tensor (T, K, B)
        params : CircuitParams
        semiring : {"sum", "max"}
            "max": the Viterbi recursion; the output is the log-probability
            of the most probable path (and completion).
        evidence : dict position -> Tensor (B, K) bool, optional
            Evidence on hidden states (the "regions" of this circuit are the
            positions): the states allowed at that position for each window;
            the others get probability 0. With every state observed
            (``em.LatentEvidence`` over all positions), EM maximizes the
            complete-data likelihood: LVD's augmented data.
        keep_alphas : bool
            Return the T forward messages (each (K, B)) as ``trace``.

        Returns
        -------
        ForwardPass
            ``output`` (B,): log p(x), missing tokens marginalized.
        """
        emissions = list(leaf_values.unbind(0))  # T x (K, B)
        for t, allowed in (evidence or {}).items():
            allowed = torch.as_tensor(allowed, dtype=torch.bool, device=leaf_values.device)
            if allowed.shape != (leaf_values.shape[2], self.n_sums):
                raise ValueError(
                    f"evidence on position {t} must be a (n_windows, n_states) = ({leaf_values.shape[2]}, "
                    f"{self.n_sums}) boolean mask; got shape {tuple(allowed.shape)}."
                )
            emissions[t] = emissions[t].masked_fill(~allowed.t(), float("-inf"))
        # (K,) -> (K, 1) broadcast over the batch
        alpha = torch.log(params.weights["initial"]).unsqueeze(1) + emissions[0]
        alphas = [alpha] if keep_alphas else None
        for step, e in zip(self._transitions(params), emissions[1:]):
            # (K_next, K_prev) x (K_prev, B) -> (K_next, B) in the semiring
            alpha = log_matmul_exp(alpha, step, semiring) + e
            if keep_alphas:
                alphas.append(alpha)
        ones = alpha.new_ones(self.n_sums)
        output = log_root(alpha, ones, semiring)  # (K, B) -> (B,)
        return ForwardPass(output, trace=alphas)

    def log_prob(self, X, params, evidence=None):
        """log p(x) per window of X (B, T), missing tokens marginalized: (B,);
        ``evidence`` as in ``forward``."""
        return self.forward(self.leaf_values(self.leaf_inputs(X), params), params, evidence=evidence).output

    @flushing_subnormals
    def log_prob_in_chunks(self, X, params, evidence=None):
        """``log_prob`` of every window of X (N, T) without gradients,
        ``chunk_size()`` windows per pass: (N,). ``evidence``: None or a
        callable row indices -> {position: (B, K) mask}."""
        step = self.chunk_size()
        out = []
        with torch.no_grad():
            for start in range(0, X.shape[0], step):
                index = torch.arange(start, min(start + step, X.shape[0]), device=X.device)
                masks = evidence(index) if evidence is not None else None
                out.append(self.log_prob(X[index], params, evidence=masks))
        return torch.cat(out)

    # ------------------------------------------------------------- params
    def init_params(self, X, generator, dtype, reduce=None):
        """Random parameters: initial and transitions uniform draws in
        [0.5, 1.5) normalized; each emission row the training unigram
        distribution (add-one smoothed, pooled over positions) times a draw
        in [0.5, 1.5), normalized. Drawn in float64 whatever the dtype (one
        position at a time), so equal seeds start float32 and float64 fits
        from the same point. ``reduce`` (data-parallel) sums the token
        counts over every process's windows; the draws then agree when
        every process passes the same generator state."""
        K, V = self.n_sums, self.n_tokens
        x, obs = self.leaf_inputs(X)
        unigram = torch.zeros(V, dtype=torch.float64, device=self.device)
        unigram.index_add_(0, x.reshape(-1), obs.reshape(-1).to(torch.float64))  # token counts
        if reduce is not None:
            reduce([unigram])
        unigram += 1.0  # add-one smoothed
        unigram /= unigram.sum()
        weights = {}
        for spec in self.weight_specs:
            w = torch.rand(spec.shape, generator=generator, device=generator.device, dtype=torch.float64) + 0.5
            weights[spec.name] = (w / w.sum(spec.norm_dim, keepdim=True)).to(device=self.device, dtype=dtype)
        leaf = torch.empty(self.emission_shape, dtype=dtype, device=self.device)
        for p in range(leaf.shape[0]):
            noise = torch.rand((K, V), generator=generator, device=generator.device, dtype=torch.float64)
            rows = (noise.to(self.device) + 0.5) * unigram
            leaf[p, 0] = rows / rows.sum(-1, keepdim=True)
        return CircuitParams(leaf, weights)

    def params_from_counts(self, X, Z, pseudocount, dtype, reduce=None, position_prior=0.0):
        """The maximum-likelihood HMM of fully observed states (closed form).

        Parameters
        ----------
        X : LongTensor (N, T)
            Token windows, -1 = missing (counted in no emission).
        Z : LongTensor (N, T)
            The state of every position, in [0, K).
        pseudocount : float
            Added to every initial, transition and emission count.
        dtype : torch.dtype
        reduce : callable(list of tensors) or None
            Data-parallel: sums the counts in place over every process's
            windows (before the pseudocounts are added); every process
            calls it the same number of times, with or without windows.
        position_prior : float, default=0.0
            Non-homogeneous: pseudo-counts of the row pooled over positions
            added to every position's transition and emission row
            (``shrink_to_pooled_``, on the summed counts), before the
            ``pseudocount``: the MAP estimate under the position prior of
            ``HMMLanguageModel``. Ignored when homogeneous.

        Returns
        -------
        CircuitParams
            initial = normalized counts of Z[:, 0]; transition[t, i, j] of
            (Z[:, t], Z[:, t + 1]) pairs (pooled over t when homogeneous);
            emission[t, k, v] of (Z[:, t], X[:, t]) pairs over observed tokens
            (pooled likewise); each plus ``pseudocount``, normalized.
        """
        pool = bool(position_prior) and not self.homogeneous
        K, V, T = self.n_sums, self.n_tokens, self.window
        X = X.to(self.device)
        Z = Z.to(self.device)
        f64 = torch.float64
        initial = torch.bincount(Z[:, 0], minlength=K).to(f64)
        pairs = Z[:, :-1] * K + Z[:, 1:]  # (N, T-1): index of each (z_t, z_{t+1})
        if self.homogeneous:
            transition = torch.bincount(pairs.reshape(-1), minlength=K * K).to(f64).view(K, K)
        else:
            offsets = torch.arange(T - 1, device=self.device) * (K * K)
            transition = torch.bincount((pairs + offsets).reshape(-1), minlength=(T - 1) * K * K)
            transition = transition.to(f64).view(T - 1, K, K)
        if reduce is not None:
            reduce([initial, transition])
        if pool:
            shrink_to_pooled_(transition, transition.sum(-1), position_prior)  # (T-1, K, K)
        transition = transition + pseudocount
        leaf = torch.empty(self.emission_shape, dtype=dtype, device=self.device)
        # one position (or the pooled table) at a time: a (K, V) float64 table
        # is the largest temporary, never the whole (T, K, V)
        positions = [range(T)] if self.homogeneous else [[t] for t in range(T)]
        for p, ts in enumerate(positions):
            counts = torch.zeros(K * V, dtype=f64, device=self.device)
            for t in ts:
                seen = X[:, t] >= 0
                counts += torch.bincount(Z[seen, t] * V + X[seen, t], minlength=K * V).to(f64)
            if reduce is not None:
                reduce([counts])
            if pool:  # the raw counts for now (exact in float32 below 2^24): pooled once all are in
                leaf[p, 0] = counts.view(K, V)
                continue
            table = counts.view(K, V) + pseudocount
            leaf[p, 0] = table / table.sum(-1, keepdim=True)
        if pool:
            tables = leaf[:, 0]  # (T, K, V) view, shrunk in place in the leaf's dtype
            shrink_to_pooled_(tables, tables.sum(-1), position_prior)
            tables.add_(pseudocount).div_(tables.sum(-1, keepdim=True))
        initial = initial + pseudocount
        weights = {
            "initial": (initial / initial.sum()).to(dtype),
            "transition": (transition / transition.sum(-1, keepdim=True)).to(dtype),
        }
        return CircuitParams(leaf, weights)

    # ------------------------------------------------------------ queries
    def _emission(self, params, t):
        """The emission table of position t, (K, V)."""
        return params.leaf[0 if self.homogeneous else t, 0]

    def _transition(self, params, t):
        """p(z_{t+1} | z_t), (K, K), rows the current state."""
        A = params.weights["transition"]
        return A if self.homogeneous else A[t]

    def next_token_proba(self, prefix, params):
        """p(x_t = v | x_0..x_{t-1}) for prefixes (B, t), t < T, -1 = missing: (B, V).

        The forward message at position t-1 (normalized), one transition and
        the emission table of position t: (B, K) @ (K, K) @ (K, V).
        """
        B, t = prefix.shape
        if t >= self.window:
            raise ValueError(f"a prefix of {t} tokens has no next position in windows of {self.window}.")
        with torch.no_grad():
            if t == 0:
                state = params.weights["initial"].unsqueeze(0).expand(B, -1)  # (B, K)
            else:
                window = prefix.new_full((B, self.window), -1)
                window[:, :t] = prefix
                values = self.leaf_values(self.leaf_inputs(window), params)[:t]  # (t, K, B)
                alpha = self.forward(values, params, keep_alphas=True).trace[-1]  # (K, B) at position t-1
                belief = torch.softmax(alpha, 0).t()  # p(z_{t-1} | prefix): (B, K)
                state = belief @ self._transition(params, t - 1)  # (B, K) @ (K, K) -> (B, K)
            return state @ self._emission(params, t)  # (B, K) @ (K, V) -> (B, V)

    def sample(self, n_samples, params, generator):
        """Ancestral samples: z_1 ~ pi, x_t ~ B_t[z_t], z_{t+1} ~ A_t[z_t]: (n, T) long."""
        with torch.no_grad():
            z = _draw(params.weights["initial"].unsqueeze(0).expand(n_samples, -1), generator)  # (n,)
            out = []
            for t in range(self.window):
                if t > 0:
                    z = _draw(self._transition(params, t - 1)[z], generator)  # rows (n, K)
                out.append(_draw(self._emission(params, t)[z], generator))  # rows (n, V)
            return torch.stack(out, 1)

    def complete(self, X, params, generator, method):
        """Fill the missing tokens (-1) of windows X (B, T) (long).

        method "sample": forward filtering, backward sampling: the states
        from p(z | observed tokens), then each missing token from its state's
        emission: an exact draw from p(missing | observed). method "mpe":
        Viterbi, the most probable joint completion of states and missing
        tokens (the gradient of the max-product value marks one state per
        position: the best path), then each missing token at its state's
        most probable token.
        """
        if method not in ("sample", "mpe"):
            raise ValueError(f"method={method!r} is not supported; use 'sample' or 'mpe'.")
        data = self.leaf_inputs(X)
        if method == "mpe":
            path = self.viterbi(X, params)  # (T, B)
        else:
            path = self._backward_sample(data, params, generator)  # (T, B)
        filled = []
        for t in range(self.window):
            rows = self._emission(params, t)[path[t]]  # (B, V)
            filled.append(rows.argmax(-1) if method == "mpe" else _draw(rows, generator))
        filled = torch.stack(filled, 1)  # (B, T)
        return torch.where(X >= 0, X, filled)

    def viterbi(self, X, params):
        """The most probable state path of each window X (B, T), missing tokens
        maximized over too: (T, B) long.

        The max-product forward pass with the leaf values requiring grad; its
        gradient is 1 at the chosen state of every position and 0 elsewhere
        (``log_matmul_exp``'s max semiring sends each output's gradient to one
        argmax): the backtrack of the argmax pointers, done by autograd.
        """
        data = self.leaf_inputs(X)
        with torch.no_grad():
            values = self.leaf_values(data, params, semiring="max")
        values.requires_grad_(True)
        with torch.enable_grad():
            output = self.forward(values, params, semiring="max").output
            (grad,) = torch.autograd.grad(output.sum(), values)
        return grad.argmax(1)  # (T, K, B) -> (T, B)

    def viterbi_log_prob(self, X, params):
        """log max_{z, missing x} p(z, x) per window: (B,)."""
        with torch.no_grad():
            values = self.leaf_values(self.leaf_inputs(X), params, semiring="max")
            return self.forward(values, params, semiring="max").output

    def _backward_sample(self, data, params, generator):
        """States drawn from p(z | observed tokens): (T, B) long."""
        with torch.no_grad():
            values = self.leaf_values(data, params)
            alphas = self.forward(values, params, keep_alphas=True).trace  # T x (K, B)
            z = _draw(torch.softmax(alphas[-1], 0).t(), generator)  # (B,)
            path = [z]
            for t in range(self.window - 2, -1, -1):
                # p(z_t = i | z_{t+1}, x_{..t}) ∝ alpha_t[i] A_t[i, z_{t+1}]: (K, B)
                logits = alphas[t] + torch.log(self._transition(params, t)[:, z])
                z = _draw(torch.softmax(logits, 0).t(), generator)
                path.append(z)
            return torch.stack(path[::-1], 0)


def _draw(probs, generator):
    """One index per row of ``probs`` (n, C), each row a distribution: (n,) long."""
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
