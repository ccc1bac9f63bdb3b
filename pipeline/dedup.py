"""Near-duplicate removal with MinHash + LSH (datasketch) over word 5-shingles.

A document is a near-duplicate of an earlier one when their estimated Jaccard similarity of
shingle sets reaches ``threshold``; it keeps its row in docs.parquet with ``dup_of`` set to the
earliest such doc_id and is left out of embedding and clustering.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgamix.pipeline.core import files
from dgamix.pipeline.core.sources import TextRefs

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
    from datasketch import MinHash, MinHashLSH  # here: importing datasketch costs most of a second

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


# --------------------------------------------------------------------------- at corpus scale

def lsh_shape(cfg: DedupConfig) -> tuple[int, int]:
    """(bands b, rows per band r) that datasketch's MinHashLSH uses for cfg's threshold and num_perm."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    return lsh.b, lsh.r


def signature_shard(texts: list[str] | TextRefs, cfg: DedupConfig, path: str) -> int:
    """Per-shard work: the MinHash signatures of ``texts`` (or of the texts ``TextRefs`` points at,
    read here: on Ray the worker reads them, not the driver), (n, num_perm) uint64, saved to
    ``path`` (.npy, written atomically; a plain function, so local and Ray engines run the same
    code). Returns n. The same values as ``near_duplicates`` computes (datasketch MinHash.bulk)."""
    if isinstance(texts, TextRefs):
        texts = texts.read()

    sig = np.zeros((0, cfg.num_perm), np.uint64)
    if texts:
        from datasketch import MinHash

        sig = np.stack([m.hashvalues for m in MinHash.bulk([list(shingles(t, cfg.shingle)) for t in texts],
                                                           num_perm=cfg.num_perm, seed=cfg.seed)])
    with files.atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, sig.astype(np.uint64))
    return len(texts)


def near_duplicates_sharded(shards: list[list[str] | TextRefs], cfg: DedupConfig, folder: str | Path,
                            engine=None, progress=None) -> np.ndarray:
    """``near_duplicates`` of the concatenated shards, with bounded memory and on any engine.

    1. signatures: one task per shard (``signature_shard``, local or Ray), each written to
       ``folder``/sig-NNNNN.npy on shared storage, never held by the driver all at once;
    2. buckets: band by band (datasketch's b bands of r rows), the (n, r) band keys are sorted and
       only documents that share a bucket with another are kept (memory: one band's keys, n x r x 8
       bytes, plus ~100 bytes per colliding document and band; every signature file is read once
       per band; a shard given as texts travels to its task, one given as ``TextRefs`` is read there);
    3. the sequential rule of ``near_duplicates``: in corpus order, a colliding document is a
       near-duplicate of the earliest *kept* earlier document it shares a bucket with whose MinHash
       Jaccard estimate reaches the threshold (its predecessors merged in order, stopping at the
       first hit). The result equals ``near_duplicates(sum(shards, []), cfg)`` exactly.
    Returns dup_of, int64 (n,): -1 when kept. ``folder`` is created and its signature files removed.
    """
    import heapq

    from dgamix.pipeline.engine import LOCAL, map_tasks

    folder = Path(folder).absolute()  # Ray workers do not share the driver's working folder
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"sig-{i:05d}.npy" for i in range(len(shards))]
    try:
        for n in map_tasks(signature_shard, ((s, cfg, str(p)) for s, p in zip(shards, paths)), engine or LOCAL):
            if progress is not None:
                progress(n)
        sigs = [np.load(p, mmap_mode="r") for p in paths]
        offsets = np.r_[0, np.cumsum([s.shape[0] for s in sigs])].astype(np.int64)
        n = int(offsets[-1])

        def row(i: int) -> np.ndarray:
            s = int(np.searchsorted(offsets, i, side="right")) - 1
            return sigs[s][i - offsets[s]]

        b, r = lsh_shape(cfg)
        bands = []  # per band: colliding docs sorted by (bucket, doc), each one's bucket start, doc -> position
        for k in range(b):
            keys = np.concatenate([np.ascontiguousarray(s[:, k * r:(k + 1) * r]) for s in sigs]) if n else \
                np.zeros((0, r), np.uint64)
            keys = keys.view(np.dtype((np.void, 8 * r))).ravel()
            _, bucket, counts = np.unique(keys, return_inverse=True, return_counts=True)
            docs = np.flatnonzero(counts[bucket] > 1)
            order = np.lexsort((docs, bucket[docs]))
            docs, g = docs[order], bucket[docs][order]
            start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            starts = np.repeat(start, np.diff(np.r_[start, docs.size]))
            bands.append((docs, starts, dict(zip(docs.tolist(), range(docs.size)))))
        dup_of = np.full(n, -1, dtype=np.int64)
        kept = np.ones(n, dtype=bool)
        colliding = sorted(set().union(*(band[2] for band in bands))) if bands else []
        for i in colliding:
            preds = [docs[starts[p]:p] for docs, starts, where in bands if (p := where.get(i)) is not None]
            sig_i, last = row(i), -1
            for j in heapq.merge(*preds):
                if j == last or not kept[j]:
                    continue
                last = j
                # MinHash.jaccard's own arithmetic, so the threshold compares exactly as it does there
                if np.float64(np.count_nonzero(row(j) == sig_i)) / np.float64(cfg.num_perm) >= cfg.threshold:
                    dup_of[i], kept[i] = j, False
                    break
        return dup_of
    finally:
        for p in paths:
            files.discard(p)
