"""DGA in a real transformers.Trainer (MixtureDataset + MixtureCallback): resume from a checkpoint
with the Trainer's default options equals the uninterrupted run (losses, doc ids, weights), the
prefetch lag of an update is what the docs say, and examples/hf_trainer.py runs."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate: pip install -e '.[hf]'")

from transformers import DataCollatorForLanguageModeling, Trainer, TrainingArguments  # noqa: E402

from dgamix.mixing import DGAConfig, MixtureCallback, MixtureDataset, OnlineMixture  # noqa: E402
from dgamix.mixing.hf import STATE_FILE  # noqa: E402
from tests.helpers import ROOT, tiny_gpt2  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def run(ws, out, steps=8, ga=1, resume=None, ignore_data_skip=False, user_run=None, dropout=0.0, seed=0,
        resume_from=None):
    tok, encode, collate, model = tiny_gpt2(dropout=dropout, seed=seed)
    mix = OnlineMixture.from_workspace(ws, "c", 2, "t", basis="b", config=DGAConfig(reweight_every=2, reweight_start=2),
                                       collate=collate, align_batch_size=4, target_batch_size=4)
    data = MixtureDataset(mix, encode, batch_size=4)
    cb = MixtureCallback(mix, data, run=user_run, resume_from=resume_from)
    args = TrainingArguments(str(out), max_steps=steps, per_device_train_batch_size=4, gradient_accumulation_steps=ga,
                             save_steps=4, logging_steps=1, learning_rate=1e-3, report_to=[], use_cpu=True, seed=seed,
                             disable_tqdm=True, ignore_data_skip=ignore_data_skip)
    trainer = Trainer(model=model, args=args, train_dataset=data,
                      data_collator=DataCollatorForLanguageModeling(tok, mlm=False), callbacks=[cb])
    trainer.train(resume_from_checkpoint=resume)
    losses = {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}
    return losses, data, mix, cb


@pytest.mark.parametrize("ga,ignore_data_skip,dropout", [(1, False, 0.0), (1, True, 0.0), (2, False, 0.0),
                                                         (1, False, 0.1)])
def test_trainer_resume_equals_the_uninterrupted_run(tiny_ws, tmp_path, ga, ignore_data_skip, dropout):
    full_losses, full_data, full_mix, full_cb = run(tiny_ws, tmp_path, ga=ga, dropout=dropout)
    assert (tmp_path / "checkpoint-4" / STATE_FILE).exists()
    losses, data, mix, cb = run(tiny_ws, tmp_path, ga=ga, resume=str(tmp_path / "checkpoint-4"),
                                ignore_data_skip=ignore_data_skip, dropout=dropout)
    assert [losses[s] for s in range(5, 9)] == [full_losses[s] for s in range(5, 9)]
    trained = 8 * ga  # draws the 8 steps trained on
    assert sorted(d for d in data.doc_ids if d < trained) == list(range(4 * ga, trained))
    for b in range(4 * ga, trained):
        np.testing.assert_array_equal(data.doc_ids[b], full_data.doc_ids[b])
    assert data.produced == full_data.produced  # no document drawn and lost by the Trainer's fast-forward
    assert [r["step"] for r in mix.log] == [r["step"] for r in full_mix.log] == [0, 2, 4, 6]
    for a, b in zip(mix.log, full_mix.log):
        np.testing.assert_array_equal(a["weights"], b["weights"])
    assert not np.allclose(full_mix.log[-1]["weights"], full_mix.log[0]["weights"])
    # the prefetch lag: when the update of step s is made, the Trainer has already drawn the batches
    # of step s and accelerate one more, so the first draw with the new weights is s * ga + ga + 1
    assert full_cb.lag == [(s, ga + 1) for s in (2, 4, 6)]
    assert cb.lag == [(s, ga + 1) for s in (4, 6)]  # the same after a resume


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
            "--save-every", "3", "--out", str(tmp_path / "out"), "--run", "hf-example"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", OMP_NUM_THREADS="1")
    r = subprocess.run([*args, "--steps", "6"], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    assert b"trained 6 steps" in r.stdout
    r = subprocess.run([*args, "--steps", "8", "--resume"], env=env, capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr.decode()[-800:]
    assert b"trained 8 steps" in r.stdout
