"""Near-duplicate removal: the vectorised MinHash signatures equal datasketch's MinHash with the same
shingle hash, exactly; near-duplicates found agree with the SHA-1 MinHash dedup used before away from
the threshold; the sharded, engine-run version (signatures per shard on disk, LSH bands bucketed one
at a time) gives exactly the in-memory near_duplicates' answer."""
from __future__ import annotations

import tracemalloc
from dataclasses import asdict

import numpy as np
import polars as pl
import pytest
from datasketch import MinHash, MinHashLSH

from dgamix.pipeline import dedup
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.dedup import (
    HASH,
    DedupConfig,
    lsh_shape,
    near_duplicates,
    near_duplicates_sharded,
    permutations,
    shingle_hash,
    shingles,
    signatures,
)
from tests.helpers import DATA

VARIED = ["", "a", "one two three four", "One two three four five", "one two three four five six",
          "a b c d e a b c d e a b c d e a b c d e",                  # repeated shingles
          "  ,,, !! \n\t ", "word " * 40, "x_y 1 2.5 snake_case CamelCase",
          "Ünïcödé straße ΑΒΓ ΟΔΟΣ δ 東京 tokyo 🙂 emoji, ok",            # multi-byte, final sigma
          "İstanbul ǅemal ﬁnal",                                      # lower() changes the length
          "cafe\u0301 nai\u0308ve e\u0301te\u0301 x",                  # combining marks split words
          "line one\nline two\r\nline three\tand four\x00five\x01six", "\ud800 lone surrogate x y z w"]
CONFIGS = [DedupConfig(), DedupConfig(num_perm=64, seed=7, shingle=3), DedupConfig(num_perm=16, seed=0, shingle=1)]


@pytest.mark.parametrize("cfg", CONFIGS)
def test_signatures_equal_datasketch_minhash_with_the_python_hash(cfg):
    got = signatures(VARIED, cfg)
    assert got.shape == (len(VARIED), cfg.num_perm) and got.dtype == np.uint32
    for text, row in zip(VARIED, got):
        m = MinHash(cfg.num_perm, seed=cfg.seed, hashfunc=shingle_hash)
        m.update_batch(list(shingles(text, cfg.shingle)))
        np.testing.assert_array_equal(row, m.hashvalues, err_msg=repr(text))
    np.testing.assert_array_equal(permutations(cfg), MinHash(cfg.num_perm, seed=cfg.seed).permutations)


def test_signatures_do_not_depend_on_batches_and_order(monkeypatch):
    texts = pl.read_parquet(DATA / "wiki_vital_en.parquet")["text"].to_list()[:200] + VARIED
    want = signatures(texts)
    monkeypatch.setattr(dedup, "BATCH_CHARS", 50)   # mostly one text a batch, some split row chunks
    monkeypatch.setattr(dedup, "CHUNK", 3 * 128 + 1)
    np.testing.assert_array_equal(signatures(texts), want)
    order = np.random.default_rng(0).permutation(len(texts))
    np.testing.assert_array_equal(signatures([texts[i] for i in order]), want[order])
    assert signatures([]).shape == (0, 128)


def test_signatures_memory_is_bounded_by_the_batch(monkeypatch):
    """Peak memory grows with the output (n x num_perm x 4 bytes), not with the text hashed at once."""
    texts = pl.read_parquet(DATA / "wiki_vital_en.parquet")["text"].to_list()[:6000]
    monkeypatch.setattr(dedup, "BATCH_CHARS", 1 << 15)
    monkeypatch.setattr(dedup, "CHUNK", 1 << 16)
    signatures(texts[:10])  # the word-character table is built once, outside the measure
    tracemalloc.start()
    try:
        signatures(texts)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    out, chars = len(texts) * 128 * 4, sum(map(len, texts))
    assert chars > 40 * (1 << 15) and peak < out + 60 * (1 << 15) + 4 * (1 << 16) + (1 << 20), (peak, out, chars)


def test_the_shingle_hash_is_fixed():
    """The same values in every process and on every machine (no salted hash(), no seeded state):
    pinned, so that a change is seen (and DedupConfig.hash changed with it)."""
    assert [shingle_hash(b), shingle_hash(b"a")] == [0, 2892164412] if (b := b"") == b"" else False
    assert shingle_hash(b"the quick brown fox jumps") == 3466979581
    assert shingle_hash("straße über".encode()) == 3921147596
    assert signatures(["The quick brown fox jumps over the lazy dog."])[0][:4].tolist() == \
        [508618503, 225145827, 19182663, 11263011]
    assert asdict(DedupConfig())["hash"] == HASH  # recorded with the docs' params (embed fingerprints them)


def test_word_characters_are_pythons():
    """The vectorised tokeniser's word characters are exactly those of the \\w+ regex, every code point."""
    every = np.arange(0x110000, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    want = np.frombuffer(bytes(ch.isalnum() or ch == "_" for ch in every), np.uint8).astype(bool)
    np.testing.assert_array_equal(dedup._word_chars(), want)


def test_unknown_hash_and_bad_sizes_are_one_line():
    for cfg in (DedupConfig(hash="sha1"), DedupConfig(shingle=0), DedupConfig(num_perm=0)):
        with pytest.raises(DgamixError) as e:
            signatures(["a b c"], cfg)
        assert "\n" not in str(e.value)


def _sha1_near_duplicates(texts: list[str], cfg: DedupConfig) -> np.ndarray:
    """The near-duplicates as found before: datasketch's MinHash with its SHA-1 shingle hash, same rule."""
    lsh = MinHashLSH(threshold=cfg.threshold, num_perm=cfg.num_perm)
    hashes = MinHash.bulk([list(shingles(t, cfg.shingle)) for t in texts], num_perm=cfg.num_perm, seed=cfg.seed)
    dup_of = np.full(len(texts), -1, np.int64)
    for i, m in enumerate(hashes):
        hits = [j for j in lsh.query(m) if hashes[j].jaccard(m) >= cfg.threshold]
        if hits:
            dup_of[i] = min(hits)
        else:
            lsh.insert(i, m)
    return dup_of


def test_planted_duplicates_found_and_no_unrelated_pair():
    """Originals, then copies of some (a word dropped, exact, upper-cased): every copy whose exact
    Jaccard with its source is >= 0.95 is found, in its own family; every pair found has an exact
    Jaccard >= 0.7; and a document is marked here exactly when the SHA-1 MinHash marked it, unless
    the pair that decided it has an exact Jaccard in [0.7, 0.95), where LSH's banding (9 bands of 13
    rows at 0.8) finds a pair with a probability between ~0.1 and ~0.998, so two hash functions may
    differ."""
    cfg = DedupConfig()
    texts = pl.read_parquet(DATA / "wiki_vital_en.parquet")["text"].to_list()[:400]
    family = list(range(len(texts)))
    rng = np.random.default_rng(3)
    for i in rng.choice(400, 120, replace=False).tolist():
        w = texts[i].split()
        kind = len(family) % 3
        k = int(rng.integers(0, len(w)))
        texts.append(" ".join(w[:k] + w[k + 1:]) if kind == 0 else texts[i] if kind == 1 else texts[i].upper())
        family.append(i)
    sets = [shingles(t, cfg.shingle) for t in texts]

    def jaccard(i: int, j: int) -> float:
        return len(sets[i] & sets[j]) / len(sets[i] | sets[j])

    new, old = near_duplicates(texts, cfg), _sha1_near_duplicates(texts, cfg)
    assert (new >= 0).sum() >= 100
    for i in range(400, len(texts)):
        if jaccard(i, family[i]) >= 0.95:
            assert new[i] >= 0 and family[new[i]] == family[i], (i, new[i])
    for i in np.flatnonzero(new >= 0):
        assert new[i] < i and jaccard(i, new[i]) >= 0.7, (i, new[i], jaccard(i, new[i]))
    for i in np.flatnonzero((new >= 0) != (old >= 0)):
        j = max(new[i], old[i])
        assert 0.7 <= jaccard(i, j) < 0.95, (i, new[i], old[i], jaccard(i, j))


def planted_corpus(n: int = 600, seed: int = 0) -> list[str]:
    """Real texts plus near-duplicates (a word dropped), exact copies and copies of copies, shuffled."""
    texts = pl.read_parquet(DATA / "wiki_vital_en.parquet")["text"].to_list()[:n]
    rng = np.random.default_rng(seed)
    extra = []
    for i in rng.choice(len(texts), n // 6, replace=False):
        w = texts[i].split()
        k = int(rng.integers(0, len(w)))
        extra.append(" ".join(w[:k] + w[k + 1:]))
    extra += [texts[3]] * 4 + [extra[0]] * 3 + ["", "a", "a"]
    out = texts + extra
    rng.shuffle(out)
    return out


@pytest.mark.parametrize("shard,cfg", [(97, DedupConfig()), (1000, DedupConfig(threshold=0.7, num_perm=64)),
                                       pytest.param(1, DedupConfig(threshold=0.9, shingle=3),
                                                    marks=pytest.mark.slow)])  # one document a shard
def test_sharded_equals_in_memory_exactly(tmp_path, shard, cfg):
    texts = planted_corpus()
    want = near_duplicates(texts, cfg)
    assert (want >= 0).sum() >= 50  # many of the planted near-duplicates are found (short texts lose some)
    shards = [texts[i:i + shard] for i in range(0, len(texts), shard)]
    seen = []
    got = near_duplicates_sharded(shards, cfg, tmp_path / "sig", progress=seen.append)
    np.testing.assert_array_equal(got, want)
    assert sum(seen) == len(texts) and not list((tmp_path / "sig").iterdir())  # signatures cleaned up
    b, r = lsh_shape(cfg)
    assert b * r <= cfg.num_perm and b > 1


def test_sharded_is_exact_when_every_band_digest_collides(tmp_path, monkeypatch):
    """The 64-bit band digests only nominate candidates; the full band keys decide the buckets. With
    a digest that maps every key to one value, every document is a candidate and the result is
    still exactly ``near_duplicates``'s."""
    import dgamix.pipeline.dedup as dedup

    texts = planted_corpus()[:400]
    want = near_duplicates(texts, DedupConfig())
    assert (want >= 0).sum() >= 10
    monkeypatch.setattr(dedup, "_band_digest", lambda keys: np.zeros(keys.shape[0], np.uint64))
    got = near_duplicates_sharded([texts[i:i + 70] for i in range(0, len(texts), 70)], DedupConfig(), tmp_path / "s")
    np.testing.assert_array_equal(got, want)


def test_sharded_on_empty_and_single_shards(tmp_path):
    assert near_duplicates_sharded([], DedupConfig(), tmp_path / "a").shape == (0,)
    assert near_duplicates_sharded([["x y z"], []], DedupConfig(), tmp_path / "b").tolist() == [-1]


def test_the_earliest_kept_document_rule_on_a_chain(tmp_path):
    """A ~ B and B ~ C but A !~ C: B is a duplicate of A and is not kept, so C (compared with kept
    documents only) stays; both versions agree."""
    words = [f"w{i}" for i in range(400)]
    a = " ".join(words)
    b = " ".join(words[:360] + [f"x{i}" for i in range(40)])          # ~0.82 of A's shingles
    c = " ".join(words[:320] + [f"x{i}" for i in range(40)] + [f"y{i}" for i in range(40)])
    cfg = DedupConfig(threshold=0.7)
    want = near_duplicates([a, b, c], cfg)
    got = near_duplicates_sharded([[a], [b, c]], cfg, tmp_path / "s")
    np.testing.assert_array_equal(got, want)
    assert want[1] == 0 and want[2] == -1, want
    assert near_duplicates([b, c], cfg).tolist() == [-1, 0]  # C is B's near-duplicate when B is kept
    assert near_duplicates([a, c], cfg).tolist() == [-1, -1]  # and not A's
