"""`dgamix weights`: a run's final and time-averaged domain weights, exact on small hand-made logs,
for a domain run (your own domains) and a basis run (alpha = w @ P); bad runs are one line."""
from __future__ import annotations

import json

import numpy as np
import polars as pl

from dgamix.mixing import OnlineMixture
from tests.helpers import cli_ok, one_line_error, run_cli


def record(step, w):
    return {"step": step, "weights": np.asarray(w, np.float64), "alignment": None, "grad_norm": None,
            "target_norm": None, "lr": None}


def test_weights_of_a_domain_run_exactly(tmp_path):
    ids = np.arange(9)
    labels = ["news"] * 4 + ["code"] * 3 + ["math"] * 2
    mix = OnlineMixture.from_arrays(ids, labels, [f"t{i}" for i in ids], ["x"], mixer="uniform")
    names = mix.names  # code, math, news
    W = [[0.2, 0.3, 0.5], [0.1, 0.6, 0.3], [0.7, 0.2, 0.1]]
    mix.log = [record(0, W[0]), record(4, W[1]), record(10, W[2])]
    mix.write_run("dom", metrics=[{"step": 12, "split": "train", "loss": 1.0}], workspace=tmp_path / "ws")
    out = cli_ok("weights", "--workspace", tmp_path / "ws", "--run", "dom")
    assert "domains      : 3" in out
    folder = tmp_path / "ws" / "weights" / "dom"
    final, averaged = (json.loads((folder / f).read_text()) for f in ("final.json", "averaged.json"))
    want = (4 * np.array(W[0]) + 6 * np.array(W[1]) + 2 * np.array(W[2])) / 12  # steps in force: 0-4, 4-10, 10-12
    assert list(final) == names and abs(sum(final.values()) - 1) < 1e-12 and abs(sum(averaged.values()) - 1) < 1e-12
    np.testing.assert_allclose([final[n] for n in names], W[2], rtol=1e-12)
    np.testing.assert_allclose([averaged[n] for n in names], want, rtol=1e-12)
    t = pl.read_parquet(folder / "domain_weights.parquet")
    assert t["name"].to_list() == names and t["n_docs"].to_list() == [3, 2, 4] and t["domain"].to_list() == [0, 1, 2]
    np.testing.assert_allclose(t["averaged"].to_numpy(), want, rtol=1e-12)
    # --out: anywhere
    cli_ok("weights", "--workspace", tmp_path / "ws", "--run", "dom", "--out", tmp_path / "big-run")
    assert json.loads((tmp_path / "big-run" / "final.json").read_text()) == final


def test_weights_of_a_basis_run_are_domain_probabilities(tiny_ws):
    mix = OnlineMixture.from_workspace(tiny_ws, "c", 2, "t", basis="b", collate=lambda t: t)
    W = [[0.5, 0.3, 0.2], [0.2, 0.2, 0.6]]
    mix.log = [record(0, W[0]), record(3, W[1])]
    mix.write_run("w-basis", metrics=[{"step": 4, "split": "train", "loss": 1.0}])  # the run ends at step 4
    cli_ok("weights", "--workspace", tiny_ws.root, "--run", "w-basis")
    # basis 'b' (tests.helpers.train_workspace): target = .7 d0 + .3 d1, generic = .25 each, pocket = d3
    P = np.array([[0.7, 0.3, 0, 0], [0.25, 0.25, 0.25, 0.25], [0, 0, 0, 1]])
    t = pl.read_parquet(tiny_ws.root / "weights" / "w-basis" / "domain_weights.parquet")
    assert t["domain"].to_list() == [0, 1, 2, 3] and t["name"].to_list() == ["0", "1", "2", "3"]
    np.testing.assert_allclose(t["final"].to_numpy(), np.array(W[1]) @ P, rtol=1e-12)
    np.testing.assert_allclose(t["averaged"].to_numpy(), (3 * np.array(W[0]) + np.array(W[1])) @ P / 4, rtol=1e-12)


def test_bad_runs_are_one_line(tmp_path):
    one_line_error(run_cli("weights", "--workspace", tmp_path, "--run", "nope"), "no run 'nope'")
    one_line_error(run_cli("weights", "--workspace", tmp_path, "--run", "../x"), "--run")
