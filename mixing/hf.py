"""DGA inside a Hugging Face ``transformers.Trainer``: a dataset of examples and a callback.

    mix = OnlineMixture.from_workspace(ws, clusters, level, target, basis=B, collate=collate)
    data = MixtureDataset(mix, encode, batch_size=args.per_device_train_batch_size)
    trainer = Trainer(model, args, train_dataset=data, data_collator=collator,
                      callbacks=[MixtureCallback(mix, data)])
    trainer.train()                      # or trainer.train(resume_from_checkpoint=True)

The callback reweights at the start of every step that ``DGAConfig.due`` names, with the
Trainer's model as it is then, and saves the mixture's state into every checkpoint folder
(``dgamix_mixture.pt``).

Prefetch. The Trainer fetches the batches of a step before ``on_step_begin`` and accelerate's
data loader fetches one more ahead, so batches already drawn when an update happens still
carry the old weights: with gradient accumulation 1, an update at step s first reaches training
at step s + 2 (``MixtureCallback.lag`` records the lag of every update, in batches). The state a
checkpoint saves is the one after the *last trained* batch, with the weights of the batches drawn
ahead, so a resume draws exactly what the uninterrupted run trained on.

Resume with default options (``ignore_data_skip=False``): the Trainer fast-forwards its data
loader by the batches already trained; the dataset answers those with placeholder examples
(``encode("")``) that are discarded unseen, instead of drawing (and losing) real documents.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from dgamix.mixing.online import OnlineMixture
from dgamix.mixing.state import from_plain, load_state, save_state, to_plain
from dgamix.pipeline.core.errors import DgamixError

try:
    from transformers import TrainerCallback
except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
    TrainerCallback = object

STATE_FILE = "dgamix_mixture.pt"


class MixtureDataset(torch.utils.data.IterableDataset):
    """Endless training examples drawn by ``mix``: ``encode(text)`` -> one example (a dict such as
    a tokenizer's output), ``batch_size`` documents per draw (= the Trainer's per-device batch).

    Draw b (0-based) is made when the data loader asks for its first example, with the weights in
    force then; ``doc_ids`` keeps the doc ids of every draw (b -> (batch_size,) int64).
    """

    def __init__(self, mix: OnlineMixture, encode: Callable[[str], Any], batch_size: int) -> None:
        super().__init__()
        if mix.texts is None:
            raise ValueError("MixtureDataset needs a mixture that reads texts (OnlineMixture.from_workspace)")
        self.mix, self.encode, self.batch_size = mix, encode, int(batch_size)
        self.produced = 0                 # draws made so far
        self.skip = 0                     # draws the Trainer will discard: answered with placeholders
        self.doc_ids: dict[int, np.ndarray] = {}
        self._before: dict[int, tuple[dict, np.ndarray]] = {}  # draw -> (sampler state before it, weights)
        self._replay: list[np.ndarray] = []  # weights of draws made ahead of a checkpoint, to redo

    def __iter__(self):
        if torch.utils.data.get_worker_info() is not None:
            raise RuntimeError("MixtureDataset must run with dataloader_num_workers=0 (its state and the "
                               "mixture's weights live in the training process)")
        while True:
            if self.skip:
                self.skip -= 1
                placeholder = self.encode("")
                for _ in range(self.batch_size):
                    yield placeholder
                continue
            b = self.produced
            w = self._replay.pop(0) if self._replay else self.mix.weights()
            self._before[b] = (self.mix.sampler.state_dict(), w)
            batch = self.mix.next_batch(self.batch_size, weights=w)
            self.doc_ids[b] = batch.doc_ids
            self.produced += 1
            for text in batch.texts:
                yield self.encode(text)

    def forget(self, trained: int) -> None:
        """Drop what draws before ``trained`` needed for a checkpoint."""
        for b in [b for b in self._before if b < trained]:
            del self._before[b]

    def state_at(self, trained: int) -> dict:
        """The mixture's state after ``trained`` draws were trained on (plain types), with the weights
        of the draws made ahead of it."""
        state = self.mix.state_dict()
        if trained < self.produced:
            if trained not in self._before:
                raise RuntimeError(f"draw {trained} is no longer known; call state_at before forget")
            state["sampler"] = to_plain(self._before[trained][0])
        ahead = [self._before[b][1] for b in range(trained, self.produced)]
        state["draws"] = trained
        state["replay"] = to_plain(np.stack(ahead)) if ahead else torch.zeros(0, self.mix.mixer.n, dtype=torch.float64)
        return state

    def load_state(self, state: dict) -> None:
        """Continue from ``state_at``: the next draws equal the uninterrupted run's."""
        self.mix.load_state_dict(state)
        self.produced = int(state["draws"])
        self._replay = list(from_plain(state["replay"]))
        self._before.clear()


class MixtureCallback(TrainerCallback):
    """Reweights ``mix`` with the Trainer's model and saves / restores its state with checkpoints.

    loss_fn(model, batch) -> scalar (default ``model(**batch).loss``); run: when set, the run is
    written to WS/runs/RUN/ at the end of training (``OnlineMixture.write_run``, the Trainer's logged
    losses as metrics), for `dgamix report`; resume_from: the checkpoint folder the Trainer resumes
    from when it is not args.output_dir/checkpoint-<step> (the Trainer does not tell callbacks).
    A saved state records the Trainer's log history, and a resume whose log history differs (another
    run's checkpoint) is refused. One process only: a multi-process Trainer is refused.
    """

    def __init__(self, mix: OnlineMixture, dataset: MixtureDataset, loss_fn: Callable | None = None,
                 run: str | None = None, resume_from: str | os.PathLike | None = None) -> None:
        self.mix, self.dataset, self.loss_fn, self.run = mix, dataset, loss_fn, run
        self.resume_from = resume_from
        self.ga = 1
        self.lag: list[tuple[int, int]] = []   # (step, draws made before the update reaches a draw - step * ga)

    def on_train_begin(self, args, state, control, **kw):
        if args.per_device_train_batch_size != self.dataset.batch_size:
            raise DgamixError(f"MixtureDataset draws {self.dataset.batch_size} documents at a time but the Trainer's "
                              f"per_device_train_batch_size is {args.per_device_train_batch_size}; make them equal.")
        if args.dataloader_num_workers:
            raise DgamixError("MixtureDataset needs dataloader_num_workers=0: its state lives in the training process.")
        if args.world_size > 1:
            raise DgamixError(f"MixtureCallback runs in one process; this Trainer has {args.world_size} (accelerate "
                              f"dispatches an iterable dataset from rank 0): use OnlineMixture in your own DDP loop.")
        self.ga = args.gradient_accumulation_steps
        if state.global_step > 0:  # resumed: the Trainer restored its own state from a checkpoint
            folder = Path(self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}")
            path = folder / STATE_FILE
            if not path.exists():
                raise DgamixError(f"resuming at step {state.global_step} but {path} is missing: resume from a "
                                  f"checkpoint that MixtureCallback saved (pass MixtureCallback(resume_from=FOLDER) "
                                  f"when it is not in args.output_dir).")
            saved = load_state(path)
            if saved.get("log_history") != _history(state):
                raise DgamixError(f"{path} belongs to another run than the checkpoint the Trainer resumed (their "
                                  f"logged losses differ); pass MixtureCallback(resume_from=THE_CHECKPOINT_FOLDER).")
            self.dataset.load_state(saved)
            if not args.ignore_data_skip:  # the Trainer will discard this many batches: placeholders
                self.dataset.skip = state.global_step * self.ga

    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kw):
        lr = lr_scheduler.get_last_lr()[0] if lr_scheduler is not None else None
        if self.mix.maybe_reweight(state.global_step, model, self.loss_fn, lr=lr) is not None:
            self.lag.append((state.global_step, self.dataset.produced - state.global_step * self.ga))

    def on_step_end(self, args, state, control, **kw):
        self.dataset.forget(state.global_step * self.ga)  # a save needs draw global_step * ga on, not before

    def on_save(self, args, state, control, **kw):
        trained = state.global_step * self.ga
        if args.should_save:
            save_state({**self.dataset.state_at(trained), "log_history": _history(state)},
                       Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE)
        self.dataset.forget(trained)

    def on_train_end(self, args, state, control, **kw):
        if self.run is None or not args.should_save:
            return
        rows = [{"step": h["step"], "split": "train", "loss": h["loss"]} for h in state.log_history if "loss" in h]
        rows += [{"step": h["step"], "split": "eval", "loss": h["eval_loss"]}
                 for h in state.log_history if "eval_loss" in h]
        self.mix.write_run(self.run, metrics=rows, step=state.global_step)


def _history(state) -> str:
    """The Trainer's log history as text: what identifies a run's checkpoint at a step."""
    return json.dumps(state.log_history, sort_keys=True)
