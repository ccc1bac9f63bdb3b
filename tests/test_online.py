"""The public API for a user's own loop (dgamix.mixing.OnlineMixture): texts by doc id, exact
resume in process (SIGKILL of examples/own_loop.py: tests/test_loader.py), `dgamix train` = the public object,
loss multipliers, user runs in `dgamix report` / `dgamix schedule`, the same validation as the CLI."""
from __future__ import annotations

import io
import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from dgamix.mixing import DGAConfig, DocTexts, OnlineMixture, loss_weights
from dgamix.mixing.testbed.model import ModelConfig, TinyGPT, lm_loss
from dgamix.mixing.testbed.packing import Packer
from dgamix.mixing.testbed.train import build_inputs, train_run
from dgamix.mixing.testbed.trainer import TrainConfig, make_optimizer
from dgamix.pipeline.core import manifest
from dgamix.pipeline.core.errors import DgamixError
from dgamix.pipeline.core.workspace import Workspace
from tests.helpers import one_line_error, run_cli, tiny_gpt2

ENV = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1",
           TOKENIZERS_PARALLELISM="false")
DGA = DGAConfig(reweight_every=2, reweight_start=2)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests.conftest


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2()


def mixture(ws, collate, **kw) -> OnlineMixture:
    kw = {"basis": "b", "config": DGA, "align_batch_size": 4, "target_batch_size": 4, **kw}
    return OnlineMixture.from_workspace(ws, "c", 2, "t", collate=collate, **kw)


# --------------------------------------------------------------------------- texts by doc id

@pytest.mark.slow
def test_texts_by_doc_id_in_any_order_and_after_moves(real_ws, tmp_path):
    import polars as pl

    corpus = pl.read_parquet(real_ws.parent / "corpus.parquet")["text"].to_list()
    docs = pl.read_parquet(real_ws / "docs.parquet")
    assert set(docs["source"].to_list()) == {"../corpus.parquet"}  # relative to the workspace
    ids = np.array([7, 3, 3, 119, 0, 64])
    assert DocTexts(Workspace(real_ws))[ids] == [corpus[i] for i in ids]
    # the project moved whole: the relative source is found
    shutil.copytree(real_ws.parent, tmp_path / "moved", ignore=shutil.ignore_patterns("runs", ".lock-*"))
    assert DocTexts(Workspace(tmp_path / "moved" / "ws"))[ids] == [corpus[i] for i in ids]
    # the workspace moved alone: the file it was embedded from is found
    shutil.copytree(real_ws, tmp_path / "alone", ignore=shutil.ignore_patterns("runs", ".lock-*"))
    assert DocTexts(Workspace(tmp_path / "alone"))[ids[:2]] == [corpus[7], corpus[3]]
    # neither: training reads the workspace's row-indexed copy, so the corpus file is not needed
    (tmp_path / "moved" / "corpus.parquet").rename(tmp_path / "moved" / "elsewhere.parquet")
    texts = DocTexts(Workspace(tmp_path / "moved" / "ws"))
    texts.reader.fallback.clear()  # as on another machine, where the embed-time file does not exist
    assert texts[ids] == [corpus[i] for i in ids]
    # read in place (a workspace embedded with --no-text-store): one line naming the missing file and the fix
    texts = DocTexts(Workspace(tmp_path / "moved" / "ws"))
    texts.reader.fallback.clear()
    texts.reader.copies.clear()
    with pytest.raises(DgamixError, match=r"corpus file .*moved/ws/\.\./corpus\.parquet .* is missing; move it back"):
        texts[[1]]
    (copy,) = (tmp_path / "moved" / "ws" / "texts").iterdir()
    copy.unlink()
    with pytest.raises(DgamixError, match=r"row-indexed copy of the corpus file \.\./corpus\.parquet's texts, is missing"):
        DocTexts(Workspace(tmp_path / "moved" / "ws"))[[1]]
    with pytest.raises(IndexError):
        DocTexts(Workspace(real_ws))[[10_000]]


# --------------------------------------------------------------------------- the object

def test_from_workspace_validates_like_the_cli(tiny_ws, gpt2):
    """The same checks and messages; the CLI names its flags (--level 9), Python its parameters (level=9)."""
    _, _, collate, _ = gpt2
    cases = [  # (level, target, mixer, basis), {CLI's words: Python's}
        ((9, "t", "dga", "b"), {"--level 9": "level=9"}),                        # level out of range
        ((2, "t", "dga", "b1"), {"--clusters/--level": "clusters/level"}),      # basis built for another level
        ((2, "t", "is", None), {"--mixer is": "mixer='is'", "--basis B": "basis=B"}),  # is without a basis
        ((2, "t", "magic", None), {"--mixer magic": "mixer='magic'"}),          # no such mixer
        ((2, "nope", "dga", "b"), {}),                                          # no such target
    ]
    for (level, target, mixer, basis), words in cases:
        with pytest.raises(DgamixError) as e:
            OnlineMixture.from_workspace(tiny_ws, "c", level, target, basis=basis, mixer=mixer, collate=collate)
        r = run_cli("train", "--workspace", tiny_ws.root, "--clusters", "c", "--level", level, "--target", target,
                    "--mixer", mixer, *(["--basis", basis] if basis else []), "--steps", 1, "--name", "v", "--quiet")
        cli = one_line_error(r)[len("error: "):]
        python = cli
        for flag, param in words.items():
            assert flag in cli, (flag, cli)
            python = python.replace(flag, param)
        assert str(e.value) == python, (str(e.value), cli)
    with pytest.raises(DgamixError, match="pass collate="):
        OnlineMixture.from_workspace(tiny_ws, "c", 2, "t", basis="b")


def test_next_batch_reweight_and_state_dict_round_trip_exactly(tiny_ws, gpt2):
    _, _, collate, model = gpt2
    texts = DocTexts(tiny_ws)

    def run(mix, steps, record):
        for step in steps:
            r = mix.maybe_reweight(step, model)
            assert (r is not None) == (step >= 2 and step % 2 == 0)
            b = mix.next_batch(4)
            assert b.texts == texts[b.doc_ids] and len(b) == 4
            record.append((b.doc_ids.tolist(), b.domains.tolist(), mix.weights().tolist()))

    full, part = [], []
    run(mixture(tiny_ws, collate), range(8), full)
    first = mixture(tiny_ws, collate)
    run(first, range(5), part)
    buf = io.BytesIO()
    torch.save(first.state_dict(), buf)
    buf.seek(0)
    second = mixture(tiny_ws, collate)
    second.load_state_dict(torch.load(buf, weights_only=True))  # plain types only
    run(second, range(5, 8), part)
    assert part == full
    assert second.log[0]["step"] == 0 and [r["step"] for r in second.log[1:]] == [2, 4, 6]
    moved = np.abs(second.log[-1]["weights"] - second.log[0]["weights"]).sum()
    assert moved > 1e-3  # DGA's weights move on the user's model


def test_dgamix_train_and_the_public_object_give_identical_runs(tiny_ws, tmp_path):
    cfg = TrainConfig(steps=12, batch_size=4, warmup=3, align_batch_size=4, target_batch_size=4, eval_every=6,
                      eval_batches=1, eval_batch_size=8, general_holdout=0.05, checkpoint_every=0, context=32,
                      vocab_size=512, d_model=32, n_layer=1, n_head=4, seed=3, threads=1,
                      dga=DGAConfig(reweight_every=3, reweight_start=3))
    ref = train_run(tiny_ws, "c", 2, "t", "dga", "b", cfg, name="ref", overwrite=True, quiet=True)
    # the same run in a plain loop on OnlineMixture.from_workspace (packed batches, as dgamix train aligns on)
    inp = build_inputs(tiny_ws, "c", 2, "t", "dga", "b", cfg)
    mix = OnlineMixture.from_workspace(tiny_ws, "c", 2, "t", basis="b", config=cfg.dga, seed=cfg.seed,
                                       batches=inp["mix"].batches, align_batch_size=4, target_batch_size=4,
                                       general_holdout=cfg.general_holdout, eval_size=8, fixed_batch=False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = TinyGPT(ModelConfig(inp["vocab"].size, cfg.d_model, cfg.n_layer, cfg.n_head, cfg.context))
        torch.manual_seed(cfg.seed)
        opt = make_optimizer(model, cfg)
        packer = Packer(inp["data"].tokens, cfg.context, cfg.batch_size, inp["data"].mean_len)
        for step in range(cfg.steps):
            lr = cfg.lr_at(step)
            mix.maybe_reweight(step, model, lm_loss, lr=lr)
            for g in opt.param_groups:
                g["lr"] = lr
            w = mix.weights()
            loss = lm_loss(model, packer.next(lambda m: mix.next_ids(m, w)[0]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
    import polars as pl

    logged = pl.read_parquet(Path(ref["path"]) / "weights.parquet").filter(pl.col("step") < cfg.steps)
    ours = np.concatenate([r["weights"] for r in mix.log])
    assert logged["step"].unique().to_list() == [0, 3, 6, 9] == sorted({r["step"] for r in mix.log})
    np.testing.assert_array_equal(logged["weight"].to_numpy(), ours)
    np.testing.assert_array_equal(logged["alignment"].fill_null(np.nan).to_numpy()[3:],
                                  np.concatenate([r["alignment"] for r in mix.log[1:]]))
    reps = pl.read_parquet(Path(ref["path"]) / "repetitions.parquet")
    np.testing.assert_array_equal(reps["draws"].to_numpy(), mix.sampler.draws)


def test_loss_multipliers_give_the_mixtures_expected_gradient(tiny_ws, gpt2):
    _, _, collate, model = gpt2
    mix = mixture(tiny_ws, collate)
    for step in range(5):  # move the weights off uniform
        mix.maybe_reweight(step, model)
    index = mix.sampler.index
    alpha = mix.domain_weights()
    assert np.abs(alpha - index.sizes / index.sizes.sum()).max() > 0.01
    # every trainable document: its probability under the mixture and under natural sampling q
    dom = np.repeat(index.domains, index.sizes)
    p_mix = np.repeat(alpha / index.sizes, index.sizes)
    p_nat = np.full(index.docs.size, 1.0 / index.docs.size)
    m = mix.loss_weights(dom)
    np.testing.assert_allclose(p_nat * m, p_mix, rtol=1e-12)
    # exact expected gradients of a small model over all documents: E_q[m grad l] = E_mix[grad l]
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    feats = torch.randn(index.docs.size, 6, generator=g, dtype=torch.float64)
    y = torch.randn(index.docs.size, generator=g, dtype=torch.float64)
    per_doc = (feats @ theta - y) ** 2

    def grad(weights):
        (out,) = torch.autograd.grad((torch.from_numpy(weights) * per_doc).sum(), theta, retain_graph=True)
        return out.numpy()

    exact = grad(p_mix)
    np.testing.assert_allclose(grad(p_nat * m), exact, rtol=1e-10)
    # ... and on sampled data: 40,000 documents drawn uniformly (the data order we cannot change),
    # each loss times its multiplier, estimate the mixture's gradient (Monte Carlo error ~1%)
    draws = np.random.default_rng(1).integers(0, index.docs.size, 40_000)
    counts = np.bincount(draws, minlength=index.docs.size) / draws.size
    sampled = grad(counts * m)
    assert np.linalg.norm(sampled - exact) < 0.05 * np.linalg.norm(exact)
    unweighted = grad(counts)  # without the multipliers: the natural mixture's gradient, visibly off
    assert np.linalg.norm(unweighted - exact) > 2 * np.linalg.norm(sampled - exact)
    # and the mixture's sampler really draws alpha (empirical frequencies of 20,000 draws)
    _, d = mix.next_ids(20_000)
    freq = np.bincount(index.positions(d), minlength=len(index)) / 20_000
    np.testing.assert_allclose(freq, alpha, atol=0.015)
    assert loss_weights(np.array([0.5, 0.5]), np.array([0.25, 0.75]), np.array([0, 1, 1])).tolist() == [2, 2 / 3, 2 / 3]
    with pytest.raises(ValueError, match="q is 0"):
        loss_weights(np.array([0.5, 0.5]), np.array([1.0, 0.0]), np.array([0]))


@pytest.mark.slow
def test_a_user_run_shows_in_report_and_schedule_beside_reference_runs(tiny_ws, gpt2):
    _, _, collate, model = gpt2
    mix = mixture(tiny_ws, collate)
    for step in range(6):
        mix.maybe_reweight(step, model)
        mix.next_batch(4)
    mix.write_run("user", metrics=[{"step": 6, "split": "target", "loss": 9.5}, {"step": 6, "split": "train",
                                                                                  "loss": 9.7}], step=6)
    cfg = TrainConfig(steps=6, batch_size=4, align_batch_size=4, target_batch_size=4, eval_every=3, eval_batches=1,
                      eval_batch_size=8, general_holdout=0.05, checkpoint_every=0, context=32, vocab_size=512,
                      d_model=32, n_layer=1, n_head=4, threads=1, dga=DGAConfig(reweight_every=2, reweight_start=2))
    train_run(tiny_ws, "c", 2, "t", "dga", "b", cfg, name="reference", overwrite=True, quiet=True)
    with warnings.catch_warnings(record=True) as caught:  # the user run's empty general panel draws no legend
        warnings.simplefilter("always")
        r = run_cli("report", "--workspace", tiny_ws.root)
    assert r.exit_code == 0, r.output
    assert not [w for w in caught if "legend" in str(w.message)], [str(w.message) for w in caught]
    report = (tiny_ws.root / "report" / "report.md").read_text().splitlines()
    assert "| user | user loop | dga | 6 | 9.5000 | - | 9.5000 |" in report
    assert any(line.startswith("| reference | dgamix train | dga | 6 | ") for line in report)
    assert "![weights of user](weights-user.png)" in report and (tiny_ws.root / "report" / "weights-user.png").exists()
    meta = manifest.read_meta(tiny_ws.run_dir("user") / "weights.parquet")
    assert meta["params"]["run_by"] == "user loop" and meta["params"]["eta"] == DGA.eta
    r = run_cli("schedule", "--workspace", tiny_ws.root, "--clusters", "c", "--level", 2, "--run", "user",
                "--steps", 6, "--batch-size", 4, "--name", "from-user", "--overwrite")
    assert r.exit_code == 0, r.output
