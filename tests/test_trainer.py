"""The reference trainer: determinism, exact resume, weights on the simplex, DGA moves, identity
basis = domain reweighting, held-out docs never trained on, NaN stops cleanly.

A tiny real workspace (Wikipedia summaries from data/, a GSM8K target, hand-written tree,
assignments and basis) and a tiny model (d_model 32, 1 layer, context 32) keep this fast.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest
import torch

from dgamix.mixing.dga import BasisMatrix, DGAConfig
from dgamix.mixing.inputs import PROBE_SALT, general_holdout
from dgamix.mixing.mixers import make_mixer
from dgamix.mixing.online import OnlineMixture
from dgamix.mixing.sampler import MixtureSampler
from dgamix.mixing.testbed.model import ModelConfig, TinyGPT, lm_loss
from dgamix.mixing.testbed.packing import EOS, PAD, UNK, DocTokens, Packer, Windows, pack_stream
from dgamix.mixing.testbed.tokens import Vocab
from dgamix.mixing.testbed.train import build_inputs, train_run
from dgamix.mixing.testbed.trainer import CHECKPOINT, CHECKPOINT_FORMAT, TrainConfig, load_checkpoint, train
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError

DGA_KEYS = tuple(f.name for f in dataclasses.fields(DGAConfig))

pytestmark = pytest.mark.usefixtures("one_thread")  # tests.conftest


def tiny_config(**kw) -> TrainConfig:
    base = dict(steps=20, batch_size=4, lr=3e-3, warmup=4, reweight_every=5, reweight_start=4, align_batch_size=4,
                target_batch_size=4, eval_every=5, eval_batches=1, eval_batch_size=8, checkpoint_every=10,
                general_holdout=0.05, context=32, vocab_size=512, d_model=32, n_layer=1, n_head=4, seed=0)
    base.update(kw)
    dga = {k: base.pop(k) for k in list(base) if k in DGA_KEYS}
    return TrainConfig(**base, dga=DGAConfig(**dga))


def _run(ws, mixer="dga", basis="b", cfg=None, level=2, **kw):
    cfg = cfg or tiny_config()
    inp = build_inputs(ws, "c", level, "t", mixer, basis, cfg)
    torch.manual_seed(cfg.seed)
    model = TinyGPT(ModelConfig(inp["vocab"].size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
    return train(model, inp["data"], inp["mix"], cfg, **kw), inp


def _losses(result):
    return [(m["step"], m["split"], m["loss"], m["tokens"]) for m in result.metrics]


# --------------------------------------------------------------------------- units

def test_model_loss_ignores_padding_and_is_near_log_vocab_at_init():
    torch.manual_seed(0)
    model = TinyGPT(ModelConfig(vocab=50, d_model=16, n_layer=1, n_head=2, context=8))
    x = torch.randint(1, 50, (3, 9))
    padded = torch.cat([x, torch.zeros(3, 4, dtype=torch.long)], 1)[:, :9]
    assert abs(float(lm_loss(model, x).detach()) - np.log(50)) < 0.3
    y = x.clone()
    y[:, 6:] = PAD  # the loss on the real prefix only
    assert torch.allclose(lm_loss(model, y), lm_loss(model, x[:, :6]), atol=1e-6)
    assert padded.shape == x.shape
    with pytest.raises(ValueError):
        model(torch.randint(1, 50, (1, 9 + 1)))


def test_vocab_keeps_most_frequent_pieces():
    v = Vocab.build([[5, 5, 7, 9], [7, 5, 3]], size=2, encoder_vocab=12)
    assert v.pieces.tolist() == [5, 7] and v.size == 5          # pad, unk, eos + 2 pieces
    flat, offsets = v.flat([[5, 7, 9, 5, 5], [3], []])
    assert flat.tolist() == [3, 4, UNK, 3, 3, UNK] and offsets.tolist() == [0, 5, 6, 6]
    win = Windows(np.array([[3, 4, 0, 0, 0], [3, 0, 0, 0, 0]], np.int32))
    assert win.batch(np.array([0, 1])).tolist() == [[3, 4], [3, 0]]   # trailing pad columns trimmed


def test_stream_and_packing_keep_every_piece_once():
    # docs: 0 = [10, 11, 12], 1 = [] (a duplicate), 2 = [20], 3 = [30, 31, 32, 33, 34]
    toks = DocTokens(np.array([10, 11, 12, 20, 30, 31, 32, 33, 34]), np.array([0, 3, 3, 4, 9]))
    assert toks.lengths().tolist() == [3, 0, 1, 5]
    assert toks.stream(np.array([3, 0, 2])).tolist() == [30, 31, 32, 33, 34, EOS, 10, 11, 12, EOS, 20, EOS]
    assert toks.stream(np.array([], np.int64)).tolist() == []
    w = pack_stream(toks.stream(np.array([0, 2])), context=3)  # 6 pieces -> 2 windows of 4, last padded
    assert w.tokens.tolist() == [[10, 11, 12, EOS], [20, EOS, 0, 0]]
    assert len(pack_stream(toks.stream(np.array([0, 2, 3])), context=3, rows=1)) == 1

    # The packer: batches of 2 x 4 pieces; the tail of the last document carries to the next batch,
    # so the concatenated batches are exactly the stream of the drawn documents.
    order = iter([3, 0, 2, 3, 0, 2, 3, 0, 2, 3, 0, 2])
    drawn: list[int] = []

    def draw(m):
        ids = [next(order) for _ in range(m)]
        drawn.extend(ids)
        return np.array(ids)

    packer = Packer(toks, context=3, rows=2, mean_len=2.0)
    batches = [packer.next(draw) for _ in range(3)]
    assert all(b.shape == (2, 4) and b.dtype == torch.int64 for b in batches)
    got = torch.cat(batches).reshape(-1).tolist()
    started = drawn[:len(drawn) - packer.pending.size]  # drawn documents not yet started wait in pending
    assert packer.pending.tolist() == drawn[len(started):]
    assert got + packer.carry.tolist() == toks.stream(np.array(started)).tolist()
    assert packer.carry.size <= toks.lengths().max()  # at most the tail of one document
    assert toks.stream(np.array([3, 0]), limit=2).tolist() == [30, 31, EOS, 10, 11, EOS]
    # carry and pending are the packer's whole state: a fresh packer given them continues identically
    again = Packer(toks, context=3, rows=2, mean_len=2.0)
    again.load_state_dict(packer.state_dict())
    rest = list(order)
    it1, it2 = iter(rest), iter(rest)
    assert torch.equal(packer.next(lambda m: np.array([next(it1) for _ in range(m)])),
                       again.next(lambda m: np.array([next(it2) for _ in range(m)])))


def test_packer_does_not_stockpile_long_documents():
    """mean_len underestimates the drawn documents (10 vs 5,000 pieces): the packer still starts
    only the documents the batch needs, so a weight change reaches the next batch that starts a
    document, and the carry stays below one document."""
    toks = DocTokens(np.arange(5000 * 30) % 50 + 3, np.arange(31) * 5000)
    calls = []

    def draw(m):
        calls.append(m)
        return np.arange(sum(calls) - m, sum(calls)) % 30

    packer = Packer(toks, context=63, rows=4, mean_len=10.0)
    for _ in range(30):
        packer.next(draw)
        assert packer.carry.size < 5001
    # 30 batches x 256 pieces = 7,680 pieces: documents 0 and 1 started, the rest still pending
    assert packer.pending.size == calls[0] - 2 and len(calls) == 1


def test_lr_schedule_warmup_then_cosine():
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, min_lr_ratio=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(9) == pytest.approx(1.0)
    assert cfg.lr_at(10) == pytest.approx(1.0) and cfg.lr_at(99) == pytest.approx(0.1)
    assert all(cfg.lr_at(s) >= cfg.lr_at(s + 1) for s in range(10, 99))


# --------------------------------------------------------------------------- training

@pytest.mark.slow
def test_same_seed_same_losses_exactly(tiny_ws):
    a, _ = _run(tiny_ws)
    b, _ = _run(tiny_ws)
    assert _losses(a) == _losses(b)
    last = [m for m in a.metrics if m["step"] == 20]
    assert {m["split"] for m in last} == {"train", "target", "general"}
    assert all(np.isfinite(m["loss"]) for m in a.metrics)
    assert np.array_equal(a.weights[-1]["weights"], b.weights[-1]["weights"])


@pytest.mark.slow
def test_resume_from_checkpoint_equals_uninterrupted(tiny_ws, tmp_path):
    full, _ = _run(tiny_ws, checkpoint_dir=tmp_path / "full")

    class Crash(Exception):
        pass

    def crash(tr):
        if tr.step == 10:
            raise Crash

    with pytest.raises(Crash):
        _run(tiny_ws, checkpoint_dir=tmp_path / "cut", on_checkpoint=crash)
    assert load_checkpoint(tmp_path / "cut" / CHECKPOINT)["step"] == 10
    resumed, _ = _run(tiny_ws, checkpoint_dir=tmp_path / "cut", resume=True)
    assert resumed.resumed_from == 10
    a, b = _losses(full), _losses(resumed)
    assert [x[:2] + x[3:] for x in a] == [x[:2] + x[3:] for x in b]
    np.testing.assert_allclose([x[2] for x in a], [x[2] for x in b], rtol=0, atol=1e-6)
    for wa, wb in zip(full.weights, resumed.weights, strict=True):
        assert wa["step"] == wb["step"]
        np.testing.assert_allclose(wa["weights"], wb["weights"], atol=1e-9)
    np.testing.assert_array_equal(full.repetitions["draws"], resumed.repetitions["draws"])


def test_identity_basis_equals_domain_reweighting(tiny_ws):
    cfg = tiny_config(steps=12, checkpoint_every=0)
    dom, inp = _run(tiny_ws, basis=None, cfg=cfg)
    assert inp["mix"].kind == "domain"
    inp2 = build_inputs(tiny_ws, "c", 2, "t", "dga", None, cfg)
    index = inp2["index"]
    assert index.domains.tolist() == [0, 1, 2, 3]
    eye = BasisMatrix.identity(4)
    dom_mix = inp2["mix"]
    mix = OnlineMixture(MixtureSampler(index, eye, seed=cfg.seed), MixtureSampler(index, eye, seed=cfg.seed + PROBE_SALT),
                        make_mixer("dga", 4, config=inp2["mixer"].config), dom_mix.batches, kind="basis",
                        ids=np.arange(4), names=list("0123"), align_batch_size=cfg.align_batch_size,
                        target_batch_size=cfg.target_batch_size, seed=cfg.seed, fixed_batch=False)  # the packer's draws vary
    torch.manual_seed(cfg.seed)
    model = TinyGPT(ModelConfig(inp2["vocab"].size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
    basis = train(model, inp2["data"], mix, cfg)
    assert _losses(dom) == _losses(basis)
    for wa, wb in zip(dom.weights, basis.weights, strict=True):
        np.testing.assert_allclose(wa["weights"], wb["weights"], rtol=0, atol=1e-12)
        if wa["alignment"] is not None:
            np.testing.assert_allclose(wa["alignment"], wb["alignment"], rtol=1e-12)


def test_general_holdout_and_duplicates_never_sampled(tiny_ws, monkeypatch):
    cfg = tiny_config(steps=10, checkpoint_every=0)
    inp = build_inputs(tiny_ws, "c", 2, "t", "dga", "b", cfg)
    held = inp["held"]
    assert held.size == 8  # 5% of 158 = 8, capped at eval size 8
    assert not np.isin([5, 6], inp["index"].docs).any() and np.isin(held, inp["index"].docs).sum() == 0
    seen = []
    orig = MixtureSampler.sample

    def spy(self, n, w):
        docs, doms = orig(self, n, w)
        seen.append(docs.copy())
        return docs, doms

    monkeypatch.setattr(MixtureSampler, "sample", spy)
    torch.manual_seed(0)
    model = TinyGPT(ModelConfig(inp["vocab"].size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
    train(model, inp["data"], inp["mix"], cfg)
    drawn = np.concatenate(seen)
    # packed training batches read every piece of the drawn documents (+ one EOS each)
    assert (inp["data"].tokens.lengths(drawn) + 1).sum() >= 10 * cfg.batch_size * (cfg.context + 1)
    assert not np.isin(drawn, held).any()
    assert not np.isin(drawn, [5, 6]).any()
    # the general eval set is exactly the held-out docs
    # ... packed with an equal share of windows per document: 8 docs, 8 windows -> 1 window each
    size = cfg.eval_batches * cfg.eval_batch_size
    expect = pack_stream(inp["data"].tokens.stream(held, limit=cfg.context), cfg.context, size)
    np.testing.assert_array_equal(inp["data"].eval_sets["general"].tokens, expect.tokens)
    firsts = inp["data"].eval_sets["general"].tokens[:, 0]
    starts = [inp["data"].tokens.flat[inp["data"].tokens.offsets[d]] for d in held]
    assert firsts.tolist() == starts  # every held-out document opens its own window
    # same slice for any run seed: runs are compared on the same documents
    other = build_inputs(tiny_ws, "c", 2, "t", "uniform", None, tiny_config(seed=5))
    np.testing.assert_array_equal(other["held"], held)


def test_general_holdout_never_empties_a_domain():
    from dgamix.mixing.sampler import DomainIndex

    idx = DomainIndex.from_arrays(np.arange(101), np.r_[np.zeros(100, np.int64), 1])
    held = general_holdout(idx, 0.99, 1000)
    assert 100 not in held and held.size > 0


def test_nan_loss_stops_with_error_and_keeps_last_checkpoint(tiny_ws, tmp_path):
    calls = {"n": 0}

    def bad_loss(model, batch):  # uniform mixer: exactly one loss call per training step
        loss = lm_loss(model, batch)
        calls["n"] += 1
        return loss * float("nan") if calls["n"] > 15 else loss

    with pytest.raises(DgamixError, match="step 15") as e:
        _run(tiny_ws, mixer="uniform", basis=None, checkpoint_dir=tmp_path, loss_fn=bad_loss)
    assert "step 10" in str(e.value)
    assert load_checkpoint(tmp_path / CHECKPOINT)["step"] == 10


# --------------------------------------------------------------------------- the stage

def test_train_run_writes_manifests_on_simplex_and_dga_moves(tiny_ws):
    cfg = tiny_config(eta=3.0)
    summary = train_run(tiny_ws, "c", 2, "t", "dga", "b", cfg, name="dga-run", quiet=True)
    d = tiny_ws.run_dir("dga-run")
    w, meta = manifest.read(d / "weights.parquet", "run-weights")
    p = meta["params"]
    assert (p["eta"], p["ema_beta"], p["reweight_every"], p["mixer"], p["basis"], p["clusters"], p["level"],
            p["target"]) == (3.0, 0.1, 5, "dga", "b", "c", 2, "t")
    df = pl.from_arrow(w)
    assert sorted(df["step"].unique().to_list()) == [0, 5, 10, 15, 20]
    sums = df.group_by("step").agg(pl.col("weight").sum(), pl.col("weight").min().alias("min"))
    assert np.allclose(sums["weight"].to_numpy(), 1.0, atol=1e-9) and (sums["min"].to_numpy() >= 0).all()
    assert df.filter(pl.col("step") == 20)["alignment"].null_count() == 3
    assert df.filter(pl.col("step") == 0)["alignment"].null_count() == 3  # no update before reweight_start
    np.testing.assert_allclose(df.filter(pl.col("step") == 0)["weight"].to_numpy(), 1 / 3)
    assert df.filter(pl.col("step") == 5)["alignment"].null_count() == 0
    last = df.filter(pl.col("step") == 20).sort("basis")["weight"].to_numpy()
    assert np.abs(last - 1 / 3).max() > 1e-3  # moved away from the uniform start
    assert df["name"].to_list()[:3] == ["target", "generic", "pocket"]
    # recompute the step-5 update from the log and the metadata
    from dgamix.mixing.dga import ema, mirror_step, normalise_alignments
    w0 = df.filter(pl.col("step") == 0).sort("basis")
    w5 = df.filter(pl.col("step") == 5).sort("basis")
    lw = np.log(w0["weight"].to_numpy())
    a = normalise_alignments(w5["alignment"].to_numpy(), w5["grad_norm"].to_numpy(), w5["target_norm"][0],
                             p["normalise"])
    expect = np.exp(ema(lw, mirror_step(lw, a, p["eta"]), p["ema_beta"]))
    np.testing.assert_allclose(w5["weight"].to_numpy(), expect, rtol=1e-9)
    m = pl.read_parquet(d / "metrics.parquet")
    assert set(m["split"].unique()) == {"train", "target", "general"}
    assert m["tokens"].is_sorted() and m["seconds"].is_sorted()
    r = pl.read_parquet(d / "repetitions.parquet")
    assert r.columns == ["domain", "n_docs", "draws", "epochs"] and r["draws"].sum() >= 1
    # packed windows hold no padding: 20 steps x 4 windows x 32 predicted pieces, exactly
    assert m.filter(pl.col("step") == 20)["tokens"].unique().to_list() == [20 * 4 * 32]
    assert summary["steps"] == 20 and "loss_target" in summary


def test_train_run_static_mixers_and_is(tiny_ws):
    cfg = tiny_config(steps=6, checkpoint_every=0, eval_every=3)
    for mixer, basis in (("natural", None), ("is", "b")):
        train_run(tiny_ws, "c", 2, "t", mixer, basis, cfg, name=f"s-{mixer}", quiet=True)
        df = pl.read_parquet(tiny_ws.run_dir(f"s-{mixer}") / "weights.parquet")
        assert sorted(df["step"].unique().to_list()) == [0, 6] and df["domain"].null_count() == 0
        w = df.filter(pl.col("step") == 0).sort("domain")["weight"].to_numpy()
        if mixer == "is":
            np.testing.assert_allclose(w, [0.7, 0.3, 0, 0])
        reps = pl.read_parquet(tiny_ws.run_dir(f"s-{mixer}") / "repetitions.parquet")
        if mixer == "is":
            assert reps.filter(pl.col("domain") >= 2)["draws"].sum() == 0


@pytest.mark.slow
def test_train_run_refuses_and_resumes(tiny_ws):
    cfg = tiny_config(steps=6, checkpoint_every=0, eval_every=3)
    train_run(tiny_ws, "c", 2, "t", "uniform", None, cfg, name="again", quiet=True)
    with pytest.raises(DgamixError, match="already exists"):
        train_run(tiny_ws, "c", 2, "t", "uniform", None, cfg, name="again", quiet=True)
    with pytest.raises(DgamixError, match="'steps' differs"):
        train_run(tiny_ws, "c", 2, "t", "uniform", None, tiny_config(steps=8, checkpoint_every=0, eval_every=3),
                  name="again", resume=True, quiet=True)
    s = train_run(tiny_ws, "c", 2, "t", "uniform", None, cfg, name="again", resume=True, quiet=True)
    assert s["resumed_from"] == 6
    train_run(tiny_ws, "c", 2, "t", "uniform", None, cfg, name="again", overwrite=True, quiet=True)
    with pytest.raises(DgamixError, match="level 1, not 'c' level 2"):
        train_run(tiny_ws, "c", 2, "t", "dga", "b1", cfg, name="x", quiet=True)
    with pytest.raises(DgamixError, match="needs --basis"):
        train_run(tiny_ws, "c", 2, "t", "is", None, cfg, name="x", quiet=True)


@pytest.mark.slow
def test_recorded_ema_beta_is_the_one_the_run_used(tiny_ws):
    """dga-noema records ema_beta 0 (it ran with 0): the logged update is recomputed from the recorded
    value. A --ema-beta that a mixer would ignore is refused instead; doge records none."""
    from dgamix.mixing.dga import ema, mirror_step, normalise_alignments

    train_run(tiny_ws, "c", 2, "t", "dga-noema", "b", tiny_config(eta=3.0, steps=10, checkpoint_every=0),
              name="noema", quiet=True)
    w, meta = manifest.read(tiny_ws.run_dir("noema") / "weights.parquet", "run-weights")
    p = meta["params"]
    assert p["mixer"] == "dga-noema" and p["ema_beta"] == 0.0
    df = pl.from_arrow(w)
    lw = np.log(df.filter(pl.col("step") == 0).sort("basis")["weight"].to_numpy())
    w5 = df.filter(pl.col("step") == 5).sort("basis")
    a = normalise_alignments(w5["alignment"].to_numpy(), w5["grad_norm"].to_numpy(), w5["target_norm"][0],
                             p["normalise"])
    expect = np.exp(ema(lw, mirror_step(lw, a, p["eta"]), p["ema_beta"]))
    np.testing.assert_allclose(w5["weight"].to_numpy(), expect, rtol=1e-9)
    assert np.abs(expect - np.exp(ema(lw, mirror_step(lw, w5["alignment"].to_numpy(), 3.0), 0.1))).max() > 1e-6

    for mixer, basis in (("dga-noema", "b"), ("doge", "b"), ("uniform", None), ("is", "b")):
        with pytest.raises(DgamixError, match="--ema-beta 0.3") as e:
            train_run(tiny_ws, "c", 2, "t", mixer, basis, tiny_config(ema_beta=0.3), name=f"x-{mixer}", quiet=True)
        assert len(str(e.value).splitlines()) == 1
        assert not tiny_ws.run_dir(f"x-{mixer}").exists() or not any(tiny_ws.run_dir(f"x-{mixer}").iterdir())
    train_run(tiny_ws, "c", 2, "t", "dga-noema", "b", tiny_config(ema_beta=0.0, steps=5), name="noema0", quiet=True)
    train_run(tiny_ws, "c", 2, "t", "doge", "b", tiny_config(steps=5), name="doge", quiet=True)
    assert manifest.read_meta(tiny_ws.run_dir("doge") / "weights.parquet")["params"]["ema_beta"] is None
    train_run(tiny_ws, "c", 2, "t", "dga", "b", tiny_config(steps=5), name="dga-default", quiet=True)
    assert manifest.read_meta(tiny_ws.run_dir("dga-default") / "weights.parquet")["params"]["ema_beta"] == 0.1


def test_training_leaves_the_process_settings_as_they_were(tiny_ws):
    """A library call changes no process-wide state: torch's threads and RNG, numpy's global RNG
    and the environment are as they were (the run itself is still seeded: same losses twice)."""
    import os

    torch.set_num_threads(2)
    np.random.seed(123)
    before = (torch.get_num_threads(), torch.get_rng_state().clone(), np.random.get_state()[1].copy(), dict(os.environ))
    a = train_run(tiny_ws, "c", 2, "t", "uniform", None, tiny_config(steps=3, threads=1), name="side-a", quiet=True)
    after = (torch.get_num_threads(), torch.get_rng_state(), np.random.get_state()[1], dict(os.environ))
    assert after[0] == before[0] and torch.equal(after[1], before[1])
    torch_own = {"TORCHINDUCTOR_CACHE_DIR"}  # torch sets it itself on a lazy import of its compiler
    assert np.array_equal(after[2], before[2])
    assert {k: v for k, v in after[3].items() if k not in torch_own} == {k: v for k, v in before[3].items()
                                                                          if k not in torch_own}
    b = train_run(tiny_ws, "c", 2, "t", "uniform", None, tiny_config(steps=3, threads=1), name="side-b", quiet=True)
    assert a["loss_target"] == b["loss_target"] and a["loss_train"] == b["loss_train"]


@pytest.mark.slow
def test_importing_the_library_sets_no_environment():
    import os
    import subprocess
    import sys

    code = ("import os; before = dict(os.environ); import dgamix.pipeline.kmeans, dgamix.pipeline.embed, dgamix.mixing.testbed.train; "
            "print(sorted(set(os.environ.items()) ^ set(before.items())))")
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "HF_HUB_OFFLINE")}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_a_checkpoint_of_another_format_is_refused_with_one_line(tiny_ws):
    """A run checkpointed by an older dgamix (another TrainConfig layout, no probe pool seed) is not
    misread on --resume: one line says to restart it with --overwrite."""
    cfg = tiny_config(steps=10, checkpoint_every=5)
    train_run(tiny_ws, "c", 2, "t", "uniform", None, cfg, name="old-format", quiet=True)
    ckpt = tiny_ws.run_dir("old-format") / "checkpoint" / CHECKPOINT
    state = load_checkpoint(ckpt)
    assert state["format"] == CHECKPOINT_FORMAT
    del state["format"]  # what a checkpoint of the previous version looks like
    torch.save(state, ckpt)
    with pytest.raises(DgamixError, match=r"^cannot resume run 'old-format': .*format 1.*--overwrite") as e:
        train_run(tiny_ws, "c", 2, "t", "uniform", None, dataclasses.replace(cfg, steps=12), name="old-format", resume=True,
                  quiet=True)
    assert len(str(e.value).splitlines()) == 1


def test_dga_clip_reaches_the_alignments_and_is_recorded(tiny_ws):
    """DGAConfig.clip rescales every alignment gradient: the logged norms are <= clip, and the
    run's metadata records the setting."""
    cfg = tiny_config(steps=10, checkpoint_every=0, clip=1e-4)
    train_run(tiny_ws, "c", 2, "t", "dga", "b", cfg, name="clipped", quiet=True)
    w = pl.read_parquet(tiny_ws.run_dir("clipped") / "weights.parquet").drop_nulls("alignment")
    assert w.height > 0
    assert (w["grad_norm"] <= 1e-4 * (1 + 1e-9)).all() and (w["target_norm"] <= 1e-4 * (1 + 1e-9)).all()
    # |a_j| <= |g_j| |g_spe| (Cauchy-Schwarz) on the clipped gradients
    assert (w["alignment"].abs() <= w["grad_norm"] * w["target_norm"] * (1 + 1e-9)).all()
    meta = manifest.read_meta(tiny_ws.run_dir("clipped") / "weights.parquet", "run-weights")
    assert meta["params"]["clip"] == 1e-4 and meta["params"]["normalise"] == cfg.dga.normalise


def test_dga_init_target_starts_where_the_target_is(tiny_ws):
    """init="target": the starting weights are the basis mixture that best explains the target's
    examples. Basis 'b' holds the target's own histogram ('target'), so nearly all the mass starts
    there, and every basis keeps at least INIT_FLOOR / N."""
    from dgamix.mixing.dga import INIT_FLOOR
    from dgamix.pipeline.target import target_assignments

    path = tiny_ws.target_dir("t") / "c" / "assignments.parquet"
    if not path.exists():  # stage 3 reads the assignments stage 2 caches; without them, one line
        with pytest.raises(DgamixError, match=r"^DGA's init 'target' needs the target's domains .*`dgamix basis"):
            build_inputs(tiny_ws, "c", 2, "t", "dga", "b", tiny_config(init="target"))
    target_assignments(tiny_ws, "t", "c")  # what `dgamix basis` does first
    inp = build_inputs(tiny_ws, "c", 2, "t", "dga", "b", tiny_config(init="target"))
    w0 = inp["mixer"].weights()
    names = inp["mix"].names
    assert names[0] == "target" and w0[0] > 0.9 and (w0 >= INIT_FLOOR / len(w0) - 1e-12).all()
    uniform = build_inputs(tiny_ws, "c", 2, "t", "dga", "b", tiny_config())["mixer"].weights()
    np.testing.assert_allclose(uniform, 1 / len(w0))
    # domain reweighting starts at the target's histogram over the domains (floored)
    dom = build_inputs(tiny_ws, "c", 2, "t", "dga", None, tiny_config(init="target"))["mixer"].weights()
    assert abs(dom.sum() - 1) < 1e-12 and dom.max() > 2 / len(dom)
