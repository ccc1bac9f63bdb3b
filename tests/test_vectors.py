"""Your own vectors: `dgamix embed --vectors` and `dgamix target --vectors` (no MiniLM encoding)."""
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace
from tests.helpers import DATA, cli_ok, one_line_error, run_cli

DIM = 16


def write_vectors(path, ids, x, fixed: bool = True, dtype=pa.float32()):
    flat = pa.array(np.asarray(x, np.float32).ravel(), pa.float32()).cast(dtype)
    col = pa.FixedSizeListArray.from_arrays(flat, x.shape[1]) if fixed else \
        pa.ListArray.from_arrays(pa.array(np.arange(0, x.size + 1, x.shape[1]), pa.int32()), flat)
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "vector": col}), path)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """60 Wikipedia summaries and 20 GSM8K problems with random vectors around two centres (not unit norm)."""
    root = tmp_path_factory.mktemp("vec")
    wiki = pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(60, seed=1)
    wiki.write_parquet(root / "corpus.parquet")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, DIM))
    x = 3 * (centres[np.arange(60) % 2] + 0.1 * rng.normal(size=(60, DIM)))
    gsm = pl.read_parquet(DATA / "targets" / "gsm8k.parquet").head(20)
    gsm.write_parquet(root / "target.parquet")
    t = centres[np.arange(20) % 2] + 0.1 * rng.normal(size=(20, DIM))
    return {"root": root, "ids": wiki["id"].to_list(), "x": x, "tids": gsm["id"].cast(pl.Utf8).to_list(), "t": t}


def test_embed_with_vectors_then_cluster_and_target(corpus, tmp_path):
    root, ids, x = corpus["root"], corpus["ids"], corpus["x"]
    # the rows in another order, float16, plus vectors of ids the corpus does not have (ignored)
    order = np.random.default_rng(1).permutation(60)
    extra = np.ones((2, DIM))
    v = write_vectors(tmp_path / "v.parquet", [ids[i] for i in order] + ["zz1", "zz2"],
                      np.concatenate([x[order], extra]), fixed=False, dtype=pa.float16())
    ws = tmp_path / "ws"
    out = cli_ok("embed", root / "corpus.parquet", "--workspace", ws, "--vectors", v, "--vectors-encoder", "toy",
                 "--shard-size", 25, "-q")
    assert "60 of 62 rows" in out and "60 were not of unit norm" in out and "L2-normalises" in out
    w = Workspace(ws)
    e = pl.read_parquet(w.embeddings_dir / "*.parquet").sort("doc_id")
    got = np.asarray(e["embedding"].to_list(), np.float32)
    docs = pl.read_parquet(w.docs)
    want = x[[ids.index(i) for i in docs["id"].to_list()]]
    want = want / np.linalg.norm(want, axis=1, keepdims=True)
    kept = docs["dup_of"].is_null().to_numpy()
    assert e["doc_id"].to_list() == np.flatnonzero(kept).tolist()
    assert np.abs(got - want[kept]).max() < 2e-3                    # float16 input: 3 decimal digits
    assert (docs["n_tokens"] > 0).all()                              # the tokenizer still counts
    params = manifest.read_meta(w.embeddings, "embeddings")["params"]
    assert params["vectors"]["encoder"] == "toy" and params["dim"] == DIM and params["precision"] == "vectors"
    # a rerun resumes (nothing rewritten); the stage's fingerprint holds
    again = cli_ok("embed", root / "corpus.parquet", "--workspace", ws, "--vectors", v, "--vectors-encoder", "toy",
                   "--shard-size", 25)
    assert "shards_skipped  : 3" in again or "shards_skipped : 3" in again.replace("  ", " ")
    # downstream unchanged: cluster, target (with the same encoder's vectors)
    cli_ok("cluster", "--workspace", ws, "--levels", "2", "--name", "k2", "-q")
    tv = write_vectors(tmp_path / "tv.parquet", corpus["tids"], corpus["t"])
    out = cli_ok("target", root / "target.parquet", "--workspace", ws, "--name", "t", "--vectors", tv,
                 "--vectors-encoder", "toy")
    assert "examples" in out and "20 of 20 rows" in out
    from dgamix.pipeline.target import target_assignments

    a = target_assignments(w, "t", "k2")
    assert a.num_rows == 20
    # the two centres: the examples split as the corpus does (level 1 of 2 domains)
    lab = np.asarray(a["level_1"])
    assert len(set(lab[::2])) == 1 and len(set(lab[1::2])) == 1 and lab[0] != lab[1]

    # a target of another encoder name, of another dimension, or without vectors: one line each
    one_line_error(run_cli("target", root / "target.parquet", "--workspace", ws, "--name", "t2", "--vectors", tv),
                   "'user vectors'", "'toy'")
    tv8 = write_vectors(tmp_path / "tv8.parquet", corpus["tids"], corpus["t"][:, :8])
    one_line_error(run_cli("target", root / "target.parquet", "--workspace", ws, "--name", "t2", "--vectors", tv8,
                           "--vectors-encoder", "toy"), "(8-d)", f"({DIM}-d)")
    one_line_error(run_cli("target", root / "target.parquet", "--workspace", ws, "--name", "t2"),
                   "--vectors", "your vectors 'toy'")
    assert not (w.target_dir("t2")).exists()


def _refused(tmp_path, corpus, v, *needles):
    return one_line_error(run_cli("embed", corpus["root"] / "corpus.parquet", "--workspace", tmp_path / "bad",
                                  "--vectors", v, "-q"), *needles)


def test_bad_vectors_are_one_line_each(corpus, tmp_path):
    ids, x = corpus["ids"], corpus["x"]
    # variable-size lists of two dimensions
    col = pa.array([list(map(float, r)) for r in x[:59]] + [[1.0] * (DIM - 1)], pa.list_(pa.float32()))
    pq.write_table(pa.table({"id": ids, "vector": col}), tmp_path / "dim.parquet")
    _refused(tmp_path, corpus, tmp_path / "dim.parquet", "1 vectors have 15 values where the first vector has 16",
             repr(ids[59]))
    _refused(tmp_path, corpus, write_vectors(tmp_path / "miss.parquet", ids[3:], x[3:]),
             "3 of the 60 documents have no vector", repr(ids[0]))
    _refused(tmp_path, corpus, write_vectors(tmp_path / "dup.parquet", ids + ids[:2], np.concatenate([x, x[:2]])),
             "2 ids have more than one vector", repr(ids[0]))
    nan = x.copy()
    nan[[5, 9], 3] = np.nan
    _refused(tmp_path, corpus, write_vectors(tmp_path / "nan.parquet", ids, nan), "2 vectors have values that are "
             "not finite", repr(ids[5]))
    zero = x.copy()
    zero[7] = 0
    _refused(tmp_path, corpus, write_vectors(tmp_path / "zero.parquet", ids, zero), "all-zero", repr(ids[7]))
    pq.write_table(pa.table({"id": ids, "vector": pa.array([[1, 2]] * 60, pa.list_(pa.int64()))}),
                   tmp_path / "ints.parquet")
    _refused(tmp_path, corpus, tmp_path / "ints.parquet", "not a list of floats")
    pq.write_table(pa.table({"doc": ids, "vector": pa.array([[1.0, 2.0]] * 60)}), tmp_path / "noid.parquet")
    _refused(tmp_path, corpus, tmp_path / "noid.parquet", "no column 'id'")
    assert not (tmp_path / "bad" / "embeddings.parquet").exists()


def test_a_minilm_workspace_refuses_target_vectors(corpus, tmp_path):
    """A workspace dgamix embedded with MiniLM (here: its manifests as `dgamix embed` writes them)
    refuses a target's --vectors: dgamix embeds the target with the same model instead."""
    from tests.helpers import fake_workspace

    ws = fake_workspace(tmp_path / "ws", np.eye(4, DIM, dtype=np.float32).repeat(5, 0))
    table, meta = manifest.read(ws.embeddings, "embeddings")
    manifest.write(ws.embeddings, table, "embeddings", {**meta["params"], "model": "all-MiniLM-L6-v2"}, meta["inputs"])
    tv = write_vectors(tmp_path / "tv.parquet", corpus["tids"], corpus["t"])
    one_line_error(run_cli("target", corpus["root"] / "target.parquet", "--workspace", ws.root, "--name", "t",
                           "--vectors", tv), "leave --vectors out")


def test_row_file_writes_scattered_rows_and_reads_any_rows_back(tmp_path):
    """The embed stage's scratch matrix: rows written in any order (runs and single rows), read back
    exactly, without holding the matrix in memory."""
    from dgamix.pipeline.vectors import RowFile

    rng = np.random.default_rng(0)
    want = rng.standard_normal((1000, 7)).astype(np.float32)
    m = RowFile(tmp_path / "m.f32", 1000, 7)
    order = np.r_[np.arange(500, 1000), rng.permutation(500)]  # a run, then scattered rows
    for part in np.array_split(order, 9):
        m[part] = want[part]
    ids = np.array([3, 999, 0, 500, 3, 41])
    assert np.array_equal(m[ids], want[ids]) and np.array_equal(m[np.arange(1000)], want)
    assert m[np.zeros(0, np.int64)].shape == (0, 7)
    m.close()
    assert (tmp_path / "m.f32").stat().st_size == 1000 * 7 * 4


def test_reading_vectors_keeps_one_batch_not_the_file(tmp_path):
    """VectorFile streams the file: after reading every vector, Arrow holds about nothing of it (a
    pre-buffering reader kept the bytes of every row group read until the file was closed)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgamix.pipeline.vectors import RowFile, VectorFile

    n, dim = 40_000, 64
    x = np.random.default_rng(1).standard_normal((n, dim)).astype(np.float32)
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(n)],
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), dim)}),
                   tmp_path / "v.parquet", row_group_size=10_000, compression="none")
    vf = VectorFile(tmp_path / "v.parquet", "id")
    rows = vf.match(vf.ids())
    before = pa.total_allocated_bytes()
    m = RowFile(tmp_path / "m.f32", n, dim)
    assert vf.scatter(rows, m) > 0 and np.allclose(m[np.array([0, n - 1])], x[[0, n - 1]] / np.linalg.norm(
        x[[0, n - 1]], axis=1, keepdims=True), atol=1e-6)
    assert pa.total_allocated_bytes() - before < x.nbytes // 4, (pa.total_allocated_bytes() - before, x.nbytes)
    m.close()
