"""`dgamix train` end to end on a tiny real workspace; user errors exit 2 with one line."""
from __future__ import annotations

import polars as pl
import pytest

from tests.helpers import one_line_error, run_cli, train_workspace

TINY = ["--context", 32, "--vocab-size", 512, "--d-model", 32, "--n-layer", 1, "--batch-size", 4,
        "--align-batch-size", 4, "--target-batch-size", 4, "--eval-batches", 1, "--reweight-every", 5, "--reweight-start", 4,
        "--eval-every", 10, "--checkpoint-every", 10, "--quiet"]

pytestmark = pytest.mark.usefixtures("one_thread")  # tests.conftest


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return train_workspace(tmp_path_factory.mktemp("traincli") / "ws")


def train(ws, *args):
    return run_cli("train", "--workspace", ws.root, *TINY, *args)


def test_cli_dga_with_basis_runs_and_writes_the_run(ws):
    r = train(ws, "--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "b",
              "--steps", 20, "--name", "cli-dga")
    assert r.exit_code == 0, r.output
    assert "loss_target" in r.output and "seconds_per_step" in r.output
    d = ws.run_dir("cli-dga")
    m = pl.read_parquet(d / "metrics.parquet")
    assert m["step"].max() == 20 and set(m["split"]) == {"train", "target", "general"}
    w = pl.read_parquet(d / "weights.parquet")
    assert sorted(w["step"].unique()) == [0, 5, 10, 15, 20]
    assert (d / "checkpoint" / "state.pt").exists() and (d / "repetitions.parquet").exists()
    # the same name again: refused; --resume of a finished run just rewrites its outputs
    one_line_error(train(ws, "--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "b",
                         "--steps", 20, "--name", "cli-dga"), "already exists", "--resume")
    one_line_error(train(ws, "--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "b",
                         "--steps", 20, "--eta", 0.5, "--resume", "--name", "cli-dga"), "'eta' differs")
    r = train(ws, "--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "b",
              "--steps", 20, "--resume", "--name", "cli-dga")
    assert r.exit_code == 0, r.output


@pytest.mark.parametrize("args,needles", [
    (["--clusters", "nope", "--level", 2, "--target", "t", "--mixer", "dga"], ["no clustering 'nope'", "'c'"]),
    (["--clusters", "c", "--level", 3, "--target", "t", "--mixer", "dga"], ["--level 3", "1..2"]),
    (["--clusters", "c", "--level", 2, "--target", "zz", "--mixer", "dga"], ["no target 'zz'", "'t'"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "zz"], ["no basis 'zz'", "'b'"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--basis", "b1"], ["level 1"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "is"], ["needs --basis"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "magic"], ["unknown --mixer"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "uniform", "--basis", "b"], ["drop --basis"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--align-params", "blocks["],
     ["not a regular expression"]),
    (["--clusters", "c", "--level", 2, "--target", "t", "--mixer", "dga", "--align-params", "nothing-like-this"],
     ["--align-params", "matches none of the model's trainable parameters"]),
])
def test_cli_bad_inputs_exit_2_with_one_line(ws, args, needles):
    one_line_error(train(ws, *args, "--steps", 2, "--name", "bad"), *needles)
    assert not ws.run_dir("bad").exists()
