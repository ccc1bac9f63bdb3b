"""DGA in a real transformers.Trainer (MixtureTrainer): resume from a checkpoint equals the
uninterrupted run (losses, doc ids, weights), the weights reach training ``delay`` steps after a
reweighting and appear in the Trainer's log history, another run's checkpoint is refused, and
examples/hf_trainer.py runs and resumes (its 2-process torchrun run: tests/test_loader.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate: pip install -e '.[hf]'")

from transformers import DataCollatorForLanguageModeling, TrainerCallback, TrainingArguments  # noqa: E402

from dgamix.mixing import DGAConfig, OnlineMixture  # noqa: E402
from dgamix.mixing.hf import STATE_FILE, MixtureTrainer, weight_keys  # noqa: E402
from tests.helpers import ROOT, tiny_gpt2  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


class Ids(TrainerCallback):
    """The doc ids of every trained batch (draw index -> ids), read from the trainer's sampler."""

    def __init__(self, trainer):
        self.trainer, self.ids = trainer, {}

    def on_step_end(self, args, state, control, **kw):
        sampler, ga = self.trainer.mixture_callback.sampler, args.gradient_accumulation_steps
        for b in range((state.global_step - 1) * ga, state.global_step * ga):
            self.ids[b] = sampler.doc_ids(b)


def run(ws, out, steps=8, ga=1, resume=None, ignore_data_skip=False, user_run=None, dropout=0.0, seed=0,
        resume_from=None):
    tok, encode, collate, model = tiny_gpt2(dropout=dropout, seed=seed)
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=ga,
                             save_steps=4, logging_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True, seed=seed,
                             disable_tqdm=True, ignore_data_skip=ignore_data_skip)
    mix = OnlineMixture.from_workspace(ws, "c", 2, "t", basis="b", config=DGAConfig(reweight_every=2, reweight_start=2),
                                       collate=collate, align_batch_size=4, target_batch_size=4)
    trainer = MixtureTrainer(model=model, args=args, mixture=mix, encode=encode, run=user_run, resume_from=resume_from,
                             data_collator=DataCollatorForLanguageModeling(tok, mlm=False))
    ids = Ids(trainer)
    trainer.add_callback(ids)
    trainer.train(resume_from_checkpoint=resume)
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return losses, ids.ids, mix, trainer


@pytest.mark.parametrize("ga,ignore_data_skip,dropout", [(1, False, 0.0), (2, True, 0.1)])
def test_trainer_resume_equals_the_uninterrupted_run(tiny_ws, tmp_path, ga, ignore_data_skip, dropout):
    full_losses, full_ids, full_mix, full = run(tiny_ws, tmp_path, ga=ga, dropout=dropout)
    assert (tmp_path / "checkpoint-4" / STATE_FILE).exists()
    losses, ids, mix, trainer = run(tiny_ws, tmp_path, ga=ga, resume=str(tmp_path / "checkpoint-4"),
                                    ignore_data_skip=ignore_data_skip, dropout=dropout)
    assert [losses[s] for s in range(5, 9)] == [full_losses[s] for s in range(5, 9)]
    assert sorted(ids) == list(range(4 * ga, 8 * ga)) and all(ids[b] == full_ids[b] for b in ids)
    assert [r["step"] for r in mix.log] == [r["step"] for r in full_mix.log] == [0, 2, 4, 6]
    for a, b in zip(mix.log, full_mix.log):
        assert a["weights"].tolist() == b["weights"].tolist()
    assert full_mix.log[-1]["weights"].tolist() != full_mix.log[0]["weights"].tolist()
    # the delay: with no workers a batch uses the weights of two steps before its own
    sampler = full.mixture_callback.sampler
    assert sampler.delay == 2
    assert sampler.weights_of(5 * ga).tolist() == full_mix.log[1]["weights"].tolist()  # step 5: step 3 -> step 2's


def test_the_weights_are_in_the_trainers_log_history(tiny_ws, tmp_path):
    _, _, mix, trainer = run(tiny_ws, tmp_path, steps=4)
    keys = weight_keys(mix)
    assert keys == ["dgamix/w_target", "dgamix/w_generic", "dgamix/w_pocket"]
    logged = [h for h in trainer.state.log_history if "loss" in h]
    assert [h["step"] for h in logged] == [1, 2, 3, 4]
    for h in logged:
        assert sum(h[k] for k in keys) == pytest.approx(1.0)
    assert [logged[-1][k] for k in keys] == mix.weights().tolist()
    assert [logged[0][k] for k in keys] != [logged[-1][k] for k in keys]  # step 2's reweighting shows


def test_a_checkpoint_of_another_run_is_refused(tiny_ws, tmp_path):
    run(tiny_ws, tmp_path / "a", steps=4)
    run(tiny_ws, tmp_path / "b", steps=4, seed=1)  # other initial weights: other logged losses
    with pytest.raises(Exception, match="belongs to another run"):
        run(tiny_ws, tmp_path / "b", steps=6, resume=str(tmp_path / "b" / "checkpoint-4"),
            resume_from=tmp_path / "a" / "checkpoint-4")
    with pytest.raises(Exception, match=r"dgamix_mixture\.pt is missing"):
        run(tiny_ws, tmp_path / "c", steps=6, resume=str(tmp_path / "b" / "checkpoint-4"))


def test_user_run_from_the_trainer_is_written(tiny_ws, tmp_path):
    run(tiny_ws, tmp_path, steps=4, user_run="hf")
    import polars as pl

    m = pl.read_parquet(tiny_ws.run_dir("hf") / "metrics.parquet")
    assert m["split"].unique().to_list() == ["train"] and m["step"].to_list() == [1, 2, 3, 4]
    w = pl.read_parquet(tiny_ws.run_dir("hf") / "weights.parquet")
    assert sorted(w["step"].unique().to_list()) == [0, 2, 4]


def test_hf_trainer_example_runs_and_resumes(tiny_ws, tmp_path):
    args = [sys.executable, str(ROOT / "examples" / "hf_trainer.py"), "--workspace", str(tiny_ws.root),
            "--clusters", "c", "--level", "2", "--target", "t", "--basis", "b", "--batch-size", "4",
            "--save-every", "3", "--out", str(tmp_path / "out"), "--run-name", "hf-example"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([*args, "--steps", "6"], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    assert b"trained 6 steps" in r.stdout
    r = subprocess.run([*args, "--steps", "8", "--resume"], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    assert b"trained 8 steps" in r.stdout
