"""Gradient alignments a_j = <grad l(theta; x_j), grad l(theta; y)> for any torch model.

Only the target gradient g_spe is kept (one tensor per trainable parameter); the N domain /
basis gradients are streamed one at a time and reduced to a dot product and a norm, so memory
is two gradients, never N. Gradients come from torch.autograd.grad, which returns them instead
of accumulating into ``.grad``: the training step's gradients and the optimiser are untouched.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import numpy as np
import torch


@dataclass
class Alignments:
    """alignments (N,) float64: dot products with the target gradient (after clipping);
    grad_norms (N,) float64: L2 norms of the N gradients (after clipping);
    target_norm: L2 norm of the target gradient (after clipping)."""

    alignments: np.ndarray
    grad_norms: np.ndarray
    target_norm: float


def _grads(model: torch.nn.Module, loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
           batch: Any, params: list[torch.Tensor]) -> list[torch.Tensor | None]:
    """Detached gradient of loss_fn(model, batch) w.r.t. params; None (= zero) where unused."""
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
        raise ValueError("loss_fn(model, batch) must return a scalar tensor")
    if not loss.requires_grad:  # loss does not depend on any trainable parameter
        return [None] * len(params)
    return [None if g is None else g.detach()
            for g in torch.autograd.grad(loss, params, allow_unused=True)]


def _acc(t: torch.Tensor) -> torch.Tensor:
    """Flattened view in at least float32: half-precision dots lose too many digits."""
    t = t.reshape(-1)
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _dot(a: list[torch.Tensor | None], b: list[torch.Tensor | None]) -> float:
    """sum over parameters of <a_p, b_p> (None = zero), accumulated in float64, one sync."""
    terms = [torch.dot(_acc(x), _acc(y)).double() for x, y in zip(a, b)
             if x is not None and y is not None]
    return float(torch.stack(terms).sum()) if terms else 0.0


def _clip_scale(norm: float, clip: float | None) -> float:
    """Factor that rescales a gradient of L2 norm ``norm`` to norm <= clip (1 when within)."""
    return 1.0 if clip is None or norm <= clip else clip / norm


def select_params(model: torch.nn.Module, pattern: str | None) -> list[torch.Tensor]:
    """The trainable parameters whose names (``named_parameters``) match the regular expression
    ``pattern`` (re.search; None = all). A pattern that matches none is a ValueError naming some."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if pattern is None:
        return [p for _, p in named]
    rx = re.compile(pattern)
    chosen = [p for n, p in named if rx.search(n)]
    if not chosen:
        names = [n for n, _ in named]
        raise ValueError(f"align_params {pattern!r} matches none of the model's trainable parameters "
                         f"({', '.join(names[:4])}, ..., {', '.join(names[-3:])})")
    return chosen


def gradient_alignments(model: torch.nn.Module,
                        loss_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
                        target_batch: Any, batches: Iterable[Any], *,
                        clip: float | None = None, params: str | None = None) -> Alignments:
    """Alignments of N batches (one per domain or basis) with the target batch.

    loss_fn(model, batch) -> scalar loss tensor. ``batches`` may be a generator (streamed).
    The model is used in whatever mode (train / eval) it is in. Parameters without a
    gradient count as zero. ``clip``: rescale each gradient to norm <= clip before the dot.
    ``params``: a regular expression on parameter names; only those gradients are compared
    (``select_params``). Backward then stops at the earliest matched layer, so e.g. the last
    block costs a forward pass and a short backward instead of a full one (a tied input/output
    embedding is used at both ends: matching it means a full backward).
    """
    if clip is not None and not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    params = select_params(model, params)
    with torch.enable_grad():
        g_spe = _grads(model, loss_fn, target_batch, params)
        t_norm = _dot(g_spe, g_spe) ** 0.5
        t_scale = _clip_scale(t_norm, clip)
        dots, norms = [], []
        for batch in batches:
            g = _grads(model, loss_fn, batch, params)
            norm = _dot(g, g) ** 0.5
            # Clipping is a rescaling, so apply it to the scalars instead of copying g.
            scale = _clip_scale(norm, clip)
            dots.append(scale * t_scale * _dot(g, g_spe))
            norms.append(scale * norm)
            del g  # free before the next backward pass
    target_norm = t_scale * t_norm
    return Alignments(np.asarray(dots, dtype=np.float64), np.asarray(norms, dtype=np.float64),
                      float(target_norm))
