"""Stage 1d: what each domain is — sizes, exemplars and top terms (clusters/<name>/domains.parquet).

One row per domain per level: level, domain, parent, n_docs, n_tokens, exemplars (the doc_ids
of the documents closest to the centroid), exemplar_texts (their first ~200 characters) and
top_terms (class-based TF-IDF, "c-TF-IDF", of the domain's texts against the other domains of
the same level). :class:`DomainStats` collects everything in the assignment pass, shard by
shard, in bounded memory: the top-k exemplars per domain, and a stratified sample of at most
``max(text_docs, n_leaves)`` documents (up to ``text_docs // n_leaves`` per leaf, at least one)
whose texts are read back for the terms. Counts of a coarser domain are the size-weighted sum
of its leaves' counts, so its terms estimate the whole domain's, not just the sample's.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from dgamix.pipeline.core.progress import progress_bar
from dgamix.pipeline.core.sources import DocTexts
from dgamix.pipeline.kmeans import Tree

EXEMPLARS = 3
SNIPPET_CHARS = 200
TERMS = 8
TERM_CHARS = 2000          # characters of each sampled document that count towards its terms
VOCAB_DOCS = 20_000        # documents that define the vocabulary
VOCAB_SIZE = 20_000        # most frequent terms kept
READ_DOCS = 10_000         # texts read (and held) at a time


class TopK:
    """Per key, keep the ``k`` entries with the smallest score (ties: smallest id), streaming."""

    def __init__(self, k: int):
        self.k = int(k)
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self._kept = 0
        self._buffered = 0

    def add(self, keys: np.ndarray, scores: np.ndarray, ids: np.ndarray) -> None:
        self._parts.append((np.asarray(keys, np.int64), np.asarray(scores, np.float64), np.asarray(ids, np.int64)))
        self._buffered += len(keys)
        if self._buffered > max(2 * self._kept, 1 << 16):
            self._prune()

    def _prune(self) -> None:
        if not self._parts:
            return
        keys, scores, ids = (np.concatenate(c) for c in zip(*self._parts))
        order = np.lexsort((ids, scores, keys))
        keys, scores, ids = keys[order], scores[order], ids[order]
        first = np.searchsorted(keys, keys, "left")
        keep = np.arange(len(keys)) - first < self.k
        self._parts = [(keys[keep], scores[keep], ids[keep])]
        self._kept = self._buffered = int(keep.sum())

    def result(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(keys, scores, ids) sorted by key, then score, then id."""
        self._prune()
        if not self._parts:
            e = np.zeros(0, np.int64)
            return e, e.astype(np.float64), e
        return self._parts[0]


def _hash_priority(ids: np.ndarray, seed: int) -> np.ndarray:
    """A seeded pseudo-random uint64 per id (splitmix64), independent of shard layout."""
    z = np.asarray(ids, np.uint64) + np.uint64((int(seed) * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % (1 << 64))
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class DomainStats:
    """Collects tokens, exemplars and the text sample over the assignment pass (call per shard)."""

    def __init__(self, tree: Tree, n_tokens: np.ndarray, seed: int = 0, text_docs: int = 50_000):
        self.tree = tree
        self.n_tokens = np.asarray(n_tokens, np.int64)  # indexed by doc_id
        self.seed = seed
        self.tokens = [np.zeros(len(d), np.float64) for d in tree.domain]
        self.exemplars = [TopK(EXEMPLARS) for _ in tree.domain]
        self.per_leaf = max(1, int(text_docs) // max(1, len(tree.domain[-1])))
        self.sample = TopK(self.per_leaf)

    def __call__(self, doc_ids: np.ndarray, labels: np.ndarray, sims: np.ndarray) -> None:
        tok = self.n_tokens[doc_ids].astype(np.float64)
        for i in range(self.tree.depth):
            pos = self.tree.index_of(i + 1, labels[:, i])
            self.tokens[i] += np.bincount(pos, weights=tok, minlength=len(self.tokens[i]))
            self.exemplars[i].add(pos, -sims[:, i].astype(np.float64), doc_ids)
        leaf = self.tree.index_of(self.tree.depth, labels[:, -1])
        self.sample.add(leaf, _hash_priority(doc_ids, self.seed).astype(np.float64), doc_ids)


def _snippet(text: str) -> str:
    return " ".join(text[:SNIPPET_CHARS * 4].split())[:SNIPPET_CHARS]


def _list_column(keys: np.ndarray, values: pa.Array, n_rows: int) -> pa.ListArray:
    offsets = np.searchsorted(keys, np.arange(n_rows + 1), "left").astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), values)


def top_terms(read: Callable[[np.ndarray], list[str]], doc_ids: np.ndarray, leaf_pos: np.ndarray,
              leaf_weight: np.ndarray, tree: Tree, n_terms: int = TERMS, quiet: bool = True) -> list[list[list[str]]]:
    """c-TF-IDF top terms per domain per level: result[level-1][row in tree.domain[level-1]].

    Document ``doc_ids[i]`` belongs to the leaf at row ``leaf_pos[i]``; ``read(ids)`` returns the
    texts of ``ids`` (in that order). ``leaf_weight[row]`` scales the leaf's counts when they are
    summed into coarser domains (size / documents sampled). Texts are read and counted READ_DOCS at
    a time, in doc-id order (sequential reads); the counts are sums of integers, so they do not
    depend on that order.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import CountVectorizer

    empty = [[[] for _ in d] for d in tree.domain]
    if not len(doc_ids):
        return empty
    vec = CountVectorizer(stop_words="english", token_pattern=r"(?u)\b[^\W\d_][^\W\d_]+\b",
                          max_features=VOCAB_SIZE, dtype=np.float64)
    # the vocabulary: an even stride over the sample, which is ordered by leaf (fit sorts its terms, so the
    # order the texts are read in does not matter)
    try:
        vec.fit(read(np.sort(doc_ids[::-(-len(doc_ids) // VOCAB_DOCS)])))
    except ValueError:  # only stop words / no letters: no terms to show
        return empty
    vocab = np.asarray(vec.get_feature_names_out())
    n_leaf = len(tree.domain[-1])
    leaf_counts = sp.csr_matrix((n_leaf, len(vocab)))
    order = np.argsort(doc_ids, kind="stable")
    with progress_bar("count terms", len(order), quiet, unit="docs") as tick:
        for a in range(0, len(order), READ_DOCS):
            take = order[a:a + READ_DOCS]
            x = vec.transform(read(doc_ids[take]))
            rows = leaf_pos[take]
            s = sp.csr_matrix((np.ones(len(rows)), (rows, np.arange(len(rows)))), shape=(n_leaf, len(rows)))
            leaf_counts = leaf_counts + s @ x
            tick(len(take))
    out = []
    below = 1
    for level in range(tree.depth, 0, -1):
        if level == tree.depth:
            counts = leaf_counts
        else:
            below *= tree.levels[level]
            anc = tree.index_of(level, tree.domain[-1] // below)
            a = sp.csr_matrix((leaf_weight, (anc, np.arange(n_leaf))), shape=(len(tree.domain[level - 1]), n_leaf))
            counts = (a @ leaf_counts).tocsr()
        row_sum = np.asarray(counts.sum(axis=1)).ravel()
        term_freq = np.asarray(counts.sum(axis=0)).ravel()
        avg = row_sum[row_sum > 0].mean() if (row_sum > 0).any() else 1.0
        idf = np.log1p(avg / np.maximum(term_freq, 1e-12))
        tf = sp.diags(1.0 / np.maximum(row_sum, 1e-12)) @ counts
        score = (tf @ sp.diags(idf)).tocsr()
        level_terms = []
        for r in range(score.shape[0]):
            lo, hi = score.indptr[r], score.indptr[r + 1]
            if hi == lo:
                level_terms.append([])
                continue
            data, idx = score.data[lo:hi], score.indices[lo:hi]
            top = np.lexsort((idx, -data))[:n_terms]  # ties: alphabetical (vocabulary order)
            level_terms.append([str(t) for t in vocab[idx[top]]])
        out.append(level_terms)
    return out[::-1]


def build_domains(tree: Tree, sizes: list[np.ndarray], stats: DomainStats, texts: DocTexts,
                  quiet: bool = True) -> pa.Table:
    """The domains table (see module doc). ``texts``: the workspace's texts by doc id.

    Holds the snippets of the exemplars (SNIPPET_CHARS each) and READ_DOCS texts at a time, never
    the whole text sample: at 262,144 leaves that sample is about a million documents."""

    def read(ids: np.ndarray) -> list[str]:  # cut to TERM_CHARS: the characters that count towards terms
        return [t[:TERM_CHARS] if t else "" for t in texts[ids]]

    ex = [e.result() for e in stats.exemplars]
    leaf_keys, _, sample_ids = stats.sample.result()
    snippet: dict[int, str] = {}
    need = np.unique(np.concatenate([e[2] for e in ex])) if ex else np.zeros(0, np.int64)
    with progress_bar("read exemplars", len(need), quiet, unit="docs") as tick:
        for a in range(0, len(need), READ_DOCS):
            chunk = need[a:a + READ_DOCS]
            snippet.update((int(i), _snippet(t)) for i, t in zip(chunk, read(chunk)))
            tick(len(chunk))
    n_sampled = np.bincount(leaf_keys, minlength=len(tree.domain[-1]))
    weight = sizes[-1] / np.maximum(n_sampled, 1)
    terms = top_terms(read, sample_ids, leaf_keys, weight, tree, quiet=quiet)
    tables = []
    for i in range(tree.depth):
        m = len(tree.domain[i])
        keys, _, ids = ex[i]
        snippets = pa.array([snippet[int(d)] for d in ids], pa.string())
        tables.append(pa.table({
            "level": pa.array(np.full(m, i + 1, np.int32)),
            "domain": pa.array(tree.domain[i], pa.int64()),
            "parent": pa.array(tree.parent[i], pa.int64()),
            "n_docs": pa.array(sizes[i], pa.int64()),
            "n_tokens": pa.array(np.rint(stats.tokens[i]).astype(np.int64), pa.int64()),
            "exemplars": _list_column(keys, pa.array(ids, pa.int64()), m),
            "exemplar_texts": _list_column(keys, snippets, m),
            "top_terms": pa.array(terms[i], pa.list_(pa.string())),
        }))
    return pa.concat_tables(tables)

