"""Fault injection with real processes: SIGKILL `dgamix embed` and `dgamix train` mid-run,
rerun, and compare with an uninterrupted run."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import polars as pl
import pytest

from tests.conftest import DATA, ROOT, run_cli

pytestmark = pytest.mark.slow
ENV = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")


def start(*args):
    return subprocess.Popen([sys.executable, "-m", "cli.main", *map(str, args)], cwd=ROOT, env=ENV,
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
    assert "shards_skipped  : 0" not in r.output
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
    from pipeline.workspace import Workspace, lock

    corpus = tmp_path / "c.parquet"
    pl.DataFrame({"text": ["a first document about rivers", "a second one about stars"]}).write_parquet(corpus)
    ws = Workspace(tmp_path / "ws")
    with lock(ws, "embed"):  # another process is embedding into this workspace
        r = run_cli("embed", corpus, "--workspace", ws.root, "-q")
    assert r.exit_code == 2 and "another dgamix process" in r.output, r.output
    assert not ws.docs.exists()
    assert run_cli("embed", corpus, "--workspace", ws.root, "-q").exit_code == 0  # released
