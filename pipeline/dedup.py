"""Near-duplicate removal with MinHash + LSH over word 5-shingles, signatures vectorised with numpy.

A document is a near-duplicate of an earlier one when their estimated Jaccard similarity of
shingle sets reaches ``threshold``; it keeps its row in docs.parquet with ``dup_of`` set to the
earliest such doc_id and is left out of embedding and clustering.

Signatures: each shingle is hashed to 32 bits by :func:`shingle_hash` (a polynomial hash of its
characters), then permuted as datasketch's MinHash does (scheme ``affine32``: MurmurHash3's 32-bit
finaliser, then ``a * h + b`` modulo 2**32 with datasketch's ``a``, ``b`` for the seed).
:func:`signatures` computes them for batches of documents with numpy (no Python loop per word or
shingle), equal to ``datasketch.MinHash(num_perm, seed=seed, hashfunc=shingle_hash)`` updated with
the shingles; candidates are found with LSH bands as datasketch's ``MinHashLSH`` chooses them.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dgamix.pipeline.core import files
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.sources import TextRefs

_WORD = re.compile(r"\w+", re.UNICODE)

# the shingle hash and permutation scheme, recorded with the dedup params (DedupConfig.hash) so that
# signatures of another hash are never taken for these
HASH = "poly64-fmix64-hi32/affine32"


@dataclass(frozen=True)
class DedupConfig:
    threshold: float = 0.8     # Jaccard similarity at which two docs count as near-duplicates
    num_perm: int = 128        # MinHash permutations
    shingle: int = 5           # words per shingle
    seed: int = 1              # MinHash permutation seed
    hash: str = HASH           # shingle hash and permutation scheme of the signatures (the only one known)


def shingles(text: str, k: int) -> set[bytes]:
    """The set of k-word shingles of ``text`` (lower-cased words); short texts give one shingle."""
    words = _WORD.findall(text.lower())
    if len(words) <= k:
        return {" ".join(words).encode()}
    return {" ".join(words[i:i + k]).encode() for i in range(len(words) - k + 1)}


# --------------------------------------------------------------------------- the shingle hash

_M64 = (1 << 64) - 1
_P = 0x9E3779B97F4A7C15          # polynomial base; odd, so invertible modulo 2**64
_P_INV = pow(_P, -1, 1 << 64)
_FMIX64 = (0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53)  # MurmurHash3's 64-bit finaliser
_FMIX32 = (0x85EBCA6B, 0xC2B2AE35)                  # and its 32-bit one (datasketch's affine32 pre-mix)
_SPACE = 0x20


def shingle_hash(shingle: bytes) -> int:
    """The 32-bit hash of one shingle (UTF-8 bytes, as :func:`shingles` gives them): over its code
    points c_0..c_{m-1}, the polynomial sum(c_i * P**i) modulo 2**64, plus m, through MurmurHash3's
    64-bit finaliser, the high 32 bits. A plain function (:func:`signatures` is checked against it);
    the same in every process and on every machine."""
    h, p = 0, 1
    text = shingle.decode()
    for ch in text:
        h = (h + ord(ch) * p) & _M64
        p = p * _P & _M64
    h = (h + len(text)) & _M64
    h ^= h >> 33
    h = h * _FMIX64[0] & _M64
    h ^= h >> 33
    h = h * _FMIX64[1] & _M64
    h ^= h >> 33
    return h >> 32


def _fmix64_hi32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint64(33))
    h *= np.uint64(_FMIX64[0])
    h ^= h >> np.uint64(33)
    h *= np.uint64(_FMIX64[1])
    h ^= h >> np.uint64(33)
    return (h >> np.uint64(32)).astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    h = h ^ (h >> np.uint32(16))
    h *= np.uint32(_FMIX32[0])
    h ^= h >> np.uint32(13)
    h *= np.uint32(_FMIX32[1])
    return h ^ (h >> np.uint32(16))


@functools.cache
def _word_chars() -> np.ndarray:
    """bool (0x110000,): whether each code point is a word character of ``_WORD`` (Python's own
    Unicode ``\\w``, asked of every code point once per process: a constant table of 1.1 MB)."""
    every = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    marked = re.sub(r"\w", "\x01", every)
    word = np.frombuffer(marked.encode("utf-32-le", "surrogatepass"), np.uint32) == 1
    word[1] = _WORD.fullmatch("\x01") is not None
    return word


_BLOCK = 10  # powers are base**(q << _BLOCK) * base**r, from two small tables


def _power_tables(base: int, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(high, low): base**(q << _BLOCK) for q <= top >> _BLOCK, and base**r for r < 1 << _BLOCK, mod 2**64."""
    low = np.full(1 << _BLOCK, base, np.uint64)
    low[0] = 1
    np.cumprod(low, out=low)
    high = np.full((top >> _BLOCK) + 1, pow(base, 1 << _BLOCK, 1 << 64), np.uint64)
    high[0] = 1
    np.cumprod(high, out=high)
    return high, low


def _powers(base: int, exponents: np.ndarray) -> np.ndarray:
    """base ** exponents modulo 2**64 (uint64) for non-negative int64 exponents."""
    high, low = _power_tables(base, int(exponents.max()) if exponents.size else 0)
    return high[exponents >> _BLOCK] * low[exponents & ((1 << _BLOCK) - 1)]


def _power_range(base: int, n: int) -> np.ndarray:
    """base ** arange(n) modulo 2**64 (uint64)."""
    high, low = _power_tables(base, n)
    return np.multiply.outer(high, low).ravel()[:n]


def permutations(cfg: DedupConfig) -> np.ndarray:
    """(2, num_perm) uint32: datasketch's affine32 permutation parameters (a odd, b) for cfg.seed
    (numpy's RandomState stream, the same everywhere)."""
    gen = np.random.RandomState(cfg.seed)
    a = gen.randint(0, 1 << 31, cfg.num_perm, dtype=np.uint32) * np.uint32(2) + np.uint32(1)
    b = gen.randint(0, 1 << 32, cfg.num_perm, dtype=np.uint32)
    return np.array([a, b])


BATCH_CHARS = 1 << 19   # characters of text hashed at once (memory: ~40 bytes per character)
CHUNK = 1 << 20         # shingle x permutation values computed at once (4 bytes each)


def signatures(texts: list[str], cfg: DedupConfig = DedupConfig()) -> np.ndarray:
    """The MinHash signatures of ``texts``, (n, num_perm) uint32: row i equals the hash values of
    ``datasketch.MinHash(cfg.num_perm, seed=cfg.seed, hashfunc=shingle_hash)`` updated with
    ``shingles(texts[i], cfg.shingle)``. Texts are hashed in batches of about ``BATCH_CHARS``
    characters (one longer text alone), so memory is bounded by the longest text, not by n."""
    if cfg.hash != HASH:
        raise DgamixError(f"unknown near-duplicate hash {cfg.hash!r}: this version computes {HASH!r}.")
    if cfg.shingle < 1 or cfg.num_perm < 1:
        raise DgamixError("the shingle size and num_perm must be positive integers.")
    n = len(texts)
    sig = np.full((n, cfg.num_perm), np.iinfo(np.uint32).max, np.uint32)
    if not n:
        return sig
    perm, word = permutations(cfg), _word_chars()
    ends = np.cumsum(np.fromiter(map(len, texts), np.int64, n))
    i = 0
    while i < n:  # the batch: texts up to BATCH_CHARS characters past texts[i]'s start, at least one
        j = max(i + 1, int(np.searchsorted(ends, (ends[i - 1] if i else 0) + BATCH_CHARS, side="right")))
        _batch(texts[i:j], cfg.shingle, perm, word, sig[i:j])
        i = j
    return sig


def _batch(texts: list[str], k: int, perm: np.ndarray, word: np.ndarray, out: np.ndarray) -> None:
    """Signatures of ``texts`` into ``out`` (their rows, initialised to the maximum)."""
    n = len(texts)
    lower = list(map(str.lower, texts))
    lens = np.fromiter(map(len, lower), np.int64, n)
    # the batch's code points, texts separated (and ended) by a newline, which no word contains
    cp = np.frombuffer(("\n".join(lower) + "\n").encode("utf-32-le", "surrogatepass"), np.uint32)
    w = np.take(word, cp)
    # the batch's words, in order: where w turns on and off (it ends off, on the last newline)
    edge = np.flatnonzero(np.diff(w.view(np.int8), prepend=np.int8(0)))
    wstart = edge[0::2]
    wlen = edge[1::2] - wstart
    del edge
    count = np.diff(np.searchsorted(wstart, np.r_[0, np.cumsum(lens + 1)]))  # words per text
    # each word's characters and the (non-word) character after it, made a space: the words of each
    # text joined by single spaces, as shingles() joins them (and a space after the last word)
    keep = w.copy()
    keep[1:] |= w[:-1]
    vals = cp[keep]
    del cp, keep, w
    vstart = np.cumsum(wlen + 1) - (wlen + 1)            # each word's start in vals
    vals[vstart + wlen] = _SPACE
    first = np.cumsum(count) - count
    per = np.maximum(count - k + 1, 1)                   # shingles per text (one when it has <= k words)
    owner = np.repeat(np.arange(n), per)
    g = np.arange(owner.size) - np.repeat(np.cumsum(per) - per, per) + first[owner]  # first word
    last = np.minimum(g + (k - 1), first[owner] + count[owner] - 1)                # last word
    empty = count[owner] == 0                            # a text without words: one empty shingle
    g, last = np.where(empty, 0, g), np.where(empty, 0, last)
    if wstart.size:
        s, e = vstart[g], vstart[last] + wlen[last]      # the shingle: vals[s:e]
        s[empty], e[empty] = 0, 0
    else:
        s = e = np.zeros(owner.size, np.int64)
    # polynomial hash of vals[s:e] = (C[e] - C[s]) * P**-s, C the prefix sums of vals[i] * P**i (mod 2**64)
    c = np.zeros(vals.size + 1, np.uint64)
    terms = _power_range(_P, vals.size)
    terms *= vals
    np.cumsum(terms, out=c[1:])
    del terms
    h = (c[e] - c[s]) * _powers(_P_INV, s) + (e - s).astype(np.uint64)
    del c, vals
    h = _fmix32(_fmix64_hi32(h))
    a, b = perm[0][:, None], perm[1][:, None]
    rows = max(1, CHUNK // a.size)
    buf = np.empty((a.size, min(rows, h.size)), np.uint32)  # permutations x shingles
    for r0 in range(0, h.size, rows):
        hc, oc = h[r0:r0 + rows], owner[r0:r0 + rows]
        m = buf[:, :hc.size]
        np.multiply(a, hc, out=m)
        m += b
        seg = np.flatnonzero(np.r_[True, oc[1:] != oc[:-1]])
        docs = oc[seg]
        out[docs] = np.minimum(out[docs], np.minimum.reduceat(m, seg, axis=1).T)


def near_duplicates(texts: list[str], cfg: DedupConfig = DedupConfig(), progress=None) -> np.ndarray:
    """dup_of for each text: -1 when kept, else the index of the earliest near-duplicate kept.

    texts: n documents in corpus order. Returns int64 (n,). Deterministic for a given cfg.
    """
    from datasketch import MinHash, MinHashLSH  # here: importing datasketch costs most of a second

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    dup_of = np.full(len(texts), -1, dtype=np.int64)
    perm = permutations(cfg)
    hashes = [MinHash(seed=cfg.seed, hashvalues=s, permutations=perm, scheme="affine32")
              for s in signatures(texts, cfg)]
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

def _band_digest(keys: np.ndarray) -> np.ndarray:
    """(m,) uint64 digests of (m, r) uint32 band keys: equal keys give equal digests; unequal keys
    rarely do, and callers confirm on the keys themselves."""
    h = np.zeros(keys.shape[0], np.uint64)
    for j in range(keys.shape[1]):
        h ^= keys[:, j].astype(np.uint64)
        h *= np.uint64(_FMIX64[0])
        h ^= h >> np.uint64(29)
    return h


def _signature_rows(paths: list[Path], offsets: np.ndarray, rows: np.ndarray, cols: slice, width: int) -> np.ndarray:
    """(len(rows), width) uint32: columns ``cols`` of the corpus rows ``rows`` (sorted) of the signature
    files ``paths`` (file s holds rows offsets[s]..offsets[s+1]-1), each file read whole once, only
    where it holds one of them."""
    out = np.zeros((rows.size, width), np.uint32)
    bounds = np.searchsorted(rows, offsets)
    for s_, p in enumerate(paths):
        a, b = int(bounds[s_]), int(bounds[s_ + 1])
        if b > a:
            out[a:b] = np.load(p)[rows[a:b] - offsets[s_], cols]
    return out


def lsh_shape(cfg: DedupConfig) -> tuple[int, int]:
    """(bands b, rows per band r) that datasketch's MinHashLSH uses for cfg's threshold and num_perm."""
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    return lsh.b, lsh.r


def signature_shard(texts: list[str] | TextRefs, cfg: DedupConfig, path: str) -> int:
    """Per-shard work: the MinHash signatures of ``texts`` (or of the texts ``TextRefs`` points at,
    read here: on Ray the worker reads them, not the driver), (n, num_perm) uint32, saved to
    ``path`` (.npy, written atomically; a plain function, so local and Ray engines run the same
    code). Returns n. The same values as ``near_duplicates`` computes (:func:`signatures`)."""
    if isinstance(texts, TextRefs):
        texts = texts.read()
    sig = signatures(texts, cfg)
    with files.atomic_file(path) as tmp, open(tmp, "wb") as f:
        np.save(f, sig)
    return len(texts)


def near_duplicates_sharded(shards: list[list[str] | TextRefs], cfg: DedupConfig, folder: str | Path,
                            engine=None, progress=None) -> np.ndarray:
    """``near_duplicates`` of the concatenated shards, with bounded memory and on any engine.

    1. signatures: one task per shard (``signature_shard``, local or Ray), each written to
       ``folder``/sig-NNNNN.npy on shared storage, never held by the driver all at once;
    2. buckets: band by band (datasketch's b bands of r rows), each document's band key is reduced
       to a 64-bit digest and the digests sorted; only documents that share a digest with another
       are candidates, and their full keys decide the buckets exactly (memory: ~32 bytes per
       document for the band, plus ~24 bytes per colliding document and band; every signature
       file is read whole twice per band, never memory-mapped; a shard given as texts travels to
       its task, one given as ``TextRefs`` is read there);
    3. the sequential rule of ``near_duplicates``: in corpus order, a colliding document is a
       near-duplicate of the earliest *kept* earlier document it shares a bucket with whose MinHash
       Jaccard estimate reaches the threshold (its predecessors merged in order, stopping at the
       first hit), on the colliding documents' signatures only (num_perm x 4 bytes each). The result
       equals ``near_duplicates(sum(shards, []), cfg)`` exactly.
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
        # read whole, one shard at a time, never memory-mapped: a map keeps every page it touched
        # resident, and a band's columns touch every page of the signatures
        sizes = [int(np.load(p, mmap_mode="r").shape[0]) for p in paths]  # the header only
        offsets = np.r_[0, np.cumsum(sizes)].astype(np.int64)
        n = int(offsets[-1])

        b, r = lsh_shape(cfg)
        bands = []  # per band: its colliding docs sorted by (bucket, doc), and each one's bucket start
        for k in range(b):
            cols = slice(k * r, (k + 1) * r)
            # candidates: documents whose band digest (8 bytes each) another document shares
            digest = np.concatenate([_band_digest(np.load(p)[:, cols]) for p in paths]) if n \
                else np.zeros(0, np.uint64)
            order = np.argsort(digest)  # any order among equal digests: the candidates are sorted below
            sorted_digest = digest[order]
            del digest
            same = sorted_digest[1:] == sorted_digest[:-1]
            del sorted_digest
            shared = np.zeros(n, bool)
            shared[1:] |= same
            shared[:-1] |= same
            cand = np.sort(order[shared])
            del order, shared, same
            # exact buckets among the candidates only, on their full band keys (a digest can collide)
            keys = _signature_rows(paths, offsets, cand, cols, r)
            keys = keys.view(np.dtype((np.void, keys.dtype.itemsize * r))).ravel()
            _, bucket, counts = np.unique(keys, return_inverse=True, return_counts=True)
            mine = counts[bucket] > 1
            docs, bucket = cand[mine], bucket[mine]
            order = np.lexsort((docs, bucket))
            docs, g = docs[order], bucket[order]
            start = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
            starts = np.repeat(start, np.diff(np.r_[start, docs.size]))
            bands.append((docs, starts))
        colliding = np.unique(np.concatenate([docs for docs, _ in bands])) if bands else np.zeros(0, np.int64)
        # where each colliding document sits in each band's order, -1 where it collides in no bucket
        at_band = np.full((colliding.size, len(bands)), -1, np.int64)
        for k, (docs, _) in enumerate(bands):
            at_band[np.searchsorted(colliding, docs), k] = np.arange(docs.size)
        # the colliding documents' signatures only (memory: num_perm x 4 bytes each), one read per shard
        held = _signature_rows(paths, offsets, colliding, slice(None), cfg.num_perm)

        def row(i: int) -> np.ndarray:
            return held[int(np.searchsorted(colliding, i))]

        dup_of = np.full(n, -1, dtype=np.int64)
        kept = np.ones(n, dtype=bool)
        for i, at in zip(colliding.tolist(), at_band.tolist()):
            preds = [docs[starts[p]:p] for (docs, starts), p in zip(bands, at) if p >= 0]
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
