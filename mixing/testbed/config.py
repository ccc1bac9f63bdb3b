"""The settings of a reference-trainer run (TrainConfig), its memory estimate and the bound checked
before any work. Torch-free, so that the CLI can show TrainConfig's defaults as its own without
loading torch for every command."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from dgamix.mixing.dga import DGAConfig


@dataclass
class TrainConfig:
    """Everything that shapes a run. Units: steps are optimiser updates; batch sizes are
    windows of context + 1 word pieces packed from whole documents; tokens are word pieces.

    Model: context (pieces per sequence), vocab_size (kept word pieces, + pad + unk + eos), d_model,
    n_layer, n_head. Optimiser: lr (peak), warmup (steps), min_lr_ratio (final lr / lr),
    weight_decay (AdamW, on matrices only), grad_clip (max global L2 norm; 0 disables).
    Mixing: dga (the DGAConfig: eta, ema_beta, reweight_every, reweight_start, normalise, ...;
    the mixer decides when it reweights), align_batch_size (sequences per basis /
    domain probe), target_batch_size (target sequences per reweighting), tokens_per_domain
    (limited-data budget per domain, in the docs manifest's n_tokens = the pieces training reads
    from a document; None = all documents).
    Evaluation: eval_every (steps), eval_batches x eval_batch_size = size of each fixed
    evaluation set (target holdout, general held-out docs); general_holdout: fraction of the
    generic documents held out for "general" (capped at the evaluation set size).
    checkpoint_every (steps; 0 = only at the end), seed, device, threads (torch intra-op
    threads; 0 = torch's default). model: the encoder folder whose tokenizer the run uses (None =
    the packaged all-MiniLM-L6-v2); a folder named only in the workspace's metadata is never loaded
    (tokens.load_tokenizer), so a workspace embedded with another model needs it here.

    Sizes are bounded before any work: a configuration whose estimated memory (``memory_estimate``)
    exceeds the memory available now is refused.

    Defaults are sized for a laptop / 2-core CPU: context 64 and V = 4,096 give a 1.3M-parameter
    model (the output softmax, which scales with V and the context, dominates a model this narrow),
    so that four runs of a few hundred steps fit in a few minutes (bench/micro/testbed.py times a step).
    """

    steps: int = 300
    batch_size: int = 16
    lr: float = 3e-3
    warmup: int = 20
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    dga: DGAConfig = field(default_factory=DGAConfig)
    align_batch_size: int = 16
    target_batch_size: int = 16
    eval_every: int = 25
    eval_batches: int = 2
    eval_batch_size: int = 32
    general_holdout: float = 0.02
    checkpoint_every: int = 100
    tokens_per_domain: int | None = None
    seed: int = 0
    device: str = "cpu"
    threads: int = 0
    context: int = 64
    vocab_size: int = 4096
    d_model: int = 128
    n_layer: int = 4
    n_head: int = 4
    model: str | None = None

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "align_batch_size", "target_batch_size",
                    "eval_every", "eval_batches", "eval_batch_size", "context", "vocab_size",
                    "d_model", "n_layer", "n_head")
        for k in positive:
            if int(getattr(self, k)) < 1:
                raise ValueError(f"{k} must be >= 1, got {getattr(self, k)}")
        for k in ("warmup", "checkpoint_every"):
            if int(getattr(self, k)) < 0:
                raise ValueError(f"{k} must be >= 0, got {getattr(self, k)}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.general_holdout < 1.0:
            raise ValueError(f"general_holdout must be in [0, 1), got {self.general_holdout}")
        if self.d_model % self.n_head:
            raise ValueError(f"n_head ({self.n_head}) must divide d_model ({self.d_model})")
        if self.tokens_per_domain is not None and self.tokens_per_domain < 1:
            raise ValueError(f"tokens_per_domain must be >= 1, got {self.tokens_per_domain}")
        check_memory(self)

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step``: linear warmup, then cosine to min_lr_ratio * lr."""
        if self.warmup and step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.steps - self.warmup - 1)
        progress = min(1.0, (step - self.warmup) / span)
        return self.lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


MAX_VOCAB = 1 << 18  # the compact vocabulary never exceeds the encoder's (30,522 pieces for MiniLM)
ACTIVATION_FLOATS = 16  # floats kept for the backward pass per position, layer and unit of width


def memory_estimate(cfg: TrainConfig) -> dict[str, int]:
    """Bytes a run of ``cfg`` needs at least (float32): the parameters (12 L d^2 for the blocks, plus the
    tied embedding and positions) four times (weights, gradients, AdamW's two moments), and the
    activations of the largest batch (training, probe or target windows): rows x context x
    (16 d L + V) floats, V = the model's vocabulary (logits)."""
    vocab = min(int(cfg.vocab_size), MAX_VOCAB) + 3
    d, layers, context = int(cfg.d_model), int(cfg.n_layer), int(cfg.context)
    params = 12 * layers * d * d + (vocab + context) * d
    rows = max(int(cfg.batch_size), int(cfg.align_batch_size), int(cfg.target_batch_size), int(cfg.eval_batch_size))
    activations = rows * context * (ACTIVATION_FLOATS * d * layers + vocab)
    return {"params": params, "model_bytes": 4 * 4 * params, "activation_bytes": 4 * activations,
            "bytes": 4 * 4 * params + 4 * activations}


def available_memory(device: str = "cpu") -> int | None:
    """Bytes of memory available now: free GPU memory for a CUDA device, else the system's
    (psutil, else /proc/meminfo's MemAvailable); None when unknown."""
    if device.startswith("cuda"):
        try:
            import torch

            return int(torch.cuda.mem_get_info(torch.device(device))[0])
        except Exception:  # noqa: BLE001 - no CUDA here: the run fails on its device check instead
            return None
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        pass
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _gib(n: int) -> str:
    return f"{n / 2 ** 30:,.1f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:,.0f} MiB"


def check_memory(cfg: TrainConfig) -> None:
    """ValueError (one line: the estimate and the limit) when ``cfg`` cannot fit in the memory available now."""
    need, have = memory_estimate(cfg), available_memory(cfg.device)
    if have is not None and need["bytes"] > have:
        raise ValueError(
            f"--batch-size {cfg.batch_size:,}, --context {cfg.context:,}, --d-model {cfg.d_model:,}, --n-layer "
            f"{cfg.n_layer:,} and --vocab-size {cfg.vocab_size:,} need about {_gib(need['bytes'])} of memory "
            f"({need['params']:,} parameters: {_gib(need['model_bytes'])} with gradients and AdamW; activations "
            f"{_gib(need['activation_bytes'])}), more than the {_gib(have)} available on {cfg.device}; lower "
            f"--batch-size, --context, --d-model, --n-layer or --vocab-size")
