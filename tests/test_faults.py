"""Fault injection with real processes: SIGKILL `dgamix embed` and `dgamix train` mid-run,
rerun, and compare with an uninterrupted run."""
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from tests.helpers import DATA, ROOT, run_cli

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "dgamix.cli.main", *map(str, args)], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def kill_when(proc, ready, timeout=240):
    """SIGKILL ``proc`` as soon as ready() holds; fails if it finished first."""
    t0 = time.time()
    while not ready():
        assert proc.poll() is None, f"finished before the kill point: {proc.stderr.read().decode()[-500:]}"
        assert time.time() - t0 < timeout, "kill point never reached"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_sigkill_embed_mid_run_then_resume_equals_clean_run(tmp_path):
    corpus = tmp_path / "c.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(90, seed=5).write_parquet(corpus)
    args = ("--shard-size", 10, "--max-seq-length", 64, "-q")
    killed = tmp_path / "killed"
    p = start("embed", corpus, "--workspace", killed, *args)
    kill_when(p, lambda: len(list((killed / "embeddings").glob("part-*.parquet"))) >= 3)
    assert not (killed / "embeddings.parquet").exists()
    r = run_cli("embed", corpus, "--workspace", killed, *args)
    assert r.exit_code == 0, r.output
    skipped = [int(line.split(":")[1]) for line in r.output.splitlines() if line.startswith("shards_skipped ")]
    assert skipped and skipped[0] >= 3, r.output  # the 3+ parts finished before the kill are reused
    clean = tmp_path / "clean"
    assert run_cli("embed", corpus, "--workspace", clean, *args).exit_code == 0
    files = sorted(f.relative_to(clean) for f in clean.rglob("*.parquet"))
    assert sorted(f.relative_to(killed) for f in killed.rglob("*.parquet")) == files
    for f in files:
        assert (clean / f).read_bytes() == (killed / f).read_bytes(), f
    e = pl.read_parquet(killed / "embeddings" / "*.parquet")
    assert e["doc_id"].sort().to_list() == list(range(90))  # no duplicated or missing doc_id
    assert not list(killed.rglob("*.tmp"))


def test_sigkill_train_after_checkpoint_then_resume_equals_uninterrupted(real_ws):
    common = ("train", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
              "--mixer", "dga-noema", "--steps", 30, "--checkpoint-every", 10, "--eval-every", 10,
              "--reweight-every", 5, "--reweight-start", 0, "--context", 32, "--vocab-size", 512, "--d-model", 32,
              "--n-layer", 1, "--batch-size", 4, "--align-batch-size", 4, "--target-batch-size", 4,
              "--threads", 1, "--quiet")
    run_dir = real_ws / "runs" / "killed"
    p = start(*common, "--name", "killed")
    kill_when(p, lambda: (run_dir / "checkpoint" / "state.pt").exists())
    r = run_cli(*common, "--name", "killed", "--resume")
    assert r.exit_code == 0, r.output
    r = run_cli(*common, "--name", "straight")
    assert r.exit_code == 0, r.output
    a = pl.read_parquet(run_dir / "metrics.parquet").sort("step", "split")
    b = pl.read_parquet(real_ws / "runs" / "straight" / "metrics.parquet").sort("step", "split")
    assert a.select("step", "split").equals(b.select("step", "split"))
    assert np.allclose(a["loss"].to_numpy(), b["loss"].to_numpy(), rtol=1e-6, atol=1e-6)
    wa = pl.read_parquet(run_dir / "weights.parquet").sort("step", "domain")
    wb = pl.read_parquet(real_ws / "runs" / "straight" / "weights.parquet").sort("step", "domain")
    assert np.allclose(wa["weight"].to_numpy(), wb["weight"].to_numpy(), atol=1e-9)


def test_second_writer_of_a_stage_fails_fast_and_changes_nothing(tmp_path):
    from dgamix.pipeline.core.workspace import Workspace, lock

    corpus = tmp_path / "c.parquet"
    pl.DataFrame({"text": ["a first document about rivers", "a second one about stars"]}).write_parquet(corpus)
    ws = Workspace(tmp_path / "ws")
    with lock(ws, "embed"):  # another process is embedding into this workspace
        r = run_cli("embed", corpus, "--workspace", ws.root, "-q")
    assert r.exit_code == 2 and "another dgamix process" in r.output, r.output
    assert not ws.docs.exists()
    assert run_cli("embed", corpus, "--workspace", ws.root, "-q").exit_code == 0  # released


# --------------------------------------------------------------------------- cluster and schedule
def kill_at(tmp_path, fault: str, *args):
    """Run `dgamix ARGS` in a real process that stops at ``fault`` (tests/faultpoint.py), SIGKILL it there."""
    mark = tmp_path / "fault.mark"
    mark.unlink(missing_ok=True)
    env = dict(ENV, DGAMIX_FAULT=fault, DGAMIX_FAULT_MARK=str(mark))
    p = subprocess.Popen([sys.executable, "-m", "tests.faultpoint", *map(str, args)], cwd=ROOT, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    kill_when(p, mark.exists, timeout=120)
    mark.unlink()


def _tree_state(ws):
    from dgamix.pipeline.core import manifest

    return manifest.read_meta(ws.tree("k4-4"), "tree")["state"] if ws.tree("k4-4").exists() else None


def _same_files(a, b, sub):
    files = sorted(f.relative_to(a) for f in (a / sub).rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(b) for f in (b / sub).rglob("*") if f.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    return files


def test_sigkill_cluster_at_each_write_then_rerun_equals_clean_run(tmp_path):
    """One clustering killed four times in a row (tree written, mid assignment part, domains
    written, tree marked complete: each time with the file complete or half-written under its
    temporary name), each rerun resuming; the end result is byte-identical to a clean run."""
    import shutil

    from dgamix.pipeline.core.errors import DgamixError
    from dgamix.pipeline.core.validate import clustering
    from dgamix.pipeline.core.workspace import Workspace
    from tests.helpers import fake_workspace, sphere_blobs

    x, _ = sphere_blobs(2000, 16, d=32, seed=0)
    base = fake_workspace(tmp_path / "base", x, shard_size=250)  # 8 embedding shards
    clean, killed = tmp_path / "clean", Workspace(tmp_path / "killed")
    shutil.copytree(base.root, clean)
    shutil.copytree(base.root, killed.root)
    args = ("cluster", "--workspace", killed.root, "--levels", "4,4", "-q")
    assert run_cli(*args[:2], clean, *args[3:]).exit_code == 0
    parts = killed.assignments_dir("k4-4")

    kill_at(tmp_path, "commit:tree.parquet:1", *args)  # early: tree fitted, not yet renamed
    assert _tree_state(killed) is None and list((killed.root / "clusters" / "k4-4").glob(".tree.parquet.*.tmp"))
    kill_at(tmp_path, "write:part-00003.parquet:1", *args)  # mid-shard: part 3 half written
    assert _tree_state(killed) == "fitted"
    assert sorted(p.name for p in parts.glob("part-*")) == [f"part-0000{i}.parquet" for i in range(3)]
    assert len(list(parts.glob(".part-00003.parquet.*.tmp"))) == 1
    with pytest.raises(DgamixError, match="not complete"):  # later stages refuse the half clustering
        clustering(killed, "k4-4")
    first = {p.name: p.stat().st_mtime_ns for p in parts.glob("part-*")}
    kill_at(tmp_path, "commit:domains.parquet:1", *args)  # all parts written, domains not renamed
    assert {p.name: p.stat().st_mtime_ns for p in parts.glob("part-0000[012]*")} == first  # resumed, not redone
    assert len(list(parts.glob("part-*"))) == 8 and not killed.domains("k4-4").exists()
    kill_at(tmp_path, "commit:tree.parquet:1", *args)  # domains written, tree 'complete' not renamed
    assert killed.domains("k4-4").exists() and _tree_state(killed) == "fitted"

    r = run_cli(*args)
    assert r.exit_code == 0, r.output
    assert re.search(r"shards_assigned\s*: 0\n", r.output) and re.search(r"tree\s*: reused", r.output), r.output
    files = _same_files(clean, killed.root, "clusters")
    assert len(files) == 10 and not list(killed.root.rglob("*.tmp"))  # orphaned temporaries swept
    a = pl.read_parquet(parts / "*.parquet")
    assert a["doc_id"].sort().to_list() == list(range(2000))  # no duplicated or missing doc_id
    assert clustering(killed, "k4-4", assignments=True)["state"] == "complete"


def test_sigkill_schedule_mid_stream_keeps_the_old_file_and_rerun_equals_clean(tmp_path):
    """A schedule of 1.12M rows streams in 2 record batches; killed after the first batch (the
    kill before a rename is covered by the cluster test: same writer), the previous schedule of
    that name stays intact; the rerun equals an uninterrupted run byte for byte."""
    from tests.helpers import fake_workspace, sphere_blobs

    x, _ = sphere_blobs(600, 8, d=16, seed=1)
    ws = fake_workspace(tmp_path / "ws", x, shard_size=200)
    assert run_cli("cluster", "--workspace", ws.root, "--levels", "4,2", "-q").exit_code == 0
    sched = ("schedule", "--workspace", ws.root, "--clusters", "k4-2", "--level", 2, "--mixer", "natural",
             "--steps", 140_000, "--batch-size", 8)
    assert run_cli(*sched, "--name", "clean").exit_code == 0
    assert run_cli(*sched[:-4], "--steps", 10, "--batch-size", 8, "--name", "s").exit_code == 0  # an earlier schedule
    old = ws.schedule("s").read_bytes()
    kill_at(tmp_path, "write:s.parquet:1", *sched, "--name", "s", "--overwrite")
    # the replacement is staged beside the workspace's files (pipeline/core/stage.py): the old one is intact
    assert ws.schedule("s").read_bytes() == old and len(list(ws.root.glob(".stage-schedule-s.*/**/.s.parquet.*.tmp"))) == 1
    r = run_cli(*sched, "--name", "s", "--overwrite")
    assert r.exit_code == 0, r.output
    assert ws.schedule("s").read_bytes() == ws.schedule("clean").read_bytes()
    assert not list(ws.root.rglob("*.tmp")) and not list(ws.root.glob(".stage-*"))


def test_disk_full_mid_clustering_names_the_file_keeps_earlier_outputs_and_resumes(tmp_path, monkeypatch):
    import errno

    import pyarrow.parquet as pq

    from tests.helpers import fake_workspace, sphere_blobs

    x, _ = sphere_blobs(800, 8, d=16, seed=2)
    ws = fake_workspace(tmp_path / "ws", x, shard_size=100)  # 8 shards
    assert run_cli("cluster", "--workspace", ws.root, "--levels", "2,2", "--name", "a", "-q").exit_code == 0
    before = {f: f.read_bytes() for f in ws.root.rglob("*.parquet")}
    real = pq.ParquetWriter.write_table

    def full(self, *a, **kw):  # the disk fills up while part 2 of clustering 'b' is written
        if "/clusters/b/assignments/.part-00002.parquet." in str(self.where):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, *a, **kw)

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "4,2", "--name", "b", "-q")
    monkeypatch.undo()
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"could not write {ws.assignment_part('b', 2)}: No space left on device" in r.output
    assert "earlier outputs are intact" in r.output
    assert all(f.read_bytes() == b for f, b in before.items())  # corpus, embeddings, clustering 'a'
    assert sorted(p.name for p in ws.assignments_dir("b").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "4,2", "--name", "b", "-q")
    assert r.exit_code == 0 and re.search(r"shards_skipped\s*: 2\n", r.output), r.output


def test_unwritable_workspace_is_a_clear_error_and_changes_nothing(tmp_path, monkeypatch):
    """A read-only workspace (as root, where permissions do not apply, the refusal is simulated)."""
    import errno

    from tests.helpers import fake_workspace, sphere_blobs

    x, _ = sphere_blobs(200, 4, d=8, seed=3)
    ws = fake_workspace(tmp_path / "ws", x)
    assert run_cli("cluster", "--workspace", ws.root, "--levels", "2", "-q").exit_code == 0
    before = {f: f.read_bytes() for f in ws.root.rglob("*") if f.is_file()}
    if os.geteuid() == 0:
        real_open = os.open

        def refuse(path, *a, **kw):
            if str(path).startswith(str(ws.root)):
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real_open(path, *a, **kw)

        monkeypatch.setattr(os, "open", refuse)
    else:
        ws.root.chmod(0o555)
    try:
        r = run_cli("schedule", "--workspace", ws.root, "--clusters", "k2", "--level", 1, "--mixer", "uniform",
                    "--steps", 5, "--batch-size", 2, "--name", "s")
    finally:
        monkeypatch.undo()
        ws.root.chmod(0o755)
    assert r.exit_code == 2 and "Traceback" not in r.output, r.output
    assert f"cannot write to the workspace {ws.root}" in r.output and "Permission denied" in r.output
    assert {f: f.read_bytes() for f in ws.root.rglob("*") if f.is_file()} == before
