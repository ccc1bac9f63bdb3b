"""Stage 2 on a small real workspace: targets, their assignments, bases, and bad inputs."""
import numpy as np
import polars as pl
import pytest

from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.target import target_assignments
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def basis_df(ws, name):
    return pl.read_parquet(Workspace(ws).basis(name))


def test_target_split_and_assignments_follow_the_tree(real_ws):
    ex = pl.read_parquet(Workspace(real_ws).target_dir("gsm8k") / "examples.parquet")
    assert ex.height == 40 and ex.filter(pl.col("split") == "holdout").height == 8
    assert np.allclose(np.linalg.norm(np.asarray(ex["embedding"].to_list()), axis=1), 1, atol=1e-3)
    a = pl.from_arrow(target_assignments(Workspace(real_ws), "gsm8k", "k3x2"))
    tree = pl.read_parquet(Workspace(real_ws).tree("k3x2"))
    par = tree.filter(pl.col("level") == 2).select(pl.col("domain").alias("level_2"), "parent")
    assert a.join(par, on="level_2").filter(pl.col("parent") != pl.col("level_1")).height == 0
    assert a.join(par, on="level_2").height == 40


def test_single_basis_equals_polars_histogram(real_ws):
    r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "gsm8k",
                "--by", "single", "--name", "is")
    assert r.exit_code == 0, r.output
    b = basis_df(real_ws, "is")
    a = pl.from_arrow(target_assignments(Workspace(real_ws), "gsm8k", "k3x2")).filter(pl.col("split") == "reweight")
    tree = pl.read_parquet(Workspace(real_ws).tree("k3x2")).filter((pl.col("level") == 2) & (pl.col("size") > 0))
    ref = (a.filter(pl.col("level_2").is_in(tree["domain"].implode())).group_by("level_2").len()
           .with_columns(pl.col("len") / pl.col("len").sum()).sort("level_2"))
    assert b["domain"].to_list() == ref["level_2"].to_list()
    assert np.allclose(b["weight"].to_numpy(), ref["len"].to_numpy(), atol=1e-12)
    assert abs(b["weight"].sum() - 1) < 1e-9 and (b["weight"] >= 0).all()
    assert set(b["domain"].to_list()) <= set(tree["domain"].to_list())


def test_tempered_bases_follow_the_plain_histogram_and_are_recorded(real_ws):
    from dgamix.pipeline.basis import tempered
    from dgamix.pipeline.core import manifest

    for name, extra in (("plain", ()), ("tempered", ("--temper", "0,1", "--generic", "natural"))):
        r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "recipes",
                    "--by", "single", "--name", name, *extra)
        assert r.exit_code == 0, r.output
    plain, t = basis_df(real_ws, "plain"), basis_df(real_ws, "tempered")
    assert t["name"].unique(maintain_order=True).to_list() == ["target", "target^1", "generic:natural"]
    assert t.filter(pl.col("basis") == 0).drop("basis").equals(plain.drop("basis"))
    tree = pl.read_parquet(Workspace(real_ws).tree("k3x2")).filter((pl.col("level") == 2) & (pl.col("size") > 0))
    h = np.zeros(tree.height)
    h[np.searchsorted(tree["domain"].to_numpy(), plain["domain"].to_numpy())] = plain["weight"].to_numpy()
    want = tempered(h, tree["size"].to_numpy(), 1.0)
    got = t.filter(pl.col("basis") == 1)
    assert np.allclose(got["weight"].to_numpy(), want[want > 0], atol=1e-12)
    assert manifest.read_meta(Workspace(real_ws).basis("tempered"), "basis")["params"]["temper"] == [0.0, 1.0]
    assert "temper" not in manifest.read_meta(Workspace(real_ws).basis("plain"), "basis")["params"]


def test_levels_builder_at_level_one_equals_single(real_ws):
    for by, name in (("levels", "lv1"), ("single", "s1")):
        r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 1, "--target", "gsm8k",
                    "--by", by, "--name", name)
        assert r.exit_code == 0, r.output
    assert np.allclose(basis_df(real_ws, "lv1")["weight"].to_numpy(), basis_df(real_ws, "s1")["weight"].to_numpy())


def test_group_kmeans_and_generic_bases_are_on_the_simplex(real_ws):
    for by, gen, name in (("group", "natural", "g"), ("kmeans:3", "uniform", "km"), ("levels", "none", "lv")):
        r = run_cli("basis", "--workspace", real_ws, "--clusters", "k3x2", "--level", 2, "--target", "recipes",
                    "--by", by, "--generic", gen, "--name", name)
        assert r.exit_code == 0, r.output
        sums = basis_df(real_ws, name).group_by("basis").agg(pl.col("weight").sum())["weight"]
        assert (sums - 1).abs().max() < 1e-9
    assert basis_df(real_ws, "g")["name"].unique().sort().to_list() == ["generic:natural", "group:even", "group:odd"]
    assert basis_df(real_ws, "km")["basis"].n_unique() == 4 and basis_df(real_ws, "lv")["basis"].n_unique() == 2
    summary = pl.read_parquet(Workspace(real_ws).root / "bases" / "g.summary.parquet")
    assert {"nonzero_domains", "effective_domains", "pocket_fraction", "top_terms"} <= set(summary.columns)


@pytest.mark.parametrize("args, message", [
    (("--clusters", "nope", "--level", 1, "--target", "gsm8k", "--by", "single"), "no clustering 'nope'"),
    (("--clusters", "k3x2", "--level", 3, "--target", "gsm8k", "--by", "single"), "out of range"),
    (("--clusters", "k3x2", "--level", 2, "--target", "nope", "--by", "single"), "no target 'nope'"),
    (("--clusters", "k3x2", "--level", 2, "--target", "gsm8k", "--by", "group"), "--group-column"),
    (("--clusters", "k3x2", "--level", 2, "--target", "gsm8k", "--by", "kmeans:500"), "more groups"),
    (("--clusters", "k3x2", "--level", 2, "--target", "gsm8k", "--by", "bogus"), "unknown"),
    (("--clusters", "k3x2", "--level", 2, "--target", "gsm8k", "--temper", "0,0"), "repeated"),
])
def test_basis_bad_inputs(real_ws, args, message):
    r = run_cli("basis", "--workspace", real_ws, *args, "--name", "bad")
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output, r.output


def test_target_bad_inputs(real_ws, tmp_path):
    pl.DataFrame({"body": ["x"]}).write_parquet(tmp_path / "nocol.parquet")
    r = run_cli("target", tmp_path / "nocol.parquet", "--workspace", real_ws, "--name", "t")
    assert r.exit_code == 2 and "no text column" in r.output
    pl.DataFrame({"text": ["", " "]}).write_parquet(tmp_path / "empty.parquet")
    r = run_cli("target", tmp_path / "empty.parquet", "--workspace", real_ws, "--name", "t")
    assert r.exit_code == 2 and "no non-empty" in r.output
    pl.DataFrame({"text": ["a question"]}).write_parquet(tmp_path / "one.parquet")
    r = run_cli("target", tmp_path / "one.parquet", "--workspace", real_ws, "--name", "t", "--group-column", "subject")
    assert r.exit_code == 2 and "no group column 'subject'" in r.output
    r = run_cli("target", tmp_path / "one.parquet", "--workspace", tmp_path / "nows", "--name", "t")
    assert r.exit_code == 2 and "dgamix embed" in r.output
