"""The reference trainer: a small LM trained on the mixture a Mixer chooses, step by step.

One step s (0-based; "after s steps" = s optimiser updates done):

1. every ``eval_every`` steps: losses of the fixed evaluation sets (split "target": the target's
   holdout examples; "general": held-out generic documents never sampled for training) and the
   mean training loss since the last evaluation (split "train");
2. every ``checkpoint_every`` steps: an atomic checkpoint (everything needed to continue
   exactly, see ``Trainer.state``);
3. if ``mixer.needs_alignment(s)`` (for DGA: from reweight_start on, every reweight_every steps):
   one target batch (packed windows of the target's "reweight" examples) and, for each entry j of
   the mixer (basis j, or domain j: domain reweighting = identity basis), one batch of documents
   drawn from P_j by a separate probe sampler (its own seed and stream, so probes never consume
   the training stream), packed into windows; a_j = <grad l(x_j), grad l(y)> streamed by
   ``gradient_alignments`` (each gradient clipped to ``dga.clip`` if set);
   ``mixer.update(s, a, grad_norms, target_norm, lr)``;
4. a training batch: documents drawn by ``sampler.sample(m, mixer.weights())`` packed into
   batch_size windows of context + 1 pieces (``packing.Packer``: every drawn piece is trained on
   once, in draw order; the carry is at most one document's tail) -> AdamW step (gradient clipping at ``grad_clip``), learning rate ``lr_at(s)``.

After the last step: a final evaluation at step = steps and a final checkpoint.

Learning rate: linear warmup over ``warmup`` steps to ``lr``, then cosine decay to
``min_lr_ratio * lr`` at the last step; a pure function of the step, so it needs no state.

Logs. ``metrics`` rows: step, split, loss (mean next-token cross-entropy in nats per token),
tokens (training target tokens, i.e. predicted positions, seen before this step),
seconds (wall clock of training so far, summed over resumes). ``weights`` records: at step 0,
at every reweighting and at the end, the weights in force from that step on, with the raw
alignments (and gradient norms, target norm, lr) the update used (None between updates).

Failure. A NaN/inf loss or gradient norm raises ``DgamixError`` naming the step; nothing is
written after the last good checkpoint, which stays on disk.
"""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from dgamix.mixing.alignment import select_params
from dgamix.mixing.mixers import ADAPTIVE
from dgamix.mixing.online import AlignmentError, OnlineMixture
from dgamix.mixing.state import load_state, save_state

# the run's settings live in their own torch-free module (the CLI reads their defaults); re-exported here
from dgamix.mixing.testbed.config import (  # noqa: F401
    ACTIVATION_FLOATS,
    MAX_VOCAB,
    TrainConfig,
    available_memory,
    check_memory,
    memory_estimate,
)
from dgamix.mixing.testbed.model import lm_loss, lm_loss_sum
from dgamix.mixing.testbed.packing import DocTokens, Packer, Windows
from dgamix.pipeline.core.errors import DgamixError, first_line
from dgamix.pipeline.core.progress import rich_progress
from dgamix.pipeline.core.runtime import torch_threads

CHECKPOINT = "state.pt"


@dataclass
class TrainData:
    """What the trainer trains on besides the mixture (which owns samplers, target batches, weights).

    tokens: every document's pieces (doc_id i = document i); eval_sets: split -> fixed windows
    (evaluated in order); mean_len: mean pieces per training document (sizes the packer's draws).
    """

    tokens: DocTokens
    eval_sets: dict[str, Windows]
    mean_len: float = 100.0


@dataclass
class TrainResult:
    metrics: list[dict]
    weights: list[dict]               # records: step, weights (n,), alignment (n,) | None, ...
    repetitions: dict[str, np.ndarray]  # domain, n_docs, draws, epochs
    timings: dict[str, float]
    steps: int
    resumed_from: int | None = None
    n_params: int = 0


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay on matrices (embeddings included), none on biases / norms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=config.lr, betas=(0.9, 0.95))


def evaluate(model: torch.nn.Module, windows: Windows, batch_size: int, device: str = "cpu") -> float:
    """Token-weighted mean next-token loss of every window of ``windows`` (NaN if none)."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, len(windows), batch_size):
            s, c = lm_loss_sum(model, windows.batch(np.arange(i, min(len(windows), i + batch_size))).to(device))
            total, count = total + s, count + c
    finally:
        model.train(was)
    return total / count if count else float("nan")


# 2: TrainConfig holds DGAConfig (dga), probes have a pool_seed, runs record their resolved EMA weight.
# 3: documents are packed into windows; the packer's carried pieces are part of the state.
# 4: the samplers, target cycle, mixer and weight log are one OnlineMixture state; plain types only.
# A checkpoint of another format is refused on resume (run.py) rather than misread.
CHECKPOINT_FORMAT = 4


def load_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict (plain Python / torch values: read with weights_only=True)."""
    path = Path(path)
    fix = "rerun with --overwrite to start the run again (or delete it)"
    try:
        return load_state(path, fix=fix)
    except DgamixError:
        raise
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a corrupt file
        why = "empty (0 bytes)" if path.is_file() and path.stat().st_size == 0 else first_line(e, 120)
        raise DgamixError(f"checkpoint {path} is unreadable ({why}); {fix}.") from None


class _Bar:
    """rich progress bar: step, losses and the current top weights (silent when quiet)."""

    def __init__(self, total: int, done: int, quiet: bool, names: list[str]) -> None:
        self.names, self.bar = names, None
        if quiet:
            return
        self.bar = rich_progress("train", "info")
        self.bar.start()
        self.task = self.bar.add_task("train", total=total, completed=done, info="")
        self.info = {"loss": "", "eval": "", "top": ""}

    def update(self, advance: int = 0, **info: str) -> None:
        if self.bar is None:
            return
        self.info.update(info)
        self.bar.update(self.task, advance=advance, info="  ".join(v for v in self.info.values() if v))

    def top(self, w: np.ndarray, k: int = 3) -> str:
        o = np.argsort(-w, kind="stable")[:k]
        return "w: " + " ".join(f"{str(self.names[i])[:14]}={w[i]:.2f}" for i in o)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class Trainer:
    """Runs ``config.steps`` steps of ``model`` on ``data`` with the mixture ``mix``; see the module doc."""

    def __init__(self, model: torch.nn.Module, data: TrainData, mix: OnlineMixture, config: TrainConfig, *,
                 checkpoint_dir: str | Path | None = None, params: dict | None = None,
                 loss_fn: Callable = lm_loss, quiet: bool = True,
                 on_checkpoint: Callable[["Trainer"], None] | None = None) -> None:
        self.model, self.data, self.mix, self.config = model.to(config.device), data, mix, config
        self.mixer = mix.mixer
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.params = params or {}
        self.loss_fn, self.quiet, self.on_checkpoint = loss_fn, quiet, on_checkpoint
        if self.mixer.name in ADAPTIVE:
            try:  # a --align-params that matches no parameter: now, not at the first reweighting
                select_params(self.model, self.mixer.config.align_params)
            except ValueError as e:
                raise DgamixError(f"--align-params: {e}.") from None
        self.opt = make_optimizer(self.model, config)
        self.packer = Packer(data.tokens, config.context, config.batch_size, data.mean_len)
        self.step = 0
        self.metrics: list[dict] = []
        self.tokens = 0
        self.elapsed = 0.0
        self.train_sum, self.train_n = 0.0, 0
        self.step_seconds, self.n_steps_timed = 0.0, 0
        self.eval_seconds = 0.0
        self.last_checkpoint: int | None = None
        self.resumed_from: int | None = None

    @property
    def weights(self) -> list[dict]:
        """The weight log (the mixture's): step, weights, alignment, grad_norm, target_norm, lr."""
        return self.mix.log

    # ----- state
    def state(self) -> dict:
        """Everything needed to continue exactly from ``self.step`` (plain Python / torch values)."""
        return {"format": CHECKPOINT_FORMAT, "step": self.step, "params": self.params,
                "config": asdict(self.config), "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(),
                "lr_schedule": {"lr": self.config.lr, "warmup": self.config.warmup,
                                "min_lr_ratio": self.config.min_lr_ratio, "steps": self.config.steps},
                "mixture": self.mix.state_dict(), "packer": self.packer.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "metrics": list(self.metrics), "tokens": self.tokens,
                "elapsed": self.elapsed, "train_acc": (self.train_sum, self.train_n),
                "timings": (self.step_seconds, self.n_steps_timed, self.eval_seconds)}

    def load_state(self, state: dict) -> None:
        if state.get("format", 1) != CHECKPOINT_FORMAT:
            raise DgamixError(f"checkpoint format {state.get('format', 1)} cannot be resumed by this dgamix (format "
                              f"{CHECKPOINT_FORMAT}); restart the run.")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.mix.load_state_dict(state["mixture"])
        self.packer.load_state_dict(state["packer"])
        torch.set_rng_state(state["torch_rng"])  # numpy's global RNG is never used: every sampler has its own
        self.step = int(state["step"])
        self.metrics = list(state["metrics"])
        self.tokens, self.elapsed = int(state["tokens"]), float(state["elapsed"])
        self.train_sum, self.train_n = state["train_acc"]
        self.step_seconds, self.n_steps_timed, self.eval_seconds = state["timings"]
        self.last_checkpoint = self.resumed_from = self.step

    def save_checkpoint(self) -> None:
        if self.checkpoint_dir is None:
            return
        save_state(self.state(), self.checkpoint_dir / CHECKPOINT)
        self.last_checkpoint = self.step
        if self.on_checkpoint is not None:
            self.on_checkpoint(self)

    # ----- pieces of a step
    def _fail(self, what: str, step: int) -> DgamixError:
        keep = (f"the last good checkpoint (step {self.last_checkpoint}) is kept in {self.checkpoint_dir}"
                if self.last_checkpoint is not None and self.checkpoint_dir is not None else "no checkpoint was written")
        return DgamixError(f"{what} at step {step}: training diverged; {keep}. Lower --lr (now {self.config.lr:g}) "
                           f"or --eta and rerun with --overwrite.")

    def _evaluate(self, step: int) -> None:
        t0 = time.perf_counter()
        cfg = self.config
        row = {"step": step, "tokens": self.tokens}
        losses = {}
        if self.train_n:
            losses["train"] = self.train_sum / self.train_n
        for split, w in self.data.eval_sets.items():
            if len(w):
                losses[split] = evaluate(self.model, w, cfg.eval_batch_size, cfg.device)
        self.train_sum, self.train_n = 0.0, 0
        self.eval_seconds += time.perf_counter() - t0
        seconds = self.elapsed + (time.perf_counter() - self._t_start)
        for split, loss in losses.items():
            self.metrics.append({**row, "split": split, "loss": float(loss), "seconds": seconds})
        self._last_eval = losses

    def _reweight(self, step: int, lr: float) -> None:
        """The mixture's step: on reweighting steps the alignments on the model as it is now."""
        try:
            self.mix.maybe_reweight(step, self.model, self.loss_fn, lr=lr, device=self.config.device)
        except AlignmentError as e:
            raise self._fail(e.what, step) from None

    def _train_step(self, step: int, lr: float) -> float:
        t0 = time.perf_counter()
        cfg = self.config
        for g in self.opt.param_groups:
            g["lr"] = lr
        w = self.mix.weights()
        batch = self.packer.next(lambda m: self.mix.next_ids(m, w)[0]).to(cfg.device)
        loss = self.loss_fn(self.model, batch)
        value = float(loss.detach())
        if not math.isfinite(value):
            raise self._fail(f"non-finite training loss ({value})", step)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if cfg.grad_clip > 0:
            norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip))
        else:
            norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in self.model.parameters()
                                        if p.grad is not None)))
        if not math.isfinite(norm):
            raise self._fail(f"non-finite gradient norm ({norm})", step)
        self.opt.step()
        self.tokens += int((batch[:, 1:] != 0).sum())
        self.train_sum += value
        self.train_n += 1
        self.step_seconds += time.perf_counter() - t0
        self.n_steps_timed += 1
        return value

    # ----- the loop
    def run(self) -> TrainResult:
        cfg = self.config
        self.model.train()
        self._t_start = time.perf_counter()
        self._last_eval: dict = {}
        start = self.step
        bar = _Bar(cfg.steps, start, self.quiet, self.mix.names)
        try:
            for step in range(start, cfg.steps):
                resumed_here = self.resumed_from is not None and step == start
                if step % cfg.eval_every == 0 and not resumed_here:
                    self._evaluate(step)
                    bar.update(eval=" ".join(f"{k}={v:.3f}" for k, v in self._last_eval.items() if k != "train"))
                if (cfg.checkpoint_every and step > 0 and step % cfg.checkpoint_every == 0
                        and not resumed_here):
                    self._sync_clock()
                    self.save_checkpoint()
                lr = cfg.lr_at(step)
                logged = len(self.mix.log)
                self._reweight(step, lr)   # aligns on reweighting steps; logs the starting weights
                if len(self.mix.log) != logged:
                    bar.update(top=bar.top(self.mix.weights()))
                loss = self._train_step(step, lr)
                self.step = step + 1
                bar.update(advance=1, loss=f"loss={loss:.3f}")
            if not (self.metrics and self.metrics[-1]["step"] == cfg.steps):
                self._evaluate(cfg.steps)
            if not (self.weights and self.weights[-1]["step"] == cfg.steps):
                self.mix.log_weights(cfg.steps, None, cfg.lr_at(cfg.steps - 1))
            self._sync_clock()
            if self.last_checkpoint != cfg.steps:
                self.save_checkpoint()
        finally:
            bar.close()
        s = self.mix.sampler
        reps = {"domain": s.index.domains.copy(), "n_docs": s.pool_sizes.copy(),
                "draws": s.draws.copy(), "epochs": s.epochs.copy()}
        timings = {"seconds": self.elapsed,
                   "step_seconds": self.step_seconds / max(1, self.n_steps_timed),
                   "align_seconds": self.mix.reweight_seconds / max(1, self.mix.n_reweightings),
                   "n_reweightings": self.mix.n_reweightings, "eval_seconds": self.eval_seconds}
        return TrainResult(self.metrics, self.weights, reps, timings, cfg.steps, self.resumed_from,
                           sum(p.numel() for p in self.model.parameters()))

    def _sync_clock(self) -> None:
        """Fold the wall clock since the (re)start into ``elapsed`` (kept across resumes)."""
        now = time.perf_counter()
        self.elapsed += now - self._t_start
        self._t_start = now


def train(model: torch.nn.Module, data: TrainData, mix: OnlineMixture, config: TrainConfig, *,
          checkpoint_dir: str | Path | None = None, resume: bool = False, params: dict | None = None,
          loss_fn: Callable = lm_loss, quiet: bool = True,
          on_checkpoint: Callable[[Trainer], None] | None = None) -> TrainResult:
    """Train ``model`` for ``config.steps`` steps on ``data`` with the mixture ``mix``; returns the logs.

    With ``resume`` and a checkpoint in ``checkpoint_dir``, continue from it (the result equals
    an uninterrupted run). ``params`` is stored in the checkpoint (run.py compares it on resume).
    """
    # torch's thread count and RNG are process-wide: set for this run, restored when it returns
    devices = [torch.device(config.device).index or 0] if config.device.startswith("cuda") else []
    with torch_threads(config.threads or torch.get_num_threads()), torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        trainer = Trainer(model, data, mix, config, checkpoint_dir=checkpoint_dir, params=params,
                          loss_fn=loss_fn, quiet=quiet, on_checkpoint=on_checkpoint)
        path = None if checkpoint_dir is None else Path(checkpoint_dir) / CHECKPOINT
        if resume and path is not None and path.exists():
            trainer.load_state(load_checkpoint(path))
        return trainer.run()
