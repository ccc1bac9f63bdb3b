"""Validation on read: a stale downstream artefact is refused with the command that rebuilds it.

The workspace is a copy of the session's small real workspace (tests/conftest.py real_ws).
Re-embedding the corpus makes the clustering stale; rebuilding the clustering makes the bases
and runs built on it stale; re-embedding with other settings makes the target sets stale;
rebuilding a target makes its bases stale. Each refusal names the artefact, the upstream
fingerprints and a command; running that command (taken from the message) fixes it.
"""
import re
import shlex
import shutil

import polars as pl
import pyarrow as pa
import pytest

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace
from tests.helpers import DATA, one_line_error, run_cli

pytestmark = pytest.mark.slow
TINY = ("--steps", 4, "--context", 32, "--vocab-size", 256, "--d-model", 32, "--n-layer", 1, "--batch-size", 4,
        "--eval-every", 4, "--eval-batches", 1, "--threads", 1, "-q")


@pytest.fixture
def ws(real_ws, tmp_path):
    dst = tmp_path / "ws"
    shutil.copytree(real_ws, dst, ignore=shutil.ignore_patterns("runs", "schedules", "bases", ".lock-*"))
    return Workspace(dst)


def refused(r, *needles) -> list[str]:
    """Assert a one-line user error containing ``needles``; returns the rebuild command's words."""
    one_line_error(r, *needles)
    m = re.search(r"rebuild it with `dgamix ([^`]*)`", r.output)
    assert m, r.output
    return shlex.split(m.group(1))


def schedule(ws, *args):
    return run_cli("schedule", "--workspace", ws.root, "--clusters", "k3x2", "--level", 2, "--steps", 3,
                   "--batch-size", 2, "--overwrite", *args)


def test_reembedding_makes_clustering_then_basis_run_and_target_stale(ws, tmp_path):
    w = ws.root
    basis = ("basis", "--workspace", w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k", "--by", "single")
    assert run_cli(*basis, "--name", "b").exit_code == 0
    assert run_cli("train", "--workspace", w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                   "--mixer", "uniform", "--name", "r", *TINY).exit_code == 0
    old_emb = manifest.read_meta(ws.embeddings)["inputs"]
    # the corpus is re-embedded (another corpus, other encoder settings) after clustering
    small = tmp_path / "small.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(30, seed=9).write_parquet(small)
    r = run_cli("embed", small, "--workspace", w, "--max-seq-length", 48, "--shard-size", 50, "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    new_emb = manifest.read_meta(ws.embeddings)["inputs"]

    stale = (f"clusters/k3x2 was built from embeddings {old_emb} but {ws.embeddings} is now {new_emb}",
             f"rebuild it with `dgamix cluster --workspace {w} --levels 3,2 --name k3x2 --overwrite`")
    for r in (run_cli(*basis, "--name", "b2"),
              run_cli("train", "--workspace", w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                      "--mixer", "uniform", "--name", "r2", *TINY),
              schedule(ws, "--mixer", "uniform", "--name", "s"),
              schedule(ws, "--basis", "b", "--name", "s"),
              schedule(ws, "--run", "r", "--name", "s")):
        cmd = refused(r, *stale)
    assert not (w / "bases" / "b2.parquet").exists() and not (w / "runs" / "r2").exists()
    assert run_cli(*cmd).exit_code == 0  # the command in the message rebuilds the clustering
    assert schedule(ws, "--mixer", "uniform", "--name", "s").exit_code == 0

    # the basis and the run were built on the old clustering
    cmd = refused(schedule(ws, "--basis", "b", "--name", "s"), "bases/b was built from clusters/k3x2 ",
                  f"but {ws.tree('k3x2')} is now ")
    refused(schedule(ws, "--run", "r", "--name", "s"), "runs/r was built from clusters/k3x2 ")
    # ... and the target set was embedded with max_seq_length 256, the corpus now with 48
    r = run_cli(*cmd)
    tcmd = refused(r, "targets/gsm8k was built from encoder ", f"but {ws.embeddings} is now ")
    assert tcmd[0] == "target" and tcmd[1].endswith("/gsm8k.parquet") and tcmd[-1] == "--overwrite"
    assert run_cli(*tcmd).exit_code == 0  # re-embeds the target
    assert run_cli(*cmd).exit_code == 0  # rebuilds the basis
    assert schedule(ws, "--basis", "b", "--name", "s").exit_code == 0


def test_stale_target_assignments_are_recomputed_and_a_rebuilt_target_makes_its_basis_stale(ws):
    w = ws.root
    cache = ws.target_dir("gsm8k") / "k3x2" / "assignments.parquet"
    assert run_cli("basis", "--workspace", w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                   "--by", "single", "--name", "b").exit_code == 0
    old = manifest.read_meta(cache)["inputs"]
    # reclustering (another seed) makes the cached target assignments stale: they are recomputed
    assert run_cli("cluster", "--workspace", w, "--levels", "3,2", "--name", "k3x2", "--seed", 1, "--overwrite",
                   "-q").exit_code == 0
    tree = manifest.read_meta(ws.tree("k3x2"))
    target_fp = manifest.read_meta(ws.target_dir("gsm8k") / "examples.parquet")["inputs"]
    assert run_cli("basis", "--workspace", w, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                   "--by", "single", "--name", "b", "--overwrite").exit_code == 0
    new = manifest.read_meta(cache)["inputs"]
    assert new != old and new == manifest.fingerprint(target_fp, tree["centroids_checksum"])
    # the target is rebuilt with another split: the basis built from the old one is refused
    src = manifest.read_meta(ws.target_dir("gsm8k") / "examples.parquet")["params"]["source"][0]
    r = run_cli("target", src, "--workspace", w, "--name", "gsm8k", "--holdout", 0.5,
                "--overwrite")
    assert r.exit_code == 0, r.output
    new_target = manifest.read_meta(ws.target_dir("gsm8k") / "examples.parquet")["inputs"]
    cmd = refused(schedule(ws, "--basis", "b", "--name", "s"),
                  f"bases/b was built from targets/gsm8k {target_fp} but ", f"is now {new_target}")
    assert cmd == ["basis", "--workspace", str(w), "--clusters", "k3x2", "--level", "2", "--target", "gsm8k",
                   "--by", "single", "--name", "b", "--overwrite"]
    assert run_cli(*cmd).exit_code == 0
    assert schedule(ws, "--basis", "b", "--name", "s").exit_code == 0


def test_a_manifest_with_missing_or_mistyped_columns_is_refused_before_work(ws):
    t, meta = manifest.read(ws.tree("k3x2"), "tree")
    bad = t.set_column(t.column_names.index("size"), "size", pa.array([str(v) for v in t["size"].to_pylist()]))
    extra = {k: v for k, v in meta.items() if k not in ("schema_version", "dgamix_version", "kind", "params", "inputs")}
    manifest.write(ws.tree("k3x2"), bad, "tree", meta["params"], meta["inputs"], extra=extra)
    r = schedule(ws, "--mixer", "uniform", "--name", "s")
    assert r.exit_code == 2 and "column 'size' is string, expected integers" in r.output, r.output
    manifest.write(ws.tree("k3x2"), t.drop(["size"]), "tree", meta["params"], meta["inputs"], extra=extra)
    r = schedule(ws, "--mixer", "uniform", "--name", "s")
    assert r.exit_code == 2 and "lacks column 'size'" in r.output, r.output
