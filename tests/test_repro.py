"""Reproducible bit for bit: the same inputs and seed give byte-identical manifest files.

Two workspaces are built one after the other from the same files; every manifest file (embed
--precision fp32, cluster, target, basis, schedule; data and metadata) must be byte-identical.
(Both builds run in this process to keep the suite fast: loading the encoder in a fresh process
costs 10-30 s here. Equality across processes is checked by tests/test_faults.py, where outputs
of SIGKILLed subprocesses of embed and cluster must equal in-process clean runs byte for byte.)
Manifests hold no wall-clock time and no workspace path (paths inside a workspace are relative;
the corpus and target files are named as given, so both workspaces read the same files). `dgamix train` twice with the same seed
gives identical losses and weights (the seconds column is wall time and is not compared).
"""
import numpy as np
import polars as pl
import pytest

from tests.helpers import DATA, run_cli

pytestmark = pytest.mark.slow


def stage_args(ws, corpus, target):
    return [("embed", corpus, "--workspace", ws, "--precision", "fp32", "--shard-size", 20, "--max-seq-length", 32,
             "-q"),
            ("cluster", "--workspace", ws, "--levels", "3,2", "--name", "k", "-q"),
            ("target", target, "--workspace", ws, "--name", "t"),
            ("basis", "--workspace", ws, "--clusters", "k", "--level", 2, "--target", "t", "--by", "levels",
             "--generic", "natural", "--name", "b"),
            ("schedule", "--workspace", ws, "--clusters", "k", "--level", 2, "--basis", "b", "--steps", 30,
             "--batch-size", 4, "--name", "s")]


def build(ws, corpus, target):
    for args in stage_args(ws, corpus, target):
        r = run_cli(*args)
        assert r.exit_code == 0, (args, r.output)


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("repro")
    corpus, target = root / "corpus.parquet", root / "target.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(48, seed=11).write_parquet(corpus)
    pl.read_parquet(DATA / "targets" / "gsm8k.parquet").head(24).write_parquet(target)
    build(root / "a", corpus, target)
    build(root / "b", corpus, target)
    return root / "a", root / "b"


def test_same_inputs_and_seed_give_byte_identical_manifests(two_builds):
    a, b = two_builds
    files = sorted(f.relative_to(a) for f in a.rglob("*.parquet"))
    assert files == sorted(f.relative_to(b) for f in b.rglob("*.parquet"))
    kinds = {str(f).split("/")[0] for f in files}
    assert {"docs.parquet", "embeddings", "embeddings.parquet", "clusters", "targets", "bases", "schedules"} <= kinds
    differ = [str(f) for f in files if (a / f).read_bytes() != (b / f).read_bytes()]
    assert not differ, differ
    for f in files:  # nothing in them names the workspace
        assert str(a).encode() not in (a / f).read_bytes(), f


def test_train_same_seed_gives_identical_metrics_and_weights(two_builds):
    ws = two_builds[0]
    common = ("train", "--workspace", ws, "--clusters", "k", "--level", 2, "--target", "t", "--mixer", "dga",
              "--basis", "b", "--steps", 8, "--reweight-every", 4, "--reweight-start", 0, "--eval-every", 4,
              "--eval-batches", 1, "--context", 32, "--vocab-size", 256, "--d-model", 32, "--n-layer", 1,
              "--batch-size", 4, "--align-batch-size", 4, "--target-batch-size", 4, "--threads", 1, "--seed", 3, "-q")
    for name in ("r1", "r2"):
        r = run_cli(*common, "--name", name)
        assert r.exit_code == 0, r.output
    m1, m2 = (pl.read_parquet(ws / "runs" / n / "metrics.parquet") for n in ("r1", "r2"))
    assert m1.drop("seconds").equals(m2.drop("seconds")) and m1.height > 0  # step, split, loss, tokens
    assert np.isfinite(m1["loss"].to_numpy()).all()
    assert (ws / "runs/r1/weights.parquet").read_bytes() == (ws / "runs/r2/weights.parquet").read_bytes()
