"""Tree descent and the cluster stage's files (pipeline/assign.py, domains.py, cluster.py)."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from sklearn.metrics import adjusted_rand_score

from dgamix.pipeline.assign import assign_shard, assign_vectors
from dgamix.pipeline.cluster import cluster_workspace, list_clusterings, load_tree
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.manifest import embedding_array
from dgamix.pipeline.core.params import ClusterParams
from dgamix.pipeline.kmeans import ArraySource, FitConfig, fit_tree
from tests.helpers import fake_workspace, sphere_blobs

WORDS = ["apple", "river", "engine", "violin", "planet", "soccer", "bread", "castle"]


def _blobs_workspace(root, n=1600, k=8, d=16, shard_size=300, seed=0, dtype="float32"):
    x, labels = sphere_blobs(n, k, d=d, spread=0.08, seed=seed)
    texts = [f"{WORDS[l]} {WORDS[l]} story about some thing number {i}" for i, l in enumerate(labels)]
    return fake_workspace(root, x, texts, shard_size=shard_size, dtype=dtype), x, labels


def _assignments(ws, name):
    return pl.read_parquet(ws.assignments_dir(name)).sort("doc_id")


def _files(ws, name):
    folder = ws.clusters_dir(name)
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.parquet"))}


def test_descent_agrees_with_brute_force():
    x, _ = sphere_blobs(1500, 6, d=12, spread=0.3, seed=1)
    tree, _ = fit_tree(ArraySource(x, 400), FitConfig((5, 4, 3), max_points_per_centroid=40))
    q, _ = sphere_blobs(300, 9, d=12, spread=0.5, seed=2)  # other vectors than the fit's
    got = assign_vectors(q, tree)
    for i, v in enumerate(q):
        parent = None
        for lv in range(1, 4):
            rows = np.arange(len(tree.domain[lv - 1])) if lv == 1 else np.flatnonzero(tree.parent[lv - 1] == parent)
            sims = [float(np.dot(tree.centroids[lv - 1][r].astype(np.float64), v)) for r in rows]
            parent = tree.domain[lv - 1][rows[int(np.argmax(sims))]]
            assert got[i, lv - 1] == parent
    t = assign_shard(pa.table({"doc_id": pa.array(np.arange(300) + 7, pa.int64()),
                               "embedding": embedding_array(q, "float32")}), tree)
    assert t.column_names == ["doc_id", "level_1", "level_2", "level_3"]
    assert np.array_equal(np.stack([t[c].to_numpy() for c in t.column_names[1:]], 1), got)
    assert t["doc_id"].to_numpy()[0] == 7


def test_stage_recovers_blobs_and_nests_levels(tmp_path):
    ws, x, labels = _blobs_workspace(tmp_path)
    s = cluster_workspace(ws, ClusterParams((8, 4)), quiet=True)
    assert s["clusters"] == "k8-4" and s["docs"] == 1600 and s["shards_assigned"] == 6
    a = _assignments(ws, "k8-4")
    assert np.array_equal(a["doc_id"].to_numpy(), np.arange(1600))
    assert adjusted_rand_score(labels, a["level_1"].to_numpy()) >= 0.9
    tree_t, meta = manifest.read(ws.tree("k8-4"), "tree")
    assert tree_t.column_names == ["level", "domain", "parent", "size", "centroid"]
    assert meta["state"] == "complete" and meta["params"]["levels"] == [8, 4] and meta["embeddings"]
    assert {"seed", "niter", "max_points_per_centroid"} <= set(meta["params"])
    parent_of = {(r["level"], r["domain"]): r["parent"] for r in tree_t.select(["level", "domain", "parent"]).to_pylist()}
    for l1, l2 in zip(a["level_1"].to_list(), a["level_2"].to_list()):
        assert parent_of[(2, l2)] == l1  # every level-2 domain is a child of the level-1 domain
    # sizes in the tree equal the assignments' counts and sum to the number of embedded docs
    counts = a.group_by("level_2").len()
    size2 = dict(zip(*tree_t.filter(pa.compute.equal(tree_t["level"], 2)).select(["domain", "size"]).to_pydict().values()))
    assert dict(zip(counts["level_2"].to_list(), counts["len"].to_list())) == {k: v for k, v in size2.items() if v}
    for lv in (1, 2):
        assert sum(r["size"] for r in tree_t.to_pylist() if r["level"] == lv) == 1600


def test_domains_read_texts_a_bounded_number_at_a_time_and_do_not_depend_on_it(tmp_path, monkeypatch):
    import dgamix.pipeline.domains as domains
    from dgamix.pipeline.core.sources import DocTexts

    ws, _, _ = _blobs_workspace(tmp_path)
    cluster_workspace(ws, ClusterParams((8, 4)), quiet=True)
    whole = pl.read_parquet(ws.domains("k8-4"))
    asked = []
    real = DocTexts.__getitem__

    def recorded(self, ids):
        asked.append(len(ids))
        return real(self, ids)

    monkeypatch.setattr(DocTexts, "__getitem__", recorded)
    monkeypatch.setattr(domains, "READ_DOCS", 97)
    cluster_workspace(ws, ClusterParams((8, 4)), "again", quiet=True)  # the same seed: the same tree
    assert pl.read_parquet(ws.domains("again")).equals(whole) and whole.height == 8 + 32
    # one read of the vocabulary's documents (at most VOCAB_DOCS: here the whole sample); the others <= 97
    assert max(asked) == 1600 and sorted(asked)[-2] <= 97 and sum(asked) >= 2 * 1600


def test_domains_describe_the_clusters(tmp_path):
    ws, x, labels = _blobs_workspace(tmp_path)
    cluster_workspace(ws, ClusterParams((8, 2)), quiet=True)
    dom = pl.read_parquet(ws.domains("k8-2"))
    assert dom.columns == ["level", "domain", "parent", "n_docs", "n_tokens", "exemplars", "exemplar_texts", "top_terms"]
    a = _assignments(ws, "k8-2")
    docs = pl.read_parquet(ws.docs)
    tokens = docs["n_tokens"].to_numpy()  # fake_workspace counts words
    for lv in (1, 2):
        d = dom.filter(pl.col("level") == lv)
        assert d["n_docs"].sum() == 1600 and d["n_tokens"].sum() == tokens.sum()
        for row in d.iter_rows(named=True):
            members = set(a.filter(pl.col(f"level_{lv}") == row["domain"])["doc_id"].to_list())
            assert len(row["exemplars"]) == min(3, row["n_docs"]) and set(row["exemplars"]) <= members
            assert all(t.startswith(WORDS[labels[e]]) for t, e in zip(row["exemplar_texts"], row["exemplars"]))
            if lv == 1:  # the blob's own word leads the c-TF-IDF terms; shared words are not at the top
                assert row["top_terms"][0] == WORDS[labels[row["exemplars"][0]]]
                assert 1 <= len(row["top_terms"]) <= 8
    # exemplars are the closest to the centroid
    tree, _ = load_tree(ws, "k8-2")
    row = dom.filter(pl.col("level") == 1).row(0, named=True)
    members = a.filter(pl.col("level_1") == row["domain"])["doc_id"].to_numpy()
    sims = x[members] @ tree.centroids[0][0]
    assert set(row["exemplars"]) == set(members[np.argsort(-sims)[:3]].tolist())


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    runs = []
    for i, seed in enumerate((3, 3, 4)):
        ws, _, _ = _blobs_workspace(tmp_path / f"w{i}", n=900)
        cluster_workspace(ws, ClusterParams((4, 3), seed=seed), quiet=True)
        runs.append(_files(ws, "k4-3"))
    assert runs[0] == runs[1]  # tree.parquet, every assignment part and domains.parquet, byte for byte
    assert runs[0]["tree.parquet"] != runs[2]["tree.parquet"]


def test_resume_skips_complete_parts_and_rebuilds_a_killed_run(tmp_path, monkeypatch):
    ws, _, _ = _blobs_workspace(tmp_path / "a", n=1000, shard_size=200)
    cluster_workspace(ws, ClusterParams((4, 2)), quiet=True)
    clean = _files(ws, "k4-2")

    s = cluster_workspace(ws, ClusterParams((4, 2)), quiet=True)  # everything complete: nothing rewritten
    assert s["tree"] == "reused" and s["shards_assigned"] == 0 and s["shards_skipped"] == 5

    ws.assignment_part("k4-2", 1).unlink()
    ws.assignment_part("k4-2", 3).write_bytes(ws.assignment_part("k4-2", 3).read_bytes()[:50])  # truncated
    s = cluster_workspace(ws, ClusterParams((4, 2)), quiet=True)
    assert s["shards_assigned"] == 2 and s["shards_skipped"] == 3
    assert _files(ws, "k4-2") == clean

    # a run killed in the middle of the assignment pass
    ws2, _, _ = _blobs_workspace(tmp_path / "b", n=1000, shard_size=200)
    real_write = manifest.write
    calls = {"n": 0}

    def dying_write(path, table, kind, *a, **kw):
        if kind == "assignments-part":
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt
        return real_write(path, table, kind, *a, **kw)

    monkeypatch.setattr("dgamix.pipeline.assign.manifest.write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        cluster_workspace(ws2, ClusterParams((4, 2)), quiet=True)
    monkeypatch.undo()
    assert manifest.read_meta(ws2.tree("k4-2"))["state"] == "fitted"
    assert not ws2.domains("k4-2").exists() and len(list(ws2.assignments_dir("k4-2").glob("part-*"))) == 2
    s = cluster_workspace(ws2, ClusterParams((4, 2)), quiet=True)
    assert s["tree"] == "reused" and s["shards_assigned"] == 3 and s["shards_skipped"] == 2
    assert _files(ws2, "k4-2") == clean


def test_float16_embeddings_and_list(tmp_path):
    ws, _, labels = _blobs_workspace(tmp_path, n=800, dtype="float16")
    cluster_workspace(ws, ClusterParams((8,)), quiet=True)
    a = _assignments(ws, "k8")
    assert adjusted_rand_score(labels, a["level_1"].to_numpy()) >= 0.9
    cluster_workspace(ws, ClusterParams((2, 2)), name="coarse", quiet=True)
    found = {c["name"]: c for c in list_clusterings(ws)}
    assert found["k8"]["domains"] == [8] and found["coarse"]["levels"] == "2,2" and found["coarse"]["docs"] == 800
    assert found["coarse"]["state"] == "complete"
