"""Encoder precisions (fp32 / bf16 / int8 / auto) on the real packaged MiniLM model and real text.

The int8 export and auto's decisions go to a per-module temporary cache (DGAMIX_CACHE, set for
every test here: the user's real cache is never written), so the export runs once per test
session (about 15 s on 2 cores) and the cache tests can watch it being reused.
"""
import dataclasses
import json
import os

import numpy as np
import polars as pl
import pytest

from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace
from dgamix.pipeline.embed import embed_corpus
from dgamix.pipeline.encoder import EmbedConfig, buckets, encode, load_encoder
from dgamix.pipeline.onnx_int8 import onnxruntime_available
from tests.helpers import DATA, one_line_error, run_cli

needs_ort = pytest.mark.skipif(not onnxruntime_available(), reason="int8 needs `pip install onnxruntime onnx`")


@pytest.fixture(scope="module", autouse=True)
def int8_cache(tmp_path_factory):
    old = os.environ.get("DGAMIX_CACHE")
    os.environ["DGAMIX_CACHE"] = str(tmp_path_factory.mktemp("dgamix-cache"))
    yield os.environ["DGAMIX_CACHE"]
    if old is None:
        os.environ.pop("DGAMIX_CACHE", None)
    else:
        os.environ["DGAMIX_CACHE"] = old


@pytest.fixture(scope="module")
def texts50():
    """50 real Wikipedia summaries of mixed length (seeded sample)."""
    return pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(50, seed=7)["text"].to_list()


@pytest.fixture(scope="module")
def fp32_ref(encoder, texts50):
    ref = encoder.model.encode(texts50, batch_size=64, normalize_embeddings=True, convert_to_numpy=True)
    return np.asarray(ref, np.float32)


def cos(a, b):
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_buckets_sort_by_length_and_respect_budget():
    lengths = np.array([5, 200, 17, 200, 3, 64, 64, 1])
    bs = buckets(lengths, batch_size=3, token_budget=256)
    flat = np.concatenate(bs)
    assert sorted(flat.tolist()) == list(range(8))
    assert (np.diff(lengths[flat]) <= 0).all()  # longest first
    assert all(len(b) <= 3 and len(b) * lengths[b].max() <= 256 or len(b) == 1 for b in bs)
    assert [len(b) for b in buckets(lengths, 64, None)] == [8]


@pytest.mark.slow
def test_fp32_path_keeps_input_order_and_matches_sentence_transformers(encoder, texts50, fp32_ref):
    got = encode(encoder, texts50, EmbedConfig())
    assert got.shape == fp32_ref.shape and got.dtype == np.float32
    assert cos(got, fp32_ref).min() >= 0.9999  # row i is text i: bucketing restored the order
    rev = encode(encoder, texts50[9::-1], EmbedConfig())
    assert np.abs(rev[::-1] - got[:10]).max() < 1e-4
    ticks = []
    encode(encoder, texts50[:7], EmbedConfig(), tick=ticks.append)
    assert sum(ticks) == 7


@needs_ort
@pytest.mark.slow
def test_int8_close_to_fp32_and_export_is_cached(int8_cache, encoder, texts50, fp32_ref, monkeypatch):
    from dgamix.pipeline import onnx_int8

    got = encode(encoder, texts50, EmbedConfig(precision="int8"))
    c = cos(got, fp32_ref)  # row i against sentence-transformers' row i: the order survived bucketing
    assert c.mean() >= 0.99 and c.min() >= 0.95, (c.mean(), c.min())
    first = encoder.int8
    assert first.exported and first.recipe and (onnx_int8.cache_root() / "onnx").is_dir()
    assert np.abs(np.linalg.norm(got, axis=1) - 1).max() < 1e-4
    # the fused graph keeps SkipLayerNormalization unfused (its CPU kernel is slower than Add + LayerNorm)
    meta = json.loads((first.path.parent / "meta.json").read_text())
    assert meta["export_version"] == onnx_int8.EXPORT_VERSION and "SkipLayerNormalization" not in meta["fused_ops"]
    assert meta["fused_ops"].get("Attention") == 6  # the optimiser did run (6 layers)
    assert first.recipe == f"{onnx_int8.EXPORT_VERSION}/{meta['recipe']}"

    # a second load (a new model object, as in a new process) reads the cache: no export
    import torch

    def no_export(*a, **k):
        raise AssertionError("re-exported although the cache holds the model")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    again = load_encoder(EmbedConfig(precision="int8"))
    got2 = encode(again, texts50, EmbedConfig(precision="int8"))
    assert not again.int8.exported
    assert again.int8.path == first.path
    assert np.abs(got2 - got).max() < 1e-5
    # dynamic quantisation scales activations per batch, so other batch mates move a vector a little
    assert cos(encode(again, texts50[:10], EmbedConfig(precision="int8")), got[:10]).min() >= 0.99
    rev = encode(again, texts50[::-1], EmbedConfig(precision="int8"))
    assert cos(rev[::-1], got).min() >= 0.99


EDGE_TEXTS = ["   leading and trailing   ", "\t\ttabs\n\nnew lines  ", "Ünïcödé, 中文字符 and an emoji 😀",
              "\u00a0no-break\u2028line separator", "a" * 3000, "word " * 700, "x"]


@pytest.mark.parametrize("seq", [256, 128, 512])
def test_fast_tokenizer_gives_sentence_transformers_features_exactly(encoder, texts50, seq):
    """The torch-free tokenisation (tokenizers + tokenizer.json) == sentence-transformers' own, for
    the packaged model: features at three truncation lengths and the untruncated counts."""
    from dgamix.pipeline.encoder import Encoder, count_tokens, tokenize

    texts = texts50 + EDGE_TEXTS
    fast = Encoder(cfg=EmbedConfig(max_seq_length=seq))
    assert fast.fast is not None and not fast.loaded
    model = fast.model  # the same folder through sentence-transformers
    slow = Encoder(model)
    assert slow.fast is None
    f1, n1, left1 = tokenize(fast, texts)
    f2, n2, left2 = tokenize(slow, texts)
    assert sorted(f1) == sorted(f2) and left1 == left2 is False
    for k in f1:
        assert f1[k].dtype == f2[k].dtype == np.int64 and np.array_equal(f1[k], f2[k]), k
    assert np.array_equal(n1, n2) and n1.max() == seq
    assert np.array_equal(count_tokens(fast, texts, batch=16), count_tokens(slow, texts, batch=16))
    one, three = (Encoder(threads=t, cfg=EmbedConfig(max_seq_length=seq)) for t in (1, 3))
    assert np.array_equal(count_tokens(one, texts, batch=16), count_tokens(three, texts, batch=7))  # threads: same
    assert fast.dim == slow.dim == 384


def test_fast_tokenizer_only_for_plain_models(tmp_path):
    """A model folder with anything dgamix does not replicate exactly (or a name that is not a
    folder) is tokenised by sentence-transformers; a bad --model still fails in load_encoder."""
    import shutil

    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    from dgamix.pipeline.encoder import model_path
    from dgamix.pipeline.fast_tokenizer import FastTokenizer

    src = model_path("all-MiniLM-L6-v2")
    assert FastTokenizer.of(EmbedConfig()) is not None

    def variant(name, file, change):
        folder = tmp_path / name
        shutil.copytree(src, folder, ignore=shutil.ignore_patterns("*.safetensors", "*.bin", "*.onnx"))
        path = folder / file
        path.write_text(json.dumps(change(json.loads(path.read_text()))))
        return FastTokenizer.of(EmbedConfig(model=str(folder)))

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))  # a RoBERTa-like byte-level BPE tokenizer.json
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(["the quick brown fox", "jumps over the lazy dog"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>"]))
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    rejected = {
        "st lower-cases": ("sentence_bert_config.json", lambda d: {**d, "do_lower_case": True}),
        "other st settings": ("sentence_bert_config.json", lambda d: {**d, "processing_kwargs": {"text": {}}}),
        "a prompt": ("config_sentence_transformers.json", lambda d: {**d, "prompts": {"query": "query: "}}),
        "a default prompt": ("config_sentence_transformers.json", lambda d: {**d, "default_prompt_name": "q"}),
        "a Dense module": ("modules.json", lambda d: d + [dense]),
        "left padding": ("tokenizer_config.json", lambda d: {**d, "padding_side": "left"}),
        "case setting overridden": ("tokenizer_config.json", lambda d: {**d, "do_lower_case": False}),
        "accents setting overridden": ("tokenizer_config.json", lambda d: {**d, "strip_accents": True}),
        "another tokenizer class": ("tokenizer_config.json", lambda d: {**d, "tokenizer_class": "RobertaTokenizer"}),
        "no token_type_ids": ("tokenizer_config.json", lambda d: {**d, "model_input_names": ["input_ids",
                                                                                              "attention_mask"]}),
        "a pad token not in the vocabulary": ("tokenizer_config.json", lambda d: {**d, "pad_token": "<pad>"}),
        "two pooling modes (a 768-wide vector)": ("1_Pooling/config.json",
                                                  lambda d: {**d, "pooling_mode_max_tokens": True}),
        "a BPE tokenizer": ("tokenizer.json", lambda d: json.loads(bpe.to_str())),
    }
    for why, (file, change) in rejected.items():
        assert variant(why.replace(" ", "-"), file, change) is None, why
    accepted = variant("empty-prompts", "config_sentence_transformers.json",
                       lambda d: {**d, "prompts": {"query": "", "document": ""}, "default_prompt_name": None})
    assert accepted is not None and accepted.dim == 384
    assert FastTokenizer.of(EmbedConfig(model="not-a-folder-or-model")) is None

    bad = tmp_path / "empty-prompts"  # a plain folder whose weights are broken: one error, at load time
    (bad / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DgamixError, match="cannot load model"):
        load_encoder(EmbedConfig(model=str(bad), precision="fp32"))


@needs_ort
@pytest.mark.slow
def test_warm_int8_run_needs_no_torch(int8_cache, encoder, texts50, fp32_ref, tmp_path):
    """With the export cached, an int8 embed tokenises with tokenizers and checks its cosine
    against the cached fp32 export: a new process never imports torch or sentence-transformers,
    and its vectors equal those of the torch-tokenised path."""
    import subprocess
    import sys

    from dgamix.pipeline.encoder import Encoder, _embed_with, int8_encoder

    cfg = EmbedConfig(precision="int8")
    ref = encode(Encoder(encoder.model), texts50, cfg)  # exports (or reads) the cache, tokenised by ST
    from dgamix.pipeline.onnx_int8 import FP32_FILE
    from dgamix.pipeline.precision import measure_precision

    int8 = int8_encoder(Encoder(encoder.model), cfg, texts50)
    assert int8.reference() is not None, "the export keeps its fp32 graph beside the int8 one"
    (int8.path.parent / FP32_FILE).unlink()  # a cache made before dgamix kept it ...
    assert int8.reference() is None
    rep = measure_precision(Encoder(encoder.model), cfg, texts50, "int8")  # ... checked against torch, once
    assert rep.cosine_mean >= 0.99 and (int8.path.parent / FP32_FILE).is_file()
    run = int8.reference()
    c = cos(_embed_with(Encoder(encoder.model), run, texts50, cfg), fp32_ref)
    assert c.min() >= 0.99999, c.min()  # the fp32 export is torch's fp32, to float rounding

    corpus = tmp_path / "c.parquet"
    pl.DataFrame({"id": [str(i) for i in range(len(texts50))], "text": texts50}).write_parquet(corpus)
    code = ("import sys, numpy as np\n"
            "from dgamix.pipeline.core.workspace import Workspace\n"
            "from dgamix.pipeline.embed import embed_corpus\n"
            "from dgamix.pipeline.encoder import EmbedConfig\n"
            f"s = embed_corpus(Workspace({str(tmp_path / 'ws')!r}), [{str(corpus)!r}], "
            "cfg=EmbedConfig(precision='int8'), quiet=True)\n"
            "print(s['precision'], s['precision_cosine_mean'], 'torch' in sys.modules, "
            "'sentence_transformers' in sys.modules)\n")
    # and auto's first measurement on a machine whose export is cached (no decision yet): fp32 on the
    # export; torch only where a torch candidate (bf16) was timed
    auto = ("import sys, json\n"
            "import polars as pl\n"
            "from dgamix.pipeline.encoder import EmbedConfig, load_encoder\n"
            "from dgamix.pipeline.precision import measure_auto\n"
            f"texts = pl.read_parquet({str(corpus)!r})['text'].to_list()\n"
            "cfg = EmbedConfig(precision='auto')\n"
            "r = measure_auto(load_encoder(cfg), cfg, texts)\n"
            "print(json.dumps([r.precision, r.fp32_runner, sorted(r.docs_per_s), r.cosines['fp32'], "
            "'torch' in sys.modules, 'sentence_transformers' in sys.modules, 'onnx' in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DGAMIX_CACHE": int8_cache})
    assert out.returncode == 0, out.stderr[-2000:]
    precision, cosine, torch_loaded, st_loaded = out.stdout.split()
    assert (precision, torch_loaded, st_loaded) == ("int8", "False", "False")
    assert float(cosine) >= 0.99
    out = subprocess.run([sys.executable, "-c", auto], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "DGAMIX_CACHE": int8_cache})
    assert out.returncode == 0, out.stderr[-2000:]
    chosen, runner, timed, fp32_cos, torch_loaded, st_loaded, onnx_loaded = json.loads(out.stdout.splitlines()[-1])
    assert fp32_cos == [1.0, 1.0] and "int8" in timed and not onnx_loaded  # onnx is for exporting only
    if "bf16" in timed:  # a CPU with AMX (bf16 timed with the others) or where int8 did not qualify
        assert torch_loaded and st_loaded
    else:
        assert (runner, torch_loaded, st_loaded) == ("onnx-export", False, False), (chosen, runner, timed)
    ws = Workspace(tmp_path / "ws")
    e = pl.read_parquet(ws.embeddings_dir / "*.parquet").sort("doc_id")
    vec = np.asarray(e["embedding"].to_list(), dtype=np.float32)
    # the same vectors as the torch-tokenised path (same batches: one shard of 50; stored float32)
    assert vec.shape == ref.shape and np.abs(vec - ref).max() < 1e-5


@needs_ort
@pytest.mark.slow
def test_int8_batches_run_at_once_give_the_sequential_result(int8_cache, encoder, texts50):
    """Several batches on threads sharing one session (Int8Encoder.map) == one batch after another."""
    from dgamix.pipeline.encoder import _run_features, tokenize

    encode(encoder, texts50[:2], EmbedConfig(precision="int8"))  # the export cached by the test above
    enc = encoder.int8
    feats, lengths, left = tokenize(encoder, texts50)
    cfg = EmbedConfig(precision="int8")
    seq = _run_features(dataclasses.replace(enc, threads=1, _wide=None), feats, lengths, left, cfg)
    par = _run_features(dataclasses.replace(enc, threads=3, _wide=None), feats, lengths, left, cfg)
    assert len(buckets(lengths, cfg.batch_size, enc.tokens_per_batch)) >= 3  # so the threads did share work
    assert np.abs(par - seq).max() < 1e-6


@pytest.mark.slow
def test_bf16_close_to_fp32(encoder, texts50, fp32_ref):
    # 16 of the texts: bf16 is emulated (slow) on CPUs without bf16 units
    got = encode(encoder, texts50[:16], EmbedConfig(precision="bf16"))
    c = cos(got, fp32_ref[:16])
    assert c.mean() >= 0.99 and c.min() >= 0.95, (c.mean(), c.min())


@needs_ort
@pytest.mark.slow
def test_manifest_records_precision_cosine_and_fingerprint(int8_cache, tmp_path, texts50, monkeypatch):
    src = tmp_path / "c.parquet"
    pl.DataFrame({"text": texts50[:20]}).write_parquet(src)
    ws = Workspace(tmp_path / "ws")
    out = embed_corpus(ws, [str(src)], cfg=EmbedConfig(precision="int8", shard_size=12), quiet=True)
    assert out["precision"] == "int8" and out["embedded"] == 20
    p = manifest.read_meta(ws.embeddings, "embeddings")["params"]
    assert p["precision"] == "int8" and p["precision_requested"] == "int8"
    assert p["precision_cosine_mean"] >= 0.99 and p["precision_sample"] == 20
    assert p["int8_recipe"] and len(p["model_fingerprint"]) == 16
    part = manifest.read_meta(ws.embedding_part(1), "embeddings-part")["params"]
    assert part["precision"] == "int8" and part["precision_cosine_min"] == p["precision_cosine_min"]
    again = embed_corpus(ws, [str(src)], cfg=EmbedConfig(precision="int8", shard_size=12), quiet=True)
    assert again["shards_skipped"] == 2
    # auto on a workspace embedded at an explicit precision keeps it (no switch, nothing redone)
    assert embed_corpus(ws, [str(src)], cfg=EmbedConfig(precision="auto", shard_size=12),
                        quiet=True)["shards_skipped"] == 2
    # another int8 export (an older or newer dgamix) makes other vectors: embed and target refuse to mix
    import types

    import dgamix.pipeline.encoder
    import dgamix.pipeline.target

    assert p["int8_recipe"].startswith("v2/")
    other = types.SimpleNamespace(recipe="v9/other")
    monkeypatch.setattr(dgamix.pipeline.encoder, "int8_encoder", lambda *a: other)
    with pytest.raises(DgamixError, match="int8 export v2/.*this dgamix exports v9/other.*--overwrite"):
        embed_corpus(ws, [str(src)], cfg=EmbedConfig(precision="int8", shard_size=12), quiet=True)
    with pytest.raises(DgamixError, match="int8 export v2/.*re-embed the corpus"):
        dgamix.pipeline.target.build_target(ws, str(src), "t")
    monkeypatch.undo()

    ws2 = Workspace(tmp_path / "ws2")
    src = tmp_path / "c10.parquet"
    pl.DataFrame({"text": texts50[:10]}).write_parquet(src)
    # a corpus under AUTO_MIN_DOCS: fp32, not measured, and the reason is recorded
    out = embed_corpus(ws2, [str(src)], cfg=EmbedConfig(precision="auto", shard_size=16), quiet=True)
    meta = manifest.read_meta(ws2.embeddings, "embeddings")
    assert out["precision"] == "fp32" and meta["params"]["precision_requested"] == "auto"
    choice = meta["params"]["precision_choice"]
    assert choice["docs_per_s"] == {} and "10 documents" in choice["skipped"]["all"]

    import dgamix.pipeline.embed

    monkeypatch.setattr(dgamix.pipeline.embed, "AUTO_MIN_DOCS", 0)  # measured, as on a large corpus
    ws2 = Workspace(tmp_path / "ws3")
    out = embed_corpus(ws2, [str(src)], cfg=EmbedConfig(precision="auto", shard_size=5), quiet=True)
    meta = manifest.read_meta(ws2.embeddings, "embeddings")
    assert meta["params"]["precision_requested"] == "auto" and meta["params"]["precision"] == out["precision"]
    assert out["precision"] in ("fp32", "int8", "bf16")
    choice = meta["params"]["precision_choice"]
    assert set(choice["docs_per_s"]) >= {"fp32"} and choice["cosine"]["fp32"] == [1.0, 1.0]
    if out["precision"] != "fp32":
        assert meta["params"]["precision_cosine_mean"] >= 0.99
    # a rerun reuses the recorded decision instead of measuring again; so does a run resumed from
    # its parts (killed before embeddings.parquet), and it records the same measurements
    # (part 0 missing too: Ray finishes parts out of order)
    import dgamix.pipeline.precision

    monkeypatch.setattr(dgamix.pipeline.precision, "resolve_precision", None)  # measuring again would fail
    assert embed_corpus(ws2, [str(src)], cfg=EmbedConfig(precision="auto", shard_size=5),
                        quiet=True)["precision"] == out["precision"]
    ws2.embeddings.unlink()
    ws2.embedding_part(0).unlink()
    again = embed_corpus(ws2, [str(src)], cfg=EmbedConfig(precision="auto", shard_size=5), quiet=True)
    assert again["precision"] == out["precision"] and again["shards_skipped"] == 1 and again["shards"] == 2
    assert manifest.read_meta(ws2.embeddings, "embeddings")["params"]["precision_choice"] == choice


@needs_ort
def test_auto_leaves_out_a_candidate_that_fails(encoder, texts50, monkeypatch):
    """A failing int8 export or bf16 run (an unusual model) is recorded as skipped; auto falls back to fp32.

    bf16 is made a candidate and made to fail on every machine, so the outcome does not depend on
    whether this CPU has bf16 units (where a working bf16 would rightly win)."""
    import dgamix.pipeline.encoder
    import dgamix.pipeline.onnx_int8
    import dgamix.pipeline.precision

    def broken(*a):
        raise RuntimeError("quantize_dynamic: unsupported node")

    real_runner = dgamix.pipeline.encoder._runner

    def runner(model, cfg, precision, sample):
        if precision == "bf16":
            raise RuntimeError("autocast: no kernel")
        return real_runner(model, cfg, precision, sample)

    for module in (dgamix.pipeline.encoder, dgamix.pipeline.precision):  # precision's auto reaches int8 both ways
        monkeypatch.setattr(module, "int8_encoder", broken)
    monkeypatch.setattr(dgamix.pipeline.precision, "bf16_is_fast", lambda device: True)
    monkeypatch.setattr(dgamix.pipeline.precision, "_runner", runner)
    monkeypatch.setattr(dgamix.pipeline.onnx_int8, "onnxruntime_available", lambda: True)
    for int8_first in (False, True):  # bf16 timed with the others, or only once int8 did not qualify
        monkeypatch.setattr(dgamix.pipeline.precision, "int8_outruns_bf16", lambda device, v=int8_first: v)
        rep = dgamix.pipeline.precision.resolve_precision(encoder, EmbedConfig(precision="auto", batch_size=7),
                                                          texts50[:6])
        assert rep.precision == "fp32" and set(rep.docs_per_s) == {"fp32"}
        assert rep.skipped == {"int8": "RuntimeError: quantize_dynamic: unsupported node",
                               "bf16": "RuntimeError: autocast: no kernel"}


@needs_ort
def test_auto_times_bf16_only_when_int8_does_not_qualify_where_int8_outruns_it(encoder, texts50, monkeypatch):
    """On a CPU with AVX-512 VNNI and no AMX (made so here on every machine), bf16 is timed after int8,
    and only when int8 does not qualify; the report says why it was not timed."""
    import dgamix.pipeline.precision

    real_runner, asked = dgamix.pipeline.precision._runner, []

    def runner(model, cfg, precision, sample):
        asked.append(precision)
        return real_runner(model, cfg, "fp32" if precision == "bf16" else precision, sample)  # bf16 = fp32's speed

    monkeypatch.setattr(dgamix.pipeline.precision, "bf16_is_fast", lambda device: True)
    monkeypatch.setattr(dgamix.pipeline.precision, "int8_outruns_bf16", lambda device: True)
    monkeypatch.setattr(dgamix.pipeline.precision, "_runner", runner)
    rep = dgamix.pipeline.precision.measure_auto(encoder, EmbedConfig(precision="auto"), texts50[:32])
    assert asked[:2] == ["fp32", "int8"]
    if rep.precision == "int8":   # int8 qualified (its usual outcome): bf16 never ran
        assert "bf16" not in asked and "bf16" not in rep.docs_per_s and "not timed" in rep.skipped["bf16"]
    else:                         # int8 was not fast enough on this machine: bf16 was timed after it
        assert asked[2:] == ["bf16"] and "bf16" in rep.docs_per_s and "bf16" not in rep.skipped


@needs_ort
def test_auto_times_fp32_on_the_export_only_when_torch_is_not_needed(encoder, texts50, monkeypatch):
    """With int8's export cached and no model loaded, fp32 (reference and speed) runs on the fp32 export
    and the model stays unloaded; with a bf16 candidate (torch needed anyway) or the model already
    loaded, fp32 is torch's, as it runs."""
    import dgamix.pipeline.precision as P
    from dgamix.pipeline.encoder import Encoder

    cfg = EmbedConfig(precision="auto")
    encode(Encoder(encoder.model), texts50[:4], EmbedConfig(precision="int8"))  # the export, cached
    monkeypatch.setattr(P, "bf16_is_fast", lambda device: False)
    enc = Encoder(cfg=cfg)
    rep = P.measure_auto(enc, cfg, texts50[:32])
    assert (rep.fp32_runner, enc.loaded, sorted(rep.docs_per_s)) == ("onnx-export", False, ["fp32", "int8"])
    assert rep.cosines["fp32"] == [1.0, 1.0] and rep.cosines["int8"][0] >= 0.99
    assert rep.choice()["fp32_runner"] == "onnx-export"
    rep = P.measure_auto(Encoder(encoder.model), cfg, texts50[:32])  # the model is loaded: torch
    assert rep.fp32_runner == "torch" and rep.choice()["fp32_runner"] == "torch"
    monkeypatch.setattr(P, "bf16_is_fast", lambda device: True)
    monkeypatch.setattr(P, "int8_outruns_bf16", lambda device: False)  # bf16 timed with the others
    enc = Encoder(cfg=cfg)
    rep = P.measure_auto(enc, cfg, texts50[:32])
    assert rep.fp32_runner == "torch" and enc.loaded and "bf16" in rep.docs_per_s


def test_unknown_precision_is_a_user_error(tmp_path, encoder):
    with pytest.raises(DgamixError, match="--precision fp16"):
        encode(encoder, ["some text"], EmbedConfig(precision="fp16"))
    with pytest.raises(DgamixError, match="--precision int4"):
        load_encoder(EmbedConfig(precision="int4"))
    src = tmp_path / "c.parquet"
    pl.DataFrame({"text": ["one document here", "another one"]}).write_parquet(src)
    one_line_error(run_cli("embed", src, "--workspace", tmp_path / "ws", "--precision", "fp8", "-q"), "fp8")
    assert not (tmp_path / "ws" / "docs.parquet").exists()


def test_missing_onnxruntime_names_the_install(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_ort(name, *a, **k):
        if name == "onnxruntime" or name.startswith("onnxruntime."):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_ort)
    with pytest.raises(DgamixError, match="pip install onnxruntime"):
        load_encoder(EmbedConfig(precision="int8"))


def test_quiet_logging_restores_the_users_level():
    import logging

    from dgamix.pipeline.onnx_int8 import _quiet_logging

    before = logging.root.manager.disable
    try:
        logging.disable(logging.CRITICAL)  # a user who silenced everything stays silenced
        with _quiet_logging():
            assert logging.root.manager.disable == logging.CRITICAL
        assert logging.root.manager.disable == logging.CRITICAL
        logging.disable(logging.NOTSET)
        with _quiet_logging():
            assert logging.root.manager.disable == logging.WARNING
        assert logging.root.manager.disable == logging.NOTSET
    finally:
        logging.disable(before)


@pytest.mark.slow
def test_auto_measures_once_per_machine(encoder, monkeypatch):
    """The real measurement on a 64-document sample; a second process (a new Encoder) on this
    machine reuses the decision from the cache (this module's DGAMIX_CACHE) without measuring."""
    import dgamix.pipeline.precision as E

    texts = pl.read_parquet(DATA / "wiki_vital_en.parquet").sample(64, seed=11)["text"].to_list()
    cfg = EmbedConfig(precision="auto")
    rep = E.resolve_precision(E.Encoder(encoder.model), cfg, texts)
    if rep.failed:
        pytest.skip(f"a candidate failed on this machine, so nothing is cached: {rep.skipped}")
    assert rep.cached is None and rep.sample == 64 and set(rep.docs_per_s) >= {"fp32"}
    assert rep.precision == "fp32" or (rep.cosine_mean >= 0.99 and rep.cosine_min >= 0.95)

    def fail(*a):
        raise AssertionError("measured again although the decision is cached")

    monkeypatch.setattr(E, "measure_auto", fail)
    again = E.resolve_precision(E.Encoder(encoder.model), cfg, texts)
    assert again.cached.startswith("cached decision from ") and again.precision == rep.precision
    assert (again.docs_per_s, again.cosines, again.recipe) == (rep.docs_per_s, rep.cosines, rep.recipe)
