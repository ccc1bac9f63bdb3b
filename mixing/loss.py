"""The next-token loss of token windows: what dgamix trains and aligns with when a batch is a
(rows, context + 1) tensor of token ids rather than a Hugging Face batch (the testbed's model, or a
user's model that takes token ids and returns logits). Token id 0 is padding (``PAD``): never
predicted, ignored by the loss."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PAD = 0  # token id of padding; never predicted, ignored by the loss


def lm_loss(model: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy of a batch of windows (B, T+1) int64, ignoring pad targets.

    Inputs are batch[:, :-1], targets batch[:, 1:]; a position whose target is PAD does not
    count. A batch with no real target at all gives loss 0 (still attached to the graph).
    """
    x, y = batch[:, :-1], batch[:, 1:]
    logits = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                           ignore_index=PAD, reduction="sum") / (y != PAD).sum().clamp_min(1)


@torch.no_grad()
def lm_loss_sum(model: nn.Module, batch: torch.Tensor) -> tuple[float, int]:
    """(sum of next-token cross-entropies, number of real targets) of a batch (B, T+1), in
    float64 for evaluation: the loss of a whole set is sum / count, not a mean of batch means."""
    x, y = batch[:, :-1], batch[:, 1:]
    logits = model(x)
    s = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1),
                        ignore_index=PAD, reduction="sum")
    return float(s.double()), int((y != PAD).sum())
