"""Stage 1a: the embed stage with the real packaged MiniLM model, resume, dedup and bad inputs."""
import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from dgamix.pipeline import embed as embed_mod
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.dedup import DedupConfig, near_duplicates
from dgamix.pipeline.embed import embed_corpus
from dgamix.pipeline.encoder import EmbedConfig, model_path
from tests.helpers import one_line_error, run_cli


def embeddings_of(ws: Workspace) -> tuple[np.ndarray, np.ndarray]:
    e = pl.read_parquet(ws.embeddings_dir / "*.parquet").sort("doc_id")
    return e["doc_id"].to_numpy(), np.asarray(e["embedding"].to_list(), dtype=np.float32)


@pytest.mark.slow
def test_real_model_embeddings_match_sentence_transformers(tmp_path, wiki_sample):
    from sentence_transformers import SentenceTransformer

    r = run_cli("embed", wiki_sample, "--workspace", tmp_path / "ws", "--keep-columns", "topic", "--shard-size", 25, "-q")
    assert r.exit_code == 0, r.output
    ws = Workspace(tmp_path / "ws")
    docs = pl.read_parquet(ws.docs)
    assert docs["doc_id"].to_list() == list(range(60)) and "topic" in docs.columns
    shards = pl.read_parquet(ws.embeddings)
    assert shards["rows"].to_list() == [25, 25, 10] and shards["path"].str.starts_with("embeddings/").all()
    ids, x = embeddings_of(ws)
    assert len(ids) == docs.filter(pl.col("dup_of").is_null()).height == 60
    assert np.abs(np.linalg.norm(x, axis=1) - 1).max() < 1e-3
    ref = SentenceTransformer(model_path("all-MiniLM-L6-v2"), device="cpu")
    ref.max_seq_length = 256
    texts = pl.read_parquet(wiki_sample)["text"].to_list()
    want = ref.encode(texts, normalize_embeddings=True)
    assert (x * want).sum(1).min() >= 0.999
    assert (docs["n_tokens"] > 0).all() and (docs["n_chars"] == pl.Series([len(t) for t in texts])).all()


@pytest.mark.slow
def test_crash_mid_run_resumes_to_identical_manifests(tmp_path, wiki_sample, monkeypatch):
    cfg = EmbedConfig(shard_size=16)
    clean = Workspace(tmp_path / "clean")
    embed_corpus(clean, [str(wiki_sample)], cfg=cfg, quiet=True)

    crashed = Workspace(tmp_path / "crashed")
    real, calls = embed_mod.embed_shard, []

    def dies_on_third(*a, **k):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # the process dies mid-run
        return real(*a, **k)

    monkeypatch.setattr(embed_mod, "embed_shard", dies_on_third)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(crashed, [str(wiki_sample)], cfg=cfg, quiet=True)
    assert not crashed.embeddings.exists() and len(list(crashed.embeddings_dir.glob("part-*"))) == 2
    monkeypatch.setattr(embed_mod, "embed_shard", real)
    summary = embed_corpus(crashed, [str(wiki_sample)], cfg=cfg, quiet=True)
    assert summary["shards_skipped"] == 2 and summary["shards_embedded"] == 2
    for name in ["docs.parquet", "embeddings.parquet", *[f"embeddings/part-{i:05d}.parquet" for i in range(4)]]:
        assert (clean.root / name).read_bytes() == (crashed.root / name).read_bytes(), name
    again = embed_corpus(crashed, [str(wiki_sample)], cfg=cfg, quiet=True)
    assert again["shards_skipped"] == 4 and again["shards_embedded"] == 0


def _long_text(rng, n=120):
    words = ["alpha", "river", "stone", "music", "theory", "cloud", "number", "garden", "light", "engine",
             "paper", "market", "winter", "signal", "forest", "island", "copper", "silver", "orbit", "fabric"]
    return " ".join(rng.choice(words, n)) + f" {rng.integers(1e9)}"


def test_minhash_marks_planted_near_duplicates():
    rng = np.random.default_rng(0)
    texts = [_long_text(rng) for _ in range(30)]
    w = texts[4].split()
    w[50] = "CHANGED"  # one word changed of 121: Jaccard of 5-shingles ~ 0.92
    texts.append(" ".join(w))
    texts.append(texts[10].upper())  # case-only change: identical shingles
    dup = near_duplicates(texts, DedupConfig())
    assert dup[30] == 4 and dup[31] == 10
    assert (dup[:30] == -1).all()


@pytest.mark.slow
def test_inputs_jsonl_and_text_folder_and_empty_rows(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "txt"
    folder.mkdir()
    for i in range(3):
        (folder / f"f{i}.txt").write_text(_long_text(rng))
    (folder / "blank.txt").write_text("   \n ")
    jl = tmp_path / "c.jsonl"
    jl.write_text("\n".join(json.dumps({"id": f"j{i}", "text": t}) for i, t in
                            enumerate([_long_text(rng), "", _long_text(rng), None])))
    ws = Workspace(tmp_path / "ws")
    out = embed_corpus(ws, [str(folder), str(jl)], cfg=EmbedConfig(shard_size=2), quiet=True)
    docs = pl.read_parquet(ws.docs)
    assert out["skipped_empty"] == 3 and docs.height == 5
    assert docs["id"].to_list() == ["f0:0", "f1:0", "f2:0", "j0", "j2"]
    assert docs["row"].to_list() == [0, 0, 0, 0, 2]
    ids, x = embeddings_of(ws)
    assert ids.tolist() == [0, 1, 2, 3, 4] and x.shape == (5, 384)


@pytest.mark.slow
def test_duplicates_are_kept_in_docs_but_not_embedded(tmp_path):
    rng = np.random.default_rng(2)
    texts = [_long_text(rng) for _ in range(6)]
    texts.append(texts[2])
    src = tmp_path / "c.parquet"
    pl.DataFrame({"id": [f"x{i}" for i in range(7)], "text": texts}).write_parquet(src)
    ws = Workspace(tmp_path / "ws")
    out = embed_corpus(ws, [str(src)], quiet=True)
    docs = pl.read_parquet(ws.docs)
    assert out["duplicates"] == 1 and docs["dup_of"].to_list() == [None] * 6 + [2]
    assert embeddings_of(ws)[0].tolist() == [0, 1, 2, 3, 4, 5]
    out = embed_corpus(Workspace(tmp_path / "ws2"), [str(src)], dedup=None, quiet=True)
    assert out["embedded"] == 7


def _bad(tmp_path, *args):
    return one_line_error(run_cli("embed", *args, "--workspace", tmp_path / "ws", "-q"))


def test_bad_inputs_are_one_line_errors(tmp_path):
    pl.DataFrame({"body": ["some text"]}).write_parquet(tmp_path / "nocol.parquet")
    assert "no text column 'text'" in _bad(tmp_path, tmp_path / "nocol.parquet")
    assert "--text-column" in _bad(tmp_path, tmp_path / "nocol.parquet")
    pl.DataFrame({"text": ["", "  ", None]}, schema={"text": pl.String}).write_parquet(tmp_path / "empty.parquet")
    assert "no non-empty documents" in _bad(tmp_path, tmp_path / "empty.parquet")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait".encode("latin-1"))
    assert "not valid UTF-8" in _bad(tmp_path, tmp_path / "latin1.txt")
    pl.DataFrame({"id": ["a", "a"], "text": ["one doc", "two doc"]}).write_parquet(tmp_path / "dupid.parquet")
    assert "duplicate ids" in _bad(tmp_path, tmp_path / "dupid.parquet")
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    assert "broken.parquet" in _bad(tmp_path, tmp_path / "broken.parquet")
    assert "does not exist" in _bad(tmp_path, tmp_path / "missing.parquet")
    pl.DataFrame({"text": [1, 2]}).write_parquet(tmp_path / "ints.parquet")
    assert "not text" in _bad(tmp_path, tmp_path / "ints.parquet")
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{not json\n')
    assert "line 2" in _bad(tmp_path, tmp_path / "bad.jsonl")
    assert not (tmp_path / "ws" / "docs.parquet").exists()


@pytest.mark.slow
def test_changed_corpus_is_refused_without_overwrite_and_nothing_is_lost(tmp_path):
    rng = np.random.default_rng(3)
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    pl.DataFrame({"text": [_long_text(rng) for _ in range(4)]}).write_parquet(a)
    pl.DataFrame({"text": [_long_text(rng) for _ in range(5)]}).write_parquet(b)
    ws = Workspace(tmp_path / "ws")
    embed_corpus(ws, [str(a)], quiet=True)
    before = {p: p.read_bytes() for p in ws.root.rglob("*.parquet")}
    msg = _bad(tmp_path, b)
    assert "--overwrite" in msg
    assert {p: p.read_bytes() for p in ws.root.rglob("*.parquet")} == before
    r = run_cli("embed", b, "--workspace", ws.root, "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(ws.docs).height == 5 and embeddings_of(ws)[1].shape == (5, 384)


@pytest.mark.slow
def test_loading_the_encoder_leaves_the_environment_alone():
    """load_encoder reads the packaged model offline without setting HF_HUB_OFFLINE for the process,
    and leaves Hugging Face's progress bars as they were."""
    import os
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); from dgamix.pipeline.encoder import EmbedConfig, encode, "
            "load_encoder; m = load_encoder(EmbedConfig()); v = encode(m, ['a real sentence'], EmbedConfig()); "
            "from transformers.utils import logging as hl; "
            "print(v.shape, hl.is_progress_bar_enabled(), "
            "sorted(k for k in set(os.environ) ^ set(before) if not k.startswith(('TORCH', 'KMP_'))))")
    # TORCHINDUCTOR_* and KMP_* are set by torch and by scikit-learn / joblib themselves when imported
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    assert out.stdout.strip() == "(1, 384) True []"  # Hugging Face's progress bars are left on


def test_shards_read_their_own_texts_by_file_and_row(tmp_path, monkeypatch):
    """TextRefs (what a shard's job carries instead of its texts) read exactly the texts load_corpus
    reads: Parquet by row group (only the groups holding the rows are read), JSON Lines and text
    files whole (once per worker with a reader); a row past the end of a changed file is one line."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgamix.pipeline.core import sources
    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.sources import DocTexts, TextReader
    from dgamix.pipeline.corpus import CorpusSpec, load_corpus

    rng = np.random.default_rng(5)
    texts = [f"doc {i}: " + _long_text(rng)[:80] for i in range(50)]
    texts[7] = "   "  # skipped by load_corpus: rows keep their file numbering
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(50)], "body": texts}), tmp_path / "a.parquet",
                   row_group_size=8)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"id": f"j{i}", "body": f"json {i}"}) for i in range(5)))
    (tmp_path / "c.txt").write_text("one plain text file")
    files = [str(tmp_path / f) for f in ("a.parquet", "b.jsonl", "c.txt")]
    base, stats = load_corpus(files, CorpusSpec(text_column="body"), keep_texts=False)
    assert "texts" not in stats
    want = load_corpus(files, CorpusSpec(text_column="body"))[1]["texts"].to_pylist()
    corpus = DocTexts.of_table(base, "body")
    groups = []
    real = pq.ParquetFile.read_row_groups
    monkeypatch.setattr(pq.ParquetFile, "read_row_groups", lambda self, g, **k: groups.append(list(g)) or real(self, g, **k))
    ids = [53, 2, 40, 41, 50, 0, 54, 9]          # any order, across the three files
    assert corpus.refs(ids).read() == [want[i] for i in ids]
    assert groups == [[0, 1, 5]]                  # rows 0, 2, 10 (doc 9), 41, 42 of a.parquet: 3 of its 7 groups
    reader = TextReader("body")
    assert corpus.refs(range(len(want))).read(reader) == want
    assert corpus.refs(range(49, 54)).read(reader) == want[49:54]
    assert set(reader._cols) == {files[1], files[2]}  # kept for the next shard; Parquet needs no cache
    with pytest.raises(DgamixError, match="has 50 rows but dgamix recorded a document at row 50"):
        sources.read_rows(tmp_path / "a.parquet", "body", np.array([3, 50]))

    # row groups larger than group_rows: read whole, through the caller's reader (once for all shards)
    big = DocTexts.of_table(base, "body", group_rows=7)
    refs = big.refs(range(0, 20))
    assert refs.indexed == (False,) and not refs.cheap and corpus.refs(range(0, 20)).cheap
    groups.clear()
    assert refs.read(reader) == want[:20] and groups == [] and files[0] in reader._cols

    # a file that changes under a run: one line, never other texts
    refs = corpus.refs([50, 51])
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"id": f"j{i}", "body": f"JSON {i}"}) for i in range(5)))
    st = os.stat(tmp_path / "b.jsonl")  # same size: make sure the time moves too, whatever the filesystem's clock
    os.utime(tmp_path / "b.jsonl", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    with pytest.raises(DgamixError, match="b.jsonl differs from what dgamix read when the run started"):
        refs.read()


@pytest.mark.slow
def test_doc_texts_reads_sources_given_as_dictionaries(tmp_path):
    """docs.parquet's source column read dictionary-encoded: row groups may carry different
    dictionaries (as pyarrow reads them back); the texts are those of the plain-string column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgamix.pipeline.core.sources import DocTexts

    for name, n in (("a", 6), ("b", 4)):
        pq.write_table(pa.table({"text": [f"{name} {i}" for i in range(n)]}), tmp_path / f"{name}.parquet")
    a, b = str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")
    sources, rows = [a, b, a, b, a, a], [0, 3, 5, 1, 2, 4]
    chunks = [pa.array(sources[:3]).dictionary_encode(), pa.array(sources[3:]).dictionary_encode()]
    as_dict = pa.table({"source": pa.chunked_array(chunks), "row": rows})
    assert as_dict["source"].chunk(0).dictionary.to_pylist() == [a, b]
    assert as_dict["source"].chunk(1).dictionary.to_pylist() == [b, a]  # another dictionary per row group
    plain = pa.table({"source": sources, "row": rows})
    want = [f"{'a' if s == a else 'b'} {r}" for s, r in zip(sources, rows)]
    for table in (as_dict, plain):
        texts = DocTexts.of_table(table, "text")
        assert texts[[5, 0, 3, 1]] == [want[5], want[0], want[3], want[1]] and texts[range(6)] == want
        assert sorted(texts.source_names) == [a, b]


def test_embedding_reads_texts_shard_by_shard_with_the_same_result(tmp_path, monkeypatch):
    """A multi-file corpus with small Parquet row groups embeds, dedups and counts tokens as the
    in-memory texts give (near-duplicates across files found; vectors equal to encoding the texts),
    read in place (--no-text-store) or from the workspace's row-indexed copies (the default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgamix.pipeline.core.sources import TextRefs
    from dgamix.pipeline.corpus import CorpusSpec
    from dgamix.pipeline.encoder import count_tokens, encode, load_encoder

    rng = np.random.default_rng(6)
    a = [_long_text(rng) for _ in range(12)]
    b = [_long_text(rng) for _ in range(5)] + [a[3]]   # the last one repeats a's 4th document
    pq.write_table(pa.table({"id": [f"a{i}" for i in range(12)], "text": a}), tmp_path / "a.parquet", row_group_size=5)
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"id": f"b{i}", "text": t}) for i, t in enumerate(b)))
    ws = Workspace(tmp_path / "ws")
    cfg = EmbedConfig(shard_size=4)
    seen = []  # what the embed jobs carry: where their texts are, not the texts
    real_map = embed_mod.map_shards
    monkeypatch.setattr(embed_mod, "map_shards", lambda work, jobs, *a, **k: seen.extend(jobs) or real_map(work, jobs, *a, **k))
    real_load = embed_mod.load_corpus
    monkeypatch.setattr(embed_mod, "load_corpus", lambda *a, **k: real_load(*a, **k) if k.get("keep_texts") is False
                        else pytest.fail("the embed stage asked load_corpus for the texts"))
    inputs = [str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl")]
    out = embed_corpus(ws, inputs, CorpusSpec(text_store=False), cfg=cfg, quiet=True)
    assert len(seen) == 5 and all(isinstance(j["texts"], TextRefs) for j in seen)
    fa, fb = str(tmp_path / "a.parquet"), str(tmp_path / "b.jsonl")
    assert [len(j["texts"]) for j in seen] == [4, 4, 4, 4, 1]
    assert [j["texts"].files for j in seen] == [(fa,), (fa,), (fa,), (fb,), (fb,)]
    assert [j["texts"].indexed for j in seen] == [(True,)] * 3 + [(False,)] * 2  # row groups of 5 <= 2 x 4
    docs = pl.read_parquet(ws.docs)
    assert out["duplicates"] == 1 and docs["dup_of"].to_list()[-1] == 3
    enc = load_encoder(cfg)
    assert docs["n_tokens"].to_list() == count_tokens(enc, a + b).tolist()
    ids, x = embeddings_of(ws)
    assert ids.tolist() == list(range(17))
    kept = (a + b)[:17]
    ref = np.concatenate([encode(enc, kept[i:i + 4], cfg) for i in range(0, 17, 4)])  # the same shards
    assert np.abs(x - ref).max() < 1e-5
    seen.clear()  # the default: every shard reads the copies, one row at a time; the same results
    stored = Workspace(tmp_path / "stored")
    assert embed_corpus(stored, inputs, cfg=cfg, quiet=True)["duplicates"] == 1
    assert [Path(j["texts"].files[0]).parent for j in seen] == [stored.root / "texts"] * 5
    assert all(j["texts"].cheap for j in seen)
    assert pl.read_parquet(stored.docs).drop("source").equals(docs.drop("source"))
    assert np.array_equal(embeddings_of(stored)[1], x)


def test_load_corpus_streams_large_parquet_files_in_batches(tmp_path, monkeypatch):
    """Without texts, a Parquet file of more than PIECE_ROWS rows is read batch by batch: the same
    docs table (rows numbered across batches, blank rows skipped, made-up and given ids, kept columns)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dgamix.pipeline import corpus as corpus_mod
    from dgamix.pipeline.corpus import CorpusSpec, load_corpus

    texts = [f"text {i}" if i % 7 else " " for i in range(50)]
    pq.write_table(pa.table({"text": texts, "topic": [f"t{i % 3}" for i in range(50)]}), tmp_path / "a.parquet",
                   row_group_size=9)
    pq.write_table(pa.table({"id": [f"b{i}" for i in range(30)], "text": texts[:30], "topic": ["x"] * 30}),
                   tmp_path / "b.parquet")
    files, spec = [str(tmp_path / "a.parquet"), str(tmp_path / "b.parquet")], CorpusSpec(keep_columns=("topic",))
    whole, stats = load_corpus(files, spec)
    batches = []
    real = pq.ParquetFile.iter_batches
    monkeypatch.setattr(corpus_mod, "PIECE_ROWS", 8)
    monkeypatch.setattr(pq.ParquetFile, "iter_batches", lambda self, **k: (batches.append(1) or b
                                                                           for b in real(self, **k)))
    streamed, stats2 = load_corpus(files, spec, keep_texts=False)
    assert streamed.equals(whole) and stats2["skipped_empty"] == stats["skipped_empty"] == 8 + 5
    assert len(batches) == 7 + 4 and "texts" not in stats2          # 50 and 30 rows in batches of 8
    assert streamed["row"].to_pylist()[:7] == [1, 2, 3, 4, 5, 6, 8] and streamed["id"][0].as_py() == "a:1"
    # errors over a streamed file are the whole file's: all its empty ids counted, duplicated names refused
    from dgamix.pipeline.core.errors import DgamixError

    pq.write_table(pa.table({"id": [None if i % 10 == 0 else f"c{i}" for i in range(30)], "text": ["t"] * 30}),
                   tmp_path / "c.parquet")
    for keep in (True, False):
        with pytest.raises(DgamixError, match="'id' has 3 empty ids"):
            load_corpus([str(tmp_path / "c.parquet")], CorpusSpec(), keep_texts=keep)
