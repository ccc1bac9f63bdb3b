"""auto's decision cache (pipeline/encoder.py): reused on the next run, keyed by machine, model and
settings, robust to a corrupt file, written atomically and never inside the workspace.

The measurement itself is replaced by a stub, so these tests pass on any CPU (with or without
AVX-512, VNNI, bf16 units or onnxruntime); test_precision.py measures for real. Every test points
DGAMIX_CACHE at its own temporary folder.
"""
import json
import types

import numpy as np
import polars as pl
import pytest

import dgamix.pipeline.embed
import dgamix.pipeline.precision as E
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.embed import embed_corpus
from dgamix.pipeline.encoder import EmbedConfig, Encoder
from dgamix.pipeline.precision import PrecisionReport, resolve_precision
from tests.helpers import DATA

CFG = EmbedConfig(precision="auto")


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """A per-test dgamix cache root (the user's real one is never touched)."""
    root = tmp_path / "cache"
    monkeypatch.setenv("DGAMIX_CACHE", str(root))
    return root


@pytest.fixture
def measured(monkeypatch):
    """measure_auto replaced by a stub that records its calls and returns ``measured.report``."""
    calls = []

    def stub(enc, cfg, texts):
        calls.append(cfg)
        return PrecisionReport(**{**measured.report.__dict__, "docs_per_s": dict(measured.report.docs_per_s)})

    measured = types.SimpleNamespace(calls=calls, report=PrecisionReport(
        "auto", "fp32", sample=E.VALIDATION_DOCS, docs_per_s={"fp32": 10.0, "int8": 10.5},
        cosines={"fp32": [1.0, 1.0], "int8": [0.995, 0.98]}, seconds=3.0))
    monkeypatch.setattr(E, "measure_auto", stub)
    return measured


def fresh(encoder) -> Encoder:
    """The session's loaded model as a new process would hold it: no in-process auto decision."""
    return Encoder(encoder.model)


def no_measuring(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("measured again although this machine's decision is cached")

    monkeypatch.setattr(E, "measure_auto", fail)


def decisions(cache):
    return sorted((cache / "auto").glob("*.json")) if (cache / "auto").is_dir() else []


TEXTS = ["A first real sentence about rivers.", "Another one, on the history of printing."]


def test_second_run_reuses_the_decision(encoder, cache, measured, monkeypatch):
    first = resolve_precision(fresh(encoder), CFG, TEXTS)
    assert len(measured.calls) == 1 and first.cached is None and first.precision == "fp32"
    [path] = decisions(cache)
    assert json.loads(path.read_text())["report"]["docs_per_s"] == {"fp32": 10.0, "int8": 10.5}

    no_measuring(monkeypatch)
    again = resolve_precision(fresh(encoder), CFG, TEXTS)
    assert again.precision == "fp32" and again.cached.startswith("cached decision from ")
    assert again.docs_per_s == first.docs_per_s and again.cosines == first.cosines
    assert again.choice()["cached"] == again.cached  # recorded in the manifests: what and why


@pytest.mark.slow
def test_embed_stage_reuses_it_and_records_why(tmp_path, encoder, cache, measured, monkeypatch):
    src = tmp_path / "c.parquet"
    pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(12, seed=4).write_parquet(src)
    monkeypatch.setattr(dgamix.pipeline.embed, "AUTO_MIN_DOCS", 0)  # measured, as on a large corpus
    monkeypatch.setattr(dgamix.pipeline.embed, "load_encoder", lambda cfg: fresh(encoder))
    cfg = EmbedConfig(precision="auto", shard_size=8)
    out = embed_corpus(Workspace(tmp_path / "ws1"), [str(src)], cfg=cfg, quiet=True)
    assert out["precision_source"].startswith("measured on ") and len(measured.calls) == 1
    assert out["setup_s"] >= 0 and out["embed_s"] >= 0

    no_measuring(monkeypatch)  # a new workspace on the same machine: no measurement
    ws = Workspace(tmp_path / "ws2")
    out = embed_corpus(ws, [str(src)], cfg=cfg, quiet=True)
    assert out["precision"] == "fp32" and out["precision_source"].startswith("cached decision from ")
    params = manifest.read_meta(ws.embeddings, "embeddings")["params"]
    assert params["precision_requested"] == "auto" and params["precision"] == "fp32"
    assert params["precision_choice"]["cached"] == out["precision_source"]
    # the cache lives under DGAMIX_CACHE, never in the workspace
    [path] = decisions(cache)
    assert not path.is_relative_to(ws.root) and not path.is_relative_to(tmp_path / "ws1")
    assert not [p for p in ws.root.rglob("*") if p.suffix == ".json" or "auto" in p.parts]
    # a resume of that workspace keeps the recorded choice, cached note included
    ws.embeddings.unlink()
    ws.embedding_part(1).unlink()
    resumed = embed_corpus(ws, [str(src)], cfg=cfg, quiet=True)
    assert resumed["shards_skipped"] == 1 and resumed["precision_source"] == "recorded in the workspace"
    assert manifest.read_meta(ws.embeddings, "embeddings")["params"]["precision_choice"] == params["precision_choice"]


@pytest.mark.slow
def test_a_changed_setting_or_machine_is_measured_again(encoder, cache, measured, monkeypatch):
    resolve_precision(fresh(encoder), CFG, TEXTS)
    resolve_precision(fresh(encoder), CFG, TEXTS)
    assert len(measured.calls) == 1
    for cfg in (EmbedConfig(precision="auto", max_seq_length=128), EmbedConfig(precision="auto", batch_size=32)):
        resolve_precision(fresh(encoder), cfg, TEXTS)
    assert len(measured.calls) == 3
    real = E.machine_fingerprint

    def other(flags=None, libraries=None):
        def fp(device):
            m = real(device)
            if flags is not None:
                m["cpu_flags"] = flags
            if libraries:
                m["libraries"] = {**m["libraries"], **libraries}
            return m
        return fp

    for fake in (other(flags=["avx2"]), other(flags=["avx2", "avx512f", "avx512_vnni", "amx_bf16"]),
                 other(libraries={"onnxruntime": "0.0.1"}), other(libraries={"torch": "9.9.9"})):
        monkeypatch.setattr(E, "machine_fingerprint", fake)
        resolve_precision(fresh(encoder), CFG, TEXTS)
    assert len(measured.calls) == 7 and len(decisions(cache)) == 7
    monkeypatch.setattr(E, "machine_fingerprint", real)
    no_measuring(monkeypatch)  # back on the first machine: its decision is still there
    assert resolve_precision(fresh(encoder), CFG, TEXTS).cached


@pytest.mark.parametrize("content", [b"", b"\x00\xff not json", b"[1, 2]", b'{"format": 1}', b"null",
                                     "corrupt-precision", "below-bounds", "other-inputs"])
def test_a_corrupt_cache_file_is_ignored(encoder, cache, measured, content):
    resolve_precision(fresh(encoder), CFG, TEXTS)
    [path] = decisions(cache)
    blob = json.loads(path.read_text())
    if content == "corrupt-precision":
        blob["report"]["precision"] = "int4"
        content = json.dumps(blob).encode()
    elif content == "below-bounds":  # an edited file cannot lower the quality bar
        blob["report"].update(precision="bf16", cosine_mean=0.9, cosine_min=0.5)
        content = json.dumps(blob).encode()
    elif content == "other-inputs":
        blob["inputs"]["max_seq_length"] = 999
        content = json.dumps(blob).encode()
    path.write_bytes(content)
    rep = resolve_precision(fresh(encoder), CFG, TEXTS)  # no crash: measured again, file rewritten
    assert rep.cached is None and rep.precision == "fp32" and len(measured.calls) == 2
    assert json.loads(path.read_text())["report"]["precision"] == "fp32"


def test_written_atomically_and_a_failed_write_costs_nothing(encoder, cache, measured, monkeypatch):
    import os

    real, renames = os.replace, []

    def spy(src, dst):
        renames.append((os.fspath(src), os.fspath(dst)))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    resolve_precision(fresh(encoder), CFG, TEXTS)
    [path] = decisions(cache)
    [(src, dst)] = renames
    assert dst == str(path) and os.path.dirname(src) == os.path.dirname(dst) and src.endswith(".tmp")
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left

    def crash(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    path.unlink()
    rep = resolve_precision(fresh(encoder), CFG, TEXTS)  # the run goes on, nothing cached, nothing left
    assert rep.precision == "fp32" and not list(path.parent.iterdir())
    (cache / "auto").rmdir()
    (cache / "auto").write_text("a file where the folder should be")  # unwritable cache root
    monkeypatch.setattr(os, "replace", real)
    assert resolve_precision(fresh(encoder), CFG, TEXTS).precision == "fp32"


def test_what_is_not_cached(encoder, cache, measured):
    measured.report.sample = 10  # a tiny corpus's sample is no basis for every later run
    resolve_precision(fresh(encoder), CFG, TEXTS)
    measured.report.sample, measured.report.failed = E.VALIDATION_DOCS, True  # a candidate failed: retry later
    resolve_precision(fresh(encoder), CFG, TEXTS)
    assert decisions(cache) == [] and len(measured.calls) == 2


def test_an_int8_decision_holds_for_its_export_only(encoder, cache, measured, monkeypatch):
    """A cached int8 decision is reused with the same int8 export; another export (the int8 cache
    was cleared and re-exported with another recipe) is measured again. No onnxruntime needed:
    the int8 encoder is a stand-in."""
    measured.report = PrecisionReport("auto", "int8", 0.995, 0.98, E.VALIDATION_DOCS, "v2/s8-rr",
                                      {"fp32": 10.0, "int8": 30.0}, {"fp32": [1.0, 1.0], "int8": [0.995, 0.98]})
    recipe = {"now": "v2/s8-rr"}
    monkeypatch.setattr(E, "int8_encoder", lambda enc, cfg, texts: types.SimpleNamespace(recipe=recipe["now"]))
    # a reused int8 choice is checked against fp32 on the new corpus: the stand-in cannot encode, so stub it
    monkeypatch.setattr(E, "measure_precision", lambda enc, cfg, texts, p: PrecisionReport(
        "int8", p, 0.996, 0.985, E.VALIDATION_DOCS, recipe["now"]))
    resolve_precision(fresh(encoder), CFG, TEXTS)
    rep = resolve_precision(fresh(encoder), CFG, TEXTS)
    assert rep.cached and rep.precision == "int8" and rep.recipe == "v2/s8-rr" and len(measured.calls) == 1
    recipe["now"] = "v2/s8-all"
    assert resolve_precision(fresh(encoder), CFG, TEXTS).cached is None and len(measured.calls) == 2

    def broken(enc, cfg, texts):
        raise RuntimeError("the int8 export is gone and cannot be made")

    monkeypatch.setattr(E, "int8_encoder", broken)
    assert resolve_precision(fresh(encoder), CFG, TEXTS).cached is None and len(measured.calls) == 3


def test_machine_fingerprint_names_what_the_choice_depends_on():
    m = E.machine_fingerprint("cpu")
    assert set(m) >= {"cpu", "cpu_flags", "cores", "libraries"} and m["cores"] >= 1
    assert set(m["cpu_flags"]) <= set(E.CPU_FLAGS)  # only flags that change the ranking
    assert {"torch", "onnxruntime", "sentence-transformers"} <= set(m["libraries"])
    assert np.all([isinstance(v, (str, type(None))) for v in m["libraries"].values()])


def test_a_cached_choice_below_the_bounds_on_a_new_corpus_is_measured_again(encoder, cache, measured, monkeypatch):
    """The speed is the machine's, the quality the corpus's: a cached int8 choice whose cosine to fp32
    on this corpus's sample is below the bounds is not reused; a good one records this corpus's cosine."""
    measured.report = PrecisionReport("auto", "int8", 0.995, 0.98, E.VALIDATION_DOCS, "v2/s8-rr",
                                      {"fp32": 10.0, "int8": 30.0}, {"fp32": [1.0, 1.0], "int8": [0.995, 0.98]})
    monkeypatch.setattr(E, "int8_encoder", lambda enc, cfg, texts: types.SimpleNamespace(recipe="v2/s8-rr"))
    quality = {"mean": 0.997}
    monkeypatch.setattr(E, "measure_precision", lambda enc, cfg, texts, p: PrecisionReport(
        "int8", p, quality["mean"], 0.97, 17, "v2/s8-rr"))
    resolve_precision(fresh(encoder), CFG, TEXTS)
    rep = resolve_precision(fresh(encoder), CFG, TEXTS)
    assert rep.cached and len(measured.calls) == 1
    assert (rep.cosine_mean, rep.cosine_min, rep.sample) == (0.997, 0.97, 17)  # this corpus's check
    quality["mean"] = 0.95  # below MIN_MEAN_COSINE on another corpus
    assert resolve_precision(fresh(encoder), CFG, TEXTS).cached is None and len(measured.calls) == 2


def test_small_corpus_uses_a_cached_decision_else_fp32_and_says_why(encoder, cache, measured, monkeypatch):
    stub = E.measure_auto
    # nothing cached: fp32 without measuring (no export, no timing), the reason recorded
    no_measuring(monkeypatch)
    rep = E.small_corpus_precision(fresh(encoder), CFG, TEXTS, 500, 2000)
    assert rep.precision == "fp32" and rep.cached is None and not rep.docs_per_s
    assert "500 documents < 2000 and no decision cached" in rep.skipped["all"] and not decisions(cache)
    tiny = E.small_corpus_precision(fresh(encoder), CFG, TEXTS, E.VALIDATION_DOCS - 1, 2000)
    assert tiny.precision == "fp32" and f"< {E.VALIDATION_DOCS}" in tiny.skipped["all"]

    # once this machine decided (a larger corpus measured), a small corpus reuses it, unmeasured
    monkeypatch.setattr(E, "measure_auto", stub)
    resolve_precision(fresh(encoder), CFG, TEXTS)
    assert len(measured.calls) == 1 and E.decision_ready(fresh(encoder), CFG)
    no_measuring(monkeypatch)
    rep = E.small_corpus_precision(fresh(encoder), CFG, TEXTS, 500, 2000)
    assert rep.precision == "fp32" and rep.cached.startswith("cached decision from ") and rep.docs_per_s
    # but not below VALIDATION_DOCS documents: the cosine check would cost more than the run
    assert E.small_corpus_precision(fresh(encoder), CFG, TEXTS, 10, 2000).cached is None


def test_decision_ready_needs_a_readable_file_and_the_int8_export(encoder, cache):
    enc = fresh(encoder)
    assert not E.decision_ready(enc, CFG)
    rep = PrecisionReport("auto", "int8", 0.995, 0.98, E.VALIDATION_DOCS, "v2/x", {"fp32": 10.0, "int8": 20.0},
                          {"fp32": [1.0, 1.0], "int8": [0.995, 0.98]})
    path = E.store_decision(enc, CFG, rep)
    assert path is not None and not E.decision_ready(enc, CFG)  # int8 decided, its export not in this cache
    path.write_text("{not json")
    assert not E.decision_ready(enc, CFG)
    E.store_decision(enc, CFG, PrecisionReport("auto", "fp32", sample=E.VALIDATION_DOCS, docs_per_s={"fp32": 10.0}))
    assert E.decision_ready(enc, CFG)
