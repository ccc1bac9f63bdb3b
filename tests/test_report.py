"""`dgamix report` on the small real workspace with two tiny real training runs."""
import pytest

from tests.helpers import run_cli

pytestmark = pytest.mark.slow
TINY = ("--steps", 10, "--batch-size", 4, "--context", 32, "--vocab-size", 512, "--d-model", 32, "--n-layer", 1,
        "--eval-every", 5, "--reweight-every", 5, "--align-batch-size", 4, "--target-batch-size", 4, "--quiet")


def test_report_shows_runs_side_by_side(real_ws):
    r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                "--by", "single", "--generic", "natural", "--name", "rep")
    assert r.exit_code == 0, r.output
    for mixer in ("uniform", "dga"):
        extra = ("--basis", "rep") if mixer == "dga" else ()
        r = run_cli("train", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                    "--mixer", mixer, *extra, *TINY, "--name", f"rep-{mixer}")
        assert r.exit_code == 0, r.output
    r = run_cli("report", "--workspace", real_ws, "--runs", "rep-uniform,rep-dga")
    assert r.exit_code == 0, r.output
    out = real_ws / "report"
    md = (out / "report.md").read_text()
    assert "| rep-uniform | dgamix train | uniform |" in md and "| rep-dga | dgamix train | dga |" in md
    for png in ("losses.png", "weights-rep-dga.png", "clusters-k3x2.png"):
        assert (out / png).stat().st_size > 5000, png
        assert f"]({png})" in md
    # an external trainer's view of the DGA run: its weight trajectory replayed step by step
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--run", "rep-dga",
                "--steps", 10, "--batch-size", 4, "--name", "rep-dga")
    assert r.exit_code == 0, r.output
    import polars as pl
    assert pl.read_parquet(real_ws / "schedules" / "rep-dga.parquet").height == 40
    r = run_cli("report", "--workspace", real_ws, "--runs", "nope")
    assert r.exit_code == 2 and "no metrics" in r.output


def test_runs_of_different_vocabularies_get_their_own_loss_plots(tmp_path):
    """Losses in nats/token of two vocabularies share no axis: one plot per model identity, said in one line."""
    import numpy as np

    from dgamix.mixing import OnlineMixture

    ws = tmp_path / "ws"
    mix = OnlineMixture.from_arrays(np.arange(6), ["a", "b"] * 3, [f"t{i}" for i in range(6)], ["x"], mixer="uniform")
    mix.next_batch(2)
    gpt2 = {"tokenizer": "gpt2", "vocab_size": 50257}
    for run, model in (("small-a", gpt2), ("small-b", {**gpt2, "n_params": 10}), ("bert", {"tokenizer": "bert",
                                                                                           "vocab_size": 30522})):
        mix.write_run(run, metrics=[{"step": 1, "split": "target", "loss": 3.0}], step=1, workspace=ws, model=model)
    r = run_cli("report", "--workspace", ws, "--runs", "small-a,small-b")  # one vocabulary: one axis
    assert r.exit_code == 0, r.output
    md = (ws / "report" / "report.md").read_text()
    assert "![losses](losses.png)" in md and "not comparable" not in md
    r = run_cli("report", "--workspace", ws)
    assert r.exit_code == 0, r.output
    md = (ws / "report" / "report.md").read_text().splitlines()
    assert sum("not comparable" in line for line in md) == 1 and "![losses](losses.png)" not in md
    assert "### Losses 1: tokenizer bert, vocabulary of 30522 tokens" in md and "Runs: bert." in md
    assert "### Losses 2: tokenizer gpt2, vocabulary of 50257 tokens" in md and "Runs: small-a, small-b." in md
    assert (ws / "report" / "losses-1.png").exists() and (ws / "report" / "losses-2.png").exists()
