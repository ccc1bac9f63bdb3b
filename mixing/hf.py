"""DGA inside a Hugging Face ``transformers.Trainer``: ``MixtureTrainer``, one process or many.

    mix = OnlineMixture.from_workspace(ws, clusters, level, target, basis=B, collate=collate)  # after TrainingArguments
    trainer = MixtureTrainer(model=model, args=args, mixture=mix, encode=encode, data_collator=collator)
    trainer.train()                      # or trainer.train(resume_from_checkpoint=True)

The Trainer's training data are the mixture's: a ``MixtureBatchSampler`` in each process draws the
doc ids of that process's per-device batches, and a ``DocDataset`` reads and tokenises them in
``dataloader_num_workers`` workers (mixing/loader.py). Its callback (``MixtureCallback``) reweights
at the start of every step that ``DGAConfig.due`` names, with the Trainer's model, and saves the
mixture and the sampler's position into every checkpoint folder (``dgamix_mixture.pt``); its
``log`` adds the weights to every training log (``dgamix/w_<name>``: TensorBoard, W&B and
``trainer.state.log_history`` get them).

Several processes (torchrun, accelerate launch; DDP): build the mixture after ``TrainingArguments``
(which starts torch.distributed). Each rank draws the same global batch of world_size x n doc ids
and keeps its slice (accelerate's batch sharding is turned off for this loader: the sampler is
rank-aware already), the alignments are summed across ranks (``OnlineMixture``), so weights are
identical on every rank and documents disjoint. Rank 0 writes the checkpoint's mixture state,
which is the same on every rank.

Delay. The Trainer takes a step's batches before ``on_step_begin`` and accelerate's loader fetches
one batch ahead (plus num_workers x prefetch_factor with workers), so a weight update reaches
training ``delay`` steps after it is made, default ``min_delay(1 + N * P, g, fetch_first=True)``
(2 steps with no workers and g = 1 gradient accumulation step); batch k of a process uses the
weights of step k // g - delay whatever the prefetch, and ``delay`` can be set larger.

Resume: the sampler's state at the last trained batch is restored, so the Trainer's loader is not
fast-forwarded (no document is drawn and dropped); both ``ignore_data_skip`` settings are exact.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

import numpy as np

from dgamix.mixing.loader import DocDataset, MixtureBatchSampler, min_delay
from dgamix.mixing.online import OnlineMixture
from dgamix.mixing.state import load_state, save_state
from dgamix.pipeline.core.errors import DgamixError

try:
    from transformers import Trainer, TrainerCallback
except ImportError:  # pragma: no cover - transformers comes with sentence-transformers
    Trainer = TrainerCallback = object

__all__ = ["MixtureTrainer", "MixtureCallback", "STATE_FILE", "weight_keys"]

STATE_FILE = "dgamix_mixture.pt"  # in each checkpoint folder: the mixture and the sampler's position


def weight_keys(mix: OnlineMixture) -> list[str]:
    """The log keys of the mixture's weights: ``dgamix/w_<name>`` (``dgamix/w_<i>`` when names repeat)."""
    names = [str(n) for n in mix.names]
    return [f"dgamix/w_{n}" for n in names] if len(set(names)) == len(names) else \
        [f"dgamix/w_{i}" for i in range(len(names))]


class MixtureCallback(TrainerCallback):
    """Reweights ``mix`` with the Trainer's model and saves / restores its state with checkpoints.

    ``MixtureTrainer`` adds it and hands it the sampler of its data loader (``sampler``).
    loss_fn(model, batch) -> scalar (default ``model(**batch).loss``); run: when set, the run is
    written to WS/runs/RUN/ at the end of training (``OnlineMixture.write_run``, the Trainer's logged
    losses as metrics), for `dgamix report`; resume_from: the checkpoint folder the Trainer resumes
    from when it is not args.output_dir/checkpoint-<step> (the Trainer does not tell callbacks).
    A saved state records the Trainer's log history, and a resume whose log history differs (another
    run's checkpoint) is refused.
    """

    def __init__(self, mix: OnlineMixture, loss_fn: Callable | None = None, run: str | None = None,
                 resume_from: str | os.PathLike | None = None) -> None:
        self.mix, self.loss_fn, self.run, self.resume_from = mix, loss_fn, run, resume_from
        self.sampler: MixtureBatchSampler | None = None
        self.ga = 1

    def on_train_begin(self, args, state, control, **kw):
        if self.sampler is None:
            raise DgamixError("MixtureCallback draws through MixtureTrainer's data loader: use MixtureTrainer.")
        self.ga = args.gradient_accumulation_steps
        if state.global_step > 0:  # resumed: the Trainer restored its own state from a checkpoint
            folder = Path(self.resume_from or Path(args.output_dir) / f"checkpoint-{state.global_step}")
            path = folder / STATE_FILE
            if not path.exists():
                raise DgamixError(f"resuming at step {state.global_step} but {path} is missing: resume from a "
                                  f"checkpoint that MixtureTrainer saved (pass resume_from=FOLDER when it is not "
                                  f"in args.output_dir).")
            saved = load_state(path)
            if saved.get("log_history") != _history(state):
                raise DgamixError(f"{path} belongs to another run than the checkpoint the Trainer resumed (their "
                                  f"logged losses differ); pass resume_from=THE_CHECKPOINT_FOLDER.")
            self.mix.load_state_dict(saved["mix"])
            self.sampler.load_state_dict(saved["loader"])

    def on_step_begin(self, args, state, control, model=None, lr_scheduler=None, **kw):
        lr = lr_scheduler.get_last_lr()[0] if lr_scheduler is not None else None
        self.mix.maybe_reweight(state.global_step, model, self.loss_fn, lr=lr)

    def on_save(self, args, state, control, **kw):
        if args.should_save:
            save_state({"mix": self.mix.state_dict(), "loader": self.sampler.state_dict(consumed=state.global_step * self.ga),
                        "log_history": _history(state)},
                       Path(args.output_dir) / f"checkpoint-{state.global_step}" / STATE_FILE)

    def on_train_end(self, args, state, control, **kw):
        if self.run is None or not args.should_save:
            return
        rows = [{"step": h["step"], "split": "train", "loss": h["loss"]} for h in state.log_history if "loss" in h]
        rows += [{"step": h["step"], "split": "eval", "loss": h["eval_loss"]}
                 for h in state.log_history if "eval_loss" in h]
        self.mix.write_run(self.run, metrics=rows, step=state.global_step)


class MixtureTrainer(Trainer):
    """A ``transformers.Trainer`` whose training data are drawn by ``mixture`` (see the module doc).

    mixture: an OnlineMixture that reads texts; encode(text) -> one example for ``data_collator``;
    loss_fn / run / resume_from: as ``MixtureCallback``; delay: steps between a reweighting and
    the first batch drawn with its weights (default: the least this loader allows). Every other
    argument is the Trainer's (``train_dataset`` excepted: the mixture is the training data), and
    ``args.max_steps`` must be set (the mixture is endless). Mixes into another Trainer subclass:
    ``class Mine(MixtureTrainer, SFTTrainer)``.
    """

    def __init__(self, *args, mixture: OnlineMixture, encode: Callable[[str], Any], loss_fn: Callable | None = None,
                 run: str | None = None, resume_from: str | os.PathLike | None = None, delay: int | None = None,
                 **kwargs) -> None:
        if kwargs.get("train_dataset") is not None:
            raise DgamixError("MixtureTrainer draws its training data from mixture=: do not pass train_dataset.")
        if mixture.texts is None:
            raise DgamixError("MixtureTrainer needs a mixture that reads texts (OnlineMixture.from_workspace, or from_arrays with texts=).")
        self.mixture, self.delay = mixture, delay
        self.mixture_callback = MixtureCallback(mixture, loss_fn, run, resume_from)
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), self.mixture_callback]
        super().__init__(*args, train_dataset=DocDataset(mixture.texts, encode), **kwargs)
        if self.args.max_steps <= 0:
            raise DgamixError("MixtureTrainer draws without end: set TrainingArguments(max_steps=...).")

    def get_train_dataloader(self):
        """The mixture's loader: batch sampler of doc ids in this process, texts read in the workers."""
        import torch
        from accelerate.data_loader import DataLoaderDispatcher

        args = self.args
        workers = args.dataloader_num_workers
        prefetch = (args.dataloader_prefetch_factor or 2) if workers else 0
        ga = args.gradient_accumulation_steps
        least = min_delay(1 + workers * prefetch, ga, fetch_first=True)
        delay = least if self.delay is None else int(self.delay)
        if delay < least:
            raise DgamixError(f"delay={delay} but this Trainer's loader draws {1 + workers * prefetch} batches ahead "
                              f"of training: delay must be >= {least}.")
        sampler = MixtureBatchSampler(self.mixture, self._train_batch_size, delay=delay, accumulation=ga)
        collator = self._get_collator_with_removed_columns(self.data_collator, description="training")
        loader = torch.utils.data.DataLoader(
            self.train_dataset, batch_sampler=sampler, collate_fn=collator, num_workers=workers,
            pin_memory=args.dataloader_pin_memory, persistent_workers=args.dataloader_persistent_workers and workers > 0,
            multiprocessing_context=args.dataloader_multiprocessing_context if workers else None,
            prefetch_factor=args.dataloader_prefetch_factor if workers else None,
            generator=torch.Generator().manual_seed(args.seed))  # its seed draw leaves torch's RNG (dropout) alone
        loader = self.accelerator.prepare(loader)
        if isinstance(loader, DataLoaderDispatcher):
            raise DgamixError("MixtureTrainer needs dispatch_batches=False (every rank draws its own slice).")
        shard = getattr(loader, "batch_sampler", None)  # accelerate's BatchSamplerShard: a passthrough here
        if shard is not None and getattr(shard, "batch_sampler", None) is sampler:
            shard.num_processes, shard.process_index = 1, 0
        self.mixture_callback.sampler = sampler
        return loader

    def get_resumed_dataloader(self, dataloader, num_batches: int):
        """Unchanged: the callback restores the sampler at the last trained batch (nothing to skip)."""
        return dataloader

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        """The Trainer's log, plus the mixture's current weights on training logs (``weight_keys``)."""
        if "loss" in logs:
            logs = {**logs, **dict(zip(weight_keys(self.mixture), np.asarray(self.mixture.weights()).tolist()))}
        super().log(logs, *args, **kwargs)


def _history(state) -> str:
    """The Trainer's log history as text: what identifies a run's checkpoint at a step."""
    return json.dumps(state.log_history, sort_keys=True)
