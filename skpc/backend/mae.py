"""A small masked autoencoder over groups of features, and torch embedders.

The latent-assignment transformer of latent variable distillation (Liu et
al., ICLR 2023, section 4) clusters a deep model's embedding of every group of
variables (an image patch). This module holds the deep model skpc trains
itself: a ViT-style masked autoencoder (He et al., CVPR 2022) whose tokens
are the groups.

- **Tokens.** A row (F,) is standardized per feature, then cut into T groups;
  each group's vector is padded with zeros to the widest group P, so the
  tokens are a (T, P) array whatever the group sizes. Token t is embedded by
  its own linear map (T maps of P -> D) plus a learned group (position)
  embedding.
- **Encoder.** ``depth`` pre-LayerNorm transformer blocks over the visible
  tokens only, as in MAE. A (T, T) boolean ``allowed`` matrix says which
  tokens a token may attend to, in training and after: only itself (each
  group embedded alone), itself and its ancestors (the paper's
  maximum-spanning-tree context: ancestors of an ancestor are ancestors, so
  one masked pass gives, at every layer, a token that has seen only its own
  group and its ancestors' groups), or every token.
- **Decoder.** One transformer block over all T positions (encoder outputs
  at the visible ones, a learned mask token at the masked ones, plus a
  decoder position embedding), then a per-group linear map back to the
  group's P values. The loss is the mean squared error on the masked
  groups' observed entries only (MAE's loss).
- **Masking.** The masking ratio is drawn per training step uniformly from
  ``mask_ratio`` (LVD's MAE draws it at random rather than fixing MAE's
  0.75), and the masked groups of each row are a uniformly random subset of
  that size. Groups with a missing entry are always among the masked ones
  when the ratio allows (and never attended to), and missing entries never
  enter the loss.
- **Embedding.** The embedding of group t is the encoder's output token t
  (after its final LayerNorm) with nothing masked, under the same
  ``allowed`` pattern: (N, T, D).

Every random draw (initialization, batch order, masking ratio, masked
groups) comes from one CPU ``torch.Generator``, so two fits with the same
seed are identical on the CPU.
"""

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

__all__ = [
    "MaskedAutoencoder",
    "build_mae",
    "fit_mae",
    "is_torch_module",
    "mae_embed",
    "module_embed",
]

# Rows per forward pass at inference: bounds memory, and fixed so that the
# same row gets the same float result in fit and in transform.
INFERENCE_CHUNK = 1024
# Hidden width of the blocks' MLP, in multiples of the model width (ViT uses
# 4; 2 keeps the CPU cost of an MNIST epoch low at no visible loss).
MLP_RATIO = 2
# Standard deviation of the learned embeddings and mask token at init (MAE).
EMBEDDING_INIT_STD = 0.02


# ----------------------------------------------------------------------
# The model


class _Block(nn.Module):
    """Pre-LayerNorm transformer block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        # skip_init: no draw from torch's global RNG (reset_parameters draws
        # from the fit's generator instead)
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = skip_init(nn.Linear, dim, 3 * dim)
        self.proj = skip_init(nn.Linear, dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = skip_init(nn.Linear, dim, MLP_RATIO * dim)
        self.fc2 = skip_init(nn.Linear, MLP_RATIO * dim, dim)

    def forward(self, x, allowed=None):
        """x: (B, T, D); allowed: None or (B, T, T) bool, allowed[b, i, j] = query i may see key j."""
        B, T, D = x.shape
        H = self.heads
        # (B, T, 3D) -> (3, B, H, T, D/H)
        q, k, v = self.qkv(self.norm1(x)).view(B, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
        mask = None if allowed is None else allowed[:, None]  # (B, 1, T, T), broadcast over heads
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D/H)
        x = x + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class MaskedAutoencoder(nn.Module):
    """Masked autoencoder whose tokens are groups of features.

    Parameters
    ----------
    index : int64 tensor of shape (T, P)
        Feature index of every entry of every token; entries past the end of
        a smaller group hold ``n_features`` (a zero padding column).
    allowed : bool tensor of shape (T, T)
        ``allowed[i, j]``: token i may attend to token j in the encoder
        (the diagonal must be True).
    mean, scale : float tensors of shape (n_features,)
        Standardization of the raw features: ``(x - mean) / scale``.
    dim, depth, heads : int
        Width D, encoder blocks, attention heads (``dim % heads == 0``).

    The parameters are created uninitialized (without touching torch's
    global RNG): initialize them with :meth:`reset_parameters`, which draws
    from a given generator, or load a state dict.
    """

    def __init__(self, index, allowed, mean, scale, dim, depth, heads):
        super().__init__()
        T, P = index.shape
        self.register_buffer("index", index.clone())
        self.register_buffer("allowed", allowed.clone())
        self.register_buffer("mean", mean.clone())
        self.register_buffer("scale", scale.clone())
        # (T, P) bool: which token entries are real features, not padding
        self.register_buffer("real", index < mean.shape[0])
        self.embed_weight = nn.Parameter(torch.empty(T, P, dim))  # per-group P -> D maps
        self.position = nn.Parameter(torch.empty(T, dim))  # learned group embedding
        self.encoder = nn.ModuleList([_Block(dim, heads) for _ in range(depth)])
        self.encoder_norm = nn.LayerNorm(dim)
        self.mask_token = nn.Parameter(torch.empty(dim))
        self.decoder_position = nn.Parameter(torch.empty(T, dim))
        self.decoder = _Block(dim, heads)
        self.decoder_norm = nn.LayerNorm(dim)
        self.head_weight = nn.Parameter(torch.empty(T, dim, P))  # per-group D -> P maps
        self.head_bias = nn.Parameter(torch.empty(T, P))

    @torch.no_grad()
    def reset_parameters(self, generator):
        """Initialize from the CPU ``generator`` only (never torch's global RNG).

        Linear maps: Xavier-uniform weights, zero biases (as MAE); LayerNorms:
        ones and zeros; embeddings and mask token: N(0, 0.02^2).
        """
        for name, p in self.named_parameters():
            if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm.weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            elif name in ("position", "decoder_position", "mask_token"):
                p.normal_(0.0, EMBEDDING_INIT_STD, generator=generator)
            else:
                # (out, in) for nn.Linear; (T, in, out) for the per-group maps
                fan_in, fan_out = (p.shape[1], p.shape[0]) if p.dim() == 2 else (p.shape[1], p.shape[2])
                bound = math.sqrt(6.0 / (fan_in + fan_out))
                p.uniform_(-bound, bound, generator=generator)
        return self

    def tokens(self, X):
        """Standardized tokens of raw rows.

        Parameters
        ----------
        X : float tensor of shape (B, n_features), NaN = missing

        Returns
        -------
        tokens : (B, T, P) standardized values, 0 (the training mean) at
            missing entries and padding
        observed : (B, T, P) bool, True at observed real entries
        """
        observed = ~torch.isnan(X)
        Z = torch.where(observed, (X - self.mean) / self.scale, torch.zeros((), dtype=X.dtype, device=X.device))
        pad = torch.zeros(X.shape[0], 1, dtype=X.dtype, device=X.device)
        tokens = torch.cat([Z, pad], dim=1)[:, self.index]  # (B, F + 1) -> (B, T, P)
        observed = torch.cat([observed, torch.zeros_like(pad, dtype=torch.bool)], dim=1)[:, self.index]
        return tokens, observed & self.real

    def encode(self, tokens, group_observed, keep=None):
        """Encoder output of the tokens it sees.

        Parameters
        ----------
        tokens : (B, T, P)
        group_observed : (B, T) bool; a group with a missing entry is never
            attended to by another token
        keep : None or int64 (B, V): the tokens the encoder sees (all when None)

        Returns
        -------
        (B, V, D), V = T without ``keep``
        """
        x = torch.einsum("btp,tpd->btd", tokens, self.embed_weight) + self.position  # (B, T, D)
        allowed = self.allowed[None] & group_observed[:, None, :]  # (B, T query, T key)
        if keep is not None:
            B, V = keep.shape
            x = torch.gather(x, 1, keep[:, :, None].expand(B, V, x.shape[2]))  # (B, V, D)
            # allowed among the kept tokens: (B, V, V)
            allowed = torch.gather(allowed, 1, keep[:, :, None].expand(B, V, allowed.shape[2]))
            allowed = torch.gather(allowed, 2, keep[:, None, :].expand(B, V, V))
        # A token always sees itself: no query is left without a key (softmax of
        # nothing is NaN), and a hidden (missing) group still gets an embedding.
        eye = torch.eye(x.shape[1], dtype=torch.bool, device=x.device)
        allowed = allowed | eye
        for block in self.encoder:
            x = block(x, allowed)
        return self.encoder_norm(x)

    def reconstruct(self, encoded, keep):
        """Decoder: predictions (B, T, P) of every group from the encoded visible tokens (B, V, D)."""
        B, V, D = encoded.shape
        T = self.position.shape[0]
        full = self.mask_token.expand(B, T, D).clone()
        full = full.scatter(1, keep[:, :, None].expand(B, V, D), encoded)  # visible tokens at their places
        y = self.decoder_norm(self.decoder(full + self.decoder_position))
        return torch.einsum("btd,tdp->btp", y, self.head_weight) + self.head_bias

    def forward(self, X):
        """Embeddings (B, T, D) of raw rows X (B, n_features), NaN = missing."""
        tokens, observed = self.tokens(X)
        group_observed = (observed | ~self.real).all(dim=2)  # (B, T)
        return self.encode(tokens, group_observed)


def build_mae(config, state_dict, device):
    """The fitted autoencoder from its config and (CPU) state dict, on ``device``, in eval mode."""
    shapes = {name: state_dict[name] for name in ("index", "allowed", "mean", "scale")}
    model = MaskedAutoencoder(**shapes, **config)
    model.load_state_dict(state_dict)
    return model.to(device).eval()


# ----------------------------------------------------------------------
# Training


def _masking(group_observed, ratio, generator):
    """Which tokens each row keeps visible for one training step.

    Parameters
    ----------
    group_observed : (B, T) bool
    ratio : float, the share of tokens to mask

    Returns
    -------
    keep : (B, V) int64, V = T - n_masked; masked : (B, T) bool
    """
    B, T = group_observed.shape
    if T == 1:
        # Nothing to predict one group from: train a plain autoencoder (the
        # one group stays visible and is also the reconstruction target).
        keep = torch.zeros(B, 1, dtype=torch.int64)
        return keep, torch.ones(B, 1, dtype=torch.bool)
    n_masked = min(max(int(round(ratio * T)), 1), T - 1)
    noise = torch.rand(B, T, generator=generator)  # (B, T) in [0, 1)
    # Groups with a missing entry sort last, so they are masked first.
    noise = noise + 2.0 * (~group_observed.cpu()).to(noise.dtype)
    order = torch.argsort(noise, dim=1)
    keep = order[:, : T - n_masked]
    masked = torch.ones(B, T, dtype=torch.bool)
    masked.scatter_(1, keep, False)
    return keep, masked


def fit_mae(
    X,
    groups,
    allowed,
    mean,
    scale,
    *,
    dim,
    depth,
    heads,
    epochs,
    batch_size,
    learning_rate,
    mask_ratio,
    seed,
    device,
    on_epoch=None,
):
    """Train the masked autoencoder with Adam.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
        Raw training rows; NaN = missing.
    groups : list of int arrays
        Feature indices of each group (a partition of the features).
    allowed : ndarray of shape (n_groups, n_groups), bool
        Encoder attention pattern (see :class:`MaskedAutoencoder`).
    mean, scale : ndarray of shape (n_features,)
        Standardization of the inputs, ``(x - mean) / scale`` (finite,
        ``scale > 0``); stored in the model.
    dim, depth, heads : int
    epochs, batch_size : int
        Passes over the shuffled rows, rows per Adam step.
    learning_rate : float
        Adam's step size.
    mask_ratio : (float, float)
        The masking ratio of every step is drawn uniformly from this range.
    seed : int
        Seeds the one generator of initialization, batch order and masking.
    device : torch.device
    on_epoch : callable (epoch, mean_loss, seconds) or None

    Returns
    -------
    config : dict
        Keyword arguments of the architecture (dim, depth, heads).
    state_dict : dict of CPU tensors
    loss_curve : list of float
        Mean training loss (MSE of standardized masked entries) per epoch.
    """
    n_features = X.shape[1]
    index = _group_index(groups, n_features)
    config = dict(dim=int(dim), depth=int(depth), heads=int(heads))
    generator = torch.Generator().manual_seed(int(seed))
    model = MaskedAutoencoder(
        torch.as_tensor(index),
        torch.as_tensor(np.asarray(allowed, dtype=bool)),
        torch.as_tensor(mean, dtype=torch.float32),
        torch.as_tensor(scale, dtype=torch.float32),
        **config,
    )
    model.reset_parameters(generator)
    model.to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    data = torch.tensor(X, dtype=torch.float32, device=device)  # a copy: X may be read-only
    n_samples = data.shape[0]
    low, high = mask_ratio
    loss_curve = []
    for epoch in range(epochs):
        start = time.perf_counter()
        order = torch.randperm(n_samples, generator=generator).to(device)
        total, weight_total = 0.0, 0.0
        for first in range(0, n_samples, batch_size):
            tokens, observed = model.tokens(data[order[first : first + batch_size]])  # (B, T, P) each
            group_observed = (observed | ~model.real).all(dim=2)  # (B, T)
            ratio = low + (high - low) * float(torch.rand((), generator=generator))
            keep, masked = _masking(group_observed, ratio, generator)
            keep, masked = keep.to(device), masked.to(device)
            prediction = model.reconstruct(model.encode(tokens, group_observed, keep), keep)  # (B, T, P)
            weight = (masked[:, :, None] & observed).to(tokens.dtype)  # masked groups' observed entries
            n_terms = weight.sum()
            if float(n_terms) == 0.0:
                continue
            loss = ((prediction - tokens) ** 2 * weight).sum() / n_terms
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * float(n_terms)
            weight_total += float(n_terms)
        loss_curve.append(total / weight_total if weight_total else float("nan"))
        if on_epoch is not None:
            on_epoch(epoch + 1, loss_curve[-1], time.perf_counter() - start)
    state_dict = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    return config, state_dict, loss_curve


def _group_index(groups, n_features):
    """(T, P) int64 feature index of each token entry; padding points at column n_features."""
    width = max(len(g) for g in groups)
    index = np.full((len(groups), width), n_features, dtype=np.int64)
    for t, g in enumerate(groups):
        index[t, : len(g)] = g
    return index


# ----------------------------------------------------------------------
# Inference


@torch.no_grad()
def mae_embed(model, X, device):
    """Group embeddings of raw rows.

    Parameters
    ----------
    model : MaskedAutoencoder (from :func:`build_mae`)
    X : ndarray of shape (n_samples, n_features), NaN = missing
    device : torch.device

    Returns
    -------
    ndarray of shape (n_samples, T, D), float32
    """
    out = []
    for first in range(0, X.shape[0], INFERENCE_CHUNK):
        rows = torch.tensor(X[first : first + INFERENCE_CHUNK], dtype=torch.float32, device=device)
        out.append(model(rows).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,) + tuple(model.position.shape), dtype=np.float32)


def is_torch_module(obj):
    """True for a ``torch.nn.Module`` (so that callers need not import torch)."""
    return isinstance(obj, nn.Module)


@torch.no_grad()
def module_embed(module, X):
    """Output of a user's ``torch.nn.Module`` on rows X (N, n_features) float32.

    The rows go to the device of the module's first parameter (or buffer;
    the CPU if it has neither); the module runs under ``torch.no_grad()`` in
    its current mode (call ``.eval()`` first if it has dropout). Returns a
    float32 numpy array of whatever shape the module gives.
    """
    tensors = list(module.parameters()) or list(module.buffers())
    device = tensors[0].device if tensors else torch.device("cpu")
    out = module(torch.tensor(X, dtype=torch.float32, device=device))
    if not isinstance(out, torch.Tensor):
        raise ValueError(
            f"The embedder module returned {type(out).__name__}, not a tensor; it must map a (N, n_features) "
            "float32 tensor to a (N, n_groups, d) tensor."
        )
    return out.detach().to(torch.float32).cpu().numpy()
