"""The k-means tree (pipeline/kmeans.py): FAISS per node, bounded samples, ids, small nodes, seeds."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from dgamix.pipeline.kmeans import (
    ArraySource,
    FitConfig,
    fit_node,
    fit_tree,
    gather,
    kmeans_pp,
    node_seed,
    sample_positions,
)
from tests.helpers import sphere_blobs


def _fit(x, levels, shard_size=500, **kw):
    return fit_tree(ArraySource(x, shard_size), FitConfig(tuple(levels), **kw))


def test_level1_objective_matches_faiss_on_the_same_sample():
    x, _ = sphere_blobs(4000, 8, d=16, spread=0.2, seed=3)
    mppc = 64  # level-1 cap 8 * 64 = 512 < 4000: the fit really samples
    source = ArraySource(x, 700)
    pos, bounds = sample_positions(np.zeros(len(x), np.int64), np.zeros(1, np.int64), 8 * mppc, seed=5, level=1)
    assert bounds[-1] == 512 and len(np.unique(pos)) == 512
    sample = gather(source, pos)
    assert np.array_equal(sample, x[pos])
    km = faiss.Kmeans(16, 8, niter=20, seed=node_seed(5, 1, 0), spherical=True, max_points_per_centroid=mppc)
    km.train(sample)
    direct = float(km.obj[-1])

    _, st_random = _fit(x, [8], seed=5, max_points_per_centroid=mppc, init="random")
    assert st_random[0]["sample_points"] == 512
    assert abs(st_random[0]["objective"] - direct) <= 0.02 * direct
    _, st_pp = _fit(x, [8], seed=5, max_points_per_centroid=mppc)  # default: k-means++ seeding, FAISS iterations
    assert st_pp[0]["objective"] >= 0.98 * direct


def test_fit_node_is_pure_and_reduces_small_nodes():
    x, _ = sphere_blobs(300, 6, d=8, seed=1)
    a, sa = fit_node(x, 6, seed=11)
    b, sb = fit_node(x, 6, seed=11)
    assert a.tobytes() == b.tobytes() and sa == sb
    c, _ = fit_node(x, 6, seed=12)
    assert a.tobytes() != c.tobytes()
    assert a.shape == (6, 8) and np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert {"n", "k", "centroids", "objective", "similarity", "imbalance", "splits", "dropped"} <= set(sa)

    few, st = fit_node(x[:3], 6, seed=0)  # fewer members than centroids: as many centroids as members
    assert few.shape == (3, 8) and st["k"] == 3
    one, st = fit_node(x[:1], 6, seed=0)  # one member: a single child, the member itself
    assert one.shape == (1, 8) and np.allclose(one[0], x[0], atol=1e-6)

    dup = np.repeat(x[:1], 10, axis=0)  # identical points: empty centroids are dropped, not left dead
    cent, st = fit_node(dup, 4, seed=0)
    assert len(cent) == 1 and st["dropped"] == 3 and st["centroids"] == 1


def test_kmeans_pp_picks_distinct_spread_points():
    x, labels = sphere_blobs(800, 8, d=16, spread=0.03, seed=2)
    c = kmeans_pp(x, 8, seed=0)
    hit = {int(labels[np.argmax(x @ v)]) for v in c}
    assert len(hit) == 8  # one seed per blob


def test_tree_ids_parents_and_sizes():
    x, _ = sphere_blobs(2400, 5, d=16, spread=0.15, seed=4)
    tree, stats = _fit(x, [4, 3, 2], max_points_per_centroid=32)
    assert tree.depth == 3 and [s["level"] for s in stats] == [1, 2, 3]
    assert np.array_equal(tree.domain[0], np.arange(4)) and (tree.parent[0] == -1).all()
    for lv, b in ((2, 3), (3, 2)):
        dom, par = tree.domain[lv - 1], tree.parent[lv - 1]
        assert np.all(np.diff(dom) > 0)                      # unique, sorted
        assert np.array_equal(dom // b, par)                 # flattened path: parent * b + child
        assert set(par) == set(tree.domain[lv - 2])          # every node has at least one child
        assert dom.max() < np.prod([4, 3, 2][:lv])
    # sizes of levels above the leaves come from the streaming label passes and sum to n
    assert tree.size[0].sum() == 2400 and tree.size[1].sum() == 2400 and tree.size[2] is None
    assert stats[1]["nodes"] == 4 and stats[2]["nodes"] == len(tree.domain[1])
    for s in stats:
        assert s["empty_dropped"] >= 0 and s["splits"] >= 0 and 0 < s["mean_similarity"] <= 1
        assert s["imbalance"] >= 1.0


def test_small_nodes_get_as_many_centroids_as_members():
    x, _ = sphere_blobs(40, 4, d=8, spread=0.05, seed=6)  # ~10 members per level-1 node, branching 16
    tree, stats = _fit(x, [4, 16], shard_size=7)
    assert stats[1]["reduced_nodes"] == 4
    for p, members in zip(tree.domain[0], tree.size[0]):
        children = (tree.parent[1] == p).sum()
        assert 1 <= children <= min(16, members)
    assert len(tree.domain[1]) == 40 - stats[1]["empty_dropped"]
    labels, _ = tree.descend(x)
    assert np.array_equal(labels[:, 1] // 16, labels[:, 0])


def test_result_does_not_depend_on_sample_memory_or_shards():
    x, _ = sphere_blobs(3000, 6, d=16, seed=8)
    a, _ = _fit(x, [4, 4], shard_size=1000, max_points_per_centroid=40)
    b, st = _fit(x, [4, 4], shard_size=1000, max_points_per_centroid=40, sample_memory=1)  # one node per group
    assert st[1]["sample_groups"] == 4
    assert a.checksum() == b.checksum()
    c, _ = _fit(x, [4, 4], shard_size=1000, max_points_per_centroid=40, seed=1)
    assert c.checksum() != a.checksum()


def test_node_seed_is_deterministic_and_distinct():
    seeds = {node_seed(0, lv, node) for lv in (1, 2, 3) for node in range(50)}
    assert len(seeds) == 150 and node_seed(0, 2, 7) == node_seed(0, 2, 7)
    assert all(0 <= s < 2 ** 31 for s in seeds)


def test_unknown_init_is_a_user_error():
    from dgamix.pipeline.core.errors import DgamixError

    x, _ = sphere_blobs(50, 2, d=4)
    with pytest.raises(DgamixError, match="init"):
        fit_node(x, 3, 0, init="bogus")
