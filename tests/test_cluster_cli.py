"""`dgamix cluster` end to end through the Typer app: two granularities, --list, user errors."""
from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.manifest import embedding_array
from tests.helpers import fake_workspace, one_line_error, run_cli, sphere_blobs


@pytest.fixture()
def ws(tmp_path):
    x, labels = sphere_blobs(1200, 8, d=16, spread=0.1, seed=0)
    return fake_workspace(tmp_path / "ws", x, [f"text {i} of blob {l}" for i, l in enumerate(labels)], shard_size=250)


def test_two_granularities_in_one_workspace_and_list(ws):
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "8,8", "--quiet")
    assert r.exit_code == 0, r.output
    assert "k8-8" in r.stdout and "mean_sim" in r.stdout and "8 / 64" in r.stdout
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "16", "-q")
    assert r.exit_code == 0, r.output
    for name, depth in (("k8-8", 2), ("k16", 1)):
        assert ws.tree(name).exists() and ws.domains(name).exists()
        a = pl.read_parquet(ws.assignments_dir(name))
        assert sorted(a["doc_id"].to_list()) == list(range(1200))  # every doc exactly once
        d = pl.read_parquet(ws.domains(name))
        for lv in range(1, depth + 1):
            assert d.filter(pl.col("level") == lv)["n_docs"].sum() == 1200
    r = run_cli("cluster", "--workspace", ws.root, "--list")
    assert r.exit_code == 0
    assert "k8-8" in r.stdout and "k16" in r.stdout and "8 / 64" in r.stdout and "1,200" in r.stdout

    # the same command again resumes (nothing to do); other parameters are refused unless --overwrite
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "16", "-q")
    assert r.exit_code == 0 and "reused" in r.stdout
    msg = one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", "16", "--seed", "1", "-q"))
    assert "--overwrite" in msg and "seed=0" in msg
    r = run_cli("cluster", "--workspace", ws.root, "--levels", "16", "--seed", "1", "--overwrite", "-q")
    assert r.exit_code == 0, r.output
    assert manifest.read_meta(ws.tree("k16"))["params"]["seed"] == 1


@pytest.mark.parametrize("levels, words", [("8,x", "not an integer"), ("8,1", "a level of 1"), ("0", "a level of 0"),
                                           ("64,64", "only 1,200"), ("", "empty"), ("2.5", "not an integer")])
def test_bad_levels(ws, levels, words):
    assert words in one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", levels, "-q"))


def test_no_embeddings(tmp_path):
    msg = one_line_error(run_cli("cluster", "--workspace", tmp_path / "empty", "--levels", "4"))
    assert "dgamix embed" in msg and "embeddings.parquet" in msg


def test_missing_levels_and_bad_engine(ws):
    assert "--levels" in one_line_error(run_cli("cluster", "--workspace", ws.root))
    assert "--engine" in one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", "4", "--engine", "spark"))


def test_mixed_dimensions(ws):
    part = ws.embedding_part(2)
    table, meta = manifest.read(part)
    x = np.ones((table.num_rows, 8), np.float32) / np.sqrt(8)
    manifest.write(part, pa.table({"doc_id": table["doc_id"], "embedding": embedding_array(x, "float32")}),
                   meta["kind"], meta["params"], meta["inputs"])
    msg = one_line_error(run_cli("cluster", "--workspace", ws.root, "--levels", "4", "-q"))
    assert "mixed dimensions" in msg and "part-00002" in msg and "--overwrite" in msg


def test_nan_embeddings(tmp_path):
    x, _ = sphere_blobs(300, 3, d=8)
    x[123, 4] = np.nan
    w = fake_workspace(tmp_path / "nan", x, shard_size=100)
    msg = one_line_error(run_cli("cluster", "--workspace", w.root, "--levels", "3", "-q"))
    assert "NaN" in msg and "part-00001" in msg and "doc_id 123" in msg
    assert not w.tree("k3").exists()  # caught before anything was written
