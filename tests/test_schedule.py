"""Schedule export on the small real workspace: static mixtures and replay of a weight log."""
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from dgamix.mixing.schedule import segments_from_log
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_segments_from_log_hold_weights_until_the_next_logged_step():
    segs = segments_from_log(np.array([0, 10, 25]), np.array([[1.0, 0], [0.5, 0.5], [0, 1.0]]), 30)
    assert [(s.start, s.stop) for s in segs] == [(0, 10), (10, 25), (25, 30)]
    assert segments_from_log(np.array([0, 10]), np.eye(2), 5)[0].stop == 5 and len(segments_from_log(np.array([0, 10]), np.eye(2), 5)) == 1


def test_uniform_schedule_rows_and_ids(real_ws):
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--mixer", "uniform",
                "--steps", 25, "--batch-size", 8, "--name", "u")
    assert r.exit_code == 0, r.output
    s = pl.read_parquet(Workspace(real_ws).schedule("u"))
    docs = pl.read_parquet(Workspace(real_ws).docs)
    assert s.height == 200 and s.columns == ["step", "position", "doc_id", "domain", "id"]
    assert s["step"].to_list() == [i // 8 for i in range(200)] and s["position"].to_list() == [i % 8 for i in range(200)]
    kept = docs.filter(pl.col("dup_of").is_null())
    assert s["doc_id"].is_in(kept["doc_id"].implode()).all()
    joined = s.join(docs.select("doc_id", pl.col("id").alias("id_docs")), on="doc_id")
    assert (joined["id"] == joined["id_docs"]).all()
    # limited-data sampling: inside a domain no document repeats before the domain is exhausted
    a = pl.read_parquet(Workspace(real_ws).assignments_dir("k3x2") / "*.parquet")
    sizes = dict(a.group_by("level_2").len().iter_rows())
    for dom, g in s.group_by("domain"):
        ids = g.sort("step", "position")["doc_id"].to_list()
        first = ids[: sizes[dom[0]]]
        assert len(set(first)) == len(first)
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--mixer", "uniform",
                "--steps", 25, "--batch-size", 8, "--name", "u")
    assert r.exit_code == 2 and "--overwrite" in r.output


def test_replay_of_a_weight_log_follows_the_logged_weights(real_ws):
    ws = Workspace(real_ws)
    doms = sorted(pl.read_parquet(ws.tree("k3x2")).filter((pl.col("level") == 2) & (pl.col("size") > 0))["domain"].to_list())
    d0, d1 = doms[0], doms[1]
    # all mass on d0 for steps 0..9, then on d1
    rows = [{"step": 0, "domain": d, "weight": float(d == d0)} for d in doms] + \
           [{"step": 10, "domain": d, "weight": float(d == d1)} for d in doms]
    manifest.write(ws.run_dir("fake") / "weights.parquet", pa.Table.from_pylist(rows), "run-weights",
                   {"clusters": "k3x2", "level": 2, "mixer": "dga"})
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--run", "fake",
                "--steps", 20, "--batch-size", 4, "--name", "replay")
    assert r.exit_code == 0, r.output
    s = pl.read_parquet(ws.schedule("replay"))
    assert set(s.filter(pl.col("step") < 10)["domain"]) == {d0} and set(s.filter(pl.col("step") >= 10)["domain"]) == {d1}
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 1, "--run", "fake",
                "--steps", 20, "--batch-size", 4, "--name", "replay1")
    assert r.exit_code == 2 and "level 2" in r.output


def test_basis_schedule_and_bad_inputs(real_ws):
    r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                "--by", "single", "--name", "is_sched")
    assert r.exit_code == 0, r.output
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--basis", "is_sched",
                "--steps", 10, "--batch-size", 4, "--name", "is-sched", "--overwrite")  # shared workspace:
    assert r.exit_code == 0, r.output  # other tests (a hypothesis name fuzz) may have written any name before
    s = pl.read_parquet(Workspace(real_ws).schedule("is-sched"))
    support = pl.read_parquet(Workspace(real_ws).basis("is_sched"))["domain"].to_list()
    assert s.height == 40 and s["domain"].is_in(support).all()
    for args, msg in ((("--mixer", "uniform", "--basis", "is_sched"), "does not use --basis"),
                      (("--mixer", "is"), "--mixer is needs --basis"),
                      (("--run", "r", "--basis", "is_sched"), "drop --mixer/--basis"),
                      ((), "give one of"),
                      (("--mixer", "dga"), "static schedule"),
                      (("--run", "nope"), "no run 'nope'"),
                      (("--basis", "nope"), "no basis 'nope'")):
        r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, *args,
                    "--steps", 2, "--batch-size", 2, "--name", "x", "--overwrite")
        assert r.exit_code == 2 and msg in r.output, r.output



def test_basis_means_importance_sampling_as_in_train(real_ws):
    """`schedule --basis B` draws B's 'target' histogram, as `train --mixer is --basis B` does, not a
    blend of all of B's bases (here half of the mass would be the generic uniform basis)."""
    from dgamix.mixing import inputs

    ws = Workspace(real_ws)
    r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                "--by", "single", "--generic", "uniform", "--name", "is_gen")
    assert r.exit_code == 0, r.output
    common = ("--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--steps", 500, "--batch-size", 8,
              "--with-replacement")
    assert run_cli("schedule", *common, "--basis", "is_gen", "--name", "isb").exit_code == 0
    assert run_cli("schedule", *common, "--mixer", "is", "--basis", "is_gen", "--name", "isb2").exit_code == 0
    s = pl.read_parquet(ws.schedule("isb"))
    assert s.equals(pl.read_parquet(ws.schedule("isb2")))  # --basis B alone is --mixer is --basis B
    index = inputs.training_pool(ws, "k3x2", 2, 0.0, 0).index
    P, names, _ = inputs.load_basis(ws, "is_gen", "k3x2", 2)
    assert names == ["target", "generic:uniform"]
    want = inputs.is_weights(P, names, index)
    want = want / want.sum()
    blend = 0.5 * want + 0.5 / len(index)  # what --basis meant before: uniform over B's two bases
    assert np.abs(blend - want).max() > 0.05  # the two meanings are far apart on this workspace
    counts = s.group_by("domain").len()
    got = np.zeros(len(index))
    got[index.positions(counts["domain"].to_numpy())] = counts["len"].to_numpy()
    assert np.abs(got / got.sum() - want).max() < 0.03  # 4,000 draws: a few standard errors


def test_run_replay_draws_only_the_runs_own_pool(real_ws, tmp_path):
    """`schedule --run` uses the run's --tokens-per-domain budget (same seeded subsets) and leaves out
    its general held-out documents: per domain the schedule exhausts exactly the run's pool."""
    from dgamix.mixing import inputs

    ws = Workspace(real_ws)
    r = run_cli("train", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                "--mixer", "uniform", "--steps", 4, "--batch-size", 4, "--tokens-per-domain", 400, "--context", 16,
                "--vocab-size", 256, "--d-model", 16, "--n-layer", 1, "--eval-every", 4, "--eval-batches", 1,
                "--checkpoint-every", 0, "--seed", 7, "--threads", 1, "--quiet", "--name", "budget")
    assert r.exit_code == 0, r.output
    reps = pl.read_parquet(ws.run_dir("budget") / "repetitions.parquet")
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--run", "budget",
                "--steps", 100, "--batch-size", 8, "--name", "budget")
    assert r.exit_code == 0, r.output
    s = pl.read_parquet(ws.schedule("budget"))
    assert manifest.read_meta(ws.schedule("budget"))["params"]["seed"] == 7  # the run's seed by default
    distinct = dict(s.group_by("domain").agg(pl.col("doc_id").n_unique()).iter_rows())
    pool = dict(reps.select("domain", "n_docs").iter_rows())
    assert distinct == {d: n for d, n in pool.items() if d in distinct} and len(distinct) == len(pool)
    n_all = pl.read_parquet(ws.assignments_dir("k3x2") / "*.parquet").height
    assert sum(pool.values()) < n_all - 1  # the budget left documents out: a real restriction
    meta = manifest.read_meta(ws.run_dir("budget") / "metrics.parquet")["params"]
    full = inputs.training_pool(ws, "k3x2", 2, 0.0, 0).index
    held = inputs.general_holdout(full, meta["general_holdout"], meta["eval_batches"] * meta["eval_batch_size"])
    assert held.size == meta["n_general_holdout"] > 0
    assert not s["doc_id"].is_in(held.tolist()).any()
    # another --seed orders the draws differently but keeps the run's budgeted documents
    r = run_cli("schedule", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--run", "budget",
                "--steps", 100, "--batch-size", 8, "--seed", 11, "--name", "budget11")
    assert r.exit_code == 0, r.output
    s11 = pl.read_parquet(ws.schedule("budget11"))
    assert not s11["doc_id"].equals(s["doc_id"])
    per_domain = lambda t: {d: sorted(set(g)) for d, g in t.group_by("domain").agg("doc_id").iter_rows()}  # noqa: E731
    assert per_domain(s11) == per_domain(s)
