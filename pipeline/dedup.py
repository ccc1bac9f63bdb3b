"""Near-duplicate removal with MinHash + LSH (datasketch) over word 5-shingles.

A document is a near-duplicate of an earlier one when their estimated Jaccard similarity of
shingle sets reaches ``threshold``; it keeps its row in docs.parquet with ``dup_of`` set to the
earliest such doc_id and is left out of embedding and clustering.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
from datasketch import MinHash, MinHashLSH

_WORD = re.compile(r"\w+", re.UNICODE)


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8     # Jaccard similarity at which two docs count as near-duplicates
    num_perm: int = 128        # MinHash permutations
    shingle: int = 5           # words per shingle
    seed: int = 1              # MinHash permutation seed


def shingles(text: str, k: int) -> set[bytes]:
    """The set of k-word shingles of ``text`` (lower-cased words); short texts give one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)}


def near_duplicates(texts: list[str], cfg: DedupConfig = DedupConfig(), progress=None) -> np.ndarray:
    """dup_of for each text: -1 when kept, else the index of the earliest near-duplicate kept.

    texts: n documents in corpus order. Returns int64 (n,). Deterministic for a given cfg.
    """
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    dup_of = np.full(len(texts), -1, dtype=np.int64)
    hashes = MinHash.bulk([list(shingles(t, cfg.shingle)) for t in texts], num_perm=cfg.num_perm, seed=cfg.seed)
    for i, m in enumerate(hashes):
        # LSH returns candidates; confirm with the MinHash estimate to cut false positives.
        hits = [j for j in lsh.query(m) if hashes[j].jaccard(m) >= cfg.threshold]
        if hits:
            dup_of[i] = min(hits)
        else:
            lsh.insert(i, m)
        if progress is not None:
            progress(1)
    return dup_of
