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
