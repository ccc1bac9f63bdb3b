"""bench/experiments/efficacy's bookkeeping on exact small cases: tempered static mixers, paired
differences, and the `dgamix train` options it reads from TrainConfig / DGAConfig.

The bench itself trains on the mini-Pile (../shared), which a user's clone does not have; these
tests need no data. bench/ is a package of the repository root (pytest puts the root on sys.path,
as tests/ is a package too).
"""
import importlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def eff():
    return importlib.import_module("bench.experiments.efficacy")


def run(mixer, seed, target, general):
    return {"mixer": mixer, "seed": seed, "final_target": target, "final_general": general, "best_target": target,
            "max_epochs": 1, "mean_epochs": 1.0, "repeated_draw_share": 0.0, "seconds": 1.0, "weights": None}


def test_static_tempered_mixers_train_as_is_on_their_own_basis(eff):
    assert eff.train_mixer("is-t1") == "is" and eff.train_mixer("is") == "is" and eff.train_mixer("dga") == "dga"
    regime = eff.REGIMES["c-temper"]
    assert eff.basis_name(regime, "single", "natural", "0,1,2") == "mmlu-l2-single-natural-t0_1_2"
    assert eff.basis_name(regime, "single", "none") == "mmlu-l2-single-none"  # untempered names unchanged


def test_paired_differences_to_is_uniform_and_each_static_tempered_mixer(eff):
    t = {"uniform": [5.7, 5.8], "is": [5.4, 5.5], "is-t1": [5.2, 5.4], "dga": [5.1, 5.45]}
    runs = [run(m, s, v[s], 6.0 + s) for m, v in t.items() for s in (0, 1)]
    agg = eff.aggregate(runs, list(t))
    d = agg["dga"]
    assert np.allclose(d["target_minus_is"]["values"], [-0.3, -0.05])
    assert np.allclose(d["target_minus_is-t1"]["values"], [-0.1, 0.05])
    assert np.allclose(d["target_minus_uniform"]["values"], [-0.6, -0.35])
    assert np.isclose(d["target_minus_is-t1"]["std"], np.std([-0.1, 0.05], ddof=1))
    assert "target_minus_is-t1" not in agg["is-t1"] and "target_minus_is" in agg["is-t1"]
    head, _, *rows = eff.table(agg).splitlines()
    assert "target − is-t1" in head
    dga_row = next(r for r in rows if r.startswith("| dga "))
    assert "-0.0250 ± 0.1061" in dga_row  # mean and sample std of (-0.1, +0.05)


def test_without_the_mini_pile_the_bench_says_so_and_exits_cleanly(eff, tmp_path, capsys):
    assert eff.main(["--pool", str(tmp_path / "none.parquet"), "--workspace", str(tmp_path / "ws")]) is None
    assert "skipped: the mini-Pile is not here" in capsys.readouterr().out
    assert not (tmp_path / "ws").exists()


def test_train_options_take_the_trainers_defaults_but_where_the_bench_sets_its_own(eff):
    from dgamix.mixing.dga import DGAConfig
    from dgamix.mixing.testbed.config import TrainConfig

    params = importlib.import_module("bench.experiments.efficacy.params")
    args = importlib.import_module("bench.experiments.efficacy.cli").parser().parse_args([])
    t, d = TrainConfig(), DGAConfig()
    for k in params.TRAIN_OPTIONS + params.PROBE_EVAL_OPTIONS:
        assert getattr(args, k) == params.BENCH.get(k, getattr(t, k)), k
    for k in params.DGA_OPTIONS:
        assert getattr(args, k) == params.BENCH.get(k, getattr(d, k)), k
    cfg = params.config_of(args, 0, "dga", None, {"eta": 2.0})
    assert cfg.dga.eta == 2.0 and cfg.checkpoint_every == 0 and cfg.align_batch_size == params.BENCH["align_batch_size"]
