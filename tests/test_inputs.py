"""Corpora as they come at scale: folders of shards, .jsonl.gz / .jsonl.zst, a saved Hugging Face
dataset. Each is embedded (with --vectors: no encoding, the test is about reading texts) and its
texts read back by (source, row) through DocTexts, as training and next_batch read them: the same
as from Parquet."""
import gzip
import json

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard

from dgamix.pipeline.core.sources import DocTexts
from dgamix.pipeline.core.textstore import read_header
from dgamix.pipeline.core.workspace import Workspace
from tests.helpers import DATA, cli_ok, one_line_error, run_cli

N = 40


@pytest.fixture(scope="module")
def rows():
    wiki = pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(N, seed=4)
    texts = wiki["text"].to_list()
    texts[5] = "   "  # skipped as empty in every format, rows keep their numbering
    texts[11] = "ünïcödé line with \u2028 a separator and a \\ backslash"
    return [{"id": f"r{i}", "text": t, "topic": top} for i, (t, top) in enumerate(zip(texts, wiki["topic"]))]


@pytest.fixture(scope="module")
def vectors(rows, tmp_path_factory):
    x = np.random.default_rng(0).normal(size=(N, 8)).astype(np.float32)
    path = tmp_path_factory.mktemp("vec") / "v.parquet"
    pq.write_table(pa.table({"id": [r["id"] for r in rows],
                             "vector": pa.FixedSizeListArray.from_arrays(pa.array(x.ravel()), 8)}), path)
    return path


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _write(kind: str, rows, folder):
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), folder / "c.parquet")
        return folder / "c.parquet"
    if kind == "gz":
        (folder / "c.jsonl.gz").write_bytes(gzip.compress(_jsonl(rows)))
        return folder / "c.jsonl.gz"
    if kind == "zst":  # two frames: a concatenation of zstd streams is one file
        half = len(rows) // 2
        c = zstandard.ZstdCompressor()
        (folder / "c.jsonl.zst").write_bytes(c.compress(_jsonl(rows[:half])) + c.compress(_jsonl(rows[half:])))
        return folder / "c.jsonl.zst"
    if kind == "hf":
        import datasets

        datasets.Dataset.from_dict({k: [r[k] for r in rows] for k in rows[0]}).save_to_disk(
            str(folder / "hf"), max_shard_size="4KB")  # several data-*.arrow files
        return folder / "hf"
    if kind == "shards":  # a folder of shards of mixed formats, read in sorted path order
        sub = folder / "shards"
        (sub / "b").mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows[:10]), sub / "a-000.parquet")
        (sub / "a-001.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(_jsonl(rows[10:25])))
        (sub / "b" / "000.jsonl.gz").write_bytes(gzip.compress(_jsonl(rows[25:])))
        (sub / "README").write_text("not a corpus file")
        return sub
    raise ValueError(kind)


def _embed(src, ws, vectors, *extra):
    return cli_ok("embed", src, "--workspace", ws, "--vectors", vectors, "--keep-columns", "topic", "--shard-size", 16,
                  *extra)


def test_every_format_gives_the_texts_parquet_gives(rows, vectors, tmp_path):
    ref_ws = tmp_path / "parquet" / "ws"
    _embed(_write("parquet", rows, tmp_path / "parquet"), ref_ws, vectors, "-q")
    ref = pl.read_parquet(Workspace(ref_ws).docs)
    want = DocTexts(Workspace(ref_ws))[list(range(ref.height))]
    assert ref.height == N - 1 and want[10] == rows[11]["text"]
    for kind in ("gz", "zst", "hf", "shards"):
        ws = tmp_path / kind / "ws"
        out = _embed(_write(kind, rows, tmp_path / kind), ws, vectors)
        docs = pl.read_parquet(Workspace(ws).docs)
        assert docs.select("id", "n_chars", "n_tokens", "topic", "dup_of").equals(
            ref.select("id", "n_chars", "n_tokens", "topic", "dup_of")), kind
        texts = DocTexts(Workspace(ws))
        assert texts[list(range(N - 1))] == want, kind
        ids = [37, 2, 30, 11, 0, 24]  # any order, across sources
        assert texts[ids] == [want[i] for i in ids], kind
        refs = texts.refs(ids)        # what an embed shard reads: every file by its rows
        assert refs.read() == [want[i] for i in ids], kind
        assert ("text_copies_mib" in out) == (kind != "hf"), (kind, out)  # Arrow files are read in place
        if kind == "shards":
            assert docs["source"].unique(maintain_order=True).to_list() == [
                "../shards/a-000.parquet", "../shards/a-001.jsonl.zst", "../shards/b/000.jsonl.gz"]
            copies = sorted(p.name for p in (ws / "texts").iterdir())  # one per Parquet / JSON Lines shard
            assert [c.split(".")[0] for c in copies] == ["000", "a-000", "a-001"], copies
            assert all(c.endswith(".texts") for c in copies), copies
            # without the text store only compressed files are copied, and the texts are the same
            bare = tmp_path / kind / "bare"
            _embed(_write(kind, rows, tmp_path / "bare-src"), bare, vectors, "--no-text-store", "-q")
            assert sorted(p.name.split(".")[0] for p in (bare / "texts").iterdir()) == ["000", "a-001"]
            assert DocTexts(Workspace(bare))[list(range(N - 1))] == want
        if kind == "hf":
            assert len(list((tmp_path / "hf" / "hf").glob("data-*.arrow"))) > 1
            assert docs["source"].str.ends_with(".arrow").all() and refs.cheap  # memory-mapped: read by row


def test_compressed_texts_are_read_from_the_workspace_copy(rows, vectors, tmp_path):
    """The row-indexed copy is what training reads; it moves with the workspace, is written once, and
    a missing copy is one line naming how to write it again."""
    src = _write("gz", rows, tmp_path / "c")
    ws = tmp_path / "ws"
    _embed(src, ws, vectors, "-q")
    (copy,) = (ws / "texts").iterdir()
    assert read_header(copy)["rows"] == N and copy.name.startswith("c.") and copy.suffix == ".texts"
    stamp = copy.stat().st_mtime_ns
    _embed(src, ws, vectors, "-q")                    # a rerun keeps the copy of the same bytes
    assert copy.stat().st_mtime_ns == stamp
    want = [r["text"] for r in rows if r["text"].strip()]
    src.unlink()                                      # training needs only the copy
    assert DocTexts(Workspace(ws))[[0, 20]] == [want[0], want[20]]
    copy.unlink()
    from dgamix.pipeline.core.errors import DgamixError

    with pytest.raises(DgamixError, match="row-indexed copy .* is missing; rerun `dgamix embed`"):
        DocTexts(Workspace(ws))[[3]]


def test_text_store_reads_rows_exactly_and_a_damaged_copy_is_one_line(rows, vectors, tmp_path):
    """The .texts copy gives back every text (unicode, empty, null as empty) in any order, in a
    pickled copy too; truncation is caught on opening, a flipped byte on reading that row, and a
    rerun of embed writes an unreadable copy again."""
    import pickle

    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.textstore import TextStore, TextStoreWriter

    texts = ["héllo wörld", "", None, "naïve ☃ " * 50, "last"]
    w = TextStoreWriter(tmp_path / "s.texts", {"source": "x"})
    w.add(pa.array(texts[:2]))
    w.add(pa.array(["skip"] + texts[2:]).slice(1))  # a sliced piece: its own offsets
    w.close()
    store = pickle.loads(pickle.dumps(TextStore(tmp_path / "s.texts")))
    want = [t or "" for t in texts]
    assert len(store) == 5 and store.read([4, 0, 3, 3, 1, 2]) == [want[i] for i in (4, 0, 3, 3, 1, 2)]
    raw = (tmp_path / "s.texts").read_bytes()
    (tmp_path / "cut.texts").write_bytes(raw[:-3])
    with pytest.raises(DgamixError, match=r"cut.texts, dgamix's copy .* is damaged \(no dgamix footer"):
        TextStore(tmp_path / "cut.texts")
    flipped = bytearray(raw)
    flipped[len("héllo wörld".encode()) + 3] ^= 0x20  # inside row 3
    (tmp_path / "flip.texts").write_bytes(bytes(flipped))
    store = TextStore(tmp_path / "flip.texts")
    assert store.read([0, 4]) == [want[0], want[4]]
    nbytes = len(raw) - 16 - 8 * 6 - 4 * 5 - int(np.frombuffer(raw[-16:-8], "<i8")[0])
    zeroed = bytearray(raw)
    zeroed[nbytes:nbytes + 8 * 6 + 4 * 5] = bytes(8 * 6 + 4 * 5)  # offsets and checksums all zero
    (tmp_path / "zero.texts").write_bytes(bytes(zeroed))
    with pytest.raises(DgamixError, match=r"row 1 does not match its checksum"):
        TextStore(tmp_path / "zero.texts").read([1])
    with pytest.raises(DgamixError, match=r"\(row 3 does not match its checksum\); delete it and rerun `dgamix embed`"):
        store.read([0, 3])
    w = TextStoreWriter(tmp_path / "gone.texts", {})  # an interrupted write leaves nothing
    w.add(pa.array(["a"]))
    w.close(RuntimeError("stop"))
    assert not (tmp_path / "gone.texts").exists() and not list(tmp_path.glob(".gone*"))

    src = _write("parquet", rows, tmp_path / "c")  # a rerun of embed writes a copy it cannot open again
    ws = tmp_path / "ws"
    _embed(src, ws, vectors, "-q")
    (copy,) = (ws / "texts").iterdir()
    good = copy.read_bytes()
    copy.write_bytes(good[:100])
    with pytest.raises(DgamixError, match="is damaged"):
        DocTexts(Workspace(ws))[[0]]
    _embed(src, ws, vectors, "-q")
    assert copy.read_bytes() == good and DocTexts(Workspace(ws))[[0]] == [rows[0]["text"]]
    # a run that fails after copying (here: vectors for no document) leaves no copy behind
    pq.write_table(pa.table({"id": ["nope"], "vector": [[1.0, 0.0]]}), tmp_path / "bad-vectors.parquet")
    one_line_error(run_cli("embed", src, "--workspace", tmp_path / "bad", "--vectors", tmp_path / "bad-vectors.parquet"),
                   "have no vector")
    assert not [p for p in (tmp_path / "bad").rglob("*") if p.is_file() and not p.name.startswith(".lock-")]


def test_truncated_compressed_files_are_one_line(rows, tmp_path):
    data = _jsonl(rows)
    gz = gzip.compress(data)
    (tmp_path / "t.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    zs = zstandard.ZstdCompressor().compress(data)
    (tmp_path / "t.jsonl.zst").write_bytes(zs[: len(zs) // 2])
    (tmp_path / "bad.jsonl.zst").write_bytes(b"this is not zstd at all")
    for name in ("t.jsonl.gz", "t.jsonl.zst", "bad.jsonl.zst"):
        msg = one_line_error(run_cli("embed", tmp_path / name, "--workspace", tmp_path / "ws", "-q"),
                             str(tmp_path / name), "cannot decompress", "truncated or corrupt")
        assert ("gzip" in msg) == name.endswith(".gz")
    assert not (tmp_path / "ws" / "docs.parquet").exists()


@pytest.mark.slow
def test_minilm_embeds_a_compressed_corpus_as_its_parquet(rows, tmp_path):
    """The encoder path reads shards' texts from the copy: the vectors equal those of the Parquet corpus."""
    a = tmp_path / "a"
    b = tmp_path / "b"
    for src, ws in ((_write("parquet", rows, a), a / "ws"), (_write("zst", rows, b), b / "ws")):
        cli_ok("embed", src, "--workspace", ws, "--precision", "fp32", "--max-seq-length", 64, "--shard-size", 16, "-q")
    ea = pl.read_parquet(Workspace(a / "ws").embeddings_dir / "*.parquet").sort("doc_id")
    eb = pl.read_parquet(Workspace(b / "ws").embeddings_dir / "*.parquet").sort("doc_id")
    xa, xb = (np.asarray(e["embedding"].to_list(), np.float32) for e in (ea, eb))
    assert ea["doc_id"].to_list() == eb["doc_id"].to_list() and np.abs(xa - xb).max() < 1e-5


def _copies(ws) -> list[str]:
    return sorted(p.name.split(".")[0] for p in (ws / "texts").iterdir()) if (ws / "texts").exists() else []


def test_turning_the_text_store_on_or_off_keeps_the_embeddings(rows, vectors, tmp_path):
    """--text-store is where training reads texts, not what the documents are: switching it re-embeds
    nothing, records the copies in docs.parquet, drops the unused ones; --overwrite with another
    corpus replaces the old copies even when it makes none."""
    src = _write("shards", rows, tmp_path / "c")
    ws = tmp_path / "ws"
    _embed(src, ws, vectors, "-q")
    want = DocTexts(Workspace(ws))[list(range(N - 1))]
    parts = {p.name: p.stat().st_mtime_ns for p in (ws / "embeddings").iterdir()}
    assert _copies(ws) == ["000", "a-000", "a-001"]
    out = _embed(src, ws, vectors, "--no-text-store")
    assert "shards_embedded  : 0" in out or "shards_embedded : 0" in out, out
    assert _copies(ws) == ["000", "a-001"]                      # compressed ones only
    meta = pq.read_schema(Workspace(ws).docs).metadata[b"dgamix"]
    assert sorted(json.loads(meta)["text_copies"]) == ["../c/shards/a-001.jsonl.zst", "../c/shards/b/000.jsonl.gz"]
    assert DocTexts(Workspace(ws))[list(range(N - 1))] == want
    _embed(src, ws, vectors, "-q")
    assert _copies(ws) == ["000", "a-000", "a-001"] and DocTexts(Workspace(ws))[list(range(N - 1))] == want
    assert {p.name: p.stat().st_mtime_ns for p in (ws / "embeddings").iterdir()} == parts  # never re-embedded

    other = tmp_path / "other.parquet"
    pq.write_table(pa.Table.from_pylist(rows[:20]), other)
    _embed(other, ws, vectors, "--overwrite", "--no-text-store", "-q")
    assert _copies(ws) == [] and DocTexts(Workspace(ws))[[0]] == [rows[0]["text"]]


def test_a_failed_embed_keeps_the_copies_docs_names_and_no_scratch_vectors(rows, vectors, tmp_path, monkeypatch):
    """A failure after docs.parquet is written (here: writing the first embeddings part) keeps the
    copies docs.parquet names, so its texts stay readable, and removes the --vectors scratch matrix."""
    from dgamix.pipeline import embed as embed_mod
    from dgamix.pipeline.encoder import EmbedConfig
    from dgamix.pipeline.vectors import UserVectors

    src = _write("parquet", rows, tmp_path / "c")
    real = embed_mod.manifest.write

    def failing(path, table, kind, *a, **k):
        if kind == "embeddings-part":
            raise KeyboardInterrupt
        return real(path, table, kind, *a, **k)
    monkeypatch.setattr(embed_mod.manifest, "write", failing)
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        embed_mod.embed_corpus(ws, [str(src)], cfg=EmbedConfig(shard_size=16), quiet=True,
                               vectors=UserVectors(str(vectors)))
    assert ws.docs.exists() and DocTexts(ws)[[0, 10]] == [rows[0]["text"], rows[11]["text"]]
    assert not list((ws.root / "cache").glob(".vectors-*"))


def test_text_reader_keeps_a_bounded_number_of_copies_open(tmp_path, monkeypatch):
    from dgamix.pipeline.core import sources
    from dgamix.pipeline.core.textstore import TextStoreWriter

    monkeypatch.setattr(sources, "OPEN_STORES", 3)
    copies = {}
    for i in range(8):
        w = TextStoreWriter(tmp_path / f"s{i}.texts", {})
        w.add(pa.array([f"file {i} row {r}" for r in range(5)]))
        w.close()
        copies[f"src{i}"] = str(tmp_path / f"s{i}.texts")
    reader = sources.TextReader(copies=copies)
    order = [0, 1, 2, 3, 4, 0, 5, 6, 7, 2, 1]
    got = reader.read([f"src{i}" for i in order], [i % 5 for i in range(len(order))])
    assert got == [f"file {i} row {k % 5}" for k, i in enumerate(order)]
    assert sum(t.is_open for t in reader._stores.values()) <= 3
    assert [k for k, t in reader._stores.items() if t.is_open] == ["src7", "src2", "src1"]
