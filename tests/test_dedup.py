"""Near-duplicate removal at corpus scale: the sharded, engine-run version (signatures per shard on
disk, LSH bands bucketed one at a time) gives exactly the in-memory near_duplicates' answer."""
from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from dgamix.pipeline.dedup import DedupConfig, lsh_shape, near_duplicates, near_duplicates_sharded
from tests.helpers import DATA


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
