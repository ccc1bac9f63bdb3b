"""The stage runner's guarantees (pipeline/core/stage.py, files.py, manifest.py), tried as a hostile
or careless user would: flipped bytes under an unchanged mtime, symlinks that lead out of the
workspace, a second writer of every stage, kill -9 during --overwrite, and random interleavings of
kills, reruns and overwrites. Every outcome is the complete old output, the complete new one, or
one `error:` line with exit 2; nothing outside the workspace changes."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dgamix.pipeline.core import files, manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.stage import run_stage
from dgamix.pipeline.core.workspace import Workspace, lock
from tests.helpers import ROOT, one_line_error, run_cli, train_workspace

TINY = ["--context", 32, "--vocab-size", 512, "--d-model", 32, "--n-layer", 1, "--batch-size", 4,
        "--align-batch-size", 4, "--target-batch-size", 4, "--eval-batches", 1, "--reweight-every", 5,
        "--reweight-start", 4, "--eval-every", 10, "--checkpoint-every", 10, "--threads", 1, "--quiet"]
RUN = ["--clusters", "c", "--level", 2, "--target", "t"]


def snapshot(folder: Path) -> dict:
    """Every file under ``folder`` (links not followed) -> its bytes."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A workspace holding every kind of manifest: tests.helpers.train_workspace + a run + a schedule."""
    ws = train_workspace(tmp_path_factory.mktemp("integrity") / "ws")
    r = run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "dga", "--basis", "b", "--steps", 10,
                "--name", "r1")
    assert r.exit_code == 0, r.output
    r = run_cli("schedule", "--workspace", ws.root, "--clusters", "c", "--level", 2, "--run", "r1", "--steps", 5,
                "--batch-size", 4, "--name", "s1")
    assert r.exit_code == 0, r.output
    r = run_cli("cluster", "--workspace", ws.root, "--levels", 2, "--name", "k2", "-q")  # domains.parquet
    assert r.exit_code == 0, r.output
    r = run_cli("basis", "--workspace", ws.root, "--clusters", "k2", "--level", 1, "--target", "t", "--by", "single",
                "--name", "bk")  # the basis summary and the target's assignments
    assert r.exit_code == 0, r.output
    return ws


@pytest.fixture
def ws(built, tmp_path):
    """A private copy of ``built`` (tests change it)."""
    shutil.copytree(built.root, tmp_path / "ws", symlinks=True)
    return Workspace(tmp_path / "ws")


# --------------------------------------------------------------------------- verify on read
def flip(path: Path, column: str | None = None) -> None:
    """Flip one byte inside the largest column chunk of ``path`` (of ``column``), keeping size and mtime
    (touch -r)."""
    st_ = path.stat()
    md = pq.ParquetFile(path).metadata
    chunks = [md.row_group(g).column(c) for g in range(md.num_row_groups) for c in range(md.num_columns)
              if column is None or md.schema.column(c).name == column]
    big = max(chunks, key=lambda c: c.total_compressed_size)
    start = big.dictionary_page_offset if big.has_dictionary_page else big.data_page_offset
    data = bytearray(path.read_bytes())
    data[start + big.total_compressed_size - 2] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    assert path.stat().st_size == st_.st_size and path.stat().st_mtime_ns == st_.st_mtime_ns


def test_every_manifest_kind_is_verified_on_read(ws):
    """A flipped byte under an unchanged size and mtime is refused, for every kind of manifest."""
    kinds = {}
    for p in sorted(ws.root.rglob("*.parquet")):
        if p.name != "corpus.parquet":
            kinds.setdefault(manifest.read_meta(p)["kind"], p)
    assert {"docs", "embeddings", "embeddings-part", "tree", "assignments-part", "domains", "target",
            "target-assignments", "basis", "basis-summary", "run-metrics", "run-weights", "run-repetitions",
            "schedule"} <= set(kinds), sorted(kinds)
    for kind, p in kinds.items():
        manifest.read(p)  # intact: reads
        flip(p)
        with pytest.raises(DgamixError, match="corrupt") as e:
            manifest.read(p)
        assert "\n" not in str(e.value) and str(p) in str(e.value), kind


def test_a_flipped_part_stops_the_stage_that_reads_it(ws):
    part = next(ws.assignments_dir("c").glob("part-*.parquet"))
    flip(part)
    before = snapshot(ws.root / "runs")
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 2,
                           "--name", "r2"), "corrupt", part.name)
    assert snapshot(ws.root / "runs") == before
    flip(part)  # flipped back: intact again
    shutil.rmtree(ws.root / "cache")  # texts are read again, by (source, row) from docs.parquet
    flip(ws.docs, "row")
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 2,
                           "--name", "r2"), "corrupt")


# --------------------------------------------------------------------------- containment
@pytest.mark.parametrize("link", ["runs", "runs/r1"])
def test_train_overwrite_through_a_symlink_is_refused_and_outside_is_untouched(ws, tmp_path, link):
    outside = tmp_path / "outside"
    shutil.copytree(ws.root / link, outside / "r1" if link == "runs" else outside)
    (outside / "keep.txt").write_text("mine")
    shutil.rmtree(ws.root / link)
    os.symlink(outside, ws.root / link)
    before = snapshot(outside)
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 2,
                           "--name", "r1", "--overwrite"), "leads outside")
    assert snapshot(outside) == before


def test_basis_schedule_and_cluster_refuse_symlinks_out(ws, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "b.parquet").write_bytes(b"not yours")
    (ws.root / "bases" / "b.parquet").unlink()
    os.symlink(outside / "b.parquet", ws.root / "bases" / "b.parquet")
    one_line_error(run_cli("basis", "--workspace", ws.root, "--clusters", "c", "--level", 2, "--target", "t",
                           "--by", "single", "--name", "b", "--overwrite"), "leads outside")
    shutil.rmtree(ws.root / "schedules")
    os.symlink(outside, ws.root / "schedules")
    one_line_error(run_cli("schedule", "--workspace", ws.root, "--clusters", "c", "--level", 2, "--mixer", "uniform",
                           "--steps", 2, "--batch-size", 2, "--name", "s2"), "leads outside")
    os.symlink(outside, ws.root / "clusters" / "k3")
    one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", 2, "--name", "k3", "--overwrite"),
                   "leads outside")
    assert sorted(os.listdir(outside)) == ["b.parquet"] and (outside / "b.parquet").read_bytes() == b"not yours"


def test_remove_never_follows_a_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    root = tmp_path / "ws"
    root.mkdir()
    os.symlink(outside, root / "link")
    files.remove(root / "link", root)
    assert (outside / "f").read_text() == "x" and not (root / "link").exists()
    (root / "d").mkdir()
    os.symlink(outside, root / "d" / "inner")
    files.remove(root / "d", root)
    assert (outside / "f").read_text() == "x" and not (root / "d").exists()


# --------------------------------------------------------------------------- one writer per stage
STAGES = {
    "basis-b": ("basis", "--clusters", "c", "--level", 2, "--target", "t", "--by", "single", "--name", "b",
                "--overwrite"),
    "train-r1": ("train", *TINY, *RUN, "--mixer", "uniform", "--steps", 2, "--name", "r1", "--overwrite"),
    "schedule-s1": ("schedule", "--clusters", "c", "--level", 2, "--mixer", "uniform", "--steps", 2,
                    "--batch-size", 2, "--name", "s1", "--overwrite"),
    "report": ("report",),
    "cluster-k3": ("cluster", "--levels", 2, "--name", "k3"),
    "embed": ("embed", "corpus.parquet"),
    "target-t2": ("target", "corpus.parquet", "--name", "t2"),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_a_second_writer_of_every_stage_fails_at_once(ws, stage):
    cmd, *rest = STAGES[stage]
    rest = [ws.root / a if a == "corpus.parquet" else a for a in rest]
    with lock(ws, stage):
        before = snapshot(ws.root)
        t0 = time.perf_counter()
        one_line_error(run_cli(cmd, *rest, "--workspace", ws.root), "another dgamix process")
        assert time.perf_counter() - t0 < 60
    after = snapshot(ws.root)
    assert after == before


# --------------------------------------------------------------------------- atomic overwrite
def test_a_failed_overwrite_keeps_the_complete_old_output(ws, monkeypatch):
    before = snapshot(ws.run_dir("r1"))
    from dgamix.mixing.testbed import trainer

    def boom(*a, **k):
        raise DgamixError("injected failure half-way")

    monkeypatch.setattr(trainer.Trainer, "_evaluate", boom)
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 10,
                           "--name", "r1", "--overwrite"), "injected")
    assert snapshot(ws.run_dir("r1")) == before
    assert not list(ws.root.glob(".stage-*"))


@pytest.mark.slow
def test_sigkill_during_train_overwrite_keeps_the_old_run(ws):
    old = snapshot(ws.run_dir("r1"))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    args = ["train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 400,
            "--checkpoint-every", 5, "--name", "r1", "--overwrite"]
    p = subprocess.Popen([sys.executable, "-m", "dgamix.cli.main", *map(str, args)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(ws.root.glob(".stage-train-r1.*/new/runs/r1/checkpoint/*")):
        assert p.poll() is None, p.stderr.read().decode()[-500:]
        assert time.time() - t0 < 240
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert snapshot(ws.run_dir("r1")) == old  # the complete old run, untouched
    assert list(ws.root.glob(".stage-train-r1.*"))  # the killed writer's staging, swept by the next writer
    r = run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "uniform", "--steps", 10, "--name", "r1",
                "--overwrite")
    assert r.exit_code == 0, r.output
    assert not list(ws.root.glob(".stage-*"))
    assert manifest.read(ws.run_dir("r1") / "metrics.parquet")[1]["params"]["mixer"] == "uniform"


# --------------------------------------------------------------------------- the runner, fuzzed
OUTS = ("a.txt", "d")


def _write_version(out: Workspace, v: int) -> None:
    """A two-output stage: a file and a folder of two files, all stamped with version ``v``."""
    (out.at("a.txt")).write_text(f"v{v}")
    d = out.at("d")
    d.mkdir(parents=True, exist_ok=True)
    for name in ("x", "y"):
        (d / name).write_text(f"v{v}")


def _versions(root: Path) -> dict:
    """The version each output holds now, asserting each is complete (None: absent)."""
    got = {}
    a = root / "a.txt"
    got["a.txt"] = a.read_text() if a.exists() else None
    d = root / "d"
    if d.exists():
        x, y = (d / "x").read_text(), (d / "y").read_text()
        assert x == y, "a folder output mixes two versions"
        got["d"] = x
    else:
        got["d"] = None
    return got


def _run_child(root: Path, v: int, overwrite: bool, kill_at: int | None) -> int:
    """Run the stage in a forked child that dies (os._exit, like SIGKILL: no cleanup) at its
    ``kill_at``-th file operation; returns the child's exit status."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            calls = [0]
            for fn in ("install", "replace", "remove", "make_dir"):
                orig = getattr(files, fn)

                def wrapped(*a, _orig=orig, **k):
                    calls[0] += 1
                    if kill_at is not None and calls[0] >= kill_at:
                        os._exit(9)
                    return _orig(*a, **k)

                setattr(files, fn, wrapped)
            with run_stage(Workspace(root), "fuzz", OUTS, overwrite=overwrite, exists="exists") as s:
                _write_version(s.ws, v)
            os._exit(0)
        except DgamixError:
            os._exit(2)
        except BaseException:
            os._exit(3)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


@pytest.mark.slow
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(st.tuples(st.booleans(), st.one_of(st.none(), st.integers(1, 12))), min_size=1, max_size=6))
def test_kills_reruns_and_overwrites_leave_old_or_new_complete(tmp_path_factory, ops):
    root = tmp_path_factory.mktemp("fuzz")
    have: str | None = None  # the version the outputs hold (None: none yet)
    for v, (overwrite, kill_at) in enumerate(ops, start=1):
        code = _run_child(root, v, overwrite, kill_at)
        now = _versions(root)
        assert code in (0, 2, 9), code
        if code == 2:  # refused: an output exists and no --overwrite
            assert have is not None and not overwrite and set(now.values()) == {have}
            continue
        if code == 0:
            assert now == {"a.txt": f"v{v}", "d": f"v{v}"}
            have = f"v{v}"
            continue
        # killed: every output is complete, old or new, or absent only if it never existed
        for out, got in now.items():
            assert got in ({have, f"v{v}"} if have else {None, f"v{v}"}), (out, got, have)
        # the next writer finishes or undoes the killed one's work before its own
        with run_stage(Workspace(root), "fuzz", OUTS, overwrite=True):
            pass
        after = _versions(root)
        assert len(set(after.values())) == 1 and after["a.txt"] in {have, f"v{v}", None}, after
        if after["a.txt"] is None:
            assert have is None
        have = after["a.txt"] if after["a.txt"] is not None else have
        assert not list(root.glob(".stage-*"))


# --------------------------------------------------------------------------- one home of the bookkeeping
def test_rename_delete_and_lock_live_only_in_the_kernel():
    """shutil.rmtree, os.replace and file locking appear only in pipeline/core (files.py)."""
    pattern = re.compile(r"shutil\.rmtree|os\.replace\(|os\.rename\(|fcntl|\.flock\(")
    offenders = []
    for folder in ("pipeline", "mixing", "cli"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).parts[:2] == ("pipeline", "core"):
                continue
            for i, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line.split("#")[0]):
                    offenders.append(f"{path.relative_to(ROOT)}:{i}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_stages_take_their_lock_through_the_runner():
    """Every stage writer goes through run_stage; no stage calls the workspace lock itself."""
    users = []
    for folder in ("pipeline", "mixing"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path.relative_to(ROOT).parts[:2] == ("pipeline", "core"):
                continue
            text = path.read_text()
            if re.search(r"\block\(ws", text) or "import Workspace, check_name, lock" in text:
                users.append(str(path.relative_to(ROOT)))
            if "run_stage(" in text:
                users.append(f"runner:{path.relative_to(ROOT).as_posix()}")
    assert [u for u in users if not u.startswith("runner:")] == []
    assert {f"runner:{p}" for p in ("pipeline/embed.py", "pipeline/cluster.py", "pipeline/target.py",
                                     "pipeline/basis.py", "mixing/testbed/train.py", "mixing/schedule.py",
                                     "mixing/report.py")} <= set(users)


def test_exchange_keeps_the_output_present(tmp_path):
    """files.install swaps a complete new folder in; the final path never stops existing."""
    root = tmp_path
    (root / "final").mkdir()
    (root / "final" / "f").write_text("old")
    (root / "new").mkdir()
    (root / "new" / "f").write_text("new")
    files.install(root / "new", root / "final", root)
    assert (root / "final" / "f").read_text() == "new"
    np.testing.assert_equal(sorted(os.listdir(root)), sorted(["final", *(["new"] if (root / "new").exists() else []),
                                                               *(["new.old"] if (root / "new.old").exists() else [])]))


def test_table_of_a_staged_workspace_maps_back(tmp_path):
    ws = Workspace(tmp_path, (("embeddings", tmp_path / ".stage/new/embeddings"),))
    assert ws.embedding_part(3) == tmp_path / ".stage/new/embeddings/part-00003.parquet"
    assert ws.relative(ws.embedding_part(3)) == "embeddings/part-00003.parquet"
    assert ws.docs == tmp_path / "docs.parquet" and ws.relative(ws.docs) == "docs.parquet"
    t = manifest.write(tmp_path / "m.parquet", pa.table({"a": [1]}), "thing")
    assert pq.ParquetFile(t).metadata.num_rows == 1


@pytest.mark.slow
def test_embed_rerun_reembeds_a_damaged_part_instead_of_adopting_its_hash(real_ws, tmp_path):
    """A flipped embedding part (size and mtime kept) is refused by the next reader, and rerunning
    `dgamix embed` re-embeds that part: the recorded sha256 is never taken from damaged bytes."""
    ws = Workspace(tmp_path / "ws")
    shutil.copytree(real_ws, ws.root)
    part = ws.embedding_part(1)
    good = part.read_bytes()
    flip(part)
    one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", 2, "--name", "k2", "-q"), "corrupt",
                   part.name)
    corpus = real_ws.parent / "corpus.parquet"
    r = run_cli("embed", corpus, "--workspace", ws.root, "--keep-columns", "topic", "--shard-size", 50, "-q")
    assert r.exit_code == 0, r.output
    assert re.search(r"shards_embedded\s*: 1\n", r.output) and re.search(r"shards_skipped\s*: 2\n", r.output), r.output
    table, _ = manifest.read(ws.embeddings, "embeddings")
    sums = dict(zip(table["shard"].to_pylist(), table["checksum"].to_pylist()))
    assert sums[1] == manifest.file_checksum(part)
    np.testing.assert_allclose(manifest.embedding_matrix(manifest.read(part)[0]["embedding"]),
                               manifest.embedding_matrix(pq.read_table(pa.BufferReader(good))["embedding"]), atol=1e-3)


def test_recovery_takes_only_its_own_stage_and_any_pid(tmp_path):
    """Under the stage's lock every journalled swap of that stage is completed, whatever its PID (ours
    too: PID 1 in a container), and a staging folder of another name sharing the prefix is left alone."""
    ws = Workspace(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "a").mkdir()
    (tmp_path / "runs" / "a" / "f").write_text("old")
    mine = tmp_path / f".stage-train-a.{os.getpid()}.0123abcd"
    (mine / "new" / "runs" / "a").mkdir(parents=True)
    (mine / "new" / "runs" / "a" / "f").write_text("new")
    import json

    (mine / "swap.json").write_text(json.dumps([["runs/a", os.stat(mine / "new" / "runs" / "a").st_ino]]))
    other = tmp_path / ".stage-train-a.123.99999999.0123abcd"  # run 'a.123', a writer with PID 99999999
    (other / "new").mkdir(parents=True)
    with run_stage(ws, "train-a", ["runs/a"]):
        pass
    assert (tmp_path / "runs" / "a" / "f").read_text() == "new" and not mine.exists()
    assert other.exists()


def test_a_linked_folder_inside_an_output_is_refused(ws, tmp_path):
    """runs/r1/checkpoint -> outside: resuming would write the checkpoint there; refused, outside untouched."""
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(ws.run_dir("r1") / "checkpoint")
    os.symlink(outside, ws.run_dir("r1") / "checkpoint")
    _mark_partial(ws, "r1")  # killed before its first checkpoint: --resume trains from the start, in place
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "dga", "--basis", "b",
                           "--steps", 12, "--name", "r1", "--resume"), "leads outside")
    assert os.listdir(outside) == []
    (outside / "state.pt").write_text("not yours")
    with pytest.raises(DgamixError, match="leads outside"):
        files.remove(ws.run_dir("r1") / "checkpoint" / "state.pt", ws.root)
    assert (outside / "state.pt").read_text() == "not yours"


def test_a_flipped_token_cache_is_rebuilt_not_used(ws):
    """The token cache (WS/cache/tokens-*) is checked against its recorded sha256s: a flipped byte under
    an unchanged mtime makes the next run rebuild it, and the run's losses equal the intact cache's."""
    from dgamix.mixing.testbed.tokens import corpus_tokens

    tokens, vocab, _, key = corpus_tokens(ws, 512)
    flat = ws.root / "cache" / f"tokens-{key}" / "flat.npy"
    st_ = flat.stat()
    data = bytearray(flat.read_bytes())
    data[-3] ^= 0x01
    flat.write_bytes(bytes(data))
    os.utime(flat, ns=(st_.st_atime_ns, st_.st_mtime_ns))
    again, vocab2, _, _ = corpus_tokens(ws, 512)
    np.testing.assert_array_equal(again.flat, tokens.flat)
    np.testing.assert_array_equal(vocab2.pieces, vocab.pieces)
    assert flat.read_bytes() != bytes(data)


def _mark_partial(ws: Workspace, run: str) -> None:
    """Rewrite a run's logs as the ones written beside a checkpoint of a run still training."""
    for f in ("metrics.parquet", "weights.parquet"):
        table, meta = manifest.read(ws.run_dir(run) / f)
        extra = {k: v for k, v in meta.items() if k not in ("schema_version", "dgamix_version", "kind", "params",
                                                            "inputs")}
        manifest.write(ws.run_dir(run) / f, table, meta["kind"], meta["params"], meta["inputs"],
                       extra={**extra, "state": "partial"})


@pytest.mark.slow
def test_a_partial_run_is_not_scheduled_and_is_marked_in_the_report(ws):
    assert manifest.read_meta(ws.run_dir("r1") / "weights.parquet")["state"] == "complete"
    _mark_partial(ws, "r1")
    one_line_error(run_cli("schedule", "--workspace", ws.root, "--clusters", "c", "--level", 2, "--run", "r1",
                           "--steps", 5, "--batch-size", 4, "--name", "s9"), "not complete", "--resume")
    assert not ws.schedule("s9").exists()
    r = run_cli("report", "--workspace", ws.root)
    assert r.exit_code == 0, r.output
    assert "partial: not finished" in (ws.root / "report" / "report.md").read_text()


def test_resume_of_a_complete_run_without_checkpoint_is_refused(ws):
    shutil.rmtree(ws.run_dir("r1") / "checkpoint")
    before = snapshot(ws.run_dir("r1"))
    one_line_error(run_cli("train", "--workspace", ws.root, *TINY, *RUN, "--mixer", "dga", "--basis", "b",
                           "--steps", 10, "--name", "r1", "--resume"), "is complete", "--overwrite")
    assert snapshot(ws.run_dir("r1")) == before


@pytest.mark.slow
def test_a_non_ascii_path_under_an_ascii_locale_is_one_line(tmp_path):
    """PYTHONUTF8=0 LC_ALL=POSIX: a path with non-ASCII bytes cannot be passed on as text; one line says how
    to run instead (a UTF-8 locale), before anything is read or written."""
    folder = tmp_path / "wsé"
    folder.mkdir()
    (folder / "c.jsonl").write_text('{"text": "a document about rivers"}\n')
    env = {**os.environ, "PYTHONUTF8": "0", "LC_ALL": "POSIX"}
    env.pop("LANG", None)
    p = subprocess.run([sys.executable, "-m", "dgamix.cli.main", "embed", str(folder / "c.jsonl"), "--workspace",
                        str(folder / "ws"), "-q"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                       errors="backslashreplace")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "PYTHONUTF8=1" in lines[0], p.stderr
    assert not (folder / "ws").exists()


def test_the_token_cache_built_in_parts_is_byte_identical(ws, monkeypatch):
    """A first run tokenises TOKENISE_DOCS documents at a time (bounded memory): parts of 7 documents
    give the same cache files, byte for byte, as one part."""
    import dgamix.mixing.testbed.tokens as T

    whole, vocab, _, key = T.corpus_tokens(ws, 512)
    folder = ws.root / "cache" / f"tokens-{key}"
    files_whole = {p.name: p.read_bytes() for p in folder.glob("*.npy")}
    assert set(files_whole) == {"flat.npy", "offsets.npy", "pieces.npy"} and len(whole) > 7
    from dgamix.pipeline.core import files

    files.remove(folder, ws.root)
    monkeypatch.setattr(T, "TOKENISE_DOCS", 7)
    parts, vocab7, _, _ = T.corpus_tokens(ws, 512)
    assert {p.name: p.read_bytes() for p in folder.glob("*.npy")} == files_whole
    assert sorted(p.name for p in folder.iterdir()) == ["flat.npy", "info.json", "offsets.npy", "pieces.npy"]
    np.testing.assert_array_equal(parts.flat, whole.flat)
    np.testing.assert_array_equal(vocab7.lookup, vocab.lookup)
