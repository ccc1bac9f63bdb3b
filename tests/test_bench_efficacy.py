"""bench/experiments/efficacy's bookkeeping on exact small cases: tempered static mixers, paired
differences, and the `dgamix train` options it reads from TrainConfig / DGAConfig.

The bench itself trains on the mini-Pile (../shared), which a user's clone does not have; these
tests need no data. bench/ is a package of the repository root (pytest puts the root on sys.path,
as tests/ is a package too).
"""
import importlib
import json

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


def test_unigram_baseline_exact_small_case():
    from dgamix.mixing.testbed.packing import DocTokens, Windows

    uni = importlib.import_module("bench.experiments.efficacy.unigram")
    tokens = DocTokens(np.array([3, 4, 3, 5]), np.array([0, 2, 3, 4]))  # docs [3 4], [3], [5]; EOS = 2
    counts = np.stack([uni.domain_counts(tokens, [0, 1], 6), uni.domain_counts(tokens, [2], 6)])
    np.testing.assert_array_equal(counts, [[0, 0, 2, 2, 1, 0], [0, 0, 1, 0, 0, 1]])
    p = uni.mixture_unigram(counts, np.array([1.0, 1.0]), floor=0.0)  # 0.5 * (.4, .4, .2 on 2, 3, 4) + 0.5 * (.5 on 2, 5)
    np.testing.assert_allclose(p, [0, 0, 0.45, 0.2, 0.1, 0.25], rtol=1e-14)
    w = Windows(np.array([[4, 3, 5, 0]]))  # predicted: 3, 5 (the first piece is context, PAD is ignored)
    np.testing.assert_array_equal(uni.predicted(w), [3, 5])
    assert np.isclose(uni.cross_entropy(uni.predicted(w), p), -(np.log(0.2) + np.log(0.25)) / 2, rtol=1e-14)
    own = uni.own_unigram(np.array([3, 3, 4]), 6)  # add-half over ids 1..5: (.5, .5, 2.5, 1.5, .5) / 5.5
    np.testing.assert_allclose(own, np.array([0, 0.5, 0.5, 2.5, 1.5, 0.5]) / 5.5, rtol=1e-14)
    out = uni.baselines(tokens, [np.array([0, 1]), np.array([2])], {"uniform": np.ones(2), "first": np.array([1.0, 0])},
                        Windows(np.array([[2, 3, 3, 4]])), {"test": w}, 6)
    assert np.isclose(out["mixture:uniform"]["test"], -(np.log(0.2) + np.log(0.25)) / 2, rtol=1e-5)
    f = uni.FLOOR  # piece 5 never appears in domain 0: only the floor keeps it finite
    assert np.isclose(out["mixture:first"]["test"], -(np.log((1 - f) * 0.4 + f / 5) + np.log(f / 5)) / 2, rtol=1e-12)
    assert np.isclose(out["own"]["test"], -(np.log(2.5 / 5.5) + np.log(0.5 / 5.5)) / 2, rtol=1e-14)


def test_protocol_splits_intervals_and_primary_criterion():
    proto = importlib.import_module("bench.experiments.efficacy.protocol")
    m = proto.split_rows(10)
    assert m.sum() == 3 and np.array_equal(m, proto.split_rows(10)) and not np.array_equal(m, proto.split_rows(10, 2))
    s = proto.ci95([1.0, 2.0, 3.0])  # t(0.975, 2) = 4.3027; sd 1
    assert np.isclose(s["mean"], 2.0) and np.isclose(s["ci95"], 4.302652729911275 / np.sqrt(3), rtol=1e-9)
    static = {0: (5.0, 6.0), 1: (5.1, 6.1)}
    assert proto.primary(static, {0: (5.01, 5.9), 1: (5.12, 6.0)})["pass"]       # +0.015 target, -0.1 general
    assert not proto.primary(static, {0: (5.05, 5.9), 1: (5.12, 6.0)})["pass"]   # +0.035 target
    assert not proto.primary(static, {0: (4.9, 6.2), 1: (5.0, 6.1)})["pass"]     # general worse
    assert proto.curve_rises([6.0, 5.5, 5.4, 5.43]) and not proto.curve_rises([6.0, 5.5, 5.4, 5.41])


def test_protocol_reuses_a_run_only_with_the_same_code_settings_and_inputs(tmp_path):
    proto = importlib.import_module("bench.experiments.efficacy.protocol")
    (tmp_path / "src" / "mixing").mkdir(parents=True)
    (tmp_path / "src" / "mixing" / "a.py").write_text("x = 1\n")
    v1 = proto.code_version(tmp_path / "src", ("mixing",))
    (tmp_path / "src" / "mixing" / "a.py").write_text("x = 2\n")
    v2 = proto.code_version(tmp_path / "src", ("mixing",))
    assert v2 != v1
    (tmp_path / "src" / "mixing" / "report.py").write_text("plots = 1\n")  # not training code: same version
    assert proto.code_version(tmp_path / "src", ("mixing",)) == v2
    (tmp_path / "src" / "mixing" / "b.py").write_text("y = 1\n")  # a new training module: another version
    assert proto.code_version(tmp_path / "src", ("mixing",)) != v2
    assert proto.code_version() == proto.code_version()

    class Fixed(proto.Protocol):  # the workspace's fingerprints, as a dict the test controls
        fingerprints = {"corpus": "c1", "target": "t1"}

        def inputs(self, job):
            return dict(self.fingerprints)

    p = Fixed(tmp_path / "ws")
    job = {"name": "r", "regime": "a", "mixer": "uniform", "basis": None, "target": "mmlu", "arm": "uniform",
           "config": proto.testbed_config()}
    (tmp_path / "ws" / "runs" / "r").mkdir(parents=True)
    (tmp_path / "ws" / "runs" / "r" / "bench-stamp.json").write_text(
        json.dumps({"stamp": p.stamp(job), "result": {"val": 5.0}}))
    assert p.finished(job) == {"val": 5.0}
    p.fingerprints = {"corpus": "c1", "target": "t2"}   # the target was rebuilt
    assert p.finished(job) is None
    p.fingerprints = {"corpus": "c1", "target": "t1"}
    p.code = "other"                                   # the training code changed
    assert p.finished(job) is None
    with pytest.raises(RuntimeError, match="changed while the protocol ran"):
        p.run(job)   # the code on disk is not the version it started with: nothing trains, nothing is stamped
    assert json.loads((tmp_path / "ws" / "runs" / "r" / "bench-stamp.json").read_text())["result"] == {"val": 5.0}
    p.code = proto.code_version()
    p.check_code(job)
    assert p.finished({**job, "config": proto.replace(job["config"], steps=7)}) is None  # another setting
    assert p.finished(job) == {"val": 5.0}

    # a fresh machine: no workspace copy, only the committed record beside the results
    p = Fixed(tmp_path / "ws2", out=tmp_path / "results")
    assert p.finished(job) is None
    p.record("r").parent.mkdir(parents=True)
    p.record("r").write_text(json.dumps({"stamp": p.stamp(job), "result": {"val": 4.0}}))
    assert p.finished(job) == {"val": 4.0}
    p.fingerprints = {"corpus": "c2", "target": "t1"}  # rebuilt from other embeddings (another CPU, say)
    assert p.finished(job) is None


def test_protocol_trains_the_primary_criterion_first_and_chooses_the_dga_arm_on_design_seeds(tmp_path):
    proto = importlib.import_module("bench.experiments.efficacy.protocol")
    p = proto.Protocol(tmp_path / "ws")
    main = p.main_jobs(0.75, 30, "dga-shrink")
    got = p.ordered(main, "dga-shrink")
    assert sorted(j["name"] for j in got) == sorted(j["name"] for j in main)  # the same runs, reordered
    first = [j for j in got if p.priority(j, "dga-shrink") == 0]
    assert len(first) == 2 * 2 * len(proto.SEEDS) and got[:len(first)] == first
    assert {(j["target"], j["arm"], j["regime"]) for j in first} == {
        (t, a, "a") for t in proto.TESTS for a in ("static", "dga-shrink")}
    assert [j["seed"] for j in first] == sorted(j["seed"] for j in first)  # whole seeds first
    tiers = [p.priority(j, "dga-shrink") for j in got]
    assert tiers == sorted(tiers) and tiers[-1] == 2 and all(j["regime"] == "b" for j in got if p.priority(j, "x") == 2)
    runs = [{"arm": "dga", "val": 5.0}, {"arm": "dga", "val": 4.8}, {"arm": "dga-shrink", "val": 4.9},
            {"arm": "dga-shrink", "val": 4.9}]
    assert p.choose_dga(runs) == {"dga_chosen": "dga", "dga_val": {"dga": 4.9, "dga-shrink": 4.9}}  # tie: default
    runs[0]["val"] = 5.1
    assert p.choose_dga(runs)["dga_chosen"] == "dga-shrink"


def test_protocol_queues_the_design_then_the_primary_then_the_rest(tmp_path):
    """The order of amendment 1 and the runs of amendment 2 (PROTOCOL.md), with runs that train nothing in a
    one-thread pool."""
    from concurrent.futures import ThreadPoolExecutor

    proto = importlib.import_module("bench.experiments.efficacy.protocol")
    log = []

    class Dry(proto.Protocol):
        def prepare(self, names=()):
            pass

        def size(self, candidates=None):
            (self.out / "sizing.json").write_text("{}")
            return {"chosen": "c64-s1800"}

        def unigram(self, target, lam=None):
            return {"mixture:uniform": {"val": 6.0}}

        def executor(self):
            return ThreadPoolExecutor(1)

        def finished(self, job):
            return None

        def run(self, job):
            log.append(job["name"])
            val = 5.0 - 0.1 * (job["lam"] or 0) - 0.05 * (job["arm"] == "dga-shrink")
            rises = job["epochs"] in (30, 50)
            # uniform under the budget E = 30 learns too little (0.4 below the unigram): E = 50 meets both bars
            below = 0.4 if job["epochs"] == 30 else 0.6
            return {"name": job["name"], "regime": job["regime"], "target": job["target"], "arm": job["arm"],
                    "seed": job["seed"], "epochs": job["epochs"], "val": val,
                    "val_targets": {t: 6.0 - below for t in (proto.DESIGN, *proto.TESTS)},
                    "curves": {"target": {"loss": [6.0, 4.9, 4.95 if rises else 4.9]}}}

        def write_report(self, design, runs, design_runs, planned, t0, sizing=None):
            log.append(("report", design["epochs"], design["dga_chosen"], planned, len(runs)))

    p = Dry(tmp_path / "ws", out=tmp_path / "out", tag="t")
    p.protocol()
    reports = [x for x in log if isinstance(x, tuple)]
    names = [x for x in log if isinstance(x, str)]
    # lambda = 1 (the lowest validation loss), dga-shrink (lower on seeds 0, 1), E = 50 (the first at which IS's
    # curve rises and uniform stays 0.5 below the unigram)
    assert [r[:4] for r in reports] == [("report", None, "dga-shrink", 70), ("report", 50, "dga-shrink", 70)]
    # grid 10, the DGA arms' design 4, main 70 less the 4 runs they share with them, the budgets' 4 x 2 less
    # the uniform run at E = 50, seed 0, which is regime b's own
    assert len(names) == len(set(names)) == p.plan()["runs"] == 10 + 4 + 70 - 4 + 8 - 1
    grid, dga = [j["name"] for j in p.design_jobs()[:10]], [j["name"] for j in p.dga_jobs()]
    assert names[:14] == grid + dga
    first = [j["name"] for j in p.ordered(p.main_jobs(1.0, 30, "dga-shrink"), "dga-shrink")
             if p.priority(j, "dga-shrink") == 0]
    assert names[14:24] == [n for n in first if "blend1" in n]                     # static (lambda 1) first
    assert names[24:34] == [n for n in first if "dga-shrink" in n]                 # then the chosen arm's
    assert log.index(reports[0]) > log.index(names[33])                           # the interim report after them
    budgets = [j["name"] for j in p.design_jobs()[10:]]
    i = names.index(budgets[0])
    assert all("-a-" in n for n in names[34:i]) and names[i:i + 8] == budgets     # the rest of regime a, then E
    assert all("-be50-" in n for n in names[i + 8:])                              # then regime b at E = 50
    assert not any(n.rsplit("-", 2)[-2] == "dga" for n in names[14:])             # the other arm: design only
    assert not any("-a-gsm8k-is-" in n or "-be50-fables-is-" in n for n in names)  # IS at lambda 1: the static run
    design = json.loads((tmp_path / "out" / "design.json").read_text())
    assert design["epochs"] == 50 and design["bar_met"] and design["is_rises"] == {
        "30": True, "50": True, "70": False, "100": False}
    assert p.main_jobs(1.0, 30, "dga")[5]["arm"] == "is" and p.main_jobs(1.0, 30, "dga")[5]["name"].endswith(
        "-a-mmlu-blend1-s0")


def test_amendment_4_budget_and_testbed_rules(tmp_path):
    """Regime b's budget: the smallest E at which IS's curve rises and uniform stays 0.5 below the unigram on
    every target; else the smallest at which IS's curve rises, flagged. The testbed: the first candidate not
    retired whose uniform run is 0.5 below the unigram on every target's validation split."""
    proto = importlib.import_module("bench.experiments.efficacy.protocol")

    class Fixed(proto.Protocol):
        def unigram(self, target, lam=None):
            return {"mixture:uniform": {"val": {"mmlu": 6.0, "gsm8k": 6.5, "fables": 5.5}[target]}}

    p = Fixed(tmp_path / "ws", out=tmp_path / "out")

    def budget(e, rises, vals):
        return [{"arm": "is", "epochs": e, "curves": {"target": {"loss": [6, 5, 5.1 if rises else 5]}}},
                {"arm": "uniform", "epochs": e, "val_targets": dict(zip(("mmlu", "gsm8k", "fables"), vals))}]

    ok, gsm8k_short = (5.4, 5.9, 4.9), (5.4, 6.1, 4.9)  # gsm8k 0.4 below its unigram
    got = p.choose_budget(budget(30, False, ok) + budget(50, True, gsm8k_short) + budget(70, True, ok)
                          + budget(100, True, ok))
    assert (got["epochs"], got["bar_met"]) == (70, True)
    assert got["uniform_margins"]["50"] == pytest.approx({"mmlu": 0.6, "gsm8k": 0.4, "fables": 0.6})
    got = p.choose_budget(budget(30, False, ok) + budget(50, True, gsm8k_short) + budget(70, False, ok)
                          + budget(100, True, gsm8k_short))
    assert (got["epochs"], got["bar_met"]) == (50, False)  # none meets both: the first that rises
    got = p.choose_budget(budget(30, False, ok) + budget(50, False, ok) + budget(70, False, ok) + budget(100, False, ok))
    assert (got["epochs"], got["bar_met"]) == (100, False)

    tried = []

    class Sizing(Fixed):
        below: dict = {}  # candidate -> uniform's margin on each target; reweightings: 45 unless given

        def unigram(self, target, lam=None):
            return {**super().unigram(target), "own": {"val": 5.0}}

        def run(self, job):
            cand = self.tag.split("-", 1)[1]
            tried.append((cand, job["arm"]))
            m = self.below[cand]
            return {"val": 5.0, "val_targets": {t: v - m.get(t, 0.7) for t, v in (("mmlu", 6.0), ("gsm8k", 6.5),
                                                                                  ("fables", 5.5))},
                    "reweightings": m.get("reweightings", 45), "seconds": 1.0, "seconds_per_step": 0.1,
                    "seconds_per_reweighting": 1.0}

    (tmp_path / "out").mkdir(exist_ok=True)
    # c64-s1800 passes on MMLU but not on gsm8k: the rule looks at every target, so c128-s800 is chosen
    s = Sizing(tmp_path / "ws", out=tmp_path / "out", tag="t")
    s.below = {"c64-s1800": {"gsm8k": 0.45}, "c128-s800": {}}
    got = s.size()
    assert tried == [("c64-s1800", "uniform"), ("c64-s1800", "dga"), ("c128-s800", "uniform"),
                     ("c128-s800", "dga")]  # c64-s1200 retired
    assert got["chosen"] == "c128-s800" and got["met"] and s.tag == "t-c128-s800"
    assert got["rows"][0]["margins"] == pytest.approx({"mmlu": 0.7, "gsm8k": 0.45, "fables": 0.7})
    assert got["rows"][0]["unigram_val"] == {"mmlu": 6.0, "gsm8k": 6.5, "fables": 5.5}
    assert json.loads((tmp_path / "out" / "sizing.json").read_text())["chosen"] == "c128-s800"
    # too few reweightings disqualify as well; none qualifies: the one furthest below, not met
    tried.clear()
    s.below = {"c64-s1800": {"fables": 0.3}, "c128-s800": {"reweightings": 39}}
    got = s.size()
    assert len(tried) == 4 and got["chosen"] == "c128-s800" and not got["met"]
    s.below = {"c64-s1800": {"fables": 0.3}, "c128-s800": {"mmlu": 0.2, "reweightings": 39}}
    got = s.size()
    assert got["chosen"] == "c64-s1800" and not got["met"] and s.tag == "t-c64-s1800"
    # the projection counts every distinct run once: 87 at lambda = 1 (32 of them DGA), more below 1
    assert s.projected_hours({"seconds": 2.0}, {"seconds": 3.0}, 1.0) == pytest.approx((55 * 2.0 + 32 * 3.0) / 3600)
    assert s.projected_hours({"seconds": 2.0}, {"seconds": 3.0}) > s.projected_hours({"seconds": 2.0}, {"seconds": 3.0}, 1.0)
