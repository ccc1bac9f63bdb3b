"""Basis builders on small exact cases (the stage over real manifests is tested in test_stage2.py)."""
import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dgamix.pipeline.basis import Domains, build_rows, check_options, describe, histogram, lift, parse_tempers, tempered
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.params import BasisParams
from dgamix.pipeline.core.workspace import Workspace

# Two levels, branching 2 x 3: level-1 domains {0, 1}; level-2 ids parent*3 + child.
# Domain 5 is empty in the corpus (absent from ids).
DOM = Domains(ids=np.array([0, 1, 2, 3, 4]), sizes=np.array([10, 20, 30, 5, 15]),
              ancestors=np.array([[0, 0], [0, 1], [0, 2], [1, 3], [1, 4]]))


def test_single_equals_polars_histogram():
    fine = np.array([0, 0, 2, 3, 3, 3, 4, 1, 0, 2])
    assigned = np.stack([fine // 3, fine], 1)
    [(name, w)] = build_rows("single", assigned, 2, DOM)
    ref = pl.DataFrame({"d": fine}).group_by("d").len().with_columns(pl.col("len") / len(fine)).sort("d")
    want = np.zeros(5)
    want[ref["d"].to_numpy()] = ref["len"].to_numpy()
    assert name == "target" and np.allclose(w, want, atol=1e-12)


def test_mass_in_empty_domains_is_dropped_and_all_empty_is_an_error():
    assert np.allclose(histogram(np.array([5, 5, 0]), DOM.ids), [1, 0, 0, 0, 0])
    with pytest.raises(DgamixError, match="no corpus documents"):
        build_rows("single", np.array([[1, 5], [1, 5]]), 2, DOM)


def test_smoothing_is_additive_on_populated_domains():
    w = histogram(np.array([0, 0]), DOM.ids, smoothing=1.0)
    assert np.allclose(w, np.array([3, 1, 1, 1, 1]) / 7)


def test_levels_at_level_one_equals_single_at_level_one():
    dom1 = Domains(ids=np.array([0, 1]), sizes=np.array([60, 20]), ancestors=np.array([[0], [1]]))
    assigned = np.array([[0], [0], [1]])
    assert np.allclose(build_rows("levels", assigned, 1, dom1)[0][1], build_rows("single", assigned, 1, dom1)[0][1])


def test_lift_spreads_by_corpus_size_and_conserves_mass():
    w = lift(np.array([0, 1]), np.array([0.25, 0.75]), DOM.ancestors[:, 0], DOM.sizes)
    assert np.allclose(w, [0.25 * 10 / 60, 0.25 * 20 / 60, 0.25 * 30 / 60, 0.75 * 5 / 20, 0.75 * 15 / 20])
    assert np.isclose(w.sum(), 1.0)


def test_temper_draws_documents_by_the_density_ratio_to_the_power_one_plus_gamma():
    h, sizes = np.array([0.5, 0.25, 0.25, 0.0]), np.array([1, 1, 2, 4])  # corpus share s = [1, 1, 2, 4] / 8
    assert tempered(h, sizes, 0.0) is h                                     # gamma 0: the IS histogram itself
    w = tempered(h, sizes, 1.0)
    assert np.allclose(w, np.array([2.0, 0.5, 0.25, 0.0]) / 2.75, atol=1e-15)  # h * (h / s) = h * [4, 2, 1, -]
    per_doc = w / sizes                                                     # a document's draw probability
    assert np.allclose(per_doc[:3] / per_doc[2], [16, 4, 1])               # ratio r = [4, 2, 1]: r^2
    w2 = tempered(h, sizes, 2.0)
    assert np.allclose((w2 / sizes)[:3] / (w2 / sizes)[2], [64, 8, 1]) and w2[3] == 0


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 50), st.integers(1, 10 ** 6)), min_size=1, max_size=30),
       st.sampled_from([0.5, 1.0, 2.0, 8.0]))
def test_tempered_agrees_with_the_formula_in_linear_space(rows, gamma):
    counts = np.array([c for c, _ in rows], dtype=np.float64)
    sizes = np.array([n for _, n in rows])
    if counts.sum() == 0:
        return
    h = counts / counts.sum()
    q = sizes / sizes.sum()
    ref = h * (h / q) ** gamma  # counts <= 50, sizes <= 1e6: no under- or overflow in float64 here
    w = tempered(h, sizes, gamma)
    assert np.allclose(w, ref / ref.sum(), rtol=1e-9, atol=1e-15) and abs(w.sum() - 1) < 1e-12


def test_tempers_emit_every_target_basis_once_per_exponent_before_the_generic_one():
    fine = np.array([0, 0, 1, 3, 4, 4])
    assigned = np.stack([fine // 3, fine], 1)
    groups = np.array(["x", "x", "x", "y", "y", "y"], dtype=object)
    rows = build_rows("group", assigned, 2, DOM, groups=groups, generic="natural", tempers=(0.0, 1.0))
    assert [r[0] for r in rows] == ["group:x", "group:y", "group:x^1", "group:y^1", "generic:natural"]
    plain = build_rows("group", assigned, 2, DOM, groups=groups)
    assert np.array_equal(rows[0][1], plain[0][1]) and np.array_equal(rows[1][1], plain[1][1])
    assert np.allclose(rows[2][1], tempered(plain[0][1], DOM.sizes, 1.0))
    assert parse_tempers("0,1,2.5") == (0.0, 1.0, 2.5) and parse_tempers("-0") == (0.0,)
    for bad, msg in (("x", "comma-separated"), ("-1", "in \\[0, 8\\]"), ("nan", "in \\["), ("9", "in \\["),
                     ("1,1", "repeated"), ("1,1.0000001", "repeated"), ("", "comma-separated")):
        with pytest.raises(DgamixError, match=msg):
            parse_tempers(bad)
    with pytest.raises(DgamixError, match="two bases would both be named 'group:x\\^1'"):
        build_rows("group", assigned, 2, DOM, groups=np.array(["x", "x", "x", "x^1", "x^1", "x^1"], dtype=object),
                   tempers=(0.0, 1.0))
    with pytest.raises(DgamixError, match="--temper with --smoothing"):
        check_options(BasisParams(smoothing=1.0, temper=(0.0, 1.0)))
    check_options(BasisParams(smoothing=1.0))  # smoothing alone is fine


def test_a_stale_tempered_basis_is_rebuilt_with_its_tempers():
    from dgamix.pipeline.core.validate import basis_command

    p = {"clusters": "k", "level": 2, "target": "t", "by": "single", "generic": "natural", "temper": [0.0, 1.0, 2.5]}
    cmd = basis_command(Workspace("/ws"), "b", p)
    assert cmd.endswith("--by single --generic natural --temper 0,1,2.5 --name b --overwrite"), cmd
    assert "--temper" not in basis_command(Workspace("/ws"), "b", {**p, "temper": None})
    assert "--temper" not in basis_command(Workspace("/ws"), "b", {k: v for k, v in p.items() if k != "temper"})


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=40), st.floats(0, 3), st.sampled_from(["none", "natural", "uniform"]))
def test_every_builder_is_on_the_simplex(fine, smoothing, generic):
    fine = np.array(fine)
    if not np.isin(fine, DOM.ids).any() and smoothing == 0:
        return
    assigned = np.stack([fine // 3, fine], 1)
    groups = np.array(["a", "b"] * len(fine))[: len(fine)].astype(object)
    for by in ("single", "levels", "group"):
        try:
            rows = build_rows(by, assigned, 2, DOM, groups=groups, generic=generic, smoothing=smoothing,
                              tempers=(0.0, 1.5))
        except DgamixError:
            continue  # a group whose examples all fall into the empty domain
        for _, w in rows:
            assert w.shape == (5,) and (w >= 0).all() and abs(w.sum() - 1) < 1e-9


def test_group_and_kmeans_builders():
    fine = np.array([0, 0, 1, 3, 4, 4])
    assigned = np.stack([fine // 3, fine], 1)
    groups = np.array(["x", "x", "x", "y", "y", "y"], dtype=object)
    rows = build_rows("group", assigned, 2, DOM, groups=groups, generic="natural")
    assert [r[0] for r in rows] == ["group:x", "group:y", "generic:natural"]
    assert np.allclose(rows[0][1], [2 / 3, 1 / 3, 0, 0, 0]) and np.allclose(rows[1][1], [0, 0, 0, 1 / 3, 2 / 3])
    assert np.allclose(rows[2][1], DOM.sizes / DOM.sizes.sum())
    emb = np.eye(6, 8, dtype=np.float32)[[0, 0, 0, 1, 1, 1]] + 0.01 * np.arange(6)[:, None]
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    rows = build_rows("kmeans:2", assigned, 2, DOM, emb=emb)
    hists = sorted(tuple(np.round(w, 6)) for _, w in rows)
    assert hists == sorted([tuple(np.round([2 / 3, 1 / 3, 0, 0, 0], 6)), tuple(np.round([0, 0, 0, 1 / 3, 2 / 3], 6))])
    with pytest.raises(DgamixError, match="more groups"):
        build_rows("kmeans:7", assigned, 2, DOM, emb=emb)
    with pytest.raises(DgamixError, match="group-column"):
        build_rows("group", assigned, 2, DOM, groups=np.array([None] * 6, dtype=object))
    with pytest.raises(DgamixError, match="unknown"):
        build_rows("bogus", assigned, 2, DOM)


def test_describe_reports_entropy_and_narrow_pockets():
    fine = np.array([0, 3, 3, 5])  # domain 3 has 5 docs (< 6), domain 5 none
    rows = build_rows("single", np.stack([fine // 3, fine], 1), 2, DOM)
    [d] = describe(rows, DOM, fine, pocket_min=6)
    w = np.array([1, 2]) / 3
    assert d["nonzero_domains"] == 2 and np.isclose(d["entropy"], -(w * np.log(w)).sum())
    assert d["top_domains"][:2] == [3, 0] and np.isclose(d["pocket_fraction"], 3 / 4)
